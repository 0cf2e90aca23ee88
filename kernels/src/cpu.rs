//! Multithreaded CPU SGMV over plain slices (rayon), the path of CPU workers and of CI.
//!
//! Work is split into items of (tile of at most 16 tokens of one segment) x
//! (a block of weight rows), so that each weight row is read once per tile from cache and a
//! single-token decode step still spreads over threads. Each item writes a disjoint block of
//! the output, so the result never depends on the thread count or on the other segments of
//! the batch. Arithmetic is f32; the only allocation is the shrink buffer of
//! [`CpuWorkspace`], which grows to the largest batch seen and is then reused.

use rayon::prelude::*;

use crate::element::{AdapterWeights, Element, LoraWeights};
use crate::error::{KernelError, Result};
use crate::segments::SegmentMap;

/// Rank rows per shrink work item.
const SHRINK_RANK_BLOCK: usize = 8;
/// Output columns per expand work item.
const EXPAND_COL_BLOCK: usize = 64;

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

/// Dot product in f32 of two equally long rows, with independent partial sums so that the
/// loop vectorises.
#[inline]
fn dot<A: Element, B: Element>(a: &[A], b: &[B]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] += xa[i].to_f32() * xb[i].to_f32();
        }
    }
    let mut tail = 0f32;
    for (&xa, &xb) in ca.remainder().iter().zip(cb.remainder()) {
        tail += xa.to_f32() * xb.to_f32();
    }
    let mut sum = tail;
    for v in acc {
        sum += v;
    }
    sum
}

/// Looks up and checks the weights of every segment before any work starts.
fn check_weights<'w, T: Element, W: AdapterWeights<T> + ?Sized>(
    map: &SegmentMap,
    weights: &'w W,
    d_in: usize,
    d_out: usize,
) -> Result<()> {
    for s in 0..map.num_segments() {
        let slot = map.slots()[s];
        let rank = map.ranks()[s] as usize;
        let w = weights.weights(slot).ok_or(KernelError::EmptySlot {
            segment: s,
            slot,
            slots: weights.num_slots(),
        })?;
        crate::error::check_shape(&format!("lora_A of slot {slot}"), &[rank * d_in], &[w.a.len()])?;
        crate::error::check_shape(
            &format!("lora_B of slot {slot}"),
            &[d_out * rank],
            &[w.b.len()],
        )?;
    }
    Ok(())
}

fn segment_weights<'w, T: Element, W: AdapterWeights<T> + ?Sized>(
    map: &SegmentMap,
    weights: &'w W,
    segment: usize,
) -> LoraWeights<'w, T> {
    // Checked by `check_weights` before the parallel loop.
    weights.weights(map.slots()[segment]).expect("segment weights checked before launch")
}

/// `v[p, j] = sum_k x[rows[p], k] * A_s[j, k]` for every sorted position `p` of segment `s`
/// and `j < rank_s`; `v[p, j] = 0` for `rank_s <= j < max_rank`. `v` is
/// `[num_tokens, max_rank]` row-major; `x` is `[num_rows, d_in]`.
pub fn sgmv_shrink<T: Element, W: AdapterWeights<T> + ?Sized>(
    x: &[T],
    d_in: usize,
    map: &SegmentMap,
    weights: &W,
    v: &mut [f32],
) -> Result<()> {
    let width = map.max_rank();
    crate::error::check_shape("x", &[map.num_rows() * d_in], &[x.len()])?;
    crate::error::check_shape("shrink output v", &[map.num_tokens() * width], &[v.len()])?;
    for s in 0..map.num_segments() {
        let slot = map.slots()[s];
        let rank = map.ranks()[s] as usize;
        let w = weights.weights(slot).ok_or(KernelError::EmptySlot {
            segment: s,
            slot,
            slots: weights.num_slots(),
        })?;
        crate::error::check_shape(&format!("lora_A of slot {slot}"), &[rank * d_in], &[w.a.len()])?;
    }
    let blocks = width.div_ceil(SHRINK_RANK_BLOCK).max(1);
    let out = DisjointOut(v.as_mut_ptr());
    (0..map.tiles().len() * blocks).into_par_iter().for_each(|item| {
        let tile = map.tiles()[item / blocks];
        let j0 = (item % blocks) * SHRINK_RANK_BLOCK;
        let seg = tile.segment as usize;
        let rank = map.ranks()[seg] as usize;
        let a = segment_weights(map, weights, seg).a;
        let j1 = (j0 + SHRINK_RANK_BLOCK).min(width);
        for j in j0..j1 {
            let a_row = (j < rank).then(|| &a[j * d_in..(j + 1) * d_in]);
            for p in tile.start as usize..tile.end as usize {
                let value = match a_row {
                    Some(a_row) => {
                        let row = map.rows()[p] as usize;
                        dot(&x[row * d_in..(row + 1) * d_in], a_row)
                    },
                    None => 0.0,
                };
                // SAFETY: (p, j) lies in this item's tile and rank block only; in bounds by
                // the shape check above.
                unsafe { *out.ptr().add(p * width + j) = value };
            }
        }
    });
    Ok(())
}

