//! Host side of the fused SGMV kernel (`cuda/sgmv_fused.cu`): loading its kernels, the tile records of a step,
//! the choice of variant per launch (a cost model), and the launch. See kernels/NOTES.md.

use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::sys::{self, CUfunction_attribute};
use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;

use super::cuda_err;
use crate::error::Result;
use crate::options::SgmvSplit;
use crate::SegmentMap;

static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sgmv_fused.fatbin"));

/// Blocks per tile of a cluster variant (`CLUSTER` in sgmv_fused.cu), threads per block.
const CLUSTER: u32 = 8;
const THREADS: u32 = 256;
/// The largest rank the fused kernel takes (the two-stage kernels serve larger ones).
pub(super) const MAX_RANK: usize = 128;
/// Clusters of 4 take ranks up to 64 only (a block's reduction buffer holds its two
/// leaves' partials, two groups of 32 ranks each).
const PAIR_MAX_RANK: usize = 64;
/// Dynamic shared memory of the kernels (`Layout<1>::BYTES` in sgmv_fused.cu: the load ring, the
/// block's partial v, the rounded v).
const SMEM: u32 = 4 * 6 * 256 * 16 + 4 * 4 * 512 + 16 * 160 * 2;
/// Tokens per tile (16 rows of the tensor cores' m16n8k16). 64-token tiles (clusters of 8
/// blocks of one per SM) were slower than one of these on every benchmark shape (H200,
/// kernels/NOTES.md) and are no longer built.
const TILE_TOKENS: usize = 16;
/// Warps per block (`WARPS`): the "cols" expand gives each at least one 32-column group.
const WARPS: usize = 8;

/// The kernels of sgmv_fused.cu. All three give the same bits for a token row (the same runs of
/// d_in, summed in the same order, combined in the same tree), so the choice per launch is
/// free to follow the batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Variant {
    /// Each tile a cluster of 8 blocks, one leaf each (few tiles).
    Cluster = 0,
    /// Each tile a cluster of 4 blocks of two leaves (more tiles than clusters of 8 fit at
    /// once; ranks up to 64).
    Pair = 1,
    /// Each tile one block of all eight leaves (many more tiles).
    Solo = 2,
}

const VARIANTS: [Variant; 3] = [Variant::Cluster, Variant::Pair, Variant::Solo];

impl Variant {
    fn suffix(self) -> &'static str {
        match self {
            Variant::Cluster => "cluster",
            Variant::Pair => "pair",
            Variant::Solo => "solo",
        }
    }
    fn blocks_per_tile(self) -> u32 {
        match self {
            Variant::Cluster => CLUSTER,
            Variant::Pair => CLUSTER / 2,
            Variant::Solo => 1,
        }
    }
    /// The largest rank it takes.
    fn max_rank(self) -> usize {
        match self {
            Variant::Pair => PAIR_MAX_RANK,
            _ => MAX_RANK,
        }
    }
    /// Relative cost of its blocks against a cluster's in the cost model (`estimate_us`).
    fn cost_factor(self) -> f64 {
        match self {
            Variant::Cluster => 1.0,
            Variant::Pair => 0.9,
            Variant::Solo => 1.5,
        }
    }
    fn parse(name: &str) -> Option<Variant> {
        VARIANTS.into_iter().find(|v| v.suffix() == name)
    }
}

/// The cost model that picks a variant per launch (`estimate_us`): a round of tiles costs
/// a fixed part, plus the longer of one block's share of its largest tile at the rate one
/// block streams (a chain of latencies, not bandwidth) and the round's bytes at DRAM rate.
/// Fitted, with `Variant::cost_factor`, to H200 runs of each variant forced on every
/// benchmark shape: the choice costs 1% on average and at most 28% against the fastest
/// variant of each shape (`kernels/bench/fit_variant_model.py`, kernels/NOTES.md).
const FIXED_US: f64 = 5.0;
const BLOCK_BYTES_PER_US: f64 = 12e3;
const DRAM_BYTES_PER_US: f64 = 3.5e6;
/// The split decision's own terms, fitted to an H100 run of both launches forced on every
/// benchmark shape (`kernels/bench/fit_split_model.py`; kernels/NOTES.md, "The split launch
/// for few tiles"): what the second kernel adds beyond its own round (negative: launched
/// behind the shrink with programmatic dependent launch, it streams lora_B while the shrink
/// runs), and the latency of each 32-column group a warp expands in turn, which the byte
/// terms miss where a tile's lora_B rows are short (few tiles of low rank and wide outputs:
/// one cluster's 64 warps walk 448 groups of a 14,336-wide output in 7 turns).
const SPLIT_LAUNCH_US: f64 = -1.0;
const GROUP_TURN_US: f64 = 0.25;

