//! `s3mem serve`: wiring of the gRPC daemon (src/service).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::args::{DataDirArgs, ModelArgs, WindowArgs};
use super::load::{load, load_embedder, load_sae_set, load_second};
use crate::index::{Index, IndexConfig};
use crate::model::Model;
use crate::service::{Loaded, Reader, Reranking, Retrieval, ServeConfig, ServeSettings};

/// `s3mem serve`: every daemon setting is a flag, an `S3MEM_*` environment variable and a key
/// of the config file; a flag wins over its variable, which wins over the file, which wins
/// over the default.
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
    /// Print the merged daemon settings as TOML and exit without serving.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: ServeSettings,
}

impl ServeArgs {
    /// Returns the daemon's settings: flags and variables over the config file over the
    /// defaults, checked together.
    pub fn config(&self) -> Result<ServeConfig> {
        Ok(ServeConfig::merge(&self.settings, self.config.as_deref())?)
    }
}

/// Runs `s3mem serve` until SIGINT or SIGTERM.
pub fn serve(args: &ServeArgs, models: &Path) -> Result<()> {
    let config = args.config()?;
    if args.print_config {
        print!(
            "{}",
            toml::to_string(&config).context("writing the settings as TOML")?
        );
        return Ok(());
    }
    // Everything that can be wrong with the settings fails here, before the data dir is
    // created: the token file, the TLS files, the listening address (bound now).
    let prepared = crate::service::prepare(config.clone())?;
    let dir = args.data.dir()?;
    // Opened before serving: a data dir in use fails here, with the lock's path.
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
    let reader_names = config.answer_model.clone();
    let answer_mode = config.answer_mode;
    let abstain_signal = config.abstain_signal;
    let default_method = config.default_method;
    let rerank = config.rerank.clone();
    let limits = config.limits.clone();
    let loader: crate::service::Loader = Box::new(move || {
        let inner = || -> Result<Loaded> {
            let model = Arc::new(load(&model_args, &models)?);
            let saes = load_sae_set(&model, &sae, &models)?;
            // Each second model once, at start: a call only picks one.
            let second = |name: &str| -> Result<Arc<Model>> {
                Ok(load_second(Some(name), &model_args, &models)?
                    .map_or_else(|| model.clone(), Arc::new))
            };
            let mut readers = Vec::new();
            for name in reader_names {
                let model = second(&name)?;
                readers.push(Reader { name, model });
            }
            let reranking = match rerank.config() {
                Some(config) => {
                    // A reader of the same name is the same model: not loaded twice.
                    let model = match rerank.rerank_model.as_deref() {
                        None => None,
                        Some(name) => match readers.iter().find(|r| r.name == name) {
                            Some(r) => Some(r.model.clone()),
                            None => Some(second(name)?),
                        },
                    };
                    Some(Reranking { config, model })
                }
                None => None,
            };
            let embedder = load_embedder(&model_args, &models)?;
            let loaded = Loaded {
                model,
                saes: Arc::new(saes),
                scan,
                readers,
                answer_mode,
                abstain_signal,
                embedder: embedder.map(Arc::new),
                retrieval: Retrieval {
                    default_method,
                    rerank: reranking,
                },
            };
            // Checked before it is announced (the engine checks again as it installs it).
            loaded.check_retrieval(&limits)?;
            if let Some(r) = &loaded.retrieval.rerank {
                let by = rerank.rerank_model.as_deref().unwrap_or("the index model");
                eprintln!("s3mem: re-ranking with heads {} of {by}", r.config.heads);
            }
            Ok(loaded)
        };
        inner().map_err(|e| format!("{e:#}"))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("s3mem-async")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let daemon = crate::service::start_prepared(prepared, index, loader).await?;
        eprintln!("s3mem: listening on {}", daemon.local_addr());
        if let Some(addr) = daemon.metrics_addr() {
            eprintln!("s3mem: metrics at http://{addr}/metrics");
        }
        let stopper = daemon.stopper();
        tokio::spawn(async move {
            crate::service::shutdown_signal().await;
            eprintln!("s3mem: shutting down");
            stopper.stop();
        });
        daemon.wait().await?;
        eprintln!("s3mem: stopped");
        Ok(())
    });
    // A blocking task still running (a model load) must not hold the exit past the grace
    // period the daemon kept.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    served
}
