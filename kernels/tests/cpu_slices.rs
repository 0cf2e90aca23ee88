//! The CPU kernels against the f64 reference, on fresh random ragged batches.

mod common;

use common::{rng, to_f64, tolerance, type_name, views, Bf16, Case, F16};
use openledger_kernels::cpu::{self, CpuWorkspace};
use openledger_kernels::{Element, KernelError, LoraWeights, SegmentMap};

const CASES: usize = 40;

fn check_lora_delta<T: Element>() {
    let mut rng = rng(&format!("cpu lora_delta {}", type_name::<T>()));
    let mut ws = CpuWorkspace::new();
    for _ in 0..CASES {
        let case = Case::random::<T>(&mut rng, 48);
        let owned = case.weights::<T>();
        let weights = views(&owned);
        let x: Vec<T> = Case::cast(&case.x);
        let mut y: Vec<T> = Case::cast(&case.y);
        let y_in = y.clone();
        cpu::lora_delta(&x, &mut y, case.d_in, case.d_out, &case.map, &weights[..], &mut ws)
            .unwrap();
        let err = case.delta_error(&to_f64(&y));
        assert!(err < tolerance::<T>(), "relative error {err:e} for {}", case.describe());
        for row in case.uncovered_rows() {
            let r = row * case.d_out..(row + 1) * case.d_out;
            let same = y[r.clone()]
                .iter()
                .zip(&y_in[r])
                .all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits());
            assert!(same, "row {row} has no adapter but changed ({})", case.describe());
        }
    }
}

#[test]
fn lora_delta_f32_matches_reference() {
    check_lora_delta::<f32>();
}

#[test]
fn lora_delta_bf16_matches_reference() {
    check_lora_delta::<Bf16>();
}

#[test]
fn lora_delta_f16_matches_reference() {
    check_lora_delta::<F16>();
}

fn check_shrink_and_expand<T: Element>() {
    let mut rng = rng(&format!("cpu shrink/expand {}", type_name::<T>()));
    for _ in 0..CASES {
        let case = Case::random::<T>(&mut rng, 48);
        let owned = case.weights::<T>();
        let weights = views(&owned);
        let x: Vec<T> = Case::cast(&case.x);
        // Poisoned: any element the kernel fails to write stays NaN and fails the check.
        let mut v = vec![f32::NAN; case.map.num_tokens() * case.map.max_rank()];
        cpu::sgmv_shrink(&x, case.d_in, &case.map, &weights[..], &mut v).unwrap();
        let v64: Vec<f64> = v.iter().map(|&e| e as f64).collect();
        let err = case.shrink_error(&v64);
        assert!(err < 1e-5, "shrink relative error {err:e} for {}", case.describe());

        let mut y: Vec<T> = Case::cast(&case.y);
        cpu::sgmv_expand(&v, &mut y, case.d_out, &case.map, &weights[..]).unwrap();
        let err = case.expand_error(&to_f64(&y), &v64);
        assert!(err < tolerance::<T>(), "expand relative error {err:e} for {}", case.describe());
    }
}

#[test]
fn shrink_and_expand_f32_match_reference() {
    check_shrink_and_expand::<f32>();
}

#[test]
fn shrink_and_expand_bf16_match_reference() {
    check_shrink_and_expand::<Bf16>();
}

/// A request's output must not depend on which other requests share its batch.
#[test]
fn output_of_a_request_does_not_depend_on_the_batch() {
    let mut rng = rng("batch invariance");
    let case = Case::random::<Bf16>(&mut rng, 64);
    let Some(s) = (0..case.map.num_segments()).find(|&s| !case.map.segment_range(s).is_empty())
    else {
        return;
    };
    let owned = case.weights::<Bf16>();
    let weights = views(&owned);
    let x: Vec<Bf16> = Case::cast(&case.x);
    let mut ws = CpuWorkspace::new();
    let mut y_batch: Vec<Bf16> = Case::cast(&case.y);
    cpu::lora_delta(&x, &mut y_batch, case.d_in, case.d_out, &case.map, &weights[..], &mut ws)
        .unwrap();
    // The same segment alone in its batch.
    let m = &case.map;
    let rows = m.rows()[m.segment_range(s)].to_vec();
    let n = rows.len() as u32;
    let alone = SegmentMap::from_parts(
        m.num_rows(),
        rows.clone(),
        vec![0, n],
        vec![m.slots()[s]],
        vec![m.ranks()[s]],
        vec![m.scales()[s]],
    )
    .unwrap();
    let mut y_alone: Vec<Bf16> = Case::cast(&case.y);
    cpu::lora_delta(&x, &mut y_alone, case.d_in, case.d_out, &alone, &weights[..], &mut ws)
        .unwrap();
    for &row in &rows {
        let r = row as usize * case.d_out..(row as usize + 1) * case.d_out;
        assert_eq!(y_batch[r.clone()], y_alone[r], "row {row} differs between batch and alone");
    }
}

