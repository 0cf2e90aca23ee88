//! Tests of every call and error, the split, the reward accumulator and its invariants.

use crate::{mock::*, *};
use frame_support::{
    assert_noop, assert_ok,
    traits::fungible::{Inspect, InspectHold, Mutate},
    BoundedVec,
};
use openledger_primitives::market::{AdapterCatalog, Settlement};
use sp_core::H256;
use sp_runtime::{DispatchError, Permill};

fn origin(a: AccountId) -> RuntimeOrigin {
    RuntimeOrigin::signed(a)
}

fn rec(n: u64) -> H256 {
    H256::from_low_u64_be(n)
}

fn free(a: AccountId) -> Balance {
    Balances::balance(&a)
}

/// DataNet 0 owned by 1, with curator 2.
fn datanet() -> DataNetId {
    let id = NextDataNetId::<Test>::get();
    assert_ok!(Attribution::create_datanet(
        origin(1),
        b"medical notes".to_vec().try_into().unwrap()
    ));
    assert_ok!(Attribution::add_curator(origin(1), id, 2));
    id
}

/// `who` contributes record `n` with `weight`, approved by curator 2.
fn approved(d: DataNetId, who: AccountId, n: u64, weight: u128) {
    assert_ok!(Attribution::contribute(origin(who), d, rec(n), weight));
    assert_ok!(Attribution::approve_contribution(origin(2), d, rec(n)));
}

