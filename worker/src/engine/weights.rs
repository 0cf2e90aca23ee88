//! The base model's weights, from Hugging Face safetensors or a GGUF file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::config::{ModelConfig, Projection};
use super::error::{EngineError, Result};

/// A base projection `y = x W^T`, dense or quantized (candle's quantized matmul).
#[derive(Clone, Debug)]
pub(crate) enum Linear {
    /// f32 `[d_out, d_in]`.
    Dense(Tensor),
    /// A GGUF block-quantized `[d_out, d_in]` tensor.
    Quantized(Arc<QTensor>),
}

impl Linear {
    /// `x` is `[rows, d_in]`; returns a contiguous `[rows, d_out]`.
    ///
    /// Every output row depends on its input row alone, through a reduction whose order the
    /// shapes fix: a request's result does not depend on the rows batched with it.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self {
            Linear::Dense(w) if w.device().is_cpu() => dense_cpu(x, w)?,
            Linear::Dense(w) => x.matmul(&w.t()?)?,
            Linear::Quantized(q) => QMatMul::QTensor(q.clone()).forward(x)?,
        };
        Ok(y.contiguous()?)
    }
}

/// `x @ w^T` on the CPU, one row at a time with a fixed reduction order: a BLAS-style gemm
/// picks its blocking from the number of rows, which would make a request's bits depend on
/// how many others share its batch.
fn dense_cpu(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let (rows, d_in) = x.dims2()?;
    let d_out = w.dim(0)?;
    let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let w = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; rows * d_out];
    const OUT_TILE: usize = 64;
    y.par_chunks_mut(d_out).zip(x.par_chunks(d_in)).for_each(|(y_row, x_row)| {
        y_row.par_chunks_mut(OUT_TILE).enumerate().for_each(|(t, ys)| {
            for (j, yv) in ys.iter_mut().enumerate() {
                let o = t * OUT_TILE + j;
                *yv = dot(x_row, &w[o * d_in..(o + 1) * d_in]);
            }
        });
    });
    Ok(Tensor::from_vec(y, (rows, d_out), &Device::Cpu)?)
}

/// Dot product with eight independent accumulators (vectorizes; order fixed by length).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Weights of one decoder layer.
pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    pub ffn_norm: Tensor,
    /// Indexed by [`Projection::index`].
    pub proj: Vec<Linear>,
}

/// All weights of the base model, on one device, f32 apart from quantized projections.
pub(crate) struct BaseWeights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor,
    pub lm_head: Linear,
}

/// Reads tensors from one or more safetensors files, naming the file in every error.
struct SafetensorsFiles {
    files: Vec<(PathBuf, candle_core::safetensors::MmapedSafetensors)>,
}

impl SafetensorsFiles {
    fn open(paths: &[PathBuf]) -> Result<Self> {
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
            let t = st.load(name, device).and_then(|t| t.to_dtype(DType::F32)).map_err(|e| {
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

    fn contains(&self, name: &str) -> bool {
        self.files.iter().any(|(_, st)| st.get(name).is_ok())
    }
}

/// Loads a Hugging Face checkpoint's `*.safetensors` (`model.layers.{i}...`), as f32.
pub(crate) fn load_hf(cfg: &ModelConfig, dir: &Path, device: &Device) -> Result<BaseWeights> {
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
    let st = SafetensorsFiles::open(&paths)?;
    let h = cfg.hidden_size;
    let embed = st.get("model.embed_tokens.weight", &[cfg.vocab_size, h], device)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let pre = format!("model.layers.{i}");
        let mut proj = Vec::with_capacity(7);
        for p in Projection::ALL {
            let (d_in, d_out) = cfg.proj_dims(p);
            let w = st.get(&format!("{pre}.{}.weight", p.hf_path()), &[d_out, d_in], device)?;
            proj.push(Linear::Dense(w));
        }
        layers.push(LayerWeights {
            attn_norm: st.get(&format!("{pre}.input_layernorm.weight"), &[h], device)?,
            ffn_norm: st.get(&format!("{pre}.post_attention_layernorm.weight"), &[h], device)?,
            proj,
        });
        tracing::debug!(layer = i, of = cfg.num_layers, "loaded layer");
    }
    let norm = st.get("model.norm.weight", &[h], device)?;
    let lm_head = if !cfg.tie_word_embeddings || st.contains("lm_head.weight") {
        Linear::Dense(st.get("lm_head.weight", &[cfg.vocab_size, h], device)?)
    } else {
        Linear::Dense(embed.clone())
    };
    Ok(BaseWeights { embed, layers, norm, lm_head })
}
