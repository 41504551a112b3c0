//! The embed layer: sentence embeddings of passages and questions with all-MiniLM-L6-v2, for
//! the dense retrieval methods.
//!
//! An [`Embedder`] loads the model from one folder (`model.safetensors`, `tokenizer.json`,
//! `config.json`, as `s3mem model fetch minilm` leaves them), runs candle-transformers' BERT and
//! returns what sentence-transformers returns for this model: word pieces truncated at
//! [`MAX_TOKENS`], mean pooling over the real tokens, L2 normalisation, [`DIM`] dimensions.
//! tests/fixtures/embed/reference.json holds reference vectors and the script that made them.

mod bench;
mod embedder;
mod embedding;
mod error;
mod files;

pub use bench::{
    measure_throughput, synthetic_passages, throughput_table, Throughput, ThroughputConfig,
};
pub use embedder::{Embedder, DEFAULT_BATCH};
pub use embedding::{Embedding, DIM};
pub use error::{EmbedError, Result};
pub use files::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};

/// Tokens per text the model sees, [CLS] and [SEP] included; the rest of a longer text is
/// dropped. all-MiniLM-L6-v2's max_seq_length (its sentence_bert_config.json): it was trained
/// on texts up to this length.
pub const MAX_TOKENS: usize = 256;