/// Kernel parameters, laid out as `Params` in sgmv_fused.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Params {
    x: u64,
    y: u64,
    v: u64,
    table: u64,
    rows: u64,
    tiles: u64,
    d_in: i32,
    d_out: i32,
    width: i32,
    /// 0: lora_delta, 1: shrink alone, 2: expand alone.
    mode: i32,
    /// 1: x rows 16-byte loadable, 2: lora_A rows, 4: lora_B starts, 8: y rows.
    flags: i32,
    /// Row stride of y.
    ldy: i32,
    /// The "cols" kernels (expand alone): blocks per tile, each a run of columns.
    col_blocks: i32,
}

/// The fused kernels of one CUDA context.
pub(super) struct Kernels {
    /// By [dtype: bf16, f16][`Variant`].
    functions: [[CudaFunction; 3]; 2],
    /// The stacked launches (`MultiParams`: up to [`MAX_PARTS`] projections), likewise.
    multi: [[CudaFunction; 3]; 2],
    /// The expand alone with a tile's columns spread over blocks ("cols"), by dtype.
    cols: [CudaFunction; 2],
    /// Tiles of each variant that the device runs at once.
    capacity: [usize; 3],
    /// `OPENLEDGER_SGMV_VARIANT=cluster|pair|solo` forces a variant where it applies (tests).
    forced: Option<Variant>,
    /// `OPENLEDGER_SGMV_SPLIT`: the split launch (shrink, then the "cols" expand) never
    /// (the default), always, or where the cost model estimates it faster.
    split: SgmvSplit,
    debug: bool,
}

pub(super) fn load(ctx: &Arc<CudaContext>, stream: &CudaStream) -> Result<Kernels> {
    let module = ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).map_err(cuda_err)?;
    let load = |name: &str| -> Result<CudaFunction> {
        let func = module.load_function(name).map_err(cuda_err)?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM as i32,
        )
        .map_err(cuda_err)?;
        Ok(func)
    };
    // `tail`: "" for the single launches, "_multi" for the stacked ones.
    let f =
        |ty: &str, v: Variant, tail: &str| load(&format!("sgmv_fused_{ty}_{}{tail}", v.suffix()));
    let all = |ty: &str, tail: &str| -> Result<[CudaFunction; 3]> {
        Ok([f(ty, VARIANTS[0], tail)?, f(ty, VARIANTS[1], tail)?, f(ty, VARIANTS[2], tail)?])
    };
    let functions = [all("bf16", "")?, all("f16", "")?];
    let cols = [load("sgmv_fused_bf16_cols")?, load("sgmv_fused_f16_cols")?];
    let multi = [all("bf16", "_multi")?, all("f16", "_multi")?];
    let mut capacity = [1; 3];
    for v in VARIANTS {
        capacity[v as usize] = max_active_clusters(&functions[0][v as usize], v, stream)?.max(1);
    }
    let debug = crate::options::options().sgmv_debug;
    if debug {
        eprintln!("sgmv fused: tiles at once: {capacity:?} (cluster, pair, solo)");
    }
    let forced = crate::options::options().sgmv_variant.as_deref().and_then(Variant::parse);
    let split = crate::options::options().sgmv_split;
    Ok(Kernels { functions, multi, cols, capacity, forced, split, debug })
}

