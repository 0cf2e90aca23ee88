//! Failure paths that cost nobody, with real processes on loopback (node, gateway, workers,
//! keeper): requests the gateway can judge are refused before anything is paid; a request the
//! worker's engine refuses is refused on chain (the whole escrow comes back, the user pays only
//! the submission's fee, no bond moves); a full provider is a 503 with `Retry-After` and no
//! transaction; a cancelled or abandoned request is charged only for the tokens the gateway
//! received; and the keeper expires what nobody finishes, slashing only a provider that had
//! acknowledged the job.

use openledger_testkit as common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::{Duration, Instant};

use openledger_chain_client::{blake2_256, fee_for, ChainClient, JobId, RefusalReason};
use serde_json::{json, Value};
use subxt::utils::AccountId32;
use subxt_signer::sr25519::dev;

use common::ledger::flows;
use common::market::{
    account, best, closed, demo_adapter, idle_terms, short_deadlines, MILLI, OPEN,
};
use common::node::DevNode;
use common::procs::{
    gateway, gateway_with, keeper, model as base_model_file, request, worker, worker_with, Proc,
};

/// Provider price plus the demo adapter's, per 1,000 tokens (the workers ask 2 mOPEN).
const PRICE: u128 = 3 * MILLI;

/// The one job `provider` has open, once it has one.
async fn the_open_job(chain: &ChainClient, provider: &AccountId32) -> JobId {
    let started = Instant::now();
    loop {
        if let Some(job) = chain.open_jobs_of(provider).await.expect("reads").first() {
            return *job;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no job was assigned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The worker's Prometheus gauge `name`.
fn gauge(metrics: &str, name: &str) -> i64 {
    let body = ureq::get(metrics).call().expect("metrics answer").into_string().expect("text");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("openledger_worker_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge {name} in {body}"))
}

/// Wait until the worker's engine runs no sequence.
fn engine_idle(metrics: &str) {
    let started = Instant::now();
    while gauge(metrics, "batch_size") != 0 || gauge(metrics, "running_jobs") != 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the engine kept generating");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_paying_or_refunded_in_full() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");
    let adapter = demo_adapter(&chain, dir.path()).await;
    // A second adapter nobody serves.
    let orphan = chain
        .register_adapter(&dev::dave(), 0, [9; 32], 8, 0b101, MILLI, &[])
        .await
        .expect("registers");
    let (_gateway, http, p2p) = gateway(&node.ws_url(), dir.path(), 60);
    let _bob = worker(&node.ws_url(), "//Bob", dir.path(), &dir.path().join("adapters"), &p2p);
    let (alice, bob) = (account(&dev::alice()), account(&dev::bob()));
    let start = chain.balances(&alice).await.expect("balances");
    let bond = chain.balances(&bob).await.expect("balances").1;
    let model = format!("adapter-{adapter}");
    let completions = format!("{http}/completions");

    // Judged by the gateway: nothing is submitted, nothing paid.
    let cases = [
        (json!({"model": model, "prompt": ""}), 400, "empty_prompt"),
        (json!({"model": model, "prompt": "Hi", "temperature": 5.0}), 400, "invalid_temperature"),
        (json!({"model": model, "prompt": "Hi", "max_tokens": 0}), 400, "invalid_max_tokens"),
        (json!({"model": model, "prompt": "x".repeat(1_100_000)}), 400, "payload_too_large"),
        (
            json!({"model": model, "prompt": "Hi", "max_tokens": 1_000_000}),
            400,
            "request_too_expensive",
        ),
        (json!({"model": "adapter-999", "prompt": "Hi"}), 404, "model_not_found"),
        (
            json!({"model": format!("adapter-{orphan}"), "prompt": "Hi"}),
            503,
            "no_provider_available",
        ),
    ];
    for (body, status, code) in cases {
        let answer = request(&completions, body);
        assert_eq!(answer.status, status, "{code}: {}", answer.body);
        assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
        if status == 503 {
            assert!(answer.retry_after.is_some(), "a 503 says when to retry");
        }
    }
    assert_eq!(chain.balances(&alice).await.expect("balances"), start, "no transaction was sent");

    // A gateway that has the base model counts the prompt's tokens itself: a prompt longer
    // than the model's context is refused before anything is paid.
    let counting = dir.path().join("counting");
    std::fs::create_dir_all(&counting).expect("a folder");
    let model_path = base_model_file();
    let model_flag = model_path.to_str().expect("a UTF-8 path");
    let (_counting, counting_http, _) =
        gateway_with(&node.ws_url(), &counting, 60, &["--model", model_flag]);
    let too_long = json!({"model": model, "prompt": "hi ".repeat(9_000), "max_tokens": 16});
    let answer = request(&format!("{counting_http}/completions"), too_long.clone());
    assert_eq!((answer.status, &answer.body["error"]["code"]), (400, &json!("prompt_too_long")));
    let message = answer.body["error"]["message"].as_str().expect("a message");
    assert!(message.contains("8192") && message.contains("nothing was submitted"), "{message}");
    let too_many = json!({"model": model, "prompt": "Hi", "max_tokens": 8192});
    let answer = request(&format!("{counting_http}/completions"), too_many);
    assert_eq!(answer.body["error"]["code"], "max_tokens_exceeds_context", "{}", answer.body);
    assert_eq!(chain.balances(&alice).await.expect("balances"), start, "no transaction was sent");

    // A gateway without the model leaves the judgement to the worker's engine. The job is
    // refused on chain at once with its reason; Alice pays the submission's fee and nothing
    // else; no escrow stays held; Bob's bond does not move and his slot is free again.
    let from = best(&chain).await;
    let answer = request(&completions, too_long);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], "prompt_too_long", "{}", answer.body);
    let message = answer.body["error"]["message"].as_str().expect("a message");
    assert!(message.contains("refunded"), "{message}");
    let job = the_job_in(&chain, from, &alice).await;
    closed(&chain, job, 60).await;
    let refused = chain.refusals([job].into()).await.expect("events");
    assert_eq!(refused[&job].reason, RefusalReason::PromptTooLong);
    let to = best(&chain).await;
    let moved = flows(&chain, from, to).await;
    let now = chain.balances(&alice).await.expect("balances");
    assert_eq!(moved.txs_of.get(&alice), Some(&1), "one transaction: the submission");
    assert_eq!(now, (start.0 - moved.fees_of[&alice], start.1), "only the submission fee");
    assert_eq!(chain.balances(&bob).await.expect("balances").1, bond, "no slash");
    assert!(chain.quote(adapter, 16).await.expect("quotes").is_some(), "the slot is free");
}

