// The overview is README.md: rustdoc shows it as the crate's documentation and
// `#[pallet_doc]` puts it in the runtime metadata, where wallets and explorers read it.
#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]

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
pub use openledger_primitives::market::{AdapterCatalog, ProviderRegistry, SettledWork, WorkAudit};

/// The balance type of the pallet's currency.
pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

#[frame_support::pallet]
#[pallet_doc("../README.md")]
pub mod pallet {
    use super::*;
    use frame_support::{pallet_prelude::*, traits::Randomness};
    use frame_system::pallet_prelude::*;
    use openledger_primitives::market::JobId;
    use sp_core::H256;
    use sp_runtime::Perbill;

    const STORAGE_VERSION: StorageVersion = StorageVersion::new(0);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// OPEN.
        type Currency: Inspect<Self::AccountId>;

        /// The GPU provider registry (`pallet-compute`): who serves a base model, who acts
        /// for a provider, and the bonds slashed.
        type Providers: ProviderRegistry<Self::AccountId, BalanceOf<Self>>;

        /// The adapter catalogue (`pallet-attribution`): an adapter's base model.
        type Adapters: AdapterCatalog<BalanceOf<Self>>;

        /// Source of the sampling draw and the choice of verifiers. It must not be known when
        /// the receipt is submitted: the draw is made in the block after it.
        type Randomness: Randomness<Self::Hash, BlockNumberFor<Self>>;

        /// Where what a slash leaves after refund and reward goes, and a slow verifier's
        /// slash.
        type Treasury: Get<Self::AccountId>;

        /// The share of settled jobs verified until governance sets another
        /// (`set_sample_share`).
        #[pallet::constant]
        type DefaultSampleShare: Get<Perbill>;

        /// Blocks a verifier has to post its verdict.
        #[pallet::constant]
        type VerdictTimeout: Get<BlockNumberFor<Self>>;

        /// Blocks a provider found at fault has to contest.
        #[pallet::constant]
        type ContestWindow: Get<BlockNumberFor<Self>>;

        /// Share of its bond a provider loses when its work is found wrong.
        #[pallet::constant]
        type FaultSlash: Get<Perbill>;

        /// Share of what a fault slash leaves after the payer's refund that goes to the
        /// verifiers who found the fault (split evenly); the rest goes to the treasury.
        #[pallet::constant]
        type VerifierReward: Get<Perbill>;

        /// Share of its bond a verifier loses for a verdict not given in time, or one the
        /// majority overturned.
        #[pallet::constant]
        type VerifierSlash: Get<Perbill>;

        /// Most jobs settled in one block that can be offered for verification (later ones
        /// in that block are not).
        #[pallet::constant]
        type MaxOffersPerBlock: Get<u32>;

        /// Most audits open at once (no new one is opened beyond it).
        #[pallet::constant]
        type MaxOpenAudits: Get<u32>;

        /// Weights of this pallet's calls and hooks.
        type WeightInfo: WeightInfo;

