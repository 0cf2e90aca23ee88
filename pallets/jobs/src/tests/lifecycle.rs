//! `acknowledge` and `expire`, and what the runtime API reports about jobs.

use super::matching::escrow_of;
use crate::{
    mock::*, Error, Event, JobPhase, JobStatus, Jobs as JobRecords, JobsByDeadline, RefusalReason,
};
use frame_support::{
    assert_noop, assert_ok,
    traits::fungible::{Inspect, InspectHold},
};

#[test]
fn acknowledge_moves_the_deadline() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        run_to_block(1 + ACK_TIMEOUT);
        assert_ok!(Jobs::acknowledge(RuntimeOrigin::signed(P1), job));
        let deadline = 1 + ACK_TIMEOUT + JOB_TIMEOUT;
        let record = JobRecords::<Test>::get(job).unwrap();
        assert_eq!((record.phase, record.deadline), (JobPhase::Acknowledged, deadline));
        assert!(JobsByDeadline::<Test>::contains_key(deadline, job));
        assert!(!JobsByDeadline::<Test>::contains_key(1 + ACK_TIMEOUT, job));
        assert_eq!(Jobs::jobs_due_at(deadline, 10), vec![job]);
        assert_eq!(
            job_events().last(),
            Some(&Event::JobAcknowledged { job, provider: P1, deadline })
        );
    });
}

#[test]
fn worker_account_may_acknowledge() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        assert_ok!(Jobs::acknowledge(RuntimeOrigin::signed(WORKER), job));
    });
}

#[test]
fn acknowledge_errors() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        register(P2, &[4], 10, 4);
        assert_noop!(Jobs::acknowledge(RuntimeOrigin::signed(P1), 0), Error::<Test>::UnknownJob);
        let job = submit(ALICE, 1, 100, 100);
        assert_noop!(
            Jobs::acknowledge(RuntimeOrigin::signed(P2), job),
            Error::<Test>::NotAssignedWorker
        );
        assert_ok!(Jobs::acknowledge(RuntimeOrigin::signed(P1), job));
        assert_noop!(
            Jobs::acknowledge(RuntimeOrigin::signed(P1), job),
            Error::<Test>::AlreadyAcknowledged
        );
        let late = submit(ALICE, 1, 100, 100);
        run_to_block(2 + ACK_TIMEOUT);
        assert_noop!(
            Jobs::acknowledge(RuntimeOrigin::signed(P1), late),
            Error::<Test>::DeadlinePassed
        );
        assert_ok!(Jobs::expire(RuntimeOrigin::signed(BOB), late));
        assert_noop!(Jobs::acknowledge(RuntimeOrigin::signed(P1), late), Error::<Test>::JobClosed);
    });
}

#[test]
fn unacknowledged_job_expires_with_full_refund_and_no_slash() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let issuance = Balances::total_issuance();
        let job = submit(ALICE, 1, 100, 100);
        run_to_block(1 + ACK_TIMEOUT);
        assert_noop!(Jobs::expire(RuntimeOrigin::signed(BOB), job), Error::<Test>::NotExpired);
        run_to_block(2 + ACK_TIMEOUT);
        let keeper_before = Balances::balance(&BOB);
        let post = Jobs::expire(RuntimeOrigin::signed(BOB), job).expect("expires");
        assert_eq!(post.pays_fee, frame_support::dispatch::Pays::No, "keepers pay no fee");
        assert_eq!(Balances::balance(&BOB), keeper_before);
        assert_eq!(escrow_of(ALICE), 0);
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT, "every planck of the escrow is back");
        let state = pallet_compute::ProviderStates::<Test>::get(P1).unwrap();
        assert_eq!(state.bond, MIN_BOND, "the worker never took the job: no slash");
        assert_eq!(
            Balances::balance_on_hold(&pallet_compute::HoldReason::ProviderBond.into(), &P1),
            MIN_BOND
        );
        assert_eq!(state.open_jobs, 0);
        assert_eq!(state.free_slots, 4, "the slot is free again");
        assert!(state.reputation < pallet_compute::NEUTRAL_REPUTATION);
        assert_eq!(Balances::total_issuance(), issuance);
        assert_eq!(
            job_events().last(),
            Some(&Event::JobExpired { job, provider: P1, refunded: 100, slashed: 0 })
        );
        assert_eq!(Jobs::job_status(job), JobStatus::Closed);
        assert!(Jobs::jobs_of_provider(&P1, 10).is_empty());
    });
}

#[test]
fn acknowledged_job_expires_after_job_timeout_with_refund_and_slash() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let issuance = Balances::total_issuance();
        let job = submit(ALICE, 1, 100, 100);
        assert_ok!(Jobs::acknowledge(RuntimeOrigin::signed(P1), job));
        run_to_block(1 + JOB_TIMEOUT);
        assert_noop!(Jobs::expire(RuntimeOrigin::signed(ALICE), job), Error::<Test>::NotExpired);
        run_to_block(2 + JOB_TIMEOUT);
        assert_ok!(Jobs::expire(RuntimeOrigin::signed(BOB), job));
        let slashed = MIN_BOND / 10;
        assert_eq!(escrow_of(ALICE), 0);
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT + slashed);
        let state = pallet_compute::ProviderStates::<Test>::get(P1).unwrap();
        assert_eq!(state.bond, MIN_BOND - slashed);
        assert_eq!((state.open_jobs, state.free_slots), (0, 4));
        assert_eq!(Balances::total_issuance(), issuance);
        assert_eq!(
            job_events().last(),
            Some(&Event::JobExpired { job, provider: P1, refunded: 100, slashed })
        );
    });
}

