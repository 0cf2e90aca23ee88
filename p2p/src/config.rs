//! How a node is set up: its identity, where it listens, whom it dials, and its limits.

use std::time::Duration;

use libp2p::{
    identity::{self, ed25519, Keypair},
    Multiaddr, PeerId,
};

use crate::P2pError;

/// Configuration of one node (worker or gateway), given to [`spawn`](crate::spawn).
///
/// Build it with [`P2pConfig::new`] and adjust the public fields; every limit has a default
/// suited to one gateway serving many workers.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// The node's identity. For a worker, this is its receipt-signing key (see
    /// [`keypair_from_ed25519_secret`]), so that its peer id matches the worker key
    /// registered on-chain.
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`. A worker that only dials its
    /// gateways may leave this empty.
    pub listen: Vec<Multiaddr>,
    /// Addresses dialled once at start-up (typically the gateways, with a `/p2p/<peer id>`
    /// suffix so that later requests can redial them by peer id).
    pub bootstrap: Vec<Multiaddr>,
    /// Largest payload this node offers or accepts, in bytes.
    pub max_payload_bytes: usize,
    /// Largest encoded token chunk this node sends or accepts, in bytes.
    pub max_chunk_bytes: usize,
    /// Incoming requests (both protocols together) accepted per second from one peer, with
    /// bursts of the same size; the excess is answered `RateLimited`.
    pub requests_per_second_per_peer: u32,
    /// How long any request (dialling included) may take before it fails with a timeout.
    pub request_timeout: Duration,
}

impl P2pConfig {
    /// Default largest payload: 1 MiB.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
    /// Default largest token chunk: 64 KiB.
    pub const DEFAULT_MAX_CHUNK_BYTES: usize = 64 << 10;
    /// Default per-peer request rate: generous enough for a worker streaming many jobs'
    /// tokens to one gateway.
    pub const DEFAULT_REQUESTS_PER_SECOND_PER_PEER: u32 = 200;
    /// Default request timeout.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// A configuration with `keypair`, no listen or bootstrap addresses, and default limits.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
            max_chunk_bytes: Self::DEFAULT_MAX_CHUNK_BYTES,
            requests_per_second_per_peer: Self::DEFAULT_REQUESTS_PER_SECOND_PER_PEER,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The libp2p identity of a worker whose ed25519 receipt-signing key has this 32-byte secret
/// (seed). The local copy of the secret is zeroed once the keypair is built.
pub fn keypair_from_ed25519_secret(mut secret: [u8; 32]) -> Result<Keypair, P2pError> {
    let secret =
        ed25519::SecretKey::try_from_bytes(&mut secret).map_err(|_| P2pError::InvalidKey)?;
    Ok(Keypair::from(ed25519::Keypair::from(secret)))
}

/// The peer id of the node whose identity is the ed25519 key with this public half: what a
/// gateway compares a connecting worker's peer id with, given the worker key registered
/// on-chain. Fails if the bytes are not a valid ed25519 public key (no node can have it).
pub fn peer_id_of_ed25519_public(public: &[u8; 32]) -> Result<PeerId, P2pError> {
    let public = ed25519::PublicKey::try_from_bytes(public).map_err(|_| P2pError::InvalidKey)?;
    Ok(identity::PublicKey::from(public).to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_public_halves_give_the_same_peer_id() {
        let secret = [7u8; 32];
        let keypair = keypair_from_ed25519_secret(secret).unwrap();
        let ed = keypair.clone().try_into_ed25519().unwrap();
        let from_public = peer_id_of_ed25519_public(&ed.public().to_bytes()).unwrap();
        assert_eq!(keypair.public().to_peer_id(), from_public);
        // Deterministic: the same secret is the same identity.
        assert_eq!(keypair_from_ed25519_secret(secret).unwrap().public(), keypair.public());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let config = P2pConfig::new(keypair_from_ed25519_secret([0x5a; 32]).unwrap());
        let shown = format!("{config:?}");
        assert!(!shown.contains("90, 90, 90"), "{shown}");
        assert!(!shown.to_lowercase().contains(&"5a".repeat(8)), "{shown}");
    }

    #[test]
    fn a_non_point_is_not_a_public_key() {
        // y = 2 is not on the curve.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert!(matches!(peer_id_of_ed25519_public(&bytes), Err(P2pError::InvalidKey)));
    }
}
