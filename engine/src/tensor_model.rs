//! The decoder on candle tensors: the path a CUDA device runs (bf16 weights and activations,
//! projections as cuBLAS matmuls, LoRA through the kernels crate's CUDA SGMV, decode
//! attention through its paged kernel). The same code runs on the CPU in f32, where the tests
//! check it against the host path ([`crate::model`]) without a GPU.
//!
//! A step is planned once on the host ([`StepPlan`]: token ids, positions, cache slots,
//! which rows decode and which prefill, block tables) and every layer reuses the plan's
//! device tensors. A decode step is bound by the host's launch rate (each candle operation
//! costs ~13 us of host time), so a layer is few launches: q/k/v and gate/up are one GEMM
//! each (weights stacked at load), the kernels crate's fused steps rotate q and k and write
//! k and v to the paged pool in one launch (`rope_store_kv`), take SiLU(gate) x up in one
//! (`silu_mul`), and add each residual together with the RMSNorm that follows it
//! (`add_rms_norm`). One-token chunks attend through the paged decode kernel, longer chunks
//! (prefill) through the kernels crate's fused causal prefill kernel over the same paged
//! blocks (CUDA, bf16 / f16), or elsewhere (and with `OPENLEDGER_PREFILL_ATTENTION=materialized`)
//! gather their sequence's cached positions and attend causally with matmuls and a softmax
//! in f32.

// The graphed decode step is part of the tensor path: it captures and replays this
// module's own step.
#[cfg(feature = "cuda")]
pub(crate) mod decode_graph;

use candle_core::{DType, Device, Tensor};
use openledger_kernels::{
    add_rms_norm, attention::HEAD_DIMS, packed_top2, paged_decode_attention_with,
    paged_prefill_attention, rope_store_kv, silu_mul, to_f32, DecodeBlocks, PrefillBlocks,
    PrefillChunk, QkvHeads, RotaryPairs, RowIndex,
};

use crate::adapters::{DeltaPlan, LoraSlots};
use crate::commitment;
use crate::error::{EngineError, Result};
use crate::kv_cache::{DevicePool, KvCache};
use crate::step::{SeqChunk, StepSegments};
use crate::step::{StepEntries, StepOutput, StepRows};
use crate::weights::{self, BaseWeights, HfLayer};
use openledger_model::{ModelConfig, Projection, RopeStyle};

/// Weights of one decoder layer on the device, projections `[d_out, d_in]`. The projections
/// that read the same input are stacked at load time, so each is one GEMM per layer: q, k
/// and v (their outputs side by side in one `[rows, q + k + v]` tensor), and gate and up.
struct LayerTensors {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    /// `[q_out + k_out + v_out, hidden]`.
    qkv: Tensor,
    o: Tensor,
    /// `[2 * intermediate, hidden]`: gate's rows, then up's.
    gate_up: Tensor,
    down: Tensor,
}

impl LayerTensors {
    /// Stacks a checkpoint layer's projections (the separate matrices are dropped).
    fn stack(layer: HfLayer<Tensor>) -> Result<Self> {
        let HfLayer { attn_norm, ffn_norm, proj } = layer;
        let p = |q: Projection| &proj[q.index()];
        let qkv = Tensor::cat(&[p(Projection::Q), p(Projection::K), p(Projection::V)], 0)?;
        let gate_up = Tensor::cat(&[p(Projection::Gate), p(Projection::Up)], 0)?;
        let (o, down) = (p(Projection::O).clone(), p(Projection::Down).clone());
        Ok(Self { attn_norm, ffn_norm, qkv, o, gate_up, down })
    }

    fn tensors(&self) -> [&Tensor; 6] {
        [&self.attn_norm, &self.ffn_norm, &self.qkv, &self.o, &self.gate_up, &self.down]
    }
}

/// The base model on a device.
pub(crate) struct TensorModel {
    /// `[vocab, hidden]`.
    embed: Tensor,
    layers: Vec<LayerTensors>,
    norm: Tensor,
    /// `[vocab, hidden]` (the embedding itself when the model ties them).
    lm_head: Tensor,
    tied: bool,
    /// `[max_position, head_dim / 2]` in the activations' dtype.
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
    /// Decode steps captured as CUDA graphs, one per batch size (`decode_graph.rs`).
    #[cfg(feature = "cuda")]
    graphs: std::sync::Mutex<decode_graph::DecodeGraphs>,
}

