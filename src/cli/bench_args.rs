//! Arguments of `s3mem bench`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{ModelArgs, SAMPLE_DOCUMENTS};
use super::device::DeviceArgs;
use crate::model::LayerSet;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Scan speed and peak memory against document length, chunk and depth; each run is a
    /// separate process so its peak RSS is its own.
    Scan(BenchScanArgs),
    /// SAE training speed on a device, on synthetic vectors of the default set's shape.
    SaeTrain(SaeTrainBenchArgs),
    /// Top-k SAE features of a device scan against a CPU scan in f32, per (token, layer, head).
    Parity(ParityArgs),
    /// Retrieve latency (p50/p99, without the question's forward pass) against collection
    /// size; the collection grows by copies of the corpus's encodings.
    Retrieve(BenchRetrieveArgs),
    /// A question filtered to 1% of a collection's documents against the same question over a
    /// data dir of those documents alone, and Retrieve calls to the daemon with metrics off
    /// and on.
    Filter(BenchFilterArgs),
    /// One SAE training step with the hand-written sparse gradients against the same forward
    /// and backward through autograd, and the encoder at a scan's shape (CPU).
    SaeStep(SaeStepArgs),
    /// SAE encoding on the host cores against encoding on the device, the top k there by
    /// tensor ops (`device_path`) and by the fused kernel (`kernel_path`, k up to 64): rows/s of
    /// each and the rate of rows whose top-k sets agree with the host's, on random keys or a
    /// model's scan.
    SaeEncode(SaeEncodeArgs),
    /// What sled 0.34 keeps on disk per record, for records of several sizes.
    Sled,
    /// Bytes per token of a data dir's postings under each codec choice, and what encoding
    /// the largest documents' packs costs.
    Postings(PostingsArgs),
    /// Stores the largest documents of a data dir again into a scratch data dir, timing each
    /// step of the store (what an ingest does once a document's scan has ended).
    StoreDocument(StoreDocumentArgs),
    /// Draws `bench scan --plot`'s chart again from the rows `bench scan --json` printed.
    ScanChart(ScanChartArgs),
    /// Embedding throughput of the dense methods' model (all-MiniLM-L6-v2): passages and
    /// tokens per second at each batch size.
    Embed(EmbedBenchArgs),
}

#[derive(Debug, Args)]
pub struct EmbedBenchArgs {
    /// The embedding model: `minilm` (fetched if missing) or a model folder.
    #[arg(long, default_value = "minilm")]
    pub embedder: String,
    /// Tokens per passage, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 100)]
    pub tokens: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub batches: Vec<std::num::NonZeroUsize>,
    /// Least time spent at each batch size, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The corpus and questions of the retrieval benchmarks.
#[derive(Debug, Args)]
pub struct BenchQuestions {
    /// Documents scanned once and stored in copies.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = SAMPLE_DOCUMENTS
    )]
    pub corpus: Vec<PathBuf>,
    /// Questions asked in turn.
    #[arg(
        long,
        value_delimiter = '|',
        default_value = "How many days does a licensee have to cure a violation?|What does the patent license grant?|Who may distribute copies of the covered software?|What happens when the license terminates?|Is there any warranty for the program?"
    )]
    pub questions: Vec<String>,
    /// Retrievals per measurement (at least 1).
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
    /// Collection sizes in tokens, ascending.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub tokens: Vec<usize>,
    #[command(flatten)]
    pub asked: BenchQuestions,
    #[command(flatten)]
    pub attention: super::args::RerankArgs,
}

#[derive(Debug, Args)]
pub struct BenchFilterArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SAE set (`default`: the model's embedded set).
    #[arg(long, default_value = "default")]
    pub sae: String,
    /// A folder for the two data dirs, `all/` and `tenant/` (reused by later runs).
    #[arg(long)]
    pub dir: PathBuf,
    /// Tokens of the large collection.
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: usize,
    /// Tenants the documents are spread over; the filter keeps one.
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub tenants: usize,
    #[command(flatten)]
    pub asked: BenchQuestions,
    /// Rounds of the metrics comparison, each the daemon without then with metrics (0: skip).
    #[arg(long, default_value_t = 3)]
    pub metrics_rounds: usize,
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
    pub random: RandomArgs,
}

