//! The OpenLedger worker: serves many LoRA adapters over one shared base model.
//!
//! [`engine`] is the inference engine (base model, adapter cache, paged KV cache, continuous
//! batching scheduler). It knows nothing of the chain or the network: the worker loop feeds
//! it requests and forwards the tokens it streams back.

pub mod engine;