        /// Sets up adapters and providers for the benchmarks.
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper<Self::AccountId>;
    }

    /// The share of settled jobs that are verified.
    #[pallet::storage]
    pub type SampleShare<T: Config> =
        StorageValue<_, Perbill, ValueQuery, <T as Config>::DefaultSampleShare>;

    /// Jobs settled in this block, drawn for verification at the start of the next one.
    #[pallet::storage]
    pub type Offered<T: Config> = StorageValue<
        _,
        BoundedVec<SettledWork<T::AccountId, BalanceOf<T>>, T::MaxOffersPerBlock>,
        ValueQuery,
    >;

    /// Open audits, by job.
    #[pallet::storage]
    pub type Audits<T: Config> = CountedStorageMap<_, Blake2_128Concat, JobId, Audit<T>>;

    /// Each open audit under the block at which it is looked at next (its `wake`).
    #[pallet::storage]
    pub type AuditsByWake<T: Config> = StorageDoubleMap<
        _,
        Twox64Concat,
        BlockNumberFor<T>,
        Blake2_128Concat,
        JobId,
        (),
        OptionQuery,
    >;

    /// Each audited provider's open audits (so its worker sees an accusation to contest).
    #[pallet::storage]
    pub type AuditsByProvider<T: Config> = StorageDoubleMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        Blake2_128Concat,
        JobId,
        (),
        OptionQuery,
    >;

    /// Each verifier's pending work: the audits it must answer.
    #[pallet::storage]
    pub type AuditsByVerifier<T: Config> = StorageDoubleMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        Blake2_128Concat,
        JobId,
        (),
        OptionQuery,
    >;

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A settled job was drawn for verification and `verifier` assigned to recompute it
        /// by block `deadline`.
        AuditOpened {
            job: JobId,
            provider: T::AccountId,
            verifier: T::AccountId,
            commitment_hash: H256,
            deadline: BlockNumberFor<T>,
        },
        /// A job drawn for verification could not be audited: no other provider serves its
        /// adapter, the adapter is gone, or too many audits are open.
        AuditSkipped { job: JobId, provider: T::AccountId },
        /// A verifier posted its verdict.
        VerdictGiven { job: JobId, verifier: T::AccountId, verdict: Verdict, evidence: H256 },
        /// The verifier found against the provider, which may contest until block `until`.
        ProviderAccused { job: JobId, provider: T::AccountId, until: BlockNumberFor<T> },
        /// The provider contested: `verifiers` were added to recompute the job.
        Contested {
            job: JobId,
            verifiers: BoundedVec<T::AccountId, ConstU32<MAX_VERIFIERS>>,
            deadline: BlockNumberFor<T>,
        },
        /// The work stands; the audit is closed.
        WorkConfirmed { job: JobId, provider: T::AccountId },
        /// The work was found wrong: the provider's bond paid `refunded` back to the payer,
        /// `rewarded` to the verifiers who found it and `to_treasury` to the treasury.
        ProviderSlashed {
            job: JobId,
            provider: T::AccountId,
            refunded: BalanceOf<T>,
            rewarded: BalanceOf<T>,
            to_treasury: BalanceOf<T>,
        },
        /// A verifier gave no verdict in time (or one the majority overturned) and lost
        /// `slashed` of its bond to the treasury.
        VerifierSlashed { job: JobId, verifier: T::AccountId, slashed: BalanceOf<T> },
        /// A verifier that did not answer was replaced by `replacement`.
        VerifierReplaced {
            job: JobId,
            dismissed: T::AccountId,
            replacement: T::AccountId,
            deadline: BlockNumberFor<T>,
        },
        /// No verifier could be found to finish the audit; it is closed without a verdict.
        AuditAbandoned { job: JobId, provider: T::AccountId },
        /// Governance set the share of settled jobs verified.
        SampleShareSet { share: Perbill },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// No open audit for this job.
        UnknownAudit,
        /// The sender does not act for a verifier of this audit still owing a verdict.
        NotAssignedVerifier,
        /// The audit is not waiting for verdicts now (the provider was accused and may
        /// contest).
        NotAwaitingVerdicts,
        /// Only the audited provider (or its worker) may contest.
        NotTheProvider,
        /// Only an accusation can be contested, and only once.
        NotContestable,
        /// No other provider of the base model is free to verify: the accusation stands.
        NoVerifierAvailable,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        fn on_initialize(now: BlockNumberFor<T>) -> Weight {
            let drawn = Self::draw_offered();
            let woken = Self::wake_audits(now);
            T::WeightInfo::on_initialize(drawn, woken)
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_now: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Post the verdict of a verifier assigned to `job`, with the hash of the evidence it
        /// recomputed. Sent by the verifier provider or its worker account; free when
        /// accepted.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::submit_verdict())]
        pub fn submit_verdict(
            origin: OriginFor<T>,
            job: JobId,
            verdict: Verdict,
            evidence: H256,
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            Self::do_submit_verdict(&who, job, verdict, evidence)?;
            Ok(Pays::No.into())
        }

        /// Contest the verdict that found `job`'s work wrong, once, before the contest window
        /// ends: two more verifiers recompute it and the majority of the three decides. Sent
        /// by the provider or its worker account.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::contest())]
        pub fn contest(origin: OriginFor<T>, job: JobId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::do_contest(&who, job)
        }

        /// Set the share of settled jobs that are verified (root).
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::set_sample_share())]
        pub fn set_sample_share(origin: OriginFor<T>, share: Perbill) -> DispatchResult {
            ensure_root(origin)?;
            SampleShare::<T>::put(share);
            Self::deposit_event(Event::SampleShareSet { share });
            Ok(())
        }
    }

    /// Reads for clients, answered from the chain's state (metadata V16 view functions).
    #[pallet::view_functions]
    impl<T: Config> Pallet<T> {
        /// The open audit of `job` (its provider, verifiers, verdicts and stage), if any.
        pub fn audit(job: JobId) -> Option<Audit<T>> {
            Audits::<T>::get(job)
        }

        /// The open audits of `provider`'s work, at most `limit`.
        pub fn audits_of(provider: T::AccountId, limit: u32) -> alloc::vec::Vec<JobId> {
            Self::audits_of_provider(&provider, limit)
        }

        /// The jobs `verifier` (a provider) must give its verdict on now, at most `limit`.
        pub fn audits_owed(verifier: T::AccountId, limit: u32) -> alloc::vec::Vec<JobId> {
            Self::audits_of_verifier(&verifier, limit)
        }
    }

    impl<T: Config> WorkAudit<T::AccountId, BalanceOf<T>> for Pallet<T> {
        fn offer(work: SettledWork<T::AccountId, BalanceOf<T>>) -> Weight {
            // A job past the block's bound is simply not verifiable; the settlement stands.
            let _ = Offered::<T>::try_append(work);
            T::WeightInfo::offer()
        }

        fn offer_weight() -> Weight {
            T::WeightInfo::offer()
        }
    }
}
