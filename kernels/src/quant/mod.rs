//! Block-quantized weight matrices (GGUF's Q4_1 and Q8_0) times a batch of f32 rows, on the
//! CPU: the base model's projections for CPU workers.
//!
//! One call multiplies the whole batch (prefill chunks and decode tokens of every sequence),
//! so each weight block is read from memory once per step, whatever the batch size. The
//! activations are first quantized to 16 bits in blocks of 32 ([`QActivations`], once per
//! input and shared by the projections that read it, e.g. q, k and v), then every output is
//!
//! ```text
//! y[t][r] = sum over blocks b of  d_w[r][b] * d_x[t][b] * (q_w[r][b] . q_x[t][b])  (+ m_w[r][b] * s_x[t][b] for Q4_1)
//! ```
//!
//! with the integer dot products on the SIMD units, by one of four kernels chosen at run time
//! (so one binary runs on any x86-64):
//!
//! - **AMX** (Intel Sapphire Rapids and later): a tile multiply of 16 tokens x 16 weight
//!   rows x one block per instruction pair, on a repacked copy of the weights
//!   ([`packed`]); tokens left over from the 16-token tiles go to the AVX-512 kernel;
//! - **AVX-512 VNNI**: the same repacked weights, 16 rows per register, `vpdpbusd`;
//! - **AVX2** and **portable**: GGUF's layout read in place ([`blocks`]).
//!
//! The packed kernels split each 16-bit activation into two signed bytes (`x = 256 hi + lo`)
//! and multiply both by the unsigned weight bytes, so their integer sums are exact and the two
//! give bitwise the same outputs; every output's float operations are the same whichever tile
//! or kernel path computes it, so a row's result does not depend on the batch around it.
//!
//! Three designs of the activations were measured before (`engine/NOTES.md`): llama.cpp's
//! 8-bit activations (fastest, but the embedded model's greedy tokens left its f32 reference
//! within 6 tokens); f32 activations against expanded blocks (exact, slow for one token); and
//! these 16-bit ones: ~0.002% rounding of a block's largest value (greedy tokens equal the
//! f32 reference's, tested).

mod blocks;
mod packed;

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use packed::Packed;

/// Elements per quantization block (both formats and the activations).
pub const BLOCK: usize = 32;

/// The weight formats the CPU path multiplies without dequantizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QFormat {
    /// 32 weights as `d * q + m`, q in 0..16: `{d: f16, m: f16, qs: [u8; 16]}` (20 bytes).
    Q4_1,
    /// 32 weights as `d * q`, q in -128..128: `{d: f16, qs: [i8; 32]}` (34 bytes).
    Q8_0,
}

impl QFormat {
    /// Bytes of one block of 32 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            QFormat::Q4_1 => 20,
            QFormat::Q8_0 => 34,
        }
    }
}

/// A `[rows, cols]` matrix in GGUF block layout, row-major (each row `cols / 32` blocks).
#[derive(Clone, Debug)]
pub struct QMatrix {
    format: QFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    /// The repacked copy the AVX-512 and AMX kernels read, made when one of them first needs
    /// it (at construction when the process uses one).
    packed: OnceLock<Packed>,
}

