//! Weights of `pallet-verification`.
//!
//! Provisional: counted from the storage each call and hook touches (ParityDB weights) plus a
//! fixed compute allowance, until the pallet joins the runtime and
//! `scripts/benchmark/weights.sh` generates them from its benchmarks.

use core::marker::PhantomData;
use frame_support::weights::{constants::ParityDbWeight, Weight};

/// Weight functions needed for `pallet-verification`.
pub trait WeightInfo {
    /// `on_initialize` drawing `d` offered jobs and `s` redeemed vouchers, looking at `w`
    /// audits due and slashing for `r` reveals missed.
    fn on_initialize(d: u32, s: u32, w: u32, r: u32) -> Weight;
    /// A receipt revealed with a path of `p` siblings.
    fn reveal(p: u32) -> Weight;
    fn submit_verdict() -> Weight;
    fn contest() -> Weight;
    fn set_sample_share() -> Weight;
    /// One settled job offered for verification.
    fn offer() -> Weight;
}

/// Compute allowance of one storage-heavy step, in picoseconds of reference time.
const STEP: u64 = 25_000_000;

/// Provisional weights for a runtime (see the module documentation).
pub struct SubstrateWeight<T>(PhantomData<T>);

fn on_initialize(drawn: u32, redeemed: u32, woken: u32, missed: u32) -> Weight {
    // Each drawn job: the adapter, the candidates and each one's state (up to 8), the audit
    // count and three writes. Each woken audit: the audit, up to 3 slashes (4 writes each),
    // the candidates again and four writes.
    let per_drawn =
        ParityDbWeight::get().reads_writes(12, 3).saturating_add(Weight::from_parts(STEP, 0));
    let per_woken =
        ParityDbWeight::get().reads_writes(14, 16).saturating_add(Weight::from_parts(STEP, 0));
    // Each redeemed voucher: up to 4 leaves, each a check and three writes. Each missed
    // reveal: the reveal, a slash (two transfers) and three writes.
    let per_redeemed =
        ParityDbWeight::get().reads_writes(6, 12).saturating_add(Weight::from_parts(STEP, 0));
    let per_missed =
        ParityDbWeight::get().reads_writes(6, 8).saturating_add(Weight::from_parts(STEP, 0));
    ParityDbWeight::get()
        .reads_writes(2, 1)
        .saturating_add(per_drawn.saturating_mul(drawn.into()))
        .saturating_add(per_redeemed.saturating_mul(redeemed.into()))
        .saturating_add(per_woken.saturating_mul(woken.into()))
        .saturating_add(per_missed.saturating_mul(missed.into()))
}

fn reveal(siblings: u32) -> Weight {
    // The reveal, the genesis hash, then an audit opened as for a drawn job; a hash per
    // sibling.
    ParityDbWeight::get()
        .reads_writes(14, 7)
        .saturating_add(Weight::from_parts(2 * STEP, 0))
        .saturating_add(Weight::from_parts(STEP / 10, 0).saturating_mul(siblings.into()))
}

fn submit_verdict() -> Weight {
    // The audit, the verifier's state; at most a tally slashing the provider 3 times and two
    // verifiers, and the index writes.
    ParityDbWeight::get().reads_writes(8, 20).saturating_add(Weight::from_parts(2 * STEP, 0))
}

fn contest() -> Weight {
    ParityDbWeight::get().reads_writes(12, 6).saturating_add(Weight::from_parts(2 * STEP, 0))
}

impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
    fn on_initialize(drawn: u32, redeemed: u32, woken: u32, missed: u32) -> Weight {
        on_initialize(drawn, woken)
    }
    fn submit_verdict() -> Weight {
        submit_verdict()
    }
    fn contest() -> Weight {
        contest()
    }
    fn set_sample_share() -> Weight {
        ParityDbWeight::get().writes(1).saturating_add(Weight::from_parts(STEP, 0))
    }
    fn offer() -> Weight {
        ParityDbWeight::get().reads_writes(1, 1).saturating_add(Weight::from_parts(STEP / 5, 0))
    }
}

impl WeightInfo for () {
    fn on_initialize(drawn: u32, redeemed: u32, woken: u32, missed: u32) -> Weight {
        on_initialize(drawn, woken)
    }
    fn submit_verdict() -> Weight {
        submit_verdict()
    }
    fn contest() -> Weight {
        contest()
    }
    fn set_sample_share() -> Weight {
        ParityDbWeight::get().writes(1)
    }
    fn offer() -> Weight {
        ParityDbWeight::get().reads_writes(1, 1)
    }
}
