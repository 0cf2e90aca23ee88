//! Causal prefill attention benchmark on a CUDA device (feature `cuda`): the kernels crate's
//! fused kernel (`paged_prefill_attention`, bf16, block size 16, shuffled block tables) on
//! the Llama-3-8B and SmolLM2-135M head shapes, prompts of 512 to 4096 tokens, four prompts
//! in one launch, and a 512-token chunk after a cached 1,536-token prefix; one CSV row per
//! configuration with the achieved TFLOP/s (4 x query-key pairs x heads x head_dim FLOPs,
//! causal pairs only). `kernels/bench/prefill_attn_baseline.py` times PyTorch SDPA on the
//! same shapes in the same run.
//!
//! Method (TOOLCHAIN.md section 5, `openledger_bench::harness::GpuTimer`): an L2 flush before
//! every repetition, CUDA events, the median of 100 after 3 warm-ups.
//!
//! Usage: `prefill-attn-bench OUT.csv`

use std::io::Write;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use openledger_bench::harness::GpuTimer;
use openledger_kernels::{paged_prefill_attention, PrefillBlocks, PrefillChunk};

/// (name, query heads, key/value heads, head_dim).
const SHAPES: [(&str, usize, usize, usize); 2] =
    [("llama3-8b", 32, 8, 128), ("smollm2-135m", 9, 3, 64)];
/// (chunks, tokens each, cached positions before each).
const CONFIGS: [(usize, usize, usize); 6] =
    [(1, 512, 0), (1, 1024, 0), (1, 2048, 0), (1, 4096, 0), (4, 512, 0), (1, 512, 1536)];
const BLOCK_SIZE: usize = 16;
/// Multiplier of the block shuffle (prime, so coprime with the power-of-two block counts).
const SHUFFLE: usize = 7919;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out_path = args.get(1).context("usage: prefill-attn-bench OUT.csv")?;
    let dev = Device::new_cuda(0)?;
    let cuda = dev.as_cuda_device()?.clone();
    let stream = cuda.cuda_stream();
    let mut timer = GpuTimer::new(&dev)?;
    dev.set_seed(11)?;

    let mut out = std::fs::File::create(out_path)?;
    writeln!(out, "shape,heads,kv_heads,head_dim,chunks,len,start,ours_us,tflops")?;
    for &(name, heads, kv_heads, head_dim) in &SHAPES {
        for &(chunks, len, start) in &CONFIGS {
            let per_seq = (start + len).div_ceil(BLOCK_SIZE);
            let num_blocks = chunks * per_seq;
            let cache = (num_blocks, BLOCK_SIZE, kv_heads, head_dim);
            let randn = |shape: (usize, usize, usize, usize)| -> Result<Tensor> {
                Ok(Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(DType::BF16)?)
            };
            let (k, v) = (randn(cache)?, randn(cache)?);
            let q = Tensor::randn(0f32, 1.0, (chunks * len, heads, head_dim), &dev)?
                .to_dtype(DType::BF16)?;
            let tables: Vec<u32> =
                (0..num_blocks).map(|j| ((j * SHUFFLE + 13) % num_blocks) as u32).collect();
            let spans: Vec<PrefillChunk<'_>> = (0..chunks)
                .map(|c| PrefillChunk {
                    q_row: c * len,
                    len,
                    start,
                    table: &tables[c * per_seq..(c + 1) * per_seq],
                })
                .collect();
            let blocks = PrefillBlocks::new(&spans, BLOCK_SIZE)?;
            let scale = 1.0 / (head_dim as f32).sqrt();
            let ms = timer.median_ms(&stream, 3, 100, |_| {
                paged_prefill_attention(&q, &k, &v, &blocks, scale)?;
                Ok(())
            })?;
            let flops = 4.0 * (blocks.causal_pairs() * heads * head_dim) as f64;
            let tflops = flops / (ms * 1e-3) / 1e12;
            writeln!(
                out,
                "{name},{heads},{kv_heads},{head_dim},{chunks},{len},{start},{:.2},{tflops:.1}",
                ms * 1e3
            )?;
            out.flush()?;
            eprintln!(
                "{name} {chunks} x {len} after {start}: {:.1} us, {tflops:.0} TFLOP/s",
                ms * 1e3
            );
        }
    }
    Ok(())
}
