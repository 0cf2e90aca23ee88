//! CUDA graphs for decode steps (issue 21, item 1). A decode step of the 8B shape is ~300
//! launches whose device work is a few milliseconds; issued one by one, the host's launch
//! rate bounds it. Here a step of `n` one-token chunks without adapters is padded up to its
//! batch-size bucket ([`graph_bucket`]: 1, 2, 4, 8, 16, 24, 32, 48, 64, ...), captured once
//! per bucket and replayed: the host then writes the step's inputs (token ids, positions,
//! cache rows, block tables and lengths) into the device buffers the graph was captured
//! with and launches it, one call. One graph serves every batch size of its bucket, so a
//! batch that shrinks as sequences finish keeps replaying the graphs it has.
//!
//! Padding rows are token 0 at position 0 of the cache's padding block
//! ([`KvCache::padding_block`], held by no sequence): each writes its key and value there
//! and attends to that one position; their logits and final-norm rows are dropped. Every
//! launch of a step computes each row from that row alone (GEMM rows, norms, the fused
//! layer steps, paged attention over the row's own table), so the real rows get the bits
//! an eager step of the real rows alone gets wherever cuBLAS computes a row the same at
//! both row counts (tested in `tests/gpu_engine.rs` at buckets 1 to 8).
//!
//! What makes the step replayable: every launch of [`TensorModel::forward_planned_deltas`] reads
//! its inputs from the plan's device buffers, never from the host, and the plan's launch
//! shapes depend on the batch size and a context bound alone (block tables padded to the
//! bound's width, [`DecodeBlocks::fixed_launch`]). The bound is the step's longest context
//! rounded up to a power of two of at least [`MIN_CONTEXT_BOUND`] positions (at most the
//! model's): a graph serves every step of its bucket whose contexts fit, and a step of
//! short contexts does not launch the attention's blocks and partition merge for the
//! model's longest (the partitions a sequence is cut into depend on its own length, so the
//! bound changes launches, not results). Graphs are kept per bound too. The step's temporaries are allocated and freed inside
//! the capture (candle allocates on its stream with `cuMemAllocAsync`, which a capture
//! records as graph memory nodes); the logits and the final norm's rows go into buffers
//! allocated before it. The graph reads the weights and the cache's pool at their captured
//! addresses: one graph set serves one cache (another cache's steps capture anew).
//!
//! Steps with adapters replay graphs too (issue 21): the SGMV launches of a captured step
//! read their segment metadata (rows and tile records) from fixed device buffers
//! (`openledger_kernels::GraphSegments`, one per adapted projection), rewritten before each
//! replay, and their grid is the most tiles the bucket's rows could make, the tiles beyond
//! the step's own empty; the adapters' weights are found through each table's pointer array,
//! whose address is fixed and which is brought up to date before each replay. So one graph
//! serves any mix of adapters in the slots: it is kept per bucket, set of adapted
//! projections (the launches differ with that set) and rank bound (ranks up to 64 let the
//! SGMV use every variant an eager launch may choose, up to 128 all but clusters of 4). The fused SGMV kernel computes each
//! token row the same whatever the tiles around it, so the rows match an eager step's.
//!
//! Steps that commit to adapter deltas (activation commitments of adapted rows, on by
//! default: every decode step of an adapted generation) replay graphs as well: at the
//! commitment's layer the graph runs each committed projection's input through SGMV once
//! more, into zeros, on segments of its own (fixed buffers like the step's, the committed
//! rows on their adapters and no other row), and computes every row's entries of that
//! output into a buffer; the asked rows' entries are gathered after the replay. Graphs are
//! kept per set of committed projections too.
//!
//! Prefill chunks, steps that return delta rows whole (a verifier's), adapters the fused
//! SGMV kernel does not take (f32, ranks over 128), and steps over the largest bucket stay
//! eager.
//!
//! [`DecodeBlocks::fixed_launch`]: openledger_kernels::DecodeBlocks::fixed_launch

