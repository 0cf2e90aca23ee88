//! Registration, updates, bonding, heartbeats and leaving: every call's success and errors.

use crate::{mock::*, Error, Event, HoldReason, ProviderStates, ProviderStatus, ProvidersByModel};
use frame_support::{
    assert_noop, assert_ok,
    traits::fungible::{Inspect, InspectHold},
};
use sp_core::ed25519;

fn bonded(who: AccountId) -> Balance {
    Balances::balance_on_hold(&RuntimeHoldReason::Compute(HoldReason::ProviderBond), &who)
}

fn register(who: AccountId, models: &[u32]) {
    assert_ok!(Compute::register_provider(
        RuntimeOrigin::signed(who),
        terms(who as u8, models, 10),
        MIN_BOND
    ));
}

#[test]
fn register_holds_bond_and_indexes_models() {
    build_and_execute(|| {
        assert_ok!(Compute::register_provider(
            RuntimeOrigin::signed(1),
            terms(1, &[7, 8], 10),
            MIN_BOND * 2
        ));
        assert_eq!(bonded(1), MIN_BOND * 2);
        assert_eq!(Balances::balance(&1), ENDOWMENT - MIN_BOND * 2);
        assert_eq!(ProvidersByModel::<Test>::get(7).into_inner(), vec![1]);
        assert_eq!(ProvidersByModel::<Test>::get(8).into_inner(), vec![1]);
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!(state.status, ProviderStatus::Active);
        assert_eq!(state.free_slots, 2);
        assert_eq!(state.reputation, crate::NEUTRAL_REPUTATION);
        assert_eq!(
            compute_events(),
            vec![Event::ProviderRegistered { provider: 1, bond: MIN_BOND * 2 }]
        );
    });
}

#[test]
fn register_rejects_bad_terms() {
    build_and_execute(|| {
        let origin = || RuntimeOrigin::signed(1);
        assert_noop!(
            Compute::register_provider(origin(), terms(1, &[], 10), MIN_BOND),
            Error::<Test>::NoBaseModels
        );
        assert_noop!(
            Compute::register_provider(origin(), terms(1, &[3, 4, 3], 10), MIN_BOND),
            Error::<Test>::DuplicateBaseModel
        );
        let mut zero = terms(1, &[3], 10);
        zero.max_concurrent = 0;
        assert_noop!(
            Compute::register_provider(origin(), zero, MIN_BOND),
            Error::<Test>::ZeroConcurrency
        );
        let mut weak = terms(1, &[3], 10);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        weak.worker_key = ed25519::Public::from_raw(identity);
        assert_noop!(
            Compute::register_provider(origin(), weak, MIN_BOND),
            Error::<Test>::WeakWorkerKey
        );
        assert_noop!(
            Compute::register_provider(origin(), terms(1, &[3], 10), MIN_BOND - 1),
            Error::<Test>::BondTooLow
        );
    });
}

#[test]
fn register_fails_twice_or_without_funds() {
    build_and_execute(|| {
        register(1, &[3]);
        assert_noop!(
            Compute::register_provider(RuntimeOrigin::signed(1), terms(1, &[3], 10), MIN_BOND),
            Error::<Test>::AlreadyRegistered
        );
        // Account 99 has nothing to bond.
        assert!(Compute::register_provider(
            RuntimeOrigin::signed(99),
            terms(9, &[3], 10),
            MIN_BOND
        )
        .is_err());
        assert!(ProvidersByModel::<Test>::get(3).into_inner() == vec![1]);
    });
}

#[test]
fn model_index_is_bounded() {
    build_and_execute(|| {
        register(1, &[3]);
        register(2, &[3]);
        register(3, &[3]);
        assert_noop!(
            Compute::register_provider(RuntimeOrigin::signed(4), terms(4, &[3], 10), MIN_BOND),
            Error::<Test>::TooManyProviders
        );
        // Leaving frees the slot.
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        register(4, &[3]);
        assert_eq!(ProvidersByModel::<Test>::get(3).into_inner(), vec![2, 3, 4]);
    });
}