/// How many tiles of variant `v` (clusters, or single blocks) the device holds at once.
fn max_active_clusters(f: &CudaFunction, v: Variant, stream: &CudaStream) -> Result<usize> {
    let mut n: std::ffi::c_int = 0;
    if v.blocks_per_tile() == 1 {
        // SAFETY: plain out-parameter call on a loaded function.
        unsafe {
            sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                &mut n,
                f.cu_function(),
                THREADS as i32,
                SMEM as usize,
            )
        }
        .result()
        .map_err(cuda_err)?;
        let sms = stream
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err)?;
        return Ok(n.max(0) as usize * sms.max(0) as usize);
    }
    let mut attr = cluster_attribute(v.blocks_per_tile());
    let cfg = launch_config(v.blocks_per_tile(), stream, &mut attr);
    // SAFETY: `cfg` and the attribute it points to live across the call.
    unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &cfg) }
        .result()
        .map_err(cuda_err)?;
    Ok(n.max(0) as usize)
}

fn cluster_attribute(blocks: u32) -> sys::CUlaunchAttribute {
    // SAFETY: a plain C struct, for which all zeros is a valid value.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim =
        sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x: blocks, y: 1, z: 1 };
    attr
}

fn launch_config(
    blocks: u32,
    stream: &CudaStream,
    attr: &mut sys::CUlaunchAttribute,
) -> sys::CUlaunchConfig {
    sys::CUlaunchConfig {
        gridDimX: blocks,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: THREADS,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: SMEM,
        hStream: stream.cu_stream(),
        attrs: attr,
        numAttrs: 1,
    }
}

/// A step's tiles: their records (sgmv_fused.cu's `Params::tiles`, 8 words a tile) and the
/// variant chosen for each projection shape seen so far.
pub(super) struct Tiles {
    pub(super) records: Vec<u32>,
    /// Tiles with tokens: the first `real` records (the rest are empty tiles of a graph's
    /// fixed grid, which the cost model leaves out).
    real: usize,
    max_rank: usize,
    chosen: Mutex<Vec<((usize, usize), Variant)>>,
    /// The split decision per projection shape (`Tiles::split`), likewise cached.
    split_chosen: Mutex<Vec<SplitChoice>>,
}

/// A projection shape (d_in, d_out) and its split decision (`Tiles::split`).
type SplitChoice = ((usize, usize), Option<u32>);

impl Tiles {
    pub(super) fn new(map: &SegmentMap) -> Tiles {
        let records = records(map);
        let real = records.len() / 8;
        Tiles {
            records,
            real,
            max_rank: map.max_rank(),
            chosen: Mutex::new(Vec::new()),
            split_chosen: Mutex::new(Vec::new()),
        }
    }

    /// The map's tiles followed by empty ones (all zeros: no tokens) up to `tiles` in all,
    /// for a launch captured in a CUDA graph, whose grid must serve any later map of as many
    /// rows and ranks up to `max_rank` ([`rank_bound`]): the variant is chosen among those
    /// that take `max_rank`, since a later map may bring larger ranks than this one.
    pub(super) fn padded(map: &SegmentMap, tiles: usize, max_rank: usize) -> Result<Tiles> {
        if map.max_rank() > max_rank || max_rank > MAX_RANK {
            return Err(crate::KernelError::Cuda(format!(
                "graph segments for ranks up to {max_rank} (at most {MAX_RANK}) given rank {}",
                map.max_rank()
            )));
        }
        let mut t = Tiles::new(map);
        if t.real > tiles {
            return Err(crate::KernelError::Cuda(format!(
                "{} SGMV tiles for a graph's {tiles}",
                t.real
            )));
        }
        t.records.resize(8 * tiles, 0);
        t.max_rank = max_rank;
        Ok(t)
    }

