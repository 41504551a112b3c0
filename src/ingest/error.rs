//! The error type of the `ingest` layer.

use crate::embed::EmbedError;
use crate::index::IndexError;
use crate::model::ModelError;
use crate::sae::SaeError;

/// Lists everything that can go wrong while turning documents into postings and storing them.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A document or SAE set the ingest cannot take (a document without tokens, a layer whose
    /// features do not fit the posting key).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The index refused or failed (an unknown collection, a bad document, another identity).
    #[error(transparent)]
    Index(#[from] IndexError),

    /// Tokenizing or scanning failed, or the scan was stopped ([`ModelError::Aborted`]).
    #[error(transparent)]
    Model(#[from] ModelError),

    /// Encoding with the SAE set failed.
    #[error(transparent)]
    Sae(#[from] SaeError),

    /// Embedding the passages failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),

    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The result type of the `ingest` layer.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