#[test]
fn update_replaces_terms_and_reindexes() {
    build_and_execute(|| {
        register(1, &[3, 4]);
        let mut new = terms(9, &[4, 5], 20);
        new.worker_account = Some(6);
        assert_ok!(Compute::update_provider(RuntimeOrigin::signed(1), new));
        assert!(ProvidersByModel::<Test>::get(3).is_empty());
        assert_eq!(ProvidersByModel::<Test>::get(4).into_inner(), vec![1]);
        assert_eq!(ProvidersByModel::<Test>::get(5).into_inner(), vec![1]);
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!(state.price_per_1k, 20);
        assert_eq!(state.worker_key, worker_key(9));
        assert_eq!(state.worker_account, Some(6));
        assert_eq!(compute_events().last(), Some(&Event::ProviderUpdated { provider: 1 }));
    });
}

#[test]
fn update_errors() {
    build_and_execute(|| {
        assert_noop!(
            Compute::update_provider(RuntimeOrigin::signed(1), terms(1, &[3], 10)),
            Error::<Test>::NotRegistered
        );
        register(1, &[3]);
        assert_noop!(
            Compute::update_provider(RuntimeOrigin::signed(1), terms(1, &[], 10)),
            Error::<Test>::NoBaseModels
        );
        register(2, &[5]);
        register(3, &[5]);
        register(4, &[5]);
        assert_noop!(
            Compute::update_provider(RuntimeOrigin::signed(1), terms(1, &[3, 5], 10)),
            Error::<Test>::TooManyProviders
        );
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        assert_noop!(
            Compute::update_provider(RuntimeOrigin::signed(1), terms(1, &[3], 10)),
            Error::<Test>::ProviderLeaving
        );
    });
}

#[test]
fn bond_extra_adds_to_hold() {
    build_and_execute(|| {
        register(1, &[3]);
        assert_ok!(Compute::bond_extra(RuntimeOrigin::signed(1), 500));
        assert_eq!(bonded(1), MIN_BOND + 500);
        assert_eq!(ProviderStates::<Test>::get(1).unwrap().bond, MIN_BOND + 500);
        assert_eq!(
            compute_events().last(),
            Some(&Event::Bonded { provider: 1, amount: 500, bond: MIN_BOND + 500 })
        );
    });
}

#[test]
fn bond_extra_errors() {
    build_and_execute(|| {
        assert_noop!(
            Compute::bond_extra(RuntimeOrigin::signed(1), 5),
            Error::<Test>::NotRegistered
        );
        register(1, &[3]);
        assert_noop!(Compute::bond_extra(RuntimeOrigin::signed(1), 0), Error::<Test>::ZeroAmount);
        assert!(Compute::bond_extra(RuntimeOrigin::signed(1), ENDOWMENT).is_err());
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        assert_noop!(
            Compute::bond_extra(RuntimeOrigin::signed(1), 5),
            Error::<Test>::ProviderLeaving
        );
    });
}

#[test]
fn heartbeat_from_operator_or_worker_account() {
    build_and_execute(|| {
        let mut with_worker = terms(1, &[3], 10);
        with_worker.worker_account = Some(5);
        assert_ok!(Compute::register_provider(RuntimeOrigin::signed(1), with_worker, MIN_BOND));
        run_to_block(4);
        assert_ok!(Compute::heartbeat(
            RuntimeOrigin::signed(5),
            1,
            vec![11, 12].try_into().unwrap(),
            7
        ));
        let state = ProviderStates::<Test>::get(1).unwrap();
        assert_eq!((state.last_heartbeat, state.free_slots), (4, 7));
        assert_eq!(crate::HotAdapters::<Test>::get(1).into_inner(), vec![11, 12]);
        assert_eq!(
            compute_events().last(),
            Some(&Event::HeartbeatReceived { provider: 1, hot_adapters: 2, free_slots: 7 })
        );
        run_to_block(6);
        assert_ok!(Compute::heartbeat(RuntimeOrigin::signed(1), 1, Default::default(), 1));
        assert_eq!(ProviderStates::<Test>::get(1).unwrap().last_heartbeat, 6);
    });
}

