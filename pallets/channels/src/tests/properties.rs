//! Random sequences of channel calls, checked against a small model of who should own what.
//!
//! Each step runs one call (which may fail: a failed call must change nothing), then checks
//! both pallets' invariants (`try_state`: held deposits equal the sum of unredeemed deposits,
//! nothing redeemed beyond a deposit) and that OPEN was only moved, never created or destroyed;
//! that every payer owns (free plus held) exactly its endowment minus what its channels paid
//! out; that what the payees gained is exactly what was redeemed; and that the call succeeded
//! exactly when the model says it should. At the end every channel is closed, after which
//! nothing may remain on hold.

use crate::{mock::*, Channels as ChannelRecords, NextChannelId, TotalHeld};
use frame_support::traits::fungible::Inspect;
use proptest::prelude::*;
use std::collections::BTreeMap;

const PAYERS: [AccountId; 2] = [ALICE, BOB];
const PROVIDERS: [AccountId; 2] = [P1, P2];
/// Everyone a redemption can pay (the attribution pallet's account holds DataNet shares).
fn payees() -> Vec<AccountId> {
    vec![P1, P2, OWNER_A, OWNER_B, TREASURY, pallet_attribution::Pallet::<Test>::account_id()]
}

#[derive(Clone, Debug)]
enum Action {
    Open { payer: usize, provider: usize, deposit: Balance },
    TopUp { channel: u64, amount: Balance, by_payer: bool },
    Rotate { channel: u64, key: u8 },
    Redeem { channel: u64, owed: Balance, split_ppm: u32, context_ppm: u32, fault: Fault },
    RequestClose { channel: u64, by_payer: bool },
    Finalize { channel: u64 },
    ProviderClose { channel: u64, by_provider: bool },
    Advance { blocks: u64 },
}

/// What is wrong with a voucher, if anything.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    WrongKey,
    OldSequence,
    BadSum,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        8 => Just(Fault::None),
        1 => Just(Fault::WrongKey),
        1 => Just(Fault::OldSequence),
        1 => Just(Fault::BadSum),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let channel = 0..6u64;
    prop_oneof![
        2 => (0..2usize, 0..2usize, 1..200_000u128)
            .prop_map(|(payer, provider, deposit)| Action::Open { payer, provider, deposit }),
        1 => (channel.clone(), 1..50_000u128, proptest::bool::weighted(0.9))
            .prop_map(|(channel, amount, by_payer)| Action::TopUp { channel, amount, by_payer }),
        1 => (channel.clone(), 1..3u8).prop_map(|(channel, key)| Action::Rotate { channel, key }),
        5 => (channel.clone(), 0..80_000u128, 0..=1_000_000u32, 0..=1_000_000u32, fault())
            .prop_map(|(channel, owed, split_ppm, context_ppm, fault)| Action::Redeem {
                channel,
                owed,
                split_ppm,
                context_ppm,
                fault
            }),
        1 => (channel.clone(), proptest::bool::weighted(0.9))
            .prop_map(|(channel, by_payer)| Action::RequestClose { channel, by_payer }),
        1 => channel.clone().prop_map(|channel| Action::Finalize { channel }),
        1 => (channel, proptest::bool::weighted(0.8))
            .prop_map(|(channel, by_provider)| Action::ProviderClose { channel, by_provider }),
        1 => (1..8u64).prop_map(|blocks| Action::Advance { blocks }),
    ]
}

/// The model's view of a channel.
#[derive(Clone, Debug)]
struct ModelChannel {
    payer: AccountId,
    provider: AccountId,
    deposit: Balance,
    redeemed: Balance,
    sequence: u64,
    key: u8,
    until: Option<u64>,
}

#[derive(Default)]
struct Model {
    channels: BTreeMap<u64, ModelChannel>,
    /// What each payer's channels paid out, in all.
    paid_by: BTreeMap<AccountId, Balance>,
    /// Everything redeemed on every channel.
    redeemed: Balance,
}

fn now() -> u64 {
    System::block_number()
}

