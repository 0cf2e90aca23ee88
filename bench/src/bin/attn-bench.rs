//! Paged decode attention benchmark on a CUDA device (feature `cuda`): bf16, block size 16,
//! the Llama-3-8B and SmolLM2-135M head shapes over batch x context grids; one CSV row per
//! configuration, with the device-to-device copy bandwidth of the same run on the first line.
//!
//! Method (TOOLCHAIN.md section 5, `openledger_bench::harness::GpuTimer`): an L2 flush before
//! every repetition, CUDA events, the median of the repetitions after warm-up. Inputs follow the closed-form generator that
//! `kernels/bench/attn_baseline.py` repeats, so the PyTorch baselines run on the same values
//! and block tables.
//!
//! Usage: `attn-bench OUT.csv [--quick]`

use std::io::Write;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use openledger_bench::harness::{copy_gbs, generated, GpuTimer};
use openledger_kernels::{paged_decode_attention_with, DecodeBlocks};

/// (name, query heads, key/value heads, head_dim).
const SHAPES: [(&str, usize, usize, usize); 2] =
    [("llama3-8b", 32, 8, 128), ("smollm2-135m", 9, 3, 64)];
const BATCHES: [usize; 6] = [1, 8, 32, 64, 128, 256];
const CONTEXTS: [usize; 4] = [128, 512, 2048, 8192];
const BLOCK_SIZE: usize = 16;
/// Rows of the generated pattern that fills the caches (repeated).
const PATTERN_ROWS: usize = 65536;
/// Multiplier of the block shuffle (prime, so coprime with the power-of-two block counts).
const SHUFFLE: usize = 7919;

/// A cache of `rows` rows of `cols`: the pattern repeated (the same values at other
/// addresses are read from memory all the same).
fn cache(rows: usize, cols: usize, phase: f64, dev: &Device) -> Result<Tensor> {
    let pattern = generated(PATTERN_ROWS.min(rows), cols, phase, 1.0, dev)?;
    let copies = rows.div_ceil(PATTERN_ROWS);
    Ok(pattern.repeat((copies, 1))?.narrow(0, 0, rows)?.contiguous()?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out_path = args.get(1).context("usage: attn-bench OUT.csv [--quick]")?;
    let quick = args.iter().any(|a| a == "--quick");
    let dev = Device::new_cuda(0)?;
    let cuda = dev.as_cuda_device()?.clone();
    let stream = cuda.cuda_stream();
    let mut timer = GpuTimer::new(&dev)?;

    // Copy bandwidth: a 1 GiB device-to-device copy, bytes read plus written.
    let copy_gbs = copy_gbs(&mut timer, &stream, 30)?;

    let mut out = std::fs::File::create(out_path)?;
    writeln!(out, "# copy_gbs={copy_gbs:.1}")?;
    writeln!(out, "shape,heads,kv_heads,head_dim,batch,context,ours_us,bytes,gbs,pct_copy")?;
    for &(name, heads, kv_heads, head_dim) in &SHAPES {
        for &context in &CONTEXTS {
            for &batch in &BATCHES {
                if quick && batch * context > 8192 {
                    continue;
                }
                let per_seq = context / BLOCK_SIZE;
                let num_blocks = batch * per_seq;
                let rows = num_blocks * BLOCK_SIZE * kv_heads;
                let shape = (num_blocks, BLOCK_SIZE, kv_heads, head_dim);
                let k = cache(rows, head_dim, 0.0, &dev)?.reshape(shape)?;
                let v = cache(rows, head_dim, 0.5, &dev)?.reshape(shape)?;
                let q = generated(batch * heads, head_dim, 7.0, 1.0, &dev)?
                    .reshape((batch, heads, head_dim))?;
                let tables: Vec<u32> =
                    (0..num_blocks).map(|j| ((j * SHUFFLE + 13) % num_blocks) as u32).collect();
                let tables = Tensor::from_vec(tables, (batch, per_seq), &Device::Cpu)?;
                let lens = Tensor::from_vec(vec![context as u32; batch], batch, &Device::Cpu)?;
                let blocks = DecodeBlocks::new(&tables, &lens, BLOCK_SIZE, context)?;
                let scale = 1.0 / (head_dim as f32).sqrt();
                let kv_bytes = 2 * batch * context * kv_heads * head_dim * 2;
                let ms = timer.median_ms(&stream, 3, 100, |_| {
                    paged_decode_attention_with(&q, &k, &v, &blocks, scale)?;
                    Ok(())
                })?;
                let bytes = kv_bytes + 2 * 2 * batch * heads * head_dim;
                let gbs = bytes as f64 / (ms * 1e-3) / 1e9;
                writeln!(
                    out,
                    "{name},{heads},{kv_heads},{head_dim},{batch},{context},{:.2},{bytes},{gbs:.1},{:.1}",
                    ms * 1e3,
                    100.0 * gbs / copy_gbs
                )?;
                out.flush()?;
                eprintln!(
                    "{name} B={batch} ctx={context}: {:.2} us, {gbs:.0} GB/s, {:.0}% of copy",
                    ms * 1e3,
                    100.0 * gbs / copy_gbs
                );
            }
        }
    }
    Ok(())
}