#[test]
fn heartbeat_errors() {
    build_and_execute(|| {
        assert_noop!(
            Compute::heartbeat(RuntimeOrigin::signed(1), 1, Default::default(), 1),
            Error::<Test>::NotRegistered
        );
        register(1, &[3]);
        assert_noop!(
            Compute::heartbeat(RuntimeOrigin::signed(2), 1, Default::default(), 1),
            Error::<Test>::NotAuthorised
        );
    });
}

#[test]
fn unregister_then_withdraw_after_unbonding() {
    build_and_execute(|| {
        register(1, &[3]);
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        let unbonds_at = 1 + UNBONDING;
        assert_eq!(
            compute_events().last(),
            Some(&Event::ProviderUnregistered { provider: 1, unbonds_at })
        );
        assert!(ProvidersByModel::<Test>::get(3).is_empty());
        assert_eq!(
            ProviderStates::<Test>::get(1).unwrap().status,
            ProviderStatus::Leaving { unbonds_at }
        );
        run_to_block(unbonds_at - 1);
        assert_noop!(
            Compute::withdraw_unbonded(RuntimeOrigin::signed(1)),
            Error::<Test>::StillUnbonding
        );
        run_to_block(unbonds_at);
        assert_ok!(Compute::withdraw_unbonded(RuntimeOrigin::signed(1)));
        assert_eq!(bonded(1), 0);
        assert_eq!(Balances::balance(&1), ENDOWMENT);
        assert!(ProviderStates::<Test>::get(1).is_none());
        assert!(crate::Providers::<Test>::get(1).is_none());
        assert_eq!(
            compute_events().last(),
            Some(&Event::Withdrawn { provider: 1, amount: MIN_BOND })
        );
        // It may register again.
        register(1, &[3]);
    });
}

#[test]
fn unregister_and_withdraw_errors() {
    build_and_execute(|| {
        assert_noop!(Compute::unregister(RuntimeOrigin::signed(1)), Error::<Test>::NotRegistered);
        assert_noop!(
            Compute::withdraw_unbonded(RuntimeOrigin::signed(1)),
            Error::<Test>::NotRegistered
        );
        register(1, &[3]);
        assert_noop!(
            Compute::withdraw_unbonded(RuntimeOrigin::signed(1)),
            Error::<Test>::NotLeaving
        );
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        assert_noop!(Compute::unregister(RuntimeOrigin::signed(1)), Error::<Test>::ProviderLeaving);
    });
}

#[test]
fn withdraw_waits_for_open_jobs() {
    use crate::ProviderRegistry;
    build_and_execute(|| {
        register(1, &[3]);
        assert_ok!(<Compute as ProviderRegistry<_, _>>::job_assigned(&1));
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        run_to_block(1 + UNBONDING);
        assert_noop!(Compute::withdraw_unbonded(RuntimeOrigin::signed(1)), Error::<Test>::JobsOpen);
        <Compute as ProviderRegistry<_, _>>::job_settled(&1);
        assert_ok!(Compute::withdraw_unbonded(RuntimeOrigin::signed(1)));
    });
}

#[test]
fn total_issuance_is_untouched_by_bonding() {
    build_and_execute(|| {
        let issuance = Balances::total_issuance();
        register(1, &[3]);
        assert_ok!(Compute::bond_extra(RuntimeOrigin::signed(1), 10));
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        run_to_block(1 + UNBONDING);
        assert_ok!(Compute::withdraw_unbonded(RuntimeOrigin::signed(1)));
        assert_eq!(Balances::total_issuance(), issuance);
    });
}

#[test]
fn withdraw_forgets_heartbeats_sent_while_leaving() {
    build_and_execute(|| {
        register(1, &[3]);
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(1)));
        assert_ok!(Compute::heartbeat(RuntimeOrigin::signed(1), 1, vec![4].try_into().unwrap(), 1));
        run_to_block(1 + UNBONDING);
        assert_ok!(Compute::withdraw_unbonded(RuntimeOrigin::signed(1)));
        assert!(crate::HotAdapters::<Test>::get(1).is_empty());
    });
}
