//! The extrinsics workers, gateways and tests send.

use subxt::utils::{AccountId32, H256};
use subxt_signer::sr25519::Keypair;

use crate::types::*;
use crate::{find_event, ChainClient, ChainError, ReceiptOutcome};

impl ChainClient {
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
        self.submit("Compute", "heartbeat", (*provider, hot_adapters.to_vec(), free_slots), signer)
            .await?;
        Ok(())
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

    /// Refuse `job` (from the provider's operator or worker account) for `reason`: the job
    /// closes and its escrow goes back to the user in full; nothing is slashed.
    pub async fn refuse(
        &self,
        signer: &Keypair,
        job: JobId,
        reason: RefusalReason,
    ) -> Result<(), ChainError> {
        use subxt::ext::scale_value::Value;
        let reason = Value::unnamed_variant(reason.variant(), []);
        self.submit("Jobs", "refuse", (job, reason), signer).await?;
        Ok(())
    }

    /// Declare the adapters `provider`'s worker serves (replacing the previous declaration):
    /// the chain matches the provider only to jobs for these.
    pub async fn set_served_adapters(
        &self,
        signer: &Keypair,
        provider: &AccountId32,
        adapters: &[AdapterId],
    ) -> Result<(), ChainError> {
        self.submit("Compute", "set_served_adapters", (*provider, adapters.to_vec()), signer)
            .await?;
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
}
