//! Benchmarks of `pallet-verification`, each at the worst case its weight function covers.

use super::*;
use crate::Pallet as Verification;
use alloc::vec::Vec;
use frame_benchmarking::v2::*;
use frame_support::pallet_prelude::*;
use frame_system::{pallet_prelude::BlockNumberFor, RawOrigin};
use openledger_primitives::market::{AdapterId, JobId};
use openledger_primitives::service_receipt::{node, ServiceReceiptMessage, SERVICE_RECEIPT_DOMAIN};
use sp_core::H256;
use sp_runtime::{traits::Saturating, Perbill};

/// Sets up the world the benchmarks need; implemented by the runtime (and the mock).
pub trait BenchmarkHelper<AccountId> {
    /// An adapter the catalogue knows.
    fn adapter() -> AdapterId;

    /// Make `who` a bonded provider of `adapter`'s base model.
    fn provider(who: &AccountId, adapter: AdapterId);
}

/// As many providers of the adapter's base model as the registry lists (index 0 is the
/// audited one).
fn providers<T: Config>() -> Vec<T::AccountId> {
    let adapter = T::BenchmarkHelper::adapter();
    let max = <T::Providers as ProviderRegistry<_, _>>::MaxCandidates::get();
    (0..max)
        .map(|i| {
            let who: T::AccountId = account("provider", i, 0);
            T::BenchmarkHelper::provider(&who, adapter);
            who
        })
        .collect()
}

fn work<T: Config>(job: JobId, provider: &T::AccountId) -> SettledWork<T::AccountId, BalanceOf<T>> {
    SettledWork {
        job,
        payer: account("payer", 0, 0),
        provider: provider.clone(),
        adapter: T::BenchmarkHelper::adapter(),
        charged: 1_000u32.into(),
        commitment_hash: H256::repeat_byte(1),
    }
}

fn redemption<T: Config>(
    channel: u64,
    provider: &T::AccountId,
) -> RedeemedWork<T::AccountId, BalanceOf<T>> {
    RedeemedWork {
        channel,
        sequence: 1,
        payer: account("payer", 0, 0),
        provider: provider.clone(),
        receipts_root: H256::repeat_byte(4),
        inferences: 1_000_000,
        amount: 1_000_000u32.into(),
    }
}

/// A pending reveal of `leaf` for `providers[0]`, due by `until`.
fn insert_reveal<T: Config>(
    leaf: Leaf,
    provider: &T::AccountId,
    receipts_root: H256,
    inferences: u64,
    until: BlockNumberFor<T>,
) {
    RevealsByWake::<T>::insert(until.saturating_add(1u32.into()), leaf, ());
    RevealsByProvider::<T>::insert(provider, leaf, ());
    Reveals::<T>::insert(
        leaf,
        PendingReveal {
            provider: provider.clone(),
            payer: account("payer", 0, 0),
            receipts_root,
            inferences,
            amount: 1_000_000u32.into(),
            until,
        },
    );
}

/// An audit of `job` of `providers[0]` in `stage`, with the given verifiers (verdicts given
/// or not), stored with its index entries.
fn insert_audit<T: Config>(
    job: JobId,
    providers: &[T::AccountId],
    verifiers: &[(usize, Option<Verdict>)],
    stage: Stage<BlockNumberFor<T>>,
    deadline: BlockNumberFor<T>,
    wake: BlockNumberFor<T>,
) {
    let assignments: Vec<Assignment<T>> = verifiers
        .iter()
        .map(|(i, verdict)| Assignment {
            verifier: providers[*i].clone(),
            deadline,
            verdict: verdict.map(|v| (v, H256::repeat_byte(2))),
            score: 1_000,
        })
        .collect();
    let job = Subject::Job(job);
    for a in assignments.iter().filter(|a| a.verdict.is_none()) {
        AuditsByVerifier::<T>::insert(&a.verifier, job, ());
    }
    AuditsByWake::<T>::insert(wake, job, ());
    AuditsByProvider::<T>::insert(&providers[0], job, ());
    Audits::<T>::insert(
        job,
        Audit {
            provider: providers[0].clone(),
            payer: account("payer", 0, 0),
            adapter: T::BenchmarkHelper::adapter(),
            base_model: T::Adapters::adapter(T::BenchmarkHelper::adapter())
                .map(|terms| terms.base_model)
                .unwrap_or_default(),
            charged: 1_000u32.into(),
            commitment_hash: H256::repeat_byte(1),
            verifiers: assignments.try_into().unwrap(),
            dismissed: BoundedVec::new(),
            stage,
            wake,
        },
    );
}