/// `y[rows[p], o] += scale_s * sum_{j < rank_s} v[p, j] * B_s[o, j]` for every sorted
/// position `p` of segment `s`. `v` is `[num_tokens, max_rank]`, `y` is `[num_rows, d_out]`;
/// rows of no segment are not touched.
pub fn sgmv_expand<T: Element, W: AdapterWeights<T> + ?Sized>(
    v: &[f32],
    y: &mut [T],
    d_out: usize,
    map: &SegmentMap,
    weights: &W,
) -> Result<()> {
    let width = map.max_rank();
    crate::error::check_shape("y", &[map.num_rows() * d_out], &[y.len()])?;
    crate::error::check_shape("expand input v", &[map.num_tokens() * width], &[v.len()])?;
    for s in 0..map.num_segments() {
        let slot = map.slots()[s];
        let rank = map.ranks()[s] as usize;
        let w = weights.weights(slot).ok_or(KernelError::EmptySlot {
            segment: s,
            slot,
            slots: weights.num_slots(),
        })?;
        crate::error::check_shape(
            &format!("lora_B of slot {slot}"),
            &[d_out * rank],
            &[w.b.len()],
        )?;
    }
    let blocks = d_out.div_ceil(EXPAND_COL_BLOCK);
    let out = DisjointOut(y.as_mut_ptr());
    (0..map.tiles().len() * blocks).into_par_iter().for_each(|item| {
        let tile = map.tiles()[item / blocks];
        let o0 = (item % blocks) * EXPAND_COL_BLOCK;
        let o1 = (o0 + EXPAND_COL_BLOCK).min(d_out);
        let seg = tile.segment as usize;
        let rank = map.ranks()[seg] as usize;
        let scale = map.scales()[seg];
        let b = segment_weights(map, weights, seg).b;
        for p in tile.start as usize..tile.end as usize {
            let v_row = &v[p * width..p * width + rank];
            let row = map.rows()[p] as usize;
            for o in o0..o1 {
                let delta = scale * dot(v_row, &b[o * rank..(o + 1) * rank]);
                // SAFETY: rows are unique per sorted position (checked by SegmentMap) and
                // columns o0..o1 belong to this item alone; in bounds by the shape check.
                unsafe {
                    let y_ptr = out.ptr().add(row * d_out + o);
                    *y_ptr = T::from_f32((*y_ptr).to_f32() + delta);
                }
            }
        }
    });
    Ok(())
}

/// `y[row] += scale_s * B_s (A_s x[row])` for every row of every segment: shrink then
/// expand, with the intermediate in `workspace`. `x` is `[num_rows, d_in]`, `y` is
/// `[num_rows, d_out]`.
pub fn lora_delta<T: Element, W: AdapterWeights<T> + ?Sized>(
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
    check_weights(map, weights, d_in, d_out)?;
    let len = map.num_tokens() * map.max_rank();
    if workspace.v.len() < len {
        workspace.v.resize(len, 0.0);
    }
    let v = &mut workspace.v[..len];
    sgmv_shrink(x, d_in, map, weights, v)?;
    sgmv_expand(v, y, d_out, map, weights)
}
