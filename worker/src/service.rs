//! The worker's job loop: chain assignments in, engine work, tokens out to the gateway,
//! signed receipts back to the chain.
//!
//! - [`AssignmentWatcher`] yields each new job of this provider once per block; on a lost
//!   connection the loop reconnects and resumes from what is open on chain, so a node restart
//!   neither drops nor doubles a job.
//! - Each job: pull the payload from the job's gateway over libp2p, check its hash against
//!   the chain's `input_hash`, hand it to the shared engine (every running job shares each
//!   batch), and only once the engine has accepted it acknowledge it; stream tokens back, and
//!   queue a receipt signed with the worker key for the tokens the gateway accepted.
//! - A job the worker cannot serve (payload missing, altered or malformed, an adapter it does
//!   not serve, a request the engine refuses, a failed generation) is refused on chain with a
//!   [`RefusalReason`]: the user's escrow comes back in full and nothing is slashed. The
//!   gateway hears the reason in a final chunk (`finish.reason` = `refused:<code>`).
//! - A gateway that cancels a job (its client went away) answers the next chunk
//!   `Cancelled`: the worker stops the generation and charges only what was delivered.
//! - Receipts go on chain in batches; heartbeats report the adapters resident in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use openledger_chain_client::retry::{retry, Backoff};
use openledger_chain_client::{
    commitment_hash, sign_receipt, AdapterId, AssignmentWatcher, ChainClient, ChainError, Job,
    JobId, ReceiptArg, ReceiptDraft, ReceiptOutcome, RefusalReason,
};
use openledger_channel::ChannelError;
use openledger_engine::{
    ActivationCommitment, EngineError, FinishReason, GenerationRequest, Rejection, SamplingParams,
    StreamEvent,
};
use openledger_model::ChatTemplate;
use openledger_p2p::payload::{self as job_payload, JobPayload};
use openledger_p2p::{
    FetchError, Finish, P2pError, P2pEvent, P2pHandle, PeerId, TokenChunk, REFUSED_PREFIX,
};
use subxt::utils::AccountId32;
use subxt_signer::sr25519::Keypair;
use tokio::sync::{mpsc, Mutex};

use crate::answers::{self, AnswerRecord, AnswerStore, RecordedSampling};
use crate::channels::{ChannelBook, ChannelSettings};
use crate::engine_host::EngineHost;
use crate::metrics::WorkerMetrics;

/// Shortest time between two token chunks of one job.
const CHUNK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a chunk is retried while the gateway is busy or rate-limits this worker.
const CHUNK_PATIENCE: Duration = Duration::from_secs(10);

/// How the worker runs.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The provider account the worker serves (the operator).
    pub provider: AccountId32,
    /// The key that signs acknowledgements, heartbeats and receipt batches (the operator's
    /// or its authorised worker account).
    pub signer: Keypair,
    /// The receipt-signing key registered for the provider.
    pub worker_key: SigningKey,
    /// On-chain adapter id -> the engine's name for it.
    pub adapters: HashMap<AdapterId, String>,
    /// Jobs served at once.
    pub max_concurrent: u32,
    /// Time between heartbeats.
    pub heartbeat_every: Duration,
    /// Most receipts per batch.
    pub receipt_batch: usize,
    /// Longest a receipt waits for others before its batch is sent.
    pub receipt_flush: Duration,
    /// How long to keep trying to fetch a payload the gateway has not offered yet.
    pub fetch_patience: Duration,
    /// The model's chat template, which renders a chat payload's messages into its prompt.
    pub chat_template: ChatTemplate,
    /// On-chain adapter id -> the BLAKE2b-256 of its weights file (what answer records name).
    pub adapter_hashes: HashMap<AdapterId, [u8; 32]>,
    /// Where each answer's tokens and activation commitment are kept for the challenge
    /// window; `None` keeps nothing.
    pub answers: Option<AnswerStore>,
    /// Test only: run jobs without their adapter while claiming it (a cheat verification
    /// must catch).
    pub cheat_skip_adapter: bool,
    /// Test only: move this many of every ten committed values one step of the encoding
    /// (`ActivationCommitment::nudged`): each job passes its audit, the scores drift.
    pub cheat_drift: usize,
}

