//! Continuous batching: which requests run and what each step computes. Requests join and
//! leave at every step. Each step takes every running sequence's decode token plus prefill
//! chunks up to a token budget.
//!
//! Prefills are served shortest remaining first: a short prompt that arrives while a long one
//! is being prefilled is prefilled whole in the next step, so one long prompt never holds
//! every new request back for its whole prefill. A step that completes a prefill leaves out
//! the partial chunks of longer prompts, so the short prompt's first token costs a short step
//! rather than a long chunk beside it; a long prompt is never left out two steps running, so
//! a stream of short requests cannot starve it.
//!
//! Admission reserves a sequence's worst-case KV blocks (prompt + max_tokens) up front, so a
//! running sequence can never run out; a request that does not fit waits in the queue.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;

use crate::adapter_cache::AdapterCache;
use crate::error::{EngineError, Result};
use crate::kv_cache::{BlockTable, KvCache};
use crate::sampling::{Sampler, SamplingParams};
use crate::sequence::{RequestId, Sequence, StreamEvent, Verification};

/// A request waiting for admission.
pub(crate) struct Pending {
    pub id: RequestId,
    pub tokens: Vec<u32>,
    pub adapter: Option<String>,
    pub params: SamplingParams,
    pub tx: Sender<StreamEvent>,
    /// Whether to commit to the generated tokens' activations.
    pub commit: bool,
    /// A verification instead of a generation: the tokens are the prompt and the output
    /// but its last token, and nothing is sampled.
    pub verify: Option<Verification>,
}

/// The chunks of one step, as `(index in running, tokens)` in running order.
pub(crate) struct StepPlan {
    pub chunks: Vec<(usize, usize)>,
}

/// The budgets the scheduler keeps to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budgets {
    /// Token rows per step.
    pub batch_tokens: usize,
    /// Prompt tokens one sequence may prefill per step (0: up to `batch_tokens`).
    pub prefill_chunk: usize,
    /// Sequences running at once.
    pub running: usize,
    /// The model's context length (the longest a sequence may grow).
    pub max_position: usize,
}

/// The queue and the running batch.
pub(crate) struct Scheduler {
    budgets: Budgets,
    pub waiting: VecDeque<Pending>,
    pub running: Vec<Sequence>,
    /// The last step left out partial prefill chunks (see [`Scheduler::plan`]).
    held_back_partials: bool,
}

impl Scheduler {
    pub fn new(budgets: Budgets) -> Self {
        Self { budgets, waiting: VecDeque::new(), running: Vec::new(), held_back_partials: false }
    }

    /// Positions a request may come to fill: its prompt and every token it may generate,
    /// within the model's context.
    pub fn worst_case_len(&self, prompt: usize, params: &SamplingParams) -> usize {
        (prompt + params.max_tokens).min(self.budgets.max_position)
    }

    /// Whether a queued request could be admitted now as far as the running budget goes
    /// (admission may still find no KV blocks or its adapter loading).
    pub fn may_admit(&self) -> bool {
        !self.waiting.is_empty() && self.running.len() < self.budgets.running
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Removes running sequence `i`, its KV blocks and adapter pin given back.
    pub fn remove(
        &mut self,
        i: usize,
        cache: &mut KvCache,
        adapters: &mut AdapterCache,
    ) -> Sequence {
        let mut s = self.running.remove(i);
        cache.release(&mut s.table);
        if let Some((_, slot)) = s.adapter.take() {
            adapters.release(slot);
        }
        s
    }

    /// Moves queued requests to running while sequences, KV blocks and adapter slots allow,
    /// in arrival order. A request whose adapter is still loading (read from disk, or copied
    /// to the device when that holds requests back) is passed over while the batch runs, and
    /// the requests behind it are admitted meanwhile: one cold adapter does not hold the
    /// queue. It keeps its place and is admitted first once its adapter is ready.
    pub fn admit(&mut self, cache: &mut KvCache, adapters: &mut AdapterCache) -> Result<()> {
        let mut at = 0;
        while self.running.len() < self.budgets.running {
            let Some(p) = self.waiting.get(at) else { break };
            let worst = self.worst_case_len(p.tokens.len(), &p.params);
            if cache.blocks_for(worst) > cache.free_blocks() {
                break;
            }
            // A cold adapter still loading: keep stepping the running batch meanwhile (with
            // nothing running, admission waits for it in `acquire`).
            if let Some(name) = &p.adapter {
                if !self.running.is_empty() && adapters.is_loading(name) {
                    at += 1;
                    continue;
                }
            }
            let adapter = match &p.adapter {
                None => None,
                Some(name) => match adapters.acquire(name) {
                    Ok(slot) => Some((name.clone(), slot)),
                    Err(EngineError::AdapterSlotsFull { .. }) => break,
                    Err(e) => {
                        if let Some(p) = self.waiting.remove(at) {
                            let _ = p.tx.send(StreamEvent::Failed(e.to_string()));
                        }
                        continue;
                    },
                },
            };
            let Some(p) = self.waiting.remove(at) else { break };
            let mut table = BlockTable::default();
            if let Err(e) = cache.reserve(&mut table, worst) {
                if let Some((_, slot)) = adapter {
                    adapters.release(slot);
                }
                let _ = p.tx.send(StreamEvent::Failed(e.to_string()));
                return Err(e);
            }
            tracing::debug!(request = p.id, prompt = p.tokens.len(), "admitted");
            let mut s = Sequence::new(p.id, p.tokens, table, adapter, Sampler::new(p.params), p.tx);
            // An adapted request commits to its adapter's delta rows too.
            let adapted = s.adapter.is_some();
            s.activations = p.commit.then(|| crate::ActivationCommitment::new(adapted));
            s.verify = p.verify;
            self.running.push(s);
        }
        Ok(())
    }

    /// This step's chunks. Every decoding sequence gets its token first; then prefills
    /// shortest remaining first (ties: the earlier admitted), each at most
    /// `prefill_chunk` tokens, within the step's budget. When some prefill completes in
    /// this step, the partial chunks of longer prompts are held back for one step, unless
    /// they were held back in the last one.
    pub fn plan(&mut self) -> StepPlan {
        let budget = self.budgets.batch_tokens.max(1);
        let chunk = match self.budgets.prefill_chunk {
            0 => budget,
            n => n,
        };
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        let mut used = 0;
        for (i, s) in self.running.iter().enumerate() {
            if s.processed + 1 == s.tokens.len() && used < budget {
                chunks.push((i, 1));
                used += 1;
            }
        }
        let mut prefills: Vec<(usize, usize)> = self
            .running
            .iter()
            .enumerate()
            .map(|(i, s)| (s.tokens.len() - s.processed, i))
            .filter(|&(left, _)| left > 1)
            .collect();
        prefills.sort_unstable();
        let mut partial = Vec::new();
        let mut completes = false;
        for (left, i) in prefills {
            if used >= budget {
                break;
            }
            let n = left.min(budget - used).min(chunk);
            if n == left {
                completes = true;
                chunks.push((i, n));
            } else {
                partial.push((i, n));
            }
            used += n;
        }
        let held_back = completes && !partial.is_empty() && !self.held_back_partials;
        if !held_back {
            chunks.extend(partial);
        }
        self.held_back_partials = held_back;
        chunks.sort_unstable();
        StepPlan { chunks }
    }
}
