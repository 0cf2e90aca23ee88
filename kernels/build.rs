//! With the `cuda` feature, compiles `cuda/sgmv.cu` (and `sgmv_v2.cu`), `cuda/paged_attention.cu` and
//! `cuda/scatter_rows.cu` to fatbins (sm_90 SASS + compute_90
//! PTX, so newer GPUs can JIT them) that `src/cuda.rs` and `src/attention/cuda.rs` embed. Without it, does nothing: CI
//! needs no CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda/sgmv.cu");
    println!("cargo:rerun-if-changed=cuda/sgmv_v2.cu");
    println!("cargo:rerun-if-changed=cuda/paged_attention.cu");
    println!("cargo:rerun-if-changed=cuda/paged_attention_v1.cu");
    println!("cargo:rerun-if-changed=cuda/scatter_rows.cu");
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
    for name in ["sgmv", "sgmv_v2", "paged_attention", "paged_attention_v1", "scatter_rows"] {
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
