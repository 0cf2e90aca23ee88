//! The worker's side of payment channels: requests served off the block clock, paid by
//! vouchers that the worker redeems on chain in bulk.
//!
//! A gateway asks over libp2p (`ChannelRequest::Serve`) to serve a request on a channel its
//! payer opened to this provider. The worker checks, before anything runs:
//! - the channel is open on chain, to this provider, and the asking peer holds the channel's
//!   signer key (a gateway's libp2p identity is the ed25519 key it vouches with), so no one
//!   else can make the worker spend compute on someone's channel;
//! - the adapter is served here, the payload parses and its retrieval context can be paid;
//! - the request's most possible charge fits the credit the worker extends the channel
//!   ([`ProviderChannel::admit`]: unvouched receipts plus requests running stay under its
//!   credit limit, and everything owed within the deposit);
//! - the engine takes it.
//!
//! Then it answers `Accepted`, streams the tokens at once (the same chunks as the per-job
//! path, under the request's id), signs a [`ServiceReceipt`] for what the gateway accepted,
//! writes it to its [`Store`] and sends it; the gateway answers with the channel's next
//! voucher, which is checked as the chain will check it and written before it is relied on.
//! A [`RedeemPolicy`] says when the latest voucher is redeemed: every N blocks, once an amount
//! is waiting, and always while the payer's close is in its challenge window. A restarted
//! worker reads its channels from the store and redeems what it holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openledger_chain_client::channels::{ChannelPhase, ChannelStatus, VoucherArg};
use openledger_chain_client::{fee_for, AdapterId, Balance, RefusalReason, Subject};
use openledger_channel::{
    ChannelError, ContextShare, ProviderChannel, RedeemPolicy, ServiceReceipt, SignedReceipt, Store,
};
use openledger_engine::GenerationRequest;
use openledger_p2p::payload::{self as job_payload, JobPayload};
use openledger_p2p::{
    peer_id_of_ed25519_public, ChannelRequest, ChannelResponse, P2pError, P2pEvent, PeerId,
    CHANNEL_ROUTE_BIT,
};
use tokio::sync::{mpsc, Mutex};

use crate::answers::{self, RecordedSampling};
use crate::service::{refusal_for, sampling, Refusal, Worker};

/// A channel request's generation, started: its prompt tokens, the engine's events, and the
/// sampling its answer record names.
type Started =
    (Vec<u32>, mpsc::UnboundedReceiver<openledger_engine::StreamEvent>, RecordedSampling);

/// How the worker serves channels.
#[derive(Clone, Debug)]
pub struct ChannelSettings {
    /// The channel store (a redb file).
    pub store: PathBuf,
    /// The most the worker serves a channel ahead of its vouchers, planck.
    pub credit_limit: Balance,
    /// When vouchers are redeemed.
    pub policy: RedeemPolicy,
    /// How often the redeemer looks at the chain.
    pub poll: Duration,
}

/// A channel the worker serves.
struct Served {
    channel: ProviderChannel,
    /// Most possible charges of the requests running now (admitted, no receipt yet).
    reserved: Balance,
    /// The close's challenge window end, once the payer asked to close.
    closing: Option<u32>,
    /// The block of the worker's last redemption (0: none since start).
    last_redeemed_at: u32,
    /// Held while a receipt is traded for its voucher: vouchers arrive in order.
    exchange: Arc<Mutex<()>>,
}

impl Served {
    fn new(channel: ProviderChannel) -> Self {
        Self {
            channel,
            reserved: 0,
            closing: None,
            last_redeemed_at: 0,
            exchange: Arc::new(Mutex::new(())),
        }
    }
}

/// The worker's channels: its store and what it holds in memory.
pub(crate) struct ChannelBook {
    settings: ChannelSettings,
    store: Store,
    channels: Mutex<HashMap<u64, Served>>,
    /// Prices per 1,000 tokens read from the chain, of each adapter and (under `None`) of
    /// this provider, with when they were read: a request does not wait for the chain to
    /// price it.
    prices: Mutex<HashMap<Option<AdapterId>, (Balance, Instant)>>,
    /// Unvouched receipts by (channel, request): since when (or since their last retry), and
    /// how often they were sent again.
    unvouched_since: Mutex<HashMap<(u64, u64), (Instant, u32)>>,
}

