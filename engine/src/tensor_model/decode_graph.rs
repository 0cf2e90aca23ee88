//! CUDA graphs for decode steps (issue 21, item 1). A decode step of the 8B shape is ~300
//! launches whose device work is a few milliseconds; issued one by one, the host's launch
//! rate bounds it. Here a step of `n` one-token chunks without adapters is captured once per
//! batch size `n` and replayed: the host then writes the step's inputs (token ids,
//! positions, cache rows, block tables and lengths) into the device buffers the graph was
//! captured with and launches it, one call.
//!
//! What makes the step replayable: every launch of [`TensorModel::forward_planned_rows`] reads
//! its inputs from the plan's device buffers, never from the host, and the plan's launch
//! shapes depend on the batch size alone (block tables padded to the widest context,
//! [`DecodeBlocks::fixed_launch`]). The step's temporaries are allocated and freed inside
//! the capture (candle allocates on its stream with `cuMemAllocAsync`, which a capture
//! records as graph memory nodes); the logits and the final norm's rows go into buffers
//! allocated before it. The
//! graph reads the weights and the cache's pool at their captured addresses: one graph set
//! serves one cache (another cache's steps capture anew).
//!
//! Replays launch exactly what the eager path launches for the same step, so the logits
//! (and the final-norm rows) are the same bits (tested in `tests/gpu_engine.rs`). Steps with adapters or prefill
//! chunks stay eager.

