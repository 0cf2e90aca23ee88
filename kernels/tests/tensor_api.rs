//! The candle tensor API against the f64 reference, on every device this build supports
//! (the CPU always; the first CUDA device with the `cuda` feature).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{devices, rng, tensor, tolerance, type_name, values, Bf16, Case, F16};
use openledger_kernels::{
    lora_delta, sgmv_expand, sgmv_shrink, AdapterTable, BatchSegments, Element, KernelError,
    SegmentMap,
};

/// Random cases per check; `SGMV_CASES` lowers it for runs under compute-sanitizer.
fn cases() -> usize {
    common::env_count("SGMV_CASES", 25)
}

fn table<T: Element>(case: &Case, dev: &Device) -> AdapterTable {
    let mut table = AdapterTable::new(dev, T::DTYPE, case.d_in, case.d_out, case.adapters.len());
    for (slot, ad) in case.adapters.iter().enumerate() {
        let a = tensor::<T>(&ad.a, &[ad.rank, case.d_in], dev);
        let b = tensor::<T>(&ad.b, &[case.d_out, ad.rank], dev);
        table.insert(slot as u32, &a, &b).unwrap();
    }
    table
}

fn check_lora_delta<T: Element>(dev: &Device, max_rows: usize) {
    let mut rng = rng(&format!("tensor lora_delta {} on {dev:?}", type_name::<T>()));
    for _ in 0..cases() {
        let case = Case::random::<T>(&mut rng, max_rows);
        let table = table::<T>(&case, dev);
        let segments = BatchSegments::new(case.map.clone());
        let rows = case.map.num_rows();
        let x = tensor::<T>(&case.x, &[rows, case.d_in], dev);
        let y = tensor::<T>(&case.y, &[rows, case.d_out], dev);
        lora_delta(&x, &y, &segments, &table).unwrap();
        let got = values(&y);
        let err = case.delta_error(&got);
        assert!(
            err < tolerance::<T>(),
            "relative error {err:e} on {dev:?} for {}",
            case.describe()
        );
        for row in case.uncovered_rows() {
            let r = row * case.d_out..(row + 1) * case.d_out;
            assert_eq!(got[r.clone()], case.y[r], "row {row} has no adapter but changed");
        }
    }
}

fn check_shrink_expand<T: Element>(dev: &Device, max_rows: usize) {
    let mut rng = rng(&format!("tensor shrink/expand {} on {dev:?}", type_name::<T>()));
    for _ in 0..cases() {
        let case = Case::random::<T>(&mut rng, max_rows);
        let table = table::<T>(&case, dev);
        let segments = BatchSegments::new(case.map.clone());
        let rows = case.map.num_rows();
        let x = tensor::<T>(&case.x, &[rows, case.d_in], dev);
        // The shrink output is allocated NaN-filled by every backend, so an element left
        // unwritten fails here; the reference has exact zeros beyond each rank.
        let v = sgmv_shrink(&x, &segments, &table).unwrap();
        let got_v = values(&v);
        let err = case.shrink_error(&got_v);
        assert!(err < 1e-5, "shrink relative error {err:e} on {dev:?} for {}", case.describe());
        let y = tensor::<T>(&case.y, &[rows, case.d_out], dev);
        sgmv_expand(&v, &y, &segments, &table).unwrap();
        let err = case.expand_error(&values(&y), &got_v);
        assert!(
            err < tolerance::<T>(),
            "expand relative error {err:e} on {dev:?} for {}",
            case.describe()
        );
    }
}

