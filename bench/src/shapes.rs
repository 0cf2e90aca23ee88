//! The model shapes the GPU benchmarks build random models of (Llama-3-8B's by default).

use clap::Args;
use openledger_engine::{ModelConfig, RopeStyle};

/// A Llama-style decoder's shape, as command-line options.
#[derive(Args, Clone, Debug)]
pub struct LlamaShape {
    #[arg(long, default_value_t = 32)]
    pub layers: usize,
    #[arg(long, default_value_t = 4096)]
    pub hidden: usize,
    #[arg(long, default_value_t = 14336)]
    pub ffn: usize,
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    #[arg(long, default_value_t = 8)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 128256)]
    pub vocab: usize,
}

impl LlamaShape {
    /// The model configuration of this shape (Llama 3's norm epsilon and rotary base).
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.ffn,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            head_dim: self.hidden / self.heads.max(1),
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_style: RopeStyle::Half,
            max_position: 8192,
            tie_word_embeddings: false,
            eos_token_ids: Vec::new(),
            bos_token_id: None,
        }
    }
}
