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

    /// The adapter registered as `adapter`, if any (retired ones included).
    pub async fn adapter(&self, adapter: AdapterId) -> Result<Option<Adapter>, ChainError> {
        let at = self.best().await?;
        let addr = dynamic::storage::<(AdapterId,), Adapter>("Attribution", "Adapters");
        let value = at
            .storage()
            .try_fetch(addr, (adapter,))
            .await
            .map_err(rpc_err("reading Attribution.Adapters"))?;
        value
            .map(|v| v.decode_as::<Adapter>())
            .transpose()
            .map_err(rpc_err("decoding Attribution.Adapters"))
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
        self.job_events("JobSettled", jobs, |e: &JobSettled| e.job).await
    }

    /// The `JobRefused` events of `jobs`, looked up like [`Self::settlements`].
    pub async fn refusals(
        &self,
        jobs: BTreeSet<JobId>,
    ) -> Result<std::collections::BTreeMap<JobId, JobRefused>, ChainError> {
        self.job_events("JobRefused", jobs, |e: &JobRefused| e.job).await
    }

    /// The `JobExpired` events of `jobs`, looked up like [`Self::settlements`].
    pub async fn expiries(
        &self,
        jobs: BTreeSet<JobId>,
    ) -> Result<std::collections::BTreeMap<JobId, JobExpired>, ChainError> {
        self.job_events("JobExpired", jobs, |e: &JobExpired| e.job).await
    }

    /// The `Jobs.<event>` events of `jobs` in the best chain's last [`SETTLEMENT_LOOKBACK`]
    /// blocks, newest first; `job_of` names an event's job.
    async fn job_events<E: subxt::ext::scale_decode::DecodeAsFields>(
        &self,
        event: &str,
        jobs: BTreeSet<JobId>,
        job_of: impl Fn(&E) -> JobId,
    ) -> Result<std::collections::BTreeMap<JobId, E>, ChainError> {
        let best = self.best().await?.block_number();
        let mut found = std::collections::BTreeMap::new();
        let oldest = best.saturating_sub(SETTLEMENT_LOOKBACK);
        let mut number = best;
        while number > oldest && found.len() < jobs.len() {
            let at = self.client.at_block(number).await.map_err(rpc_err("opening a block"))?;
            let events = at.events().fetch().await.map_err(rpc_err("reading a block's events"))?;
            for ev in events.iter() {
                let ev = ev.map_err(rpc_err("decoding an event"))?;
                if ev.pallet_name() == "Jobs" && ev.event_name() == event {
                    let decoded = ev
                        .decode_fields_unchecked_as::<E>()
                        .map_err(rpc_err(&format!("decoding Jobs.{event}")))?;
                    if jobs.contains(&job_of(&decoded)) {
                        found.entry(job_of(&decoded)).or_insert(decoded);
                    }
                }
            }
            number -= 1;
        }
        Ok(found)
    }

    /// The provider `submit_job` would pick now for `adapter` and `max_output_tokens`, and the
    /// price it would charge (the `JobsApi::quote` runtime API); `None` when no provider that
    /// serves the adapter has a free slot.
    pub async fn quote(
        &self,
        adapter: AdapterId,
        max_output_tokens: u32,
    ) -> Result<Option<Quote>, ChainError> {
        let at = self.best().await?;
        let call = dynamic::runtime_api_call::<_, Option<Quote>>(
            "JobsApi",
            "quote",
            (adapter, max_output_tokens),
        );
        at.runtime_apis().call(call).await.map_err(rpc_err("calling JobsApi.quote"))
    }

    /// Open jobs whose deadline is block `block`, at most `limit` (the `JobsApi::jobs_due_at`
    /// runtime API, read at the best block): expirable from `block + 1`.
    pub async fn jobs_due_at(&self, block: u32, limit: u32) -> Result<Vec<JobId>, ChainError> {
        let at = self.best().await?;
        let call =
            dynamic::runtime_api_call::<_, Vec<JobId>>("JobsApi", "jobs_due_at", (block, limit));
        at.runtime_apis().call(call).await.map_err(rpc_err("calling JobsApi.jobs_due_at"))
    }

    /// The adapters `provider` declared it serves.
    pub async fn served_adapters(
        &self,
        provider: &AccountId32,
    ) -> Result<BTreeSet<AdapterId>, ChainError> {
        let at = self.best().await?;
        let addr = dynamic::storage::<(AccountId32, AdapterId), ()>("Compute", "ServedAdapters");
        let mut entries = at
            .storage()
            .iter(addr, (*provider,))
            .await
            .map_err(rpc_err("reading Compute.ServedAdapters"))?;
        let mut out = BTreeSet::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(rpc_err("reading Compute.ServedAdapters"))?;
            let (_, adapter) = entry
                .key()
                .and_then(|k| k.decode())
                .map_err(rpc_err("decoding a Compute.ServedAdapters key"))?;
            out.insert(adapter);
        }
        Ok(out)
    }

    /// Free balance of `who` at the best block.
    pub async fn free_balance(&self, who: &AccountId32) -> Result<Balance, ChainError> {
        let at = self.best().await?;
        Ok(Self::balances_in(&at, who).await?.0)
    }

    /// Free and held (escrow, bonds, deposits) balance of `who` at the best block.
    pub async fn balances(&self, who: &AccountId32) -> Result<(Balance, Balance), ChainError> {
        let at = self.best().await?;
        Self::balances_in(&at, who).await
    }

    /// Free balance of `who` at block `number` of the best chain.
    pub async fn free_balance_at(
        &self,
        who: &AccountId32,
        number: u64,
    ) -> Result<Balance, ChainError> {
        let at = self.client.at_block(number).await.map_err(rpc_err("opening a block"))?;
        Ok(Self::balances_in(&at, who).await?.0)
    }

    /// `who`'s free and reserved (held) balance at `at`.
    async fn balances_in(
        at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
        who: &AccountId32,
    ) -> Result<(Balance, Balance), ChainError> {
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountInfo {
            data: AccountData,
        }
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountData {
            free: u128,
            reserved: u128,
        }
        let addr = dynamic::storage::<(AccountId32,), AccountInfo>("System", "Account");
        let value = at
            .storage()
            .try_fetch(addr, (*who,))
            .await
            .map_err(rpc_err("reading System.Account"))?;
        Ok(match value {
            Some(v) => {
                let data =
                    v.decode_as::<AccountInfo>().map_err(rpc_err("decoding an account"))?.data;
                (data.free, data.reserved)
            },
            None => (0, 0),
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
