//! Opening, topping up, rotating the signer and closing channels, and who may do each.

use crate::{mock::*, ChannelPhase, ChannelStatus, Error, Event, Pallet};
use frame_support::{assert_noop, assert_ok};
use sp_core::ed25519;

const DEPOSIT: Balance = 50_000;

#[test]
fn open_holds_the_deposit_and_numbers_channels_in_order() {
    build_and_execute(|| {
        let signer = public(&signing_key(1));
        assert_ok!(Pallet::<Test>::open(RuntimeOrigin::signed(ALICE), P1, DEPOSIT, signer));
        assert_ok!(Pallet::<Test>::open(RuntimeOrigin::signed(ALICE), P2, 10, signer));
        assert_ok!(Pallet::<Test>::open(RuntimeOrigin::signed(BOB), P1, 20, signer));
        assert_eq!(free(ALICE), ENDOWMENT - DEPOSIT - 10);
        assert_eq!(held(ALICE), DEPOSIT + 10);
        assert_eq!(held(BOB), 20);
        assert_eq!(free(P1), ENDOWMENT, "the provider receives nothing until it redeems");
        assert_eq!(crate::TotalHeld::<Test>::get(), DEPOSIT + 30);
        let record = crate::Channels::<Test>::get(0).unwrap();
        assert_eq!((record.payer, record.provider, record.signer), (ALICE, P1, signer));
        assert_eq!((record.deposit, record.redeemed, record.sequence), (DEPOSIT, 0, 0));
        assert_eq!(record.phase, ChannelPhase::Open);
        assert_eq!(crate::Channels::<Test>::get(2).unwrap().payer, BOB);
        assert_eq!(
            channel_events()[0],
            Event::ChannelOpened {
                channel: 0,
                payer: ALICE,
                provider: P1,
                signer,
                deposit: DEPOSIT,
            }
        );
    });
}

#[test]
fn open_refuses_nothing_a_small_order_key_and_more_than_the_payer_has() {
    build_and_execute(|| {
        let signer = public(&signing_key(1));
        assert_noop!(
            Pallet::<Test>::open(RuntimeOrigin::signed(ALICE), P1, 0, signer),
            Error::<Test>::ZeroAmount
        );
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_noop!(
            Pallet::<Test>::open(
                RuntimeOrigin::signed(ALICE),
                P1,
                DEPOSIT,
                ed25519::Public::from_raw(identity)
            ),
            Error::<Test>::BadSigner
        );
        assert!(
            Pallet::<Test>::open(RuntimeOrigin::signed(ALICE), P1, ENDOWMENT + 1, signer).is_err()
        );
        assert_eq!(held(ALICE), 0);
        assert_eq!(free(ALICE), ENDOWMENT);
    });
}

#[test]
fn top_up_adds_to_the_deposit_for_the_payer_only() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_ok!(Pallet::<Test>::top_up(RuntimeOrigin::signed(ALICE), channel, 5_000));
        assert_eq!(held(ALICE), DEPOSIT + 5_000);
        assert_eq!(free(ALICE), ENDOWMENT - DEPOSIT - 5_000);
        assert_eq!(crate::Channels::<Test>::get(channel).unwrap().deposit, DEPOSIT + 5_000);
        assert_eq!(
            channel_events().last(),
            Some(&Event::ChannelToppedUp { channel, amount: 5_000, deposit: DEPOSIT + 5_000 })
        );
        assert_noop!(
            Pallet::<Test>::top_up(RuntimeOrigin::signed(BOB), channel, 5_000),
            Error::<Test>::NotPayer
        );
        assert_noop!(
            Pallet::<Test>::top_up(RuntimeOrigin::signed(ALICE), channel, 0),
            Error::<Test>::ZeroAmount
        );
        assert_noop!(
            Pallet::<Test>::top_up(RuntimeOrigin::signed(ALICE), 9, 5),
            Error::<Test>::UnknownChannel
        );
    });
}

#[test]
fn rotate_signer_is_the_payers_and_refuses_small_order_keys() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        let new = public(&signing_key(2));
        assert_noop!(
            Pallet::<Test>::rotate_signer(RuntimeOrigin::signed(P1), channel, new),
            Error::<Test>::NotPayer
        );
        assert_noop!(
            Pallet::<Test>::rotate_signer(
                RuntimeOrigin::signed(ALICE),
                channel,
                ed25519::Public::from_raw([0; 32])
            ),
            Error::<Test>::BadSigner
        );
        assert_ok!(Pallet::<Test>::rotate_signer(RuntimeOrigin::signed(ALICE), channel, new));
        assert_eq!(crate::Channels::<Test>::get(channel).unwrap().signer, new);
        assert_eq!(channel_events().last(), Some(&Event::SignerRotated { channel, signer: new }));
    });
}

