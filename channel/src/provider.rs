//! The provider's side of a channel, run by the worker: it admits requests while the
//! channel's unvouched amount stays under the credit limit the worker sets, checks each
//! voucher the gateway answers with as the chain will, and keeps the latest for redemption.

use codec::{Decode, Encode};
use openledger_primitives::voucher::ChannelId;
use sp_core::{ed25519, H256};

use crate::error::ChannelError;
use crate::receipt::SignedReceipt;
use crate::SignedVoucher;

/// One channel as the provider's worker keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ProviderChannel {
    pub channel: ChannelId,
    /// The channel's signer key on chain, whose vouchers it honours.
    pub signer: [u8; 32],
    pub deposit: u128,
    /// What the chain has paid out so far, and with which voucher.
    pub redeemed: u128,
    pub redeemed_sequence: u64,
    /// The most the worker serves ahead of the vouchers (its credit risk on the channel).
    pub credit_limit: u128,
    /// The latest voucher accepted.
    pub latest: Option<SignedVoucher>,
    /// Receipts sent whose voucher has not come yet.
    pub unvouched: Vec<SignedReceipt>,
}

impl ProviderChannel {
    /// A channel as the chain reports it, served up to `credit_limit` ahead of its vouchers.
    pub fn new(channel: ChannelId, signer: [u8; 32], deposit: u128, credit_limit: u128) -> Self {
        Self {
            channel,
            signer,
            deposit,
            redeemed: 0,
            redeemed_sequence: 0,
            credit_limit,
            latest: None,
            unvouched: Vec::new(),
        }
    }

    /// What the latest voucher says the channel owes (or what the chain paid, if more).
    pub fn vouched(&self) -> u128 {
        self.latest.as_ref().map_or(0, |v| v.voucher.cumulative).max(self.redeemed)
    }

    fn outstanding(&self) -> u128 {
        self.unvouched.iter().map(|r| r.receipt.charge).fold(0, u128::saturating_add)
    }

    /// Whether a request that may charge up to `max_charge` can be served: the unvouched
    /// amount stays within the credit limit and everything owed within the deposit.
    pub fn admit(&self, max_charge: u128) -> Result<(), ChannelError> {
        let outstanding = self.outstanding().saturating_add(max_charge);
        if outstanding > self.credit_limit {
            return Err(ChannelError::CreditLimit {
                channel: self.channel,
                outstanding,
                limit: self.credit_limit,
            });
        }
        let needed = self.vouched().saturating_add(outstanding);
        if needed > self.deposit {
            return Err(ChannelError::InsufficientDeposit {
                channel: self.channel,
                needed,
                deposit: self.deposit,
            });
        }
        Ok(())
    }

    /// Records a receipt the worker signed and is about to send: owed until a voucher pays it.
    pub fn served(&mut self, receipt: SignedReceipt) -> Result<(), ChannelError> {
        if receipt.receipt.channel != self.channel {
            return Err(ChannelError::WrongChannel {
                expected: self.channel,
                got: receipt.receipt.channel,
            });
        }
        if self.unvouched.iter().any(|r| r.receipt.request == receipt.receipt.request) {
            return Err(ChannelError::Duplicate(receipt.receipt.request));
        }
        self.unvouched.push(receipt);
        Ok(())
    }

    /// Accepts the gateway's answer to the receipt of `request`: a voucher the chain would
    /// redeem (this channel, signed by its signer for this chain, newer than the latest, not
    /// below what is already vouched, within the deposit, its breakdown summing to its
    /// increment over the redeemed amount) that pays at least the receipt's charge more than
    /// the latest. Nothing changes when it is refused.
    pub fn accept(
        &mut self,
        request: u64,
        signed: SignedVoucher,
        genesis_hash: [u8; 32],
    ) -> Result<(), ChannelError> {
        let at = self
            .unvouched
            .iter()
            .position(|r| r.receipt.request == request)
            .ok_or(ChannelError::UnknownRequest(request))?;
        let charge = self.unvouched[at].receipt.charge;
        self.check(&signed, genesis_hash)?;
        let paid = signed.voucher.cumulative.saturating_sub(self.vouched());
        if paid < charge {
            return Err(ChannelError::Underpaid { request, paid, charge });
        }
        self.unvouched.remove(at);
        self.latest = Some(signed);
        Ok(())
    }

