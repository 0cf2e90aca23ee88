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
