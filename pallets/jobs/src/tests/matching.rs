//! `submit_job`: escrow, matching and its failures, and the quote.

use crate::{mock::*, Error, Event, HoldReason, JobPhase, Jobs as JobRecords, JobsByDeadline};
use frame_support::{
    assert_noop, assert_ok,
    traits::fungible::{Inspect, InspectHold},
};
use sp_core::H256;

pub fn escrow_of(who: AccountId) -> Balance {
    Balances::balance_on_hold(&RuntimeHoldReason::Jobs(HoldReason::JobEscrow), &who)
}

#[test]
fn submit_holds_budget_and_assigns() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        assert_eq!(job, 0);
        assert_eq!(escrow_of(ALICE), 100);
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT - 100);
        let record = JobRecords::<Test>::get(0).unwrap();
        assert_eq!(record.provider, P1);
        assert_eq!(record.price_per_1k, 10 + ADAPTER_PRICE);
        assert_eq!(record.phase, JobPhase::Assigned);
        assert_eq!(record.deadline, 1 + ACK_TIMEOUT);
        assert!(JobsByDeadline::<Test>::contains_key(1 + ACK_TIMEOUT, 0));
        assert_eq!(Jobs::jobs_of_provider(&P1, 10), vec![0]);
        assert_eq!(pallet_compute::ProviderStates::<Test>::get(P1).unwrap().open_jobs, 1);
        assert_eq!(
            job_events(),
            vec![Event::JobAssigned {
                job: 0,
                submitter: ALICE,
                provider: P1,
                adapter: 1,
                input_hash: H256::repeat_byte(0xab),
                max_output_tokens: 1_000,
                escrow: 100,
                gateway: vec![0x12; 4].try_into().unwrap(),
                deadline: 1 + ACK_TIMEOUT,
            }]
        );
        assert_eq!(submit(BOB, 1, 1_000, 100), 1);
    });
}

fn submit_err(
    adapter: u32,
    max_output_tokens: u32,
    max_fee: Balance,
) -> sp_runtime::DispatchResult {
    Jobs::submit_job(
        RuntimeOrigin::signed(ALICE),
        adapter,
        H256::zero(),
        max_output_tokens,
        max_fee,
        Default::default(),
    )
}

#[test]
fn submit_rejects_bad_requests() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        assert_noop!(submit_err(1, 0, 100), Error::<Test>::ZeroOutputTokens);
        assert_noop!(submit_err(9, 10, 100), Error::<Test>::UnknownAdapter);
        // More than Alice has.
        assert!(submit_err(1, 10, ENDOWMENT * 2).is_err());
        assert_eq!(escrow_of(ALICE), 0);
    });
}

#[test]
fn no_provider_available_holds_nothing() {
    build_and_execute(|| {
        // Nobody serves base model 4 (adapter 2).
        register(P1, &[3], 10, 1);
        assert_noop!(submit_err(2, 10, 100), Error::<Test>::NoProviderAvailable);
        // 1,000 output tokens at 10 + 5 per 1k cost 15: a budget of 14 is too small.
        assert_noop!(submit_err(1, 1_000, 14), Error::<Test>::NoProviderAvailable);
        assert_ok!(submit_err(1, 1_000, 15));
        // P1 has one slot, now taken.
        assert_noop!(submit_err(1, 1_000, 15), Error::<Test>::NoProviderAvailable);
        assert_eq!(escrow_of(ALICE), 15);
    });
}

#[test]
fn stale_or_leaving_providers_are_skipped() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        register(P2, &[3], 10, 4);
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(P1)));
        run_to_block(2 + HEARTBEAT_TIMEOUT);
        // P2's heartbeat is stale now.
        assert_noop!(submit_err(1, 10, 100), Error::<Test>::NoProviderAvailable);
        assert_ok!(Compute::heartbeat(RuntimeOrigin::signed(P2), P2, Default::default(), 4));
        assert_eq!(JobRecords::<Test>::get(submit(ALICE, 1, 10, 100)).unwrap().provider, P2);
    });
}

#[test]
fn hot_adapter_wins_over_stake_and_reputation() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        register(P2, &[3], 10, 4);
        assert_ok!(Compute::bond_extra(RuntimeOrigin::signed(P1), MIN_BOND * 10));
        assert_eq!(JobRecords::<Test>::get(submit(ALICE, 1, 10, 100)).unwrap().provider, P1);
        assert_ok!(Compute::heartbeat(
            RuntimeOrigin::signed(P2),
            P2,
            vec![1].try_into().unwrap(),
            4
        ));
        assert_eq!(JobRecords::<Test>::get(submit(ALICE, 1, 10, 100)).unwrap().provider, P2);
    });
}