fn training(list: &[(DataNetId, u32)]) -> BoundedVec<DataNetShare, ConstU32<4>> {
    list.iter()
        .map(|&(d, p)| DataNetShare::new(d, Permill::from_percent(p)))
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

use frame_support::traits::ConstU32;

/// Adapter owned by 5 on base model 7, price 1_000 per 1k tokens, trained on `list`.
fn adapter(list: &[(DataNetId, u32)]) -> AdapterId {
    let id = NextAdapterId::<Test>::get();
    assert_ok!(Attribution::register_adapter(
        origin(5),
        7,
        H256::repeat_byte(0xab),
        16,
        target::ALL,
        1_000,
        training(list),
    ));
    id
}

fn last_event() -> RuntimeEvent {
    System::events().pop().expect("an event").event
}

#[test]
fn datanets_curators_and_their_errors() {
    build_and_execute(|| {
        let d = datanet();
        assert_eq!(
            Balances::balance_on_hold(&HoldReason::DataNetDeposit.into(), &1),
            DATANET_DEPOSIT
        );
        assert_noop!(Attribution::add_curator(origin(2), d, 3), Error::<Test>::NotDataNetOwner);
        assert_noop!(Attribution::add_curator(origin(1), d, 2), Error::<Test>::AlreadyCurator);
        assert_noop!(Attribution::add_curator(origin(1), 9, 3), Error::<Test>::UnknownDataNet);
        for c in 3..=5 {
            assert_ok!(Attribution::add_curator(origin(1), d, c));
        }
        assert_noop!(Attribution::add_curator(origin(1), d, 6), Error::<Test>::TooManyCurators);
        assert_ok!(Attribution::remove_curator(origin(1), d, 5));
        assert_noop!(Attribution::remove_curator(origin(1), d, 5), Error::<Test>::NotACurator);
        assert_noop!(Attribution::remove_curator(origin(3), d, 4), Error::<Test>::NotDataNetOwner);
        assert_eq!(DataNets::<Test>::get(d).unwrap().curators.into_inner(), vec![2, 3, 4]);
    });
}

#[test]
fn contributions_need_a_curator_and_hold_a_deposit() {
    build_and_execute(|| {
        let d = datanet();
        assert_noop!(Attribution::contribute(origin(3), d, rec(1), 0), Error::<Test>::BadWeight);
        assert_noop!(
            Attribution::contribute(origin(3), d, rec(1), MAX_WEIGHT + 1),
            Error::<Test>::BadWeight
        );
        assert_noop!(
            Attribution::contribute(origin(3), 9, rec(1), 5),
            Error::<Test>::UnknownDataNet
        );
        assert_ok!(Attribution::contribute(origin(3), d, rec(1), 5));
        assert_eq!(
            Balances::balance_on_hold(&HoldReason::ContributionDeposit.into(), &3),
            CONTRIBUTION_DEPOSIT
        );
        assert_noop!(
            Attribution::contribute(origin(4), d, rec(1), 5),
            Error::<Test>::DuplicateRecord
        );
        // Pending weight does not count.
        assert_eq!(DataNets::<Test>::get(d).unwrap().total_weight, 0);
        assert_noop!(
            Attribution::approve_contribution(origin(3), d, rec(1)),
            Error::<Test>::NotCurator
        );
        assert_noop!(
            Attribution::approve_contribution(origin(2), d, rec(9)),
            Error::<Test>::UnknownRecord
        );
        assert_ok!(Attribution::approve_contribution(origin(2), d, rec(1)));
        assert_eq!(DataNets::<Test>::get(d).unwrap().total_weight, 5);
        assert_noop!(
            Attribution::approve_contribution(origin(1), d, rec(1)),
            Error::<Test>::NotPending
        );
        assert_noop!(
            Attribution::reject_contribution(origin(2), d, rec(1)),
            Error::<Test>::NotPending
        );
        // Reject a pending one: deposit back.
        assert_ok!(Attribution::contribute(origin(4), d, rec(2), 7));
        assert_noop!(
            Attribution::reject_contribution(origin(4), d, rec(2)),
            Error::<Test>::NotCurator
        );
        assert_ok!(Attribution::reject_contribution(origin(1), d, rec(2)));
        assert_eq!(Balances::balance_on_hold(&HoldReason::ContributionDeposit.into(), &4), 0);
        assert!(Records::<Test>::get(d, rec(2)).is_none());
        // Remove: by a stranger no, by the contributor or a curator yes.
        assert_noop!(
            Attribution::remove_contribution(origin(6), d, rec(1)),
            Error::<Test>::NotContributorOrCurator
        );
        assert_ok!(Attribution::remove_contribution(origin(3), d, rec(1)));
        assert_eq!(DataNets::<Test>::get(d).unwrap().total_weight, 0);
        assert_eq!(Balances::balance_on_hold(&HoldReason::ContributionDeposit.into(), &3), 0);
        assert_noop!(
            Attribution::remove_contribution(origin(3), d, rec(1)),
            Error::<Test>::UnknownRecord
        );
    });
}

#[test]
fn adapters_register_update_retire_and_their_errors() {
    build_and_execute(|| {
        let d = datanet();
        let bad = |rank, targets, list: &[(DataNetId, u32)]| {
            Attribution::register_adapter(
                origin(5),
                7,
                H256::zero(),
                rank,
                targets,
                1,
                training(list),
            )
        };
        assert_noop!(bad(0, target::Q, &[]), Error::<Test>::BadRank);
        assert_noop!(bad(257, target::Q, &[]), Error::<Test>::BadRank);
        assert_noop!(bad(8, 0, &[]), Error::<Test>::BadTargetModules);
        assert_noop!(bad(8, 0x80, &[]), Error::<Test>::BadTargetModules);
        assert_noop!(bad(8, target::Q, &[(d, 60), (d, 10)]), Error::<Test>::BadTrainingShares);
        assert_noop!(bad(8, target::Q, &[(9, 10)]), Error::<Test>::BadTrainingShares);
        let d2 = datanet();
        assert_noop!(bad(8, target::Q, &[(d, 60), (d2, 41)]), Error::<Test>::BadTrainingShares);

        let a = adapter(&[(d, 60), (d2, 40)]);
        let record = Adapters::<Test>::get(a).unwrap();
        use codec::Encode;
        let want = ADAPTER_BASE + ADAPTER_PER_BYTE * record.encoded_size() as Balance;
        assert_eq!(record.deposit, want);
        assert_eq!(Balances::balance_on_hold(&HoldReason::AdapterDeposit.into(), &5), want);
        assert_eq!(
            <Attribution as AdapterCatalog<Balance>>::adapter(a).unwrap().price_per_1k,
            1_000
        );
        assert_noop!(
            Attribution::update_adapter_price(origin(6), a, 5),
            Error::<Test>::NotAdapterOwner
        );
        assert_noop!(
            Attribution::update_adapter_price(origin(5), 9, 5),
            Error::<Test>::UnknownAdapter
        );
        assert_ok!(Attribution::update_adapter_price(origin(5), a, 2_000));
        assert_eq!(
            <Attribution as AdapterCatalog<Balance>>::adapter(a).unwrap().price_per_1k,
            2_000
        );
        assert_noop!(Attribution::retire_adapter(origin(6), a), Error::<Test>::NotAdapterOwner);
        assert_ok!(Attribution::retire_adapter(origin(5), a));
        assert_eq!(Balances::balance_on_hold(&HoldReason::AdapterDeposit.into(), &5), 0);
        assert!(<Attribution as AdapterCatalog<Balance>>::adapter(a).is_none());
        assert_noop!(Attribution::retire_adapter(origin(5), a), Error::<Test>::AdapterRetired);
        assert_noop!(
            Attribution::update_adapter_price(origin(5), a, 1),
            Error::<Test>::AdapterRetired
        );
    });
}

#[test]
fn split_is_set_by_root_and_must_sum_to_100_percent() {
    build_and_execute(|| {
        let mut split = FeeSplit::default();
        assert_noop!(Attribution::set_split(origin(1), split), DispatchError::BadOrigin);
        split.treasury = Permill::from_percent(6);
        assert_noop!(Attribution::set_split(RuntimeOrigin::root(), split), Error::<Test>::BadSplit);
        split.provider = Permill::from_percent(69);
        assert_ok!(Attribution::set_split(RuntimeOrigin::root(), split));
        assert_eq!(Split::<Test>::get(), split);
    });
}

#[test]
fn a_settlement_pays_every_payee_and_names_them() {
    build_and_execute(|| {
        let (d1, d2, ctx) = (datanet(), datanet(), datanet());
        approved(d1, 3, 1, 1);
        approved(d1, 4, 2, 3);
        approved(d2, 6, 3, 10);
        approved(ctx, 7, 4, 1);
        let a = adapter(&[(d1, 50), (d2, 30)]);
        let (provider, owner) = (8, 5);
        let before = [free(PAYER), free(provider), free(owner), free(TREASURY)];
        let charge: Balance = 1_000_000;
        let context = [DataNetShare::new(ctx, Permill::from_percent(20))];
        assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
            42, &PAYER, &provider, a, charge, &context
        ));
        // 70% / 10% / 15% / 5%; DataNet part 150_000: 20% context = 30_000, the rest 120_000
        // to training 50% = 60_000 and 30% = 36_000; the last 20% (24_000) to the treasury.
        assert_eq!(free(PAYER), before[0] - charge);
        assert_eq!(free(provider) - before[1], 700_000);
        assert_eq!(free(owner) - before[2], 100_000);
        assert_eq!(free(TREASURY) - before[3], 50_000 + 24_000);
        assert_eq!(DataNets::<Test>::get(ctx).unwrap().balance, 30_000);
        assert_eq!(DataNets::<Test>::get(d1).unwrap().balance, 60_000);
        assert_eq!(DataNets::<Test>::get(d2).unwrap().balance, 36_000);
        assert_eq!(Attribution::pending_rewards(d1, 3), 15_000);
        assert_eq!(Attribution::pending_rewards(d1, 4), 45_000);
        assert_eq!(Attribution::pending_rewards(d2, 6), 36_000);
        let RuntimeEvent::Attribution(Event::FeeSplit { job, charge: c, payouts, .. }) =
            last_event()
        else {
            panic!("no FeeSplit event")
        };
        assert_eq!((job, c), (42, charge));
        assert_eq!(payouts.iter().map(|(_, v)| v).sum::<Balance>(), charge);
        assert!(payouts.contains(&(Payee::ContextDataNet(ctx), 30_000)));
        assert!(payouts.contains(&(Payee::Provider(provider), 700_000)));
        // Claims pay out and leave nothing owed.
        let before = free(3);
        assert_ok!(Attribution::claim_rewards(origin(3), d1));
        assert_eq!(free(3) - before, 15_000);
        assert_noop!(Attribution::claim_rewards(origin(3), d1), Error::<Test>::NothingToClaim);
        assert_noop!(Attribution::claim_rewards(origin(9), d1), Error::<Test>::NothingToClaim);
        assert_noop!(Attribution::claim_rewards(origin(9), 77), Error::<Test>::UnknownDataNet);
    });
}

