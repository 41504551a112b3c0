//! The daemon's settings: where it listens, who may call it, and every limit.
//!
//! [`ServeSettings`] is the one list of settings: each field is a flag (`--max-budget`), an
//! `S3MEM_*` variable (`S3MEM_MAX_BUDGET`) and a key of the TOML file (`max_budget` under
//! `[limits]`; sample in `docs/serve.toml`), unset unless given. [`ServeConfig::default`]
//! holds the defaults. [`ServeConfig::merge`] lays the flags and variables (clap gives a flag
//! precedence over its variable) over the file over the defaults, then checks the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Result, ServiceError};
use crate::answer::{AbstainSignal, AnswerMode};
use crate::retrieve::rerank::{HeadSet, RerankConfig};
use crate::retrieve::Method;

/// Limits on what one call may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message, either way, in bytes.
    pub max_message_bytes: usize,
    /// Largest document an ingest may stream, in bytes of UTF-8.
    pub max_document_bytes: usize,
    /// Most bytes of text all open ingests may hold together.
    pub max_ingest_buffer_bytes: usize,
    /// Longest question, in bytes of UTF-8.
    pub max_question_bytes: usize,
    /// Longest question, in tokens of the model's tokenizer (what its forward pass costs).
    pub max_question_tokens: usize,
    /// Largest evidence budget, in tokens.
    pub max_budget: usize,
    /// Evidence budget of a request that gives none, in tokens.
    pub default_budget: usize,
    /// Most answer tokens a request may ask for.
    pub max_new_tokens: usize,
    /// Answer tokens of a request that gives none.
    pub default_new_tokens: usize,
    /// Most concurrent calls (HTTP/2 streams) per connection.
    pub max_concurrent_streams: u32,
    /// Most metadata entries a document may carry.
    pub max_metadata_entries: usize,
    /// Longest metadata key, in bytes.
    pub max_metadata_key_bytes: usize,
    /// Longest metadata value, in bytes.
    pub max_metadata_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 << 20,
            max_document_bytes: 64 << 20,
            max_ingest_buffer_bytes: 256 << 20,
            max_question_bytes: 4096,
            max_question_tokens: 256,
            max_budget: 8192,
            default_budget: 1024,
            max_new_tokens: 1024,
            default_new_tokens: 96,
            max_concurrent_streams: 64,
            max_metadata_entries: 64,
            max_metadata_key_bytes: 256,
            max_metadata_value_bytes: 4096,
        }
    }
}

/// Worker threads and queue depths of the model work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queues {
    /// Threads that scan documents (ingest).
    pub ingest_workers: usize,
    /// Ingests that may wait for a scan thread; beyond it calls get RESOURCE_EXHAUSTED.
    pub ingest_queue_depth: usize,
    /// Threads that retrieve and answer (retrieve, ask).
    pub query_workers: usize,
    /// Queries that may wait for a query thread; beyond it calls get RESOURCE_EXHAUSTED.
    pub query_queue_depth: usize,
}

impl Default for Queues {
    fn default() -> Self {
        Self {
            ingest_workers: 1,
            ingest_queue_depth: 8,
            query_workers: 2,
            query_queue_depth: 32,
        }
    }
}

/// Attention re-ranking (`METHOD_RERANK`): the retrieval heads, the pool and the model that
/// reads it. Without heads the daemon refuses the method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rerank {
    /// Retrieval heads, `layer.head,...`, of the re-ranking model; unset: no re-ranking.
    #[serde(default, with = "heads_text")]
    pub heads: Option<HeadSet>,
    /// Most tokens of first-stage candidates the re-ranking model reads per question.
    pub pool_tokens: usize,
    /// Weight of the first stage's own order fused with the attention order (0: attention
    /// alone).
    pub rerank_first_stage: f32,
    /// The model whose attention re-ranks (a known name or a GGUF path), loaded once at start;
    /// unset: the index model.
    #[serde(default)]
    pub rerank_model: Option<String>,
}

impl Default for Rerank {
    fn default() -> Self {
        Self {
            heads: None,
            pool_tokens: 2048,
            rerank_first_stage: 0.0,
            rerank_model: None,
        }
    }
}

impl Rerank {
    /// Returns the re-ranking settings of retrieval, `None` without heads.
    pub fn config(&self) -> Option<RerankConfig> {
        self.heads.clone().map(|heads| RerankConfig {
            heads,
            pool_tokens: self.pool_tokens,
            first_stage: self.rerank_first_stage,
        })
    }
}

