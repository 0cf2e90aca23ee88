//! Benchmarks of `pallet-compute`, each at the worst case its weight function covers.

use super::*;
use crate::Pallet as Compute;
use frame_benchmarking::v2::*;
use frame_support::{
    pallet_prelude::*,
    traits::fungible::{Inspect, InspectHold, Mutate},
};
use frame_system::RawOrigin;
use openledger_primitives::market::{AdapterId, BaseModelId};
use sp_runtime::traits::Saturating;

/// Terms of the largest encoded size, serving models `first..first + models`.
pub fn max_terms<T: Config>(first: BaseModelId, models: u32) -> ProviderTerms<T> {
    let bytes = |n: u32| alloc::vec![0x5a_u8; n as usize];
    let addr: BoundedVec<u8, T::MaxMultiaddrLen> =
        bytes(T::MaxMultiaddrLen::get()).try_into().unwrap();
    ProviderTerms {
        spec: GpuSpec {
            model: bytes(T::MaxGpuNameLen::get()).try_into().unwrap(),
            memory_gib: 141,
            gpu_count: 8,
            bf16_tflops: Some(989),
        },
        region: *b"US",
        endpoint: Endpoint {
            peer_id: bytes(T::MaxPeerIdLen::get()).try_into().unwrap(),
            multiaddrs: alloc::vec![addr; T::MaxMultiaddrs::get() as usize].try_into().unwrap(),
        },
        // Any 32 bytes that are not a small-order point will do: registration does not decode it.
        worker_key: sp_core::ed25519::Public::from_raw([7; 32]),
        worker_account: None,
        base_models: (first..first.saturating_add(models))
            .collect::<alloc::vec::Vec<_>>()
            .try_into()
            .unwrap(),
        price_per_1k: 1u32.into(),
        max_concurrent: u32::MAX,
    }
}

/// Give `who` plenty to bond.
fn fund<T: Config>(who: &T::AccountId) {
    let amount = T::MinProviderBond::get()
        .saturating_mul(1_000u32.into())
        .saturating_add(T::Currency::minimum_balance());
    T::Currency::set_balance(who, amount);
}

/// An account with plenty to bond.
fn funded<T: Config>(name: &'static str, index: u32) -> T::AccountId {
    let who: T::AccountId = account(name, index, 0);
    fund::<T>(&who);
    who
}

/// Make `who` a funded, bonded, eligible provider of `model` serving `adapter` with
/// `worker_key`, price 1 per 1,000 tokens and unbounded concurrency: for other pallets'
/// benchmarks (the runtime's `pallet_jobs::BenchmarkHelper` calls this).
pub fn register_eligible<T: Config>(
    who: &T::AccountId,
    worker_key: sp_core::ed25519::Public,
    model: BaseModelId,
    adapter: AdapterId,
) {
    fund::<T>(who);
    let mut terms = max_terms::<T>(model, 1);
    terms.worker_key = worker_key;
    Compute::<T>::register_provider(
        RawOrigin::Signed(who.clone()).into(),
        terms,
        T::MinProviderBond::get(),
    )
    .unwrap();
    Compute::<T>::set_served_adapters(
        RawOrigin::Signed(who.clone()).into(),
        who.clone(),
        alloc::vec![adapter].try_into().unwrap(),
    )
    .unwrap();
}

/// Declare `n` adapters (ids `first..first + n`) for `who`.
fn serve<T: Config>(who: &T::AccountId, first: AdapterId, n: u32) {
    let adapters: alloc::vec::Vec<AdapterId> = (first..first.saturating_add(n)).collect();
    Compute::<T>::set_served_adapters(
        RawOrigin::Signed(who.clone()).into(),
        who.clone(),
        adapters.try_into().unwrap(),
    )
    .unwrap();
}

/// Fill the model index of `models` up to one below its bound, with accounts that are not
/// providers, so adding or removing a provider touches full lists.
fn fill_model_index<T: Config>(first: BaseModelId, models: u32) {
    let fillers = T::MaxProvidersPerModel::get().saturating_sub(1);
    for model in first..first.saturating_add(models) {
        let list: alloc::vec::Vec<T::AccountId> =
            (0..fillers).map(|i| account("filler", i, model)).collect();
        ProvidersByModel::<T>::insert(model, BoundedVec::truncate_from(list));
    }
}

