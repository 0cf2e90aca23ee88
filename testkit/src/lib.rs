//! What the OpenLedger crates' integration tests share: real parts, never mocks.
//!
//! - the crate root: tiny random models and adapters written to real files;
//! - [`batch`]: fixed batch schedules driven through the model, to compare two backends;
//! - [`node`]: a real `openledger-node --dev` process on free loopback ports;
//! - [`procs`]: the gateway, worker and keeper binaries as real processes, and HTTP requests
//!   to them;
//! - [`market`]: marketplace fixtures on a dev chain (a registered demo adapter, short
//!   deadlines);
//! - [`ledger`]: where every planck went between two blocks, from the chain's events.

/// Fixed batch schedules driven through `Model::forward`, to compare two backends.
pub mod batch;
pub mod ledger;
pub mod market;
pub mod node;
pub mod procs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use openledger_engine::{ModelConfig, Projection, StreamEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const VOCAB: usize = 256;

/// Shape of the test model: GQA (4 query heads over 2 KV heads), 2 layers.
pub fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": false,
        "bos_token_id": null,
        "eos_token_id": 255
    })
}

pub fn random(rng: &mut StdRng, shape: &[usize], amp: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-amp..amp)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Writes config.json, model.safetensors and tokenizer.json (byte-level BPE, 256 byte
/// tokens) into `dir`.
pub fn write_model(dir: &Path, seed: u64) -> ModelConfig {
    write_model_with(dir, &config_json(), seed)
}

/// [`write_model`] with another shape (`config`: a config.json; the vocabulary stays 256).
pub fn write_model_with(dir: &Path, config: &serde_json::Value, seed: u64) -> ModelConfig {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let h = cfg.hidden_size;
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_string(), random(&mut rng, &[VOCAB, h], 1.0));
    // 0.3 at the default width; wider models get smaller weights so that activations keep
    // about the same size.
    let amp = 0.3 * (32.0 / h as f32).sqrt();
    for l in 0..cfg.num_layers {
        for p in Projection::ALL {
            let (d_in, d_out) = cfg.proj_dims(p);
            let name = format!("model.layers.{l}.{}.weight", p.hf_path());
            t.insert(name, random(&mut rng, &[d_out, d_in], amp));
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            let w = (random(&mut rng, &[h], 0.2) + 1.0).unwrap();
            t.insert(format!("model.layers.{l}.{n}.weight"), w);
        }
    }
    t.insert("model.norm.weight".into(), (random(&mut rng, &[h], 0.2) + 1.0).unwrap());
    if !cfg.tie_word_embeddings {
        t.insert("lm_head.weight".into(), random(&mut rng, &[VOCAB, h], 0.5));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    write_tokenizer(&dir.join("tokenizer.json"));
    cfg
}

fn write_tokenizer(path: &Path) {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: tokenizers::models::bpe::Vocab =
        alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, Vec::new()).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.save(path, false).unwrap();
}

/// A PEFT adapter of rank `r` on `targets`, in `dir`.
pub struct AdapterSpec<'a> {
    pub r: usize,
    pub alpha: f64,
    pub rslora: bool,
    pub targets: &'a [Projection],
}

pub fn write_adapter(dir: &Path, cfg: &ModelConfig, spec: &AdapterSpec<'_>, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let modules: Vec<&str> = spec.targets.iter().map(|p| p.module_name()).collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "use_rslora": spec.rslora,
        "target_modules": modules,
        "base_model_name_or_path": "tiny-random-llama",
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = HashMap::new();
    for l in 0..cfg.num_layers {
        for &p in spec.targets {
            let (d_in, d_out) = cfg.proj_dims(p);
            let pre = format!("base_model.model.model.layers.{l}.{}", p.hf_path());
            t.insert(format!("{pre}.lora_A.weight"), random(&mut rng, &[spec.r, d_in], 0.3));
            t.insert(format!("{pre}.lora_B.weight"), random(&mut rng, &[d_out, spec.r], 0.3));
        }
    }
    candle_core::safetensors::save(&t, dir.join("adapter_model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// The token ids each request streamed so far.
pub fn streamed_tokens(rx: &[std::sync::mpsc::Receiver<StreamEvent>]) -> Vec<Vec<u32>> {
    rx.iter()
        .map(|r| {
            r.try_iter()
                .filter_map(|ev| match ev {
                    StreamEvent::Token { id, .. } => Some(id),
                    _ => None,
                })
                .collect()
        })
        .collect()
}
