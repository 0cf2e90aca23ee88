//! The CPU path: one rayon task per (sequence, key/value head), which reads each cached key
//! and value row for all the query heads of its group. Two passes over the context (scores
//! eight positions at a time, then the weighted sum of values with the accumulators held in
//! registers) with the exact maximum in between, on the vector primitives of [`crate::simd`]:
//! f32 arithmetic on rows read in their own type (f16 and bf16 widened in registers). Each
//! task's order of operations is fixed by its context length, so results do not depend on the
//! batch, the thread count, or whether a row is decoded or prefilled.

use rayon::prelude::*;

use super::{DecodeBlocks, Geometry};
use crate::element::Element;
use crate::simd::{prefetch, Simd, PREFETCH_AHEAD};

/// Fills `out` (`[num_seqs, num_heads, head_dim]`) from `q`, the caches and the validated
/// `blocks`; the slices have the sizes `geometry` gives (checked by the caller).
pub(crate) fn decode<T: Element, C: Element>(
    q: &[T],
    k_cache: &[C],
    v_cache: &[C],
    out: &mut [T],
    geometry: &Geometry,
    blocks: &DecodeBlocks,
    scale: f32,
) {
    let Geometry { num_heads, num_kv_heads, head_dim, block_size, .. } = *geometry;
    let group = geometry.group();
    let row = num_kv_heads * head_dim;
    let table_width = blocks.max_blocks_per_seq();
    let simd = Simd::detect();
    out.par_chunks_mut(group * head_dim).enumerate().for_each(|(task, out)| {
        let (seq, kv_head) = (task / num_kv_heads, task % num_kv_heads);
        let len = blocks.context_lens()[seq] as usize;
        if len == 0 {
            out.fill(T::from_f32(0.0));
            return;
        }
        let table = &blocks.tables()[seq * table_width..(seq + 1) * table_width];
        // Each position's row offset, walked block by block once: the passes below look rows
        // up several times each, and a division per lookup cost more than the arithmetic.
        let mut offsets = Vec::with_capacity(len);
        for &block in table {
            let base = block as usize * block_size * row + kv_head * head_dim;
            let n = block_size.min(len - offsets.len());
            offsets.extend((0..n).map(|i| base + i * row));
            if offsets.len() == len {
                break;
            }
        }
        let position = |t: usize| offsets[t];
        let q_start = (seq * num_heads + kv_head * group) * head_dim;
        let qs: Vec<f32> =
            q[q_start..q_start + group * head_dim].iter().map(|e| e.to_f32() * scale).collect();
        let mut acc = vec![0f32; group * head_dim];
        attend(
            simd,
            &qs,
            head_dim,
            len,
            |t| &k_cache[position(t)..][..head_dim],
            |t| &v_cache[position(t)..][..head_dim],
            &mut acc,
        );
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = T::from_f32(*a);
        }
    });
}

/// `softmax(q_g . K^T) . V` for each query head `g` of `qs` (`[group][head_dim]`, already
/// scaled) over positions `0..len`, whose key and value rows `key(t)` and `value(t)` hold
/// `head_dim` elements; writes `out` (`[group][head_dim]`).
fn attend<'a, E: Element>(
    simd: Simd,
    qs: &[f32],
    head_dim: usize,
    len: usize,
    key: impl Fn(usize) -> &'a [E],
    value: impl Fn(usize) -> &'a [E],
    out: &mut [f32],
) {
    let group = qs.len() / head_dim;
    // Scores, [group][len]: eight positions' keys read together for every head.
    let mut scores = vec![0f32; group * len];
    let mut t = 0;
    while t + 8 <= len {
        // Keys a few blocks ahead, and the values of the same positions for the second pass.
        for ahead in t + PREFETCH_AHEAD..(t + PREFETCH_AHEAD + 8).min(len) {
            prefetch(key(ahead));
            prefetch(value(ahead));
        }
        let rows: [&[E]; 8] = std::array::from_fn(|j| key(t + j));
        for (g, q) in qs.chunks_exact(head_dim).enumerate() {
            scores[g * len + t..g * len + t + 8].copy_from_slice(&simd.dot8(q, rows));
        }
        t += 8;
    }
    for t in t..len {
        let k = key(t);
        for (g, q) in qs.chunks_exact(head_dim).enumerate() {
            scores[g * len + t] = simd.dot(q, k);
        }
    }
    let inv: Vec<f32> = scores
        .chunks_exact_mut(len)
        .map(|s| {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            1.0 / simd.exp_shifted(s, max)
        })
        .collect();
    // Each value row read once for all the heads of the group.
    simd.weighted_sums(&scores, len, value, out);
    for (o, inv) in out.chunks_exact_mut(head_dim).zip(inv) {
        for v in o.iter_mut() {
            *v *= inv;
        }
    }
}