/// Run `action`; returns whether it succeeded and whether the model expected it to.
fn step(model: &mut Model, action: &Action) -> (bool, bool) {
    match *action {
        Action::Open { payer, provider, deposit } => {
            let (payer, provider) = (PAYERS[payer], PROVIDERS[provider]);
            let id = NextChannelId::<Test>::get();
            let expected = free(payer) > deposit; // the payer keeps its existential deposit
            let ok = crate::Pallet::<Test>::open(
                RuntimeOrigin::signed(payer),
                provider,
                deposit,
                public(&signing_key(1)),
            )
            .is_ok();
            if ok {
                model.channels.insert(
                    id,
                    ModelChannel {
                        payer,
                        provider,
                        deposit,
                        redeemed: 0,
                        sequence: 0,
                        key: 1,
                        until: None,
                    },
                );
            }
            (ok, expected)
        },
        Action::TopUp { channel, amount, by_payer } => {
            let Some(c) = model.channels.get_mut(&channel) else {
                let ok =
                    crate::Pallet::<Test>::top_up(RuntimeOrigin::signed(ALICE), channel, amount)
                        .is_ok();
                return (ok, false);
            };
            let who = if by_payer { c.payer } else { c.provider };
            let expected = by_payer && c.until.is_none() && free(who) > amount;
            let ok =
                crate::Pallet::<Test>::top_up(RuntimeOrigin::signed(who), channel, amount).is_ok();
            if ok {
                c.deposit += amount;
            }
            (ok, expected)
        },
        Action::Rotate { channel, key } => {
            let payer = model.channels.get(&channel).map_or(ALICE, |c| c.payer);
            let ok = crate::Pallet::<Test>::rotate_signer(
                RuntimeOrigin::signed(payer),
                channel,
                public(&signing_key(key)),
            )
            .is_ok();
            let expected = model.channels.get(&channel).is_some_and(|c| c.until.is_none());
            if ok {
                if let Some(c) = model.channels.get_mut(&channel) {
                    c.key = key;
                }
            }
            (ok, expected)
        },
        Action::Redeem { channel, owed, split_ppm, context_ppm, fault } => {
            let c = model.channels.get(&channel).cloned();
            let (redeemed, sequence, key) =
                c.as_ref().map_or((0, 0, 1), |c| (c.redeemed, c.sequence, c.key));
            let cumulative = redeemed + owed;
            let sequence = if fault == Fault::OldSequence { sequence } else { sequence + 1 };
            let a = owed * Balance::from(split_ppm) / 1_000_000;
            let b = owed - a;
            let b = if fault == Fault::BadSum { b + 1 } else { b };
            let context = a * Balance::from(context_ppm) / 1_000_000;
            let v = voucher(
                channel,
                sequence,
                cumulative,
                &[(ADAPTER_A, a), (ADAPTER_B, b)],
                &[(ADAPTER_A, CONTEXT_1, context)],
            );
            let signing = if fault == Fault::WrongKey { key % 2 + 1 } else { key };
            let signature = sign(&signing_key(signing), &v);
            let expected = c.as_ref().is_some_and(|c| {
                fault == Fault::None
                    && owed > 0
                    && cumulative <= c.deposit
                    && c.until.is_none_or(|until| now() <= until)
            });
            let ok = redeem(v, signature).is_ok();
            if ok {
                if let Some(c) = model.channels.get_mut(&channel) {
                    c.redeemed = cumulative;
                    c.sequence = sequence;
                    *model.paid_by.entry(c.payer).or_default() += owed;
                    model.redeemed += owed;
                }
            }
            (ok, expected)
        },
        Action::RequestClose { channel, by_payer } => {
            let c = model.channels.get(&channel).cloned();
            let who = c.as_ref().map_or(ALICE, |c| if by_payer { c.payer } else { c.provider });
            let ok =
                crate::Pallet::<Test>::request_close(RuntimeOrigin::signed(who), channel).is_ok();
            let expected = c.is_some_and(|c| by_payer && c.until.is_none());
            if ok {
                if let Some(c) = model.channels.get_mut(&channel) {
                    c.until = Some(now() + CHALLENGE_WINDOW);
                }
            }
            (ok, expected)
        },
        Action::Finalize { channel } => {
            let expected = model
                .channels
                .get(&channel)
                .is_some_and(|c| c.until.is_some_and(|until| now() > until));
            let ok = crate::Pallet::<Test>::finalize_close(RuntimeOrigin::signed(RELAYER), channel)
                .is_ok();
            if ok {
                model.channels.remove(&channel);
            }
            (ok, expected)
        },
        Action::ProviderClose { channel, by_provider } => {
            let c = model.channels.get(&channel).cloned();
            let who = c.as_ref().map_or(P1, |c| if by_provider { c.provider } else { c.payer });
            let expected = c.is_some_and(|c| by_provider || c.payer == c.provider);
            let ok = crate::Pallet::<Test>::close_by_provider(RuntimeOrigin::signed(who), channel)
                .is_ok();
            if ok {
                model.channels.remove(&channel);
            }
            (ok, expected)
        },
        Action::Advance { blocks } => {
            run_to_block(now() + blocks);
            (true, true)
        },
    }
}

/// The model's balances against the chain's.
fn check_against(model: &Model, issuance: Balance, payees_before: Balance) {
    check_invariants(issuance);
    for payer in PAYERS {
        let owned = free(payer) + held(payer);
        let paid = model.paid_by.get(&payer).copied().unwrap_or(0);
        assert_eq!(owned, ENDOWMENT - paid, "payer {payer} owns its endowment less what it paid");
        let unredeemed: Balance = model
            .channels
            .values()
            .filter(|c| c.payer == payer)
            .map(|c| c.deposit - c.redeemed)
            .sum();
        assert_eq!(held(payer), unredeemed, "payer {payer}'s hold");
    }
    let payees_now: Balance = payees().iter().map(Balances::balance).sum();
    assert_eq!(payees_now - payees_before, model.redeemed, "payees gained what was redeemed");
    for (id, c) in &model.channels {
        let record = ChannelRecords::<Test>::get(id).expect("modelled channel exists");
        assert_eq!(
            (record.deposit, record.redeemed, record.sequence),
            (c.deposit, c.redeemed, c.sequence)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_channel_calls_move_open_only_as_the_rules_say(
        actions in proptest::collection::vec(action(), 1..60)
    ) {
        new_test_ext().execute_with(|| {
            let issuance = Balances::total_issuance();
            let payees_before: Balance = payees().iter().map(Balances::balance).sum();
            let mut model = Model::default();
            for action in &actions {
                let (ok, expected) = step(&mut model, action);
                assert_eq!(ok, expected, "{action:?} succeeded: {ok}, expected: {expected}");
                check_against(&model, issuance, payees_before);
            }
            // Close everything: the provider closes at once.
            let open: Vec<_> = model.channels.keys().copied().collect();
            for id in open {
                let provider = model.channels[&id].provider;
                assert!(crate::Pallet::<Test>::close_by_provider(
                    RuntimeOrigin::signed(provider),
                    id
                )
                .is_ok());
                model.channels.remove(&id);
                check_against(&model, issuance, payees_before);
            }
            assert_eq!(TotalHeld::<Test>::get(), 0);
            for payer in PAYERS {
                assert_eq!(held(payer), 0);
            }
        });
    }
}
