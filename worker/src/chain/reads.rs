//! Storage reads and event scans.

use std::collections::BTreeSet;

use subxt::client::{ClientAtBlock, OnlineClientAtBlockImpl};
use subxt::dynamic;
use subxt::utils::AccountId32;

use super::types::*;
use super::{rpc_err, ChainClient, ChainError, Config, SETTLEMENT_LOOKBACK};

impl ChainClient {
    /// The terms `provider` registered, if it is registered.
    pub async fn provider(
        &self,
        provider: &AccountId32,
    ) -> Result<Option<ProviderTerms>, ChainError> {
        let at = self.best().await?;
        let addr = dynamic::storage::<(AccountId32,), ProviderTerms>("Compute", "Providers");
        let value = at
            .storage()
            .try_fetch(addr, (*provider,))
            .await
            .map_err(rpc_err("reading Compute.Providers"))?;
        value
            .map(|v| v.decode_as::<ProviderTerms>())
            .transpose()
            .map_err(rpc_err("decoding Compute.Providers"))
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
            .try_fetch(addr, (*who,))
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

pub(super) async fn job_at(
    at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
    job: JobId,
) -> Result<Option<Job>, ChainError> {
    let addr = dynamic::storage::<(JobId,), Job>("Jobs", "Jobs");
    let value = at.storage().try_fetch(addr, (job,)).await.map_err(rpc_err("reading Jobs.Jobs"))?;
    value.map(|v| v.decode_as::<Job>()).transpose().map_err(rpc_err("decoding a job"))
}

pub(super) async fn open_jobs_at(
    at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
    provider: &AccountId32,
) -> Result<BTreeSet<JobId>, ChainError> {
    let addr = dynamic::storage::<(AccountId32, JobId), ()>("Jobs", "JobsByProvider");
    let mut entries = at
        .storage()
        .iter(addr, (*provider,))
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
