//! The engine's façade: load a model, register adapters, submit requests, step. Each step
//! admits what fits and plans the batch ([`crate::scheduler`]), runs one forward pass
//! ([`crate::model`]), samples, and streams each sequence's tokens and text to its caller
//! through its channel ([`crate::sequence`]).
//!
//! A request leaves early in two ways, both giving back its KV blocks and adapter pin at
//! once: [`Engine::cancel`] (its caller went away), or a forward pass that fails, which fails
//! the sequences of that step (each gets [`StreamEvent::Failed`]) and leaves the others
//! running.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::adapter_cache::{AdapterCache, AdapterCacheConfig};
use crate::commitment::{ActivationCommitment, Tolerance, VerifyReport};
use crate::error::{EngineError, Result};
use crate::gguf;
use crate::kv_cache::{KvCache, KvCacheConfig};
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::scheduler::{Budgets, Pending, Scheduler};
use crate::sequence::{
    FinishReason, Limits, Replay, RequestId, Sequence, StreamEvent, Verification,
};
use crate::step::{SeqChunk, StepOutput, StepRows};

/// Sizes and budgets of an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    pub kv_cache: KvCacheConfig,
    pub adapters: AdapterCacheConfig,
    /// Token rows per step, prefill and decode together.
    pub max_batch_tokens: usize,
    /// Prompt tokens one sequence may prefill per step (0: up to `max_batch_tokens`). A
    /// smaller chunk shortens the steps a long prompt takes part in, so the sequences that
    /// decode beside it stream faster, at some cost to the long prompt's own prefill rate.
    pub max_prefill_chunk: usize,
    /// Sequences running at once.
    pub max_running: usize,
    /// Threads of the engine's compute pool (0: one per CPU).
    pub threads: usize,
    /// Commit to every generated token's activations ([`crate::commitment`]): each
    /// request's [`StreamEvent::Finished`] then carries its commitment.
    pub commit_activations: bool,
    /// Launch a greedy decode step before the previous one's picks are read (they reach it
    /// on the device), so the device is not idle while the host streams tokens, draws and
    /// schedules. `None`: the default ([`OVERLAP_BY_DEFAULT`] on a CUDA device, off on the
    /// host); `Some` forces either way (on the host the steps then run one after another as
    /// before, through the same bookkeeping).
    pub overlap_decode: Option<bool>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kv_cache: KvCacheConfig::default(),
            adapters: AdapterCacheConfig::default(),
            max_batch_tokens: 512,
            max_prefill_chunk: 0,
            max_running: 64,
            threads: 0,
            commit_activations: true,
            overlap_decode: None,
        }
    }
}

/// Where the base model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory with `config.json`, `*.safetensors` and `tokenizer.json`.
    HuggingFace(PathBuf),
    /// A GGUF file (quantized weights; tokenizer from its metadata).
    Gguf(PathBuf),
}

/// What a caller asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
    pub prompt: String,
    /// A registered adapter, or `None` for the base model.
    pub adapter: Option<String>,
    pub params: SamplingParams,
}

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    pub sequences: usize,
    pub tokens: usize,
    pub finished: usize,
    pub waiting: usize,
    /// Where the step's wall time went, phase by phase.
    pub phases: StepPhases,
}

/// One step's wall time by phase (measured on the calling thread). On a GPU only
/// `readback` waits for the device: the rest is the host's own work, which the device
/// spends idle, so `total - readback` is what the engine adds to the model step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepPhases {
    /// Admission (KV blocks, adapter pins and loads) and the step's plan.
    pub schedule: Duration,
    /// The forward pass as the host sees it: inputs built and uploaded, kernels or a graph
    /// launched (on the CPU, the whole computation).
    pub forward: Duration,
    /// Logits (or each row's argmax) and commitment entries brought to the host: on a GPU,
    /// the wait for the device.
    pub readback: Duration,
    /// Sampling, commitment words and sequence bookkeeping.
    pub sample: Duration,
    /// Detokenizing, streaming and retiring finished sequences.
    pub emit: Duration,
}

impl StepPhases {
    /// The whole step.
    pub fn total(&self) -> Duration {
        self.schedule + self.forward + self.readback + self.sample + self.emit
    }
}

impl std::ops::AddAssign for StepPhases {
    fn add_assign(&mut self, o: Self) {
        self.schedule += o.schedule;
        self.forward += o.forward;
        self.readback += o.readback;
        self.sample += o.sample;
        self.emit += o.emit;
    }
}

/// What the engine holds now: requests, KV blocks, adapter pins and steps run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// Requests queued for admission.
    pub waiting: usize,
    /// Sequences admitted and not yet finished.
    pub running: usize,
    /// KV cache blocks no sequence holds.
    pub kv_free_blocks: usize,
    /// KV cache blocks in all.
    pub kv_blocks: usize,
    /// Adapter pins held by running sequences (one per sequence with an adapter).
    pub adapter_pins: usize,
    /// Forward passes run so far, failed ones included.
    pub steps: u64,
    /// Of those, the decode steps launched before the previous step's picks were read
    /// ([`EngineConfig::overlap_decode`]).
    pub overlapped_steps: u64,
}

