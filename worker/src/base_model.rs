//! Like with like: what a worker checks before serving a base model id.
//!
//! Verification recomputes audited work with another provider of the same base model id,
//! under tolerances fitted to one numeric format; an honest provider computing another file
//! or another format than its verifiers would be found at fault. So governance registers
//! what each id stands for (`pallet-compute`'s `BaseModels`: the BLAKE2b-256 of the weights
//! file and the numeric format), and a worker whose model does not match refuses to serve
//! the id, naming what differs. An id with no registration is served with a warning.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use openledger_engine::commitment::NumericFormat as EngineFormat;
use openledger_primitives::market::{BaseModelSpec, NumericFormat};

/// BLAKE2b-256 of a model's weights: the file's bytes for a GGUF (or any single file); for a
/// Hugging Face directory, its `*.safetensors` files' bytes one after the other, in name
/// order.
pub fn weights_digest(path: &Path) -> Result<[u8; 32]> {
    let files = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{} holds no .safetensors file to hash", path.display());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
    let mut buf = vec![0u8; 1 << 20];
    for file in files {
        let mut f = std::fs::File::open(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        loop {
            let n = f.read(&mut buf).with_context(|| format!("cannot read {}", file.display()))?;
            if n == 0 {
                break;
            }
            state.update(&buf[..n]);
        }
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(state.finalize().as_bytes());
    Ok(digest)
}

/// The chain's name for the format an engine computes in.
pub fn chain_format(format: EngineFormat) -> NumericFormat {
    match format {
        EngineFormat::Host => NumericFormat::Host,
        EngineFormat::CudaBf16 => NumericFormat::CudaBf16,
        EngineFormat::HostVnni => NumericFormat::HostVnni,
    }
}

/// The engine's name for a format registered on chain.
pub fn engine_format(format: NumericFormat) -> EngineFormat {
    match format {
        NumericFormat::Host => EngineFormat::Host,
        NumericFormat::CudaBf16 => EngineFormat::CudaBf16,
        NumericFormat::HostVnni => EngineFormat::HostVnni,
    }
}

/// The tolerance a worker computing in `format` judges its audits by: that of the format
/// the id is registered in (a VNNI worker serving an id registered as `host` judges by
/// `host`'s, as its peers may run AVX2), or for an unregistered id the format's general one.
pub fn audit_tolerance(
    format: NumericFormat,
    registered: Option<BaseModelSpec>,
) -> openledger_engine::Tolerance {
    let judged = registered.map_or(engine_format(format).general(), |s| engine_format(s.format));
    openledger_engine::Tolerance::for_format(judged)
}

/// Whether a worker whose model file hashes to `weights` and computes in `format` may serve
/// base model `id`, registered on chain as `registered`: `Ok(true)` when it matches,
/// `Ok(false)` when the id is not registered (served on the provider's word), an error naming
/// what differs otherwise.
pub fn check(
    id: u32,
    registered: Option<BaseModelSpec>,
    weights: [u8; 32],
    format: NumericFormat,
) -> Result<bool> {
    let Some(spec) = registered else { return Ok(false) };
    if spec.weights != weights {
        bail!(
            "base model {id} is registered on chain as the weights file with BLAKE2b-256 0x{}, \
             but this model's is 0x{}: serve the registered file, or declare the base model id \
             registered for yours (--base-model)",
            hex::encode(spec.weights),
            hex::encode(weights)
        );
    }
    if !format.serves(spec.format) {
        bail!(
            "base model {id} is registered on chain in the numeric format {}, but this worker \
             computes in {} (--device): its verifiers would recompute its work in {} and find \
             it at fault; run it on the registered device kind, or declare the base model id \
             registered for {}",
            spec.format.name(),
            format.name(),
            spec.format.name(),
            format.name()
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_as_the_chain_and_fetch_model_sh_hash_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        // Over one read buffer, so the streamed hash crosses chunks.
        let bytes: Vec<u8> = (0..(3usize << 20) + 17).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(weights_digest(&file).unwrap(), sp_crypto_hashing_blake2_256(&bytes));
    }

    #[test]
    fn a_directory_hashes_its_safetensors_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.safetensors"), b"second").unwrap();
        std::fs::write(dir.path().join("a.safetensors"), b"first").unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        assert_eq!(
            weights_digest(dir.path()).unwrap(),
            sp_crypto_hashing_blake2_256(b"firstsecond")
        );
        let empty = tempfile::tempdir().unwrap();
        let err = weights_digest(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no .safetensors"), "{err}");
        let err = weights_digest(&dir.path().join("missing.gguf")).unwrap_err().to_string();
        assert!(err.contains("cannot open"), "{err}");
    }

    #[test]
    fn only_the_registered_file_in_the_registered_format_may_serve_an_id() {
        let spec = BaseModelSpec { weights: [1; 32], format: NumericFormat::Host };
        assert!(check(0, Some(spec), [1; 32], NumericFormat::Host).unwrap());
        assert!(!check(0, None, [9; 32], NumericFormat::CudaBf16).unwrap());
        let err = check(0, Some(spec), [2; 32], NumericFormat::Host).unwrap_err().to_string();
        assert!(err.contains("0x0101") && err.contains("0x0202"), "{err}");
        let err = check(0, Some(spec), [1; 32], NumericFormat::CudaBf16).unwrap_err().to_string();
        assert!(err.contains("numeric format host") && err.contains("cuda-bf16"), "{err}");
        // The VNNI / AMX host path serves an id registered as `host`, judged by `host`'s
        // tolerance (its verifiers may run AVX2); an id registered as `host-vnni` takes that
        // path alone, and its audits replay exactly.
        assert!(check(0, Some(spec), [1; 32], NumericFormat::HostVnni).unwrap());
        let vnni = BaseModelSpec { weights: [1; 32], format: NumericFormat::HostVnni };
        assert!(check(0, Some(vnni), [1; 32], NumericFormat::HostVnni).unwrap());
        let err = check(0, Some(vnni), [1; 32], NumericFormat::Host).unwrap_err().to_string();
        assert!(
            err.contains("numeric format host-vnni") && err.contains("computes in host"),
            "{err}"
        );
        let tie = |format, registered| audit_tolerance(format, registered).replay_tie;
        assert_eq!(tie(NumericFormat::HostVnni, Some(vnni)), 0.0);
        let cpu = openledger_engine::commitment::CPU_REPLAY_TIE;
        assert_eq!(tie(NumericFormat::HostVnni, Some(spec)), cpu);
        assert_eq!(
            tie(NumericFormat::HostVnni, None),
            cpu,
            "unregistered: any CPU path may verify"
        );
        assert_eq!(tie(NumericFormat::Host, None), cpu);
    }

    fn sp_crypto_hashing_blake2_256(bytes: &[u8]) -> [u8; 32] {
        openledger_chain_client::blake2_256(bytes)
    }
}