impl QMatrix {
    /// Takes GGUF block bytes of a `[rows, cols]` matrix.
    pub fn new(format: QFormat, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(KernelError::Quantized(format!(
                "a {format:?} matrix needs a positive multiple of {BLOCK} columns, not {cols}"
            )));
        }
        let want = rows * (cols / BLOCK) * format.block_bytes();
        if data.len() != want {
            return Err(KernelError::Quantized(format!(
                "a {rows}x{cols} {format:?} matrix has {want} bytes, not {}",
                data.len()
            )));
        }
        let m = Self { format, rows, cols, data, packed: OnceLock::new() };
        if Kernel::best().is_packed() {
            m.packed();
        }
        Ok(m)
    }

    /// Quantizes a row-major f32 `[rows, cols]` matrix (tests and tools; models come
    /// quantized).
    pub fn quantize(format: QFormat, rows: usize, cols: usize, w: &[f32]) -> Result<Self> {
        if w.len() != rows * cols {
            return Err(KernelError::Quantized(format!(
                "{} values for a {rows}x{cols} matrix",
                w.len()
            )));
        }
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(KernelError::Quantized(format!(
                "a {format:?} matrix needs a positive multiple of {BLOCK} columns, not {cols}"
            )));
        }
        let mut data = Vec::with_capacity(rows * cols / BLOCK * format.block_bytes());
        for block in w.chunks_exact(BLOCK) {
            match format {
                QFormat::Q4_1 => {
                    let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let d = (hi - lo) / 15.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    data.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                    data.extend_from_slice(&f16::from_f32(lo).to_bits().to_le_bytes());
                    for j in 0..BLOCK / 2 {
                        let q = |x: f32| (((x - lo) * id + 0.5) as u8).min(15);
                        data.push(q(block[j]) | (q(block[j + BLOCK / 2]) << 4));
                    }
                },
                QFormat::Q8_0 => {
                    let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    data.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                    data.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
                },
            }
        }
        Self::new(format, rows, cols, data)
    }

    pub fn format(&self) -> QFormat {
        self.format
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weight data one pass reads: GGUF's blocks, or the repacked copy where the
    /// process's kernel reads that.
    pub fn bytes(&self) -> usize {
        match self.packed.get() {
            Some(p) if Kernel::best().is_packed() => p.bytes(),
            _ => self.data.len(),
        }
    }

    fn packed(&self) -> &Packed {
        self.packed.get_or_init(|| Packed::new(self))
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// The matrix in f32, row-major (the reference path and tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for blk in self.data.chunks_exact(self.format.block_bytes()) {
            let d = f16_at(blk, 0);
            match self.format {
                QFormat::Q4_1 => {
                    let m = f16_at(blk, 2);
                    let qs = &blk[4..20];
                    out.extend(qs.iter().map(|q| d * (q & 0x0f) as f32 + m));
                    out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
                },
                QFormat::Q8_0 => out.extend(blk[2..34].iter().map(|&q| d * q as i8 as f32)),
            }
        }
        out
    }

    /// Row `r` in f32, into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows || out.len() != self.cols {
            return Err(KernelError::Quantized(format!(
                "row {r} into {} values of a {}x{} matrix",
                out.len(),
                self.rows,
                self.cols
            )));
        }
        let bb = self.format.block_bytes();
        let row = &self.data[r * self.row_bytes()..(r + 1) * self.row_bytes()];
        for (blk, out) in row.chunks_exact(bb).zip(out.chunks_exact_mut(BLOCK)) {
            let d = f16_at(blk, 0);
            match self.format {
                QFormat::Q4_1 => {
                    let m = f16_at(blk, 2);
                    for (j, q) in blk[4..20].iter().enumerate() {
                        out[j] = d * (q & 0x0f) as f32 + m;
                        out[j + BLOCK / 2] = d * (q >> 4) as f32 + m;
                    }
                },
                QFormat::Q8_0 => {
                    for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
                        *o = d * q as i8 as f32;
                    }
                },
            }
        }
        Ok(())
    }

    /// `y[t] = W x[t]` for the `x.rows()` rows of the batch; `y` is `[x.rows(), self.rows()]`,
    /// row-major, overwritten.
    pub fn matmul(&self, x: &QActivations, y: &mut [f32]) -> Result<()> {
        matmul_group_on(Kernel::best(), &mut [(self, y)], x)
    }

    #[cfg(test)]
    fn matmul_on(&self, kernel: Kernel, x: &QActivations, y: &mut [f32]) -> Result<()> {
        matmul_group_on(kernel, &mut [(self, y)], x)
    }
}

/// [`QMatrix::matmul`] of several matrices over the same activations (a layer's q, k and v,
/// or gate and up) in one parallel loop: one hand-off to the threads instead of one per
/// matrix. Each `(w, y)` pair gets exactly the bits `w.matmul(x, y)` would give.
pub fn matmul_group(parts: &mut [(&QMatrix, &mut [f32])], x: &QActivations) -> Result<()> {
    matmul_group_on(Kernel::best(), parts, x)
}