use candle_core::cuda_backend::cudarc::driver::sys::{
    CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use candle_core::cuda_backend::cudarc::driver::CudaGraph;
use candle_core::{DType, Device, Tensor};
use openledger_kernels::{
    graph_rank_bound, graph_segments_supported, overwrite_u32, packed_top2, BatchSegments,
    GraphSegments,
};

use super::{graph_bucket, padded_tables, paged_decode, select_rows, StepPlan, TensorModel};
use crate::adapters::{DeltaGroup, DeltaPlan, LoraSlots, ADAPTER_DTYPE};
use crate::commitment;
use crate::error::{EngineError, Result};
use crate::kv_cache::{BlockTable, KvCache};
use crate::step::{SeqChunk, StepSegments};
use crate::step::{StepEntries, StepOutput};
use openledger_model::{ModelConfig, Projection};

/// Graphs kept at once (one per bucket and cache); the least recently used goes first.
const MAX_GRAPHS: usize = 16;

/// Bytes of the graphs' own output buffers (logits and final-norm rows) kept at once; the
/// least recently used graphs go first past it. For the 8B shape a bucket of 64 holds 33 MB
/// of f32 logits, so the buckets up to 64 hold ~100 MB together and this bound is met only
/// past 128.
const MAX_GRAPH_BYTES: usize = 512 << 20;

/// The smallest context bound of a graph: the paged attention's default partition, so that
/// every context within it attends in one partition with no merge launch.
const MIN_CONTEXT_BOUND: usize = 512;

/// The context bound of a graphed step whose longest context is `longest` positions (see
/// the module doc).
fn context_bound(cfg: &ModelConfig, longest: usize) -> usize {
    longest.next_power_of_two().max(MIN_CONTEXT_BOUND).min(cfg.max_position.max(longest))
}

/// The token a padding row feeds (any id in the vocabulary would do).
const PADDING_TOKEN: u32 = 0;

/// One captured step and the buffers it reads and writes.
struct DecodeGraph {
    /// Rows of the step (its bucket): real rows first, padding after.
    bucket: usize,
    /// The candle id of the pool tensor the graph was captured against (layer 0's keys).
    pool: Option<candle_core::TensorId>,
    /// The projections with an adapter in the step, one bit per [`Projection::index`].
    adapted: u8,
    /// The adapters' rank bound the SGMV launches were captured for (0 without adapters).
    rank_bound: usize,
    /// The context bound its attention was captured for ([`context_bound`]).
    context: usize,
    /// Each adapted projection's segment buffers, which its SGMV launches read.
    lora: Vec<(Projection, GraphSegments)>,
    /// The projections whose deltas the step commits to, one bit per [`Projection::index`].
    committed: u8,
    /// Each committed projection's delta: the segment buffers of its launch and the u32
    /// `[bucket, TOP_K]` entries of its output rows, written by every replay.
    deltas: Vec<(Projection, GraphSegments, Tensor)>,
    plan: StepPlan,
    /// f32 `[bucket, vocab]`, written by every replay.
    logits: Tensor,
    /// `[bucket, hidden]` in the model's dtype, written by every replay: every row of the
    /// step through the final norm (row `i` is chunk `i`'s one token), what a verifier's
    /// rows are gathered from.
    hidden: Tensor,
    /// u32 `[bucket, TOP_K]`, written by every replay: every row's activation-commitment
    /// entries, computed inside the graph (`None` for rows the kernel does not take, whose
    /// entries are then encoded on the host from `hidden`).
    entries: Option<Tensor>,
    graph: CudaGraph,
    last_used: u64,
}

impl DecodeGraph {
    fn bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        bytes(&self.logits)
            + bytes(&self.hidden)
            + self.entries.as_ref().map_or(0, bytes)
            + self.deltas.iter().map(|(_, _, e)| bytes(e)).sum::<usize>()
    }
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

    /// Drops the least recently used graphs until `incoming` more output bytes and one
    /// more graph fit the bounds.
    fn make_room(&mut self, incoming: usize) {
        while !self.graphs.is_empty()
            && (self.graphs.len() >= MAX_GRAPHS
                || self.graphs.iter().map(DecodeGraph::bytes).sum::<usize>() + incoming
                    > MAX_GRAPH_BYTES)
        {
            if let Some(oldest) =
                self.graphs.iter().enumerate().min_by_key(|(_, g)| g.last_used).map(|(i, _)| i)
            {
                self.graphs.swap_remove(oldest);
            }
        }
    }
}

// SAFETY: the graphs are only touched under the model's mutex, one thread at a time (CUDA
// graph objects need external synchronisation, not thread affinity); the buffers they
// hold are candle tensors, which are Send.
unsafe impl Send for DecodeGraphs {}

