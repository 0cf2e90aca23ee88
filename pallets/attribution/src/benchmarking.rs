//! Benchmarks of every call, and of a settlement (whose weight must not depend on the number
//! of contributors: component `c`).

use super::*;
use crate::Pallet as Attribution;
use alloc::{vec, vec::Vec};
use frame_benchmarking::v2::*;
use frame_support::{
    traits::{
        fungible::{Inspect, Mutate},
        EnsureOrigin, Get,
    },
    BoundedVec,
};
use frame_system::RawOrigin;
use openledger_primitives::market::Settlement;
use sp_core::H256;
use sp_runtime::{
    traits::{Bounded, Saturating},
    Permill,
};

/// Record hash number `n`.
fn record_hash(n: u64) -> H256 {
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&n.to_be_bytes());
    H256(bytes)
}

fn funded<T: Config>(name: &'static str, i: u32) -> T::AccountId {
    let who: T::AccountId = account(name, i, 0);
    T::Currency::set_balance(&who, BalanceOf::<T>::max_value() / 1_000_000u32.into());
    who
}

/// A DataNet owned by `owner` with `curators` curators (the first is `owner`'s helper).
fn datanet_with<T: Config>(owner: &T::AccountId, curators: u32) -> DataNetId {
    let id = NextDataNetId::<T>::get();
    let metadata = vec![7u8; T::MaxMetadataLen::get() as usize].try_into().expect("fits");
    assert!(
        Attribution::<T>::create_datanet(RawOrigin::Signed(owner.clone()).into(), metadata).is_ok()
    );
    for i in 0..curators {
        let c: T::AccountId = account("curator", i, 0);
        assert!(
            Attribution::<T>::add_curator(RawOrigin::Signed(owner.clone()).into(), id, c).is_ok()
        );
    }
    id
}

fn approved<T: Config>(owner: &T::AccountId, d: DataNetId, who: &T::AccountId, n: u64) {
    let r = record_hash(n);
    assert!(Attribution::<T>::contribute(RawOrigin::Signed(who.clone()).into(), d, r, 10).is_ok());
    assert!(Attribution::<T>::approve_contribution(RawOrigin::Signed(owner.clone()).into(), d, r)
        .is_ok());
}

