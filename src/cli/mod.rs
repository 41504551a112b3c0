//! The `s3mem` command line: wiring only; every command turns its arguments into a layer's
//! configuration, calls the layer and prints what it returns.
//!
//! Imports run one way: the grammar ([`command_line`], `eval_args`, `bench_args`, `args`,
//! `device`) and the loaders (`load`) import no command module; each command module imports
//! them and the layers; `commands` dispatches to the command modules.

mod args;
mod ask;
mod bench;
mod bench_args;
pub mod client;
mod command_line;
mod commands;
mod device;
mod eval;
mod eval_args;
mod index;
mod load;
mod sae;
mod serve;
mod snapshot;

pub use args::{DataDirArgs, ModelArgs, ServerArgs, WindowArgs};
pub use command_line::{Cli, Command};
pub use commands::run;
pub use device::DeviceArgs;
pub use serve::ServeArgs;
