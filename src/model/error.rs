use std::path::PathBuf;

/// Errors of the model layer: loading, tokenizing, running and fetching a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is not a valid GGUF file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("model file {path} has unsupported architecture `{arch}` (supported: llama, qwen2)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("model file {path} lacks metadata `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("model file {path} lacks tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("layer {layer} is out of range: the model has {layers} layers (0..={max})", max = layers - 1)]
    LayerOutOfRange { layer: usize, layers: usize },
    #[error("window of {tokens} tokens exceeds the model context of {context} tokens")]
    WindowTooLong { tokens: usize, context: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("invalid scan configuration: {0}")]
    InvalidScan(String),
    #[error("unknown model `{name}`: give a path to a GGUF file or one of {known}")]
    UnknownModel { name: String, known: String },
    #[error("model fetch of `{name}` failed: {reason}")]
    Fetch { name: String, reason: String },
    #[error("model fetch of `{name}` failed: {package} from {url}: {reason}")]
    Download {
        name: String,
        /// `package==version`.
        package: String,
        url: String,
        reason: String,
    },
    #[error("model `{name}` is {is}; this needs {wanted}")]
    WrongKind {
        name: String,
        is: &'static str,
        wanted: &'static str,
    },
    #[error("model file {path} failed verification: {reason}")]
    Verification { path: PathBuf, reason: String },
    #[error("device `{device}` needs CUDA, but this s3mem was built without CUDA support; rebuild with --features cuda")]
    NoCuda { device: String },
    #[error("device `{device}`: {reason}")]
    Device { device: String, reason: String },
    #[error("aborted by the caller")]
    Aborted,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The model layer's result type.
pub type Result<T> = std::result::Result<T, ModelError>;
