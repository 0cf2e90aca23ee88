//! The interface `pallet-jobs` uses: eligibility, load, reputation and slashing.

use crate::{
    mock::*, Event, HoldReason, ProviderRegistry, ProviderStates, MAX_REPUTATION,
    NEUTRAL_REPUTATION,
};
use frame_support::{
    assert_ok,
    traits::fungible::{Inspect, InspectHold},
};

type Registry = Compute;

/// Register `who` serving base model 3 at `price`, declaring adapter 42.
fn register(who: AccountId, price: Balance) {
    assert_ok!(Compute::register_provider(
        RuntimeOrigin::signed(who),
        terms(who as u8, &[3], price),
        MIN_BOND
    ));
    assert_ok!(Compute::set_served_adapters(
        RuntimeOrigin::signed(who),
        who,
        vec![42].try_into().unwrap()
    ));
}

fn offer(who: AccountId) -> Option<openledger_primitives::market::ProviderOffer<Balance>> {
    <Registry as ProviderRegistry<_, _>>::offer(&who, 3, 42)
}

#[test]
fn fresh_provider_offers_its_terms() {
    build_and_execute(|| {
        register(1, 25);
        assert_eq!(<Registry as ProviderRegistry<_, _>>::candidates(3).into_inner(), vec![1]);
        assert!(<Registry as ProviderRegistry<_, _>>::candidates(4).is_empty());
        let offer = offer(1).unwrap();
        assert_eq!(offer.price_per_1k, 25);
        assert_eq!(offer.bond, MIN_BOND);
        assert_eq!(offer.reputation, NEUTRAL_REPUTATION);
        assert!(!offer.adapter_hot);
        assert_eq!(<Registry as ProviderRegistry<_, _>>::worker_key(&1), Some(worker_key(1)));
        assert!(<Registry as ProviderRegistry<_, _>>::worker_key(&2).is_none());
    });
}

#[test]
fn hot_adapter_is_reported() {
    build_and_execute(|| {
        register(1, 25);
        assert_ok!(Compute::heartbeat(
            RuntimeOrigin::signed(1),
            1,
            vec![42].try_into().unwrap(),
            2
        ));
        assert!(offer(1).unwrap().adapter_hot);
    });
}

#[test]
fn stale_heartbeat_makes_ineligible() {
    build_and_execute(|| {
        register(1, 25);
        run_to_block(1 + HEARTBEAT_TIMEOUT);
        assert!(offer(1).is_some());
        run_to_block(2 + HEARTBEAT_TIMEOUT);
        assert!(offer(1).is_none());
        assert_ok!(Compute::heartbeat(RuntimeOrigin::signed(1), 1, Default::default(), 2));
        assert!(offer(1).is_some());
    });
}

#[test]
fn capacity_limits_eligibility() {
    build_and_execute(|| {
        register(1, 25);
        // max_concurrent is 2 in the mock terms.
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
        assert!(offer(1).is_some());
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
        assert!(offer(1).is_none());
        <Registry as ProviderRegistry<_, _>>::job_settled(&1);
        // Settling returns the job's slot at once, before the worker's next heartbeat.
        assert!(offer(1).is_some());
        let state = ProviderStates::<Test>::get(1).expect("registered");
        assert_eq!((state.open_jobs, state.free_slots), (1, 1));
        // The worker may report fewer slots than its concurrency.
        assert_ok!(Compute::heartbeat(RuntimeOrigin::signed(1), 1, Default::default(), 0));
        assert!(offer(1).is_none());
    });
}

#[test]
fn leaving_provider_gets_no_jobs() {
    build_and_execute(|| {
        register(1, 25);
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        assert!(offer(1).is_none());
        assert!(<Registry as ProviderRegistry<_, _>>::candidates(3).is_empty());
    });
}

#[test]
fn is_worker_accepts_operator_and_worker_account() {
    build_and_execute(|| {
        let mut with_worker = terms(1, &[3], 10);
        with_worker.worker_account = Some(5);
        assert_ok!(Compute::register_provider(RuntimeOrigin::signed(1), with_worker, MIN_BOND));
        assert!(<Registry as ProviderRegistry<_, _>>::is_worker(&1, &1));
        assert!(<Registry as ProviderRegistry<_, _>>::is_worker(&1, &5));
        assert!(!<Registry as ProviderRegistry<_, _>>::is_worker(&1, &2));
        assert!(!<Registry as ProviderRegistry<_, _>>::is_worker(&2, &5));
    });
}

