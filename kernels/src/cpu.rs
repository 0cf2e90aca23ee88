//! Multithreaded CPU SGMV over plain slices (rayon), the path of CPU workers and of CI.
//!
//! Work is split into items of (tile of at most 16 tokens of one segment) x
//! (a block of weight rows), so that each weight row is read once per tile from cache and a
//! single-token decode step still spreads over threads. Each item writes a disjoint block of
//! the output, so the result never depends on the thread count or on the other segments of
//! the batch. Activations (`T`) and adapter weights (`E`) may be of different element types
//! (e.g. f32 activations with bf16 adapters, halving the bytes a step reads per adapter).
//! Arithmetic is f32; the only allocation is the shrink buffer of
//! [`CpuWorkspace`], which grows to the largest batch seen and is then reused.

use rayon::prelude::*;

use crate::element::{AdapterWeights, BLayout, Element, LoraWeights, Widen};
use crate::error::{KernelError, Result};
use crate::segments::{SegmentMap, CPU_TILE_TOKENS};
use crate::simd::Simd;

/// Rank rows per shrink work item.
const SHRINK_RANK_BLOCK: usize = 8;
/// Output columns per expand work item.
const EXPAND_COL_BLOCK: usize = 64;
/// Output columns per step of the expand with a transposed lora_B: each rank index's run of
/// columns is 1 KB (bf16), long enough for the hardware prefetcher.
const EXPAND_BT_COLS: usize = 512;

/// Scratch memory reused across calls (one per worker thread that drives the engine).
#[derive(Default, Debug)]
pub struct CpuWorkspace {
    v: Vec<f32>,
}

