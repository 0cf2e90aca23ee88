//! The payment-channel path as real processes on loopback: a dev node, `openledger-gateway`
//! as it runs by default (requests sent on channels) and an `openledger-worker`.
//!
//! The first request opens Alice's channel to Bob; the requests are served with no
//! transaction each; the worker holds its vouchers (a redeem schedule that never comes due)
//! and is killed. While it is down, Alice asks to close the channel: the restarted worker
//! (the same schedule) finds the challenge window running and redeems from its store what the
//! gateway vouched. The gateway, restarted too, does not use the closing channel: it opens a
//! new one. The chain pays exactly the tokens the answers report at the provider's plus the
//! adapter's price, and every account's balance moves by what the events say, to the planck.
//! A worker killed mid-answer is paid nothing for that answer.

use openledger_testkit as common;

use std::time::{Duration, Instant};

use openledger_chain_client::channels::{ChannelPhase, ChannelStatus};
use openledger_chain_client::{fee_for, ChainClient};
use serde_json::{json, Value};
use subxt_signer::sr25519::dev;

use common::ledger::flows;
use common::market::{account, best, demo_adapter, MILLI};
use common::node::DevNode;
use common::procs::{channel_gateway, post, post_streamed, worker_with};
use openledger_worker::answers::AnswerRecord;

/// The channel a response was served on, and what its usage costs at `price_per_1k`.
fn served_on(response: &Value, price_per_1k: u128) -> (u64, u128) {
    let info = &response["openledger"];
    assert!(info["job"].is_null(), "no on-chain job on the channel path: {response}");
    let channel = info["channel"].as_u64().unwrap_or_else(|| panic!("a channel: {response}"));
    let request: u64 = info["request"].as_str().and_then(|r| r.parse().ok()).expect("request");
    assert!(request >> 63 == 1, "channel request ids carry the route bit");
    let usage = &response["usage"];
    let tokens = usage["prompt_tokens"].as_u64().expect("usage")
        + usage["completion_tokens"].as_u64().expect("usage");
    (channel, fee_for(tokens, price_per_1k))
}

/// A dev node with the demo adapter registered (files in `adapters`).
struct Market {
    _node: DevNode,
    dir: tempfile::TempDir,
    chain: ChainClient,
    adapter: u32,
    adapters: std::path::PathBuf,
    ws: String,
}

impl Market {
    async fn start() -> Self {
        let node = DevNode::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let ws = node.ws_url();
        let chain = ChainClient::connect(&ws, Duration::from_secs(60)).await.expect("node");
        let adapter = demo_adapter(&chain, dir.path()).await;
        let adapters = dir.path().join("adapters");
        Self { _node: node, dir, chain, adapter, adapters, ws }
    }
}