#[test]
fn job_assigned_to_unknown_provider_fails() {
    build_and_execute(|| {
        assert!(<Registry as ProviderRegistry<_, _>>::job_assigned(&9).is_err());
        assert!(<Registry as ProviderRegistry<_, _>>::job_expired(&9, &2).is_err());
    });
}

#[test]
fn settled_jobs_raise_reputation_up_to_the_cap() {
    build_and_execute(|| {
        register(1, 25);
        for _ in 0..3 {
            assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
            <Registry as ProviderRegistry<_, _>>::job_settled(&1);
        }
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!(state.reputation, NEUTRAL_REPUTATION + 3 * REWARD);
        assert_eq!(state.open_jobs, 0);
        for _ in 0..100 {
            assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
            <Registry as ProviderRegistry<_, _>>::job_settled(&1);
        }
        assert_eq!(ProviderStates::<Test>::get(1).unwrap().reputation, MAX_REPUTATION);
    });
}

#[test]
fn reputation_decays_toward_neutral() {
    build_and_execute(|| {
        register(1, 25);
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
        <Registry as ProviderRegistry<_, _>>::job_settled(&1);
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!(Compute::reputation_at(&state, 1 + HALF_LIFE - 1), NEUTRAL_REPUTATION + REWARD);
        assert_eq!(Compute::reputation_at(&state, 1 + HALF_LIFE), NEUTRAL_REPUTATION + REWARD / 2);
        assert_eq!(
            Compute::reputation_at(&state, 1 + 2 * HALF_LIFE),
            NEUTRAL_REPUTATION + REWARD / 4
        );
        assert_eq!(Compute::reputation_at(&state, 1 + 1_000 * HALF_LIFE), NEUTRAL_REPUTATION);

        // Below neutral it rises back.
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_expired(&1, &2));
        let state = ProviderStates::<Test>::get(1).unwrap();
        let low = NEUTRAL_REPUTATION + REWARD - PENALTY;
        assert_eq!(state.reputation, low);
        assert_eq!(
            Compute::reputation_at(&state, 1 + HALF_LIFE),
            NEUTRAL_REPUTATION - (NEUTRAL_REPUTATION - low) / 2
        );
    });
}

#[test]
fn expired_job_slashes_bond_to_the_user() {
    build_and_execute(|| {
        register(1, 25);
        let issuance = Balances::total_issuance();
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
        let slashed = <Registry as ProviderRegistry<_, _>>::job_expired(&1, &2).unwrap();
        assert_eq!(slashed, MIN_BOND / 10);
        assert_eq!(Balances::balance(&2), ENDOWMENT + MIN_BOND / 10);
        assert_eq!(
            Balances::balance_on_hold(&RuntimeHoldReason::Compute(HoldReason::ProviderBond), &1),
            MIN_BOND - MIN_BOND / 10
        );
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!(state.bond, MIN_BOND - MIN_BOND / 10);
        assert_eq!(state.open_jobs, 0);
        assert_eq!(state.reputation, NEUTRAL_REPUTATION - PENALTY);
        assert_eq!(Balances::total_issuance(), issuance);
        assert_eq!(
            compute_events().last(),
            Some(&Event::Slashed { provider: 1, victim: 2, amount: MIN_BOND / 10 })
        );
        // Its bond is now below the minimum: no new jobs until it bonds more.
        assert!(offer(1).is_none());
        assert_ok!(Compute::bond_extra(RuntimeOrigin::signed(1), MIN_BOND / 10));
        assert!(offer(1).is_some());
    });
}

#[test]
fn provider_info_reports_everything() {
    build_and_execute(|| {
        register(1, 25);
        let info = Compute::provider_info(&1).unwrap();
        assert_eq!(info.terms, terms(1, &[3], 25));
        assert!(info.eligible);
        assert_eq!(info.reputation_now, NEUTRAL_REPUTATION);
        assert!(Compute::provider_info(&2).is_none());
    });
}

#[test]
fn only_declared_adapters_are_offered() {
    build_and_execute(|| {
        register(1, 25);
        assert!(offer(1).is_some());
        assert!(<Registry as ProviderRegistry<_, _>>::offer(&1, 3, 43).is_none());
        // Replacing the declaration drops 42.
        assert_ok!(Compute::set_served_adapters(
            RuntimeOrigin::signed(1),
            1,
            vec![43, 43, 44].try_into().unwrap()
        ));
        assert!(offer(1).is_none());
        assert!(<Registry as ProviderRegistry<_, _>>::offer(&1, 3, 43).is_some());
        assert_eq!(crate::ServedAdapterCount::<Test>::get(1), 2);
        assert_eq!(
            compute_events().last(),
            Some(&Event::AdaptersServed { provider: 1, served: 2 })
        );
        // An empty declaration serves nothing.
        assert_ok!(Compute::set_served_adapters(RuntimeOrigin::signed(1), 1, Default::default()));
        assert!(<Registry as ProviderRegistry<_, _>>::offer(&1, 3, 43).is_none());
        assert!(!crate::ServedAdapterCount::<Test>::contains_key(1));
    });
}

