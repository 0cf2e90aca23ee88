//! The base model's hyper-parameters, read from Hugging Face `config.json` or GGUF metadata.

use std::path::Path;

use openledger_primitives::market::target;
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::gguf::Gguf;

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension `i` pairs with `i + head_dim / 2` (Hugging Face checkpoints).
    Half,
    /// Dimension `2i` pairs with `2i + 1` (GGUF: llama.cpp permutes q/k weights this way).
    Interleaved,
}

/// Shape of a Llama-family decoder (Llama 2/3, Mistral-style GQA, SmolLM2).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub max_position: usize,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f32>,
    /// transformers 5 writes `rope_theta` (and the scaling type) here instead.
    rope_parameters: Option<RopeParameters>,
    /// Older files' scaling; only none (or `default`) is supported.
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
}

fn default_theta() -> f32 {
    10_000.0
}

/// The RoPE base of a config, refusing scaled RoPE variants this engine does not implement
/// (a model loaded with the wrong positions would produce plausible-looking garbage).
fn rope_theta(hf: &HfConfig) -> std::result::Result<f32, String> {
    let scaling = hf
        .rope_scaling
        .as_ref()
        .filter(|v| !v.is_null())
        .map(|v| v.get("rope_type").or(v.get("type")).and_then(|t| t.as_str()).unwrap_or("?"))
        .or(hf.rope_parameters.as_ref().and_then(|p| p.rope_type.as_deref()));
    if let Some(kind) = scaling.filter(|k| *k != "default") {
        return Err(format!("RoPE scaling `{kind}` is not supported (only plain RoPE)"));
    }
    Ok(hf
        .rope_theta
        .or(hf.rope_parameters.as_ref().and_then(|p| p.rope_theta))
        .unwrap_or_else(default_theta))
}

fn default_max_pos() -> usize {
    4096
}

/// A metadata value that may be absent (then `None`); present with the wrong type, an error.
fn optional<T>(value: Result<T>) -> Result<Option<T>> {
    match value {
        Ok(v) => Ok(Some(v)),
        Err(ModelError::MissingKey { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json` (LlamaForCausalLM / MistralForCausalLM).
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::config(path, e))?;
        let rope_theta = rope_theta(&hf).map_err(|m| ModelError::config(path, m))?;
        let eos_token_ids = match hf.eos_token_id {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
            },
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect()
            },
            Some(other) => {
                return Err(ModelError::config(path, format!("eos_token_id: unexpected {other}")))
            },
        };
        let num_heads = hf.num_attention_heads;
        let cfg = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(num_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size.checked_div(num_heads).unwrap_or(0)),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            rope_style: RopeStyle::Half,
            max_position: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            eos_token_ids,
            bos_token_id: hf.bos_token_id,
        };
        cfg.validate().map_err(|m| ModelError::config(path, m))?;
        Ok(cfg)
    }

    /// The hyper-parameters of a base model without loading its weights: `config.json` of a
    /// Hugging Face directory, or the metadata of a GGUF file.
    pub fn read(model: &Path) -> Result<Self> {
        if model.is_dir() {
            Self::from_hf_file(&model.join("config.json"))
        } else {
            Self::from_gguf(&Gguf::read(model)?)
        }
    }

    /// The hyper-parameters in a GGUF file's metadata (architecture `llama` or `mistral`),
    /// with the chat models' turn-end tokens (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`)
    /// among the end-of-sequence tokens, so generation stops at the end of a turn.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let path = gguf.path();
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let arch = gguf.string("general.architecture")?;
        if arch != "llama" && arch != "mistral" {
            return Err(ModelError::config(path, format!("unsupported architecture `{arch}`")));
        }
        let key = |name: &str| format!("{arch}.{name}");
        let hidden = gguf.u32(&key("embedding_length"))? as usize;
        let num_heads = gguf.u32(&key("attention.head_count"))? as usize;
        let num_kv_heads = optional(gguf.u32(&key("attention.head_count_kv")))?;
        let head_dim = optional(gguf.u32(&key("attention.key_length")))?;
        let mut config = Self {
            vocab_size: tokens.len(),
            hidden_size: hidden,
            intermediate_size: gguf.u32(&key("feed_forward_length"))? as usize,
            num_layers: gguf.u32(&key("block_count"))? as usize,
            num_heads,
            num_kv_heads: num_kv_heads.map_or(num_heads, |n| n as usize),
            head_dim: head_dim.map_or(hidden / num_heads.max(1), |d| d as usize),
            rms_norm_eps: gguf.f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
            rope_theta: optional(gguf.f32(&key("rope.freq_base")))?.unwrap_or_else(default_theta),
            rope_style: RopeStyle::Interleaved,
            max_position: optional(gguf.u32(&key("context_length")))?
                .map_or_else(default_max_pos, |n| n as usize),
            // Without its own output matrix, the model reuses the token embeddings.
            tie_word_embeddings: !gguf.has_tensor("output.weight"),
            eos_token_ids: optional(gguf.u32("tokenizer.ggml.eos_token_id"))?.into_iter().collect(),
            bos_token_id: optional(gguf.u32("tokenizer.ggml.bos_token_id"))?,
        };
        config.validate().map_err(|m| ModelError::config(path, m))?;
        for name in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(id) = tokens.iter().position(|t| *t == name).map(|i| i as u32) {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        Ok(config)
    }

    /// Checks the shape is self-consistent (GQA groups divide evenly, even head_dim).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("max_position_embeddings", self.max_position),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even and positive", self.head_dim));
        }
        Ok(())
    }

    /// Output width of a projection.
    pub fn proj_dims(&self, proj: Projection) -> (usize, usize) {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let (q, kv) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        match proj {
            Projection::Q => (h, q),
            Projection::K | Projection::V => (h, kv),
            Projection::O => (q, h),
            Projection::Gate | Projection::Up => (h, i),
            Projection::Down => (i, h),
        }
    }
}

