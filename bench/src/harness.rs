//! Timing and reporting shared by every benchmark binary: medians and percentiles, the
//! process's peak memory, and (feature `cuda`) the device timer of TOOLCHAIN.md section 5.

/// The median of `values` (sorted in place); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `p`-th percentile (0-100, nearest rank) of values already sorted; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Milliseconds in a duration, as the reports print them.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The mean of `steps` engine steps' phases (`phases` summed over them), in microseconds per
/// step, as a JSON object; `host` is the step less its readback: the engine's own work, during
/// which a GPU has nothing queued.
pub fn phases_json(phases: &openledger_engine::StepPhases, steps: usize) -> String {
    let n = steps.max(1) as f64;
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n;
    format!(
        "{{\"steps\":{steps},\"schedule\":{:.1},\"forward\":{:.1},\"readback\":{:.1},\"sample\":{:.1},\"emit\":{:.1},\"host\":{:.1}}}",
        us(phases.schedule),
        us(phases.forward),
        us(phases.readback),
        us(phases.sample),
        us(phases.emit),
        us(phases.total() - phases.readback)
    )
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB; 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(feature = "cuda")]
pub use gpu::{copy_gbs, generated, GpuTimer};

#[cfg(feature = "cuda")]
mod gpu {
    use std::sync::Arc;

    use anyhow::Result;
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda_backend::cudarc::driver::CudaStream;
    use candle_core::{DType, Device, Tensor};

    /// `amp * sin(0.37 r + 0.91 c + phase)` over an `[rows, cols]` grid, as bf16: inputs with
    /// no special structure, identical on every run and in the PyTorch baselines.
    pub fn generated(
        rows: usize,
        cols: usize,
        phase: f64,
        amp: f64,
        dev: &Device,
    ) -> Result<Tensor> {
        let r =
            Tensor::arange(0u32, rows as u32, dev)?.to_dtype(DType::F32)?.affine(0.37, phase)?;
        let c = Tensor::arange(0u32, cols as u32, dev)?.to_dtype(DType::F32)?.affine(0.91, 0.0)?;
        let grid = r.reshape((rows, 1))?.broadcast_add(&c.reshape((1, cols))?)?;
        Ok(grid.sin()?.affine(amp, 0.0)?.to_dtype(DType::BF16)?)
    }

    /// The device-to-device copy bandwidth (bytes read plus written per second, in GB/s) of
    /// a 1 GiB copy, the median of `reps` timed as every kernel is: the yardstick each GPU
    /// benchmark prints its achieved bandwidth against, measured in the same run. Takes the
    /// stream's `Arc` (candle's `cuda_stream()`): cudarc allocates and copies through it.
    pub fn copy_gbs(timer: &mut GpuTimer, stream: &Arc<CudaStream>, reps: usize) -> Result<f64> {
        let n = 1usize << 30;
        let src = stream.alloc_zeros::<u8>(n)?;
        let mut dst = stream.alloc_zeros::<u8>(n)?;
        let ms = timer.median_ms(stream, 3, reps, |_| Ok(stream.memcpy_dtod(&src, &mut dst)?))?;
        let gbs = 2.0 * n as f64 / (ms * 1e-3) / 1e9;
        eprintln!("device-to-device copy: {gbs:.0} GB/s");
        Ok(gbs)
    }

    /// Times device work with CUDA events, each repetition after an L2 flush: a reduction
    /// over 256 MiB, which evicts L2 without leaving dirty lines behind (a memset does, and
    /// their write-back lands in the timed call) and keeps the device busy while the host
    /// queues the call, so the events time device work, not launch overhead.
    pub struct GpuTimer {
        flush: Tensor,
    }

    impl GpuTimer {
        /// A timer on `dev` (allocates the 256 MiB flush buffer).
        pub fn new(dev: &Device) -> Result<Self> {
            Ok(Self { flush: Tensor::zeros(64 << 20, DType::F32, dev)? })
        }

        /// Median milliseconds of `reps` runs of `f(i)` after `warmup` untimed ones.
        pub fn median_ms(
            &mut self,
            stream: &CudaStream,
            warmup: usize,
            reps: usize,
            mut f: impl FnMut(usize) -> Result<()>,
        ) -> Result<f64> {
            for i in 0..warmup {
                f(i)?;
            }
            let mut times = Vec::with_capacity(reps);
            for i in 0..reps {
                self.flush.sum_all()?;
                let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                f(i)?;
                let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                end.synchronize()?;
                times.push(start.elapsed_ms(&end)? as f64);
            }
            Ok(super::median(&mut times))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles_pick_ranks() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
        let sorted = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&sorted, 50.0), 3.0);
        assert_eq!(percentile(&sorted, 99.0), 5.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
    }
}