#[test]
fn datanets_without_weight_and_bad_context_go_to_the_treasury_or_fail() {
    build_and_execute(|| {
        let d = datanet();
        let a = adapter(&[(d, 100)]);
        let before = free(TREASURY);
        assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
            1,
            &PAYER,
            &8,
            a,
            1_000,
            &[]
        ));
        // No approved weight in d: its 15% joins the treasury's 5%.
        assert_eq!(free(TREASURY) - before, 200);
        let too_much = [
            DataNetShare::new(d, Permill::from_percent(60)),
            DataNetShare::new(d, Permill::from_percent(50)),
        ];
        assert_noop!(
            <Attribution as Settlement<AccountId, Balance>>::settle(
                2, &PAYER, &8, a, 1_000, &too_much
            ),
            Error::<Test>::BadContextShares
        );
        assert_noop!(
            <Attribution as Settlement<AccountId, Balance>>::settle(2, &PAYER, &8, 99, 1_000, &[]),
            Error::<Test>::UnknownAdapter
        );
    });
}

#[test]
fn a_settlement_reports_the_weight_of_the_datanets_it_looked_up() {
    use crate::WeightInfo;
    build_and_execute(|| {
        let d = datanet();
        approved(d, 3, 1, 10);
        let a = adapter(&[(d, 100)]);
        let settle = |job, context: &[DataNetShare]| {
            <Attribution as Settlement<AccountId, Balance>>::settle(
                job, &PAYER, &8, a, 1_000, context,
            )
        };
        let worst = <Attribution as Settlement<AccountId, Balance>>::settle_weight();
        let one = settle(1, &[]).expect("settles");
        assert_eq!(one, <() as WeightInfo>::settle(1, 100));
        let e = datanet();
        let three = settle(
            2,
            &[
                DataNetShare::new(d, Permill::from_percent(10)),
                DataNetShare::new(e, Permill::from_percent(10)),
            ],
        )
        .expect("settles");
        assert_eq!(three, <() as WeightInfo>::settle(3, 100));
        assert!(one.all_lt(three) && three.all_lte(worst), "{one:?} < {three:?} <= {worst:?}");
    });
}

