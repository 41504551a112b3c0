//! s3mem: a persistent document memory built on S3-Attention.
//!
//! The data flows through one module per layer, in this order:
//! [`model`] runs the LLM and taps its key/query projections in a bounded streaming scan;
//! [`sae`] turns those projections into sparse feature IDs; later layers index, retrieve,
//! answer and serve them (see ARCHITECTURE.md).

pub mod answer;
pub mod bench;
pub mod cli;
pub mod durable;
pub mod eval;
pub mod index;
pub mod model;
pub mod retrieve;
pub mod sae;
pub mod service;
pub mod sys;
