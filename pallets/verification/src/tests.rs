//! Sampling, verdicts, contests, deadlines and where every planck of a slash goes.

use crate::{mock::*, Audits, Error, Event, SampleShare, Stage, Verdict};
use frame_support::{assert_noop, assert_ok};
use sp_core::H256;
use sp_runtime::Perbill;

/// The verifiers assigned to `job` (in order) and the audit's stage.
fn audit_of(job: u64) -> (Vec<AccountId>, Stage<u64>) {
    let audit = Audits::<Test>::get(job).expect("audit open");
    (audit.verifiers.iter().map(|a| a.verifier).collect(), audit.stage)
}

fn verdict(verifier: AccountId, job: u64, verdict: Verdict) -> sp_runtime::DispatchResult {
    Verification::submit_verdict(
        RuntimeOrigin::signed(verifier),
        job,
        verdict,
        H256::repeat_byte(7),
    )
    .map(|_| ())
    .map_err(|e| e.error)
}

/// Open an audit of job `job` of P1 (charged `charged`) and return its verifier.
fn audited(job: u64, charged: Balance) -> AccountId {
    offer(job, charged);
    run_to_block(System::block_number() + 1);
    let (verifiers, stage) = audit_of(job);
    assert_eq!(stage, Stage::Open);
    assert_eq!(verifiers.len(), 1);
    verifiers[0]
}

/// Balances of every account, and the issuance, to compare before and after.
fn ledger() -> (Vec<Balance>, Balance) {
    (ACCOUNTS.iter().map(|a| total(*a)).collect(), Balances::total_issuance())
}

#[test]
fn a_drawn_job_gets_a_verifier_of_its_base_model_other_than_its_provider() {
    build_and_execute(|| {
        for job in 0..64 {
            offer(job, 100);
        }
        // Past the block's bound of 64, a settled job is not offered.
        offer(64, 100);
        // Nothing is drawn in the block the receipts settled in.
        assert!(Audits::<Test>::iter().next().is_none());
        run_to_block(2);
        for job in 0..64 {
            let (verifiers, _) = audit_of(job);
            assert!(verifiers == vec![P2] || verifiers == vec![P3], "{verifiers:?}");
        }
        assert!(Audits::<Test>::get(64).is_none());
        for round in 1..3 {
            for job in 0..64 {
                offer(round * 100 + job, 100);
            }
            run_to_block(System::block_number() + 1);
        }
        // The 161st and later exceed MaxOpenAudits: skipped, the settlement stands.
        let skipped = events()
            .iter()
            .filter(|e| matches!(e, Event::AuditSkipped { provider: P1, .. }))
            .count();
        assert_eq!(skipped, 3 * 64 - MAX_OPEN as usize);
        let p2 = Verification::audits_of_verifier(&P2, 1_000).len();
        let p3 = Verification::audits_of_verifier(&P3, 1_000).len();
        assert_eq!(p2 + p3, MAX_OPEN as usize);
        // Both verifiers are drawn, about evenly.
        assert!(p2 > 50 && p3 > 50, "{p2} / {p3}");
    });
}

#[test]
fn the_sample_share_decides_how_many_jobs_are_audited() {
    build_and_execute(|| {
        assert_ok!(Verification::set_sample_share(RuntimeOrigin::root(), Perbill::zero()));
        for job in 0..50 {
            offer(job, 100);
        }
        run_to_block(2);
        assert_eq!(Audits::<Test>::count(), 0, "a zero share audits nothing");

        // 5% of 64 x 5 blocks = 16 expected; the audits close at once so none is capped.
        assert_ok!(Verification::set_sample_share(RuntimeOrigin::root(), Perbill::from_percent(5)));
        let mut opened = 0;
        for round in 0..5u64 {
            for j in 0..64 {
                offer(1_000 + round * 64 + j, 100);
            }
            run_to_block(System::block_number() + 1);
            for (job, audit) in Audits::<Test>::iter().collect::<Vec<_>>() {
                opened += 1;
                assert_ok!(verdict(audit.verifiers[0].verifier, job, Verdict::Match));
            }
        }
        // Binomial(320, 0.05): mean 16, standard deviation 3.9.
        assert!((5..=30).contains(&opened), "{opened} audits of 320 jobs at 5%");
        assert_noop!(
            Verification::set_sample_share(RuntimeOrigin::signed(ALICE), Perbill::one()),
            sp_runtime::DispatchError::BadOrigin
        );
        assert_eq!(SampleShare::<Test>::get(), Perbill::from_percent(5));
    });
}

