//! The CPU path: one rayon task per (sequence, key/value head), which reads each cached key
//! and value row once for all the query heads of its group. Two passes over the context
//! (scores, then the weighted sum of values) with the exact maximum in between, f32
//! throughout; each task's order of operations is fixed, so results do not depend on the
//! batch or the thread count.

use rayon::prelude::*;

use super::{DecodeBlocks, Geometry};
use crate::element::Element;

/// Fills `out` (`[num_seqs, num_heads, head_dim]`) from `q`, the caches and the validated
/// `blocks`; the slices have the sizes `geometry` gives (checked by the caller).
pub(crate) fn decode<T: Element>(
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    out: &mut [T],
    geometry: &Geometry,
    blocks: &DecodeBlocks,
    scale: f32,
) {
    let Geometry { num_heads, num_kv_heads, head_dim, block_size, .. } = *geometry;
    let group = geometry.group();
    let row = num_kv_heads * head_dim;
    let table_width = blocks.max_blocks_per_seq();
    out.par_chunks_mut(group * head_dim).enumerate().for_each(|(task, out)| {
        let (seq, kv_head) = (task / num_kv_heads, task % num_kv_heads);
        let len = blocks.context_lens()[seq] as usize;
        if len == 0 {
            out.fill(T::from_f32(0.0));
            return;
        }
        let table = &blocks.tables()[seq * table_width..(seq + 1) * table_width];
        let position = |t: usize| {
            (table[t / block_size] as usize * block_size + t % block_size) * row
                + kv_head * head_dim
        };
        let q_start = (seq * num_heads + kv_head * group) * head_dim;
        let qs: Vec<f32> =
            q[q_start..q_start + group * head_dim].iter().map(|e| e.to_f32() * scale).collect();

        // Scores, [group][len].
        let mut scores = vec![0f32; group * len];
        let mut widened = vec![0f32; head_dim];
        for t in 0..len {
            let at = position(t);
            widen(&k_cache[at..at + head_dim], &mut widened);
            for (g, q) in qs.chunks_exact(head_dim).enumerate() {
                scores[g * len + t] = dot(q, &widened);
            }
        }
        let mut sums = vec![0f32; group];
        for (g, s) in scores.chunks_exact_mut(len).enumerate() {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for e in s.iter_mut() {
                *e = (*e - max).exp();
            }
            sums[g] = s.iter().sum();
        }

        let mut acc = vec![0f32; group * head_dim];
        for t in 0..len {
            let at = position(t);
            widen(&v_cache[at..at + head_dim], &mut widened);
            for (g, acc) in acc.chunks_exact_mut(head_dim).enumerate() {
                let p = scores[g * len + t];
                for (a, v) in acc.iter_mut().zip(&widened) {
                    *a += p * v;
                }
            }
        }
        for ((o, a), g) in
            out.iter_mut().zip(&acc).zip((0..group).flat_map(|g| std::iter::repeat_n(g, head_dim)))
        {
            *o = T::from_f32(a / sums[g]);
        }
    });
}

fn widen<T: Element>(src: &[T], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Dot product in eight interleaved sums, which the compiler keeps in one vector register
/// (head sizes are multiples of 8).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum()
}
