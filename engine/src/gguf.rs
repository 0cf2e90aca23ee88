//! Loading a quantized base model from a GGUF file (llama.cpp's format): hyper-parameters and
//! tokenizer from the metadata, projections kept block-quantized (Q4_1, Q4_K, Q8_0, ...) and
//! multiplied through candle's quantized matmul.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::config::{ModelConfig, Projection, RopeStyle};
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
    fn meta(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| EngineError::config(self.path, format!("missing metadata key `{key}`")))
    }

    fn meta_u32(&self, key: &str) -> Result<u32> {
        let v = self.meta(key)?;
        v.to_u32()
            .or_else(|_| v.to_u64().map(|x| x as u32))
            .or_else(|_| v.to_i32().map(|x| x as u32))
            .map_err(|e| EngineError::config(self.path, format!("metadata `{key}`: {e}")))
    }

    fn meta_f32(&self, key: &str) -> Result<f32> {
        let v = self.meta(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .map_err(|e| EngineError::config(self.path, format!("metadata `{key}`: {e}")))
    }

    fn meta_strings(&self, key: &str) -> Result<Vec<String>> {
        let list = self
            .meta(key)?
            .to_vec()
            .map_err(|e| EngineError::config(self.path, format!("metadata `{key}`: {e}")))?;
        list.iter()
            .map(|v| v.to_string().cloned())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| EngineError::config(self.path, format!("metadata `{key}`: {e}")))
    }

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

/// The hyper-parameters of a GGUF file, from its metadata alone (no tensor is read), with
/// the chat models' turn-end tokens among the end-of-sequence tokens as [`load`] sets them.
pub(crate) fn read_config(path: &Path) -> Result<ModelConfig> {
    let r = open(path)?;
    let tokens = r.meta_strings("tokenizer.ggml.tokens")?;
    let mut config = config_of(&r, tokens.len())?;
    add_turn_ends(&tokens, &mut config);
    Ok(config)
}

/// The hyper-parameters and the tokenizer of a GGUF file, from its metadata alone (no tensor
/// is read): what a gateway needs to count a prompt's tokens as the worker will.
pub(crate) fn read_config_and_tokenizer(path: &Path) -> Result<(ModelConfig, Tokenizer)> {
    let r = open(path)?;
    let tokens = r.meta_strings("tokenizer.ggml.tokens")?;
    let mut config = config_of(&r, tokens.len())?;
    let tokenizer = tokenizer_from_metadata(&r, tokens, &mut config)?;
    Ok((config, tokenizer))
}

/// The model's shape from the metadata (architecture llama or mistral).
fn config_of(r: &Reader<'_>, vocab_size: usize) -> Result<ModelConfig> {
    let path = r.path;
    let arch = r.meta("general.architecture")?.to_string().cloned().unwrap_or_default();
    if arch != "llama" && arch != "mistral" {
        return Err(EngineError::config(path, format!("unsupported architecture `{arch}`")));
    }
    let hidden = r.meta_u32(&format!("{arch}.embedding_length"))? as usize;
    let num_heads = r.meta_u32(&format!("{arch}.attention.head_count"))? as usize;
    let num_kv_heads =
        r.meta_u32(&format!("{arch}.attention.head_count_kv")).unwrap_or(num_heads as u32) as usize;
    let head_dim = match r.meta_u32(&format!("{arch}.attention.key_length")) {
        Ok(d) => d as usize,
        Err(_) => hidden / num_heads.max(1),
    };
    let has_output = r.content.tensor_infos.contains_key("output.weight");
    let config = ModelConfig {
        vocab_size,
        hidden_size: hidden,
        intermediate_size: r.meta_u32(&format!("{arch}.feed_forward_length"))? as usize,
        num_layers: r.meta_u32(&format!("{arch}.block_count"))? as usize,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: r.meta_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))? as f64,
        rope_theta: r.meta_f32(&format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
        rope_style: RopeStyle::Interleaved,
        max_position: r.meta_u32(&format!("{arch}.context_length")).unwrap_or(4096) as usize,
        tie_word_embeddings: !has_output,
        eos_token_ids: r
            .meta_u32("tokenizer.ggml.eos_token_id")
            .map(|e| vec![e])
            .unwrap_or_default(),
        bos_token_id: r.meta_u32("tokenizer.ggml.bos_token_id").ok(),
    };
    config.validate().map_err(|m| EngineError::config(path, m))?;
    Ok(config)
}

/// Reads a llama-architecture GGUF file.
pub(crate) fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    let mut r = open(path)?;
    let tokens = r.meta_strings("tokenizer.ggml.tokens")?;
    let mut config = config_of(&r, tokens.len())?;
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
    let tokenizer = tokenizer_from_metadata(&r, tokens, &mut config)?;
    tracing::info!(path = %path.display(), layers = config.num_layers, hidden, "loaded GGUF model");
    Ok(GgufModel { config, weights: BaseWeights { embed, layers, norm, lm_head }, tokenizer })
}

fn quantized_linear(q: Arc<QTensor>, _device: &Device) -> Result<Linear> {
    Linear::from_qtensor(q)
}

/// Builds a byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`) from the metadata.
fn tokenizer_from_metadata(
    r: &Reader<'_>,
    tokens: Vec<String>,
    config: &mut ModelConfig,
) -> Result<Tokenizer> {
    let path = r.path;
    let model = r.meta("tokenizer.ggml.model")?.to_string().cloned().unwrap_or_default();
    if model != "gpt2" {
        return Err(EngineError::config(
            path,
            format!(
                "tokenizer.ggml.model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            ),
        ));
    }
    let merges: Vec<(String, String)> = r
        .meta_strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(EngineError::config(path, format!("malformed merge `{m}`"))),
        })
        .collect::<Result<_>>()?;
    let types: Vec<i32> = match r
        .meta("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().map_err(|e| EngineError::config(path, e.to_string())))
    {
        Ok(list) => list.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        Err(_) => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = r.meta("tokenizer.ggml.pre").ok().and_then(|v| v.to_string().ok().cloned());
    let pre_tok: PreTokenizerWrapper = if pre.as_deref() == Some("smollm") {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevel::default()));
    // Control tokens (type 3) are matched whole and skipped when decoding.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(special).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    add_turn_ends(&tokens, config);
    Ok(tok)
}

/// Chat models end a turn with <|im_end|>; stop there as well as at the declared EOS.
fn add_turn_ends(tokens: &[String], config: &mut ModelConfig) {
    for name in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
        if let Some(id) = tokens.iter().position(|t| t == name).map(|i| i as u32) {
            if !config.eos_token_ids.contains(&id) {
                config.eos_token_ids.push(id);
            }
        }
    }
}
