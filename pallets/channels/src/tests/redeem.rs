//! Redeeming vouchers: where every planck goes, and every way a voucher is refused.

use crate::{mock::*, Error, Event, VoucherOf, VoucherPayload};
use frame_support::{assert_noop, assert_ok};
use openledger_primitives::{market::DataNetShare, receipt::GROUP_ORDER};
use sp_core::{ed25519, H256};
use sp_runtime::Permill;

/// Everyone a redemption can pay, in one snapshot.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Ledger {
    payer_free: Balance,
    payer_held: Balance,
    provider: Balance,
    owner_a: Balance,
    owner_b: Balance,
    datanet: [Balance; 4],
    treasury: Balance,
    relayer: Balance,
}

fn ledger(payer: AccountId, provider: AccountId) -> Ledger {
    Ledger {
        payer_free: free(payer),
        payer_held: held(payer),
        provider: free(provider),
        owner_a: free(OWNER_A),
        owner_b: free(OWNER_B),
        datanet: [datanet_balance(0), datanet_balance(1), datanet_balance(2), datanet_balance(3)],
        treasury: free(TREASURY),
        relayer: free(RELAYER),
    }
}

const DEPOSIT: Balance = 100_000;

#[test]
fn redeem_splits_each_adapter_as_a_receipt_and_every_planck_is_accounted_for() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let before = ledger(ALICE, P1);
        assert_eq!(before.payer_held, DEPOSIT);

        // 10,000 owed: 6,000 for adapter A (half of it from receipts that retrieved DataNet 2,
        // i.e. a 50% context share), 4,000 for adapter B with no context.
        let v = voucher(
            channel,
            1,
            10_000,
            &[(ADAPTER_A, 6_000), (ADAPTER_B, 4_000)],
            &[(ADAPTER_A, CONTEXT_1, 3_000)],
        );
        assert_ok!(redeem_signed(v));
        let after = ledger(ALICE, P1);

        // Split 70% provider / 10% owner / 15% DataNets / 5% treasury.
        // A (6,000): provider 4,200, owner A 600, DataNets 900: context DataNet 2 gets 50% =
        // 450, training DataNet 0 the other 450; treasury 300.
        // B (4,000): provider 2,800, owner B 400, training DataNet 1 600, treasury 200.
        assert_eq!(after.payer_free, before.payer_free, "the payer pays from its hold only");
        assert_eq!(after.payer_held, DEPOSIT - 10_000);
        assert_eq!(after.provider - before.provider, 4_200 + 2_800);
        assert_eq!(after.owner_a - before.owner_a, 600);
        assert_eq!(after.owner_b - before.owner_b, 400);
        assert_eq!(after.datanet[0] - before.datanet[0], 450);
        assert_eq!(after.datanet[1] - before.datanet[1], 600);
        assert_eq!(after.datanet[2] - before.datanet[2], 450);
        assert_eq!(after.datanet[3], before.datanet[3]);
        assert_eq!(after.treasury - before.treasury, 300 + 200);
        assert_eq!(after.relayer, before.relayer, "the relayer paid no fee in a direct call");
        // 7,000 + 600 + 400 + 450 + 600 + 450 + 500 = 10,000: every planck of the increment.

        // Exactly what one receipt of each charge and context would have been split into.
        let quote_a = pallet_attribution::Pallet::<Test>::split_quote(
            ADAPTER_A,
            P1,
            6_000,
            vec![DataNetShare::new(CONTEXT_1, Permill::from_percent(50))],
        )
        .unwrap();
        let split_events: Vec<_> = System::events()
            .into_iter()
            .filter_map(|r| match r.event {
                RuntimeEvent::Attribution(pallet_attribution::Event::VoucherFeeSplit {
                    channel: c,
                    sequence,
                    adapter,
                    charge,
                    payouts,
                }) => Some((c, sequence, adapter, charge, payouts.into_inner())),
                _ => None,
            })
            .collect();
        assert_eq!(split_events.len(), 2, "one split per adapter");
        assert_eq!(split_events[0], (channel, 1, ADAPTER_A, 6_000, quote_a));
        assert_eq!(split_events[1].2, ADAPTER_B);

        let record = crate::Channels::<Test>::get(channel).unwrap();
        assert_eq!(record.redeemed, 10_000);
        assert_eq!(record.sequence, 1);
        assert_eq!(record.receipts_root, H256::repeat_byte(1));
        assert_eq!(record.inferences, 1_000);
        assert_eq!(
            channel_events().last(),
            Some(&Event::VoucherRedeemed {
                channel,
                provider: P1,
                sequence: 1,
                paid: 10_000,
                redeemed: 10_000,
                covered: 1_000,
                inferences: 1_000,
                receipts_root: H256::repeat_byte(1),
            })
        );

        // The next voucher pays only the increment, 5,000, all adapter B.
        let v = voucher(channel, 2, 15_000, &[(ADAPTER_B, 5_000)], &[]);
        assert_ok!(redeem_signed(v));
        let last = ledger(ALICE, P1);
        assert_eq!(last.payer_held, DEPOSIT - 15_000);
        assert_eq!(last.provider - after.provider, 3_500);
        assert_eq!(last.owner_b - after.owner_b, 500);
        assert_eq!(last.datanet[1] - after.datanet[1], 750);
        assert_eq!(last.treasury - after.treasury, 250);
        assert_eq!(crate::Channels::<Test>::get(channel).unwrap().inferences, 2_000);

        // Each redemption is offered for verification with what it paid for.
        let offered = OFFERED.with(|o| o.borrow().clone());
        let summary: Vec<_> = offered
            .iter()
            .map(|w| (w.channel, w.sequence, w.payer, w.provider, w.inferences, w.amount))
            .collect();
        assert_eq!(
            summary,
            [(channel, 1, ALICE, P1, 1_000, 10_000), (channel, 2, ALICE, P1, 1_000, 5_000)]
        );
        assert_eq!(offered[0].receipts_root, H256::repeat_byte(1));
    });
}

