//! The `s3mem` command line: wiring only; every command calls into the layers.

mod bench;
mod commands;
mod sys;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use commands::run;
pub use sys::peak_rss_bytes;

use crate::model::{LayerSet, WeightFormat};

/// s3mem: a persistent document memory that answers questions from evidence it can cite.
#[derive(Debug, Parser)]
#[command(name = "s3mem", version, about)]
pub struct Cli {
    /// Folder of model files shared by all data dirs.
    #[arg(long, global = true, env = "S3MEM_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// CPU threads for model work (default: all cores).
    #[arg(long, global = true, env = "S3MEM_THREADS")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage model files.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Stream a document through the model once and report speed and memory.
    Scan(ScanArgs),
    /// Answer a prompt with the model alone (no retrieval).
    Generate(GenerateArgs),
    /// The main job on the embedded default: fetch the model, scan a document, answer.
    Quickstart(QuickstartArgs),
    /// Benchmarks that report numbers (never pass/fail).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Scan speed and peak memory against document length, chunk and depth; each run is a
    /// separate process so its peak RSS is its own.
    Scan(BenchScanArgs),
}

#[derive(Debug, Args)]
pub struct BenchScanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text the benchmark documents are cut from (repeated as needed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/usr/share/common-licenses/GPL-3,/usr/share/common-licenses/Apache-2.0,/usr/share/common-licenses/MPL-2.0"
    )]
    pub corpus: Vec<PathBuf>,
    /// Document lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub tokens: Vec<usize>,
    /// Chunk sizes to compare.
    #[arg(long, value_delimiter = ',', default_value = "512")]
    pub chunks: Vec<usize>,
    /// Layer sets to compare, separated by `;` (a set of one deep layer measures full depth).
    #[arg(long, value_delimiter = ';', default_value = "8,16,24")]
    pub layers: Vec<LayerSet>,
    /// Print one JSON array instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download, join and verify a known model (the only command that uses the network).
    Fetch {
        /// Known model name.
        #[arg(default_value = crate::model::fetch::DEFAULT_MODEL)]
        name: String,
    },
    /// List the known models and whether each is present.
    List,
    /// Print a model file's architecture and shape.
    Info(ModelArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// A known model name (fetched if missing) or a path to a GGUF file.
    #[arg(long, default_value = crate::model::fetch::DEFAULT_MODEL, env = "S3MEM_MODEL")]
    pub model: String,
    /// How weights are held in memory: f32 (fastest on CPU), f16, or quantized (as shipped).
    #[arg(long, default_value = "f32")]
    pub weights: WeightFormat,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layers whose key projections are taken; the scan runs layers 0..=max.
    #[arg(long, default_value = "8,16,24")]
    pub layers: LayerSet,
    /// Tokens indexed per window.
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// Opening tokens of the document repeated before every window.
    #[arg(long, default_value_t = 4)]
    pub sinks: usize,
    /// Tokens of the previous chunk repeated before each chunk.
    #[arg(long, default_value_t = 64)]
    pub overlap: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The document (UTF-8 text), or `-` for stdin.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user's message.
    #[arg(long)]
    pub prompt: String,
    /// A system message instead of the model's default.
    #[arg(long)]
    pub system: Option<String>,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The sample document to scan.
    #[arg(long, default_value = "/usr/share/common-licenses/GPL-3")]
    pub document: PathBuf,
    /// The question to answer.
    #[arg(
        long,
        default_value = "The passkey is 48213. Remember it. What is the passkey?"
    )]
    pub question: String,
}