#[test]
fn the_payers_close_waits_out_the_challenge_window_then_refunds_the_rest() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_ok!(redeem_signed(voucher(channel, 1, 10_000, &[(ADAPTER_A, 10_000)], &[])));
        assert_noop!(
            Pallet::<Test>::request_close(RuntimeOrigin::signed(P1), channel),
            Error::<Test>::NotPayer
        );
        assert_noop!(
            Pallet::<Test>::finalize_close(RuntimeOrigin::signed(ALICE), channel),
            Error::<Test>::NotClosing
        );
        assert_ok!(Pallet::<Test>::request_close(RuntimeOrigin::signed(ALICE), channel));
        let until = 1 + CHALLENGE_WINDOW;
        assert_eq!(channel_events().last(), Some(&Event::CloseRequested { channel, until }));
        // A closing channel takes no top-up, signer change or second request.
        assert_noop!(
            Pallet::<Test>::top_up(RuntimeOrigin::signed(ALICE), channel, 1),
            Error::<Test>::ChannelClosing
        );
        assert_noop!(
            Pallet::<Test>::rotate_signer(
                RuntimeOrigin::signed(ALICE),
                channel,
                public(&signing_key(2))
            ),
            Error::<Test>::ChannelClosing
        );
        assert_noop!(
            Pallet::<Test>::request_close(RuntimeOrigin::signed(ALICE), channel),
            Error::<Test>::ChannelClosing
        );

        // The provider redeems its latest voucher on the last block of the window.
        run_to_block(until);
        assert_noop!(
            Pallet::<Test>::finalize_close(RuntimeOrigin::signed(ALICE), channel),
            Error::<Test>::ChallengeWindowOpen
        );
        let provider = free(P1);
        assert_ok!(redeem_signed(voucher(channel, 2, 30_000, &[(ADAPTER_A, 20_000)], &[])));
        assert_eq!(free(P1) - provider, 14_000);

        // After the window no voucher is taken; anyone may finalize.
        run_to_block(until + 1);
        assert_noop!(
            redeem_signed(voucher(channel, 3, 40_000, &[(ADAPTER_A, 10_000)], &[])),
            Error::<Test>::ChallengeWindowEnded
        );
        let alice = free(ALICE);
        assert_ok!(Pallet::<Test>::finalize_close(RuntimeOrigin::signed(RELAYER), channel));
        assert_eq!(free(ALICE) - alice, DEPOSIT - 30_000);
        assert_eq!(held(ALICE), 0);
        assert_eq!(free(ALICE), ENDOWMENT - 30_000, "Alice paid exactly what was redeemed");
        assert_eq!(
            channel_events().last(),
            Some(&Event::ChannelClosed {
                channel,
                payer: ALICE,
                provider: P1,
                redeemed: 30_000,
                refunded: DEPOSIT - 30_000,
            })
        );
        assert_eq!(Pallet::<Test>::channel_status(channel), ChannelStatus::Closed);
        assert_eq!(Pallet::<Test>::channel_status(channel + 1), ChannelStatus::Unknown);

        // Redeem after close, and every other call, name the closed channel.
        assert_noop!(
            redeem_signed(voucher(channel, 3, 40_000, &[(ADAPTER_A, 10_000)], &[])),
            Error::<Test>::ChannelClosed
        );
        assert_noop!(
            Pallet::<Test>::finalize_close(RuntimeOrigin::signed(ALICE), channel),
            Error::<Test>::ChannelClosed
        );
        assert_noop!(
            Pallet::<Test>::top_up(RuntimeOrigin::signed(ALICE), channel, 1),
            Error::<Test>::ChannelClosed
        );
    });
}

#[test]
fn the_provider_closes_at_once_open_or_closing() {
    build_and_execute(|| {
        let first = open(ALICE, P1, DEPOSIT);
        let second = open(ALICE, P1, DEPOSIT);
        assert_ok!(redeem_signed(voucher(first, 1, 1_000, &[(ADAPTER_B, 1_000)], &[])));
        assert_noop!(
            Pallet::<Test>::close_by_provider(RuntimeOrigin::signed(ALICE), first),
            Error::<Test>::NotProvider
        );
        let alice = free(ALICE);
        assert_ok!(Pallet::<Test>::close_by_provider(RuntimeOrigin::signed(P1), first));
        assert_eq!(free(ALICE) - alice, DEPOSIT - 1_000);
        assert_eq!(held(ALICE), DEPOSIT);

        assert_ok!(Pallet::<Test>::request_close(RuntimeOrigin::signed(ALICE), second));
        assert_ok!(Pallet::<Test>::close_by_provider(RuntimeOrigin::signed(P1), second));
        assert_eq!(held(ALICE), 0);
        assert_eq!(free(ALICE), ENDOWMENT - 1_000);
        assert_eq!(
            channel_events().last(),
            Some(&Event::ChannelClosed {
                channel: second,
                payer: ALICE,
                provider: P1,
                redeemed: 0,
                refunded: DEPOSIT,
            })
        );
    });
}

#[test]
fn a_fully_redeemed_channel_closes_with_nothing_to_refund() {
    build_and_execute(|| {
        let channel = open(ALICE, P1, DEPOSIT);
        assert_ok!(redeem_signed(voucher(channel, 1, DEPOSIT, &[(ADAPTER_A, DEPOSIT)], &[])));
        assert_eq!(held(ALICE), 0);
        assert_ok!(Pallet::<Test>::close_by_provider(RuntimeOrigin::signed(P1), channel));
        assert_eq!(free(ALICE), ENDOWMENT - DEPOSIT);
    });
}
