//! Runtime API of `pallet-jobs`: what clients and workers ask about jobs.
//!
//! The runtime implements it with `JobStatus = pallet_jobs::JobStatus<Runtime>` and
//! `Quote = pallet_jobs::Quote<Runtime>`:
//!
//! ```ignore
//! impl pallet_jobs_runtime_api::JobsApi<Block, AccountId, BlockNumber,
//!     pallet_jobs::JobStatus<Runtime>, pallet_jobs::Quote<Runtime>> for Runtime
//! {
//!     fn job_status(job: JobId) -> pallet_jobs::JobStatus<Runtime> { Jobs::job_status(job) }
//!     fn jobs_of_provider(provider: AccountId, limit: u32) -> Vec<JobId> {
//!         Jobs::jobs_of_provider(&provider, limit)
//!     }
//!     fn jobs_due_at(block: BlockNumber, limit: u32) -> Vec<JobId> { Jobs::jobs_due_at(block, limit) }
//!     fn quote(adapter: AdapterId, max_output_tokens: u32) -> Option<pallet_jobs::Quote<Runtime>> {
//!         Jobs::quote(adapter, max_output_tokens)
//!     }
//! }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use codec::Codec;
pub use openledger_primitives::market::{AdapterId, JobId};

sp_api::decl_runtime_apis! {
    /// Queries about inference jobs.
    pub trait JobsApi<AccountId, BlockNumber, JobStatus, Quote>
    where
        AccountId: Codec,
        BlockNumber: Codec,
        JobStatus: Codec,
        Quote: Codec,
    {
        /// Whether `job` is unknown, open (with its record) or closed.
        fn job_status(job: JobId) -> JobStatus;

        /// Open jobs assigned to `provider`, at most `limit`: what its worker should be running.
        fn jobs_of_provider(provider: AccountId, limit: u32) -> Vec<JobId>;

        /// Open jobs whose deadline is `block`, at most `limit`: expirable from `block + 1`.
        fn jobs_due_at(block: BlockNumber, limit: u32) -> Vec<JobId>;

        /// The provider a job for `adapter` with `max_output_tokens` would be matched to now,
        /// its price per 1,000 tokens and the smallest `max_fee` it accepts; `None` if no
        /// provider is available.
        fn quote(adapter: AdapterId, max_output_tokens: u32) -> Option<Quote>;
    }
}
