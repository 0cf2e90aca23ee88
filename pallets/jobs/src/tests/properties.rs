//! Random sequences of marketplace calls, checked against a small model of who should own what.
//!
//! Each step runs one call (which may fail: a failed call must change nothing), then checks
//! both pallets' invariants and that OPEN was only moved, never created or destroyed: total
//! issuance is constant, the sum of all balances (free and held) equals it, and every account
//! holds exactly what the model says it should: its endowment, minus charges it paid and slashes
//! it suffered, plus charges it earned and slashes it received. At the end every open job is
//! expired and every provider leaves, after which nothing at all may remain on hold.

use super::matching::escrow_of;
use crate::{mock::*, Jobs as JobRecords, NextJobId};
use frame_support::traits::fungible::{Inspect, InspectHold};
use proptest::prelude::*;
use sp_core::H256;
use std::collections::BTreeMap;

const USERS: [AccountId; 2] = [ALICE, BOB];
const PROVIDERS: [AccountId; 3] = [P1, P2, P3];

#[derive(Clone, Debug)]
enum Action {
    Register { provider: usize, price: Balance, slots: u32 },
    Heartbeat { provider: usize, free_slots: u32 },
    BondExtra { provider: usize, amount: Balance },
    Reprice { provider: usize, price: Balance },
    Submit { user: usize, max_output_tokens: u32, max_fee: Balance },
    Acknowledge { job: u64 },
    Settle { job: u64, input_tokens: u32, output_tokens: u32, forged: bool },
    Expire { job: u64 },
    Refuse { job: u64, by_worker: bool },
    Serve { provider: usize, adapter_1: bool },
    Unregister { provider: usize },
    Withdraw { provider: usize },
    Advance { blocks: u64 },
}

fn action() -> impl Strategy<Value = Action> {
    let provider = 0..PROVIDERS.len();
    let job = 0..16u64;
    prop_oneof![
        2 => (provider.clone(), 0..50u128, 1..4u32)
            .prop_map(|(provider, price, slots)| Action::Register { provider, price, slots }),
        1 => (provider.clone(), 0..4u32)
            .prop_map(|(provider, free_slots)| Action::Heartbeat { provider, free_slots }),
        1 => (provider.clone(), 0..5_000u128)
            .prop_map(|(provider, amount)| Action::BondExtra { provider, amount }),
        1 => (provider.clone(), 0..50u128)
            .prop_map(|(provider, price)| Action::Reprice { provider, price }),
        3 => (0..USERS.len(), 1..5_000u32, 0..300u128).prop_map(
            |(user, max_output_tokens, max_fee)| Action::Submit { user, max_output_tokens, max_fee }
        ),
        1 => job.clone().prop_map(|job| Action::Acknowledge { job }),
        3 => (job.clone(), 0..20_000u32, 0..6_000u32, proptest::bool::weighted(0.1)).prop_map(
            |(job, input_tokens, output_tokens, forged)| Action::Settle {
                job,
                input_tokens,
                output_tokens,
                forged
            }
        ),
        1 => job.clone().prop_map(|job| Action::Expire { job }),
        1 => (job, proptest::bool::weighted(0.8))
            .prop_map(|(job, by_worker)| Action::Refuse { job, by_worker }),
        1 => (provider.clone(), proptest::bool::weighted(0.7))
            .prop_map(|(provider, adapter_1)| Action::Serve { provider, adapter_1 }),
        1 => provider.clone().prop_map(|provider| Action::Unregister { provider }),
        1 => provider.prop_map(|provider| Action::Withdraw { provider }),
        1 => (1..12u64).prop_map(|blocks| Action::Advance { blocks }),
    ]
}

/// What each account should own in total (free plus held), per the rules.
struct Model {
    owned: BTreeMap<AccountId, Balance>,
}

impl Model {
    fn new() -> Self {
        let owned = [ALICE, BOB, P1, P2, P3, WORKER].iter().map(|who| (*who, ENDOWMENT)).collect();
        Self { owned }
    }

    fn transfer(&mut self, from: AccountId, to: AccountId, amount: Balance) {
        *self.owned.get_mut(&from).unwrap() -= amount;
        *self.owned.get_mut(&to).unwrap() += amount;
    }

    fn check(&self) {
        let mut sum = 0;
        for (who, owned) in &self.owned {
            assert_eq!(Balances::total_balance(who), *owned, "account {who}");
            sum += owned;
        }
        assert_eq!(Balances::total_issuance(), sum, "issuance changed");
    }
}