/// The running worker.
pub struct Worker {
    chain: Mutex<ChainClient>,
    pub(crate) p2p: P2pHandle,
    pub(crate) engine: EngineHost,
    pub(crate) config: WorkerConfig,
    pub(crate) genesis_hash: [u8; 32],
    receipts: mpsc::UnboundedSender<ReceiptArg>,
    pub(crate) metrics: Arc<WorkerMetrics>,
    /// Jobs and channel requests being served (what heartbeats count as taken slots).
    pub(crate) running: Mutex<u32>,
    /// The payment channels served, when the worker serves any.
    pub(crate) channels: Option<ChannelBook>,
}

impl Worker {
    /// A worker serving `config.provider`'s jobs, and requests on payment channels to it
    /// when `channels` is given (fails when the channel store cannot be opened).
    pub fn new(
        chain: ChainClient,
        p2p: P2pHandle,
        engine: EngineHost,
        config: WorkerConfig,
        metrics: Arc<WorkerMetrics>,
        channels: Option<ChannelSettings>,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<ReceiptArg>), ChannelError> {
        let channels = channels.map(ChannelBook::open).transpose()?;
        let (receipts, queue) = mpsc::unbounded_channel();
        let genesis_hash = chain.genesis_hash();
        let worker = Arc::new(Self {
            chain: Mutex::new(chain),
            p2p,
            engine,
            config,
            genesis_hash,
            receipts,
            metrics,
            running: Mutex::new(0),
            channels,
        });
        Ok((worker, queue))
    }

    pub(crate) async fn chain(&self) -> ChainClient {
        self.chain.lock().await.clone()
    }

    /// Run the job loop, the receipt batcher, the heartbeats, and the channel requests of the
    /// p2p node's `events` with their redeemer, until the process ends.
    pub async fn run(
        self: Arc<Self>,
        queue: mpsc::UnboundedReceiver<ReceiptArg>,
        events: mpsc::Receiver<P2pEvent>,
    ) {
        tokio::spawn(Arc::clone(&self).submit_receipts(queue));
        tokio::spawn(Arc::clone(&self).channel_requests(events));
        tokio::spawn(Arc::clone(&self).redeem_vouchers());
        tokio::spawn(Arc::clone(&self).heartbeats());
        tokio::spawn(Arc::clone(&self).engine_metrics());
        tokio::spawn(Arc::clone(&self).audits());
        let mut watcher = AssignmentWatcher::new(self.chain().await, self.config.provider);
        loop {
            match watcher.next_batch().await {
                Ok(jobs) => {
                    if let Some(n) = watcher.last_block() {
                        self.metrics.chain_block.set(n as i64);
                    }
                    for (job, record) in jobs {
                        tokio::spawn(Arc::clone(&self).serve(job, record));
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "lost the chain; reconnecting");
                    let fresh = self.reconnect().await;
                    watcher.reconnected(fresh);
                },
            }
        }
    }

    /// Reconnect to the same node, retrying until it answers.
    async fn reconnect(&self) -> ChainClient {
        let url = self.chain().await.url().to_string();
        loop {
            match ChainClient::connect(&url, Duration::from_secs(30)).await {
                Ok(client) => {
                    tracing::info!(url, "reconnected to the chain");
                    *self.chain.lock().await = client.clone();
                    return client;
                },
                Err(e) => tracing::warn!(error = %e, "chain still unreachable"),
            }
        }
    }

    /// Serve one job end to end. A job the worker cannot serve is refused on chain with its
    /// reason (the user's escrow comes back in full, nothing is slashed) and the gateway is
    /// told why, so the user sees the reason at once.
    async fn serve(self: Arc<Self>, job: JobId, record: Job) {
        *self.running.lock().await += 1;
        self.metrics.running_jobs.inc();
        let outcome = self.serve_inner(job, &record).await;
        *self.running.lock().await -= 1;
        self.metrics.running_jobs.dec();
        if let Err(Refusal { reason, detail }) = outcome {
            tracing::warn!(job, reason = reason.code(), %detail, "refusing the job");
            self.metrics.jobs.with_label_values(&["refused"]).inc();
            if let Ok(gateway) = PeerId::from_bytes(&record.gateway) {
                let chunk = TokenChunk {
                    job,
                    seq: 0,
                    text: detail.clone(),
                    finish: Some(Finish {
                        reason: format!("{REFUSED_PREFIX}{}", reason.code()),
                        input_tokens: 0,
                        output_tokens: 0,
                        output_hash: [0; 32],
                    }),
                };
                if let Err(e) = self.p2p.send_tokens(gateway, chunk).await {
                    tracing::debug!(job, error = %e, "could not tell the gateway of the refusal");
                }
            }
            let chain = self.chain().await;
            if let Err(e) = chain.refuse(&self.config.signer, job, reason).await {
                // The job then expires; unacknowledged it costs reputation only.
                tracing::warn!(job, error = %e, "the refusal did not reach the chain");
            }
        }
    }

