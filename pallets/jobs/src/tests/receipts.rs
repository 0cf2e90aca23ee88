//! `submit_receipts`: settlement arithmetic, batches, and every way a receipt is rejected.

use super::matching::escrow_of;
use crate::{mock::*, Error, Event, Receipt, TotalEscrow};
use frame_support::{assert_noop, assert_ok, traits::fungible::Inspect};
use openledger_primitives::{
    market::DataNetShare,
    receipt::{ReceiptContext, RECEIPT_DOMAIN, RECEIPT_PAYLOAD_LEN},
};
use sp_core::{ed25519, H256};
use sp_runtime::Permill;

fn settle(receipts: Vec<Receipt>) -> sp_runtime::DispatchResult {
    submit_receipts(receipts)
}

#[test]
fn receipt_charges_tokens_and_refunds_the_rest() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let issuance = Balances::total_issuance();
        // 15 per 1k tokens (10 provider + 5 adapter); budget 100.
        let job = submit(ALICE, 1, 2_000, 100);
        assert_ok!(Jobs::acknowledge(RuntimeOrigin::signed(P1), job));
        // 1,234 + 1,000 tokens at 15/1k = 33.51, rounded up to 34.
        assert_ok!(settle(vec![receipt(job, 1_234, 1_000)]));
        assert_eq!(escrow_of(ALICE), 0);
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT - 34);
        assert_eq!(Balances::balance(&P1), ENDOWMENT - MIN_BOND + 34);
        assert_eq!(Balances::total_issuance(), issuance);
        assert_eq!(TotalEscrow::<Test>::get(), 0);
        assert_eq!(
            job_events().last(),
            Some(&Event::JobSettled {
                job,
                provider: P1,
                output_hash: H256::repeat_byte(0x0f),
                input_tokens: 1_234,
                output_tokens: 1_000,
                charged: 34,
                refunded: 66,
                commitment_hash: H256::repeat_byte(0xc0),
            })
        );
        let state = pallet_compute::ProviderStates::<Test>::get(P1).unwrap();
        assert_eq!(state.open_jobs, 0);
        assert!(state.reputation > pallet_compute::NEUTRAL_REPUTATION);
    });
}

#[test]
fn charge_is_capped_at_the_budget() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 20);
        // 100,000 input tokens would cost 1,500; the budget is 20.
        assert_ok!(settle(vec![receipt(job, 100_000, 1_000)]));
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT - 20);
        assert!(matches!(
            job_events().last(),
            Some(Event::JobSettled { charged: 20, refunded: 0, .. })
        ));
    });
}

#[test]
fn zero_tokens_cost_nothing() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 20);
        assert_ok!(settle(vec![receipt(job, 0, 0)]));
        assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
    });
}

#[test]
fn receipt_may_precede_acknowledgement() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 20);
        assert_ok!(settle(vec![receipt(job, 10, 10)]));
    });
}

#[test]
fn batch_settles_valid_receipts_and_reports_the_rest() {
    build_and_execute(|| {
        register(P1, &[3], 10, 8);
        let jobs: Vec<_> = (0..4).map(|_| submit(ALICE, 1, 1_000, 100)).collect();
        let mut forged = receipt(jobs[1], 10, 10);
        forged.output_tokens = 11;
        let batch = vec![
            receipt(jobs[0], 10, 10),
            forged,
            receipt(jobs[2], 10, 10),
            receipt(jobs[2], 10, 10),
            receipt(jobs[3], 10, 10).clone_with_job(99),
        ];
        assert_ok!(settle(batch));
        let events = job_events();
        let settled: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::JobSettled { job, .. } => Some(*job),
                _ => None,
            })
            .collect();
        assert_eq!(settled, vec![jobs[0], jobs[2]]);
        let rejected: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::ReceiptRejected { job, error } => Some((*job, *error)),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejected,
            vec![
                (jobs[1], Error::<Test>::BadSignature.into()),
                (jobs[2], Error::<Test>::JobClosed.into()),
                (99, Error::<Test>::UnknownJob.into()),
            ]
        );
        // Jobs 1 and 3 remain open with their escrow.
        assert_eq!(escrow_of(ALICE), 200);
    });
}

trait WithJob {
    fn clone_with_job(&self, job: u64) -> Receipt;
}
impl WithJob for Receipt {
    fn clone_with_job(&self, job: u64) -> Receipt {
        Receipt { job, ..self.clone() }
    }
}

#[test]
fn unknown_and_replayed_jobs_are_rejected() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let valid = receipt(job, 10, 10);
        assert_noop!(settle(vec![valid.clone_with_job(5)]), Error::<Test>::UnknownJob);
        assert_ok!(settle(vec![valid.clone()]));
        assert_noop!(settle(vec![valid]), Error::<Test>::JobClosed);
    });
}