impl TensorModel {
    /// The host weights (f32 or block-quantized, e.g. from GGUF) dequantized and moved to
    /// `device` as `dtype`, one matrix at a time.
    pub(crate) fn from_host(
        cfg: &ModelConfig,
        w: &BaseWeights,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let put = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_device(device)?) };
        let vector =
            |v: &[f32]| -> Result<Tensor> { put(Tensor::from_slice(v, v.len(), &Device::Cpu)?) };
        let embed = put(w.embed.to_tensor()?)?;
        let tied = w.embed.shares(&w.lm_head);
        let lm_head = if tied { embed.clone() } else { put(w.lm_head.to_tensor()?)? };
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(LayerTensors::stack(HfLayer {
                attn_norm: vector(&l.attn_norm)?,
                ffn_norm: vector(&l.ffn_norm)?,
                proj: l.proj.iter().map(|p| put(p.to_tensor()?)).collect::<Result<_>>()?,
            })?);
        }
        Self::assemble(cfg, embed, layers, vector(&w.norm)?, (lm_head, tied), device, dtype)
    }

    /// Loads a Hugging Face checkpoint directly onto `device` as `dtype`.
    pub(crate) fn load_hf(
        cfg: &ModelConfig,
        dir: &std::path::Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let st = weights::open_hf(dir)?;
        let hf = weights::read_hf(cfg, &st, |name, shape| st.get_as(name, shape, device, dtype))?;
        let lm_head = match hf.lm_head {
            Some(t) => (t, false),
            None => (hf.embed.clone(), true),
        };
        let (embed, norm) = (hf.embed, hf.norm);
        let layers = hf.layers.into_iter().map(LayerTensors::stack).collect::<Result<_>>()?;
        Self::assemble(cfg, embed, layers, norm, lm_head, device, dtype)
    }

    /// Random weights generated on `device` (benchmarks): normal with standard deviation
    /// 0.02 (Llama's initializer range), norms at one.
    pub(crate) fn random(
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        // The CPU generator cannot be seeded; CPU runs of this (tests) are not reproducible.
        if !device.is_cpu() {
            device.set_seed(seed)?;
        }
        let randn = |shape: (usize, usize)| -> Result<Tensor> {
            Ok(Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)?)
        };
        let h = cfg.hidden_size;
        let ones = || -> Result<Tensor> { Ok(Tensor::ones(h, dtype, device)?) };
        let embed = randn((cfg.vocab_size, h))?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            let proj = Projection::ALL
                .iter()
                .map(|&p| {
                    let (d_in, d_out) = cfg.proj_dims(p);
                    randn((d_out, d_in))
                })
                .collect::<Result<_>>()?;
            layers.push(LayerTensors::stack(HfLayer {
                attn_norm: ones()?,
                ffn_norm: ones()?,
                proj,
            })?);
        }
        let lm_head = if cfg.tie_word_embeddings {
            (embed.clone(), true)
        } else {
            (randn((cfg.vocab_size, h))?, false)
        };
        Self::assemble(cfg, embed, layers, ones()?, lm_head, device, dtype)
    }

    fn assemble(
        cfg: &ModelConfig,
        embed: Tensor,
        layers: Vec<LayerTensors>,
        norm: Tensor,
        (lm_head, tied): (Tensor, bool),
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        single_stream(device);
        let half = cfg.head_dim / 2;
        let mut cos = Vec::with_capacity(cfg.max_position * half);
        let mut sin = Vec::with_capacity(cfg.max_position * half);
        for pos in 0..cfg.max_position {
            for i in 0..half {
                let freq = 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / cfg.head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (cfg.max_position, half), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?)
        };
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            tied,
            cos: table(cos)?,
            sin: table(sin)?,
            dtype,
            device: device.clone(),
            #[cfg(feature = "cuda")]
            graphs: Default::default(),
        })
    }

    /// Element type of weights, activations and the KV pool.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    #[cfg(feature = "cuda")]
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn graphs(&self) -> &std::sync::Mutex<decode_graph::DecodeGraphs> {
        &self.graphs
    }

    /// Bytes of base weights one forward step reads (every projection, the norms, and the
    /// LM head; embedding rows are gathered, not read whole).
    pub(crate) fn weight_bytes_per_step(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let layers: usize =
            self.layers.iter().map(|l| l.tensors().into_iter().map(bytes).sum::<usize>()).sum();
        layers + bytes(&self.norm) + bytes(&self.lm_head)
    }

    /// Bytes of every weight held on the device (the embedding counted once when tied).
    pub(crate) fn weight_bytes(&self) -> usize {
        let embed = self.embed.elem_count() * self.dtype.size_in_bytes();
        self.weight_bytes_per_step() + if self.tied { 0 } else { embed }
    }

    /// One step: returns the f32 logits of each chunk's last token, `[chunks, vocab]`, the
    /// final-norm rows at `hidden_rows` (`[hidden_rows, hidden]`, the model's dtype), and the
    /// commitment entries of the final-norm rows at `commit_rows` ([`Self::commit_entries`]).
    /// `positions` and `last_rows` are those [`crate::model::Model::forward`] computed.
    /// With `graphs` (CUDA builds), a step of one-token chunks without adapters replays a
    /// CUDA graph of the step captured for its batch-size bucket ([`graph_bucket`], padded
    /// with rows whose results are dropped; `decode_graph.rs`); the same launches, so the
    /// same logits and rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        cfg: &ModelConfig,
        chunks: &[SeqChunk<'_>],
        tokens: &[u32],
        positions: &[usize],
        last_rows: &[u32],
        rows: StepRows<'_>,
        cache: &mut KvCache,
        lora: &LoraSlots,
        (segments, delta): (&StepSegments, &DeltaPlan),
        graphs: bool,
        device_tokens: Option<&Tensor>,
    ) -> Result<Option<StepOutput>> {
        let StepRows { hidden: hidden_rows, commit: commit_rows, .. } = rows;
        // A graphed step also gives the asked final-norm rows and commitment entries: the
        // graph keeps every row through the final norm and computes every row's entries,
        // gathered after the replay (`decode_graph::forward`), so commitments do not send
        // decode steps down the eager path.
        #[cfg(feature = "cuda")]
        if graphs
            && rows.delta.is_empty()
            && decode_graph::applies(self, cfg, chunks, cache, segments)
        {
            // A graph holds no wait on the upload stream's events: every wait still owed to
            // an adapter's copy is issued before it.
            lora.order_all()?;
            if let Some(out) = decode_graph::forward(
                self,
                cfg,
                chunks,
                (hidden_rows, commit_rows),
                cache,
                lora,
                (segments, delta),
                device_tokens,
            )? {
                return Ok(Some(out));
            }
        }
        #[cfg(not(feature = "cuda"))]
        let _ = graphs;
        // Tokens still on the device are taken only by a graph's replay.
        if device_tokens.is_some() {
            return Ok(None);
        }
        let pool = self.check_pool(cfg, cache)?;
        let plan = StepPlan::new(self, cfg, chunks, tokens, positions, last_rows, cache, None)?;
        let (logits, h, deltas) =
            self.forward_planned_deltas(cfg, &plan, pool, lora, segments, delta)?;
        let hidden =
            if hidden_rows.is_empty() { self.no_rows(cfg)? } else { select_rows(&h, hidden_rows)? };
        let entries = if commit_rows.is_empty() {
            StepEntries::none()
        } else {
            self.commit_entries(&select_rows(&h, commit_rows)?)?
        };
        // Each group's delta rows (its launch's output holds every step row, the group's
        // rows at their own indices): the verifier's whole (f32 on the host), the
        // generator's as commitment entries (on a GPU only those cross to the host).
        let whole = rows.delta.len();
        let mut delta_rows = vec![Vec::new(); whole];
        let mut parts = Vec::new();
        for (g, d) in delta.groups.iter().zip(&deltas) {
            let (mut keep, mut keep_at, mut commit, mut commit_at) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (&row, &at) in g.rows.iter().zip(&g.at) {
                if at < whole {
                    keep.push(row);
                    keep_at.push(at);
                } else {
                    commit.push(row);
                    commit_at.push(at - whole);
                }
            }
            if !keep.is_empty() {
                let host = select_rows(d, &keep)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                for (row, at) in host.into_iter().zip(keep_at) {
                    delta_rows[at] = row;
                }
            }
            if !commit.is_empty() {
                parts.push((self.commit_entries(&select_rows(d, &commit)?)?, commit_at));
            }
        }
        let delta_entries =
            if parts.is_empty() { StepEntries::none() } else { StepEntries::parts(parts) };
        Ok(Some(StepOutput { logits, hidden, entries, delta: delta_rows, delta_entries }))
    }

    /// The activation-commitment entries of final-norm rows (`[rows, hidden]`, the model's
    /// dtype): on a CUDA device computed there (`openledger_kernels::packed_top2`, the
    /// encoding of [`commitment::row_words`]) with their copy to the host queued behind them;
    /// elsewhere the rows are encoded on the host.
    pub(crate) fn commit_entries(&self, rows: &Tensor) -> Result<StepEntries> {
        let (n, width) = rows.dims2()?;
        if width > commitment::MAX_DIMS {
            return Err(commitment::too_wide(width));
        }
        if n == 0 {
            return Ok(StepEntries::none());
        }
        if rows.device().is_cuda() && width >= commitment::TOP_K {
            let words = packed_top2(&rows.contiguous()?, commitment::DIM_BITS)?;
            return StepEntries::copying(&words);
        }
        let host = rows.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        StepEntries::of_host_rows(host.iter().map(Vec::as_slice))
    }

    /// No final-norm rows: `[0, hidden]` in the model's dtype.
    pub(crate) fn no_rows(&self, cfg: &ModelConfig) -> Result<Tensor> {
        Ok(Tensor::zeros((0, cfg.hidden_size), self.dtype, &self.device)?)
    }

    /// The cache's device pool, checked against this model's layers, width and dtype.
    pub(crate) fn check_pool<'c>(
        &self,
        cfg: &ModelConfig,
        cache: &'c KvCache,
    ) -> Result<&'c DevicePool> {
        let pool = cache.device_pool().ok_or_else(|| wrong_cache(&self.device))?;
        let (nkv, hd) = (cfg.num_kv_heads, cfg.head_dim);
        let fits = |t: &Tensor| t.dims().get(1) == Some(&(nkv * hd)) && t.dtype() == self.dtype;
        if pool.keys.len() != self.layers.len()
            || pool.values.len() != self.layers.len()
            || !pool.keys.iter().chain(&pool.values).all(fits)
        {
            return Err(EngineError::Backend(format!(
                "the KV cache was made for another model (this one needs {} layers of {} x {:?} \
                 per position): make it with KvCache::for_model",
                self.layers.len(),
                nkv * hd,
                self.dtype
            )));
        }
        Ok(pool)
    }

    /// The step's device work after planning: every launch reads the plan's device tensors,
    /// never the host (so it can be captured in a CUDA graph and replayed). Returns the
    /// logits of the plan's last rows, every row through the final norm (`[rows, hidden]`,
    /// the model's dtype), what activation commitments read, and `delta`'s LoRA deltas
    /// computed apart (one `[rows, d_out]` tensor per group, in the model's dtype, every
    /// step row): the projection's input run through SGMV into zeros on the group's
    /// segments (its rows on their adapters, no other), beside the step's own.
    pub(crate) fn forward_planned_deltas(
        &self,
        cfg: &ModelConfig,
        plan: &StepPlan,
        pool: &DevicePool,
        lora: &LoraSlots,
        segments: &StepSegments,
        delta: &DeltaPlan,
    ) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let heads = QkvHeads { heads: nh, kv_heads: nkv, head_dim: hd };
        let pairs = match plan.rope_style {
            RopeStyle::Half => RotaryPairs::Halves,
            RopeStyle::Interleaved => RotaryPairs::Adjacent,
        };
        // By group, whatever order the layer reaches the groups' projections in.
        let deltas = std::cell::RefCell::new(vec![None; delta.groups.len()]);
        // LoRA deltas of the stacked projections go into their columns of the one output.
        let lora_into = |l: usize, stack: &[Projection], input: &Tensor, y: &Tensor| {
            // The adapted projections of the stack: one SGMV launch for them all where the
            // kernel takes them (q, k and v; gate and up), each into its columns in place.
            let mut parts = Vec::with_capacity(stack.len());
            let mut offset = 0;
            for &p in stack {
                if let Some(seg) = &segments[p.index()] {
                    parts.push((p, offset, seg));
                }
                offset += cfg.proj_dims(p).1;
            }
            match parts.as_slice() {
                [] => {},
                // SGMV takes rows further apart than its d_out: the columns in place.
                &[(p, at, seg)] => {
                    lora.apply(l, p, input, &y.narrow(1, at, cfg.proj_dims(p).1)?, seg)?
                },
                _ => lora.apply_stacked(l, &parts, input, y)?,
            }
            for &p in stack {
                let width = cfg.proj_dims(p).1;
                if l != delta.layer {
                    continue;
                }
                // Every row of the input, in place: the group's rows are the segments' only
                // ones, the others stay zero (no gather, no host upload: it can be captured).
                for (k, g) in delta.groups.iter().enumerate().filter(|(_, g)| g.proj == p) {
                    let Some(seg) = &g.segments else { continue };
                    let out = Tensor::zeros((input.dim(0)?, width), y.dtype(), y.device())?;
                    lora.apply(l, p, input, &out, seg)?;
                    deltas.borrow_mut()[k] = Some(out);
                }
            }
            Result::Ok(())
        };
        let cos = self.cos.index_select(&plan.pos, 0)?;
        let sin = self.sin.index_select(&plan.pos, 0)?;
        let mut x = self.embed.index_select(&plan.ids, 0)?;
        let first_norm = self.layers.first().map_or(&self.norm, |l| &l.attn_norm);
        let mut h = candle_nn::ops::rms_norm(&x, first_norm, eps)?;
        for (l, layer) in self.layers.iter().enumerate() {
            // An adapter copied in runs of layers: this layer's run has arrived.
            lora.order_layer(l)?;
            let qkv = h.matmul(&layer.qkv.t()?)?;
            lora_into(l, &[Projection::Q, Projection::K, Projection::V], &h, &qkv)?;
            let (keys, values) = (&pool.keys[l], &pool.values[l]);
            let q = rope_store_kv(&qkv, &cos, &sin, pairs, heads, &plan.kv_slots, keys, values)?;
            let attn = self.attend(cfg, l, &q, pool, plan)?;
            let o = attn.matmul(&layer.o.t()?)?;
            lora_into(l, &[Projection::O], &attn, &o)?;
            (x, h) = add_rms_norm(&x, &o, &layer.ffn_norm, eps)?;

            let gate_up = h.matmul(&layer.gate_up.t()?)?;
            lora_into(l, &[Projection::Gate, Projection::Up], &h, &gate_up)?;
            let act = silu_mul(&gate_up)?;
            let down = act.matmul(&layer.down.t()?)?;
            lora_into(l, &[Projection::Down], &act, &down)?;
            // The residual add fused with the next norm: the next layer's, or the final one.
            let next_norm = self.layers.get(l + 1).map_or(&self.norm, |next| &next.attn_norm);
            (x, h) = add_rms_norm(&x, &down, next_norm, eps)?;
        }
        lora.order_all()?;
        // `h` is now every row through the final norm (rows are independent); the logits
        // need the chunks' last rows.
        let last = if plan.all_rows_last { h.clone() } else { h.index_select(&plan.last_rows, 0)? };
        let logits = to_f32(&last.matmul(&self.lm_head.t()?)?)?;
        let deltas: Vec<Tensor> = deltas.into_inner().into_iter().flatten().collect();
        if deltas.len() != delta.groups.len() {
            return Err(EngineError::Backend(format!(
                "{} committed deltas computed of {} asked (layer {} of {})",
                deltas.len(),
                delta.groups.len(),
                delta.layer,
                self.layers.len()
            )));
        }
        Ok((logits, h, deltas))
    }

    /// The logits of final-norm rows in the model's dtype (`[rows, hidden]`), as
    /// [`Self::forward`] computes them for the chunks' last rows.
    pub(crate) fn logits_of(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = hidden.to_dtype(self.dtype())?;
        Ok(to_f32(&h.matmul(&self.lm_head.t()?)?)?)
    }

    /// Attention of every row (`q`: `[n, num_heads * head_dim]`) over its sequence's cached
    /// positions; returns the same shape, rows in batch order.
    fn attend(
        &self,
        cfg: &ModelConfig,
        layer: usize,
        q: &Tensor,
        pool: &DevicePool,
        plan: &StepPlan,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut parts = Vec::with_capacity(2 + plan.prefill.len());
        if let Some(dec) = &plan.decode {
            let qd = match &dec.rows {
                Some(rows) => q.index_select(rows, 0)?,
                None => q.clone(),
            };
            let m = dec.blocks.num_seqs();
            let qd = qd.reshape((m, nh, hd))?;
            let cache_shape = (plan.num_blocks, plan.block_size, nkv, hd);
            let kc = pool.keys[layer].reshape(cache_shape)?;
            let vc = pool.values[layer].reshape(cache_shape)?;
            let out = paged_decode_attention_with(&qd, &kc, &vc, &dec.blocks, scale as f32)?;
            parts.push(out.reshape((m, nh * hd))?);
        }
        if let Some(blocks) = &plan.fused_prefill {
            let qp = q.reshape((q.dim(0)?, nh, hd))?;
            let cache_shape = (plan.num_blocks, plan.block_size, nkv, hd);
            let kc = pool.keys[layer].reshape(cache_shape)?;
            let vc = pool.values[layer].reshape(cache_shape)?;
            let out = paged_prefill_attention(&qp, &kc, &vc, blocks, scale as f32)?;
            parts.push(out.reshape((blocks.rows(), nh * hd))?);
        }
        for c in &plan.prefill {
            let qs = q.narrow(0, c.row, c.len)?;
            let k = pool.keys[layer].index_select(&c.gather, 0)?;
            let v = pool.values[layer].index_select(&c.gather, 0)?;
            parts.push(causal_attention(&qs, &k, &v, c.mask.as_ref(), nh, nkv, hd, scale)?);
        }
        let out = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 0)? };
        Ok(match &plan.order {
            Some(order) => out.index_select(order, 0)?,
            None => out,
        })
    }
}

