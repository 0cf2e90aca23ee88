//! A payer whose gateway stops countersigning, against a real `openledger-worker` and dev
//! node: the test plays the gateway (a libp2p node holding the channel's signer key, with
//! `openledger-channel`'s issuer). It vouches for the first answer, then refuses every
//! receipt: the worker keeps serving only while its unvouched amount stays under its credit
//! limit, then refuses the channel by name, and redeems the voucher it holds. The payer pays
//! exactly the vouched answer. When the gateway answers again, the worker's retries of its
//! unvouched receipts are vouched for and redeemed: every answer served is paid once. Bob's
//! and Dave's balances move by what the events say.

use openledger_testkit as common;

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use openledger_chain_client::channels::ChannelStatus;
use openledger_chain_client::ChainClient;
use openledger_channel::PayerChannel;
use openledger_p2p::payload::JobPayload;
use openledger_p2p::{
    keypair_from_ed25519_secret, peer_id_of_ed25519_public, ChannelRequest, ChannelResponse,
    P2pConfig, P2pEvent, P2pHandle, PeerId, CHANNEL_ROUTE_BIT,
};
use subxt_signer::sr25519::dev;
use tokio::sync::mpsc;

use common::ledger::flows;
use common::market::{account, best, demo_adapter, MILLI, OPEN};
use common::node::DevNode;
use common::procs::worker_with;

/// Asks the worker to serve a short prompt on `channel`; returns its answer.
async fn ask(
    p2p: &P2pHandle,
    worker: PeerId,
    channel: u64,
    request: u64,
    adapter: u32,
    max_charge: u128,
) -> ChannelResponse {
    let payload = JobPayload {
        prompt: format!("Request {request}:"),
        messages: Vec::new(),
        context: Vec::new(),
        max_tokens: 4,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 0,
        stop: Vec::new(),
    };
    let serve = ChannelRequest::Serve {
        channel,
        request: CHANNEL_ROUTE_BIT | request,
        adapter,
        max_charge,
        payload: payload.to_bytes(),
    };
    p2p.ask_channel(worker, serve).await.expect("the worker answers")
}

