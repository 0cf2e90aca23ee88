//! The Llama-family decoder (Llama 2/3, Mistral-style GQA, SmolLM2), written for batches:
//! every step flattens all sequences' new tokens (prefill chunks and decode tokens alike) to
//! `[total_tokens, hidden]`, runs each base projection once for the whole batch, adds every
//! row's LoRA delta through one SGMV call per projection, and attends per sequence over its
//! KV blocks.

use std::path::Path;

use candle_core::{Device, Tensor};
use openledger_kernels::BatchSegments;

use super::adapters::LoraSlots;
use super::attention::{attend, Rope, RowContext};
use super::config::{ModelConfig, Projection};
use super::error::{EngineError, Result};
use super::kv_cache::{BlockTable, KvCache};
use super::weights::{self, BaseWeights};

/// One sequence's share of a step: its new tokens, at positions `start..start + tokens.len()`.
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// The sequence's blocks, already reserved for `start + tokens.len()` positions.
    pub table: &'a BlockTable,
    pub start: usize,
    /// Adapter slot ([`LoraSlots`]), or `None` for the base model alone.
    pub adapter: Option<u32>,
}

/// The base model: weights, shape and rotary tables.
pub struct Model {
    config: ModelConfig,
    weights: BaseWeights,
    rope: Rope,
    device: Device,
}

impl Model {
    pub(crate) fn new(config: ModelConfig, weights: BaseWeights, device: Device) -> Self {
        let rope =
            Rope::new(config.head_dim, config.max_position, config.rope_theta, config.rope_style);
        Self { config, weights, rope, device }
    }

    /// Loads a Hugging Face checkpoint directory (`config.json` + `*.safetensors`), as f32.
    pub fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
        let weights = weights::load_hf(&config, dir, device)?;
        Ok(Self::new(config, weights, device.clone()))
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs one step and returns the logits of each chunk's last token, `[chunks, vocab]`.
    ///
    /// Writes the chunks' keys and values into `cache`; the caller then records the new
    /// lengths in the block tables.
    pub fn forward(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut KvCache,
        lora: &LoraSlots,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let mut tokens = Vec::new();
        let mut rows = Vec::new();
        let mut positions = Vec::new();
        let mut last_rows = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            let end = c.start + c.tokens.len();
            if c.tokens.is_empty() || end > self.rope.max_position() {
                return Err(EngineError::BadRequest {
                    request: i as u64,
                    message: format!(
                        "chunk of {} tokens at {} exceeds the model's {} positions",
                        c.tokens.len(),
                        c.start,
                        self.rope.max_position()
                    ),
                });
            }
            if cache.blocks_to_grow(c.table, end) > 0 {
                return Err(EngineError::OutOfBlocks { total: cache.config().num_blocks });
            }
            if let Some(&t) = c.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(EngineError::BadRequest {
                    request: i as u64,
                    message: format!("token id {t} is outside the vocabulary"),
                });
            }
            tokens.extend_from_slice(c.tokens);
            for p in c.start..end {
                rows.push(RowContext { table: c.table, pos: p });
                positions.push(p);
            }
            last_rows.push((tokens.len() - 1) as u32);
        }
        let adapters: Vec<Option<u32>> = chunks.iter().map(|c| c.adapter).collect();
        let lens: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).collect();
        // Built once per step, shared by every layer.
        let segments = lora.segments(&adapters, &lens)?;

        let ids = Tensor::new(tokens.as_slice(), &self.device)?;
        let mut x = self.weights.embed.index_select(&ids, 0)?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let n = tokens.len();
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let proj = |p: Projection, input: &Tensor| -> Result<Tensor> {
                let y = layer.proj[p.index()].forward(input)?;
                if let Some(seg) = &segments[p.index()] {
                    lora.apply(l, p, input, &y, seg)?;
                }
                Ok(y)
            };
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?.contiguous()?;
            let mut q = flat(&proj(Projection::Q, &h)?)?;
            let mut k = flat(&proj(Projection::K, &h)?)?;
            let v = flat(&proj(Projection::V, &h)?)?;
            self.rope.apply(&mut q, &positions, nh);
            self.rope.apply(&mut k, &positions, nkv);
            let row = nkv * hd;
            let mut offset = 0;
            for c in chunks {
                let span = offset * row..(offset + c.tokens.len()) * row;
                cache.write(l, c.table, c.start, &k[span.clone()], &v[span]);
                offset += c.tokens.len();
            }
            let attn = attend(&q, &rows, cache, l, nh, nkv, hd);
            let attn = Tensor::from_vec(attn, (n, nh * hd), &self.device)?;
            x = (x + proj(Projection::O, &attn)?)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?.contiguous()?;
            let gate = proj(Projection::Gate, &h)?;
            let up = proj(Projection::Up, &h)?;
            let act = (candle_nn::ops::silu(&gate)? * up)?.contiguous()?;
            x = (x + proj(Projection::Down, &act)?)?;
        }
        let last = Tensor::new(last_rows.as_slice(), &self.device)?;
        let x = x.index_select(&last, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.weights.norm, eps)?.contiguous()?;
        self.weights.lm_head.forward(&x)
    }
}

/// A contiguous 2-D f32 tensor as a flat vector.
fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Segment maps of a step, one per projection kind (`None` where no adapter in the batch
/// targets it).
pub(crate) type StepSegments = Vec<Option<BatchSegments>>;