/// Flags of `bench scan` for models with random weights.
#[derive(Debug, Args, Clone, Default)]
pub struct RandomArgs {
    /// Benchmark seeded random weights of this shape, built on the device, instead of a model
    /// file: llama3-8b, smollm2-135m or tiny. Runs in this process; GPU memory comes from the
    /// driver's pool high watermark, reset before each run.
    #[arg(long)]
    pub random_shape: Option<String>,
    /// Seed of the random weights and documents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scan batches (windows per forward pass) to compare (default: --scan-batch or the
    /// device's default).
    #[arg(long, value_delimiter = ',')]
    pub batches: Vec<usize>,
    /// Where the scans leave the key taps, to compare: `host` (copied there after each batch,
    /// as for an SAE encoding on the CPU) or `device` (left where the model ran, as a GPU
    /// ingest leaves them for its SAEs).
    #[arg(long, value_delimiter = ',', default_value = "host")]
    pub taps: Vec<TapsArg>,
    /// Document lengths of the full-KV baseline: a full-depth prefill of the whole document in
    /// one pass, keeping its KV cache (lengths up to the model context).
    #[arg(long, value_delimiter = ',')]
    pub prefill: Vec<usize>,
    /// Tokens of a parity run (0: none): the same random model scanned on the CPU in f32 and on
    /// --device in its weight format, in f16 and in f32, keys encoded by random Top-k SAEs (dictionary
    /// 32 x head dim, k 16), top-k feature sets compared per (token, layer, KV head).
    #[arg(long, default_value_t = 0)]
    pub parity_tokens: usize,
    /// The matmul peak MFU is reported against, in TFLOP/s (770: bf16 measured on the H200).
    #[arg(long, default_value_t = 770.0)]
    pub peak_tflops: f64,
    /// Also write every result as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Where `bench scan --random-shape` leaves the key taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TapsArg {
    /// On the host, f32.
    Host,
    /// On the model's device.
    Device,
}

/// Flags of `bench parity`.
#[derive(Debug, Args)]
pub struct ParityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SAE set: a folder, or `default` for the model's embedded set.
    #[arg(long, default_value = "default")]
    pub sae: String,
    /// Document tokens compared (the file is repeated as needed).
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// The document (UTF-8 text).
    pub file: PathBuf,
}

/// The shape of a synthetic SAE (`bench sae-train`, `sae-step`, `sae-encode`).
#[derive(Debug, Args)]
pub struct SaeShapeArgs {
    /// Input dimension (SmolLM2's head dim).
    #[arg(long, default_value_t = 64)]
    pub d_in: usize,
    /// Dictionary size.
    #[arg(long, default_value_t = 2048)]
    pub dict: usize,
    /// Features kept per vector.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
}

/// Flags of `bench sae-train`.
#[derive(Debug, Args)]
pub struct SaeTrainBenchArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Training vectors (the default set trained on 1.67M per SAE).
    #[arg(long, default_value_t = 1_670_000)]
    pub samples: usize,
    #[command(flatten)]
    pub shape: SaeShapeArgs,
    /// Passes over the vectors.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Vectors per optimiser step.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Seed of the data and the training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Flags of `bench sae-step`.
#[derive(Debug, Args)]
pub struct SaeStepArgs {
    #[command(flatten)]
    pub shape: SaeShapeArgs,
    /// Vectors per step.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Hand-written training steps timed.
    #[arg(long, default_value_t = 24)]
    pub steps: u64,
    /// Autograd forward and backward passes timed.
    #[arg(long, default_value_t = 5)]
    pub autograd_steps: usize,
    /// Rows of the timed encoder call (a scan batch: 512 tokens x 3 KV heads).
    #[arg(long, default_value_t = 1536)]
    pub encode_rows: usize,
    /// Seed of the data and the training.
    #[arg(long, default_value_t = 9)]
    pub seed: u64,
}

/// Flags of `bench sae-encode`.
#[derive(Debug, Args)]
pub struct SaeEncodeArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// A model whose scan gives the keys (a known name or a GGUF path); without it, a random
    /// SAE and random keys of the shape below.
    #[arg(long)]
    pub model: Option<String>,
    /// The SAE set with `--model`: a folder, or `default` for the model's embedded set.
    #[arg(long, default_value = "default")]
    pub sae: String,
    /// Text the model scans (repeated as needed); random tokens without it.
    #[arg(long, requires = "model")]
    pub corpus: Option<PathBuf>,
    /// Key vectors per SAE (with `--model`: tokens scanned).
    #[arg(long, default_value_t = 65536)]
    pub rows: usize,
    /// The random SAE's shape.
    #[command(flatten)]
    pub shape: SaeShapeArgs,
    /// Seed of the random SAE and keys.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `bench postings`.
#[derive(Debug, Args)]
pub struct PostingsArgs {
    /// An existing data dir (e.g. after `s3mem ingest`).
    #[arg(long, env = "S3MEM_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Times encoding the packs of this many documents, those with the most tokens.
    #[arg(long, default_value_t = 3)]
    pub largest: usize,
}

/// Flags of `bench store-document`.
#[derive(Debug, Args)]
pub struct StoreDocumentArgs {
    /// An existing data dir (read only).
    #[arg(long, env = "S3MEM_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where the scratch data dirs go (removed after); default the system's temporary folder.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Stores this many documents, those with the most tokens.
    #[arg(long, default_value_t = 1)]
    pub largest: usize,
}

/// Flags of `bench scan-chart`.
#[derive(Debug, Args)]
pub struct ScanChartArgs {
    /// A JSON array of `bench scan` rows (its `--json` output).
    #[arg(long)]
    pub rows: PathBuf,
    /// The model file the rows measured (its name goes into the title).
    #[arg(long)]
    pub model: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
}