fn matmul_group_on(
    kernel: Kernel,
    parts: &mut [(&QMatrix, &mut [f32])],
    x: &QActivations,
) -> Result<()> {
    for (w, y) in parts.iter() {
        if x.cols != w.cols {
            return Err(KernelError::Quantized(format!(
                "activations have {} features, the matrix {}",
                x.cols, w.cols
            )));
        }
        if y.len() != x.rows * w.rows {
            return Err(KernelError::Quantized(format!(
                "output holds {} values, {} x {} needed",
                y.len(),
                x.rows,
                w.rows
            )));
        }
    }
    if x.rows == 0 {
        return Ok(());
    }
    // Per matrix, tasks of whole units (row quads, or the packed kernels' groups of 16 rows),
    // enough of them to balance the threads.
    let threads = rayon::current_num_threads().max(1);
    let unit = kernel.rows_per_unit();
    let mut tasks = Vec::new();
    let mut outs = Vec::with_capacity(parts.len());
    for (i, (w, y)) in parts.iter_mut().enumerate() {
        let units = w.rows.div_ceil(unit);
        let per_task = if kernel.is_packed() {
            (units / (threads * 4)).clamp(1, 4)
        } else {
            (units / (threads * 8)).clamp(4, 64) & !3
        };
        tasks.extend((0..units).step_by(per_task).map(|u0| (i, u0, (u0 + per_task).min(units))));
        if kernel.is_packed() {
            w.packed();
        }
        outs.push((*w, SyncPtr(y.as_mut_ptr())));
    }
    tasks.into_par_iter().for_each(|(i, u0, u1)| {
        if let Some(&(w, out)) = outs.get(i) {
            // SAFETY: tasks write disjoint columns of their matrix's output (units u0..u1),
            // whose length was checked above; the kernel is one this CPU runs.
            unsafe { kernel.run(w, x, u0, u1, out) };
        }
    });
    Ok(())
}

/// A batch of activation rows quantized to 16 bits in blocks of 32: per block a scale `d`,
/// `s = d * sum(q)` and the 32 values, and for the packed kernels each value split into two
/// signed bytes and the block's integer sum.
#[derive(Clone, Debug, Default)]
pub struct QActivations {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<i16>,
    /// Per block the 32 low bytes, then the 32 high bytes, of `q = 256 hi + lo` with `lo` in
    /// -128..128: `[rows][blocks][64]`, the rows an AMX tile loads with one stride.
    split: Vec<i8>,
    /// Per block, `sum(q)`.
    sums: Vec<i32>,
}

impl QActivations {
    /// Quantizes row-major `x` (`[rows, cols]`, `cols` a multiple of 32).
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<Self> {
        let mut q = Self::default();
        q.requantize(x, rows, cols)?;
        Ok(q)
    }

    /// Like [`QActivations::quantize`], reusing this value's buffers.
    pub fn requantize(&mut self, x: &[f32], rows: usize, cols: usize) -> Result<()> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || x.len() != rows * cols {
            return Err(KernelError::Quantized(format!(
                "cannot quantize {} values as {rows} rows of {cols} (a positive multiple of {BLOCK})",
                x.len()
            )));
        }
        let nb = rows * cols / BLOCK;
        self.rows = rows;
        self.cols = cols;
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        self.qs.resize(nb * BLOCK, 0);
        self.split.resize(nb * 2 * BLOCK, 0);
        self.sums.resize(nb, 0);
        let per_task = 64.max(nb / (rayon::current_num_threads() * 4).max(1));
        x.par_chunks(per_task * BLOCK)
            .zip(self.qs.par_chunks_mut(per_task * BLOCK))
            .zip(self.d.par_chunks_mut(per_task).zip(self.s.par_chunks_mut(per_task)))
            .zip(
                self.split
                    .par_chunks_mut(per_task * 2 * BLOCK)
                    .zip(self.sums.par_chunks_mut(per_task)),
            )
            .for_each(|(((x, qs), (d, s)), (split, sums))| {
                for ((((x, q), d), s), (split, sum)) in x
                    .chunks_exact(BLOCK)
                    .zip(qs.chunks_exact_mut(BLOCK))
                    .zip(d)
                    .zip(s)
                    .zip(split.chunks_exact_mut(2 * BLOCK).zip(sums))
                {
                    *sum = quantize_block(x, q, d, s);
                    let (lo, hi) = split.split_at_mut(BLOCK);
                    for ((&q, lo), hi) in q.iter().zip(lo).zip(hi) {
                        // |q| <= QMAX keeps hi in -127..=127.
                        let l = (q as i8 as i16 + 128) as u8 as i16 - 128;
                        *lo = l as i8;
                        *hi = ((q - l) >> 8) as i8;
                    }
                }
            });
        Ok(())
    }

    /// Rows of the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Features per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Quantizes one block; returns `sum(q)`.
