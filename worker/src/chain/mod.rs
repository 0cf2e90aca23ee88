//! The chain client of workers and gateways: every extrinsic they send and every storage
//! item they read, over subxt's dynamic API and the node's metadata.
//!
//! Nothing else in the worker builds extrinsics. Calls wait until their transaction is in a
//! best block and report the runtime's named error (`Jobs.NoProviderAvailable`) when it
//! fails. Reads are at the best block the node knows when asked ([`ChainClient::best`]).
//!
//! Job discovery reads storage rather than following events: the `JobsByProvider` index
//! lists every open job of a provider, so a worker that polls it at each new block neither
//! misses a job announced while it was disconnected nor sees one twice (see
//! [`AssignmentWatcher`]).

pub mod types;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use openledger_primitives::receipt::{Receipt, ReceiptContext, ReceiptPayload};
use sp_core::{ed25519, H256 as SpH256};
use subxt::client::{ClientAtBlock, OnlineClientAtBlockImpl};
use subxt::dynamic;
use subxt::rpcs::client::reconnecting_rpc_client::FixedInterval;
use subxt::rpcs::client::ReconnectingRpcClient;
use subxt::transactions::TransactionStatus;
use subxt::utils::{AccountId32, MultiAddress, H256};
use subxt::{OnlineClient, SubstrateConfig};
use subxt_signer::sr25519::Keypair;
use thiserror::Error;

pub use types::*;

/// The client configuration: OpenLedger uses Substrate's account, signature and hashing
/// types.
pub type Config = SubstrateConfig;

/// How many blocks back [`ChainClient::settlements`] looks.
pub const SETTLEMENT_LOOKBACK: u64 = 600;

/// What went wrong talking to the chain.
#[derive(Debug, Error)]
pub enum ChainError {
    /// The node did not answer at the URL.
    #[error("cannot reach the chain node at {url}: {source}")]
    Unreachable {
        /// The RPC URL tried.
        url: String,
        /// Why.
        #[source]
        source: Box<subxt::Error>,
    },
    /// The runtime refused a call, with its error's name (`Jobs.NoProviderAvailable`).
    #[error("{call} failed on-chain: {error}")]
    Dispatch {
        /// `Pallet.call` that failed.
        call: String,
        /// The runtime's error, named from the metadata.
        error: String,
    },
    /// The transaction pool refused a transaction, or it was dropped.
    #[error("{call} was not included: {reason}")]
    NotIncluded {
        /// `Pallet.call`.
        call: String,
        /// The pool's reason.
        reason: String,
    },
    /// A value on chain did not have the shape this client expects (an incompatible
    /// runtime).
    #[error("{what}: {source}")]
    Rpc {
        /// What was being done.
        what: String,
        /// subxt's error.
        #[source]
        source: Box<subxt::Error>,
    },
    /// An event the call should have emitted is missing.
    #[error("{call} succeeded but emitted no {event} event")]
    MissingEvent {
        /// `Pallet.call`.
        call: String,
        /// `Pallet.Event` expected.
        event: &'static str,
    },
    /// A key or argument was malformed.
    #[error("{0}")]
    Invalid(String),
}

impl ChainError {
    fn rpc(what: impl Into<String>) -> impl FnOnce(subxt::Error) -> ChainError {
        let what = what.into();
        move |e| ChainError::Rpc { what, source: Box::new(e) }
    }
}

/// Convert any subxt error type into [`ChainError::Rpc`] with a description.
fn rpc_err<E: Into<subxt::Error>>(what: &str) -> impl FnOnce(E) -> ChainError + '_ {
    move |e| ChainError::rpc(what)(e.into())
}

/// How long a submitted transaction may take to reach a best block before the call gives
/// up on it (20 blocks of 3 s).
const INCLUSION_PATIENCE: Duration = Duration::from_secs(60);

