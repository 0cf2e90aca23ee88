//! Weights for `pallet_channels`.
//!
//! TODO(weights): NOT YET GENERATED. These are hand-written estimates in the shape of
//! `scripts/benchmark/pallet-weights.hbs`, set from the measured weights of comparable calls of
//! `pallet_jobs` (a hold, a signature check, a few storage items) with a wide margin. Replace
//! them with `scripts/benchmark/weights.sh pallet_channels` (needs the node built with
//! `--features benchmark-cli`); the benchmarks run as tests meanwhile
//! (`cargo test -p pallet-channels --features runtime-benchmarks`).
//!
//! `redeem` does not depend on the number of inferences a voucher covers: only on the adapters
//! (`a`) and context entries (`c`) it names. Each adapter's settlement is added on top by the
//! pallet (`Settlement::settle_weight`).

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use frame_support::{traits::Get, weights::{Weight, constants::ParityDbWeight}};
use core::marker::PhantomData;

/// What each call of `pallet_channels` weighs.
pub trait WeightInfo {
	fn open() -> Weight;
	fn top_up() -> Weight;
	fn rotate_signer() -> Weight;
	fn redeem(a: u32, c: u32, ) -> Weight;
	fn request_close() -> Weight;
	fn finalize_close() -> Weight;
	fn close_by_provider() -> Weight;
}

/// Estimated weights, priced with the runtime's own database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	fn open() -> Weight {
		Weight::from_parts(60_000_000, 4000)
			.saturating_add(T::DbWeight::get().reads(4))
			.saturating_add(T::DbWeight::get().writes(5))
	}
	fn top_up() -> Weight {
		Weight::from_parts(50_000_000, 4000)
			.saturating_add(T::DbWeight::get().reads(4))
			.saturating_add(T::DbWeight::get().writes(4))
	}
	fn rotate_signer() -> Weight {
		Weight::from_parts(30_000_000, 3600)
			.saturating_add(T::DbWeight::get().reads(1))
			.saturating_add(T::DbWeight::get().writes(1))
	}
	/// Component `a` ranges over `[1, MaxAdaptersPerVoucher]`, `c` over `[0, MaxContextsPerVoucher]`.
	fn redeem(a: u32, c: u32, ) -> Weight {
		Weight::from_parts(120_000_000, 4000)
			.saturating_add(Weight::from_parts(10_000_000, 0).saturating_mul(a.into()))
			.saturating_add(Weight::from_parts(5_000_000, 0).saturating_mul(c.into()))
			.saturating_add(T::DbWeight::get().reads(5))
			.saturating_add(T::DbWeight::get().writes(4))
	}
	fn request_close() -> Weight {
		Weight::from_parts(30_000_000, 3600)
			.saturating_add(T::DbWeight::get().reads(2))
			.saturating_add(T::DbWeight::get().writes(1))
	}
	fn finalize_close() -> Weight {
		Weight::from_parts(60_000_000, 4000)
			.saturating_add(T::DbWeight::get().reads(5))
			.saturating_add(T::DbWeight::get().writes(4))
	}
	fn close_by_provider() -> Weight {
		Weight::from_parts(60_000_000, 4000)
			.saturating_add(T::DbWeight::get().reads(5))
			.saturating_add(T::DbWeight::get().writes(4))
	}
}

/// The same estimates with ParityDB's reference database weights, for tests and mocks.
impl WeightInfo for () {
	fn open() -> Weight {
		Weight::from_parts(60_000_000, 4000)
			.saturating_add(ParityDbWeight::get().reads(4))
			.saturating_add(ParityDbWeight::get().writes(5))
	}
	fn top_up() -> Weight {
		Weight::from_parts(50_000_000, 4000)
			.saturating_add(ParityDbWeight::get().reads(4))
			.saturating_add(ParityDbWeight::get().writes(4))
	}
	fn rotate_signer() -> Weight {
		Weight::from_parts(30_000_000, 3600)
			.saturating_add(ParityDbWeight::get().reads(1))
			.saturating_add(ParityDbWeight::get().writes(1))
	}
	/// Component `a` ranges over `[1, MaxAdaptersPerVoucher]`, `c` over `[0, MaxContextsPerVoucher]`.
	fn redeem(a: u32, c: u32, ) -> Weight {
		Weight::from_parts(120_000_000, 4000)
			.saturating_add(Weight::from_parts(10_000_000, 0).saturating_mul(a.into()))
			.saturating_add(Weight::from_parts(5_000_000, 0).saturating_mul(c.into()))
			.saturating_add(ParityDbWeight::get().reads(5))
			.saturating_add(ParityDbWeight::get().writes(4))
	}
	fn request_close() -> Weight {
		Weight::from_parts(30_000_000, 3600)
			.saturating_add(ParityDbWeight::get().reads(2))
			.saturating_add(ParityDbWeight::get().writes(1))
	}
	fn finalize_close() -> Weight {
		Weight::from_parts(60_000_000, 4000)
			.saturating_add(ParityDbWeight::get().reads(5))
			.saturating_add(ParityDbWeight::get().writes(4))
	}
	fn close_by_provider() -> Weight {
		Weight::from_parts(60_000_000, 4000)
			.saturating_add(ParityDbWeight::get().reads(5))
			.saturating_add(ParityDbWeight::get().writes(4))
	}
}