fn quantize_block(x: &[f32], q: &mut [i16], d: &mut f32, s: &mut f32) -> i32 {
    // The largest value whose split `256 hi + lo` keeps both bytes signed (hi <= 127).
    const QMAX: f32 = 32639.0;
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / QMAX;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(x) {
        // Round to nearest even by the float adder (1.5 * 2^23 leaves no fraction bits for
        // |v * inv| <= QMAX), not a libm call per value.
        const ROUND: f32 = 12_582_912.0;
        let r = ((v * inv + ROUND) - ROUND).clamp(-QMAX, QMAX) as i16;
        sum += r as i32;
        *q = r;
    }
    *d = scale;
    *s = scale * sum as f32;
    sum
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only to hand disjoint parts of one output buffer to rayon tasks.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Amx,
}

impl Kernel {
    /// Every kernel this CPU can run, the portable one first (the tests compare them all).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        use crate::options::{supported_simd, SimdLevel};
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let level = supported_simd();
            if level >= SimdLevel::Avx2 {
                kernels.push(Kernel::Avx2);
            }
            if level >= SimdLevel::Avx512Vnni {
                kernels.push(Kernel::Avx512);
            }
            if level >= SimdLevel::Amx {
                kernels.push(Kernel::Amx);
            }
        }
        kernels
    }

    /// The fastest kernel at the process's SIMD level ([`crate::options::simd`]: the
    /// `OPENLEDGER_NO_SIMD`, `OPENLEDGER_NO_AVX512` and `OPENLEDGER_NO_AMX` switches lower it).
    fn best() -> Self {
        use crate::options::{simd, SimdLevel};
        match simd() {
            SimdLevel::Portable => Kernel::Portable,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Kernel::Avx2,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Vnni => Kernel::Avx512,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Amx => Kernel::Amx,
            #[cfg(not(target_arch = "x86_64"))]
            _ => Kernel::Portable,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => "amx",
        }
    }

    /// Whether the kernel reads the repacked weights ([`packed`]).
    fn is_packed(self) -> bool {
        self.rows_per_unit() > 1
    }

    /// Output columns per unit of work: one row, or a packed group.
    fn rows_per_unit(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Amx => packed::ROWS,
            _ => 1,
        }
    }

    /// Computes the columns of units `u0..u1` ([`Kernel::rows_per_unit`]) of every output row.
    ///
    /// # Safety
    /// `y` points at `x.rows * w.rows` values that no one else writes in those columns, the
    /// CPU has the kernel's features (`Kernel::available`), and a packed kernel's matrix has
    /// its packed copy.
    unsafe fn run(self, w: &QMatrix, x: &QActivations, u0: usize, u1: usize, y: SyncPtr) {
        match self {
            Kernel::Portable => blocks::portable(w, x, u0, u1, y),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => blocks::avx2::run(w, x, u0, u1, y),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                if let Some(p) = w.packed.get() {
                    packed::avx512::run(w, p, x, u0, u1, 0, x.rows, y)
                }
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => {
                if let Some(p) = w.packed.get() {
                    packed::amx::run(w, p, x, u0, u1, y)
                }
            },
        }
    }
}

/// The quantized matmul kernel this process uses: `portable`, `avx2`, `avx512` (AVX-512 VNNI
/// on the repacked weights) or `amx` (AMX tiles, AVX-512 for the remainder); chosen at run
/// time from the CPU's features.
pub fn quantized_kernel() -> &'static str {
    Kernel::best().name()
}

#[cfg(test)]
mod tests;
