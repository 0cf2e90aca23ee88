//! A malformed or mismatched adapter is refused with an error naming the file and tensor:
//! by `validate_adapter_dir` (what `register-adapter` and the worker's scan call) and by the
//! engine's loading alike, since both run the same checks.

use openledger_testkit as common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{write_adapter, write_model, AdapterSpec};
use openledger_engine::{
    scan_adapter_dirs, validate_adapter_dir, write_random_adapter, AdapterError, Engine,
    EngineConfig, EngineError, LoraAdapter, ModelConfig, ModelSource, Projection,
};

const QV: &[Projection] = &[Projection::Q, Projection::V];

fn setup() -> (tempfile::TempDir, ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_model(dir.path(), 7);
    (dir, cfg)
}

fn good(dir: &Path, cfg: &ModelConfig) -> std::path::PathBuf {
    write_adapter(dir, cfg, &AdapterSpec { r: 4, alpha: 8.0, rslora: false, targets: QV }, 1)
}

fn edit_tensors(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("adapter_model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

fn load_err(dir: &Path, cfg: &ModelConfig) -> String {
    match LoraAdapter::load(dir, cfg, &Device::Cpu) {
        Ok(_) => panic!("malformed adapter in {} was accepted", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_base_dimensions_name_file_and_tensor() {
    let (dir, cfg) = setup();
    let a = good(&dir.path().join("a"), &cfg);
    let name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    edit_tensors(&a, |t| {
        t.insert(
            name.into(),
            Tensor::zeros((cfg.hidden_size, 4), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&a, &cfg);
    assert!(err.contains("adapter_model.safetensors") && err.contains(name), "{err}");
    assert!(err.contains("[16, 4]") && err.contains("[32, 4]"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let (dir, cfg) = setup();
    let a = good(&dir.path().join("a"), &cfg);
    let name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    edit_tensors(&a, |t| {
        t.remove(name);
    });
    let err = load_err(&a, &cfg);
    assert!(err.contains("adapter_model.safetensors") && err.contains(name), "{err}");
}

#[test]
fn rank_differing_from_config_is_refused() {
    let (dir, cfg) = setup();
    let a = good(&dir.path().join("a"), &cfg);
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("adapter_config.json")).unwrap())
            .unwrap();
    c["r"] = 8.into();
    std::fs::write(a.join("adapter_config.json"), c.to_string()).unwrap();
    let err = load_err(&a, &cfg);
    assert!(
        err.contains("lora_A.weight") && err.contains("rank 4") && err.contains("r = 8"),
        "{err}"
    );
}

#[test]
fn extra_layer_means_another_base_model() {
    let (dir, cfg) = setup();
    let a = good(&dir.path().join("a"), &cfg);
    let name = "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight";
    edit_tensors(&a, |t| {
        t.insert(name.into(), Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap());
    });
    let err = load_err(&a, &cfg);
    assert!(err.contains(name) && err.contains("2 layers"), "{err}");
}

#[test]
fn bad_configs_name_adapter_config_json() {
    let (dir, cfg) = setup();
    let cases = [
        serde_json::json!({"r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}),
        serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "lm_head"]}),
        serde_json::json!({"r": 4, "target_modules": ["q_proj"]}),
        serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": []}),
    ];
    for (i, c) in cases.iter().enumerate() {
        let a = good(&dir.path().join(format!("a{i}")), &cfg);
        std::fs::write(a.join("adapter_config.json"), c.to_string()).unwrap();
        let err = load_err(&a, &cfg);
        assert!(err.contains("adapter_config.json"), "case {i}: {err}");
    }
    let a = good(&dir.path().join("garbage"), &cfg);
    std::fs::write(a.join("adapter_model.safetensors"), b"not safetensors").unwrap();
    assert!(load_err(&a, &cfg).contains("adapter_model.safetensors"));
    let missing = dir.path().join("nowhere");
    assert!(load_err(&missing, &cfg).contains("nowhere"));
}

#[test]
fn engine_refuses_registration_and_unknown_adapters() {
    let (dir, cfg) = setup();
    let a = good(&dir.path().join("a"), &cfg);
    edit_tensors(&a, |t| {
        t.insert(
            "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight".into(),
            Tensor::new(&[[f32::NAN; 32]; 4], &Device::Cpu).unwrap(),
        );
    });
    let mut engine = Engine::load(
        &ModelSource::HuggingFace(dir.path().into()),
        EngineConfig::default(),
        &Device::Cpu,
    )
    .unwrap();
    let err = engine.register_adapter("bad", &a).unwrap_err();
    let non_finite =
        matches!(&err, EngineError::Adapter(e) if matches!(**e, AdapterError::NonFinite { .. }));
    assert!(non_finite, "{err}");
    assert!(err.to_string().contains("v_proj.lora_A.weight"), "{err}");
    let req = openledger_engine::GenerationRequest {
        prompt: "hi".into(),
        adapter: Some("bad".into()),
        params: Default::default(),
    };
    assert!(matches!(engine.submit(req), Err(EngineError::UnknownAdapter(_))));
}

/// The real base model's shape, read from the GGUF metadata alone.
fn smollm2() -> ModelConfig {
    let cfg = ModelConfig::read(&common::procs::model()).unwrap();
    assert_eq!((cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads), (30, 576, 3));
    cfg
}

const ALL: &[Projection] = &Projection::ALL;

/// A rank-8 random adapter on every projection of `cfg`, in `root/name`.
fn adapter(root: &Path, name: &str, cfg: &ModelConfig) -> std::path::PathBuf {
    let dir = root.join(name);
    write_random_adapter(&dir, cfg, 8, ALL, 3).unwrap();
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(path, c.to_string()).unwrap();
}

/// The error of validating `dir`, after checking that loading it in the engine fails the same
/// way.
fn refused(dir: &Path, cfg: &ModelConfig) -> AdapterError {
    let err = match validate_adapter_dir(dir, cfg) {
        Ok(s) => panic!("{} validated: {s:?}", dir.display()),
        Err(e) => e,
    };
    match LoraAdapter::load(dir, cfg, &Device::Cpu) {
        Ok(_) => panic!("{} failed validation but loads", dir.display()),
        Err(EngineError::Adapter(e)) => assert_eq!(e.to_string(), err.to_string()),
        Err(e) => panic!("{} failed to load otherwise: {e}", dir.display()),
    }
    err
}

#[test]
fn a_good_adapter_validates_with_its_chain_summary_and_loads() {
    let cfg = smollm2();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("qv");
    write_random_adapter(&dir, &cfg, 8, &[Projection::Q, Projection::V, Projection::Down], 1)
        .unwrap();
    let summary = validate_adapter_dir(&dir, &cfg).unwrap();
    assert_eq!(summary.rank, 8);
    assert_eq!(summary.target_modules, 0b100_0101);
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(summary.content_hash, sp_crypto_hashing::blake2_256(&bytes));
    assert_eq!(LoraAdapter::load(&dir, &cfg, &Device::Cpu).unwrap().rank(), 8);
}

#[test]
fn every_problem_of_a_folder_is_named() {
    let cfg = smollm2();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let layer0 = "base_model.model.model.layers.0";
    let weights_named = |e: &AdapterError, dir: &Path| {
        let text = e.to_string();
        let file = dir.join("adapter_model.safetensors");
        assert!(text.contains(&file.display().to_string()), "{text}");
    };
    let config_named = |e: &AdapterError, dir: &Path| {
        let text = e.to_string();
        let file = dir.join("adapter_config.json");
        assert!(text.contains(&file.display().to_string()), "{text}");
    };

    let nowhere = r.join("nowhere");
    let e = refused(&nowhere, &cfg);
    assert!(matches!(e, AdapterError::NotAFolder { .. }) && e.to_string().contains("nowhere"));

    let d = adapter(r, "no-config", &cfg);
    std::fs::remove_file(d.join("adapter_config.json")).unwrap();
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::MissingConfig { .. }), "{e}");
    config_named(&e, &d);

    let d = adapter(r, "not-json", &cfg);
    std::fs::write(d.join("adapter_config.json"), "{\"r\": 8,").unwrap();
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::ConfigNotJson { .. }), "{e}");
    config_named(&e, &d);

    let d = adapter(r, "no-rank", &cfg);
    edit_config(&d, |c| {
        c.as_object_mut().unwrap().remove("r");
    });
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::MissingRank { .. }), "{e}");
    config_named(&e, &d);

    let d = adapter(r, "rank-zero", &cfg);
    edit_config(&d, |c| c["r"] = 0.into());
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::BadConfigField { field: "r", .. }), "{e}");
    config_named(&e, &d);

    let d = adapter(r, "bad-alpha", &cfg);
    edit_config(&d, |c| c["lora_alpha"] = "sixteen".into());
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::BadConfigField { field: "lora_alpha", .. }), "{e}");

    let d = adapter(r, "lm-head", &cfg);
    edit_config(&d, |c| c["target_modules"] = serde_json::json!(["q_proj", "lm_head"]));
    let e = refused(&d, &cfg);
    assert!(matches!(&e, AdapterError::UnknownTargetModule { module, .. } if module == "lm_head"));
    config_named(&e, &d);

    let d = adapter(r, "no-targets", &cfg);
    edit_config(&d, |c| c["target_modules"] = serde_json::json!([]));
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::NoTargetModules { .. }), "{e}");
    config_named(&e, &d);

    let d = adapter(r, "no-weights", &cfg);
    std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap();
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::MissingWeights { .. }), "{e}");
    weights_named(&e, &d);

    let d = adapter(r, "empty", &cfg);
    std::fs::write(d.join("adapter_model.safetensors"), b"").unwrap();
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::EmptyWeights { .. }), "{e}");
    weights_named(&e, &d);

    let d = adapter(r, "truncated", &cfg);
    let file = d.join("adapter_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::UnreadableWeights { .. }), "{e}");
    weights_named(&e, &d);

    let d = adapter(r, "missing-b", &cfg);
    let gone = format!("{layer0}.mlp.up_proj.lora_B.weight");
    edit_tensors(&d, |t| {
        t.remove(&gone);
    });
    let e = refused(&d, &cfg);
    assert!(matches!(&e, AdapterError::MissingTensor { tensor, .. } if *tensor == gone), "{e}");
    weights_named(&e, &d);

    // r = 8 in the config, one lora_A of rank 4.
    let d = adapter(r, "rank-4-tensor", &cfg);
    let name = format!("{layer0}.self_attn.k_proj.lora_A.weight");
    edit_tensors(&d, |t| {
        t.insert(name.clone(), Tensor::zeros((4, 576), DType::F32, &Device::Cpu).unwrap());
    });
    let e = refused(&d, &cfg);
    assert!(matches!(&e, AdapterError::RankMismatch { config_rank: 8, tensor_rank: 4, .. }), "{e}");
    weights_named(&e, &d);

    // The config says r = 16 over tensors of rank 8.
    let d = adapter(r, "rank-16-config", &cfg);
    edit_config(&d, |c| c["r"] = 16.into());
    let e = refused(&d, &cfg);
    assert!(
        matches!(&e, AdapterError::RankMismatch { config_rank: 16, tensor_rank: 8, .. }),
        "{e}"
    );

    // lora_B of v_proj sized for the hidden width (576) instead of the KV width (192).
    let d = adapter(r, "wrong-width", &cfg);
    let name = format!("{layer0}.self_attn.v_proj.lora_B.weight");
    edit_tensors(&d, |t| {
        t.insert(name.clone(), Tensor::zeros((576, 8), DType::F32, &Device::Cpu).unwrap());
    });
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("[576, 8]") && e.to_string().contains("[192, 8]"), "{e}");
    weights_named(&e, &d);

    let d = adapter(r, "deeper-model", &cfg);
    edit_tensors(&d, |t| {
        let extra = "base_model.model.model.layers.30.self_attn.q_proj.lora_A.weight";
        t.insert(extra.into(), Tensor::zeros((8, 576), DType::F32, &Device::Cpu).unwrap());
    });
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::ExtraLayer { layer: 30, layers: 30, .. }), "{e}");

    let d = adapter(r, "integers", &cfg);
    let name = format!("{layer0}.self_attn.q_proj.lora_A.weight");
    edit_tensors(&d, |t| {
        t.insert(name.clone(), Tensor::zeros((8, 576), DType::I64, &Device::Cpu).unwrap());
    });
    let e = refused(&d, &cfg);
    assert!(matches!(e, AdapterError::NotFloat { .. }), "{e}");

    for (case, bad) in [("nan", f32::NAN), ("infinite", f32::INFINITY)] {
        let d = adapter(r, case, &cfg);
        let name = "base_model.model.model.layers.29.mlp.down_proj.lora_B.weight".to_string();
        edit_tensors(&d, |t| {
            let mut v = vec![0.01f32; 576 * 8];
            v[100] = bad;
            t.insert(name.clone(), Tensor::from_vec(v, (576, 8), &Device::Cpu).unwrap());
        });
        let e = refused(&d, &cfg);
        assert!(matches!(&e, AdapterError::NonFinite { tensor, .. } if *tensor == name), "{e}");
        weights_named(&e, &d);
    }
}

#[test]
fn a_scan_serves_the_good_folder_and_names_the_stray_one() {
    let cfg = smollm2();
    let root = tempfile::tempdir().unwrap();
    let good = adapter(root.path(), "good", &cfg);
    let stray = root.path().join("stray");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("README.md"), "notes, not an adapter").unwrap();
    // Plain files beside the folders are not adapters and not reported.
    std::fs::write(root.path().join("notes.txt"), "x").unwrap();
    let scan = scan_adapter_dirs(root.path(), &cfg).unwrap();
    assert_eq!(scan.adapters.len(), 1);
    assert_eq!(scan.adapters[0].0, good);
    assert_eq!(scan.adapters[0].1, validate_adapter_dir(&good, &cfg).unwrap());
    assert_eq!(scan.skipped.len(), 1);
    let (path, reason) = &scan.skipped[0];
    assert_eq!(path, &stray);
    assert!(matches!(reason, AdapterError::MissingConfig { .. }), "{reason}");
    assert!(reason.to_string().contains("stray/adapter_config.json"), "{reason}");
    let missing = scan_adapter_dirs(&root.path().join("absent"), &cfg).unwrap_err();
    assert!(missing.to_string().contains("absent"), "{missing}");
}
