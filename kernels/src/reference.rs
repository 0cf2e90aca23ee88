//! The f64 reference the tests compare every implementation against. Deliberately naive
//! and independent of the optimised paths: it walks segments and rows directly.

use crate::segments::SegmentMap;

/// One adapter in f64, PEFT layout: `a` is `[rank, d_in]`, `b` is `[d_out, rank]`.
#[derive(Clone, Debug)]
pub struct RefAdapter {
    pub rank: usize,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

/// `v[p, j]` for every sorted position (width `map.max_rank()`, zero beyond each rank).
pub fn shrink(x: &[f64], d_in: usize, map: &SegmentMap, adapters: &[RefAdapter]) -> Vec<f64> {
    let width = map.max_rank();
    let mut v = vec![0.0; map.num_tokens() * width];
    for s in 0..map.num_segments() {
        let ad = &adapters[map.slots()[s] as usize];
        assert_eq!(ad.rank, map.ranks()[s] as usize, "reference: rank of segment {s}");
        for p in map.segment_range(s) {
            let row = map.rows()[p] as usize;
            for j in 0..ad.rank {
                let mut acc = 0.0;
                for k in 0..d_in {
                    acc += x[row * d_in + k] * ad.a[j * d_in + k];
                }
                v[p * width + j] = acc;
            }
        }
    }
    v
}

/// `y` plus every segment's scaled delta, computed from `v` of [`shrink`].
pub fn expand(
    v: &[f64],
    y: &[f64],
    d_out: usize,
    map: &SegmentMap,
    adapters: &[RefAdapter],
) -> Vec<f64> {
    let width = map.max_rank();
    let mut out = y.to_vec();
    for s in 0..map.num_segments() {
        let ad = &adapters[map.slots()[s] as usize];
        let scale = map.scales()[s] as f64;
        for p in map.segment_range(s) {
            let row = map.rows()[p] as usize;
            for o in 0..d_out {
                let mut acc = 0.0;
                for j in 0..ad.rank {
                    acc += v[p * width + j] * ad.b[o * ad.rank + j];
                }
                out[row * d_out + o] += scale * acc;
            }
        }
    }
    out
}

/// `y + delta` for the whole batch.
pub fn lora_delta(
    x: &[f64],
    y: &[f64],
    d_in: usize,
    d_out: usize,
    map: &SegmentMap,
    adapters: &[RefAdapter],
) -> Vec<f64> {
    let v = shrink(x, d_in, map, adapters);
    expand(&v, y, d_out, map, adapters)
}

/// `||out - reference|| / ||reference||` (Frobenius); infinite when `out` holds a NaN.
pub fn relative_error(out: &[f64], reference: &[f64]) -> f64 {
    relative_error_to(out, reference, reference)
}

/// `||out - reference|| / ||scale||` (Frobenius): the error measured against another
/// vector's size (e.g. the reference computed on magnitudes, where the sum can cancel);
/// infinite when `out` holds a NaN.
pub fn relative_error_to(out: &[f64], reference: &[f64], scale: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "relative_error: lengths differ");
    assert_eq!(scale.len(), reference.len(), "relative_error: scale's length differs");
    let mut diff = 0.0;
    let mut norm = 0.0;
    for ((&o, &r), &s) in out.iter().zip(reference).zip(scale) {
        if !o.is_finite() {
            return f64::INFINITY;
        }
        diff += (o - r) * (o - r);
        norm += s * s;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}
