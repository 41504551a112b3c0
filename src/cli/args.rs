//! Argument groups that several commands flatten in: the model, the data dir, the scan
//! window, the corpus and the daemon to talk to.

use std::path::PathBuf;

use clap::Args;

use super::device::DeviceArgs;
use crate::model::WeightFormat;

/// Debian's long licence texts: the sample documents of the quickstart and the benchmarks.
pub const SAMPLE_DOCUMENTS: &str = "/usr/share/common-licenses/GPL-3,/usr/share/common-licenses/Apache-2.0,/usr/share/common-licenses/MPL-2.0";

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
    /// The embedding model of the dense methods: `minilm` (used when `s3mem model fetch
    /// minilm` has put it in the models dir; without it dense and rag are refused), a model
    /// folder, or `none`. Documents stored without its passage vectors are embedded when an
    /// index is opened with it.
    #[arg(long, default_value = "minilm", env = "S3MEM_EMBEDDER")]
    pub embedder: String,
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

/// Where a running daemon is, for commands that can talk to one.
#[derive(Debug, Args, Clone, Default)]
pub struct ServerArgs {
    /// Talk to a running `s3mem serve` at this URL (http://HOST:PORT, or https://) instead of
    /// opening the data dir.
    #[arg(long, env = "S3MEM_SERVER")]
    pub server: Option<String>,
    /// A file holding the daemon's bearer token.
    #[arg(long, env = "S3MEM_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate of the CA that signed the daemon's TLS certificate (https URLs).
    #[arg(long, env = "S3MEM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// The reader: the model that answers from the evidence, apart from the model that indexes.
#[derive(Debug, Args, Clone)]
pub struct AnswerArgs {
    /// The model that reads the evidence and answers: a known name (fetched if missing) or a
    /// path to a GGUF file. Default: the index model (--model).
    #[arg(long, env = "S3MEM_ANSWER_MODEL")]
    pub answer_model: Option<String>,
    /// When the reader says "not in the evidence": `calibrated` (below the reader's calibrated
    /// threshold of --abstain-signal, never for a reader without one), `never`, or below this
    /// value of the signal (quote: a log-probability, a number <= 0; support: log-odds).
    #[arg(long, default_value = "calibrated", allow_hyphen_values = true)]
    pub abstain_below: crate::answer::Abstain,
    /// The reader's signal --abstain-below compares: `quote` (the log-probability of the best
    /// quote's first token, read from the prefill) or `support` (the log-odds that the reader,
    /// asked after the evidence whether it states the answer, says yes: ~30 tokens more).
    #[arg(long, default_value = "quote")]
    pub abstain_signal: crate::answer::AbstainSignal,
}

impl AnswerArgs {
    /// Refuses a threshold the chosen signal cannot use, before any model is loaded.
    pub fn check(&self) -> anyhow::Result<()> {
        self.abstain_below.check(self.abstain_signal).map_err(|e| {
            anyhow::anyhow!(
                "--abstain-below for --abstain-signal {}: {e}",
                self.abstain_signal
            )
        })
    }

    /// Returns the rule of abstention for `reader` (`None`: never abstain).
    pub fn threshold(&self, reader: &crate::model::Model) -> Option<crate::answer::Threshold> {
        self.abstain_below.threshold(reader, self.abstain_signal)
    }
}

/// The settings of the `rerank` method: the heads, the pool and the model that reads it.
#[derive(Debug, Args)]
pub struct RerankArgs {
    /// Retrieval heads of `rerank`, `layer.head,...` (heads of the re-ranking model).
    #[arg(long)]
    pub heads: Option<crate::retrieve::rerank::HeadSet>,
    /// Tokens of first-stage candidates `rerank` reads.
    #[arg(long, default_value_t = 2048)]
    pub pool_tokens: usize,
    /// Weight of the first stage's own order fused with the attention order by `rerank` (0:
    /// attention alone).
    #[arg(long, default_value_t = 0.0)]
    pub rerank_first_stage: f32,
    #[command(flatten)]
    pub reranker: RerankerArgs,
}

impl RerankArgs {
    /// Returns the re-ranking settings, `None` without heads (then `rerank` is refused).
    pub fn config(&self) -> Option<crate::retrieve::rerank::RerankConfig> {
        self.heads
            .clone()
            .map(|heads| crate::retrieve::rerank::RerankConfig {
                heads,
                pool_tokens: self.pool_tokens,
                first_stage: self.rerank_first_stage,
            })
    }
}

/// The model whose attention re-ranks the pool.
#[derive(Debug, Args)]
pub struct RerankerArgs {
    /// The model whose attention re-ranks (its heads are the ones `--heads` names): a known
    /// name or a GGUF path, loaded on the index model's device. Default: the index model. A
    /// larger model can re-rank the pool of a small model's index: the pool is re-tokenized.
    #[arg(long)]
    pub rerank_model: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::AnswerArgs;
    use crate::answer::{Abstain, AbstainSignal};

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        answer: AnswerArgs,
    }

    fn parse(args: &[&str]) -> Result<AnswerArgs, String> {
        Flags::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|f| f.answer)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_abstention_flags_parse_and_refuse_by_name() {
        let default = parse(&[]).unwrap();
        assert_eq!(default.abstain_signal, AbstainSignal::Quote);
        assert_eq!(default.abstain_below, Abstain::Calibrated);
        assert!(default.check().is_ok());
        let support = parse(&["--abstain-signal", "support", "--abstain-below", "0.5"]).unwrap();
        assert_eq!(support.abstain_signal, AbstainSignal::Support);
        assert_eq!(support.abstain_below, Abstain::Below(0.5));
        assert!(support.check().is_ok());
        let negative = parse(&["--abstain-below", "-1.25"]).unwrap();
        assert_eq!(negative.abstain_below, Abstain::Below(-1.25));
        // Log-odds may be positive, a log-probability may not: refused before any model loads.
        let err = parse(&["--abstain-below", "0.5"])
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--abstain-below") && err.contains("--abstain-signal quote"),
            "{err}"
        );
        let err = parse(&["--abstain-signal", "attention"]).unwrap_err();
        assert!(
            err.contains("--abstain-signal")
                && err.contains("unknown abstention signal `attention`"),
            "{err}"
        );
        let err = parse(&["--abstain-below", "sometimes"]).unwrap_err();
        assert!(
            err.contains("--abstain-below") && err.contains("`sometimes`"),
            "{err}"
        );
    }
}
