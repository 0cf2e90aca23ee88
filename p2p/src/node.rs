//! The network task: it alone owns the [`Swarm`], and serves the handles' commands and the
//! swarm's events in one loop.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    core::ConnectedPoint,
    identify, noise,
    request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel},
    swarm::{dial_opts::DialOpts, ConnectionId, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    error::{FetchError, P2pError, RequestFailure},
    handle::{Command, P2pEvent, P2pHandle},
    rate::RateLimiter,
    wire::{
        ChannelRequest, ChannelResponse, PayloadRequest, PayloadResponse, TokenChunk,
        TokensResponse,
    },
    P2pConfig,
};

/// Commands waiting for the network task; senders wait when it is full.
const COMMAND_QUEUE: usize = 256;
/// Events waiting for the application in the channel returned by [`spawn`].
const EVENT_QUEUE: usize = 1024;
/// Events the task holds beyond [`EVENT_QUEUE`] while the application catches up. Token
/// chunks beyond this are answered `Busy` instead of being buffered.
const EVENT_BACKLOG: usize = 1024;
/// How many cancelled jobs a gateway's node remembers (their late chunks are refused).
pub const CANCELLED_JOBS_REMEMBERED: usize = 4096;
/// Connections with no request in flight are closed after this long; the peer is redialled
/// by its remembered address on the next request.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a node: builds its swarm, starts listening and dialling the bootstrap addresses,
/// and spawns the network task on the current tokio runtime.
///
/// Returns the handle to command it and the receiver of its [`P2pEvent`]s. A node that needs
/// no events (a worker) may drop the receiver.
pub fn spawn(config: P2pConfig) -> Result<(P2pHandle, mpsc::Receiver<P2pEvent>), P2pError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| P2pError::Transport("spawn must be called inside a tokio runtime".into()))?;
    let local_peer_id = config.keypair.public().to_peer_id();
    let mut swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|key| Behaviour::new(key.public(), &config))
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();

    let mut listeners_starting = HashSet::new();
    for addr in &config.listen {
        let listener = swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        listeners_starting.insert(listener);
    }
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
    let handle = P2pHandle {
        local_peer_id,
        commands: commands_tx,
        request_timeout: config.request_timeout,
        max_payload_bytes: config.max_payload_bytes,
        max_chunk_bytes: config.max_chunk_bytes,
    };
    let mut node = EventLoop {
        swarm,
        commands,
        events,
        backlog: VecDeque::new(),
        offers: HashMap::new(),
        cancelled: VecDeque::new(),
        rate: RateLimiter::new(config.requests_per_second_per_peer),
        listeners_starting,
        waiting_for_listeners: Vec::new(),
        dials: HashMap::new(),
        dialling: HashMap::new(),
        parked: HashMap::new(),
        fetches: HashMap::new(),
        sends: HashMap::new(),
        sending_job: HashMap::new(),
        serving: HashMap::new(),
        asks: HashMap::new(),
        answers: HashMap::new(),
        answer_ids: HashMap::new(),
        next_answer: 0,
        request_timeout: config.request_timeout,
    };
    for addr in &config.bootstrap {
        if let Err(error) = node.dial(addr.clone()) {
            warn!(%addr, %error, "cannot dial bootstrap address");
        }
    }
    info!(peer = %local_peer_id, "p2p node starting");
    runtime.spawn(node.run());
    Ok((handle, events_rx))
}

/// A payload held for one job, for one peer.
struct Offer {
    payload: Vec<u8>,
    allowed: PeerId,
}

/// Payload contents stay out of logs, even at trace level.
impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offer")
            .field("payload_bytes", &self.payload.len())
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// Where the answer to a handle's command goes.
type Reply<T> = oneshot::Sender<T>;

/// A payload fetch in flight: the job it asked for, and who waits for the payload.
struct PendingFetch {
    job: u64,
    reply: Reply<Result<Vec<u8>, FetchError>>,
}