/// `USERS[user]` submits a job for adapter 1, which may fail (a failed call changes nothing).
fn try_submit(user: usize, max_output_tokens: u32, max_fee: Balance) {
    let _ = Jobs::submit_job(
        RuntimeOrigin::signed(USERS[user]),
        1,
        H256::zero(),
        max_output_tokens,
        max_fee,
        Default::default(),
    );
}

fn bond(provider: AccountId) -> Balance {
    pallet_compute::ProviderStates::<Test>::get(provider).map_or(0, |state| state.bond)
}

fn run(action: &Action, model: &mut Model) {
    let jobs_issued = NextJobId::<Test>::get();
    let pick = |job: u64| if jobs_issued == 0 { job } else { job % (jobs_issued + 1) };
    match action.clone() {
        Action::Register { provider, price, slots } => {
            let who = PROVIDERS[provider];
            if pallet_compute::ProviderStates::<Test>::get(who).is_none() {
                register(who, &[3], price, slots);
            }
        },
        Action::Heartbeat { provider, free_slots } => {
            let who = PROVIDERS[provider];
            let _ =
                Compute::heartbeat(RuntimeOrigin::signed(who), who, Default::default(), free_slots);
        },
        Action::BondExtra { provider, amount } => {
            let _ = Compute::bond_extra(RuntimeOrigin::signed(PROVIDERS[provider]), amount);
        },
        Action::Reprice { provider, price } => {
            let who = PROVIDERS[provider];
            if let Some(mut terms) = pallet_compute::Providers::<Test>::get(who) {
                terms.price_per_1k = price;
                let _ = Compute::update_provider(RuntimeOrigin::signed(who), terms);
            }
        },
        Action::Submit { user, max_output_tokens, max_fee } => {
            try_submit(user, max_output_tokens, max_fee);
        },
        Action::Acknowledge { job } => {
            let job = pick(job);
            if let Some(record) = JobRecords::<Test>::get(job) {
                let _ = Jobs::acknowledge(RuntimeOrigin::signed(record.provider), job);
            }
        },
        Action::Settle { job, input_tokens, output_tokens, forged } => {
            let job = pick(job);
            let Some(record) = JobRecords::<Test>::get(job) else {
                let result = Jobs::submit_receipts(
                    RuntimeOrigin::signed(BOB),
                    vec![crate::Receipt {
                        job,
                        output_hash: H256::zero(),
                        input_tokens,
                        output_tokens,
                        context: Default::default(),
                        commitment_hash: H256::zero(),
                        signature: sp_core::ed25519::Signature::from_raw([1; 64]),
                    }]
                    .try_into()
                    .unwrap(),
                );
                assert!(result.is_err(), "a receipt for a closed or unknown job settled");
                return;
            };
            let output_tokens = output_tokens.min(record.max_output_tokens);
            let mut receipt = receipt(job, input_tokens, output_tokens);
            if forged {
                receipt.input_tokens = receipt.input_tokens.wrapping_add(1);
            }
            let result = Jobs::submit_receipts(
                RuntimeOrigin::signed(BOB),
                vec![receipt].try_into().unwrap(),
            );
            let on_time = System::block_number() <= record.deadline;
            assert_eq!(result.is_ok(), on_time && !forged, "{result:?}");
            if result.is_ok() {
                let tokens = Balance::from(input_tokens) + Balance::from(output_tokens);
                let charge = (tokens * record.price_per_1k).div_ceil(1000).min(record.escrow);
                model.transfer(record.submitter, record.provider, charge);
            }
        },
        Action::Expire { job } => {
            let job = pick(job);
            let record = JobRecords::<Test>::get(job);
            let bond_before = record.as_ref().map_or(0, |r| bond(r.provider));
            let result = Jobs::expire(RuntimeOrigin::signed(ALICE), job);
            match record {
                Some(record) if System::block_number() > record.deadline => {
                    assert!(result.is_ok(), "{result:?}");
                    // Only a job the worker acknowledged costs the provider its bond.
                    if record.phase == crate::JobPhase::Acknowledged {
                        model.transfer(record.provider, record.submitter, bond_before / 10);
                    }
                },
                _ => assert!(result.is_err()),
            }
        },
        Action::Refuse { job, by_worker } => {
            let job = pick(job);
            let record = JobRecords::<Test>::get(job);
            let who = match (&record, by_worker) {
                (Some(record), true) => record.provider,
                _ => ALICE,
            };
            let result =
                Jobs::refuse(RuntimeOrigin::signed(who), job, crate::RefusalReason::EmptyPrompt);
            let allowed = record.is_some_and(|r| by_worker && System::block_number() <= r.deadline);
            // A refusal moves nothing: the whole escrow stays with the user.
            assert_eq!(result.is_ok(), allowed, "{result:?}");
        },
        Action::Serve { provider, adapter_1 } => {
            let who = PROVIDERS[provider];
            let adapters: Vec<u32> = if adapter_1 { vec![1, 2] } else { vec![2] };
            let _ = Compute::set_served_adapters(
                RuntimeOrigin::signed(who),
                who,
                adapters.try_into().unwrap(),
            );
        },
        Action::Unregister { provider } => {
            let _ = Compute::unregister(RuntimeOrigin::signed(PROVIDERS[provider]));
        },
        Action::Withdraw { provider } => {
            let _ = Compute::withdraw_unbonded(RuntimeOrigin::signed(PROVIDERS[provider]));
        },
        Action::Advance { blocks } => run_to_block(System::block_number() + blocks),
    }
}

