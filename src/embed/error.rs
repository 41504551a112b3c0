use std::path::PathBuf;

use super::DIM;

/// Errors of the embed layer: a model folder that cannot be loaded, text that cannot be
/// tokenized, a run of the model that fails.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "embedding model file {path} is missing: the folder needs model.safetensors, \
         tokenizer.json and config.json (`s3mem model fetch minilm` puts them in place)"
    )]
    MissingFile { path: PathBuf },
    #[error("cannot read embedding model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("embedding model config {path} is not a BERT config: {reason}")]
    NotBertConfig { path: PathBuf, reason: String },
    #[error("embedding model config {path}: `{field}` {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("embedding model weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("embedding tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("an embedding has {DIM} dimensions, got {got}")]
    Dimensions { got: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The embed layer's result type.
pub type Result<T> = std::result::Result<T, EmbedError>;
