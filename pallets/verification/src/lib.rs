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
pub use openledger_primitives::market::{
    AdapterCatalog, ProviderRegistry, RedeemedWork, SettledWork, WorkAudit,
};

/// The balance type of the pallet's currency.
pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

#[frame_support::pallet]
#[pallet_doc("../README.md")]
pub mod pallet {
    use super::*;
    use frame_support::{pallet_prelude::*, traits::Randomness};
    use frame_system::pallet_prelude::*;
    use openledger_primitives::service_receipt::{MAX_PROOF_DEPTH, MAX_SERVICE_RECEIPT_BYTES};
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

        /// Blocks a verifier has to post its verdict, and a provider to reveal a drawn receipt.
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

        /// Most audits open at once (no new one is opened beyond it), and most receipts
        /// waiting to be revealed.
        #[pallet::constant]
        type MaxOpenAudits: Get<u32>;

        /// Most requests of one redeemed voucher drawn for verification.
        #[pallet::constant]
        type MaxSamplesPerRedemption: Get<u32>;

        /// Confirmed audits of a provider whose scores are judged together (at most
        /// `MAX_DRIFT_WINDOW`; 0 turns the judgement off): once a provider has this many, the
        /// median of its last ones is compared with `DriftLimit` after each.
        #[pallet::constant]
        type DriftWindow: Get<u32>;

        /// The median score (thousandths of the typical honest error) above which a provider's
        /// confirmed work is judged to drift from the model it registered: each job passed its
        /// own tolerance, but together they sit further from the commitments than honest
        /// rounding does (a cheat that keeps every job inside the per-job bound, such as an
        /// adapter applied at one layer only). The provider is slashed as for work found
        /// wrong, the last audited job's payer refunded.
        #[pallet::constant]
        type DriftLimit: Get<Score>;

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

    /// Jobs settled and vouchers redeemed in this block, by arrival, drawn for verification
    /// at the start of the next one. One entry each (not one vector), so an offer's proof
    /// holds only that entry: on a parachain a block's proof of validity is bounded.
    #[pallet::storage]
    pub type Offered<T: Config> =
        StorageMap<_, Twox64Concat, u32, Offer<T::AccountId, BalanceOf<T>>, OptionQuery>;

    /// How many entries `Offered` holds (at most `MaxOffersPerBlock`).
    #[pallet::storage]
    pub type OfferCount<T: Config> = StorageValue<_, u32, ValueQuery>;

    /// Each provider's scores of its last confirmed audits, oldest first (at most
    /// `DriftWindow`): the median of a full window is judged against `DriftLimit`.
    #[pallet::storage]
    pub type DriftScores<T: Config> = StorageMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        BoundedVec<Score, ConstU32<MAX_DRIFT_WINDOW>>,
        ValueQuery,
    >;

    /// Open audits, by what they check.
    #[pallet::storage]
    pub type Audits<T: Config> = CountedStorageMap<_, Blake2_128Concat, Subject, Audit<T>>;

    /// Leaves of redeemed vouchers drawn for verification, waiting for their provider to
    /// reveal the receipt (then an audit of that request opens).
    #[pallet::storage]
    pub type Reveals<T: Config> = CountedStorageMap<_, Blake2_128Concat, Leaf, PendingReveal<T>>;

    /// Each pending reveal under the block after its last one.
    #[pallet::storage]
    pub type RevealsByWake<T: Config> = StorageDoubleMap<
        _,
        Twox64Concat,
        BlockNumberFor<T>,
        Blake2_128Concat,
        Leaf,
        (),
        OptionQuery,
    >;

    /// Each provider's pending reveals (so its worker sees what to reveal).
    #[pallet::storage]
    pub type RevealsByProvider<T: Config> = StorageDoubleMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        Blake2_128Concat,
        Leaf,
        (),
        OptionQuery,
    >;

