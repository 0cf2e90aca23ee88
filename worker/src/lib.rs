//! The OpenLedger worker: serves many LoRA adapters over one shared base model.
//!
//! [`engine`] is the inference engine (base model, adapter cache, paged KV cache, continuous
//! batching scheduler). It knows nothing of the chain or the network: the worker loop feeds
//! it requests and forwards the tokens it streams back; [`engine_host`] runs it on its own
//! thread for async callers.
//!
//! [`chain`] is the client of the OpenLedger chain (subxt): provider registration,
//! heartbeats, jobs, receipts. [`service`] is the worker's job loop (assignments from the
//! chain, payloads and tokens over libp2p through `openledger-p2p`, the engine, receipts),
//! and [`gateway`] the OpenAI-compatible HTTP API that submits jobs and relays their tokens.
//! [`job_payload`] is what travels from gateway to worker and how both hash it. [`keeper`]
//! expires jobs past their deadline, so no escrow stays held.

pub mod chain;
pub mod cli;
pub mod engine;
pub mod engine_host;
pub mod gateway;
pub mod job_payload;
pub mod keeper;
pub mod metrics;
pub mod service;
