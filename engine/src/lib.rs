//! The inference engine: a Llama-family base model served with many LoRA adapters at once.
//!
//! Every step the scheduler gathers the running sequences (prefill chunks and decode tokens
//! together) into one batch; the model runs each base projection once for the batch and adds
//! each row's adapter delta through the kernels crate's SGMV; attention reads each sequence's
//! paged KV blocks. On the CPU a request's output never depends on which others share its
//! batch (bitwise); on a GPU cuBLAS picks its matmul algorithm by the number of rows, so
//! there the guarantee is agreement within bf16 rounding.
//!
//! The model runs where it is loaded: on the CPU through the host path (f32 and quantized
//! matmuls on plain buffers), on a CUDA device (feature `cuda`) through the tensor path
//! (bf16 candle tensors, cuBLAS, the kernels crate's CUDA SGMV and paged attention). The KV
//! cache and the adapters' compute tier follow the model; the scheduler, sampling and
//! streaming are the same for both.

mod adapter_cache;
mod adapter_check;
mod adapters;
mod attention;
pub mod commitment;
mod device;
mod engine;
mod error;
mod gguf;
mod host_weights;
mod kv_cache;
mod model;
mod sampling;
mod scheduler;
mod sequence;
mod step;
mod synthetic;
mod tensor_model;
mod weights;

pub use adapter_cache::{AdapterCache, AdapterCacheConfig};
pub use adapter_check::{
    scan_adapter_dirs, validate_adapter_dir, AdapterError, AdapterScan, AdapterSummary,
};
pub use adapters::{LoraAdapter, LoraSlots, ADAPTER_DTYPE};
pub use commitment::{ActivationCommitment, NumericFormat, Tolerance, VerifyReport};
pub use device::device;
pub use engine::{
    Engine, EngineConfig, EngineStatus, GenerationRequest, ModelSource, StepPhases, StepReport,
    OVERLAP_BY_DEFAULT,
};
pub use error::{EngineError, Rejection, Result};
pub use kv_cache::{BlockTable, KvCache, KvCacheConfig};
pub use model::Model;
pub use openledger_model::{load_tokenizer, ModelConfig, Projection, RopeStyle};
pub use sampling::SamplingParams;
pub use sequence::{Detokenizer, FinishReason, RequestId, StreamEvent};
pub use step::{SeqChunk, StepEntries, StepOutput, StepRows, GPU_DTYPE};
pub use synthetic::write_random_adapter;