#[benchmarks]
mod benchmarks {
    use super::*;

    /// One settled job appended to a nearly full block's offers.
    #[benchmark]
    fn offer() {
        let providers = providers::<T>();
        for job in 1..T::MaxOffersPerBlock::get() {
            Verification::<T>::offer(work::<T>(job.into(), &providers[0]));
        }
        #[block]
        {
            Verification::<T>::offer(work::<T>(0, &providers[0]));
        }
        assert_eq!(OfferCount::<T>::get(), T::MaxOffersPerBlock::get());
    }

    /// `d` offered jobs, all drawn, each assigned a verifier among a full list of providers
    /// (the jobs' part of `on_initialize`).
    #[benchmark]
    fn draw_jobs(d: Linear<0, 64>) {
        let providers = providers::<T>();
        SampleShare::<T>::put(Perbill::one());
        for job in 0..d {
            Verification::<T>::offer(work::<T>(job.into(), &providers[0]));
        }
        let drawn;
        #[block]
        {
            drawn = Verification::<T>::draw_offered();
        }
        assert_eq!(drawn, (d, 0));
        assert_eq!(Audits::<T>::count(), d);
    }

    /// `s` redeemed vouchers, each drawing `MaxSamplesPerRedemption` leaves to reveal (the
    /// vouchers' part of `on_initialize`).
    #[benchmark]
    fn draw_redemptions(s: Linear<0, 64>) {
        let providers = providers::<T>();
        SampleShare::<T>::put(Perbill::one());
        for channel in 0..s {
            Verification::<T>::offer_redemption(redemption::<T>(channel.into(), &providers[0]));
        }
        let drawn;
        #[block]
        {
            drawn = Verification::<T>::draw_offered();
        }
        assert_eq!(drawn, (0, s));
        let leaves = s.saturating_mul(T::MaxSamplesPerRedemption::get());
        assert_eq!(Reveals::<T>::count(), leaves.min(T::MaxOpenAudits::get()));
    }

    /// `w` contested audits due, each with two verifiers late: both slashed and replaced.
    #[benchmark]
    fn wake_audits(w: Linear<0, 64>) {
        let providers = providers::<T>();
        let now = frame_system::Pallet::<T>::block_number().saturating_add(10u32.into());
        let late = now.saturating_sub(1u32.into());
        for job in 0..w {
            insert_audit::<T>(
                1_000_000u64.saturating_add(job.into()),
                &providers,
                &[(1, Some(Verdict::Mismatch)), (2, None), (3, None)],
                Stage::Contested,
                late,
                now,
            );
        }
        frame_system::Pallet::<T>::set_block_number(now);
        let woken;
        #[block]
        {
            woken = Verification::<T>::wake_audits(now);
        }
        assert_eq!(woken, w);
        assert!(Audits::<T>::iter().filter(|(_, a)| a.dismissed.len() == 2).count() as u32 == w);
    }

    /// `r` reveals missed, each slashing the provider to the payer and the treasury.
    #[benchmark]
    fn wake_reveals(r: Linear<0, 64>) {
        let providers = providers::<T>();
        let now = frame_system::Pallet::<T>::block_number().saturating_add(10u32.into());
        let late = now.saturating_sub(1u32.into());
        for index in 0..r {
            let leaf = Leaf { channel: 1_000_000, sequence: 1, index: index.into() };
            insert_reveal::<T>(leaf, &providers[0], H256::repeat_byte(5), 1_000, late);
        }
        frame_system::Pallet::<T>::set_block_number(now);
        let missed;
        #[block]
        {
            missed = Verification::<T>::wake_reveals(now);
        }
        assert_eq!(missed, r);
        assert_eq!(Reveals::<T>::count(), 0);
    }

