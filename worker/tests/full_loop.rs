//! The whole system on loopback, as real processes: a dev node, `openledger-gateway`, and
//! two `openledger-worker`s running the embedded SmolLM2-135M-Instruct Q4_1 with two LoRA
//! adapters, each worker registering its provider at start-up. Ten concurrent OpenAI-style
//! requests for both adapters (one streamed) all get answers; every job settles on chain
//! through a receipt signed by its worker, and each adapter owner's balance grows by exactly
//! its share of the charges.

use openledger_testkit as common;

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use openledger_chain_client::{blake2_256, ChainClient};
use openledger_engine::{Engine, EngineConfig, ModelSource, Projection};
use serde_json::{json, Value};
use subxt::utils::AccountId32;
use subxt_signer::sr25519::dev;

use common::node::DevNode;
use common::procs::{gateway, model, post, post_streamed, worker};
use common::{ledger, write_adapter, AdapterSpec};

use openledger_chain_client::OPEN;
const MILLI: u128 = OPEN / 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_requests_over_two_workers_all_settle_and_pay_the_adapter_owners() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");

    // Two adapters for SmolLM2 (rank 8 on q/v, rank 16 on all seven), registered by Dave and
    // Eve; both workers hold both.
    let config = Engine::load(&ModelSource::Gguf(model()), EngineConfig::default(), &Device::Cpu)
        .expect("the model loads")
        .model()
        .config()
        .clone();
    let adapters_dir = dir.path().join("adapters");
    let a = write_adapter(
        &adapters_dir.join("support"),
        &config,
        &AdapterSpec { r: 8, alpha: 16.0, rslora: false, targets: &[Projection::Q, Projection::V] },
        1,
    );
    let b = write_adapter(
        &adapters_dir.join("legal"),
        &config,
        &AdapterSpec { r: 16, alpha: 16.0, rslora: false, targets: &Projection::ALL },
        2,
    );
    let hash = |d: &Path| {
        blake2_256(&std::fs::read(d.join("adapter_model.safetensors")).expect("weights"))
    };
    let (dave, eve) = (dev::dave(), dev::eve());
    let id_a = chain
        .register_adapter(&dave, 0, hash(&a), 8, 0b101, MILLI, &[])
        .await
        .expect("adapter a registers");
    let id_b = chain
        .register_adapter(&eve, 0, hash(&b), 16, 0b111_1111, 3 * MILLI, &[])
        .await
        .expect("adapter b registers");
    let (_gateway, http, p2p) = gateway(&node.ws_url(), dir.path(), 90);
    let _bob = worker(&node.ws_url(), "//Bob", dir.path(), &adapters_dir, &p2p);
    let _charlie = worker(&node.ws_url(), "//Charlie", dir.path(), &adapters_dir, &p2p);
    // Both providers are registered (their bonds held): balances from here on move only by
    // fees and payouts.
    let first_block = chain.best().await.expect("best").block_number();
    let account = |k: &subxt_signer::sr25519::Keypair| AccountId32(k.public_key().0);
    let (alice, bob, charlie) =
        (account(&dev::alice()), account(&dev::bob()), account(&dev::charlie()));
    let (dave, eve) = (account(&dave), account(&eve));
    let mut before = std::collections::BTreeMap::new();
    for who in [&alice, &bob, &charlie, &dave, &eve] {
        before.insert(*who, chain.free_balance_at(who, first_block).await.expect("balance"));
    }

    let models: Value =
        ureq::get(&format!("{http}/models")).call().expect("models").into_json().expect("json");
    let ids: Vec<&str> =
        models["data"].as_array().expect("list").iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(
        ids.contains(&format!("adapter-{id_a}").as_str())
            && ids.contains(&format!("adapter-{id_b}").as_str()),
        "{models}"
    );

    // Ten concurrent requests: completions and chat, both adapters, one streamed.
    let mut threads = Vec::new();
    for i in 0..10u32 {
        let http = http.clone();
        let adapter = if i % 2 == 0 { id_a } else { id_b };
        threads.push(std::thread::spawn(move || {
            let model = format!("adapter-{adapter}");
            if i == 0 {
                let body = json!({"model": model, "prompt": "The capital of France is", "max_tokens": 8, "stream": true});
                let (text, last) = post_streamed(&format!("{http}/completions"), body)?;
                return Ok::<_, String>((adapter, text, last["openledger"]["job"].as_u64()));
            }
            let (url, body) = if i % 3 == 0 {
                (format!("{http}/chat/completions"), json!({"model": model, "max_tokens": 8,
                    "messages": [{"role": "user", "content": format!("Say a number after {i}.")}]}))
            } else {
                (format!("{http}/completions"), json!({"model": model, "prompt": format!("Item {i}:"), "max_tokens": 8}))
            };
            let response = post(&url, body)?;
            let choice = &response["choices"][0];
            let text = choice["text"].as_str().or(choice["message"]["content"].as_str()).unwrap_or_default().to_string();
            assert!(response["usage"]["completion_tokens"].as_u64().unwrap_or(0) >= 1, "{response}");
            Ok((adapter, text, response["openledger"]["job"].as_u64()))
        }));
    }
    let mut jobs = Vec::new();
    for t in threads {
        let (adapter, text, job) = t.join().expect("request thread").expect("a response");
        assert!(!text.is_empty(), "an empty answer for adapter {adapter}");
        jobs.push((adapter, job.expect("the response names its job")));
    }

    // Every job settles (its receipt lands and the job record is deleted).
    let deadline = Instant::now() + Duration::from_secs(90);
    for (_, job) in &jobs {
        while chain.job(*job).await.expect("reads").is_some() {
            assert!(Instant::now() < deadline, "job {job} never settled");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Each adapter owner got exactly its 10% of each of its adapter's charges (Permill
    // rounds to the nearest planck, halves down).
    let settled =
        chain.settlements(jobs.iter().map(|(_, j)| *j).collect()).await.expect("settlements");
    assert_eq!(settled.len(), jobs.len(), "a JobSettled event for every job");
    let owner_share = |adapter| -> u128 {
        jobs.iter().filter(|(a, _)| *a == adapter).map(|(_, j)| (settled[j].charged + 4) / 10).sum()
    };
    let last_block = chain.best().await.expect("best").block_number();
    let flows = ledger::flows(&chain, first_block, last_block).await;
    let change = |who: &AccountId32, before: u128| {
        let (chain, who) = (chain.clone(), *who);
        async move {
            let after = chain.free_balance_at(&who, last_block).await.expect("balance");
            after as i128 - before as i128
        }
    };
    assert_eq!(change(&dave, before[&dave]).await, owner_share(id_a) as i128);
    assert_eq!(change(&eve, before[&eve]).await, owner_share(id_b) as i128);

    // Every payee, to the planck: each provider got its split of its jobs less the fees of
    // its heartbeats, acknowledgements and receipts; the treasury its split; and Alice, who
    // pays through the gateway's API key, exactly the jobs' charges plus her fees (the
    // unused escrow came back).
    assert_eq!(flows.charges.len(), jobs.len(), "a FeeSplit event for every job: {flows:?}");
    for (job, charge) in &flows.charges {
        assert_eq!(*charge, settled[job].charged, "job {job}");
    }
    for who in [&bob, &charlie, &dave, &eve] {
        assert_eq!(change(who, before[who]).await, flows.net(who), "{who}");
    }
    assert!(
        flows.paid_to.contains_key(&bob) && flows.paid_to.contains_key(&charlie),
        "both providers served: {flows:?}"
    );
    let treasury = *flows
        .paid_to
        .keys()
        .find(|a| ![&bob, &charlie, &dave, &eve].contains(a))
        .expect("the treasury was paid");
    let treasury_before = chain.free_balance_at(&treasury, first_block).await.expect("balance");
    assert_eq!(change(&treasury, treasury_before).await, flows.net(&treasury));
    let charges: u128 = flows.charges.values().sum();
    assert_eq!(
        change(&alice, before[&alice]).await,
        -(charges as i128) - flows.fees_of.get(&alice).copied().unwrap_or(0) as i128
    );

    // Every answer was kept for verifiers by the worker that served it, and
    // `openledger-worker verify` recomputes them all with the same model and adapters.
    let records: Vec<std::path::PathBuf> = ["Bob", "Charlie"]
        .iter()
        .flat_map(|n| std::fs::read_dir(dir.path().join(format!("{n}-answers"))).expect("answers"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(records.len(), jobs.len(), "{records:?}");
    for (_, job) in &jobs {
        assert!(records.iter().any(|p| p.ends_with(format!("job-{job}.json"))), "job {job}");
    }
    let verify = |records: &[std::path::PathBuf]| {
        let out = std::process::Command::new(common::node::binary("openledger-worker"))
            .arg("verify")
            .args(records)
            .arg("--model")
            .arg(model())
            .arg("--adapters")
            .arg(&adapters_dir)
            .args(["--threads", "1"])
            .output()
            .expect("openledger-worker verify runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = verify(&records);
    assert!(ok && text.contains(&format!("all {} answers verified", jobs.len())), "{text}");
    // An answer served with adapter a but claimed as adapter b is refused.
    let (_, job_a) = jobs.iter().find(|(a, _)| *a == id_a).expect("a job of adapter a");
    let path = records.iter().find(|p| p.ends_with(format!("job-{job_a}.json"))).expect("kept");
    let mut record: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("record")).expect("json");
    record["adapter"] = json!({"id": id_b, "content_hash": format!("0x{}", hex::encode(hash(&b)))});
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, record.to_string()).expect("write");
    let (ok, text) = verify(&[forged]);
    assert!(!ok && text.contains("refused") && text.contains("1 of 1 answers refused"), "{text}");
}