/// `y` as some columns of a wider output (a projection among stacked ones): the same bits
/// as a contiguous `y`, and the columns around it untouched. Pads of 8 keep 16-byte rows
/// where d_out allows; 3 and 5 do not.
fn check_columns<T: Element>(dev: &Device) {
    let mut rng = rng(&format!("tensor lora_delta columns {} on {dev:?}", type_name::<T>()));
    for (i, (left, right)) in (0..cases()).zip([(8, 8), (3, 5), (0, 8), (8, 0)].iter().cycle()) {
        let case = Case::random::<T>(&mut rng, 40);
        let table = table::<T>(&case, dev);
        let segments = BatchSegments::new(case.map.clone());
        let (rows, d_out) = (case.map.num_rows(), case.d_out);
        let width = left + d_out + right;
        let pad: Vec<f64> =
            (0..rows * width).map(|e| ((e * 37 % 101) as f64 - 50.0) / 64.0).collect();
        let mut wide_values = pad.clone();
        for r in 0..rows {
            let dst = r * width + left..r * width + left + d_out;
            wide_values[dst].copy_from_slice(&case.y[r * d_out..(r + 1) * d_out]);
        }
        let wide = tensor::<T>(&wide_values, &[rows, width], dev);
        let y = tensor::<T>(&case.y, &[rows, d_out], dev);
        let x = tensor::<T>(&case.x, &[rows, case.d_in], dev);
        lora_delta(&x, &y, &segments, &table).unwrap();
        lora_delta(&x, &wide.narrow(1, *left, d_out).unwrap(), &segments, &table).unwrap();
        let (want, got) = (values(&y), values(&wide));
        let before = values(&tensor::<T>(&wide_values, &[rows, width], &Device::Cpu));
        for r in 0..rows {
            let inside = r * width + left..r * width + left + d_out;
            assert_eq!(got[inside.clone()], want[r * d_out..(r + 1) * d_out], "case {i} row {r}");
            for c in (r * width..inside.start).chain(inside.end..(r + 1) * width) {
                assert_eq!(
                    got[c],
                    before[c],
                    "case {i} row {r}: column {} outside y changed",
                    c - r * width
                );
            }
        }
    }
}

#[test]
fn lora_delta_into_columns_of_a_wider_output_on_every_device() {
    for dev in devices() {
        check_columns::<f32>(&dev);
        check_columns::<Bf16>(&dev);
        check_columns::<F16>(&dev);
    }
}

#[test]
fn lora_delta_matches_reference_on_every_device() {
    for dev in devices() {
        check_lora_delta::<f32>(&dev, 40);
        check_lora_delta::<Bf16>(&dev, 40);
        check_lora_delta::<F16>(&dev, 40);
    }
}

#[test]
fn long_segments_match_reference_on_every_device() {
    for dev in devices() {
        check_lora_delta::<Bf16>(&dev, 400);
    }
}

#[test]
fn shrink_and_expand_match_reference_on_every_device() {
    for dev in devices() {
        check_shrink_expand::<f32>(&dev, 40);
        check_shrink_expand::<Bf16>(&dev, 40);
    }
}