#[test]
fn altered_fields_are_rejected() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let valid = receipt(job, 10, 10);
        let alterations: Vec<Box<dyn Fn(&mut Receipt)>> = vec![
            Box::new(|r| r.output_hash = H256::repeat_byte(1)),
            Box::new(|r| r.input_tokens += 1),
            Box::new(|r| r.output_tokens -= 1),
            Box::new(|r| {
                r.context =
                    vec![DataNetShare::new(1, Permill::from_percent(10))].try_into().unwrap()
            }),
            Box::new(|r| r.commitment_hash = H256::zero()),
        ];
        for alter in alterations {
            let mut altered = valid.clone();
            alter(&mut altered);
            assert_noop!(settle(vec![altered]), Error::<Test>::BadSignature);
        }
        assert_ok!(settle(vec![valid]));
    });
}

#[test]
fn retrieval_context_reaches_the_settlement_and_is_signed() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let context = vec![
            DataNetShare::new(4, Permill::from_percent(30)),
            DataNetShare::new(9, Permill::from_percent(70)),
        ];
        let valid = receipt_with_context(job, 10, 10, context.clone());
        // Reweighing, dropping or adding a context DataNet after signing breaks the signature.
        let mut reweighed = valid.clone();
        reweighed.context = vec![
            DataNetShare::new(4, Permill::from_percent(70)),
            DataNetShare::new(9, Permill::from_percent(30)),
        ]
        .try_into()
        .unwrap();
        let mut dropped = valid.clone();
        dropped.context = vec![DataNetShare::new(4, Permill::from_percent(30))].try_into().unwrap();
        for altered in [reweighed, dropped] {
            assert_noop!(settle(vec![altered]), Error::<Test>::BadSignature);
        }
        SETTLED_CONTEXTS.with(|c| c.borrow_mut().clear());
        assert_ok!(settle(vec![valid]));
        assert_eq!(SETTLED_CONTEXTS.with(|c| c.borrow().clone()), vec![(job, context)]);
    });
}

#[test]
fn batch_is_charged_its_measured_cost_plus_what_each_settlement_reports() {
    use crate::WeightInfo;
    use openledger_primitives::market::Settlement;
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let jobs = [submit(ALICE, 1, 1_000, 100), submit(ALICE, 1, 1_000, 100)];
        let mut forged = receipt(jobs[1], 10, 10);
        forged.input_tokens += 1;
        let batch = vec![receipt(jobs[0], 10, 10), forged];
        let info = Jobs::submit_receipts(RuntimeOrigin::signed(BOB), batch.try_into().unwrap())
            .expect("one receipt is valid");
        // The settled receipt reports its own settlement's and offer's weight; the rejected
        // one is charged the settlement's and the offer's worst case.
        let offer =
            <RecordingAudit as openledger_primitives::market::WorkAudit<_, _>>::offer_weight();
        let expected = <() as WeightInfo>::submit_receipts(2)
            .saturating_add(RecordingSettlement::settle_weight())
            .saturating_add(offer)
            .saturating_add(offer);
        assert_eq!(info.actual_weight, Some(expected));
        // A batch with no valid receipt fails, and is still charged what it used.
        let mut forged = receipt(jobs[1], 10, 10);
        forged.output_tokens += 1;
        let err =
            Jobs::submit_receipts(RuntimeOrigin::signed(BOB), vec![forged].try_into().unwrap())
                .expect_err("no receipt is valid");
        assert_eq!(err.error, Error::<Test>::BadSignature.into());
        assert_eq!(
            err.post_info.actual_weight,
            Some(
                <() as WeightInfo>::submit_receipts(1)
                    .saturating_add(RecordingSettlement::settle_weight())
                    .saturating_add(offer)
            )
        );
    });
}

#[test]
fn receipts_bound_to_another_job_provider_adapter_or_chain_are_rejected() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        register(P2, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let provider = crate::Jobs::<Test>::get(job).unwrap().provider;
        let other = if provider == P1 { P2 } else { P1 };
        let key = signing_key(provider);
        // The other provider's worker signs for this job.
        let wrong_worker = receipt_signed_by(&signing_key(other), provider, 1, job, 1, 1);
        // The right worker signs, naming the other provider.
        let wrong_provider = receipt_signed_by(&key, other, 1, job, 1, 1);
        // The right worker signs for another adapter.
        let wrong_adapter = receipt_signed_by(&key, provider, 2, job, 1, 1);
        // A signature made for job 7 presented for this job.
        let wrong_job = receipt_signed_by(&key, provider, 1, 7, 1, 1).clone_with_job(job);
        for bad in [wrong_worker, wrong_provider, wrong_adapter, wrong_job] {
            assert_noop!(settle(vec![bad]), Error::<Test>::BadSignature);
        }
        // Signed for another chain: change the genesis hash the runtime sees.
        let valid = receipt(job, 1, 1);
        frame_system::BlockHash::<Test>::insert(0, H256::repeat_byte(0x99));
        assert_noop!(settle(vec![valid.clone()]), Error::<Test>::BadSignature);
        frame_system::BlockHash::<Test>::insert(0, H256::repeat_byte(69));
        assert_ok!(settle(vec![valid]));
    });
}