/// Whether this step can be replayed from a graph: a CUDA device, every chunk one token on
/// the paged decode kernel (a head size it takes and power-of-two cache blocks, as
/// [`StepPlan::new`] decides), adapters only where the fused SGMV kernel takes them (bf16,
/// ranks up to 128), and a batch within the largest bucket. [`forward`] may still decline
/// it (no padding block free). Other steps run eagerly.
pub(crate) fn applies(
    model: &TensorModel,
    cfg: &ModelConfig,
    chunks: &[SeqChunk<'_>],
    cache: &KvCache,
    segments: &StepSegments,
) -> bool {
    model.device().is_cuda()
        && graph_bucket(chunks.len()).is_some()
        && chunks.iter().all(|c| c.tokens.len() == 1)
        && paged_decode(cfg, cache.config().block_size)
        && segments
            .iter()
            .flatten()
            .all(|s| graph_segments_supported(ADAPTER_DTYPE, s.map().max_rank()))
}

/// The projections with segments, one bit per [`Projection::index`].
fn adapted_mask(segments: &StepSegments) -> u8 {
    projection_mask(
        Projection::ALL
            .into_iter()
            .filter(|p| segments.get(p.index()).is_some_and(Option::is_some)),
    )
}

/// One bit per [`Projection::index`] of `projections`.
fn projection_mask(projections: impl IntoIterator<Item = Projection>) -> u8 {
    projections.into_iter().fold(0, |m, p| m | 1 << p.index())
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
    /// With block tables padded to the width of `context` positions.
    fn new(chunks: &[SeqChunk<'_>], cache: &KvCache, context: usize) -> Self {
        let width = cache.blocks_for(context);
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

/// One decode step through its bucket's graph, captured on the bucket's first use: returns
/// the logits `[chunks, vocab]`, the final-norm rows at `hidden_rows` (`[hidden_rows,
/// hidden]`, the model's dtype), both copies (the graph's buffers are rewritten by the
/// next replay), and the commitment entries of the rows at `commit_rows`, their copy to the
/// host queued behind the replay. `None` when the step needs padding rows and the cache has
/// no block free for them: the caller runs it eagerly.
///
/// Activation commitments (on by default) ask every decode step for its rows' entries, so a
/// graph that gave the logits alone would send every such step down the eager path. The
/// captured step already computes every row through the final norm (a decode step's rows
/// are its chunks' last rows, all read by the LM head); the graph computes every row's
/// entries from there (`openledger_kernels::packed_top2`, 8 bytes a row) and copies them
/// into `entries`, and the rows into `hidden`, beside the logits. After the replay the
/// asked entries are copied to the host straight from `entries` when they are its first
/// rows in order (every committing decode step), else gathered first; nothing of the rows
/// themselves crosses unless a verifier asks for them.
pub(crate) fn forward(
    model: &TensorModel,
    cfg: &ModelConfig,
    chunks: &[SeqChunk<'_>],
    (hidden_rows, commit_rows): (&[u32], &[u32]),
    cache: &mut KvCache,
    lora: &LoraSlots,
    (segments, delta): (&StepSegments, &DeltaPlan),
    device_tokens: Option<&Tensor>,
) -> Result<Option<StepOutput>> {
    let n = chunks.len();
    // Committed deltas whose entries the graph cannot compute (a width the encoding does
    // not take) leave the step to the eager path, which encodes them on the host.
    if delta.groups.iter().any(|g| !entries_fit(cfg.proj_dims(g.proj).1)) {
        return Ok(None);
    }
    let Some(bucket) = graph_bucket(n) else { return Ok(None) };
    let padding = if bucket > n {
        match cache.padding_block() {
            Some(block) => BlockTable { blocks: vec![block], len: 0 },
            None => return Ok(None),
        }
    } else {
        BlockTable::default()
    };
    let cache = &*cache;
    let pad_token = [PADDING_TOKEN];
    let pad = SeqChunk { tokens: &pad_token, table: &padding, start: 0, adapter: None };
    let mut padded = chunks.to_vec();
    padded.resize(bucket, pad);
    let pool = model.check_pool(cfg, cache)?;
    let pool_id = pool.keys.first().map(Tensor::id);
    // The step's segments over the padded rows (padding rows have no adapter).
    let adapted = adapted_mask(segments);
    let padded_segments = if adapted == 0 {
        Vec::new()
    } else {
        let adapters: Vec<Option<u32>> = padded.iter().map(|c| c.adapter).collect();
        let segs = lora.segments(&adapters, &vec![1; bucket])?;
        if adapted_mask(&segs) != adapted {
            return Err(EngineError::Backend(
                "a decode step's adapted projections changed with its padding".into(),
            ));
        }
        segs
    };
    let projections: Vec<Projection> =
        Projection::ALL.into_iter().filter(|p| adapted & (1 << p.index()) != 0).collect();
    // Each committed projection's delta segments over the padded rows (the group's rows on
    // their slots, no other row), in the plan's group order.
    let committed = projection_mask(delta.groups.iter().map(|g| g.proj));
    let delta_segments = delta
        .groups
        .iter()
        .map(|g| {
            lora.delta_segments(g.proj, &g.rows, &g.slots, Some(bucket))?.ok_or_else(|| {
                EngineError::Backend(format!("a committed {:?} delta without segments", g.proj))
            })
        })
        .collect::<Result<Vec<BatchSegments>>>()?;
    let context = context_bound(cfg, padded.iter().map(|c| c.start + 1).max().unwrap_or(1));
    let ranks = padded_segments.iter().flatten().map(|s| s.map().max_rank()).max();
    let rank_bound = match ranks {
        Some(r) => graph_rank_bound(r).ok_or_else(|| {
            EngineError::Backend(format!("a graphed step with an adapter of rank {r}"))
        })?,
        None => 0,
    };
    let mut graphs = model.graphs().lock().unwrap_or_else(|e| e.into_inner());
    graphs.clock += 1;
    let now = graphs.clock;
    let found = graphs.graphs.iter_mut().find(|g| {
        (g.bucket, g.pool, g.adapted, g.committed, g.rank_bound, g.context)
            == (bucket, pool_id, adapted, committed, rank_bound, context)
    });
    if let Some(g) = found {
        let inputs = StepInputs::new(&padded, cache, context);
        let kc = cache.config();
        let rows = kc.num_blocks * kc.block_size;
        if let Some(&bad) = inputs.slots.iter().find(|&&s| s as usize >= rows) {
            return Err(EngineError::Backend(format!(
                "cache row {bad} is outside the pool's {rows} rows"
            )));
        }
        overwrite_u32(&g.plan.ids, &inputs.tokens)?;
        if let Some(t) = device_tokens {
            // The previous step's picks, copied on the device over the chunks' rows (the
            // padding rows keep theirs), ordered on the stream ahead of the replay.
            g.plan.ids.slice_set(&t.contiguous()?, 0, 0)?;
        }
        overwrite_u32(&g.plan.pos, &inputs.positions)?;
        g.plan.kv_slots.overwrite(inputs.slots)?;
        let dec = g.plan.decode.as_mut().ok_or_else(|| {
            EngineError::Backend("a decode graph's plan has no decode rows".into())
        })?;
        dec.blocks.overwrite(inputs.tables, inputs.lens, kc.num_blocks)?;
        for (p, buffers) in &g.lora {
            let seg = padded_segments[p.index()].as_ref().ok_or_else(|| {
                EngineError::Backend(format!("a graphed step lost its {p:?} segments"))
            })?;
            buffers.write(seg.map())?;
        }
        for (grp, seg) in delta.groups.iter().zip(&delta_segments) {
            let (_, buffers, _) =
                g.deltas.iter().find(|(p, ..)| *p == grp.proj).ok_or_else(|| {
                    EngineError::Backend(format!("a graphed step lost its {:?} delta", grp.proj))
                })?;
            buffers.write(seg.map())?;
        }
        lora.sync_device_tables(&projections)?;
        g.graph.launch().map_err(cuda_err)?;
        g.last_used = now;
        let entries = step_entries(model, &g.hidden, g.entries.as_ref(), n, commit_rows)?;
        let delta_entries = committed_entries(delta, &g.deltas)?;
        let hidden = gather_rows(model, cfg, &g.hidden, n, hidden_rows)?;
        let logits = g.logits.narrow(0, 0, n)?.copy()?;
        return Ok(Some(StepOutput { logits, hidden, entries, delta: Vec::new(), delta_entries }));
    }
    // A step whose tokens are still on the device runs only from a captured graph.
    if device_tokens.is_some() {
        return Ok(None);
    }
    // First step of this bucket: plan it with fixed launch shapes, run it eagerly (its
    // result is this step's; it also loads every module, uploads the plan's tables and
    // reserves the attention's scratch, none of which a capture may do), then capture it.
    let tokens: Vec<u32> = padded.iter().map(|c| c.tokens[0]).collect();
    let positions: Vec<usize> = padded.iter().map(|c| c.start).collect();
    let last_rows: Vec<u32> = (0..bucket as u32).collect();
    let plan =
        StepPlan::new(model, cfg, &padded, &tokens, &positions, &last_rows, cache, Some(context))?;
    // Each adapted projection's segments through buffers at fixed addresses.
    let mut lora_buffers = Vec::with_capacity(projections.len());
    let mut segments: StepSegments = (0..Projection::ALL.len()).map(|_| None).collect();
    for &p in &projections {
        let seg = padded_segments[p.index()].as_ref().ok_or_else(|| {
            EngineError::Backend(format!("a graphed step lost its {p:?} segments"))
        })?;
        let gs = GraphSegments::new(model.device(), bucket, rank_bound)?;
        segments[p.index()] = Some(gs.bind(seg.map().clone())?);
        lora_buffers.push((p, gs));
    }
    let segments = &segments;
    // Each committed projection's delta launch through buffers of its own, and the buffer
    // its rows' entries go into.
    let mut delta_buffers = Vec::with_capacity(delta.groups.len());
    let mut bound_groups = Vec::with_capacity(delta.groups.len());
    for (g, seg) in delta.groups.iter().zip(&delta_segments) {
        let gs = GraphSegments::new(model.device(), bucket, rank_bound)?;
        bound_groups.push(DeltaGroup {
            proj: g.proj,
            rows: Vec::new(),
            slots: Vec::new(),
            at: Vec::new(),
            segments: Some(gs.bind(seg.map().clone())?),
        });
        let words = Tensor::zeros((bucket, commitment::TOP_K), DType::U32, model.device())?;
        delta_buffers.push((g.proj, gs, words));
    }
    let bound_delta = DeltaPlan { layer: delta.layer, asked: delta.asked, groups: bound_groups };
    let (eager, eager_hidden, eager_deltas) =
        model.forward_planned_deltas(cfg, &plan, pool, lora, segments, &bound_delta)?;
    let logits = Tensor::zeros((bucket, cfg.vocab_size), DType::F32, model.device())?;
    let hidden = Tensor::zeros((bucket, cfg.hidden_size), eager_hidden.dtype(), model.device())?;
    // The copies into the graph's buffers, once outside the capture: they load candle's copy
    // kernels (one per dtype) and the entries' module, which a capture must not do.
    logits.slice_set(&eager, 0, 0)?;
    hidden.slice_set(&eager_hidden, 0, 0)?;
    let entries = if entries_on_device(cfg) {
        let words = packed_top2(&eager_hidden, commitment::DIM_BITS)?;
        let buffer = Tensor::zeros((bucket, commitment::TOP_K), DType::U32, model.device())?;
        buffer.slice_set(&words, 0, 0)?;
        Some(buffer)
    } else {
        None
    };
    for ((_, _, words), d) in delta_buffers.iter().zip(&eager_deltas) {
        words.slice_set(&packed_top2(d, commitment::DIM_BITS)?, 0, 0)?;
    }
    let step = step_entries(model, &eager_hidden, entries.as_ref(), n, commit_rows)?;
    let delta_entries = committed_entries(delta, &delta_buffers)?;
    let rows = gather_rows(model, cfg, &eager_hidden, n, hidden_rows)?;
    let deltas: Vec<&Tensor> = delta_buffers.iter().map(|(_, _, words)| words).collect();
    let buffers = GraphOutputs {
        logits: &logits,
        hidden: &hidden,
        entries: entries.as_ref(),
        deltas: &deltas,
    };
    let graph = capture(model, cfg, &plan, cache, lora, (segments, &bound_delta), &buffers)?;
    let captured = DecodeGraph {
        bucket,
        pool: pool_id,
        adapted,
        rank_bound,
        context,
        lora: lora_buffers,
        committed,
        deltas: delta_buffers,
        plan,
        logits,
        hidden,
        entries,
        graph,
        last_used: now,
    };
    graphs.make_room(captured.bytes());
    graphs.graphs.push(captured);
    Ok(Some(StepOutput {
        logits: eager.narrow(0, 0, n)?,
        hidden: rows,
        entries: step,
        delta: Vec::new(),
        delta_entries,
    }))
}

/// Whether a graph computes its rows' commitment entries on the device (rows of a width the
/// kernel and the encoding take).
fn entries_on_device(cfg: &ModelConfig) -> bool {
    entries_fit(cfg.hidden_size)
}

/// Whether `packed_top2` and the encoding take rows `width` wide.
fn entries_fit(width: usize) -> bool {
    (commitment::TOP_K..=commitment::MAX_DIMS).contains(&width)
}

/// The committed delta entries of `delta`'s rows, in the order asked: each group's rows
/// gathered from its projection's entries buffer (every step row's, written by the step),
/// their copy to the host queued behind.
fn committed_entries(
    delta: &DeltaPlan,
    buffers: &[(Projection, GraphSegments, Tensor)],
) -> Result<StepEntries> {
    if delta.is_empty() {
        return Ok(StepEntries::none());
    }
    let mut parts = Vec::with_capacity(delta.groups.len());
    for g in &delta.groups {
        let (_, _, words) = buffers.iter().find(|(p, ..)| *p == g.proj).ok_or_else(|| {
            EngineError::Backend(format!("no entries buffer for the {:?} delta", g.proj))
        })?;
        parts.push((StepEntries::copying(&select_rows(words, &g.rows)?)?, g.at.clone()));
    }
    Ok(StepEntries::parts(parts))
}

/// The commitment entries of the step's rows at `commit_rows` (each below `n`): from the
/// graph's `entries` when it has them (their copy to the host starts now, straight from
/// the buffer when they are its first rows in order), else encoded from the rows.
fn step_entries(
    model: &TensorModel,
    hidden: &Tensor,
    entries: Option<&Tensor>,
    n: usize,
    commit_rows: &[u32],
) -> Result<StepEntries> {
    if commit_rows.is_empty() {
        return Ok(StepEntries::none());
    }
    if let Some(&r) = commit_rows.iter().find(|&&r| r as usize >= n) {
        return Err(EngineError::Backend(format!(
            "committed row {r} asked of a decode step of {n} rows"
        )));
    }
    match entries {
        Some(e) => StepEntries::copying(&select_rows(e, commit_rows)?),
        None => model.commit_entries(&select_rows(hidden, commit_rows)?.contiguous()?),
    }
}

/// The final-norm rows at `hidden_rows` (each below `n`, the step's real rows) of a step's
/// `[bucket, hidden]` rows, as a new tensor (`[0, hidden]` when none is asked).
fn gather_rows(
    model: &TensorModel,
    cfg: &ModelConfig,
    hidden: &Tensor,
    n: usize,
    hidden_rows: &[u32],
) -> Result<Tensor> {
    if hidden_rows.is_empty() {
        return model.no_rows(cfg);
    }
    if let Some(&r) = hidden_rows.iter().find(|&&r| r as usize >= n) {
        return Err(EngineError::Backend(format!(
            "hidden row {r} asked of a decode step of {n} rows"
        )));
    }
    if hidden_rows.iter().copied().eq(0..n as u32) {
        return Ok(hidden.narrow(0, 0, n)?.copy()?);
    }
    let rows = Tensor::from_slice(hidden_rows, hidden_rows.len(), model.device())?;
    Ok(hidden.index_select(&rows, 0)?)
}

/// The buffers a captured step writes: the logits, the final-norm rows, (when the rows'
/// width allows) their commitment entries, and the committed deltas' entries, one buffer
/// per group of the captured [`DeltaPlan`], in its order.
struct GraphOutputs<'a> {
    logits: &'a Tensor,
    hidden: &'a Tensor,
    entries: Option<&'a Tensor>,
    deltas: &'a [&'a Tensor],
}

/// Captures the planned step on candle's stream; the logits, the final-norm rows and their
/// commitment entries are copied into `out`'s buffers, and
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
    (segments, delta): (&StepSegments, &DeltaPlan),
    out: &GraphOutputs<'_>,
) -> Result<CudaGraph> {
    let Device::Cuda(dev) = model.device() else {
        return Err(EngineError::Backend("decode graphs need a CUDA device".into()));
    };
    let pool = model.check_pool(cfg, cache)?;
    let stream = dev.cuda_stream();
    let _cache = dev.enable_cuda_graph_htod_cache();
    drop(model.forward_planned_deltas(cfg, plan, pool, lora, segments, delta)?);
    stream.synchronize().map_err(cuda_err)?;
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(cuda_err)?;
    let recorded = (|| -> Result<()> {
        let (logits, rows, deltas) =
            model.forward_planned_deltas(cfg, plan, pool, lora, segments, delta)?;
        out.logits.slice_set(&logits, 0, 0)?;
        out.hidden.slice_set(&rows, 0, 0)?;
        if let Some(entries) = out.entries {
            entries.slice_set(&packed_top2(&rows, commitment::DIM_BITS)?, 0, 0)?;
        }
        for (words, d) in out.deltas.iter().zip(&deltas) {
            words.slice_set(&packed_top2(d, commitment::DIM_BITS)?, 0, 0)?;
        }
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