#[test]
fn later_contributions_do_not_share_past_fees_and_removed_ones_keep_theirs() {
    build_and_execute(|| {
        let d = datanet();
        approved(d, 3, 1, 10);
        let a = adapter(&[(d, 100)]);
        // The DataNet part of 1_000_000 is 150_000.
        assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
            1,
            &PAYER,
            &8,
            a,
            1_000_000,
            &[]
        ));
        approved(d, 4, 2, 30);
        assert_eq!(Attribution::pending_rewards(d, 4), 0);
        assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
            2,
            &PAYER,
            &8,
            a,
            1_000_000,
            &[]
        ));
        assert_eq!(Attribution::pending_rewards(d, 3), 150_000 + 37_500);
        assert_eq!(Attribution::pending_rewards(d, 4), 112_500);
        assert_ok!(Attribution::remove_contribution(origin(2), d, rec(1)));
        assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
            3,
            &PAYER,
            &8,
            a,
            1_000_000,
            &[]
        ));
        assert_eq!(Attribution::pending_rewards(d, 3), 187_500);
        assert_eq!(Attribution::pending_rewards(d, 4), 262_500);
        assert_ok!(Attribution::claim_rewards(origin(3), d));
        assert!(Stakes::<Test>::get(d, 3).is_none(), "an empty stake is deleted");
    });
}

