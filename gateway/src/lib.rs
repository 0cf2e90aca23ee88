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

mod channels;
mod model_card;
pub mod openai;
mod relay;
mod routes;
mod web;

pub use channels::{ChannelConfig, PayerBook};
pub use model_card::ModelCard;
pub use web::WebConfig;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use axum::Router;
use openledger_p2p::{P2pEvent, P2pHandle};
use subxt_signer::sr25519::Keypair;
use tokio::sync::{mpsc, Mutex};

use crate::openai::{adapter_id, ApiError, Settle};
use crate::relay::{relay_worker, route_chunks, JobSink, Relay, Route};
use crate::routes::{cancel_job, chat_completions, completions, list_models, upload_payload};
use openledger_chain_client::{
    fee_for, AdapterId, Balance, ChainClient, ChainError, JobsError, Quote, RuntimeError,
};
use openledger_p2p::payload::{self as job_payload, JobPayload};
use openledger_p2p::{ChannelResponse, Multiaddr, P2pError};
use subxt::utils::AccountId32;

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
    /// Open Chat, the web page at `/`, when it is served.
    pub web: Option<WebConfig>,
}

/// The gateway's shared state.
pub struct Gateway {
    pub(crate) chain: ChainClient,
    pub(crate) p2p: P2pHandle,
    pub(crate) config: GatewayConfig,
    /// Open jobs and channel requests: where their token chunks go and which peer may send
    /// them.
    pub(crate) jobs: Arc<Mutex<HashMap<u64, JobSink>>>,
    /// The payment channels requests go through, unless the gateway was started without.
    pub(crate) channels: Option<PayerBook>,
}

impl Gateway {
    /// A gateway over `chain` and the libp2p node `p2p`, whose events `events` it consumes;
    /// requests go through payment channels when `channels` is given, else each is a job on
    /// chain.
    pub fn new(
        chain: ChainClient,
        p2p: P2pHandle,
        events: mpsc::Receiver<P2pEvent>,
        config: GatewayConfig,
        channels: Option<PayerBook>,
    ) -> Arc<Self> {
        let gateway = Arc::new(Self {
            chain,
            p2p,
            config,
            jobs: Arc::new(Mutex::new(HashMap::new())),
            channels,
        });
        tokio::spawn(route_chunks(Arc::clone(&gateway), events));
        gateway
    }

    /// The HTTP API.
    pub fn router(self: &Arc<Self>) -> Router {
        let api = Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/jobs/{job}/payload", put(upload_payload))
            .route("/v1/jobs/{job}/cancel", post(cancel_job))
            .route("/v1/channels/{channel}/requests/{request}", get(web::channel_request))
            .route("/chat/config", get(web::config))
            .route("/chat/v1/chat/completions", post(web::chat))
            .route("/health", get(|| async { "ok" }))
            .fallback(web::asset);
        api.with_state(Arc::clone(self))
    }

    /// Serve the API on `addr` until the process ends.
    pub async fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    pub(crate) fn payer(&self, headers: &HeaderMap) -> Result<&Keypair, ApiError> {
        let key = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        self.config.api_keys.get(key.trim()).ok_or_else(ApiError::unauthorized)
    }

    /// Check the request against the chain's quote, then send it on the payer's channel to the
    /// quoted provider (where the gateway pays on channels and `settle` does not ask for a
    /// job), or submit the job on chain and offer its payload to the assigned worker only.
    pub(crate) async fn start_job(
        &self,
        payer: &Keypair,
        model: &str,
        payload: &JobPayload,
        settle: Option<Settle>,
    ) -> Result<Relay, ApiError> {
        let channels = match (settle, &self.channels) {
            (Some(Settle::Job), _) => None,
            (_, Some(book)) => Some(book),
            (Some(Settle::Channel), None) => {
                return Err(ApiError::bad_request(
                    "channels_off",
                    "this gateway pays on no channels (started with --no-channels): leave \
                     `settle` out or ask for \"job\"",
                ))
            },
            (None, None) => None,
        };
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
        match self.chain.check_context(&payload.context_shares()).await {
            Ok(Ok(())) => {},
            Ok(Err(bad)) => {
                return Err(ApiError::bad_request(
                    "invalid_context",
                    format!("{bad}; nothing was submitted or paid"),
                ))
            },
            Err(e) => return Err(ApiError::upstream("chain_error", e.to_string())),
        }
        let priced = std::time::Instant::now();
        let (quote, max_fee) = self.escrow_for(adapter, model, payload).await?;
        tracing::debug!(adapter, took_ms = priced.elapsed().as_secs_f64() * 1e3, "quoted");
        if let Some(book) = channels {
            let mut relay =
                self.start_on_channel(book, payer, adapter, &quote, max_fee, bytes).await?;
            relay.price_per_1k = Some(quote.price_per_1k);
            return Ok(relay);
        }
        let me = self.p2p.local_peer_id().to_bytes();
        let submitted = std::time::Instant::now();
        let job = self
            .chain
            .submit_job(payer, adapter, job_payload::hash(&bytes), payload.max_tokens, max_fee, &me)
            .await
            .map_err(|e| self.chain_error(model, e))?;
        let mut relay = self.relay(job.clone()).await?;
        relay.assigned_after = submitted.elapsed();
        // Matching may have picked another provider than the quote's (then its price is the
        // job's to state, at settlement).
        relay.price_per_1k = (job.provider == quote.provider).then_some(quote.price_per_1k);
        self.p2p
            .offer_payload(job.job, bytes, relay_worker(&self.jobs, job.job).await?)
            .await
            .map_err(|e| ApiError::upstream("p2p_error", e.to_string()))?;
        Ok(relay)
    }

