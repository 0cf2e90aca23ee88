//! Benchmarks of `pallet-jobs`, each at the worst case its weight function covers.
//!
//! Receipts are signed inside the benchmark with a key from the keystore extension (the
//! `benchmark pallet` command and the test externality both provide one), so every receipt
//! pays for a real signature check.

use super::*;
use crate::Pallet as Jobs;
use frame_benchmarking::v2::*;
use frame_support::{
    pallet_prelude::*,
    traits::fungible::{Inspect, Mutate},
};
use frame_system::{pallet_prelude::BlockNumberFor, RawOrigin};
use openledger_primitives::market::{AdapterId, DataNetShare, JobId};
use sp_core::{crypto::KeyTypeId, ed25519, H256};
use sp_runtime::traits::{Saturating, Zero};

/// Sets up the world the benchmarks need; implemented by the runtime (and the mock).
pub trait BenchmarkHelper<AccountId> {
    /// An adapter the catalogue knows.
    fn adapter() -> AdapterId;

    /// Make `who` a provider eligible for jobs on `adapter`'s base model: registered with
    /// `worker_key`, bonded, heartbeat fresh, with at least `MaxReceiptsPerBatch` free slots,
    /// and a price (plus the adapter's) of at most 10^9 units per 1,000 tokens, the budget the
    /// benchmarks give each job.
    fn provider(who: &AccountId, worker_key: ed25519::Public, adapter: AdapterId);
}

const KEY_TYPE: KeyTypeId = KeyTypeId(*b"olrc");

fn funded<T: Config>(name: &'static str, index: u32) -> T::AccountId {
    let who: T::AccountId = account(name, index, 0);
    // Enough for many job budgets, and never below the existential deposit, whatever the
    // runtime's units.
    let funds = budget::<T>()
        .saturating_mul(10_000u32.into())
        .saturating_add(T::Currency::minimum_balance().saturating_mul(1_000u32.into()));
    T::Currency::set_balance(&who, funds);
    who
}

/// A job budget: large enough for any provider the helper sets up.
fn budget<T: Config>() -> BalanceOf<T> {
    1_000_000_000u32.into()
}

/// A provider with a fresh worker key from the keystore.
fn provider<T: Config>(index: u32, adapter: AdapterId) -> (T::AccountId, ed25519::Public) {
    let who: T::AccountId = account("provider", index, 0);
    let key = sp_io::crypto::ed25519_generate(KEY_TYPE, None);
    T::BenchmarkHelper::provider(&who, key, adapter);
    (who, key)
}

fn submit<T: Config>(user: &T::AccountId, adapter: AdapterId) -> JobId {
    let job = NextJobId::<T>::get();
    Jobs::<T>::submit_job(
        RawOrigin::Signed(user.clone()).into(),
        adapter,
        H256::repeat_byte(1),
        1_000,
        budget::<T>(),
        alloc::vec![7u8; T::MaxPeerIdLen::get() as usize],
    )
    .unwrap();
    job
}

fn signed_receipt<T: Config>(job: JobId, key: &ed25519::Public) -> Receipt {
    let record = Jobs::<T>::open_job(job).unwrap();
    let genesis = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
    let mut receipt = Receipt {
        job,
        output_hash: H256::repeat_byte(2),
        input_tokens: 500,
        output_tokens: 1_000,
        // The largest receipt: a full retrieval context (decoded and hashed per receipt).
        context: BoundedVec::truncate_from(
            (0..openledger_primitives::receipt::MAX_RECEIPT_CONTEXT)
                .map(|d| DataNetShare::new(d, sp_runtime::Permill::from_percent(1)))
                .collect(),
        ),
        commitment_hash: H256::repeat_byte(3),
        signature: ed25519::Signature::from_raw([0; 64]),
    };
    let payload = ReceiptPayload::new(genesis, record.provider, record.adapter, &receipt);
    receipt.signature =
        sp_io::crypto::ed25519_sign(KEY_TYPE, key, &payload.signing_bytes()).unwrap();
    receipt
}