/// How long a receipt stays unvouched before it is sent again.
const RETRADE_AFTER: Duration = Duration::from_secs(10);
/// How often an unvouched receipt is sent again (per process).
const RETRADES: u32 = 5;
/// How often a receipt is offered when it is new (with growing pauses between).
const TRADE_ATTEMPTS: u32 = 5;

/// How long a price read from the chain is used before it is read again.
const PRICE_FRESH_FOR: Duration = Duration::from_secs(30);

impl ChannelBook {
    /// Opens the store and loads the channels it holds.
    pub(crate) fn open(settings: ChannelSettings) -> Result<Self, ChannelError> {
        let store = Store::open(&settings.store)?;
        let channels =
            store.provider_channels()?.into_iter().map(|c| (c.channel, Served::new(c))).collect();
        Ok(Self {
            settings,
            store,
            channels: Mutex::new(channels),
            prices: Mutex::new(HashMap::new()),
            unvouched_since: Mutex::new(HashMap::new()),
        })
    }
}

/// A request the worker admitted on a channel.
struct Admitted {
    adapter: AdapterId,
    max_charge: Balance,
    price_per_1k: Balance,
    input_hash: [u8; 32],
    contexts: Vec<ContextShare>,
}

/// What a refused channel request is told.
fn refused(detail: impl Into<String>) -> ChannelResponse {
    ChannelResponse::Refused(detail.into())
}

impl Worker {
    /// Answers the channel requests of the p2p node's events until it stops.
    pub(crate) async fn channel_requests(self: Arc<Self>, mut events: mpsc::Receiver<P2pEvent>) {
        while let Some(event) = events.recv().await {
            let P2pEvent::ChannelRequest { from, id, request } = event else { continue };
            match request {
                ChannelRequest::Serve { channel, request, adapter, max_charge, payload } => {
                    let worker = Arc::clone(&self);
                    tokio::spawn(async move {
                        worker
                            .serve_channel(from, id, channel, request, adapter, max_charge, payload)
                            .await
                    });
                },
                ChannelRequest::Receipt(_) => {
                    let _ = self
                        .p2p
                        .answer_channel(id, refused("a worker does not vouch for receipts"))
                        .await;
                },
                ChannelRequest::AnswerRecord { job } => {
                    let worker = Arc::clone(&self);
                    let subject = Subject::Job(job);
                    tokio::spawn(
                        async move { worker.answer_record_request(from, id, subject).await },
                    );
                },
                ChannelRequest::RequestAnswerRecord { channel, request } => {
                    let worker = Arc::clone(&self);
                    let subject = Subject::Request { channel, request };
                    tokio::spawn(
                        async move { worker.answer_record_request(from, id, subject).await },
                    );
                },
            }
        }
    }