    /// Takes a voucher that pays no new receipt (a reissue after a redemption).
    pub fn refresh(
        &mut self,
        signed: SignedVoucher,
        genesis_hash: [u8; 32],
    ) -> Result<(), ChannelError> {
        self.check(&signed, genesis_hash)?;
        self.latest = Some(signed);
        Ok(())
    }

    fn check(&self, signed: &SignedVoucher, genesis_hash: [u8; 32]) -> Result<(), ChannelError> {
        let v = &signed.voucher;
        if v.channel != self.channel {
            return Err(ChannelError::WrongChannel { expected: self.channel, got: v.channel });
        }
        let ok = openledger_primitives::voucher::verify(
            H256(genesis_hash),
            v,
            &ed25519::Signature::from_raw(signed.signature),
            &ed25519::Public::from_raw(self.signer),
        );
        if !ok {
            return Err(ChannelError::BadSignature("voucher (channel signer)"));
        }
        let latest = self.latest.as_ref().map_or(self.redeemed_sequence, |l| l.voucher.sequence);
        if v.sequence <= latest.max(self.redeemed_sequence) {
            return Err(ChannelError::StaleVoucher { latest, got: v.sequence });
        }
        if v.cumulative < self.vouched() {
            return Err(ChannelError::CumulativeDecreased {
                floor: self.vouched(),
                got: v.cumulative,
            });
        }
        if v.cumulative > self.deposit {
            return Err(ChannelError::InsufficientDeposit {
                channel: self.channel,
                needed: v.cumulative,
                deposit: self.deposit,
            });
        }
        let sum = v.adapters.iter().map(|a| a.amount).fold(0u128, u128::saturating_add);
        let increment = v.cumulative - self.redeemed.min(v.cumulative);
        if sum != increment {
            return Err(ChannelError::BadBreakdown { sum, increment });
        }
        Ok(())
    }

    /// The voucher to redeem, when it pays more than the chain has.
    pub fn redeemable(&self) -> Option<&SignedVoucher> {
        self.latest.as_ref().filter(|l| l.voucher.cumulative > self.redeemed)
    }

    /// The chain paid `redeemed` in all with voucher `sequence`.
    pub fn on_redeemed(&mut self, redeemed: u128, sequence: u64) {
        if sequence > self.redeemed_sequence {
            self.redeemed = redeemed;
            self.redeemed_sequence = sequence;
        }
    }
}

/// When a worker redeems a channel's latest voucher: every `every_blocks` blocks since its
/// last redemption, as soon as `amount` planck are waiting, and always while a close's
/// challenge window is running (the payer asked to close: what is not redeemed before the
/// window ends goes back to the payer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedeemPolicy {
    pub every_blocks: u32,
    pub amount: u128,
}

/// Why [`ProviderChannel::redeem_due`] says to redeem now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedeemReason {
    /// The payer asked to close; the window ends at the block given.
    Closing { until: u32 },
    /// At least the policy's amount is waiting.
    Amount,
    /// The policy's interval has passed since the last redemption.
    Interval,
}

impl ProviderChannel {
    /// Whether to redeem the latest voucher at block `now`, the chain's last redemption of this
    /// channel having been at block `last_redeemed_at` and `closing_until` the end of a close's
    /// challenge window if one runs. `None` when there is nothing to redeem.
    pub fn redeem_due(
        &self,
        policy: &RedeemPolicy,
        now: u32,
        last_redeemed_at: u32,
        closing_until: Option<u32>,
    ) -> Option<RedeemReason> {
        let waiting = self.redeemable()?.voucher.cumulative - self.redeemed;
        if let Some(until) = closing_until {
            return Some(RedeemReason::Closing { until });
        }
        if waiting >= policy.amount {
            return Some(RedeemReason::Amount);
        }
        (now.saturating_sub(last_redeemed_at) >= policy.every_blocks)
            .then_some(RedeemReason::Interval)
    }
}
