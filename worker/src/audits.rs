//! On-chain verification (issue 23), both sides of it on every worker.
//!
//! **Serving kept answers.** A verifier asks the worker that served an audited job for its
//! kept answer record (`ChannelRequest::AnswerRecord { job }` over libp2p, noise-encrypted).
//! The record is handed over only while the chain has an open audit of that job for this
//! provider and the asking peer is the libp2p identity of the worker key of a verifier that
//! still owes its verdict; anyone else is refused, and the record never leaves otherwise.
//!
//! **Verifying.** Every few seconds the worker asks the chain which audits its provider owes
//! a verdict on. For each, it fetches the record from the audited provider's worker (at the
//! endpoint that provider registered), checks that the record's activation commitment
//! hashes to the receipt's, that it names the job and the job's adapter by the content hash
//! registered on chain, recomputes the activations with its own copy of the model and that
//! adapter in one prefill pass ([`EngineHost::verify`]), and posts the verdict with the hash
//! of its findings: `Match`, `Mismatch`, or `Unavailable` when the record cannot be had or
//! does not hash to the receipt's commitment.
//!
//! **Contesting.** A verdict against this worker's own work is contested at once (two more
//! verifiers recompute it and the majority decides): the worker ran it as registered.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use openledger_chain_client::{
    blake2_256, commitment_hash, Audit, AuditStage, ChainClient, JobId, Verdict,
};
use openledger_engine::{EngineError, Tolerance, VerifyReport};
use openledger_p2p::{
    peer_id_of_ed25519_public, ChannelRequest, ChannelResponse, Multiaddr, PeerId,
};
use tokio::sync::Mutex;

use crate::answers::{job_key, AnswerRecord};
use crate::service::Worker;

/// How often the worker asks the chain for the audits it owes.
pub const AUDIT_POLL: Duration = Duration::from_secs(3);
/// How long a verifier keeps trying to fetch a record before it finds it unavailable.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(30);

/// The audits this worker is verifying now (so a poll does not start one twice).
#[derive(Default)]
pub(crate) struct AuditsInFlight(Mutex<HashSet<JobId>>);

/// What a verifier found, before it goes on chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words (logged).
    pub detail: String,
    /// The recomputation's report, when there was one.
    pub report: Option<VerifyReport>,
}

impl Finding {
    fn unavailable(detail: impl Into<String>) -> Self {
        Self { verdict: Verdict::Unavailable, detail: detail.into(), report: None }
    }

    fn mismatch(detail: impl Into<String>) -> Self {
        Self { verdict: Verdict::Mismatch, detail: detail.into(), report: None }
    }

    /// The evidence hash posted with the verdict: BLAKE2b-256 of the verdict, the detail and
    /// the report's figures.
    pub fn evidence(&self) -> [u8; 32] {
        let figures = self.report.as_ref().map(|r| {
            format!(
                "{} {} {} {} {} {:e} {:e}",
                r.committed_tokens,
                r.recomputed_tokens,
                r.entries,
                r.value_mismatches,
                r.index_mismatches,
                r.mean_relative_error(),
                r.max_relative_error
            )
        });
        blake2_256(
            format!("{:?}|{}|{}", self.verdict, self.detail, figures.unwrap_or_default())
                .as_bytes(),
        )
    }
}

impl Worker {
    /// Answers a verifier's request for the record of `job` (see the module documentation).
    pub(crate) async fn answer_record_request(&self, from: PeerId, id: u64, job: JobId) {
        let response = match self.record_for(from, job).await {
            Ok(bytes) => ChannelResponse::AnswerRecord(bytes),
            Err(reason) => {
                tracing::info!(job, peer = %from, reason, "answer record refused");
                ChannelResponse::Refused(reason)
            },
        };
        let _ = self.p2p.answer_channel(id, response).await;
    }

