//! The host path's rotary position embeddings and causal attention over each sequence's KV
//! blocks (the kernels crate's CPU paged attention), on plain row-major f32 buffers, one
//! token row at a time: a row's result depends only on its own sequence, so the batch
//! around it cannot change a single bit.

use openledger_kernels::{paged_decode_attention_host, DecodeBlocks, HeadShape};
use openledger_model::{ModelConfig, RopeStyle};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::kv_cache::{HostLayer, KvCache};
use crate::step::SeqChunk;

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

    /// Rotates every head of `rows` (`[n][heads * head_dim]`); row `i` is at `positions[i]`.
    /// Each pair is `(x0 c - x1 s, x0 s + x1 c)`, two products and a sum each, unfused: the
    /// loops are written over disjoint slices (the two halves; the pairs) so that they compile
    /// to vector instructions with the same arithmetic per element as the scalar formula.
    /// Fewer than [`ROPE_PARALLEL_ROWS`] rows are rotated on the calling thread: handing them
    /// to the pool cost more than the work (a one-off timing on the build machine, not kept:
    /// 72 rows of 9 heads of 64, ~36 us through rayon against ~8 us on one thread).
    pub(crate) fn apply(&self, rows: &mut [f32], positions: &[usize], heads: usize) {
        let width = heads * 2 * self.half;
        if positions.len() < ROPE_PARALLEL_ROWS {
            for (row, &pos) in rows.chunks_mut(width).zip(positions) {
                self.rotate_row(row, pos);
            }
        } else {
            rows.par_chunks_mut(width)
                .zip(positions.par_iter())
                .with_min_len(ROPE_PARALLEL_ROWS / 4)
                .for_each(|(row, &pos)| self.rotate_row(row, pos));
        }
    }

    /// Rotates every head of one row at position `pos`.
    fn rotate_row(&self, row: &mut [f32], pos: usize) {
        let (c, s) = (&self.cos[pos * self.half..], &self.sin[pos * self.half..]);
        let (c, s) = (&c[..self.half], &s[..self.half]);
        for head in row.chunks_exact_mut(2 * self.half) {
            match self.style {
                RopeStyle::Half => {
                    let (lo, hi) = head.split_at_mut(self.half);
                    for (((x0, x1), &c), &s) in lo.iter_mut().zip(hi).zip(c).zip(s) {
                        let (a, b) = (*x0, *x1);
                        *x0 = a * c - b * s;
                        *x1 = a * s + b * c;
                    }
                },
                RopeStyle::Interleaved => {
                    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(c).zip(s) {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * c - b * s;
                        pair[1] = a * s + b * c;
                    }
                },
            }
        }
    }
}

/// Rows from which [`Rope::apply`] spreads the rotation over the thread pool.
const ROPE_PARALLEL_ROWS: usize = 256;

/// A step's attention on the host path, planned once and run for every layer: each token row
/// is one query of the kernels crate's CPU paged attention whose context is its sequence's
/// positions `0..=pos`, so prefill and decode rows go through the same function (causal by
/// construction) and a row's result depends only on its own sequence.
pub(crate) struct HostAttention {
    blocks: DecodeBlocks,
    heads: HeadShape,
    scale: f32,
}

impl HostAttention {
    /// The plan for `chunks`, whose blocks are already reserved in `cache`.
    pub(crate) fn new(chunks: &[SeqChunk<'_>], cache: &KvCache, cfg: &ModelConfig) -> Result<Self> {
        // One query row per token; its context is its sequence's positions up to its own.
        let (mut tables, mut lens) = (Vec::new(), Vec::new());
        for c in chunks {
            let end = c.start + c.tokens.len();
            let table = &c.table.blocks[..cache.blocks_for(end)];
            for p in c.start..end {
                tables.push(table);
                lens.push(p as u32 + 1);
            }
        }
        let blocks =
            DecodeBlocks::from_tables(&tables, lens, cache.config().block_size, cfg.max_position)?;
        Ok(Self {
            blocks,
            heads: HeadShape {
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
            },
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        })
    }

    /// Causal attention of `q` (`[rows][num_heads * head_dim]`) over `layer`'s cache, whose
    /// keys and values of these rows are already written; returns the same shape.
    pub(crate) fn run(&self, q: &[f32], cache: &KvCache, layer: usize) -> Result<Vec<f32>> {
        let layer_kv = cache.host_layer(layer).ok_or_else(|| {
            EngineError::Backend(format!("the KV cache has no host layer {layer}"))
        })?;
        let mut out = vec![0f32; q.len()];
        let (heads, blocks, scale) = (self.heads, &self.blocks, self.scale);
        match layer_kv {
            HostLayer::F32(k, v) => {
                paged_decode_attention_host(q, k, v, &mut out, heads, blocks, scale)
            },
            HostLayer::F16(k, v) => {
                paged_decode_attention_host(q, k, v, &mut out, heads, blocks, scale)
            },
        }?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rotation element by element, as written before the loops were vectorized.
    fn scalar(rope: &Rope, rows: &mut [f32], positions: &[usize], heads: usize) {
        let hd = 2 * rope.half;
        for (row, &pos) in rows.chunks_mut(heads * hd).zip(positions) {
            let (c, s) = (&rope.cos[pos * rope.half..], &rope.sin[pos * rope.half..]);
            for head in row.chunks_mut(hd) {
                for i in 0..rope.half {
                    let (a, b) = match rope.style {
                        RopeStyle::Half => (i, i + rope.half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c[i] - x1 * s[i];
                    head[b] = x0 * s[i] + x1 * c[i];
                }
            }
        }
    }

    #[test]
    fn rope_rotates_each_pair_with_the_scalar_formulas_bits() {
        let (heads, head_dim, max_position) = (3, 64, 300);
        // Fewer rows than the parallel threshold, and more (positions cycled).
        for n in [5, ROPE_PARALLEL_ROWS + 3] {
            let positions: Vec<usize> =
                [0, 1, 17, 255, 299].iter().cycle().take(n).copied().collect();
            for style in [RopeStyle::Half, RopeStyle::Interleaved] {
                let rope = Rope::new(head_dim, max_position, 10_000.0, style);
                // Values of mixed signs and magnitudes, so that rounding shows.
                let rows: Vec<f32> = (0..positions.len() * heads * head_dim)
                    .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 0.37 / (1 + i % 13) as f32)
                    .collect();
                let (mut want, mut got) = (rows.clone(), rows.clone());
                scalar(&rope, &mut want, &positions, heads);
                rope.apply(&mut got, &positions, heads);
                let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{style:?}: the rotation's bits changed");
                assert_ne!(got, rows, "{style:?}: nothing was rotated");
            }
        }
    }
}
