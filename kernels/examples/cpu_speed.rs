//! Times the CPU path (`cpu::lora_delta`: f32 activations, bf16 adapters, as the CPU engine
//! runs it) on decode-like and prefill-like batches, with lora_B in PEFT's layout and
//! transposed (what CPU adapter tables store), alternating so both see the same machine.
//! Then a whole decode step's LoRA as the engine runs it at 32 sequences with 32 distinct
//! rank-16 adapters on SmolLM2-135M (30 layers x 7 projections, ~313 MB of bf16 tables, far
//! beyond the caches): bf16 tables against row-quantized ones.
//! `cargo run -p openledger-kernels --release --example cpu_speed`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use openledger_kernels::cpu::{self, CpuWorkspace};
use openledger_kernels::{
    lora_delta_host, AdapterSlot, AdapterTable, BatchSegments, LoraWeights, SegmentMap,
};

fn main() {
    let threads = rayon::current_num_threads();
    println!("rayon threads: {threads}");
    decode_step();
    // (d_in, d_out, rank, tokens, adapters): SmolLM2-135M's projections at decode with one
    // adapter per sequence, then larger shapes.
    for &(d_in, d_out, rank, tokens, n) in &[
        (576, 576, 16, 8, 8),
        (576, 1536, 16, 8, 8),
        (576, 576, 16, 32, 32),
        (576, 1536, 16, 32, 32),
        (1536, 576, 16, 32, 32),
        (4096, 4096, 16, 1, 1),
        (4096, 4096, 16, 8, 4),
        (4096, 4096, 64, 16, 16),
        (4096, 14336, 16, 64, 4),
        (4096, 4096, 16, 256, 1),
    ] {
        let weights: Vec<(Vec<bf16>, Vec<bf16>, Vec<bf16>)> = (0..n)
            .map(|i| {
                let a = (0..rank * d_in)
                    .map(|k| bf16::from_f32(((k + i) % 97) as f32 * 1e-3))
                    .collect();
                let b: Vec<bf16> = (0..d_out * rank)
                    .map(|k| bf16::from_f32(((k + i) % 89) as f32 * 1e-3))
                    .collect();
                let bt = (0..rank * d_out).map(|k| b[(k % d_out) * rank + k / d_out]).collect();
                (a, b, bt)
            })
            .collect();
        let peft: Vec<LoraWeights<bf16>> =
            weights.iter().map(|(a, b, _)| LoraWeights::new(a, b)).collect();
        let transposed: Vec<LoraWeights<bf16>> =
            weights.iter().map(|(a, _, bt)| LoraWeights::with_b_transposed(a, bt)).collect();
        let per = tokens / n;
        let keys: Vec<Option<u32>> = (0..n as u32).map(Some).collect();
        let map = SegmentMap::new(&keys, &vec![per; n], |k| {
            Some(AdapterSlot { slot: k, rank: rank as u32, scale: 0.5 })
        })
        .unwrap();
        let x: Vec<f32> = (0..map.num_rows() * d_in).map(|k| (k % 13) as f32 * 0.1).collect();
        let mut y = vec![0f32; map.num_rows() * d_out];
        let mut ws = CpuWorkspace::new();
        let reps = (2_000_000 / (tokens * rank * (d_in + d_out)).max(1)).clamp(20, 2000);
        let mut secs = [f64::MAX; 2];
        for _round in 0..3 {
            for (i, views) in [&peft, &transposed].into_iter().enumerate() {
                let mut run =
                    || cpu::lora_delta(&x, &mut y, d_in, d_out, &map, &views[..], &mut ws).unwrap();
                run();
                let start = Instant::now();
                for _ in 0..reps {
                    run();
                }
                secs[i] = secs[i].min(start.elapsed().as_secs_f64() / reps as f64);
            }
        }
        let bytes = n * rank * (d_in + d_out) * 2 + tokens * d_in * 4 + tokens * d_out * 8;
        let flops = 2.0 * (tokens * rank * (d_in + d_out)) as f64;
        for (label, s) in [("peft B", secs[0]), ("B^T", secs[1])] {
            println!(
                "{d_in}x{d_out} r={rank} T={tokens} n={n} {label:6}: {:8.1} us, {:5.1} GB/s, {:5.1} GFLOP/s",
                s * 1e6,
                bytes as f64 / s / 1e9,
                flops / s / 1e9
            );
        }
    }
}

/// One decode step's LoRA over every layer and projection, bf16 and quantized tables
/// alternating, best of five per round.
fn decode_step() {
    let (n, rank, layers) = (32usize, 16usize, 30);
    let shapes =
        [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)];
    let mut sets: [Vec<(usize, usize, AdapterTable)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..layers {
        for &(d_in, d_out) in &shapes {
            for (q, set) in sets.iter_mut().enumerate() {
                let mut t = if q == 1 {
                    AdapterTable::new_quantized(DType::BF16, d_in, d_out, n)
                } else {
                    AdapterTable::new(&Device::Cpu, DType::BF16, d_in, d_out, n)
                };
                for slot in 0..n as u32 {
                    let w = |dims: (usize, usize)| {
                        Tensor::randn(0f32, 0.05, dims, &Device::Cpu)
                            .and_then(|t| t.to_dtype(DType::BF16))
                            .expect("random weights")
                    };
                    t.insert(slot, &w((rank, d_in)), &w((d_out, rank))).expect("inserted");
                }
                set.push((d_in, d_out, t));
            }
        }
    }
    let keys: Vec<Option<u32>> = (0..n as u32).map(Some).collect();
    let map = SegmentMap::new(&keys, &vec![1; n], |s| {
        Some(AdapterSlot { slot: s, rank: rank as u32, scale: 1.0 })
    })
    .expect("segments");
    let segments = BatchSegments::new(map);
    let (x, mut y) = (vec![0.5f32; n * 1536], vec![0f32; n * 1536]);
    for round in 0..3 {
        for (label, set) in ["bf16", "int8"].iter().zip(&sets) {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                for (d_in, d_out, t) in set {
                    lora_delta_host(&x[..n * d_in], &mut y[..n * d_out], &segments, t)
                        .expect("lora_delta");
                }
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!(
                "decode step LoRA, 32 seqs x 32 adapters, {label} tables, round {round}: {:.2} ms",
                best * 1e3
            );
        }
    }
}