    /// The variant for a launch of shape `d_in x d_out`: the forced one where it applies,
    /// else the one of least estimated time (cached per shape: every layer asks again).
    pub(super) fn variant(&self, k: &Kernels, d_in: usize, d_out: usize) -> Variant {
        let usable = |v: Variant| self.max_rank <= v.max_rank();
        if let Some(v) = k.forced.filter(|&v| usable(v)) {
            return v;
        }
        let mut chosen = self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(_, v)) = chosen.iter().find(|(shape, _)| *shape == (d_in, d_out)) {
            return v;
        }
        let costs: Vec<(Variant, f64)> = VARIANTS
            .into_iter()
            .filter(|&v| usable(v))
            .map(|v| {
                let real = &self.records[..8 * self.real];
                (v, estimate_us(real, v, k.capacity[v as usize], d_in, d_out))
            })
            .collect();
        // The cheapest, the first of equals (cluster, which takes every rank, comes first).
        let mut best = (Variant::Cluster, f64::INFINITY);
        for &(v, c) in &costs {
            if c < best.1 {
                best = (v, c);
            }
        }
        let best = best.0;
        if k.debug {
            let list: Vec<String> =
                costs.iter().map(|(v, c)| format!("{} {c:.1} us", v.suffix())).collect();
            eprintln!("sgmv fused: {d_in}x{d_out}: {} ({})", best.suffix(), list.join(", "));
        }
        chosen.push(((d_in, d_out), best));
        best
    }

    /// Whether a `d_in x d_out` lora_delta over these tiles runs split (the shrink alone,
    /// then the "cols" expand over `Some(blocks per tile)`) rather than fused, as
    /// `OPENLEDGER_SGMV_SPLIT` says: never, always, or (`auto`) where the estimate of the
    /// shrink plus the "cols" expand (`estimate_cols_us`) is below the fused launch's. Bits
    /// are the same.
    pub(super) fn split(&self, k: &Kernels, d_in: usize, d_out: usize) -> Option<u32> {
        let blocks = cols_blocks(k, self.real.max(1), d_out);
        match k.split {
            SgmvSplit::Never => return None,
            SgmvSplit::Always => return Some(blocks),
            SgmvSplit::ByCost if self.real == 0 => return None,
            SgmvSplit::ByCost => {},
        }
        let cached = |c: &Vec<SplitChoice>| {
            c.iter().find(|(shape, _)| *shape == (d_in, d_out)).map(|&(_, b)| b)
        };
        if let Some(b) = cached(&self.split_chosen.lock().unwrap_or_else(|e| e.into_inner())) {
            return b;
        }
        let real = &self.records[..8 * self.real];
        let fused = self.variant(k, d_in, d_out);
        let fused_us = estimate_us(real, fused, k.capacity[fused as usize], d_in, d_out)
            + group_turns_us(fused.blocks_per_tile(), d_out);
        let shrink = self.variant(k, d_in, 0);
        let split_us = estimate_us(real, shrink, k.capacity[shrink as usize], d_in, 0)
            + estimate_cols_us(real, blocks, k.capacity[Variant::Solo as usize], d_out)
            + group_turns_us(blocks, d_out);
        if k.debug {
            eprintln!(
                "sgmv fused: {d_in}x{d_out}: fused {fused_us:.1} us, split {split_us:.1} us ({blocks} column blocks)"
            );
        }
        let choice = (split_us < fused_us).then_some(blocks);
        self.split_chosen.lock().unwrap_or_else(|e| e.into_inner()).push(((d_in, d_out), choice));
        choice
    }
}

/// Blocks per tile of the "cols" expand over `tiles` tiles of `d_out` columns: enough to
/// fill the device's blocks at once, at most one 32-column group per warp.
fn cols_blocks(k: &Kernels, tiles: usize, d_out: usize) -> u32 {
    let at_once = k.capacity[Variant::Solo as usize];
    let most = d_out.div_ceil(32).div_ceil(WARPS).max(1);
    at_once.div_ceil(tiles).clamp(1, most) as u32
}

/// The turns a warp takes through a tile's 32-column groups when `blocks` blocks share them,
/// at [`GROUP_TURN_US`] each.
fn group_turns_us(blocks: u32, d_out: usize) -> f64 {
    let turns = d_out.div_ceil(32).div_ceil(blocks.max(1) as usize * WARPS);
    turns as f64 * GROUP_TURN_US
}

