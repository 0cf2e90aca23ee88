//! The chain client of workers and gateways: every extrinsic they send and every storage
//! item they read, over subxt's dynamic API and the node's metadata.
//!
//! Nothing else in the workspace's off-chain crates builds extrinsics; this crate has no
//! tensors and no HTTP: the gateway, the worker and the keeper use it alike. [`cli`] holds
//! what their binaries share (config files, account and worker key files, logging). Calls wait until their transaction is in a
//! best block and report the runtime's named error (`Jobs.NoProviderAvailable`) when it
//! fails. Reads are at the best block the node knows when asked ([`ChainClient::best`]).
//!
//! Job discovery reads state rather than following events, through the runtime APIs (not the
//! storage layout): `JobsApi::jobs_of_provider` lists every open job of a provider and
//! `JobsApi::job_status` returns its record, so a worker that polls them at each new block
//! neither misses a job announced while it was disconnected nor sees one twice (see
//! [`AssignmentWatcher`]).

mod calls;
pub mod channels;
pub mod cli;
mod datanets;
mod errors;
mod reads;
mod receipt;
pub mod retry;
#[cfg(feature = "testing")]
mod testing;
pub mod types;
mod verification;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use subxt::client::{ClientAtBlock, OnlineClientAtBlockImpl};
use subxt::dynamic;
use subxt::rpcs::client::reconnecting_rpc_client::FixedInterval;
use subxt::rpcs::client::ReconnectingRpcClient;
use subxt::transactions::TransactionStatus;
use subxt::utils::H256;
use subxt::{OnlineClient, SubstrateConfig};
use subxt_signer::sr25519::Keypair;
use thiserror::Error;

pub use datanets::{ContextError, DataNet};
pub use errors::{AttributionError, ComputeError, JobsError, RuntimeError, VerificationError};
pub use openledger_primitives::token::{MILLI_OPEN, OPEN};
pub use receipt::{blake2_256, commitment_hash, sign_receipt, ReceiptDraft};
pub use types::*;
pub use verification::{
    Assignment, Audit, AuditOutcome, AuditStage, Leaf, PendingReveal, ProviderDrifted,
    ProviderSlashed, Subject, Verdict,
};
pub use watcher::AssignmentWatcher;

/// The client configuration: OpenLedger uses Substrate's account, signature and hashing
/// types.
pub type Config = SubstrateConfig;

/// The chain's charge for `tokens` at `price_per_1k` per 1,000: `ceil(tokens * price / 1000)`,
/// saturating (`pallet_jobs::fee_for`).
pub fn fee_for(tokens: u64, price_per_1k: Balance) -> Balance {
    u128::from(tokens).saturating_mul(price_per_1k).div_ceil(1000)
}

