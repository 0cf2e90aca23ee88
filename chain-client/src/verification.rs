//! Verification (`pallet-verification`): the audits a verifier owes, their records, verdicts
//! and contests, and the receipts of redeemed vouchers a provider must reveal.

use subxt::dynamic;
use subxt::ext::{scale_decode::DecodeAsType, scale_encode::EncodeAsType};
use subxt::utils::{AccountId32, H256};
use subxt_signer::sr25519::Keypair;

use crate::types::*;
use crate::{fetch_entry, rpc_err, ChainClient, ChainError};

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

/// What an audit checks (`pallet_verification::Subject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, EncodeAsType, DecodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum Subject {
    /// An on-chain job.
    Job(JobId),
    /// A request served on a payment channel, revealed from a redeemed voucher.
    Request {
        /// The channel.
        channel: u64,
        /// The gateway's id of the request.
        request: u64,
    },
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Job(job) => write!(f, "job {job}"),
            Subject::Request { channel, request } => {
                write!(f, "request {request} of channel {channel}")
            },
        }
    }
}

/// A leaf of a redeemed voucher's receipts tree (`pallet_verification::Leaf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, EncodeAsType, DecodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Leaf {
    /// The channel.
    pub channel: u64,
    /// The redeemed voucher's sequence.
    pub sequence: u64,
    /// The leaf's index in the tree.
    pub index: u64,
}

/// A drawn leaf waiting for its receipt (`pallet_verification::PendingReveal`).
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct PendingReveal {
    /// The provider that must reveal it.
    pub provider: AccountId32,
    /// The channel's payer.
    pub payer: AccountId32,
    /// The redeemed voucher's receipts root.
    pub receipts_root: H256,
    /// Its leaves.
    pub inferences: u64,
    /// What the redemption paid.
    pub amount: Balance,
    /// The last block a reveal is accepted in.
    pub until: u32,
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

/// Settled work opened for verification (`pallet_verification::Audit`).
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
    /// The audited work.
    pub subject: Subject,
    /// The provider slashed.
    pub provider: AccountId32,
    /// Back to the payer.
    pub refunded: Balance,
    /// To the verifiers who found the fault.
    pub rewarded: Balance,
    /// To the treasury.
    pub to_treasury: Balance,
}

/// A provider slashed for drift: its last confirmed audits' median score passed the limit.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct ProviderDrifted {
    /// The audit whose score completed the window.
    pub subject: Subject,
    /// The provider slashed.
    pub provider: AccountId32,
    /// The window's median score.
    pub median: u32,
    /// Back to this job's payer.
    pub refunded: Balance,
    /// To this audit's verifiers.
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
    /// The work stands, and completed a window of scores whose median slashed the provider.
    Drifted(ProviderDrifted),
    /// No verifier could finish it.
    Abandoned,
}

impl ChainClient {
    /// The work `verifier` (a provider) must give a verdict on now, at the best block.
    pub async fn audits_to_verify(
        &self,
        verifier: &AccountId32,
    ) -> Result<Vec<Subject>, ChainError> {
        self.index_of("AuditsByVerifier", verifier).await
    }

    /// The open audits of `provider`'s work, at the best block.
    pub async fn audits_of_provider(
        &self,
        provider: &AccountId32,
    ) -> Result<Vec<Subject>, ChainError> {
        self.index_of("AuditsByProvider", provider).await
    }

