//! The one-pass adapter loader (issue 21, item 4) on real safetensors files written here
//! byte for byte with the `safetensors` crate: every float dtype a PEFT file may hold is
//! converted to bf16 exactly as `half` rounds (the conversion candle's `to_dtype` makes, so
//! the CPU engine's results are unchanged), and a file with the wrong dtype, a NaN or an
//! infinity in any dtype, a value beyond bf16's range, a truncated file or a tensor of the
//! wrong shape is refused with an error naming the file, the tensor and the problem.

use openledger_testkit as common;

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use openledger_engine::{AdapterError, EngineError, LoraAdapter, ModelConfig, Projection};
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const RANK: usize = 4;
const TARGETS: [Projection; 2] = [Projection::Q, Projection::Down];

/// One tensor of a test file: name, dtype, shape and its values (as f64, written in the
/// dtype).
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    values: Vec<f64>,
}

impl Entry {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for &v in &self.values {
            match self.dtype {
                Dtype::F64 => out.extend(v.to_le_bytes()),
                Dtype::F32 => out.extend((v as f32).to_le_bytes()),
                Dtype::F16 => out.extend(f16::from_f64(v).to_le_bytes()),
                Dtype::BF16 => out.extend(bf16::from_f64(v).to_le_bytes()),
                Dtype::I32 => out.extend((v as i32).to_le_bytes()),
                other => panic!("test writes no {other:?}"),
            }
        }
        out
    }

    /// What the loader must make of each value: the value as stored in the file, widened
    /// to f32 (f64 narrowed), rounded to bf16 by `half`.
    fn expected_bf16(&self) -> Vec<bf16> {
        self.values
            .iter()
            .map(|&v| {
                let stored = match self.dtype {
                    Dtype::F64 => v as f32,
                    Dtype::F32 => v as f32,
                    Dtype::F16 => f16::from_f64(v).to_f32(),
                    Dtype::BF16 => bf16::from_f64(v).to_f32(),
                    other => panic!("no expected values for {other:?}"),
                };
                bf16::from_f32(stored)
            })
            .collect()
    }
}

fn config() -> (tempfile::TempDir, ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_model(dir.path(), 3);
    (dir, cfg)
}

/// Every tensor a rank-4 adapter on q and down needs, random values in `dtype` (a few
/// of them at awkward points: bf16 rounding ties, subnormals, f16's largest value).
fn entries(cfg: &ModelConfig, dtype: Dtype, seed: u64) -> Vec<Entry> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for l in 0..cfg.num_layers {
        for p in TARGETS {
            let (d_in, d_out) = cfg.proj_dims(p);
            let pre = format!("base_model.model.model.layers.{l}.{}", p.hf_path());
            for (which, shape) in [("A", vec![RANK, d_in]), ("B", vec![d_out, RANK])] {
                let n = shape[0] * shape[1];
                let mut values: Vec<f64> = (0..n).map(|_| rng.random_range(-0.05..0.05)).collect();
                // A tie halfway between two bf16 values (rounds to even), a value just
                // above it, a subnormal f32, and f16's largest finite value.
                let specials =
                    [1.0 + 1.0 / 256.0, 1.0 + 1.0 / 256.0 + 1.0 / 65536.0, 1e-40, 65504.0];
                for (i, s) in specials.into_iter().enumerate() {
                    values[(i * 7 + l) % n] = s;
                }
                out.push(Entry {
                    name: format!("{pre}.lora_{which}.weight"),
                    dtype,
                    shape,
                    values,
                });
            }
        }
    }
    out
}

/// Writes the adapter folder: its config and the safetensors file of `entries`.
fn write(dir: &Path, entries: &[Entry]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let modules: Vec<&str> = TARGETS.iter().map(|p| p.module_name()).collect();
    let config = serde_json::json!({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 8, "target_modules": modules,
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let bytes: Vec<Vec<u8>> = entries.iter().map(Entry::bytes).collect();
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .zip(&bytes)
        .map(|(e, b)| (e.name.clone(), TensorView::new(e.dtype, e.shape.clone(), b).unwrap()))
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), file).unwrap();
    dir.to_path_buf()
}

fn refused(dir: &Path, cfg: &ModelConfig) -> AdapterError {
    match LoraAdapter::load(dir, cfg, &candle_core::Device::Cpu) {
        Ok(_) => panic!("{} was accepted", dir.display()),
        Err(EngineError::Adapter(e)) => *e,
        Err(e) => panic!("{}: not an adapter error: {e}", dir.display()),
    }
}

#[test]
fn every_float_dtype_converts_to_bf16_as_half_rounds() {
    let (root, cfg) = config();
    for (k, dtype) in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64].into_iter().enumerate() {
        let es = entries(&cfg, dtype, 10 + k as u64);
        let dir = write(&root.path().join(format!("{dtype:?}")), &es);
        let adapter = LoraAdapter::load(&dir, &cfg, &candle_core::Device::Cpu).unwrap();
        assert_eq!(adapter.rank(), RANK);
        let elements: usize = es.iter().map(|e| e.values.len()).sum();
        assert_eq!(adapter.weight_bytes(), 2 * elements, "{dtype:?}");
        let mut checked = 0;
        for l in 0..cfg.num_layers {
            for p in TARGETS {
                // scale * B @ A from the loaded weights against the same product of the
                // expected bf16 values, both in f32 from identical inputs: bitwise equal
                // exactly when every loaded value is.
                let got = adapter.merged_delta(l, p).unwrap().unwrap();
                let pre = format!("base_model.model.model.layers.{l}.{}", p.hf_path());
                let find = |w: &str| {
                    es.iter().find(|e| e.name == format!("{pre}.lora_{w}.weight")).unwrap()
                };
                let (a, b) = (find("A"), find("B"));
                let t = |e: &Entry| {
                    candle_core::Tensor::from_vec(
                        e.expected_bf16(),
                        (e.shape[0], e.shape[1]),
                        &candle_core::Device::Cpu,
                    )
                    .unwrap()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                };
                let want = (t(b).matmul(&t(a)).unwrap() * adapter.scale() as f64).unwrap();
                let (got, want) = (
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert_eq!(got.len(), want.len());
                let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{dtype:?} layer {l} {p:?}: loaded weights differ from half's bf16");
                checked += 1;
            }
        }
        assert_eq!(checked, cfg.num_layers * TARGETS.len());
    }
}