/// Waits for the worker's receipt of `request` (its token chunks pass by) and returns the
/// asking id with the receipt.
async fn receipt(
    p2p: &P2pHandle,
    events: &mut mpsc::Receiver<P2pEvent>,
    request: u64,
) -> (u64, openledger_channel::SignedReceipt) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("a receipt within 60 s")
            .expect("the node runs");
        if let P2pEvent::ChannelRequest { id, request: ChannelRequest::Receipt(r), .. } = event {
            if r.receipt.request == CHANNEL_ROUTE_BIT | request {
                return (id, r);
            }
            // An earlier receipt sent again (the worker retries unvouched ones): not now.
            let _ = p2p.answer_channel(id, ChannelResponse::Refused("not now".into())).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_stops_countersigning_is_cut_off_at_the_credit_limit() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");
    let genesis = chain.genesis_hash();
    let adapter = demo_adapter(&chain, dir.path()).await;

    // The test's gateway: its libp2p key is the channel's signer.
    let signer = SigningKey::from_bytes(&[42; 32]);
    let mut config = P2pConfig::new(keypair_from_ed25519_secret(signer.to_bytes()).expect("a key"));
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("an address")];
    let (p2p, mut events) = openledger_p2p::spawn(config).expect("p2p starts");
    let me = p2p.local_peer_id();
    let addr = format!("{}/p2p/{me}", p2p.listen_addrs().await.expect("listening")[0]);

    // Bob serves at 20 OPEN per 1,000 tokens, 0.3 OPEN of credit per channel, redeeming
    // every block.
    let flags =
        ["--price-milli", "20000", "--channel-credit-milli", "300", "--redeem-every-blocks", "1"];
    let _bob = worker_with(
        &node.ws_url(),
        "//Bob",
        dir.path(),
        &dir.path().join("adapters"),
        &addr,
        &flags,
    );
    let (alice, bob, dave) = (account(&dev::alice()), account(&dev::bob()), account(&dev::dave()));
    let terms = chain.provider(&bob).await.expect("reads").expect("Bob is registered");
    let worker = peer_id_of_ed25519_public(&terms.worker_key).expect("a peer id");
    let deposit = 10 * OPEN;
    let from = best(&chain).await;
    let free_at = |who, at| {
        let chain = &chain;
        async move { chain.free_balance_at(who, at).await.expect("balance") }
    };
    let (bob_free, dave_free) = (free_at(&bob, from).await, free_at(&dave, from).await);
    let alice_held = chain.balances(&alice).await.expect("balances").1;
    let opened = chain
        .open_channel(&dev::alice(), &bob, deposit, signer.verifying_key().to_bytes())
        .await
        .expect("Alice opens a channel");
    let mut payer = PayerChannel::new(opened.channel, terms.worker_key, deposit);
    let max_charge = 200 * MILLI;

    // Someone without the channel's key is refused before anything runs.
    let (stranger, _stranger_events) = {
        let mut c = P2pConfig::new(keypair_from_ed25519_secret([7; 32]).expect("a key"));
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("an address")];
        openledger_p2p::spawn(c).expect("p2p starts")
    };
    let worker_addr = terms.endpoint.multiaddrs.first().cloned().expect("Bob's endpoint");
    let worker_addr = libp2p_addr(worker_addr, worker);
    stranger.dial(worker_addr).await.expect("the stranger reaches Bob");
    let answer = ask(&stranger, worker, opened.channel, 1, adapter, max_charge).await;
    assert!(
        matches!(&answer, ChannelResponse::Refused(r) if r.contains("another key")),
        "{answer:?}"
    );

    // The first answer is vouched for.
    assert_eq!(
        ask(&p2p, worker, opened.channel, 1, adapter, max_charge).await,
        ChannelResponse::Accepted
    );
    let (id, first) = receipt(&p2p, &mut events, 1).await;
    assert!(first.receipt.charge > 0 && first.receipt.charge <= max_charge, "{:?}", first.receipt);
    let voucher = payer.vouch(&first, max_charge, &signer, genesis).expect("vouched");
    p2p.answer_channel(id, ChannelResponse::Voucher(voucher.clone())).await.expect("answered");

    // Then no more vouchers: the worker serves while its credit lasts, then says why not.
    let mut served = 0u64;
    let mut refusal = None;
    // The worker takes the first voucher in after the answer to it has reached it: until
    // then the first request still counts against the credit, and the next is refused for
    // it. Ask again while that is the case (a few seconds at most).
    let voucher_in_by = Instant::now() + Duration::from_secs(15);
    let mut request = 2u64;
    while request < 10 {
        let answer = ask(&p2p, worker, opened.channel, request, adapter, max_charge).await;
        if served == 0
            && Instant::now() < voucher_in_by
            && matches!(&answer, ChannelResponse::Refused(r) if r.contains("credit limit"))
        {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let asked = request;
        request += 1;
        match answer {
            ChannelResponse::Accepted => {
                served += 1;
                let (id, _) = receipt(&p2p, &mut events, asked).await;
                let no = ChannelResponse::Refused("this payer stopped countersigning".into());
                p2p.answer_channel(id, no).await.expect("answered");
                // The worker asks again a few times; refuse those too.
                let until = Instant::now() + Duration::from_secs(8);
                while Instant::now() < until {
                    match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
                        Ok(Some(P2pEvent::ChannelRequest { id, .. })) => {
                            let no = ChannelResponse::Refused("still no".into());
                            p2p.answer_channel(id, no).await.expect("answered");
                        },
                        Ok(Some(_)) | Err(_) => {},
                        Ok(None) => panic!("the node stopped"),
                    }
                }
            },
            other => {
                refusal = Some(other);
                break;
            },
        }
    }
    assert!(served >= 1, "the worker extends some credit");
    let refusal = refusal.expect("the worker stops serving");
    assert!(
        matches!(&refusal, ChannelResponse::Refused(r) if r.contains("credit limit")),
        "{refusal:?}"
    );

    // The worker redeems the voucher it holds: the payer pays that and nothing more.
    let redeemed = wait_redeemed(&chain, opened.channel, 1).await;
    assert_eq!((redeemed.redeemed, redeemed.inferences), (voucher.voucher.cumulative, 1));
    assert_eq!(voucher.voucher.cumulative, first.receipt.charge);
    let held = chain.balances(&alice).await.expect("balances").1;
    assert_eq!(held, alice_held + deposit - first.receipt.charge);
    // As a gateway does, the payer takes the redemption in: later vouchers break down the
    // increment over what the chain has paid.
    payer.on_redeemed(redeemed.redeemed, redeemed.sequence);

    // The gateway comes back: the worker sends the receipts it served without a voucher
    // again, and is paid for them. (A retry the test reads after the worker stopped waiting
    // is answered anyway; the next retry of that receipt gets the same voucher.)
    let mut charged = first.receipt.charge;
    let mut vouched = std::collections::HashMap::new();
    let started = Instant::now();
    let redeemed = loop {
        if let ChannelStatus::Open(c) = chain.channel(opened.channel).await.expect("reads") {
            if c.inferences > served {
                // The first answer and every one served after it.
                break c;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(90), "the unvouched receipts never paid");
        let event = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
        if let Ok(Some(P2pEvent::ChannelRequest {
            id, request: ChannelRequest::Receipt(r), ..
        })) = event
        {
            let voucher = match vouched.get(&r.receipt.request) {
                Some(v) => Clone::clone(v),
                None => {
                    let v = payer.vouch(&r, max_charge, &signer, genesis).expect("vouched");
                    charged += r.receipt.charge;
                    vouched.insert(r.receipt.request, v.clone());
                    v
                },
            };
            let _ = p2p.answer_channel(id, ChannelResponse::Voucher(voucher)).await;
        }
    };
    assert_eq!(vouched.len() as u64, served, "each unvouched receipt is sent again");
    assert_eq!(redeemed.redeemed, charged, "every answer served is paid once");
    let to = best(&chain).await;
    let held = chain.balances(&alice).await.expect("balances").1;
    assert_eq!(held, alice_held + deposit - charged);
    let f = flows(&chain, from, to).await;
    assert_eq!(f.voucher_charges.values().sum::<u128>(), charged);
    assert_eq!(free_at(&bob, to).await as i128 - bob_free as i128, f.net(&bob));
    assert_eq!(free_at(&dave, to).await as i128 - dave_free as i128, f.net(&dave));
}

/// Waits until `channel` has paid for `inferences` inferences on chain; returns its state.
async fn wait_redeemed(
    chain: &ChainClient,
    channel: u64,
    inferences: u64,
) -> openledger_chain_client::channels::Channel {
    let started = Instant::now();
    loop {
        if let ChannelStatus::Open(c) = chain.channel(channel).await.expect("reads") {
            if c.inferences >= inferences {
                return c;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never redeemed {inferences}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `addr` (bytes from the chain) with `/p2p/<peer>`.
fn libp2p_addr(addr: Vec<u8>, peer: PeerId) -> openledger_p2p::Multiaddr {
    let addr = openledger_p2p::Multiaddr::try_from(addr).expect("a multiaddr");
    addr.with_p2p(peer).unwrap_or_else(|a| a)
}