/// Settling for a DataNet of 10 or of 10,000 contributors writes the same storage.
#[test]
fn settlement_work_does_not_depend_on_the_number_of_contributors() {
    let writes = |contributors: u64| -> usize {
        let mut ext = new_test_ext();
        let a = ext.execute_with(|| {
            let d = datanet();
            for c in 0..contributors {
                let who = 1_000 + c;
                Balances::set_balance(&who, 1_000_000);
                approved(d, who, c, 1 + c as u128 % 7);
            }
            adapter(&[(d, 100)])
        });
        ext.commit_all().unwrap();
        ext.execute_with(|| {
            assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
                1,
                &PAYER,
                &8,
                a,
                1_000_000,
                &[]
            ));
        });
        ext.overlayed_changes().changes().count()
    };
    assert_eq!(writes(10), writes(10_000));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Contribute { who: u8, weight: u32 },
        Remove { record: u8 },
        Settle { charge: u32 },
        Claim { who: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 1u32..1_000).prop_map(|(who, weight)| Op::Contribute { who, weight }),
            (0u8..40).prop_map(|record| Op::Remove { record }),
            (1u32..5_000_000).prop_map(|charge| Op::Settle { charge }),
            (0u8..6).prop_map(|who| Op::Claim { who }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Payouts plus what stays in the pallet equal the charges; each contributor's rewards
        /// equal a direct pro-rata computation within one planck per settlement.
        #[test]
        fn payouts_equal_charges_and_claims_are_pro_rata(ops in prop::collection::vec(op(), 1..40)) {
            new_test_ext().execute_with(|| -> Result<(), TestCaseError> {
                let d = datanet();
                let a = adapter(&[(d, 100)]);
                let contributors: Vec<AccountId> = (10..16).collect();
                let start: Vec<Balance> = contributors.iter().map(|c| free(*c)).collect();
                let mut records: Vec<(u64, AccountId, u128)> = Vec::new();
                let mut next = 0u64;
                let (mut charges, mut settlements) = (0u128, 0u128);
                let mut direct = vec![0f64; contributors.len()];
                let mut claimed = vec![0u128; contributors.len()];
                let outside = |who: &[AccountId]| -> Balance { who.iter().map(|a| free(*a)).sum() };
                let others = [8, 5, TREASURY];
                let others_start = outside(&others);
                for op in ops {
                    match op {
                        Op::Contribute { who, weight } => {
                            let who = contributors[who as usize];
                            approved(d, who, next, weight as u128);
                            records.push((next, who, weight as u128));
                            next += 1;
                        },
                        Op::Remove { record } => {
                            if records.is_empty() { continue; }
                            let (n, _, _) = records.remove(record as usize % records.len());
                            assert_ok!(Attribution::remove_contribution(origin(2), d, rec(n)));
                        },
                        Op::Settle { charge } => {
                            let charge = charge as u128;
                            assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
                                1, &PAYER, &8, a, charge, &[]
                            ));
                            charges += charge;
                            settlements += 1;
                            let total: u128 = records.iter().map(|r| r.2).sum();
                            if total > 0 {
                                let part = (Permill::from_percent(15) * charge) as f64;
                                for (i, c) in contributors.iter().enumerate() {
                                    let w: u128 = records.iter().filter(|r| r.1 == *c).map(|r| r.2).sum();
                                    direct[i] += part * w as f64 / total as f64;
                                }
                            }
                        },
                        Op::Claim { who } => {
                            let i = who as usize;
                            let before = free(contributors[i]);
                            if Attribution::claim_rewards(origin(contributors[i]), d).is_ok() {
                                claimed[i] += free(contributors[i]) - before;
                            }
                        },
                    }
                }
                let held = DataNets::<Test>::get(d).unwrap().balance;
                let paid_out = outside(&others) - others_start + claimed.iter().sum::<u128>();
                prop_assert_eq!(paid_out + held, charges, "payouts + held != charges");
                prop_assert_eq!(Balances::balance(&Attribution::account_id()), held + ED);
                for (i, c) in contributors.iter().enumerate() {
                    let got = (claimed[i] + Attribution::pending_rewards(d, *c)) as f64;
                    prop_assert!(
                        (got - direct[i]).abs() <= 1.0 + settlements as f64 * 1e-6,
                        "contributor {}: {} vs direct {}", c, got, direct[i]
                    );
                    let _ = start[i];
                }
                Attribution::do_try_state().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                Ok(())
            })?;
        }
    }
}

