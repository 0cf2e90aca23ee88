//! The payer's side of a channel, run by the gateway: it checks each service receipt a
//! worker sends and answers with the channel's next voucher, signed with the channel's signer
//! key (never the payer's account key).

use codec::{Decode, Encode};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use openledger_primitives::voucher::{AdapterCharge, ChannelId, ContextCharge, VoucherPayload};
use sp_core::H256;

use crate::error::ChannelError;
use crate::receipt::{ContextShare, SignedReceipt};
use crate::{merkle, SignedVoucher, Voucher, MAX_VOUCHER_ADAPTERS, MAX_VOUCHER_CONTEXTS};

/// A receipt the gateway vouched for and the chain has not yet paid: what the breakdown of
/// the next voucher is made of.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Entry {
    pub request: u64,
    pub leaf: [u8; 32],
    pub adapter: u32,
    pub charge: u128,
    pub contexts: Vec<ContextShare>,
    /// The first voucher that covered it.
    pub sequence: u64,
}

/// One channel as its payer's gateway keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PayerChannel {
    pub channel: ChannelId,
    /// The provider's worker key, which signs its receipts.
    pub worker: [u8; 32],
    pub deposit: u128,
    /// What the chain has paid out (its `redeemed`), and the sequence of that voucher.
    pub redeemed: u128,
    pub redeemed_sequence: u64,
    /// The last voucher issued.
    pub sequence: u64,
    pub cumulative: u128,
    /// Receipts vouched for since the chain's last redemption, in order.
    pub entries: Vec<Entry>,
}

impl PayerChannel {
    /// A channel as the chain reports it (a new one: nothing redeemed, no voucher yet).
    pub fn new(channel: ChannelId, worker: [u8; 32], deposit: u128) -> Self {
        Self {
            channel,
            worker,
            deposit,
            redeemed: 0,
            redeemed_sequence: 0,
            sequence: 0,
            cumulative: 0,
            entries: Vec::new(),
        }
    }

    /// Checks `signed` (the channel's worker signed it for this chain, it charges at most
    /// `max_charge`, it is new, the deposit covers it) and returns the next voucher, which
    /// covers it and every receipt since the last redemption; the channel's state moves only
    /// when it succeeds. The new [`Entry`] is the voucher's last.
    pub fn vouch(
        &mut self,
        signed: &SignedReceipt,
        max_charge: u128,
        signer: &SigningKey,
        genesis_hash: [u8; 32],
    ) -> Result<SignedVoucher, ChannelError> {
        let r = &signed.receipt;
        if r.channel != self.channel {
            return Err(ChannelError::WrongChannel { expected: self.channel, got: r.channel });
        }
        let worker = VerifyingKey::from_bytes(&self.worker)
            .map_err(|_| ChannelError::BadSignature("provider's worker key"))?;
        signed.verify(&worker, genesis_hash)?;
        r.check_shape()?;
        if r.charge > max_charge {
            return Err(ChannelError::Overcharge { charge: r.charge, max: max_charge });
        }
        if self.entries.iter().any(|e| e.request == r.request) {
            return Err(ChannelError::Duplicate(r.request));
        }
        let cumulative = self.cumulative.saturating_add(r.charge);
        if cumulative > self.deposit {
            return Err(ChannelError::InsufficientDeposit {
                channel: self.channel,
                needed: cumulative,
                deposit: self.deposit,
            });
        }
        let mut next = self.clone();
        next.sequence += 1;
        next.cumulative = cumulative;
        next.entries.push(Entry {
            request: r.request,
            leaf: r.leaf(genesis_hash),
            adapter: r.adapter,
            charge: r.charge,
            contexts: r.contexts.clone(),
            sequence: next.sequence,
        });
        let voucher = next.sign(signer, genesis_hash)?;
        *self = next;
        Ok(voucher)
    }

    /// The voucher for the state as it is (no new receipt): the latest again, or after a
    /// redemption one whose breakdown is of the new increment.
    pub fn reissue(
        &mut self,
        signer: &SigningKey,
        genesis_hash: [u8; 32],
    ) -> Result<SignedVoucher, ChannelError> {
        let mut next = self.clone();
        next.sequence += 1;
        let voucher = next.sign(signer, genesis_hash)?;
        *self = next;
        Ok(voucher)
    }

    /// The chain paid `redeemed` in all with voucher `sequence`: the receipts it covered
    /// leave the breakdown. Returns the requests dropped.
    pub fn on_redeemed(&mut self, redeemed: u128, sequence: u64) -> Vec<u64> {
        if sequence <= self.redeemed_sequence {
            return Vec::new();
        }
        self.redeemed = redeemed;
        self.redeemed_sequence = sequence;
        let (paid, kept): (Vec<Entry>, Vec<Entry>) =
            self.entries.drain(..).partition(|e| e.sequence <= sequence);
        self.entries = kept;
        paid.into_iter().map(|e| e.request).collect()
    }

    /// The voucher of the current state, signed.
    fn sign(
        &self,
        signer: &SigningKey,
        genesis_hash: [u8; 32],
    ) -> Result<SignedVoucher, ChannelError> {
        let mut adapters: Vec<AdapterCharge<u128>> = Vec::new();
        let mut contexts: Vec<ContextCharge<u128>> = Vec::new();
        for e in &self.entries {
            match adapters.iter_mut().find(|a| a.adapter == e.adapter) {
                Some(a) => a.amount += e.charge,
                None => adapters.push(AdapterCharge { adapter: e.adapter, amount: e.charge }),
            }
            for c in &e.contexts {
                // The DataNet part of this receipt's charge, rounded down.
                let amount = e.charge.saturating_mul(u128::from(c.ppm)) / 1_000_000;
                match contexts.iter_mut().find(|x| x.adapter == e.adapter && x.datanet == c.datanet)
                {
                    Some(x) => x.amount += amount,
                    None => contexts.push(ContextCharge {
                        adapter: e.adapter,
                        datanet: c.datanet,
                        amount,
                    }),
                }
            }
        }
        let full = |what, max| ChannelError::BreakdownFull { channel: self.channel, what, max };
        if adapters.len() > MAX_VOUCHER_ADAPTERS {
            return Err(full("adapters", MAX_VOUCHER_ADAPTERS));
        }
        if contexts.len() > MAX_VOUCHER_CONTEXTS {
            return Err(full("context DataNets", MAX_VOUCHER_CONTEXTS));
        }
        let leaves: Vec<[u8; 32]> = self.entries.iter().map(|e| e.leaf).collect();
        let voucher = Voucher {
            channel: self.channel,
            sequence: self.sequence,
            cumulative: self.cumulative,
            inferences: self.entries.len() as u64,
            receipts_root: H256(merkle::root(&leaves)),
            adapters: adapters.try_into().map_err(|_| full("adapters", MAX_VOUCHER_ADAPTERS))?,
            contexts: contexts
                .try_into()
                .map_err(|_| full("context DataNets", MAX_VOUCHER_CONTEXTS))?,
        };
        let bytes = VoucherPayload::new(H256(genesis_hash), &voucher).signing_bytes();
        Ok(SignedVoucher { voucher, signature: signer.sign(&bytes).to_bytes() })
    }
}