/// A connection to an OpenLedger node.
#[derive(Clone)]
pub struct ChainClient {
    client: OnlineClient<Config>,
    rpc: subxt::rpcs::RpcClient,
    url: String,
    /// Held while a transaction is signed and handed to the pool, so that concurrent calls
    /// from one account take consecutive nonces: the next nonce this client gives each
    /// account (the node's next-index may not count a transaction still being imported).
    submitting: Arc<tokio::sync::Mutex<std::collections::BTreeMap<[u8; 32], u64>>>,
}

/// The outcome of one receipt in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The job settled.
    Settled(JobSettled),
    /// The receipt was refused (the job stays open until it expires).
    Rejected(JobId),
}

impl ChainClient {
    /// Connect to the node at `url` (`ws://127.0.0.1:9944`), trying for up to `patience`.
    pub async fn connect(url: &str, patience: Duration) -> Result<Self, ChainError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // A reconnecting RPC client: once connected, a node restart or a dropped socket
            // is retried underneath, so long-lived workers and gateways keep one client.
            let attempt = async {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let reconnecting = tokio::time::timeout(
                    left.max(Duration::from_millis(100)),
                    ReconnectingRpcClient::builder()
                        .retry_policy(FixedInterval::from_millis(500))
                        .build(url),
                )
                .await
                .map_err(|_| {
                    subxt::Error::from(subxt::error::BackendError::Other(
                        "no answer before the deadline".into(),
                    ))
                })?
                .map_err(|e| {
                    subxt::Error::from(subxt::error::BackendError::Other(e.to_string().into()))
                })?;
                let rpc = subxt::rpcs::RpcClient::new(reconnecting);
                let client = OnlineClient::<Config>::from_rpc_client(rpc.clone()).await?;
                Ok::<_, subxt::Error>((rpc, client))
            };
            match attempt.await {
                Ok((rpc, client)) => {
                    return Ok(Self {
                        client,
                        rpc,
                        url: url.to_string(),
                        submitting: Arc::new(tokio::sync::Mutex::new(Default::default())),
                    })
                },
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(ChainError::Unreachable {
                        url: url.to_string(),
                        source: Box::new(e),
                    })
                },
                Err(e) => {
                    tracing::debug!(url, error = %e, "chain node not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                },
            }
        }
    }

    /// The node's RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The chain's genesis hash (what receipts are bound to).
    pub fn genesis_hash(&self) -> [u8; 32] {
        self.client.genesis_hash().0
    }

    /// The underlying subxt client.
    pub fn subxt(&self) -> &OnlineClient<Config> {
        &self.client
    }

    /// A view of the chain at its current best block.
    pub async fn best(
        &self,
    ) -> Result<ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>, ChainError> {
        let hash: H256 =
            self.rpc.request("chain_getBlockHash", subxt::rpcs::rpc_params![]).await.map_err(
                |e| {
                    ChainError::rpc("reading the best block hash")(
                        subxt::error::BackendError::from(e).into(),
                    )
                },
            )?;
        self.client.at_block(hash).await.map_err(rpc_err("opening the best block"))
    }

    /// Sign `call_data` for `pallet.call` with `signer`, submit it, wait until it is in a
    /// best block, and return its events, or the runtime's named error.
    async fn submit<CallData: subxt::ext::scale_encode::EncodeAsFields>(
        &self,
        pallet: &str,
        call: &str,
        call_data: CallData,
        signer: &Keypair,
    ) -> Result<subxt::extrinsics::ExtrinsicEvents<Config>, ChainError> {
        let name = format!("{pallet}.{call}");
        let payload = dynamic::transaction(pallet, call, call_data);
        let mut progress = {
            // One account's transactions enter the pool one at a time, each with the next
            // index the node counts (its pool included), so concurrent calls never collide.
            let mut next_nonce = self.submitting.lock().await;
            let who = <Keypair as subxt::transactions::Signer<Config>>::account_id(signer);
            let key = who.0;
            let from_node: u64 = self
                .rpc
                .request("system_accountNextIndex", subxt::rpcs::rpc_params![who])
                .await
                .map_err(|e| {
                    ChainError::rpc("reading the account's next nonce")(
                        subxt::error::BackendError::from(e).into(),
                    )
                })?;
            // The pool may not have imported the previous transaction yet when the node is
            // asked again: never reuse a nonce this client handed out.
            let nonce = next_nonce.get(&key).map_or(from_node, |n| (*n).max(from_node));
            let params = subxt::config::SubstrateExtrinsicParamsBuilder::<Config>::new()
                .nonce(nonce)
                .build();
            let mut tx = self.client.tx().await.map_err(rpc_err("reading the current block"))?;
            match tx.sign_and_submit_then_watch(&payload, signer, params).await {
                Ok(progress) => {
                    next_nonce.insert(key, nonce + 1);
                    progress
                },
                Err(e) => {
                    // Start again from the node's count.
                    next_nonce.remove(&key);
                    return Err(ChainError::NotIncluded { call: name, reason: e.to_string() });
                },
            }
        };
        let follow = async {
            while let Some(status) = progress.next().await {
                let status = status.map_err(rpc_err("following the transaction"))?;
                match status {
                    TransactionStatus::InBestBlock(in_block)
                    | TransactionStatus::InFinalizedBlock(in_block) => {
                        return in_block.wait_for_success().await.map_err(|e| match e {
                            subxt::error::TransactionEventsError::ExtrinsicFailed(error) => {
                                ChainError::Dispatch {
                                    call: name.clone(),
                                    error: error.to_string(),
                                }
                            },
                            other => ChainError::rpc(format!("reading the events of {name}"))(
                                other.into(),
                            ),
                        });
                    },
                    TransactionStatus::Error { message }
                    | TransactionStatus::Invalid { message }
                    | TransactionStatus::Dropped { message } => {
                        return Err(ChainError::NotIncluded {
                            call: name.clone(),
                            reason: message,
                        });
                    },
                    _ => continue,
                }
            }
            Err(ChainError::NotIncluded {
                call: name.clone(),
                reason: "the node stopped reporting".into(),
            })
        };
        let outcome = tokio::time::timeout(INCLUSION_PATIENCE, follow).await.unwrap_or_else(|_| {
            Err(ChainError::NotIncluded {
                call: name.clone(),
                reason: format!("not in a block after {} s", INCLUSION_PATIENCE.as_secs()),
            })
        });
        if let Err(e) = &outcome {
            if !matches!(e, ChainError::Dispatch { .. }) {
                // The transaction may never be included (dropped, or lost with a restarted
                // node's pool): count this account's nonces from the node again, or every
                // later transaction would wait behind the gap.
                let who = <Keypair as subxt::transactions::Signer<Config>>::account_id(signer);
                self.submitting.lock().await.remove(&who.0);
            }
        }
        outcome
    }

    /// Register `signer` as a provider with `terms`, bonding `bond`.
    pub async fn register_provider(
        &self,
        signer: &Keypair,
        terms: &ProviderTerms,
        bond: Balance,
    ) -> Result<(), ChainError> {
        self.submit("Compute", "register_provider", (terms.clone(), bond), signer).await?;
        Ok(())
    }

    /// Replace `signer`'s provider terms.
    pub async fn update_provider(
        &self,
        signer: &Keypair,
        terms: &ProviderTerms,
    ) -> Result<(), ChainError> {
        self.submit("Compute", "update_provider", (terms.clone(),), signer).await?;
        Ok(())
    }

    /// Report `provider`'s worker alive with its hot adapters and free slots.
    pub async fn heartbeat(
        &self,
        signer: &Keypair,
        provider: &AccountId32,
        hot_adapters: &[AdapterId],
        free_slots: u32,
    ) -> Result<(), ChainError> {
        self.submit(
            "Compute",
            "heartbeat",
            (provider.clone(), hot_adapters.to_vec(), free_slots),
            signer,
        )
        .await?;
        Ok(())
    }

    /// The terms `provider` registered, if it is registered.
    pub async fn provider(
        &self,
        provider: &AccountId32,
    ) -> Result<Option<ProviderTerms>, ChainError> {
        let at = self.best().await?;
        let addr = dynamic::storage::<(AccountId32,), ProviderTerms>("Compute", "Providers");
        let value = at
            .storage()
            .try_fetch(addr, (provider.clone(),))
            .await
            .map_err(rpc_err("reading Compute.Providers"))?;
        value
            .map(|v| v.decode_as::<ProviderTerms>())
            .transpose()
            .map_err(rpc_err("decoding Compute.Providers"))
    }

    /// Submit a job for `adapter` on the payload hashed `input_hash` held by `gateway`;
    /// returns the assignment the chain made in the same call.
    pub async fn submit_job(
        &self,
        signer: &Keypair,
        adapter: AdapterId,
        input_hash: [u8; 32],
        max_output_tokens: u32,
        max_fee: Balance,
        gateway: &[u8],
    ) -> Result<JobAssigned, ChainError> {
        let events = self
            .submit(
                "Jobs",
                "submit_job",
                (adapter, H256(input_hash), max_output_tokens, max_fee, gateway.to_vec()),
                signer,
            )
            .await?;
        find_event::<JobAssigned>(&events, "Jobs", "JobAssigned")?.into_iter().next().ok_or(
            ChainError::MissingEvent { call: "Jobs.submit_job".into(), event: "Jobs.JobAssigned" },
        )
    }

    /// Acknowledge `job` (from the provider's operator or worker account).
    pub async fn acknowledge(&self, signer: &Keypair, job: JobId) -> Result<(), ChainError> {
        self.submit("Jobs", "acknowledge", (job,), signer).await?;
        Ok(())
    }

    /// Submit a batch of signed receipts; returns what happened to each.
    pub async fn submit_receipts(
        &self,
        signer: &Keypair,
        receipts: &[ReceiptArg],
    ) -> Result<Vec<ReceiptOutcome>, ChainError> {
        let events = self.submit("Jobs", "submit_receipts", (receipts.to_vec(),), signer).await?;
        let mut out: Vec<ReceiptOutcome> = find_event::<JobSettled>(&events, "Jobs", "JobSettled")?
            .into_iter()
            .map(ReceiptOutcome::Settled)
            .collect();
        out.extend(
            find_event::<ReceiptRejected>(&events, "Jobs", "ReceiptRejected")?
                .into_iter()
                .map(|r| ReceiptOutcome::Rejected(r.job)),
        );
        Ok(out)
    }

    /// Register an adapter of `base_model` (its PEFT weights hash `content_hash`, LoRA `rank`,
    /// projections `target_modules` as bits q,k,v,o,gate,up,down = 1,2,4,...,64) at
    /// `price_per_1k`, trained on `training` (DataNet, share in ppm); returns its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn register_adapter(
        &self,
        signer: &Keypair,
        base_model: u32,
        content_hash: [u8; 32],
        rank: u32,
        target_modules: u8,
        price_per_1k: Balance,
        training: &[(DataNetId, u32)],
    ) -> Result<AdapterId, ChainError> {
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AdapterRegistered {
            adapter: AdapterId,
        }
        let events = self
            .submit(
                "Attribution",
                "register_adapter",
                (
                    base_model,
                    H256(content_hash),
                    rank,
                    target_modules,
                    price_per_1k,
                    training.to_vec(),
                ),
                signer,
            )
            .await?;
        find_event::<AdapterRegistered>(&events, "Attribution", "AdapterRegistered")?
            .into_iter()
            .next()
            .map(|e| e.adapter)
            .ok_or(ChainError::MissingEvent {
                call: "Attribution.register_adapter".into(),
                event: "Attribution.AdapterRegistered",
            })
    }

    /// Expire `job` after its deadline; returns what the user got back.
    pub async fn expire(&self, signer: &Keypair, job: JobId) -> Result<JobExpired, ChainError> {
        let events = self.submit("Jobs", "expire", (job,), signer).await?;
        find_event::<JobExpired>(&events, "Jobs", "JobExpired")?.into_iter().next().ok_or(
            ChainError::MissingEvent { call: "Jobs.expire".into(), event: "Jobs.JobExpired" },
        )
    }

    /// Set raw storage items through `sudo` (root): how a testnet's governance changes the
    /// runtime's storage-backed parameters (`:JobReceiptTimeout:` and the like).
    pub async fn sudo_set_storage(
        &self,
        sudo: &Keypair,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), ChainError> {
        use subxt::ext::scale_value::Value;
        let items =
            Value::unnamed_composite(items.iter().map(|(k, v)| {
                Value::unnamed_composite([Value::from_bytes(k), Value::from_bytes(v)])
            }));
        let call = Value::unnamed_variant(
            "System",
            [Value::named_variant("set_storage", [("items", items)])],
        );
        let events = self.submit("Sudo", "sudo", (call,), sudo).await?;
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct Sudid {
            sudo_result: Result<(), subxt::ext::scale_value::Value>,
        }
        match find_event::<Sudid>(&events, "Sudo", "Sudid")?.into_iter().next() {
            Some(Sudid { sudo_result: Ok(()) }) => Ok(()),
            Some(Sudid { sudo_result: Err(e) }) => Err(ChainError::Dispatch {
                call: "Sudo.sudo(System.set_storage)".into(),
                error: e.to_string(),
            }),
            None => Err(ChainError::MissingEvent { call: "Sudo.sudo".into(), event: "Sudo.Sudid" }),
        }
    }

    /// Transfer `amount` to `dest`, keeping the sender alive.
    pub async fn transfer(
        &self,
        signer: &Keypair,
        dest: &AccountId32,
        amount: Balance,
    ) -> Result<(), ChainError> {
        let dest: MultiAddress<AccountId32, ()> = MultiAddress::Id(dest.clone());
        self.submit("Balances", "transfer_keep_alive", (dest, amount), signer).await?;
        Ok(())
    }

    /// An open job, if `job` is open.
    pub async fn job(&self, job: JobId) -> Result<Option<Job>, ChainError> {
        let at = self.best().await?;
        job_at(&at, job).await
    }

    /// The ids of `provider`'s open jobs at the best block.
    pub async fn open_jobs_of(
        &self,
        provider: &AccountId32,
    ) -> Result<BTreeSet<JobId>, ChainError> {
        let at = self.best().await?;
        open_jobs_at(&at, provider).await
    }

    /// Every adapter registered, retired ones included.
    pub async fn adapters(&self) -> Result<Vec<(AdapterId, Adapter)>, ChainError> {
        let at = self.best().await?;
        let addr = dynamic::storage::<(AdapterId,), Adapter>("Attribution", "Adapters");
        let mut entries =
            at.storage().iter(addr, ()).await.map_err(rpc_err("reading Attribution.Adapters"))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(rpc_err("reading Attribution.Adapters"))?;
            let (id,) = entry
                .key()
                .and_then(|k| k.decode())
                .map_err(rpc_err("decoding an Attribution.Adapters key"))?;
            let adapter =
                entry.value().decode_as::<Adapter>().map_err(rpc_err("decoding an adapter"))?;
            out.push((id, adapter));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// The `JobSettled` events of `jobs`, looked up in the best chain's last
    /// [`SETTLEMENT_LOOKBACK`] blocks (newest first).
    pub async fn settlements(
        &self,
        jobs: BTreeSet<JobId>,
    ) -> Result<std::collections::BTreeMap<JobId, JobSettled>, ChainError> {
        let best = self.best().await?.block_number();
        let mut found = std::collections::BTreeMap::new();
        let oldest = best.saturating_sub(SETTLEMENT_LOOKBACK);
        let mut number = best;
        while number > oldest && found.len() < jobs.len() {
            let at = self.client.at_block(number).await.map_err(rpc_err("opening a block"))?;
            let events = at.events().fetch().await.map_err(rpc_err("reading a block's events"))?;
            for ev in events.iter() {
                let ev = ev.map_err(rpc_err("decoding an event"))?;
                if ev.pallet_name() == "Jobs" && ev.event_name() == "JobSettled" {
                    let settled = ev
                        .decode_fields_unchecked_as::<JobSettled>()
                        .map_err(rpc_err("decoding JobSettled"))?;
                    if jobs.contains(&settled.job) {
                        found.insert(settled.job, settled);
                    }
                }
            }
            number -= 1;
        }
        Ok(found)
    }

    /// Free balance of `who` at the best block.
    pub async fn free_balance(&self, who: &AccountId32) -> Result<Balance, ChainError> {
        let at = self.best().await?;
        Self::free_balance_in(&at, who).await
    }

    /// Free balance of `who` at block `number` of the best chain.
    pub async fn free_balance_at(
        &self,
        who: &AccountId32,
        number: u64,
    ) -> Result<Balance, ChainError> {
        let at = self.client.at_block(number).await.map_err(rpc_err("opening a block"))?;
        Self::free_balance_in(&at, who).await
    }

    async fn free_balance_in(
        at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
        who: &AccountId32,
    ) -> Result<Balance, ChainError> {
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountInfo {
            data: AccountData,
        }
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountData {
            free: u128,
        }
        let addr = dynamic::storage::<(AccountId32,), AccountInfo>("System", "Account");
        let value = at
            .storage()
            .try_fetch(addr, (who.clone(),))
            .await
            .map_err(rpc_err("reading System.Account"))?;
        Ok(match value {
            Some(v) => {
                v.decode_as::<AccountInfo>().map_err(rpc_err("decoding an account"))?.data.free
            },
            None => 0,
        })
    }
}

