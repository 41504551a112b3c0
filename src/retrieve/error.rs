//! Errors of retrieval.

use thiserror::Error;

use crate::embed::EmbedError;
use crate::index::IndexError;
use crate::ingest::IngestError;
use crate::model::ModelError;
use crate::sae::SaeError;

/// What can go wrong while retrieving evidence.
#[derive(Debug, Error)]
pub enum RetrieveError {
    /// A request field is out of range or malformed; names the field.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The SAE set was trained for another model.
    #[error("the SAE set belongs to model {sae_model}, not to the loaded model {model}")]
    SaeForAnotherModel {
        /// The model fingerprint the SAE set records.
        sae_model: String,
        /// The loaded model's fingerprint.
        model: String,
    },
    /// The store failed, or an id is unknown, or the index was built with another model.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The SAE set's layers do not fit the posting space.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The model failed on the question.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The SAE set does not fit.
    #[error(transparent)]
    Sae(#[from] SaeError),
    /// A dense method was asked for, and the engine has no embedding model.
    #[error("methods dense and rag need the embedding model: run `s3mem model fetch minilm`")]
    NoEmbedder,
    /// A document of the scope has no passage vectors from the loaded embedding model.
    #[error("document `{doc}` has no passage vectors from {embedder}: open the index with this embedding model once (serve, ask or retrieve embed what is missing)")]
    MissingVectors {
        /// The document's id.
        doc: String,
        /// The loaded embedding model's fingerprint.
        embedder: String,
    },
    /// Embedding the question failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl RetrieveError {
    /// Returns an [`RetrieveError::InvalidInput`] for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}

/// Result of the retrieve layer.
pub type Result<T, E = RetrieveError> = std::result::Result<T, E>;