impl CpuWorkspace {
    /// An empty workspace; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A raw pointer that items may share because each writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct DisjointOut<T>(*mut T);
// SAFETY: every work item writes only elements no other item touches (see callers), and the
// pointed-to buffer outlives the parallel loop, which borrows it mutably.
unsafe impl<T: Send> Send for DisjointOut<T> {}
unsafe impl<T: Send> Sync for DisjointOut<T> {}
impl<T> DisjointOut<T> {
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// Dot product in f32 of two equally long rows, with eight independent partial sums so that
/// the loop vectorises (8 lanes under AVX2, two 4-lane registers otherwise). With `FMA`, each
/// step is a fused multiply-add (only where the CPU has one: see [`simd`]).
#[inline(always)]
pub(crate) fn dot<A: Widen, B: Widen, const FMA: bool>(a: &[A], b: &[B]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            let (p, q) = (xa[i].to_f32(), xb[i].to_f32());
            acc[i] = if FMA { p.mul_add(q, acc[i]) } else { acc[i] + p * q };
        }
    }
    let mut tail = 0f32;
    for (&xa, &xb) in ca.remainder().iter().zip(cb.remainder()) {
        tail += xa.to_f32() * xb.to_f32();
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Whether the AVX2 + FMA builds of the inner loops run (the CPU's level, detected once).
fn simd() -> bool {
    crate::options::simd() >= crate::options::SimdLevel::Avx2
}

/// One shrink work item: rank rows `j0..j1` for the tokens of `tile`.
struct ShrinkItem<'a, T, E> {
    x: &'a [T],
    a: &'a [E],
    /// Per row of `a`, or empty (float weights).
    a_scale: &'a [f32],
    rows: &'a [u32],
    d_in: usize,
    rank: usize,
    width: usize,
    j0: usize,
    j1: usize,
    tile: std::ops::Range<usize>,
}

/// Eight rank rows at a time against each token's row ([`Simd::dot8`]: eight streams of
/// lora_A read together, one transposed reduction), the token's row widened to f32 once.
/// Rows past the segment's rank give 0. A row's value does not depend on the other rows of
/// its group of eight, so the two-stage and fused paths agree bit for bit. A quantized row's
/// dot product is multiplied by the row's scale.
fn run_shrink_item<T: Element, E: Widen>(it: &ShrinkItem<'_, T, E>, out: DisjointOut<f32>) {
    let (d_in, rank) = (it.d_in, it.rank);
    let simd = Simd::detect();
    let mut x_row = vec![0f32; d_in];
    for p in it.tile.clone() {
        let row = it.rows[p] as usize;
        for (o, v) in x_row.iter_mut().zip(&it.x[row * d_in..(row + 1) * d_in]) {
            *o = v.to_f32();
        }
        for j0 in (it.j0..it.j1).step_by(8) {
            let values = if rank == 0 {
                [0f32; 8]
            } else {
                let a_rows: [&[E]; 8] = std::array::from_fn(|i| {
                    let j = (j0 + i).min(rank - 1);
                    &it.a[j * d_in..(j + 1) * d_in]
                });
                simd.dot8(&x_row, a_rows)
            };
            for (i, value) in values.iter().enumerate() {
                let j = j0 + i;
                if j < it.j1 {
                    let value = match it.a_scale.get(j) {
                        _ if j >= rank => 0.0,
                        Some(scale) => *value * scale,
                        None => *value,
                    };
                    // SAFETY: (p, j) lies in this item's tile and rank block only; in bounds
                    // by the shape check of the caller.
                    unsafe { *out.ptr().add(p * it.width + j) = value };
                }
            }
        }
    }
}

/// One expand work item: output columns `o0..o1` for the tokens of `tile`.
struct ExpandItem<'a, E> {
    v: &'a [f32],
    b: &'a [E],
    b_layout: BLayout,
    /// Per rank index of a transposed `b`, or empty (float weights).
    b_scale: &'a [f32],
    rows: &'a [u32],
    d_out: usize,
    rank: usize,
    width: usize,
    scale: f32,
    o0: usize,
    o1: usize,
    tile: std::ops::Range<usize>,
}

/// Rank columns of lora_B transposed at a time into the expand's stack buffer.
const EXPAND_RANK_BLOCK: usize = 32;

#[inline(always)]
fn expand_item<T: Element, E: Widen, const FMA: bool>(it: &ExpandItem<'_, E>, out: DisjointOut<T>) {
    // lora_B rows are `rank` long, so a direct dot per output is short and pays a horizontal
    // sum each time. Instead transpose a [rank block x column block] of B to f32 once per
    // item and accumulate whole column blocks per token: contiguous, vectorised FMAs.
    const COLS: usize = EXPAND_COL_BLOCK;
    let (rank, cols) = (it.rank, it.o1 - it.o0);
    let tokens = it.tile.len();
    if it.b_layout == BLayout::RankByOut {
        // B already transposed: each rank index's columns are one contiguous run. Per token
        // and column the sum runs over j in order, as in the transposing path below, so both
        // layouts give the same bits for tiles of 4 tokens or more.
        // The sums over j as weighted sums of B's rows, the accumulators in registers. A
        // quantized B's row scales multiply the weights first (`coef`).
        let simd = Simd::detect();
        let mut acc = [0f32; EXPAND_BT_COLS];
        let (mut stack, mut heap) = ([0f32; 64], Vec::new());
        let coef: &mut [f32] = match it.b_scale.len() {
            0 => &mut [],
            n if n <= stack.len() => &mut stack[..n],
            n => {
                heap.resize(n, 0.0);
                &mut heap
            },
        };
        for c0 in (it.o0..it.o1).step_by(EXPAND_BT_COLS) {
            let c1 = (c0 + EXPAND_BT_COLS).min(it.o1);
            for p in it.tile.clone() {
                let mut v_row = &it.v[p * it.width..p * it.width + rank];
                if !coef.is_empty() {
                    for ((c, v), s) in coef.iter_mut().zip(v_row).zip(it.b_scale) {
                        *c = v * s;
                    }
                    v_row = &*coef;
                }
                let acc = &mut acc[..c1 - c0];
                simd.weighted_sum(v_row, |j| &it.b[j * it.d_out + c0..j * it.d_out + c1], acc);
                let row = it.rows[p] as usize;
                // SAFETY: as below.
                let y = unsafe {
                    std::slice::from_raw_parts_mut(out.ptr().add(row * it.d_out + c0), c1 - c0)
                };
                for (y_c, a) in y.iter_mut().zip(acc.iter()) {
                    *y_c = T::from_f32(y_c.to_f32() + it.scale * a);
                }
            }
        }
        return;
    }
    if tokens < 4 {
        // Too few tokens to repay the transpose: one dot per output.
        for p in it.tile.clone() {
            let v_row = &it.v[p * it.width..p * it.width + rank];
            let row = it.rows[p] as usize;
            // SAFETY: as below.
            let y = unsafe {
                std::slice::from_raw_parts_mut(out.ptr().add(row * it.d_out + it.o0), cols)
            };
            for (y_c, o) in y.iter_mut().zip(it.o0..it.o1) {
                let delta = dot::<f32, E, FMA>(v_row, &it.b[o * rank..(o + 1) * rank]);
                *y_c = T::from_f32(y_c.to_f32() + it.scale * delta);
            }
        }
        return;
    }
    let mut acc = [[0f32; COLS]; CPU_TILE_TOKENS];
    let mut bt = [[0f32; COLS]; EXPAND_RANK_BLOCK];
    let mut j0 = 0;
    while j0 < rank {
        let jn = (rank - j0).min(EXPAND_RANK_BLOCK);
        for (c, o) in (it.o0..it.o1).enumerate() {
            let b_row = &it.b[o * rank + j0..o * rank + j0 + jn];
            for (jj, &w) in b_row.iter().enumerate() {
                bt[jj][c] = w.to_f32();
            }
        }
        for (t, p) in it.tile.clone().enumerate() {
            let v_row = &it.v[p * it.width + j0..p * it.width + j0 + jn];
            let acc_t = &mut acc[t];
            for (jj, &coef) in v_row.iter().enumerate() {
                let bt_j = &bt[jj];
                for c in 0..COLS {
                    acc_t[c] = if FMA {
                        coef.mul_add(bt_j[c], acc_t[c])
                    } else {
                        acc_t[c] + coef * bt_j[c]
                    };
                }
            }
        }
        j0 += jn;
    }
    for (t, p) in it.tile.clone().enumerate().take(tokens) {
        let row = it.rows[p] as usize;
        // SAFETY: rows are unique per sorted position (checked by SegmentMap) and columns
        // o0..o1 belong to this item alone; in bounds by the caller's shape check.
        let y =
            unsafe { std::slice::from_raw_parts_mut(out.ptr().add(row * it.d_out + it.o0), cols) };
        for (c, y_c) in y.iter_mut().enumerate() {
            *y_c = T::from_f32(y_c.to_f32() + it.scale * acc[t][c]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn expand_item_avx2<T: Element, E: Widen>(it: &ExpandItem<'_, E>, out: DisjointOut<T>) {
    expand_item::<T, E, true>(it, out)
}

fn run_expand_item<T: Element, E: Widen>(it: &ExpandItem<'_, E>, out: DisjointOut<T>) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd`).
        return unsafe { expand_item_avx2(it, out) };
    }
    expand_item::<T, E, false>(it, out)
}

/// Looks up and checks the weights of every segment before any work starts: `lora_A`'s
/// length when `d_in` is given, `lora_B`'s when `d_out` is, and the row scales of quantized
/// weights (one per rank index, `lora_B` transposed).
fn check_weights<E: Widen, W: AdapterWeights<E> + ?Sized>(
    map: &SegmentMap,
    weights: &W,
    d_in: Option<usize>,
    d_out: Option<usize>,
) -> Result<()> {
    for s in 0..map.num_segments() {
        let slot = map.slots()[s];
        let rank = map.ranks()[s] as usize;
        let w = weights.weights(slot).ok_or(KernelError::EmptySlot {
            segment: s,
            slot,
            slots: weights.num_slots(),
        })?;
        if let Some(d_in) = d_in {
            crate::error::check_shape(
                &format!("lora_A of slot {slot}"),
                &[rank * d_in],
                &[w.a.len()],
            )?;
        }
        if let Some(d_out) = d_out {
            crate::error::check_shape(
                &format!("lora_B of slot {slot}"),
                &[d_out * rank],
                &[w.b.len()],
            )?;
        }
        if !(w.a_scale.is_empty() && w.b_scale.is_empty()) {
            crate::error::check_shape(
                &format!("lora_A scales of slot {slot}"),
                &[rank],
                &[w.a_scale.len()],
            )?;
            crate::error::check_shape(
                &format!("lora_B scales of slot {slot}"),
                &[rank],
                &[w.b_scale.len()],
            )?;
            if w.b_layout != BLayout::RankByOut {
                return Err(KernelError::QuantizedAdapter(format!(
                    "lora_B of slot {slot} must be stored transposed ([rank, d_out])"
                )));
            }
        }
    }
    Ok(())
}

fn segment_weights<'w, E: Widen, W: AdapterWeights<E> + ?Sized>(
    map: &SegmentMap,
    weights: &'w W,
    segment: usize,
) -> LoraWeights<'w, E> {
    // Checked by `check_weights` before the parallel loop.
    weights.weights(map.slots()[segment]).expect("segment weights checked before launch")
}

/// `v[p, j] = sum_k x[rows[p], k] * A_s[j, k]` for every sorted position `p` of segment `s`
/// and `j < rank_s`; `v[p, j] = 0` for `rank_s <= j < max_rank`. `v` is
/// `[num_tokens, max_rank]` row-major; `x` is `[num_rows, d_in]`.
pub fn sgmv_shrink<T: Element, E: Widen, W: AdapterWeights<E> + ?Sized>(
    x: &[T],
    d_in: usize,
    map: &SegmentMap,
    weights: &W,
    v: &mut [f32],
) -> Result<()> {
    let width = map.max_rank();
    crate::error::check_shape("x", &[map.num_rows() * d_in], &[x.len()])?;
    crate::error::check_shape("shrink output v", &[map.num_tokens() * width], &[v.len()])?;
    check_weights(map, weights, Some(d_in), None)?;
    let blocks = width.div_ceil(SHRINK_RANK_BLOCK).max(1);
    let out = DisjointOut(v.as_mut_ptr());
    (0..map.tiles().len() * blocks).into_par_iter().for_each(|item| {
        let tile = map.tiles()[item / blocks];
        let seg = tile.segment as usize;
        let j0 = (item % blocks) * SHRINK_RANK_BLOCK;
        let w = segment_weights(map, weights, seg);
        let it = ShrinkItem {
            x,
            a: w.a,
            a_scale: w.a_scale,
            rows: map.rows(),
            d_in,
            rank: map.ranks()[seg] as usize,
            width,
            j0,
            j1: (j0 + SHRINK_RANK_BLOCK).min(width),
            tile: tile.start as usize..tile.end as usize,
        };
        run_shrink_item(&it, out);
    });
    Ok(())
}

/// `y[rows[p], o] += scale_s * sum_{j < rank_s} v[p, j] * B_s[o, j]` for every sorted
/// position `p` of segment `s`. `v` is `[num_tokens, max_rank]`, `y` is `[num_rows, d_out]`;
/// rows of no segment are not touched.
pub fn sgmv_expand<T: Element, E: Widen, W: AdapterWeights<E> + ?Sized>(
    v: &[f32],
    y: &mut [T],
    d_out: usize,
    map: &SegmentMap,
    weights: &W,
) -> Result<()> {
    let width = map.max_rank();
    crate::error::check_shape("y", &[map.num_rows() * d_out], &[y.len()])?;
    crate::error::check_shape("expand input v", &[map.num_tokens() * width], &[v.len()])?;
    check_weights(map, weights, None, Some(d_out))?;
    let blocks = d_out.div_ceil(EXPAND_COL_BLOCK);
    let out = DisjointOut(y.as_mut_ptr());
    (0..map.tiles().len() * blocks).into_par_iter().for_each(|item| {
        let tile = map.tiles()[item / blocks];
        let seg = tile.segment as usize;
        let o0 = (item % blocks) * EXPAND_COL_BLOCK;
        let w = segment_weights(map, weights, seg);
        let it = ExpandItem {
            v,
            b: w.b,
            b_layout: w.b_layout,
            b_scale: w.b_scale,
            rows: map.rows(),
            d_out,
            rank: map.ranks()[seg] as usize,
            width,
            scale: map.scales()[seg],
            o0,
            o1: (o0 + EXPAND_COL_BLOCK).min(d_out),
            tile: tile.start as usize..tile.end as usize,
        };
        run_expand_item(&it, out);
    });
    Ok(())
}

/// `y[row] += scale_s * B_s (A_s x[row])` for every row of every segment: shrink then
/// expand, with the intermediate in `workspace`. `x` is `[num_rows, d_in]`, `y` is
/// `[num_rows, d_out]`.
pub fn lora_delta<T: Element, E: Widen, W: AdapterWeights<E> + ?Sized>(
    x: &[T],
    y: &mut [T],
    d_in: usize,
    d_out: usize,
    map: &SegmentMap,
    weights: &W,
    workspace: &mut CpuWorkspace,
) -> Result<()> {
    crate::error::check_shape("x", &[map.num_rows() * d_in], &[x.len()])?;
    crate::error::check_shape("y", &[map.num_rows() * d_out], &[y.len()])?;
    check_weights(map, weights, Some(d_in), Some(d_out))?;
    let len = map.num_tokens() * map.max_rank();
    if workspace.v.len() < len {
        workspace.v.resize(len, 0.0);
    }
    let v = &mut workspace.v[..len];
    if map.tiles().len() < 2 * rayon::current_num_threads() {
        // Few tiles (one long segment, or a single decode token): split each stage over
        // rank blocks and column blocks so every thread has work.
        sgmv_shrink(x, d_in, map, weights, v)?;
        return sgmv_expand(v, y, d_out, map, weights);
    }
    // Enough tiles for the threads: one item per tile does its shrink and then its expand,
    // one parallel loop instead of two and v stays in the item's cache. The operations per
    // element are those of the two-stage path, so the results are the same bits.
    let width = map.max_rank();
    let (v_out, y_out) = (DisjointOut(v.as_mut_ptr()), DisjointOut(y.as_mut_ptr()));
    map.tiles().par_iter().for_each(|tile| {
        let seg = tile.segment as usize;
        let w = segment_weights(map, weights, seg);
        let rank = map.ranks()[seg] as usize;
        let span = tile.start as usize..tile.end as usize;
        // The tile's own rows of v, addressed from 0: positions `span` of the batch.
        let rows = &map.rows()[span.clone()];
        // SAFETY: `span.start * width` is within v (positions are < num_tokens, v is
        // num_tokens x width).
        let v_tile = DisjointOut(unsafe { v_out.ptr().add(span.start * width) });
        let tokens = 0..span.len();
        let shrink = ShrinkItem {
            x,
            a: w.a,
            a_scale: w.a_scale,
            rows,
            d_in,
            rank,
            width,
            j0: 0,
            j1: width,
            tile: tokens.clone(),
        };
        // The item's weights are short runs anywhere in memory (an adapter's rows), too short
        // for the hardware prefetcher to ramp up on: ask for all of them before the shrink.
        crate::simd::prefetch(w.a);
        crate::simd::prefetch(w.b);
        run_shrink_item(&shrink, v_tile);
        // SAFETY: the tile's rows of v, which only this item writes (tiles are disjoint) and
        // which it has just written; the loop borrows v mutably throughout.
        let v =
            unsafe { std::slice::from_raw_parts(v_tile.ptr() as *const f32, span.len() * width) };
        let step = match w.b_layout {
            BLayout::RankByOut => d_out,
            BLayout::OutByRank => EXPAND_COL_BLOCK,
        };
        for o0 in (0..d_out).step_by(step.max(1)) {
            let expand = ExpandItem {
                v,
                b: w.b,
                b_layout: w.b_layout,
                b_scale: w.b_scale,
                rows,
                d_out,
                rank,
                width,
                scale: map.scales()[seg],
                o0,
                o1: (o0 + step).min(d_out),
                tile: tokens.clone(),
            };
            run_expand_item(&expand, y_out);
        }
    });
    Ok(())
}