    /// A receipt revealed at a leaf `p` levels deep, its audit opened with a verifier chosen
    /// among a full list of providers.
    #[benchmark]
    fn reveal(p: Linear<1, 32>) {
        let providers = providers::<T>();
        let genesis = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
        let receipt = ServiceReceiptMessage {
            domain: SERVICE_RECEIPT_DOMAIN,
            genesis_hash: H256::from_slice(genesis.as_ref()),
            channel: 3,
            request: 9,
            adapter: T::BenchmarkHelper::adapter(),
            input_hash: H256::repeat_byte(6),
            output_hash: H256::repeat_byte(7),
            input_tokens: 100,
            output_tokens: 100,
            charge: 1_000,
            contexts: BoundedVec::new(),
            commitment_hash: H256::repeat_byte(8),
        }
        .encode();
        let siblings: Vec<Option<H256>> =
            (0..p).map(|i| Some(H256::repeat_byte(i as u8))).collect();
        let mut root = openledger_primitives::service_receipt::leaf(&receipt);
        for s in &siblings {
            root = node(&root, &s.unwrap_or_default().0);
        }
        let leaf = Leaf { channel: 3, sequence: 1, index: 0 };
        let until = frame_system::Pallet::<T>::block_number().saturating_add(5u32.into());
        insert_reveal::<T>(leaf, &providers[0], H256(root), 1u64 << p, until);
        let receipt: BoundedVec<u8, _> = receipt.try_into().unwrap();
        let proof: BoundedVec<Option<H256>, _> = siblings.try_into().unwrap();
        #[extrinsic_call]
        _(RawOrigin::Signed(providers[1].clone()), leaf, receipt, proof);
        assert_eq!(Reveals::<T>::count(), 0);
        assert!(Audits::<T>::contains_key(Subject::Request { channel: 3, request: 9 }));
    }

    /// The last verdict of a contest: it finds the fault, slashing the provider to the payer,
    /// two finders and the treasury, and the overturned verifier to the treasury.
    #[benchmark]
    fn submit_verdict() {
        let providers = providers::<T>();
        let now = frame_system::Pallet::<T>::block_number();
        let deadline = now.saturating_add(5u32.into());
        insert_audit::<T>(
            1,
            &providers,
            &[(1, Some(Verdict::Mismatch)), (2, Some(Verdict::Match)), (3, None)],
            Stage::Contested,
            deadline,
            deadline.saturating_add(1u32.into()),
        );
        let verifier = providers[3].clone();
        #[extrinsic_call]
        _(RawOrigin::Signed(verifier), Subject::Job(1), Verdict::Mismatch, H256::repeat_byte(3), 0);
        assert_eq!(Audits::<T>::count(), 0);
    }

    /// A match that fills the provider's score window with a median above the limit: the
    /// drift judgement, and the provider slashed to the payer, the verifier and the treasury.
    #[benchmark]
    fn submit_verdict_drift() {
        let providers = providers::<T>();
        let now = frame_system::Pallet::<T>::block_number();
        let deadline = now.saturating_add(5u32.into());
        insert_audit::<T>(1, &providers, &[(1, None)], Stage::Open, deadline, deadline);
        let window = T::DriftWindow::get().clamp(1, MAX_DRIFT_WINDOW);
        let scores = alloc::vec![Score::MAX; window.saturating_sub(1) as usize];
        DriftScores::<T>::insert(&providers[0], BoundedVec::truncate_from(scores));
        let verifier = providers[1].clone();
        #[extrinsic_call]
        submit_verdict(
            RawOrigin::Signed(verifier),
            Subject::Job(1),
            Verdict::Match,
            H256::repeat_byte(3),
            Score::MAX,
        );
        assert_eq!(Audits::<T>::count(), 0);
        assert!(!DriftScores::<T>::contains_key(&providers[0]));
    }

    /// A contest choosing two verifiers among a full list of providers.
    #[benchmark]
    fn contest() {
        let providers = providers::<T>();
        let now = frame_system::Pallet::<T>::block_number();
        let until = now.saturating_add(5u32.into());
        insert_audit::<T>(
            1,
            &providers,
            &[(1, Some(Verdict::Mismatch))],
            Stage::Accused { until },
            now,
            until.saturating_add(1u32.into()),
        );
        #[extrinsic_call]
        _(RawOrigin::Signed(providers[0].clone()), Subject::Job(1));
        assert_eq!(Audits::<T>::get(Subject::Job(1)).map(|a| a.verifiers.len()), Some(3));
    }

    #[benchmark]
    fn set_sample_share() {
        #[extrinsic_call]
        _(RawOrigin::Root, Perbill::from_percent(3));
        assert_eq!(SampleShare::<T>::get(), Perbill::from_percent(3));
    }

    impl_benchmark_test_suite!(Verification, crate::mock::new_test_ext(), crate::mock::Test);
}
