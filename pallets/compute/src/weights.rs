//! Weights for `pallet_compute`.
//!
//! PLACEHOLDER NUMBERS: these are hand-written estimates in the shape `frame-benchmarking-cli`
//! emits, not measurements. Regenerate this file with the node's
//! `benchmark pallet --pallet pallet_compute --extrinsic '*'` before any release.

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use frame_support::{traits::Get, weights::{Weight, constants::RocksDbWeight}};
use core::marker::PhantomData;

/// Weight functions needed for `pallet_compute`.
pub trait WeightInfo {
	fn register_provider(m: u32, ) -> Weight;
	fn update_provider(m: u32, ) -> Weight;
	fn bond_extra() -> Weight;
	fn heartbeat(a: u32, ) -> Weight;
	fn unregister(m: u32, ) -> Weight;
	fn withdraw_unbonded() -> Weight;
}

/// Weights for `pallet_compute` using the node's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	/// Storage: `Compute::ProviderStates` (r:1 w:1), `Compute::ProvidersByModel` (r:m w:m),
	/// `Balances::Holds` (r:1 w:1), `Compute::TotalBonded` (r:1 w:1), `Compute::Providers` (w:1)
	/// The range of component `m` is `[1, 8]`.
	fn register_provider(m: u32, ) -> Weight {
		Weight::from_parts(60_000_000, 4_000)
			.saturating_add(Weight::from_parts(8_000_000, 2_100).saturating_mul(m.into()))
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().reads((1_u64).saturating_mul(m.into())))
			.saturating_add(T::DbWeight::get().writes(4_u64))
			.saturating_add(T::DbWeight::get().writes((1_u64).saturating_mul(m.into())))
	}
	/// Storage: `Compute::ProviderStates` (r:1 w:1), `Compute::Providers` (r:1 w:1),
	/// `Compute::ProvidersByModel` (r:2m w:2m)
	/// The range of component `m` is `[1, 8]`.
	fn update_provider(m: u32, ) -> Weight {
		Weight::from_parts(40_000_000, 4_000)
			.saturating_add(Weight::from_parts(16_000_000, 4_200).saturating_mul(m.into()))
			.saturating_add(T::DbWeight::get().reads(2_u64))
			.saturating_add(T::DbWeight::get().reads((2_u64).saturating_mul(m.into())))
			.saturating_add(T::DbWeight::get().writes(2_u64))
			.saturating_add(T::DbWeight::get().writes((2_u64).saturating_mul(m.into())))
	}
	/// Storage: `Compute::ProviderStates` (r:1 w:1), `Balances::Holds` (r:1 w:1),
	/// `Compute::TotalBonded` (r:1 w:1)
	fn bond_extra() -> Weight {
		Weight::from_parts(50_000_000, 4_000)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
	/// Storage: `Compute::ProviderStates` (r:1 w:1), `Compute::HotAdapters` (w:1)
	/// The range of component `a` is `[0, 32]`.
	fn heartbeat(a: u32, ) -> Weight {
		Weight::from_parts(20_000_000, 3_000)
			.saturating_add(Weight::from_parts(50_000, 0).saturating_mul(a.into()))
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(2_u64))
	}
	/// Storage: `Compute::ProviderStates` (r:1 w:1), `Compute::Providers` (r:1),
	/// `Compute::ProvidersByModel` (r:m w:m), `Compute::HotAdapters` (w:1)
	/// The range of component `m` is `[1, 8]`.
	fn unregister(m: u32, ) -> Weight {
		Weight::from_parts(30_000_000, 4_000)
			.saturating_add(Weight::from_parts(8_000_000, 2_100).saturating_mul(m.into()))
			.saturating_add(T::DbWeight::get().reads(2_u64))
			.saturating_add(T::DbWeight::get().reads((1_u64).saturating_mul(m.into())))
			.saturating_add(T::DbWeight::get().writes(2_u64))
			.saturating_add(T::DbWeight::get().writes((1_u64).saturating_mul(m.into())))
	}
	/// Storage: `Compute::ProviderStates` (r:1 w:1), `Balances::Holds` (r:1 w:1),
	/// `Compute::TotalBonded` (r:1 w:1), `Compute::Providers` (w:1)
	fn withdraw_unbonded() -> Weight {
		Weight::from_parts(50_000_000, 4_000)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(4_u64))
	}
}

// For backwards compatibility and tests.
impl WeightInfo for () {
	fn register_provider(m: u32, ) -> Weight {
		Weight::from_parts(60_000_000, 4_000)
			.saturating_add(Weight::from_parts(8_000_000, 2_100).saturating_mul(m.into()))
			.saturating_add(RocksDbWeight::get().reads(3_u64 + m as u64))
			.saturating_add(RocksDbWeight::get().writes(4_u64 + m as u64))
	}
	fn update_provider(m: u32, ) -> Weight {
		Weight::from_parts(40_000_000, 4_000)
			.saturating_add(Weight::from_parts(16_000_000, 4_200).saturating_mul(m.into()))
			.saturating_add(RocksDbWeight::get().reads(2_u64 + 2 * m as u64))
			.saturating_add(RocksDbWeight::get().writes(2_u64 + 2 * m as u64))
	}
	fn bond_extra() -> Weight {
		Weight::from_parts(50_000_000, 4_000)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
	fn heartbeat(a: u32, ) -> Weight {
		Weight::from_parts(20_000_000, 3_000)
			.saturating_add(Weight::from_parts(50_000, 0).saturating_mul(a.into()))
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(2_u64))
	}
	fn unregister(m: u32, ) -> Weight {
		Weight::from_parts(30_000_000, 4_000)
			.saturating_add(Weight::from_parts(8_000_000, 2_100).saturating_mul(m.into()))
			.saturating_add(RocksDbWeight::get().reads(2_u64 + m as u64))
			.saturating_add(RocksDbWeight::get().writes(2_u64 + m as u64))
	}
	fn withdraw_unbonded() -> Weight {
		Weight::from_parts(50_000_000, 4_000)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(4_u64))
	}
}
