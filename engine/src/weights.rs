//! The base model's weights, from Hugging Face safetensors or a GGUF file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use openledger_kernels::quant::{matmul_group, QActivations, QFormat, QMatrix};

use crate::error::{EngineError, Result};
use openledger_model::{ModelConfig, Projection};

/// A base projection `y = x W^T` on the CPU: f32, block-quantized through the kernels crate's
/// batched quantized matmul (Q4_1, Q8_0), or block-quantized through candle's quantized
/// matmul (other GGUF formats).
#[derive(Clone, Debug)]
pub(crate) enum Linear {
    /// f32 `[d_out, d_in]`, row-major.
    Dense(Arc<DenseMatrix>),
    /// Q4_1 / Q8_0 `[d_out, d_in]`.
    Blocks(Arc<QMatrix>),
    /// Any other GGUF block-quantized `[d_out, d_in]` tensor.
    Quantized(Arc<QTensor>),
}

/// A row-major f32 matrix.
#[derive(Debug)]
pub(crate) struct DenseMatrix {
    rows: usize,
    cols: usize,
    w: Vec<f32>,
}

impl DenseMatrix {
    /// The matrix as a `[rows, cols]` CPU tensor.
    pub(crate) fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.w, (self.rows, self.cols), &Device::Cpu)?)
    }
}

/// One projection input, `[rows, d_in]` row-major, with its 16-bit quantization made on first
/// use and shared by every projection that reads the same input (q, k and v; gate and up).
pub(crate) struct Input<'a> {
    pub x: &'a [f32],
    pub rows: usize,
    quantized: Option<QActivations>,
}

impl<'a> Input<'a> {
    pub(crate) fn new(x: &'a [f32], rows: usize) -> Self {
        Self { x, rows, quantized: None }
    }

    /// The input as a CPU tensor (for the LoRA kernels' tensor API).
    pub(crate) fn tensor(&self) -> Result<Tensor> {
        let cols = self.x.len() / self.rows.max(1);
        Ok(Tensor::from_slice(self.x, (self.rows, cols), &Device::Cpu)?)
    }
}

impl Linear {
    /// An f32 matrix from a `[d_out, d_in]` tensor.
    pub(crate) fn dense(t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let w = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Linear::Dense(Arc::new(DenseMatrix { rows, cols, w })))
    }

    /// Chooses the fastest path for a GGUF tensor.
    pub(crate) fn from_qtensor(q: Arc<QTensor>) -> Result<Self> {
        let format = match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                return Self::dense(&q.dequantize(&Device::Cpu)?)
            },
            GgmlDType::Q4_1 => QFormat::Q4_1,
            GgmlDType::Q8_0 => QFormat::Q8_0,
            _ => return Ok(Linear::Quantized(q)),
        };
        let (rows, cols) = q.shape().dims2()?;
        let data = q.data()?.into_owned();
        Ok(Linear::Blocks(Arc::new(QMatrix::new(format, rows, cols, data)?)))
    }

    /// The same projection with f32 weights (the reference path for tests).
    pub(crate) fn dequantized(&self) -> Result<Self> {
        Ok(match self {
            Linear::Dense(w) => Linear::Dense(w.clone()),
            Linear::Blocks(m) => Linear::Dense(Arc::new(DenseMatrix {
                rows: m.rows(),
                cols: m.cols(),
                w: m.dequantize(),
            })),
            Linear::Quantized(q) => Self::dense(&q.dequantize(&Device::Cpu)?)?,
        })
    }

    /// Whether both are the same matrix (a tied embedding and LM head).
    pub(crate) fn shares(&self, other: &Linear) -> bool {
        match (self, other) {
            (Linear::Dense(a), Linear::Dense(b)) => Arc::ptr_eq(a, b),
            (Linear::Blocks(a), Linear::Blocks(b)) => Arc::ptr_eq(a, b),
            (Linear::Quantized(a), Linear::Quantized(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The whole matrix as an f32 `[d_out, d_in]` CPU tensor (dequantized), for the tensor
    /// path's weights.
    pub(crate) fn to_tensor(&self) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(m) => Tensor::from_slice(&m.w, (m.rows, m.cols), &Device::Cpu)?,
            Linear::Blocks(m) => {
                Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), &Device::Cpu)?
            },
            Linear::Quantized(q) => q.dequantize(&Device::Cpu)?,
        })
    }

    /// Row `r` of the matrix in f32 (an embedding lookup), into `out`.
    pub(crate) fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        match self {
            Linear::Dense(m) => out.copy_from_slice(&m.w[r * m.cols..(r + 1) * m.cols]),
            Linear::Blocks(m) => m.dequantize_row(r, out)?,
            Linear::Quantized(q) => {
                let row = q.dequantize(&Device::Cpu)?.get(r)?.to_vec1::<f32>()?;
                out.copy_from_slice(&row);
            },
        }
        Ok(())
    }

    /// `y = x W^T` for `input` (`[rows, d_in]`); returns `[rows, d_out]`, row-major.
    ///
    /// Every output row depends on its input row alone, through a reduction whose order the
    /// shapes fix: a request's result does not depend on the rows batched with it.
    pub(crate) fn forward_input(&self, input: &mut Input<'_>) -> Result<Vec<f32>> {
        let rows = input.rows;
        Ok(match self {
            Linear::Dense(m) => dense_cpu(input.x, rows, m),
            Linear::Blocks(m) => {
                if input.quantized.is_none() {
                    input.quantized = Some(QActivations::quantize(input.x, rows, m.cols())?);
                }
                let mut y = vec![0f32; rows * m.rows()];
                if let Some(xq) = &input.quantized {
                    m.matmul(xq, &mut y)?;
                }
                y
            },
            Linear::Quantized(q) => QMatMul::QTensor(q.clone())
                .forward(&input.tensor()?)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        })
    }
}