/// The time of the "cols" expand (as `estimate_us`, with `blocks` blocks a tile streaming
/// its share of lora_B and y, `at_once` blocks at a time) plus the second launch's own.
fn estimate_cols_us(records: &[u32], blocks: u32, at_once: usize, d_out: usize) -> f64 {
    // An expand alone moves what a lora_delta with d_in = 0 would: lora_B, y read and written.
    let per_round = (at_once / blocks as usize).max(1);
    SPLIT_LAUNCH_US + rounds_us(records, per_round, blocks, 0, d_out)
}

/// The rank bound of a CUDA graph's fused SGMV launches for adapters of ranks up to
/// `max_rank`: the smallest of the variants' largest ranks that takes it (64: every variant;
/// 128: all but clusters of 4), so a graph keeps the choice an eager launch has wherever the
/// ranks allow. `None` over [`MAX_RANK`].
pub(super) fn rank_bound(max_rank: usize) -> Option<usize> {
    match max_rank {
        r if r <= PAIR_MAX_RANK => Some(PAIR_MAX_RANK),
        r if r <= MAX_RANK => Some(MAX_RANK),
        _ => None,
    }
}

/// Estimated time of one launch of `v` over `records` (see `FIXED_US`): the tiles run in
/// rounds of `capacity`; an adapter's weights count once towards DRAM bytes (its later
/// tiles read them from L2) but in full towards each block's stream.
fn estimate_us(records: &[u32], v: Variant, capacity: usize, d_in: usize, d_out: usize) -> f64 {
    rounds_us(records, capacity, v.blocks_per_tile(), d_in, d_out) * v.cost_factor()
}

/// `estimate_us` before its variant's factor: the tiles in rounds of `per_round`, each tile
/// streamed by `blocks` blocks.
fn rounds_us(records: &[u32], per_round: usize, blocks: u32, d_in: usize, d_out: usize) -> f64 {
    let mut total = 0.0;
    for round in records.chunks(8 * per_round.max(1)) {
        let (mut largest, mut bytes, mut prev_slot) = (0f64, 0f64, None);
        for rec in round.chunks_exact(8) {
            let (slot, rank, rows) = (rec[0], f64::from(rec[1]), f64::from(rec[4] - rec[3]));
            let weights = 2.0 * rank * (d_in + d_out) as f64;
            let activations = 2.0 * rows * (d_in + 2 * d_out) as f64;
            largest = largest.max(weights + activations);
            bytes += activations + if prev_slot == Some(slot) { 0.0 } else { weights };
            prev_slot = Some(slot);
        }
        let block = largest / (f64::from(blocks) * BLOCK_BYTES_PER_US);
        total += FIXED_US + block.max(bytes / DRAM_BYTES_PER_US);
    }
    total
}

/// Per tile of up to `TILE_TOKENS` tokens of one segment, 8 words: slot, rank, scale (f32
/// bits), start, end, 3 of padding.
fn records(map: &SegmentMap) -> Vec<u32> {
    let mut tiles = Vec::new();
    for s in 0..map.num_segments() {
        let r = map.segment_range(s);
        let mut p = r.start;
        while p < r.end {
            let end = r.end.min(p + TILE_TOKENS);
            tiles.extend([
                map.slots()[s],
                map.ranks()[s],
                map.scales()[s].to_bits(),
                p as u32,
                end as u32,
                0,
                0,
                0,
            ]);
            p = end;
        }
    }
    tiles
}

/// What one launch needs: device addresses, shapes, and which operands allow 16-byte loads.
pub(super) struct Launch {
    /// 0: lora_delta, 1: shrink alone into `v`, 2: expand alone from `v`.
    pub(super) mode: i32,
    pub(super) x: u64,
    pub(super) y: u64,
    pub(super) v: u64,
    pub(super) table: u64,
    pub(super) rows: u64,
    pub(super) d_in: usize,
    pub(super) d_out: usize,
    /// Row stride of `y` (`d_out` unless `y` is some columns of a wider output).
    pub(super) ldy: usize,
    pub(super) width: usize,
    /// Every lora_A / lora_B starts on a 16-byte boundary.
    pub(super) a_aligned: bool,
    pub(super) b_aligned: bool,
}

