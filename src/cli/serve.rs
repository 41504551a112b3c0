//! `s3mem serve`: wiring of the gRPC daemon (src/service).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::args::{DataDirArgs, ModelArgs, WindowArgs};
use super::load::{load, load_sae_set};
use crate::index::{Index, IndexConfig};
use crate::service::{Loaded, ServeConfig};

/// `s3mem serve`: every setting is also an `S3MEM_*` environment variable; flags and
/// variables override the config file, which overrides the defaults.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The SAE set folder (default: the model's embedded default set).
    #[arg(long, env = "S3MEM_SAE")]
    pub sae: Option<PathBuf>,
    /// A TOML file of daemon settings (sample: docs/serve.toml).
    #[arg(long, env = "S3MEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "S3MEM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token every call but health must send.
    #[arg(long, env = "S3MEM_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "S3MEM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "S3MEM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Seconds in-flight calls get after SIGINT/SIGTERM [default: 10].
    #[arg(long, env = "S3MEM_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Largest gRPC message in bytes [default: 4 MiB].
    #[arg(long, env = "S3MEM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest document an ingest may stream, in bytes [default: 64 MiB].
    #[arg(long, env = "S3MEM_MAX_DOCUMENT_BYTES")]
    pub max_document_bytes: Option<usize>,
    /// Longest question in bytes [default: 4096].
    #[arg(long, env = "S3MEM_MAX_QUESTION_BYTES")]
    pub max_question_bytes: Option<usize>,
    /// Largest evidence budget in tokens [default: 8192].
    #[arg(long, env = "S3MEM_MAX_BUDGET")]
    pub max_budget: Option<usize>,
    /// Most answer tokens a call may ask for [default: 1024].
    #[arg(long, env = "S3MEM_MAX_NEW_TOKENS")]
    pub max_new_tokens: Option<usize>,
    /// Most concurrent calls per connection [default: 64].
    #[arg(long, env = "S3MEM_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Ingests that may wait for the scan thread [default: 8].
    #[arg(long, env = "S3MEM_INGEST_QUEUE_DEPTH")]
    pub ingest_queue_depth: Option<usize>,
    /// Threads that retrieve and answer [default: 2].
    #[arg(long, env = "S3MEM_QUERY_WORKERS")]
    pub query_workers: Option<usize>,
    /// Queries that may wait for a query thread [default: 32].
    #[arg(long, env = "S3MEM_QUERY_QUEUE_DEPTH")]
    pub query_queue_depth: Option<usize>,
}

impl ServeArgs {
    /// Returns the daemon's settings: defaults, then the config file, then flags and variables.
    pub fn config(&self) -> Result<ServeConfig> {
        let mut c = match &self.config {
            Some(path) => ServeConfig::from_file(path)?,
            None => ServeConfig::default(),
        };
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        set(&mut c.listen, &self.listen);
        if self.auth_token_file.is_some() {
            c.auth_token_file.clone_from(&self.auth_token_file);
        }
        if self.tls_cert.is_some() {
            c.tls_cert.clone_from(&self.tls_cert);
        }
        if self.tls_key.is_some() {
            c.tls_key.clone_from(&self.tls_key);
        }
        set(&mut c.shutdown_grace_seconds, &self.shutdown_grace_seconds);
        let l = &mut c.limits;
        set(&mut l.max_message_bytes, &self.max_message_bytes);
        set(&mut l.max_document_bytes, &self.max_document_bytes);
        set(&mut l.max_question_bytes, &self.max_question_bytes);
        set(&mut l.max_budget, &self.max_budget);
        set(&mut l.max_new_tokens, &self.max_new_tokens);
        set(&mut l.max_concurrent_streams, &self.max_concurrent_streams);
        // A lowered maximum carries its default down with it.
        l.default_budget = l.default_budget.min(l.max_budget);
        l.default_new_tokens = l.default_new_tokens.min(l.max_new_tokens);
        let q = &mut c.queues;
        set(&mut q.ingest_queue_depth, &self.ingest_queue_depth);
        set(&mut q.query_workers, &self.query_workers);
        set(&mut q.query_queue_depth, &self.query_queue_depth);
        c.check()?;
        Ok(c)
    }
}

/// Runs `s3mem serve` until SIGINT or SIGTERM.
pub fn serve(args: &ServeArgs, models: &Path) -> Result<()> {
    let config = args.config()?;
    let dir = args.data.dir()?;
    // Opened before listening: a data dir in use fails here, with the lock's path.
    let index = Index::open(
        dir,
        IndexConfig {
            max_document_bytes: config.limits.max_document_bytes,
        },
    )?;
    let model_args = args.model.clone();
    let sae = args
        .sae
        .as_ref()
        .map_or("default".into(), |d| d.display().to_string());
    let scan = args.window.config();
    let models = models.to_path_buf();
    let loader: crate::service::Loader = Box::new(move || {
        let inner = || -> Result<Loaded> {
            let model = load(&model_args, &models)?;
            let saes = load_sae_set(&model, &sae, &models)?;
            Ok(Loaded {
                model: Arc::new(model),
                saes: Arc::new(saes),
                scan,
            })
        };
        inner().map_err(|e| format!("{e:#}"))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("s3mem-async")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = crate::service::start(config, index, loader).await?;
        eprintln!("s3mem: listening on {}", daemon.local_addr());
        let stopper = daemon.stopper();
        tokio::spawn(async move {
            crate::service::shutdown_signal().await;
            eprintln!("s3mem: shutting down");
            stopper.stop();
        });
        daemon.wait().await?;
        eprintln!("s3mem: stopped");
        Ok(())
    })
}
