//! Row-quantized CPU adapter tables: the bytes and scales they keep, and that the kernels
//! compute exactly with the weights those stand for.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{rng, Bf16, Case};
use openledger_kernels::reference::{relative_error, RefAdapter};
use openledger_kernels::{
    lora_delta, lora_delta_host, quantize_rows, AdapterTable, BatchSegments, SegmentMap,
};
use rand::Rng;

/// A row's largest magnitude maps to 127 and every value comes back within half a step.
#[test]
fn a_quantized_row_is_within_half_a_step_of_its_values() {
    let mut rng = rng("quantize_rows");
    for len in [1usize, 7, 64, 1031] {
        let mut values: Vec<f32> = (0..4 * len).map(|_| rng.random_range(-3.0..3.0f32)).collect();
        values[len..2 * len].fill(0.0); // an all-zero row
        values[2 * len] = 1e4; // an outlier
        let (q, scales) = quantize_rows(&values, len);
        assert_eq!((q.len(), scales.len()), (values.len(), 4));
        for (r, (row, qrow)) in values.chunks_exact(len).zip(q.chunks_exact(len)).enumerate() {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = scales[r];
            if max > 0.0 {
                assert_eq!(step, max / 127.0, "row {r}'s scale");
                assert_eq!(qrow.iter().map(|q| q.unsigned_abs()).max(), Some(127), "row {r}");
            }
            for (v, &q) in row.iter().zip(qrow) {
                let back = q as f32 * step;
                assert!((back - v).abs() <= step * 0.5 * (1.0 + 1e-6), "row {r}: {v} -> {back}");
            }
        }
    }
    // Zero-length rows and empty input quantize to nothing.
    assert_eq!(quantize_rows(&[], 8), (vec![], vec![]));
}

/// The adapter each case's bf16 weights stand for once quantized: what a quantized table
/// must compute with, to f32 rounding.
fn dequantized(case: &Case) -> Vec<RefAdapter> {
    case.adapters
        .iter()
        .map(|ad| {
            let rows = |v: &[f64], len: usize| {
                let f: Vec<f32> = v.iter().map(|&e| e as f32).collect();
                let (q, s) = quantize_rows(&f, len);
                q.iter().enumerate().map(|(i, &q)| q as f64 * s[i / len] as f64).collect::<Vec<_>>()
            };
            // lora_B is quantized transposed: per rank index over the outputs.
            let mut bt = vec![0.0; ad.b.len()];
            for o in 0..case.d_out {
                for j in 0..ad.rank {
                    bt[j * case.d_out + o] = ad.b[o * ad.rank + j];
                }
            }
            let bt = rows(&bt, case.d_out);
            let mut b = vec![0.0; ad.b.len()];
            for o in 0..case.d_out {
                for j in 0..ad.rank {
                    b[o * ad.rank + j] = bt[j * case.d_out + o];
                }
            }
            RefAdapter { rank: ad.rank, a: rows(&ad.a, case.d_in), b }
        })
        .collect()
}

fn quantized_table(case: &Case) -> AdapterTable {
    let mut table =
        AdapterTable::new_quantized(DType::BF16, case.d_in, case.d_out, case.adapters.len());
    for (slot, ad) in case.adapters.iter().enumerate() {
        let t = |v: &[f64], dims: &[usize]| {
            let f: Vec<f32> = v.iter().map(|&e| e as f32).collect();
            Tensor::from_vec(f, dims, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()
        };
        let (a, b) = (t(&ad.a, &[ad.rank, case.d_in]), t(&ad.b, &[case.d_out, ad.rank]));
        table.insert(slot as u32, &a, &b).unwrap();
    }
    assert!(table.is_quantized());
    table
}

/// f32 activations through a quantized table equal the f64 reference over the dequantized
/// weights to f32 rounding, and stay within the quantization's error of the bf16 weights.
#[test]
fn a_quantized_table_computes_with_the_weights_its_bytes_stand_for() {
    let mut rng = rng("quantized lora_delta");
    for _ in 0..25 {
        let case = Case::random::<Bf16>(&mut rng, 40);
        let table = quantized_table(&case);
        let segments = BatchSegments::new(case.map.clone());
        let rows = case.map.num_rows();
        let to_f32 = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        // Through the tensor op (f32 activations, bf16 table) and through host slices.
        let x = Tensor::from_vec(to_f32(&case.x), (rows, case.d_in), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(to_f32(&case.y), (rows, case.d_out), &Device::Cpu).unwrap();
        lora_delta(&x, &y, &segments, &table).unwrap();
        let got: Vec<f64> =
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
        let mut host = to_f32(&case.y);
        lora_delta_host(&to_f32(&case.x), &mut host, &segments, &table).unwrap();
        assert_eq!(host.iter().map(|&v| v as f64).collect::<Vec<_>>(), got, "host vs tensor op");

        let exact = openledger_kernels::reference::lora_delta(
            &case.x,
            &case.y,
            case.d_in,
            case.d_out,
            &case.map,
            &dequantized(&case),
        );
        let err = relative_error(&got, &exact);
        assert!(
            err < 1e-5,
            "relative error {err:e} to the dequantized weights: {}",
            case.describe()
        );
        let err = case.delta_error(&got);
        assert!(err < 2e-2, "relative error {err:e} to the bf16 weights: {}", case.describe());
        for row in case.uncovered_rows() {
            let r = row * case.d_out..(row + 1) * case.d_out;
            assert_eq!(got[r.clone()], case.y[r], "row {row} has no adapter but changed");
        }
    }
}

/// A row's delta does not depend on the rest of its batch: each segment computed alone
/// gives the same bits as the whole batch (the engine's logits alone and batched rely on it).
#[test]
fn a_quantized_rows_delta_does_not_depend_on_its_batch() {
    let mut rng = rng("quantized batch independence");
    for _ in 0..15 {
        let case = Case::random::<Bf16>(&mut rng, 40);
        let table = quantized_table(&case);
        let f = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let (x, y0) = (f(&case.x), f(&case.y));
        let mut batched = y0.clone();
        lora_delta_host(&x, &mut batched, &BatchSegments::new(case.map.clone()), &table).unwrap();
        let map = &case.map;
        for s in 0..map.num_segments() {
            let range = map.segment_range(s);
            if range.is_empty() {
                continue;
            }
            let rows: Vec<u32> = map.rows()[range.clone()].to_vec();
            let n = rows.len();
            let alone = SegmentMap::from_parts(
                map.num_rows(),
                rows.clone(),
                vec![0, n as u32],
                vec![map.slots()[s]],
                vec![map.ranks()[s]],
                vec![map.scales()[s]],
            )
            .unwrap();
            let mut y = y0.clone();
            lora_delta_host(&x, &mut y, &BatchSegments::new(alone), &table).unwrap();
            for &r in &rows {
                let r = r as usize * case.d_out..(r as usize + 1) * case.d_out;
                assert_eq!(y[r.clone()], batched[r], "segment {s} alone vs batched");
            }
        }
    }
}

/// A quantized table refuses tensors of another dtype, as a float table does.
#[test]
fn a_quantized_table_checks_what_it_is_given() {
    let mut table = AdapterTable::new_quantized(DType::BF16, 8, 4, 2);
    let a = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
    let err = table.insert(0, &a, &b).unwrap_err().to_string();
    assert!(err.contains("lora_A of slot 0") && err.contains("F32"), "{err}");
    let (a, b) = (a.to_dtype(DType::BF16).unwrap(), b.to_dtype(DType::BF16).unwrap());
    table.insert(1, &a, &b).unwrap();
    assert_eq!(table.rank(1), Some(2));
}