/// The kernel's parameter block of one launch (or one part of a stacked launch).
fn params(l: &Launch, records: u64) -> Params {
    let bit = |on: bool, value: i32| if on { value } else { 0 };
    let flags = bit(l.x.is_multiple_of(16) && l.d_in.is_multiple_of(8), 1)
        | bit(l.a_aligned && l.d_in.is_multiple_of(8), 2)
        | bit(l.b_aligned, 4)
        | bit(l.y.is_multiple_of(16) && l.d_out.is_multiple_of(8) && l.ldy.is_multiple_of(8), 8);
    Params {
        x: l.x,
        y: l.y,
        v: l.v,
        table: l.table,
        rows: l.rows,
        tiles: records,
        d_in: l.d_in as i32,
        d_out: l.d_out as i32,
        width: l.width as i32,
        mode: l.mode,
        flags,
        ldy: l.ldy as i32,
        col_blocks: 0,
    }
}

/// Projections one stacked launch takes (`MAX_PARTS` in sgmv_fused.cu).
pub(super) const MAX_PARTS: usize = 3;

/// Stacked launch parameters, laid out as `MultiParams` in sgmv_fused.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct MultiParams {
    part: [Params; MAX_PARTS],
    /// Tiles of parts `0..=k` together.
    end: [i32; MAX_PARTS],
}

/// One launch of several projections that read the same `x` (each part: its tiles, the
/// device address of its tile records, its launch), part `k`'s tiles after part `k - 1`'s,
/// in the variant that all parts' ranks allow with the least estimated time summed over
/// the parts (or the forced one where it applies). Every row gets the bits its part's own
/// launch gives it.
pub(super) fn launch_stacked(
    k: &Kernels,
    parts: &[(&Tiles, u64, Launch)],
    dtype: usize,
    stream: &CudaStream,
) -> Result<()> {
    if parts.is_empty() || parts.len() > MAX_PARTS {
        return Err(crate::KernelError::Cuda(format!(
            "a stacked SGMV launch takes 1 to {MAX_PARTS} projections, not {}",
            parts.len()
        )));
    }
    let usable = |v: Variant| parts.iter().all(|(t, _, _)| t.max_rank <= v.max_rank());
    let v = match k.forced.filter(|&v| usable(v)) {
        Some(v) => v,
        None => {
            let cost = |v: Variant| -> f64 {
                parts
                    .iter()
                    .map(|(t, _, l)| {
                        let real = &t.records[..8 * t.real];
                        estimate_us(real, v, k.capacity[v as usize], l.d_in, l.d_out)
                    })
                    .sum()
            };
            let mut best = (Variant::Cluster, f64::INFINITY);
            for v in VARIANTS.into_iter().filter(|&v| usable(v)) {
                let c = cost(v);
                if c < best.1 {
                    best = (v, c);
                }
            }
            best.0
        },
    };
    let first = params(&parts[0].2, parts[0].1);
    let mut m = MultiParams { part: [first; MAX_PARTS], end: [0; MAX_PARTS] };
    let mut total = 0usize;
    for (i, (t, records, l)) in parts.iter().enumerate() {
        m.part[i] = params(l, *records);
        total += t.records.len() / 8;
        m.end[i] = total as i32;
    }
    for i in parts.len()..MAX_PARTS {
        m.end[i] = total as i32;
    }
    // SAFETY: `m` is the multi kernels' one parameter; every address in its parts refers to
    // live device memory of the sizes the kernel indexes (checked shapes, the uploaded maps
    // and tables).
    unsafe { launch_tiles(&k.multi[dtype][v as usize], v, total, stream, &mut m) }
}