#[benchmarks]
mod benchmarks {
    use super::*;

    /// `c` candidates for the base model, all eligible and evaluated.
    #[benchmark]
    fn submit_job(
        c: Linear<
            1,
            {
                <<T as Config>::Providers as ProviderRegistry<T::AccountId, BalanceOf<T>>>::MaxCandidates::get()
            },
        >,
    ) {
        let adapter = T::BenchmarkHelper::adapter();
        for i in 0..c {
            provider::<T>(i, adapter);
        }
        let user = funded::<T>("user", 0);
        let gateway = alloc::vec![7u8; T::MaxPeerIdLen::get() as usize];

        #[extrinsic_call]
        _(RawOrigin::Signed(user), adapter, H256::repeat_byte(1), 1_000, budget::<T>(), gateway);

        assert!(Jobs::<T>::open_job(0).is_ok());
    }

    #[benchmark]
    fn acknowledge() {
        let adapter = T::BenchmarkHelper::adapter();
        let (worker, _) = provider::<T>(0, adapter);
        let user = funded::<T>("user", 0);
        let job = submit::<T>(&user, adapter);

        #[extrinsic_call]
        _(RawOrigin::Signed(worker), job);

        assert_eq!(Jobs::<T>::open_job(job).unwrap().phase, JobPhase::Acknowledged);
    }

    /// `n` valid receipts, each settling a job of the same provider.
    #[benchmark]
    fn submit_receipts(n: Linear<1, { T::MaxReceiptsPerBatch::get() }>) {
        let adapter = T::BenchmarkHelper::adapter();
        let (_, key) = provider::<T>(0, adapter);
        let user = funded::<T>("user", 0);
        let receipts: alloc::vec::Vec<_> = (0..n)
            .map(|_| submit::<T>(&user, adapter))
            .collect::<alloc::vec::Vec<_>>()
            .into_iter()
            .map(|job| signed_receipt::<T>(job, &key))
            .collect();
        let receipts: BoundedVec<_, T::MaxReceiptsPerBatch> = receipts.try_into().unwrap();

        #[extrinsic_call]
        _(RawOrigin::Signed(user), receipts);

        assert!(Jobs::<T>::open_job(0).is_err());
        assert!(TotalEscrow::<T>::get().is_zero());
    }

    /// The worst case: an acknowledged job, whose provider is slashed.
    #[benchmark]
    fn expire() {
        let adapter = T::BenchmarkHelper::adapter();
        let (who, _) = provider::<T>(0, adapter);
        let user = funded::<T>("user", 0);
        let job = submit::<T>(&user, adapter);
        Jobs::<T>::acknowledge(RawOrigin::Signed(who).into(), job).unwrap();
        let deadline = Jobs::<T>::open_job(job).unwrap().deadline;
        frame_system::Pallet::<T>::set_block_number(deadline.saturating_add(1u32.into()));
        let caller = funded::<T>("keeper", 0);

        #[extrinsic_call]
        _(RawOrigin::Signed(caller), job);

        assert!(Jobs::<T>::open_job(job).is_err());
    }

    #[benchmark]
    fn refuse() {
        let adapter = T::BenchmarkHelper::adapter();
        let (who, _) = provider::<T>(0, adapter);
        let user = funded::<T>("user", 0);
        let job = submit::<T>(&user, adapter);
        Jobs::<T>::acknowledge(RawOrigin::Signed(who.clone()).into(), job).unwrap();

        #[extrinsic_call]
        _(RawOrigin::Signed(who), job, RefusalReason::PromptTooLong);

        assert!(Jobs::<T>::open_job(job).is_err());
        assert!(TotalEscrow::<T>::get().is_zero());
    }

    impl_benchmark_test_suite!(Jobs, crate::mock::new_test_ext(), crate::mock::Test);
}
