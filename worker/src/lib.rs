//! The OpenLedger worker: a GPU (or CPU) provider's side of the marketplace.
//!
//! This crate joins the three others a provider needs: the inference engine
//! (`openledger-engine`), the chain client (`openledger-chain-client`) and the network to
//! gateways (`openledger-p2p`).
//!
//! - [`service`]: the job loop: assignments from the chain, payloads pulled over libp2p and
//!   checked against their on-chain hash, the engine's admission, acknowledgement, token
//!   streams, refusals, cancellations and batched signed receipts.
//! - [`channels`]: requests served on payment channels: checked, streamed, paid by
//!   vouchers traded for signed receipts, redeemed on chain on a schedule.
//! - [`answers`]: each answer's tokens and activation commitment, kept for the challenge
//!   window so a verifier can recompute it (`openledger-worker verify`).
//! - [`audits`]: on-chain verification: kept answers handed to the verifiers of an audited
//!   job only, and the audits this provider owes verified and answered with a verdict.
//! - [`base_model`]: like with like: the model checked against what its base model id
//!   stands for on chain before it is served.
//! - [`engine_host`]: the engine on its own thread, for async callers.
//! - [`keeper`]: expires jobs past their deadline, so no escrow stays held.
//! - [`metrics`]: the worker's Prometheus metrics.

pub mod answers;
pub mod audits;
pub mod base_model;
pub mod channels;
pub mod engine_host;
pub mod keeper;
pub mod metrics;
pub mod service;
