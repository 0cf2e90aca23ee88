//! Payment-channel vouchers made off chain by `openledger-channel` (the gateway's issuer and
//! the worker's wallet), redeemed on a real `openledger-node --dev`: the chain pays exactly
//! what the vouchers say, splits it as per-job receipts are, refuses a replay, and every
//! planck is accounted for.

use openledger_testkit as common;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use openledger_chain_client::channels::{ChannelPhase, ChannelStatus, VoucherArg};
use openledger_chain_client::ChainClient;
use openledger_channel::{ContextShare, PayerChannel, ProviderChannel, ServiceReceipt};
use subxt_signer::sr25519::dev;

use common::ledger::flows;
use common::market::{account, best, demo_adapter, idle_terms, MILLI, OPEN};
use common::node::DevNode;

/// The gateway's and the worker's halves of one channel, in the test process.
struct Sides {
    genesis: [u8; 32],
    adapter: u32,
    worker: SigningKey,
    gateway: SigningKey,
    payer: PayerChannel,
    provider: ProviderChannel,
}

/// One request on the channel: admitted, served, its receipt vouched for and the voucher
/// accepted, as the worker and gateway do it.
fn serve(s: &mut Sides, request: u64, charge: u128, contexts: Vec<ContextShare>) {
    let receipt = ServiceReceipt {
        channel: s.payer.channel,
        request,
        adapter: s.adapter,
        input_hash: [request as u8; 32],
        output_hash: [0xee; 32],
        input_tokens: 12,
        output_tokens: 30,
        charge,
        contexts,
        commitment_hash: Some([request as u8 ^ 0x33; 32]),
    };
    s.provider.admit(charge).expect("room on the channel");
    let signed = receipt.sign(&s.worker, s.genesis);
    s.provider.served(signed.clone()).expect("recorded");
    let voucher = s.payer.vouch(&signed, charge, &s.gateway, s.genesis).expect("vouched");
    s.provider.accept(request, voucher, s.genesis).expect("accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vouchers_made_off_chain_redeem_on_chain_and_every_planck_is_accounted_for() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");
    let genesis = chain.genesis_hash();
    let adapter = demo_adapter(&chain, dir.path()).await;
    // A DataNet with one approved record, so that it can be paid as retrieval context.
    let datanet = chain.create_datanet(&dev::charlie(), b"context records").await.expect("datanet");
    chain.contribute(&dev::eve(), datanet, [3; 32], 10).await.expect("contributes");
    chain.approve_contribution(&dev::charlie(), datanet, [3; 32]).await.expect("approves");
    let (alice, bob) = (dev::alice(), dev::bob());
    let worker = SigningKey::from_bytes(&[5; 32]);
    let gateway = SigningKey::from_bytes(&[6; 32]);
    chain
        .register_provider(
            &bob,
            &idle_terms(worker.verifying_key().to_bytes(), MILLI),
            1_500 * OPEN,
        )
        .await
        .expect("Bob registers");

    // Alice opens a channel to Bob whose vouchers her gateway's key signs.
    let deposit = 10 * OPEN;
    let start = best(&chain).await;
    let (alice_free, alice_held) = chain.balances(&account(&alice)).await.expect("balances");
    let opened = chain
        .open_channel(&alice, &account(&bob), deposit, gateway.verifying_key().to_bytes())
        .await
        .expect("opens");
    let id = opened.channel;
    let ChannelStatus::Open(record) = chain.channel(id).await.expect("reads") else {
        panic!("channel {id} is not open");
    };
    assert_eq!((record.deposit, record.redeemed, record.phase), (deposit, 0, ChannelPhase::Open));
    assert_eq!(chain.balances(&account(&alice)).await.unwrap().1, alice_held + deposit);

    let mut sides = Sides {
        genesis,
        adapter,
        payer: PayerChannel::new(id, worker.verifying_key().to_bytes(), deposit),
        provider: ProviderChannel::new(id, gateway.verifying_key().to_bytes(), deposit, OPEN),
        worker,
        gateway,
    };
    let charges = [3 * MILLI, 5 * MILLI + 7, 11 * MILLI];
    for (i, &c) in charges.iter().enumerate() {
        let contexts =
            if i == 1 { vec![ContextShare { datanet, ppm: 400_000 }] } else { Vec::new() };
        serve(&mut sides, i as u64 + 1, c, contexts);
    }
    let total: u128 = charges.iter().sum();

    // Bob redeems the latest voucher: one transaction for the three inferences.
    let latest = sides.provider.redeemable().expect("a voucher to redeem").clone();
    let from = best(&chain).await;
    let redeemed = chain
        .redeem_voucher(&bob, VoucherArg::from(&latest.voucher), latest.signature)
        .await
        .expect("the chain takes the voucher the gateway made");
    let to = best(&chain).await;
    assert_eq!((redeemed.paid, redeemed.redeemed, redeemed.inferences), (total, total, 3));
    assert_eq!((redeemed.sequence, redeemed.receipts_root.0), (3, latest.voucher.receipts_root.0));

    // Where each planck went: the split's payouts sum to the total; the context DataNet got
    // its part; Bob's free balance moved by what he was paid less his fee; Alice's hold fell
    // by the total and her free balance did not move.
    let f = flows(&chain, from, to).await;
    assert_eq!(f.voucher_charges.values().sum::<u128>(), total);
    assert_eq!(f.voucher_charges.get(&(id, 3, adapter)), Some(&total));
    assert!(f.voucher_context_paid.get(&(id, 3, datanet)).is_some_and(|&p| p > 0), "{f:?}");
    let bob_before = chain.free_balance_at(&account(&bob), from).await.unwrap();
    let bob_after = chain.free_balance_at(&account(&bob), to).await.unwrap();
    assert_eq!(bob_after as i128 - bob_before as i128, f.net(&account(&bob)));
    let (free, held) = chain.balances(&account(&alice)).await.unwrap();
    assert_eq!(held, alice_held + deposit - total);
    let alice_fees = flows(&chain, start, to).await.fees_of.get(&account(&alice)).copied();
    assert_eq!(free, alice_free - deposit - alice_fees.expect("Alice paid to open"));

    // The same voucher again pays nothing and is refused by name.
    let replay =
        chain.redeem_voucher(&bob, VoucherArg::from(&latest.voucher), latest.signature).await;
    let err = replay.expect_err("a replayed voucher").to_string();
    assert!(err.contains("Channels.StaleSequence"), "{err}");
    let ChannelStatus::Open(record) = chain.channel(id).await.unwrap() else { panic!("closed") };
    assert_eq!((record.redeemed, record.sequence, record.inferences), (total, 3, 3));

    // Both sides learn of the redemption; the next voucher covers only what came after.
    sides.payer.on_redeemed(record.redeemed, record.sequence);
    sides.provider.on_redeemed(record.redeemed, record.sequence);
    serve(&mut sides, 4, 2 * MILLI, Vec::new());
    let next = sides.provider.redeemable().expect("a new voucher").clone();
    assert_eq!(next.voucher.inferences, 1);
    let redeemed =
        chain.redeem_voucher(&bob, VoucherArg::from(&next.voucher), next.signature).await.unwrap();
    assert_eq!((redeemed.paid, redeemed.redeemed), (2 * MILLI, total + 2 * MILLI));
}