    async fn serve_inner(&self, job: JobId, record: &Job) -> Result<(), Refusal> {
        let gateway = PeerId::from_bytes(&record.gateway).map_err(|e| {
            Refusal::new(
                RefusalReason::PayloadUnavailable,
                format!("the job's gateway peer id is malformed: {e}"),
            )
        })?;
        let adapter = self.config.adapters.get(&record.adapter).cloned().ok_or_else(|| {
            Refusal::new(
                RefusalReason::AdapterNotServed,
                format!("adapter {} is not served by this worker", record.adapter),
            )
        })?;
        let bytes = self.fetch_payload(gateway, job).await?;
        if job_payload::hash(&bytes) != record.input_hash.0 {
            return Err(Refusal::new(
                RefusalReason::PayloadMismatch,
                "the gateway's payload does not match the job's input_hash",
            ));
        }
        let payload = JobPayload::from_bytes(&bytes).map_err(|e| {
            Refusal::new(RefusalReason::MalformedPayload, format!("not a job payload: {e}"))
        })?;
        let context = payload.context_shares();
        match self.chain().await.check_context(&context).await {
            Ok(Ok(())) => {},
            Ok(Err(bad)) => {
                return Err(Refusal::new(
                    RefusalReason::InvalidParameters,
                    format!("the retrieval context cannot be paid: {bad}"),
                ))
            },
            Err(e) => {
                return Err(Refusal::new(
                    RefusalReason::WorkerFault,
                    format!("cannot check the retrieval context on chain: {e}"),
                ))
            },
        }
        if payload.max_tokens > record.max_output_tokens {
            return Err(Refusal::new(
                RefusalReason::InvalidParameters,
                format!(
                    "the payload asks for {} tokens, the job allows {}",
                    payload.max_tokens, record.max_output_tokens
                ),
            ));
        }
        // The engine checks the request before anything is acknowledged: a request it refuses
        // is refused on chain, never acknowledged and left to expire.
        let params = sampling(&payload);
        let recorded = RecordedSampling::of(&params);
        let (prompt, events) = self
            .engine
            .generate_counted(GenerationRequest {
                prompt: self.prompt_of(&payload)?,
                adapter: (!self.config.cheat_skip_adapter).then_some(adapter),
                params,
            })
            .await
            .map_err(|e| Refusal::new(refusal_for(&e), e.to_string()))?;
        let prompt_tokens = prompt.len();
        // Acknowledge while the engine runs: tokens stream to the gateway at once, and only
        // the receipt waits for the acknowledgement to be in a block.
        let chain = self.chain().await;
        let signer = self.config.signer.clone();
        let ack = tokio::spawn(async move { chain.acknowledge(&signer, job).await });

        let streamed = self.stream_answer(gateway, job, prompt_tokens, events).await?;
        self.keep_answer(answers::job_key(job), record.adapter, &prompt, recorded, &streamed).await;
        if streamed.cancelled {
            tracing::info!(
                job,
                tokens = streamed.delivered.tokens,
                "the gateway cancelled the job"
            );
            self.metrics.jobs.with_label_values(&["cancelled"]).inc();
        }
        let commitment = streamed.commitment_hash();
        let delivered = streamed.delivered;
        // A receipt settles an assigned job whether or not its acknowledgement made it into a
        // block, so a failed acknowledgement is only reported.
        match ack.await {
            Ok(Ok(())) => self.metrics.jobs.with_label_values(&["acknowledged"]).inc(),
            Ok(Err(e)) => tracing::warn!(job, error = %e, "acknowledgement failed"),
            Err(e) => tracing::warn!(job, error = %e, "acknowledgement task failed"),
        }
        let draft = ReceiptDraft {
            job,
            output_hash: job_payload::hash(delivered.text.as_bytes()),
            input_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
            output_tokens: delivered.tokens,
            context,
            commitment_hash: commitment,
        };
        let receipt = sign_receipt(
            &self.config.worker_key,
            self.genesis_hash,
            &self.config.provider,
            record.adapter,
            draft,
        )
        .map_err(|e| Refusal::new(RefusalReason::WorkerFault, e.to_string()))?;
        let _ = self.receipts.send(receipt);
        Ok(())
    }

