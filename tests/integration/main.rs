//! s3mem's integration tests: one binary, one module per area.

mod common;
mod dense;
mod embed;
mod eval_cli;
mod fetch;
mod filters;
mod golden;
mod grpc;
mod grpc_defects;
mod grpc_rerank;
mod index;
mod metrics;
mod model_cli;
mod model_real;
mod model_tiny;
mod retrieve;
mod sae_cli;
mod serve_config;
mod snapshot;