    /// Serves one channel request end to end: checks, the answer streamed, the receipt signed
    /// and traded for the channel's next voucher.
    #[allow(clippy::too_many_arguments)]
    async fn serve_channel(
        self: Arc<Self>,
        from: PeerId,
        id: u64,
        channel: u64,
        request: u64,
        adapter: AdapterId,
        max_charge: Balance,
        payload: Vec<u8>,
    ) {
        let Some(book) = self.channels.as_ref() else {
            let _ = self.p2p.answer_channel(id, refused("this worker serves no channels")).await;
            return;
        };
        let admitted = match self
            .admit_channel_request(book, from, channel, request, adapter, max_charge, &payload)
            .await
        {
            Ok(a) => a,
            Err(detail) => {
                tracing::info!(channel, request, %detail, "channel request refused");
                let _ = self.p2p.answer_channel(id, refused(detail)).await;
                return;
            },
        };
        // The engine checks the request before anything is accepted.
        let started = match self.start_generation(&payload, adapter).await {
            Ok(started) => started,
            Err(refusal) => {
                book.release(channel, max_charge).await;
                let _ = self.p2p.answer_channel(id, refused(refusal.detail)).await;
                return;
            },
        };
        let (prompt, events, recorded) = started;
        let prompt_tokens = prompt.len();
        if let Err(e) = self.p2p.answer_channel(id, ChannelResponse::Accepted).await {
            tracing::warn!(channel, request, error = %e, "could not accept the channel request");
        }
        // A slot taken, as a job's: the heartbeats (and so the matcher) see it.
        *self.running.lock().await += 1;
        self.metrics.running_jobs.inc();
        let streamed = self.stream_answer(from, request, prompt_tokens, events).await;
        self.metrics.running_jobs.dec();
        *self.running.lock().await -= 1;
        book.release(channel, max_charge).await;
        let streamed = match streamed {
            Ok(s) => s,
            Err(refusal) => {
                // Nothing is charged for a failed generation; the gateway hears why.
                tracing::warn!(channel, request, detail = %refusal.detail, "channel request failed");
                self.tell_refusal(from, request, refusal).await;
                return;
            },
        };
        self.keep_answer(
            answers::request_key(channel, request),
            admitted.adapter,
            &prompt,
            recorded,
            &streamed,
        )
        .await;
        let tokens = (prompt_tokens as u64).saturating_add(u64::from(streamed.delivered.tokens));
        let receipt = ServiceReceipt {
            channel,
            request,
            adapter: admitted.adapter,
            input_hash: admitted.input_hash,
            output_hash: job_payload::hash(streamed.delivered.text.as_bytes()),
            input_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
            output_tokens: streamed.delivered.tokens,
            charge: fee_for(tokens, admitted.price_per_1k).min(admitted.max_charge),
            contexts: admitted.contexts.clone(),
            commitment_hash: Some(streamed.commitment_hash()),
        }
        .sign(&self.config.worker_key, self.genesis_hash);
        self.metrics
            .jobs
            .with_label_values(&[if streamed.cancelled { "cancelled" } else { "served" }])
            .inc();
        if let Err(e) = book.record(&receipt).await {
            tracing::error!(channel, request, error = %e, "cannot record the receipt; not sending it");
            return;
        }
        self.trade_receipt(book, from, channel, request, receipt, TRADE_ATTEMPTS).await;
    }

    /// The checks made before a channel request runs; a refusal says what failed.
    #[allow(clippy::too_many_arguments)]
    async fn admit_channel_request(
        &self,
        book: &ChannelBook,
        from: PeerId,
        channel: u64,
        request: u64,
        adapter: AdapterId,
        max_charge: Balance,
        payload: &[u8],
    ) -> Result<Admitted, String> {
        if request & CHANNEL_ROUTE_BIT == 0 {
            return Err(format!("request id {request} lacks the channel route bit"));
        }
        if !self.config.adapters.contains_key(&adapter) {
            return Err(format!("adapter {adapter} is not served by this worker"));
        }
        let parsed =
            JobPayload::from_bytes(payload).map_err(|e| format!("not a job payload: {e}"))?;
        let context = parsed.context_shares();
        if !context.is_empty() {
            match self.chain().await.check_context(&context).await {
                Ok(Ok(())) => {},
                Ok(Err(bad)) => return Err(format!("the retrieval context cannot be paid: {bad}")),
                Err(e) => return Err(format!("cannot check the retrieval context on chain: {e}")),
            }
        }
        let price_per_1k = self.channel_price(book, adapter).await?;
        book.admit(self, from, channel, max_charge).await?;
        Ok(Admitted {
            adapter,
            max_charge,
            price_per_1k,
            input_hash: job_payload::hash(payload),
            contexts: context
                .into_iter()
                .map(|(datanet, ppm)| ContextShare { datanet, ppm })
                .collect(),
        })
    }

    /// Queues the payload's generation in the engine (its refusal is the request's).
    async fn start_generation(
        &self,
        payload: &[u8],
        adapter: AdapterId,
    ) -> Result<Started, Refusal> {
        let payload = JobPayload::from_bytes(payload).map_err(|e| {
            Refusal::new(RefusalReason::MalformedPayload, format!("not a job payload: {e}"))
        })?;
        // The test-only cheat runs the base model alone while the receipt names the adapter.
        let name =
            self.config.adapters.get(&adapter).cloned().filter(|_| !self.config.cheat_skip_adapter);
        let params = sampling(&payload);
        let recorded = RecordedSampling::of(&params);
        let (prompt, events) = self
            .engine
            .generate_counted(GenerationRequest {
                prompt: self.prompt_of(&payload)?,
                adapter: name,
                params,
            })
            .await
            .map_err(|e| Refusal::new(refusal_for(&e), e.to_string()))?;
        Ok((prompt, events, recorded))
    }