/// The engine: base model, tokenizer, adapter cache, KV cache and scheduler.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    cache: KvCache,
    adapters: AdapterCache,
    scheduler: Scheduler,
    next_id: RequestId,
    /// Forward passes run so far.
    steps: u64,
    /// Fail the next forward pass (fault injection for tests: [`Engine::fail_next_step`]).
    fail_next_step: bool,
    /// Every step runs inside this pool, so the calling thread is one of its workers and the
    /// many short parallel loops of a step cost no thread hand-offs.
    pool: Option<Arc<rayon::ThreadPool>>,
    commit_activations: bool,
    overlap_decode: bool,
    /// A decode step launched ahead and not yet read: the next [`Engine::step`] reads it.
    in_flight: Option<Launched>,
    overlapped_steps: u64,
}

impl Engine {
    /// An engine over an already loaded model and tokenizer; the KV cache and the adapters'
    /// compute tier are made where the model runs (host memory, or its GPU).
    pub fn new(model: Model, tokenizer: Tokenizer, config: EngineConfig) -> Result<Self> {
        let pool = compute_pool(config.threads);
        let mut cache = KvCache::for_model(config.kv_cache, &model)?;
        // Decode steps replayed from CUDA graphs are padded to their bucket, the padding rows
        // writing to a block no sequence holds: taken now, before admission can hand every
        // block out (a step with no padding block would run eagerly).
        if openledger_kernels::options::options().cuda_graphs && model.device().is_cuda() {
            cache.padding_block();
        }
        // A CPU engine on a block-quantized model reads its adapters as row-quantized bytes:
        // a decode step with many distinct adapters is bound by their bytes, and the base
        // weights are already quantized coarser (`OPENLEDGER_ADAPTERS_BF16=1` opts out).
        let quantized =
            model.is_block_quantized() && !openledger_kernels::options::options().adapters_bf16;
        let adapters =
            AdapterCache::new(config.adapters, model.config(), model.device(), quantized);
        let scheduler = Scheduler::new(Budgets {
            batch_tokens: config.max_batch_tokens,
            prefill_chunk: config.max_prefill_chunk,
            running: config.max_running,
            max_position: model.config().max_position,
        });
        Ok(Self {
            tokenizer,
            cache,
            adapters,
            scheduler,
            next_id: 0,
            steps: 0,
            fail_next_step: false,
            commit_activations: config.commit_activations,
            overlap_decode: config
                .overlap_decode
                .unwrap_or(OVERLAP_BY_DEFAULT && model.device().is_cuda()),
            model,
            pool,
            in_flight: None,
            overlapped_steps: 0,
        })
    }

    /// Loads the base model and its tokenizer.
    pub fn load(source: &ModelSource, config: EngineConfig, device: &Device) -> Result<Self> {
        let (model, tokenizer) = match source {
            ModelSource::HuggingFace(dir) => {
                let model = Model::load_hf(dir, device)?;
                (model, openledger_model::load_tokenizer(&dir.join("tokenizer.json"))?)
            },
            ModelSource::Gguf(path) => {
                // Read on the host (candle's block formats), dequantized for a GPU.
                let g = gguf::load(path, &Device::Cpu)?;
                (Model::from_host_weights(g.config, g.weights, device)?, g.tokenizer)
            },
        };
        Self::new(model, tokenizer, config)
    }

    /// Turns activation commitments on or off for requests queued from now on (those
    /// already queued or running keep what they were submitted with).
    pub fn set_commit_activations(&mut self, on: bool) {
        self.commit_activations = on;
    }

    /// The base model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The adapter cache (tiers, residency).
    pub fn adapters(&self) -> &AdapterCache {
        &self.adapters
    }

    /// Waits until the adapters queued requests need have been read from disk, so that the
    /// next step admits by slots and KV blocks alone (tests and benchmarks that must not
    /// depend on how fast a background read is; a server never needs this).
    pub fn wait_for_adapter_loads(&mut self) {
        self.adapters.wait_for_prefetches();
    }

    /// Registers a PEFT adapter directory under `name` (validated now).
    pub fn register_adapter(&mut self, name: &str, dir: &Path) -> Result<()> {
        self.adapters.register(name, dir)
    }

    /// Queues a request; its tokens arrive on the returned channel as steps run.
    pub fn submit(&mut self, req: GenerationRequest) -> Result<(RequestId, Receiver<StreamEvent>)> {
        let tokens = self.tokenize(&req.prompt)?;
        self.submit_tokens(tokens, req.adapter, req.params)
    }

