// The overview is README.md: rustdoc shows it as the crate's documentation and
// `#[pallet_doc]` puts it in the runtime metadata, where wallets and explorers read it.
#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
// FRAME's generic types (payouts of `Payee<T::AccountId>` and `BalanceOf<T>`) read better
// spelled out than behind one-use aliases.
#![allow(clippy::type_complexity)]

extern crate alloc;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(feature = "runtime-benchmarks")]
pub use benchmarking::BenchmarkHelper;
mod impls;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod types;
pub mod weights;

use frame_support::traits::fungible::Inspect;
pub use impls::{fee_for, AnyAdapterOn, ParentHashRandomness, PayProvider};
pub use openledger_primitives::{
    market::{AdapterCatalog, ProviderRegistry, Settlement, WorkAudit},
    receipt::{Receipt, ReceiptContext, ReceiptFields, ReceiptPayload},
};

/// The balance type of the pallet's currency.
pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

#[frame_support::pallet]
#[pallet_doc("../README.md")]
pub mod pallet {
    use super::*;
    use frame_support::{
        pallet_prelude::*,
        traits::{
            fungible::{Mutate, MutateHold},
            Randomness,
        },
    };
    use frame_system::pallet_prelude::*;
    use openledger_primitives::market::{AdapterId, JobId};
    use sp_core::H256;
    use sp_runtime::{ArithmeticError, Saturating};

    /// The layout of this pallet's storage; a change to it comes with a migration that
    /// bumps it.
    const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// OPEN: the currency of escrow and fees.
        type Currency: Mutate<Self::AccountId>
            + MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;

        /// The overarching hold reason.
        type RuntimeHoldReason: From<HoldReason>;

        /// The GPU provider registry (`pallet-compute`).
        type Providers: ProviderRegistry<Self::AccountId, BalanceOf<Self>>;

        /// The adapter catalogue (`pallet-attribution`).
        type Adapters: AdapterCatalog<BalanceOf<Self>>;

        /// Where a settled job's charge goes.
        type Settlement: Settlement<Self::AccountId, BalanceOf<Self>>;

        /// Where settled jobs are offered for verification (`pallet-verification`; `()`
        /// verifies nothing).
        type Audit: WorkAudit<Self::AccountId, BalanceOf<Self>>;

        /// Source of the tie-breaking seed of matching.
        type Randomness: Randomness<Self::Hash, BlockNumberFor<Self>>;

        /// Blocks a worker has to acknowledge an assigned job.
        #[pallet::constant]
        type AckTimeout: Get<BlockNumberFor<Self>>;

        /// Blocks a worker has, after acknowledging, to settle a job with a receipt.
        #[pallet::constant]
        type JobTimeout: Get<BlockNumberFor<Self>>;

        /// Most receipts in one `submit_receipts` call.
        #[pallet::constant]
        type MaxReceiptsPerBatch: Get<u32>;

        /// Longest gateway peer id, in bytes.
        #[pallet::constant]
        type MaxPeerIdLen: Get<u32>;

        /// Weights of this pallet's calls.
        type WeightInfo: WeightInfo;

