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

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::host_weights::{HostAlloc, HostBuf, HostWeights, PackedWeights, Part, PACK_ALIGN};

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

/// An adapter folder that passed every check, its weights in host memory as bf16.
pub(crate) struct CheckedAdapter {
    pub summary: AdapterSummary,
    pub rank: usize,
    pub scale: f32,
    pub targets: [bool; 7],
    pub weights: HostWeights,
    /// Size of `adapter_model.safetensors`.
    pub file_bytes: usize,
}

/// Checks the adapter folder `dir` against `base` without keeping its weights: what the
/// engine's loading checks, so a folder that passes here loads in the engine.
pub fn validate_adapter_dir(
    dir: &Path,
    base: &ModelConfig,
) -> Result<AdapterSummary, AdapterError> {
    read_adapter(dir, base, &HostAlloc::Tensors, true).map(|a| a.summary)
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

/// One targeted projection's tensor, checked against the base model: its bytes in the file
/// and its shape.
struct Planned<'a> {
    name: String,
    dtype: Dtype,
    data: &'a [u8],
    dims: [usize; 2],
}

/// Reads and checks the adapter in `dir` against `base`, keeping its weights in bf16 where
/// `alloc` says. Every check of this module is here. The weights file is read once; its
/// header is parsed by the `safetensors` crate, each targeted tensor's name, dtype and shape
/// checked from the header, and then one pass over the tensors' bytes (the tensors in
/// parallel) converts f32 / f16 / bf16 / f64 to bf16 straight into the destination (a
/// page-locked buffer for a GPU engine) and checks in the same loop that every converted
/// value is finite. With `hash`, the file's BLAKE2b-256 (the chain's content hash, which
/// only validation needs: hashing 55 MB costs tens of milliseconds) goes into the summary;
/// without, the summary's hash is zero.
pub(crate) fn read_adapter(
    dir: &Path,
    base: &ModelConfig,
    alloc: &HostAlloc,
    hash: bool,
) -> Result<CheckedAdapter, AdapterError> {
    if !dir.is_dir() {
        return Err(AdapterError::NotAFolder { dir: dir.to_path_buf() });
    }
    let config = read_config(&dir.join("adapter_config.json"))?;

    let path = dir.join("adapter_model.safetensors");
    let bytes = read_file(&path).map_err(|source| match source.kind() {
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
    let check = |name: String, [d0, d1]: [usize; 2], rank_dim: usize| {
        let view = match file.tensor(&name) {
            Ok(v) => v,
            Err(_) => return Err(AdapterError::MissingTensor { path: path.clone(), tensor: name }),
        };
        if !matches!(view.dtype(), Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            return Err(AdapterError::NotFloat {
                path: path.clone(),
                tensor: name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let actual = view.shape().to_vec();
        let expected = vec![d0, d1];
        if actual.len() != 2 || actual[1 - rank_dim] != expected[1 - rank_dim] {
            return Err(AdapterError::ShapeMismatch {
                path: path.clone(),
                tensor: name,
                expected,
                actual,
            });
        }
        if actual[rank_dim] != r {
            return Err(AdapterError::RankMismatch {
                path: path.clone(),
                tensor: name,
                config_rank: r,
                tensor_rank: actual[rank_dim],
            });
        }
        Ok(Planned { name, dtype: view.dtype(), data: view.data(), dims: [d0, d1] })
    };
    // Every check the header allows, in layer and projection order, before any conversion.
    let mut planned = Vec::new();
    let mut slots = Vec::with_capacity(base.num_layers);
    for l in 0..base.num_layers {
        let mut layer = [None; 7];
        for p in Projection::ALL {
            if !config.targets[p.index()] {
                continue;
            }
            let (d_in, d_out) = base.proj_dims(p);
            let pre = format!("base_model.model.model.layers.{l}.{}", p.hf_path());
            layer[p.index()] = Some(planned.len());
            planned.push(check(format!("{pre}.lora_A.weight"), [r, d_in], 0)?);
            planned.push(check(format!("{pre}.lora_B.weight"), [d_out, r], 1)?);
        }
        slots.push(layer);
    }

    // Destinations: one buffer per tensor, or one packed buffer with each tensor aligned.
    let packed = !matches!(alloc, HostAlloc::Tensors);
    let mut offsets = Vec::with_capacity(planned.len());
    let mut total = 0usize;
    for t in &planned {
        offsets.push(total);
        let n = t.dims[0] * t.dims[1];
        total += if packed { n.div_ceil(PACK_ALIGN) * PACK_ALIGN } else { n };
    }
    let no_memory = |message: String| AdapterError::Tensor {
        path: path.clone(),
        tensor: "(all)".into(),
        source: Box::new(candle_core::Error::Msg(message)),
    };
    let mut bufs: Vec<HostBuf> = if packed {
        vec![HostBuf::alloc(alloc, total).map_err(no_memory)?]
    } else {
        planned
            .iter()
            .map(|t| HostBuf::alloc(alloc, t.dims[0] * t.dims[1]))
            .collect::<Result<_, _>>()
            .map_err(no_memory)?
    };
    let mut dests: Vec<&mut [bf16]> = Vec::with_capacity(planned.len());
    if packed {
        let mut rest = bufs[0].as_mut_slice();
        let mut at = 0;
        for (t, &off) in planned.iter().zip(&offsets) {
            let (pad, tail) = std::mem::take(&mut rest).split_at_mut(off - at);
            pad.fill(bf16::ZERO);
            let (dst, tail) = tail.split_at_mut(t.dims[0] * t.dims[1]);
            dests.push(dst);
            rest = tail;
            at = off + t.dims[0] * t.dims[1];
        }
        rest.fill(bf16::ZERO);
    } else {
        dests.extend(bufs.iter_mut().map(HostBuf::as_mut_slice));
    }
    // The one pass over the tensors' bytes. The first tensor (in the order above) with a
    // value that is not finite in bf16 is the one named.
    let finite: Vec<bool> = planned
        .par_iter()
        .zip(dests.into_par_iter())
        .map(|(t, dst)| convert_to_bf16(t.dtype, t.data, dst))
        .collect();
    if let Some(bad) = finite.iter().position(|ok| !ok) {
        return Err(AdapterError::NonFinite {
            path: path.clone(),
            tensor: planned[bad].name.clone(),
        });
    }

    let weights = if packed {
        let parts = slots
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|i| {
                        i.map(|i| {
                            let part = |j: usize| Part {
                                offset: offsets[j],
                                rows: planned[j].dims[0],
                                cols: planned[j].dims[1],
                            };
                            (part(i), part(i + 1))
                        })
                    })
                    .collect()
            })
            .collect();
        let buf = bufs.pop().ok_or_else(|| no_memory("no buffer".into()))?;
        HostWeights::Packed(PackedWeights { buf, len: total, parts })
    } else {
        let mut tensors = Vec::with_capacity(planned.len());
        for (t, buf) in planned.iter().zip(bufs) {
            let Some(v) = buf.into_vec() else {
                return Err(no_memory("a per-tensor buffer outside ordinary memory".into()));
            };
            let tensor =
                Tensor::from_vec(v, (t.dims[0], t.dims[1]), &Device::Cpu).map_err(|source| {
                    AdapterError::Tensor {
                        path: path.clone(),
                        tensor: t.name.clone(),
                        source: Box::new(source),
                    }
                })?;
            tensors.push(Some(tensor));
        }
        HostWeights::Tensors(
            slots
                .iter()
                .map(|layer| {
                    layer
                        .iter()
                        .map(|i| i.and_then(|i| Some((tensors[i].take()?, tensors[i + 1].take()?))))
                        .collect()
                })
                .collect(),
        )
    };
    let target_modules =
        Projection::bits(Projection::ALL.into_iter().filter(|p| config.targets[p.index()]));
    Ok(CheckedAdapter {
        summary: AdapterSummary {
            rank: r as u32,
            target_modules,
            content_hash: if hash { sp_crypto_hashing::blake2_256(&bytes) } else { [0; 32] },
        },
        rank: r,
        scale: config.scale,
        targets: config.targets,
        weights,
        file_bytes: bytes.len(),
    })
}

/// A weights file's bytes, in a buffer kept for the next file when dropped.
struct FileBytes(Vec<u8>);

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Read buffers kept for reuse: at most this many, each at most [`KEEP_BYTES`].
const KEEP_BUFFERS: usize = 2;
const KEEP_BYTES: usize = 512 << 20;

fn read_buffers() -> &'static std::sync::Mutex<Vec<Vec<u8>>> {
    static BUFFERS: std::sync::OnceLock<std::sync::Mutex<Vec<Vec<u8>>>> =
        std::sync::OnceLock::new();
    BUFFERS.get_or_init(Default::default)
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() <= KEEP_BYTES {
            let mut kept = read_buffers().lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < KEEP_BUFFERS {
                kept.push(v);
            }
        }
    }
}

