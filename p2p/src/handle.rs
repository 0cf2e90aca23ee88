//! The rest of the program's side of the network task: a cloneable handle that sends it
//! commands, and the events it sends back.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{FetchError, P2pError},
    wire::{self, ChannelRequest, ChannelResponse, TokenChunk},
};

/// What the network task tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum P2pEvent {
    /// A peer sent a chunk of a job's output (gateway side). It has been acknowledged to the
    /// sender once it is in this channel. `from` is authenticated (noise): the gateway
    /// should accept chunks for a job only from the worker assigned to it.
    Tokens {
        /// The sending worker.
        from: PeerId,
        /// The chunk, as sent.
        chunk: TokenChunk,
    },
    /// A job's payload was delivered to the peer allowed to fetch it (gateway side): the
    /// gateway may now withdraw it.
    PayloadFetched {
        /// The job.
        job: u64,
        /// The worker that fetched it.
        by: PeerId,
    },
    /// A job was cancelled through [`P2pHandle::cancel_job`] (gateway side). Every chunk of it
    /// acknowledged to its worker came before this event in the channel; none comes after.
    JobCancelled {
        /// The job.
        job: u64,
    },
    /// A peer asked something on the payment-channel path. The application answers with
    /// [`P2pHandle::answer_channel`] and this `id` before the request timeout; `from` is
    /// authenticated (noise).
    ChannelRequest {
        /// The asking peer.
        from: PeerId,
        /// What to answer with [`P2pHandle::answer_channel`].
        id: u64,
        /// The request, as sent.
        request: ChannelRequest,
    },
    /// The first connection to a peer opened.
    PeerConnected {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
}

