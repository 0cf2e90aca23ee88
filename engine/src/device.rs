//! The compute device a binary runs the engine on, named on its command line.

use candle_core::Device;

use crate::error::{EngineError, Result};

/// The device named by `spec`: `cpu`, `cuda` or `gpu` (GPU 0), or `cuda:N`.
pub fn device(spec: &str) -> Result<Device> {
    let ordinal = match spec.trim().to_ascii_lowercase().as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(EngineError::Backend(format!(
                    "unknown device `{spec}`: use `cpu`, `cuda` or `cuda:N`"
                )))
            },
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(EngineError::Backend(format!(
            "device `{spec}`: this binary was built without CUDA; build it with \
             `cargo build --release -p openledger-worker --features cuda` (kernels/NOTES.md)"
        )));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| EngineError::Backend(format!("cannot open CUDA device {ordinal}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_cpu_or_cuda() {
        assert!(device("cpu").expect("cpu").is_cpu());
        let bad = device("tpu:0").expect_err("unknown");
        assert!(bad.to_string().contains("unknown device `tpu:0`"), "{bad}");
        let bad = device("cuda:x").expect_err("bad ordinal");
        assert!(bad.to_string().contains("unknown device"), "{bad}");
        if !cfg!(feature = "cuda") {
            let e = device("cuda:0").expect_err("no CUDA in this build");
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
    }
}