/// A request's output bits do not depend on the batch around it: one segment alone, then
/// the same rows inside a batch of many other adapters (on CUDA the kernel then picks
/// another variant: clusters of 8, of 4, or one block per tile), bit for bit. With
/// `SGMV_BITS_DIR` set, the CUDA bits are also written there (`RANK-alone.bin`,
/// `RANK-batched.bin`), so that runs with each variant forced (`OPENLEDGER_SGMV_VARIANT`)
/// and the same `SGMV_SEED` can be compared file by file (kernels/bench/gpu-run.sh).
#[test]
fn a_request_gets_the_same_bits_alone_and_in_a_large_batch() {
    use common::round_to;
    use openledger_kernels::reference::RefAdapter;
    use rand::Rng;
    let mut rng = rng("batch invariance");
    let (d_in, d_out, others) = (1031, 257, 63);
    for (dev, rank) in devices().into_iter().flat_map(|d| [8, 13, 64].map(|r| (d.clone(), r))) {
        let adapters: Vec<RefAdapter> = (0..=others)
            .map(|_| RefAdapter {
                rank,
                a: (0..rank * d_in)
                    .map(|_| round_to::<Bf16>(rng.random_range(-0.03..0.03)))
                    .collect(),
                b: (0..d_out * rank)
                    .map(|_| round_to::<Bf16>(rng.random_range(-0.3..0.3)))
                    .collect(),
            })
            .collect();
        let mut table = AdapterTable::new(&dev, DType::BF16, d_in, d_out, adapters.len());
        for (slot, ad) in adapters.iter().enumerate() {
            let a = tensor::<Bf16>(&ad.a, &[ad.rank, d_in], &dev);
            let b = tensor::<Bf16>(&ad.b, &[d_out, ad.rank], &dev);
            table.insert(slot as u32, &a, &b).unwrap();
        }
        // The request: 5 tokens on adapter 0; its neighbours: 16 tokens on each other adapter.
        let own = 5;
        let rows = own + 16 * others;
        let x: Vec<f64> =
            (0..rows * d_in).map(|_| round_to::<Bf16>(rng.random_range(-1.0..1.0))).collect();
        let y: Vec<f64> =
            (0..rows * d_out).map(|_| round_to::<Bf16>(rng.random_range(-0.5..0.5))).collect();
        let run = |num_rows: usize, lens: Vec<usize>| -> Vec<u32> {
            let keys: Vec<Option<u32>> = (0..lens.len() as u32).map(Some).collect();
            let map = SegmentMap::new(&keys, &lens, |k| {
                Some(openledger_kernels::AdapterSlot { slot: k, rank: rank as u32, scale: 0.75 })
            })
            .unwrap();
            let xt = tensor::<Bf16>(&x[..num_rows * d_in], &[num_rows, d_in], &dev);
            let yt = tensor::<Bf16>(&y[..num_rows * d_out], &[num_rows, d_out], &dev);
            lora_delta(&xt, &yt, &BatchSegments::new(map), &table).unwrap();
            let bits: Vec<u16> = yt
                .flatten_all()
                .unwrap()
                .to_vec1::<half::bf16>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            bits[..own * d_out].iter().map(|&b| b as u32).collect()
        };
        let alone = run(own, vec![own]);
        let mut lens = vec![own];
        lens.extend(std::iter::repeat_n(16, others));
        let batched = run(rows, lens);
        if let (Some(dir), true) = (std::env::var_os("SGMV_BITS_DIR"), dev.is_cuda()) {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bits) in [("alone", &alone), ("batched", &batched)] {
                let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
                std::fs::write(dir.join(format!("{rank}-{name}.bin")), bytes).unwrap();
            }
        }
        assert_eq!(
            alone, batched,
            "rank {rank} on {dev:?}: the request's rows differ alone and batched"
        );
    }
}

#[test]
fn errors_name_the_tensor_and_the_problem() {
    let dev = Device::Cpu;
    let mut table = AdapterTable::new(&dev, DType::BF16, 8, 4, 2);
    let a = Tensor::zeros((2, 8), DType::BF16, &dev).unwrap();
    let b = Tensor::zeros((4, 2), DType::BF16, &dev).unwrap();
    let err = table.insert(0, &a, &b.t().unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "lora_B of slot 0: expected shape [4, 2], got [2, 4]");
    let err = table.insert(0, &a.to_dtype(DType::F32).unwrap(), &b).unwrap_err();
    assert!(matches!(err, KernelError::DType { .. }), "{err}");
    let err = table.insert(5, &a, &b).unwrap_err();
    assert_eq!(err.to_string(), "slot 5 is out of range for an adapter table of 2 slots");
    table.insert(0, &a, &b).unwrap();

    let map =
        SegmentMap::from_parts(3, vec![2, 0], vec![0, 2], vec![0], vec![2], vec![1.0]).unwrap();
    let segments = BatchSegments::new(map);
    let x = Tensor::zeros((3, 8), DType::BF16, &dev).unwrap();
    let y = Tensor::zeros((3, 5), DType::BF16, &dev).unwrap();
    let err = lora_delta(&x, &y, &segments, &table).unwrap_err();
    assert_eq!(err.to_string(), "y: expected shape [3, 4], got [3, 5]");
    let y = Tensor::zeros((3, 4), DType::BF16, &dev).unwrap();
    let x_t = Tensor::zeros((8, 3), DType::BF16, &dev).unwrap().t().unwrap();
    let err = lora_delta(&x_t, &y, &segments, &table).unwrap_err();
    assert!(matches!(err, KernelError::NotContiguous { .. }), "{err}");

    let wrong_rank =
        SegmentMap::from_parts(3, vec![1], vec![0, 1], vec![0], vec![8], vec![1.0]).unwrap();
    let err = lora_delta(&x, &y, &BatchSegments::new(wrong_rank), &table).unwrap_err();
    assert!(matches!(err, KernelError::RankMismatch { expected: 8, actual: 2, .. }), "{err}");
    let empty_slot =
        SegmentMap::from_parts(3, vec![1], vec![0, 1], vec![1], vec![2], vec![1.0]).unwrap();
    let err = lora_delta(&x, &y, &BatchSegments::new(empty_slot), &table).unwrap_err();
    assert!(matches!(err, KernelError::EmptySlot { slot: 1, .. }), "{err}");
}