    /// Sends the request to the quoted provider's worker on the payer's channel to it (opened
    /// or topped up first when needed): no transaction, the tokens stream at once.
    async fn start_on_channel(
        &self,
        book: &PayerBook,
        payer: &Keypair,
        adapter: AdapterId,
        quote: &Quote,
        max_charge: Balance,
        bytes: Vec<u8>,
    ) -> Result<Relay, ApiError> {
        let started = std::time::Instant::now();
        let (worker, terms) = self.provider_worker(&quote.provider).await?;
        tracing::debug!(took_ms = started.elapsed().as_secs_f64() * 1e3, "provider's worker read");
        let started = std::time::Instant::now();
        let route = book
            .reserve(
                &self.chain,
                payer,
                quote,
                terms.worker_key,
                adapter,
                max_charge,
                job_payload::hash(&bytes),
            )
            .await?;
        let request = PayerBook::serve_request(&route, adapter, bytes);
        let submitter = AccountId32(payer.public_key().0);
        let mut relay =
            self.relay_from(worker, submitter, route.request, Route::Channel(route.clone())).await;
        relay.assigned_after = started.elapsed();
        let mut answer = self.p2p.ask_channel(worker, request.clone()).await;
        if matches!(answer, Err(P2pError::Unreachable { .. })) {
            // Never delivered: dial the worker where the chain says it listens, and ask again.
            for addr in &terms.endpoint.multiaddrs {
                let Ok(addr) = Multiaddr::try_from(addr.clone()) else { continue };
                let addr = addr.with_p2p(worker).unwrap_or_else(|a| a);
                if self.p2p.dial(addr).await.is_ok() {
                    answer = self.p2p.ask_channel(worker, request).await;
                    break;
                }
            }
        }
        tracing::debug!(
            request = route.request,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "channel request answered"
        );
        match answer {
            Ok(ChannelResponse::Accepted) => Ok(relay),
            answer => {
                // Nothing was served: nothing is owed, the room comes back.
                relay.done = true;
                book.cancel(&route).await;
                Err(match answer {
                    Ok(ChannelResponse::Refused(reason)) => ApiError::no_provider(
                        format!(
                            "the provider's worker refused the request: {reason}; nothing was paid"
                        ),
                        self.config.retry_after.as_secs(),
                    ),
                    Ok(ChannelResponse::RateLimited | ChannelResponse::Busy) => {
                        ApiError::no_provider(
                            "the provider's worker is busy; nothing was paid",
                            self.config.retry_after.as_secs(),
                        )
                    },
                    Ok(other) => {
                        ApiError::upstream("p2p_error", format!("unexpected answer {other:?}"))
                    },
                    Err(e) => ApiError::upstream(
                        "p2p_error",
                        format!("the provider's worker cannot be reached: {e}; nothing was paid"),
                    ),
                })
            },
        }
    }

    /// The quote and the escrow a request holds: what the chain's quote says its prompt
    /// (counted generously, one token per byte plus special tokens) and `max_tokens` can cost
    /// at most. Fails, before anything is paid, when the adapter is unknown, no provider
    /// serving it has a free slot, or the request could cost more than the gateway's limit.
    pub(crate) async fn escrow_for(
        &self,
        adapter: AdapterId,
        model: &str,
        payload: &JobPayload,
    ) -> Result<(Quote, Balance), ApiError> {
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
        let escrow = fee.max(quote.min_max_fee);
        Ok((quote, escrow))
    }

    /// How many tokens the prompt can count at most: exactly, with the model's tokenizer, when
    /// the gateway has the adapter's base model (and a prompt that fills its context is refused
    /// here); else one per byte.
    pub(crate) async fn prompt_tokens(
        &self,
        adapter: AdapterId,
        payload: &JobPayload,
    ) -> Result<u64, ApiError> {
        let prompt = self.prompt_text(payload)?;
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
        Ok(card.prompt_tokens(&prompt, payload.max_tokens)? as u64)
    }

    /// The text the worker will feed its model: a completion's prompt, or a chat's messages
    /// rendered with the model's own template (ChatML when the gateway was given no model, or
    /// the model ships none), as the worker renders them.
    pub(crate) fn prompt_text(&self, payload: &JobPayload) -> Result<String, ApiError> {
        if payload.messages.is_empty() {
            return Ok(payload.prompt.clone());
        }
        let rendered = match &self.config.model {
            Some(model) => model.card.render_chat(&payload.messages, true),
            None => openledger_model::ChatTemplate::chatml().render(&payload.messages, true),
        };
        rendered.map_err(|e| ApiError::bad_request("invalid_messages", e.to_string()))
    }
    /// The API error for a failed `submit_job`.
    pub(crate) fn chain_error(&self, model: &str, e: ChainError) -> ApiError {
        match &e {
            ChainError::Dispatch {
                error: error @ RuntimeError::Jobs(JobsError::NoProviderAvailable),
                ..
            } => ApiError::no_provider(
                format!(
                    "the provider quoted for `{model}` was taken by another job in the \
                         meantime: {error}"
                ),
                self.config.retry_after.as_secs(),
            ),
            _ => chain_error(model, e),
        }
    }
}

/// Tokens a tokenizer may add around a prompt (BOS and the like) on top of the count, and a
/// margin for a worker whose tokenizer differs slightly.
pub(crate) const PROMPT_SPECIAL_TOKENS: u64 = 8;

pub(crate) fn chain_error(model: &str, e: ChainError) -> ApiError {
    match &e {
        ChainError::Dispatch { error: RuntimeError::Jobs(JobsError::UnknownAdapter), .. } => {
            ApiError::unknown_model(model)
        },
        ChainError::Dispatch { error: error @ RuntimeError::InsufficientFunds(_), .. } => {
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

/// Bind `addr`, reporting a clear error when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}