/// A request from a handle to the network task.
pub(crate) enum Command {
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, P2pError>>,
    },
    OfferPayload {
        job: u64,
        payload: Vec<u8>,
        allowed: PeerId,
        reply: oneshot::Sender<()>,
    },
    WithdrawPayload {
        job: u64,
        reply: oneshot::Sender<()>,
    },
    CancelJob {
        job: u64,
        reply: oneshot::Sender<()>,
    },
    FetchPayload {
        gateway: PeerId,
        job: u64,
        reply: oneshot::Sender<Result<Vec<u8>, FetchError>>,
    },
    SendTokens {
        gateway: PeerId,
        chunk: TokenChunk,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    AskChannel {
        peer: PeerId,
        request: ChannelRequest,
        reply: oneshot::Sender<Result<ChannelResponse, P2pError>>,
    },
    AnswerChannel {
        id: u64,
        response: ChannelResponse,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on a running node. Cheap to clone; the node stops when [`P2pHandle::shutdown`]
/// is called or every handle is dropped.
#[derive(Clone, Debug)]
pub struct P2pHandle {
    pub(crate) local_peer_id: PeerId,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) request_timeout: Duration,
    pub(crate) max_payload_bytes: usize,
    pub(crate) max_chunk_bytes: usize,
}

impl P2pHandle {
    /// This node's peer id (derived from its keypair).
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The addresses this node listens on, once every configured listener is up (so a port 0
    /// listener shows its real port).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, P2pError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Connects to `addr` and returns the peer id the remote proved it holds. With a
    /// `/p2p/<peer id>` suffix the connection fails unless the remote is that peer, and the
    /// address is remembered so requests to the peer can redial it later.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, P2pError> {
        let timeout = self.request_timeout;
        let dialled = addr.clone();
        match tokio::time::timeout(timeout, self.ask(|reply| Command::Dial { addr, reply })).await {
            Ok(answer) => answer?,
            Err(_) => Err(P2pError::Dial {
                addr: dialled,
                reason: format!("no connection within {timeout:?}"),
            }),
        }
    }

    /// Gateway side: holds `payload` for `job`, to be fetched by `allowed` only. Other peers
    /// asking for it are denied. Once this returns, a fetch by `allowed` finds it. Offering a
    /// job again replaces its payload.
    pub async fn offer_payload(
        &self,
        job: u64,
        payload: Vec<u8>,
        allowed: PeerId,
    ) -> Result<(), P2pError> {
        if payload.len() > self.max_payload_bytes {
            return Err(P2pError::PayloadTooLarge {
                size: payload.len(),
                max: self.max_payload_bytes,
            });
        }
        self.ask(|reply| Command::OfferPayload { job, payload, allowed, reply }).await
    }

    /// Gateway side: forgets `job`'s payload (dropping the node's copy); later fetches get
    /// [`FetchError::Unknown`]. Withdrawing an unknown job does nothing.
    pub async fn withdraw_payload(&self, job: u64) -> Result<(), P2pError> {
        self.ask(|reply| Command::WithdrawPayload { job, reply }).await
    }

    /// Gateway side: cancels `job`: its payload is withdrawn and every later token chunk for it
    /// is answered [`P2pError::Cancelled`], so its worker stops generating and charges only
    /// what was delivered. The node remembers the last [`CANCELLED_JOBS_REMEMBERED`](crate::CANCELLED_JOBS_REMEMBERED) cancelled
    /// jobs.
    pub async fn cancel_job(&self, job: u64) -> Result<(), P2pError> {
        self.ask(|reply| Command::CancelJob { job, reply }).await
    }

    /// Worker side: fetches `job`'s payload from `gateway`, dialling it by peer id if not
    /// connected (its address must be known: from [`P2pConfig::bootstrap`](crate::P2pConfig)
    /// or an earlier [`dial`](Self::dial)). Fails within the configured request timeout.
    pub async fn fetch_payload(&self, gateway: PeerId, job: u64) -> Result<Vec<u8>, FetchError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::FetchPayload { gateway, job, reply };
        if self.commands.send(command).await.is_err() {
            return Err(FetchError::Stopped);
        }
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(FetchError::Stopped),
            Err(_) => Err(FetchError::Timeout { gateway, timeout: self.request_timeout }),
        }
    }

    /// Worker side: sends one chunk of a job's output to `gateway` and waits for its
    /// acknowledgement. Send a job's chunks one after the other, in `seq` order.
    pub async fn send_tokens(&self, gateway: PeerId, chunk: TokenChunk) -> Result<(), P2pError> {
        let size = wire::encoded_len(&chunk);
        if size > self.max_chunk_bytes {
            return Err(P2pError::ChunkTooLarge { size, max: self.max_chunk_bytes });
        }
        let timeout = self.request_timeout;
        let ask = self.ask(|reply| Command::SendTokens { gateway, chunk, reply });
        match tokio::time::timeout(timeout, ask).await {
            Ok(answer) => answer?,
            Err(_) => Err(P2pError::Timeout { peer: gateway, timeout }),
        }
    }

    /// Asks `peer` something on the payment-channel path and waits for its answer (within
    /// the request timeout), dialling it by peer id if not connected.
    pub async fn ask_channel(
        &self,
        peer: PeerId,
        request: ChannelRequest,
    ) -> Result<ChannelResponse, P2pError> {
        let size = wire::encoded_len(&request);
        let max = wire::channel_request_max(self.max_payload_bytes);
        if size > max {
            return Err(P2pError::ChannelRequestTooLarge { size, max });
        }
        let timeout = self.request_timeout;
        let ask = self.ask(|reply| Command::AskChannel { peer, request, reply });
        match tokio::time::timeout(timeout, ask).await {
            Ok(answer) => answer?,
            Err(_) => Err(P2pError::Timeout { peer, timeout }),
        }
    }

    /// Answers the [`P2pEvent::ChannelRequest`] numbered `id`.
    pub async fn answer_channel(&self, id: u64, response: ChannelResponse) -> Result<(), P2pError> {
        self.ask(|reply| Command::AnswerChannel { id, response, reply }).await?
    }

    /// Stops the node: closes its listeners and connections, and ends its event stream.
    /// Returns once the network task has finished. Other handles then get
    /// [`P2pError::Stopped`].
    pub async fn shutdown(&self) {
        // Already stopped is stopped.
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }

    /// Sends a command carrying a reply channel and waits for the reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| P2pError::Stopped)?;
        answer.await.map_err(|_| P2pError::Stopped)
    }
}
