//! Prints the engine's logits for token-id prompts as JSON, so that another implementation
//! (transformers + PEFT, through `worker/scripts/hf_peft_check.py`) can be compared with it.
//!
//! The model is a Hugging Face directory (`config.json` + `*.safetensors`; no tokenizer is
//! read, since prompts are token ids), optionally with one PEFT LoRA adapter applied to every
//! prompt. All prompts run together as one batch, as the scheduler would run them.
//!
//! By default each prompt is one prefill chunk and only its last position's logits are
//! printed. With `--all-positions` each prompt is fed one token per step through the KV cache
//! (the decode path) and every position's logits are printed.
//!
//! Output: one JSON object, `{"positions": "last"|"all", "dtypes": {...}, "logits":
//! [prompt][position][vocab]}`; `dtypes` says in which precision the engine held what.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use openledger_engine::{
    BlockTable, KvCache, KvCacheConfig, LoraAdapter, LoraSlots, Model, SeqChunk, ADAPTER_DTYPE,
};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Engine logits of token-id prompts, as JSON, for comparison with a reference")]
struct Args {
    /// Hugging Face model directory (`config.json` + `*.safetensors`).
    #[arg(long)]
    model: PathBuf,
    /// PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// One prompt as comma-separated token ids; repeat for several prompts.
    #[arg(long = "tokens", required = true)]
    prompts: Vec<String>,
    /// Feed prompts one token per step and print the logits of every position.
    #[arg(long)]
    all_positions: bool,
    /// `cpu` (the f32 host path) or `cuda` / `cuda:N` (the bf16 tensor path; needs a
    /// `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Positions per KV block; any value works, a small one makes prompts span several blocks.
const BLOCK_SIZE: usize = 4;

fn main() -> Result<()> {
    let args = Args::parse();
    let prompts = args.prompts.iter().map(|p| parse_tokens(p)).collect::<Result<Vec<_>>>()?;
    let device = openledger_engine::device(&args.device)?;
    let model = Model::load_hf(&args.model, &device)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let cfg = model.config().clone();

    let slot = args.adapter.as_ref().map(|_| 0u32);
    let mut lora = LoraSlots::new(&cfg, &device, 1, false);
    if let Some(dir) = &args.adapter {
        let adapter = LoraAdapter::load(dir, &cfg, &Device::Cpu)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
        lora.install(0, &adapter)?;
    }

    let num_blocks = prompts.iter().map(|p| p.len().div_ceil(BLOCK_SIZE)).sum();
    let mut cache =
        KvCache::for_model(KvCacheConfig { block_size: BLOCK_SIZE, num_blocks }, &model)?;
    let mut tables = vec![BlockTable::default(); prompts.len()];
    for (table, p) in tables.iter_mut().zip(&prompts) {
        cache.reserve(table, p.len())?;
    }

    // logits[prompt][position][vocab]
    let mut logits: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    if args.all_positions {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        for pos in 0..longest {
            let live: Vec<usize> = (0..prompts.len()).filter(|&i| pos < prompts[i].len()).collect();
            let chunks: Vec<SeqChunk<'_>> = live
                .iter()
                .map(|&i| SeqChunk {
                    tokens: &prompts[i][pos..pos + 1],
                    table: &tables[i],
                    start: pos,
                    adapter: slot,
                })
                .collect();
            let rows = model.forward(&chunks, &mut cache, &lora)?.to_vec2::<f32>()?;
            for (&i, row) in live.iter().zip(rows) {
                logits[i].push(row);
            }
        }
    } else {
        let chunks: Vec<SeqChunk<'_>> = prompts
            .iter()
            .zip(&tables)
            .map(|(p, table)| SeqChunk { tokens: p, table, start: 0, adapter: slot })
            .collect();
        let rows = model.forward(&chunks, &mut cache, &lora)?.to_vec2::<f32>()?;
        for (out, row) in logits.iter_mut().zip(rows) {
            out.push(row);
        }
    }

    let weights_dtype =
        model.tensor_dtype().map_or("f32".to_string(), |d| format!("{d:?}").to_lowercase());
    let out = json!({
        "model": args.model.display().to_string(),
        "adapter": args.adapter.as_ref().map(|d| d.display().to_string()),
        "positions": if args.all_positions { "all" } else { "last" },
        "dtypes": {
            // On the CPU, Model::load_hf keeps every base weight in f32 and hidden states stay
            // f32; on CUDA the tensor path holds weights and activations in bf16.
            "base_weights": weights_dtype,
            "activations": weights_dtype,
            "device": args.device,
            "adapter_weights": args.adapter.as_ref().map(|_| format!("{ADAPTER_DTYPE:?}").to_lowercase()),
        },
        "vocab_size": cfg.vocab_size,
        "prompts": prompts,
        "logits": logits,
    });
    println!("{out}");
    Ok(())
}

/// `"1,2,3"` as token ids.
fn parse_tokens(list: &str) -> Result<Vec<u32>> {
    list.split(',')
        .map(|t| t.trim().parse::<u32>().with_context(|| format!("bad token id `{t}` in `{list}`")))
        .collect()
}