/// Launches `f` (a kernel of variant `v` whose one parameter is a `P`) over `tiles` tiles on
/// `stream`.
///
/// # Safety
/// `param` must be the kernel's parameter block, every address in it live device memory of
/// the sizes the kernel indexes; the launch is ordered on `stream` with candle's work.
unsafe fn launch_tiles<P>(
    f: &CudaFunction,
    v: Variant,
    tiles: usize,
    stream: &CudaStream,
    param: &mut P,
) -> Result<()> {
    let blocks = v.blocks_per_tile();
    let attr = (blocks > 1).then(|| cluster_attribute(blocks));
    // SAFETY: the caller's promise.
    unsafe { launch_ex(f, tiles as u32 * blocks, attr, stream, param) }
}

/// Launches `f` (whose one parameter is a `P`) over `blocks` blocks on `stream`, with the
/// launch attribute `attr` if any.
///
/// # Safety
/// As [`launch_tiles`].
unsafe fn launch_ex<P>(
    f: &CudaFunction,
    blocks: u32,
    attr: Option<sys::CUlaunchAttribute>,
    stream: &CudaStream,
    param: &mut P,
) -> Result<()> {
    let with = attr.is_some();
    // SAFETY: a plain C struct, for which all zeros is a valid value (unused when `attr` is
    // `None`: the config then counts no attribute).
    let mut attr = attr.unwrap_or_else(|| unsafe { std::mem::zeroed() });
    let mut cfg = launch_config(blocks, stream, &mut attr);
    if !with {
        cfg.numAttrs = 0;
    }
    let mut args = [param as *mut P as *mut std::ffi::c_void];
    stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: `args` holds one pointer to the kernel's one parameter (the caller's promise
    // for what it points to); `cfg` and the attribute it points to live across the call.
    unsafe { sys::cuLaunchKernelEx(&cfg, f.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }
        .result()
        .map_err(cuda_err)
}

/// Launches the variant of least estimated time (`Tiles::variant`) for element type
/// `dtype` (0: bf16, 1: f16) on `stream`; `records` is the device address of the step's tile
/// records.
pub(super) fn launch(
    k: &Kernels,
    tiles: &Tiles,
    records: u64,
    dtype: usize,
    stream: &CudaStream,
    l: &Launch,
) -> Result<()> {
    let v = tiles.variant(k, l.d_in, l.d_out);
    let num_tiles = tiles.records.len() / 8;
    let mut p = params(l, records);
    // SAFETY: `p` is the kernel's one parameter; every address in it refers to live device
    // memory of the sizes the kernel indexes (checked shapes, the uploaded map and table).
    unsafe { launch_tiles(&k.functions[dtype][v as usize], v, num_tiles, stream, &mut p) }
}

/// A lora_delta in two launches on `stream`: the shrink alone (`shrink`, mode 1, the
/// variant of least estimated time for a shrink) into `v`, then the "cols" expand
/// (`expand`, mode 2 from the same `v`) over `blocks` blocks a tile, launched as the
/// shrink's programmatic dependent: its blocks start while the shrink runs and stream
/// lora_B and y until the shrink's v is complete ([`Tiles::split`]).
pub(super) fn launch_split(
    k: &Kernels,
    tiles: &Tiles,
    records: u64,
    dtype: usize,
    stream: &CudaStream,
    (shrink, expand): (&Launch, &Launch),
    blocks: u32,
) -> Result<()> {
    let v = tiles.variant(k, shrink.d_in, 0);
    let num_tiles = tiles.records.len() / 8;
    let mut p = params(shrink, records);
    // SAFETY: `p` is the kernel's one parameter; every address in it refers to live device
    // memory of the sizes the kernel indexes (checked shapes, the uploaded map and table, a
    // `v` of the step's tokens x the map's widest rank).
    unsafe { launch_tiles(&k.functions[dtype][v as usize], v, num_tiles, stream, &mut p) }?;
    let mut p = params(expand, records);
    p.col_blocks = blocks as i32;
    // SAFETY: a plain C struct, for which all zeros is a valid value.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    // SAFETY: as above for `p`; the kernel waits for the shrink (griddepcontrol.wait)
    // before it reads `v`.
    unsafe { launch_ex(&k.cols[dtype], num_tiles as u32 * blocks, Some(attr), stream, &mut p) }
}
