//! The weights repacked for integer dot products of 16 rows at once, and the two kernels that
//! read them: AVX-512 VNNI and AMX.
//!
//! A group is 16 consecutive rows (the last one padded with zero rows). For each group and
//! block of 32 columns the 512 weight bytes are stored as
//!
//! ```text
//! [k / 4][row 0..16][k % 4]      (k = 0..32, the column within the block)
//! ```
//!
//! which is at once an AMX B tile (8 rows of 64 bytes) and eight AVX-512 registers whose 16
//! lanes are the 16 rows, each lane four consecutive columns (what `vpdpbusd` sums). The bytes
//! are unsigned: Q4_1's `q` as it is, Q8_0's `q + 128`; beside them each row's scale (and
//! Q4_1's offset) as f32.
//!
//! Each activation `q` (16 bits, `|q| <= 32639`) is split into signed bytes `q = 256 hi + lo`
//! ([`QActivations`]), so a block's dot product is two byte dot products, exact in i32:
//!
//! ```text
//! dot = 256 * (w . hi) + (w . lo)  [- 128 * sum(q) for Q8_0, whose bytes carry +128]
//! ```
//!
//! and every output then takes the same float steps per block whichever kernel ran:
//! `acc = fma(f32(dot), d_w * d_x, acc)`, and for Q4_1 `acc = fma(m_w, s_x, acc)`. The AMX
//! kernel and the AVX-512 kernel therefore give bitwise the same outputs, and a token's
//! outputs are the same whether it ran in a 16-token tile or alone.

use super::{f16_at, QFormat, QMatrix, BLOCK};

/// Rows per group: the 16 lanes of an AVX-512 register, the 16 columns of an AMX tile.
pub(super) const ROWS: usize = 16;
/// Bytes of one group's block.
const TILE: usize = BLOCK * ROWS;

#[derive(Clone, Debug)]
pub(super) struct Packed {
    /// Blocks per row.
    nb: usize,
    /// `[group][block][k / 4][row][k % 4]`.
    w: Vec<u8>,
    /// `[group][block][row]`: the scale.
    d: Vec<f32>,
    /// `[group][block][row]`: Q4_1's offset (empty for Q8_0).
    m: Vec<f32>,
}

