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
//! with the integer dot products on the SIMD units (AVX2 `vpmaddwd`, chosen at run time, so
//! one binary runs on any x86-64; a portable path elsewhere). Weights stay in GGUF's block
//! layout, read in place: no repacking, no extra memory.
//!
//! Three designs were measured on the benchmark machine (`worker/NOTES.md`): llama.cpp's
//! 8-bit activations with `vpmaddubsw` (fastest, ~26 GMAC/s per core, but the embedded
//! model's greedy tokens left its f32 reference within 6 tokens); blocks expanded to f32 and
//! FMAs with f32 activations (exact, 24-30 GMAC/s from 8 tokens up, but 8-9 GMAC/s for one
//! token, where the expansion is not shared); and this one, 16-bit activations: ~0.002%
//! rounding of a block's largest value (greedy tokens equal the f32 reference's, tested),
//! 15-16 GMAC/s per core for one token and 21-30 for batches.
//!
//! Register tiling: 1 weight row x 4 tokens (a weight block is unpacked once for 4 tokens)
//! for batches, 4 rows x 1 token for the remaining tokens (4 independent accumulation
//! chains). Each output's operations are the same whichever tile computes it, so a row's
//! result does not depend on the batch around it (bitwise).

use half::f16;
use rayon::prelude::*;

use crate::error::{KernelError, Result};

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
        Ok(Self { format, rows, cols, data })
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

    /// Bytes of weight data (what one pass reads).
    pub fn bytes(&self) -> usize {
        self.data.len()
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
    // Per matrix, tasks of whole row quads, enough of them to balance the threads.
    let threads = rayon::current_num_threads().max(1);
    let mut tasks = Vec::new();
    let mut outs = Vec::with_capacity(parts.len());
    for (i, (w, y)) in parts.iter_mut().enumerate() {
        let per_task = (w.rows / (threads * 8)).clamp(4, 64) & !3;
        tasks.extend((0..w.rows).step_by(per_task).map(|r0| (i, r0, (r0 + per_task).min(w.rows))));
        outs.push((*w, SyncPtr(y.as_mut_ptr())));
    }
    tasks.into_par_iter().for_each(|(i, r0, r1)| {
        if let Some(&(w, out)) = outs.get(i) {
            // SAFETY: tasks write disjoint columns r0..r1 of their matrix's output, whose
            // length was checked above.
            unsafe { kernel.run(w, x, r0, r1, out) };
        }
    });
    Ok(())
}

