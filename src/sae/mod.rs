//! Top-k sparse autoencoders (SAEs): they turn the model's pre-RoPE key and query projections into
//! sparse feature IDs, the vocabulary of the inverted index.
//!
//! [`topk`] encodes and decodes; [`train`](mod@train) fits an SAE to sampled keys (the Gao et al.
//! 2024 / EleutherAI sparsify recipe); [`sample`] keeps a bounded uniform sample of a key stream;
//! [`eval`] measures FVU and dead features; [`file`](mod@file) stores SAEs with the metadata that
//! ties them to a model, a layer and a head, and groups them into the set an index records.

pub mod build;
pub mod corpus;
pub mod defaults;
pub mod error;
pub mod eval;
pub mod file;
mod fused;
pub(crate) mod rng;
pub mod sample;
pub mod topk;
pub mod train;
mod vecops;

pub use error::{Result, SaeError};
pub use eval::{evaluate, EvalReport, KFvu, DEFAULT_EVAL_KS};
pub use file::{
    load_sae, save_sae, HeadMode, SaeExpectation, SaeMeta, SaeSet, TrainedOn, SAE_FORMAT_VERSION,
};
pub use sample::Reservoir;
pub use topk::{DeviceTopK, SparseCodes, TopKSae};
pub use train::{train, TrainConfig, TrainLength, TrainProgress, TrainReport};
