//! The error type of the `service` layer and the one table that maps every error of every
//! layer to a gRPC status code.

use tonic::{Code, Status};

use crate::answer::AnswerError;
use crate::index::IndexError;
use crate::ingest::IngestError;
use crate::model::ModelError;
use crate::retrieve::{Method, RetrieveError};
use crate::sae::SaeError;

/// Lists everything a call to the daemon can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is missing, malformed or over its limit.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as the proto names it (`header.collection`, `budget`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A work queue has no room: the caller should retry later.
    #[error("the {queue} queue is full ({workers} running, {depth} waiting): retry later")]
    QueueFull {
        /// `ingest` or `query`.
        queue: &'static str,
        /// Its worker threads.
        workers: usize,
        /// Most jobs that may wait.
        depth: usize,
    },

    /// The open ingests hold all the buffer bytes they may: the caller should retry later.
    #[error("the ingest buffers are full (max_ingest_buffer_bytes, {limit} bytes for all open ingests): retry later")]
    BuffersFull {
        /// `max_ingest_buffer_bytes`.
        limit: usize,
    },

    /// A message of a stream is over the message limit.
    #[error("a message is over the limit of {limit} bytes (max_message_bytes): send the text in smaller pieces")]
    MessageTooLarge {
        /// `max_message_bytes`.
        limit: usize,
    },

    /// The model and SAE set are still loading.
    #[error("the model is still loading: retry when grpc.health.v1 reports SERVING")]
    NotReady,

    /// The daemon stopped accepting work.
    #[error("the daemon is shutting down")]
    ShuttingDown,

    /// The caller went away (or cancelled) before the work finished; nothing was written.
    #[error("the call was cancelled; nothing was written")]
    Cancelled,

    /// A call without the right bearer token.
    #[error("missing or wrong bearer token: send the metadata `authorization: Bearer <token>`")]
    Unauthenticated,

    /// The daemon's own settings are unusable (at start-up).
    #[error("invalid daemon setting {setting}: {reason}")]
    Config {
        /// The setting, as the config file names it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A call asked for a method the daemon was not started with the settings for.
    #[error("method {method} is not set up on this daemon: start `s3mem serve` with {how}")]
    NotConfigured {
        /// The method asked for.
        method: Method,
        /// The serve settings it needs, as an operator sets them.
        how: &'static str,
    },

    /// Loading the model or SAE set failed (at start-up).
    #[error("loading the model failed: {0}")]
    Load(String),

    /// Binding, TLS or the HTTP/2 transport failed.
    #[error("transport: {0}")]
    Transport(String),

    /// A worker thread failed without an answer (a bug: the log has the panic).
    #[error("internal error: {0}")]
    Internal(String),

    /// The index refused or failed.
    #[error(transparent)]
    Index(#[from] IndexError),

    /// Encoding a document (tokenize, scan, SAE codes) refused or failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),

    /// The SAE set refused or failed.
    #[error(transparent)]
    Sae(#[from] SaeError),

    /// The model refused or failed.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// Retrieval refused or failed.
    #[error(transparent)]
    Retrieve(#[from] RetrieveError),

    /// Answering refused or failed.
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

impl ServiceError {
    /// Returns an [`ServiceError::InvalidArgument`] naming `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Returns the gRPC code of this error: the one table for every layer's errors.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::QueueFull { .. } | Self::BuffersFull { .. } => Code::ResourceExhausted,
            Self::MessageTooLarge { .. } => Code::OutOfRange,
            Self::NotReady | Self::ShuttingDown => Code::Unavailable,
            Self::Cancelled => Code::Cancelled,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Config { .. } | Self::NotConfigured { .. } => Code::FailedPrecondition,
            Self::Load(_) | Self::Transport(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
            Self::Index(e) => index_code(e),
            Self::Ingest(e) => ingest_code(e),
            Self::Sae(e) => sae_code(e),
            Self::Model(e) => model_code(e),
            Self::Retrieve(e) => retrieve_code(e),
            Self::Answer(e) => answer_code(e),
        }
    }
}

fn retrieve_code(e: &RetrieveError) -> Code {
    match e {
        RetrieveError::InvalidInput { .. } => Code::InvalidArgument,
        RetrieveError::SaeForAnotherModel { .. } => Code::FailedPrecondition,
        RetrieveError::Index(e) => index_code(e),
        RetrieveError::Ingest(e) => ingest_code(e),
        RetrieveError::Model(e) => model_code(e),
        RetrieveError::Sae(e) => sae_code(e),
        RetrieveError::Cancelled => Code::Cancelled,
        RetrieveError::NoEmbedder | RetrieveError::MissingVectors { .. } => {
            Code::FailedPrecondition
        }
        RetrieveError::Embed(_) | RetrieveError::Tensor(_) => Code::Internal,
    }
}

fn answer_code(e: &AnswerError) -> Code {
    match e {
        AnswerError::TooLong { .. }
        | AnswerError::NoRoomToVerify { .. }
        | AnswerError::MaxNewTokens(_) => Code::InvalidArgument,
        // The daemon's reader cannot give the signal its settings chose.
        AnswerError::NoYesNo => Code::FailedPrecondition,
        AnswerError::Model(e) => model_code(e),
    }
}

fn index_code(e: &IndexError) -> Code {
    match e {
        IndexError::Locked { .. } => Code::FailedPrecondition,
        IndexError::IncompatibleFormat { .. } => Code::FailedPrecondition,
        IndexError::IdentityMismatch { .. } => Code::FailedPrecondition,
        IndexError::Corrupt { .. } | IndexError::DamagedSnapshot { .. } => Code::DataLoss,
        IndexError::NoIndex { .. }
        | IndexError::UnknownCollection(_)
        | IndexError::UnknownDocument { .. } => Code::NotFound,
        IndexError::CollectionExists(_) => Code::AlreadyExists,
        IndexError::InvalidInput(_)
        | IndexError::TooLarge { .. }
        | IndexError::NotUtf8(_)
        | IndexError::MetaTypeMismatch { .. } => Code::InvalidArgument,
        IndexError::PositionsExhausted { .. } => Code::FailedPrecondition,
        IndexError::Store(_) | IndexError::Bm25(_) | IndexError::Io { .. } => Code::Internal,
    }
}

fn ingest_code(e: &IngestError) -> Code {
    match e {
        IngestError::InvalidInput(_) => Code::InvalidArgument,
        IngestError::Index(e) => index_code(e),
        IngestError::Model(e) => model_code(e),
        IngestError::Sae(e) => sae_code(e),
        IngestError::Embed(_) | IngestError::Tensor(_) => Code::Internal,
    }
}

fn sae_code(e: &SaeError) -> Code {
    match e {
        SaeError::Mismatch { .. } | SaeError::NotFound { .. } => Code::FailedPrecondition,
        SaeError::Corrupt { .. } => Code::DataLoss,
        SaeError::Model(e) => model_code(e),
        SaeError::Shape { .. } | SaeError::NonFinite { .. } => Code::Internal,
        SaeError::Io { .. }
        | SaeError::Candle(_)
        | SaeError::Corpus { .. }
        | SaeError::InvalidConfig(_)
        | SaeError::DegenerateSamples { .. }
        | SaeError::FeatureOutOfRange { .. }
        | SaeError::UnsupportedKernelShape { .. } => Code::Internal,
    }
}

fn model_code(e: &ModelError) -> Code {
    match e {
        ModelError::Aborted => Code::Cancelled,
        ModelError::WindowTooLong { .. } => Code::InvalidArgument,
        ModelError::Corrupt { .. } | ModelError::Verification { .. } => Code::DataLoss,
        ModelError::LayerOutOfRange { .. }
        | ModelError::InvalidScan(_)
        | ModelError::UnsupportedArchitecture { .. }
        | ModelError::UnknownModel { .. }
        | ModelError::WrongKind { .. }
        | ModelError::NoCuda { .. } => Code::FailedPrecondition,
        ModelError::Device { .. } => Code::Unavailable,
        ModelError::Io { .. }
        | ModelError::MissingMetadata { .. }
        | ModelError::MissingTensor { .. }
        | ModelError::Tokenizer(_)
        | ModelError::TokenOutOfRange { .. }
        | ModelError::Fetch { .. }
        | ModelError::Download { .. }
        | ModelError::Candle(_) => Code::Internal,
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let code = e.code();
        if matches!(code, Code::Internal | Code::DataLoss) {
            tracing::error!(error = %e, ?code, "call failed");
        } else {
            tracing::debug!(error = %e, ?code, "call refused");
        }
        Status::new(code, e.to_string())
    }
}

/// The result type of the `service` layer.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_errors_keep_their_code() {
        let e = ServiceError::Ingest(IngestError::Model(ModelError::Aborted));
        assert_eq!(e.code(), Code::Cancelled);
        let e = ServiceError::Ingest(IngestError::Index(IndexError::UnknownCollection(
            "c".into(),
        )));
        assert_eq!(e.code(), Code::NotFound);
        let e = ServiceError::Index(IndexError::UnknownDocument {
            collection: "c".into(),
            id: "d".into(),
        });
        assert_eq!(e.code(), Code::NotFound);
        let e = ServiceError::Retrieve(RetrieveError::Index(IndexError::UnknownCollection(
            "c".into(),
        )));
        assert_eq!(e.code(), Code::NotFound);
        let e = ServiceError::Answer(AnswerError::TooLong {
            prompt_tokens: 9000,
            max_new_tokens: 96,
            context: 8192,
        });
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = ServiceError::Index(IndexError::IncompatibleFormat {
            kind: crate::index::FormatKind::Pack,
            found: 2,
            supported: 1,
            path: "packs/1-0.pack".into(),
        });
        assert_eq!(e.code(), Code::FailedPrecondition);
        let e = ServiceError::Index(IndexError::corrupt("packs/1-0.pack", "checksum mismatch"));
        assert_eq!(e.code(), Code::DataLoss);
        let s = Status::from(ServiceError::invalid("budget", "0 is below 1"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "budget: 0 is below 1");
    }
}
