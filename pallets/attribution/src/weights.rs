//! Weights for `pallet_attribution`.
//!
//! PROVISIONAL, written by hand from the storage each call touches (reads/writes counted from
//! the code, 50 us of execution each) until `scripts/benchmark/weights.sh` generates them
//! from the benchmarks in `benchmarking.rs` on the reference machine.

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use frame_support::{traits::Get, weights::Weight};
use core::marker::PhantomData;

/// What each call of `pallet_attribution` weighs.
pub trait WeightInfo {
	fn create_datanet() -> Weight;
	fn add_curator() -> Weight;
	fn remove_curator() -> Weight;
	fn contribute() -> Weight;
	fn approve_contribution() -> Weight;
	fn reject_contribution() -> Weight;
	fn remove_contribution() -> Weight;
	fn claim_rewards() -> Weight;
	fn register_adapter(t: u32, ) -> Weight;
	fn update_adapter_price() -> Weight;
	fn retire_adapter() -> Weight;
	fn set_split() -> Weight;
}

fn call<T: frame_system::Config>(reads: u64, writes: u64, proof: u64) -> Weight {
	Weight::from_parts(50_000_000, proof)
		.saturating_add(T::DbWeight::get().reads(reads))
		.saturating_add(T::DbWeight::get().writes(writes))
}

/// Provisional weights, priced with the runtime's own database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	fn create_datanet() -> Weight { call::<T>(3, 4, 4_000) }
	fn add_curator() -> Weight { call::<T>(1, 1, 4_000) }
	fn remove_curator() -> Weight { call::<T>(1, 1, 4_000) }
	fn contribute() -> Weight { call::<T>(4, 4, 6_000) }
	fn approve_contribution() -> Weight { call::<T>(3, 3, 6_000) }
	fn reject_contribution() -> Weight { call::<T>(4, 4, 6_000) }
	fn remove_contribution() -> Weight { call::<T>(5, 5, 6_000) }
	fn claim_rewards() -> Weight { call::<T>(4, 4, 6_000) }
	fn register_adapter(t: u32, ) -> Weight {
		call::<T>(3, 4, 6_000).saturating_add(T::DbWeight::get().reads(t.into()))
	}
	fn update_adapter_price() -> Weight { call::<T>(1, 1, 4_000) }
	fn retire_adapter() -> Weight { call::<T>(3, 3, 4_000) }
	fn set_split() -> Weight { call::<T>(0, 1, 0) }
}

impl WeightInfo for () {
	fn create_datanet() -> Weight { Weight::from_parts(50_000_000, 4_000) }
	fn add_curator() -> Weight { Weight::from_parts(50_000_000, 4_000) }
	fn remove_curator() -> Weight { Weight::from_parts(50_000_000, 4_000) }
	fn contribute() -> Weight { Weight::from_parts(50_000_000, 6_000) }
	fn approve_contribution() -> Weight { Weight::from_parts(50_000_000, 6_000) }
	fn reject_contribution() -> Weight { Weight::from_parts(50_000_000, 6_000) }
	fn remove_contribution() -> Weight { Weight::from_parts(50_000_000, 6_000) }
	fn claim_rewards() -> Weight { Weight::from_parts(50_000_000, 6_000) }
	fn register_adapter(_t: u32, ) -> Weight { Weight::from_parts(50_000_000, 6_000) }
	fn update_adapter_price() -> Weight { Weight::from_parts(50_000_000, 4_000) }
	fn retire_adapter() -> Weight { Weight::from_parts(50_000_000, 4_000) }
	fn set_split() -> Weight { Weight::from_parts(10_000_000, 0) }
}