/// Writes a head set as its text (`8.3,12.0`) and reads it back, refusing what is not one.
mod heads_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::retrieve::rerank::HeadSet;

    pub fn serialize<S: Serializer>(heads: &Option<HeadSet>, s: S) -> Result<S::Ok, S::Error> {
        match heads {
            Some(h) => s.serialize_some(&h.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HeadSet>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Everything `s3mem serve` is configured with, besides the model and the data dir: the
/// settings after merging, every one with its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (loopback by default).
    pub listen: SocketAddr,
    /// A file holding the bearer token every call but health must send.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain for TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Seconds in-flight calls get to finish after SIGINT/SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Address serving Prometheus metrics at `/metrics` (HTTP, no token); unset: none.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Readers loaded at start (known names or GGUF paths), the first the default; empty: the
    /// index model answers.
    #[serde(default)]
    pub answer_model: Vec<String>,
    /// How readers answer calls that name no mode: quote, free or auto.
    #[serde(default)]
    pub answer_mode: AnswerMode,
    /// The signal a reader's calibrated threshold of abstention compares: quote or support.
    #[serde(default)]
    pub abstain_signal: AbstainSignal,
    /// The method of calls that name none (`METHOD_UNSPECIFIED`).
    #[serde(default = "hybrid")]
    pub default_method: Method,
    /// Per-call limits.
    pub limits: Limits,
    /// Model work threads and queues.
    pub queues: Queues,
    /// Attention re-ranking.
    #[serde(default)]
    pub rerank: Rerank,
}

fn hybrid() -> Method {
    Method::Hybrid
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            shutdown_grace_seconds: 10,
            metrics_listen: None,
            answer_model: Vec::new(),
            answer_mode: AnswerMode::default(),
            abstain_signal: AbstainSignal::default(),
            default_method: hybrid(),
            limits: Limits::default(),
            queues: Queues::default(),
            rerank: Rerank::default(),
        }
    }
}

/// The settings of `s3mem serve` as one source gives them (flags and variables, or the
/// file): each field is a flag, an `S3MEM_*` variable and a file key; `None` is unset.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(mut_args(default_in_help))]
pub struct ServeSettings {
    /// Address to listen on (loopback by default: expose it on purpose, with a token and TLS).
    #[arg(long, env = "S3MEM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A file whose first line is the bearer token every call but health must send.
    #[arg(long, env = "S3MEM_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "S3MEM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "S3MEM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Seconds in-flight calls get after SIGINT/SIGTERM.
    #[arg(long, env = "S3MEM_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (no token: keep it on loopback or a
    /// private network). Unset: no metrics.
    #[arg(long, env = "S3MEM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Readers to load at start, comma-separated (known names or GGUF paths); the first answers
    /// calls that name none. Unset: the index model answers.
    #[arg(long, env = "S3MEM_ANSWER_MODEL", value_delimiter = ',')]
    pub answer_model: Option<Vec<String>>,
    /// How readers answer calls that name no mode: quote, free or auto.
    #[arg(long, env = "S3MEM_ANSWER_MODE")]
    pub answer_mode: Option<AnswerMode>,
    /// The signal by which readers say "not in the evidence" (below their calibrated
    /// threshold of it): quote (the best quote's first token) or support (the reader asked
    /// whether the evidence states the answer: ~30 tokens more per call).
    #[arg(long, env = "S3MEM_ABSTAIN_SIGNAL")]
    pub abstain_signal: Option<AbstainSignal>,
    /// The method of calls that name none: s3, bm25, hybrid, bias, dense, rag or rerank
    /// (rerank: with --heads).
    #[arg(long, env = "S3MEM_DEFAULT_METHOD")]
    pub default_method: Option<Method>,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub queues: QueueSettings,
    #[command(flatten)]
    pub rerank: RerankSettings,
}

