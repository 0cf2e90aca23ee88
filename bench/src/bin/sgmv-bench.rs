//! SGMV benchmark on a CUDA device (feature `cuda`): times `lora_delta` (shrink + expand)
//! for the shapes of docs/benchmarks.md and writes one CSV row per configuration.
//!
//! Method (TOOLCHAIN.md section 5): a read of 256 MiB before every repetition flushes L2 and
//! gives the host time to queue the launches, so events time device work alone (a read, not
//! a memset: a memset leaves L2 full of dirty lines that the timed call's reads would first
//! have to write back); x and y
//! rotate over several sets; median of the repetitions after warm-up. Inputs follow the
//! closed-form generator of `scripts/sgmv_baselines.py` (sin of a 2-D index), so the PyTorch
//! baselines run on the same values.
//!
//! Usage: `sgmv-bench OUT.csv [--quick] [--only D_IN,D_OUT,RANK,T,N]` (`--only` runs one
//! configuration, for a profiler; RANK is a number or `mixed`).

use std::io::Write;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use openledger_bench::harness::{copy_gbs, generated, GpuTimer};
use openledger_kernels::{lora_delta, AdapterSlot, AdapterTable, BatchSegments, SegmentMap};

const SHAPES: [(usize, usize); 4] = [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)];
const TOKENS: [usize; 5] = [1, 16, 64, 256, 1024];
const MIXED: [usize; 3] = [8, 16, 64];
const ROTATIONS: usize = 2;

/// Segment lengths: `tokens` split as evenly as possible over `n` adapters.
fn lengths(tokens: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| tokens / n + usize::from(i < tokens % n)).collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out_path = args.get(1).context("usage: sgmv-bench OUT.csv [--quick]")?;
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let dev = Device::new_cuda(0)?;
    let cuda = dev.as_cuda_device()?.clone();
    let stream = cuda.cuda_stream();
    let mut timer = GpuTimer::new(&dev)?;

    // Copy bandwidth: a 1 GiB device-to-device copy, bytes read plus written.
    let copy_gbs = copy_gbs(&mut timer, &stream, 20)?;
    // The least any call can take when timed this way: one tiny kernel (candle's affine on one
    // element), after the same flush.
    let one = Tensor::zeros(1, DType::F32, &dev)?;
    let tiny_ms = timer.median_ms(&stream, 3, 50, |_| {
        one.affine(1.0, 0.0)?;
        Ok(())
    })?;
    eprintln!("one tiny kernel, timed the same way: {:.2} us", tiny_ms * 1e3);

    let mut out = std::fs::File::create(out_path)?;
    writeln!(out, "# copy_gbs={copy_gbs:.1}")?;
    writeln!(out, "d_in,d_out,rank,tokens,adapters,ours_us,bytes,gbs,pct_copy")?;
    let ranks: Vec<Option<usize>> = vec![Some(8), Some(16), Some(64), None];
    for &(d_in, d_out) in &SHAPES {
        for rank in &ranks {
            for &t in &TOKENS {
                let mut ns: Vec<usize> =
                    [1, 4, 16, 64, t.min(256)].into_iter().filter(|&n| n <= t).collect();
                ns.dedup();
                for n in ns {
                    if quick && (t > 64 || d_out == 14336) {
                        continue;
                    }
                    let rank_label = rank.map_or("mixed".to_string(), |r| r.to_string());
                    if only
                        .as_ref()
                        .is_some_and(|o| *o != format!("{d_in},{d_out},{rank_label},{t},{n}"))
                    {
                        continue;
                    }
                    let rank_of = |i: usize| rank.unwrap_or(MIXED[i % MIXED.len()]);
                    let mut table = AdapterTable::new(&dev, DType::BF16, d_in, d_out, n);
                    let mut weight_bytes = 0;
                    for i in 0..n {
                        let r = rank_of(i);
                        let a = generated(r, d_in, i as f64, 1.0 / (d_in as f64).sqrt(), &dev)?;
                        let b = generated(d_out, r, 0.5 + i as f64, 1.0 / (r as f64).sqrt(), &dev)?;
                        table.insert(i as u32, &a, &b)?;
                        weight_bytes += 2 * r * (d_in + d_out);
                    }
                    let lens = lengths(t, n);
                    let keys: Vec<Option<u32>> = (0..n as u32).map(Some).collect();
                    let map = SegmentMap::new(&keys, &lens, |k| {
                        Some(AdapterSlot { slot: k, rank: rank_of(k as usize) as u32, scale: 0.5 })
                    })?;
                    let segments = BatchSegments::new(map);
                    let xs: Vec<Tensor> = (0..ROTATIONS)
                        .map(|i| generated(t, d_in, 100.0 + i as f64, 1.0, &dev))
                        .collect::<Result<_>>()?;
                    let ys: Vec<Tensor> = (0..ROTATIONS)
                        .map(|i| generated(t, d_out, 200.0 + i as f64, 0.5, &dev))
                        .collect::<Result<_>>()?;
                    let reps = if weight_bytes > (256 << 20) { 20 } else { 50 };
                    let ms = timer.median_ms(&stream, 3, reps, |i| {
                        let k = i % ROTATIONS;
                        Ok(lora_delta(&xs[k], &ys[k], &segments, &table)?)
                    })?;
                    let bytes = weight_bytes + 2 * t * d_in + 2 * 2 * t * d_out;
                    let gbs = bytes as f64 / (ms * 1e-3) / 1e9;
                    writeln!(
                        out,
                        "{d_in},{d_out},{rank_label},{t},{n},{:.2},{bytes},{gbs:.1},{:.1}",
                        ms * 1e3,
                        100.0 * gbs / copy_gbs
                    )?;
                    out.flush()?;
                    eprintln!(
                        "{d_in}x{d_out} r={rank_label} T={t} n={n}: {:.2} us, {:.0}% of copy",
                        ms * 1e3,
                        100.0 * gbs / copy_gbs
                    );
                }
            }
        }
    }
    Ok(())
}
