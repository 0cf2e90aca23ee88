//! The request gateway: an OpenAI-compatible HTTP API in front of the chain and the workers.
//!
//! For each request the gateway builds the job payload and checks what it can before anything
//! is paid: the request's fields, the payload's size, and, through the chain's `quote` runtime
//! API, that the adapter is registered and a provider serving it has a free slot (a 503 with
//! `Retry-After` when none has, without submitting a transaction), and what the request can
//! cost at most (its escrow). Then it submits the job on chain for the account its API key maps
//! to (the chain matches a provider in the same call), offers the payload over libp2p to that
//! provider's worker only (its peer id is derived from the worker key registered on chain), and
//! relays the tokens the worker streams back, as one JSON body or as server-sent events.
//! Payloads live in memory for the life of the job only.
//!
//! A worker that refuses the job says why in its last chunk; the gateway answers with that
//! reason (400 when the request was at fault). A client that disconnects, a
//! `POST /v1/jobs/{id}/cancel`, or a request past the gateway's timeout cancels the job: the
//! worker stops and charges only the tokens the gateway received.
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

use crate::chain::{
    fee_for, AdapterId, Balance, ChainClient, ChainError, JobAssigned, JobPhase, RefusalReason,
};
use crate::job_payload::{self, chat_prompt, JobPayload};
use crate::service::REFUSED_PREFIX;
use openai::{adapter_id, ApiError, ChainInfo, GenerationRequest, Usage};

/// How the gateway runs.
#[derive(Clone)]
pub struct GatewayConfig {
    /// API key -> the account that pays for its requests.
    pub api_keys: HashMap<String, Keypair>,
    /// The most escrow one request may hold (only the metered charge is kept).
    pub max_fee: Balance,
    /// How long a request may wait for its complete answer.
    pub job_timeout: Duration,
    /// What a 503 tells the client to wait before retrying.
    pub retry_after: Duration,
    /// Largest payload the gateway offers (the p2p layer's limit).
    pub max_payload_bytes: usize,
    /// The base model the gateway can count tokens for, if it was given one.
    pub model: Option<ModelCard>,
}

/// What the gateway knows of a base model: enough to count a prompt's tokens exactly as the
/// worker will and check them against the model's context before anything is paid.
#[derive(Clone)]
pub struct ModelCard {
    /// The on-chain base model id it describes.
    pub base_model: u32,
    /// The model's tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// The model's context, in positions.
    pub context: usize,
}

impl ModelCard {
    /// The card of the model at `path` (a GGUF file or a Hugging Face directory), read
    /// without its weights.
    pub fn read(base_model: u32, path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let (config, tokenizer) = crate::engine::ModelConfig::read_with_tokenizer(path)
            .with_context(|| format!("cannot read the model {}", path.display()))?;
        Ok(Self { base_model, tokenizer, context: config.max_position })
    }

    /// The prompt's token count, or the error a prompt (with its `max_tokens`) that does not
    /// fit the context gets.
    fn prompt_tokens(&self, prompt: &str, max_tokens: u32) -> Result<usize, ApiError> {
        let tokens = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?
            .len();
        if tokens >= self.context {
            return Err(ApiError::bad_request(
                "prompt_too_long",
                format!(
                    "the prompt has {tokens} tokens, which leaves no room for an answer in the \
                     model's context of {} positions; nothing was submitted or paid",
                    self.context
                ),
            ));
        }
        if tokens.saturating_add(max_tokens as usize) > self.context {
            return Err(ApiError::bad_request(
                "max_tokens_exceeds_context",
                format!(
                    "the prompt's {tokens} tokens plus max_tokens {max_tokens} exceed the model's \
                     context of {} positions: ask for at most {} tokens; nothing was submitted \
                     or paid",
                    self.context,
                    self.context - tokens
                ),
            ));
        }
        Ok(tokens)
    }
}

