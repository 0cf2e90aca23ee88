//! Rotary position embeddings and causal attention over each sequence's KV blocks, on the CPU.
//!
//! Both work on plain row-major slices, one token row at a time, so a row's result depends
//! only on its own sequence: the batch around it cannot change a single bit.

use rayon::prelude::*;

use super::config::RopeStyle;
use super::kv_cache::{BlockTable, KvCache};

/// Precomputed cos/sin of every position, `[max_position][head_dim / 2]`.
pub(crate) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    style: RopeStyle,
}

impl Rope {
    pub(crate) fn new(head_dim: usize, max_position: usize, theta: f32, style: RopeStyle) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_position * half);
        let mut sin = Vec::with_capacity(max_position * half);
        for pos in 0..max_position {
            for i in 0..half {
                let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { cos, sin, half, style }
    }

    pub(crate) fn max_position(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of `rows` (`[n][heads * head_dim]`); row `i` is at `positions[i]`.
    pub(crate) fn apply(&self, rows: &mut [f32], positions: &[usize], heads: usize) {
        let hd = 2 * self.half;
        rows.par_chunks_mut(heads * hd).zip(positions.par_iter()).for_each(|(row, &pos)| {
            let (c, s) = (&self.cos[pos * self.half..], &self.sin[pos * self.half..]);
            for head in row.chunks_mut(hd) {
                for i in 0..self.half {
                    let (a, b) = match self.style {
                        RopeStyle::Half => (i, i + self.half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c[i] - x1 * s[i];
                    head[b] = x0 * s[i] + x1 * c[i];
                }
            }
        });
    }
}

/// Where a batch row's sequence keeps its cache and which position the row is at.
pub(crate) struct RowContext<'a> {
    pub table: &'a BlockTable,
    pub pos: usize,
}

/// Causal attention: row `r` attends to positions `0..=rows[r].pos` of its own sequence,
/// whose keys and values are already in the cache. `q` is `[n][num_heads * head_dim]`;
/// returns the same shape.
pub(crate) fn attend(
    q: &[f32],
    rows: &[RowContext<'_>],
    cache: &KvCache,
    layer: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let width = num_heads * head_dim;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0.0f32; rows.len() * width];
    out.par_chunks_mut(width).zip(q.par_chunks(width)).zip(rows.par_iter()).for_each(
        |((out_row, q_row), ctx)| {
            let ctx_len = ctx.pos + 1;
            let mut scores = vec![0.0f32; ctx_len];
            for h in 0..num_heads {
                let kvh = h / group;
                let qh = &q_row[h * head_dim..(h + 1) * head_dim];
                let mut max = f32::NEG_INFINITY;
                for (p, score) in scores.iter_mut().enumerate() {
                    let (k, _) = cache.kv_at(layer, ctx.table, p);
                    let kh = &k[kvh * head_dim..(kvh + 1) * head_dim];
                    let dot: f32 = qh.iter().zip(kh).map(|(a, b)| a * b).sum();
                    *score = dot * scale;
                    max = max.max(*score);
                }
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let oh = &mut out_row[h * head_dim..(h + 1) * head_dim];
                for (p, s) in scores.iter().enumerate() {
                    let (_, v) = cache.kv_at(layer, ctx.table, p);
                    let vh = &v[kvh * head_dim..(kvh + 1) * head_dim];
                    let w = s / sum;
                    for (o, x) in oh.iter_mut().zip(vh) {
                        *o += w * x;
                    }
                }
            }
        },
    );
    out
}
