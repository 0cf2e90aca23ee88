//! Random SGMV problems and their f64 answers, and the seeds, devices and tensor helpers
//! every kernel test file shares.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use openledger_kernels::reference::RefAdapter;
use openledger_kernels::{Element, LoraWeights, SegmentMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fresh seed per run (so every run draws new inputs), printed so a failure can be replayed
/// with `SGMV_SEED=<seed>`.
pub fn rng(test: &str) -> StdRng {
    seeded_rng("SGMV_SEED", test)
}

/// A fresh seed per run, or the one in the environment variable `var`; printed with the
/// variable's name so that a failure can be replayed with `<var>=<seed>`.
pub fn seeded_rng(var: &str, test: &str) -> StdRng {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("{test}: {var}={seed}");
    StdRng::seed_from_u64(seed)
}

/// A count from the environment variable `var` (runs under compute-sanitizer lower it), or
/// `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The CPU, and the first CUDA device when the `cuda` feature is on.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    if cfg!(feature = "cuda") {
        d.push(Device::new_cuda(0).expect("a CUDA device (feature `cuda` is on)"));
    }
    d
}

/// `v` (already rounded to `T`) as a `T` tensor of shape `dims` on `dev`.
pub fn tensor<T: Element>(v: &[f64], dims: &[usize], dev: &Device) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&e| e as f32).collect();
    Tensor::from_vec(f, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(T::DTYPE)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

/// A tensor's elements, flattened, in f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    let f: Vec<f32> = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    f.into_iter().map(f64::from).collect()
}

/// One random problem: a ragged segmentation over a shuffled batch, adapters of mixed ranks
/// in scattered slots, and inputs in f64 already rounded to the element type under test.
pub struct Case {
    pub d_in: usize,
    pub d_out: usize,
    pub map: SegmentMap,
    /// Indexed by slot; slots no segment uses hold adapters too (they must not be read).
    pub adapters: Vec<RefAdapter>,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

/// Widths that are not multiples of any tile size, next to round ones.
const DIMS: [usize; 8] = [1, 7, 64, 100, 257, 512, 1000, 1031];
const RANKS: [usize; 9] = [1, 8, 13, 16, 32, 40, 64, 100, 128];

pub fn round_to<T: Element>(v: f64) -> f64 {
    T::from_f32(v as f32).to_f32() as f64
}

fn uniform<T: Element>(rng: &mut StdRng, n: usize, amplitude: f64) -> Vec<f64> {
    (0..n).map(|_| round_to::<T>(rng.random_range(-amplitude..amplitude))).collect()
}

impl Case {
    /// The adapters with every weight replaced by its magnitude.
    fn magnitudes(&self) -> Vec<RefAdapter> {
        self.adapters
            .iter()
            .map(|a| RefAdapter { rank: a.rank, a: abs(&a.a), b: abs(&a.b) })
            .collect()
    }

    /// The shrink's error against the f64 reference, relative to the reference computed on
    /// the magnitudes (`|x| . |a|` per element): an f32 dot product's rounding scales with
    /// its terms, not with its sum, which cancellation can make arbitrarily small (a rank-1
    /// segment of one row is a single dot product of up to 1,031 terms). A wrong or
    /// unwritten element still errs by about its own size.
    pub fn shrink_error(&self, got: &[f64]) -> f64 {
        use openledger_kernels::reference::{relative_error_to, shrink};
        let want = shrink(&self.x, self.d_in, &self.map, &self.adapters);
        let scale = shrink(&abs(&self.x), self.d_in, &self.map, &self.magnitudes());
        relative_error_to(got, &want, &scale)
    }

    /// The expand's error (`y + scale . v . b`, from the given `v`) against the f64
    /// reference, relative to the same computed on magnitudes, for the shrink's reason: a
    /// half-precision kernel rounds `v` to its element type before the product, an error of
    /// ~2^-9 of each term, and `y` and the delta can cancel (seen on an H200: one output of
    /// one row, y -0.0148 and a result of 0.0018, erred by 5.3% of the result; the same
    /// rounding simulated in f64 gives that figure to three digits).
    pub fn expand_error(&self, got: &[f64], v: &[f64]) -> f64 {
        use openledger_kernels::reference::{expand, relative_error_to};
        let want = expand(v, &self.y, self.d_out, &self.map, &self.adapters);
        let scale = expand(&abs(v), &abs(&self.y), self.d_out, &self.map, &self.magnitudes());
        relative_error_to(got, &want, &scale)
    }

    /// `y + delta(x)`'s error against [`Self::reference_delta`], relative to the same
    /// computed on magnitudes (see [`Self::expand_error`]).
    pub fn delta_error(&self, got: &[f64]) -> f64 {
        use openledger_kernels::reference::{lora_delta, relative_error_to};
        let scale = lora_delta(
            &abs(&self.x),
            &abs(&self.y),
            self.d_in,
            self.d_out,
            &self.map,
            &self.magnitudes(),
        );
        relative_error_to(got, &self.reference_delta(), &scale)
    }

