//! The gateway's second mode, for jobs a user submits on chain themselves (from polkadot.js):
//! the user uploads the payload with `PUT /v1/jobs/{id}/payload` and gets the answer. The
//! worker here starts from a TOML config file (flags on its command line win) and serves
//! Prometheus metrics, which must count the job it served.

use openledger_testkit as common;

use std::time::Duration;

use candle_core::Device;
use openledger_chain_client::{blake2_256, ChainClient};
use openledger_engine::{write_random_adapter, Engine, EngineConfig, ModelSource, Projection};
use openledger_p2p::payload::{self as job_payload, JobPayload};
use openledger_p2p::PeerId;
use serde_json::Value;
use subxt::utils::AccountId32;
use subxt_signer::sr25519::dev;

use common::node::DevNode;
use common::procs::{gateway, model, Proc};

use openledger_chain_client::OPEN;
const MILLI: u128 = OPEN / 1_000;

/// `PUT` raw bytes; the status and the JSON body (success or OpenAI-style error).
fn put(url: &str, body: &[u8]) -> (u16, Value) {
    let response = match ureq::put(url).timeout(Duration::from_secs(120)).send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("PUT {url}: {e}"),
    };
    let status = response.status();
    (status, response.into_json().expect("a JSON body"))
}

fn get(url: &str) -> String {
    ureq::get(url).call().expect("GET").into_string().expect("text")
}

/// The value of the sample `name` (with its labels, exactly as exposed) in a metrics text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_on_chain_is_answered_through_an_uploaded_payload() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");

    // Dave's adapter, written to disk and registered.
    let engine = Engine::load(&ModelSource::Gguf(model()), EngineConfig::default(), &Device::Cpu)
        .expect("the model loads");
    let adapters = dir.path().join("adapters");
    let path = adapters.join("faq");
    write_random_adapter(&path, engine.model().config(), 8, &[Projection::Q, Projection::V], 5)
        .expect("adapter written");
    drop(engine);
    let weights = std::fs::read(path.join("adapter_model.safetensors")).expect("weights");
    let adapter = chain
        .register_adapter(&dev::dave(), 0, blake2_256(&weights), 8, 0b101, MILLI, &[])
        .await
        .expect("adapter registers");

    let (_gateway, http, p2p) = gateway(&node.ws_url(), dir.path(), 60);
    let gateway_peer: PeerId =
        p2p.rsplit("/p2p/").next().expect("peer id").parse().expect("a peer id");

    // The worker reads its settings from a file; the command line overrides the price.
    let config = dir.path().join("worker.toml");
    let toml = format!(
        r#"chain-url = "{ws}"
operator = "//Bob"
worker-key = "{key}"
model = "{model}"
adapters = "{adapters}"
gateway = ["{p2p}"]
register = true
price-milli = 7
gpu-name = "config-file-gpu"
threads = 1
kv-blocks = 256
heartbeat-secs = 6
metrics = "127.0.0.1:0"
"#,
        ws = node.ws_url(),
        key = dir.path().join("bob.key").display(),
        model = model().display(),
        adapters = adapters.display(),
    );
    std::fs::write(&config, toml).expect("config written");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_openledger-worker"));
    command.arg("--config").arg(&config).args(["--price-milli", "2"]);
    command.arg("--channel-store").arg(dir.path().join("bob-channels.redb"));
    command.arg("--answers-dir").arg(dir.path().join("bob-answers"));
    let mut worker = Proc::spawn("openledger-worker", command);
    let metrics_url = worker.wait_for("worker metrics:", 120);
    worker.wait_for("worker ready:", 120);
    let bob = AccountId32(dev::bob().public_key().0);
    let terms = chain.provider(&bob).await.expect("reads").expect("Bob is registered");
    assert_eq!(terms.price_per_1k, 2 * MILLI, "the command line wins over the file");
    assert_eq!(terms.spec.model.as_slice(), b"config-file-gpu", "the file's settings apply");

    // Eve submits the job herself, naming the gateway; then uploads the payload.
    let payload = JobPayload {
        messages: Vec::new(),
        context: Vec::new(),
        prompt: "The capital of France is".into(),
        max_tokens: 24,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 7,
        stop: Vec::new(),
    }
    .to_bytes();
    let assigned = chain
        .submit_job(
            &dev::eve(),
            adapter,
            job_payload::hash(&payload),
            24,
            OPEN,
            &gateway_peer.to_bytes(),
        )
        .await
        .expect("the job is matched");
    let job = assigned.job;
    let url = |job: u64| format!("{http}/jobs/{job}/payload");

    // A payload that is not the one hashed on chain is refused, and the job stays open.
    let (status, body) = put(&url(job), b"{\"prompt\": \"something else\"}");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "payload_hash_mismatch", "{body}");
    assert!(chain.job(job).await.expect("reads").is_some(), "the job is still open");
    // No such job.
    let (status, body) = put(&url(job + 1000), &payload);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "job_not_open", "{body}");

    // The right payload: answered, and the answer's hash is the one the receipt settles.
    let (status, body) = put(&url(job), &payload);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"], job, "{body}");
    let text = body["text"].as_str().expect("text");
    assert_eq!(
        body["output_hash"].as_str().expect("hash"),
        format!("0x{}", hex::encode(job_payload::hash(text.as_bytes())))
    );
    let completion = body["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!(completion > 0 && completion <= 24, "{body}");

    // The receipt lands: the job settles for the tokens served, at Bob's price.
    let started = std::time::Instant::now();
    let settled = loop {
        let found = chain.settlements([job].into()).await.expect("reads events");
        if let Some(s) = found.get(&job) {
            break s.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "job {job} never settled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(u64::from(settled.output_tokens), completion);
    assert_eq!(settled.output_hash.0, job_payload::hash(text.as_bytes()));
    assert!(chain.job(job).await.expect("reads").is_none(), "a settled job is closed");
    let (status, body) = put(&url(job), &payload);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("job_not_open")));

    // The metrics count what happened.
    let metrics = loop {
        let text = get(&metrics_url);
        if sample(&text, "openledger_worker_jobs_total{state=\"settled\"}") == Some(1.0) {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no settled job in:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        sample(&metrics, "openledger_worker_jobs_total{state=\"acknowledged\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "openledger_worker_tokens_generated_total"),
        Some(completion as f64),
        "{metrics}"
    );
    assert!(sample(&metrics, "openledger_worker_chain_block").unwrap_or(0.0) > 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "openledger_worker_running_jobs"), Some(0.0), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("openledger_worker_adapter_resident{") && l.contains("adapter=")),
        "adapter residency is labelled by adapter:\n{metrics}"
    );
}
