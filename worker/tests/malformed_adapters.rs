//! A malformed or mismatched adapter is refused with an error naming the file and tensor.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{write_adapter, write_model, AdapterSpec};
use openledger_worker::engine::{
    Engine, EngineConfig, EngineError, LoraAdapter, ModelConfig, ModelSource, Projection,
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
    assert!(err.contains("lora_A.weight") && err.contains("[8, 32]"), "{err}");
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
    assert!(matches!(err, EngineError::BadTensor { .. }), "{err}");
    assert!(err.to_string().contains("v_proj.lora_A.weight"), "{err}");
    let req = openledger_worker::engine::GenerationRequest {
        prompt: "hi".into(),
        adapter: Some("bad".into()),
        params: Default::default(),
    };
    assert!(matches!(engine.submit(req), Err(EngineError::UnknownAdapter(_))));
}
