//! Nodes on 127.0.0.1 for the integration tests.

#![allow(dead_code)] // Each test binary uses part of this.

use std::time::Duration;

use openledger_p2p::{
    keypair_from_ed25519_secret, spawn, Keypair, Multiaddr, P2pConfig, P2pEvent, P2pHandle, PeerId,
};
use tokio::sync::mpsc;

/// A running node and its event stream.
pub struct Node {
    pub handle: P2pHandle,
    pub events: mpsc::Receiver<P2pEvent>,
}

impl Node {
    pub fn peer_id(&self) -> PeerId {
        self.handle.local_peer_id()
    }

    /// The node's listen address, with its `/p2p/<peer id>` suffix.
    pub async fn address(&self) -> Multiaddr {
        let addrs = self.handle.listen_addrs().await.unwrap();
        let addr = addrs.into_iter().next().expect("node listens somewhere");
        addr.with_p2p(self.peer_id()).unwrap()
    }

    /// The next event that is not about connections opening or closing.
    pub async fn next_app_event(&mut self) -> P2pEvent {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
                .await
                .expect("an event within 5 s")
                .expect("node still running");
            match event {
                P2pEvent::PeerConnected { .. } | P2pEvent::PeerDisconnected { .. } => continue,
                other => return other,
            }
        }
    }
}

/// A configuration listening on a fresh loopback port, with short timeouts.
pub fn config(keypair: Keypair) -> P2pConfig {
    let mut config = P2pConfig::new(keypair);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.request_timeout = Duration::from_secs(3);
    config
}

/// A node whose identity is the ed25519 key with secret `[seed; 32]`.
pub fn node(seed: u8, tweak: impl FnOnce(&mut P2pConfig)) -> Node {
    let mut config = config(keypair_from_ed25519_secret([seed; 32]).unwrap());
    tweak(&mut config);
    let (handle, events) = spawn(config).unwrap();
    Node { handle, events }
}

impl Node {
    /// A node with default settings whose identity is the ed25519 key with this secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let (handle, events) = spawn(config(keypair_from_ed25519_secret(secret).unwrap())).unwrap();
        Node { handle, events }
    }
}

/// A gateway, and a worker connected to it.
pub async fn gateway_and_worker(
    gateway_config: impl FnOnce(&mut P2pConfig),
    worker_config: impl FnOnce(&mut P2pConfig),
) -> (Node, Node) {
    let gateway = node(1, gateway_config);
    let worker = node(2, worker_config);
    let seen = worker.handle.dial(gateway.address().await).await.unwrap();
    assert_eq!(seen, gateway.peer_id());
    (gateway, worker)
}

/// Stops every node and checks that each stopped.
pub async fn stop(nodes: impl IntoIterator<Item = Node>) {
    for node in nodes {
        node.handle.shutdown().await;
        assert!(node.handle.listen_addrs().await.is_err(), "node still running");
    }
}
