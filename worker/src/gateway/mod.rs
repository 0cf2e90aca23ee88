//! The request gateway: an OpenAI-compatible HTTP API in front of the chain and the workers.
//!
//! For each request the gateway builds the job payload, submits the job on chain for the
//! account its API key maps to (the chain matches a provider in the same call), offers the
//! payload over libp2p to that provider's worker only (its peer id is derived from the worker
//! key registered on chain), and relays the tokens the worker streams back, as one JSON body
//! or as server-sent events. Payloads live in memory for the life of the job only.
//!
//! Jobs submitted elsewhere (polkadot.js) name this gateway's peer id; their users upload the
//! payload with `PUT /v1/jobs/{id}/payload`, which the gateway checks against the job's
//! on-chain hash before offering it.

pub mod openai;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::stream::{Stream, StreamExt};
use openledger_p2p::{peer_id_of_ed25519_public, P2pEvent, P2pHandle, PeerId, TokenChunk};
use serde_json::json;
use subxt::utils::AccountId32;
use subxt_signer::sr25519::Keypair;
use tokio::sync::{mpsc, Mutex};

use crate::chain::{Balance, ChainClient, ChainError, JobAssigned};
use crate::job_payload::{self, chat_prompt, JobPayload};
use openai::{adapter_id, ApiError, ChainInfo, GenerationRequest, Usage};

/// How the gateway runs.
#[derive(Clone)]
pub struct GatewayConfig {
    /// API key -> the account that pays for its requests.
    pub api_keys: HashMap<String, Keypair>,
    /// Budget held in escrow per request (only the metered charge is kept).
    pub max_fee: Balance,
    /// How long a request may wait for its complete answer.
    pub job_timeout: Duration,
    /// How long a request waits for a provider to have a free slot before a 503.
    pub no_provider_wait: Duration,
}

/// The gateway's shared state.
pub struct Gateway {
    chain: ChainClient,
    p2p: P2pHandle,
    config: GatewayConfig,
    /// Open jobs: where their token chunks go and which peer may send them.
    jobs: Mutex<HashMap<u64, JobSink>>,
}

struct JobSink {
    worker: PeerId,
    chunks: mpsc::UnboundedSender<TokenChunk>,
}

/// A job the gateway is relaying.
struct Relay {
    job: JobAssigned,
    chunks: mpsc::UnboundedReceiver<TokenChunk>,
    /// How long the submission took to be assigned (zero for uploaded payloads).
    assigned_after: Duration,
}

impl Gateway {
    /// A gateway over `chain` and the libp2p node `p2p`, whose events `events` it consumes.
    pub fn new(
        chain: ChainClient,
        p2p: P2pHandle,
        events: mpsc::Receiver<P2pEvent>,
        config: GatewayConfig,
    ) -> Arc<Self> {
        let gateway = Arc::new(Self { chain, p2p, config, jobs: Mutex::new(HashMap::new()) });
        tokio::spawn(route_chunks(Arc::clone(&gateway), events));
        gateway
    }

