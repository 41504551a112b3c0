//! Top-k sparse autoencoders (SAEs): they turn the model's pre-RoPE key and query projections into
//! sparse feature IDs, the vocabulary of the inverted index.
//!
//! [`topk`] encodes and decodes, [`sample`] keeps a bounded uniform sample of a key stream.

pub mod error;
mod rng;
pub mod sample;
pub mod topk;

pub use error::{Result, SaeError};
pub use sample::Reservoir;
pub use topk::{SparseCodes, TopKSae};
