//! Random PEFT adapters for a base model: what benchmarks and the demo serve when no trained
//! adapter is at hand. The files are real PEFT files (adapter_config.json and
//! adapter_model.safetensors) with small random weights, so they load and run through the
//! same path as trained ones; their outputs are not meant to be useful.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};
use openledger_model::{ModelConfig, Projection};

/// Writes a PEFT adapter of rank `rank` on `targets` for the model `cfg` into `dir`, with
/// weights drawn uniformly from ±0.02 by a generator seeded with `seed`.
pub fn write_random_adapter(
    dir: &Path,
    cfg: &ModelConfig,
    rank: usize,
    targets: &[Projection],
    seed: u64,
) -> Result<()> {
    let io = |e: std::io::Error| EngineError::Io { path: dir.to_path_buf(), source: e };
    std::fs::create_dir_all(dir).map_err(io)?;
    let modules: Vec<&str> = targets.iter().map(|p| p.module_name()).collect();
    let config = serde_json::json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": modules,
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).map_err(io)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    let mut random = |shape: [usize; 2]| -> Result<Tensor> {
        let v: Vec<f32> = (0..shape[0] * shape[1]).map(|_| rng.random_range(-0.02..0.02)).collect();
        Ok(Tensor::from_vec(v, &shape, &Device::Cpu)?)
    };
    for l in 0..cfg.num_layers {
        for &p in targets {
            let (d_in, d_out) = cfg.proj_dims(p);
            let pre = format!("base_model.model.model.layers.{l}.{}", p.hf_path());
            tensors.insert(format!("{pre}.lora_A.weight"), random([rank, d_in])?);
            tensors.insert(format!("{pre}.lora_B.weight"), random([d_out, rank])?);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
    Ok(())
}
