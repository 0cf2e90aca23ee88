//! f32 vector primitives of the CPU paths: dot products, `y += a * x`, the shifted
//! exponentials of a softmax and weighted sums of rows, with AVX2 + FMA where the CPU has
//! them (chosen once per process by [`options::simd`](crate::options::simd)) and portable
//! code otherwise. The rows that attention reads (dot products against a query, weighted
//! sums) may be f32, f16 or bf16: narrow rows are widened in registers (F16C for f16), so a
//! half-precision KV cache costs half the memory traffic and no extra pass.
//!
//! Every function's order of operations is fixed by the lengths of its arguments alone, so a
//! result never depends on what else runs beside it. The two builds round differently (the
//! vector exponential is a degree-7 polynomial within 2 ulp of `f32::exp`), so they agree to
//! within f32 rounding, not bit for bit.

use crate::element::Widen;

/// The vector hardware the primitives use. `Copy`: detect once, pass it into loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// Plain Rust, which the compiler vectorises for the build's baseline target.
    Portable,
    /// AVX2 and FMA intrinsics.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Simd {
    /// The level this process runs at (see [`options::simd`](crate::options::simd)).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if crate::options::simd() >= crate::options::SimdLevel::Avx2 {
            return Simd::Avx2;
        }
        Simd::Portable
    }

    /// `sum(a[i] * b[i])` over the shorter of the two.
    #[inline]
    pub fn dot<E: Widen>(self, a: &[f32], b: &[E]) -> f32 {
        match self {
            // SAFETY: the CPU has AVX2 and FMA (checked in `detect`).
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::dot(a, b) },
            Simd::Portable => portable::dot(a, b),
        }
    }

    /// `y[i] += a * x[i]` over the shorter of the two.
    #[inline]
    pub fn axpy(self, a: f32, x: &[f32], y: &mut [f32]) {
        match self {
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::axpy(a, x, y) },
            Simd::Portable => portable::axpy(a, x, y),
        }
    }

    /// The eight dot products of `q` with `rows[j][..q.len()]` (each row at least as long
    /// as `q`; a shorter one panics).
    #[inline]
    pub fn dot8<E: Widen>(self, q: &[f32], rows: [&[E]; 8]) -> [f32; 8] {
        let rows = rows.map(|r| &r[..q.len()]);
        match self {
            // SAFETY: as in `dot`; every row holds `q.len()` elements (sliced above).
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::dot8(q, rows) },
            Simd::Portable => rows.map(|r| portable::dot(q, r)),
        }
    }

    /// Replaces every `s[i]` by `exp(s[i] - max)` and returns their sum (the numerator and
    /// denominator of a softmax whose maximum is `max`).
    #[inline]
    pub fn exp_shifted(self, s: &mut [f32], max: f32) -> f32 {
        match self {
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::exp_shifted(s, max) },
            Simd::Portable => {
                let mut sum = 0f32;
                for v in s.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                sum
            },
        }
    }

    /// `out = sum over t of w[t] * row(t)[..out.len()]`, overwriting `out`; each row at least
    /// `out.len()` long (a shorter one panics). The accumulators stay in registers across
    /// the rows, so `out` is written once.
    #[inline]
    pub fn weighted_sum<'a, E: Widen>(
        self,
        w: &[f32],
        row: impl Fn(usize) -> &'a [E],
        out: &mut [f32],
    ) {
        match self {
            // SAFETY: as in `dot`; the rows are sliced to `out.len()` before any pointer use.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { avx2::weighted_sum(w, row, out) },
            Simd::Portable => {
                out.fill(0.0);
                for (t, &wt) in w.iter().enumerate() {
                    portable::axpy(wt, &row(t)[..out.len()], out);
                }
            },
        }
    }

    /// [`Simd::weighted_sum`] for several weight vectors over the same rows at once:
    /// `out[g] = sum over t of w[g * len + t] * row(t)`, `out` being `[group][d]`. Each row is
    /// read once for every group instead of once per group (the query heads that share a
    /// key/value head); every output gets exactly the operations `weighted_sum` gives it.
    #[inline]
    pub fn weighted_sums<'a, E: Widen>(
        self,
        w: &[f32],
        len: usize,
        row: impl Fn(usize) -> &'a [E],
        out: &mut [f32],
    ) {
        let group = w.len().checked_div(len).unwrap_or(0);
        let d = out.len().checked_div(group).unwrap_or(0);
        match self {
            // SAFETY: as in `dot`; rows are sliced to `d` columns before any pointer use.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 if (2..=4).contains(&group) => unsafe {
                avx2::weighted_sums(w, len, group, d, &row, out)
            },
            _ => {
                for (wg, og) in w.chunks_exact(len.max(1)).zip(out.chunks_exact_mut(d.max(1))) {
                    self.weighted_sum(wg, &row, og);
                }
            },
        }
    }
}

