//! Verification (`pallet-verification`): the audits a verifier owes, their records, verdicts
//! and contests.

use subxt::dynamic;
use subxt::ext::{scale_decode::DecodeAsType, scale_encode::EncodeAsType};
use subxt::utils::{AccountId32, H256};
use subxt_signer::sr25519::Keypair;

use crate::types::*;
use crate::{rpc_err, ChainClient, ChainError};

/// A verifier's finding (`pallet_verification::Verdict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EncodeAsType, DecodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum Verdict {
    /// The recomputed activations match the commitment.
    Match,
    /// They do not.
    Mismatch,
    /// The serving worker could not hand the job's records over, or they do not hash to the
    /// receipt's commitment.
    Unavailable,
}

/// One verifier of an audit (`pallet_verification::Assignment`).
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Assignment {
    /// The verifier provider.
    pub verifier: AccountId32,
    /// The last block its verdict is accepted in.
    pub deadline: u32,
    /// Its verdict and evidence hash, once given.
    pub verdict: Option<(Verdict, H256)>,
}

/// Where an audit is (`pallet_verification::Stage`).
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum AuditStage {
    /// Waiting for the first verdict.
    Open,
    /// Found at fault; the provider may contest until `until`.
    Accused {
        /// The last block a contest is accepted in.
        until: u32,
    },
    /// Contested: waiting for the added verifiers.
    Contested,
}

/// A settled job opened for verification (`pallet_verification::Audit`).
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Audit {
    /// The audited provider.
    pub provider: AccountId32,
    /// Who paid for the job.
    pub payer: AccountId32,
    /// The adapter it ran.
    pub adapter: AdapterId,
    /// Its base model.
    pub base_model: u32,
    /// What the payer was charged.
    pub charged: Balance,
    /// The receipt's hash of the activation commitment.
    pub commitment_hash: H256,
    /// The verifiers.
    pub verifiers: Vec<Assignment>,
    /// Verifiers dismissed for not answering.
    pub dismissed: Vec<AccountId32>,
    /// Where it is.
    pub stage: AuditStage,
    /// The block it is looked at next.
    pub wake: u32,
}

/// `Verification.ProviderSlashed`: where the slash of a provider found at fault went.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct ProviderSlashed {
    /// The audited job.
    pub job: JobId,
    /// The provider slashed.
    pub provider: AccountId32,
    /// Back to the payer.
    pub refunded: Balance,
    /// To the verifiers who found the fault.
    pub rewarded: Balance,
    /// To the treasury.
    pub to_treasury: Balance,
}

/// How an audit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The work stands.
    Confirmed,
    /// The work was found wrong and the provider slashed.
    Slashed(ProviderSlashed),
    /// No verifier could finish it.
    Abandoned,
}

impl ChainClient {
    /// The jobs `verifier` (a provider) must give a verdict on now, at the best block.
    pub async fn audits_to_verify(&self, verifier: &AccountId32) -> Result<Vec<JobId>, ChainError> {
        self.audit_index("AuditsByVerifier", verifier).await
    }

    /// The open audits of `provider`'s work, at the best block.
    pub async fn audits_of_provider(
        &self,
        provider: &AccountId32,
    ) -> Result<Vec<JobId>, ChainError> {
        self.audit_index("AuditsByProvider", provider).await
    }

    /// The jobs under `who` in `Verification.<index>` (a map account -> job -> ()).
    async fn audit_index(&self, index: &str, who: &AccountId32) -> Result<Vec<JobId>, ChainError> {
        let at = self.best().await?;
        let what = format!("reading Verification.{index}");
        let addr = dynamic::storage::<(AccountId32, JobId), ()>("Verification", index);
        let mut entries = at.storage().iter(addr, (*who,)).await.map_err(rpc_err(&what))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(rpc_err(&what))?;
            let (_, job) = entry.key().and_then(|k| k.decode()).map_err(rpc_err(&what))?;
            out.push(job);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The open audit of `job`, if there is one.
    pub async fn audit(&self, job: JobId) -> Result<Option<Audit>, ChainError> {
        let at = self.best().await?;
        let addr = dynamic::storage::<(JobId,), Audit>("Verification", "Audits");
        let value = at
            .storage()
            .try_fetch(addr, (job,))
            .await
            .map_err(rpc_err("reading Verification.Audits"))?;
        value
            .map(|v| v.decode_as::<Audit>())
            .transpose()
            .map_err(rpc_err("decoding Verification.Audits"))
    }

    /// Post a verifier's verdict on `job` with the hash of the evidence it recomputed.
    pub async fn submit_verdict(
        &self,
        signer: &Keypair,
        job: JobId,
        verdict: Verdict,
        evidence: [u8; 32],
    ) -> Result<(), ChainError> {
        self.submit("Verification", "submit_verdict", (job, verdict, H256(evidence)), signer)
            .await?;
        Ok(())
    }

    /// Contest the verdict that found `job`'s work wrong (the audited provider's worker).
    pub async fn contest(&self, signer: &Keypair, job: JobId) -> Result<(), ChainError> {
        self.submit("Verification", "contest", (job,), signer).await?;
        Ok(())
    }

    /// Set the share of settled jobs audited, in parts per billion, through `sudo` (dev
    /// chains and tests).
    pub async fn sudo_set_sample_share(
        &self,
        sudo: &Keypair,
        parts_per_billion: u32,
    ) -> Result<(), ChainError> {
        use subxt::ext::scale_value::Value;
        let call = Value::unnamed_variant(
            "Verification",
            [Value::named_variant(
                "set_sample_share",
                [("share", Value::u128(u128::from(parts_per_billion)))],
            )],
        );
        self.sudo(sudo, call, "Verification.set_sample_share").await
    }
}
