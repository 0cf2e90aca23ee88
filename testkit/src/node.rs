//! A real `openledger-node --dev` process on free loopback ports (its state in a temporary
//! directory unless persistent), killed when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The node binary: `$OPENLEDGER_NODE` (scripts/env.sh sets it), else the one built next to
/// this test in the same target directory (`cargo test --workspace` builds both).
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OPENLEDGER_NODE") {
        return PathBuf::from(path);
    }
    binary("openledger-node")
}

/// One of the workspace's binaries (`openledger-gateway`, `openledger-worker`, ...), built in
/// the same target directory as the running test; a test that needs one that is missing
/// stops with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --release --workspace` (or `scripts/build.sh`)",
        path.display()
    );
    path
}

/// A dev node, stopped when dropped.
pub struct DevNode {
    child: Child,
    /// The port its JSON-RPC server bound on 127.0.0.1, read from its own log.
    rpc_port: u16,
    base_path: Option<PathBuf>,
    /// The last lines the node wrote to stderr, for the message of a start that fails.
    log: Arc<Mutex<VecDeque<String>>>,
    /// The state directory of a non-persistent node: ours, not the node's `--tmp` one, so
    /// it is removed even when the node is killed (a killed node cannot clean up).
    _scratch: Option<tempfile::TempDir>,
}

/// How long a node may take from its start to answering JSON-RPC (genesis, the runtime's
/// compilation and the RPC server, on a machine busy with other tests).
const START_PATIENCE: Duration = Duration::from_secs(120);
/// How many of the node's last log lines a failed start shows.
const LOG_TAIL: usize = 40;

impl DevNode {
    /// Start a dev chain (state in a temporary directory) and wait until it answers JSON-RPC.
    pub fn start() -> Self {
        Self::launch(None, None)
    }

    /// Start a dev chain keeping its state in `base_path`, so it survives [`Self::restart`].
    pub fn start_persistent(base_path: &std::path::Path) -> Self {
        Self::launch(None, Some(base_path.to_path_buf()))
    }

    /// Kill the node and start it again on the same RPC port (and state, when persistent),
    /// so that clients holding its URL reconnect.
    pub fn restart(&mut self) {
        self.kill();
        *self = Self::launch(Some(self.rpc_port), self.base_path.clone());
    }

    /// The node binds its RPC port itself (`--rpc-port 0` on a first start): a port picked
    /// here and bound later could be taken in between by another test's listener, and the
    /// node then moves to a random port while a bare TCP check succeeds on the other
    /// listener (seen in CI: the client then waited 60 s for an answer that never came).
    /// Ready means: the node logged the address its server bound, and a `system_health`
    /// call to that address answered.
    fn launch(rpc_port: Option<u16>, base_path: Option<PathBuf>) -> Self {
        let binary = node_binary();
        assert!(
            binary.exists(),
            "the node binary {} does not exist: build it (scripts/build.sh) or set OPENLEDGER_NODE",
            binary.display()
        );
        let mut command = Command::new(&binary);
        command.args(["--dev", "--no-mdns", "--no-telemetry", "--no-prometheus"]);
        let scratch = match &base_path {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new().prefix("openledger-dev-").tempdir().expect("a temp dir"),
            ),
        };
        let state = base_path.as_deref().or(scratch.as_ref().map(|d| d.path()));
        if let Some(path) = state {
            command.arg("--base-path").arg(path);
        }
        let mut child = command
            .args(["--rpc-port", &rpc_port.unwrap_or(0).to_string()])
            .args(["--listen-addr", "/ip4/127.0.0.1/tcp/0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openledger-node starts");
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (bound_tx, bound) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&log);
        // Drains the node's stderr for its whole life (a full pipe would stop the node).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = rpc_server_port(&line) {
                    let _ = bound_tx.send(port);
                }
                let mut tail = lines.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut node = DevNode { child, rpc_port: 0, base_path, log, _scratch: scratch };
        let started = Instant::now();
        let port = loop {
            node.check_alive("before its JSON-RPC server started");
            match bound.recv_timeout(Duration::from_millis(200)) {
                Ok(port) => break port,
                Err(_) if started.elapsed() < START_PATIENCE => {},
                Err(_) => node.fail("did not start its JSON-RPC server"),
            }
        };
        if let Some(wanted) = rpc_port.filter(|&wanted| wanted != port) {
            node.fail(&format!(
                "restarted on RPC port {port}: its old port {wanted} was taken while it was down"
            ));
        }
        node.rpc_port = port;
        while !node.answers() {
            node.check_alive("before answering JSON-RPC");
            if started.elapsed() > START_PATIENCE {
                node.fail(&format!("did not answer system_health on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    /// Whether a `system_health` call over HTTP gets a result.
    fn answers(&self) -> bool {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "system_health", "params": []
        });
        ureq::post(&format!("http://127.0.0.1:{}", self.rpc_port))
            .timeout(Duration::from_secs(5))
            .send_json(body)
            .ok()
            .and_then(|r| r.into_json::<serde_json::Value>().ok())
            .is_some_and(|v| v.get("result").is_some())
    }

    fn check_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.fail(&format!("exited ({status}) {when}"));
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        self.kill();
        let tail = self.log.lock().map(|t| Vec::from(t.clone())).unwrap_or_default();
        panic!("the dev node {what}; its last log lines:\n{}", tail.join("\n"));
    }

    /// Its WebSocket RPC endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.rpc_port)
    }

    /// Kill the process (as a crash would) and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The 127.0.0.1 port in the node's "Running JSON-RPC server: addr=127.0.0.1:P,[::1]:Q"
/// line.
fn rpc_server_port(line: &str) -> Option<u16> {
    let (_, addrs) = line.split_once("Running JSON-RPC server: addr=")?;
    addrs
        .split([',', ' '])
        .find_map(|addr| addr.strip_prefix("127.0.0.1:"))
        .and_then(|port| port.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::rpc_server_port;

    #[test]
    fn the_rpc_port_is_read_from_the_nodes_log_line() {
        let line =
            "2026-12-07 17:14:30 Running JSON-RPC server: addr=127.0.0.1:38163,[::1]:42495    ";
        assert_eq!(rpc_server_port(line), Some(38163));
        assert_eq!(rpc_server_port("Running JSON-RPC server: addr=[::1]:42495"), None);
        assert_eq!(rpc_server_port("Imported #1"), None);
    }
}