#[test]
fn a_million_inferences_cost_what_one_does() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let mut one = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        one.inferences = 1;
        let mut million = one.clone();
        million.inferences = 1_000_000;
        let declared = |v: &crate::VoucherOf<Test>| {
            use frame_support::dispatch::GetDispatchInfo;
            crate::Call::<Test>::redeem { voucher: v.clone(), signature: sign(&signing_key(1), v) }
                .get_dispatch_info()
                .call_weight
        };
        assert_eq!(declared(&one), declared(&million));
        let post = crate::Pallet::<Test>::redeem(
            RuntimeOrigin::signed(RELAYER),
            million.clone(),
            sign(&signing_key(1), &million),
        )
        .unwrap();
        assert!(post.actual_weight.unwrap().all_lte(declared(&million)));
        assert_eq!(crate::Channels::<Test>::get(channel).unwrap().inferences, 1_000_000);
    });
}

#[test]
fn the_provider_or_anyone_may_redeem() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let v = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        let signature = sign(&signing_key(1), &v);
        assert_ok!(crate::Pallet::<Test>::redeem(RuntimeOrigin::signed(P1), v, signature));
        let v = voucher(channel, 2, 2_000, &[(ADAPTER_A, 1_000)], &[]);
        let signature = sign(&signing_key(1), &v);
        assert_ok!(crate::Pallet::<Test>::redeem(RuntimeOrigin::signed(BOB), v, signature));
        assert_eq!(held(ALICE), DEPOSIT - 2_000);
    });
}

#[test]
fn a_voucher_signed_by_another_key_is_refused() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let v = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        let signature = sign(&signing_key(2), &v);
        assert_noop!(redeem(v, signature), Error::<Test>::BadSignature);
    });
}

#[test]
fn a_voucher_signed_for_another_genesis_is_refused() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let v = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        let signature = sign_for(&signing_key(1), H256::repeat_byte(0x66), &v);
        assert_noop!(redeem(v, signature), Error::<Test>::BadSignature);
    });
}

#[test]
fn an_altered_voucher_is_refused() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let v = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        let signature = sign(&signing_key(1), &v);
        // Moving the charge to another adapter changes the signed breakdown hash.
        let moved = voucher(channel, 1, 1_000, &[(ADAPTER_B, 1_000)], &[]);
        assert_noop!(redeem(moved, signature), Error::<Test>::BadSignature);
        let mut root = v.clone();
        root.receipts_root = H256::repeat_byte(0x99);
        assert_noop!(redeem(root, signature), Error::<Test>::BadSignature);
        let mut count = v;
        count.inferences += 1;
        assert_noop!(redeem(count, signature), Error::<Test>::BadSignature);
    });
}