    async fn record_for(&self, from: PeerId, job: JobId) -> Result<Vec<u8>, String> {
        let chain = self.chain().await;
        let audit = chain
            .audit(job)
            .await
            .map_err(|e| format!("cannot read the audit from the chain: {e}"))?
            .ok_or_else(|| format!("job {job} is not being audited"))?;
        if audit.provider != self.config.provider {
            return Err(format!("job {job} was not served by this provider"));
        }
        let mut allowed = false;
        for a in audit.verifiers.iter().filter(|a| a.verdict.is_none()) {
            let terms = chain.provider(&a.verifier).await.map_err(|e| e.to_string())?;
            let peer = terms.and_then(|t| peer_id_of_ed25519_public(&t.worker_key).ok());
            allowed |= peer == Some(from);
        }
        if !allowed {
            return Err(format!("the peer is not a verifier of job {job} owing its verdict"));
        }
        let store = self.config.answers.as_ref().ok_or("this worker keeps no answers")?;
        let path = store.path(&job_key(job));
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        match read {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(format!("no kept answer for job {job}: {e}")),
            Err(e) => Err(format!("reading the kept answer failed: {e}")),
        }
    }

    /// Verifies the audits this worker's provider owes, and contests any verdict that found
    /// its own work wrong (this worker ran it as registered: a second opinion is due), until
    /// the process ends.
    pub(crate) async fn audits(self: Arc<Self>) {
        let in_flight = Arc::new(AuditsInFlight::default());
        let mut tick = tokio::time::interval(AUDIT_POLL);
        loop {
            tick.tick().await;
            self.contest_accusations().await;
            let owed = match self.chain().await.audits_to_verify(&self.config.provider).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the audits owed");
                    continue;
                },
            };
            for job in owed {
                if !in_flight.0.lock().await.insert(job) {
                    continue;
                }
                let (worker, in_flight) = (Arc::clone(&self), Arc::clone(&in_flight));
                tokio::spawn(async move {
                    worker.verify_audit(job).await;
                    in_flight.0.lock().await.remove(&job);
                });
            }
        }
    }

    /// Contests each open accusation against this provider's work.
    async fn contest_accusations(&self) {
        let chain = self.chain().await;
        let Ok(audited) = chain.audits_of_provider(&self.config.provider).await else { return };
        for job in audited {
            let Ok(Some(audit)) = chain.audit(job).await else { continue };
            if !matches!(audit.stage, AuditStage::Accused { .. }) {
                continue;
            }
            match chain.contest(&self.config.signer, job).await {
                Ok(()) => {
                    tracing::warn!(job, "a verifier found this worker's answer wrong; contested")
                },
                Err(e) => tracing::warn!(job, error = %e, "could not contest an accusation"),
            }
        }
    }

    /// Verifies one audit and posts the verdict.
    async fn verify_audit(&self, job: JobId) {
        let chain = self.chain().await;
        let audit = match chain.audit(job).await {
            Ok(Some(audit)) => audit,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot read the audit");
                return;
            },
        };
        let finding = self.find(&chain, job, &audit).await;
        tracing::info!(job, provider = %audit.provider, verdict = ?finding.verdict, detail = finding.detail, "audit verified");
        self.metrics.jobs.with_label_values(&["audited"]).inc();
        if let Err(e) = chain
            .submit_verdict(&self.config.signer, job, finding.verdict, finding.evidence())
            .await
        {
            tracing::warn!(job, error = %e, "the verdict was not accepted");
        }
    }

    /// What the audited job's record shows (see the module documentation).
    pub(crate) async fn find(&self, chain: &ChainClient, job: JobId, audit: &Audit) -> Finding {
        let bytes = match self.fetch_record(chain, job, audit).await {
            Ok(bytes) => bytes,
            Err(e) => return Finding::unavailable(e),
        };
        let record = match std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| AnswerRecord::from_json(t).map_err(|e| format!("{e:#}")))
        {
            Ok(r) => r,
            Err(e) => return Finding::unavailable(format!("the record is not readable: {e}")),
        };
        if commitment_hash(record.activations.as_bytes()) != audit.commitment_hash.0 {
            return Finding::unavailable(
                "the record's commitment is not the one the receipt signed",
            );
        }
        if record.key != job_key(job) {
            return Finding::unavailable(format!(
                "the record is for {}, not job {job}",
                record.key
            ));
        }
        let registered = match chain.adapter(audit.adapter).await {
            Ok(Some(a)) => a.content_hash.0,
            Ok(None) => {
                return Finding::mismatch(format!("adapter {} is not registered", audit.adapter))
            },
            Err(e) => return Finding::unavailable(format!("cannot read the adapter: {e}")),
        };
        if record.adapter != Some((audit.adapter, registered)) {
            return Finding::mismatch(format!(
                "the record names adapter {:?}, the job ran adapter {} (0x{})",
                record.adapter.map(|(id, h)| (id, hex::encode(h))),
                audit.adapter,
                hex::encode(registered)
            ));
        }
        let Some(name) = self.config.adapters.get(&audit.adapter).cloned() else {
            return Finding::unavailable(format!(
                "this verifier does not serve adapter {}; it cannot verify like with like",
                audit.adapter
            ));
        };
        let tol = Tolerance::default();
        match self
            .engine
            .verify(
                record.prompt_tokens.clone(),
                record.output_tokens.clone(),
                Some(name),
                record.activations.clone(),
                tol.relative,
            )
            .await
        {
            Ok(report) => {
                let passes = report.passes(&tol);
                Finding {
                    verdict: if passes { Verdict::Match } else { Verdict::Mismatch },
                    detail: format!(
                        "{} value and {} index mismatches in {} entries, mean error {:.5}",
                        report.value_mismatches,
                        report.index_mismatches,
                        report.entries,
                        report.mean_relative_error()
                    ),
                    report: Some(report),
                }
            },
            // A record the model cannot even run (longer than its context, tokens out of its
            // vocabulary, a commitment that does not cover the output) was not produced by it.
            // A record too long for this verifier's own cache is this verifier's limit.
            Err(
                e @ (EngineError::BadCommitment(_)
                | EngineError::EmptyPrompt { .. }
                | EngineError::PromptTooLong { .. }
                | EngineError::TokenOutOfVocabulary { .. }),
            ) => Finding::mismatch(format!("the record cannot be recomputed: {e}")),
            Err(e) => Finding::unavailable(format!("the recomputation failed here: {e}")),
        }
    }

    /// The record of `job` from the audited provider's worker, retried for
    /// [`FETCH_PATIENCE`].
    async fn fetch_record(
        &self,
        chain: &ChainClient,
        job: JobId,
        audit: &Audit,
    ) -> Result<Vec<u8>, String> {
        let terms = chain
            .provider(&audit.provider)
            .await
            .map_err(|e| format!("cannot read the provider: {e}"))?
            .ok_or("the audited provider is no longer registered")?;
        let peer = peer_id_of_ed25519_public(&terms.worker_key)
            .map_err(|e| format!("the provider's worker key is not a peer id: {e}"))?;
        let started = tokio::time::Instant::now();
        let mut last = String::from("not asked yet");
        while started.elapsed() < FETCH_PATIENCE {
            for raw in &terms.endpoint.multiaddrs {
                if let Ok(addr) = Multiaddr::try_from(raw.clone()) {
                    let _ = self.p2p.dial(addr).await;
                }
            }
            match self.p2p.ask_channel(peer, ChannelRequest::AnswerRecord { job }).await {
                Ok(ChannelResponse::AnswerRecord(bytes)) => return Ok(bytes),
                Ok(ChannelResponse::Refused(reason)) => return Err(format!("refused: {reason}")),
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Err(format!("the record could not be fetched in {FETCH_PATIENCE:?}: {last}"))
    }
}