    /// The provider's price plus the adapter's, per 1,000 tokens: what a channel request is
    /// charged at, as a per-job receipt is.
    async fn channel_price(
        &self,
        book: &ChannelBook,
        adapter: AdapterId,
    ) -> Result<Balance, String> {
        let provider = self.price_of(book, None).await?;
        Ok(provider.saturating_add(self.price_of(book, Some(adapter)).await?))
    }

    /// This provider's price (`None`) or an adapter's, from the chain at most
    /// `PRICE_FRESH_FOR` ago.
    async fn price_of(
        &self,
        book: &ChannelBook,
        what: Option<AdapterId>,
    ) -> Result<Balance, String> {
        if let Some((price, at)) = book.prices.lock().await.get(&what) {
            if at.elapsed() < PRICE_FRESH_FOR {
                return Ok(*price);
            }
        }
        let chain = self.chain().await;
        let price = match what {
            Some(adapter) => {
                chain
                    .adapter(adapter)
                    .await
                    .map_err(|e| format!("cannot read adapter {adapter} on chain: {e}"))?
                    .ok_or_else(|| format!("adapter {adapter} is not registered"))?
                    .price_per_1k
            },
            None => {
                chain
                    .provider(&self.config.provider)
                    .await
                    .map_err(|e| format!("cannot read this provider's terms on chain: {e}"))?
                    .ok_or("this provider is not registered")?
                    .price_per_1k
            },
        };
        book.prices.lock().await.insert(what, (price, Instant::now()));
        Ok(price)
    }

    /// Tells the gateway a request failed after it was accepted (nothing is charged).
    async fn tell_refusal(&self, gateway: PeerId, request: u64, refusal: Refusal) {
        let chunk = openledger_p2p::TokenChunk {
            job: request,
            seq: u32::MAX,
            text: refusal.detail,
            finish: Some(openledger_p2p::Finish {
                reason: format!("{}{}", openledger_p2p::REFUSED_PREFIX, refusal.reason.code()),
                input_tokens: 0,
                output_tokens: 0,
                output_hash: [0; 32],
            }),
        };
        if let Err(e) = self.p2p.send_tokens(gateway, chunk).await {
            tracing::debug!(request, error = %e, "could not tell the gateway of the failure");
        }
    }

    /// Sends the receipt to the gateway and keeps the voucher it answers with. A voucher the
    /// worker cannot accept (the gateway had not yet seen a redemption, so its breakdown is
    /// of an old increment) is asked for again after the chain state is refreshed; a gateway
    /// that does not answer leaves the receipt unvouched, counting against the credit limit.
    async fn trade_receipt(
        &self,
        book: &ChannelBook,
        gateway: PeerId,
        channel: u64,
        request: u64,
        receipt: SignedReceipt,
        attempts: u32,
    ) {
        let Some(exchange) = book.exchange_lock(channel).await else { return };
        let _turn = exchange.lock().await;
        for attempt in 0..attempts {
            if !book.is_unvouched(channel, request).await {
                // Another trade of it (a retry of an unvouched receipt) got its voucher.
                return;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
            }
            let answer =
                self.p2p.ask_channel(gateway, ChannelRequest::Receipt(receipt.clone())).await;
            match answer {
                Ok(ChannelResponse::Voucher(voucher)) => {
                    match book.accept(request, channel, voucher, self.genesis_hash).await {
                        Ok(()) => {
                            tracing::debug!(channel, request, "voucher accepted");
                            self.metrics.jobs.with_label_values(&["vouched"]).inc();
                            return;
                        },
                        Err(e) => {
                            tracing::warn!(channel, request, error = %e, "voucher refused; refreshing the channel");
                            self.refresh_channel(book, channel).await;
                        },
                    }
                },
                Ok(ChannelResponse::Refused(reason)) => {
                    tracing::warn!(channel, request, %reason, "the gateway refused the receipt");
                    return;
                },
                Ok(other) => {
                    tracing::debug!(channel, request, answer = ?other, "receipt not taken yet")
                },
                Err(P2pError::Stopped) => return,
                Err(e) => tracing::warn!(channel, request, error = %e, "receipt not delivered"),
            }
        }
        tracing::warn!(channel, request, "no voucher for the receipt; it stays unvouched");
    }