/// The `[limits]` part of [`ServeSettings`].
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest gRPC message, either way, in bytes.
    #[arg(long, env = "S3MEM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest document an ingest may stream, in bytes.
    #[arg(long, env = "S3MEM_MAX_DOCUMENT_BYTES")]
    pub max_document_bytes: Option<usize>,
    /// Most bytes of text all open ingests may hold together; beyond it an ingest gets
    /// RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "S3MEM_MAX_INGEST_BUFFER_BYTES")]
    pub max_ingest_buffer_bytes: Option<usize>,
    /// Longest question, in bytes.
    #[arg(long, env = "S3MEM_MAX_QUESTION_BYTES")]
    pub max_question_bytes: Option<usize>,
    /// Longest question, in tokens of the model's tokenizer.
    #[arg(long, env = "S3MEM_MAX_QUESTION_TOKENS")]
    pub max_question_tokens: Option<usize>,
    /// Largest evidence budget a call may ask for, in tokens.
    #[arg(long, env = "S3MEM_MAX_BUDGET")]
    pub max_budget: Option<usize>,
    /// Evidence budget of a call that gives none (unset: follows a lower --max-budget).
    #[arg(long, env = "S3MEM_DEFAULT_BUDGET")]
    pub default_budget: Option<usize>,
    /// Most answer tokens a call may ask for.
    #[arg(long, env = "S3MEM_MAX_NEW_TOKENS")]
    pub max_new_tokens: Option<usize>,
    /// Answer tokens of a call that gives none (unset: follows a lower --max-new-tokens).
    #[arg(long, env = "S3MEM_DEFAULT_NEW_TOKENS")]
    pub default_new_tokens: Option<usize>,
    /// Most concurrent calls (HTTP/2 streams) per connection.
    #[arg(long, env = "S3MEM_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Most metadata entries a document may carry.
    #[arg(long, env = "S3MEM_MAX_METADATA_ENTRIES")]
    pub max_metadata_entries: Option<usize>,
    /// Longest metadata key, in bytes (at most 512, the limit of every name).
    #[arg(long, env = "S3MEM_MAX_METADATA_KEY_BYTES")]
    pub max_metadata_key_bytes: Option<usize>,
    /// Longest metadata value, in bytes.
    #[arg(long, env = "S3MEM_MAX_METADATA_VALUE_BYTES")]
    pub max_metadata_value_bytes: Option<usize>,
}

/// The `[queues]` part of [`ServeSettings`].
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Threads that scan documents (ingest).
    #[arg(long, env = "S3MEM_INGEST_WORKERS")]
    pub ingest_workers: Option<usize>,
    /// Ingests that may wait for a scan thread; beyond it calls get RESOURCE_EXHAUSTED.
    #[arg(long, env = "S3MEM_INGEST_QUEUE_DEPTH")]
    pub ingest_queue_depth: Option<usize>,
    /// Threads that retrieve and answer (retrieve, ask).
    #[arg(long, env = "S3MEM_QUERY_WORKERS")]
    pub query_workers: Option<usize>,
    /// Queries that may wait for a query thread; beyond it calls get RESOURCE_EXHAUSTED.
    #[arg(long, env = "S3MEM_QUERY_QUEUE_DEPTH")]
    pub query_queue_depth: Option<usize>,
}

/// The `[rerank]` part of [`ServeSettings`]: the flags of local `retrieve --method rerank`,
/// set once for the daemon.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RerankSettings {
    /// Retrieval heads of METHOD_RERANK, `layer.head,...` (heads of the re-ranking model).
    /// Unset: the daemon refuses METHOD_RERANK.
    #[arg(long, env = "S3MEM_HEADS")]
    #[serde(with = "heads_text")]
    pub heads: Option<HeadSet>,
    /// Tokens of first-stage candidates the re-ranking model reads per question.
    #[arg(long, env = "S3MEM_POOL_TOKENS")]
    pub pool_tokens: Option<usize>,
    /// Weight of the first stage's own order fused with the attention order (0: attention
    /// alone).
    #[arg(long, env = "S3MEM_RERANK_FIRST_STAGE")]
    pub rerank_first_stage: Option<f32>,
    /// The model whose attention re-ranks (a known name or a GGUF path), loaded once at start
    /// on the index model's device. Unset: the index model.
    #[arg(long, env = "S3MEM_RERANK_MODEL")]
    pub rerank_model: Option<String>,
}

impl ServeSettings {
    /// Reads a TOML settings file; unknown keys are refused, naming them.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ServiceError::Config {
            setting: "config",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        toml::from_str(&text).map_err(|e| ServiceError::Config {
            setting: "config",
            reason: format!("{}: {e}", path.display()),
        })
    }
}

