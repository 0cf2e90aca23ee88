//! The worker's GPU and CPU kernels: SGMV (segmented gather matrix-vector) for many LoRA
//! adapters over one base model in one batch, decode attention over the paged KV cache
//! ([`attention`]), and the row scatter that writes keys and values into that cache
//! ([`scatter_rows`]), the decoder layer's fused elementwise steps (residual + RMSNorm,
//! SwiGLU, RoPE with the KV-cache write: [`add_rms_norm`], [`silu_mul`], [`rope_store_kv`]),
//! and each row's two largest entries packed on the device for activation commitments
//! ([`packed_top2`], copied to the host behind the step by [`HostCopy`]).
//!
//! A step's batch of `num_rows` token rows is grouped by adapter into segments
//! ([`SegmentMap`], built once per step on the host and reused by every layer). For each
//! projection `d_in -> d_out` the engine runs the base weights on the whole batch and then
//! adds every row's LoRA delta:
//!
//! ```text
//! y[row] += scale_s * lora_B_s @ (lora_A_s @ x[row])      for each row of segment s
//! ```
//!
//! in two stages, `sgmv_shrink` (`d_in -> rank`) and `sgmv_expand` (`rank -> d_out`,
//! accumulating into `y`), or both at once with `lora_delta`. Adapters of different ranks
//! share a batch without padding; segments may be empty or hold one token.
//!
//! Weights use PEFT's layout, so safetensors load without a transpose: `lora_A.weight` is
//! `[rank, d_in]` and `lora_B.weight` is `[d_out, rank]`, both row-major.
//!
//! Three implementations compute the same function:
//! - [`cpu`]: multithreaded (rayon) over slices, f32 arithmetic, for CPU workers and CI;
//! - `cuda` (feature `cuda`): kernels compiled at build time from `cuda/sgmv_fused.cu` and
//!   `cuda/sgmv_two_stage.cu` into fatbins (sm_90 SASS + compute_90 PTX), reading adapters through a
//!   device array of per-slot pointers (no gather copy). bf16/f16 with ranks up to 128: the fused kernel,
//!   one launch for the whole batch and both stages (thread-block clusters, the tile's v kept
//!   on chip), tensor cores with f32 accumulation; f32 and larger ranks: the two-stage kernels, one launch per
//!   stage (`OPENLEDGER_SGMV_KERNEL=two-stage` runs the two-stage kernels for everything, for comparison);
//!   measurements in `docs/benchmarks.md` and `kernels/NOTES.md`;
//! - [`reference`](mod@reference): naive f64, for tests only.
//!
//! The engine calls one API on candle tensors, whatever the device (CPU, or CUDA with the
//! feature; one CUDA device per `BatchSegments`): [`AdapterTable`] (one per
//! layer and projection), [`BatchSegments`] (one per step) and [`lora_delta`],
//! [`sgmv_shrink`], [`sgmv_expand`]. Results never depend on which other requests share the
//! batch: each output element is reduced in an order fixed by the shapes alone.

pub mod attention;
mod candle_ops;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod element;
mod error;
#[cfg(feature = "cuda")]
mod graph_inputs;
mod layer_ops;
pub mod options;
pub mod quant;
pub mod reference;
mod row_top;
mod scatter;
mod segments;
pub mod simd;
mod table;

pub use attention::{
    paged_decode_attention, paged_decode_attention_host, paged_decode_attention_into,
    paged_decode_attention_with, paged_prefill_attention, DecodeBlocks, HeadShape, PrefillBlocks,
    PrefillChunk,
};
pub use candle_ops::{
    lora_delta, lora_delta_host, lora_delta_stacked, sgmv_expand, sgmv_shrink, BatchSegments,
    StackedPart,
};
#[cfg(feature = "cuda")]
pub use cuda::{graph_rank_bound, graph_segments_supported, GraphSegments};
pub use element::{AdapterWeights, BLayout, Element, Format, LoraWeights, Widen};
pub use error::{KernelError, Result};
#[cfg(feature = "cuda")]
pub use graph_inputs::overwrite_u32;
pub use layer_ops::{add_rms_norm, rope_store_kv, silu_mul, to_f32, QkvHeads, RotaryPairs};
pub use row_top::{packed_top2, HostCopy, TOP_ENTRIES};
pub use scatter::{scatter_rows, RowIndex};
pub use segments::{AdapterSlot, SegmentMap};
pub use table::{quantize_rows, AdapterTable};