fn adapter_of<T: Config>(owner: &T::AccountId, training: &[DataNetId]) -> AdapterId {
    let id = NextAdapterId::<T>::get();
    let share = Permill::from_rational(1u32, training.len().max(1) as u32);
    let list: BoundedVec<_, T::MaxTrainingDataNets> = training
        .iter()
        .map(|d| DataNetShare::new(*d, share))
        .collect::<Vec<_>>()
        .try_into()
        .expect("fits");
    assert!(Attribution::<T>::register_adapter(
        RawOrigin::Signed(owner.clone()).into(),
        1,
        H256::repeat_byte(1),
        16,
        target::ALL,
        1_000u32.into(),
        list,
    )
    .is_ok());
    id
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn create_datanet() {
        Attribution::<T>::ensure_accounts_exist();
        let owner = funded::<T>("owner", 0);
        let metadata: BoundedVec<u8, T::MaxMetadataLen> =
            vec![7u8; T::MaxMetadataLen::get() as usize].try_into().expect("fits");
        #[extrinsic_call]
        _(RawOrigin::Signed(owner), metadata);
        assert!(DataNets::<T>::contains_key(0));
    }

    #[benchmark]
    fn add_curator() {
        let owner = funded::<T>("owner", 0);
        let d = datanet_with::<T>(&owner, T::MaxCurators::get().saturating_sub(1));
        let c: T::AccountId = account("new curator", 0, 0);
        #[extrinsic_call]
        _(RawOrigin::Signed(owner), d, c);
    }

    #[benchmark]
    fn remove_curator() {
        let owner = funded::<T>("owner", 0);
        let d = datanet_with::<T>(&owner, T::MaxCurators::get());
        let c: T::AccountId = account("curator", T::MaxCurators::get() - 1, 0);
        #[extrinsic_call]
        _(RawOrigin::Signed(owner), d, c);
    }

    #[benchmark]
    fn contribute() {
        let owner = funded::<T>("owner", 0);
        let d = datanet_with::<T>(&owner, 0);
        let who = funded::<T>("contributor", 0);
        #[extrinsic_call]
        _(RawOrigin::Signed(who), d, H256::repeat_byte(9), 10u128);
    }

    #[benchmark]
    fn approve_contribution() {
        let owner = funded::<T>("owner", 0);
        let d = datanet_with::<T>(&owner, T::MaxCurators::get());
        let who = funded::<T>("contributor", 0);
        // The contributor already has a stake with rewards to bring up to date.
        approved::<T>(&owner, d, &who, 1);
        let a = adapter_of::<T>(&owner, &[d]);
        let payer = funded::<T>("payer", 0);
        assert!(<Attribution<T> as Settlement<_, _>>::settle(
            0,
            &payer,
            &owner,
            a,
            1_000_000u32.into(),
            &[]
        )
        .is_ok());
        let r = record_hash(2);
        assert!(Attribution::<T>::contribute(RawOrigin::Signed(who).into(), d, r, 10).is_ok());
        #[extrinsic_call]
        _(RawOrigin::Signed(owner), d, r);
    }

    #[benchmark]
    fn reject_contribution() {
        let owner = funded::<T>("owner", 0);
        let d = datanet_with::<T>(&owner, T::MaxCurators::get());
        let who = funded::<T>("contributor", 0);
        let r = record_hash(1);
        assert!(Attribution::<T>::contribute(RawOrigin::Signed(who).into(), d, r, 10).is_ok());
        #[extrinsic_call]
        _(RawOrigin::Signed(owner), d, r);
    }

    #[benchmark]
    fn remove_contribution() {
        let owner = funded::<T>("owner", 0);
        let d = datanet_with::<T>(&owner, T::MaxCurators::get());
        let who = funded::<T>("contributor", 0);
        approved::<T>(&owner, d, &who, 1);
        #[extrinsic_call]
        _(RawOrigin::Signed(who), d, record_hash(1));
    }

    #[benchmark]
    fn claim_rewards() {
        Attribution::<T>::ensure_accounts_exist();
        let owner = funded::<T>("owner", 0);
        let d = datanet_with::<T>(&owner, 0);
        let who = funded::<T>("contributor", 0);
        approved::<T>(&owner, d, &who, 1);
        let a = adapter_of::<T>(&owner, &[d]);
        let payer = funded::<T>("payer", 0);
        assert!(<Attribution<T> as Settlement<_, _>>::settle(
            0,
            &payer,
            &owner,
            a,
            1_000_000u32.into(),
            &[]
        )
        .is_ok());
        #[extrinsic_call]
        _(RawOrigin::Signed(who), d);
    }

    #[benchmark]
    fn register_adapter(t: Linear<0, { T::MaxTrainingDataNets::get() }>) {
        let owner = funded::<T>("owner", 0);
        let list: Vec<_> = (0..t).map(|_| datanet_with::<T>(&owner, 0)).collect();
        let share = Permill::from_rational(1u32, t.max(1));
        let training: BoundedVec<_, T::MaxTrainingDataNets> = list
            .iter()
            .map(|d| DataNetShare::new(*d, share))
            .collect::<Vec<_>>()
            .try_into()
            .expect("fits");
        #[extrinsic_call]
        _(
            RawOrigin::Signed(owner),
            1,
            H256::repeat_byte(1),
            16,
            target::ALL,
            1_000u32.into(),
            training,
        );
    }

    #[benchmark]
    fn update_adapter_price() {
        let owner = funded::<T>("owner", 0);
        let a = adapter_of::<T>(&owner, &[]);
        #[extrinsic_call]
        _(RawOrigin::Signed(owner), a, 2_000u32.into());
    }

    #[benchmark]
    fn retire_adapter() {
        let owner = funded::<T>("owner", 0);
        let a = adapter_of::<T>(&owner, &[]);
        #[extrinsic_call]
        _(RawOrigin::Signed(owner), a);
    }

    /// A settlement crediting `d` DataNets (training then context), each of `c` contributors,
    /// paid by a fresh payer to a fresh provider and adapter owner.
    #[benchmark]
    fn settle(
        d: Linear<1, { T::MaxTrainingDataNets::get() + T::MaxContextDataNets::get() }>,
        c: Linear<1, 100>,
    ) {
        Attribution::<T>::ensure_accounts_exist();
        let owner = funded::<T>("owner", 0);
        let nets: Vec<DataNetId> = (0..d)
            .map(|_| {
                let id = datanet_with::<T>(&owner, 0);
                for i in 0..c {
                    let who = funded::<T>("contributor", i);
                    approved::<T>(&owner, id, &who, i as u64);
                }
                id
            })
            .collect();
        let training_len = (d as usize).min(T::MaxTrainingDataNets::get() as usize);
        let a = adapter_of::<T>(&owner, &nets[..training_len]);
        let share = Permill::from_rational(1u32, T::MaxContextDataNets::get().max(1));
        let context: Vec<DataNetShare> =
            nets[training_len..].iter().map(|n| DataNetShare::new(*n, share)).collect();
        let payer = funded::<T>("payer", 0);
        // Providers are bonded, so their accounts exist.
        let provider = funded::<T>("provider", 0);
        let charge: BalanceOf<T> =
            T::Currency::minimum_balance().saturating_mul(1_000_000u32.into());
        #[block]
        {
            assert!(<Attribution<T> as Settlement<_, _>>::settle(
                0, &payer, &provider, a, charge, &context
            )
            .is_ok());
        }
    }

    #[benchmark]
    fn set_split() -> Result<(), BenchmarkError> {
        let origin =
            T::AdminOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let split = FeeSplit::default();
        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, split);
        Ok(())
    }

    impl_benchmark_test_suite!(Attribution, crate::mock::new_test_ext(), crate::mock::Test);
}