#[test]
fn reputation_times_stake_ranks_providers() {
    build_and_execute(|| {
        register(P1, &[3], 10, 8);
        register(P2, &[3], 10, 8);
        // Same stake: P1 earns reputation by settling a job, then wins every tie-free match.
        let job = loop {
            let job = submit(ALICE, 1, 10, 100);
            if JobRecords::<Test>::get(job).unwrap().provider == P1 {
                break job;
            }
        };
        assert_ok!(Jobs::submit_receipts(
            RuntimeOrigin::signed(P1),
            vec![receipt(job, 1, 1)].try_into().unwrap()
        ));
        for _ in 0..3 {
            assert_eq!(JobRecords::<Test>::get(submit(BOB, 1, 10, 100)).unwrap().provider, P1);
        }
    });
}

#[test]
fn ties_are_broken_deterministically_but_not_always_alike() {
    let picks = || {
        let mut picks = Vec::new();
        new_test_ext().execute_with(|| {
            register(P1, &[3], 10, 64);
            register(P2, &[3], 10, 64);
            register(P3, &[3], 10, 64);
            for _ in 0..30 {
                let job = submit(ALICE, 1, 10, 100);
                picks.push(JobRecords::<Test>::get(job).unwrap().provider);
            }
            check_invariants();
        });
        picks
    };
    let first = picks();
    assert_eq!(first, picks());
    // With equal stake and reputation the seed spreads jobs: every provider gets some.
    for p in [P1, P2, P3] {
        assert!(first.contains(&p), "{p} never picked: {first:?}");
    }
}

#[test]
fn quote_names_the_provider_submit_would_pick() {
    build_and_execute(|| {
        assert!(Jobs::quote(1, 1_000).is_none());
        assert!(Jobs::quote(9, 1_000).is_none());
        register(P1, &[3], 10, 4);
        let quote = Jobs::quote(1, 1_000).unwrap();
        assert_eq!(quote.provider, P1);
        assert_eq!(quote.price_per_1k, 15);
        assert_eq!(quote.min_max_fee, 15);
        let job = submit(ALICE, 1, 1_000, quote.min_max_fee);
        assert_eq!(JobRecords::<Test>::get(job).unwrap().provider, quote.provider);
    });
}

#[test]
fn any_adapter_catalog_serves_one_free_base_model() {
    use openledger_primitives::market::{AdapterCatalog, AdapterTerms};
    frame_support::parameter_types! { pub const Model: u32 = 7; }
    assert_eq!(
        <crate::AnyAdapterOn<Model> as AdapterCatalog<Balance>>::adapter(123),
        Some(AdapterTerms { base_model: 7, price_per_1k: 0 })
    );
}

#[test]
fn fee_rounds_up_to_the_smallest_unit() {
    use crate::fee_for;
    assert_eq!(fee_for::<Balance>(0, 15), 0);
    assert_eq!(fee_for::<Balance>(1, 15), 1);
    assert_eq!(fee_for::<Balance>(1_000, 15), 15);
    assert_eq!(fee_for::<Balance>(1_001, 15), 16);
    assert_eq!(fee_for::<Balance>(u64::MAX, Balance::MAX), Balance::MAX / 1000 + 1);
}

#[test]
fn a_provider_without_the_adapter_is_never_matched() {
    build_and_execute(|| {
        // P1 is the better candidate by price, stake and reputation, but lacks adapter 1.
        register(P1, &[3], 1, 4);
        assert_ok!(Compute::bond_extra(RuntimeOrigin::signed(P1), MIN_BOND));
        serve(P1, &[2]);
        register(P2, &[3], 40, 64);
        for _ in 0..20 {
            let job = submit(ALICE, 1, 10, 1_000);
            assert_eq!(crate::Jobs::<Test>::get(job).unwrap().provider, P2);
        }
        assert_eq!(Jobs::quote(1, 10).map(|q| q.provider), Some(P2));
        // With P2 gone, nobody serves adapter 1: the submission fails and holds nothing.
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(P2)));
        assert!(Jobs::quote(1, 10).is_none());
        let held = escrow_of(ALICE);
        assert_noop!(
            Jobs::submit_job(
                RuntimeOrigin::signed(ALICE),
                1,
                sp_core::H256::zero(),
                10,
                1_000,
                Default::default()
            ),
            Error::<Test>::NoProviderAvailable
        );
        assert_eq!(escrow_of(ALICE), held);
    });
}

#[test]
fn a_gateway_over_its_bound_is_a_named_error_and_holds_nothing() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let too_long = vec![1u8; 65];
        assert_noop!(
            Jobs::submit_job(RuntimeOrigin::signed(ALICE), 1, H256::zero(), 10, 1_000, too_long),
            Error::<Test>::GatewayTooLong
        );
        assert_eq!(escrow_of(ALICE), 0);
        // At the bound it is accepted.
        assert_ok!(Jobs::submit_job(
            RuntimeOrigin::signed(ALICE),
            1,
            H256::zero(),
            10,
            1_000,
            vec![1u8; 64]
        ));
    });
}