/// Rows `rows` of `t` (`[n, width]`): a view when they are its first rows in order, else
/// gathered.
pub(crate) fn select_rows(t: &Tensor, rows: &[u32]) -> Result<Tensor> {
    if rows.iter().copied().eq(0..rows.len() as u32) {
        return Ok(t.narrow(0, 0, rows.len())?);
    }
    let index = Tensor::from_slice(rows, rows.len(), t.device())?;
    Ok(t.index_select(&index, 0)?)
}

/// Turns off cudarc's per-buffer event tracking on a CUDA device. With it on, every buffer
/// candle allocates (several per operation, a few hundred operations per layer step) gets
/// two CUDA events created and destroyed with it, host time the decode steps, which are
/// bound by the host's launch rate, pay directly. The events only order a buffer's uses
/// across streams, and everything here runs on candle's one stream.
/// `OPENLEDGER_CUDA_EVENTS=on` leaves tracking on (for comparison runs).
fn single_stream(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        if openledger_kernels::options::options().cuda_events {
            return;
        }
        // SAFETY: the engine, candle and the kernels crate issue all work on this device on
        // candle's single stream (`CudaDevice::cuda_stream`), so no buffer is used from two
        // streams and the events have nothing to order. Buffers made before this call keep
        // their events, which stay valid.
        unsafe { d.disable_event_tracking() };
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

fn wrong_cache(device: &Device) -> EngineError {
    EngineError::Backend(format!(
        "the KV cache is not a device pool on {:?}: make it with KvCache::for_model",
        device.location()
    ))
}

/// Causal attention of one chunk: `q` `[t, nh * hd]` at the last `t` of the `L` positions
/// whose keys and values are `k`, `v` (`[L, nkv * hd]`); `mask` `[group * t, L]` (0 or -inf),
/// absent when `t == 1`. Scores, softmax and the weighted sum in f32.
#[allow(clippy::too_many_arguments)]
fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f64,
) -> Result<Tensor> {
    let (t, dtype) = (q.dim(0)?, q.dtype());
    let ctx = k.dim(0)?;
    let group = nh / nkv;
    // Query heads h = kv_head * group + j, so [nh, t, hd] regroups as [nkv, group * t, hd].
    let q = q
        .reshape((t, nh, hd))?
        .transpose(0, 1)?
        .to_dtype(DType::F32)?
        .contiguous()?
        .reshape((nkv, group * t, hd))?;
    let heads = |x: &Tensor| -> Result<Tensor> {
        Ok(x.reshape((ctx, nkv, hd))?.transpose(0, 1)?.to_dtype(DType::F32)?.contiguous()?)
    };
    let (k, v) = (heads(k)?, heads(v)?);
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?; // [nkv, group * t, hd]
    Ok(out
        .reshape((nh, t, hd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((t, nh * hd))?
        .to_dtype(dtype)?)
}

/// What a step's layers share: inputs and indices on the device, built once.
pub(crate) struct StepPlan {
    pub(crate) ids: Tensor,
    /// u32 `[n]`: each row's position (its rotary rows are gathered on the device).
    pub(crate) pos: Tensor,
    rope_style: RopeStyle,
    /// The pool row each batch row's keys and values go to.
    pub(crate) kv_slots: RowIndex,
    last_rows: Tensor,
    /// `last_rows` is every row in order (a decode step's chunks are one token each): the
    /// LM head reads the final-norm rows as they are, no gather.
    all_rows_last: bool,
    pub(crate) decode: Option<DecodeRows>,
    /// The prefill chunks for the fused kernel (one launch a layer for all of them), when
    /// it applies ([`fused_prefill`]); else `prefill` holds them.
    fused_prefill: Option<PrefillBlocks>,
    prefill: Vec<GatheredChunk>,
    /// Batch row of each row of the concatenated attention outputs, when not the identity.
    order: Option<Tensor>,
    num_blocks: usize,
    block_size: usize,
}

/// The one-token chunks, attended through the paged decode kernel.
pub(crate) struct DecodeRows {
    /// Their batch rows, when not all rows decode.
    rows: Option<Tensor>,
    pub(crate) blocks: DecodeBlocks,
}

/// A chunk attended by gathering its sequence's positions.
struct GatheredChunk {
    row: usize,
    len: usize,
    /// u32 pool rows of positions `0..start + len`.
    gather: Tensor,
    mask: Option<Tensor>,
}

impl StepPlan {
    /// `fixed_context`: the decode rows' block tables padded to the width of a context of
    /// that many positions and launched with a shape fixed by that bound
    /// ([`DecodeBlocks::fixed_launch`]), for a step captured in a CUDA graph and replayed
    /// for any contexts within it. Without it the attention's launch is shaped by the step's
    /// longest context (its partitions; a sequence's result depends on its own length
    /// alone, so the bound changes launches, not results).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        model: &TensorModel,
        cfg: &ModelConfig,
        chunks: &[SeqChunk<'_>],
        tokens: &[u32],
        positions: &[usize],
        last_rows: &[u32],
        cache: &KvCache,
        fixed_context: Option<usize>,
    ) -> Result<Self> {
        let dev = &model.device;
        let n = tokens.len();
        let kc = cache.config();
        let pos =
            Tensor::from_vec(positions.iter().map(|&p| p as u32).collect::<Vec<_>>(), n, dev)?;

        let mut slots = Vec::with_capacity(n);
        // The paged kernel takes head sizes 64 and 128 and power-of-two blocks; other shapes
        // (the tiny test models) attend one-token chunks by gathering, like prefill.
        let paged = paged_decode(cfg, kc.block_size);
        let (mut dec_rows, mut dec_tables, mut dec_lens) = (Vec::new(), Vec::new(), Vec::new());
        let fused = fused_prefill(cfg, kc.block_size, dev, model.dtype);
        let mut prefill = Vec::new();
        let mut fused_chunks = Vec::new();
        let mut prefill_rows = Vec::new();
        let mut offset = 0;
        for c in chunks {
            let t = c.tokens.len();
            slots.extend(cache.slots(c.table, c.start, t));
            let end = c.start + t;
            if paged && t == 1 {
                dec_rows.push(offset as u32);
                dec_tables.push(&c.table.blocks[..cache.blocks_for(end)]);
                dec_lens.push(end as u32);
            } else if fused {
                let table = &c.table.blocks[..cache.blocks_for(end)];
                fused_chunks.push(PrefillChunk { q_row: offset, len: t, start: c.start, table });
                prefill_rows.extend(offset as u32..(offset + t) as u32);
            } else {
                let gather = Tensor::from_vec(cache.slots(c.table, 0, end), end, dev)?;
                let mask = (t > 1).then(|| causal_mask(cfg, c.start, t, dev)).transpose()?;
                prefill.push(GatheredChunk { row: offset, len: t, gather, mask });
                prefill_rows.extend(offset as u32..(offset + t) as u32);
            }
            offset += t;
        }
        let fused_prefill = if fused_chunks.is_empty() {
            None
        } else {
            Some(PrefillBlocks::new(&fused_chunks, kc.block_size)?)
        };
        let decode = if dec_rows.is_empty() {
            None
        } else {
            let m = dec_rows.len();
            let blocks = if let Some(bound) = fixed_context {
                let width = cache.blocks_for(bound);
                DecodeBlocks::from_host(
                    padded_tables(&dec_tables, width),
                    dec_lens,
                    width,
                    kc.block_size,
                    bound,
                )?
                .fixed_launch()
            } else {
                let longest = dec_lens.iter().copied().max().unwrap_or(1) as usize;
                DecodeBlocks::from_tables(&dec_tables, dec_lens, kc.block_size, longest)?
            };
            let rows = (m != n).then(|| Tensor::from_slice(&dec_rows, m, dev)).transpose()?;
            Some(DecodeRows { rows, blocks })
        };
        let mut order_rows = dec_rows;
        order_rows.extend(prefill_rows);
        // order_rows[i] is the batch row of output row i; the gather needs the inverse.
        let identity = order_rows.iter().enumerate().all(|(i, &r)| i == r as usize);
        let order = if identity {
            None
        } else {
            let mut inverse = vec![0u32; n];
            for (i, &r) in order_rows.iter().enumerate() {
                inverse[r as usize] = i as u32;
            }
            Some(Tensor::from_vec(inverse, n, dev)?)
        };
        Ok(Self {
            ids: Tensor::from_slice(tokens, n, dev)?,
            pos,
            rope_style: cfg.rope_style,
            kv_slots: RowIndex::new(slots),
            last_rows: Tensor::from_slice(last_rows, last_rows.len(), dev)?,
            all_rows_last: last_rows.len() == n && last_rows.iter().copied().eq(0..n as u32),
            decode,
            fused_prefill,
            prefill,
            order,
            num_blocks: kc.num_blocks,
            block_size: kc.block_size,
        })
    }
}

/// The batch sizes a decode step is captured at as a CUDA graph: a step of `n` sequences
/// is padded up to the first bucket of at least `n` rows. Powers of two to 8, then steps of
/// a third to a half (16, 24, 32, 48, 64, ...): a decode step's GEMMs read the whole weights
/// at any of these row counts, so padding costs little device time, while each bucket is
/// one capture (an eager step, a capture, an instantiation: a few steps' time, once) and
/// one graph held. A server's batch shrinks and grows through every size as sequences
/// finish and join; graphs per exact size were captured and hardly replayed (the engine's
/// batch-64 decode ran 39% slower with them, `docs/benchmarks.md`).
pub(crate) const GRAPH_BUCKETS: [usize; 13] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256];

/// The bucket a decode step of `n` sequences is padded to, `None` over the largest (such a
/// step runs eagerly) or for an empty step.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn graph_bucket(n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    GRAPH_BUCKETS.iter().copied().find(|&b| b >= n)
}