        /// Sets up adapters and providers for the benchmarks.
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper<Self::AccountId>;
    }

    /// Why this pallet holds OPEN.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// A job's budget, held from its submitter until the job closes.
        #[codec(index = 0)]
        JobEscrow,
    }

    /// Id the next job gets.
    #[pallet::storage]
    pub type NextJobId<T: Config> = StorageValue<_, JobId, ValueQuery>;

    /// Open jobs.
    #[pallet::storage]
    pub type Jobs<T: Config> = StorageMap<_, Twox64Concat, JobId, Job<T>>;

    /// Open jobs by the block after which they can be expired.
    #[pallet::storage]
    pub type JobsByDeadline<T: Config> =
        StorageDoubleMap<_, Twox64Concat, BlockNumberFor<T>, Twox64Concat, JobId, (), OptionQuery>;

    /// Open jobs by the provider they are assigned to.
    #[pallet::storage]
    pub type JobsByProvider<T: Config> =
        StorageDoubleMap<_, Blake2_128Concat, T::AccountId, Twox64Concat, JobId, (), OptionQuery>;

    /// Sum of the escrow of all open jobs.
    #[pallet::storage]
    pub type TotalEscrow<T: Config> = StorageValue<_, BalanceOf<T>, ValueQuery>;

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A job was submitted, its budget held, and assigned to `provider`, which must
        /// acknowledge it by block `deadline`.
        JobAssigned {
            /// The job's id.
            job: JobId,
            /// Who submitted and pays for it.
            submitter: T::AccountId,
            /// The provider it was assigned to.
            provider: T::AccountId,
            /// The adapter to run.
            adapter: AdapterId,
            /// BLAKE2b-256 of the payload the gateway holds.
            input_hash: H256,
            /// Most tokens the answer may have.
            max_output_tokens: u32,
            /// The budget held from the submitter (its `max_fee`).
            escrow: BalanceOf<T>,
            /// The libp2p peer id of the gateway holding the payload, in its binary (multihash)
            /// form.
            gateway: BoundedVec<u8, T::MaxPeerIdLen>,
            /// The last block at which the worker may acknowledge it.
            deadline: BlockNumberFor<T>,
        },
        /// The provider's worker acknowledged a job; it must settle it by block `deadline`.
        JobAcknowledged {
            /// The job.
            job: JobId,
            /// Its provider.
            provider: T::AccountId,
            /// The last block at which a receipt settles it.
            deadline: BlockNumberFor<T>,
        },
        /// A receipt settled a job: `charged` went to settlement, `refunded` back to the user.
        JobSettled {
            /// The job.
            job: JobId,
            /// Its provider.
            provider: T::AccountId,
            /// Hash of the output, as the receipt states it.
            output_hash: H256,
            /// Prompt tokens processed.
            input_tokens: u32,
            /// Tokens generated.
            output_tokens: u32,
            /// What the job cost: `min(escrow, ceil(tokens x price_per_1k / 1000))`, split by
            /// the settlement (see `attribution.FeeSplit`).
            charged: BalanceOf<T>,
            /// The rest of the escrow, released back to the submitter.
            refunded: BalanceOf<T>,
            /// BLAKE2b-256 of the answer's activation commitment, as the receipt states it
            /// (zeros: the worker committed none).
            commitment_hash: H256,
        },
        /// A receipt of a batch was rejected; the rest of the batch was processed.
        ReceiptRejected {
            /// The job the receipt named.
            job: JobId,
            /// Why it was rejected.
            error: DispatchError,
        },
        /// The provider's worker refused a job for `reason`: the user got its whole escrow
        /// back, nothing was charged or slashed.
        JobRefused {
            /// The job.
            job: JobId,
            /// Its provider.
            provider: T::AccountId,
            /// Why the worker could not serve it.
            reason: RefusalReason,
            /// The escrow released back to the submitter.
            refunded: BalanceOf<T>,
        },
        /// A job passed its deadline: the user got its escrow back and `slashed` from the
        /// provider's bond (zero when the worker had not acknowledged the job).
        JobExpired {
            /// The job.
            job: JobId,
            /// Its provider.
            provider: T::AccountId,
            /// The escrow released back to the submitter.
            refunded: BalanceOf<T>,
            /// What the submitter received from the provider's bond.
            slashed: BalanceOf<T>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// The adapter is not in the catalogue. Pick a registered adapter.
        UnknownAdapter,
        /// `max_output_tokens` is zero. Ask for at least one token.
        ZeroOutputTokens,
        /// No provider serving the adapter's base model is live, has a free slot and charges
        /// at most `max_fee` for `max_output_tokens`. Raise `max_fee` (see the fee quote runtime
        /// API) or retry later.
        NoProviderAvailable,
        /// No job has this id. Check the id in `JobAssigned`.
        UnknownJob,
        /// The job was already settled or expired (a replayed receipt, or a late call). Nothing
        /// to do.
        JobClosed,
        /// The sender is not the worker of the job's provider. Send from the provider's operator
        /// or worker account.
        NotAssignedWorker,
        /// The job was already acknowledged. Nothing to do.
        AlreadyAcknowledged,
        /// The job's deadline has passed; it can only be expired now. Acknowledge and settle
        /// jobs within `AckTimeout` and `JobTimeout` blocks.
        DeadlinePassed,
        /// The job's deadline has not passed yet. Wait until the block after its deadline.
        NotExpired,
        /// The receipt signature does not verify against the provider's worker key for this
        /// chain, job, provider, adapter and fields: signed by another key, for another job or
        /// chain, or a field was altered. Sign the exact `ReceiptPayload` with the registered
        /// worker key.
        BadSignature,
        /// The signature is not in canonical form (`s` not reduced, or `R` of small order).
        /// Sign with a standard ed25519 implementation.
        MalformedSignature,
        /// The receipt reports more output tokens than the job allowed. Report what was
        /// generated, which cannot exceed `max_output_tokens`.
        OutputTooLong,
        /// The provider of the job is no longer registered. (Cannot happen while the registry
        /// keeps providers with open jobs; reported rather than assumed.)
        UnknownProvider,
        /// `gateway` is longer than `MaxPeerIdLen` bytes. Pass the gateway's libp2p peer id in
        /// its binary form (38 bytes for an ed25519 key).
        GatewayTooLong,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Submit a job: run `adapter` on the payload with hash `input_hash`, which `gateway`
        /// holds, generating at most `max_output_tokens`, for at most `max_fee`.
        ///
        /// `gateway` is the gateway's libp2p peer id in its binary (multihash) form, at most
        /// `MaxPeerIdLen` bytes. It is taken as plain bytes and checked here, so a longer one
        /// fails with [`Error::GatewayTooLong`] rather than an undecodable transaction.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::submit_job(
            <T::Providers as ProviderRegistry<T::AccountId, BalanceOf<T>>>::MaxCandidates::get()
        ))]
        pub fn submit_job(
            origin: OriginFor<T>,
            adapter: AdapterId,
            input_hash: H256,
            max_output_tokens: u32,
            #[pallet::compact] max_fee: BalanceOf<T>,
            gateway: alloc::vec::Vec<u8>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let gateway: BoundedVec<u8, T::MaxPeerIdLen> =
                gateway.try_into().map_err(|_| Error::<T>::GatewayTooLong)?;
            ensure!(max_output_tokens > 0, Error::<T>::ZeroOutputTokens);
            let terms = T::Adapters::adapter(adapter).ok_or(Error::<T>::UnknownAdapter)?;
            let job = NextJobId::<T>::get();
            let (provider, price_per_1k) =
                Self::select_provider(job, &terms, adapter, max_output_tokens, max_fee)
                    .ok_or(Error::<T>::NoProviderAvailable)?;

            T::Currency::hold(&HoldReason::JobEscrow.into(), &who, max_fee)?;
            T::Providers::job_assigned(&provider)?;
            NextJobId::<T>::put(job.checked_add(1).ok_or(ArithmeticError::Overflow)?);
            TotalEscrow::<T>::mutate(|total| *total = total.saturating_add(max_fee));

            let deadline =
                frame_system::Pallet::<T>::block_number().saturating_add(T::AckTimeout::get());
            JobsByDeadline::<T>::insert(deadline, job, ());
            JobsByProvider::<T>::insert(&provider, job, ());
            Jobs::<T>::insert(
                job,
                Job {
                    submitter: who.clone(),
                    provider: provider.clone(),
                    adapter,
                    input_hash,
                    max_output_tokens,
                    escrow: max_fee,
                    price_per_1k,
                    gateway: gateway.clone(),
                    phase: JobPhase::Assigned,
                    deadline,
                },
            );
            Self::deposit_event(Event::JobAssigned {
                job,
                submitter: who,
                provider,
                adapter,
                input_hash,
                max_output_tokens,
                escrow: max_fee,
                gateway,
                deadline,
            });
            Ok(())
        }

        /// Acknowledge `job` as its provider's worker: the worker has the payload and runs it.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::acknowledge())]
        pub fn acknowledge(origin: OriginFor<T>, job: JobId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut record = Self::open_job(job)?;
            ensure!(T::Providers::is_worker(&record.provider, &who), Error::<T>::NotAssignedWorker);
            ensure!(record.phase == JobPhase::Assigned, Error::<T>::AlreadyAcknowledged);
            let now = frame_system::Pallet::<T>::block_number();
            ensure!(now <= record.deadline, Error::<T>::DeadlinePassed);

            let deadline = now.saturating_add(T::JobTimeout::get());
            JobsByDeadline::<T>::remove(record.deadline, job);
            JobsByDeadline::<T>::insert(deadline, job, ());
            record.phase = JobPhase::Acknowledged;
            record.deadline = deadline;
            let provider = record.provider.clone();
            Jobs::<T>::insert(job, record);
            Self::deposit_event(Event::JobAcknowledged { job, provider, deadline });
            Ok(())
        }

        /// Settle jobs with their workers' signed receipts. Valid receipts settle even when
        /// others in the batch are rejected.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::submit_receipts(receipts.len() as u32).saturating_add(
            T::Settlement::settle_weight()
                .saturating_add(T::Audit::offer_weight())
                .saturating_mul(receipts.len() as u64)
        ))]
        pub fn submit_receipts(
            origin: OriginFor<T>,
            receipts: BoundedVec<Receipt, T::MaxReceiptsPerBatch>,
        ) -> DispatchResultWithPostInfo {
            ensure_signed(origin)?;
            Self::settle_batch(receipts)
        }

        /// Expire `job` after its deadline: refund its escrow to the user, and slash its
        /// provider if its worker had acknowledged the job. Anyone may call this; it costs no
        /// fee when it succeeds.
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::expire())]
        pub fn expire(origin: OriginFor<T>, job: JobId) -> DispatchResultWithPostInfo {
            ensure_signed(origin)?;
            Self::do_expire(job)?;
            Ok(Pays::No.into())
        }

        /// Refuse `job` as its provider's worker, for `reason`: the job closes, the user's escrow
        /// is released in full and the provider is not slashed. Costs no fee when it succeeds
        /// (a worker pays nothing for a request it could not serve).
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::refuse())]
        pub fn refuse(
            origin: OriginFor<T>,
            job: JobId,
            reason: RefusalReason,
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            Self::do_refuse(&who, job, reason)?;
            Ok(Pays::No.into())
        }
    }

    /// Reads for clients, answered from the chain's state (metadata V16 view functions).
    #[pallet::view_functions]
    impl<T: Config> Pallet<T> {
        /// The exact bytes the worker of open job `job` signs, with the key its provider
        /// registered, for a receipt with these fields: the SCALE encoding of `ReceiptPayload`
        /// (domain `openledger/receipt/v3`, this chain's genesis hash, the job, its provider and
        /// adapter, the fields, the BLAKE2b-256 of the SCALE-encoded `context`, then
        /// `commitment_hash`: the BLAKE2b-256 of the answer's activation commitment, zeros for
        /// none). Sign them as
        /// they are with ed25519 (no pre-hashing) and submit the receipt with
        /// `submit_receipts`. `None` when no open job has this id (never assigned, or closed).
        pub fn receipt_signing_payload(
            job: JobId,
            output_hash: H256,
            input_tokens: u32,
            output_tokens: u32,
            context: ReceiptContext,
            commitment_hash: H256,
        ) -> Option<alloc::vec::Vec<u8>> {
            Self::receipt_payload_of(&ReceiptFields {
                job,
                output_hash,
                input_tokens,
                output_tokens,
                context,
                commitment_hash,
            })
        }

        /// What is known about job id `job`: open (with its record: phase, provider, escrow,
        /// deadline), closed (settled, refused or expired; its events say which), or unknown.
        pub fn job_status(job: JobId) -> JobStatus<T> {
            Self::status_of(job)
        }

        /// The provider `submit_job` would assign now for a job on `adapter` generating at most
        /// `max_output_tokens`, its price, and the smallest `max_fee` that provider accepts.
        /// `None` when the adapter is unknown or no provider can take the job now.
        pub fn quote(adapter: AdapterId, max_output_tokens: u32) -> Option<Quote<T>> {
            Self::quote_for(adapter, max_output_tokens)
        }
    }
}