/// The seven linear projections of a decoder layer, each a possible LoRA target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// Index in `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// PEFT's module name (`q_proj`, ...).
    pub fn module_name(self) -> &'static str {
        target::MODULE_NAMES[self.index()]
    }

    /// This projection's bit in an adapter's `target_modules` byte (the chain's encoding,
    /// [`openledger_primitives::market::target`]).
    pub fn bit(self) -> u8 {
        1 << self.index()
    }

    /// The `target_modules` byte of a set of projections.
    pub fn bits(projections: impl IntoIterator<Item = Projection>) -> u8 {
        projections.into_iter().fold(0, |bits, p| bits | p.bit())
    }

    /// Module path inside a Hugging Face layer (`self_attn.q_proj`, `mlp.up_proj`).
    pub fn hf_path(self) -> &'static str {
        match self {
            Projection::Q => "self_attn.q_proj",
            Projection::K => "self_attn.k_proj",
            Projection::V => "self_attn.v_proj",
            Projection::O => "self_attn.o_proj",
            Projection::Gate => "mlp.gate_proj",
            Projection::Up => "mlp.up_proj",
            Projection::Down => "mlp.down_proj",
        }
    }

    /// Tensor name in a GGUF file (`attn_q`, `ffn_up`, ...).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Projection::Q => "attn_q",
            Projection::K => "attn_k",
            Projection::V => "attn_v",
            Projection::O => "attn_output",
            Projection::Gate => "ffn_gate",
            Projection::Up => "ffn_up",
            Projection::Down => "ffn_down",
        }
    }

    /// Parses a PEFT target module name.
    pub fn from_module_name(name: &str) -> Option<Self> {
        let bit = target::bit_of(name)?;
        Self::ALL.into_iter().find(|p| p.bit() == bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_bits_are_the_chains() {
        let chain =
            [target::Q, target::K, target::V, target::O, target::GATE, target::UP, target::DOWN];
        for (p, bit) in Projection::ALL.into_iter().zip(chain) {
            assert_eq!(p.bit(), bit, "{p:?}");
            assert_eq!(Projection::from_module_name(p.module_name()), Some(p));
        }
        assert_eq!(Projection::bits(Projection::ALL), target::ALL);
        assert_eq!(Projection::from_module_name("lm_head"), None);
    }

    fn parse(extra: serde_json::Value) -> Result<ModelConfig> {
        let mut cfg = serde_json::json!({
            "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let dir = tempfile::tempdir().map_err(|e| ModelError::io("tmp", e))?;
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).map_err(|e| ModelError::io(&path, e))?;
        ModelConfig::from_hf_file(&path)
    }

    #[test]
    fn rope_theta_is_read_where_either_transformers_version_writes_it() {
        assert_eq!(parse(serde_json::json!({})).map(|c| c.rope_theta).ok(), Some(10_000.0));
        let old = parse(serde_json::json!({"rope_theta": 500000.0}));
        assert_eq!(old.map(|c| c.rope_theta).ok(), Some(500_000.0));
        let new = parse(
            serde_json::json!({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}),
        );
        assert_eq!(new.map(|c| c.rope_theta).ok(), Some(100_000.0));
    }

    #[test]
    fn scaled_rope_is_refused_by_name() {
        let err =
            parse(serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(err.contains("llama3"), "{err}");
        let err =
            parse(serde_json::json!({"rope_parameters": {"rope_theta": 1.0, "rope_type": "yarn"}}))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(err.contains("yarn"), "{err}");
    }

    fn llama_gguf() -> crate::gguf::testing::GgufWriter {
        use crate::gguf::testing::{string, strings, GgufWriter};
        use crate::gguf::Value;
        GgufWriter::default()
            .kv("general.architecture", string("llama"))
            .kv("llama.embedding_length", Value::U32(64))
            .kv("llama.feed_forward_length", Value::U32(128))
            .kv("llama.block_count", Value::U32(2))
            .kv("llama.attention.head_count", Value::U32(4))
            .kv("llama.attention.head_count_kv", Value::U64(2))
            .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
            .kv("llama.context_length", Value::I32(2048))
            .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
            .kv("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "</s>", "a", "<|im_end|>"]))
    }

    fn read_gguf(w: crate::gguf::testing::GgufWriter) -> Result<ModelConfig> {
        let dir = tempfile::tempdir().map_err(|e| ModelError::io("tmp", e))?;
        ModelConfig::read(&w.write(dir.path(), "m.gguf"))
    }

    #[test]
    fn gguf_metadata_gives_the_shape_defaults_and_turn_end_tokens() {
        let cfg = read_gguf(llama_gguf()).expect("reads");
        assert_eq!(
            cfg,
            ModelConfig {
                vocab_size: 5,
                hidden_size: 64,
                intermediate_size: 128,
                num_layers: 2,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                rms_norm_eps: 1e-5f32 as f64,
                rope_theta: 10_000.0,
                rope_style: RopeStyle::Interleaved,
                max_position: 2048,
                tie_word_embeddings: true,
                eos_token_ids: vec![2, 4],
                bos_token_id: None,
            }
        );
        let untied = read_gguf(llama_gguf().tensor("output.weight", &[64, 5])).expect("reads");
        assert!(!untied.tie_word_embeddings);
    }

    #[test]
    fn gguf_errors_name_the_file_and_key() {
        use crate::gguf::testing::string;
        let err = |w| read_gguf(w).err().map(|e| e.to_string()).unwrap_or_default();
        let e = err(llama_gguf().kv("general.architecture", string("x")));
        assert!(e.ends_with("metadata `general.architecture`: appears twice"), "{e}");
        let mut w = crate::gguf::testing::GgufWriter::default();
        w = w.kv("tokenizer.ggml.tokens", crate::gguf::testing::strings(&["a"]));
        let e = err(w.clone().kv("general.architecture", string("gpt2")));
        assert!(e.ends_with("m.gguf: unsupported architecture `gpt2`"), "{e}");
        let e = err(w.kv("general.architecture", string("llama")));
        assert!(e.ends_with("m.gguf: missing metadata key `llama.embedding_length`"), "{e}");
        let e = err(llama_gguf().kv("llama.rope.freq_base", string("fast")));
        assert!(
            e.ends_with("m.gguf: metadata `llama.rope.freq_base`: expected a float, found string"),
            "{e}"
        );
        let e = err(llama_gguf().kv("llama.attention.key_length", crate::gguf::Value::U32(15)));
        assert!(e.ends_with("head_dim (15) must be even and positive"), "{e}");
    }
}