    /// The drawn receipts `provider` must reveal now, with what they are checked against, at
    /// the best block.
    pub async fn reveals_owed(
        &self,
        provider: &AccountId32,
    ) -> Result<Vec<(Leaf, PendingReveal)>, ChainError> {
        let leaves: Vec<Leaf> = self.index_of("RevealsByProvider", provider).await?;
        let at = self.best().await?;
        let mut out = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            let pending: Option<PendingReveal> =
                fetch_entry(&at, "Verification", "Reveals", leaf).await?;
            out.extend(pending.map(|p| (leaf, p)));
        }
        Ok(out)
    }

    /// The keys under `who` in `Verification.<index>` (a map account -> key -> ()).
    async fn index_of<K>(&self, index: &str, who: &AccountId32) -> Result<Vec<K>, ChainError>
    where
        K: DecodeAsType + EncodeAsType + Ord + 'static,
    {
        let at = self.best().await?;
        let what = format!("reading Verification.{index}");
        let addr = dynamic::storage::<(AccountId32, K), ()>("Verification", index);
        let mut entries = at.storage().iter(addr, (*who,)).await.map_err(rpc_err(&what))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(rpc_err(&what))?;
            let (_, key) = entry.key().and_then(|k| k.decode()).map_err(rpc_err(&what))?;
            out.push(key);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// `provider`'s scores of its last confirmed audits, oldest first (empty when it has none):
    /// the chain slashes it when the median of a full window passes `DriftLimit`.
    pub async fn drift_scores(&self, provider: &AccountId32) -> Result<Vec<u32>, ChainError> {
        let at = self.best().await?;
        let scores: Option<Vec<u32>> =
            fetch_entry(&at, "Verification", "DriftScores", *provider).await?;
        Ok(scores.unwrap_or_default())
    }

    /// The open audit of `subject`, if there is one.
    pub async fn audit(&self, subject: Subject) -> Result<Option<Audit>, ChainError> {
        fetch_entry(&self.best().await?, "Verification", "Audits", subject).await
    }

    /// Post a verifier's verdict on `subject` with the hash of the evidence it recomputed and
    /// its score (the recomputation's mean error in thousandths of the format's typical
    /// honest error; the chain judges the median of a provider's last scores).
    pub async fn submit_verdict(
        &self,
        signer: &Keypair,
        subject: Subject,
        verdict: Verdict,
        evidence: [u8; 32],
        score: u32,
    ) -> Result<(), ChainError> {
        let args = (subject, verdict, H256(evidence), score);
        self.submit("Verification", "submit_verdict", args, signer).await?;
        Ok(())
    }

    /// Contest the verdict that found `subject`'s work wrong (the audited provider's worker).
    pub async fn contest(&self, signer: &Keypair, subject: Subject) -> Result<(), ChainError> {
        self.submit("Verification", "contest", (subject,), signer).await?;
        Ok(())
    }

    /// Reveal the receipt at `leaf` (its signed bytes and its path to the voucher's root,
    /// bottom up), so the chain opens the audit of its request.
    pub async fn reveal(
        &self,
        signer: &Keypair,
        leaf: Leaf,
        receipt: Vec<u8>,
        proof: Vec<Option<[u8; 32]>>,
    ) -> Result<(), ChainError> {
        let proof: Vec<Option<H256>> = proof.into_iter().map(|s| s.map(H256)).collect();
        self.submit("Verification", "reveal", (leaf, receipt, proof), signer).await?;
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

    /// Register what base model id `base_model` stands for (or with `None` remove it),
    /// through `sudo` (dev chains and tests; governance on a live chain).
    pub async fn sudo_set_base_model(
        &self,
        sudo: &Keypair,
        base_model: u32,
        spec: Option<openledger_primitives::market::BaseModelSpec>,
    ) -> Result<(), ChainError> {
        use openledger_primitives::market::NumericFormat;
        use subxt::ext::scale_value::Value;
        let spec = match spec {
            Some(s) => Value::unnamed_variant(
                "Some",
                [Value::named_composite([
                    ("weights", Value::from_bytes(s.weights)),
                    (
                        "format",
                        Value::unnamed_variant(
                            match s.format {
                                NumericFormat::Host => "Host",
                                NumericFormat::CudaBf16 => "CudaBf16",
                                NumericFormat::HostVnni => "HostVnni",
                            },
                            [],
                        ),
                    ),
                ])],
            ),
            None => Value::unnamed_variant("None", []),
        };
        let call = Value::unnamed_variant(
            "Compute",
            [Value::named_variant(
                "set_base_model",
                [("base_model", Value::u128(u128::from(base_model))), ("spec", spec)],
            )],
        );
        self.sudo(sudo, call, "Compute.set_base_model").await
    }
}