impl Packed {
    pub(super) fn new(q: &QMatrix) -> Self {
        let nb = q.cols / BLOCK;
        let groups = q.rows.div_ceil(ROWS);
        let bb = q.format.block_bytes();
        let mut w = vec![0u8; groups * nb * TILE];
        let mut d = vec![0f32; groups * nb * ROWS];
        let mut m = match q.format {
            QFormat::Q4_1 => vec![0f32; groups * nb * ROWS],
            QFormat::Q8_0 => Vec::new(),
        };
        let mut vals = [0u8; BLOCK];
        for (r, row) in q.data.chunks_exact(nb * bb).enumerate() {
            let (g, i) = (r / ROWS, r % ROWS);
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let at = (g * nb + b) * ROWS + i;
                d[at] = f16_at(blk, 0);
                match q.format {
                    QFormat::Q4_1 => {
                        m[at] = f16_at(blk, 2);
                        for (j, &byte) in blk[4..20].iter().enumerate() {
                            vals[j] = byte & 0x0f;
                            vals[j + BLOCK / 2] = byte >> 4;
                        }
                    },
                    QFormat::Q8_0 => {
                        for (v, &byte) in vals.iter_mut().zip(&blk[2..34]) {
                            *v = (byte as i8 as i16 + 128) as u8;
                        }
                    },
                }
                let tile = &mut w[(g * nb + b) * TILE..][..TILE];
                for (k, &v) in vals.iter().enumerate() {
                    tile[(k / 4) * ROWS * 4 + i * 4 + k % 4] = v;
                }
            }
        }
        Self { nb, w, d, m }
    }

    /// Bytes one pass reads.
    pub(super) fn bytes(&self) -> usize {
        self.w.len() + 4 * (self.d.len() + self.m.len())
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::{Packed, ROWS, TILE};
    use crate::quant::{QActivations, QFormat, QMatrix, SyncPtr, BLOCK};

    /// Tokens that share one load of a block's weights.
    const NT: usize = 8;

    /// Outputs of groups `g0..g1` for tokens `t0..t1`.
    ///
    /// # Safety
    /// As [`crate::quant::Kernel::run`]; the CPU has AVX-512 F, BW, VL and VNNI.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(in crate::quant) unsafe fn run(
        w: &QMatrix,
        p: &Packed,
        x: &QActivations,
        g0: usize,
        g1: usize,
        t0: usize,
        t1: usize,
        y: SyncPtr,
    ) {
        // Token groups outside, row groups inside: a token group's activations stay in L1
        // while the task's weights (a few groups) stay in L2.
        let mut t = t0;
        while t + NT <= t1 {
            for g in g0..g1 {
                tile::<NT>(w, p, x, g, t, y);
            }
            t += NT;
        }
        for t in t..t1 {
            for g in g0..g1 {
                tile::<1>(w, p, x, g, t, y);
            }
        }
    }

    /// Outputs `[t..t + T][group g]`.
    #[inline(always)]
    unsafe fn tile<const T: usize>(
        w: &QMatrix,
        p: &Packed,
        x: &QActivations,
        g: usize,
        t: usize,
        y: SyncPtr,
    ) {
        let nb = p.nb;
        let q4_1 = w.format == QFormat::Q4_1;
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let at = g * nb + b;
            let wp = p.w.as_ptr().add(at * TILE);
            let wv: [__m512i; 8] =
                std::array::from_fn(|k| _mm512_loadu_si512(wp.add(k * 64) as *const __m512i));
            let (wd, wm) = scales(p, at, q4_1);
            for (j, acc) in acc.iter_mut().enumerate() {
                let xb = (t + j) * nb + b;
                let xs = x.split.as_ptr().add(xb * 2 * BLOCK);
                let mut lo = _mm512_setzero_si512();
                let mut hi = _mm512_setzero_si512();
                for (k, wk) in wv.iter().enumerate() {
                    let four =
                        |at: usize| _mm512_set1_epi32((xs.add(at) as *const i32).read_unaligned());
                    lo = _mm512_dpbusd_epi32(lo, *wk, four(4 * k));
                    hi = _mm512_dpbusd_epi32(hi, *wk, four(BLOCK + 4 * k));
                }
                *acc = accumulate(*acc, lo, hi, wd, wm, x, xb, q4_1);
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            store(w, g, t + j, *acc, y);
        }
    }

    /// The group's scales (and Q4_1 offsets) of one block.
    #[inline(always)]
    pub(super) unsafe fn scales(p: &Packed, at: usize, q4_1: bool) -> (__m512, __m512) {
        let wd = _mm512_loadu_ps(p.d.as_ptr().add(at * ROWS));
        let wm =
            if q4_1 { _mm512_loadu_ps(p.m.as_ptr().add(at * ROWS)) } else { _mm512_setzero_ps() };
        (wd, wm)
    }

    /// One block's step of 16 outputs of token block `xb`, from its two byte dot products:
    /// the same float operations in both kernels (see the module doc).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) unsafe fn accumulate(
        acc: __m512,
        lo: __m512i,
        hi: __m512i,
        wd: __m512,
        wm: __m512,
        x: &QActivations,
        xb: usize,
        q4_1: bool,
    ) -> __m512 {
        // |dot| <= 32639 * 128 * 32 < 2^31, and each partial sum is smaller still.
        let mut dot = _mm512_add_epi32(_mm512_slli_epi32::<8>(hi), lo);
        if !q4_1 {
            dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(128 * *x.sums.get_unchecked(xb)));
        }
        let scale = _mm512_mul_ps(wd, _mm512_set1_ps(*x.d.get_unchecked(xb)));
        let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
        if q4_1 {
            _mm512_fmadd_ps(wm, _mm512_set1_ps(*x.s.get_unchecked(xb)), acc)
        } else {
            acc
        }
    }

    /// Writes the group's outputs of token `t` (fewer than 16 in a padded last group).
    #[inline(always)]
    pub(super) unsafe fn store(w: &QMatrix, g: usize, t: usize, acc: __m512, y: SyncPtr) {
        let r = g * ROWS;
        let valid = (w.rows - r).min(ROWS);
        let mask: __mmask16 = if valid == ROWS { !0 } else { (1u16 << valid) - 1 };
        _mm512_mask_storeu_ps(y.0.add(t * w.rows + r), mask, acc);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod amx {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::avx512::{accumulate, scales, store};
    use super::{Packed, ROWS, TILE};
    use crate::quant::{QActivations, QFormat, QMatrix, SyncPtr, BLOCK};

    /// Tokens per tile (the rows of the A and C tiles).
    const TOKENS: usize = 16;

    /// The tile shapes (palette 1): tmm0 and tmm1 (and tmm5 and tmm6, for the next block) the
    /// i32 products of the low and high bytes (16 tokens x 16 rows), tmm2 and tmm3 those bytes
    /// (16 tokens x 32), tmm4 the weights (8 x 64 bytes: 32 columns x 16 rows).
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: Config = {
        let mut c =
            Config { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        c.colsb[0] = 64;
        c.rows[0] = TOKENS as u8;
        c.colsb[1] = 64;
        c.rows[1] = TOKENS as u8;
        c.colsb[2] = BLOCK as u16;
        c.rows[2] = TOKENS as u8;
        c.colsb[3] = BLOCK as u16;
        c.rows[3] = TOKENS as u8;
        c.colsb[4] = 64;
        c.rows[4] = (BLOCK / 4) as u8;
        c.colsb[5] = 64;
        c.rows[5] = TOKENS as u8;
        c.colsb[6] = 64;
        c.rows[6] = TOKENS as u8;
        c
    };

    #[repr(C, align(64))]
    struct Products([[i32; ROWS]; 2 * TOKENS]);

    /// Outputs of groups `g0..g1` for every token: whole 16-token tiles on AMX, the rest on
    /// AVX-512.
    ///
    /// # Safety
    /// As [`crate::quant::Kernel::run`]; the CPU has AMX-INT8 and AVX-512 (VNNI, BW, VL) and
    /// this process has the kernel's permission to use the tiles (`options::supported_simd`).
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(in crate::quant) unsafe fn run(
        w: &QMatrix,
        p: &Packed,
        x: &QActivations,
        g0: usize,
        g1: usize,
        y: SyncPtr,
    ) {
        let full = x.rows / TOKENS * TOKENS;
        if full > 0 {
            // Tile state belongs to the thread: configured per task, released after it.
            asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const Config, options(nostack, readonly));
            for t in (0..full).step_by(TOKENS) {
                for g in g0..g1 {
                    tile(w, p, x, g, t, y);
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
        super::avx512::run(w, p, x, g0, g1, full, x.rows, y);
    }

    /// Multiplies one block: the low and high bytes of 16 tokens' activations (`a`, rows
    /// `stride` apart) by the 16 rows' weights `w`, the i32 products stored to `c` (`[32][16]`:
    /// 16 rows of low-byte sums, then 16 of high-byte sums).
    macro_rules! products {
        ($c_lo:literal, $c_hi:literal, $a:expr, $stride:expr, $w:expr, $c:expr) => {
            asm!(
                concat!("tilezero ", $c_lo),
                concat!("tilezero ", $c_hi),
                "tileloadd tmm2, [{lo} + {stride} * 1]",
                "tileloadd tmm3, [{hi} + {stride} * 1]",
                "tileloadd tmm4, [{w} + {wstride} * 1]",
                // tdpbsud: signed activation bytes (A) times unsigned weight bytes (B).
                concat!("tdpbsud ", $c_lo, ", tmm2, tmm4"),
                concat!("tdpbsud ", $c_hi, ", tmm3, tmm4"),
                concat!("tilestored [{c_lo} + {cstride} * 1], ", $c_lo),
                concat!("tilestored [{c_hi} + {cstride} * 1], ", $c_hi),
                lo = in(reg) $a,
                hi = in(reg) $a.add(BLOCK),
                stride = in(reg) $stride,
                w = in(reg) $w,
                wstride = in(reg) 64usize,
                c_lo = in(reg) $c,
                c_hi = in(reg) $c.add(TOKENS),
                cstride = in(reg) ROWS * 4,
                options(nostack),
            )
        };
    }

    /// Outputs `[t..t + 16][group g]`. The tile products of block `b + 1` are issued before
    /// the vector steps read block `b`'s (two pairs of C tiles, two buffers), so the vector
    /// loads do not wait on the tile stores just issued.
    #[inline(always)]
    unsafe fn tile(w: &QMatrix, p: &Packed, x: &QActivations, g: usize, t: usize, y: SyncPtr) {
        let nb = p.nb;
        let q4_1 = w.format == QFormat::Q4_1;
        let stride = nb * 2 * BLOCK;
        let mut c = [Products([[0; ROWS]; 2 * TOKENS]), Products([[0; ROWS]; 2 * TOKENS])];
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        let a = |b: usize| x.split.as_ptr().add((t * nb + b) * 2 * BLOCK);
        let wt = |b: usize| p.w.as_ptr().add((g * nb + b) * TILE);
        products!("tmm0", "tmm1", a(0), stride, wt(0), c[0].0.as_mut_ptr());
        for b in 0..nb {
            if b + 1 < nb {
                let next = c[(b + 1) % 2].0.as_mut_ptr();
                if b % 2 == 0 {
                    products!("tmm5", "tmm6", a(b + 1), stride, wt(b + 1), next);
                } else {
                    products!("tmm0", "tmm1", a(b + 1), stride, wt(b + 1), next);
                }
            }
            let (wd, wm) = scales(p, g * nb + b, q4_1);
            let products = &c[b % 2].0;
            for (j, acc) in acc.iter_mut().enumerate() {
                let lo = _mm512_load_si512(products[j].as_ptr() as *const __m512i);
                let hi = _mm512_load_si512(products[TOKENS + j].as_ptr() as *const __m512i);
                *acc = accumulate(*acc, lo, hi, wd, wm, x, (t + j) * nb + b, q4_1);
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            store(w, g, t + j, *acc, y);
        }
    }
}