    /// The HTTP API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/jobs/{job}/payload", put(upload_payload))
            .route("/health", get(|| async { "ok" }))
            .with_state(Arc::clone(self))
    }

    /// Serve the API on `addr` until the process ends.
    pub async fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn payer(&self, headers: &HeaderMap) -> Result<&Keypair, ApiError> {
        let key = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        self.config.api_keys.get(key.trim()).ok_or_else(ApiError::unauthorized)
    }

    /// Submit the job on chain, then offer its payload to the assigned worker only.
    async fn start_job(
        &self,
        payer: &Keypair,
        model: &str,
        payload: &JobPayload,
    ) -> Result<Relay, ApiError> {
        let adapter = adapter_id(model).ok_or_else(|| ApiError::unknown_model(model))?;
        let bytes = payload.to_bytes();
        let me = self.p2p.local_peer_id().to_bytes();
        let submitted = std::time::Instant::now();
        // Providers free their slots as receipts settle: while none is free, try again each
        // block for up to `no_provider_wait` before answering 503.
        let give_up = tokio::time::Instant::now() + self.config.no_provider_wait;
        let job = loop {
            let attempt = self
                .chain
                .submit_job(
                    payer,
                    adapter,
                    job_payload::hash(&bytes),
                    payload.max_tokens,
                    self.config.max_fee,
                    &me,
                )
                .await;
            match attempt {
                Ok(job) => break job,
                Err(ChainError::Dispatch { ref error, .. })
                    if error.contains("NoProviderAvailable")
                        && tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
                Err(e) => return Err(chain_error(model, e)),
            }
        };
        let mut relay = self.relay(job.clone()).await?;
        relay.assigned_after = submitted.elapsed();
        self.p2p
            .offer_payload(job.job, bytes, relay_worker(&self.jobs, job.job).await?)
            .await
            .map_err(|e| ApiError::upstream("p2p_error", e.to_string()))?;
        Ok(relay)
    }

    /// Register where `job`'s chunks go, allowed only from its provider's worker key.
    async fn relay(&self, job: JobAssigned) -> Result<Relay, ApiError> {
        let worker = self.worker_peer(&job.provider).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.jobs.lock().await.insert(job.job, JobSink { worker, chunks: tx });
        Ok(Relay { job, chunks: rx, assigned_after: Duration::ZERO })
    }

    async fn worker_peer(&self, provider: &AccountId32) -> Result<PeerId, ApiError> {
        let terms = self
            .chain
            .provider(provider)
            .await
            .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?
            .ok_or_else(|| {
                ApiError::no_provider("the assigned provider is no longer registered")
            })?;
        peer_id_of_ed25519_public(&terms.worker_key)
            .map_err(|e| ApiError::upstream("bad_worker_key", e.to_string()))
    }

    async fn finish_job(&self, job: u64) {
        self.jobs.lock().await.remove(&job);
        let _ = self.p2p.withdraw_payload(job).await;
    }

    /// Collect a whole answer.
    async fn collect(
        &self,
        mut relay: Relay,
    ) -> Result<(String, openledger_p2p::Finish), ApiError> {
        let job = relay.job.job;
        let deadline = tokio::time::Instant::now() + self.config.job_timeout;
        let mut text = String::new();
        let result = loop {
            match tokio::time::timeout_at(deadline, relay.chunks.recv()).await {
                Ok(Some(chunk)) => {
                    text.push_str(&chunk.text);
                    if let Some(finish) = chunk.finish {
                        break Ok((text, finish));
                    }
                },
                Ok(None) | Err(_) => break Err(ApiError::timeout(job)),
            }
        };
        self.finish_job(job).await;
        result
    }

    /// Stream an answer as server-sent events, each built by `event` from a chunk.
    fn stream(
        self: Arc<Self>,
        relay: Relay,
        event: impl Fn(&TokenChunk) -> serde_json::Value + Send + 'static,
    ) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        let deadline = tokio::time::Instant::now() + self.config.job_timeout;
        let job = relay.job.job;
        let state = (relay, self, false);
        let event = Arc::new(event);
        futures::stream::unfold(state, move |(mut relay, gateway, done)| {
            let event = Arc::clone(&event);
            let body = async move {
                if done {
                    return None;
                }
                match tokio::time::timeout_at(deadline, relay.chunks.recv()).await {
                    Ok(Some(chunk)) => {
                        let last = chunk.finish.is_some();
                        let mut events = vec![Event::default().data(event(&chunk).to_string())];
                        if last {
                            gateway.finish_job(job).await;
                            events.push(Event::default().data("[DONE]"));
                        }
                        Some((futures::stream::iter(events), (relay, gateway, last)))
                    },
                    Ok(None) | Err(_) => {
                        gateway.finish_job(job).await;
                        let error = ApiError::timeout(job);
                        let body = json!({"error": {"message": error.message, "type": error.kind, "code": error.code}});
                        Some((
                            futures::stream::iter(vec![Event::default().data(body.to_string())]),
                            (relay, gateway, true),
                        ))
                    },
                }
            };
            body
        })
        .flatten()
        .map(Ok)
    }
}

/// The worker peer registered for `job` (just inserted by [`Gateway::relay`]).
async fn relay_worker(jobs: &Mutex<HashMap<u64, JobSink>>, job: u64) -> Result<PeerId, ApiError> {
    jobs.lock().await.get(&job).map(|s| s.worker).ok_or_else(|| {
        ApiError::upstream("internal", "job vanished before its payload was offered")
    })
}

/// Deliver each token chunk to its job's request, if it comes from the job's worker.
async fn route_chunks(gateway: Arc<Gateway>, mut events: mpsc::Receiver<P2pEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            P2pEvent::Tokens { from, chunk } => {
                let jobs = gateway.jobs.lock().await;
                match jobs.get(&chunk.job) {
                    Some(sink) if sink.worker == from => {
                        let _ = sink.chunks.send(chunk);
                    },
                    Some(_) => {
                        tracing::warn!(job = chunk.job, %from, "tokens from a peer that is not the job's worker; dropped")
                    },
                    None => {
                        tracing::debug!(job = chunk.job, %from, "tokens for a job this gateway is not relaying")
                    },
                }
            },
            P2pEvent::PayloadFetched { job, by } => {
                tracing::debug!(job, %by, "payload delivered");
                // The worker has it; keep no copy longer than needed.
                let _ = gateway.p2p.withdraw_payload(job).await;
            },
            _ => {},
        }
    }
}

