//! The error type of the `sae` layer.

use std::path::PathBuf;

/// Lists everything that can go wrong while training, encoding, saving or loading SAEs.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// A file (or a member of an SAE set) does not fit what the caller or its own header expects.
    #[error("{field} mismatch in {}: expected {expected}, found {found}", path.display())]
    Mismatch {
        /// The field that differs, e.g. `model_fingerprint` or `d_in`.
        field: &'static str,
        /// The value the caller (or the file's own metadata) requires.
        expected: String,
        /// The value the file holds.
        found: String,
        /// The file that was refused.
        path: PathBuf,
    },

    /// A file is truncated, unparsable or internally inconsistent.
    #[error("corrupt sae file {}: {reason}", path.display())]
    Corrupt {
        /// The file that could not be read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Reading or writing a file failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// A training or evaluation corpus could not be read.
    #[error("corpus {}: {reason}", path.display())]
    Corpus {
        /// The file or directory involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Running the model over the corpus failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),

    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// An input tensor or slice has the wrong shape.
    #[error("{what} has shape {found}, expected {expected}")]
    Shape {
        /// Which input was refused.
        what: &'static str,
        /// The shape required.
        expected: String,
        /// The shape given.
        found: String,
    },

    /// An input holds NaN or infinite values.
    #[error("{what} holds a non-finite value in row {row}")]
    NonFinite {
        /// Which input was refused.
        what: &'static str,
        /// The first offending row.
        row: usize,
    },

    /// Training samples carry no usable signal (all zero, or too few).
    #[error("unusable samples: {reason}")]
    DegenerateSamples {
        /// What is wrong with them.
        reason: String,
    },

    /// Sparse codes refer to a feature outside the dictionary.
    #[error("feature id {id} out of range for a dictionary of {dict_size}")]
    FeatureOutOfRange {
        /// The offending feature id.
        id: u32,
        /// The dictionary size of the SAE.
        dict_size: usize,
    },

    /// The fused top-k kernel cannot select `k` features of a dictionary of `dict_size`.
    #[error("the fused top-k kernel cannot take dict_size {dict_size}, k {k}: {reason}")]
    UnsupportedKernelShape {
        /// The SAE's dictionary size.
        dict_size: usize,
        /// Features asked for per row.
        k: usize,
        /// The limit that was passed.
        reason: String,
    },

    /// An SAE set holds no SAE for the requested layer and KV head.
    #[error("no sae for layer {layer}, kv head {kv_head}")]
    NotFound {
        /// The requested layer.
        layer: usize,
        /// The requested KV head.
        kv_head: usize,
    },
}

/// Shorthand for results of the `sae` layer.
pub type Result<T, E = SaeError> = std::result::Result<T, E>;

impl SaeError {
    /// Builds an [`SaeError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`SaeError::Corrupt`] for `path`.
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`SaeError::Mismatch`] for `path`.
    pub(crate) fn mismatch(
        field: &'static str,
        expected: impl ToString,
        found: impl ToString,
        path: impl Into<PathBuf>,
    ) -> Self {
        Self::Mismatch {
            field,
            expected: expected.to_string(),
            found: found.to_string(),
            path: path.into(),
        }
    }
}