/// Whether one-token chunks attend through the paged decode kernel: head sizes 64 and 128
/// and power-of-two cache blocks (other shapes, such as the tiny test models', gather their
/// positions like prefill).
pub(crate) fn paged_decode(cfg: &ModelConfig, block_size: usize) -> bool {
    HEAD_DIMS.contains(&cfg.head_dim) && block_size.is_power_of_two()
}

/// Whether prefill chunks attend through the fused prefill kernel: a CUDA device, bf16 or
/// f16 activations, and the paged kernels' shapes ([`paged_decode`]), unless
/// `OPENLEDGER_PREFILL_ATTENTION=materialized` asks for the gathered, materialized-scores
/// path (comparison runs; it is also what the CPU and f32 run).
fn fused_prefill(cfg: &ModelConfig, block_size: usize, dev: &Device, dtype: DType) -> bool {
    dev.is_cuda()
        && matches!(dtype, DType::BF16 | DType::F16)
        && paged_decode(cfg, block_size)
        && !openledger_kernels::options::options().prefill_materialized
}

/// Block tables, one per row, each padded with block 0 to `width` entries (row-major).
pub(crate) fn padded_tables(tables: &[&[u32]], width: usize) -> Vec<u32> {
    let mut flat = vec![0u32; tables.len() * width];
    for (row, t) in flat.chunks_exact_mut(width.max(1)).zip(tables) {
        let k = t.len().min(width);
        row[..k].copy_from_slice(&t[..k]);
    }
    flat
}