/// Appends a setting's default to its help, from [`ServeConfig::default`], so that help
/// never repeats a number by hand.
fn default_in_help(arg: clap::Arg) -> clap::Arg {
    let defaults = flat_defaults();
    let Some(value) = defaults.get(arg.get_id().as_str()) else {
        return arg;
    };
    let value = match value {
        Value::Null => return arg,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    arg.help(format!("{help} [default: {value}]"))
}

/// Returns every setting's default by its key, sections flattened (key names are unique).
pub fn flat_defaults() -> serde_json::Map<String, Value> {
    flat(to_value(&ServeConfig::default()))
}

/// Returns the keys and values of serialized settings with the sections flattened.
fn flat(value: Value) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    if let Value::Object(map) = value {
        for (key, value) in map {
            match value {
                Value::Object(_) => out.extend(flat(value)),
                value => {
                    out.insert(key, value);
                }
            }
        }
    }
    out
}

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("settings are plain data and serialize to JSON")
}

/// Lays the values set in `top` over `base`; a null (unset) value leaves `base`'s.
fn overlay(base: &mut Value, top: Value) {
    match (base, top) {
        (_, Value::Null) => {}
        (Value::Object(base), Value::Object(top)) => {
            for (key, value) in top {
                overlay(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, top) => *base = top,
    }
}

impl ServeConfig {
    /// Returns the settings `flags` sets (flags and variables) over those of the TOML file at
    /// `file` over the defaults, checked together.
    ///
    /// A default budget or answer length that nothing sets follows a lower maximum down, so
    /// `--max-budget 512` alone works, and an unset ingest buffer follows a larger
    /// `max_document_bytes` up; one that is set is checked as given.
    pub fn merge(flags: &ServeSettings, file: Option<&Path>) -> Result<Self> {
        let file = match file {
            Some(path) => ServeSettings::from_file(path)?,
            None => ServeSettings::default(),
        };
        // JSON has no NaN or infinity: the merge would drop them as unset.
        for set in [&file, flags] {
            if let Some(w) = set.rerank.rerank_first_stage.filter(|w| !w.is_finite()) {
                return Err(ServiceError::Config {
                    setting: "rerank_first_stage",
                    reason: format!("{w} is not a finite number >= 0"),
                });
            }
        }
        let mut merged = to_value(&Self::default());
        overlay(&mut merged, to_value(&file));
        overlay(&mut merged, to_value(flags));
        let mut config: Self =
            serde_json::from_value(merged).map_err(|e| ServiceError::Config {
                setting: "config",
                reason: e.to_string(),
            })?;
        let (set, from_file) = (&flags.limits, &file.limits);
        let l = &mut config.limits;
        if set.default_budget.or(from_file.default_budget).is_none() {
            l.default_budget = l.default_budget.min(l.max_budget);
        }
        if set
            .default_new_tokens
            .or(from_file.default_new_tokens)
            .is_none()
        {
            l.default_new_tokens = l.default_new_tokens.min(l.max_new_tokens);
        }
        if set
            .max_ingest_buffer_bytes
            .or(from_file.max_ingest_buffer_bytes)
            .is_none()
        {
            l.max_ingest_buffer_bytes = l.max_ingest_buffer_bytes.max(l.max_document_bytes);
        }
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that cannot work together, naming the setting.
    pub fn check(&self) -> Result<()> {
        let bad = |setting, reason: String| Err(ServiceError::Config { setting, reason });
        let l = &self.limits;
        let q = &self.queues;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert", "tls_cert and tls_key go together".into());
        }
        if l.max_message_bytes < 1024 {
            return bad(
                "max_message_bytes",
                format!("{} is below 1024", l.max_message_bytes),
            );
        }
        if l.max_document_bytes == 0 {
            return bad("max_document_bytes", "must be at least 1".into());
        }
        if l.max_ingest_buffer_bytes < l.max_document_bytes {
            return bad(
                "max_ingest_buffer_bytes",
                format!(
                    "{} is below max_document_bytes ({}): the largest document could never be ingested",
                    l.max_ingest_buffer_bytes, l.max_document_bytes
                ),
            );
        }
        if l.max_question_bytes == 0 {
            return bad("max_question_bytes", "must be at least 1".into());
        }
        if l.max_question_tokens == 0 {
            return bad("max_question_tokens", "must be at least 1".into());
        }
        if l.default_budget == 0 || l.default_budget > l.max_budget {
            return bad(
                "default_budget",
                format!(
                    "{} is not between 1 and max_budget ({})",
                    l.default_budget, l.max_budget
                ),
            );
        }
        if l.default_new_tokens == 0 || l.default_new_tokens > l.max_new_tokens {
            return bad(
                "default_new_tokens",
                format!(
                    "{} is not between 1 and max_new_tokens ({})",
                    l.default_new_tokens, l.max_new_tokens
                ),
            );
        }
        if l.max_concurrent_streams == 0 {
            return bad("max_concurrent_streams", "must be at least 1".into());
        }
        if !(1..=crate::index::MAX_NAME_BYTES).contains(&l.max_metadata_key_bytes) {
            return bad(
                "max_metadata_key_bytes",
                format!(
                    "{} is not between 1 and {} (the limit of every name)",
                    l.max_metadata_key_bytes,
                    crate::index::MAX_NAME_BYTES
                ),
            );
        }
        if q.ingest_workers == 0 {
            return bad("ingest_workers", "needs at least one worker".into());
        }
        if q.query_workers == 0 {
            return bad("query_workers", "needs at least one worker".into());
        }
        let r = &self.rerank;
        if r.pool_tokens == 0 {
            return bad("pool_tokens", "must be at least 1".into());
        }
        if !(r.rerank_first_stage.is_finite() && r.rerank_first_stage >= 0.0) {
            return bad(
                "rerank_first_stage",
                format!("{} is not a finite number >= 0", r.rerank_first_stage),
            );
        }
        if r.heads.is_none() {
            if self.default_method == Method::Rerank {
                return bad(
                    "default_method",
                    "rerank needs retrieval heads: set heads (--heads L.H,...)".into(),
                );
            }
            if let Some(m) = &r.rerank_model {
                return bad(
                    "rerank_model",
                    format!("{m} would re-rank with no heads: set heads (--heads L.H,...)"),
                );
            }
        }
        Ok(())
    }

    /// Returns the bearer token from `auth_token_file`, if one is configured.
    pub fn auth_token(&self) -> Result<Option<String>> {
        let Some(path) = &self.auth_token_file else {
            return Ok(None);
        };
        read_token(path).map(Some)
    }
}

/// Reads a bearer token file: its first line, without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| ServiceError::Config {
        setting: "auth_token_file",
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(ServiceError::Config {
            setting: "auth_token_file",
            reason: format!("{} holds no token", path.display()),
        });
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ServiceError::Config {
            setting: "auth_token_file",
            reason: format!(
                "the token in {} must be printable ASCII without spaces",
                path.display()
            ),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    /// Parses `args` as the settings' flags.
    fn flags(args: &[String]) -> ServeSettings {
        let cmd = ServeSettings::augment_args(clap::Command::new("serve").no_binary_name(true));
        let matches = cmd.try_get_matches_from(args).unwrap();
        ServeSettings::from_arg_matches(&matches).unwrap()
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    /// A valid value for every setting, each different from its default.
    fn other_values() -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for (i, (key, default)) in flat_defaults().into_iter().enumerate() {
            let value = match (key.as_str(), default) {
                ("listen" | "metrics_listen", _) => Value::from(format!("127.0.0.1:{}", 40000 + i)),
                ("answer_mode", _) => Value::from("quote"),
                ("abstain_signal", _) => Value::from("support"),
                ("default_method", _) => Value::from("rerank"),
                // Sorted already: a head set is written sorted.
                ("heads", _) => Value::from("7.7,18.7"),
                ("rerank_first_stage", _) => Value::from(1.5),
                (_, Value::Null) => Value::from(format!("/tmp/{key}")),
                (_, Value::Number(n)) => Value::from(n.as_u64().unwrap() + 1 + i as u64),
                (_, Value::Array(_)) => Value::from(vec![format!("/tmp/{key}.gguf"), "b".into()]),
                (key, other) => panic!("no test value for {key} = {other}"),
            };
            out.insert(key, value);
        }
        out
    }

    /// The TOML file that sets `values`, each key in its section.
    fn toml_of(values: &serde_json::Map<String, Value>) -> String {
        let mut sections: serde_json::Map<String, Value> = to_value(&ServeConfig::default())
            .as_object()
            .unwrap()
            .clone();
        for section in sections.values_mut() {
            match section.as_object_mut() {
                Some(map) => {
                    for (key, value) in map.iter_mut() {
                        *value = values[key].clone();
                    }
                }
                None => *section = Value::Null,
            }
        }
        for (key, value) in values {
            if sections.get(key).is_some_and(Value::is_null) {
                sections.insert(key.clone(), value.clone());
            }
        }
        toml::to_string(&sections).unwrap()
    }

    #[test]
    fn every_setting_has_a_flag_a_variable_and_a_file_key() {
        let cmd = ServeSettings::augment_args(clap::Command::new("serve"));
        let defaults = flat_defaults();
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let mut keys: Vec<String> = defaults.keys().cloned().collect();
        let mut sorted_ids = ids.clone();
        sorted_ids.sort();
        keys.sort();
        assert_eq!(sorted_ids, keys, "flags and file keys differ");
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()));
            let env = arg.get_env().unwrap().to_str().unwrap();
            assert_eq!(env, format!("S3MEM_{}", id.to_uppercase()));
            let help = arg.get_help().unwrap().to_string();
            if !defaults[id].is_null() {
                assert!(
                    help.ends_with("]") && help.contains("[default: "),
                    "{id}: {help}"
                );
            }
        }
        let values = other_values();
        let args: Vec<String> = values
            .iter()
            .flat_map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    // A list is one comma-separated flag.
                    Value::Array(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                [format!("--{}", k.replace('_', "-")), v]
            })
            .collect();
        let by_flag = ServeConfig::merge(&flags(&args), None).unwrap();
        assert_eq!(flat(to_value(&by_flag)), values);
        let file = config_file(&toml_of(&values));
        let by_file = ServeConfig::merge(&ServeSettings::default(), Some(file.path())).unwrap();
        assert_eq!(flat(to_value(&by_file)), values);
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = config_file("[limits]\nmax_budget = 3000\nmax_new_tokens = 500\n");
        let none = ServeSettings::default();
        let c = ServeConfig::merge(&none, Some(file.path())).unwrap();
        assert_eq!((c.limits.max_budget, c.limits.max_new_tokens), (3000, 500));
        assert_eq!(
            c.limits.max_question_bytes,
            Limits::default().max_question_bytes
        );
        let set = flags(&["--max-budget".into(), "5000".into()]);
        let c = ServeConfig::merge(&set, Some(file.path())).unwrap();
        assert_eq!((c.limits.max_budget, c.limits.max_new_tokens), (5000, 500));
        assert_eq!(
            ServeConfig::merge(&none, None).unwrap(),
            ServeConfig::default()
        );
    }

    #[test]
    fn a_default_above_its_maximum_is_refused_naming_the_key() {
        let file = config_file("[limits]\ndefault_budget = 10000\n");
        let err = ServeConfig::merge(&ServeSettings::default(), Some(file.path())).unwrap_err();
        assert!(
            matches!(
                err,
                ServiceError::Config {
                    setting: "default_budget",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("10000 is not between 1 and max_budget (8192)"),
            "{err}"
        );
        let err = ServeConfig::merge(
            &flags(&["--default-new-tokens".into(), "2000".into()]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("default_new_tokens"), "{err}");
        // Unset defaults follow a lowered maximum; a set one is checked against it.
        let c = ServeConfig::merge(&flags(&["--max-budget".into(), "512".into()]), None).unwrap();
        assert_eq!(c.limits.default_budget, 512);
        let low = config_file("[limits]\ndefault_budget = 600\n");
        let err = ServeConfig::merge(
            &flags(&["--max-budget".into(), "512".into()]),
            Some(low.path()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("600 is not between"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let none = ServeSettings::default();
        let file = config_file("listne = \"x\"\n");
        let err = ServeConfig::merge(&none, Some(file.path())).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
        let file = config_file("[queues]\nquery_workers = 0\n");
        let err = ServeConfig::merge(&none, Some(file.path())).unwrap_err();
        assert!(
            matches!(
                err,
                ServiceError::Config {
                    setting: "query_workers",
                    ..
                }
            ),
            "{err}"
        );
        let err =
            ServeConfig::merge(&flags(&["--tls-cert".into(), "c.pem".into()]), None).unwrap_err();
        assert!(err.to_string().contains("tls_key"), "{err}");
    }

    #[test]
    fn readers_are_a_list_from_flags_or_the_file() {
        let c = ServeConfig::merge(
            &flags(&["--answer-model=a.gguf,qwen2.5-coder-0.5b".into()]),
            None,
        )
        .unwrap();
        assert_eq!(c.answer_model, ["a.gguf", "qwen2.5-coder-0.5b"]);
        let file: ServeSettings = toml::from_str("answer_model = [\"b.gguf\"]").unwrap();
        assert_eq!(file.answer_model, Some(vec!["b.gguf".to_string()]));
        assert!(ServeConfig::default().answer_model.is_empty());
    }

    #[test]
    fn rerank_settings_come_from_flags_or_the_file_and_are_checked() {
        let heads = "18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6";
        let c = ServeConfig::merge(
            &flags(&[
                format!("--heads={heads}"),
                "--rerank-first-stage=1".into(),
                "--pool-tokens=1024".into(),
                "--default-method=rerank".into(),
            ]),
            None,
        )
        .unwrap();
        let r = c.rerank.config().unwrap();
        assert_eq!(
            r.heads.to_string(),
            "7.7,14.3,15.6,17.3,17.4,18.6,18.7,23.2"
        );
        assert_eq!((r.pool_tokens, r.first_stage), (1024, 1.0));
        assert_eq!(c.default_method, Method::Rerank);
        assert!(ServeConfig::default().rerank.config().is_none());
        assert_eq!(ServeConfig::default().default_method, Method::Hybrid);
        // The file's section, under flags that set one key of it.
        let file = config_file(
            "default_method = \"rerank\"\n[rerank]\nheads = \"8.1, 12.3\"\n\
             rerank_model = \"qwen2.5-coder-0.5b\"\nrerank_first_stage = 0.5\n",
        );
        let c = ServeConfig::merge(
            &flags(&["--pool-tokens".into(), "512".into()]),
            Some(file.path()),
        )
        .unwrap();
        assert_eq!(c.rerank.heads.as_ref().unwrap().to_string(), "8.1,12.3");
        assert_eq!(c.rerank.rerank_model.as_deref(), Some("qwen2.5-coder-0.5b"));
        assert_eq!(
            (c.rerank.pool_tokens, c.rerank.rerank_first_stage),
            (512, 0.5)
        );
        // What --print-config writes reads back as the same settings.
        let printed = toml::to_string(&c).unwrap();
        assert!(printed.contains("heads = \"8.1,12.3\""), "{printed}");
        assert_eq!(toml::from_str::<ServeConfig>(&printed).unwrap(), c);
        // A head set that does not parse, from the file or a flag.
        let bad = config_file("[rerank]\nheads = \"8\"\n");
        let err = ServeConfig::merge(&ServeSettings::default(), Some(bad.path())).unwrap_err();
        assert!(err.to_string().contains("layer.head"), "{err}");
        let cmd = ServeSettings::augment_args(clap::Command::new("serve").no_binary_name(true));
        let err = cmd.try_get_matches_from(["--heads", "8.x"]).unwrap_err();
        assert!(err.to_string().contains("layer.head"), "{err}");
        // Settings that cannot work, named.
        let refused = |args: &[&str], file: &str, setting: &str| {
            let file = config_file(file);
            let args: Vec<String> = args.iter().map(ToString::to_string).collect();
            let err = ServeConfig::merge(&flags(&args), Some(file.path())).unwrap_err();
            assert!(
                matches!(&err, ServiceError::Config { setting: s, .. } if *s == setting),
                "{setting}: {err}"
            );
            err.to_string()
        };
        let err = refused(&["--default-method", "rerank"], "", "default_method");
        assert!(err.contains("--heads"), "{err}");
        let err = refused(
            &["--rerank-model", "qwen2.5-coder-0.5b"],
            "",
            "rerank_model",
        );
        assert!(err.contains("--heads"), "{err}");
        refused(&["--heads", "8.1", "--pool-tokens", "0"], "", "pool_tokens");
        for weight in ["-1.0", "nan", "inf"] {
            let file = format!("[rerank]\nrerank_first_stage = {weight}\n");
            refused(&["--heads", "8.1"], &file, "rerank_first_stage");
            let flag = format!("--rerank-first-stage={weight}");
            refused(&["--heads", "8.1", &flag], "", "rerank_first_stage");
        }
    }

    #[test]
    fn the_sample_config_lists_every_setting_with_its_default() {
        let text = include_str!("../../docs/serve.toml");
        let sample: ServeSettings = toml::from_str(text).unwrap();
        let given = flat(to_value(&sample));
        for (key, default) in flat_defaults() {
            if default.is_null() {
                // A setting without a default is shown commented out.
                assert!(text.contains(&format!("# {key} = ")), "{key} is not shown");
            } else {
                assert_eq!(given[&key], default, "{key}");
            }
        }
    }
}
