//! Benchmarks that report numbers, never pass/fail: the scan against llama.cpp and full-context
//! prefill (`scan`, `llamacpp`), models with random weights on a device (`random`), CPU-vs-device
//! parity of SAE features (`parity`), retrieve latency against collection size (`retrieve`),
//! SAE training speed and its hand-written gradients against autograd (`sae`), SAE encoding on
//! the host against a device, speed and agreement (`sae_encode`), and what the
//! store pays per record and per posting codec (`store`). Each returns its measurements; the
//! CLI prints them (Markdown tables or JSON).

pub mod llamacpp;
pub mod parity;
pub mod random;
pub mod retrieve;
pub mod sae;
pub mod sae_encode;
pub mod scan;
pub mod store;

use std::path::Path;

use thiserror::Error;

/// What can stop a benchmark.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A setting or an input is out of range; says which.
    #[error("{0}")]
    Input(String),
    /// A child process failed or printed something that is not its report.
    #[error("{what} failed: {detail}")]
    Child {
        /// The child (`scan`, `prefill`, `llama.cpp prefill`).
        what: String,
        /// Its status and output, or the parse error.
        detail: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// An SAE failed.
    #[error(transparent)]
    Sae(#[from] crate::sae::SaeError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    /// Encoding a document failed.
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    /// Retrieval failed.
    #[error(transparent)]
    Retrieve(#[from] crate::retrieve::RetrieveError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl BenchError {
    /// Returns a [`BenchError::Io`] for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Result of the bench layer.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Where a benchmark reports each measurement as it is taken (the CLI: one line on stderr).
pub type Log<'a> = &'a mut dyn FnMut(&str);

/// Returns the value at quantile `q` (0 to 1) of `values`, sorting them; `None` when empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let last = values.len().checked_sub(1)?;
    Some(values[(last as f64 * q.clamp(0.0, 1.0)).round() as usize])
}

/// Reads a text file, naming it on failure.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))
}

/// Serialises a report row or object (our rows always serialise).
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("a benchmark row always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), Some(3.0));
        assert_eq!(quantile(&mut v, 0.99), Some(5.0));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