#[test]
fn garbage_signature_is_rejected() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let mut bad = receipt(job, 1, 1);
        bad.signature = ed25519::Signature::from_raw([7; 64]);
        assert_noop!(settle(vec![bad]), Error::<Test>::BadSignature);
    });
}

#[test]
fn output_beyond_the_limit_is_rejected() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        assert_noop!(settle(vec![receipt(job, 1, 101)]), Error::<Test>::OutputTooLong);
        assert_ok!(settle(vec![receipt(job, 1, 100)]));
    });
}

#[test]
fn late_receipt_is_rejected() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 100, 100);
        let valid = receipt(job, 1, 1);
        run_to_block(2 + ACK_TIMEOUT);
        assert_noop!(settle(vec![valid]), Error::<Test>::DeadlinePassed);
    });
}

#[test]
fn settlement_failure_rejects_the_receipt_only() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        // The escrow is gone from the hold behind the pallet's back (a broken invariant):
        // releasing it fails, and the receipt is rejected without partial effects.
        let reason = RuntimeHoldReason::Jobs(crate::HoldReason::JobEscrow);
        use frame_support::traits::{fungible::MutateHold, tokens::Precision};
        assert_ok!(Balances::release(&reason, &ALICE, 100, Precision::Exact));
        assert!(settle(vec![receipt(job, 10, 10)]).is_err());
        assert!(crate::Jobs::<Test>::get(job).is_some());
        // Restore the hold so the invariants hold again.
        assert_ok!(Balances::hold(&reason, &ALICE, 100));
    });
}

#[test]
fn receipt_of_a_vanished_provider_is_rejected() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let valid = receipt(job, 1, 1);
        // The registry never drops a provider with open jobs; pretend it did.
        let state = pallet_compute::ProviderStates::<Test>::take(P1).unwrap();
        assert_noop!(settle(vec![valid.clone()]), Error::<Test>::UnknownProvider);
        pallet_compute::ProviderStates::<Test>::insert(P1, state);
        assert_ok!(settle(vec![valid]));
    });
}

/// Settling a receipt writes the same storage keys whether one or a hundred jobs are open:
/// nothing is scanned, so the per-receipt weight does not grow with the marketplace.
#[test]
fn receipt_writes_a_constant_number_of_keys() {
    let keys_written = |open_jobs: usize| {
        let mut ext = new_test_ext();
        let job = ext.execute_with(|| {
            register(P1, &[3], 10, 1_000);
            let jobs: Vec<_> = (0..open_jobs).map(|_| submit(ALICE, 1, 1_000, 100)).collect();
            jobs[open_jobs / 2]
        });
        ext.commit_all().unwrap();
        ext.execute_with(|| {
            assert_ok!(settle(vec![receipt(job, 10, 10)]));
            check_invariants();
        });
        let written: Vec<_> =
            ext.overlayed_changes().changes().map(|(key, _)| key.clone()).collect();
        written.len()
    };
    let one = keys_written(1);
    assert_eq!(one, keys_written(100));
    // Job, two index entries, total escrow, provider state, the user's hold and account, the
    // provider's account, and the event log.
    assert!(one <= 11, "{one} keys written");
}

#[test]
fn a_settled_job_frees_its_slot_before_the_next_heartbeat() {
    build_and_execute(|| {
        register(P1, &[3], 10, 1);
        let job = submit(ALICE, 1, 1_000, 100);
        // One slot, taken: no provider for a second job.
        assert_noop!(
            Jobs::submit_job(
                RuntimeOrigin::signed(ALICE),
                1,
                H256::repeat_byte(2),
                1_000,
                100,
                b"gw".to_vec()
            ),
            Error::<Test>::NoProviderAvailable
        );
        assert_ok!(settle(vec![receipt(job, 10, 10)]));
        // Settling returned the slot; no heartbeat was needed.
        let state = pallet_compute::ProviderStates::<Test>::get(P1).expect("registered");
        assert_eq!((state.open_jobs, state.free_slots), (0, 1));
        submit(ALICE, 1, 1_000, 100);
    });
}