/// Reads the whole file into a reused buffer when one is free, in parallel chunks of
/// [`READ_CHUNK`] (positioned reads on the rayon pool, each straight into its part of the
/// buffer). Reading a 55 MB adapter file with `std::fs::read` took 40 ms on the H100 machine
/// (1.4 GB/s, 2026-12-06), most of a cold adapter's cost; on the 2-core build machine 23 ms
/// into a fresh buffer against ~9 ms into a reused one. A fresh buffer is allocated zeroed
/// by the allocator (pages mapped on first touch), so its page faults too are taken by the
/// reading threads in parallel. `OPENLEDGER_ADAPTER_READ_SERIAL=1`: one `read_to_end`.
fn read_file(path: &Path) -> std::io::Result<FileBytes> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::other("the file does not fit this machine's memory"))?;
    let reused = {
        let mut kept = read_buffers().lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..kept.len()).max_by_key(|&i| kept[i].capacity());
        best.map(|i| kept.swap_remove(i))
    };
    if openledger_kernels::options::options().adapter_read_serial || !cfg!(unix) {
        let mut buf = FileBytes(reused.unwrap_or_default());
        buf.0.clear();
        buf.0.reserve(len);
        // No zeroing: `read_to_end` fills the spare capacity directly.
        file.read_to_end(&mut buf.0)?;
        return Ok(buf);
    }
    let mut buf = FileBytes(match reused {
        // What a reused buffer holds is overwritten; only a longer file's tail is zeroed.
        Some(mut v) if v.capacity() >= len => {
            v.truncate(len);
            v.resize(len, 0);
            v
        },
        _ => vec![0; len],
    });
    read_chunks(&file, &mut buf.0)?;
    Ok(buf)
}

