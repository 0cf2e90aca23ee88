//! The payer's side of payment channels: requests sent to a worker at once, paid by vouchers
//! the gateway signs for what it received, no transaction per request.
//!
//! For a request on this path the gateway asks the chain's `quote` runtime API which provider
//! the marketplace would pick (the pallet's own matcher, so both paths choose alike) and at
//! what price, finds the channel from the request's payer to that provider (opening one with
//! the configured deposit, or topping it up, when there is none or it has no room), and sends
//! the job payload to the provider's worker over libp2p (`ChannelRequest::Serve`) with the
//! most the request may charge. The worker streams the answer at once. When it ends, the
//! worker sends a signed receipt; the gateway checks it against what it sent and received
//! (adapter, input hash, the hash of the text it relayed, the price) and answers with the
//! channel's next voucher ([`PayerChannel::vouch`]), signed with the gateway's libp2p key,
//! which is the channel's signer on chain. Channel state and every vouched receipt are written
//! to the [`Store`] before the voucher leaves; a restarted gateway reads its channels back
//! and reconciles them with the chain.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use openledger_chain_client::channels::{ChannelPhase, ChannelStatus};
use openledger_chain_client::{blake2_256, fee_for, ss58, AdapterId, Balance, ChainClient, Quote};
use openledger_channel::{PayerChannel, SignedReceipt, Store};
use openledger_p2p::{
    peer_id_of_ed25519_public, ChannelRequest, ChannelResponse, PeerId, CHANNEL_ROUTE_BIT,
};
use subxt::utils::AccountId32;
use subxt_signer::sr25519::Keypair;
use tokio::sync::Mutex;

use crate::openai::ApiError;

/// How the gateway pays on channels.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// The channel store (a redb file).
    pub store: PathBuf,
    /// The deposit a new channel is opened with, and a top-up's amount.
    pub deposit: Balance,
}

/// A request sent on a channel whose receipt has not come yet.
struct Pending {
    adapter: AdapterId,
    max_charge: Balance,
    price_per_1k: Balance,
    input_hash: [u8; 32],
    /// The text relayed to the client so far: what the receipt's output hash must match.
    delivered: String,
    sent_at: Instant,
}

/// One channel this gateway pays on.
struct Paying {
    channel: PayerChannel,
    payer: AccountId32,
    provider: AccountId32,
    /// Most possible charges of the requests sent and not yet vouched for.
    reserved: Balance,
    pending: HashMap<u64, Pending>,
}

impl Paying {
    /// Room left in the deposit after what is vouched and reserved.
    fn room(&self) -> Balance {
        self.channel.deposit.saturating_sub(self.channel.cumulative.saturating_add(self.reserved))
    }
}

/// A request sent on a channel: what the relay reports and where it went.
#[derive(Clone, Debug)]
pub(crate) struct ChannelRoute {
    pub(crate) channel: u64,
    pub(crate) request: u64,
    pub(crate) provider: AccountId32,
    pub(crate) max_charge: Balance,
}

/// The gateway's channels.
pub struct PayerBook {
    config: ChannelConfig,
    store: Store,
    signer: SigningKey,
    genesis_hash: [u8; 32],
    channels: Mutex<HashMap<u64, Paying>>,
    /// One opening or top-up at a time (so concurrent first requests open one channel).
    funding: Mutex<()>,
}

/// How long a sent request waits for its receipt before its reservation is released.
const PENDING_FOR: Duration = Duration::from_secs(600);

impl PayerBook {
    /// Opens the store and reconciles its channels with the chain: closed ones are dropped,
    /// redemptions and top-ups made meanwhile are taken in.
    pub async fn open(
        chain: &ChainClient,
        config: ChannelConfig,
        signer: SigningKey,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let store = Store::open(&config.store)
            .with_context(|| format!("cannot open the channel store {}", config.store.display()))?;
        let mut channels = HashMap::new();
        for mut channel in store.payer_channels()? {
            let id = channel.channel;
            let ChannelStatus::Open(on_chain) = chain.channel(id).await? else { continue };
            if on_chain.signer != signer.verifying_key().to_bytes()
                || on_chain.phase != ChannelPhase::Open
            {
                continue;
            }
            let removed = channel.on_redeemed(on_chain.redeemed, on_chain.sequence);
            channel.deposit = on_chain.deposit;
            store.save_payer(&channel, &[], &removed)?;
            tracing::info!(channel = id, cumulative = %channel.cumulative, "channel resumed");
            channels.insert(
                id,
                Paying {
                    channel,
                    payer: on_chain.payer,
                    provider: on_chain.provider,
                    reserved: 0,
                    pending: HashMap::new(),
                },
            );
        }
        Ok(Self {
            config,
            store,
            signer,
            genesis_hash: chain.genesis_hash(),
            channels: Mutex::new(channels),
            funding: Mutex::new(()),
        })
    }

