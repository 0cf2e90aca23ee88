//! The keeper: expires jobs past their deadline, so no escrow stays held for a job nobody
//! finishes.
//!
//! At each new best block `N` it asks the `JobsApi::jobs_due_at` runtime API for the jobs whose
//! deadline was each block it has not scanned yet, up to `N`, and sends `jobs.expire` for each
//! (an `expire` lands in block `N + 1` or later, past a deadline of `N`). A deadline, once
//! passed, never comes back: acknowledging a job moves its deadline into the future, so every
//! block needs scanning once; an expiry that fails for a passing reason (the node went away) is
//! retried at the next block. The pallet decides what an expiry does (a full refund to the
//! user, and a slash only for a job its worker acknowledged), and a successful `expire` costs
//! the keeper no fee.

use std::collections::BTreeSet;
use std::time::Duration;

use subxt_signer::sr25519::Keypair;

use openledger_chain_client::{ChainClient, ChainError, JobId, JobsError, RuntimeError};

/// Most jobs asked for per deadline block at a time (more are fetched after these expire).
const DUE_PAGE: u32 = 64;

/// How the keeper runs.
#[derive(Clone, Debug)]
pub struct KeeperConfig {
    /// Blocks before the best block to scan at start-up (deadlines passed while no keeper ran).
    pub lookback_blocks: u32,
    /// Time between looks at the best block.
    pub poll: Duration,
}

/// What one pass over the due blocks did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeeperPass {
    /// Jobs expired in this pass.
    pub expired: Vec<JobId>,
    /// Jobs whose expiry failed and will be tried again.
    pub retry: BTreeSet<JobId>,
}

/// The keeper's progress: the next deadline block to scan and jobs to retry.
pub struct Keeper {
    chain: ChainClient,
    signer: Keypair,
    next_block: Option<u32>,
    retry: BTreeSet<JobId>,
    config: KeeperConfig,
}

impl Keeper {
    /// A keeper that signs its expiries with `signer`.
    pub fn new(chain: ChainClient, signer: Keypair, config: KeeperConfig) -> Self {
        Self { chain, signer, next_block: None, retry: BTreeSet::new(), config }
    }

    /// Scan every deadline block up to the best block and expire what is due.
    pub async fn pass(&mut self) -> Result<KeeperPass, ChainError> {
        let best = u32::try_from(self.chain.best().await?.block_number()).unwrap_or(u32::MAX);
        let first = self.next_block.unwrap_or(best.saturating_sub(self.config.lookback_blocks));
        let mut due: BTreeSet<JobId> = self.retry.clone();
        // A full page may hide more jobs due at that block: scan from it again next time.
        let mut rescan_from = None;
        for block in first..=best {
            let page = self.chain.jobs_due_at(block, DUE_PAGE).await?;
            if page.len() as u32 >= DUE_PAGE {
                rescan_from.get_or_insert(block);
            }
            due.extend(page);
        }
        self.next_block = Some(rescan_from.unwrap_or(best.saturating_add(1)));
        let mut pass = KeeperPass::default();
        let attempts = due.iter().map(|&job| {
            let chain = self.chain.clone();
            let signer = self.signer.clone();
            async move { (job, chain.expire(&signer, job).await) }
        });
        for (job, result) in futures::future::join_all(attempts).await {
            match result {
                Ok(expired) => {
                    tracing::info!(
                        job,
                        provider = %expired.provider,
                        refunded = %expired.refunded,
                        slashed = %expired.slashed,
                        "expired a job past its deadline"
                    );
                    pass.expired.push(job);
                },
                // Settled, refused or expired by someone else meanwhile, or acknowledged and
                // given a later deadline: nothing to do now (a later deadline is scanned then).
                Err(ChainError::Dispatch {
                    error:
                        ref error @ RuntimeError::Jobs(JobsError::JobClosed | JobsError::NotExpired),
                    ..
                }) => {
                    tracing::debug!(job, %error, "nothing to expire");
                },
                Err(e) => {
                    tracing::warn!(job, error = %e, "expiry failed; retrying at the next block");
                    pass.retry.insert(job);
                },
            }
        }
        self.retry = pass.retry.clone();
        Ok(pass)
    }

    /// Run passes until the process ends, reconnecting when the node goes away.
    pub async fn run(mut self) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "keeper pass failed; reconnecting");
                let url = self.chain.url().to_string();
                match ChainClient::connect(&url, Duration::from_secs(30)).await {
                    Ok(chain) => self.chain = chain,
                    Err(e) => tracing::warn!(error = %e, "chain still unreachable"),
                }
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }
}
