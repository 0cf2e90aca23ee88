//! Errors of the engine: each names the file, tensor or request it is about.

use std::path::PathBuf;

use crate::adapter_check::AdapterError;

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
    /// A JSON file (config.json, tokenizer.json) is malformed.
    #[error("{path}: {message}")]
    BadConfig { path: PathBuf, message: String },
    /// A weights file lacks a tensor the model needs.
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
    /// A PEFT adapter folder that cannot be served (see [`AdapterError`]'s variants; boxed,
    /// as the largest of them would double the size of every engine result).
    #[error(transparent)]
    Adapter(Box<AdapterError>),
    /// The tokenizer failed on an input or could not be built.
    /// The base model's files (config, tokenizer, template) could not be read.
    #[error(transparent)]
    Model(#[from] openledger_model::ModelError),

    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An adapter name that was never registered: register it before submitting requests
    /// for it.
    #[error("unknown adapter `{0}`")]
    UnknownAdapter(String),
    /// A request whose prompt has no token.
    #[error("request {request}: the prompt is empty")]
    EmptyPrompt { request: u64 },
    /// A prompt that leaves no room in the model's context for a generated token.
    #[error(
        "request {request}: {prompt_tokens} prompt tokens leave no room for a new token in the model's context of {context} positions"
    )]
    PromptTooLong { request: u64, prompt_tokens: usize, context: usize },
    /// A prompt and its `max_tokens` that need more KV blocks than the whole cache holds, so
    /// the request could never be admitted.
    #[error(
        "request {request}: {prompt_tokens} prompt tokens + {max_tokens} new tokens need {blocks} KV cache blocks; the cache has {capacity}"
    )]
    ExceedsKvCache {
        request: u64,
        prompt_tokens: usize,
        max_tokens: usize,
        blocks: usize,
        capacity: usize,
    },
    /// A prompt token id outside the model's vocabulary.
    #[error("request {request}: token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfVocabulary { request: u64, token: u32, vocab: usize },
    /// Sampling parameters no sampler can use (temperature negative or not a number, top_p
    /// outside (0, 1], max_tokens 0).
    #[error("request {request}: {message}")]
    InvalidSampling { request: u64, message: String },
    /// A step's chunk that the model cannot run (the scheduler never builds one).
    #[error("chunk {chunk} of the step: {message}")]
    BadChunk { chunk: usize, message: String },
    /// The engine's thread has stopped; nothing more can be submitted to it.
    #[error("the engine thread has stopped")]
    Stopped,
    /// Every adapter slot is pinned by running sequences; retry when one finishes.
    #[error("all {slots} adapter slots are in use by running sequences")]
    AdapterSlotsFull { slots: usize },
    /// The KV cache ran out of blocks for a step already scheduled (a scheduler bug).
    #[error("KV cache out of blocks ({total} in all)")]
    OutOfBlocks { total: usize },
    /// Parts that must share a device or backend do not (a KV cache made for another model,
    /// a host-path-only operation on a GPU model), or a step failed on the device.
    #[error("backend: {0}")]
    Backend(String),

    /// An activation commitment that does not decode, or a row it cannot encode.
    #[error("activation commitment: {0}")]
    BadCommitment(String),
    /// An SGMV kernel rejected its inputs.
    #[error("kernel: {0}")]
    Kernel(#[from] openledger_kernels::KernelError),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Why the engine will not run a request: the request's own fault, never the engine's.
/// The same request sent again is refused again; another engine would refuse it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The prompt has no token.
    EmptyPrompt,
    /// The prompt (with its `max_tokens`) does not fit the model's context or the KV cache.
    PromptTooLong,
    /// The request names an adapter this engine does not serve.
    UnknownAdapter,
    /// Temperature, top_p or max_tokens out of range.
    InvalidSampling,
    /// A prompt token id outside the vocabulary.
    InvalidToken,
}

impl From<AdapterError> for EngineError {
    fn from(e: AdapterError) -> Self {
        Self::Adapter(Box::new(e))
    }
}

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::BadConfig { path: path.into(), message: message.to_string() }
    }

    /// Why the request was refused, when the request itself is at fault; `None` for the
    /// engine's own failures (I/O, a backend or tensor error, a stopped engine thread),
    /// which say nothing about the request.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::EmptyPrompt { .. } => Some(Rejection::EmptyPrompt),
            Self::PromptTooLong { .. } | Self::ExceedsKvCache { .. } => {
                Some(Rejection::PromptTooLong)
            },
            Self::UnknownAdapter(_) => Some(Rejection::UnknownAdapter),
            Self::InvalidSampling { .. } => Some(Rejection::InvalidSampling),
            Self::TokenOutOfVocabulary { .. } => Some(Rejection::InvalidToken),
            Self::Io { .. }
            | Self::BadConfig { .. }
            | Self::MissingTensor { .. }
            | Self::TensorShape { .. }
            | Self::BadTensor { .. }
            | Self::BadWeightsFile { .. }
            | Self::Adapter(_)
            | Self::Model(_)
            | Self::Tokenizer(_)
            | Self::BadChunk { .. }
            | Self::Stopped
            | Self::AdapterSlotsFull { .. }
            | Self::OutOfBlocks { .. }
            | Self::Backend(_)
            | Self::BadCommitment(_)
            | Self::Kernel(_)
            | Self::Candle(_) => None,
        }
    }
}