    /// Finds (or opens, or tops up) the channel from `payer` to `quote.provider` with room for
    /// `max_charge`, reserves it and registers request `request`. Returns the route.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn reserve(
        &self,
        chain: &ChainClient,
        payer: &Keypair,
        quote: &Quote,
        worker_key: [u8; 32],
        adapter: AdapterId,
        max_charge: Balance,
        input_hash: [u8; 32],
    ) -> Result<ChannelRoute, ApiError> {
        let payer_account = AccountId32(payer.public_key().0);
        let request = CHANNEL_ROUTE_BIT | (random_u64() & !CHANNEL_ROUTE_BIT);
        let pending = || Pending {
            adapter,
            max_charge,
            price_per_1k: quote.price_per_1k,
            input_hash,
            delivered: String::new(),
            sent_at: Instant::now(),
        };
        // Twice at most: once as it is, once after funding.
        for funded in [false, true] {
            {
                let mut channels = self.channels.lock().await;
                prune(&mut channels);
                let found = paying_for(&mut channels, &payer_account, &quote.provider, worker_key);
                if let Some(paying) = found {
                    if paying.room() >= max_charge {
                        paying.reserved = paying.reserved.saturating_add(max_charge);
                        paying.pending.insert(request, pending());
                        return Ok(ChannelRoute {
                            channel: paying.channel.channel,
                            request,
                            provider: quote.provider,
                            max_charge,
                        });
                    }
                }
            }
            if funded {
                break;
            }
            self.fund(chain, payer, &payer_account, &quote.provider, worker_key, max_charge)
                .await?;
        }
        Err(ApiError::upstream(
            "channel_full",
            "the channel has no room for this request even after a top-up",
        ))
    }

    /// Opens a channel to `provider`, or tops up the one there is, so that it has room for
    /// `need` more (a transaction: one block).
    async fn fund(
        &self,
        chain: &ChainClient,
        payer: &Keypair,
        payer_account: &AccountId32,
        provider: &AccountId32,
        worker_key: [u8; 32],
        need: Balance,
    ) -> Result<(), ApiError> {
        let _one = self.funding.lock().await;
        let existing = {
            let mut channels = self.channels.lock().await;
            paying_for(&mut channels, payer_account, provider, worker_key)
                .map(|p| (p.channel.channel, p.room()))
        };
        let amount = self.config.deposit.max(need);
        let chain_err = |what: &str, e: openledger_chain_client::ChainError| {
            ApiError::upstream("channel_error", format!("{what}: {e}"))
        };
        match existing {
            // Funded meanwhile by a concurrent request.
            Some((_, room)) if room >= need => Ok(()),
            Some((channel, _)) => {
                chain
                    .top_up_channel(payer, channel, amount)
                    .await
                    .map_err(|e| chain_err("topping up the channel failed", e))?;
                let mut channels = self.channels.lock().await;
                if let Some(paying) = channels.get_mut(&channel) {
                    paying.channel.deposit = paying.channel.deposit.saturating_add(amount);
                    self.store
                        .save_payer(&paying.channel, &[], &[])
                        .map_err(|e| ApiError::upstream("channel_store", e.to_string()))?;
                }
                tracing::info!(channel, amount = %amount, "channel topped up");
                Ok(())
            },
            None => {
                let signer = self.signer.verifying_key().to_bytes();
                let opened = chain
                    .open_channel(payer, provider, amount, signer)
                    .await
                    .map_err(|e| chain_err("opening a channel failed", e))?;
                let channel = PayerChannel::new(opened.channel, worker_key, opened.deposit);
                self.store
                    .save_payer(&channel, &[], &[])
                    .map_err(|e| ApiError::upstream("channel_store", e.to_string()))?;
                tracing::info!(channel = opened.channel, deposit = %amount, "channel opened");
                self.channels.lock().await.insert(
                    opened.channel,
                    Paying {
                        channel,
                        payer: *payer_account,
                        provider: *provider,
                        reserved: 0,
                        pending: HashMap::new(),
                    },
                );
                Ok(())
            },
        }
    }

    /// Where request `request` on `channel` stands, as JSON for `GET
    /// /v1/channels/{channel}/requests/{request}`: `pending` (sent, its receipt not vouched
    /// for yet) or `vouched` (its charge, the first voucher that covers it, and whether the
    /// chain has redeemed a voucher that far); `None` when this gateway does not know it (never
    /// sent, or redeemed and forgotten).
    pub(crate) async fn request_status(
        &self,
        channel: u64,
        request: u64,
    ) -> Option<serde_json::Value> {
        let channels = self.channels.lock().await;
        let paying = channels.get(&channel)?;
        let c = &paying.channel;
        if let Some(p) = paying.pending.get(&request) {
            return Some(serde_json::json!({
                "channel": channel, "request": request.to_string(), "state": "pending",
                "adapter": p.adapter, "max_charge": p.max_charge.to_string(),
            }));
        }
        let entry = c.entries.iter().find(|e| e.request == request)?;
        let shares: Vec<_> = entry
            .contexts
            .iter()
            .map(|s| serde_json::json!({"datanet": s.datanet, "share_ppm": s.ppm}))
            .collect();
        Some(serde_json::json!({
            "channel": channel, "request": request.to_string(), "state": "vouched",
            "adapter": entry.adapter, "charge": entry.charge.to_string(), "context": shares,
            "sequence": entry.sequence, "voucher_sequence": c.sequence,
            "cumulative": c.cumulative.to_string(),
            "redeemed": entry.sequence <= c.redeemed_sequence,
            "provider": ss58(&paying.provider),
        }))
    }

    /// A request that was never served (refused, or not delivered) gives its room back.
    pub(crate) async fn cancel(&self, route: &ChannelRoute) {
        if let Some(paying) = self.channels.lock().await.get_mut(&route.channel) {
            if paying.pending.remove(&route.request).is_some() {
                paying.reserved = paying.reserved.saturating_sub(route.max_charge);
            }
        }
    }

    /// Adds the text of a chunk that the p2p node acknowledged to its request's record (when
    /// it comes from the channel's worker), whether or not its client is still there: the
    /// worker counts it as delivered.
    pub(crate) async fn relayed(&self, from: PeerId, request: u64, text: &str) {
        for paying in self.channels.lock().await.values_mut() {
            if let Some(p) = paying.pending.get_mut(&request) {
                if peer_id_of_ed25519_public(&paying.channel.worker).is_ok_and(|w| w == from) {
                    p.delivered.push_str(text);
                }
                return;
            }
        }
    }

    /// Answers a worker's receipt with the channel's next voucher, once the receipt is checked
    /// against what was sent and relayed and the voucher is written to the store.
    pub(crate) async fn vouch(
        &self,
        chain: &ChainClient,
        from: PeerId,
        signed: SignedReceipt,
    ) -> ChannelResponse {
        match self.try_vouch(chain, from, signed).await {
            Ok(voucher) => voucher,
            Err(reason) => {
                tracing::warn!(%reason, "receipt refused");
                ChannelResponse::Refused(reason)
            },
        }
    }

    async fn try_vouch(
        &self,
        chain: &ChainClient,
        from: PeerId,
        signed: SignedReceipt,
    ) -> Result<ChannelResponse, String> {
        let r = &signed.receipt;
        // The chain's redemptions first: a voucher's breakdown is of the increment over them.
        let on_chain = match chain.channel(r.channel).await {
            Ok(ChannelStatus::Open(c)) => c,
            Ok(_) => return Err(format!("channel {} is not open on chain", r.channel)),
            Err(e) => return Err(format!("cannot read channel {} on chain: {e}", r.channel)),
        };
        let mut channels = self.channels.lock().await;
        let paying =
            channels.get_mut(&r.channel).ok_or(format!("unknown channel {}", r.channel))?;
        let worker =
            peer_id_of_ed25519_public(&paying.channel.worker).map_err(|e| e.to_string())?;
        if worker != from {
            return Err(format!("channel {} is served by another worker", r.channel));
        }
        let mut next = paying.channel.clone();
        let removed = next.on_redeemed(on_chain.redeemed, on_chain.sequence);
        next.deposit = on_chain.deposit;
        if next.entries.iter().any(|e| e.request == r.request) {
            // A receipt sent again (the worker had seen a redemption this gateway had not):
            // the same state, signed again.
            let voucher =
                next.reissue(&self.signer, self.genesis_hash).map_err(|e| e.to_string())?;
            let saved = next.clone();
            self.store
                .blocking(move |s| s.save_payer(&saved, &[], &removed))
                .await
                .map_err(|e| e.to_string())?;
            paying.channel = next;
            return Ok(ChannelResponse::Voucher(voucher));
        }
        let pending = paying
            .pending
            .get(&r.request)
            .ok_or(format!("request {} was not sent on channel {}", r.request, r.channel))?;
        if r.adapter != pending.adapter {
            return Err(format!(
                "receipt names adapter {}, the request {}",
                r.adapter, pending.adapter
            ));
        }
        if r.input_hash != pending.input_hash {
            return Err("receipt's input hash is not the payload's".into());
        }
        if r.output_hash != blake2_256(pending.delivered.as_bytes()) {
            return Err("receipt's output hash is not that of the text relayed".into());
        }
        let tokens = u64::from(r.input_tokens).saturating_add(u64::from(r.output_tokens));
        let fair = fee_for(tokens, pending.price_per_1k);
        if r.charge > fair {
            return Err(format!(
                "receipt charges {}, its tokens at the quoted price {fair}",
                r.charge
            ));
        }
        let max_charge = pending.max_charge;
        let voucher = next
            .vouch(&signed, max_charge, &self.signer, self.genesis_hash)
            .map_err(|e| e.to_string())?;
        let added: Vec<_> = next.entries.last().cloned().into_iter().collect();
        let saved = next.clone();
        self.store
            .blocking(move |s| s.save_payer(&saved, &added, &removed))
            .await
            .map_err(|e| e.to_string())?;
        paying.channel = next;
        paying.pending.remove(&r.request);
        paying.reserved = paying.reserved.saturating_sub(max_charge);
        Ok(ChannelResponse::Voucher(voucher))
    }

    /// The request to send for a route.
    pub(crate) fn serve_request(
        route: &ChannelRoute,
        adapter: AdapterId,
        payload: Vec<u8>,
    ) -> ChannelRequest {
        ChannelRequest::Serve {
            channel: route.channel,
            request: route.request,
            adapter,
            max_charge: route.max_charge,
            payload,
        }
    }
}

/// The channel from `payer` to `provider` vouched for to its worker key `worker`.
fn paying_for<'a>(
    channels: &'a mut HashMap<u64, Paying>,
    payer: &AccountId32,
    provider: &AccountId32,
    worker: [u8; 32],
) -> Option<&'a mut Paying> {
    channels
        .values_mut()
        .find(|p| p.payer == *payer && p.provider == *provider && p.channel.worker == worker)
}

/// Drops requests whose receipt never came (their worker died mid-answer: nothing is owed
/// for them), giving their room back.
fn prune(channels: &mut HashMap<u64, Paying>) {
    for paying in channels.values_mut() {
        let stale: Vec<u64> = paying
            .pending
            .iter()
            .filter(|(_, p)| p.sent_at.elapsed() > PENDING_FOR)
            .map(|(r, _)| *r)
            .collect();
        for request in stale {
            if let Some(p) = paying.pending.remove(&request) {
                paying.reserved = paying.reserved.saturating_sub(p.max_charge);
            }
        }
    }
}

/// 64 random bits (a request id: unique per channel with overwhelming probability, with no
/// state to lose on a restart).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the time is still unique enough per gateway.
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return now;
    }
    u64::from_le_bytes(bytes)
}