/// [`Linear::forward_input`] of several projections over the same input (q, k, v; gate, up):
/// quantized ones share one parallel loop (`matmul_group`), with the bits each would get
/// alone; any other kind runs on its own.
pub(crate) fn forward_group(linears: &[&Linear], input: &mut Input<'_>) -> Result<Vec<Vec<f32>>> {
    let rows = input.rows;
    let blocks: Vec<&QMatrix> = linears
        .iter()
        .filter_map(|l| match l {
            Linear::Blocks(m) => Some(m.as_ref()),
            _ => None,
        })
        .collect();
    if blocks.len() != linears.len() || blocks.windows(2).any(|w| w[0].cols() != w[1].cols()) {
        return linears.iter().map(|l| l.forward_input(input)).collect();
    }
    let cols = blocks.first().map_or(0, |m| m.cols());
    if input.quantized.is_none() {
        input.quantized = Some(QActivations::quantize(input.x, rows, cols)?);
    }
    let mut ys: Vec<Vec<f32>> = blocks.iter().map(|m| vec![0f32; rows * m.rows()]).collect();
    if let Some(xq) = &input.quantized {
        let mut parts: Vec<(&QMatrix, &mut [f32])> =
            blocks.iter().copied().zip(ys.iter_mut().map(|y| y.as_mut_slice())).collect();
        matmul_group(&mut parts, xq)?;
    }
    Ok(ys)
}

/// `x @ w^T` on the CPU, one row at a time with a fixed reduction order: a BLAS-style gemm
/// picks its blocking from the number of rows, which would make a request's bits depend on
/// how many others share its batch.
fn dense_cpu(x: &[f32], rows: usize, m: &DenseMatrix) -> Vec<f32> {
    use openledger_kernels::simd::Simd;
    use rayon::prelude::*;
    let (d_in, d_out) = (m.cols, m.rows);
    let mut y = vec![0f32; rows * d_out];
    const OUT_TILE: usize = 64;
    y.par_chunks_mut(d_out).zip(x.par_chunks(d_in)).for_each(|(y_row, x_row)| {
        y_row.par_chunks_mut(OUT_TILE).enumerate().for_each(|(t, ys)| {
            for (j, yv) in ys.iter_mut().enumerate() {
                let o = t * OUT_TILE + j;
                *yv = Simd::Portable.dot(x_row, &m.w[o * d_in..(o + 1) * d_in]);
            }
        });
    });
    y
}

/// Weights of one decoder layer.
#[derive(Clone)]
pub(crate) struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// Indexed by [`Projection::index`].
    pub proj: Vec<Linear>,
}

/// All weights of the base model.
pub(crate) struct BaseWeights {
    /// `[vocab, hidden]`; shared with `lm_head` when the model ties them.
    pub embed: Linear,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    pub lm_head: Linear,
}

/// A 1-D tensor as f32 values.
pub(crate) fn vector(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Reads tensors from one or more safetensors files, naming the file in every error.
pub(crate) struct SafetensorsFiles {
    files: Vec<(PathBuf, candle_core::safetensors::MmapedSafetensors)>,
}

impl SafetensorsFiles {
    pub(crate) fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        for p in paths {
            // SAFETY: the file is mapped read-only; like every safetensors reader we assume
            // nobody truncates a model file while the worker runs.
            let st =
                unsafe { candle_core::safetensors::MmapedSafetensors::new(p) }.map_err(|e| {
                    EngineError::BadWeightsFile { path: p.clone(), message: e.to_string() }
                })?;
            files.push((p.clone(), st));
        }
        Ok(Self { files })
    }

    fn describe(&self) -> PathBuf {
        match self.files.as_slice() {
            [(p, _)] => p.clone(),
            _ => self
                .files
                .first()
                .map(|(p, _)| p.with_file_name("*.safetensors"))
                .unwrap_or_default(),
        }
    }

    fn get(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        self.get_as(name, shape, device, DType::F32)
    }

    /// Tensor `name`, checked against `shape`, on `device` as `dtype`.
    pub(crate) fn get_as(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        for (path, st) in &self.files {
            let Ok(view) = st.get(name) else { continue };
            if view.shape() != shape {
                return Err(EngineError::TensorShape {
                    path: path.clone(),
                    tensor: name.to_string(),
                    expected: shape.to_vec(),
                    actual: view.shape().to_vec(),
                });
            }
            let t = st.load(name, device).and_then(|t| t.to_dtype(dtype)).map_err(|e| {
                EngineError::BadTensor {
                    path: path.clone(),
                    tensor: name.to_string(),
                    message: e.to_string(),
                }
            })?;
            return Ok(t);
        }
        Err(EngineError::MissingTensor { path: self.describe(), tensor: name.to_string() })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.files.iter().any(|(_, st)| st.get(name).is_ok())
    }
}