    /// Streams an answer's tokens to `gateway` as chunks under `route` (an on-chain job id,
    /// or a channel request's id) until the engine finishes it or the gateway cancels it.
    /// Tokens are coalesced: at most one chunk per answer every `CHUNK_INTERVAL`, so a worker
    /// streaming many answers stays within the gateway's per-peer request rate. Only what the
    /// gateway accepted counts as delivered (and is charged). A generation that fails, or an
    /// engine that stops before the answer is finished, is an error.
    pub(crate) async fn stream_answer(
        &self,
        gateway: PeerId,
        route: u64,
        prompt_tokens: usize,
        mut events: mpsc::UnboundedReceiver<StreamEvent>,
    ) -> Result<Streamed, Refusal> {
        let mut delivered = Delivered::default();
        let mut pending = Pending::default();
        let mut seq = 0u32;
        // The first token goes out at once (the time to first token); later ones coalesce.
        let now = tokio::time::Instant::now();
        let mut last_sent = now.checked_sub(CHUNK_INTERVAL).unwrap_or(now);
        let mut finished = false;
        let mut cancelled = false;
        let mut output = Vec::new();
        let mut answer = None;
        while let Some(event) = events.recv().await {
            match event {
                StreamEvent::Token { id, text: piece } => {
                    output.push(id);
                    self.metrics.tokens.inc();
                    pending.push(&piece);
                    if last_sent.elapsed() >= CHUNK_INTERVAL && !pending.text.is_empty() {
                        let chunk = TokenChunk {
                            job: route,
                            seq,
                            text: pending.text.clone(),
                            finish: None,
                        };
                        seq += 1;
                        match self.send_chunk(gateway, chunk).await {
                            Ok(()) => delivered.take(&mut pending),
                            Err(P2pError::Cancelled { .. }) => {
                                cancelled = true;
                                break;
                            },
                            Err(e) => {
                                tracing::warn!(route, error = %e, "could not stream tokens to the gateway");
                                pending.clear();
                            },
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                },
                StreamEvent::Finished { reason, activations, .. } => {
                    let reason = finish_reason(reason);
                    finished = true;
                    let drift = self.config.cheat_drift;
                    let activations =
                        activations.map(|a| if drift > 0 { a.nudged(&output, drift) } else { a });
                    answer = activations.map(|a| (std::mem::take(&mut output), a));
                    // The last chunk carries the totals; if the gateway takes it, every token
                    // was delivered.
                    let mut all = delivered.clone();
                    all.take(&mut pending.clone());
                    let last = TokenChunk {
                        job: route,
                        seq,
                        text: pending.text.clone(),
                        finish: Some(Finish {
                            reason: reason.into(),
                            input_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
                            output_tokens: all.tokens,
                            output_hash: job_payload::hash(all.text.as_bytes()),
                        }),
                    };
                    match self.send_chunk(gateway, last).await {
                        Ok(()) => delivered = all,
                        Err(P2pError::Cancelled { .. }) => cancelled = true,
                        Err(e) => {
                            tracing::warn!(route, error = %e, "could not send the final chunk")
                        },
                    }
                    break;
                },
                StreamEvent::Failed(e) => {
                    return Err(Refusal::new(
                        RefusalReason::WorkerFault,
                        format!("generation failed: {e}"),
                    ))
                },
                StreamEvent::Verified(_) => {
                    return Err(Refusal::new(
                        RefusalReason::WorkerFault,
                        "the engine answered a generation with a verification",
                    ))
                },
            }
        }
        // Dropping the stream cancels the request in the engine within one step.
        drop(events);
        if !cancelled && !finished {
            return Err(Refusal::new(
                RefusalReason::WorkerFault,
                "the engine stopped before the answer finished",
            ));
        }
        Ok(Streamed { delivered, cancelled, answer })
    }

    /// Keeps an answer's tokens and commitment for the challenge window (when the worker
    /// keeps answers and the engine committed): written before the receipt leaves, on a
    /// blocking thread rather than the async ones serving other answers.
    pub(crate) async fn keep_answer(
        &self,
        key: String,
        adapter: AdapterId,
        prompt: &[u32],
        sampling: RecordedSampling,
        streamed: &Streamed,
    ) {
        let (Some(store), Some((output, activations))) = (&self.config.answers, &streamed.answer)
        else {
            return;
        };
        let record = AnswerRecord {
            key,
            adapter: self.config.adapter_hashes.get(&adapter).map(|h| (adapter, *h)),
            prompt_tokens: prompt.to_vec(),
            output_tokens: output.clone(),
            sampling: Some(sampling),
            activations: activations.clone(),
            kept_at: answers::now_secs(),
        };
        let (store, key) = (store.clone(), record.key.clone());
        let kept = tokio::task::spawn_blocking(move || store.keep(&record)).await;
        match kept {
            Ok(Ok(_)) => {},
            Ok(Err(e)) => {
                tracing::error!(key, error = %e, "cannot keep the answer for verification")
            },
            Err(e) => tracing::error!(key, error = %e, "the task keeping the answer failed"),
        }
    }

    /// The text the engine runs for a payload: a completion's prompt, or a chat's messages
    /// rendered with the model's chat template. A conversation the template refuses (its
    /// `raise_exception`, such as roles that do not alternate) is the request's fault.
    pub(crate) fn prompt_of(&self, payload: &JobPayload) -> Result<String, Refusal> {
        if payload.messages.is_empty() {
            return Ok(payload.prompt.clone());
        }
        self.config.chat_template.render(&payload.messages, true).map_err(|e| {
            Refusal::new(
                RefusalReason::InvalidParameters,
                format!("the chat cannot be rendered: {e}"),
            )
        })
    }

    /// Send one chunk, waiting and retrying while the gateway answers that it is busy or
    /// rate-limits us (for up to `CHUNK_PATIENCE`); other failures are returned at once.
    async fn send_chunk(&self, gateway: PeerId, chunk: TokenChunk) -> Result<(), P2pError> {
        let backoff = Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(200),
            CHUNK_PATIENCE,
        );
        retry(
            backoff,
            || self.p2p.send_tokens(gateway, chunk.clone()),
            |e| matches!(e, P2pError::RateLimited { .. } | P2pError::Busy { .. }),
        )
        .await
    }

    /// Fetch the payload, retrying while the gateway has not offered it yet.
    async fn fetch_payload(&self, gateway: PeerId, job: JobId) -> Result<Vec<u8>, Refusal> {
        let backoff = Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(1),
            self.config.fetch_patience,
        );
        let fetched = retry(
            backoff,
            || self.p2p.fetch_payload(gateway, job),
            |e| {
                let later = !matches!(e, FetchError::TooLarge { .. } | FetchError::Denied { .. });
                if later {
                    tracing::debug!(job, error = %e, "payload not available yet");
                }
                later
            },
        )
        .await;
        fetched.map_err(|e| match e {
            FetchError::TooLarge { .. } => {
                Refusal::new(RefusalReason::PayloadTooLarge, e.to_string())
            },
            FetchError::Denied { .. } => {
                Refusal::new(RefusalReason::PayloadUnavailable, format!("payload refused: {e}"))
            },
            e => Refusal::new(
                RefusalReason::PayloadUnavailable,
                format!("no payload from the gateway: {e}"),
            ),
        })
    }

