//! Sampling, verdicts, contests, deadlines and where every planck of a slash goes.

use crate::{
    mock::*, Audits, DriftScores, Error, Event, Leaf, Pallet, Reveals, SampleShare, Stage, Subject,
    Verdict,
};
use frame_support::{assert_noop, assert_ok};
use openledger_primitives::service_receipt;
use sp_core::H256;
use sp_runtime::Perbill;

/// The verifiers assigned to `job` (in order) and the audit's stage.
fn audit_of(job: u64) -> (Vec<AccountId>, Stage<u64>) {
    let audit = Audits::<Test>::get(Subject::Job(job)).expect("audit open");
    (audit.verifiers.iter().map(|a| a.verifier).collect(), audit.stage)
}

fn verdict(verifier: AccountId, job: u64, verdict: Verdict) -> sp_runtime::DispatchResult {
    verdict_on(verifier, Subject::Job(job), verdict)
}

fn verdict_on(
    verifier: AccountId,
    subject: Subject,
    verdict: Verdict,
) -> sp_runtime::DispatchResult {
    scored_on(verifier, subject, verdict, 1_000)
}

/// A verdict with its score (thousandths of the typical honest error).
fn scored_on(
    verifier: AccountId,
    subject: Subject,
    verdict: Verdict,
    score: u32,
) -> sp_runtime::DispatchResult {
    Verification::submit_verdict(
        RuntimeOrigin::signed(verifier),
        subject,
        verdict,
        H256::repeat_byte(7),
        score,
    )
    .map(|_| ())
    .map_err(|e| e.error)
}