/// Bytes per positioned read of [`read_file`]: a 55 MB adapter is 14 reads.
const READ_CHUNK: usize = 4 << 20;

/// Fills `buf` from the start of `file`, chunk by chunk in parallel; fails if the file is
/// shorter than `buf`.
#[cfg(unix)]
fn read_chunks(file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.par_chunks_mut(READ_CHUNK)
        .enumerate()
        .try_for_each(|(i, chunk)| file.read_exact_at(chunk, (i * READ_CHUNK) as u64))
}

#[cfg(not(unix))]
fn read_chunks(file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    let mut file = file;
    file.read_exact(buf)
}

/// Converts the little-endian values `src` of `dtype` to bf16 in `dst` (as many as `dst`
/// holds; the caller checked the sizes from the header) and says whether every converted
/// value is finite. Rounding is `half`'s round-to-nearest-even from f32, the conversion
/// candle's `to_dtype` makes: f16 widens to f32 exactly first, f64 narrows to f32 first
/// (as the f32 round trip of the loader before did). A finite f32 beyond bf16's range
/// becomes infinite and is refused.
pub(crate) fn convert_to_bf16(dtype: Dtype, src: &[u8], dst: &mut [bf16]) -> bool {
    const EXP: u16 = 0x7f80;
    let mut bad = false;
    match dtype {
        Dtype::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                let bits = u16::from_le_bytes([s[0], s[1]]);
                bad |= bits & EXP == EXP;
                *d = bf16::from_bits(bits);
            }
        },
        Dtype::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                let v = bf16::from_f32(f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32());
                bad |= v.to_bits() & EXP == EXP;
                *d = v;
            }
        },
        Dtype::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                let v = bf16::from_f32(f32::from_le_bytes([s[0], s[1], s[2], s[3]]));
                bad |= v.to_bits() & EXP == EXP;
                *d = v;
            }
        },
        Dtype::F64 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(8)) {
                let b = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
                let v = bf16::from_f32(f64::from_le_bytes(b) as f32);
                bad |= v.to_bits() & EXP == EXP;
                *d = v;
            }
        },
        _ => bad = true,
    }
    !bad
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::host_weights::HostWeights;
    use crate::write_random_adapter;

    fn tiny() -> ModelConfig {
        ModelConfig {
            vocab_size: 64,
            hidden_size: 40,
            intermediate_size: 72,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 10,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_style: openledger_model::RopeStyle::Half,
            max_position: 64,
            tie_word_embeddings: false,
            eos_token_ids: Vec::new(),
            bos_token_id: None,
        }
    }

    /// The packed layout (a GPU engine's host tier) holds exactly the per-tensor values,
    /// each tensor 16-byte aligned, the gaps zero; widths (40, 20, 72) that are not
    /// multiples of 8 make gaps.
    #[test]
    fn packed_buffer_holds_the_tensors_values_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny();
        let targets = [Projection::Q, Projection::K, Projection::Down];
        write_random_adapter(dir.path(), &cfg, 3, &targets, 9).unwrap();
        let tensors = read_adapter(dir.path(), &cfg, &HostAlloc::Tensors, false).unwrap();
        let packed = read_adapter(dir.path(), &cfg, &HostAlloc::PackedVec, false).unwrap();
        let (HostWeights::Tensors(t), HostWeights::Packed(p)) = (&tensors.weights, &packed.weights)
        else {
            panic!("layouts not as asked");
        };
        let mut covered = vec![false; p.len];
        let mut parts = 0;
        for (tl, pl) in t.iter().zip(&p.parts) {
            for proj in Projection::ALL {
                let (want, got) = (&tl[proj.index()], pl[proj.index()]);
                assert_eq!(want.is_some(), got.is_some());
                let (Some((wa, wb)), Some((pa, pb))) = (want, got) else { continue };
                for (w, part) in [(wa, pa), (wb, pb)] {
                    assert_eq!(part.offset % PACK_ALIGN, 0);
                    assert_eq!(w.dims(), &[part.rows, part.cols]);
                    let w: Vec<u16> = w
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<bf16>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let g: Vec<u16> = p.values(part).iter().map(|v| v.to_bits()).collect();
                    assert_eq!(w, g);
                    covered[part.offset..part.offset + part.len()]
                        .iter_mut()
                        .for_each(|c| *c = true);
                    parts += 1;
                }
            }
        }
        assert_eq!(parts, 2 * targets.len() * cfg.num_layers);
        let gaps: Vec<bf16> =
            (0..p.len).filter(|&i| !covered[i]).map(|i| p.buf.as_slice()[i]).collect();
        assert!(!gaps.is_empty(), "these widths leave gaps");
        assert!(gaps.iter().all(|v| v.to_bits() == 0));
        assert_eq!(tensors.weights.elem_count(), packed.weights.elem_count());
    }

    /// The runs of layers an adapter's copy to the GPU is cut into: each run starts where
    /// its first layer's tensors start and holds every tensor of its layers, in layer order,
    /// whatever the number of runs asked; one run is the whole buffer.
    #[test]
    fn layer_runs_cut_the_packed_buffer_between_layers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig { num_layers: 5, ..tiny() };
        let targets = [Projection::K, Projection::Up];
        write_random_adapter(dir.path(), &cfg, 3, &targets, 4).unwrap();
        let packed = read_adapter(dir.path(), &cfg, &HostAlloc::PackedVec, false).unwrap();
        let HostWeights::Packed(p) = &packed.weights else { panic!("not packed") };
        let layer_span = |l: usize| {
            let parts: Vec<_> = p.parts[l].iter().flatten().flat_map(|(a, b)| [*a, *b]).collect();
            let lo = parts.iter().map(|q| q.offset).min().unwrap();
            let hi = parts.iter().map(|q| q.offset + q.len()).max().unwrap();
            (lo, hi)
        };
        assert_eq!(p.layer_runs(1), vec![(0, 0)]);
        assert_eq!(p.layer_runs(0), vec![(0, 0)]);
        for (runs, firsts) in [
            (2, vec![0, 3]),
            (3, vec![0, 2, 4]),
            (5, vec![0, 1, 2, 3, 4]),
            (9, vec![0, 1, 2, 3, 4]),
        ] {
            let got = p.layer_runs(runs);
            let layers: Vec<usize> = got.iter().map(|&(l, _)| l).collect();
            assert_eq!(layers, firsts, "{runs} runs");
            for (k, &(first, start)) in got.iter().enumerate() {
                assert_eq!(start, if first == 0 { 0 } else { layer_span(first).0 });
                let end = got.get(k + 1).map_or(p.len, |&(_, s)| s);
                let last = got.get(k + 1).map_or(cfg.num_layers, |&(l, _)| l);
                for l in first..last {
                    let (lo, hi) = layer_span(l);
                    assert!(lo >= start && hi <= end, "layer {l} outside run {k} of {runs}");
                }
            }
        }
    }

    /// Each dtype's conversion against `half` on every bit pattern of the 16-bit types
    /// and a sweep of f32 patterns, non-finite results flagged.
    #[test]
    fn conversion_matches_half_and_flags_non_finite_values() {
        let check = |dtype: Dtype, bytes: Vec<u8>, want: Vec<bf16>| {
            let mut got = vec![bf16::ZERO; want.len()];
            let finite = convert_to_bf16(dtype, &bytes, &mut got);
            let all_finite = want.iter().all(|v| v.is_finite());
            assert_eq!(finite, all_finite, "{dtype:?}");
            assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "{dtype:?}");
        };
        for bits in 0..=u16::MAX {
            let b = bits.to_le_bytes().to_vec();
            check(Dtype::BF16, b.clone(), vec![bf16::from_bits(bits)]);
            check(Dtype::F16, b, vec![bf16::from_f32(f16::from_bits(bits).to_f32())]);
        }
        let patterns: Vec<u32> = (0..1u64 << 20).map(|i| (i * 4099 + (i >> 3)) as u32).collect();
        let mut bytes = Vec::new();
        let mut bytes64 = Vec::new();
        let mut want = Vec::new();
        for &p in &patterns {
            let v = f32::from_bits(p);
            if v.is_finite() {
                bytes.extend(v.to_le_bytes());
                bytes64.extend((v as f64).to_le_bytes());
                want.push(bf16::from_f32(v));
            }
        }
        check(Dtype::F32, bytes.clone(), want.clone());
        check(Dtype::F64, bytes64, want);
        // One NaN among finite values is found wherever it is.
        let mut values = [0.5f32; 37];
        values[36] = f32::NAN;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(!convert_to_bf16(Dtype::F32, &bytes, &mut [bf16::ZERO; 37]));
        assert!(!convert_to_bf16(Dtype::I32, &bytes, &mut [bf16::ZERO; 37]));
    }

    /// The parallel read gives the file's bytes exactly, whatever the reused buffer held
    /// before: files of several chunks and a partial last one, read after a longer file (the
    /// buffer is cut to length, its old tail not kept) and after a shorter one (grown).
    #[test]
    fn files_read_in_parallel_chunks_come_back_whole() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let sizes =
            [3 * READ_CHUNK + 12_345, READ_CHUNK + 1, 5, 2 * READ_CHUNK, 0, 4 * READ_CHUNK - 1];
        for (i, &len) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &bytes).unwrap();
            let read = read_file(&path).unwrap();
            assert_eq!(read.len(), len, "file {i}: length");
            assert!(read[..] == bytes[..], "file {i} of {len} bytes: contents differ");
        }
    }
}
