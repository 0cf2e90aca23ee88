//! A real `openledger-node --dev` process on free loopback ports (its state in a temporary
//! directory unless persistent), killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
    rpc_port: u16,
    p2p_port: u16,
    base_path: Option<PathBuf>,
    /// The state directory of a non-persistent node: ours, not the node's `--tmp` one, so
    /// it is removed even when the node is killed (a killed node cannot clean up).
    _scratch: Option<tempfile::TempDir>,
}

impl DevNode {
    /// Start a dev chain (state in a temporary directory) and wait for its RPC port.
    pub fn start() -> Self {
        Self::launch(free_port(), free_port(), None)
    }

    /// Start a dev chain keeping its state in `base_path`, so it survives [`Self::restart`].
    pub fn start_persistent(base_path: &std::path::Path) -> Self {
        Self::launch(free_port(), free_port(), Some(base_path.to_path_buf()))
    }

    /// Kill the node and start it again on the same ports (and state, when persistent).
    pub fn restart(&mut self) {
        self.kill();
        *self = Self::launch(self.rpc_port, self.p2p_port, self.base_path.clone());
    }

    fn launch(rpc_port: u16, p2p_port: u16, base_path: Option<PathBuf>) -> Self {
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
        let child = command
            .args(["--rpc-port", &rpc_port.to_string()])
            .args(["--listen-addr", &format!("/ip4/127.0.0.1/tcp/{p2p_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openledger-node starts");
        let node = DevNode { child, rpc_port, p2p_port, base_path, _scratch: scratch };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", rpc_port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "the node's RPC never opened");
            std::thread::sleep(Duration::from_millis(200));
        }
        node
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
