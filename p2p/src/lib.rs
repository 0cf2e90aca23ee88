//! The network layer between OpenLedger workers and gateways.
//!
//! A gateway holds a user's prompt (the *payload* of an on-chain job); the worker the chain
//! assigned to the job dials the gateway, pulls the payload, and streams the output tokens
//! back. This crate carries exactly that over libp2p (TCP, noise, yamux), and knows nothing
//! of the chain or the engine: the worker and gateway binaries decide *what* to fetch and
//! send, this crate moves the bytes and enforces who may have them.
//!
//! - Identity: a worker's libp2p identity is its ed25519 receipt-signing key
//!   ([`keypair_from_ed25519_secret`]), so a gateway can compare a peer id with the worker
//!   key registered on-chain ([`peer_id_of_ed25519_public`]).
//! - `/openledger/payload/1` (request-response): the gateway [offers](P2pHandle::offer_payload)
//!   a job's payload to one peer; only that peer [fetches](P2pHandle::fetch_payload) it,
//!   others are denied. Payloads live in memory until [withdrawn](P2pHandle::withdraw_payload).
//! - `/openledger/tokens/1` (request-response): the worker [sends](P2pHandle::send_tokens)
//!   [`TokenChunk`]s in order; each is acknowledged once the gateway application has it as a
//!   [`P2pEvent::Tokens`].
//! - Bounds: every message has a size limit checked before it is buffered, incoming
//!   requests are rate-limited per peer, and every request times out. Payload contents and
//!   keys never reach the logs.
//!
//! - [`payload`]: what travels: the job payload both sides build, parse and hash, with no
//!   engine types in it.
//!
//! One tokio task owns the libp2p `Swarm`; [`P2pHandle`] talks to it over channels.

#![warn(missing_docs)]

mod behaviour;
mod config;
mod error;
mod handle;
mod node;
pub mod payload;
mod rate;
mod wire;

pub use config::{keypair_from_ed25519_secret, peer_id_of_ed25519_public, P2pConfig};
pub use error::{FetchError, P2pError};
pub use handle::{P2pEvent, P2pHandle};
pub use libp2p::{identity::Keypair, Multiaddr, PeerId};
pub use node::{spawn, CANCELLED_JOBS_REMEMBERED};
pub use payload::JobPayload;
pub use wire::{
    ChannelRequest, ChannelResponse, Finish, TokenChunk, CHANNEL_PROTOCOL, CHANNEL_ROUTE_BIT,
    PAYLOAD_PROTOCOL, REFUSED_PREFIX, TOKENS_PROTOCOL,
};