fn chain_error(model: &str, e: ChainError) -> ApiError {
    match &e {
        ChainError::Dispatch { error, .. } if error.contains("NoProviderAvailable") => {
            ApiError::no_provider(format!(
                "no provider can serve `{model}` now within the gateway's fee limit: {error}"
            ))
        },
        ChainError::Dispatch { error, .. } if error.contains("UnknownAdapter") => {
            ApiError::unknown_model(model)
        },
        ChainError::Dispatch { error, .. }
            if error.contains("FundsUnavailable") || error.contains("InsufficientBalance") =>
        {
            ApiError {
                status: axum::http::StatusCode::PAYMENT_REQUIRED,
                kind: "insufficient_quota",
                code: "insufficient_balance",
                message: format!("the paying account cannot hold the job's escrow: {error}"),
            }
        },
        _ => ApiError::upstream("chain_error", e.to_string()),
    }
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage(finish: &openledger_p2p::Finish) -> Usage {
    Usage {
        prompt_tokens: finish.input_tokens,
        completion_tokens: finish.output_tokens,
        total_tokens: finish.input_tokens.saturating_add(finish.output_tokens),
    }
}

fn chain_info(relay: &Relay) -> ChainInfo {
    ChainInfo {
        job: relay.job.job,
        provider: relay.job.provider.to_string(),
        escrow: relay.job.escrow.to_string(),
        assigned_after_ms: relay.assigned_after.as_secs_f64() * 1e3,
    }
}

fn sampling(
    prompt: String,
    max_tokens: u32,
    sampling: &GenerationRequest,
) -> Result<JobPayload, ApiError> {
    if max_tokens == 0 {
        return Err(ApiError::bad_request("invalid_max_tokens", "max_tokens must be at least 1"));
    }
    let temperature = sampling.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request("invalid_temperature", "temperature must be in [0, 2]"));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("invalid_top_p", "top_p must be in (0, 1]"));
    }
    Ok(JobPayload {
        prompt,
        max_tokens,
        temperature,
        top_p,
        top_k: sampling.top_k.unwrap_or(0),
        seed: sampling.seed.unwrap_or(0),
        stop: sampling.stop.clone().map(openai::Stop::into_vec).unwrap_or_default(),
    })
}

async fn list_models(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.chain.adapters().await {
        Ok(adapters) => {
            let data: Vec<_> = adapters
                .into_iter()
                .filter(|(_, a)| !a.retired)
                .map(|(id, a)| {
                    json!({
                        "id": format!("adapter-{id}"),
                        "object": "model",
                        "created": 0,
                        "owned_by": a.owner.to_string(),
                        "base_model": a.base_model,
                        "rank": a.rank,
                        "price_per_1k_tokens": a.price_per_1k.to_string(),
                    })
                })
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        },
        Err(e) => ApiError::upstream("chain_error", e.to_string()).into_response(),
    }
}

async fn completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: GenerationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request("invalid_json", e.to_string()).into_response(),
    };
    let result = async {
        let payer = gateway.payer(&headers)?;
        let prompt = req.prompt.clone().ok_or_else(|| {
            ApiError::bad_request("missing_prompt", "completions take a `prompt` string")
        })?;
        let payload = sampling(prompt, req.max_tokens.unwrap_or(16), &req)?;
        gateway.start_job(payer, &req.model, &payload).await
    }
    .await;
    let relay = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    answer(gateway, relay, req.model, req.stream, Flavor::Text).await
}

async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: GenerationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request("invalid_json", e.to_string()).into_response(),
    };
    let result = async {
        let payer = gateway.payer(&headers)?;
        let messages: Vec<(String, String)> = match &req.messages {
            Some(list) if !list.is_empty() => {
                list.iter().map(|m| (m.role.clone(), m.content.clone())).collect()
            },
            _ => {
                return Err(ApiError::bad_request(
                    "empty_messages",
                    "chat completions take a non-empty `messages` list",
                ))
            },
        };
        let payload = sampling(chat_prompt(&messages), req.max_tokens.unwrap_or(256), &req)?;
        gateway.start_job(payer, &req.model, &payload).await
    }
    .await;
    let relay = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    answer(gateway, relay, req.model, req.stream, Flavor::Chat).await
}