/// Audits and confirms jobs `jobs` of P1 (charged 500 each), each verifier matching with the
/// next of `scores`; returns the events of the last.
fn confirm_with_scores(jobs: std::ops::Range<u64>, scores: &[u32]) -> Vec<Event<Test>> {
    for (job, &score) in jobs.zip(scores) {
        let verifier = audited(job, 500);
        assert_ok!(scored_on(verifier, Subject::Job(job), Verdict::Match, score));
    }
    events()
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
        assert!(Audits::<Test>::get(Subject::Job(64)).is_none());
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
                assert_ok!(verdict_on(audit.verifiers[0].verifier, job, Verdict::Match));
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
        assert_eq!(Verification::audits_of_provider(&P1, 10), vec![Subject::Job(1)]);
        // Only the assigned verifier answers, once.
        let other = if verifier == P2 { P3 } else { P2 };
        assert_noop!(verdict(other, 1, Verdict::Mismatch), Error::<Test>::NotAssignedVerifier);
        assert_noop!(verdict(P1, 1, Verdict::Match), Error::<Test>::NotAssignedVerifier);
        assert_ok!(verdict(verifier, 1, Verdict::Match));
        assert!(events().contains(&Event::WorkConfirmed { subject: Subject::Job(1), provider: P1 }));
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
        assert!(events().contains(&Event::ProviderAccused {
            subject: Subject::Job(1),
            provider: P1,
            until
        }));
        // Nothing moves while the provider may contest.
        run_to_block(until);
        assert_eq!(total(P1), p1);
        run_to_block(until + 1);
        // 20% of the 10,000 bond: 500 back to Alice, half the other 1,500 to the verifier,
        // the rest to the treasury.
        assert!(events().contains(&Event::ProviderSlashed {
            subject: Subject::Job(1),
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
            subject: Subject::Job(1),
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
            Verification::contest(RuntimeOrigin::signed(first), Subject::Job(1)),
            Error::<Test>::NotTheProvider
        );
        assert_ok!(Verification::contest(RuntimeOrigin::signed(WORKER), Subject::Job(1)));
        assert_noop!(
            Verification::contest(RuntimeOrigin::signed(P1), Subject::Job(1)),
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
            subject: Subject::Job(1),
            provider: P1,
            refunded: 300,
            rewarded: 850,
            to_treasury: 850,
        }));
        assert!(events().contains(&Event::VerifierSlashed {
            subject: Subject::Job(1),
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
        assert_ok!(Verification::contest(RuntimeOrigin::signed(P1), Subject::Job(1)));
        let (verifiers, _) = audit_of(1);
        let p1 = total(P1);
        assert_ok!(verdict(verifiers[1], 1, Verdict::Match));
        assert_ok!(verdict(verifiers[2], 1, Verdict::Match));
        assert!(events().contains(&Event::WorkConfirmed { subject: Subject::Job(1), provider: P1 }));
        assert!(events().contains(&Event::VerifierSlashed {
            subject: Subject::Job(1),
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
        assert_ok!(Verification::contest(RuntimeOrigin::signed(P1), Subject::Job(1)));
        let (verifiers, _) = audit_of(1);
        assert_eq!(verifiers.len(), 2);
        let p1 = total(P1);
        assert_ok!(verdict(verifiers[1], 1, Verdict::Match));
        assert!(events().contains(&Event::WorkConfirmed { subject: Subject::Job(1), provider: P1 }));
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
            Verification::contest(RuntimeOrigin::signed(P1), Subject::Job(1)),
            Error::<Test>::NoVerifierAvailable
        );
        run_to_block(2 + CONTEST_WINDOW + 1);
        assert!(events()
            .iter()
            .any(|e| matches!(e, Event::ProviderSlashed { subject: Subject::Job(1), .. })));
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
            subject: Subject::Job(1),
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
        assert!(
            events().contains(&Event::AuditAbandoned { subject: Subject::Job(1), provider: P1 })
        );
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
        assert!(events().contains(&Event::WorkConfirmed { subject: Subject::Job(1), provider: P1 }));
    });
}

/// The drawn leaves of redeemed vouchers waiting to be revealed, in order.
fn drawn_leaves() -> Vec<Leaf> {
    let mut leaves: Vec<Leaf> = Reveals::<Test>::iter_keys().collect();
    leaves.sort();
    leaves
}

/// Reveal `leaf` of the tree of `receipts` (whose leaves are `leaves`) with its path.
fn reveal(leaf: Leaf, receipts: &[Vec<u8>], leaves: &[[u8; 32]]) -> sp_runtime::DispatchResult {
    let i = leaf.index as usize;
    let path = service_receipt::proof(leaves, i).unwrap();
    reveal_with(leaf, receipts[i].clone(), path)
}

fn reveal_with(
    leaf: Leaf,
    receipt: Vec<u8>,
    path: Vec<Option<[u8; 32]>>,
) -> sp_runtime::DispatchResult {
    Verification::reveal(
        RuntimeOrigin::signed(P9),
        leaf,
        receipt.try_into().unwrap(),
        path.into_iter().map(|s| s.map(H256)).collect::<Vec<_>>().try_into().unwrap(),
    )
    .map(|_| ())
    .map_err(|e| e.error)
}

#[test]
fn a_voucher_draws_its_share_of_requests_the_fraction_by_chance_at_most_the_cap() {
    build_and_execute(|| {
        let draw = |n, percent, sample| {
            Pallet::<Test>::leaves_to_draw(n, Perbill::from_percent(percent), sample)
        };
        // 2% of 100 requests is 2; 2% of 10 is 0.2: one more when the draw falls under 0.2.
        assert_eq!(draw(100, 2, 999_999_999), 2);
        assert_eq!(draw(10, 2, 199_999_999), 1);
        assert_eq!(draw(10, 2, 200_000_000), 0);
        // Never more than the cap, nor than the requests.
        assert_eq!(draw(1_000, 100, 0), u64::from(MAX_SAMPLES));
        assert_eq!(draw(3, 100, 0), 3);
        assert_eq!(draw(0, 100, 0), 0);
        assert_eq!(draw(u64::MAX, 100, 0), u64::from(MAX_SAMPLES));
    });
}

#[test]
fn a_revealed_receipt_is_audited_and_a_fault_refunds_its_charge_to_the_payer() {
    build_and_execute(|| {
        let receipts: Vec<Vec<u8>> =
            (0..6).map(|r| receipt_bytes(7, 40 + r, 1, 300 + r as u128, None)).collect();
        let leaves = redeem(7, 2, &receipts, 1_815);
        assert_eq!(Reveals::<Test>::count(), 0, "drawn in the next block");
        run_to_block(2);
        let drawn = drawn_leaves();
        assert!(!drawn.is_empty() && drawn.len() <= MAX_SAMPLES as usize, "{drawn:?}");
        let leaf = drawn[0];
        assert_eq!((leaf.channel, leaf.sequence), (7, 2));
        assert!(events().contains(&Event::RevealRequested {
            leaf,
            provider: P1,
            until: 2 + VERDICT_TIMEOUT
        }));
        let i = leaf.index as usize;
        let other = (i + 1) % receipts.len();
        let path = service_receipt::proof(&leaves, i).unwrap();
        // Another receipt of the tree, or a path cut short: refused.
        assert_noop!(
            reveal_with(leaf, receipts[other].clone(), path.clone()),
            Error::<Test>::BadProof
        );
        assert_noop!(
            reveal_with(leaf, receipts[i].clone(), path[..path.len() - 1].to_vec()),
            Error::<Test>::BadProof
        );
        let unknown = Leaf { sequence: 3, ..leaf };
        assert_noop!(reveal(unknown, &receipts, &leaves), Error::<Test>::NoRevealPending);

        let (alice, p1) = (total(ALICE), total(P1));
        assert_ok!(reveal(leaf, &receipts, &leaves));
        let request = 40 + leaf.index;
        let subject = Subject::Request { channel: 7, request };
        assert!(events().contains(&Event::ReceiptRevealed { leaf, request }));
        assert!(!Reveals::<Test>::contains_key(leaf));
        let audit = Audits::<Test>::get(subject).expect("the request is audited");
        assert_eq!((audit.provider, audit.payer, audit.adapter), (P1, ALICE, 1));
        assert_eq!(audit.charged, 300 + u128::from(leaf.index));
        assert_eq!(audit.commitment_hash, H256::repeat_byte(request as u8));
        // Revealed once: the same leaf again is refused.
        assert_noop!(reveal(leaf, &receipts, &leaves), Error::<Test>::NoRevealPending);

        let verifier = audit.verifiers[0].verifier;
        assert_ok!(verdict_on(verifier, subject, Verdict::Mismatch));
        run_to_block(System::block_number() + CONTEST_WINDOW + 1);
        let charged = audit.charged;
        assert!(events().contains(&Event::ProviderSlashed {
            subject,
            provider: P1,
            refunded: charged,
            rewarded: (2_000 - charged) / 2,
            to_treasury: 2_000 - charged - (2_000 - charged) / 2,
        }));
        assert_eq!(total(ALICE), alice + charged);
        assert_eq!(total(P1), p1 - 2_000);
    });
}

#[test]
fn receipts_of_another_chain_channel_or_version_are_refused() {
    build_and_execute(|| {
        let bad = [
            receipt_bytes(7, 1, 1, 100, Some(H256::repeat_byte(3))),
            receipt_bytes(8, 2, 1, 100, None),
            {
                let mut v1 = receipt_bytes(7, 3, 1, 100, None);
                v1[28] = b'1';
                v1
            },
        ];
        let leaves = redeem(7, 1, &bad, 300);
        run_to_block(2);
        assert_eq!(drawn_leaves().len(), 3);
        for leaf in drawn_leaves() {
            assert_noop!(reveal(leaf, &bad, &leaves), Error::<Test>::BadReceipt);
        }
    });
}

#[test]
fn a_receipt_not_revealed_in_time_is_a_fault_refunding_the_mean_charge() {
    build_and_execute(|| {
        let receipts: Vec<Vec<u8>> = (0..3).map(|r| receipt_bytes(5, r, 1, 100, None)).collect();
        let (before, issuance) = ledger();
        let (alice, treasury) = (total(ALICE), total(TREASURY));
        redeem(5, 1, &receipts, 900);
        run_to_block(2);
        let drawn = drawn_leaves();
        assert_eq!(drawn.len(), 3, "a 100% share draws every request of a small voucher");
        run_to_block(2 + VERDICT_TIMEOUT);
        assert_eq!(Reveals::<Test>::count(), 3, "still due in the last block");
        run_to_block(3 + VERDICT_TIMEOUT);
        assert_eq!(Reveals::<Test>::count(), 0);
        // Each miss, in the order settled: 20% of what is left of the bond, the mean charge
        // (900 / 3) back to Alice, the rest to the treasury.
        let missed: Vec<_> = events()
            .into_iter()
            .filter_map(|e| match e {
                Event::RevealMissed { leaf, provider, refunded, to_treasury } => {
                    Some((leaf, provider, refunded, to_treasury))
                },
                _ => None,
            })
            .collect();
        let mut leaves: Vec<Leaf> = missed.iter().map(|m| m.0).collect();
        leaves.sort();
        assert_eq!(leaves, drawn);
        let mut bond_left = MIN_BOND;
        for (_, provider, refunded, to_treasury) in missed {
            let due = bond_left / 5;
            assert_eq!((provider, refunded, to_treasury), (P1, 300, due - 300));
            bond_left -= due;
        }
        assert_eq!(bond(P1), bond_left);
        assert_eq!(total(ALICE), alice + 900);
        assert_eq!(total(TREASURY), treasury + (MIN_BOND - bond_left - 900));
        let (after, issuance_after) = ledger();
        assert_eq!(issuance_after, issuance);
        assert_eq!(after.iter().sum::<Balance>(), before.iter().sum::<Balance>());
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
        Redeem { requests: u64, amount: Balance },
        Reveal { pick: usize },
        Verdict { pick: usize, verdict: u8 },
        Contest { pick: usize, by_worker: bool },
        Blocks(u64),
    }

    fn moves() -> impl Strategy<Value = Vec<Move>> {
        let one = prop_oneof![
            (0u128..50_000).prop_map(|charged| Move::Offer { charged }),
            (1u64..12, 0u128..50_000)
                .prop_map(|(requests, amount)| Move::Redeem { requests, amount }),
            (0usize..32).prop_map(|pick| Move::Reveal { pick }),
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
                let mut next_channel = 0;
                // Each redeemed voucher's receipts and leaves, by channel.
                let mut trees = std::collections::BTreeMap::new();
                for m in moves {
                    match m {
                        Move::Offer { charged } => {
                            offer(next_job, charged);
                            next_job += 1;
                        },
                        Move::Redeem { requests, amount } => {
                            let receipts: Vec<Vec<u8>> = (0..requests)
                                .map(|r| receipt_bytes(next_channel, r, 1, amount / requests as u128, None))
                                .collect();
                            let leaves = redeem(next_channel, 1, &receipts, amount);
                            trees.insert(next_channel, (receipts, leaves));
                            next_channel += 1;
                        },
                        Move::Reveal { pick } => {
                            let pending = drawn_leaves();
                            if let Some(leaf) = pending.get(pick % pending.len().max(1)) {
                                let (receipts, leaves) = &trees[&leaf.channel];
                                assert_ok!(reveal(*leaf, receipts, leaves));
                            }
                        },
                        Move::Verdict { pick, verdict: v } => {
                            let open: Vec<_> = Audits::<Test>::iter().collect();
                            if let Some((job, audit)) = open.get(pick % open.len().max(1)) {
                                let verdict = [Verdict::Match, Verdict::Mismatch, Verdict::Unavailable][v as usize];
                                for a in audit.verifiers.iter() {
                                    let _ = verdict_on(a.verifier, *job, verdict);
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
                    Event::RevealMissed { refunded, to_treasury, .. } => refunded + to_treasury,
                    _ => 0,
                }).sum();
                assert_eq!(MIN_BOND - bond(P1), paid);
            });
        }
    }
}

#[test]
fn honest_scores_never_make_a_provider_drift_and_move_nothing() {
    build_and_execute(|| {
        let before = ledger();
        // Honest rounding scatters around 1,000; every job passes, none is judged to drift.
        let scores = [900, 1_400, 1_100, 700, 1_450, 1_000, 1_300, 800, 1_200, 950];
        let events = confirm_with_scores(1..11, &scores);
        assert_eq!(
            events.iter().filter(|e| matches!(e, Event::WorkConfirmed { .. })).count(),
            scores.len()
        );
        assert!(!events.iter().any(|e| matches!(e, Event::ProviderDrifted { .. })));
        // The window keeps the last five scores, oldest first.
        assert_eq!(DriftScores::<Test>::get(P1).into_inner(), vec![1_000, 1_300, 800, 1_200, 950]);
        assert_eq!(Verification::drift_scores(P1), vec![1_000, 1_300, 800, 1_200, 950]);
        assert_eq!(ledger(), before);
    });
}

#[test]
fn a_provider_whose_median_score_passes_the_limit_is_slashed_as_for_a_fault() {
    build_and_execute(|| {
        // Four jobs twice as far from their commitments as honest work: each passes its own
        // tolerance, and four are not yet a window.
        let p1 = total(P1);
        let early = confirm_with_scores(1..5, &[2_000, 2_100, 1_900, 2_050]);
        assert!(!early.iter().any(|e| matches!(e, Event::ProviderDrifted { .. })));
        assert_eq!(total(P1), p1);
        // The fifth fills the window: median 2,000 > 1,500.
        let verifier = audited(5, 500);
        let (alice, v, treasury) = (total(ALICE), total(verifier), total(TREASURY));
        let issuance = Balances::total_issuance();
        assert_ok!(scored_on(verifier, Subject::Job(5), Verdict::Match, 2_200));
        // As an uncontested fault: 20% of the 10,000 bond, 500 back to job 5's payer, half
        // the other 1,500 to job 5's verifier, the rest to the treasury.
        assert!(events().contains(&Event::ProviderDrifted {
            subject: Subject::Job(5),
            provider: P1,
            median: 2_050,
            refunded: 500,
            rewarded: 750,
            to_treasury: 750,
        }));
        assert!(
            !events().contains(&Event::WorkConfirmed { subject: Subject::Job(5), provider: P1 })
        );
        assert_eq!(total(ALICE), alice + 500);
        assert_eq!(total(verifier), v + 750);
        assert_eq!(total(TREASURY), treasury + 750);
        assert_eq!(total(P1), p1 - 2_000);
        assert_eq!(bond(P1), MIN_BOND - 2_000);
        assert_eq!(Balances::total_issuance(), issuance);
        // Its scores start again.
        assert!(!DriftScores::<Test>::contains_key(P1));
        assert_eq!(Audits::<Test>::count(), 0);
    });
}

#[test]
fn one_lying_verifier_cannot_make_an_honest_provider_drift() {
    build_and_execute(|| {
        let before = ledger();
        // Two verifiers report the worst score there is; the median of the window stays
        // honest.
        let events = confirm_with_scores(1..6, &[1_000, u32::MAX, 1_100, u32::MAX, 900]);
        assert!(!events.iter().any(|e| matches!(e, Event::ProviderDrifted { .. })));
        assert_eq!(ledger(), before);
    });
}

#[test]
fn a_verdict_that_finds_a_fault_adds_no_score() {
    build_and_execute(|| {
        let verifier = audited(1, 500);
        assert_ok!(scored_on(verifier, Subject::Job(1), Verdict::Mismatch, 9_000));
        run_to_block(System::block_number() + CONTEST_WINDOW + 1);
        assert!(!DriftScores::<Test>::contains_key(P1));
    });
}