/// What woke the event loop.
enum Step {
    Command(Option<Command>),
    Swarm(SwarmEvent<BehaviourEvent>),
    /// Room in the event channel for the head of the backlog (`None`: receiver dropped).
    Deliver(Option<mpsc::OwnedPermit<P2pEvent>>),
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<P2pEvent>,
    /// Events not yet in the channel, each token chunk with its unanswered acknowledgement:
    /// a worker's `send_tokens` returns only once its chunk reached the application.
    backlog: VecDeque<(P2pEvent, Option<ResponseChannel<TokensResponse>>)>,
    offers: HashMap<u64, Offer>,
    /// Jobs the gateway application cancelled, oldest first (at most
    /// [`CANCELLED_JOBS_REMEMBERED`]): their token chunks are answered `Cancelled`.
    cancelled: VecDeque<u64>,
    rate: RateLimiter,
    listeners_starting: HashSet<libp2p::core::transport::ListenerId>,
    waiting_for_listeners: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    /// Dials made through [`P2pHandle::dial`], waiting for their outcome.
    dials: HashMap<ConnectionId, (Multiaddr, Reply<Result<PeerId, P2pError>>)>,
    /// Our dials in flight to a known peer id.
    dialling: HashMap<ConnectionId, PeerId>,
    /// Requests to a peer that is being dialled, held until the dial ends: request-response
    /// fails a request it issues while another dial to the same peer is in flight.
    parked: HashMap<PeerId, Vec<Command>>,
    fetches: HashMap<OutboundRequestId, PendingFetch>,
    sends: HashMap<OutboundRequestId, Reply<Result<(), P2pError>>>,
    /// The job of each token chunk in flight (to name it when the gateway cancels it).
    sending_job: HashMap<OutboundRequestId, u64>,
    /// Payload responses on their way, to report [`P2pEvent::PayloadFetched`] once sent.
    serving: HashMap<InboundRequestId, u64>,
    /// Channel requests of ours in flight, and who waits for their answers.
    asks: HashMap<OutboundRequestId, Reply<Result<ChannelResponse, P2pError>>>,
    /// Channel requests the application has to answer, by the id its event carries.
    answers: HashMap<u64, ResponseChannel<ChannelResponse>>,
    /// The id of each unanswered inbound channel request (to forget it when it fails).
    answer_ids: HashMap<InboundRequestId, u64>,
    next_answer: u64,
    request_timeout: Duration,
}