#[test]
fn refusal_refunds_in_full_frees_the_slot_and_slashes_nothing() {
    build_and_execute(|| {
        register(P1, &[3], 10, 1);
        let issuance = Balances::total_issuance();
        let job = submit(ALICE, 1, 100, 100);
        assert_eq!(escrow_of(ALICE), 100);
        // The only slot is taken: nobody else can be matched.
        assert!(Jobs::quote(1, 100).is_none());
        let worker_before = Balances::balance(&P1);
        let post = Jobs::refuse(RuntimeOrigin::signed(P1), job, RefusalReason::PromptTooLong)
            .expect("refuses");
        assert_eq!(post.pays_fee, frame_support::dispatch::Pays::No);
        assert_eq!(Balances::balance(&P1), worker_before);
        assert_eq!(escrow_of(ALICE), 0);
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
        let state = pallet_compute::ProviderStates::<Test>::get(P1).unwrap();
        assert_eq!(state.bond, MIN_BOND);
        assert_eq!((state.open_jobs, state.free_slots), (0, 1));
        assert!(state.reputation < pallet_compute::NEUTRAL_REPUTATION);
        assert_eq!(Balances::total_issuance(), issuance);
        assert_eq!(
            job_events().last(),
            Some(&Event::JobRefused {
                job,
                provider: P1,
                reason: RefusalReason::PromptTooLong,
                refunded: 100
            })
        );
        assert_eq!(Jobs::job_status(job), JobStatus::Closed);
        assert!(Jobs::quote(1, 100).is_some(), "the slot is offered again");
        // Closed for good: no receipt, no second refusal, no expiry.
        assert_noop!(
            Jobs::refuse(RuntimeOrigin::signed(P1), job, RefusalReason::EmptyPrompt),
            Error::<Test>::JobClosed
        );
        run_to_block(20);
        assert_noop!(Jobs::expire(RuntimeOrigin::signed(BOB), job), Error::<Test>::JobClosed);
    });
}

#[test]
fn acknowledged_job_may_still_be_refused_by_its_worker_account() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        assert_ok!(Jobs::acknowledge(RuntimeOrigin::signed(WORKER), job));
        assert_ok!(Jobs::refuse(RuntimeOrigin::signed(WORKER), job, RefusalReason::WorkerFault));
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
        assert_eq!(pallet_compute::ProviderStates::<Test>::get(P1).unwrap().bond, MIN_BOND);
    });
}

#[test]
fn refuse_errors() {
    build_and_execute(|| {
        assert_noop!(
            Jobs::refuse(RuntimeOrigin::signed(P1), 0, RefusalReason::EmptyPrompt),
            Error::<Test>::UnknownJob
        );
        register(P1, &[3], 10, 4);
        register(P2, &[4], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        // Only the assigned provider's worker: not another provider, not the user.
        for who in [P2, ALICE] {
            assert_noop!(
                Jobs::refuse(RuntimeOrigin::signed(who), job, RefusalReason::EmptyPrompt),
                Error::<Test>::NotAssignedWorker
            );
        }
        // After the deadline only expiry remains (and it does not slash an unacknowledged job).
        run_to_block(2 + ACK_TIMEOUT);
        assert_noop!(
            Jobs::refuse(RuntimeOrigin::signed(P1), job, RefusalReason::EmptyPrompt),
            Error::<Test>::DeadlinePassed
        );
    });
}

#[test]
fn expire_errors() {
    build_and_execute(|| {
        assert_noop!(Jobs::expire(RuntimeOrigin::signed(BOB), 0), Error::<Test>::UnknownJob);
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        run_to_block(10);
        assert_ok!(Jobs::expire(RuntimeOrigin::signed(BOB), job));
        assert_noop!(Jobs::expire(RuntimeOrigin::signed(BOB), job), Error::<Test>::JobClosed);
    });
}

#[test]
fn job_status_reports_unknown_open_and_closed() {
    build_and_execute(|| {
        assert_eq!(Jobs::job_status(0), JobStatus::Unknown);
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        assert!(matches!(Jobs::job_status(job), JobStatus::Open(record) if record.provider == P1));
        assert_ok!(Jobs::submit_receipts(
            RuntimeOrigin::signed(P1),
            vec![receipt(job, 1, 1)].try_into().unwrap()
        ));
        assert_eq!(Jobs::job_status(job), JobStatus::Closed);
    });
}

#[test]
fn provider_with_open_job_cannot_withdraw_until_it_closes() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        assert_ok!(Jobs::acknowledge(RuntimeOrigin::signed(P1), job));
        assert_ok!(Compute::unregister(RuntimeOrigin::signed(P1)));
        run_to_block(1 + UNBONDING);
        assert_noop!(
            Compute::withdraw_unbonded(RuntimeOrigin::signed(P1)),
            pallet_compute::Error::<Test>::JobsOpen
        );
        assert_ok!(Jobs::expire(RuntimeOrigin::signed(BOB), job));
        assert_ok!(Compute::withdraw_unbonded(RuntimeOrigin::signed(P1)));
        assert_eq!(Balances::balance(&P1), ENDOWMENT - MIN_BOND / 10);
    });
}