/// The gateway's shared state.
pub struct Gateway {
    chain: ChainClient,
    p2p: P2pHandle,
    config: GatewayConfig,
    /// Open jobs: where their token chunks go and which peer may send them.
    jobs: Arc<Mutex<HashMap<u64, JobSink>>>,
}

struct JobSink {
    worker: PeerId,
    /// The account that pays for the job: the only one whose API key may cancel it.
    submitter: AccountId32,
    chunks: mpsc::UnboundedSender<TokenChunk>,
}

/// A job the gateway is relaying. Dropped before its last chunk (the client went away), it
/// cancels the job, so the worker stops and charges only what was delivered.
struct Relay {
    job: JobAssigned,
    chunks: mpsc::UnboundedReceiver<TokenChunk>,
    /// How long the submission took to be assigned (zero for uploaded payloads).
    assigned_after: Duration,
    /// Set once the answer is complete (or the job was refused): nothing to cancel.
    done: bool,
    p2p: P2pHandle,
    jobs: Arc<Mutex<HashMap<u64, JobSink>>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let job = self.job.job;
        let (p2p, jobs, done) = (self.p2p.clone(), Arc::clone(&self.jobs), self.done);
        // Drop cannot wait; the runtime is there as long as the server is.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                jobs.lock().await.remove(&job);
                if done {
                    let _ = p2p.withdraw_payload(job).await;
                } else {
                    tracing::info!(job, "client gone before the answer completed; cancelling");
                    let _ = p2p.cancel_job(job).await;
                }
            });
        }
    }
}

/// What a finished relay produced.
enum Outcome {
    /// The whole answer (or as much as was generated before a cancellation).
    Answer(String, openledger_p2p::Finish),
    /// The worker refused the job.
    Refused(ApiError),
}

/// What a final chunk's `reason` says: a refusal's error, or `None` for an answer.
fn refusal_of(job: u64, chunk: &TokenChunk) -> Option<ApiError> {
    let code = chunk.finish.as_ref()?.reason.strip_prefix(REFUSED_PREFIX)?;
    let reason = RefusalReason::from_code(code).unwrap_or(RefusalReason::WorkerFault);
    Some(ApiError::refused(job, reason.code(), reason.is_request_fault(), &chunk.text))
}

