//! DataNets: creating them, contributing records, curating, and reading what a job's
//! retrieval context may name.

use subxt::dynamic;
use subxt::utils::{AccountId32, H256};
use subxt_signer::sr25519::Keypair;

use crate::types::*;
use crate::{find_event, rpc_err, ChainClient, ChainError};

/// A DataNet (`pallet_attribution::DataNet`), the fields a client needs.
#[derive(Clone, Debug, PartialEq, Eq, subxt::ext::scale_decode::DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct DataNet {
    /// Its creator.
    pub owner: AccountId32,
    /// Sum of the weights of approved contributions: a DataNet with none cannot be paid.
    pub total_weight: u128,
    /// OPEN held for its contributors.
    pub balance: Balance,
    /// Contributions pending or approved.
    pub records: u32,
}

/// Why a retrieval context cannot be paid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// More DataNets than a receipt can name.
    #[error("a context names at most {max} DataNets, this one {count}")]
    TooMany {
        /// The limit (`MAX_RECEIPT_CONTEXT`).
        max: u32,
        /// How many it names.
        count: usize,
    },
    /// The shares add up to more than the whole.
    #[error("the context's shares sum to {sum} parts per million, more than 1,000,000")]
    SharesExceed {
        /// Their sum.
        sum: u64,
    },
    /// A DataNet is named twice.
    #[error("DataNet {0} is named twice in the context")]
    Duplicate(DataNetId),
    /// A DataNet that does not exist.
    #[error("DataNet {0} does not exist")]
    Unknown(DataNetId),
    /// A DataNet with no approved contribution, so nobody to pay.
    #[error("DataNet {0} has no approved contributions to pay")]
    Empty(DataNetId),
}

impl ChainClient {
    /// Whether a receipt naming `context` (DataNet, share in parts per million) would settle:
    /// the pallet's rules (at most `MAX_RECEIPT_CONTEXT` DataNets, each once, shares summing
    /// to at most 100%) and, at the best block, every DataNet existing with contributions to
    /// pay. The gateway checks before a job is paid for, the worker before it acknowledges,
    /// so a bad context never costs an honest provider its fee.
    pub async fn check_context(
        &self,
        context: &[(DataNetId, u32)],
    ) -> Result<Result<(), ContextError>, ChainError> {
        let max = openledger_primitives::receipt::MAX_RECEIPT_CONTEXT;
        if context.len() > max as usize {
            return Ok(Err(ContextError::TooMany { max, count: context.len() }));
        }
        let sum: u64 = context.iter().map(|&(_, ppm)| u64::from(ppm)).sum();
        if sum > 1_000_000 {
            return Ok(Err(ContextError::SharesExceed { sum }));
        }
        let mut seen = std::collections::BTreeSet::new();
        for &(datanet, _) in context {
            if !seen.insert(datanet) {
                return Ok(Err(ContextError::Duplicate(datanet)));
            }
            match self.datanet(datanet).await? {
                None => return Ok(Err(ContextError::Unknown(datanet))),
                Some(d) if d.total_weight == 0 => return Ok(Err(ContextError::Empty(datanet))),
                Some(_) => {},
            }
        }
        Ok(Ok(()))
    }

    /// Create a DataNet described by `metadata` (owned by the signer); returns its id.
    pub async fn create_datanet(
        &self,
        signer: &Keypair,
        metadata: &[u8],
    ) -> Result<DataNetId, ChainError> {
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct DataNetCreated {
            datanet: DataNetId,
        }
        let events =
            self.submit("Attribution", "create_datanet", (metadata.to_vec(),), signer).await?;
        find_event::<DataNetCreated>(&events, "Attribution", "DataNetCreated")?
            .into_iter()
            .next()
            .map(|e| e.datanet)
            .ok_or(ChainError::MissingEvent {
                call: "Attribution.create_datanet".into(),
                event: "Attribution.DataNetCreated",
            })
    }

    /// Contribute the record whose hash is `record` to `datanet` with `weight` (pending until
    /// a curator approves it).
    pub async fn contribute(
        &self,
        signer: &Keypair,
        datanet: DataNetId,
        record: [u8; 32],
        weight: u128,
    ) -> Result<(), ChainError> {
        self.submit("Attribution", "contribute", (datanet, H256(record), weight), signer).await?;
        Ok(())
    }

    /// Approve a pending contribution (the DataNet's owner or a curator).
    pub async fn approve_contribution(
        &self,
        signer: &Keypair,
        datanet: DataNetId,
        record: [u8; 32],
    ) -> Result<(), ChainError> {
        self.submit("Attribution", "approve_contribution", (datanet, H256(record)), signer).await?;
        Ok(())
    }

    /// `datanet`'s record at the best block, if it exists.
    pub async fn datanet(&self, datanet: DataNetId) -> Result<Option<DataNet>, ChainError> {
        let at = self.best().await?;
        crate::fetch_entry(&at, "Attribution", "DataNets", datanet).await
    }

    /// What `who` can claim from `datanet` now (the `AttributionApi::pending_rewards` runtime
    /// API).
    pub async fn pending_rewards(
        &self,
        datanet: DataNetId,
        who: &AccountId32,
    ) -> Result<Balance, ChainError> {
        let at = self.best().await?;
        let call = dynamic::runtime_api_call::<_, Balance>(
            "AttributionApi",
            "pending_rewards",
            (datanet, *who),
        );
        at.runtime_apis()
            .call(call)
            .await
            .map_err(rpc_err("calling AttributionApi.pending_rewards"))
    }
}