/// Asks the CPU to bring `row` into L1 ahead of its use (one request per cache line). A hint:
/// it never faults and changes no result.
#[inline]
pub fn prefetch<E>(row: &[E]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(row);
        let p = row.as_ptr() as *const i8;
        let mut at = 0;
        while at < bytes {
            // SAFETY: prefetching is a hint that may name any address; this one lies in `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(at)) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Positions ahead that the attention passes prefetch (three blocks of 16): the paged cache's
/// next block lies anywhere in the pool, so the hardware prefetcher cannot guess it. 48 was
/// faster than 16, 32 and 96 in a one-thread attention run (`engine/NOTES.md`, row 20).
pub const PREFETCH_AHEAD: usize = 48;

mod portable {
    use crate::element::Widen;

    /// The CPU SGMV's dot product (eight interleaved partial sums), without FMA.
    pub(super) fn dot<E: Widen>(a: &[f32], b: &[E]) -> f32 {
        crate::cpu::dot::<f32, E, false>(a, b)
    }

    pub(super) fn axpy<E: Widen>(a: f32, x: &[E], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * x.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::element::{Format, Widen};

    /// Eight elements from `p` as f32 (the match is on a constant: one load per type).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<E: Widen>(p: *const E) -> __m256 {
        match E::FORMAT {
            Format::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            Format::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p as *const __m128i),
            ))),
            Format::I8 => {
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
            },
            Format::F32 => _mm256_loadu_ps(p as *const f32),
        }
    }

    /// The sum of a register's eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<E: Widen>(a: &[f32], b: &[E]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load8(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), load8(pb.add(i + 8)), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load8(pb.add(i)), s0);
            i += 8;
        }
        let mut sum = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            sum += a[i] * b[i].to_f32();
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

    /// Eight dot products, then one transposing reduction of the eight accumulators (three
    /// rounds of horizontal adds) instead of eight separate ones.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot8<E: Widen>(q: &[f32], rows: [&[E]; 8]) -> [f32; 8] {
        let n = q.len();
        let p = rows.map(|r| r.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 8 <= n {
            let qv = _mm256_loadu_ps(q.as_ptr().add(i));
            for j in 0..8 {
                acc[j] = _mm256_fmadd_ps(qv, load8(p[j].add(i)), acc[j]);
            }
            i += 8;
        }
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        // Lane j of each 128-bit half: row j's partial sum over that half of the lanes.
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        let sums = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(h0123, h4567),
            _mm256_permute2f128_ps::<0x31>(h0123, h4567),
        );
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), sums);
        while i < n {
            for (o, r) in out.iter_mut().zip(&rows) {
                *o += q[i] * r[i].to_f32();
            }
            i += 1;
        }
        out
    }

    /// `exp` of eight lanes: `x = n ln2 + r` with `|r| <= ln2 / 2`, `e^r` by its degree-7
    /// Taylor polynomial (error below 3e-8 relative), `2^n` built in the exponent bits.
    /// Inputs are clamped to the range where the result is a normal f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts, the first exact in 9 bits, so `n * LN2_HI` is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(s: &mut [f32], max: f32) -> f32 {
        let n = s.len();
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let p = s.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
            _mm256_storeu_ps(p, e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        if i < n {
            // The tail through the same polynomial, in a padded register.
            let mut buf = [max; 8];
            buf[..n - i].copy_from_slice(&s[i..]);
            let mut e = [0f32; 8];
            _mm256_storeu_ps(e.as_mut_ptr(), exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), m)));
            for (d, v) in s[i..].iter_mut().zip(e) {
                *d = v;
                sum += v;
            }
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum<'a, E: Widen>(
        w: &[f32],
        row: impl Fn(usize) -> &'a [E],
        out: &mut [f32],
    ) {
        let d = out.len();
        let mut c = 0;
        // 64 columns at a time: eight accumulators, held in registers over all the rows.
        while c + 64 <= d {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (t, &wt) in w.iter().enumerate() {
                if c == 0 && t + super::PREFETCH_AHEAD < w.len() {
                    super::prefetch(&row(t + super::PREFETCH_AHEAD)[..d]);
                }
                let r = &row(t)[c..c + 64];
                let wv = _mm256_set1_ps(wt);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, load8(r.as_ptr().add(8 * j)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * j), *a);
            }
            c += 64;
        }
        while c + 8 <= d {
            let mut acc = _mm256_setzero_ps();
            for (t, &wt) in w.iter().enumerate() {
                let r = &row(t)[c..c + 8];
                acc = _mm256_fmadd_ps(_mm256_set1_ps(wt), load8(r.as_ptr()), acc);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(c), acc);
            c += 8;
        }
        if c < d {
            out[c..].fill(0.0);
            for (t, &wt) in w.iter().enumerate() {
                // Fused, as the vector lanes are (the CPU SGMV's expand relies on it).
                for (o, x) in out[c..].iter_mut().zip(&row(t)[c..d]) {
                    *o = wt.mul_add(x.to_f32(), *o);
                }
            }
        }
    }

    /// Grouped weighted sums: `G` weight vectors, `K` registers (8K columns) per vector per
    /// pass, all `G * K` accumulators in registers; the columns past the last whole pass go
    /// through [`weighted_sum`] per group (the same operations per output).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sums<'a, E: Widen>(
        w: &[f32],
        len: usize,
        group: usize,
        d: usize,
        row: &impl Fn(usize) -> &'a [E],
        out: &mut [f32],
    ) {
        let done = match group {
            2 => grouped::<E, 2, 4>(w, len, d, row, out),
            3 => grouped::<E, 3, 4>(w, len, d, row, out),
            _ => grouped::<E, 4, 2>(w, len, d, row, out),
        };
        if done < d {
            for (wg, og) in w.chunks_exact(len).zip(out.chunks_exact_mut(d)) {
                weighted_sum(wg, |t| &row(t)[done..d], &mut og[done..]);
            }
        }
    }

    /// Columns `0..returned` of every group, in passes of `8 K` columns.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn grouped<'a, E: Widen, const G: usize, const K: usize>(
        w: &[f32],
        len: usize,
        d: usize,
        row: &impl Fn(usize) -> &'a [E],
        out: &mut [f32],
    ) -> usize {
        let width = 8 * K;
        let mut c = 0;
        while c + width <= d {
            let mut acc = [[_mm256_setzero_ps(); K]; G];
            for t in 0..len {
                if c == 0 && t + super::PREFETCH_AHEAD < len {
                    super::prefetch(row(t + super::PREFETCH_AHEAD));
                }
                let r = &row(t)[c..c + width];
                // One loaded register at a time: G * K accumulators, G weights and one row
                // register fit the 16 registers without spilling.
                let wv: [__m256; G] =
                    std::array::from_fn(|g| _mm256_set1_ps(*w.get_unchecked(g * len + t)));
                for k in 0..K {
                    let v = load8(r.as_ptr().add(8 * k));
                    for (acc, wv) in acc.iter_mut().zip(&wv) {
                        acc[k] = _mm256_fmadd_ps(*wv, v, acc[k]);
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                for (k, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(g * d + c + 8 * k), *a);
                }
            }
            c += width;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> Vec<Simd> {
        let mut l = vec![Simd::Portable];
        if Simd::detect() != Simd::Portable {
            l.push(Simd::detect());
        }
        l
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn close(a: f32, b: f64, tol: f64) -> bool {
        (a as f64 - b).abs() <= tol * (1.0 + b.abs())
    }

    /// The grouped weighted sums give every output the bits of its own `weighted_sum`, for
    /// f32 and f16 rows, groups 1-5 and widths with and without a tail.
    #[test]
    fn grouped_weighted_sums_equal_the_single_ones() {
        use half::f16;
        for s in levels() {
            for group in 1..=5 {
                for d in [0, 7, 32, 64, 72, 128] {
                    let len = 37;
                    let w = data(group * len, 4);
                    let rows: Vec<Vec<f32>> = (0..len).map(|t| data(d, 20 + t as u32)).collect();
                    let halves: Vec<Vec<f16>> = rows
                        .iter()
                        .map(|r| r.iter().map(|&v| f16::from_f32(v)).collect())
                        .collect();
                    let mut got = vec![f32::NAN; group * d];
                    let mut got_h = vec![f32::NAN; group * d];
                    s.weighted_sums(&w, len, |t| rows[t].as_slice(), &mut got);
                    s.weighted_sums(&w, len, |t| halves[t].as_slice(), &mut got_h);
                    for g in 0..group {
                        let mut one = vec![0f32; d];
                        let mut one_h = vec![0f32; d];
                        let wg = &w[g * len..(g + 1) * len];
                        s.weighted_sum(wg, |t| rows[t].as_slice(), &mut one);
                        s.weighted_sum(wg, |t| halves[t].as_slice(), &mut one_h);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        let span = g * d..(g + 1) * d;
                        assert_eq!(
                            bits(&got[span.clone()]),
                            bits(&one),
                            "{s:?} g{g}/{group} d={d}"
                        );
                        assert_eq!(
                            bits(&got_h[span]),
                            bits(&one_h),
                            "{s:?} f16 g{g}/{group} d={d}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_primitive_matches_f64_at_every_length() {
        for s in levels() {
            for n in [0, 1, 7, 8, 9, 16, 63, 64, 65, 128, 131] {
                let (a, b) = (data(n, 1), data(n, 2));
                let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
                assert!(close(s.dot(&a, &b), exact, 1e-5), "{s:?} dot n={n}");

                let rows: Vec<Vec<f32>> = (0..8).map(|j| data(n + 3, 10 + j)).collect();
                let got = s.dot8(&a, std::array::from_fn(|j| rows[j].as_slice()));
                for (j, g) in got.iter().enumerate() {
                    let e: f64 = a.iter().zip(&rows[j]).map(|(x, y)| *x as f64 * *y as f64).sum();
                    assert!(close(*g, e, 1e-5), "{s:?} dot8 n={n} row {j}: {g} vs {e}");
                }

                let mut y = b.clone();
                s.axpy(0.5, &a, &mut y);
                for i in 0..n {
                    assert!(close(y[i], b[i] as f64 + 0.5 * a[i] as f64, 1e-6), "{s:?} axpy");
                }

                let mut e: Vec<f32> = data(n, 3).iter().map(|v| v * 40.0).collect();
                let inputs = e.clone();
                let max = inputs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = s.exp_shifted(&mut e, max);
                let mut want_sum = 0f64;
                for (got, x) in e.iter().zip(&inputs) {
                    let want = ((*x - max) as f64).exp();
                    want_sum += want;
                    assert!(close(*got, want, 1e-6), "{s:?} exp({}) = {got}", x - max);
                }
                assert!(close(sum, want_sum, 1e-5), "{s:?} exp sum n={n}");

                for d in [1, 8, 13, 64, 72, 128] {
                    let rows: Vec<Vec<f32>> = (0..n).map(|t| data(d, 100 + t as u32)).collect();
                    let mut out = vec![f32::NAN; d];
                    s.weighted_sum(&a, |t| rows[t].as_slice(), &mut out);
                    for (c, o) in out.iter().enumerate() {
                        let want: f64 = (0..n).map(|t| a[t] as f64 * rows[t][c] as f64).sum();
                        assert!(close(*o, want, 1e-5), "{s:?} weighted_sum n={n} d={d}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_exponential_covers_the_softmax_range() {
        for s in levels() {
            let mut v: Vec<f32> = (0..=200).map(|i| -100.0 + i as f32 * 0.5).collect();
            let x = v.clone();
            s.exp_shifted(&mut v, 0.0);
            for (got, x) in v.iter().zip(&x) {
                assert!(got.is_finite() && *got >= 0.0, "{s:?} exp({x}) = {got}");
                if *x >= -80.0 {
                    assert!(close(*got, (*x as f64).exp(), 1e-6), "{s:?} exp({x}) = {got}");
                } else {
                    assert!(*got < 1e-34, "{s:?} exp({x}) = {got}");
                }
            }
        }
    }
}
