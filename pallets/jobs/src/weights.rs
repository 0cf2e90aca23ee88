//! Weights for `pallet_jobs`.
//!
//! PLACEHOLDER NUMBERS: these are hand-written estimates in the shape `frame-benchmarking-cli`
//! emits, not measurements. Regenerate this file with the node's
//! `benchmark pallet --pallet pallet_jobs --extrinsic '*'` before any release.
//!
//! Budget they are meant to meet: 1,000 receipts in 75% of a 2-second block, i.e. at most
//! 1.5 ms of reference time per receipt including its storage access.

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use frame_support::{traits::Get, weights::{Weight, constants::RocksDbWeight}};
use core::marker::PhantomData;

/// Weight functions needed for `pallet_jobs`.
pub trait WeightInfo {
	fn submit_job(c: u32, ) -> Weight;
	fn acknowledge() -> Weight;
	fn submit_receipts(n: u32, ) -> Weight;
	fn expire() -> Weight;
}

/// Weights for `pallet_jobs` using the node's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	/// Storage: `Compute::ProvidersByModel` (r:1), `Compute::ProviderStates` (r:c w:1),
	/// `Compute::HotAdapters` (r:c), `Jobs::NextJobId` (r:1 w:1), `Balances::Holds` (r:1 w:1),
	/// `Jobs::TotalEscrow` (r:1 w:1), `Jobs::Jobs` (w:1), `Jobs::JobsByDeadline` (w:1),
	/// `Jobs::JobsByProvider` (w:1), plus the adapter lookup (r:1)
	/// The range of component `c` is `[1, 64]`.
	fn submit_job(c: u32, ) -> Weight {
		Weight::from_parts(70_000_000, 6_000)
			.saturating_add(Weight::from_parts(6_000_000, 2_600).saturating_mul(c.into()))
			.saturating_add(T::DbWeight::get().reads(5_u64))
			.saturating_add(T::DbWeight::get().reads((2_u64).saturating_mul(c.into())))
			.saturating_add(T::DbWeight::get().writes(7_u64))
	}
	/// Storage: `Jobs::Jobs` (r:1 w:1), `Compute::ProviderStates` (r:1),
	/// `Jobs::JobsByDeadline` (w:2)
	fn acknowledge() -> Weight {
		Weight::from_parts(25_000_000, 4_000)
			.saturating_add(T::DbWeight::get().reads(2_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
	/// Per receipt: `Jobs::Jobs` (r:1 w:1), `Compute::ProviderStates` (r:2 w:1),
	/// `Balances::Holds` (r:1 w:1), `System::Account` (r:2 w:2), `Jobs::JobsByDeadline` (w:1),
	/// `Jobs::JobsByProvider` (w:1), `Jobs::TotalEscrow` (r:1 w:1); once: `System::BlockHash` (r:1)
	/// The range of component `n` is `[1, 1024]`.
	fn submit_receipts(n: u32, ) -> Weight {
		Weight::from_parts(10_000_000, 1_600)
			.saturating_add(Weight::from_parts(110_000_000, 4_000).saturating_mul(n.into()))
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().reads((7_u64).saturating_mul(n.into())))
			.saturating_add(T::DbWeight::get().writes((8_u64).saturating_mul(n.into())))
	}
	/// Storage: `Jobs::Jobs` (r:1 w:1), `Balances::Holds` (r:2 w:2), `System::Account` (r:2 w:2),
	/// `Compute::ProviderStates` (r:1 w:1), `Compute::TotalBonded` (r:1 w:1),
	/// `Jobs::JobsByDeadline` (w:1), `Jobs::JobsByProvider` (w:1), `Jobs::TotalEscrow` (r:1 w:1)
	fn expire() -> Weight {
		Weight::from_parts(90_000_000, 6_000)
			.saturating_add(T::DbWeight::get().reads(8_u64))
			.saturating_add(T::DbWeight::get().writes(10_u64))
	}
}

// For backwards compatibility and tests.
impl WeightInfo for () {
	fn submit_job(c: u32, ) -> Weight {
		Weight::from_parts(70_000_000, 6_000)
			.saturating_add(Weight::from_parts(6_000_000, 2_600).saturating_mul(c.into()))
			.saturating_add(RocksDbWeight::get().reads(5_u64 + 2 * c as u64))
			.saturating_add(RocksDbWeight::get().writes(7_u64))
	}
	fn acknowledge() -> Weight {
		Weight::from_parts(25_000_000, 4_000)
			.saturating_add(RocksDbWeight::get().reads(2_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
	fn submit_receipts(n: u32, ) -> Weight {
		Weight::from_parts(10_000_000, 1_600)
			.saturating_add(Weight::from_parts(110_000_000, 4_000).saturating_mul(n.into()))
			.saturating_add(RocksDbWeight::get().reads(1_u64 + 7 * n as u64))
			.saturating_add(RocksDbWeight::get().writes(8 * n as u64))
	}
	fn expire() -> Weight {
		Weight::from_parts(90_000_000, 6_000)
			.saturating_add(RocksDbWeight::get().reads(8_u64))
			.saturating_add(RocksDbWeight::get().writes(10_u64))
	}
}