/// Decode every `pallet.event` among a transaction's events.
fn find_event<E: subxt::ext::scale_decode::DecodeAsFields>(
    events: &subxt::extrinsics::ExtrinsicEvents<Config>,
    pallet: &str,
    event: &str,
) -> Result<Vec<E>, ChainError> {
    let mut out = Vec::new();
    for ev in events.iter() {
        let ev = ev.map_err(rpc_err("decoding an event"))?;
        if ev.pallet_name() == pallet && ev.event_name() == event {
            out.push(
                ev.decode_fields_unchecked_as::<E>()
                    .map_err(rpc_err("decoding an event's fields"))?,
            );
        }
    }
    Ok(out)
}

async fn job_at(
    at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
    job: JobId,
) -> Result<Option<Job>, ChainError> {
    let addr = dynamic::storage::<(JobId,), Job>("Jobs", "Jobs");
    let value = at.storage().try_fetch(addr, (job,)).await.map_err(rpc_err("reading Jobs.Jobs"))?;
    value.map(|v| v.decode_as::<Job>()).transpose().map_err(rpc_err("decoding a job"))
}

async fn open_jobs_at(
    at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
    provider: &AccountId32,
) -> Result<BTreeSet<JobId>, ChainError> {
    let addr = dynamic::storage::<(AccountId32, JobId), ()>("Jobs", "JobsByProvider");
    let mut entries = at
        .storage()
        .iter(addr, (provider.clone(),))
        .await
        .map_err(rpc_err("reading Jobs.JobsByProvider"))?;
    let mut out = BTreeSet::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(rpc_err("reading Jobs.JobsByProvider"))?;
        let (_, job) = entry
            .key()
            .and_then(|k| k.decode())
            .map_err(rpc_err("decoding a Jobs.JobsByProvider key"))?;
        out.insert(job);
    }
    Ok(out)
}