#[test]
fn jobs_without_another_provider_or_adapter_are_skipped() {
    build_and_execute(|| {
        // P9 is alone on base model 4; adapter 7 does not exist.
        offer_work(1, P9, 2, 100);
        offer_work(2, P1, 7, 100);
        run_to_block(2);
        assert_eq!(Audits::<Test>::count(), 0);
        assert_eq!(events().iter().filter(|e| matches!(e, Event::AuditSkipped { .. })).count(), 2);
    });
}

#[test]
fn a_match_confirms_the_work_and_moves_nothing() {
    build_and_execute(|| {
        let before = ledger();
        let verifier = audited(1, 500);
        assert_eq!(Verification::audits_of_provider(&P1, 10), vec![1]);
        // Only the assigned verifier answers, once.
        let other = if verifier == P2 { P3 } else { P2 };
        assert_noop!(verdict(other, 1, Verdict::Mismatch), Error::<Test>::NotAssignedVerifier);
        assert_noop!(verdict(P1, 1, Verdict::Match), Error::<Test>::NotAssignedVerifier);
        assert_ok!(verdict(verifier, 1, Verdict::Match));
        assert!(events().contains(&Event::WorkConfirmed { job: 1, provider: P1 }));
        assert_eq!(Audits::<Test>::count(), 0);
        assert!(Verification::audits_of_provider(&P1, 10).is_empty());
        assert_noop!(verdict(verifier, 1, Verdict::Match), Error::<Test>::UnknownAudit);
        assert_eq!(ledger(), before);
    });
}

#[test]
fn an_uncontested_fault_refunds_the_payer_and_pays_the_verifier_from_the_bond() {
    build_and_execute(|| {
        let verifier = audited(1, 500);
        let (alice, p1, v, treasury) = (total(ALICE), total(P1), total(verifier), total(TREASURY));
        let issuance = Balances::total_issuance();
        assert_ok!(verdict(verifier, 1, Verdict::Mismatch));
        let until = System::block_number() + CONTEST_WINDOW;
        assert!(events().contains(&Event::ProviderAccused { job: 1, provider: P1, until }));
        // Nothing moves while the provider may contest.
        run_to_block(until);
        assert_eq!(total(P1), p1);
        run_to_block(until + 1);
        // 20% of the 10,000 bond: 500 back to Alice, half the other 1,500 to the verifier,
        // the rest to the treasury.
        assert!(events().contains(&Event::ProviderSlashed {
            job: 1,
            provider: P1,
            refunded: 500,
            rewarded: 750,
            to_treasury: 750,
        }));
        assert_eq!(total(ALICE), alice + 500);
        assert_eq!(total(verifier), v + 750);
        assert_eq!(total(TREASURY), treasury + 750);
        assert_eq!(total(P1), p1 - 2_000);
        assert_eq!(bond(P1), MIN_BOND - 2_000);
        assert_eq!(Balances::total_issuance(), issuance);
        assert_eq!(Audits::<Test>::count(), 0);
    });
}

#[test]
fn a_refund_larger_than_the_slash_is_capped_by_it() {
    build_and_execute(|| {
        let verifier = audited(1, 1_000_000);
        let alice = total(ALICE);
        assert_ok!(verdict(verifier, 1, Verdict::Unavailable));
        run_to_block(System::block_number() + CONTEST_WINDOW + 1);
        assert!(events().contains(&Event::ProviderSlashed {
            job: 1,
            provider: P1,
            refunded: 2_000,
            rewarded: 0,
            to_treasury: 0,
        }));
        assert_eq!(total(ALICE), alice + 2_000);
    });
}

