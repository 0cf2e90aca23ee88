//! The Llama-family decoder (Llama 2/3, Mistral-style GQA, SmolLM2), written for batches:
//! every step flattens all sequences' new tokens (prefill chunks and decode tokens alike) to
//! `[total_tokens, hidden]`, runs each base projection once for the whole batch, adds every
//! row's LoRA delta through one SGMV call per projection, and attends per sequence over its
//! KV blocks.
//!
//! Two backends compute the same function, chosen by the device the model is loaded on: the
//! host path below (f32 buffers, quantized matmuls, on the CPU) and the tensor path
//! ([`crate::tensor_model`]: candle tensors, bf16 on a CUDA device). The step's validation
//! and segment maps are shared.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::adapters::{DeltaPlan, LoraSlots};
use crate::attention::{HostAttention, Rope};
use crate::commitment;
use crate::error::{EngineError, Result};
use crate::kv_cache::{KvCache, KvCacheConfig};
use crate::step::{SeqChunk, StepEntries, StepOutput, StepRows, GPU_DTYPE};
use crate::tensor_model::TensorModel;
use crate::weights::{self, forward_group, BaseWeights, Input, Linear};
use openledger_model::{ModelConfig, Projection};

/// The base model: weights, shape and rotary tables.
pub struct Model {
    config: ModelConfig,
    backend: Backend,
    device: Device,
}

/// Where and how the forward pass runs.
enum Backend {
    /// f32 / block-quantized weights in host memory, the CPU path.
    Host { weights: BaseWeights, rope: Rope },
    /// Candle tensors on a device (bf16 on CUDA).
    Tensor(TensorModel),
}

impl Model {
    /// The host-path model over `weights`.
    pub(crate) fn new(config: ModelConfig, weights: BaseWeights, device: Device) -> Self {
        let rope =
            Rope::new(config.head_dim, config.max_position, config.rope_theta, config.rope_style);
        Self { config, backend: Backend::Host { weights, rope }, device }
    }

    /// Host weights on the CPU, or dequantized to [`GPU_DTYPE`] on another device (GGUF on
    /// a GPU).
    pub(crate) fn from_host_weights(
        config: ModelConfig,
        weights: BaseWeights,
        device: &Device,
    ) -> Result<Self> {
        if device.is_cpu() {
            return Ok(Self::new(config, weights, Device::Cpu));
        }
        let t = TensorModel::from_host(&config, &weights, device, GPU_DTYPE)?;
        Ok(Self { config, backend: Backend::Tensor(t), device: device.clone() })
    }