/// Calls from many rayon tasks at once all succeed and agree bit for bit with a call made
/// alone (the CPU workspace is per thread and taken out for the call, so a worker that picks
/// up another call while waiting inside one does not find it borrowed).
#[test]
fn concurrent_calls_from_rayon_tasks_agree() {
    use rayon::prelude::*;
    let mut rng = rng("concurrent calls");
    let case = loop {
        let c = Case::random::<Bf16>(&mut rng, 200);
        if c.map.num_tokens() >= 32 && c.d_in >= 100 && c.d_out >= 100 {
            break c;
        }
    };
    let dev = Device::Cpu;
    let table = table::<Bf16>(&case, &dev);
    let segments = BatchSegments::new(case.map.clone());
    let rows = case.map.num_rows();
    let x = tensor::<Bf16>(&case.x, &[rows, case.d_in], &dev);
    let alone = tensor::<Bf16>(&case.y, &[rows, case.d_out], &dev);
    lora_delta(&x, &alone, &segments, &table).unwrap();
    let want = values(&alone);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    pool.install(|| {
        (0..64).into_par_iter().for_each(|_| {
            let y = tensor::<Bf16>(&case.y, &[rows, case.d_out], &dev);
            lora_delta(&x, &y, &segments, &table).unwrap();
            assert_eq!(values(&y), want, "a concurrent call differs ({})", case.describe());
        })
    });
}

/// On the CPU, f32 activations with bf16 adapters compute exactly what f32 activations with
/// f32 adapters holding the same (bf16-representable) values compute: bit for bit.
#[test]
fn cpu_f32_activations_with_bf16_adapters_match_f32_adapters_bitwise() {
    let dev = Device::Cpu;
    let mut rng = rng("tensor lora_delta f32 activations, bf16 adapters");
    for _ in 0..cases() {
        // Values drawn as bf16, so the f32 table holds exactly the bf16 table's values.
        let case = Case::random::<Bf16>(&mut rng, 40);
        let (narrow, wide) = (table::<Bf16>(&case, &dev), table::<f32>(&case, &dev));
        let segments = BatchSegments::new(case.map.clone());
        let rows = case.map.num_rows();
        let x = tensor::<f32>(&case.x, &[rows, case.d_in], &dev);
        let (y1, y2) = (
            tensor::<f32>(&case.y, &[rows, case.d_out], &dev),
            tensor::<f32>(&case.y, &[rows, case.d_out], &dev),
        );
        lora_delta(&x, &y1, &segments, &narrow).unwrap();
        lora_delta(&x, &y2, &segments, &wide).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(&y1), bits(&y2), "{}", case.describe());
        assert!(values(&y1) != case.y || case.map.num_tokens() == 0, "{}", case.describe());
    }
}
