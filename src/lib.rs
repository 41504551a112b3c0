//! s3mem: a persistent document memory built on S3-Attention.
//!
//! The data flows through one module per layer, in this order:
//! [`model`] runs the LLM and taps its key/query projections in a bounded streaming scan;
//! [`sae`] turns those projections into sparse feature IDs; [`ingest`] turns a document into
//! its postings with both; [`index`] stores them (and knows no model); later layers retrieve,
//! answer and serve them (see ARCHITECTURE.md).

pub mod answer;
pub mod bench;
pub mod cli;
pub mod durable;
pub mod embed;
pub mod eval;
pub mod index;
pub mod ingest;
pub mod model;
pub mod retrieve;
pub mod sae;
pub mod service;
pub mod sys;
pub mod text;
