//! The daemon's settings: where it listens, who may call it, and every limit.
//!
//! A TOML file (`s3mem serve --config FILE`, sample in `docs/serve.toml`) sets any of them;
//! flags and `S3MEM_*` environment variables override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{Result, ServiceError};

/// Limits on what one call may ask for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message, either way, in bytes.
    pub max_message_bytes: usize,
    /// Largest document an ingest may stream, in bytes of UTF-8.
    pub max_document_bytes: usize,
    /// Longest question, in bytes of UTF-8.
    pub max_question_bytes: usize,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 << 20,
            max_document_bytes: 64 << 20,
            max_question_bytes: 4096,
            max_budget: 8192,
            default_budget: 1024,
            max_new_tokens: 1024,
            default_new_tokens: 96,
            max_concurrent_streams: 64,
        }
    }
}

/// Worker threads and queue depths of the model work.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// Everything `s3mem serve` is configured with, besides the model and the data dir.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Per-call limits.
    pub limits: Limits,
    /// Model work threads and queues.
    pub queues: Queues,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            shutdown_grace_seconds: 10,
            limits: Limits::default(),
            queues: Queues::default(),
        }
    }
}

impl ServeConfig {
    /// Reads a TOML config file; unset settings keep their defaults, unknown ones are refused.
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

    /// Refuses settings that cannot work together.
    pub fn check(&self) -> Result<()> {
        let bad = |setting, reason: &str| {
            Err(ServiceError::Config {
                setting,
                reason: reason.into(),
            })
        };
        let l = &self.limits;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert", "tls_cert and tls_key go together");
        }
        if l.max_message_bytes < 1024 {
            return bad("max_message_bytes", "must be at least 1024");
        }
        if l.max_document_bytes == 0 || l.max_question_bytes == 0 {
            return bad("max_document_bytes", "limits must be at least 1");
        }
        if l.default_budget == 0 || l.default_budget > l.max_budget {
            return bad("default_budget", "must be between 1 and max_budget");
        }
        if l.default_new_tokens == 0 || l.default_new_tokens > l.max_new_tokens {
            return bad("default_new_tokens", "must be between 1 and max_new_tokens");
        }
        if l.max_concurrent_streams == 0 {
            return bad("max_concurrent_streams", "must be at least 1");
        }
        if self.queues.ingest_workers == 0 || self.queues.query_workers == 0 {
            return bad("ingest_workers", "each queue needs at least one worker");
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
    use super::*;

    #[test]
    fn the_sample_config_states_the_defaults() {
        let c: ServeConfig = toml::from_str(include_str!("../../docs/serve.toml")).unwrap();
        assert_eq!(c, ServeConfig::default());
    }

    #[test]
    fn file_overrides_defaults_and_refuses_unknown_settings() {
        let c: ServeConfig = toml::from_str(
            "listen = \"0.0.0.0:7000\"\n[limits]\nmax_budget = 2048\n[queues]\nquery_workers = 3\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.limits.max_budget, 2048);
        assert_eq!(c.limits.default_budget, 1024);
        assert_eq!(c.queues.query_workers, 3);
        c.check().unwrap();
        assert!(toml::from_str::<ServeConfig>("listne = \"x\"").is_err());
        let mut bad = ServeConfig::default();
        bad.limits.default_budget = 10_000;
        assert!(bad.check().is_err());
    }
}
