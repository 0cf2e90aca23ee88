//! Times the CPU path (`cpu::lora_delta`, bf16) on decode-like and prefill-like batches.
//! `cargo run -p openledger-kernels --release --example cpu_speed`

use std::time::Instant;

use half::bf16;
use openledger_kernels::cpu::{self, CpuWorkspace};
use openledger_kernels::{AdapterSlot, LoraWeights, SegmentMap};

fn main() {
    let threads = rayon::current_num_threads();
    println!("rayon threads: {threads}");
    for &(d_in, d_out, rank, tokens, n) in &[
        (4096, 4096, 16, 1, 1),
        (4096, 4096, 16, 8, 4),
        (4096, 4096, 64, 16, 16),
        (4096, 14336, 16, 64, 4),
        (4096, 4096, 16, 256, 1),
    ] {
        let weights: Vec<(Vec<bf16>, Vec<bf16>)> = (0..n)
            .map(|i| {
                let a = (0..rank * d_in)
                    .map(|k| bf16::from_f32(((k + i) % 97) as f32 * 1e-3))
                    .collect();
                let b = (0..d_out * rank)
                    .map(|k| bf16::from_f32(((k + i) % 89) as f32 * 1e-3))
                    .collect();
                (a, b)
            })
            .collect();
        let views: Vec<LoraWeights<bf16>> =
            weights.iter().map(|(a, b)| LoraWeights { a, b }).collect();
        let per = tokens / n;
        let keys: Vec<Option<u32>> = (0..n as u32).map(Some).collect();
        let map = SegmentMap::new(&keys, &vec![per; n], |k| {
            Some(AdapterSlot { slot: k, rank: rank as u32, scale: 0.5 })
        })
        .unwrap();
        let x: Vec<bf16> =
            (0..map.num_rows() * d_in).map(|k| bf16::from_f32((k % 13) as f32 * 0.1)).collect();
        let mut y = vec![bf16::ZERO; map.num_rows() * d_out];
        let mut ws = CpuWorkspace::new();
        let mut run =
            || cpu::lora_delta(&x, &mut y, d_in, d_out, &map, &views[..], &mut ws).unwrap();
        for _ in 0..3 {
            run();
        }
        let reps = 20;
        let start = Instant::now();
        for _ in 0..reps {
            run();
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        let bytes = n * rank * (d_in + d_out) * 2 + tokens * d_in * 2 + tokens * d_out * 4;
        let flops = 2.0 * (tokens * rank * (d_in + d_out)) as f64;
        println!(
            "{d_in}x{d_out} r={rank} T={tokens} n={n}: {:.1} us, {:.1} GB/s, {:.1} GFLOP/s",
            secs * 1e6,
            bytes as f64 / secs / 1e9,
            flops / secs / 1e9
        );
    }
}
