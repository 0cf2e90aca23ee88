//! With the `cuda` feature, compiles the kernels in `cuda/` (`sgmv_fused.cu`,
//! `sgmv_two_stage.cu`, `paged_attention.cu`, `prefill_attention.cu`, `scatter_rows.cu`,
//! `layer_ops.cu`, `row_top.cu`) to fatbins (sm_90 SASS + compute_90 PTX, so newer GPUs can
//! JIT them) that `src/cuda.rs`, `src/cuda/fused.rs`, `src/attention/cuda.rs`,
//! `src/attention/prefill_cuda.rs`, `src/scatter.rs`, `src/layer_ops/cuda.rs` and
//! `src/row_top.rs` embed. Without it, does nothing: CI needs no
//! CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

/// The kernel sources, by role: SGMV shrink-reduce-expand in one launch (bf16 / f16, ranks
/// up to 128), SGMV in two stages (f32 and larger ranks), decode and causal prefill attention
/// over the paged KV cache, the KV cache's row scatter, the decoder layer's fused elementwise steps, and each row's
/// two largest entries, packed (activation commitments).
const KERNELS: [&str; 7] = [
    "sgmv_fused",
    "sgmv_two_stage",
    "paged_attention",
    "prefill_attention",
    "scatter_rows",
    "layer_ops",
    "row_top",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for name in KERNELS {
        println!("cargo:rerun-if-changed=cuda/{name}.cu");
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc =
        std::env::var_os("NVCC").map(PathBuf::from).unwrap_or_else(|| {
            match std::env::var_os("CUDA_HOME") {
                Some(home) => PathBuf::from(home).join("bin").join("nvcc"),
                None => PathBuf::from("nvcc"),
            }
        });
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in KERNELS {
        let fatbin = out.join(format!("{name}.fatbin"));
        let source = format!("cuda/{name}.cu");
        let status = Command::new(&nvcc)
            .args(["-fatbin", "-O3", "-std=c++17"])
            .args([
                "-gencode=arch=compute_90,code=sm_90",
                "-gencode=arch=compute_90,code=compute_90",
            ])
            .arg("-o")
            .arg(&fatbin)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run nvcc ({}): {e}; set NVCC or CUDA_HOME", nvcc.display())
            });
        assert!(status.success(), "nvcc failed to compile {source} ({status})");
    }
}
