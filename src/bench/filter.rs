//! `s3mem bench filter`: what a metadata filter and the daemon's metrics cost.
//!
//! Filter: a collection of copies of the corpus's encodings (as `bench retrieve` grows one),
//! each document tagged `tenant=t{i % tenants}`, is asked filtered to one tenant; a second data
//! dir holds only that tenant's documents (the same encodings and ids) and is asked unfiltered.
//! The target: the filtered question's retrieve p50 at most 10% above the small dir's.
//!
//! Metrics: the small dir served by the in-process daemon, alternately without and with
//! `metrics_listen`, timing whole Retrieve calls from a gRPC client (the recording sits in the
//! call path, so the question's forward pass is included). The target: p50 within 2%.

use std::path::PathBuf;
use std::time::Instant;

use super::retrieve::{scan_corpus, ScannedDocument};
use super::{BenchError, Log, Result};
use crate::index::{Index, IndexConfig, NewDocument};
use crate::ingest::Encoder;
use crate::retrieve::{Filter, Method, Query, Retriever};
use crate::service::{pb, Loaded, ServeConfig};

/// What `bench filter` measures.
#[derive(Debug, Clone)]
pub struct FilterBench {
    /// A folder for the two data dirs (`all/` and `tenant/`, reused when they hold the corpus).
    pub dir: PathBuf,
    /// Documents scanned once and stored in copies.
    pub corpus: Vec<PathBuf>,
    /// Tokens of the large collection.
    pub tokens: usize,
    /// Tenants the documents are spread over (100: the filter keeps 1% of them).
    pub tenants: usize,
    /// Questions asked in turn.
    pub questions: Vec<String>,
    /// Retrievals per measurement.
    pub runs: usize,
    /// Evidence budget in tokens.
    pub budget: usize,
    /// The method.
    pub method: Method,
    /// Rounds of the metrics comparison (each runs the daemon without, then with metrics).
    pub metrics_rounds: usize,
}

/// The filter measurement.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FilterRow {
    /// Tokens and documents of the large collection.
    pub tokens: u64,
    /// Documents of the large collection.
    pub documents: usize,
    /// Documents and tokens the filter keeps.
    pub kept_documents: usize,
    /// Tokens of those.
    pub kept_tokens: u64,
    /// Median retrieve ms (forward pass excluded), filtered over the large collection.
    pub filtered_p50_ms: f64,
    /// Median retrieve ms, unfiltered over a data dir of the kept documents alone.
    pub alone_p50_ms: f64,
}

/// The metrics measurement.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MetricsRow {
    /// Median ms of a whole Retrieve call without metrics.
    pub off_p50_ms: f64,
    /// Median ms of a whole Retrieve call with metrics recording.
    pub on_p50_ms: f64,
    /// Calls timed each way.
    pub calls: usize,
}

impl FilterRow {
    /// Returns the filtered p50 over the alone p50, minus one, in percent.
    pub fn overhead_percent(&self) -> f64 {
        (self.filtered_p50_ms / self.alone_p50_ms - 1.0) * 100.0
    }
}

impl MetricsRow {
    /// Returns the on p50 over the off p50, minus one, in percent.
    pub fn overhead_percent(&self) -> f64 {
        (self.on_p50_ms / self.off_p50_ms - 1.0) * 100.0
    }
}

const COLLECTION: &str = "bench";

/// Stores copies of `corpus` into `index` until it holds `tokens`, tagging document `i` with
/// `tenant=t{i % tenants}`; with `only`, stores only that tenant's documents (the same ids).
fn grow(
    index: &mut Index,
    encoder: &Encoder<'_>,
    corpus: &[ScannedDocument],
    tokens: usize,
    tenants: usize,
    only: Option<&str>,
) -> Result<()> {
    if index.collection_id(COLLECTION).is_err() {
        index.create_collection(COLLECTION)?;
    }
    if !index.documents(COLLECTION)?.is_empty() {
        return Ok(());
    }
    let (mut stored, mut i) = (0usize, 0usize);
    while stored < tokens {
        for (name, text, encoded) in corpus {
            let tenant = format!("t{}", i % tenants);
            stored += encoded.tokens();
            i += 1;
            if only.is_some_and(|t| t != tenant) {
                continue;
            }
            index.store_encoded(
                NewDocument {
                    collection: COLLECTION,
                    id: Some(format!("copy-{i}-{name}")),
                    meta: vec![("tenant".into(), tenant)],
                    text,
                },
                encoded,
                encoder.identity(),
            )?;
        }
    }
    index.commit()?;
    Ok(())
}

/// Returns the p50 of `runs` retrievals (the `retrieve` timing, forward pass excluded).
fn retrieve_p50(
    index: &Index,
    retriever: &Retriever<'_>,
    bench: &FilterBench,
    filter: Option<&Filter>,
) -> Result<f64> {
    let mut lat = Vec::with_capacity(bench.runs);
    for run in 0..bench.runs {
        let e = retriever.retrieve(
            index,
            &Query {
                collection: COLLECTION.into(),
                docs: Vec::new(),
                question: bench.questions[run % bench.questions.len()].clone(),
                budget: bench.budget,
                method: bench.method,
                trace: false,
                filter: filter.cloned(),
            },
        )?;
        lat.push(e.timings_ms.get("retrieve").copied().unwrap_or(0.0));
    }
    Ok(super::quantile(&mut lat, 0.5).unwrap_or(0.0))
}

