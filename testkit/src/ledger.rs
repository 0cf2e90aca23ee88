//! Where OPEN moved between two blocks, read from the events: what each account was paid by
//! the fee split of settled jobs, and what it paid in transaction fees. A test compares
//! these with the accounts' balance changes over the same blocks, to the planck.

use std::collections::BTreeMap;

use openledger_chain_client::ChainClient;
use subxt::ext::scale_decode::DecodeAsType;
use subxt::utils::AccountId32;

#[derive(DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
enum Payee {
    Provider(AccountId32),
    AdapterOwner(AccountId32),
    #[allow(dead_code)] // decoded to reach the next payouts; training payouts are not tallied
    TrainingDataNet(u32),
    ContextDataNet(u32),
    Treasury(AccountId32),
}

#[derive(DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
struct FeeSplit {
    job: u64,
    charge: u128,
    payouts: Vec<(Payee, u128)>,
}

#[derive(DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
struct VoucherFeeSplit {
    channel: u64,
    sequence: u64,
    adapter: u32,
    charge: u128,
    payouts: Vec<(Payee, u128)>,
}

#[derive(DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
struct TransactionFeePaid {
    who: AccountId32,
    actual_fee: u128,
}

/// The flows of blocks `from + 1 ..= to`.
#[derive(Default, Debug)]
pub struct Flows {
    /// Fee-split payouts received, per account.
    pub paid_to: BTreeMap<AccountId32, u128>,
    /// Transaction fees paid (tips included), per account.
    pub fees_of: BTreeMap<AccountId32, u128>,
    /// Transactions that paid a fee, per account.
    pub txs_of: BTreeMap<AccountId32, u32>,
    /// Jobs split, with their charge.
    pub charges: BTreeMap<u64, u128>,
    /// What each job paid each of its context DataNets.
    pub context_paid: BTreeMap<(u64, u32), u128>,
    /// Redeemed vouchers split, per (channel, sequence, adapter), with their charge.
    pub voucher_charges: BTreeMap<(u64, u64, u32), u128>,
    /// What each redeemed voucher paid each context DataNet, per (channel, sequence, DataNet).
    pub voucher_context_paid: BTreeMap<(u64, u64, u32), u128>,
}

impl Flows {
    /// What `who`'s free balance must have changed by, if nothing else touched it.
    pub fn net(&self, who: &AccountId32) -> i128 {
        let got = self.paid_to.get(who).copied().unwrap_or(0) as i128;
        got - self.fees_of.get(who).copied().unwrap_or(0) as i128
    }
}

pub async fn flows(chain: &ChainClient, from: u64, to: u64) -> Flows {
    let mut flows = Flows::default();
    for number in from + 1..=to {
        let at = chain.subxt().at_block(number).await.expect("a block");
        let events = at.events().fetch().await.expect("its events");
        for ev in events.iter() {
            let ev = ev.expect("an event");
            match (ev.pallet_name(), ev.event_name()) {
                ("Attribution", "FeeSplit") => {
                    let split = ev.decode_fields_unchecked_as::<FeeSplit>().expect("FeeSplit");
                    let total: u128 = split.payouts.iter().map(|(_, a)| a).sum();
                    assert_eq!(total, split.charge, "job {}: payouts sum to the charge", split.job);
                    flows.charges.insert(split.job, split.charge);
                    let job = split.job;
                    tally(split.payouts, &mut flows.paid_to, |d, amount| {
                        *flows.context_paid.entry((job, d)).or_default() += amount;
                    });
                },
                ("Attribution", "VoucherFeeSplit") => {
                    let split = ev
                        .decode_fields_unchecked_as::<VoucherFeeSplit>()
                        .expect("VoucherFeeSplit");
                    let total: u128 = split.payouts.iter().map(|(_, a)| a).sum();
                    let key = (split.channel, split.sequence);
                    assert_eq!(total, split.charge, "voucher {key:?}: payouts sum to the charge");
                    flows.voucher_charges.insert((key.0, key.1, split.adapter), split.charge);
                    tally(split.payouts, &mut flows.paid_to, |d, amount| {
                        *flows.voucher_context_paid.entry((key.0, key.1, d)).or_default() += amount;
                    });
                },
                ("TransactionPayment", "TransactionFeePaid") => {
                    let fee = ev
                        .decode_fields_unchecked_as::<TransactionFeePaid>()
                        .expect("TransactionFeePaid");
                    *flows.txs_of.entry(fee.who).or_default() += 1;
                    *flows.fees_of.entry(fee.who).or_default() += fee.actual_fee;
                },
                _ => {},
            }
        }
    }
    flows
}

/// Adds a split's payouts to the accounts paid; a context DataNet's goes to `context`.
fn tally(
    payouts: Vec<(Payee, u128)>,
    paid_to: &mut BTreeMap<AccountId32, u128>,
    mut context: impl FnMut(u32, u128),
) {
    for (payee, amount) in payouts {
        match payee {
            Payee::Provider(a) | Payee::AdapterOwner(a) | Payee::Treasury(a) => {
                *paid_to.entry(a).or_default() += amount;
            },
            Payee::ContextDataNet(d) => context(d, amount),
            Payee::TrainingDataNet(_) => {},
        }
    }
}