fn register<T: Config>(who: &T::AccountId, models: u32) {
    Compute::<T>::register_provider(
        RawOrigin::Signed(who.clone()).into(),
        max_terms::<T>(0, models),
        T::MinProviderBond::get(),
    )
    .unwrap();
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn register_provider(m: Linear<1, { T::MaxBaseModels::get() }>) {
        let who = funded::<T>("provider", 0);
        fill_model_index::<T>(0, m);
        let bond = T::MinProviderBond::get();

        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), max_terms::<T>(0, m), bond);

        assert_eq!(ProviderStates::<T>::get(&who).unwrap().bond, bond);
    }

    #[benchmark]
    fn update_provider(m: Linear<1, { T::MaxBaseModels::get() }>) {
        let who = funded::<T>("provider", 0);
        fill_model_index::<T>(0, m);
        register::<T>(&who, m);
        // Move to m other models, all nearly full: m removals and m insertions.
        fill_model_index::<T>(m, m);

        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), max_terms::<T>(m, m));

        assert!(ProvidersByModel::<T>::get(m).contains(&who));
        assert!(!ProvidersByModel::<T>::get(0).contains(&who));
    }

    #[benchmark]
    fn bond_extra() {
        let who = funded::<T>("provider", 0);
        register::<T>(&who, 1);
        let amount = T::MinProviderBond::get();

        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), amount);

        assert_eq!(
            T::Currency::balance_on_hold(&HoldReason::ProviderBond.into(), &who),
            amount.saturating_add(amount)
        );
    }

    #[benchmark]
    fn heartbeat(a: Linear<0, { T::MaxHotAdapters::get() }>) {
        let who = funded::<T>("provider", 0);
        register::<T>(&who, 1);
        let hot: BoundedVec<_, T::MaxHotAdapters> =
            (0..a).collect::<alloc::vec::Vec<_>>().try_into().unwrap();

        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), who.clone(), hot, 4);

        assert_eq!(HotAdapters::<T>::get(&who).len() as u32, a);
    }

    #[benchmark]
    fn unregister(m: Linear<1, { T::MaxBaseModels::get() }>) {
        let who = funded::<T>("provider", 0);
        fill_model_index::<T>(0, m);
        register::<T>(&who, m);

        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()));

        assert!(!ProvidersByModel::<T>::get(0).contains(&who));
    }

    #[benchmark]
    fn set_served_adapters(
        o: Linear<0, { T::MaxServedAdapters::get() }>,
        n: Linear<0, { T::MaxServedAdapters::get() }>,
    ) {
        let who = funded::<T>("provider", 0);
        register::<T>(&who, 1);
        // `o` declared before, all replaced by `n` others.
        serve::<T>(&who, 0, o);
        let adapters: alloc::vec::Vec<AdapterId> = (o..o.saturating_add(n)).collect();
        let adapters: BoundedVec<_, T::MaxServedAdapters> = adapters.try_into().unwrap();

        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), who.clone(), adapters);

        assert_eq!(ServedAdapterCount::<T>::get(&who), n);
    }

    #[benchmark]
    fn withdraw_unbonded(s: Linear<0, { T::MaxServedAdapters::get() }>) {
        let who = funded::<T>("provider", 0);
        register::<T>(&who, 1);
        serve::<T>(&who, 0, s);
        Compute::<T>::unregister(RawOrigin::Signed(who.clone()).into()).unwrap();
        let later =
            frame_system::Pallet::<T>::block_number().saturating_add(T::UnbondingPeriod::get());
        frame_system::Pallet::<T>::set_block_number(later);

        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()));

        assert!(ProviderStates::<T>::get(&who).is_none());
        assert_eq!(ServedAdapterCount::<T>::get(&who), 0);
    }

    #[benchmark]
    fn set_base_model() {
        let spec = openledger_primitives::market::BaseModelSpec {
            weights: [0x5a; 32],
            format: openledger_primitives::market::NumericFormat::CudaBf16,
        };

        #[extrinsic_call]
        _(RawOrigin::Root, 7, Some(spec));

        assert_eq!(BaseModels::<T>::get(7), Some(spec));
    }

    impl_benchmark_test_suite!(Compute, crate::mock::new_test_ext(), crate::mock::Test);
}