/// Asks the runtime, as a client does, for the bytes to sign: the view function dispatched by
/// its id with SCALE-encoded arguments, its answer decoded.
fn signing_payload_from_chain(
    job: u64,
    output_hash: H256,
    input_tokens: u32,
    output_tokens: u32,
    context: ReceiptContext,
    commitment_hash: H256,
) -> Option<Vec<u8>> {
    use codec::{Decode, Encode};
    use frame_support::view_functions::ViewFunction;
    type Query = crate::ReceiptSigningPayloadViewFunction<Test>;
    let input = Query::new(job, output_hash, input_tokens, output_tokens, context, commitment_hash)
        .encode();
    let output = Test::execute_view_function(Query::id(), input).expect("view function exists");
    Option::<Vec<u8>>::decode(&mut &output[..]).expect("answer decodes")
}

#[test]
fn a_receipt_signed_over_the_chains_signing_payload_settles() {
    use ed25519_dalek::Signer;
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let output_hash = H256::repeat_byte(0x5a);
        let context: ReceiptContext =
            vec![DataNetShare::new(4, Permill::from_percent(25))].try_into().unwrap();
        let commitment_hash = H256::repeat_byte(0xc3);
        let bytes =
            signing_payload_from_chain(job, output_hash, 7, 9, context.clone(), commitment_hash)
                .expect("the job is open");
        // The documented layout: the domain tag first, 201 bytes in all with OpenLedger's
        // 32-byte accounts (the mock's are 8 bytes).
        assert_eq!(bytes.len(), RECEIPT_PAYLOAD_LEN - 32 + core::mem::size_of::<AccountId>());
        assert_eq!(bytes[..RECEIPT_DOMAIN.len()], RECEIPT_DOMAIN);

        // A client that knows nothing but these bytes signs them with the worker key.
        let signature = ed25519::Signature::from_raw(signing_key(P1).sign(&bytes).to_bytes());
        let receipt = Receipt {
            job,
            output_hash,
            input_tokens: 7,
            output_tokens: 9,
            context,
            commitment_hash,
            signature,
        };
        assert_ok!(settle(vec![receipt]));
        assert!(job_events().iter().any(|e| matches!(
            e,
            Event::JobSettled { job: j, input_tokens: 7, output_tokens: 9, commitment_hash: c, .. }
                if *j == job && *c == commitment_hash
        )));

        // A closed job, or one never assigned, has nothing to sign.
        let none = H256::zero();
        assert_eq!(
            signing_payload_from_chain(job, output_hash, 7, 9, Default::default(), none),
            None
        );
        assert_eq!(
            signing_payload_from_chain(99, output_hash, 7, 9, Default::default(), none),
            None
        );
    });
}

#[test]
fn the_chains_signing_payload_binds_every_field() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let h = H256::repeat_byte(1);
        let none = H256::zero();
        let base = signing_payload_from_chain(job, h, 1, 2, Default::default(), none).unwrap();
        let context: ReceiptContext =
            vec![DataNetShare::new(4, Permill::from_percent(1))].try_into().unwrap();
        for other in [
            signing_payload_from_chain(job, H256::repeat_byte(2), 1, 2, Default::default(), none),
            signing_payload_from_chain(job, h, 2, 2, Default::default(), none),
            signing_payload_from_chain(job, h, 1, 3, Default::default(), none),
            signing_payload_from_chain(job, h, 1, 2, context, none),
            signing_payload_from_chain(job, h, 1, 2, Default::default(), H256::repeat_byte(9)),
        ] {
            assert_ne!(other.unwrap(), base);
        }
        // The same bytes the worker library builds (`ReceiptPayload`), for this chain's genesis,
        // the job's provider and adapter.
        let record = crate::Jobs::<Test>::get(job).unwrap();
        let fields = crate::ReceiptFields {
            job,
            output_hash: h,
            input_tokens: 1,
            output_tokens: 2,
            context: Default::default(),
            commitment_hash: none,
        };
        assert_eq!(
            crate::ReceiptPayload::for_fields(
                genesis_hash(),
                record.provider,
                record.adapter,
                &fields
            )
            .signing_bytes(),
            base
        );
    });
}

#[test]
fn settled_jobs_are_offered_for_verification_with_their_commitment() {
    build_and_execute(|| {
        crate::mock::OFFERED.with(|o| o.borrow_mut().clear());
        register(P1, &[3], 10, 4);
        let settled = submit(ALICE, 1, 1_000, 100);
        let rejected = submit(ALICE, 1, 1_000, 100);
        let mut bad = receipt(rejected, 10, 10);
        bad.commitment_hash = H256::repeat_byte(0xee);
        assert_ok!(submit_receipts(vec![receipt(settled, 1_234, 1_000), bad]));
        let offered = crate::mock::OFFERED.with(|o| o.borrow().clone());
        assert_eq!(
            offered,
            vec![openledger_primitives::market::SettledWork {
                job: settled,
                payer: ALICE,
                provider: P1,
                adapter: 1,
                charged: 34,
                commitment_hash: H256::repeat_byte(0xc0),
            }],
            "only the settled job, with what it cost and the commitment its receipt signed"
        );
    });
}