    /// Reads a channel's state on chain into the book: redemptions by anyone, top-ups, a
    /// close. Returns the block number read at.
    async fn refresh_channel(&self, book: &ChannelBook, channel: u64) -> Option<u32> {
        let chain = self.chain().await;
        let status = chain.channel(channel).await;
        let now = chain.best().await.ok().map(|b| b.block_number() as u32);
        let mut channels = book.channels.lock().await;
        match status {
            Ok(ChannelStatus::Open(c)) => {
                if let Some(served) = channels.get_mut(&channel) {
                    book.redeemed(served, c.redeemed, c.sequence, Some(c.receipts_root.0));
                    served.channel.deposit = c.deposit;
                    served.closing = match c.phase {
                        ChannelPhase::Closing { until } => Some(until),
                        ChannelPhase::Open => None,
                    };
                    if let Err(e) = book.store.save_provider(&served.channel, None) {
                        tracing::warn!(channel, error = %e, "cannot save the channel");
                    }
                }
                now
            },
            Ok(ChannelStatus::Closed | ChannelStatus::Unknown) => {
                if channels.remove(&channel).is_some() {
                    tracing::info!(channel, "channel closed on chain; no longer served");
                }
                None
            },
            Err(e) => {
                tracing::warn!(channel, error = %e, "cannot read the channel on chain");
                None
            },
        }
    }

    /// Redeems each channel's latest voucher when the policy says so, and sends again the
    /// receipts no voucher came for, until the process ends.
    pub(crate) async fn redeem_vouchers(self: Arc<Self>) {
        let Some(book) = self.channels.as_ref() else { return };
        // Retries wait on gateways that may not answer: beside the redemptions, not before.
        let retrader = Arc::clone(&self);
        tokio::spawn(async move {
            let Some(book) = retrader.channels.as_ref() else { return };
            loop {
                retrader.retrade_unvouched(book).await;
                tokio::time::sleep(book.settings.poll.max(Duration::from_secs(1))).await;
            }
        });
        loop {
            let ids: Vec<u64> = book.channels.lock().await.keys().copied().collect();
            for channel in ids {
                self.redeem_if_due(book, channel).await;
            }
            tokio::time::sleep(book.settings.poll).await;
        }
    }

    /// Sends again the receipts that stayed unvouched for [`RETRADE_AFTER`] (the gateway did
    /// not answer, or the worker restarted before the voucher came) to the gateway that holds
    /// the channel's signer key, at most [`RETRADES`] times each in this process's life: the
    /// gateway answers a receipt it has vouched for with its latest voucher, and one it is
    /// still waiting for with the next.
    async fn retrade_unvouched(&self, book: &ChannelBook) {
        let owed: Vec<(u64, [u8; 32], SignedReceipt)> = {
            let channels = book.channels.lock().await;
            channels
                .iter()
                .flat_map(|(id, s)| {
                    s.channel.unvouched.iter().map(move |r| (*id, s.channel.signer, r.clone()))
                })
                .collect()
        };
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut seen = book.unvouched_since.lock().await;
            let owed_keys: std::collections::HashSet<(u64, u64)> =
                owed.iter().map(|(c, _, r)| (*c, r.receipt.request)).collect();
            seen.retain(|key, _| owed_keys.contains(key));
            for (channel, signer, receipt) in owed {
                let key = (channel, receipt.receipt.request);
                let (since, tries) = seen.entry(key).or_insert((now, 0));
                if now.duration_since(*since) >= RETRADE_AFTER && *tries < RETRADES {
                    *tries += 1;
                    *since = now;
                    due.push((channel, signer, receipt));
                }
            }
        }
        for (channel, signer, receipt) in due {
            let request = receipt.receipt.request;
            let Ok(gateway) = peer_id_of_ed25519_public(&signer) else { continue };
            tracing::info!(channel, request, "sending an unvouched receipt again");
            self.trade_receipt(book, gateway, channel, request, receipt, 1).await;
        }
    }

    async fn redeem_if_due(&self, book: &ChannelBook, channel: u64) {
        let has_voucher = book
            .channels
            .lock()
            .await
            .get(&channel)
            .is_some_and(|s| s.channel.redeemable().is_some());
        if !has_voucher {
            return;
        }
        let Some(now) = self.refresh_channel(book, channel).await else { return };
        let due = {
            let channels = book.channels.lock().await;
            channels.get(&channel).and_then(|s| {
                let reason = s.channel.redeem_due(
                    &book.settings.policy,
                    now,
                    s.last_redeemed_at,
                    s.closing,
                )?;
                Some((reason, s.channel.redeemable()?.clone()))
            })
        };
        let Some((reason, voucher)) = due else { return };
        let chain = self.chain().await;
        let arg = VoucherArg::from(&voucher.voucher);
        match chain.redeem_voucher(&self.config.signer, arg, voucher.signature).await {
            Ok(paid) => {
                tracing::info!(
                    channel,
                    sequence = paid.sequence,
                    paid = %paid.paid,
                    inferences = paid.covered,
                    ?reason,
                    "voucher redeemed"
                );
                self.metrics.jobs.with_label_values(&["settled"]).inc_by(paid.covered);
                let mut channels = book.channels.lock().await;
                if let Some(served) = channels.get_mut(&channel) {
                    let root = Some(voucher.voucher.receipts_root.0);
                    book.redeemed(served, paid.redeemed, paid.sequence, root);
                    served.last_redeemed_at = now;
                    if let Err(e) = book.store.save_provider(&served.channel, None) {
                        tracing::warn!(channel, error = %e, "cannot save the channel");
                    }
                }
            },
            Err(e) => tracing::warn!(channel, error = %e, "redeeming the voucher failed"),
        }
    }
}

