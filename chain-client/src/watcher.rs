//! Job discovery for workers.

use std::collections::BTreeSet;

use subxt::utils::AccountId32;

use crate::reads::{job_at, open_jobs_at};
use crate::types::*;
use crate::{rpc_err, ChainClient, ChainError, Config};

/// Finds a provider's new jobs block by block, each exactly once.
///
/// At each best block it reads the provider's open jobs and yields those it has not yielded
/// before; jobs that closed are forgotten. Because it reads state rather than events, a
/// reconnect or a node restart loses nothing: the first poll afterwards sees every job still
/// open, and none twice.
pub struct AssignmentWatcher {
    chain: ChainClient,
    provider: AccountId32,
    seen: BTreeSet<JobId>,
    last_block: Option<u64>,
    blocks: Option<subxt::client::Blocks<Config>>,
}

impl AssignmentWatcher {
    /// Watch `provider`'s assignments.
    pub fn new(chain: ChainClient, provider: AccountId32) -> Self {
        Self { chain, provider, seen: BTreeSet::new(), last_block: None, blocks: None }
    }

    /// Replace the connection (after a reconnect); what was already yielded stays yielded.
    pub fn reconnected(&mut self, chain: ChainClient) {
        self.chain = chain;
        self.blocks = None;
    }

    /// The number of the last block polled.
    pub fn last_block(&self) -> Option<u64> {
        self.last_block
    }

    /// Wait for the next best block and return the jobs assigned to the provider that were
    /// not returned before, with their records. Blocks are taken in increasing number only
    /// (a stream may start at an older, finalized block), so a closed job never reappears.
    pub async fn next_batch(&mut self) -> Result<Vec<(JobId, Job)>, ChainError> {
        loop {
            if self.blocks.is_none() {
                let stream = self
                    .chain
                    .client
                    .stream_best_blocks()
                    .await
                    .map_err(rpc_err("subscribing to best blocks"))?;
                self.blocks = Some(stream);
                // A new subscription may start from an older block than the node's best
                // (its finalized one): skip those, they can show jobs since closed.
                let best = self.chain.best().await?.block_number();
                let floor = best.saturating_sub(1);
                self.last_block = Some(self.last_block.map_or(floor, |last| last.max(floor)));
            }
            let next = match self.blocks.as_mut() {
                Some(blocks) => blocks.next().await,
                None => None,
            };
            let block = match next {
                Some(Ok(block)) => block,
                Some(Err(e)) => {
                    self.blocks = None;
                    return Err(ChainError::rpc("reading a best block")(e.into()));
                },
                None => {
                    self.blocks = None;
                    return Err(ChainError::Invalid(
                        "the node closed the best-block stream".into(),
                    ));
                },
            };
            if self.last_block.is_some_and(|last| block.number() <= last) {
                continue;
            }
            self.last_block = Some(block.number());
            let at = block.at().await.map_err(rpc_err("opening a best block"))?;
            let open = open_jobs_at(&at, &self.provider).await?;
            // Forget closed jobs: job ids are never reused, so this only bounds memory.
            self.seen.retain(|j| open.contains(j));
            let mut fresh = Vec::new();
            for job in open.iter().filter(|j| !self.seen.contains(j)) {
                if let Some(record) = job_at(&at, *job).await? {
                    fresh.push((*job, record));
                }
            }
            for (job, _) in &fresh {
                self.seen.insert(*job);
            }
            return Ok(fresh);
        }
    }
}
