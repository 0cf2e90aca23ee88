//! OpenLedger's benchmarks, one binary per subject (`src/bin/`), on one timing harness.
//!
//! - `engine-bench`, `ttft-bench`: the engine on the CPU (throughput; time to first token
//!   beside a long prompt); `engine-gpu-bench` and `engine-logits` on a CUDA device.
//! - `loop-bench`: requests per second and latency through gateway, worker and chain.
//! - `density-bench` (CUDA): thousands of adapters over few device slots, uniform and Zipf
//!   request loads against 32 installed adapters.
//! - `sgmv-bench`, `attn-bench` (CUDA) and `quant-bench` (CPU): the kernels crate.
//!
//! Figures and the commands that produced them are in `docs/benchmarks.md`.

pub mod harness;
pub mod shapes;
