//! The kernels that read GGUF's block layout in place: portable code and AVX2 (x86-64-v3).
//! CPUs with AVX-512 VNNI multiply a repacked copy instead ([`super::packed`]).

use super::{f16_at, QActivations, QFormat, QMatrix, SyncPtr, BLOCK};

/// The same function without SIMD: exact integer block dot products, f32 accumulation.
pub(super) unsafe fn portable(w: &QMatrix, x: &QActivations, r0: usize, r1: usize, y: SyncPtr) {
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
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::{QActivations, QFormat, QMatrix, SyncPtr, BLOCK};

    /// Tokens per pass.
    const NT: usize = 4;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::quant) unsafe fn run(
        w: &QMatrix,
        x: &QActivations,
        r0: usize,
        r1: usize,
        y: SyncPtr,
    ) {
        columns(w, x, r0, r1, y)
    }

    /// How far ahead, in rows, a single-token tile prefetches its weights.
    const PREFETCH_ROWS: usize = 8;

    #[inline(always)]
    unsafe fn columns(w: &QMatrix, x: &QActivations, r0: usize, r1: usize, y: SyncPtr) {
        // Token groups outside, rows inside: a group's activations and the task's weight
        // rows meet in cache. (2 rows x 4 tokens spilled registers: ~15% slower.)
        let full = x.rows / NT * NT;
        let mut t = 0;
        while t < full {
            for r in r0..r1 {
                tile::<1, NT>(w, x, r, t, y);
            }
            t += NT;
        }
        for t in full..x.rows {
            let mut r = r0;
            while r + 4 <= r1 {
                tile::<4, 1>(w, x, r, t, y);
                r += 4;
            }
            while r < r1 {
                tile::<1, 1>(w, x, r, t, y);
                r += 1;
            }
        }
    }

    /// Outputs `[t..t + T][r..r + R]`. Every output's operations are the same whatever R and
    /// T are, so results do not depend on tiling.
    #[inline(always)]
    unsafe fn tile<const R: usize, const T: usize>(
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
                    let dot = _mm256_add_epi32(
                        _mm256_madd_epi16(w0[i], x0),
                        _mm256_madd_epi16(w1[i], x1),
                    );
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