    /// Each open audit under the block at which it is looked at next (its `wake`).
    #[pallet::storage]
    pub type AuditsByWake<T: Config> = StorageDoubleMap<
        _,
        Twox64Concat,
        BlockNumberFor<T>,
        Blake2_128Concat,
        Subject,
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
        Subject,
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
        Subject,
        (),
        OptionQuery,
    >;

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// Settled work was drawn for verification and `verifier` assigned to recompute it
        /// by block `deadline`.
        AuditOpened {
            subject: Subject,
            provider: T::AccountId,
            verifier: T::AccountId,
            commitment_hash: H256,
            deadline: BlockNumberFor<T>,
        },
        /// Work drawn for verification could not be audited: no other provider serves its
        /// adapter, the adapter is gone, or too many audits are open.
        AuditSkipped { subject: Subject, provider: T::AccountId },
        /// A verifier posted its verdict, with its score (thousandths of the typical honest
        /// error).
        VerdictGiven {
            subject: Subject,
            verifier: T::AccountId,
            verdict: Verdict,
            evidence: H256,
            score: Score,
        },
        /// The verifier found against the provider, which may contest until block `until`.
        ProviderAccused { subject: Subject, provider: T::AccountId, until: BlockNumberFor<T> },
        /// The provider contested: `verifiers` were added to recompute the work.
        Contested {
            subject: Subject,
            verifiers: BoundedVec<T::AccountId, ConstU32<MAX_VERIFIERS>>,
            deadline: BlockNumberFor<T>,
        },
        /// The work stands; the audit is closed.
        WorkConfirmed { subject: Subject, provider: T::AccountId },
        /// The work was found wrong: the provider's bond paid `refunded` back to the payer,
        /// `rewarded` to the verifiers who found it and `to_treasury` to the treasury.
        ProviderSlashed {
            subject: Subject,
            provider: T::AccountId,
            refunded: BalanceOf<T>,
            rewarded: BalanceOf<T>,
            to_treasury: BalanceOf<T>,
        },
        /// The work of `subject` stood on its own, but the median score of the provider's last
        /// `DriftWindow` confirmed audits, `median`, is above `DriftLimit`: its bond paid
        /// `refunded` back to this job's payer, `rewarded` to this audit's verifiers and
        /// `to_treasury` to the treasury, and its scores start again.
        ProviderDrifted {
            subject: Subject,
            provider: T::AccountId,
            median: Score,
            refunded: BalanceOf<T>,
            rewarded: BalanceOf<T>,
            to_treasury: BalanceOf<T>,
        },
        /// A verifier gave no verdict in time (or one the majority overturned) and lost
        /// `slashed` of its bond to the treasury.
        VerifierSlashed { subject: Subject, verifier: T::AccountId, slashed: BalanceOf<T> },
        /// A verifier that did not answer was replaced by `replacement`.
        VerifierReplaced {
            subject: Subject,
            dismissed: T::AccountId,
            replacement: T::AccountId,
            deadline: BlockNumberFor<T>,
        },
        /// No verifier could be found to finish the audit; it is closed without a verdict.
        AuditAbandoned { subject: Subject, provider: T::AccountId },
        /// Governance set the share of settled work verified.
        SampleShareSet { share: Perbill },
        /// A request paid by a redeemed voucher was drawn for verification: its provider must
        /// reveal the receipt at `leaf` by block `until`.
        RevealRequested { leaf: Leaf, provider: T::AccountId, until: BlockNumberFor<T> },
        /// The receipt at `leaf` was revealed and proven: it is request `request` of the
        /// channel (an audit of it opens, or is skipped, in the same block).
        ReceiptRevealed { leaf: Leaf, request: u64 },
        /// The provider did not reveal the receipt at `leaf` in time: treated as work found
        /// wrong, its bond paid `refunded` (the redemption's mean charge per request) back to
        /// the payer and `to_treasury` to the treasury.
        RevealMissed {
            leaf: Leaf,
            provider: T::AccountId,
            refunded: BalanceOf<T>,
            to_treasury: BalanceOf<T>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// No open audit of this work.
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
        /// No receipt of this leaf is waiting to be revealed.
        NoRevealPending,
        /// The path does not lead from the receipt's hash at this leaf to the voucher's root.
        BadProof,
        /// The bytes are not a version 2 service receipt of this channel on this chain.
        BadReceipt,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        fn on_initialize(now: BlockNumberFor<T>) -> Weight {
            let (jobs, redemptions) = Self::draw_offered();
            let woken = Self::wake_audits(now);
            let missed = Self::wake_reveals(now);
            T::WeightInfo::draw_jobs(jobs)
                .saturating_add(T::WeightInfo::draw_redemptions(redemptions))
                .saturating_add(T::WeightInfo::wake_audits(woken))
                .saturating_add(T::WeightInfo::wake_reveals(missed))
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_now: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Post the verdict of a verifier assigned to `subject`, with the hash of the evidence
        /// it recomputed and its score: how far the recomputation fell from the commitment,
        /// in thousandths of the typical honest error of the work's format ([`Score`]). Sent
        /// by the verifier provider or its worker account; free when accepted.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::submit_verdict().max(T::WeightInfo::submit_verdict_drift()))]
        pub fn submit_verdict(
            origin: OriginFor<T>,
            subject: Subject,
            verdict: Verdict,
            evidence: H256,
            score: Score,
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            Self::do_submit_verdict(&who, subject, verdict, evidence, score)?;
            Ok(Pays::No.into())
        }

        /// Contest the verdict that found the work of `subject` wrong, once, before the contest window
        /// ends: two more verifiers recompute it and the majority of the three decides. Sent
        /// by the provider or its worker account.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::contest())]
        pub fn contest(origin: OriginFor<T>, subject: Subject) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::do_contest(&who, subject)
        }

        /// Set the share of settled work that is verified (root): of jobs, and of the requests
        /// a redeemed voucher paid for.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::set_sample_share())]
        pub fn set_sample_share(origin: OriginFor<T>, share: Perbill) -> DispatchResult {
            ensure_root(origin)?;
            SampleShare::<T>::put(share);
            Self::deposit_event(Event::SampleShareSet { share });
            Ok(())
        }

        /// Reveal the receipt at a drawn `leaf` of a redeemed voucher: its signed bytes and
        /// the siblings on the path from its hash to the voucher's root, bottom up (`None`
        /// where a node had no neighbour). Once proven, an audit of that request opens as one
        /// of a settled job does, with the receipt's adapter, charge and commitment hash. Sent
        /// by anyone (the bytes prove themselves); free when accepted.
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::reveal(proof.len() as u32))]
        pub fn reveal(
            origin: OriginFor<T>,
            leaf: Leaf,
            receipt: BoundedVec<u8, ConstU32<MAX_SERVICE_RECEIPT_BYTES>>,
            proof: BoundedVec<Option<H256>, ConstU32<MAX_PROOF_DEPTH>>,
        ) -> DispatchResultWithPostInfo {
            ensure_signed(origin)?;
            Self::do_reveal(leaf, &receipt, &proof)?;
            Ok(Pays::No.into())
        }
    }

    /// Reads for clients, answered from the chain's state (metadata V16 view functions).
    #[pallet::view_functions]
    impl<T: Config> Pallet<T> {
        /// The open audit of `subject` (its provider, verifiers, verdicts and stage), if any.
        pub fn audit(subject: Subject) -> Option<Audit<T>> {
            Audits::<T>::get(subject)
        }

        /// `provider`'s scores of its last confirmed audits, oldest first (what its drift is
        /// judged on: the median of a full window against `DriftLimit`).
        pub fn drift_scores(provider: T::AccountId) -> alloc::vec::Vec<Score> {
            DriftScores::<T>::get(provider).into_inner()
        }

        /// The open audits of `provider`'s work, at most `limit`.
        pub fn audits_of(provider: T::AccountId, limit: u32) -> alloc::vec::Vec<Subject> {
            Self::audits_of_provider(&provider, limit)
        }

        /// The work `verifier` (a provider) must give its verdict on now, at most `limit`.
        pub fn audits_owed(verifier: T::AccountId, limit: u32) -> alloc::vec::Vec<Subject> {
            Self::audits_of_verifier(&verifier, limit)
        }

        /// The drawn receipts `provider` must reveal now, at most `limit`, with what they
        /// are checked against.
        pub fn reveals_owed(
            provider: T::AccountId,
            limit: u32,
        ) -> alloc::vec::Vec<(Leaf, PendingReveal<T>)> {
            Self::reveals_of_provider(&provider, limit)
        }
    }

    impl<T: Config> WorkAudit<T::AccountId, BalanceOf<T>> for Pallet<T> {
        fn offer(work: SettledWork<T::AccountId, BalanceOf<T>>) -> Weight {
            // Work past the block's bound is simply not verifiable; the settlement stands.
            Self::push_offer(Offer::Job(work));
            T::WeightInfo::offer()
        }

        fn offer_weight() -> Weight {
            T::WeightInfo::offer()
        }

        fn offer_redemption(work: RedeemedWork<T::AccountId, BalanceOf<T>>) -> Weight {
            Self::push_offer(Offer::Redemption(work));
            T::WeightInfo::offer()
        }
    }
}