#[test]
fn the_rounding_is_checked_not_assumed() {
    // The test above can fail: a file whose values are shifted by one bf16 step in one
    // tensor gives a different delta.
    let (root, cfg) = config();
    let mut es = entries(&cfg, Dtype::F32, 1);
    let dir_a = write(&root.path().join("a"), &es);
    es[0].values[0] = f64::from(bf16::from_f64(es[0].values[0]).to_f32()) * (1.0 + 1.0 / 64.0);
    let dir_b = write(&root.path().join("b"), &es);
    let cpu = candle_core::Device::Cpu;
    let (a, b) = (
        LoraAdapter::load(&dir_a, &cfg, &cpu).unwrap(),
        LoraAdapter::load(&dir_b, &cfg, &cpu).unwrap(),
    );
    let da = a
        .merged_delta(0, TARGETS[0])
        .unwrap()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let db = b
        .merged_delta(0, TARGETS[0])
        .unwrap()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(da.iter().zip(&db).any(|(x, y)| x.to_bits() != y.to_bits()));
}

#[test]
fn bad_files_are_refused_naming_file_tensor_and_problem() {
    let (root, cfg) = config();
    let r = root.path();
    let target = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
    let named = |e: &AdapterError, dir: &Path, tensor: Option<&str>| {
        let text = e.to_string();
        let file = dir.join("adapter_model.safetensors").display().to_string();
        assert!(text.contains(&file), "{text}");
        if let Some(t) = tensor {
            assert!(text.contains(t), "{text}");
        }
    };
    let index = |es: &[Entry]| es.iter().position(|e| e.name == target).unwrap();

    // Integers where weights belong.
    let mut es = entries(&cfg, Dtype::F32, 2);
    let i = index(&es);
    es[i].dtype = Dtype::I32;
    let d = write(&r.join("int32"), &es);
    let e = refused(&d, &cfg);
    assert!(
        matches!(&e, AdapterError::NotFloat { tensor, dtype, .. } if tensor == target && dtype == "I32"),
        "{e}"
    );
    named(&e, &d, Some(target));

    // NaN and infinities in every float dtype, at the tensor's last element.
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
        for (case, bad) in [("nan", f64::NAN), ("inf", f64::INFINITY), ("-inf", f64::NEG_INFINITY)]
        {
            let mut es = entries(&cfg, dtype, 3);
            let i = index(&es);
            *es[i].values.last_mut().unwrap() = bad;
            let d = write(&r.join(format!("{case}-{dtype:?}")), &es);
            let e = refused(&d, &cfg);
            assert!(
                matches!(&e, AdapterError::NonFinite { tensor, .. } if tensor == target),
                "{dtype:?} {case}: {e}"
            );
            named(&e, &d, Some(target));
        }
    }

    // A finite f32 (and f64) beyond bf16's range would become infinite: refused.
    for dtype in [Dtype::F32, Dtype::F64] {
        let mut es = entries(&cfg, dtype, 4);
        let i = index(&es);
        es[i].values[3] = f32::MAX as f64;
        let d = write(&r.join(format!("overflow-{dtype:?}")), &es);
        let e = refused(&d, &cfg);
        assert!(matches!(&e, AdapterError::NonFinite { tensor, .. } if tensor == target), "{e}");
    }
    // ... while bf16's own largest value loads.
    let mut es = entries(&cfg, Dtype::F32, 4);
    let i = index(&es);
    es[i].values[3] = bf16::MAX.to_f64();
    let d = write(&r.join("bf16-max"), &es);
    LoraAdapter::load(&d, &cfg, &candle_core::Device::Cpu).unwrap();

    // Truncated: inside the data, inside the header, and before the header's length.
    let es = entries(&cfg, Dtype::BF16, 5);
    let good = write(&r.join("whole"), &es);
    let bytes = std::fs::read(good.join("adapter_model.safetensors")).unwrap();
    for (case, len) in [("data", bytes.len() - 1), ("header", 40), ("length", 5)] {
        let d = write(&r.join(format!("truncated-{case}")), &es);
        std::fs::write(d.join("adapter_model.safetensors"), &bytes[..len]).unwrap();
        let e = refused(&d, &cfg);
        assert!(matches!(e, AdapterError::UnreadableWeights { .. }), "{case}: {e}");
        named(&e, &d, None);
    }

    // Wrong shapes: transposed, three dimensions, the wrong output width.
    let (_, d_out) = cfg.proj_dims(Projection::Down);
    for (case, shape) in [
        ("transposed", vec![RANK, d_out]),
        ("three-dims", vec![d_out, RANK, 1]),
        ("wide", vec![d_out + 8, RANK]),
    ] {
        let mut es = entries(&cfg, Dtype::F16, 6);
        let i = index(&es);
        es[i].shape = shape.clone();
        es[i].values.resize(shape.iter().product(), 0.01);
        let d = write(&r.join(case), &es);
        let e = refused(&d, &cfg);
        assert!(
            matches!(&e, AdapterError::ShapeMismatch { tensor, actual, .. } if tensor == target && *actual == shape),
            "{case}: {e}"
        );
        named(&e, &d, Some(target));
    }
}