impl Gateway {
    /// A gateway over `chain` and the libp2p node `p2p`, whose events `events` it consumes.
    pub fn new(
        chain: ChainClient,
        p2p: P2pHandle,
        events: mpsc::Receiver<P2pEvent>,
        config: GatewayConfig,
    ) -> Arc<Self> {
        let gateway =
            Arc::new(Self { chain, p2p, config, jobs: Arc::new(Mutex::new(HashMap::new())) });
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
            .route("/v1/jobs/{job}/cancel", post(cancel_job))
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

    /// Check the request against the chain's quote, submit the job on chain, then offer its
    /// payload to the assigned worker only.
    async fn start_job(
        &self,
        payer: &Keypair,
        model: &str,
        payload: &JobPayload,
    ) -> Result<Relay, ApiError> {
        let adapter = adapter_id(model).ok_or_else(|| ApiError::unknown_model(model))?;
        let bytes = payload.to_bytes();
        if bytes.len() > self.config.max_payload_bytes {
            return Err(ApiError::bad_request(
                "payload_too_large",
                format!(
                    "the request's payload is {} bytes, above the {}-byte limit",
                    bytes.len(),
                    self.config.max_payload_bytes
                ),
            ));
        }
        let max_fee = self.escrow_for(adapter, model, payload).await?;
        let me = self.p2p.local_peer_id().to_bytes();
        let submitted = std::time::Instant::now();
        let job = self
            .chain
            .submit_job(payer, adapter, job_payload::hash(&bytes), payload.max_tokens, max_fee, &me)
            .await
            .map_err(|e| self.chain_error(model, e))?;
        let mut relay = self.relay(job.clone()).await?;
        relay.assigned_after = submitted.elapsed();
        self.p2p
            .offer_payload(job.job, bytes, relay_worker(&self.jobs, job.job).await?)
            .await
            .map_err(|e| ApiError::upstream("p2p_error", e.to_string()))?;
        Ok(relay)
    }

    /// The escrow a request holds: what the chain's quote says its prompt (counted generously,
    /// one token per byte plus special tokens) and `max_tokens` can cost at most. Fails, before
    /// anything is paid, when the adapter is unknown, no provider serving it has a free slot,
    /// or the request could cost more than the gateway's limit.
    async fn escrow_for(
        &self,
        adapter: AdapterId,
        model: &str,
        payload: &JobPayload,
    ) -> Result<Balance, ApiError> {
        let quote = self
            .chain
            .quote(adapter, payload.max_tokens)
            .await
            .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?;
        let Some(quote) = quote else {
            let known = self
                .chain
                .adapter(adapter)
                .await
                .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?
                .is_some_and(|a| !a.retired);
            if !known {
                return Err(ApiError::unknown_model(model));
            }
            return Err(ApiError::no_provider(
                format!(
                    "no provider serving `{model}` has a free slot now; nothing was submitted \
                     or paid. Retry after {} s",
                    self.config.retry_after.as_secs()
                ),
                self.config.retry_after.as_secs(),
            ));
        };
        let prompt = self.prompt_tokens(adapter, payload).await?;
        let tokens = prompt + PROMPT_SPECIAL_TOKENS + u64::from(payload.max_tokens);
        let fee = fee_for(tokens, quote.price_per_1k);
        if fee > self.config.max_fee {
            return Err(ApiError::bad_request(
                "request_too_expensive",
                format!(
                    "this request could cost up to {fee} plancks ({tokens} tokens at {} per \
                     1,000), above this gateway's limit of {} per request: shorten the prompt or \
                     lower max_tokens",
                    quote.price_per_1k, self.config.max_fee
                ),
            ));
        }
        // Never below the quote's own minimum (a provider cheaper than the prompt estimate).
        Ok(fee.max(quote.min_max_fee))
    }

    /// How many tokens the prompt can count at most: exactly, with the model's tokenizer, when
    /// the gateway has the adapter's base model (and a prompt that fills its context is refused
    /// here); else one per byte.
    async fn prompt_tokens(
        &self,
        adapter: AdapterId,
        payload: &JobPayload,
    ) -> Result<u64, ApiError> {
        let prompt = &payload.prompt;
        let Some(card) = &self.config.model else { return Ok(prompt.len() as u64) };
        let base = self
            .chain
            .adapter(adapter)
            .await
            .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?
            .map(|a| a.base_model);
        if base != Some(card.base_model) {
            return Ok(prompt.len() as u64);
        }
        Ok(card.prompt_tokens(prompt, payload.max_tokens)? as u64)
    }

    /// Register where `job`'s chunks go, allowed only from its provider's worker key.
    async fn relay(&self, job: JobAssigned) -> Result<Relay, ApiError> {
        let worker = self.worker_peer(&job.provider).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.jobs
            .lock()
            .await
            .insert(job.job, JobSink { worker, submitter: job.submitter, chunks: tx });
        Ok(Relay {
            job,
            chunks: rx,
            assigned_after: Duration::ZERO,
            done: false,
            p2p: self.p2p.clone(),
            jobs: Arc::clone(&self.jobs),
        })
    }

    async fn worker_peer(&self, provider: &AccountId32) -> Result<PeerId, ApiError> {
        let terms = self
            .chain
            .provider(provider)
            .await
            .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?
            .ok_or_else(|| {
                ApiError::no_provider(
                    "the assigned provider is no longer registered",
                    self.config.retry_after.as_secs(),
                )
            })?;
        peer_id_of_ed25519_public(&terms.worker_key)
            .map_err(|e| ApiError::upstream("bad_worker_key", e.to_string()))
    }

    /// Collect a whole answer.
    async fn collect(&self, mut relay: Relay) -> Result<Outcome, ApiError> {
        let job = relay.job.job;
        let deadline = tokio::time::Instant::now() + self.config.job_timeout;
        let mut text = String::new();
        loop {
            match tokio::time::timeout_at(deadline, relay.chunks.recv()).await {
                Ok(Some(chunk)) => {
                    if let Some(refused) = refusal_of(job, &chunk) {
                        relay.done = true;
                        return Ok(Outcome::Refused(refused));
                    }
                    text.push_str(&chunk.text);
                    if let Some(finish) = chunk.finish {
                        relay.done = true;
                        return Ok(Outcome::Answer(text, finish));
                    }
                },
                Ok(None) | Err(_) => return Err(self.timed_out(&relay).await),
            }
        }
    }

    /// Cancel a job that ran past the timeout, and say what will happen to its escrow.
    async fn timed_out(&self, relay: &Relay) -> ApiError {
        let job = relay.job.job;
        let _ = self.p2p.cancel_job(job).await;
        let secs = self.config.job_timeout.as_secs();
        let message = match self.chain.job(job).await {
            Ok(Some(record)) => match record.phase {
                JobPhase::Acknowledged => format!(
                    "job {job} gave no complete answer within {secs} s; the gateway cancelled \
                     it. Its worker may still settle it by block {}, charging only the tokens \
                     the gateway received (the rest of the escrow is refunded); if it does not, \
                     the job expires after that block with the whole escrow refunded and the \
                     provider's bond slashed to you.",
                    record.deadline
                ),
                JobPhase::Assigned => format!(
                    "job {job} was not taken up by its worker within {secs} s; the gateway \
                     cancelled it. It expires after block {} with the whole escrow refunded \
                     (the provider is not slashed for a job it never acknowledged).",
                    record.deadline
                ),
            },
            Ok(None) => format!(
                "job {job} gave no complete answer within {secs} s and is already closed on \
                 chain: its events (JobSettled, JobRefused or JobExpired) say what was charged \
                 and refunded."
            ),
            Err(e) => format!(
                "job {job} gave no complete answer within {secs} s; the gateway cancelled it, \
                 but could not read its state on chain ({e}). At most the tokens the gateway \
                 received are charged; otherwise the job expires with the escrow refunded."
            ),
        };
        ApiError::timeout(message)
    }

    /// Stream an answer as server-sent events, each built by `event` from a chunk. A refusal
    /// or timeout becomes a last event with an `error` object.
    fn stream(
        self: Arc<Self>,
        relay: Relay,
        event: impl Fn(&TokenChunk) -> serde_json::Value + Send + 'static,
    ) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        let deadline = tokio::time::Instant::now() + self.config.job_timeout;
        let job = relay.job.job;
        let state = (relay, self, false);
        let event = Arc::new(event);
        let error_event = |error: ApiError| {
            let body = json!({"error": {"message": error.message, "type": error.kind, "code": error.code}});
            futures::stream::iter(vec![Event::default().data(body.to_string())])
        };
        futures::stream::unfold(state, move |(mut relay, gateway, done)| {
            let event = Arc::clone(&event);
            let body = async move {
                if done {
                    return None;
                }
                match tokio::time::timeout_at(deadline, relay.chunks.recv()).await {
                    Ok(Some(chunk)) => {
                        if let Some(refused) = refusal_of(job, &chunk) {
                            relay.done = true;
                            return Some((error_event(refused), (relay, gateway, true)));
                        }
                        let last = chunk.finish.is_some();
                        let mut events = vec![Event::default().data(event(&chunk).to_string())];
                        if last {
                            relay.done = true;
                            events.push(Event::default().data("[DONE]"));
                        }
                        Some((futures::stream::iter(events), (relay, gateway, last)))
                    },
                    Ok(None) | Err(_) => {
                        let error = gateway.timed_out(&relay).await;
                        relay.done = true;
                        Some((error_event(error), (relay, gateway, true)))
                    },
                }
            };
            body
        })
        .flatten()
        .map(Ok)
    }

