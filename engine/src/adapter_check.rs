//! Checking a PEFT LoRA adapter folder against a base model, once, for everyone: the engine
//! loads adapters through [`read_adapter`], and `register-adapter` and the worker's scan of
//! its adapter folder call [`validate_adapter_dir`], which runs the same function. So an
//! adapter that validates always loads, and one that fails names the same problem wherever
//! it is found.
//!
//! A folder holds `adapter_config.json` (rank `r`, `lora_alpha`, `target_modules`,
//! optionally `use_rslora`) and `adapter_model.safetensors` (for every layer and target,
//! `base_model.model.model.layers.{l}.{module}.lora_A.weight` of shape `[r, d_in]` and
//! `...lora_B.weight` of shape `[d_out, r]`).

use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use openledger_model::{ModelConfig, Projection};

/// How adapter weights are kept once loaded: bf16 (as most adapters are trained and shipped).
/// The SGMV step is bandwidth-bound on a CPU (each adapter's weights are read once per step
/// for the few tokens that use it), so half the bytes of f32 is close to half the time;
/// arithmetic stays f32 with f32 activations.
pub const ADAPTER_DTYPE: DType = DType::BF16;

/// What the chain records of an adapter, read from a folder that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// LoRA rank (`r`).
    pub rank: u32,
    /// Targeted projections, bit `i` for q, k, v, o, gate, up, down in that order (as the
    /// chain encodes them).
    pub target_modules: u8,
    /// BLAKE2b-256 of `adapter_model.safetensors`: the adapter's identity on chain.
    pub content_hash: [u8; 32],
}

/// Why an adapter folder cannot be served. Each message names the folder or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The path is not a folder (or does not exist).
    #[error("{}: not an adapter folder (a PEFT adapter is a folder holding adapter_config.json and adapter_model.safetensors)", .dir.display())]
    NotAFolder { dir: PathBuf },
    /// The folder lacks `adapter_config.json`.
    #[error("{}: missing; every PEFT adapter folder has one", .path.display())]
    MissingConfig { path: PathBuf },
    /// A file or folder exists but cannot be read (permissions, I/O).
    #[error("{}: cannot read: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `adapter_config.json` is not a JSON object.
    #[error("{}: not a JSON object: {message}", .path.display())]
    ConfigNotJson { path: PathBuf, message: String },
    /// `adapter_config.json` has no `r`, the LoRA rank.
    #[error("{}: no `r` (the LoRA rank)", .path.display())]
    MissingRank { path: PathBuf },
    /// A field of `adapter_config.json` has a value the engine cannot use.
    #[error("{}: `{field}` {message}", .path.display())]
    BadConfigField { path: PathBuf, field: &'static str, message: String },
    /// `target_modules` names a module that is not one of a Llama layer's seven projections.
    #[error("{}: target module `{module}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj", .path.display())]
    UnknownTargetModule { path: PathBuf, module: String },
    /// `target_modules` is empty.
    #[error("{}: `target_modules` names no module", .path.display())]
    NoTargetModules { path: PathBuf },
    /// The folder lacks `adapter_model.safetensors`.
    #[error("{}: missing; the adapter's weights must be in this file", .path.display())]
    MissingWeights { path: PathBuf },
    /// `adapter_model.safetensors` is empty.
    #[error("{}: empty file", .path.display())]
    EmptyWeights { path: PathBuf },
    /// `adapter_model.safetensors` cannot be parsed (truncated, corrupt, not safetensors).
    #[error("{}: not a readable safetensors file (truncated or corrupt?): {message}", .path.display())]
    UnreadableWeights { path: PathBuf, message: String },
    /// A targeted projection's `lora_A` or `lora_B` is absent.
    #[error("{}: missing tensor `{tensor}`", .path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    /// A tensor's rank dimension differs from `r` in `adapter_config.json`.
    #[error("{}: tensor `{tensor}` has rank {tensor_rank}, but adapter_config.json says r = {config_rank}", .path.display())]
    RankMismatch { path: PathBuf, tensor: String, config_rank: usize, tensor_rank: usize },
    /// A tensor's shape does not match the base model's dimensions (an adapter trained for
    /// another model).
    #[error("{}: tensor `{tensor}` has shape {actual:?}, the base model needs {expected:?}", .path.display())]
    ShapeMismatch { path: PathBuf, tensor: String, expected: Vec<usize>, actual: Vec<usize> },
    /// A tensor for a layer the base model does not have (an adapter for a deeper model).
    #[error("{}: tensor `{tensor}` is for layer {layer}, but the base model has only {layers} layers", .path.display())]
    ExtraLayer { path: PathBuf, tensor: String, layer: usize, layers: usize },
    /// A tensor that does not hold floating-point numbers.
    #[error("{}: tensor `{tensor}` holds {dtype}, not floating-point weights", .path.display())]
    NotFloat { path: PathBuf, tensor: String, dtype: String },
    /// A tensor holding NaN or infinite values.
    #[error("{}: tensor `{tensor}` holds NaN or infinite values", .path.display())]
    NonFinite { path: PathBuf, tensor: String },
    /// A tensor that could not be converted or moved where the model runs.
    #[error("{}: tensor `{tensor}`: {source}", .path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

/// An adapter folder that passed every check, its weights in `dtype` on `device`.
pub(crate) struct CheckedAdapter {
    pub summary: AdapterSummary,
    pub rank: usize,
    pub scale: f32,
    pub targets: [bool; 7],
    /// `[layer][projection]`: `(lora_A [r, d_in], lora_B [d_out, r])` for targeted
    /// projections.
    pub weights: Vec<Vec<Option<(Tensor, Tensor)>>>,
    /// Size of `adapter_model.safetensors`.
    pub file_bytes: usize,
}

/// Checks the adapter folder `dir` against `base` without keeping its weights: what the
/// engine's loading checks, so a folder that passes here loads in the engine.
pub fn validate_adapter_dir(
    dir: &Path,
    base: &ModelConfig,
) -> Result<AdapterSummary, AdapterError> {
    read_adapter(dir, base, ADAPTER_DTYPE, &Device::Cpu).map(|a| a.summary)
}

/// The folders found under an adapters directory: those that can be served, and those that
/// cannot, each with its reason.
#[derive(Debug, Default)]
pub struct AdapterScan {
    /// Folders that passed [`validate_adapter_dir`], in name order.
    pub adapters: Vec<(PathBuf, AdapterSummary)>,
    /// Folders that did not, in name order.
    pub skipped: Vec<(PathBuf, AdapterError)>,
}

/// Checks every folder directly under `root` (plain files there are ignored).
pub fn scan_adapter_dirs(root: &Path, base: &ModelConfig) -> Result<AdapterScan, AdapterError> {
    let unreadable = |source| AdapterError::Unreadable { path: root.to_path_buf(), source };
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(root).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.is_dir() {
            folders.push(path);
        }
    }
    folders.sort();
    let mut scan = AdapterScan::default();
    for dir in folders {
        match validate_adapter_dir(&dir, base) {
            Ok(summary) => scan.adapters.push((dir, summary)),
            Err(e) => scan.skipped.push((dir, e)),
        }
    }
    Ok(scan)
}

