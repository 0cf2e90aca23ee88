//! The engine on a CUDA device (feature `cuda`; runs on the GPU machine, never in CI): the
//! bf16 tensor path against the host f32 path on the same batch (prefill chunks next to
//! decode tokens, adapters of ranks 4, 8 and 16 on different projections, a sequence
//! without adapter), and the whole engine (scheduler, GPU adapter tier with eviction,
//! sampling) against the CPU engine.
//!
//! Tolerance: bf16 keeps 8 significant bits, so each rounding (weights, activations after
//! every projection, norm, residual add, the KV cache) is off by at most 2^-9 = 0.2% of the
//! value; the roughly 12 roundings on the way from embedding to logits in this 2-layer model,
//! if independent, add up to about 0.2% x sqrt(12) = 0.7% of the logit scale. The bound is
//! 2e-2 of the row's largest logit, about 3x that estimate; the test prints what it measured.
//! Greedy tokens are compared where they are well-defined: only while the CPU's top-2
//! margin exceeds twice the bound can bf16 noise not flip the choice.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device};
use common::batch::{self, seqs, slots, wide_config, SPECS};
use common::{write_adapter, write_model_with};
use openledger_worker::engine::{
    AdapterCacheConfig, Engine, EngineConfig, KvCacheConfig, Model, SamplingParams, StreamEvent,
};

/// Largest logit error allowed, relative to the row's largest logit.
const TOLERANCE: f64 = 2e-2;
/// Seed of the random model; chosen (on the CPU) so that the greedy margins of the schedule
/// are well above 2 x TOLERANCE for the first tokens of every sequence.
const MODEL_SEED: u64 = 5;
/// Tokens generated per sequence.
const GENERATE: usize = 8;

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device (these tests run on the GPU machine)")
}

#[test]
fn cuda_logits_match_cpu_f32_within_bf16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), MODEL_SEED);
    let gpu = cuda();
    let host = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let model = Model::load_hf(dir.path(), &gpu).unwrap();
    assert_eq!(model.tensor_dtype(), Some(DType::BF16));
    let (lora_cpu, lora_gpu) =
        (slots(dir.path(), &cfg, &Device::Cpu), slots(dir.path(), &cfg, &gpu));
    for block_size in [16, 4] {
        let want = batch::run(&host, &lora_cpu, &seqs(), 4, GENERATE, block_size, None);
        let got =
            batch::run(&model, &lora_gpu, &seqs(), 4, GENERATE, block_size, Some(&want.generated));
        let err = batch::max_relative_error(&want, &got);
        eprintln!("block size {block_size}: max |cuda - cpu| / max |cpu| = {err:.3e}");
        assert!(err < TOLERANCE, "block size {block_size}: relative logit error {err:e}");

        // Free-running greedy on the GPU: the same tokens as the CPU for as long as the CPU's
        // choices are well-conditioned.
        let free = batch::run(&model, &lora_gpu, &seqs(), 4, GENERATE, block_size, None);
        let mut checked = 0;
        for (i, m) in want.margins.iter().enumerate() {
            let n = m.iter().take_while(|&&m| m > 2.0 * TOLERANCE).count();
            assert_eq!(
                free.generated[i][..n],
                want.generated[i][..n],
                "sequence {i}: greedy tokens differ within the well-conditioned prefix of {n}"
            );
            checked += n;
        }
        eprintln!("greedy tokens compared: {checked} of {}", seqs().len() * GENERATE);
        assert!(checked >= seqs().len() * GENERATE / 2, "too few well-conditioned tokens");
    }
}

/// Tokens each request streamed.
fn streamed(rx: &[std::sync::mpsc::Receiver<StreamEvent>]) -> Vec<Vec<u32>> {
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

#[test]
fn cuda_engine_generates_what_the_cpu_engine_does_with_gpu_adapter_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model_with(dir.path(), &wide_config(), MODEL_SEED);
    let gpu = cuda();
    // The well-conditioned prefix of each request's greedy tokens, from the CPU.
    let host = Model::load_hf(dir.path(), &Device::Cpu).unwrap();
    let reference =
        batch::run(&host, &slots(dir.path(), &cfg, &Device::Cpu), &seqs(), 4, GENERATE, 16, None);
    let prefix: Vec<usize> = reference
        .margins
        .iter()
        .map(|m| m.iter().take_while(|&&m| m > 2.0 * TOLERANCE).count())
        .collect();
    let tok =
        openledger_worker::engine::load_tokenizer(&dir.path().join("tokenizer.json")).unwrap();
    let mut outputs = Vec::new();
    for device in [Device::Cpu, gpu] {
        let model = Model::load_hf(dir.path(), &device).unwrap();
        // Two compute slots for three adapters and two running sequences: adapters are
        // evicted from the GPU and uploaded again while the batch runs.
        let config = EngineConfig {
            kv_cache: KvCacheConfig { block_size: 16, num_blocks: 32 },
            adapters: AdapterCacheConfig { compute_slots: 2, ..AdapterCacheConfig::default() },
            max_running: 2,
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(model, tok.clone(), config).unwrap();
        for (i, spec) in SPECS.iter().enumerate() {
            // The same files (seeds 20..22) as `slots` installs.
            let a = write_adapter(&dir.path().join(format!("a{i}")), &cfg, spec, 20 + i as u64);
            engine.register_adapter(&format!("a{i}"), &a).unwrap();
        }
        let params =
            SamplingParams { max_tokens: GENERATE, ignore_eos: true, ..Default::default() };
        let rx: Vec<_> = seqs()
            .into_iter()
            .map(|s| {
                let adapter = s.slot.map(|k| format!("a{k}"));
                engine.submit_tokens(s.prompt, adapter, params.clone()).unwrap().1
            })
            .collect();
        engine.run_until_idle().unwrap();
        assert!(engine.adapters().compute_bytes_used() > 0);
        outputs.push(streamed(&rx));
    }
    for (i, n) in prefix.iter().enumerate() {
        assert_eq!(outputs[0][i].len(), GENERATE);
        assert_eq!(outputs[1][i].len(), GENERATE);
        // The CPU engine is bitwise batch-invariant: it reproduces the reference schedule.
        assert_eq!(outputs[0][i], reference.generated[i], "request {i}: CPU engine");
        assert_eq!(outputs[1][i][..*n], outputs[0][i][..*n], "request {i}: CUDA engine");
    }
}
