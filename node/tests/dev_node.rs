//! The real node, started as a process on free loopback ports: it produces and finalizes
//! blocks, serves JSON-RPC and metrics, and refuses bad chain specs with a clear message.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

const NODE: &str = env!("CARGO_BIN_EXE_openledger-node");

/// The port number that follows `prefix` in a log line.
fn port_after(line: &str, prefix: &str) -> Option<u16> {
    let (_, rest) = line.split_once(prefix)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A node process that is killed when the test ends, pass or fail.
struct DevNode {
    child: Child,
    rpc: String,
    metrics: String,
    /// The node's state: a killed `--tmp` node would leave its directory behind.
    _base: tempfile::TempDir,
}

impl DevNode {
    /// The node binds every port itself (port 0) and logs what it bound: ports picked here
    /// and bound seconds later could be taken in between by another test's listener.
    fn start() -> Self {
        let base = tempfile::tempdir().expect("a temporary directory");
        let mut child = Command::new(NODE)
            .args(["--dev", "--no-mdns", "--no-telemetry"])
            .arg("--base-path")
            .arg(base.path())
            .args(["--rpc-port", "0", "--prometheus-port", "0"])
            .args(["--listen-addr", "/ip4/127.0.0.1/tcp/0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openledger-node starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        // Drains the node's log for its whole life (a full pipe would stop it).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut rpc, mut metrics) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        while rpc.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!("the node did not log its RPC and Prometheus addresses in time");
            };
            if let Some(port) = port_after(&line, "Running JSON-RPC server: addr=127.0.0.1:") {
                rpc = Some(format!("http://127.0.0.1:{port}"));
            }
            if let Some(port) = port_after(&line, "Prometheus exporter started at 127.0.0.1:") {
                metrics = Some(format!("http://127.0.0.1:{port}/metrics"));
            }
        }
        DevNode {
            child,
            rpc: rpc.unwrap_or_default(),
            metrics: metrics.unwrap_or_default(),
            _base: base,
        }
    }

    fn call(&self, method: &str, params: Value) -> Option<Value> {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        let resp: Value = ureq::post(&self.rpc)
            .timeout(Duration::from_secs(5))
            .send_json(body)
            .ok()?
            .into_json()
            .ok()?;
        resp.get("result").cloned()
    }

    fn block_number(header: &Value) -> u64 {
        let hex = header["number"].as_str().expect("header has a number");
        u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex block number")
    }

    /// Polls until `check` holds or the deadline passes.
    fn wait_for(&mut self, what: &str, secs: u64, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node exited with {status} while waiting for {what}");
            }
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("timed out after {secs} s waiting for {what}");
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_node_produces_and_finalizes_blocks() {
    let mut node = DevNode::start();
    node.wait_for("block 3", 90, |n| {
        n.call("chain_getHeader", json!([]))
            .map(|h| DevNode::block_number(&h) >= 3)
            .unwrap_or(false)
    });
    node.wait_for("a finalized block", 60, |n| {
        let Some(hash) = n.call("chain_getFinalizedHead", json!([])) else { return false };
        n.call("chain_getHeader", json!([hash]))
            .map(|h| DevNode::block_number(&h) >= 1)
            .unwrap_or(false)
    });

    let props = node.call("system_properties", json!([])).expect("system_properties");
    assert_eq!(props["tokenSymbol"], "OPEN");
    assert_eq!(props["tokenDecimals"], 18);
    assert_eq!(props["ss58Format"], 7011);
    let chain = node.call("system_chain", json!([])).expect("system_chain");
    assert_eq!(chain, "OpenLedger Development");

    let metrics = ureq::get(&node.metrics)
        .timeout(Duration::from_secs(5))
        .call()
        .expect("prometheus endpoint answers")
        .into_string()
        .expect("metrics text");
    assert!(metrics.contains("substrate_block_height"), "block height metric exported");
}

fn run_to_exit(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(NODE)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openledger-node starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("node did not exit on bad input {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr text");
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn missing_chain_spec_is_refused_naming_the_file() {
    let path = "/nonexistent/openledger/spec.json";
    let (code, stderr) = run_to_exit(&["--chain", path, "--tmp"]);
    assert_ne!(code, 0);
    assert!(stderr.contains(path), "error names the file: {stderr}");
}

#[test]
fn malformed_chain_spec_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken-spec.json");
    std::fs::write(&path, b"{ \"name\": \"half a spec\", ").expect("write spec");
    let path = path.to_str().expect("utf-8 path");
    let (code, stderr) = run_to_exit(&["--chain", path, "--tmp"]);
    assert_ne!(code, 0);
    assert!(stderr.contains(path), "error names the file: {stderr}");
}

#[test]
fn exported_local_spec_has_four_authorities_and_token_properties() {
    let out = Command::new(NODE)
        .args(["export-chain-spec", "--chain", "local"])
        .output()
        .expect("export-chain-spec runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spec: Value = serde_json::from_slice(&out.stdout).expect("spec is JSON");
    assert_eq!(spec["properties"]["tokenSymbol"], "OPEN");
    assert_eq!(spec["properties"]["tokenDecimals"], 18);
    assert_eq!(
        spec["genesis"]["runtimeGenesis"]["patch"]["aura"]["authorities"].as_array().map(Vec::len),
        Some(4)
    );
}