/// Expire whatever is open and let every provider leave.
fn wind_down(model: &mut Model) {
    run_to_block(System::block_number() + ACK_TIMEOUT + JOB_TIMEOUT + 1);
    for job in 0..NextJobId::<Test>::get() {
        run(&Action::Expire { job }, model);
    }
    for provider in PROVIDERS {
        let _ = Compute::unregister(RuntimeOrigin::signed(provider));
    }
    run_to_block(System::block_number() + UNBONDING);
    for provider in PROVIDERS {
        if pallet_compute::ProviderStates::<Test>::get(provider).is_some() {
            assert!(Compute::withdraw_unbonded(RuntimeOrigin::signed(provider)).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn open_is_only_moved_by_fees_and_slashes(actions in proptest::collection::vec(action(), 1..48)) {
        new_test_ext().execute_with(|| {
            let mut model = Model::new();
            for action in &actions {
                run(action, &mut model);
                check_invariants();
                model.check();
            }
            wind_down(&mut model);
            check_invariants();
            model.check();
            // Nothing is stuck: no escrow, no bond, no record.
            for who in [ALICE, BOB, P1, P2, P3, WORKER] {
                prop_assert_eq!(escrow_of(who), 0);
                prop_assert_eq!(Balances::total_balance_on_hold(&who), 0);
            }
            prop_assert_eq!(JobRecords::<Test>::iter().count(), 0);
            prop_assert_eq!(pallet_compute::TotalBonded::<Test>::get(), 0);
            Ok(())
        })?;
    }
}

/// What an honest worker does with a job assigned to it, chosen per job by the test.
#[derive(Clone, Copy, Debug)]
enum Conduct {
    /// Refuses it at once (the request was bad).
    Refuse,
    /// Acknowledges it, then settles it `after` blocks later (within its deadline).
    Serve { after: u64 },
    /// Acknowledges it, then refuses it `after` blocks later (its engine failed).
    AcknowledgeThenRefuse { after: u64 },
    /// Never looks at it (offline, or the payload never arrived).
    Ignore,
}

/// What a user may do: anything, with any arguments.
#[derive(Clone, Debug)]
enum UserMove {
    Submit { user: usize, max_output_tokens: u32, max_fee: Balance },
    Expire { job: u64 },
    Refuse { job: u64 },
    Receipt { job: u64, input_tokens: u32, output_tokens: u32 },
    Advance { blocks: u64 },
}

fn user_move() -> impl Strategy<Value = UserMove> {
    prop_oneof![
        3 => (0..USERS.len(), 0..6_000u32, 0..400u128).prop_map(
            |(user, max_output_tokens, max_fee)| UserMove::Submit { user, max_output_tokens, max_fee }
        ),
        2 => (0..24u64).prop_map(|job| UserMove::Expire { job }),
        1 => (0..24u64).prop_map(|job| UserMove::Refuse { job }),
        1 => (0..24u64, 0..9_000u32, 0..9_000u32).prop_map(|(job, input_tokens, output_tokens)| {
            UserMove::Receipt { job, input_tokens, output_tokens }
        }),
        2 => (1..10u64).prop_map(|blocks| UserMove::Advance { blocks }),
    ]
}

fn conduct() -> impl Strategy<Value = Conduct> {
    prop_oneof![
        Just(Conduct::Refuse),
        (0..JOB_TIMEOUT).prop_map(|after| Conduct::Serve { after }),
        (0..JOB_TIMEOUT).prop_map(|after| Conduct::AcknowledgeThenRefuse { after }),
        Just(Conduct::Ignore),
    ]
}

/// One block of honest work: each open job is handled as its conduct says, on time.
fn honest_workers(conducts: &[Conduct], acknowledged_at: &mut BTreeMap<u64, u64>) {
    let now = System::block_number();
    let open: Vec<_> = JobRecords::<Test>::iter().collect();
    for (job, record) in open {
        let conduct = conducts[job as usize % conducts.len()];
        let worker = RuntimeOrigin::signed(record.provider);
        match (conduct, acknowledged_at.get(&job).copied()) {
            (Conduct::Refuse, _) => {
                assert!(Jobs::refuse(worker, job, crate::RefusalReason::InvalidParameters).is_ok());
            },
            (Conduct::Serve { .. } | Conduct::AcknowledgeThenRefuse { .. }, None) => {
                assert!(Jobs::acknowledge(worker, job).is_ok());
                acknowledged_at.insert(job, now);
            },
            (Conduct::Serve { after }, Some(at)) if now >= at + after => {
                let tokens = record.max_output_tokens / 2;
                assert!(submit_receipts(vec![receipt(job, 7, tokens)]).is_ok());
            },
            (Conduct::AcknowledgeThenRefuse { after }, Some(at)) if now >= at + after => {
                assert!(Jobs::refuse(worker, job, crate::RefusalReason::WorkerFault).is_ok());
            },
            _ => {},
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever users submit, expire, forge or wait for, a provider whose worker acknowledges
    /// only jobs it then settles or refuses in time never loses a planck of its bond.
    #[test]
    fn users_cannot_get_an_honest_provider_slashed(
        moves in proptest::collection::vec(user_move(), 1..64),
        conducts in proptest::collection::vec(conduct(), 1..8),
        slots in 1..4u32,
    ) {
        new_test_ext().execute_with(|| {
            register(P1, &[3], 10, slots);
            register(P2, &[3], 20, slots);
            let mut acknowledged_at = BTreeMap::new();
            for step in &moves {
                match step.clone() {
                    UserMove::Submit { user, max_output_tokens, max_fee } => {
                        try_submit(user, max_output_tokens, max_fee);
                    },
                    UserMove::Expire { job } => {
                        let _ = Jobs::expire(RuntimeOrigin::signed(ALICE), job);
                    },
                    UserMove::Refuse { job } => {
                        let result = Jobs::refuse(
                            RuntimeOrigin::signed(BOB),
                            job,
                            crate::RefusalReason::EmptyPrompt,
                        );
                        prop_assert!(result.is_err(), "a user refused someone's job");
                    },
                    UserMove::Receipt { job, input_tokens, output_tokens } => {
                        // Signed by the user's own key, not the provider's worker key.
                        if let Some(record) = JobRecords::<Test>::get(job) {
                            let forged = receipt_signed_by(
                                &signing_key(ALICE),
                                record.provider,
                                record.adapter,
                                job,
                                input_tokens,
                                output_tokens,
                            );
                            prop_assert!(submit_receipts(vec![forged]).is_err());
                        }
                    },
                    UserMove::Advance { blocks } => {
                        for _ in 0..blocks {
                            honest_workers(&conducts, &mut acknowledged_at);
                            run_to_block(System::block_number() + 1);
                        }
                    },
                }
                honest_workers(&conducts, &mut acknowledged_at);
                check_invariants();
                for provider in [P1, P2] {
                    let bond = pallet_compute::ProviderStates::<Test>::get(provider).unwrap().bond;
                    prop_assert_eq!(bond, MIN_BOND, "provider {} was slashed", provider);
                }
            }
            // The workers finish what they took on; whatever is left open then expires without
            // touching a bond, and frees its escrow.
            for _ in 0..=ACK_TIMEOUT + JOB_TIMEOUT {
                honest_workers(&conducts, &mut acknowledged_at);
                run_to_block(System::block_number() + 1);
            }
            for job in 0..NextJobId::<Test>::get() {
                let _ = Jobs::expire(RuntimeOrigin::signed(ALICE), job);
            }
            check_invariants();
            for provider in [P1, P2] {
                prop_assert_eq!(pallet_compute::ProviderStates::<Test>::get(provider).unwrap().bond, MIN_BOND);
            }
            prop_assert_eq!(escrow_of(ALICE) + escrow_of(BOB), 0);
            Ok(())
        })?;
    }
}
