//! The binaries as child processes, and HTTP calls to the gateway.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The embedded model (`scripts/setup.sh` fetches it; `scripts/env.sh` exports the path).
pub fn model() -> PathBuf {
    model_if_present()
        .unwrap_or_else(|| panic!("the embedded model is missing: run scripts/setup.sh"))
}

/// The embedded model for tests that a bare `cargo test` may skip: `OPENLEDGER_MODEL` (set
/// by `scripts/env.sh`, which the test command sources: then the file must exist), or the
/// path `scripts/fetch-model.sh` extracts to if it is there; `None` (printing SKIPPED)
/// otherwise.
pub fn model_if_present() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OPENLEDGER_MODEL").map(PathBuf::from) {
        assert!(path.exists(), "OPENLEDGER_MODEL={} does not exist", path.display());
        return Some(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let path =
        home.join(".cache/openledger/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch-model.sh", path.display());
        None
    }
}

/// A child process killed when the test ends; its stdout lines arrive on a channel.
pub struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read by [`Proc::wait_for`] that did not match what it waited for.
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(name: &'static str, mut command: Command) -> Proc {
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
        Proc { name, child, lines, seen: Vec::new() }
    }

    /// The first stdout line starting with `prefix`, without it (lines read while waiting for
    /// an earlier prefix count too).
    pub fn wait_for(&mut self, prefix: &str, secs: u64) -> String {
        if let Some(i) = self.seen.iter().position(|l| l.starts_with(prefix)) {
            let line = self.seen.remove(i);
            return line[prefix.len()..].trim().to_string();
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                    self.seen.push(line);
                },
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!("{} printed no `{prefix}` within {secs} s (exit: {status:?})", self.name)
                },
            }
        }
    }
}

impl Proc {
    /// Kill it now (SIGKILL, as a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `openledger-gateway` on free loopback ports with API key `alice-key` (paid by Alice),
/// submitting each request as a job on chain (`--no-channels`); returns it, its API base URL
/// and its libp2p address.
pub fn gateway(ws: &str, dir: &Path, job_timeout_secs: u64) -> (Proc, String, String) {
    gateway_with(ws, dir, job_timeout_secs, &[])
}

/// [`gateway`] with `extra` flags.
pub fn gateway_with(
    ws: &str,
    dir: &Path,
    job_timeout_secs: u64,
    extra: &[&str],
) -> (Proc, String, String) {
    let mut flags = vec!["--no-channels"];
    flags.extend_from_slice(extra);
    launch_gateway(ws, dir, job_timeout_secs, &flags)
}

/// `openledger-gateway` as it runs by default: requests sent on payment channels (its store
/// in `dir`), with `extra` flags.
pub fn channel_gateway(
    ws: &str,
    dir: &Path,
    job_timeout_secs: u64,
    extra: &[&str],
) -> (Proc, String, String) {
    launch_gateway(ws, dir, job_timeout_secs, extra)
}

fn launch_gateway(
    ws: &str,
    dir: &Path,
    job_timeout_secs: u64,
    extra: &[&str],
) -> (Proc, String, String) {
    let mut cmd = Command::new(crate::node::binary("openledger-gateway"));
    cmd.args(["--chain-url", ws, "--http", "127.0.0.1:0"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .arg("--key")
        .arg(dir.join("gateway.key"))
        .arg("--channel-store")
        .arg(dir.join("gateway-channels.redb"))
        .args(["--api-key", "alice-key=//Alice"])
        .args(["--job-timeout-secs", &job_timeout_secs.to_string()])
        .args(extra);
    let mut proc = Proc::spawn("openledger-gateway", cmd);
    let p2p = proc.wait_for("gateway p2p:", 60);
    let http = proc.wait_for("gateway http:", 60);
    (proc, http, p2p)
}

/// `openledger-worker` for provider `operator` (registered at start-up) serving the PEFT
/// directories in `adapters`, dialling `gateway`; returns once it is ready.
pub fn worker(ws: &str, operator: &str, dir: &Path, adapters: &Path, gateway: &str) -> Proc {
    worker_with(ws, operator, dir, adapters, gateway, &[])
}

/// [`worker`] with `extra` flags (a later flag replaces an earlier one).
pub fn worker_with(
    ws: &str,
    operator: &str,
    dir: &Path,
    adapters: &Path,
    gateway: &str,
    extra: &[&str],
) -> Proc {
    let name = operator.trim_start_matches('/');
    let mut cmd = Command::new(crate::node::binary("openledger-worker"));
    cmd.args(["--chain-url", ws, "--operator", operator])
        .arg("--worker-key")
        .arg(dir.join(format!("{name}.key")))
        .arg("--channel-store")
        .arg(dir.join(format!("{name}-channels.redb")))
        .arg("--answers-dir")
        .arg(dir.join(format!("{name}-answers")))
        .arg("--model")
        .arg(model())
        .arg("--adapters")
        .arg(adapters)
        .args(["--gateway", gateway, "--register", "--price-milli", "2"])
        .args(["--threads", "1", "--kv-blocks", "512", "--heartbeat-secs", "6"])
        .args(extra);
    let mut proc = Proc::spawn("openledger-worker", cmd);
    proc.wait_for("worker ready:", 120);
    proc
}

/// `openledger-worker keeper` signing with `operator`, polling every 500 ms.
pub fn keeper(ws: &str, operator: &str) -> Proc {
    let mut cmd = Command::new(crate::node::binary("openledger-worker"));
    cmd.args(["--chain-url", ws, "--operator", operator, "keeper", "--poll-ms", "500"]);
    let mut proc = Proc::spawn("openledger-worker keeper", cmd);
    proc.wait_for("keeper ready:", 60);
    proc
}

/// A gateway answer: HTTP status, `Retry-After` header (if any) and JSON body.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

/// POST `body` to `url` with Alice's API key, whatever the status.
pub fn request(url: &str, body: Value) -> Answer {
    let response = match ureq::post(url)
        .set("Authorization", "Bearer alice-key")
        .timeout(Duration::from_secs(120))
        .send_json(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url} failed: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("retry-after").map(str::to_string);
    let body = response.into_json().unwrap_or(Value::Null);
    Answer { status, retry_after, body }
}

pub fn post(url: &str, body: Value) -> Result<Value, String> {
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
pub fn post_streamed(url: &str, body: Value) -> Result<(String, Value), String> {
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

/// Held by each test that starts a node and worker processes, so the tests of one binary run
/// them one at a time (two cores cannot run several models and chains at once in time).
///
/// It is held for the whole test, across its awaits, on purpose: each test owns its own
/// runtime, so a test waiting for it blocks only its own thread, never the holder.
#[must_use = "the tests run one at a time only while this is held"]
pub struct Serial {
    _guard: std::sync::MutexGuard<'static, ()>,
}

/// Wait for the other process-starting tests of this binary to finish, and hold them off.
pub fn serial() -> Serial {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    Serial { _guard: SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) }
}