/// `account` as OpenLedger writes addresses: SS58 with the chain's prefix (7011), the format
/// the node, polkadot.js and wallets show (subxt's `Display` uses the generic prefix 42).
pub fn ss58(account: &subxt::utils::AccountId32) -> String {
    use sp_core::crypto::{Ss58AddressFormat, Ss58Codec};
    sp_core::crypto::AccountId32::new(account.0).to_ss58check_with_version(
        Ss58AddressFormat::custom(openledger_primitives::token::SS58_PREFIX),
    )
}

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
    /// The runtime refused a call (`Jobs.NoProviderAvailable`).
    #[error("{call} failed on-chain: {error}")]
    Dispatch {
        /// `Pallet.call` that failed.
        call: String,
        /// The runtime's error, decoded with the metadata.
        error: RuntimeError,
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
    /// The node's runtime lacks something this client needs (a pallet, a runtime API).
    #[error("the node's runtime is not one this client knows: {0}")]
    Incompatible(String),
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

/// The entry of the storage map `pallet.item` under `key` at `at`, decoded as `V`, if there
/// is one (errors name `pallet.item`).
async fn fetch_entry<K, V>(
    at: &AtBlock,
    pallet: &str,
    item: &str,
    key: K,
) -> Result<Option<V>, ChainError>
where
    K: subxt::ext::scale_encode::EncodeAsType + subxt::ext::scale_decode::DecodeAsType + 'static,
    V: subxt::ext::scale_decode::DecodeAsType + 'static,
{
    let addr = dynamic::storage::<(K,), V>(pallet, item);
    let value = at
        .storage()
        .try_fetch(addr, (key,))
        .await
        .map_err(rpc_err(&format!("reading {pallet}.{item}")))?;
    value
        .map(|v| v.decode_as::<V>())
        .transpose()
        .map_err(rpc_err(&format!("decoding {pallet}.{item}")))
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
    /// The view of the last best block opened: every read at the best block asks the node
    /// for its hash, and opens a new view (a header and a `Core_version` runtime call) only
    /// when the best block changed since.
    best_view: Arc<std::sync::Mutex<Option<(H256, AtBlock)>>>,
}

/// A view of the chain at one block.
pub type AtBlock = ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>;

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
        // A reconnecting RPC client: once connected, a node restart or a dropped socket is
        // retried underneath, so long-lived workers and gateways keep one client.
        let attempt = || async {
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
            // The legacy JSON-RPC methods (`state_getStorage`, `state_call`, ...): one round
            // trip per read at a block named by its hash. subxt's default backend tries the
            // archive and chainHead methods first for every read, and a block hash from
            // `chain_getBlockHash` is not pinned in a chainHead subscription: measured on the
            // dev node, a storage read took ~44 ms that way against ~1 ms.
            let backend = subxt::backend::LegacyBackend::<Config>::builder().build(rpc.clone());
            let client = OnlineClient::<Config>::from_backend(Arc::new(backend)).await?;
            Ok::<_, subxt::Error>((rpc, client))
        };
        let backoff = retry::Backoff::exponential(
            Duration::from_millis(250),
            Duration::from_secs(2),
            patience,
        );
        let (rpc, client) = retry::retry(backoff, attempt, |e| {
            tracing::debug!(url, error = %e, "chain node not reachable yet; retrying");
            true
        })
        .await
        .map_err(|e| ChainError::Unreachable { url: url.to_string(), source: Box::new(e) })?;
        Ok(Self {
            client,
            rpc,
            url: url.to_string(),
            submitting: Arc::new(tokio::sync::Mutex::new(Default::default())),
            best_view: Arc::default(),
        })
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
    pub async fn best(&self) -> Result<AtBlock, ChainError> {
        let hash: H256 =
            self.rpc.request("chain_getBlockHash", subxt::rpcs::rpc_params![]).await.map_err(
                |e| {
                    ChainError::rpc("reading the best block hash")(
                        subxt::error::BackendError::from(e).into(),
                    )
                },
            )?;
        if let Some((at_hash, view)) = self.best_view.lock().ok().and_then(|v| v.clone()) {
            if at_hash == hash {
                return Ok(view);
            }
        }
        let view = self.client.at_block(hash).await.map_err(rpc_err("opening the best block"))?;
        if let Ok(mut last) = self.best_view.lock() {
            *last = Some((hash, view.clone()));
        }
        Ok(view)
    }

    /// The errors of the marketplace pallets in the node's metadata that [`RuntimeError`]
    /// does not type (`Pallet.Error`): empty when this client knows the runtime's errors.
    pub async fn untyped_errors(&self) -> Result<Vec<String>, ChainError> {
        let at = self.best().await?;
        let metadata = at.metadata_ref();
        let mut untyped = Vec::new();
        for pallet in [
            ComputeError::PALLET,
            JobsError::PALLET,
            AttributionError::PALLET,
            VerificationError::PALLET,
        ] {
            let variants =
                metadata.pallet_by_name(pallet).and_then(|p| p.error_variants()).ok_or_else(
                    || ChainError::Incompatible(format!("no {pallet} errors in the metadata")),
                )?;
            for variant in variants {
                if let RuntimeError::Module { pallet, error } =
                    RuntimeError::of_module(pallet, &variant.name)
                {
                    untyped.push(format!("{pallet}.{error}"));
                }
            }
        }
        Ok(untyped)
    }

    /// Dispatch `call` (a runtime call as a value: pallet variant, then call variant) as root
    /// through `sudo`, signed by the sudo key; `what` names it in errors.
    pub(crate) async fn sudo(
        &self,
        sudo: &Keypair,
        call: subxt::ext::scale_value::Value,
        what: &str,
    ) -> Result<(), ChainError> {
        let events = self.submit("Sudo", "sudo", (call,), sudo).await?;
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct Sudid {
            sudo_result: Result<(), subxt::ext::scale_value::Value>,
        }
        match find_event::<Sudid>(&events, "Sudo", "Sudid")?.into_iter().next() {
            Some(Sudid { sudo_result: Ok(()) }) => Ok(()),
            Some(Sudid { sudo_result: Err(e) }) => Err(ChainError::Dispatch {
                call: format!("Sudo.sudo({what})"),
                error: RuntimeError::Other(e.to_string()),
            }),
            None => Err(ChainError::MissingEvent { call: "Sudo.sudo".into(), event: "Sudo.Sudid" }),
        }
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
                                    error: RuntimeError::from(&error),
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

#[cfg(test)]
mod ss58_tests {
    use super::ss58;
    use sp_core::crypto::{Ss58AddressFormat, Ss58Codec};

    #[test]
    fn accounts_print_with_openledgers_prefix() {
        let alice = subxt_signer::sr25519::dev::alice().public_key().to_account_id();
        let printed = ss58(&alice);
        let (decoded, format) =
            sp_core::crypto::AccountId32::from_ss58check_with_version(&printed).unwrap();
        assert_eq!(format, Ss58AddressFormat::custom(openledger_primitives::token::SS58_PREFIX));
        assert_eq!(<[u8; 32]>::from(decoded), alice.0);
        // Not the generic-prefix form subxt prints.
        assert_ne!(printed, alice.to_string());
    }
}
