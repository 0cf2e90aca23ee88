//! Loading a quantized base model from a GGUF file (llama.cpp's format): hyper-parameters and
//! tokenizer from the metadata (read by `openledger-model`), projections kept block-quantized
//! (Q4_1, Q4_K, Q8_0, ...) and multiplied through the kernels crate's quantized matmul.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::QTensor;
use candle_core::Device;
use openledger_model::gguf::Gguf;
use openledger_model::{ModelConfig, Projection, Tokenizer};

use crate::error::{EngineError, Result};
use crate::weights::{vector, BaseWeights, LayerWeights, Linear};

/// Everything a GGUF file provides.
pub(crate) struct GgufModel {
    pub config: ModelConfig,
    pub weights: BaseWeights,
    pub tokenizer: Tokenizer,
}

struct Reader<'a> {
    path: &'a Path,
    content: Content,
    file: File,
}

impl Reader<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Arc<QTensor>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(EngineError::MissingTensor {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
            });
        };
        // GGUF lists dimensions innermost first; candle reverses them to [d_out, d_in].
        if info.shape.dims() != shape {
            return Err(EngineError::TensorShape {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        let t = self.content.tensor(&mut self.file, name, device).map_err(|e| {
            EngineError::BadTensor {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
                message: e.to_string(),
            }
        })?;
        Ok(Arc::new(t))
    }
}

/// Opens a GGUF file and reads its metadata and tensor index (not the tensors' data).
fn open(path: &Path) -> Result<Reader<'_>> {
    let mut file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let content = Content::read(&mut file).map_err(|e| EngineError::BadWeightsFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Reader { path, content, file })
}

/// Reads a llama-architecture GGUF file.
pub(crate) fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    let metadata = Gguf::read(path)?;
    let config = ModelConfig::from_gguf(&metadata)?;
    let tokenizer = openledger_model::tokenizer::from_gguf(&metadata)?;
    let mut r = open(path)?;
    let has_output = r.content.tensor_infos.contains_key("output.weight");
    let hidden = config.hidden_size;
    let h = hidden;
    let embed_q = r.tensor("token_embd.weight", &[config.vocab_size, h], device)?;
    let embed = Linear::from_qtensor(embed_q)?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let mut proj = Vec::with_capacity(7);
        for p in Projection::ALL {
            let (d_in, d_out) = config.proj_dims(p);
            let name = format!("blk.{i}.{}.weight", p.gguf_name());
            proj.push(quantized_linear(r.tensor(&name, &[d_out, d_in], device)?, device)?);
        }
        let attn_norm = r.tensor(&format!("blk.{i}.attn_norm.weight"), &[h], device)?;
        let ffn_norm = r.tensor(&format!("blk.{i}.ffn_norm.weight"), &[h], device)?;
        layers.push(LayerWeights {
            attn_norm: vector(&attn_norm.dequantize(device)?)?,
            ffn_norm: vector(&ffn_norm.dequantize(device)?)?,
            proj,
        });
    }
    let norm = vector(&r.tensor("output_norm.weight", &[h], device)?.dequantize(device)?)?;
    let lm_head = if has_output {
        quantized_linear(r.tensor("output.weight", &[config.vocab_size, h], device)?, device)?
    } else {
        embed.clone()
    };
    tracing::info!(path = %path.display(), layers = config.num_layers, hidden, "loaded GGUF model");
    Ok(GgufModel { config, weights: BaseWeights { embed, layers, norm, lm_head }, tokenizer })
}

fn quantized_linear(q: Arc<QTensor>, _device: &Device) -> Result<Linear> {
    Linear::from_qtensor(q)
}