    /// The API error for a failed `submit_job`.
    fn chain_error(&self, model: &str, e: ChainError) -> ApiError {
        match &e {
            ChainError::Dispatch { error, .. } if error.contains("NoProviderAvailable") => {
                ApiError::no_provider(
                    format!(
                        "the provider quoted for `{model}` was taken by another job in the \
                         meantime: {error}"
                    ),
                    self.config.retry_after.as_secs(),
                )
            },
            _ => chain_error(model, e),
        }
    }
}

/// Tokens a tokenizer may add around a prompt (BOS and the like) on top of the count, and a
/// margin for a worker whose tokenizer differs slightly.
const PROMPT_SPECIAL_TOKENS: u64 = 8;

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
            P2pEvent::JobCancelled { job } => {
                // Every chunk the worker was told was delivered came before this: the request
                // ends with exactly the text it will be charged for.
                if let Some(sink) = gateway.jobs.lock().await.get(&job) {
                    let _ = sink.chunks.send(TokenChunk {
                        job,
                        seq: u32::MAX,
                        text: String::new(),
                        finish: Some(openledger_p2p::Finish {
                            reason: "cancelled".into(),
                            input_tokens: 0,
                            output_tokens: 0,
                            output_hash: [0; 32],
                        }),
                    });
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
                retry_after: None,
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
        if prompt.is_empty() {
            return Err(ApiError::bad_request("empty_prompt", "the prompt is empty"));
        }
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
        Ok(Outcome::Answer(text, finish)) => Json(json!({
            "id": id, "object": flavor.object(false), "created": created(), "model": model,
            "choices": [flavor.choice(&text, Some(&finish.reason), false)],
            "usage": usage(&finish),
            "openledger": chain,
        }))
        .into_response(),
        Ok(Outcome::Refused(e)) | Err(e) => e.into_response(),
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
                retry_after: None,
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
        Ok(Outcome::Answer(text, finish)) => Json(json!({
            "job": job, "text": text, "finish_reason": finish.reason, "usage": usage(&finish),
            "output_hash": format!("0x{}", hex_string(&finish.output_hash)),
        }))
        .into_response(),
        Ok(Outcome::Refused(e)) | Err(e) => e.into_response(),
    }
}