/// Reads and checks the adapter in `dir` against `base`, keeping its weights as `dtype` on
/// `device`. Every check of this module is here, in one pass over the files.
pub(crate) fn read_adapter(
    dir: &Path,
    base: &ModelConfig,
    dtype: DType,
    device: &Device,
) -> Result<CheckedAdapter, AdapterError> {
    if !dir.is_dir() {
        return Err(AdapterError::NotAFolder { dir: dir.to_path_buf() });
    }
    let config = read_config(&dir.join("adapter_config.json"))?;

    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => AdapterError::MissingWeights { path: path.clone() },
        _ => AdapterError::Unreadable { path: path.clone(), source },
    })?;
    if bytes.is_empty() {
        return Err(AdapterError::EmptyWeights { path });
    }
    let file = SafeTensors::deserialize(&bytes).map_err(|e| AdapterError::UnreadableWeights {
        path: path.clone(),
        message: e.to_string(),
    })?;

    // A tensor for a layer the base lacks means the adapter was trained for another model.
    for name in file.names() {
        if let Some(layer) = layer_of(name).filter(|&l| l >= base.num_layers) {
            return Err(AdapterError::ExtraLayer {
                path,
                tensor: name.to_string(),
                layer,
                layers: base.num_layers,
            });
        }
    }
    let r = config.rank;
    let tensor =
        |name: &str, [d0, d1]: [usize; 2], rank_dim: usize| -> Result<Tensor, AdapterError> {
            let err_path = || path.clone();
            let view = file.tensor(name).map_err(|_| AdapterError::MissingTensor {
                path: err_path(),
                tensor: name.to_string(),
            })?;
            if !matches!(view.dtype(), Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
                return Err(AdapterError::NotFloat {
                    path: err_path(),
                    tensor: name.to_string(),
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let actual = view.shape().to_vec();
            let expected = vec![d0, d1];
            if actual.len() == 2 && actual[1 - rank_dim] == expected[1 - rank_dim] {
                if actual[rank_dim] != r {
                    return Err(AdapterError::RankMismatch {
                        path: err_path(),
                        tensor: name.to_string(),
                        config_rank: r,
                        tensor_rank: actual[rank_dim],
                    });
                }
            } else {
                return Err(AdapterError::ShapeMismatch {
                    path: err_path(),
                    tensor: name.to_string(),
                    expected,
                    actual,
                });
            }
            let failed = |source: candle_core::Error| AdapterError::Tensor {
                path: err_path(),
                tensor: name.to_string(),
                source: Box::new(source),
            };
            let t = view.load(&Device::Cpu).and_then(|t| t.to_dtype(DType::F32)).map_err(failed)?;
            let finite = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(failed)?
                .iter()
                .all(|x| x.is_finite());
            if !finite {
                return Err(AdapterError::NonFinite { path: err_path(), tensor: name.to_string() });
            }
            t.to_dtype(dtype).and_then(|t| t.to_device(device)).map_err(failed)
        };
    let mut weights = Vec::with_capacity(base.num_layers);
    for l in 0..base.num_layers {
        let mut layer = Vec::with_capacity(Projection::ALL.len());
        for p in Projection::ALL {
            if !config.targets[p.index()] {
                layer.push(None);
                continue;
            }
            let (d_in, d_out) = base.proj_dims(p);
            let pre = format!("base_model.model.model.layers.{l}.{}", p.hf_path());
            let a = tensor(&format!("{pre}.lora_A.weight"), [r, d_in], 0)?;
            let b = tensor(&format!("{pre}.lora_B.weight"), [d_out, r], 1)?;
            layer.push(Some((a, b)));
        }
        weights.push(layer);
    }
    let target_modules =
        Projection::bits(Projection::ALL.into_iter().filter(|p| config.targets[p.index()]));
    Ok(CheckedAdapter {
        summary: AdapterSummary {
            rank: r as u32,
            target_modules,
            content_hash: sp_crypto_hashing::blake2_256(&bytes),
        },
        rank: r,
        scale: config.scale,
        targets: config.targets,
        weights,
        file_bytes: bytes.len(),
    })
}

/// What the engine uses of `adapter_config.json`.
struct PeftConfig {
    rank: usize,
    scale: f32,
    targets: [bool; 7],
}

fn read_config(path: &Path) -> Result<PeftConfig, AdapterError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => AdapterError::MissingConfig { path: path.to_path_buf() },
        _ => AdapterError::Unreadable { path: path.to_path_buf(), source },
    })?;
    let not_json =
        |message: String| AdapterError::ConfigNotJson { path: path.to_path_buf(), message };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| not_json(e.to_string()))?;
    let json = json.as_object().ok_or_else(|| not_json(format!("found {json}")))?;
    let field = |field: &'static str, message: &str| AdapterError::BadConfigField {
        path: path.to_path_buf(),
        field,
        message: message.to_string(),
    };
    let rank = match json.get("r") {
        None | Some(serde_json::Value::Null) => {
            return Err(AdapterError::MissingRank { path: path.to_path_buf() })
        },
        Some(r) => r
            .as_u64()
            .filter(|&r| r > 0)
            .and_then(|r| usize::try_from(r).ok())
            .ok_or_else(|| field("r", &format!("must be a positive integer, found {r}")))?,
    };
    let alpha = json
        .get("lora_alpha")
        .ok_or_else(|| field("lora_alpha", "is missing"))?
        .as_f64()
        .filter(|a| a.is_finite())
        .ok_or_else(|| field("lora_alpha", "must be a finite number"))?;
    let rslora = match json.get("use_rslora") {
        None | Some(serde_json::Value::Null) => false,
        Some(v) => v.as_bool().ok_or_else(|| field("use_rslora", "must be true or false"))?,
    };
    let modules: Vec<&str> = match json.get("target_modules") {
        Some(serde_json::Value::String(one)) => vec![one.as_str()],
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .map(|m| m.as_str().ok_or_else(|| field("target_modules", "must list module names")))
            .collect::<Result<_, _>>()?,
        _ => return Err(field("target_modules", "must be a module name or a list of them")),
    };
    let mut targets = [false; 7];
    for m in modules {
        let p = Projection::from_module_name(m).ok_or_else(|| {
            AdapterError::UnknownTargetModule { path: path.to_path_buf(), module: m.to_string() }
        })?;
        targets[p.index()] = true;
    }
    if !targets.contains(&true) {
        return Err(AdapterError::NoTargetModules { path: path.to_path_buf() });
    }
    let scale = if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 } as f32;
    Ok(PeftConfig { rank, scale, targets })
}

/// The layer index of a PEFT tensor name (`base_model.model.model.layers.{l}....`).
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.split_once(".layers.")?.1;
    rest.split('.').next()?.parse().ok()
}
