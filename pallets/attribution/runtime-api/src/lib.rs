//! Runtime API of `pallet-attribution`: what contributors, adapter owners and clients ask.
//!
//! The runtime implements it with `Adapter = pallet_attribution::Adapter<Runtime>` and
//! `Payee = pallet_attribution::Payee<AccountId>`.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use codec::Codec;
pub use openledger_primitives::market::{AdapterId, DataNetId, DataNetShare};

sp_api::decl_runtime_apis! {
    /// Queries about attribution and fee splits.
    pub trait AttributionApi<AccountId, Balance, Adapter, Payee>
    where
        AccountId: Codec,
        Balance: Codec,
        Adapter: Codec,
        Payee: Codec,
    {
        /// What `who` could claim from `datanet` now.
        fn pending_rewards(datanet: DataNetId, who: AccountId) -> Balance;

        /// An adapter's record: owner, base model, price, training DataNets and shares.
        fn adapter(adapter: AdapterId) -> Option<Adapter>;

        /// How `charge` for a job on `adapter` run by `provider`, with retrieval `context`,
        /// would be split now: every payee and amount; `None` for an unknown adapter or
        /// invalid context.
        fn quote_split(
            adapter: AdapterId,
            provider: AccountId,
            charge: Balance,
            context: Vec<DataNetShare>,
        ) -> Option<Vec<(Payee, Balance)>>;
    }
}