#[test]
fn served_adapters_need_the_operator_or_worker_and_are_bounded() {
    build_and_execute(|| {
        register(1, 25);
        frame_support::assert_noop!(
            Compute::set_served_adapters(RuntimeOrigin::signed(2), 1, Default::default()),
            crate::Error::<Test>::NotAuthorised
        );
        frame_support::assert_noop!(
            Compute::set_served_adapters(RuntimeOrigin::signed(2), 2, Default::default()),
            crate::Error::<Test>::NotRegistered
        );
        let too_many: Result<frame_support::BoundedVec<u32, _>, _> = frame_support::BoundedVec::<
            u32,
            frame_support::traits::ConstU32<MAX_SERVED>,
        >::try_from(
            (0..=MAX_SERVED).collect::<Vec<_>>(),
        );
        assert!(too_many.is_err(), "the call's argument cannot carry more than the bound");
    });
}

#[test]
fn withdraw_forgets_served_adapters() {
    build_and_execute(|| {
        register(1, 25);
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        run_to_block(1 + UNBONDING);
        assert_ok!(Compute::withdraw_unbonded(RuntimeOrigin::signed(1)));
        assert!(!crate::ServedAdapters::<Test>::contains_key(1, 42));
        assert!(!crate::ServedAdapterCount::<Test>::contains_key(1));
    });
}

#[test]
fn refused_and_abandoned_jobs_free_the_slot_without_slashing() {
    build_and_execute(|| {
        register(1, 25);
        let held = || Balances::balance_on_hold(&HoldReason::ProviderBond.into(), &1);
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
        assert_ok!(<Registry as ProviderRegistry<_, _>>::job_assigned(&1));
        assert!(offer(1).is_none(), "both slots taken");
        <Registry as ProviderRegistry<_, _>>::job_refused(&1);
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!((state.open_jobs, state.free_slots), (1, 1));
        assert_eq!(state.reputation, NEUTRAL_REPUTATION - REFUSAL_PENALTY);
        assert!(offer(1).is_some(), "the refused job's slot is free again");
        <Registry as ProviderRegistry<_, _>>::job_abandoned(&1);
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!((state.open_jobs, state.free_slots), (0, 2));
        assert_eq!(state.reputation, NEUTRAL_REPUTATION - REFUSAL_PENALTY - PENALTY);
        assert_eq!(held(), MIN_BOND, "no slash for a refusal or an unacknowledged job");
        assert_eq!(state.bond, MIN_BOND);
    });
}

#[test]
fn clients_read_eligibility_and_offers_through_view_functions() {
    use codec::{Decode, Encode};
    use frame_support::view_functions::ViewFunction;
    type Offer = crate::ProviderOfferViewFunction<Test>;
    type Provider = crate::ProviderViewFunction<Test>;
    let offer_of = |who: AccountId, adapter: u32| {
        let input = Offer::new(who, 3, adapter).encode();
        let output = Test::execute_view_function(Offer::id(), input).unwrap();
        Option::<openledger_primitives::market::ProviderOffer<Balance>>::decode(&mut &output[..])
            .unwrap()
    };
    let info_of = |who: AccountId| {
        let output = Test::execute_view_function(Provider::id(), Provider::new(who).encode());
        Option::<crate::ProviderInfo<Test>>::decode(&mut &output.unwrap()[..]).unwrap()
    };
    build_and_execute(|| {
        register(1, 25);
        // Dispatched by id with SCALE-encoded arguments, as a client calls them: the same
        // answer the marketplace gets.
        assert_eq!(offer_of(1, 42), offer(1));
        assert_eq!(offer_of(1, 42).map(|o| o.price_per_1k), Some(25));
        assert_eq!(offer_of(1, 7), None, "adapter 7 was not declared");
        assert_eq!(offer_of(2, 42), None, "not a provider");
        assert!(info_of(1).is_some_and(|info| info.eligible));
        assert!(info_of(2).is_none());

        // A stale heartbeat makes it ineligible, and both reads say so.
        run_to_block(HEARTBEAT_TIMEOUT + 2);
        assert_eq!(offer_of(1, 42), None);
        assert!(info_of(1).is_some_and(|info| !info.eligible));
    });
}
