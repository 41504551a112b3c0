//! The command line's grammar: [`Cli`], its [`Command`]s and the arguments of each (the
//! groups several commands share are in [`super::args`]; eval's and bench's in their own files).

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::args::{
    AnswerArgs, CorpusArgs, DataDirArgs, ModelArgs, ServerArgs, WindowArgs, SAMPLE_DOCUMENTS,
};
use super::bench_args::BenchCommand;
use super::eval_args::EvalArgs;
use super::serve::ServeArgs;
use super::snapshot::SnapshotCommand;
use crate::model::LayerSet;
use crate::retrieve::rerank::HeadSet;

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
    /// Train and evaluate the sparse autoencoders that turn keys into feature IDs.
    #[command(subcommand)]
    Sae(SaeCommand),
    /// Benchmarks that report numbers (never pass/fail).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Read documents into a data dir: scan, encode, store postings, text and passages.
    Ingest(IngestArgs),
    /// List, show and delete the documents of a collection.
    #[command(subcommand)]
    Docs(DocsCommand),
    /// List, create and drop collections.
    #[command(subcommand)]
    Collections(CollectionsCommand),
    /// Count documents, tokens and postings, and size each part of a data dir.
    Stats(StatsArgs),
    /// Reclaim the space of deleted documents.
    Compact(DataDirArgs),
    /// Check every invariant of a data dir (store, packs, vectors and BM25 agree).
    Verify(DataDirArgs),
    /// Snapshots of a data dir: create one (from a running daemon or a data dir) or restore.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Find evidence for a question: S3, BM25, bias or hybrid spans under a token budget.
    Retrieve(RetrieveArgs),
    /// Answer a question from the evidence retrieved for it, citing the spans.
    Ask(AskArgs),
    /// Run the gRPC daemon on a data dir until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Answer quality per method and budget over a LongBench-format JSONL (full context,
    /// sink+recent window, retrieval, closed-book), or build datasets and measure recall.
    Eval(Box<EvalArgs>),
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

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layers whose key projections are taken; the scan runs layers 0..=max.
    #[arg(long, default_value = "8,16,24")]
    pub layers: LayerSet,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Also encode the keys with this SAE set (a folder, or `default`) and count features.
    #[arg(long)]
    pub sae: Option<String>,
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
    /// Where the sample index is kept (default: `quickstart/` beside the models folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The collection the documents go into.
    #[arg(long, default_value = "licences")]
    pub collection: String,
    /// The sample documents to ingest (once; later runs reuse them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = SAMPLE_DOCUMENTS
    )]
    pub documents: Vec<PathBuf>,
    /// Most tokens of evidence (at 256 the 135M model loops on a section number; at 512 it
    /// answers the cure period).
    #[arg(long, default_value_t = 512)]
    pub budget: usize,
    /// The question to answer from them.
    #[arg(
        long,
        default_value = "How many days after receiving notice does a licensee have to cure a violation?"
    )]
    pub question: String,
    /// The reader that answers (docs/eval.md "Readers and answer modes": Qwen2.5-Coder-0.5B
    /// answered best on the dev questions; its `ask` latency on an idle 2-core CPU is still to
    /// be measured against the 15 s aim).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub answer_model: String,
    /// How the reader answers: quote, free or auto (free: on the quickstart's question Qwen's
    /// quote picks the wrong "60 days" sentence of the evidence, its free answer the right one).
    #[arg(long, default_value = "free")]
    pub answer_mode: crate::answer::AnswerMode,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The collection (created if it does not exist).
    #[arg(long)]
    pub collection: String,
    /// External id of the document (only with a single input; default: the path).
    #[arg(long)]
    pub id: Option<String>,
    /// Metadata as key=value, repeatable.
    #[arg(long = "meta", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// The SAE set folder (default: the model's embedded default set).
    #[arg(long)]
    pub sae: Option<PathBuf>,
    /// Largest document accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_document_bytes: usize,
    /// With --server: documents sent at once, each its own call (the daemon stores one while
    /// it scans another when it has several ingest workers: `serve --ingest-workers`).
    #[arg(long, default_value = "2", requires = "server")]
    pub in_flight: NonZeroUsize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Files, `-` for stdin, or folders (recursively, .txt and .md; symbolic links are followed,
    /// a link that loops back is skipped with a warning).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("metadata `{s}` is not key=value")),
    }
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// List the documents of a collection.
    List {
        #[command(flatten)]
        data: DataDirArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// The collection.
        #[arg(long)]
        collection: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// List one page of at most this many documents (1 to 1000) and print the next
        /// page's token on stderr; without it, every document.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: Option<u32>,
        /// Start the page at this token (printed by the previous page).
        #[arg(long, requires = "page_size")]
        page_token: Option<String>,
    },
    /// Print a document's text (or a char range of it) or, with --json, its record too.
    Get {
        #[command(flatten)]
        data: DataDirArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// The collection.
        #[arg(long)]
        collection: String,
        /// A char range `start..end` instead of the whole text.
        #[arg(long)]
        chars: Option<String>,
        /// Print JSON with the record and text.
        #[arg(long)]
        json: bool,
        /// The document's id.
        id: String,
    },
    /// Delete documents: their postings, passages and text.
    Delete {
        #[command(flatten)]
        data: DataDirArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// The collection.
        #[arg(long)]
        collection: String,
        /// The documents' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CollectionsCommand {
    /// List collections with their document and token counts.
    List {
        #[command(flatten)]
        data: DataDirArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a collection.
    Create {
        #[command(flatten)]
        data: DataDirArgs,
        /// Its name.
        name: String,
    },
    /// Drop a collection with all its documents.
    Drop {
        #[command(flatten)]
        data: DataDirArgs,
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetrieveArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SAE set the index was built with (`default`: the model's embedded set).
    #[arg(long, default_value = "default")]
    pub sae: String,
    /// The collection.
    #[arg(long)]
    pub collection: String,
    /// Restrict to these documents (repeatable; default: the whole collection).
    #[arg(long = "doc")]
    pub docs: Vec<String>,
    /// Most tokens of evidence (counted with the model's tokenizer).
    #[arg(long, default_value_t = 1024)]
    pub budget: usize,
    /// s3, bm25, hybrid, bias, dense, rag or rerank (rerank: with `--heads` on a local data
    /// dir, or alone with a daemon started with them).
    #[arg(long, default_value = "hybrid")]
    pub method: crate::retrieve::Method,
    #[command(flatten)]
    pub attention: super::args::RerankArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Add a trace (features, positions, NMS, BM25 hits, fusion, timings) to the JSON.
    #[arg(long)]
    pub trace: bool,
    /// Only the documents that pass this filter, e.g. `tenant=acme and year>=2020`,
    /// `tenant in (a,b)`, `date<2024-01-01T00:00:00Z`, `not doc in (x,y)` (README: Filters).
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<crate::retrieve::Filter>,
    /// The question.
    pub question: String,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub retrieve: RetrieveArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// Most tokens of the answer.
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    /// quote (copied verbatim from the evidence, with its place in the document), free (the
    /// reader's own words, each sentence citing [n]) or auto (quote, free for yes/no
    /// questions). Default: free here, the daemon's default with --server.
    #[arg(long)]
    pub answer_mode: Option<crate::answer::AnswerMode>,
}

#[derive(Debug, Subcommand)]
pub enum SaeCommand {
    /// Scan a corpus and train one Top-k SAE per layer (or per layer and KV head).
    Train(SaeTrainArgs),
    /// Measure an SAE set on held-out corpus tokens: FVU on keys and queries, dead latents, L0.
    Eval(SaeEvalArgs),
}

#[derive(Debug, Args)]
pub struct SaeTrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Layers to train SAEs for.
    #[arg(long, default_value = "8,16,24")]
    pub layers: LayerSet,
    /// Dictionary size (default 32 x head dim).
    #[arg(long)]
    pub dict: Option<usize>,
    /// Features kept per vector.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// Corpus tokens to scan.
    #[arg(long, default_value_t = 2_000_000)]
    pub tokens: u64,
    /// One SAE per KV head instead of one shared per layer.
    #[arg(long)]
    pub per_head: bool,
    /// Train only for these retrieval heads (`layer.head,...`, as `eval heads` ranks them):
    /// one SAE per KV head they read, in their layers; the set records the heads (implies
    /// --per-head; replaces --layers).
    #[arg(long, conflicts_with = "layers")]
    pub heads: Option<HeadSet>,
    /// Train on query projections too (each query head with its KV group).
    #[arg(long)]
    pub with_queries: bool,
    /// Passes over the sampled vectors.
    #[arg(long, default_value_t = 4)]
    pub epochs: u32,
    /// Vectors kept per SAE (a uniform reservoir sample beyond it; 1M vectors = 256 MB).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_samples: usize,
    /// Every n-th chunk is held out for the report instead of trained on (0: none).
    #[arg(long, default_value_t = 10)]
    pub holdout_every: usize,
    /// Vectors per optimiser step.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Adam learning rate (default 2e-4 / sqrt(dict / 2^14)).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of sampling, initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the sampled vectors in this file and reuse them when the same corpus, model and
    /// sampling settings come again (to retrain with other SAE settings without rescanning).
    #[arg(long)]
    pub samples_cache: Option<PathBuf>,
    /// Output folder of the SAE set.
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SaeEvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The SAE set folder (default: the model's embedded default set).
    #[arg(long)]
    pub sae: Option<PathBuf>,
    /// Corpus tokens to evaluate on.
    #[arg(long, default_value_t = 100_000)]
    pub tokens: u64,
    /// Vectors kept per SAE for the evaluation.
    #[arg(long, default_value_t = 300_000)]
    pub max_samples: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
