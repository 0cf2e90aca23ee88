//! Relaying a job: the token chunks its worker streams, routed to the request waiting for
//! them, collected into one answer or streamed as server-sent events; a relay dropped early
//! cancels its job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event;
use futures::stream::{Stream, StreamExt};
use openledger_p2p::{
    peer_id_of_ed25519_public, ChannelRequest, ChannelResponse, P2pEvent, P2pHandle, PeerId,
    TokenChunk, CHANNEL_ROUTE_BIT,
};
use serde_json::json;
use subxt::utils::AccountId32;
use tokio::sync::{mpsc, Mutex};

use crate::channels::ChannelRoute;
use crate::openai::ApiError;
use crate::Gateway;
use openledger_chain_client::{Balance, JobAssigned, JobPhase, ProviderTerms, RefusalReason};
use openledger_p2p::REFUSED_PREFIX;

pub(crate) struct JobSink {
    pub(crate) worker: PeerId,
    /// The account that pays for the job: the only one whose API key may cancel it.
    pub(crate) submitter: AccountId32,
    pub(crate) chunks: mpsc::UnboundedSender<TokenChunk>,
}

/// What a relay's answer comes from: an on-chain job, or a request on a payment channel.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    Job(JobAssigned),
    Channel(ChannelRoute),
}

/// A job the gateway is relaying. Dropped before its last chunk (the client went away), it
/// cancels the job, so the worker stops and charges only what was delivered.
pub(crate) struct Relay {
    /// The id its chunks carry: the job's, or the channel request's.
    pub(crate) id: u64,
    pub(crate) route: Route,
    pub(crate) chunks: mpsc::UnboundedReceiver<TokenChunk>,
    /// How long the submission took to be assigned (zero for uploaded payloads).
    pub(crate) assigned_after: Duration,
    /// The price per 1,000 tokens it was quoted at (unknown for uploaded payloads).
    pub(crate) price_per_1k: Option<Balance>,
    /// Set once the answer is complete (or the job was refused): nothing to cancel.
    pub(crate) done: bool,
    pub(crate) p2p: P2pHandle,
    pub(crate) jobs: Arc<Mutex<HashMap<u64, JobSink>>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let job = self.id;
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
pub(crate) enum Outcome {
    /// The whole answer (or as much as was generated before a cancellation).
    Answer(String, openledger_p2p::Finish),
    /// The worker refused the job.
    Refused(ApiError),
}

/// What a final chunk's `reason` says: a refusal's error, or `None` for an answer.
pub(crate) fn refusal_of(job: u64, chunk: &TokenChunk) -> Option<ApiError> {
    let code = chunk.finish.as_ref()?.reason.strip_prefix(REFUSED_PREFIX)?;
    let reason = RefusalReason::from_code(code).unwrap_or(RefusalReason::WorkerFault);
    Some(ApiError::refused(job, reason.code(), reason.is_request_fault(), &chunk.text))
}

impl Gateway {
    /// Register where `job`'s chunks go, allowed only from its provider's worker key.
    pub(crate) async fn relay(&self, job: JobAssigned) -> Result<Relay, ApiError> {
        let worker = self.worker_peer(&job.provider).await?;
        Ok(self.relay_from(worker, job.submitter, job.job, Route::Job(job)).await)
    }

    /// Register where the chunks with `id` go, allowed only from `worker`.
    pub(crate) async fn relay_from(
        &self,
        worker: PeerId,
        submitter: AccountId32,
        id: u64,
        route: Route,
    ) -> Relay {
        let (tx, rx) = mpsc::unbounded_channel();
        self.jobs.lock().await.insert(id, JobSink { worker, submitter, chunks: tx });
        Relay {
            id,
            route,
            chunks: rx,
            assigned_after: Duration::ZERO,
            price_per_1k: None,
            done: false,
            p2p: self.p2p.clone(),
            jobs: Arc::clone(&self.jobs),
        }
    }

    pub(crate) async fn worker_peer(&self, provider: &AccountId32) -> Result<PeerId, ApiError> {
        Ok(self.provider_worker(provider).await?.0)
    }

    /// The peer id of `provider`'s worker (derived from the worker key it registered) and its
    /// registered terms.
    pub(crate) async fn provider_worker(
        &self,
        provider: &AccountId32,
    ) -> Result<(PeerId, ProviderTerms), ApiError> {
        let terms = self
            .chain
            .provider(provider)
            .await
            .map_err(|e| ApiError::upstream("chain_error", e.to_string()))?
            .ok_or_else(|| {
                ApiError::no_provider(
                    "the provider is no longer registered",
                    self.config.retry_after.as_secs(),
                )
            })?;
        let peer = peer_id_of_ed25519_public(&terms.worker_key)
            .map_err(|e| ApiError::upstream("bad_worker_key", e.to_string()))?;
        Ok((peer, terms))
    }

    /// Collect a whole answer.
    pub(crate) async fn collect(&self, mut relay: Relay) -> Result<Outcome, ApiError> {
        let job = relay.id;
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
    pub(crate) async fn timed_out(&self, relay: &Relay) -> ApiError {
        let job = relay.id;
        let _ = self.p2p.cancel_job(job).await;
        let secs = self.config.job_timeout.as_secs();
        if let Route::Channel(route) = &relay.route {
            return ApiError::timeout(format!(
                "request {job} on channel {} gave no complete answer within {secs} s; the \
                 gateway cancelled it and vouches only for the tokens it received",
                route.channel
            ));
        }
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
    pub(crate) fn stream(
        self: Arc<Self>,
        relay: Relay,
        event: impl Fn(&TokenChunk) -> serde_json::Value + Send + 'static,
    ) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        let deadline = tokio::time::Instant::now() + self.config.job_timeout;
        let job = relay.id;
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
}

/// The worker peer registered for `job` (just inserted by [`Gateway::relay`]).
pub(crate) async fn relay_worker(
    jobs: &Mutex<HashMap<u64, JobSink>>,
    job: u64,
) -> Result<PeerId, ApiError> {
    jobs.lock().await.get(&job).map(|s| s.worker).ok_or_else(|| {
        ApiError::upstream("internal", "job vanished before its payload was offered")
    })
}

/// Deliver each token chunk to its job's request, if it comes from the job's worker.
pub(crate) async fn route_chunks(gateway: Arc<Gateway>, mut events: mpsc::Receiver<P2pEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            P2pEvent::Tokens { from, chunk } => {
                if chunk.job & CHANNEL_ROUTE_BIT != 0 {
                    if let Some(book) = &gateway.channels {
                        book.relayed(from, chunk.job, &chunk.text).await;
                    }
                }
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
            P2pEvent::ChannelRequest { from, id, request } => {
                let gateway = Arc::clone(&gateway);
                tokio::spawn(async move {
                    let answer = match (&gateway.channels, request) {
                        (Some(book), ChannelRequest::Receipt(receipt)) => {
                            book.vouch(&gateway.chain, from, receipt).await
                        },
                        (None, _) => {
                            ChannelResponse::Refused("this gateway pays on no channels".into())
                        },
                        (Some(_), ChannelRequest::Serve { .. }) => {
                            ChannelResponse::Refused("a gateway serves no requests".into())
                        },
                        (
                            Some(_),
                            ChannelRequest::AnswerRecord { .. }
                            | ChannelRequest::RequestAnswerRecord { .. },
                        ) => ChannelResponse::Refused("a gateway keeps no answer records".into()),
                    };
                    if let Err(e) = gateway.p2p.answer_channel(id, answer).await {
                        tracing::warn!(%from, error = %e, "could not answer a channel request");
                    }
                });
            },
            _ => {},
        }
    }
}
