//! The inference engine: a Llama-family base model served with many LoRA adapters at once.
//!
//! Every step the scheduler gathers the running sequences (prefill chunks and decode tokens
//! together) into one batch; the model runs each base projection once for the batch and adds
//! each row's adapter delta through the kernels crate's SGMV; attention reads each sequence's
//! paged KV blocks. A request's output never depends on which others share its batch.

mod adapter_cache;
mod adapters;
mod attention;
mod config;
mod error;
mod gguf;
mod kv_cache;
mod model;
mod sampling;
mod scheduler;
mod synthetic;
mod tensor_model;
mod weights;

pub use adapter_cache::{AdapterCache, AdapterCacheConfig};
pub use adapters::{LoraAdapter, LoraSlots, ADAPTER_DTYPE};
pub use config::{ModelConfig, Projection, RopeStyle};
pub use error::{EngineError, Result};
pub use kv_cache::{BlockTable, KvCache, KvCacheConfig};
pub use model::{Model, SeqChunk, GPU_DTYPE};
pub use sampling::SamplingParams;
pub use scheduler::{
    load_tokenizer, Engine, EngineConfig, FinishReason, GenerationRequest, ModelSource, RequestId,
    StepReport, StreamEvent,
};
pub use synthetic::write_random_adapter;