    /// Loads a Hugging Face checkpoint directory (`config.json` + `*.safetensors`): as f32
    /// for the host path on the CPU, as [`GPU_DTYPE`] tensors on any other device.
    pub fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        if !device.is_cpu() {
            return Self::load_hf_tensors(dir, device, GPU_DTYPE);
        }
        let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
        let weights = weights::load_hf(&config, dir, device)?;
        Ok(Self::new(config, weights, device.clone()))
    }

    /// Loads a Hugging Face checkpoint for the tensor path on `device` as `dtype` (on the
    /// CPU in f32 this is how tests check the GPU code against the host path).
    pub fn load_hf_tensors(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
        let t = TensorModel::load_hf(&config, dir, device, dtype)?;
        Ok(Self { config, backend: Backend::Tensor(t), device: device.clone() })
    }

    /// A model of shape `config` with random weights generated on `device` as `dtype`
    /// (tensor path; for benchmarks).
    pub fn random_tensors(
        config: ModelConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        config.validate().map_err(|m| EngineError::config("<random model>", m))?;
        let t = TensorModel::random(&config, device, dtype, seed)?;
        Ok(Self { config, backend: Backend::Tensor(t), device: device.clone() })
    }

    /// The same model on the tensor path, on `device` as `dtype`, its host weights
    /// dequantized: how a GGUF model runs on a GPU, and (on the CPU in f32) how tests check
    /// that path against the host path.
    pub fn to_tensors(&self, device: &Device, dtype: DType) -> Result<Self> {
        let Backend::Host { weights, .. } = &self.backend else {
            return Err(EngineError::Backend("the model is already on the tensor path".into()));
        };
        let t = TensorModel::from_host(&self.config, weights, device, dtype)?;
        Ok(Self {
            config: self.config.clone(),
            backend: Backend::Tensor(t),
            device: device.clone(),
        })
    }

    /// Whether this is a host-path model with block-quantized projections (a GGUF model as
    /// loaded), whose KV cache is kept in f16 ([`KvCache::for_model`]).
    pub fn is_block_quantized(&self) -> bool {
        match &self.backend {
            Backend::Host { weights, .. } => weights
                .layers
                .iter()
                .flat_map(|l| &l.proj)
                .any(|p| !matches!(p, crate::weights::Linear::Dense(_))),
            Backend::Tensor(_) => false,
        }
    }

    /// The numeric format this model computes in, which selects the tolerance a
    /// verification on it is judged by ([`commitment::Tolerance::for_format`]).
    pub fn numeric_format(&self) -> commitment::NumericFormat {
        match &self.backend {
            // Block-quantized weights on the packed integer kernels: one kernel path.
            Backend::Host { .. }
                if self.is_block_quantized()
                    && openledger_kernels::options::simd()
                        >= openledger_kernels::options::SimdLevel::Avx512Vnni =>
            {
                commitment::NumericFormat::HostVnni
            },
            Backend::Host { .. } => commitment::NumericFormat::Host,
            // The tensor path in f32 (tests on the CPU) has no fitted bounds of its own; bf16's
            // are the looser.
            Backend::Tensor(_) => commitment::NumericFormat::CudaBf16,
        }
    }

    /// The activations' dtype of the tensor path; `None` for the host path.
    pub fn tensor_dtype(&self) -> Option<DType> {
        match &self.backend {
            Backend::Host { .. } => None,
            Backend::Tensor(t) => Some(t.dtype()),
        }
    }

    /// Bytes of base weights a forward step reads (tensor path; `None` on the host path).
    pub fn weight_bytes_per_step(&self) -> Option<usize> {
        match &self.backend {
            Backend::Host { .. } => None,
            Backend::Tensor(t) => Some(t.weight_bytes_per_step()),
        }
    }

    /// Bytes of base weights held on the device (tensor path; `None` on the host path).
    pub fn weight_bytes(&self) -> Option<usize> {
        match &self.backend {
            Backend::Host { .. } => None,
            Backend::Tensor(t) => Some(t.weight_bytes()),
        }
    }

    /// The same model with every projection in f32 (dequantized): the reference the
    /// quantized paths are checked against (host path only).
    pub fn f32_reference(&self) -> Result<Self> {
        let Backend::Host { weights: w, .. } = &self.backend else {
            return Err(EngineError::Backend(
                "f32_reference is for the host path; load the model on the CPU".into(),
            ));
        };
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(weights::LayerWeights {
                    attn_norm: l.attn_norm.clone(),
                    ffn_norm: l.ffn_norm.clone(),
                    proj: l.proj.iter().map(|p| p.dequantized()).collect::<Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?;
        let weights = BaseWeights {
            embed: w.embed.clone(),
            layers,
            norm: w.norm.clone(),
            lm_head: w.lm_head.dequantized()?,
        };
        Ok(Self::new(self.config.clone(), weights, self.device.clone()))
    }

    /// The same model without its last `n` layers (host path): what a worker cutting
    /// corners would serve, for the verifier's tests and benchmarks.
    #[doc(hidden)]
    pub fn without_last_layers(&self, n: usize) -> Result<Self> {
        let Backend::Host { weights: w, .. } = &self.backend else {
            return Err(EngineError::Backend("without_last_layers is for the host path".into()));
        };
        let keep = w.layers.len().checked_sub(n).filter(|&k| k > 0).ok_or_else(|| {
            EngineError::Backend(format!("cannot drop {n} of {} layers", w.layers.len()))
        })?;
        let weights = BaseWeights {
            embed: w.embed.clone(),
            layers: w.layers[..keep].to_vec(),
            norm: w.norm.clone(),
            lm_head: w.lm_head.clone(),
        };
        let config = ModelConfig { num_layers: keep, ..self.config.clone() };
        Ok(Self::new(config, weights, self.device.clone()))
    }

    /// The same model with every projection dequantized and quantized again as `dtype` (a
    /// GGUF block format; host path): a model served in another numeric format than the one
    /// registered, for the verifier's tests and benchmarks.
    #[doc(hidden)]
    pub fn requantized(&self, dtype: candle_core::quantized::GgmlDType) -> Result<Self> {
        self.rebuilt(dtype, |_, w| Ok(w))
    }

    /// Another base model of the same shape: every projection's weights moved by uniform
    /// noise of standard deviation `relative` x the matrix's RMS (seeded), quantized as
    /// `dtype` (host path): what a worker serving a different checkpoint under the
    /// registered model's name would run, for the verifier's tests and benchmarks.
    #[doc(hidden)]
    pub fn perturbed(
        &self,
        relative: f32,
        seed: u64,
        dtype: candle_core::quantized::GgmlDType,
    ) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        self.rebuilt(dtype, |i, w| {
            let rms = (w.sqr()?.mean_all()?.to_scalar::<f32>()?).sqrt();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(i as u64));
            // Uniform on [-a, a] has standard deviation a / sqrt(3).
            let a = relative * rms * 3f32.sqrt();
            let noise: Vec<f32> = (0..w.elem_count()).map(|_| rng.random_range(-a..=a)).collect();
            Ok((w.clone() + Tensor::from_vec(noise, w.dims(), &Device::Cpu)?)?)
        })
    }

    /// The host-path model with each projection (numbered in layer order) dequantized,
    /// passed through `f` and quantized as `dtype`.
    fn rebuilt(
        &self,
        dtype: candle_core::quantized::GgmlDType,
        f: impl Fn(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let Backend::Host { weights: w, .. } = &self.backend else {
            return Err(EngineError::Backend("rebuilding weights is for the host path".into()));
        };
        let convert = |i: usize, l: &Linear| -> Result<Linear> {
            let Linear::Dense(d) = l.dequantized()? else {
                return Err(EngineError::Backend("dequantizing gave no dense matrix".into()));
            };
            let t = f(i, d.to_tensor()?)?;
            let q = candle_core::quantized::QTensor::quantize(&t, dtype)?;
            Linear::from_qtensor(std::sync::Arc::new(q))
        };
        let per_layer = w.layers.first().map_or(0, |l| l.proj.len());
        let layers = w
            .layers
            .iter()
            .enumerate()
            .map(|(n, l)| {
                Ok(weights::LayerWeights {
                    attn_norm: l.attn_norm.clone(),
                    ffn_norm: l.ffn_norm.clone(),
                    proj: l
                        .proj
                        .iter()
                        .enumerate()
                        .map(|(j, p)| convert(n * per_layer + j, p))
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?;
        let weights = BaseWeights {
            embed: w.embed.clone(),
            layers,
            norm: w.norm.clone(),
            lm_head: w.lm_head.clone(),
        };
        Ok(Self::new(self.config.clone(), weights, self.device.clone()))
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The logits of final-norm rows (a [`StepOutput::hidden`]), `[rows, vocab]` f32: the
    /// LM head as a step applies it to a chunk's last row, so a row gives the logits it gave
    /// there (bit for bit on the host path, whose LM head is row-independent).
    pub fn logits_of(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.backend {
            Backend::Tensor(t) => t.logits_of(hidden),
            Backend::Host { weights, .. } => {
                let (n, width) = hidden.dims2()?;
                let rows: Vec<f32> = hidden.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let logits = weights.lm_head.forward_input(&mut Input::new(&rows, n))?;
                if n > 0 && logits.len() != n * self.config.vocab_size {
                    return Err(EngineError::Backend(format!(
                        "the LM head gave {} values for {n} rows of {width}",
                        logits.len()
                    )));
                }
                Ok(Tensor::from_vec(logits, (n, self.config.vocab_size), &self.device)?)
            },
        }
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
        Ok(self.forward_step(chunks, cache, lora, &[], &[])?.logits)
    }

    /// [`Model::forward`], with decode steps replayed from CUDA graphs where they can be:
    /// on a CUDA device (a `cuda` build), a step of one-token chunks without adapters is
    /// padded up to its batch-size bucket (1, 2, 4, 8, 16, 24, 32, 48, 64, ... 256; the
    /// padding rows write only the cache's padding block, which this takes from the free
    /// blocks once, and their results are dropped), captured once per bucket and replayed
    /// after; any other step, and every step elsewhere, runs as [`Model::forward`] runs it.
    /// A graph reads the cache it was captured with: steps on another cache capture their
    /// own.
    pub fn forward_graphed(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut KvCache,
        lora: &LoraSlots,
    ) -> Result<Tensor> {
        Ok(self.forward_rows(chunks, cache, lora, StepRows::default(), true)?.logits)
    }

    /// Decode steps held as CUDA graphs (one per batch-size bucket and cache; 0 without
    /// `cuda`, or on the host path).
    pub fn decode_graphs(&self) -> usize {
        match &self.backend {
            #[cfg(feature = "cuda")]
            Backend::Tensor(t) => t.graphs().lock().map_or(0, |g| g.len()),
            _ => 0,
        }
    }

    /// [`Self::forward`], also returning the final norm's output (the rows the LM head
    /// reads) at `hidden_rows`, indices into the step's rows (the chunks' tokens one after
    /// another), as `[hidden_rows, hidden]` (what a verifier compares with a commitment),
    /// and the activation commitment's entries ([`crate::commitment`]) of the rows at
    /// `commit_rows`, computed where the rows are: on a CUDA device by a kernel, only
    /// [`crate::commitment::TOP_K`] words a row crossing to the host, copied behind the step
    /// without waiting for it ([`StepEntries`]).
    pub fn forward_step(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut KvCache,
        lora: &LoraSlots,
        hidden_rows: &[u32],
        commit_rows: &[u32],
    ) -> Result<StepOutput> {
        let rows = StepRows { hidden: hidden_rows, commit: commit_rows, ..StepRows::default() };
        self.forward_rows(chunks, cache, lora, rows, false)
    }

    /// [`Self::forward_step`], with decode steps replayed from CUDA graphs where they can
    /// be, as [`Self::forward_graphed`] does.
    pub fn forward_step_graphed(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut KvCache,
        lora: &LoraSlots,
        hidden_rows: &[u32],
        commit_rows: &[u32],
    ) -> Result<StepOutput> {
        let rows = StepRows { hidden: hidden_rows, commit: commit_rows, ..StepRows::default() };
        self.forward_rows(chunks, cache, lora, rows, true)
    }

    /// [`Self::forward_step`] (with `graphs`, [`Self::forward_step_graphed`]) asked for the
    /// rows of [`StepRows`]: final-norm rows and their commitment entries, and the adapter
    /// deltas of adapted rows at the commitment's layer ([`commitment::delta_layer`]) and
    /// their entries, computed apart from the step's own LoRA (which they do not change), on
    /// each row's own input.
    pub fn forward_rows(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut KvCache,
        lora: &LoraSlots,
        rows: StepRows<'_>,
        graphs: bool,
    ) -> Result<StepOutput> {
        self.forward_rows_from(chunks, cache, lora, rows, graphs, None)?
            .ok_or_else(|| EngineError::Backend("a step without its tokens".into()))
    }

    /// A decode step whose one-token chunks take their tokens from `tokens` (`[chunks]`
    /// u32, where the previous step left its picks: the chunks' own tokens are not read),
    /// launched before the host has read them. On a CUDA device only a step a captured
    /// graph replays takes them (the ids are copied on the device into the graph's input
    /// ahead of the replay); `None` when none does, and nothing was launched. Elsewhere the
    /// tokens are read to the host and the step runs as [`Self::forward_rows`] runs it.
    pub(crate) fn forward_following(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut KvCache,
        lora: &LoraSlots,
        rows: StepRows<'_>,
        tokens: &Tensor,
    ) -> Result<Option<StepOutput>> {
        if tokens.dims() != [chunks.len()] || chunks.iter().any(|c| c.tokens.len() != 1) {
            return Err(EngineError::Backend(format!(
                "a following step of {} one-token chunks given tokens of shape {:?}",
                chunks.len(),
                tokens.dims()
            )));
        }
        if tokens.device().is_cuda() {
            return self.forward_rows_from(chunks, cache, lora, rows, true, Some(tokens));
        }
        let host = tokens.to_vec1::<u32>()?;
        let chunks: Vec<SeqChunk<'_>> =
            chunks.iter().zip(host.chunks(1)).map(|(c, t)| SeqChunk { tokens: t, ..*c }).collect();
        let graphs = openledger_kernels::options::options().cuda_graphs;
        self.forward_rows_from(&chunks, cache, lora, rows, graphs, None)
    }

    fn forward_rows_from(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut KvCache,
        lora: &LoraSlots,
        rows: StepRows<'_>,
        graphs: bool,
        device_tokens: Option<&Tensor>,
    ) -> Result<Option<StepOutput>> {
        let StepRows { hidden: hidden_rows, commit: commit_rows, .. } = rows;
        let cfg = &self.config;
        let on_device = cache.device_pool().is_some();
        if on_device != matches!(self.backend, Backend::Tensor(_)) {
            return Err(EngineError::Backend(
                "the KV cache does not match the model's backend: make it with KvCache::for_model"
                    .into(),
            ));
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut last_rows = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            let end = c.start + c.tokens.len();
            if c.tokens.is_empty() || end > cfg.max_position {
                return Err(EngineError::BadChunk {
                    chunk: i,
                    message: format!(
                        "chunk of {} tokens at {} exceeds the model's {} positions",
                        c.tokens.len(),
                        c.start,
                        cfg.max_position
                    ),
                });
            }
            if cache.blocks_to_grow(c.table, end) > 0 {
                return Err(EngineError::OutOfBlocks { total: cache.config().num_blocks });
            }
            if let Some(&t) = c.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(EngineError::BadChunk {
                    chunk: i,
                    message: format!("token id {t} is outside the vocabulary"),
                });
            }
            tokens.extend_from_slice(c.tokens);
            positions.extend(c.start..end);
            last_rows.push((tokens.len() - 1) as u32);
        }
        let delta_asked: Vec<u32> = rows.delta.iter().chain(rows.delta_commit).copied().collect();
        if let Some(&r) = hidden_rows
            .iter()
            .chain(commit_rows)
            .chain(&delta_asked)
            .find(|&&r| r as usize >= tokens.len())
        {
            return Err(EngineError::Backend(format!(
                "hidden row {r} asked of a step of {} rows",
                tokens.len()
            )));
        }
        let adapters: Vec<Option<u32>> = chunks.iter().map(|c| c.adapter).collect();
        let lens: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).collect();
        // Built once per step, shared by every layer.
        let segments = lora.segments(&adapters, &lens)?;
        let delta = if delta_asked.is_empty() {
            DeltaPlan::default()
        } else {
            let mut row_slot = Vec::with_capacity(tokens.len());
            for c in chunks {
                row_slot.extend(std::iter::repeat_n(c.adapter, c.tokens.len()));
            }
            // The tensor path reads the rows in place; the host path gathers them.
            let in_place = matches!(self.backend, Backend::Tensor(_)).then_some(tokens.len());
            lora.delta_plan(
                cfg.num_layers,
                &delta_asked,
                |r| row_slot.get(r as usize).copied().flatten(),
                in_place,
            )?
        };
        let (weights, rope) = match &self.backend {
            Backend::Host { weights, rope } => (weights, rope),
            Backend::Tensor(t) => {
                return t.forward(
                    cfg,
                    chunks,
                    &tokens,
                    &positions,
                    &last_rows,
                    rows,
                    cache,
                    lora,
                    (&segments, &delta),
                    graphs,
                    device_tokens,
                );
            },
        };

        // The hidden state lives in plain row-major buffers: every element-wise step runs on
        // this crate's thread pool, never on a second one competing for the same cores.
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let hidden = cfg.hidden_size;
        let eps = cfg.rms_norm_eps as f32;
        let n = tokens.len();
        let attention = HostAttention::new(chunks, cache, cfg)?;
        let mut x = embed(weights, hidden, &tokens)?;
        let mut h = vec![0f32; n * hidden];
        let mut deltas = vec![Vec::new(); delta.asked];
        for (l, layer) in weights.layers.iter().enumerate() {
            // The committed deltas, apart from the step's own LoRA, on the same inputs.
            let mut take_deltas = |ps: &[Projection], x: &[f32]| -> Result<()> {
                if l == delta.layer && !delta.is_empty() {
                    host_deltas(cfg, lora, &delta, l, ps, x, n, &mut deltas)?;
                }
                Ok(())
            };
            // The base projections of one input in one parallel loop, then each one's LoRA.
            let projs = |ps: &[Projection], input: &mut Input<'_>| -> Result<Vec<Vec<f32>>> {
                let linears: Vec<&Linear> = ps.iter().map(|p| &layer.proj[p.index()]).collect();
                let mut ys = forward_group(&linears, input)?;
                for (&p, y) in ps.iter().zip(ys.iter_mut()) {
                    if let Some(seg) = &segments[p.index()] {
                        lora.apply_host(l, p, input.x, y, seg)?;
                    }
                }
                Ok(ys)
            };
            let proj = |p: Projection, input: &mut Input<'_>| -> Result<Vec<f32>> {
                Ok(projs(&[p], input)?.pop().unwrap_or_default())
            };
            rms_norm(&x, &layer.attn_norm, eps, &mut h);
            take_deltas(&QKV, &h)?;
            let mut h_in = Input::new(&h, n);
            let [mut q, mut k, v]: [Vec<f32>; 3] = projs(&QKV, &mut h_in)?
                .try_into()
                .map_err(|_| EngineError::Backend("q, k, v projections missing".into()))?;
            rope.apply(&mut q, &positions, nh);
            rope.apply(&mut k, &positions, nkv);
            let row = nkv * hd;
            let mut offset = 0;
            for c in chunks {
                let span = offset * row..(offset + c.tokens.len()) * row;
                cache.write(l, c.table, c.start, &k[span.clone()], &v[span]);
                offset += c.tokens.len();
            }
            let attn = attention.run(&q, cache, l)?;
            take_deltas(&[Projection::O], &attn)?;
            add_assign(&mut x, &proj(Projection::O, &mut Input::new(&attn, n))?);

            rms_norm(&x, &layer.ffn_norm, eps, &mut h);
            take_deltas(&[Projection::Gate, Projection::Up], &h)?;
            let mut h_in = Input::new(&h, n);
            let [mut gate, up]: [Vec<f32>; 2] =
                projs(&[Projection::Gate, Projection::Up], &mut h_in)?
                    .try_into()
                    .map_err(|_| EngineError::Backend("gate and up projections missing".into()))?;
            silu_mul(&mut gate, &up);
            take_deltas(&[Projection::Down], &gate)?;
            add_assign(&mut x, &proj(Projection::Down, &mut Input::new(&gate, n))?);
        }
        let mut last = Vec::with_capacity(last_rows.len() * hidden);
        for &r in &last_rows {
            let r = r as usize;
            last.extend_from_slice(&x[r * hidden..(r + 1) * hidden]);
        }
        let mut normed = vec![0f32; last.len()];
        rms_norm(&last, &weights.norm, eps, &mut normed);
        let logits = weights.lm_head.forward_input(&mut Input::new(&normed, last_rows.len()))?;
        let logits = Tensor::from_vec(logits, (last_rows.len(), cfg.vocab_size), &self.device)?;
        // Rows are independent through the norm: the asked rows alone.
        let normed_rows = |asked: &[u32]| {
            let mut rows = Vec::with_capacity(asked.len() * hidden);
            for &r in asked {
                let r = r as usize;
                rows.extend_from_slice(&x[r * hidden..(r + 1) * hidden]);
            }
            let mut out = vec![0f32; rows.len()];
            rms_norm(&rows, &weights.norm, eps, &mut out);
            out
        };
        let hidden_out = normed_rows(hidden_rows);
        let hidden_out = Tensor::from_vec(hidden_out, (hidden_rows.len(), hidden), &self.device)?;
        let committed = normed_rows(commit_rows);
        let entries = StepEntries::of_host_rows(committed.chunks_exact(hidden.max(1)))?;
        let delta_commit = deltas.split_off(rows.delta.len());
        let delta_entries = StepEntries::of_host_rows(delta_commit.iter().map(Vec::as_slice))?;
        Ok(Some(StepOutput { logits, hidden: hidden_out, entries, delta: deltas, delta_entries }))
    }
}

/// The committed LoRA deltas of `plan`'s groups whose projection is one of `ps` (which read
/// `x`, `[n, d_in]`) at layer `l`: each group's rows gathered and run through the adapter
/// tables alone, into `out` at the rows' asked positions.
#[allow(clippy::too_many_arguments)]
fn host_deltas(
    cfg: &ModelConfig,
    lora: &LoraSlots,
    plan: &DeltaPlan,
    l: usize,
    ps: &[Projection],
    x: &[f32],
    n: usize,
    out: &mut [Vec<f32>],
) -> Result<()> {
    let d_in = x.len() / n.max(1);
    for g in plan.groups.iter().filter(|g| ps.contains(&g.proj)) {
        let Some(seg) = &g.segments else { continue };
        let d_out = cfg.proj_dims(g.proj).1;
        let mut xs = Vec::with_capacity(g.rows.len() * d_in);
        for &r in &g.rows {
            let r = r as usize;
            xs.extend_from_slice(&x[r * d_in..(r + 1) * d_in]);
        }
        let mut y = vec![0f32; g.rows.len() * d_out];
        lora.apply_host(l, g.proj, &xs, &mut y, seg)?;
        for (row, &at) in y.chunks_exact(d_out).zip(&g.at) {
            if let Some(o) = out.get_mut(at) {
                *o = row.to_vec();
            }
        }
    }
    Ok(())
}

/// The projections of a layer's attention input, run together.
const QKV: [Projection; 3] = [Projection::Q, Projection::K, Projection::V];

/// Embedding rows of `tokens`, `[n, hidden]`.
fn embed(weights: &BaseWeights, hidden: usize, tokens: &[u32]) -> Result<Vec<f32>> {
    let mut x = vec![0f32; tokens.len() * hidden];
    for (row, &t) in x.chunks_exact_mut(hidden).zip(tokens) {
        weights.embed.row(t as usize, row)?;
    }
    Ok(x)
}

/// Rows at least this many per task in element-wise steps (smaller batches run inline).
const ROWS_PER_TASK: usize = 16;

/// `out[r] = x[r] / rms(x[r]) * w`, row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d).with_min_len(ROWS_PER_TASK).zip(x.par_chunks(d)).for_each(|(o, x)| {
        let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
            *o = x * inv * w;
        }
    });
}

/// `gate = silu(gate) * up`.
fn silu_mul(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| {
        for (g, u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    });
}

/// `x += y`.
fn add_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096).zip(y.par_chunks(4096)).for_each(|(x, y)| {
        for (x, y) in x.iter_mut().zip(y) {
            *x += y;
        }
    });
}

impl KvCache {
    /// A pool where `model` computes: host buffers for the CPU path, device tensors for the
    /// tensor path.
    pub fn for_model(config: KvCacheConfig, model: &Model) -> Result<Self> {
        let c = model.config();
        match model.tensor_dtype() {
            None if model.is_block_quantized() => {
                Ok(Self::new_f16(config, c.num_layers, c.num_kv_heads, c.head_dim))
            },
            None => Ok(Self::new(config, c.num_layers, c.num_kv_heads, c.head_dim)),
            Some(dtype) => Self::on_device(
                config,
                c.num_layers,
                c.num_kv_heads,
                c.head_dim,
                model.device(),
                dtype,
            ),
        }
    }
}