#[test]
fn a_contest_the_majority_upholds_slashes_the_provider_and_the_dissenting_verifier() {
    build_and_execute(|| {
        register(P4, &[3]);
        let first = audited(1, 300);
        assert_ok!(verdict(first, 1, Verdict::Mismatch));
        // Only the provider (or its worker) contests, once.
        assert_noop!(
            Verification::contest(RuntimeOrigin::signed(first), 1),
            Error::<Test>::NotTheProvider
        );
        assert_ok!(Verification::contest(RuntimeOrigin::signed(WORKER), 1));
        assert_noop!(
            Verification::contest(RuntimeOrigin::signed(P1), 1),
            Error::<Test>::NotContestable
        );
        let (verifiers, stage) = audit_of(1);
        assert_eq!(stage, Stage::Contested);
        assert_eq!(verifiers.len(), 3);
        assert_eq!(verifiers[0], first);
        assert!(!verifiers.contains(&P1));
        let (second, third) = (verifiers[1], verifiers[2]);
        assert_ne!(second, third);

        let before: Vec<Balance> = [ALICE, P1, first, second, third, TREASURY].map(total).to_vec();
        let issuance = Balances::total_issuance();
        assert_ok!(verdict(second, 1, Verdict::Match));
        assert_ok!(verdict(third, 1, Verdict::Mismatch));
        // Two of three found the fault: the provider pays 2,000 (300 refund, half of 1,700
        // split between the two finders, the rest to the treasury); the verifier they
        // overturned loses 2% of its bond (200) to the treasury.
        assert!(events().contains(&Event::ProviderSlashed {
            job: 1,
            provider: P1,
            refunded: 300,
            rewarded: 850,
            to_treasury: 850,
        }));
        assert!(events().contains(&Event::VerifierSlashed {
            job: 1,
            verifier: second,
            slashed: 200
        }));
        let after: Vec<Balance> = [ALICE, P1, first, second, third, TREASURY].map(total).to_vec();
        assert_eq!(after[0], before[0] + 300);
        assert_eq!(after[1], before[1] - 2_000);
        assert_eq!(after[2], before[2] + 425);
        assert_eq!(after[3], before[3] - 200);
        assert_eq!(after[4], before[4] + 425);
        assert_eq!(after[5], before[5] + 850 + 200);
        assert_eq!(Balances::total_issuance(), issuance);
    });
}

#[test]
fn a_contest_the_majority_rejects_clears_the_provider_and_slashes_the_accuser() {
    build_and_execute(|| {
        register(P4, &[3]);
        let first = audited(1, 300);
        assert_ok!(verdict(first, 1, Verdict::Mismatch));
        assert_ok!(Verification::contest(RuntimeOrigin::signed(P1), 1));
        let (verifiers, _) = audit_of(1);
        let p1 = total(P1);
        assert_ok!(verdict(verifiers[1], 1, Verdict::Match));
        assert_ok!(verdict(verifiers[2], 1, Verdict::Match));
        assert!(events().contains(&Event::WorkConfirmed { job: 1, provider: P1 }));
        assert!(events().contains(&Event::VerifierSlashed {
            job: 1,
            verifier: first,
            slashed: 200
        }));
        assert_eq!(total(P1), p1);
        assert_eq!(bond(first), MIN_BOND - 200);
    });
}

#[test]
fn a_tie_clears_the_provider() {
    build_and_execute(|| {
        // Only P2 and P3 besides P1: a contest adds one verifier, two verdicts split.
        let first = audited(1, 300);
        assert_ok!(verdict(first, 1, Verdict::Mismatch));
        assert_ok!(Verification::contest(RuntimeOrigin::signed(P1), 1));
        let (verifiers, _) = audit_of(1);
        assert_eq!(verifiers.len(), 2);
        let p1 = total(P1);
        assert_ok!(verdict(verifiers[1], 1, Verdict::Match));
        assert!(events().contains(&Event::WorkConfirmed { job: 1, provider: P1 }));
        assert_eq!(total(P1), p1);
    });
}

#[test]
fn a_contest_with_no_verifier_left_is_refused_and_the_accusation_stands() {
    new_test_ext().execute_with(|| {
        register(P1, &[3]);
        register(P2, &[3]);
        offer(1, 100);
        run_to_block(2);
        assert_ok!(verdict(P2, 1, Verdict::Mismatch));
        assert_noop!(
            Verification::contest(RuntimeOrigin::signed(P1), 1),
            Error::<Test>::NoVerifierAvailable
        );
        run_to_block(2 + CONTEST_WINDOW + 1);
        assert!(events().iter().any(|e| matches!(e, Event::ProviderSlashed { job: 1, .. })));
        check_invariants();
    });
}

#[test]
fn verdicts_are_refused_while_the_provider_may_contest() {
    build_and_execute(|| {
        let first = audited(1, 100);
        assert_ok!(verdict(first, 1, Verdict::Mismatch));
        assert_noop!(verdict(first, 1, Verdict::Match), Error::<Test>::NotAwaitingVerdicts);
        assert_noop!(verdict(first, 2, Verdict::Match), Error::<Test>::UnknownAudit);
    });
}

