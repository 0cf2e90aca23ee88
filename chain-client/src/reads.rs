//! Storage reads and event scans.

use std::collections::BTreeSet;

use subxt::client::{ClientAtBlock, OnlineClientAtBlockImpl};
use subxt::dynamic;
use subxt::ext::scale_decode::DecodeAsType;
use subxt::utils::AccountId32;

use crate::types::*;
use crate::{fetch_entry, rpc_err, ChainClient, ChainError, Config};

impl ChainClient {
    /// The terms `provider` registered, if it is registered.
    pub async fn provider(
        &self,
        provider: &AccountId32,
    ) -> Result<Option<ProviderTerms>, ChainError> {
        fetch_entry(&self.best().await?, "Compute", "Providers", *provider).await
    }

    /// What base model id `base_model` stands for (its weights' digest and numeric format),
    /// if governance registered it (`Compute.BaseModels`).
    pub async fn base_model(
        &self,
        base_model: u32,
    ) -> Result<Option<openledger_primitives::market::BaseModelSpec>, ChainError> {
        use openledger_primitives::market::{BaseModelSpec, NumericFormat};
        #[derive(DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        enum Format {
            Host,
            CudaBf16,
            HostVnni,
        }
        #[derive(DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct Spec {
            weights: [u8; 32],
            format: Format,
        }
        let spec: Option<Spec> =
            fetch_entry(&self.best().await?, "Compute", "BaseModels", base_model).await?;
        Ok(spec.map(|s| BaseModelSpec {
            weights: s.weights,
            format: match s.format {
                Format::Host => NumericFormat::Host,
                Format::CudaBf16 => NumericFormat::CudaBf16,
                Format::HostVnni => NumericFormat::HostVnni,
            },
        }))
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
        fetch_entry(&self.best().await?, "Attribution", "Adapters", adapter).await
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
}

/// Most open jobs one provider can hold, well above any `max_concurrent` a provider declares;
/// the runtime API returns at most this many.
const MAX_OPEN_JOBS_PER_PROVIDER: u32 = 4_096;

/// A job's record at `at`, through the `JobsApi::job_status` runtime API (`None` when the job
/// is unknown or closed).
pub(super) async fn job_at(
    at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
    job: JobId,
) -> Result<Option<Job>, ChainError> {
    let call = dynamic::runtime_api_call::<_, JobStatus>("JobsApi", "job_status", (job,));
    let status =
        at.runtime_apis().call(call).await.map_err(rpc_err("calling JobsApi.job_status"))?;
    Ok(match status {
        JobStatus::Open(record) => Some(record),
        JobStatus::Unknown | JobStatus::Closed => None,
    })
}

/// The open jobs assigned to `provider` at `at`, through the `JobsApi::jobs_of_provider`
/// runtime API.
pub(super) async fn open_jobs_at(
    at: &ClientAtBlock<Config, OnlineClientAtBlockImpl<Config>>,
    provider: &AccountId32,
) -> Result<BTreeSet<JobId>, ChainError> {
    let call = dynamic::runtime_api_call::<_, Vec<JobId>>(
        "JobsApi",
        "jobs_of_provider",
        (*provider, MAX_OPEN_JOBS_PER_PROVIDER),
    );
    let jobs =
        at.runtime_apis().call(call).await.map_err(rpc_err("calling JobsApi.jobs_of_provider"))?;
    Ok(jobs.into_iter().collect())
}