/// The `*.safetensors` files of a Hugging Face checkpoint directory, opened.
pub(crate) fn open_hf(dir: &Path) -> Result<SafetensorsFiles> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(EngineError::BadWeightsFile {
            path: dir.to_path_buf(),
            message: "no *.safetensors file in the model directory".into(),
        });
    }
    SafetensorsFiles::open(&paths)
}

/// One decoder layer's tensors of a Hugging Face checkpoint.
pub(crate) struct HfLayer<W> {
    /// Indexed by [`Projection::index`].
    pub proj: Vec<W>,
    pub attn_norm: W,
    pub ffn_norm: W,
}

/// The tensors of a Hugging Face Llama-family checkpoint, each read through the loader's own
/// `get` (f32 host buffers, or tensors of a dtype on a device).
pub(crate) struct HfTensors<W> {
    pub embed: W,
    pub layers: Vec<HfLayer<W>>,
    pub norm: W,
    /// `None` when the LM head is the embedding (tied, and no `lm_head.weight` stored).
    pub lm_head: Option<W>,
}

/// Reads every tensor of the checkpoint in `st` by its Hugging Face name and checked shape:
/// `model.embed_tokens`, `model.layers.{i}.{self_attn,mlp}.*_proj`, the two norms per layer,
/// `model.norm` and `lm_head`.
pub(crate) fn read_hf<W>(
    cfg: &ModelConfig,
    st: &SafetensorsFiles,
    mut get: impl FnMut(&str, &[usize]) -> Result<W>,
) -> Result<HfTensors<W>> {
    let h = cfg.hidden_size;
    let embed = get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let pre = format!("model.layers.{i}");
        let mut proj = Vec::with_capacity(Projection::ALL.len());
        for p in Projection::ALL {
            let (d_in, d_out) = cfg.proj_dims(p);
            proj.push(get(&format!("{pre}.{}.weight", p.hf_path()), &[d_out, d_in])?);
        }
        layers.push(HfLayer {
            proj,
            attn_norm: get(&format!("{pre}.input_layernorm.weight"), &[h])?,
            ffn_norm: get(&format!("{pre}.post_attention_layernorm.weight"), &[h])?,
        });
        tracing::debug!(layer = i, of = cfg.num_layers, "loaded layer");
    }
    let norm = get("model.norm.weight", &[h])?;
    let lm_head = if !cfg.tie_word_embeddings || st.contains("lm_head.weight") {
        Some(get("lm_head.weight", &[cfg.vocab_size, h])?)
    } else {
        None
    };
    Ok(HfTensors { embed, layers, norm, lm_head })
}

/// Loads a Hugging Face checkpoint's `*.safetensors` (`model.layers.{i}...`), as f32. Each
/// tensor becomes a host buffer as it is read (its shape checked by `get`), so the checkpoint
/// is never held twice.
pub(crate) fn load_hf(cfg: &ModelConfig, dir: &Path, device: &Device) -> Result<BaseWeights> {
    let st = open_hf(dir)?;
    let hf = read_hf(cfg, &st, |name, shape| vector(&st.get(name, shape, device)?))?;
    let dense = |w, rows, cols| Linear::Dense(Arc::new(DenseMatrix { rows, cols, w }));
    let embed = dense(hf.embed, cfg.vocab_size, cfg.hidden_size);
    let lm_head = match hf.lm_head {
        Some(w) => dense(w, cfg.vocab_size, cfg.hidden_size),
        None => embed.clone(),
    };
    let layers = hf
        .layers
        .into_iter()
        .map(|l| LayerWeights {
            attn_norm: l.attn_norm,
            ffn_norm: l.ffn_norm,
            proj: l
                .proj
                .into_iter()
                .zip(Projection::ALL)
                .map(|(w, p)| {
                    let (d_in, d_out) = cfg.proj_dims(p);
                    dense(w, d_out, d_in)
                })
                .collect(),
        })
        .collect();
    Ok(BaseWeights { embed, layers, norm: hf.norm, lm_head })
}
