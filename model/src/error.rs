//! Errors of reading a model's files: each names the file, and the key or template it is about.

use std::path::PathBuf;

/// Result of reading a model.
pub type Result<T> = std::result::Result<T, ModelError>;

/// What is wrong with a model's files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read; check the path and its permissions.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not a GGUF file this reader understands (wrong magic, unsupported version,
    /// truncated, an absurd count or length): download it again, or convert the model with a
    /// current llama.cpp.
    #[error("{}: {message}", .path.display())]
    BadGguf { path: PathBuf, message: String },
    /// A GGUF file lacks a metadata key the model needs.
    #[error("{}: missing metadata key `{key}`", .path.display())]
    MissingKey { path: PathBuf, key: String },
    /// A GGUF metadata key holds a value of the wrong type or an impossible value.
    #[error("{}: metadata `{key}`: {message}", .path.display())]
    BadMetadata { path: PathBuf, key: String, message: String },
    /// A JSON file (config.json, tokenizer_config.json) is malformed, or describes a model
    /// this crate does not support (scaled RoPE, an unknown architecture, an inconsistent
    /// shape).
    #[error("{}: {message}", .path.display())]
    BadConfig { path: PathBuf, message: String },
    /// The tokenizer could not be loaded or built from the file.
    #[error("{}: tokenizer: {message}", .path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// A chat template does not compile, or failed while rendering (the template itself
    /// may refuse a conversation through `raise_exception`, e.g. roles that do not
    /// alternate); `origin` says where the template came from.
    #[error("chat template of {origin}: {message}")]
    Template { origin: String, message: String },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::BadConfig { path: path.into(), message: message.to_string() }
    }

    pub(crate) fn gguf(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::BadGguf { path: path.into(), message: message.to_string() }
    }

    pub(crate) fn metadata(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl ToString,
    ) -> Self {
        Self::BadMetadata { path: path.into(), key: key.into(), message: message.to_string() }
    }

    pub(crate) fn tokenizer(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::Tokenizer { path: path.into(), message: message.to_string() }
    }
}