    /// Send receipts in batches: when `receipt_batch` are waiting or the oldest has waited
    /// `receipt_flush`. A batch that cannot reach the chain is retried; one the chain rejects
    /// is logged receipt by receipt.
    async fn submit_receipts(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<ReceiptArg>) {
        let mut batch: Vec<ReceiptArg> = Vec::new();
        loop {
            if batch.is_empty() {
                match queue.recv().await {
                    Some(r) => batch.push(r),
                    None => return,
                }
            }
            let flush_at = tokio::time::Instant::now() + self.config.receipt_flush;
            while batch.len() < self.config.receipt_batch {
                match tokio::time::timeout_at(flush_at, queue.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            let chain = self.chain().await;
            match chain.submit_receipts(&self.config.signer, &batch).await {
                Ok(outcomes) => {
                    for outcome in outcomes {
                        match outcome {
                            ReceiptOutcome::Settled(s) => {
                                self.metrics.jobs.with_label_values(&["settled"]).inc();
                                tracing::info!(job = s.job, charged = %s.charged, "job settled");
                            },
                            ReceiptOutcome::Rejected(job) => {
                                self.metrics.jobs.with_label_values(&["rejected"]).inc();
                                tracing::warn!(job, "receipt rejected");
                            },
                        }
                    }
                    batch.clear();
                },
                Err(ChainError::Dispatch { error, .. }) => {
                    tracing::warn!(%error, receipts = batch.len(), "every receipt of the batch was rejected");
                    self.metrics.jobs.with_label_values(&["rejected"]).inc_by(batch.len() as u64);
                    batch.clear();
                },
                Err(e) => {
                    tracing::warn!(error = %e, "receipts not submitted; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
            }
        }
    }

    /// Report alive with the adapters resident in memory and the free slots; refresh the
    /// metrics of the engine and the chain.
    async fn heartbeats(self: Arc<Self>) {
        loop {
            let tiers = self.engine.adapters().await;
            self.metrics.set_adapters(&tiers.compute, &tiers.host);
            let hot: Vec<AdapterId> = self
                .config
                .adapters
                .iter()
                .filter(|(_, name)| tiers.host.contains(name) || tiers.compute.contains(name))
                .map(|(id, _)| *id)
                .collect();
            let running = *self.running.lock().await;
            let free = self.config.max_concurrent.saturating_sub(running);
            let chain = self.chain().await;
            if let Ok(best) = chain.best().await {
                let lag =
                    (best.block_number() as i64).saturating_sub(self.metrics.chain_block.get());
                self.metrics.chain_lag.set(lag.max(0));
            }
            if let Err(e) =
                chain.heartbeat(&self.config.signer, &self.config.provider, &hot, free).await
            {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            tokio::time::sleep(self.config.heartbeat_every).await;
        }
    }
}

impl Worker {
    /// Copy the engine's batch size and queue depth into the metrics, every half second.
    async fn engine_metrics(self: Arc<Self>) {
        loop {
            let load = self.engine.load();
            self.metrics.batch_size.set(load.batch as i64);
            self.metrics.queue_depth.set(load.waiting as i64);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Why a job is refused, and the detail logged and shown to the user.
pub(crate) struct Refusal {
    pub(crate) reason: RefusalReason,
    pub(crate) detail: String,
}

/// How a streamed answer ended: what the gateway accepted, and whether it cancelled.
pub(crate) struct Streamed {
    pub(crate) delivered: Delivered,
    pub(crate) cancelled: bool,
    /// Every generated token and the engine's activation commitment, for an answer the
    /// engine finished (not one cancelled).
    pub(crate) answer: Option<(Vec<u32>, ActivationCommitment)>,
}

impl Streamed {
    /// The hash of the answer's activation commitment that its receipt carries: zeros when
    /// the engine finished none (a cancelled answer, or commitments switched off).
    pub(crate) fn commitment_hash(&self) -> [u8; 32] {
        self.answer.as_ref().map_or([0; 32], |(_, a)| commitment_hash(a.as_bytes()))
    }
}

impl Refusal {
    pub(crate) fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// The engine's sampling parameters for a job's payload.
pub fn sampling(payload: &JobPayload) -> SamplingParams {
    SamplingParams {
        temperature: payload.temperature,
        top_p: payload.top_p,
        top_k: payload.top_k as usize,
        seed: payload.seed,
        max_tokens: payload.max_tokens as usize,
        stop: payload.stop.clone(),
        ignore_eos: false,
    }
}

/// Tokens streamed to the gateway, or waiting to be.
#[derive(Clone, Default)]
pub(crate) struct Delivered {
    pub(crate) text: String,
    pub(crate) tokens: u32,
}

/// Tokens generated since the last chunk.
#[derive(Clone, Default)]
struct Pending {
    text: String,
    tokens: u32,
}

impl Pending {
    fn push(&mut self, piece: &str) {
        self.text.push_str(piece);
        self.tokens = self.tokens.saturating_add(1);
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Delivered {
    /// The gateway accepted `pending`: count it as delivered.
    fn take(&mut self, pending: &mut Pending) {
        self.text.push_str(&pending.text);
        self.tokens = self.tokens.saturating_add(pending.tokens);
        pending.clear();
    }
}

/// The refusal reason for a request the engine would not take.
pub(crate) fn refusal_for(error: &EngineError) -> RefusalReason {
    match error.rejection() {
        Some(Rejection::EmptyPrompt) => RefusalReason::EmptyPrompt,
        Some(Rejection::PromptTooLong) => RefusalReason::PromptTooLong,
        Some(Rejection::UnknownAdapter) => RefusalReason::AdapterNotServed,
        Some(Rejection::InvalidSampling | Rejection::InvalidToken) => {
            RefusalReason::InvalidParameters
        },
        None => RefusalReason::WorkerFault,
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}
