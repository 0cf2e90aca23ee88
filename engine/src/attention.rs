//! Rotary position embeddings and causal attention over each sequence's KV blocks, on the CPU.
//!
//! Both work on plain row-major slices, one token row at a time, so a row's result depends
//! only on its own sequence: the batch around it cannot change a single bit.

use rayon::prelude::*;

use crate::kv_cache::{BlockTable, KvCache};
use openledger_model::RopeStyle;

/// Precomputed cos/sin of every position, `[max_position][head_dim / 2]`.
pub(crate) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    style: RopeStyle,
}

impl Rope {
    pub(crate) fn new(head_dim: usize, max_position: usize, theta: f32, style: RopeStyle) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_position * half);
        let mut sin = Vec::with_capacity(max_position * half);
        for pos in 0..max_position {
            for i in 0..half {
                let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { cos, sin, half, style }
    }

    /// Rotates every head of `rows` (`[n][heads * head_dim]`); row `i` is at `positions[i]`.
    pub(crate) fn apply(&self, rows: &mut [f32], positions: &[usize], heads: usize) {
        let hd = 2 * self.half;
        rows.par_chunks_mut(heads * hd).zip(positions.par_iter()).for_each(|(row, &pos)| {
            let (c, s) = (&self.cos[pos * self.half..], &self.sin[pos * self.half..]);
            for head in row.chunks_mut(hd) {
                for i in 0..self.half {
                    let (a, b) = match self.style {
                        RopeStyle::Half => (i, i + self.half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c[i] - x1 * s[i];
                    head[b] = x0 * s[i] + x1 * c[i];
                }
            }
        });
    }
}

/// Where a batch row's sequence keeps its cache and which position the row is at.
pub(crate) struct RowContext<'a> {
    pub table: &'a BlockTable,
    pub pos: usize,
}

/// Causal attention: row `r` attends to positions `0..=rows[r].pos` of its own sequence,
/// whose keys and values are already in the cache. `q` is `[n][num_heads * head_dim]`;
/// returns the same shape.
///
/// Work is split into (row, KV head) items, so one decoding sequence still uses every
/// thread; an item computes the query heads that share its KV head in one pass over the
/// sequence's blocks (each key and value row is loaded once for the group).
pub(crate) fn attend(
    q: &[f32],
    rows: &[RowContext<'_>],
    cache: &KvCache,
    layer: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let width = num_heads * head_dim;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let simd = Simd::detect();
    let mut out = vec![0.0f32; rows.len() * width];
    // One item per (row, KV head): the `group` query heads' outputs, contiguous in a row.
    out.par_chunks_mut(group * head_dim).enumerate().for_each(|(item, out_group)| {
        let (r, kvh) = (item / num_kv_heads, item % num_kv_heads);
        let ctx = &rows[r];
        let ctx_len = ctx.pos + 1;
        let q_group = &q[r * width + kvh * group * head_dim..][..group * head_dim];
        let mut scores = vec![0.0f32; group * ctx_len];
        for (p, (k, _)) in cache.positions(layer, ctx.table, ctx_len).enumerate() {
            let kh = &k[kvh * head_dim..(kvh + 1) * head_dim];
            for (h, qh) in q_group.chunks_exact(head_dim).enumerate() {
                scores[h * ctx_len + p] = simd.dot(qh, kh) * scale;
            }
        }
        for s in scores.chunks_exact_mut(ctx_len) {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in s.iter_mut() {
                *v *= inv;
            }
        }
        for (p, (_, v)) in cache.positions(layer, ctx.table, ctx_len).enumerate() {
            let vh = &v[kvh * head_dim..(kvh + 1) * head_dim];
            for (h, oh) in out_group.chunks_exact_mut(head_dim).enumerate() {
                simd.axpy(scores[h * ctx_len + p], vh, oh);
            }
        }
    });
    out
}

/// Vector helpers with AVX2 + FMA when the CPU has them (chosen at run time), portable code
/// with the same fixed reduction order otherwise.
#[derive(Clone, Copy)]
enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Simd {
    /// The process's SIMD level (`openledger_kernels::options::simd`, detected once).
    fn detect() -> Self {
        use openledger_kernels::options::{simd, SimdLevel};
        #[cfg(target_arch = "x86_64")]
        if simd() >= SimdLevel::Avx2 {
            return Simd::Avx2;
        }
        Simd::Portable
    }

    #[inline]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            // SAFETY: the CPU has AVX2 and FMA (checked in `detect`).
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::dot(a, b) },
            Simd::Portable => crate::weights::dot(a, b),
        }
    }

    /// `y += a * x`.
    #[inline]
    fn axpy(self, a: f32, x: &[f32], y: &mut [f32]) {
        match self {
            // SAFETY: the CPU has AVX2 and FMA (checked in `detect`).
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::axpy(a, x, y) },
            Simd::Portable => {
                for (y, x) in y.iter_mut().zip(x) {
                    *y += a * x;
                }
            },
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                s0,
            );
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                s1,
            );
            i += 16;
        }
        let s = _mm256_add_ps(s0, s1);
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        let mut sum = _mm_cvtss_f32(h);
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                yp,
                _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
            );
            i += 8;
        }
        while i < n {
            y[i] += a * x[i];
            i += 1;
        }
    }
}