    /// The prompt's token ids, as [`Self::submit`] queues them.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        // With add_special_tokens, a tokenizer.json's post-processor adds BOS where the
        // model expects it (Llama 2/3); byte-level chat models add nothing.
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Queues a prompt given as token ids (as OpenAI's completions API allows).
    pub fn submit_tokens(
        &mut self,
        tokens: Vec<u32>,
        adapter: Option<String>,
        params: SamplingParams,
    ) -> Result<(RequestId, Receiver<StreamEvent>)> {
        let id = self.check_request(&tokens, adapter.as_deref(), &params)?;
        Ok((id, self.queue(id, tokens, adapter, params, None)))
    }

    /// Queues a verification of another worker's output: recomputes, in prefill passes
    /// batched with the running requests, the rows that picked each of `output`'s tokens
    /// after `prompt` (with `adapter`), and compares them with `claimed`
    /// ([`crate::commitment::compare_row`], values within `tolerance.relative`). With
    /// `replay` (the request's sampling parameters, its seed included), it also runs the
    /// request's sampler over the logits of those rows and counts the output tokens it does
    /// not reproduce (near ties within `tolerance.replay_tie` forgiven). The channel gets one
    /// [`StreamEvent::Verified`] with the findings (or [`StreamEvent::Failed`]), which the
    /// caller judges with [`VerifyReport::passes`] against the same `tolerance`
    /// ([`crate::commitment::Tolerance::for_format`] of [`Model::numeric_format`]).
    pub fn submit_verification(
        &mut self,
        prompt: &[u32],
        output: &[u32],
        adapter: Option<String>,
        claimed: ActivationCommitment,
        tolerance: Tolerance,
        replay: Option<SamplingParams>,
    ) -> Result<(RequestId, Receiver<StreamEvent>)> {
        if let Some(Err(e)) = replay.as_ref().map(SamplingParams::check) {
            let request = self.next_id;
            self.next_id += 1;
            return Err(EngineError::InvalidSampling { request, message: e });
        }
        if prompt.is_empty() {
            let request = self.next_id;
            self.next_id += 1;
            return Err(EngineError::EmptyPrompt { request });
        }
        // The row that picked output token j sits at position prompt.len() - 1 + j: the
        // prompt and every output token but the last go in.
        let mut tokens = prompt.to_vec();
        tokens.extend_from_slice(output.get(..output.len().saturating_sub(1)).unwrap_or(&[]));
        let params = SamplingParams { max_tokens: 1, ..SamplingParams::default() };
        let id = self.check_request(&tokens, adapter.as_deref(), &params)?;
        let mut report = VerifyReport::new(&claimed);
        // An adapted claim commits to delta rows, one without an adapter to none: a claim
        // whose layout is the other one's cannot be an honest worker's.
        report.layout_mismatch = claimed.is_adapted() != adapter.is_some();
        report.recomputed = ActivationCommitment::new(adapter.is_some());
        if output.is_empty() {
            let (tx, rx) = channel();
            let _ = tx.send(StreamEvent::Verified(report));
            return Ok((id, rx));
        }
        let verify = Verification {
            claimed,
            first_row: prompt.len() - 1,
            rows: output.len(),
            tolerance,
            report,
            replay: replay.map(|p| Replay { sampler: Sampler::new(p), output: output.to_vec() }),
            picks: Verification::picks_of(output, adapter.is_some()),
            output: output.to_vec(),
        };
        Ok((id, self.queue(id, tokens, adapter, params, Some(verify))))
    }

    /// Queues a checked request (a generation, or a verification when `verify` is set) and
    /// starts loading its adapter; returns its event channel.
    fn queue(
        &mut self,
        id: RequestId,
        tokens: Vec<u32>,
        adapter: Option<String>,
        params: SamplingParams,
        verify: Option<Verification>,
    ) -> Receiver<StreamEvent> {
        let (tx, rx) = channel();
        if let Some(name) = &adapter {
            self.adapters.prefetch(name);
        }
        // A verification recomputes another worker's rows: nothing of its own to commit.
        let commit = self.commit_activations && verify.is_none();
        self.scheduler.waiting.push_back(Pending {
            id,
            tokens,
            adapter,
            params,
            tx,
            commit,
            verify,
        });
        rx
    }

    /// Checks a request before it is queued; returns its id.
    fn check_request(
        &mut self,
        tokens: &[u32],
        adapter: Option<&str>,
        params: &SamplingParams,
    ) -> Result<RequestId> {
        let id = self.next_id;
        self.next_id += 1;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt { request: id });
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::TokenOutOfVocabulary { request: id, token, vocab });
        }
        params.check().map_err(|message| EngineError::InvalidSampling { request: id, message })?;
        if let Some(name) = adapter {
            if !self.adapters.contains(name) {
                return Err(EngineError::UnknownAdapter(name.to_string()));
            }
        }
        let context = self.model.config().max_position;
        if tokens.len() >= context {
            return Err(EngineError::PromptTooLong {
                request: id,
                prompt_tokens: tokens.len(),
                context,
            });
        }
        let blocks = self.cache.blocks_for(self.scheduler.worst_case_len(tokens.len(), params));
        let capacity = self.cache.config().num_blocks;
        if blocks > capacity {
            return Err(EngineError::ExceedsKvCache {
                request: id,
                prompt_tokens: tokens.len(),
                max_tokens: params.max_tokens,
                blocks,
                capacity,
            });
        }
        Ok(id)
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.scheduler.is_idle() && self.in_flight.is_none()
    }

    /// Requests, KV blocks and adapter pins held now, and steps run so far.
    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            waiting: self.scheduler.waiting.len(),
            running: self.scheduler.running.len(),
            kv_free_blocks: self.cache.free_blocks(),
            kv_blocks: self.cache.config().num_blocks,
            adapter_pins: self.adapters.pins(),
            steps: self.steps,
            overlapped_steps: self.overlapped_steps,
        }
    }

    /// Stops request `id` whether queued or running: it leaves the engine at once with its KV
    /// blocks and adapter pin given back, nothing more is computed for it, and its channel
    /// closes without a final event. False when no such request is queued or running (it
    /// finished already, or was never submitted).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.scheduler.waiting.iter().position(|p| p.id == id) {
            self.scheduler.waiting.remove(i);
            tracing::debug!(request = id, "cancelled while queued");
            return true;
        }
        if let Some(i) = self.scheduler.running.iter().position(|s| s.id == id) {
            let s = self.scheduler.remove(i, &mut self.cache, &mut self.adapters);
            tracing::debug!(request = id, generated = s.generated().len(), "cancelled");
            return true;
        }
        false
    }

    /// Makes the next forward pass fail as a backend error would (fault injection, for
    /// tests of the failure path).
    #[doc(hidden)]
    pub fn fail_next_step(&mut self) {
        self.fail_next_step = true;
    }

    /// Runs steps until every request has finished.
    pub fn run_until_idle(&mut self) -> Result<()> {
        while !self.is_idle() {
            self.step()?;
        }
        Ok(())
    }

    /// Admits what fits, runs one batched forward pass, samples and streams.
    ///
    /// When the forward pass fails, the sequences of this step are failed (each gets
    /// [`StreamEvent::Failed`] with the error) and removed with their KV blocks and adapter
    /// pins given back, and the error is returned; the sequences that were not in the step
    /// and the queue are untouched, and the engine can step again.
    pub fn step(&mut self) -> Result<StepReport> {
        match self.pool.clone() {
            Some(pool) => pool.install(|| self.step_in_pool()),
            None => self.step_in_pool(),
        }
    }

    fn step_in_pool(&mut self) -> Result<StepReport> {
        let start = Instant::now();
        let mut report = StepReport::default();
        if let Some(launched) = self.in_flight.take() {
            // The step the last call launched ahead is this call's: the one after it is
            // launched first when it can be, then this one read.
            let live = launched.ids.iter().filter(|&&id| self.position(id).is_some()).count();
            (report.sequences, report.tokens) = (live, live);
            report.phases.schedule = start.elapsed();
            let ids = launched.ids.clone();
            if let Err(e) = self.advance(launched, &mut report.phases) {
                self.fail_ids(&ids, &e);
                return Err(e);
            }
        } else {
            self.scheduler.admit(&mut self.cache, &mut self.adapters)?;
            let plan = self.scheduler.plan().chunks;
            report.sequences = plan.len();
            report.tokens = plan.iter().map(|&(_, n)| n).sum();
            report.phases.schedule = start.elapsed();
            if !plan.is_empty() {
                self.steps += 1;
                let ran = if std::mem::take(&mut self.fail_next_step) {
                    Err(EngineError::Backend("injected failure of this step".into()))
                } else if self.overlaps(&plan) {
                    self.run_decode(&plan, &mut report.phases)
                } else {
                    self.run_plan(&plan, &mut report.phases)
                };
                if let Err(e) = ran {
                    let ids: Vec<RequestId> =
                        plan.iter().map(|&(i, _)| self.scheduler.running[i].id).collect();
                    self.fail_ids(&ids, &e);
                    return Err(e);
                }
            }
        }
        let emitting = Instant::now();
        let config = self.model.config();
        let limits = Limits { eos: &config.eos_token_ids, max_position: config.max_position };
        // Each running sequence's outcome of this step, worked out on the pool's threads when
        // the batch is large (detokenizing and streaming are each sequence's own; its events
        // keep their order on its channel), then the finished removed in batch order.
        let tokenizer = &self.tokenizer;
        let outcome = |s: &mut Sequence| {
            if s.verify.is_some() && s.processed == s.tokens.len() {
                Outcome::Verified
            } else {
                s.emit(tokenizer, &limits).map_or(Outcome::Running, Outcome::Finished)
            }
        };
        let outcomes: Vec<Outcome> = if self.scheduler.running.len() >= PARALLEL_EMIT_MIN
            && rayon::current_num_threads() > 1
        {
            use rayon::prelude::*;
            self.scheduler.running.par_iter_mut().with_min_len(EMIT_CHUNK).map(outcome).collect()
        } else {
            self.scheduler.running.iter_mut().map(outcome).collect()
        };
        let mut i = 0;
        for o in outcomes {
            match o {
                Outcome::Running => i += 1,
                Outcome::Verified => {
                    let mut s = self.scheduler.remove(i, &mut self.cache, &mut self.adapters);
                    if let Some(mut v) = s.verify.take() {
                        v.report.recomputed.seal(&v.output, true);
                        tracing::debug!(request = s.id, report = ?v.report, "verified");
                        let _ = s.tx.send(StreamEvent::Verified(v.report));
                    }
                    report.finished += 1;
                },
                Outcome::Finished(reason) => {
                    let mut s = self.scheduler.remove(i, &mut self.cache, &mut self.adapters);
                    let mut activations = s.activations.take();
                    if let Some(c) = activations.as_mut() {
                        c.seal(s.generated(), true);
                    }
                    let _ = s.tx.send(StreamEvent::Finished {
                        reason,
                        prompt_tokens: s.prompt_len,
                        completion_tokens: s.tokens.len() - s.prompt_len,
                        activations,
                    });
                    tracing::debug!(request = s.id, ?reason, "finished");
                    report.finished += 1;
                },
            }
        }
        // A step launched ahead whose every sequence has finished is waited for and dropped.
        if self
            .in_flight
            .as_ref()
            .is_some_and(|l| l.ids.iter().all(|&id| self.position(id).is_none()))
        {
            if let Some(l) = self.in_flight.take() {
                l.picks_copy.wait()?;
            }
        }
        report.waiting = self.scheduler.waiting.len();
        report.phases.emit = emitting.elapsed();
        Ok(report)
    }

    /// Where the running sequence `id` is.
    fn position(&self, id: RequestId) -> Option<usize> {
        self.scheduler.running.iter().position(|s| s.id == id)
    }

    /// Whether `plan` is a decode step that [`Self::run_decode`] runs: overlap on, one
    /// token for each sequence, every one a greedy generation.
    fn overlaps(&self, plan: &[(usize, usize)]) -> bool {
        self.overlap_decode
            && plan.iter().all(|&(i, n)| {
                n == 1 && self.scheduler.running.get(i).is_some_and(Sequence::decodes_greedily)
            })
    }

    /// Runs the greedy decode step `plan` ([`Self::overlaps`]): launched, the step after it
    /// launched too when it can follow, then this one read.
    fn run_decode(&mut self, plan: &[(usize, usize)], phases: &mut StepPhases) -> Result<()> {
        let rows: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
        let mark = Instant::now();
        let launched = self.launch_decode(&rows, None)?.ok_or_else(|| {
            EngineError::Backend("a decode step with its tokens on the host did not run".into())
        })?;
        phases.forward += mark.elapsed();
        self.advance(launched, phases)
    }

    /// Launches the step that follows `launched` when [`Self::may_follow`], then reads
    /// `launched`; the follower is left in flight for the next call.
    fn advance(&mut self, launched: Launched, phases: &mut StepPhases) -> Result<()> {
        let mark = Instant::now();
        let next = if self.may_follow(&launched) {
            let rows: Vec<usize> = (0..self.scheduler.running.len()).collect();
            self.launch_decode(&rows, Some(&launched.picks))?
        } else {
            None
        };
        if next.is_some() {
            self.steps += 1;
            self.overlapped_steps += 1;
        }
        phases.forward += mark.elapsed();
        let read = self.read_decode(launched, phases);
        self.in_flight = next;
        read
    }

    /// Whether the step after `launched` can be launched before `launched` is read: the
    /// running sequences are exactly its rows, in order, each still decoding greedily and
    /// sure not to reach its length limit with the token `launched` picks (an end token or
    /// a stop string it may pick leaves one row of the follower unused), and no queued
    /// request could be admitted (a full running budget holds the queue anyway).
    fn may_follow(&self, launched: &Launched) -> bool {
        let max_position = self.model.config().max_position;
        let running = &self.scheduler.running;
        self.overlap_decode
            && !self.fail_next_step
            && !self.scheduler.may_admit()
            && running.len() == launched.ids.len()
            && running.iter().zip(&launched.ids).all(|(s, &id)| {
                let next = s.tokens.len() + 1;
                s.id == id
                    && s.decodes_greedily()
                    && next - s.prompt_len < s.sampler.params().max_tokens
                    && next < max_position
            })
    }

    /// Launches a decode step of one token for each running sequence at `rows` (running
    /// indices, in order): their own next token, or with `follow` the picks of the step in
    /// flight before it (on the device), one position further. Its picks are made where the
    /// logits are and start their way to the host. `None` when a following step cannot be
    /// launched ahead (no captured graph replays it).
    fn launch_decode(
        &mut self,
        rows: &[usize],
        follow: Option<&Tensor>,
    ) -> Result<Option<Launched>> {
        let running = &self.scheduler.running;
        let mut chunks = Vec::with_capacity(rows.len());
        let (mut ids, mut commit_rows, mut delta_rows) = (Vec::new(), Vec::new(), Vec::new());
        let (mut commit, mut delta) = (Vec::new(), Vec::new());
        for (k, &i) in rows.iter().enumerate() {
            let s = running.get(i).ok_or_else(|| {
                EngineError::Backend(format!("a decode step of running sequence {i}"))
            })?;
            chunks.push(match follow {
                None => s.chunk(1),
                Some(_) => SeqChunk {
                    tokens: &FOLLOW_TOKEN,
                    table: &s.table,
                    start: s.processed + 1,
                    adapter: s.adapter.as_ref().map(|a| a.1),
                },
            });
            ids.push(s.id);
            // A generation commits the row that picks its next token: every decode row.
            commit.push(s.activations.is_some());
            delta.push(s.activations.is_some() && s.reads_delta(0));
            if commit[k] {
                commit_rows.push(k as u32);
            }
            if delta[k] {
                delta_rows.push(k as u32);
            }
        }
        let asked =
            StepRows { commit: &commit_rows, delta_commit: &delta_rows, ..StepRows::default() };
        let tables = self.adapters.tables();
        let out = match follow {
            None => {
                let graphs = openledger_kernels::options::options().cuda_graphs;
                self.model.forward_rows(&chunks, &mut self.cache, tables, asked, graphs)?
            },
            Some(tokens) => {
                match self.model.forward_following(
                    &chunks,
                    &mut self.cache,
                    tables,
                    asked,
                    tokens,
                )? {
                    Some(out) => out,
                    None => return Ok(None),
                }
            },
        };
        drop(chunks);
        // The picks: on a GPU each row's argmax, made there (the follower reads them
        // there); on the host each sequence's sampler over its row, as `run_plan` draws.
        let picks = if out.logits.device().is_cpu() {
            let logits = out.logits.to_vec2::<f32>()?;
            let plan: Vec<(usize, usize)> = rows.iter().map(|&i| (i, 1)).collect();
            let drawn = self.draw_rows(&plan, &logits);
            let picks = drawn
                .into_iter()
                .map(|t| t.ok_or_else(|| EngineError::Backend("a decode row drew no token".into())))
                .collect::<Result<Vec<u32>>>()?;
            Tensor::from_vec(picks, rows.len(), &Device::Cpu)?
        } else {
            out.logits.argmax(1)?
        };
        let picks_copy = openledger_kernels::HostCopy::start(&picks)?;
        Ok(Some(Launched { ids, commit, delta, out, picks, picks_copy }))
    }

    /// Reads a launched decode step: each row's pick and commitment entries go to its
    /// sequence, if it is still running (one that finished or was cancelled since its
    /// launch is passed over).
    fn read_decode(&mut self, launched: Launched, phases: &mut StepPhases) -> Result<()> {
        let mark = Instant::now();
        let Launched { ids, commit, delta, out, picks: _, picks_copy } = launched;
        let picks = picks_copy.wait()?;
        let (committed, deltas) = (count(&commit), count(&delta));
        let words = if committed == 0 { Vec::new() } else { out.entries.wait()? };
        let delta_words = if deltas == 0 { Vec::new() } else { out.delta_entries.wait()? };
        phases.readback += mark.elapsed();
        let mark = Instant::now();
        if picks.len() != ids.len() || words.len() != committed || delta_words.len() != deltas {
            return Err(EngineError::Backend(format!(
                "a decode step of {} rows returned {} picks, {} of {committed} committed rows \
                 and {} of {deltas} delta rows",
                ids.len(),
                picks.len(),
                words.len(),
                delta_words.len()
            )));
        }
        let (mut words, mut delta_words) = (words.iter(), delta_words.iter());
        let mut from = 0;
        for (k, (&id, &t)) in ids.iter().zip(&picks).enumerate() {
            // The row's entries are taken in order whether or not its sequence is still here.
            let word = if commit[k] { words.next() } else { None };
            let delta_word = if delta[k] { delta_words.next() } else { None };
            // Rows are in running order, and sequences leave without reordering the rest.
            let Some(at) =
                self.scheduler.running.get(from..).and_then(|r| r.iter().position(|s| s.id == id))
            else {
                continue;
            };
            from += at + 1;
            let s = &mut self.scheduler.running[from - 1];
            if s.processed + 1 != s.tokens.len() {
                return Err(EngineError::Backend(format!(
                    "request {id} read a decode row at {} with {} tokens",
                    s.processed,
                    s.tokens.len()
                )));
            }
            if let Some(w) = word {
                s.push_entries(w, delta_word.map(Vec::as_slice));
            }
            s.processed += 1;
            s.table.len = s.processed;
            s.push_token(t);
        }
        phases.sample += mark.elapsed();
        Ok(())
    }

    /// Runs the forward pass of `plan` and samples the sequences whose prompt is done.
    fn run_plan(&mut self, plan: &[(usize, usize)], phases: &mut StepPhases) -> Result<()> {
        let mut mark = Instant::now();
        let mut lap = |phase: &mut Duration| {
            let now = Instant::now();
            *phase += now - mark;
            mark = now;
        };
        let chunks: Vec<SeqChunk<'_>> =
            plan.iter().map(|&(i, n)| self.scheduler.running[i].chunk(n)).collect();
        // The final-norm rows this step verifies, and those it commits to (only their
        // commitment entries come back), each in step-row order.
        // With an adapter, also the delta rows a verification checks (its picks) and those a
        // generation commits to (every committed row's).
        let (mut hidden_rows, mut commit_rows) = (Vec::new(), Vec::new());
        let (mut delta_rows, mut delta_commit) = (Vec::new(), Vec::new());
        let mut offset = 0;
        for &(i, n) in plan {
            let s = &self.scheduler.running[i];
            let (rows, deltas) = if s.verify.is_some() {
                (&mut hidden_rows, &mut delta_rows)
            } else {
                (&mut commit_rows, &mut delta_commit)
            };
            for r in s.rows_to_read(n) {
                rows.push((offset + r) as u32);
                if s.reads_delta(r) {
                    deltas.push((offset + r) as u32);
                }
            }
            offset += n;
        }
        let asked = StepRows {
            hidden: &hidden_rows,
            commit: &commit_rows,
            delta: &delta_rows,
            delta_commit: &delta_commit,
        };
        let graphs = openledger_kernels::options::options().cuda_graphs;
        let out = self.model.forward_rows(
            &chunks,
            &mut self.cache,
            self.adapters.tables(),
            asked,
            graphs,
        )?;
        drop(chunks);
        lap(&mut phases.forward);
        let logits = out.logits;
        if !hidden_rows.is_empty() {
            // Verifications that replay sampling need each row's logits too.
            let replaying = plan.iter().any(|&(i, _)| self.scheduler.running[i].replays());
            let row_logits = if replaying {
                self.model.logits_of(&out.hidden)?.to_vec2::<f32>()?
            } else {
                Vec::new()
            };
            let hidden = out.hidden.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            let mut rows = hidden.iter().enumerate();
            let mut deltas = out.delta.iter();
            for &(i, n) in plan {
                let s = &mut self.scheduler.running[i];
                if s.verify.is_none() {
                    continue;
                }
                for r in s.rows_to_read(n) {
                    let (k, row) = rows.next().ok_or_else(|| {
                        EngineError::Backend(
                            "the model returned fewer hidden rows than asked".into(),
                        )
                    })?;
                    s.take_row(r, row, row_logits.get(k).map(Vec::as_slice))?;
                    if s.reads_delta(r) {
                        let delta = deltas.next().ok_or_else(|| {
                            EngineError::Backend(
                                "the model returned fewer delta rows than asked".into(),
                            )
                        })?;
                        s.take_delta_row(r, delta);
                    }
                }
            }
        }
        // On a GPU, when every row is greedy, only each row's argmax crosses to the host
        // (4 bytes instead of a vocabulary of f32 logits per row, and no host scan).
        let greedy_on_device = !logits.device().is_cpu()
            && plan.iter().all(|&(i, _)| self.scheduler.running[i].sampler.is_greedy());
        let (rows, picks) = if greedy_on_device {
            (Vec::new(), logits.argmax(1)?.to_vec1::<u32>()?)
        } else {
            (logits.to_vec2::<f32>()?, Vec::new())
        };
        // The commitment entries were copied behind the step, which the logits above have
        // waited for: they are on the host by now.
        let words = if commit_rows.is_empty() { None } else { Some(out.entries.wait()?) };
        lap(&mut phases.readback);
        if let Some(words) = words {
            if words.len() != commit_rows.len() {
                return Err(EngineError::Backend(format!(
                    "the model committed {} rows of the {} asked",
                    words.len(),
                    commit_rows.len()
                )));
            }
            let delta_words = out.delta_entries.wait()?;
            if delta_words.len() != delta_commit.len() {
                return Err(EngineError::Backend(format!(
                    "the model committed {} delta rows of the {} asked",
                    delta_words.len(),
                    delta_commit.len()
                )));
            }
            let (mut words, mut delta_words) = (words.iter(), delta_words.iter());
            for &(i, n) in plan {
                let s = &mut self.scheduler.running[i];
                if s.verify.is_some() {
                    continue;
                }
                for r in s.rows_to_read(n) {
                    let Some(w) = words.next() else { continue };
                    if s.activations.is_none() {
                        continue;
                    }
                    // Only adapted rows took a delta row (the next one in step order).
                    let d = if s.reads_delta(r) { delta_words.next() } else { None };
                    s.push_entries(w, d.map(Vec::as_slice));
                }
            }
        }
        if rows.len().max(picks.len()) != plan.len() {
            return Err(EngineError::Backend(format!(
                "the model returned {} logits rows for {} chunks",
                rows.len().max(picks.len()),
                plan.len()
            )));
        }
        let drawn = self.draw_rows(plan, &rows);
        for (k, &(i, n)) in plan.iter().enumerate() {
            let s = &mut self.scheduler.running[i];
            s.processed += n;
            s.table.len = s.processed;
            if s.processed == s.tokens.len() && s.verify.is_none() {
                let t = match (drawn.get(k).copied().flatten(), picks.get(k)) {
                    (Some(t), _) => t,
                    (None, Some(&t)) => t,
                    (None, None) => continue,
                };
                // A chunk whose last token this is can commit its delta picks now.
                s.push_token(t);
            }
        }
        lap(&mut phases.sample);
        Ok(())
    }

    /// Each plan chunk's sampled token, for the chunks that finish their sequence's tokens in
    /// this step (generations, not verifications) and have a row of logits: drawn by each
    /// sequence's own sampler, on the pool's threads when there are several (a sampled draw
    /// sorts the head of a vocabulary; each sampler's draws stay in its own order, so the
    /// tokens are those of a sequential loop).
    fn draw_rows(&mut self, plan: &[(usize, usize)], rows: &[Vec<f32>]) -> Vec<Option<u32>> {
        use rayon::prelude::*;
        if rows.is_empty() {
            return Vec::new();
        }
        // Running index -> (plan position, its row) for the rows drawn this step.
        let mut want: Vec<Option<(usize, &[f32])>> = vec![None; self.scheduler.running.len()];
        for (k, &(i, n)) in plan.iter().enumerate() {
            let (Some(s), Some(row)) = (self.scheduler.running.get(i), rows.get(k)) else {
                continue;
            };
            if s.processed + n == s.tokens.len() && s.verify.is_none() {
                if let Some(w) = want.get_mut(i) {
                    *w = Some((k, row.as_slice()));
                }
            }
        }
        let draws = want.iter().filter(|w| w.is_some()).count();
        let running = self.scheduler.running.iter_mut().zip(&want);
        let picked: Vec<(usize, u32)> = if draws > 1 {
            running
                .collect::<Vec<_>>()
                .into_par_iter()
                .filter_map(|(s, w)| w.map(|(k, row)| (k, s.sampler.sample(row))))
                .collect()
        } else {
            running.filter_map(|(s, w)| w.map(|(k, row)| (k, s.sampler.sample(row)))).collect()
        };
        let mut drawn = vec![None; plan.len()];
        for (k, t) in picked {
            if let Some(d) = drawn.get_mut(k) {
                *d = Some(t);
            }
        }
        drawn
    }

    /// Fails and removes the running sequences `ids` of a step whose forward pass failed
    /// (and a step launched ahead of theirs, waited for and dropped).
    fn fail_ids(&mut self, ids: &[RequestId], error: &EngineError) {
        if let Some(l) = self.in_flight.take() {
            let _ = l.picks_copy.wait();
        }
        let message = format!("the engine step failed: {error}");
        for &id in ids {
            let Some(i) = self.position(id) else { continue };
            let s = self.scheduler.remove(i, &mut self.cache, &mut self.adapters);
            let _ = s.tx.send(StreamEvent::Failed(message.clone()));
            tracing::warn!(request = s.id, %error, "request failed with its step");
        }
    }
}