use candle_core::cuda_backend::cudarc::driver::sys::{
    CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use candle_core::cuda_backend::cudarc::driver::CudaGraph;
use candle_core::{DType, Device, Tensor};
use openledger_kernels::overwrite_u32;

use super::{padded_tables, paged_decode, StepPlan, TensorModel};
use crate::adapters::LoraSlots;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::step::{SeqChunk, StepSegments};
use openledger_model::ModelConfig;

/// Graphs kept at once (one per batch size); the least recently used goes first.
const MAX_GRAPHS: usize = 8;

/// One captured step and the buffers it reads and writes.
struct DecodeGraph {
    batch: usize,
    /// The candle id of the pool tensor the graph was captured against (layer 0's keys).
    pool: Option<candle_core::TensorId>,
    plan: StepPlan,
    /// f32 `[batch, vocab]`, written by every replay.
    logits: Tensor,
    /// `[batch, hidden]` in the model's dtype, written by every replay: every row of the step
    /// through the final norm (row `i` is chunk `i`'s one token), what activation
    /// commitments read.
    hidden: Tensor,
    graph: CudaGraph,
    last_used: u64,
}

/// A model's captured decode steps.
#[derive(Default)]
pub(crate) struct DecodeGraphs {
    graphs: Vec<DecodeGraph>,
    clock: u64,
}

impl DecodeGraphs {
    /// Graphs held.
    pub(crate) fn len(&self) -> usize {
        self.graphs.len()
    }
}

// SAFETY: the graphs are only touched under the model's mutex, one thread at a time (CUDA
// graph objects need external synchronisation, not thread affinity); the buffers they
// hold are candle tensors, which are Send.
unsafe impl Send for DecodeGraphs {}

/// Whether this step is replayed from a graph: a CUDA device, every chunk one token on the
/// paged decode kernel (a head size it takes and power-of-two cache blocks, as
/// [`StepPlan::new`] decides), and no adapter on any projection. Other steps run eagerly.
pub(crate) fn applies(
    model: &TensorModel,
    cfg: &ModelConfig,
    chunks: &[SeqChunk<'_>],
    cache: &KvCache,
    segments: &StepSegments,
) -> bool {
    model.device().is_cuda()
        && !chunks.is_empty()
        && chunks.iter().all(|c| c.tokens.len() == 1)
        && paged_decode(cfg, cache.config().block_size)
        && segments.iter().all(Option::is_none)
}

/// The host inputs of a decode step, in the layouts the plan's buffers hold.
struct StepInputs {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<u32>,
    tables: Vec<u32>,
    lens: Vec<u32>,
}

impl StepInputs {
    fn new(cfg: &ModelConfig, chunks: &[SeqChunk<'_>], cache: &KvCache) -> Self {
        let width = cache.blocks_for(cfg.max_position);
        let ends: Vec<usize> = chunks.iter().map(|c| c.start + 1).collect();
        let tables: Vec<&[u32]> = chunks
            .iter()
            .zip(&ends)
            .map(|(c, &e)| &c.table.blocks[..cache.blocks_for(e)])
            .collect();
        Self {
            tokens: chunks.iter().map(|c| c.tokens[0]).collect(),
            positions: chunks.iter().map(|c| c.start as u32).collect(),
            slots: chunks.iter().flat_map(|c| cache.slots(c.table, c.start, 1)).collect(),
            tables: padded_tables(&tables, width),
            lens: ends.iter().map(|&e| e as u32).collect(),
        }
    }
}

/// One decode step through its batch size's graph, captured on first use: returns the
/// logits `[chunks, vocab]` and the final-norm rows at `hidden_rows` (`[hidden_rows,
/// hidden]`, the model's dtype), both copies: the graph's buffers are rewritten by the next
/// replay.
///
/// Activation commitments (on by default) ask every decode step for its rows, so a graph
/// that gave the logits alone would send every such step down the eager path. The captured
/// step already computes every row through the final norm (a decode step's rows are its
/// chunks' last rows, all read by the LM head); the graph copies them into `hidden` beside
/// the logits, and the asked rows are gathered from there after the replay (one
/// `index_select`, or one copy when every row is asked), outside the graph.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    model: &TensorModel,
    cfg: &ModelConfig,
    chunks: &[SeqChunk<'_>],
    tokens: &[u32],
    positions: &[usize],
    hidden_rows: &[u32],
    cache: &KvCache,
    lora: &LoraSlots,
    segments: &StepSegments,
) -> Result<(Tensor, Tensor)> {
    let pool = model.check_pool(cfg, cache)?;
    let pool_id = pool.keys.first().map(Tensor::id);
    let n = chunks.len();
    let mut graphs = model.graphs().lock().unwrap_or_else(|e| e.into_inner());
    graphs.clock += 1;
    let now = graphs.clock;
    if let Some(g) = graphs.graphs.iter_mut().find(|g| g.batch == n && g.pool == pool_id) {
        let inputs = StepInputs::new(cfg, chunks, cache);
        let kc = cache.config();
        let rows = kc.num_blocks * kc.block_size;
        if let Some(&bad) = inputs.slots.iter().find(|&&s| s as usize >= rows) {
            return Err(EngineError::Backend(format!(
                "cache row {bad} is outside the pool's {rows} rows"
            )));
        }
        overwrite_u32(&g.plan.ids, &inputs.tokens)?;
        overwrite_u32(&g.plan.pos, &inputs.positions)?;
        g.plan.kv_slots.overwrite(inputs.slots)?;
        let dec = g.plan.decode.as_mut().ok_or_else(|| {
            EngineError::Backend("a decode graph's plan has no decode rows".into())
        })?;
        dec.blocks.overwrite(inputs.tables, inputs.lens, kc.num_blocks)?;
        g.graph.launch().map_err(cuda_err)?;
        g.last_used = now;
        let rows = gather_rows(model, cfg, &g.hidden, hidden_rows)?;
        return Ok((g.logits.copy()?, rows));
    }
    // First step of this batch size: plan it with fixed launch shapes, run it eagerly (its
    // result is this step's; it also loads every module, uploads the plan's tables and
    // reserves the attention's scratch, none of which a capture may do), then capture it.
    let last_rows: Vec<u32> = (0..n as u32).collect();
    let plan = StepPlan::new(model, cfg, chunks, tokens, positions, &last_rows, cache, true)?;
    let (eager, eager_hidden) = model.forward_planned_rows(cfg, &plan, pool, lora, segments)?;
    let logits = Tensor::zeros((n, cfg.vocab_size), DType::F32, model.device())?;
    let hidden = Tensor::zeros((n, cfg.hidden_size), eager_hidden.dtype(), model.device())?;
    // The copies into the graph's buffers, once outside the capture: they load candle's copy
    // kernels (one per dtype), which a capture must not do.
    logits.slice_set(&eager, 0, 0)?;
    hidden.slice_set(&eager_hidden, 0, 0)?;
    let rows = gather_rows(model, cfg, &eager_hidden, hidden_rows)?;
    let graph = capture(model, cfg, &plan, cache, lora, segments, &logits, &hidden)?;
    if graphs.graphs.len() >= MAX_GRAPHS {
        if let Some(oldest) =
            graphs.graphs.iter().enumerate().min_by_key(|(_, g)| g.last_used).map(|(i, _)| i)
        {
            graphs.graphs.swap_remove(oldest);
        }
    }
    graphs.graphs.push(DecodeGraph {
        batch: n,
        pool: pool_id,
        plan,
        logits,
        hidden,
        graph,
        last_used: now,
    });
    Ok((eager, rows))
}

/// The final-norm rows at `hidden_rows` of a step's `[batch, hidden]` rows, as a new tensor
/// (`[0, hidden]` when none is asked).
fn gather_rows(
    model: &TensorModel,
    cfg: &ModelConfig,
    hidden: &Tensor,
    hidden_rows: &[u32],
) -> Result<Tensor> {
    let n = hidden.dim(0)?;
    if hidden_rows.is_empty() {
        return model.no_rows(cfg);
    }
    if hidden_rows.iter().copied().eq(0..n as u32) {
        return Ok(hidden.copy()?);
    }
    if let Some(&r) = hidden_rows.iter().find(|&&r| r as usize >= n) {
        return Err(EngineError::Backend(format!(
            "hidden row {r} asked of a decode step of {n} rows"
        )));
    }
    let rows = Tensor::from_slice(hidden_rows, hidden_rows.len(), model.device())?;
    Ok(hidden.index_select(&rows, 0)?)
}

/// Captures the planned step on candle's stream; the logits are copied into `logits` and the
/// final-norm rows into `hidden`, and
/// every temporary is freed before the capture ends (the graph owns no memory it does not
/// free, so it can be replayed any number of times).
///
/// Candle uploads some kernels' shape parameters from the host on every call (`index_select`
/// always does: the ids' dims and strides). Captured, such a copy would read a host buffer
/// freed right after, on every replay. Under candle's graph cache
/// (`CudaDevice::enable_cuda_graph_htod_cache`) those parameters come from device buffers
/// that candle keeps for the process, filled by an eager run of the same step before the
/// capture (a step's parameters depend on its shapes alone); a host copy the cache lacks
/// fails the capture rather than being recorded. The eager run rewrites the same keys and
/// values into the same cache rows, so the cache's contents do not change.
#[allow(clippy::too_many_arguments)]
fn capture(
    model: &TensorModel,
    cfg: &ModelConfig,
    plan: &StepPlan,
    cache: &KvCache,
    lora: &LoraSlots,
    segments: &StepSegments,
    logits: &Tensor,
    hidden: &Tensor,
) -> Result<CudaGraph> {
    let Device::Cuda(dev) = model.device() else {
        return Err(EngineError::Backend("decode graphs need a CUDA device".into()));
    };
    let pool = model.check_pool(cfg, cache)?;
    let stream = dev.cuda_stream();
    let _cache = dev.enable_cuda_graph_htod_cache();
    drop(model.forward_planned_rows(cfg, plan, pool, lora, segments)?);
    stream.synchronize().map_err(cuda_err)?;
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(cuda_err)?;
    let recorded = (|| -> Result<()> {
        let (out, rows) = model.forward_planned_rows(cfg, plan, pool, lora, segments)?;
        logits.slice_set(&out, 0, 0)?;
        hidden.slice_set(&rows, 0, 0)?;
        Ok(())
    })();
    // End the capture whatever happened, so that the stream leaves capture mode. Our own
    // temporaries are freed inside the capture; auto-free on launch is for an allocation a
    // library might make while capturing and leave to the graph (cuBLAS since 12.2 takes
    // its workspace with stream-ordered allocations), which without it would make every
    // replay after the first fail. A defence: whether cuBLAS does so is unchecked.
    let graph = stream
        .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
    recorded?;
    let graph = graph
        .map_err(cuda_err)?
        .ok_or_else(|| EngineError::Backend("the captured decode step is empty".into()))?;
    graph.upload().map_err(cuda_err)?;
    Ok(graph)
}

fn cuda_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Backend(format!("CUDA graph: {e}"))
}
