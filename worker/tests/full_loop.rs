//! The whole system on loopback, as real processes: a dev node, `openledger-gateway`, and
//! two `openledger-worker`s running the embedded SmolLM2-135M-Instruct Q4_1 with two LoRA
//! adapters, each worker registering its provider at start-up. Ten concurrent OpenAI-style
//! requests for both adapters (one streamed) all get answers; every job settles on chain
//! through a receipt signed by its worker, and each adapter owner's balance grows by exactly
//! its share of the charges.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::Device;
use openledger_worker::chain::{blake2_256, ChainClient};
use openledger_worker::engine::{Engine, EngineConfig, ModelSource, Projection};
use serde_json::{json, Value};
use subxt::utils::AccountId32;
use subxt_signer::sr25519::dev;

use common::node::DevNode;
use common::{write_adapter, AdapterSpec};

const OPEN: u128 = 1_000_000_000_000_000_000;
const MILLI: u128 = OPEN / 1_000;

/// The embedded model (`scripts/setup.sh` fetches it; `scripts/env.sh` exports the path).
fn model() -> PathBuf {
    let path = std::env::var_os("OPENLEDGER_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/openledger/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(path.exists(), "the model {} is missing: run scripts/setup.sh", path.display());
    path
}

/// A child process killed when the test ends; its stdout lines arrive on a channel.
struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &'static str, mut command: Command) -> Proc {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn,openledger_worker=info")
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc { name, child, lines }
    }

    /// The first stdout line starting with `prefix`, without it.
    fn wait_for(&mut self, prefix: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                },
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!("{} printed no `{prefix}` within {secs} s (exit: {status:?})", self.name)
                },
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(node: &DevNode, dir: &Path) -> (Proc, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openledger-gateway"));
    cmd.args(["--chain-url", &node.ws_url(), "--http", "127.0.0.1:0"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .arg("--key")
        .arg(dir.join("gateway.key"))
        .args(["--api-key", "alice-key=//Alice", "--job-timeout-secs", "90"]);
    let mut proc = Proc::spawn("openledger-gateway", cmd);
    let p2p = proc.wait_for("gateway p2p:", 60);
    let http = proc.wait_for("gateway http:", 60);
    (proc, http, p2p)
}

fn worker(node: &DevNode, operator: &str, dir: &Path, adapters: &Path, gateway: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openledger-worker"));
    cmd.args(["--chain-url", &node.ws_url(), "--operator", operator])
        .arg("--worker-key")
        .arg(dir.join(format!("{}.key", operator.trim_start_matches('/'))))
        .arg("--model")
        .arg(model())
        .arg("--adapters")
        .arg(adapters)
        .args(["--gateway", gateway, "--register", "--price-milli", "2"])
        .args(["--threads", "1", "--kv-blocks", "512", "--heartbeat-secs", "6"]);
    let mut proc = Proc::spawn("openledger-worker", cmd);
    proc.wait_for("worker ready:", 120);
    proc
}

fn post(url: &str, body: Value) -> Result<Value, String> {
    ureq::post(url)
        .set("Authorization", "Bearer alice-key")
        .timeout(Duration::from_secs(120))
        .send_json(body)
        .map_err(|e| match e {
            ureq::Error::Status(code, r) => {
                format!("{code}: {}", r.into_string().unwrap_or_default())
            },
            other => other.to_string(),
        })?
        .into_json()
        .map_err(|e| e.to_string())
}

/// A streamed completion: the events' texts and the last event.
fn post_streamed(url: &str, body: Value) -> Result<(String, Value), String> {
    let response = ureq::post(url)
        .set("Authorization", "Bearer alice-key")
        .timeout(Duration::from_secs(120))
        .send_json(body)
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut last = Value::Null;
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Some(data) = line.strip_prefix("data:") else { continue };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok((text, last));
        }
        let event: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        text.push_str(event["choices"][0]["text"].as_str().unwrap_or_default());
        last = event;
    }
    Err("the stream ended without [DONE]".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_requests_over_two_workers_all_settle_and_pay_the_adapter_owners() {
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
    let dave_before = chain.free_balance(&AccountId32(dave.public_key().0)).await.expect("balance");
    let eve_before = chain.free_balance(&AccountId32(eve.public_key().0)).await.expect("balance");

    let (_gateway, http, p2p) = gateway(&node, dir.path());
    let _bob = worker(&node, "//Bob", dir.path(), &adapters_dir, &p2p);
    let _charlie = worker(&node, "//Charlie", dir.path(), &adapters_dir, &p2p);

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
    let dave_after = chain.free_balance(&AccountId32(dave.public_key().0)).await.expect("balance");
    let eve_after = chain.free_balance(&AccountId32(eve.public_key().0)).await.expect("balance");
    assert_eq!(dave_after - dave_before, owner_share(id_a));
    assert_eq!(eve_after - eve_before, owner_share(id_b));
}