#[test]
fn a_non_canonical_signature_is_refused() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let v = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        // s + L verifies under lax rules; both libraries refuse it, and so does the pallet.
        let mut raw = sign(&signing_key(1), &v).0;
        let mut carry = 0u16;
        for (byte, l) in raw[32..].iter_mut().zip(GROUP_ORDER) {
            let sum = u16::from(*byte) + u16::from(l) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_noop!(
            redeem(v.clone(), ed25519::Signature::from_raw(raw)),
            Error::<Test>::MalformedSignature
        );
        assert_noop!(
            redeem(v, ed25519::Signature::from_raw([0; 64])),
            Error::<Test>::MalformedSignature
        );
    });
}

#[test]
fn a_replayed_or_older_voucher_is_refused() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let first = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        let second = voucher(channel, 2, 3_000, &[(ADAPTER_A, 3_000)], &[]);
        assert_ok!(redeem_signed(second.clone()));
        assert_noop!(redeem_signed(second), Error::<Test>::StaleSequence);
        assert_noop!(redeem_signed(first), Error::<Test>::StaleSequence);
    });
}

#[test]
fn a_cumulative_amount_at_or_below_the_redeemed_one_is_refused() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_ok!(redeem_signed(voucher(channel, 1, 5_000, &[(ADAPTER_A, 5_000)], &[])));
        assert_noop!(
            redeem_signed(voucher(channel, 2, 4_000, &[], &[])),
            Error::<Test>::CumulativeBelowRedeemed
        );
        assert_noop!(
            redeem_signed(voucher(channel, 2, 5_000, &[], &[])),
            Error::<Test>::NothingToRedeem
        );
    });
}

#[test]
fn a_cumulative_amount_above_the_deposit_is_refused_until_topped_up() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let v = voucher(channel, 1, DEPOSIT + 1, &[(ADAPTER_A, DEPOSIT + 1)], &[]);
        assert_noop!(redeem_signed(v.clone()), Error::<Test>::ExceedsDeposit);
        assert_ok!(crate::Pallet::<Test>::top_up(RuntimeOrigin::signed(ALICE), channel, 1));
        let provider = free(P1);
        assert_ok!(redeem_signed(v));
        assert!(free(P1) > provider);
        assert_eq!(held(ALICE), 0);
    });
}

#[test]
fn adapter_amounts_must_sum_to_the_increment() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_noop!(
            redeem_signed(voucher(channel, 1, 1_000, &[(ADAPTER_A, 600), (ADAPTER_B, 300)], &[])),
            Error::<Test>::AmountsDoNotSumToIncrement
        );
        assert_noop!(
            redeem_signed(voucher(channel, 1, 1_000, &[(ADAPTER_A, 600), (ADAPTER_B, 500)], &[])),
            Error::<Test>::AmountsDoNotSumToIncrement
        );
        // A voucher made over an older redeemed amount no longer sums to the increment: its
        // breakdown covers receipts already paid.
        let stale = voucher(channel, 3, 3_000, &[(ADAPTER_A, 3_000)], &[]);
        assert_ok!(redeem_signed(voucher(channel, 2, 1_000, &[(ADAPTER_A, 1_000)], &[])));
        assert_noop!(redeem_signed(stale), Error::<Test>::AmountsDoNotSumToIncrement);
        assert_ok!(redeem_signed(voucher(channel, 3, 3_000, &[(ADAPTER_A, 2_000)], &[])));
    });
}

#[test]
fn the_breakdown_names_each_adapter_and_context_once_within_its_adapter() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_noop!(
            redeem_signed(voucher(channel, 1, 1_000, &[(ADAPTER_A, 500), (ADAPTER_A, 500)], &[])),
            Error::<Test>::DuplicateAdapter
        );
        assert_noop!(
            redeem_signed(voucher(
                channel,
                1,
                1_000,
                &[(ADAPTER_A, 1_000)],
                &[(ADAPTER_A, CONTEXT_1, 100), (ADAPTER_A, CONTEXT_1, 100)]
            )),
            Error::<Test>::DuplicateContext
        );
        assert_noop!(
            redeem_signed(voucher(
                channel,
                1,
                1_000,
                &[(ADAPTER_A, 1_000)],
                &[(ADAPTER_B, CONTEXT_1, 100)]
            )),
            Error::<Test>::ContextForUnlistedAdapter
        );
        assert_noop!(
            redeem_signed(voucher(
                channel,
                1,
                1_000,
                &[(ADAPTER_A, 1_000)],
                &[(ADAPTER_A, CONTEXT_1, 600), (ADAPTER_A, CONTEXT_2, 401)]
            )),
            Error::<Test>::ContextExceedsAdapterAmount
        );
        // The same DataNet under two adapters is two entries, each its adapter's share.
        assert_ok!(redeem_signed(voucher(
            channel,
            1,
            2_000,
            &[(ADAPTER_A, 1_000), (ADAPTER_B, 1_000)],
            &[(ADAPTER_A, CONTEXT_1, 1_000), (ADAPTER_B, CONTEXT_1, 500)]
        )));
        // 15% of each charge to DataNets: A's 150 all to context, B's 75 context + 75 training.
        assert_eq!(datanet_balance(CONTEXT_1), 150 + 75);
    });
}