/// The job Alice submitted after block `from` (from its `JobAssigned` event).
async fn the_job_in(chain: &ChainClient, from: u64, submitter: &AccountId32) -> JobId {
    let started = Instant::now();
    loop {
        for number in from + 1..=best(chain).await {
            let at = chain.subxt().at_block(number).await.expect("a block");
            for ev in at.events().fetch().await.expect("events").iter() {
                let ev = ev.expect("an event");
                if ev.pallet_name() == "Jobs" && ev.event_name() == "JobAssigned" {
                    let assigned = ev
                        .decode_fields_unchecked_as::<openledger_chain_client::JobAssigned>()
                        .expect("JobAssigned");
                    if assigned.submitter == *submitter {
                        return assigned.job;
                    }
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no job was submitted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A streamed completion read on a thread: each event's JSON is sent on as it arrives; the
/// thread stops reading (closing the connection) after `read_at_most` events.
fn stream(url: String, body: Value, read_at_most: usize) -> std::sync::mpsc::Receiver<Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let response = ureq::post(&url)
            .set("Authorization", "Bearer alice-key")
            .timeout(Duration::from_secs(120))
            .send_json(body)
            .expect("the stream opens");
        let mut reader = std::io::BufReader::new(response.into_reader());
        let mut read = 0;
        let mut line = String::new();
        while read < read_at_most && reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(data) = line.trim().strip_prefix("data:") {
                let data = data.trim();
                let event = if data == "[DONE]" {
                    json!("[DONE]")
                } else {
                    serde_json::from_str(data).expect("JSON event")
                };
                read += 1;
                if tx.send(event).is_err() {
                    break;
                }
            }
            line.clear();
        }
    });
    rx
}

/// Check the receipt of `job` charged exactly the tokens whose text is `delivered`: the output
/// hash is that text's, the charge is the metered price of its tokens and the prompt's, fewer
/// than `max_tokens` were charged, and the rest of the escrow went back.
async fn charged_for_delivered_only(
    chain: &ChainClient,
    job: JobId,
    delivered: Option<&str>,
    max_tokens: u32,
) {
    closed(chain, job, 60).await;
    let settled = chain.settlements([job].into()).await.expect("events");
    let settled = settled.get(&job).expect("the job settled with a receipt");
    if let Some(text) = delivered {
        assert_eq!(
            settled.output_hash.0,
            blake2_256(text.as_bytes()),
            "charged text = delivered text"
        );
    }
    assert!(settled.output_tokens < max_tokens, "stopped early: {}", settled.output_tokens);
    let tokens = u64::from(settled.input_tokens + settled.output_tokens);
    assert_eq!(settled.charged, fee_for(tokens, PRICE), "the metered charge of what was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_provider_is_a_503_and_a_cancelled_job_pays_for_what_was_delivered() {
    let _serial = common::procs::serial();
    let market = Market::start(&["--max-concurrent", "1"]).await;
    let (chain, http, adapter, metrics) =
        (&market.chain, &market.http, market.adapter, &market.metrics);
    let alice = account(&dev::alice());
    let from = best(chain).await;
    let (start_free, start_held) = chain.balances(&alice).await.expect("balances");

    // One long streamed story takes Bob's only slot.
    let model = format!("adapter-{adapter}");
    let story = json!({"model": model, "prompt": "Tell a long story:", "max_tokens": 400,
                       "temperature": 0.8, "seed": 1, "stream": true});
    let events = stream(format!("{http}/completions"), story, usize::MAX);
    let first = events.recv_timeout(Duration::from_secs(90)).expect("first tokens");
    let job = first["openledger"]["job"].as_u64().expect("the event names its job");

    // A second request finds no free slot: a 503 with Retry-After, and no transaction.
    let busy = request(&format!("{http}/completions"), json!({"model": model, "prompt": "Hi"}));
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(busy.retry_after.is_some());

    // Cancel the story: the stream ends with finish_reason `cancelled`, the worker stops.
    let cancel = ureq::post(&format!("{http}/jobs/{job}/cancel"))
        .set("Authorization", "Bearer alice-key")
        .call()
        .expect("cancel answers 200")
        .into_json::<Value>()
        .expect("JSON");
    assert_eq!(cancel["cancelled"], true);
    let mut text = first["choices"][0]["text"].as_str().unwrap_or_default().to_string();
    let mut finish = Value::Null;
    while let Ok(event) = events.recv_timeout(Duration::from_secs(30)) {
        if event == json!("[DONE]") {
            break;
        }
        text.push_str(event["choices"][0]["text"].as_str().unwrap_or_default());
        finish = event["choices"][0]["finish_reason"].clone();
    }
    assert_eq!(finish, "cancelled");
    charged_for_delivered_only(chain, job, Some(&text), 400).await;
    engine_idle(metrics);

    // Where every planck went: Alice paid one submission fee and the charge; nothing is held.
    let to = best(chain).await;
    let moved = flows(chain, from, to).await;
    assert_eq!(moved.txs_of.get(&alice), Some(&1), "the 503 sent no transaction");
    let charged = moved.charges[&job];
    let (free, held) = chain.balances(&alice).await.expect("balances");
    assert_eq!((free, held), (start_free - moved.fees_of[&alice] - charged, start_held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_pays_only_for_what_was_delivered() {
    let _serial = common::procs::serial();
    let market = Market::start(&[]).await;
    let (chain, http, adapter, metrics) =
        (&market.chain, &market.http, market.adapter, &market.metrics);
    let (alice, provider) = (account(&dev::alice()), account(&dev::bob()));
    let held_before = chain.balances(&alice).await.expect("balances").1;
    let model = format!("adapter-{adapter}");
    let story = |stream: bool| {
        json!({"model": model, "prompt": "Tell a long story:", "max_tokens": 400,
               "temperature": 0.8, "seed": 2, "stream": stream})
    };

    // Streaming: the client reads two events and hangs up.
    let events = stream(format!("{http}/completions"), story(true), 2);
    let first = events.recv_timeout(Duration::from_secs(90)).expect("first tokens");
    let job = first["openledger"]["job"].as_u64().expect("a job id");
    while events.recv_timeout(Duration::from_secs(30)).is_ok() {}
    charged_for_delivered_only(chain, job, None, 400).await;
    engine_idle(metrics);

    // Not streaming: the client gives up after a few seconds, long before the 400 tokens are
    // done (a count runs on where a story might reach its end of sequence early).
    let url = format!("{http}/completions");
    let body = json!({"model": model, "max_tokens": 400, "temperature": 0.8, "seed": 2,
                      "prompt": "Counting from 1 to 1000: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"});
    let waiting = std::thread::spawn(move || {
        ureq::post(&url)
            .set("Authorization", "Bearer alice-key")
            .timeout(Duration::from_secs(6))
            .send_json(body)
            .is_err()
    });
    let job = the_open_job(chain, &provider).await;
    assert!(waiting.join().expect("client thread"), "the client timed out");
    charged_for_delivered_only(chain, job, None, 400).await;
    engine_idle(metrics);
    assert_eq!(chain.balances(&alice).await.expect("balances").1, held_before, "nothing held");
}

/// A dev node, the demo adapter, a gateway (90-s timeout) and Bob's worker with its metrics on
/// a free port and `extra` flags: the processes stop when it is dropped.
struct Market {
    chain: ChainClient,
    http: String,
    adapter: u32,
    metrics: String,
    _procs: (Proc, Proc),
    _dir: tempfile::TempDir,
    _node: DevNode,
}

impl Market {
    async fn start(extra: &[&str]) -> Self {
        let node = DevNode::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let chain =
            ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");
        let adapter = demo_adapter(&chain, dir.path()).await;
        let (gateway, http, p2p) = gateway(&node.ws_url(), dir.path(), 90);
        let flags: Vec<&str> =
            ["--metrics", "127.0.0.1:0"].into_iter().chain(extra.iter().copied()).collect();
        let adapters = dir.path().join("adapters");
        let mut bob = worker_with(&node.ws_url(), "//Bob", dir.path(), &adapters, &p2p, &flags);
        let metrics = bob.wait_for("worker metrics:", 5);
        Self { chain, http, adapter, metrics, _procs: (bob, gateway), _dir: dir, _node: node }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_expires_abandoned_jobs_and_slashes_only_after_an_acknowledgement() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");
    let adapter = demo_adapter(&chain, dir.path()).await;
    short_deadlines(&chain, 4).await;
    // Ferdie registers a provider whose worker never comes.
    let (ferdie, alice, charlie) = (dev::ferdie(), dev::alice(), dev::charlie());
    let provider = account(&ferdie);
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
    chain
        .register_provider(&ferdie, &idle_terms(key, 2 * MILLI), 1_000 * OPEN)
        .await
        .expect("registers");
    chain.set_served_adapters(&ferdie, &provider, &[adapter]).await.expect("declares");
    let _keeper: Proc = keeper(&node.ws_url(), "//Charlie");
    let (bond, charlie_before) = (
        chain.balances(&provider).await.expect("balances").1,
        chain.balances(&account(&charlie)).await.expect("balances"),
    );
    let (alice_free, alice_held) = chain.balances(&account(&alice)).await.expect("balances");
    let from = best(&chain).await;

    // One job never acknowledged, one acknowledged and then left.
    let escrow = OPEN / 10;
    let never = chain.submit_job(&alice, adapter, [1; 32], 16, escrow, b"gw").await.expect("job");
    let left = chain.submit_job(&alice, adapter, [2; 32], 16, escrow, b"gw").await.expect("job");
    chain.acknowledge(&ferdie, left.job).await.expect("acknowledged");
    for job in [never.job, left.job] {
        closed(&chain, job, 90).await;
    }
    let expired = chain.expiries(BTreeSet::from([never.job, left.job])).await.expect("events");
    assert_eq!((expired[&never.job].refunded, expired[&never.job].slashed), (escrow, 0));
    let slashed = expired[&left.job].slashed;
    assert_eq!(expired[&left.job].refunded, escrow);
    assert_eq!(slashed, 1_000 * OPEN / 10, "the runtime's slash fraction of the bond");
    assert_eq!(chain.balances(&provider).await.expect("balances").1, bond - slashed);
    // Alice got both escrows back and the slash, less her two submissions' fees.
    let moved = flows(&chain, from, best(&chain).await).await;
    let alice_id = account(&alice);
    assert_eq!(moved.txs_of.get(&alice_id), Some(&2));
    let (free, held) = chain.balances(&alice_id).await.expect("balances");
    assert_eq!((free, held), (alice_free - moved.fees_of[&alice_id] + slashed, alice_held));
    // The keeper paid nothing for its expiries.
    assert_eq!(chain.balances(&account(&charlie)).await.expect("balances"), charlie_before);
}

#[test]
fn a_worker_with_no_adapters_says_so_and_registers_nothing() {
    // No node is needed: the worker stops before it connects to one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openledger-worker"))
        .args(["--chain-url", "ws://127.0.0.1:9", "--operator", "//Bob"])
        .output()
        .expect("the worker runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing to serve") && stderr.contains("--adapters"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_model_is_not_the_registered_base_model_refuses_to_serve_it() {
    use openledger_primitives::market::{BaseModelSpec, NumericFormat};
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(30)).await.expect("chain");
    // Every preset registers the embedded model as base model 0, on the CPU host path: what
    // the workers of every other test serve.
    let model = common::procs::model();
    let embedded = openledger_worker::base_model::weights_digest(&model).expect("hashed");
    let spec = |weights, format| Some(BaseModelSpec { weights, format });
    assert_eq!(chain.base_model(0).await.expect("read"), spec(embedded, NumericFormat::Host));
    assert_eq!(chain.base_model(3).await.expect("read"), None);
    let alice = dev::alice();
    chain.sudo_set_base_model(&alice, 3, spec([7; 32], NumericFormat::Host)).await.expect("set");
    chain
        .sudo_set_base_model(&alice, 4, spec(embedded, NumericFormat::CudaBf16))
        .await
        .expect("set");
    assert_eq!(chain.base_model(4).await.expect("read"), spec(embedded, NumericFormat::CudaBf16));
    // The VNNI / AMX host path's own format (code 2) goes through the runtime and back.
    chain
        .sudo_set_base_model(&alice, 5, spec(embedded, NumericFormat::HostVnni))
        .await
        .expect("set");
    assert_eq!(chain.base_model(5).await.expect("read"), spec(embedded, NumericFormat::HostVnni));

    let dir = tempfile::tempdir().expect("tempdir");
    let serve = |base_model: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_openledger-worker"))
            .args(["--chain-url", &node.ws_url(), "--operator", "//Bob", "--register"])
            .arg("--worker-key")
            .arg(dir.path().join("bob.key"))
            .arg("--model")
            .arg(&model)
            .arg("--adapters")
            .arg(dir.path())
            .args(["--base-model", base_model, "--threads", "1", "--kv-blocks", "64"])
            .output()
            .expect("the worker runs");
        assert!(!out.status.success(), "the worker served base model {base_model}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Another weights file registered under the id: refused, naming both digests.
    let stderr = serve("3");
    assert!(
        stderr.contains(&format!("0x{}", hex::encode([7u8; 32])))
            && stderr.contains(&format!("0x{}", hex::encode(embedded))),
        "{stderr}"
    );
    // The same file registered in another numeric format: refused, naming both.
    let stderr = serve("4");
    assert!(
        stderr.contains("numeric format cuda-bf16") && stderr.contains("computes in host"),
        "{stderr}"
    );
    // Neither start registered Bob as a provider.
    assert_eq!(chain.provider(&account(&dev::bob())).await.expect("read"), None);
}