#[test]
fn bad_inputs_are_named_errors() {
    let map = SegmentMap::from_parts(2, vec![1], vec![0, 1], vec![0], vec![4], vec![1.0]).unwrap();
    let a = [0f32; 4 * 8];
    let b = [0f32; 3 * 4];
    let short_a = [0f32; 4 * 7];
    let mut ws = CpuWorkspace::new();
    let x = vec![0f32; 2 * 8];
    let mut y = vec![0f32; 2 * 3];
    let ok = [LoraWeights::new(&a[..], &b[..])];
    let err = cpu::lora_delta(&x[..15], &mut y, 8, 3, &map, &ok[..], &mut ws).unwrap_err();
    assert_eq!(err.to_string(), "x: expected shape [16], got [15]");
    let bad = [LoraWeights::new(&short_a[..], &b[..])];
    let err = cpu::lora_delta(&x, &mut y, 8, 3, &map, &bad[..], &mut ws).unwrap_err();
    assert!(err.to_string().starts_with("lora_A of slot 0"), "{err}");
    let none: [Option<LoraWeights<f32>>; 1] = [None];
    let err = cpu::lora_delta(&x, &mut y, 8, 3, &map, &none[..], &mut ws).unwrap_err();
    assert!(matches!(err, KernelError::EmptySlot { segment: 0, slot: 0, slots: 1 }), "{err}");
}

/// lora_B stored transposed (`BLayout::RankByOut`, what CPU tables keep) gives the reference's
/// result, and bitwise the PEFT layout's for segments of 4 to 16 tokens (one tile each, where
/// the PEFT path also sums over the rank in order).
fn check_transposed_b<T: Element>() {
    let mut rng = rng(&format!("cpu transposed lora_B {}", type_name::<T>()));
    let mut ws = CpuWorkspace::new();
    for _ in 0..CASES {
        let case = Case::random::<T>(&mut rng, 48);
        let owned = case.weights::<T>();
        let transposed: Vec<(Vec<T>, Vec<T>)> = owned
            .iter()
            .map(|(a, b)| {
                let rank = a.len() / case.d_in;
                let mut bt = b.clone();
                for o in 0..case.d_out {
                    for j in 0..rank {
                        bt[j * case.d_out + o] = b[o * rank + j];
                    }
                }
                (a.clone(), bt)
            })
            .collect();
        let peft = views(&owned);
        let tviews: Vec<LoraWeights<'_, T>> =
            transposed.iter().map(|(a, bt)| LoraWeights::with_b_transposed(a, bt)).collect();
        let x: Vec<T> = Case::cast(&case.x);
        let (mut y_peft, mut y_t): (Vec<T>, Vec<T>) = (Case::cast(&case.y), Case::cast(&case.y));
        cpu::lora_delta(&x, &mut y_peft, case.d_in, case.d_out, &case.map, &peft[..], &mut ws)
            .unwrap();
        cpu::lora_delta(&x, &mut y_t, case.d_in, case.d_out, &case.map, &tviews[..], &mut ws)
            .unwrap();
        let err = case.delta_error(&to_f64(&y_t));
        assert!(err < tolerance::<T>(), "relative error {err:e} for {}", case.describe());
        for s in 0..case.map.num_segments() {
            let range = case.map.segment_range(s);
            if !(4..=16).contains(&range.len()) {
                continue;
            }
            for &row in &case.map.rows()[range] {
                let r = row as usize * case.d_out..(row as usize + 1) * case.d_out;
                let bits = |v: &[T]| v.iter().map(|e| e.to_f32().to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&y_t[r.clone()]),
                    bits(&y_peft[r]),
                    "row {row}: {}",
                    case.describe()
                );
            }
        }
    }
}

#[test]
fn transposed_b_f32_matches_reference_and_peft_layout() {
    check_transposed_b::<f32>();
}

#[test]
fn transposed_b_bf16_matches_reference_and_peft_layout() {
    check_transposed_b::<Bf16>();
}