/// Finds a provider's new jobs block by block, each exactly once.
///
/// At each best block it reads the provider's open jobs and yields those it has not yielded
/// before; jobs that closed are forgotten. Because it reads state rather than events, a
/// reconnect or a node restart loses nothing: the first poll afterwards sees every job still
/// open, and none twice.
pub struct AssignmentWatcher {
    chain: ChainClient,
    provider: AccountId32,
    seen: BTreeSet<JobId>,
    last_block: Option<u64>,
    blocks: Option<subxt::client::Blocks<Config>>,
}

impl AssignmentWatcher {
    /// Watch `provider`'s assignments.
    pub fn new(chain: ChainClient, provider: AccountId32) -> Self {
        Self { chain, provider, seen: BTreeSet::new(), last_block: None, blocks: None }
    }

    /// Replace the connection (after a reconnect); what was already yielded stays yielded.
    pub fn reconnected(&mut self, chain: ChainClient) {
        self.chain = chain;
        self.blocks = None;
    }

    /// The number of the last block polled.
    pub fn last_block(&self) -> Option<u64> {
        self.last_block
    }

    /// Wait for the next best block and return the jobs assigned to the provider that were
    /// not returned before, with their records. Blocks are taken in increasing number only
    /// (a stream may start at an older, finalized block), so a closed job never reappears.
    pub async fn next_batch(&mut self) -> Result<Vec<(JobId, Job)>, ChainError> {
        loop {
            if self.blocks.is_none() {
                let stream = self
                    .chain
                    .client
                    .stream_best_blocks()
                    .await
                    .map_err(rpc_err("subscribing to best blocks"))?;
                self.blocks = Some(stream);
                // A new subscription may start from an older block than the node's best
                // (its finalized one): skip those, they can show jobs since closed.
                let best = self.chain.best().await?.block_number();
                let floor = best.saturating_sub(1);
                self.last_block = Some(self.last_block.map_or(floor, |last| last.max(floor)));
            }
            let next = match self.blocks.as_mut() {
                Some(blocks) => blocks.next().await,
                None => None,
            };
            let block = match next {
                Some(Ok(block)) => block,
                Some(Err(e)) => {
                    self.blocks = None;
                    return Err(ChainError::rpc("reading a best block")(e.into()));
                },
                None => {
                    self.blocks = None;
                    return Err(ChainError::Invalid(
                        "the node closed the best-block stream".into(),
                    ));
                },
            };
            if self.last_block.is_some_and(|last| block.number() <= last) {
                continue;
            }
            self.last_block = Some(block.number());
            let at = block.at().await.map_err(rpc_err("opening a best block"))?;
            let open = open_jobs_at(&at, &self.provider).await?;
            // Forget closed jobs: job ids are never reused, so this only bounds memory.
            self.seen.retain(|j| open.contains(j));
            let mut fresh = Vec::new();
            for job in open.iter().filter(|j| !self.seen.contains(j)) {
                if let Some(record) = job_at(&at, *job).await? {
                    fresh.push((*job, record));
                }
            }
            for (job, _) in &fresh {
                self.seen.insert(*job);
            }
            return Ok(fresh);
        }
    }
}