/// Builds (or reuses) both data dirs and measures the filtered question against the small dir.
pub fn filter(
    encoder: &Encoder<'_>,
    retriever: &Retriever<'_>,
    bench: &FilterBench,
    log: Log<'_>,
) -> Result<FilterRow> {
    if bench.runs == 0 || bench.questions.is_empty() || bench.tenants == 0 {
        return Err(BenchError::Input(
            "bench filter needs at least one run, question and tenant".into(),
        ));
    }
    let corpus = scan_corpus(encoder, COLLECTION, &bench.corpus, log)?;
    let filter = Filter::OneOf {
        key: "tenant".into(),
        values: vec!["t0".into()],
    };
    let (tokens, documents, kept_documents, kept_tokens, filtered_p50_ms) = {
        let mut all = Index::open(&bench.dir.join("all"), IndexConfig::default())?;
        log("storing the large collection");
        grow(
            &mut all,
            encoder,
            &corpus,
            bench.tokens,
            bench.tenants,
            None,
        )?;
        let docs = all.documents(COLLECTION)?;
        let kept: Vec<_> = docs
            .iter()
            .filter(|d| d.meta.iter().any(|(k, v)| k == "tenant" && v == "t0"))
            .collect();
        let p50 = retrieve_p50(&all, retriever, bench, Some(&filter))?;
        (
            docs.iter().map(|d| u64::from(d.tokens)).sum(),
            docs.len(),
            kept.len(),
            kept.iter().map(|d| u64::from(d.tokens)).sum(),
            p50,
        )
    };
    let mut alone = Index::open(&bench.dir.join("tenant"), IndexConfig::default())?;
    log("storing the tenant's documents alone");
    grow(
        &mut alone,
        encoder,
        &corpus,
        bench.tokens,
        bench.tenants,
        Some("t0"),
    )?;
    let alone_p50_ms = retrieve_p50(&alone, retriever, bench, None)?;
    Ok(FilterRow {
        tokens,
        documents,
        kept_documents,
        kept_tokens,
        filtered_p50_ms,
        alone_p50_ms,
    })
}

/// Serves the tenant's data dir (made by [`filter`]) without and with metrics in turn and
/// times whole Retrieve calls; `loaded` makes the model side of each daemon.
pub fn metrics(
    bench: &FilterBench,
    loaded: &dyn Fn() -> Loaded,
    log: Log<'_>,
) -> Result<MetricsRow> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Input(format!("starting the async runtime: {e}")))?;
    let service = |e: crate::service::ServiceError| BenchError::Input(format!("daemon: {e}"));
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..bench.metrics_rounds.max(1) {
        for with_metrics in [false, true] {
            log(&format!(
                "round {}: metrics {}",
                round + 1,
                if with_metrics { "on" } else { "off" }
            ));
            let config = ServeConfig {
                listen: "127.0.0.1:0".parse().expect("a loopback address"),
                metrics_listen: with_metrics.then(|| "127.0.0.1:0".parse().expect("loopback")),
                ..ServeConfig::default()
            };
            let index = Index::open(&bench.dir.join("tenant"), IndexConfig::default())?;
            let parts = loaded();
            let times = runtime.block_on(async {
                let daemon = crate::service::start(config, index, Box::new(move || Ok(parts)))
                    .await
                    .map_err(service)?;
                let url = format!("http://{}", daemon.local_addr());
                let mut client = pb::memory_client::MemoryClient::connect(url)
                    .await
                    .map_err(|e| BenchError::Input(format!("connecting: {e}")))?;
                let mut times = Vec::new();
                // The first calls wait for the model and warm the caches: not timed.
                let mut run = 0usize;
                while times.len() < bench.runs {
                    let request = pb::RetrieveRequest {
                        collection: COLLECTION.into(),
                        question: bench.questions[run % bench.questions.len()].clone(),
                        budget: u32::try_from(bench.budget).unwrap_or(u32::MAX),
                        method: crate::service::convert::method_to_pb(bench.method) as i32,
                        ..Default::default()
                    };
                    let t = Instant::now();
                    let reply = client.retrieve(request).await;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    match reply {
                        Ok(_) if run >= bench.questions.len() => times.push(ms),
                        Ok(_) => {}
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(s) => return Err(BenchError::Input(format!("retrieve: {s}"))),
                    }
                    run += 1;
                }
                daemon.shutdown().await.map_err(service)?;
                Ok::<_, BenchError>(times)
            })?;
            if with_metrics {
                on.extend(times);
            } else {
                off.extend(times);
            }
        }
    }
    let calls = off.len();
    Ok(MetricsRow {
        off_p50_ms: super::quantile(&mut off, 0.5).unwrap_or(0.0),
        on_p50_ms: super::quantile(&mut on, 0.5).unwrap_or(0.0),
        calls,
    })
}