/// Which OpenAI endpoint an answer is for: the shapes of its ids, objects and choices.
#[derive(Clone, Copy)]
enum Flavor {
    /// `/v1/completions`.
    Text,
    /// `/v1/chat/completions`.
    Chat,
}

impl Flavor {
    fn id(self, job: u64) -> String {
        match self {
            Flavor::Text => format!("cmpl-{job}"),
            Flavor::Chat => format!("chatcmpl-{job}"),
        }
    }

    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Flavor::Text, _) => "text_completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Chat, false) => "chat.completion",
        }
    }

    /// The one choice of a response (`streamed`: a chunk's delta) with `text`.
    fn choice(self, text: &str, finish_reason: Option<&str>, streamed: bool) -> serde_json::Value {
        match (self, streamed) {
            (Flavor::Text, _) => json!({"index": 0, "text": text, "logprobs": null,
                "finish_reason": finish_reason}),
            (Flavor::Chat, true) => json!({"index": 0,
                "delta": {"role": "assistant", "content": text}, "finish_reason": finish_reason}),
            (Flavor::Chat, false) => json!({"index": 0,
                "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}),
        }
    }
}

/// Relay a started job's answer: server-sent events when `stream`, else one JSON body.
async fn answer(
    gateway: Arc<Gateway>,
    relay: Relay,
    model: String,
    stream: bool,
    flavor: Flavor,
) -> Response {
    let id = flavor.id(relay.job.job);
    let chain = chain_info(&relay);
    if stream {
        let events = Arc::clone(&gateway).stream(relay, move |chunk| {
            let reason = chunk.finish.as_ref().map(|f| f.reason.as_str());
            json!({
                "id": id, "object": flavor.object(true), "created": created(), "model": model,
                "choices": [flavor.choice(&chunk.text, reason, true)],
                "openledger": chain,
            })
        });
        return Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    }
    match gateway.collect(relay).await {
        Ok((text, finish)) => Json(json!({
            "id": id, "object": flavor.object(false), "created": created(), "model": model,
            "choices": [flavor.choice(&text, Some(&finish.reason), false)],
            "usage": usage(&finish),
            "openledger": chain,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `PUT /v1/jobs/{id}/payload`: the payload of a job submitted elsewhere (polkadot.js) that
/// names this gateway. Checked against the job's on-chain hash; answered with the completion.
async fn upload_payload(
    State(gateway): State<Arc<Gateway>>,
    Path(job): Path<u64>,
    body: Bytes,
) -> Response {
    let result = async {
        let record = gateway
            .chain
            .job(job)
            .await
            .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?
            .ok_or_else(|| ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: "job_not_open",
                message: format!("job {job} is not open on chain (unknown, settled or expired)"),
            })?;
        if record.gateway != gateway.p2p.local_peer_id().to_bytes() {
            return Err(ApiError::bad_request(
                "wrong_gateway",
                format!("job {job} names another gateway's peer id"),
            ));
        }
        if job_payload::hash(&body) != record.input_hash.0 {
            return Err(ApiError::bad_request(
                "payload_hash_mismatch",
                format!("the payload's BLAKE2b-256 differs from job {job}'s input_hash on chain"),
            ));
        }
        if JobPayload::from_bytes(&body).is_err() {
            return Err(ApiError::bad_request(
                "invalid_payload",
                "the payload is not a JSON job payload (see worker/src/job_payload.rs)",
            ));
        }
        let assigned = JobAssigned {
            job,
            submitter: record.submitter,
            provider: record.provider,
            adapter: record.adapter,
            input_hash: record.input_hash,
            max_output_tokens: record.max_output_tokens,
            escrow: record.escrow,
            gateway: record.gateway.clone(),
            deadline: record.deadline,
        };
        let relay = gateway.relay(assigned).await?;
        let worker = relay_worker(&gateway.jobs, job).await?;
        gateway
            .p2p
            .offer_payload(job, body.to_vec(), worker)
            .await
            .map_err(|e| ApiError::upstream("p2p_error", e.to_string()))?;
        gateway.collect(relay).await
    }
    .await;
    match result {
        Ok((text, finish)) => Json(json!({
            "job": job, "text": text, "finish_reason": finish.reason, "usage": usage(&finish),
            "output_hash": format!("0x{}", hex_string(&finish.output_hash)),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bind `addr`, reporting a clear error when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}