impl EventLoop {
    async fn run(mut self) {
        let mut stopped_by = None;
        loop {
            // Each branch only borrows what it polls; the step is handled once they are gone.
            let step = tokio::select! {
                command = self.commands.recv() => Step::Command(command),
                event = self.swarm.select_next_some() => Step::Swarm(event),
                permit = self.events.clone().reserve_owned(), if !self.backlog.is_empty() => {
                    Step::Deliver(permit.ok())
                }
            };
            match step {
                Step::Command(Some(Command::Shutdown { reply })) => {
                    stopped_by = Some(reply);
                    break;
                },
                Step::Command(Some(command)) => self.on_command(command),
                Step::Command(None) => break,
                Step::Swarm(event) => self.on_swarm_event(event),
                Step::Deliver(Some(permit)) => {
                    if let Some((event, ack)) = self.backlog.pop_front() {
                        permit.send(event);
                        if let Some(ack) = ack {
                            let tokens = &mut self.swarm.behaviour_mut().tokens;
                            let _ = tokens.send_response(ack, TokensResponse::Ack);
                        }
                    }
                },
                Step::Deliver(None) => self.refuse_backlog(),
            }
        }
        info!(peer = %self.swarm.local_peer_id(), "p2p node stopped");
        // Close listeners and connections before telling the caller we are done.
        drop(self.swarm);
        if let Some(reply) = stopped_by {
            let _ = reply.send(());
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                if self.listeners_starting.is_empty() {
                    let _ = reply.send(self.swarm.listeners().cloned().collect());
                } else {
                    self.waiting_for_listeners.push(reply);
                }
            },
            Command::Dial { addr, reply } => match self.dial(addr.clone()) {
                Ok(connection) => {
                    self.dials.insert(connection, (addr, reply));
                },
                Err(error) => {
                    let _ = reply.send(Err(P2pError::Dial { addr, reason: error.to_string() }));
                },
            },
            Command::OfferPayload { job, payload, allowed, reply } => {
                debug!(job, bytes = payload.len(), %allowed, "payload offered");
                self.offers.insert(job, Offer { payload, allowed });
                let _ = reply.send(());
            },
            Command::WithdrawPayload { job, reply } => {
                if self.offers.remove(&job).is_some() {
                    debug!(job, "payload withdrawn");
                }
                let _ = reply.send(());
            },
            Command::CancelJob { job, reply } => {
                self.offers.remove(&job);
                if !self.cancelled.contains(&job) {
                    if self.cancelled.len() >= CANCELLED_JOBS_REMEMBERED {
                        self.cancelled.pop_front();
                    }
                    self.cancelled.push_back(job);
                }
                debug!(job, "job cancelled");
                self.enqueue(P2pEvent::JobCancelled { job }, None);
                let _ = reply.send(());
            },
            Command::FetchPayload { gateway, .. } | Command::SendTokens { gateway, .. }
                if self.is_dialling(gateway) =>
            {
                self.parked.entry(gateway).or_default().push(command);
            },
            Command::AskChannel { peer, .. } if self.is_dialling(peer) => {
                self.parked.entry(peer).or_default().push(command);
            },
            Command::AskChannel { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().channel.send_request(&peer, request);
                self.asks.insert(id, reply);
            },
            Command::AnswerChannel { id, response, reply } => {
                let result = match self.answers.remove(&id) {
                    None => Err(P2pError::UnknownChannelRequest { id }),
                    Some(channel) => {
                        self.answer_ids.retain(|_, a| *a != id);
                        self.swarm
                            .behaviour_mut()
                            .channel
                            .send_response(channel, response)
                            .map_err(|_| P2pError::UnknownChannelRequest { id })
                    },
                };
                let _ = reply.send(result);
            },
            Command::FetchPayload { gateway, job, reply } => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .payload
                    .send_request(&gateway, PayloadRequest { job });
                self.fetches.insert(request, PendingFetch { job, reply });
            },
            Command::SendTokens { gateway, chunk, reply } => {
                let job = chunk.job;
                let request = self.swarm.behaviour_mut().tokens.send_request(&gateway, chunk);
                self.sends.insert(request, reply);
                self.sending_job.insert(request, job);
            },
            // Handled by the loop itself.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            },
        }
    }

    /// Dials `addr`, remembering its peer id (from a `/p2p` suffix) to redial it later.
    fn dial(&mut self, addr: Multiaddr) -> Result<ConnectionId, libp2p::swarm::DialError> {
        let opts = DialOpts::from(addr.clone());
        let connection = opts.connection_id();
        let peer = opts.get_peer_id();
        if let Some(peer) = peer {
            self.swarm.add_peer_address(peer, addr);
        }
        self.swarm.dial(opts)?;
        if let Some(peer) = peer {
            self.dialling.insert(connection, peer);
        }
        Ok(connection)
    }

    /// Whether requests to `peer` should wait for a dial of ours to finish.
    fn is_dialling(&self, peer: PeerId) -> bool {
        !self.swarm.is_connected(&peer) && self.dialling.values().any(|p| *p == peer)
    }

    /// A dial ended: requests parked for `peer` go out (over the new connection, or through
    /// request-response's own dial, which reports the failure).
    fn dial_ended(&mut self, connection: ConnectionId, peer: Option<PeerId>) {
        let dialled = self.dialling.remove(&connection);
        let Some(peer) = peer.or(dialled) else { return };
        if self.is_dialling(peer) {
            return;
        }
        for command in self.parked.remove(&peer).unwrap_or_default() {
            self.on_command(command);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Payload(event)) => self.on_payload_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Tokens(event)) => self.on_tokens_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Channel(event)) => self.on_channel_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                debug!(peer = %peer_id, protocol = %info.protocol_version, agent = %info.agent_version, "identified");
            },
            SwarmEvent::Behaviour(_) => {},
            SwarmEvent::NewListenAddr { listener_id, address } => {
                info!(%address, "listening");
                self.listener_started(listener_id);
            },
            SwarmEvent::ListenerClosed { listener_id, .. } => self.listener_started(listener_id),
            SwarmEvent::ListenerError { listener_id, error } => {
                warn!(%error, "listener failed");
                self.listener_started(listener_id);
            },
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    // Lets requests redial this peer once the connection idles out.
                    self.swarm.add_peer_address(peer_id, address.clone());
                }
                if let Some((_, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                self.dial_ended(connection_id, Some(peer_id));
                if num_established.get() == 1 {
                    self.enqueue(P2pEvent::PeerConnected { peer: peer_id }, None);
                }
            },
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                debug!(peer = ?peer_id, %error, "dial failed");
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(P2pError::Dial { addr, reason: error.to_string() }));
                }
                self.dial_ended(connection_id, None);
            },
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                if num_established == 0 {
                    self.rate.forget(&peer_id);
                    self.enqueue(P2pEvent::PeerDisconnected { peer: peer_id }, None);
                }
            },
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                debug!(%send_back_addr, %error, "incoming connection failed");
            },
            _ => {},
        }
    }

    fn listener_started(&mut self, listener: libp2p::core::transport::ListenerId) {
        if self.listeners_starting.remove(&listener) && self.listeners_starting.is_empty() {
            let addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
            for reply in self.waiting_for_listeners.drain(..) {
                let _ = reply.send(addrs.clone());
            }
        }
    }

    fn on_payload_event(
        &mut self,
        event: request_response::Event<PayloadRequest, PayloadResponse>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message: Message::Request { request_id, request, channel },
                ..
            } => {
                let job = request.job;
                let response = if !self.rate.allow(peer, Instant::now()) {
                    debug!(%peer, job, "payload request rate limited");
                    PayloadResponse::RateLimited
                } else {
                    match self.offers.get(&job) {
                        None => PayloadResponse::Unknown,
                        Some(offer) if offer.allowed != peer => {
                            info!(%peer, job, "payload denied to a peer other than the assigned one");
                            PayloadResponse::Denied
                        },
                        Some(offer) => {
                            self.serving.insert(request_id, job);
                            PayloadResponse::Payload(offer.payload.clone())
                        },
                    }
                };
                if self.swarm.behaviour_mut().payload.send_response(channel, response).is_err() {
                    self.serving.remove(&request_id);
                    debug!(%peer, job, "payload requester went away before the answer");
                }
            },
            Event::Message {
                peer, message: Message::Response { request_id, response }, ..
            } => {
                let Some(PendingFetch { job, reply }) = self.fetches.remove(&request_id) else {
                    return;
                };
                let result = match response {
                    PayloadResponse::Payload(payload) => Ok(payload),
                    PayloadResponse::Denied => Err(FetchError::Denied { gateway: peer, job }),
                    PayloadResponse::Unknown => Err(FetchError::Unknown { gateway: peer, job }),
                    PayloadResponse::RateLimited => Err(FetchError::RateLimited { gateway: peer }),
                };
                let _ = reply.send(result);
            },
            Event::OutboundFailure { peer, request_id, error, .. } => {
                let Some(PendingFetch { job, reply }) = self.fetches.remove(&request_id) else {
                    return;
                };
                debug!(%peer, job, %error, "payload fetch failed");
                let error =
                    RequestFailure::from(error).into_fetch_error(peer, self.request_timeout);
                let _ = reply.send(Err(error));
            },
            Event::InboundFailure { peer, request_id, error, .. } => {
                self.serving.remove(&request_id);
                debug!(%peer, %error, "inbound payload request failed");
            },
            Event::ResponseSent { peer, request_id, .. } => {
                if let Some(job) = self.serving.remove(&request_id) {
                    debug!(%peer, job, "payload delivered");
                    self.enqueue(P2pEvent::PayloadFetched { job, by: peer }, None);
                }
            },
        }
    }

    fn on_tokens_event(&mut self, event: request_response::Event<TokenChunk, TokensResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                if self.cancelled.contains(&request.job) {
                    debug!(%peer, job = request.job, "token chunk for a cancelled job");
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .tokens
                        .send_response(channel, TokensResponse::Cancelled);
                } else if self.rate.allow(peer, Instant::now()) {
                    self.enqueue(P2pEvent::Tokens { from: peer, chunk: request }, Some(channel));
                } else {
                    debug!(%peer, job = request.job, "token chunk rate limited");
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .tokens
                        .send_response(channel, TokensResponse::RateLimited);
                }
            },
            Event::Message {
                peer, message: Message::Response { request_id, response }, ..
            } => {
                let job = self.sending_job.remove(&request_id).unwrap_or_default();
                let Some(reply) = self.sends.remove(&request_id) else { return };
                let result = match response {
                    TokensResponse::Ack => Ok(()),
                    TokensResponse::RateLimited => Err(P2pError::RateLimited { peer }),
                    TokensResponse::Busy => Err(P2pError::Busy { peer }),
                    TokensResponse::Cancelled => Err(P2pError::Cancelled { peer, job }),
                };
                let _ = reply.send(result);
            },
            Event::OutboundFailure { peer, request_id, error, .. } => {
                self.sending_job.remove(&request_id);
                let Some(reply) = self.sends.remove(&request_id) else { return };
                debug!(%peer, %error, "token chunk not delivered");
                let _ = reply.send(Err(
                    RequestFailure::from(error).into_p2p_error(peer, self.request_timeout)
                ));
            },
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound token chunk failed");
            },
            Event::ResponseSent { .. } => {},
        }
    }

    fn on_channel_event(
        &mut self,
        event: request_response::Event<ChannelRequest, ChannelResponse>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message: Message::Request { request_id, request, channel },
                ..
            } => {
                let refusal = if !self.rate.allow(peer, Instant::now()) {
                    Some(ChannelResponse::RateLimited)
                } else if self.events.is_closed() || self.backlog.len() >= EVENT_BACKLOG {
                    Some(ChannelResponse::Busy)
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    debug!(%peer, ?refusal, "channel request refused by the node");
                    let _ = self.swarm.behaviour_mut().channel.send_response(channel, refusal);
                    return;
                }
                let id = self.next_answer;
                self.next_answer += 1;
                self.answers.insert(id, channel);
                self.answer_ids.insert(request_id, id);
                self.enqueue(P2pEvent::ChannelRequest { from: peer, id, request }, None);
            },
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(reply) = self.asks.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            },
            Event::OutboundFailure { peer, request_id, error, .. } => {
                let Some(reply) = self.asks.remove(&request_id) else { return };
                debug!(%peer, %error, "channel request failed");
                let _ = reply.send(Err(
                    RequestFailure::from(error).into_p2p_error(peer, self.request_timeout)
                ));
            },
            Event::InboundFailure { peer, request_id, error, .. } => {
                // Timed out unanswered, or the asker went away: the answer can no longer go.
                if let Some(id) = self.answer_ids.remove(&request_id) {
                    self.answers.remove(&id);
                }
                debug!(%peer, %error, "inbound channel request failed");
            },
            Event::ResponseSent { request_id, .. } => {
                self.answer_ids.remove(&request_id);
            },
        }
    }

    /// Queues an event for the application, with the acknowledgement owed for it if any.
    fn enqueue(&mut self, event: P2pEvent, ack: Option<ResponseChannel<TokensResponse>>) {
        if self.events.is_closed() || self.backlog.len() >= EVENT_BACKLOG {
            if let Some(ack) = ack {
                let _ = self.swarm.behaviour_mut().tokens.send_response(ack, TokensResponse::Busy);
            }
            if !self.events.is_closed() {
                warn!("application is not consuming p2p events; dropping one");
            }
            return;
        }
        self.backlog.push_back((event, ack));
    }

    /// The application dropped its receiver: nothing queued can be delivered.
    fn refuse_backlog(&mut self) {
        for (_, ack) in self.backlog.drain(..) {
            if let Some(ack) = ack {
                let _ = self.swarm.behaviour_mut().tokens.send_response(ack, TokensResponse::Busy);
            }
        }
    }
}
