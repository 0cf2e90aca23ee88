//! Errors of the engine: each names the file, tensor or request it is about.

use std::path::PathBuf;

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, EngineError>;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file could not be read; check the path and its permissions.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config.json, adapter_config.json, tokenizer.json) is malformed.
    #[error("{path}: {message}")]
    BadConfig { path: PathBuf, message: String },
    /// A weights file lacks a tensor the model or adapter needs.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    /// A tensor has the wrong shape for this base model.
    #[error("{path}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, tensor: String, expected: Vec<usize>, actual: Vec<usize> },
    /// A weights file holds a tensor that is not valid (bad dtype, unreadable data).
    #[error("{path}: tensor `{tensor}`: {message}")]
    BadTensor { path: PathBuf, tensor: String, message: String },
    /// A weights file could not be parsed at all.
    #[error("{path}: {message}")]
    BadWeightsFile { path: PathBuf, message: String },
    /// The tokenizer failed on an input or could not be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An adapter name that was never registered.
    #[error("unknown adapter `{0}`")]
    UnknownAdapter(String),
    /// A request that can never run (empty prompt, longer than the KV cache holds).
    #[error("request {request}: {message}")]
    BadRequest { request: u64, message: String },
    /// Every adapter slot is pinned by running sequences; retry when one finishes.
    #[error("all {slots} adapter slots are in use by running sequences")]
    AdapterSlotsFull { slots: usize },
    /// The KV cache ran out of blocks for a step already scheduled (a scheduler bug).
    #[error("KV cache out of blocks ({total} in all)")]
    OutOfBlocks { total: usize },
    /// Parts that must share a device or backend do not (a KV cache made for another model,
    /// a host-path-only operation on a GPU model).
    #[error("backend: {0}")]
    Backend(String),
    /// An SGMV kernel rejected its inputs.
    #[error("kernel: {0}")]
    Kernel(#[from] openledger_kernels::KernelError),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::BadConfig { path: path.into(), message: message.to_string() }
    }
}
