//! Runtime API of `pallet-compute`: what clients and workers ask about GPU providers.
//!
//! The runtime implements it with `ProviderInfo = pallet_compute::ProviderInfo<Runtime>`:
//!
//! ```ignore
//! impl pallet_compute_runtime_api::ComputeApi<Block, AccountId, pallet_compute::ProviderInfo<Runtime>> for Runtime {
//!     fn provider(who: AccountId) -> Option<pallet_compute::ProviderInfo<Runtime>> {
//!         Compute::provider_info(&who)
//!     }
//!     fn providers_for_model(model: BaseModelId) -> Vec<AccountId> {
//!         pallet_compute::ProvidersByModel::<Runtime>::get(model).into_inner()
//!     }
//! }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use codec::Codec;
pub use openledger_primitives::market::BaseModelId;

sp_api::decl_runtime_apis! {
    /// Queries about GPU providers.
    pub trait ComputeApi<AccountId, ProviderInfo>
    where
        AccountId: Codec,
        ProviderInfo: Codec,
    {
        /// Everything known about `who` as a provider: terms, bond, status, load, reputation
        /// (stored and decayed to now), hot adapters and whether it is eligible for a job now.
        fn provider(who: AccountId) -> Option<ProviderInfo>;

        /// Active providers serving `model`: the candidates matching considers.
        fn providers_for_model(model: BaseModelId) -> Vec<AccountId>;
    }
}