#[test]
fn clients_read_pending_rewards_and_split_quotes_through_view_functions() {
    use codec::{Decode, Encode};
    use frame_support::view_functions::ViewFunction;
    build_and_execute(|| {
        let d = datanet();
        approved(d, 3, 1, 1);
        let a = adapter(&[(d, 100)]);
        assert_ok!(<Attribution as Settlement<AccountId, Balance>>::settle(
            1,
            &PAYER,
            &8,
            a,
            1_000_000,
            &[]
        ));
        // Dispatched by id with SCALE-encoded arguments, as a client calls them.
        type Pending = PendingRewardsViewFunction<Test>;
        let output =
            Test::execute_view_function(Pending::id(), Pending::new(d, 3).encode()).unwrap();
        // 15% of the charge to the DataNet, all of it to its one contributor.
        assert_eq!(Balance::decode(&mut &output[..]).unwrap(), 150_000);
        let output =
            Test::execute_view_function(Pending::id(), Pending::new(d, 4).encode()).unwrap();
        assert_eq!(Balance::decode(&mut &output[..]).unwrap(), 0);

        type Quote = QuoteSplitViewFunction<Test>;
        let input = Quote::new(a, 8, 1_000, Default::default()).encode();
        let output = Test::execute_view_function(Quote::id(), input).unwrap();
        let quote = Option::<Vec<(Payee<AccountId>, Balance)>>::decode(&mut &output[..])
            .unwrap()
            .expect("a registered adapter");
        assert_eq!(quote.iter().map(|(_, v)| v).sum::<Balance>(), 1_000);
        assert!(quote.contains(&(Payee::Provider(8), 700)));
        assert!(quote.contains(&(Payee::TrainingDataNet(d), 150)));
        let input = Quote::new(99, 8, 1_000, Default::default()).encode();
        let output = Test::execute_view_function(Quote::id(), input).unwrap();
        assert_eq!(Option::<Vec<(Payee<AccountId>, Balance)>>::decode(&mut &output[..]), Ok(None));
    });
}

#[test]
fn treasury_and_pallet_account_are_constants_in_the_metadata() {
    use codec::Decode;
    let constants = Attribution::pallet_constants_metadata();
    let value_of = |name: &str| {
        let constant = constants.iter().find(|c| c.name == name).expect("constant in metadata");
        assert!(!constant.docs.is_empty(), "{name} is documented");
        AccountId::decode(&mut &constant.value[..]).expect("an account")
    };
    assert_eq!(value_of("Treasury"), TREASURY);
    assert_eq!(value_of("PalletAccount"), Attribution::account_id());
}