/// Whether a CUDA engine overlaps its greedy decode steps unless told
/// ([`EngineConfig::overlap_decode`]). Off until the overlap has run on a GPU: its GPU test
/// (`cuda_overlapped_decode_streams_what_it_does_without`) and the engine A/B of
/// `engine-gpu-bench --no-overlap`; the benchmarks turn it on.
pub const OVERLAP_BY_DEFAULT: bool = false;

/// Running sequences from which a step's emission (detokenizing, stop strings, streaming)
/// is spread over the pool's threads, and the sequences each thread takes at least: on the
/// CPU a few us a sequence (docs/benchmarks.md, "Emission per step"), which at batch 64 is
/// a few percent of an 8B GPU decode step, during which the device waits.
const PARALLEL_EMIT_MIN: usize = 16;
const EMIT_CHUNK: usize = 4;

fn count(flags: &[bool]) -> usize {
    flags.iter().filter(|&&f| f).count()
}

/// The token a following step's chunks carry: it reads its real tokens on the device.
static FOLLOW_TOKEN: [u32; 1] = [0];

/// A greedy decode step launched and not yet read.
struct Launched {
    /// Each row's sequence, in running order.
    ids: Vec<RequestId>,
    /// Whether each row's commitment entries, and its adapter delta's, come back.
    commit: Vec<bool>,
    delta: Vec<bool>,
    out: StepOutput,
    /// Each row's pick (`[rows]` u32, where the logits are: a following step's tokens).
    picks: Tensor,
    picks_copy: openledger_kernels::HostCopy,
}

/// What a step did to one running sequence.
enum Outcome {
    Running,
    /// A verification whose every token has been recomputed.
    Verified,
    Finished(FinishReason),
}

/// A pool of `threads` workers (0: one per CPU); `None` (steps then use rayon's global pool)
/// if the OS refuses the threads.
fn compute_pool(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("engine-{i}"))
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no thread pool for the engine; using rayon's"))
        .ok()
        .map(Arc::new)
}