impl ChannelBook {
    /// Admits a request of at most `max_charge` on `channel` from `from`, reserving its
    /// credit; the channel is read from the chain the first time (and again when the deposit
    /// looks too small, in case it was topped up).
    async fn admit(
        &self,
        worker: &Worker,
        from: PeerId,
        channel: u64,
        max_charge: Balance,
    ) -> Result<(), String> {
        for fresh in [false, true] {
            let known = self.channels.lock().await.contains_key(&channel);
            if !known || fresh {
                self.load(worker, channel).await?;
            }
            let mut channels = self.channels.lock().await;
            let served = channels.get_mut(&channel).ok_or("channel not open")?;
            let signer_peer = peer_id_of_ed25519_public(&served.channel.signer)
                .map_err(|e| format!("the channel's signer is not an ed25519 key: {e}"))?;
            if signer_peer != from {
                return Err(format!(
                    "channel {channel} vouches with another key than the asking peer's"
                ));
            }
            if let Some(until) = served.closing {
                return Err(format!("channel {channel} is closing (window ends at block {until})"));
            }
            match served.channel.admit(max_charge.saturating_add(served.reserved)) {
                Ok(()) => {
                    served.reserved = served.reserved.saturating_add(max_charge);
                    return Ok(());
                },
                Err(ChannelError::InsufficientDeposit { .. }) if !fresh => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("channel {channel}: deposit too small"))
    }

    /// Reads `channel` from the chain: it must be open and to this provider.
    async fn load(&self, worker: &Worker, channel: u64) -> Result<(), String> {
        let status = worker
            .chain()
            .await
            .channel(channel)
            .await
            .map_err(|e| format!("cannot read channel {channel} on chain: {e}"))?;
        let ChannelStatus::Open(c) = status else {
            self.channels.lock().await.remove(&channel);
            return Err(format!("channel {channel} is not open on chain"));
        };
        if c.provider != worker.config.provider {
            return Err(format!("channel {channel} pays another provider"));
        }
        let mut channels = self.channels.lock().await;
        let served = channels.entry(channel).or_insert_with(|| {
            Served::new(ProviderChannel::new(
                channel,
                c.signer,
                c.deposit,
                self.settings.credit_limit,
            ))
        });
        served.channel.signer = c.signer;
        served.channel.deposit = c.deposit;
        served.channel.credit_limit = self.settings.credit_limit;
        self.redeemed(served, c.redeemed, c.sequence, Some(c.receipts_root.0));
        served.closing = match c.phase {
            ChannelPhase::Closing { until } => Some(until),
            ChannelPhase::Open => None,
        };
        self.store.save_provider(&served.channel, None).map_err(|e| e.to_string())
    }

    /// A request's reservation ends (it finished, failed or was refused).
    async fn release(&self, channel: u64, max_charge: Balance) {
        if let Some(served) = self.channels.lock().await.get_mut(&channel) {
            served.reserved = served.reserved.saturating_sub(max_charge);
        }
    }

    /// Records a signed receipt as owed, in memory and in the store, before it is sent.
    async fn record(&self, receipt: &SignedReceipt) -> Result<(), ChannelError> {
        let mut channels = self.channels.lock().await;
        let channel = receipt.receipt.channel;
        let served = channels
            .get_mut(&channel)
            .ok_or(ChannelError::UnknownRequest(receipt.receipt.request))?;
        let mut next = served.channel.clone();
        next.served(receipt.clone())?;
        let (saved, receipt) = (next.clone(), receipt.clone());
        self.store.blocking(move |s| s.save_provider(&saved, Some(&receipt))).await?;
        served.channel = next;
        Ok(())
    }

    /// Keeps the voucher that pays `request`, once it is checked and written.
    async fn accept(
        &self,
        request: u64,
        channel: u64,
        voucher: openledger_channel::SignedVoucher,
        genesis_hash: [u8; 32],
    ) -> Result<(), ChannelError> {
        let mut channels = self.channels.lock().await;
        let served = channels.get_mut(&channel).ok_or(ChannelError::UnknownRequest(request))?;
        // The voucher that answers a receipt places it in the gateway's tree (by its sequence),
        // whether or not it is the newest: what a reveal of a redeemed voucher is built from.
        let leaf = served
            .channel
            .unvouched
            .iter()
            .find(|r| r.receipt.request == request)
            .map(|r| r.receipt.leaf(genesis_hash));
        let sequence = voucher.voucher.sequence;
        let mut next = served.channel.clone();
        let accepted = next.accept(request, voucher, genesis_hash);
        if let (Some(leaf), Ok(()) | Err(ChannelError::StaleVoucher { .. })) = (leaf, &accepted) {
            self.store.blocking(move |s| s.note_vouched(channel, request, sequence, leaf)).await?;
        }
        accepted?;
        let saved = next.clone();
        self.store.blocking(move |s| s.save_provider(&saved, None)).await?;
        served.channel = next;
        Ok(())
    }

    /// The chain redeemed up to voucher `sequence` of `served`'s channel (`redeemed` planck in
    /// all; its receipts root `root`, when known): records it, and seals the tree of the
    /// receipts that voucher paid for, for reveals.
    fn redeemed(
        &self,
        served: &mut Served,
        redeemed: Balance,
        sequence: u64,
        root: Option<[u8; 32]>,
    ) {
        let (channel, before) = (served.channel.channel, served.channel.redeemed_sequence);
        served.channel.on_redeemed(redeemed, sequence);
        if served.channel.redeemed_sequence <= before {
            return;
        }
        match self.store.seal_tree(channel, before, sequence) {
            Ok(tree) if !tree.requests.is_empty() && root.is_some_and(|r| r != tree.root) => {
                tracing::error!(
                channel,
                sequence,
                receipts = tree.requests.len(),
                "the redeemed voucher's receipts root is not the root of the receipts this worker \
                 was vouched for: they cannot be revealed if the chain draws one"
            )
            },
            Ok(tree) => {
                tracing::debug!(channel, sequence, receipts = tree.requests.len(), "tree sealed")
            },
            Err(e) => {
                tracing::warn!(channel, sequence, error = %e, "cannot seal the redeemed tree")
            },
        }
    }

    /// The receipt at `leaf` of a redeemed voucher's tree, with its path, for the chain with
    /// `genesis_hash`.
    pub(crate) async fn reveal(
        &self,
        channel: u64,
        sequence: u64,
        index: u64,
        genesis_hash: [u8; 32],
    ) -> Result<openledger_channel::Revealed, ChannelError> {
        self.store.blocking(move |s| s.reveal(channel, sequence, index, genesis_hash)).await
    }

    /// Whether `request`'s receipt on `channel` still waits for its voucher.
    async fn is_unvouched(&self, channel: u64, request: u64) -> bool {
        self.channels
            .lock()
            .await
            .get(&channel)
            .is_some_and(|s| s.channel.unvouched.iter().any(|r| r.receipt.request == request))
    }

    async fn exchange_lock(&self, channel: u64) -> Option<Arc<Mutex<()>>> {
        self.channels.lock().await.get(&channel).map(|s| Arc::clone(&s.exchange))
    }
}