/// A batch of activation rows quantized to 16 bits in blocks of 32: per block a scale `d`,
/// `s = d * sum(q)` and the 32 values.
#[derive(Clone, Debug, Default)]
pub struct QActivations {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<i16>,
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
        let per_task = 64.max(nb / (rayon::current_num_threads() * 4).max(1));
        x.par_chunks(per_task * BLOCK)
            .zip(self.qs.par_chunks_mut(per_task * BLOCK))
            .zip(self.d.par_chunks_mut(per_task).zip(self.s.par_chunks_mut(per_task)))
            .for_each(|((x, qs), (d, s))| {
                for (((x, q), d), s) in
                    x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)).zip(d).zip(s)
                {
                    quantize_block(x, q, d, s);
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

fn quantize_block(x: &[f32], q: &mut [i16], d: &mut f32, s: &mut f32) {
    const QMAX: f32 = 32767.0;
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / QMAX;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(x) {
        let r = (v * inv).round().clamp(-QMAX, QMAX) as i16;
        sum += r as i32;
        *q = r;
    }
    *d = scale;
    *s = scale * sum as f32;
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
            if supported_simd() >= SimdLevel::Avx2 {
                kernels.push(Kernel::Avx2);
            }
            if supported_simd() >= SimdLevel::Avx512Vnni {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }

    /// The fastest kernel at the process's SIMD level ([`crate::options::simd`]:
    /// `OPENLEDGER_NO_SIMD=1` forces the portable one, `OPENLEDGER_NO_AVX512=1` the AVX2 one).
    fn best() -> Self {
        use crate::options::{simd, SimdLevel};
        match simd() {
            SimdLevel::Portable => Kernel::Portable,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Kernel::Avx2,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Vnni => Kernel::Avx512,
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
        }
    }

    /// Computes columns `r0..r1` of every output row.
    ///
    /// # Safety
    /// `y` points at `x.rows * w.rows` values that no one else writes in columns `r0..r1`,
    /// and the CPU has the kernel's features (`Kernel::available`).
    unsafe fn run(self, w: &QMatrix, x: &QActivations, r0: usize, r1: usize, y: SyncPtr) {
        match self {
            Kernel::Portable => portable(w, x, r0, r1, y),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::run(w, x, r0, r1, y),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx2::run_vnni(w, x, r0, r1, y),
        }
    }
}

/// The quantized matmul kernel this process uses: `portable`, `avx2` or `avx512` (AVX2 with
/// AVX-512 VNNI dot products; chosen at run time from the CPU's features).
pub fn quantized_kernel() -> &'static str {
    Kernel::best().name()
}

/// The same function without SIMD: exact integer block dot products, f32 accumulation.
unsafe fn portable(w: &QMatrix, x: &QActivations, r0: usize, r1: usize, y: SyncPtr) {
    let nb = w.cols / BLOCK;
    let bb = w.format.block_bytes();
    for r in r0..r1 {
        let row = &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()];
        for t in 0..x.rows {
            let mut acc = 0f32;
            for b in 0..nb {
                let blk = &row[b * bb..(b + 1) * bb];
                let xb = t * nb + b;
                let xq = &x.qs[xb * BLOCK..(xb + 1) * BLOCK];
                let d = f16_at(blk, 0);
                match w.format {
                    QFormat::Q4_1 => {
                        let qs = &blk[4..20];
                        let mut dot = 0i32;
                        for j in 0..BLOCK / 2 {
                            dot += (qs[j] & 0x0f) as i32 * xq[j] as i32;
                            dot += (qs[j] >> 4) as i32 * xq[j + BLOCK / 2] as i32;
                        }
                        acc += d * x.d[xb] * dot as f32 + f16_at(blk, 2) * x.s[xb];
                    },
                    QFormat::Q8_0 => {
                        let dot: i32 = blk[2..34]
                            .iter()
                            .zip(xq)
                            .map(|(&a, &b)| a as i8 as i32 * b as i32)
                            .sum();
                        // |q_w| <= 128, |q_x| <= 32767: 32 products stay far inside i32.
                        acc += d * x.d[xb] * dot as f32;
                    },
                }
            }
            *y.0.add(t * w.rows + r) = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{QActivations, QFormat, QMatrix, SyncPtr, BLOCK};

    /// Tokens per pass.
    const NT: usize = 4;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run(w: &QMatrix, x: &QActivations, r0: usize, r1: usize, y: SyncPtr) {
        columns::<false>(w, x, r0, r1, y)
    }

    /// The same kernel with each block's dot product as two AVX-512 VNNI `vpdpwssd` (on
    /// 256-bit vectors) instead of two `vpmaddwd` and an add: one vector operation fewer per
    /// block, token and row, and the same integer sums, so the results are bitwise those of
    /// [`run`]. (A 512-bit version, one block per register, was 14% slower on Zen 4, which
    /// splits 512-bit operations in two; see worker/NOTES.md.)
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn run_vnni(w: &QMatrix, x: &QActivations, r0: usize, r1: usize, y: SyncPtr) {
        columns::<true>(w, x, r0, r1, y)
    }

    /// How far ahead, in rows, a single-token tile prefetches its weights.
    const PREFETCH_ROWS: usize = 8;

    #[inline(always)]
    unsafe fn columns<const VNNI: bool>(
        w: &QMatrix,
        x: &QActivations,
        r0: usize,
        r1: usize,
        y: SyncPtr,
    ) {
        // Token groups outside, rows inside: a group's activations and the task's weight
        // rows meet in cache. (2 rows x 4 tokens spilled registers: ~15% slower.)
        let full = x.rows / NT * NT;
        let mut t = 0;
        while t < full {
            for r in r0..r1 {
                tile::<1, NT, VNNI>(w, x, r, t, y);
            }
            t += NT;
        }
        for t in full..x.rows {
            let mut r = r0;
            while r + 4 <= r1 {
                tile::<4, 1, VNNI>(w, x, r, t, y);
                r += 4;
            }
            while r < r1 {
                tile::<1, 1, VNNI>(w, x, r, t, y);
                r += 1;
            }
        }
    }

    /// Outputs `[t..t + T][r..r + R]`. Every output's operations are the same whatever R and
    /// T are, so results do not depend on tiling.
    #[inline(always)]
    unsafe fn tile<const R: usize, const T: usize, const VNNI: bool>(
        w: &QMatrix,
        x: &QActivations,
        r: usize,
        t: usize,
        y: SyncPtr,
    ) {
        let nb = w.cols / BLOCK;
        let bb = w.format.block_bytes();
        let row_bytes = nb * bb;
        let wp = w.data.as_ptr().add(r * row_bytes);
        let xq = x.qs.as_ptr().add(t * nb * BLOCK);
        let xd = x.d.as_ptr().add(t * nb);
        let xs = x.s.as_ptr().add(t * nb);
        let low = _mm_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        // Q4_1's offsets, sum over blocks of m_w * s_x, in scalar registers.
        let mut mins = [[0f32; T]; R];
        for b in 0..nb {
            // Each weight block as two vectors of 16 i16: elements 0..16 and 16..32.
            let mut w0 = [_mm256_setzero_si256(); R];
            let mut w1 = [_mm256_setzero_si256(); R];
            let mut wd = [_mm256_setzero_ps(); R];
            let mut wm = [0f32; R];
            for i in 0..R {
                let blk = wp.add(i * row_bytes + b * bb);
                if T == 1 {
                    // One token reads each weight once: rows are short (~0.4-0.6 KB), too short
                    // for the hardware prefetcher to ramp up, so fetch the same block of the
                    // rows PREFETCH_ROWS ahead (a prefetch never faults, even past the end).
                    let ahead = blk.wrapping_add(PREFETCH_ROWS * row_bytes);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                match w.format {
                    QFormat::Q4_1 => {
                        // d and m, both f16, converted at once.
                        let dm =
                            _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
                        wd[i] = _mm256_broadcastss_ps(dm);
                        wm[i] = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                        let raw = _mm_loadu_si128(blk.add(4) as *const __m128i);
                        w0[i] = _mm256_cvtepu8_epi16(_mm_and_si128(raw, low));
                        w1[i] = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), low));
                    },
                    QFormat::Q8_0 => {
                        let d = _mm_cvtph_ps(_mm_cvtsi32_si128(
                            (blk as *const u16).read_unaligned() as i32,
                        ));
                        wd[i] = _mm256_broadcastss_ps(d);
                        w0[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(2) as *const __m128i));
                        w1[i] =
                            _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(18) as *const __m128i));
                    },
                }
            }
            for j in 0..T {
                let xb = j * nb + b;
                let x0 = _mm256_loadu_si256(xq.add(xb * BLOCK) as *const __m256i);
                let x1 = _mm256_loadu_si256(xq.add(xb * BLOCK + 16) as *const __m256i);
                let dx = _mm256_broadcast_ss(&*xd.add(xb));
                let sx = *xs.add(xb);
                for i in 0..R {
                    // |q_w| <= 128 and |q_x| <= 32767: pair sums and their sum fit in i32.
                    let dot = if VNNI {
                        let half = _mm256_dpwssd_epi32(_mm256_setzero_si256(), w0[i], x0);
                        _mm256_dpwssd_epi32(half, w1[i], x1)
                    } else {
                        _mm256_add_epi32(_mm256_madd_epi16(w0[i], x0), _mm256_madd_epi16(w1[i], x1))
                    };
                    let sum = _mm256_cvtepi32_ps(dot);
                    acc[i][j] = _mm256_fmadd_ps(sum, _mm256_mul_ps(wd[i], dx), acc[i][j]);
                    if w.format == QFormat::Q4_1 {
                        mins[i][j] += wm[i] * sx;
                    }
                }
            }
        }
        for i in 0..R {
            for j in 0..T {
                let v = acc[i][j];
                let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_add_ss(h, _mm_movehdup_ps(h));
                *y.0.add((t + j) * w.rows + r + i) = _mm_cvtss_f32(h) + mins[i][j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut impl Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// f64 product of the dequantized weights with the (unquantized) activations.
    fn reference(w: &QMatrix, x: &[f32], rows: usize) -> Vec<f64> {
        let wf = w.dequantize();
        let mut y = vec![0f64; rows * w.rows()];
        for t in 0..rows {
            for r in 0..w.rows() {
                y[t * w.rows() + r] = (0..w.cols())
                    .map(|k| wf[r * w.cols() + k] as f64 * x[t * w.cols() + k] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn matches_reference_for_both_formats_and_ragged_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for format in [QFormat::Q4_1, QFormat::Q8_0] {
            for &(rows, cols, tokens) in
                &[(1, 32, 1), (3, 64, 5), (17, 96, 9), (64, 576, 4), (130, 1536, 7)]
            {
                let w =
                    QMatrix::quantize(format, rows, cols, &random(rows * cols, &mut rng)).unwrap();
                let x = random(tokens * cols, &mut rng);
                let xq = QActivations::quantize(&x, tokens, cols).unwrap();
                let want = reference(&w, &x, tokens);
                for kernel in Kernel::available() {
                    let mut y = vec![f32::NAN; tokens * rows];
                    w.matmul_on(kernel, &xq, &mut y).unwrap();
                    // Activations in 16 bits: the error is the weights' own rounding, tiny.
                    let tol = 0.02 * (cols as f64).sqrt();
                    for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                        assert!(
                            (*a as f64 - b).abs() <= tol,
                            "{kernel:?} {format:?} {rows}x{cols} t={tokens}: y[{i}] = {a}, \
                             reference {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_round_trips_within_a_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let w = random(4 * 64, &mut rng);
        for (format, step) in [(QFormat::Q4_1, 2.0 / 15.0), (QFormat::Q8_0, 1.0 / 127.0)] {
            let q = QMatrix::quantize(format, 4, 64, &w).unwrap();
            for (a, b) in q.dequantize().iter().zip(&w) {
                assert!((a - b).abs() <= step * 0.51 + 1e-3, "{format:?}: {a} vs {b}");
            }
        }
    }

    /// With every kernel, a row's result is bitwise the same alone and inside any batch
    /// (batches of 19 tokens exercise the token groups of 4 and 8 and the tails).
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (rows, cols, tokens) = (37, 192, 19);
        for kernel in Kernel::available() {
            for format in [QFormat::Q4_1, QFormat::Q8_0] {
                let w =
                    QMatrix::quantize(format, rows, cols, &random(rows * cols, &mut rng)).unwrap();
                let x = random(tokens * cols, &mut rng);
                let all = QActivations::quantize(&x, tokens, cols).unwrap();
                let mut y_all = vec![0f32; tokens * rows];
                w.matmul_on(kernel, &all, &mut y_all).unwrap();
                for t in 0..tokens {
                    let one =
                        QActivations::quantize(&x[t * cols..(t + 1) * cols], 1, cols).unwrap();
                    let mut y = vec![0f32; rows];
                    w.matmul_on(kernel, &one, &mut y).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&y),
                        bits(&y_all[t * rows..(t + 1) * rows]),
                        "{kernel:?} {format:?} token {t}"
                    );
                }
            }
        }
    }

    /// A group of matrices over the same activations gives each matrix exactly the bits of
    /// its own matmul; a wrong output length is refused before anything runs.
    #[test]
    fn a_group_matches_its_matrices_one_by_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let (cols, tokens) = (192, 5);
        let x = QActivations::quantize(&random(tokens * cols, &mut rng), tokens, cols).unwrap();
        for kernel in Kernel::available() {
            for format in [QFormat::Q4_1, QFormat::Q8_0] {
                let ws: Vec<QMatrix> = [37, 12, 130]
                    .iter()
                    .map(|&r| {
                        QMatrix::quantize(format, r, cols, &random(r * cols, &mut rng)).unwrap()
                    })
                    .collect();
                let mut ys: Vec<Vec<f32>> =
                    ws.iter().map(|w| vec![f32::NAN; tokens * w.rows()]).collect();
                {
                    let mut parts: Vec<(&QMatrix, &mut [f32])> =
                        ws.iter().zip(ys.iter_mut()).map(|(w, y)| (w, y.as_mut_slice())).collect();
                    matmul_group_on(kernel, &mut parts, &x).unwrap();
                }
                for (w, y) in ws.iter().zip(&ys) {
                    let mut one = vec![0f32; tokens * w.rows()];
                    w.matmul_on(kernel, &x, &mut one).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(y), bits(&one), "{kernel:?} {format:?} {} rows", w.rows());
                }
                let mut short = vec![0f32; 3];
                let mut fine = vec![0f32; tokens * ws[0].rows()];
                let err = matmul_group(&mut [(&ws[0], &mut fine), (&ws[1], &mut short)], &x)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("output holds 3 values"), "{err}");
            }
        }
    }

    #[test]
    fn simd_and_portable_paths_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (rows, cols, tokens) = (33, 320, 6);
        for format in [QFormat::Q4_1, QFormat::Q8_0] {
            let w = QMatrix::quantize(format, rows, cols, &random(rows * cols, &mut rng)).unwrap();
            let x = QActivations::quantize(&random(tokens * cols, &mut rng), tokens, cols).unwrap();
            let mut a = vec![0f32; tokens * rows];
            w.matmul_on(Kernel::Portable, &x, &mut a).unwrap();
            for kernel in Kernel::available() {
                let mut b = vec![f32::NAN; tokens * rows];
                w.matmul_on(kernel, &x, &mut b).unwrap();
                for (p, q) in a.iter().zip(&b) {
                    assert!(
                        (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                        "{kernel:?} {format:?}: {p} vs {q}"
                    );
                }
            }
            eprintln!("kernels compared with the portable one: {:?}", Kernel::available());
            #[cfg(target_arch = "x86_64")]
            if Kernel::available().contains(&Kernel::Avx512) {
                let (mut p, mut q) = (vec![0f32; tokens * rows], vec![0f32; tokens * rows]);
                w.matmul_on(Kernel::Avx2, &x, &mut p).unwrap();
                w.matmul_on(Kernel::Avx512, &x, &mut q).unwrap();
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&p), bits(&q), "{format:?}: VNNI and AVX2 sums are the same");
            }
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        assert!(QMatrix::new(QFormat::Q4_1, 2, 33, vec![0; 40]).is_err());
        let e = QMatrix::new(QFormat::Q8_0, 2, 32, vec![0; 10]).unwrap_err().to_string();
        assert!(e.contains("68 bytes"), "{e}");
        let w = QMatrix::quantize(QFormat::Q8_0, 2, 32, &[0.5; 64]).unwrap();
        let x = QActivations::quantize(&[1.0; 64], 1, 64).unwrap();
        assert!(w.matmul(&x, &mut [0.0; 2]).is_err());
    }
}