#[test]
fn an_unknown_adapter_or_datanet_refuses_the_whole_voucher() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_noop!(
            redeem_signed(voucher(channel, 1, 1_000, &[(ADAPTER_A, 500), (77, 500)], &[])),
            pallet_attribution::Error::<Test>::UnknownAdapter
        );
        assert_noop!(
            redeem_signed(voucher(
                channel,
                1,
                1_000,
                &[(ADAPTER_A, 1_000)],
                &[(ADAPTER_A, 55, 100)]
            )),
            pallet_attribution::Error::<Test>::BadContextShares
        );
    });
}

#[test]
fn unknown_and_closed_channels_are_named() {
    build_and_execute(|| {
        assert_noop!(
            redeem_signed(voucher(0, 1, 1_000, &[(ADAPTER_A, 1_000)], &[])),
            Error::<Test>::UnknownChannel
        );
        let channel = open(ALICE, P1, DEPOSIT);
        assert_ok!(crate::Pallet::<Test>::close_by_provider(RuntimeOrigin::signed(P1), channel));
        assert_noop!(
            redeem_signed(voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[])),
            Error::<Test>::ChannelClosed
        );
    });
}

#[test]
fn a_rotated_signer_invalidates_the_old_key() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_ok!(crate::Pallet::<Test>::rotate_signer(
            RuntimeOrigin::signed(ALICE),
            channel,
            public(&signing_key(2))
        ));
        let v = voucher(channel, 1, 1_000, &[(ADAPTER_A, 1_000)], &[]);
        assert_noop!(redeem_signed(v.clone()), Error::<Test>::BadSignature);
        let signature = sign(&signing_key(2), &v);
        assert_ok!(redeem(v, signature));
    });
}

/// Asks the runtime, as a client does, for the bytes to sign for `voucher`: the view function
/// dispatched by its id with the SCALE-encoded voucher, its answer decoded.
fn signing_payload_from_chain(voucher: &VoucherOf<Test>) -> Vec<u8> {
    use codec::{Decode, Encode};
    use frame_support::view_functions::ViewFunction;
    type Query = crate::VoucherSigningPayloadViewFunction<Test>;
    let input = Query::new(voucher.clone()).encode();
    let output = Test::execute_view_function(Query::id(), input).expect("view function exists");
    Vec::<u8>::decode(&mut &output[..]).expect("answer decodes")
}

#[test]
fn a_voucher_signed_over_the_chains_signing_payload_is_redeemed() {
    use ed25519_dalek::Signer;
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let v = voucher(channel, 1, 5_000, &[(ADAPTER_A, 5_000)], &[(ADAPTER_A, CONTEXT_1, 1_000)]);
        let bytes = signing_payload_from_chain(&v);
        assert_eq!(bytes.len(), openledger_primitives::voucher::VOUCHER_PAYLOAD_LEN);
        assert_eq!(bytes[..21], openledger_primitives::voucher::VOUCHER_DOMAIN);
        assert_eq!(bytes, VoucherPayload::new(genesis_hash(), &v).signing_bytes());

        // Signed by the channel's signer from these bytes alone, the voucher pays.
        let signature = ed25519::Signature::from_raw(signing_key(1).sign(&bytes).to_bytes());
        let provider_before = free(P1);
        assert_ok!(redeem(v.clone(), signature));
        assert_eq!(crate::Channels::<Test>::get(channel).unwrap().redeemed, 5_000);
        // 70% of 5,000 to the provider; the split itself is tested above.
        assert_eq!(free(P1) - provider_before, 3_500);

        // Any change to the voucher changes the bytes.
        let mut other = v.clone();
        other.inferences += 1;
        assert_ne!(signing_payload_from_chain(&other), bytes);
        let mut other = v;
        other.contexts = Default::default();
        assert_ne!(signing_payload_from_chain(&other), bytes);
    });
}