/// Sign a receipt for `job` (run by `provider` with `adapter`) with the worker key, in the
/// byte layout `openledger_primitives::receipt` documents.
#[allow(clippy::too_many_arguments)]
pub fn sign_receipt(
    worker_key: &SigningKey,
    genesis_hash: [u8; 32],
    provider: &AccountId32,
    adapter: AdapterId,
    job: JobId,
    output_hash: [u8; 32],
    input_tokens: u32,
    output_tokens: u32,
    context: &[(DataNetId, u32)],
) -> Result<ReceiptArg, ChainError> {
    let context_bounded: ReceiptContext = context
        .iter()
        .map(|(d, ppm)| (*d, sp_runtime::Permill::from_parts(*ppm)))
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| ChainError::Invalid("a receipt names at most 8 context DataNets".into()))?;
    let receipt = Receipt {
        job,
        output_hash: SpH256(output_hash),
        input_tokens,
        output_tokens,
        context: context_bounded,
        signature: ed25519::Signature::from_raw([0; 64]),
    };
    let payload = ReceiptPayload::new(SpH256(genesis_hash), provider.0, adapter, &receipt);
    let signature = worker_key.sign(&payload.signing_bytes()).to_bytes();
    Ok(ReceiptArg {
        job,
        output_hash,
        input_tokens,
        output_tokens,
        context: context.to_vec(),
        signature,
    })
}

/// The BLAKE2b-256 hash the chain uses for payloads and outputs.
pub fn blake2_256(bytes: &[u8]) -> [u8; 32] {
    sp_crypto_hashing::blake2_256(bytes)
}