    /// A random case; `max_rows` bounds the batch.
    pub fn random<T: Element>(rng: &mut StdRng, max_rows: usize) -> Case {
        let d_in = DIMS[rng.random_range(0..DIMS.len())];
        let d_out = DIMS[rng.random_range(0..DIMS.len())];
        let num_segments = rng.random_range(0..=6usize);
        // Segment lengths: empty, single-token and longer runs.
        let lens: Vec<usize> = (0..num_segments)
            .map(|_| match rng.random_range(0..4) {
                0 => 0,
                1 => 1,
                _ => rng.random_range(2..=max_rows.max(2) / 2),
            })
            .collect();
        let covered: usize = lens.iter().sum();
        // At least one row: an empty batch has nothing to place on a device.
        let uncovered = rng.random_range(usize::from(covered == 0)..=3);
        let num_rows = covered + uncovered;
        let mut rows: Vec<u32> = (0..num_rows as u32).collect();
        for i in (1..rows.len()).rev() {
            rows.swap(i, rng.random_range(0..=i));
        }
        rows.truncate(covered);
        let mut starts = vec![0u32];
        for l in &lens {
            starts.push(starts.last().unwrap() + *l as u32);
        }
        let num_slots = num_segments + 2;
        let mut slot_ids: Vec<u32> = (0..num_slots as u32).collect();
        for i in (1..slot_ids.len()).rev() {
            slot_ids.swap(i, rng.random_range(0..=i));
        }
        let adapters: Vec<RefAdapter> = (0..num_slots)
            .map(|_| {
                let rank = RANKS[rng.random_range(0..RANKS.len())];
                RefAdapter {
                    rank,
                    a: uniform::<T>(rng, rank * d_in, 1.0 / (d_in as f64).sqrt()),
                    b: uniform::<T>(rng, d_out * rank, 1.0 / (rank as f64).sqrt()),
                }
            })
            .collect();
        let slots: Vec<u32> = slot_ids[..num_segments].to_vec();
        let ranks = slots.iter().map(|&s| adapters[s as usize].rank as u32).collect();
        let scales = (0..num_segments).map(|_| rng.random_range(0.25..2.0f32)).collect();
        let map = SegmentMap::from_parts(num_rows, rows, starts, slots, ranks, scales).unwrap();
        let x = uniform::<T>(rng, num_rows * d_in, 1.0);
        // y of the delta's order of magnitude, so an unwritten row shows in the error.
        let y = uniform::<T>(rng, num_rows * d_out, 0.5);
        Case { d_in, d_out, map, adapters, x, y }
    }

    /// `y + delta(x)` in f64 (the reference every kernel is checked against).
    pub fn reference_delta(&self) -> Vec<f64> {
        openledger_kernels::reference::lora_delta(
            &self.x,
            &self.y,
            self.d_in,
            self.d_out,
            &self.map,
            &self.adapters,
        )
    }

    pub fn describe(&self) -> String {
        let lens: Vec<usize> =
            (0..self.map.num_segments()).map(|s| self.map.segment_range(s).len()).collect();
        format!(
            "d_in={} d_out={} rows={} segment lengths={:?} ranks={:?}",
            self.d_in,
            self.d_out,
            self.map.num_rows(),
            lens,
            self.map.ranks()
        )
    }

    pub fn cast<T: Element>(v: &[f64]) -> Vec<T> {
        v.iter().map(|&e| T::from_f32(e as f32)).collect()
    }

    /// The adapters as element-type buffers, owned.
    pub fn weights<T: Element>(&self) -> Vec<(Vec<T>, Vec<T>)> {
        self.adapters.iter().map(|a| (Self::cast(&a.a), Self::cast(&a.b))).collect()
    }

    /// Rows that no segment covers.
    pub fn uncovered_rows(&self) -> Vec<usize> {
        let mut covered = vec![false; self.map.num_rows()];
        for &r in self.map.rows() {
            covered[r as usize] = true;
        }
        (0..self.map.num_rows()).filter(|&r| !covered[r]).collect()
    }
}

pub fn views<T>(owned: &[(Vec<T>, Vec<T>)]) -> Vec<LoraWeights<'_, T>> {
    owned.iter().map(|(a, b)| LoraWeights::new(a, b)).collect()
}

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|e| e.abs()).collect()
}

pub fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|e| e.to_f32() as f64).collect()
}

/// The tolerance of the relative error for each element type.
pub fn tolerance<T: Element>() -> f64 {
    match T::DTYPE {
        candle_core::DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

pub fn type_name<T: Element>() -> &'static str {
    match T::DTYPE {
        candle_core::DType::F32 => "f32",
        candle_core::DType::BF16 => "bf16",
        candle_core::DType::F16 => "f16",
        _ => "?",
    }
}

pub type Bf16 = bf16;
pub type F16 = f16;