#[test]
fn a_silent_verifier_is_slashed_and_replaced_then_the_audit_is_abandoned() {
    build_and_execute(|| {
        register(P4, &[3]);
        let first = audited(1, 100);
        let opened_at = System::block_number();
        let treasury = total(TREASURY);
        // Its verdict is accepted up to the deadline, not after.
        run_to_block(opened_at + VERDICT_TIMEOUT);
        assert_eq!(audit_of(1).0, vec![first]);
        run_to_block(opened_at + VERDICT_TIMEOUT + 1);
        assert!(events().contains(&Event::VerifierSlashed {
            job: 1,
            verifier: first,
            slashed: 200
        }));
        assert_eq!(total(TREASURY), treasury + 200);
        let (verifiers, stage) = audit_of(1);
        assert_eq!(stage, Stage::Open);
        assert_ne!(verifiers[0], first);
        assert_noop!(verdict(first, 1, Verdict::Match), Error::<Test>::NotAssignedVerifier);
        // The replacement is silent too, then the last one: nobody is left.
        run_to_block(System::block_number() + VERDICT_TIMEOUT + 1);
        let third = audit_of(1).0[0];
        assert!(![first, verifiers[0], P1].contains(&third));
        run_to_block(System::block_number() + VERDICT_TIMEOUT + 1);
        assert!(events().contains(&Event::AuditAbandoned { job: 1, provider: P1 }));
        assert_eq!(Audits::<Test>::count(), 0);
        assert_eq!(total(TREASURY), treasury + 3 * 200);
    });
}

#[test]
fn a_replacement_can_still_answer() {
    build_and_execute(|| {
        let first = audited(1, 100);
        run_to_block(System::block_number() + VERDICT_TIMEOUT + 1);
        let second = audit_of(1).0[0];
        assert_ne!(second, first);
        assert_ok!(verdict(second, 1, Verdict::Match));
        assert!(events().contains(&Event::WorkConfirmed { job: 1, provider: P1 }));
    });
}

mod properties {
    //! Whatever verifiers and providers do, OPEN is only moved, never made or lost, every
    //! slash is paid out in full, and the invariants hold after every block.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Move {
        Offer { charged: Balance },
        Verdict { pick: usize, verdict: u8 },
        Contest { pick: usize, by_worker: bool },
        Blocks(u64),
    }

    fn moves() -> impl Strategy<Value = Vec<Move>> {
        let one = prop_oneof![
            (0u128..50_000).prop_map(|charged| Move::Offer { charged }),
            (0usize..32, 0u8..3).prop_map(|(pick, verdict)| Move::Verdict { pick, verdict }),
            (0usize..32, any::<bool>())
                .prop_map(|(pick, by_worker)| Move::Contest { pick, by_worker }),
            (1u64..8).prop_map(Move::Blocks),
        ];
        proptest::collection::vec(one, 1..60)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn open_is_conserved_and_invariants_hold(moves in moves(), seed in any::<u64>()) {
            build_and_execute(|| {
                SEED.with(|s| s.set(seed));
                register(P4, &[3]);
                let issuance = Balances::total_issuance();
                let sum = || ACCOUNTS.iter().map(|a| total(*a)).sum::<Balance>();
                let start = sum();
                let mut next_job = 0;
                for m in moves {
                    match m {
                        Move::Offer { charged } => {
                            offer(next_job, charged);
                            next_job += 1;
                        },
                        Move::Verdict { pick, verdict: v } => {
                            let open: Vec<_> = Audits::<Test>::iter().collect();
                            if let Some((job, audit)) = open.get(pick % open.len().max(1)) {
                                let verdict = [Verdict::Match, Verdict::Mismatch, Verdict::Unavailable][v as usize];
                                for a in audit.verifiers.iter() {
                                    let _ = super::verdict(a.verifier, *job, verdict);
                                }
                            }
                        },
                        Move::Contest { pick, by_worker } => {
                            let open: Vec<_> = Audits::<Test>::iter_keys().collect();
                            if let Some(job) = open.get(pick % open.len().max(1)) {
                                let who = if by_worker { WORKER } else { P1 };
                                let _ = Verification::contest(RuntimeOrigin::signed(who), *job);
                            }
                        },
                        Move::Blocks(n) => run_to_block(System::block_number() + n),
                    }
                    check_invariants();
                    assert_eq!(Balances::total_issuance(), issuance);
                    assert_eq!(sum(), start, "OPEN left the accounts");
                }
                // Every slash paid out in full: the provider's lost bond is exactly what the
                // events say went to the payer, the finders and the treasury.
                let paid: Balance = events().iter().map(|e| match e {
                    Event::ProviderSlashed { refunded, rewarded, to_treasury, .. } => refunded + rewarded + to_treasury,
                    _ => 0,
                }).sum();
                assert_eq!(MIN_BOND - bond(P1), paid);
            });
        }
    }
}
