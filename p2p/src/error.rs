//! What can go wrong, for the caller to act on.

use std::{io, time::Duration};

use libp2p::{request_response::OutboundFailure, Multiaddr, PeerId};

use crate::wire::FrameTooLarge;

/// Errors of setting up a node and of its operations other than fetching payloads.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The bytes given are not an ed25519 key. Pass the 32-byte seed of the worker's signing
    /// key, or the 32-byte public key registered on-chain.
    #[error("not a valid ed25519 key")]
    InvalidKey,
    /// The transport (TCP, noise, yamux) could not be built.
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    /// A listen address was refused (unsupported protocol, or the port is taken).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address from [`P2pConfig::listen`](crate::P2pConfig::listen).
        addr: Multiaddr,
        /// Why, as the transport reported it.
        reason: String,
    },
    /// Dialling an address failed: nobody listens there, it is not a libp2p node, or its
    /// peer id is not the one the address names.
    #[error("cannot reach {addr}: {reason}")]
    Dial {
        /// The address dialled.
        addr: Multiaddr,
        /// Why, as the transport reported it.
        reason: String,
    },
    /// A payload larger than [`P2pConfig::max_payload_bytes`](crate::P2pConfig) was offered.
    #[error("payload of {size} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge {
        /// Size of the payload.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A token chunk larger than [`P2pConfig::max_chunk_bytes`](crate::P2pConfig) was sent,
    /// or refused by the gateway as larger than its own limit. Split the text into smaller
    /// chunks.
    #[error("token chunk of {size} bytes exceeds the {max}-byte limit")]
    ChunkTooLarge {
        /// Encoded size of the chunk.
        size: usize,
        /// The limit that refused it.
        max: usize,
    },
    /// The peer refused the request because this node sent too many; retry after a pause.
    #[error("peer {peer} refused the request: rate limited")]
    RateLimited {
        /// The refusing peer.
        peer: PeerId,
    },
    /// The gateway application is not consuming token events fast enough; retry later.
    #[error("peer {peer} is busy and dropped the request")]
    Busy {
        /// The busy peer.
        peer: PeerId,
    },
    /// The gateway cancelled the job (its client went away or asked to stop): stop sending.
    #[error("peer {peer} cancelled job {job}")]
    Cancelled {
        /// The cancelling gateway.
        peer: PeerId,
        /// The job.
        job: u64,
    },
    /// No answer within [`P2pConfig::request_timeout`](crate::P2pConfig).
    #[error("no answer from {peer} within {timeout:?}")]
    Timeout {
        /// The silent peer.
        peer: PeerId,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The peer could not be reached: no known address (dial it first, or list it in
    /// [`P2pConfig::bootstrap`](crate::P2pConfig)), or nobody answers there.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
    /// The peer was reached but did not answer properly: it closed the stream (as it does
    /// with a message over its size limit), does not speak the protocol, or answered
    /// something malformed.
    #[error("request to {peer} failed: {reason}")]
    RequestFailed {
        /// The peer.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
    /// A channel request of this size cannot be sent (its payload is over the limit).
    #[error("channel request of {size} bytes exceeds the {max}-byte limit")]
    ChannelRequestTooLarge {
        /// Encoded size of the request.
        size: usize,
        /// The limit that refused it.
        max: usize,
    },
    /// [`P2pHandle::answer_channel`](crate::P2pHandle::answer_channel) for a request that
    /// timed out, was answered already, or never came.
    #[error("no channel request {id} is waiting for an answer")]
    UnknownChannelRequest {
        /// The id given.
        id: u64,
    },
    /// The node's network task has stopped (shut down, or every handle dropped).
    #[error("the p2p network task has stopped")]
    Stopped,
}

/// Why a worker could not fetch a job's payload from its gateway.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The gateway holds this job's payload for another peer: this worker is not the one
    /// assigned to the job (or its peer id does not match its registered worker key).
    #[error("gateway {gateway} denied the payload of job {job} to this worker")]
    Denied {
        /// The gateway asked.
        gateway: PeerId,
        /// The job.
        job: u64,
    },
    /// The gateway holds no payload for this job: never offered, already withdrawn, or the
    /// wrong gateway.
    #[error("gateway {gateway} has no payload for job {job}")]
    Unknown {
        /// The gateway asked.
        gateway: PeerId,
        /// The job.
        job: u64,
    },
    /// The gateway sent a payload larger than
    /// [`P2pConfig::max_payload_bytes`](crate::P2pConfig); it was refused unread.
    #[error("payload from {gateway} refused: {size} bytes exceed the {max}-byte limit")]
    TooLarge {
        /// The gateway asked.
        gateway: PeerId,
        /// Size the gateway announced: the payload with its compact length and a one-byte
        /// variant index (the answer SCALE-encoded).
        size: usize,
        /// The limit that refused it: the largest payload's size counted the same way.
        max: usize,
    },
    /// The gateway refused because this worker sent too many requests; retry after a pause.
    #[error("gateway {gateway} refused the request: rate limited")]
    RateLimited {
        /// The gateway asked.
        gateway: PeerId,
    },
    /// No answer within [`P2pConfig::request_timeout`](crate::P2pConfig).
    #[error("no answer from gateway {gateway} within {timeout:?}")]
    Timeout {
        /// The gateway asked.
        gateway: PeerId,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The gateway could not be reached: no known address (dial it first, or list it in
    /// [`P2pConfig::bootstrap`](crate::P2pConfig)), or nobody answers there.
    #[error("gateway {gateway} unreachable: {reason}")]
    Unreachable {
        /// The gateway asked.
        gateway: PeerId,
        /// What failed.
        reason: String,
    },
    /// The gateway was reached but did not answer properly: it closed the stream, does not
    /// speak the protocol, or answered something malformed.
    #[error("payload request to gateway {gateway} failed: {reason}")]
    RequestFailed {
        /// The gateway asked.
        gateway: PeerId,
        /// What failed.
        reason: String,
    },
    /// The node's network task has stopped.
    #[error("the p2p network task has stopped")]
    Stopped,
}

/// How an outbound request failed at the transport level, before any answer was read.
#[derive(Debug)]
pub(crate) enum RequestFailure {
    Timeout,
    TooLarge(FrameTooLarge),
    Unreachable(String),
    Failed(String),
}

impl From<OutboundFailure> for RequestFailure {
    fn from(failure: OutboundFailure) -> Self {
        match failure {
            OutboundFailure::Timeout => Self::Timeout,
            OutboundFailure::DialFailure => Self::Unreachable(failure.to_string()),
            OutboundFailure::Io(error) => match FrameTooLarge::find(&error) {
                Some(too_large) => Self::TooLarge(too_large),
                None => Self::Failed(describe_io(&error)),
            },
            other => Self::Failed(other.to_string()),
        }
    }
}

fn describe_io(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => {
            "the peer closed the stream without answering (as it does with a message over its \
             size limit)"
                .into()
        },
        _ => error.to_string(),
    }
}

impl RequestFailure {
    pub(crate) fn into_fetch_error(self, gateway: PeerId, timeout: Duration) -> FetchError {
        match self {
            Self::Timeout => FetchError::Timeout { gateway, timeout },
            Self::TooLarge(FrameTooLarge { size, max }) => {
                FetchError::TooLarge { gateway, size, max }
            },
            Self::Unreachable(reason) => FetchError::Unreachable { gateway, reason },
            Self::Failed(reason) => FetchError::RequestFailed { gateway, reason },
        }
    }

    pub(crate) fn into_p2p_error(self, peer: PeerId, timeout: Duration) -> P2pError {
        match self {
            Self::Timeout => P2pError::Timeout { peer, timeout },
            Self::TooLarge(FrameTooLarge { size, max }) => P2pError::ChunkTooLarge { size, max },
            Self::Unreachable(reason) => P2pError::Unreachable { peer, reason },
            Self::Failed(reason) => P2pError::RequestFailed { peer, reason },
        }
    }
}