/// `[group * t, start + t]` f32: 0 where query `i` (row `j * t + i`) may see the position,
/// -inf after it.
fn causal_mask(cfg: &ModelConfig, start: usize, t: usize, dev: &Device) -> Result<Tensor> {
    let group = cfg.num_heads / cfg.num_kv_heads;
    let ctx = start + t;
    let mut m = vec![0f32; group * t * ctx];
    for (r, row) in m.chunks_exact_mut(ctx).enumerate() {
        let i = r % t;
        for v in &mut row[start + i + 1..] {
            *v = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(m, (group * t, ctx), dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_size_pads_to_the_smallest_bucket_that_holds_it() {
        assert_eq!(graph_bucket(0), None);
        let largest = *GRAPH_BUCKETS.last().unwrap();
        for n in 1..=largest {
            let b = graph_bucket(n).unwrap();
            assert!(b >= n && GRAPH_BUCKETS.contains(&b), "{n} -> {b}");
            // No smaller bucket holds n.
            assert!(GRAPH_BUCKETS.iter().all(|&s| s >= b || s < n), "{n} -> {b}");
            // Padding: fewer rows than the step's own, at most half of them past 16.
            assert!(b < 2 * n || b == 1, "{n} -> {b}");
            assert!(n <= 16 || 2 * b <= 3 * n, "{n} -> {b}");
        }
        assert_eq!(graph_bucket(largest + 1), None);
        assert_eq!(
            (graph_bucket(5), graph_bucket(33), graph_bucket(64)),
            (Some(8), Some(48), Some(64))
        );
    }
}