async fn wait_redeemed(chain: &ChainClient, channel: u64, inferences: u64) -> (u128, u64) {
    let started = Instant::now();
    loop {
        if let ChannelStatus::Open(c) = chain.channel(channel).await.expect("reads") {
            if c.inferences >= inferences {
                return (c.redeemed, c.inferences);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(90), "the vouchers were never redeemed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the worker at `metrics` has accepted `count` vouchers.
fn wait_vouched(metrics: &str, count: u64) {
    let wanted = format!("openledger_worker_jobs_total{{state=\"vouched\"}} {count}");
    let started = Instant::now();
    loop {
        let text = ureq::get(metrics).call().ok().and_then(|r| r.into_string().ok());
        if text.is_some_and(|t| t.lines().any(|l| l == wanted)) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no {count} vouchers at {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_channel_need_no_transaction_and_a_restarted_worker_redeems_them() {
    let _serial = common::procs::serial();
    let Market { _node, dir, chain, adapter, adapters, ws } = Market::start().await;
    let (mut gateway, http, p2p) = channel_gateway(&ws, dir.path(), 90, &[]);
    // Holds its vouchers: no redemption comes due while it runs.
    let hold = ["--redeem-every-blocks", "1000000", "--redeem-amount-milli", "1000000"];
    let watched = [&hold[..], &["--metrics", "127.0.0.1:0"]].concat();
    let mut bob = worker_with(&ws, "//Bob", dir.path(), &adapters, &p2p, &watched);
    let metrics = bob.wait_for("worker metrics:", 5);
    let (alice, bob_account, dave) =
        (account(&dev::alice()), account(&dev::bob()), account(&dev::dave()));
    // The provider is registered (its bond held): from here balances move by fees, deposits
    // and payouts only.
    let from = best(&chain).await;
    let before = |who| {
        let chain = &chain;
        async move { chain.free_balance_at(who, from).await.expect("balance") }
    };
    let (alice_free, bob_free, dave_free) =
        (before(&alice).await, before(&bob_account).await, before(&dave).await);
    let alice_held = chain.balances(&alice).await.expect("balances").1;
    // Bob's 2 milli-OPEN per 1,000 tokens (the testkit worker's price) plus the adapter's 1.
    let price = 3 * MILLI;
    let model = format!("adapter-{adapter}");
    let completions = format!("{http}/completions");

    // The first request opens the channel (one block), the next ones go at once.
    let first = post(&completions, json!({"model": model, "prompt": "Hello", "max_tokens": 6}))
        .expect("an answer");
    let (channel, mut owed) = served_on(&first, price);
    let ChannelStatus::Open(record) = chain.channel(channel).await.expect("reads") else {
        panic!("channel {channel} is open");
    };
    assert_eq!((record.payer, record.provider), (alice, bob_account));
    assert_eq!(record.phase, ChannelPhase::Open);
    let deposit = record.deposit;
    assert_eq!(deposit, 10_000 * MILLI, "the gateway's default deposit");
    let blocks_before = best(&chain).await;
    let (text, last) = post_streamed(
        &completions,
        json!({"model": model, "prompt": "One, two,", "max_tokens": 6, "stream": true}),
    )
    .expect("a streamed answer");
    assert!(!text.is_empty(), "{last}");
    assert_eq!(last["openledger"]["channel"].as_u64(), Some(channel), "{last}");
    let chat = post(
        &format!("{http}/chat/completions"),
        json!({"model": model, "max_tokens": 6, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .expect("a chat answer");
    let (same, cost) = served_on(&chat, price);
    assert_eq!(same, channel, "one channel per payer and provider");
    owed += cost;
    // The streamed answer's usage is not in its events: what it cost is what the chain will
    // have been paid beyond the other two, checked below against the vouchers.
    let ChannelStatus::Open(record) = chain.channel(channel).await.expect("reads") else {
        panic!("still open");
    };
    assert_eq!((record.redeemed, record.inferences), (0, 0), "nothing on chain per request");
    assert!(best(&chain).await - blocks_before < 10, "served off the block clock");

    // The answers are complete; their receipts' vouchers come just after: the worker holds
    // all three before it dies.
    wait_vouched(&metrics, 3);
    // Each answer was kept for verifiers under its channel and request, with the adapter's
    // content hash and a commitment covering every generated token.
    let kept: Vec<AnswerRecord> = std::fs::read_dir(dir.path().join("Bob-answers"))
        .expect("answers")
        .map(|e| AnswerRecord::read(&e.expect("entry").path()).expect("a record"))
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    for r in &kept {
        assert!(r.key.starts_with(&format!("channel-{channel}-")), "{}", r.key);
        assert_eq!(r.adapter.map(|(id, _)| id), Some(adapter));
        assert!(!r.output_tokens.is_empty() && !r.prompt_tokens.is_empty());
        assert_eq!(r.activations.tokens(), r.output_tokens.len());
    }
    // The worker dies holding its vouchers; Alice asks to close meanwhile. Restarted with
    // the same schedule, the worker redeems from its store within the challenge window.
    bob.kill();
    chain.request_close_channel(&dev::alice(), channel).await.expect("Alice asks to close");
    let _bob = worker_with(&ws, "//Bob", dir.path(), &adapters, &p2p, &hold);
    let (redeemed, inferences) = wait_redeemed(&chain, channel, 3).await;
    assert_eq!(inferences, 3);
    assert!(redeemed > owed, "three answers paid: {redeemed} > {owed} (two of them)");
    let streamed_cost = redeemed - owed;
    assert!(streamed_cost > 0 && streamed_cost <= fee_for(64, price), "{streamed_cost}");

    // The gateway restarts: it leaves the closing channel and opens a new one.
    gateway.kill();
    let (_gateway, http, _) = channel_gateway(&ws, dir.path(), 90, &[]);
    let again = post(
        &format!("{http}/completions"),
        json!({"model": model, "prompt": "Again", "max_tokens": 4}),
    )
    .expect("an answer after the restarts");
    let (second, _) = served_on(&again, price);
    assert_ne!(second, channel, "a closing channel takes no new requests");
    let ChannelStatus::Open(first_record) = chain.channel(channel).await.expect("reads") else {
        panic!("in its challenge window");
    };
    assert!(matches!(first_record.phase, ChannelPhase::Closing { .. }));
    assert_eq!((first_record.redeemed, first_record.inferences), (redeemed, 3));

    // Every planck: Alice's deposit is held, less what was paid out of it; Bob and Dave got
    // exactly the splits' payouts (less their own transaction fees).
    let (free, held) = chain.balances(&alice).await.expect("balances");
    let to = best(&chain).await;
    let f = flows(&chain, from, to).await;
    assert!(f.charges.is_empty(), "no per-job settlement: {f:?}");
    assert_eq!(f.voucher_charges.values().sum::<u128>(), redeemed);
    // Two deposits held (the second channel's voucher is not redeemed yet), less what the
    // first paid out.
    assert_eq!(held, alice_held + 2 * deposit - redeemed, "the rest of the deposits stay held");
    assert_eq!(free as i128 - alice_free as i128, f.net(&alice) - 2 * deposit as i128);
    let now = |who| {
        let chain = &chain;
        async move { chain.free_balance_at(who, to).await.expect("balance") }
    };
    assert_eq!(now(&bob_account).await as i128 - bob_free as i128, f.net(&bob_account));
    assert_eq!(now(&dave).await as i128 - dave_free as i128, f.net(&dave));
    assert!(f.paid_to.get(&dave).is_some_and(|&p| p > 0), "the adapter owner is paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_answer_is_paid_nothing_for_it() {
    let _serial = common::procs::serial();
    let Market { _node, dir, chain, adapter, adapters, ws } = Market::start().await;
    let (_gateway, http, p2p) = channel_gateway(&ws, dir.path(), 15, &[]);
    let hold = ["--redeem-every-blocks", "1000000", "--redeem-amount-milli", "1000000"];
    let mut bob = worker_with(&ws, "//Bob", dir.path(), &adapters, &p2p, &hold);
    let model = format!("adapter-{adapter}");
    let completions = format!("{http}/completions");
    let first = post(&completions, json!({"model": model, "prompt": "Hello", "max_tokens": 4}))
        .expect("an answer");
    let (channel, owed) = served_on(&first, 3 * MILLI);

    // A long streamed answer; Bob dies once its first tokens have arrived.
    let response = ureq::post(&completions)
        .set("Authorization", "Bearer alice-key")
        .timeout(Duration::from_secs(60))
        .send_json(
            json!({"model": model, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "stream": true,
            "temperature": 0.0}),
        )
        .expect("the stream starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(response.into_reader()));
    let first_event = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("data:"))
        .expect("a first event");
    assert!(first_event.contains("\"channel\""), "{first_event}");
    bob.kill();
    // The gateway gives up after its timeout and says so; the rest of the stream ends.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("gave no complete answer")), "{rest:?}");

    // Restarted, Bob redeems what was vouched: the first answer, nothing of the second.
    let _bob =
        worker_with(&ws, "//Bob", dir.path(), &adapters, &p2p, &["--redeem-every-blocks", "1"]);
    let (redeemed, inferences) = wait_redeemed(&chain, channel, 1).await;
    assert_eq!((redeemed, inferences), (owed, 1));
    // It stays so: no receipt of the killed answer exists to be vouched.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ChannelStatus::Open(c) = chain.channel(channel).await.expect("reads") else {
        panic!("open");
    };
    assert_eq!((c.redeemed, c.inferences), (owed, 1));
}