/// `POST /v1/jobs/{id}/cancel`: stop a job this gateway is relaying, paid by the caller's API
/// key. Its worker stops within a chunk and charges only the tokens already delivered; the
/// request that is waiting for it ends with `finish_reason` = `cancelled`.
async fn cancel_job(
    State(gateway): State<Arc<Gateway>>,
    Path(job): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let payer = gateway.payer(&headers)?;
        let account = AccountId32(payer.public_key().0);
        let jobs = gateway.jobs.lock().await;
        let sink = jobs.get(&job).ok_or_else(|| ApiError {
            status: axum::http::StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "job_not_running",
            message: format!("this gateway is not relaying job {job} (finished, or never here)"),
            retry_after: None,
        })?;
        if sink.submitter != account {
            return Err(ApiError {
                status: axum::http::StatusCode::FORBIDDEN,
                kind: "invalid_request_error",
                code: "not_your_job",
                message: format!("job {job} is paid by another account than this API key's"),
                retry_after: None,
            });
        }
        drop(jobs);
        // The waiting request ends when the p2p node reports the cancellation (after every
        // chunk already delivered); the worker hears of it at its next chunk.
        gateway
            .p2p
            .cancel_job(job)
            .await
            .map_err(|e| ApiError::upstream("p2p_error", e.to_string()))?;
        Ok(Json(json!({"job": job, "cancelled": true})))
    }
    .await;
    match result {
        Ok(body) => body.into_response(),
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
