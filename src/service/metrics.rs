//! Prometheus metrics of the daemon (`serve --metrics-listen ADDR`, text format at `/metrics`).
//!
//! Calls are recorded in one place, [`MetricsLayer`], a tower layer around every gRPC service:
//! each call's RPC, final status code (from the response headers of a trailers-only reply, else
//! from the trailers at the end of the body; a body dropped before its end is `Cancelled`) and
//! its duration up to the end of its reply, so a streamed answer counts whole. Everything else
//! is read when scraped, from the state the daemon keeps anyway: queue depths and refusals
//! ([`WorkQueue::state`]), ingest counts ([`Engine::ingested`]), documents and tokens per
//! collection and bytes on disk (the index), and whether the model has loaded. With metrics
//! off the layer passes calls through untouched.
//!
//! Names: `s3mem_grpc_calls_total{rpc,code}`, `s3mem_grpc_call_duration_seconds{rpc}`,
//! `s3mem_queue_{workers,running,waiting,depth}{queue}`, `s3mem_queue_refusals_total{queue}`,
//! `s3mem_ingest_{documents,tokens}_total`, `s3mem_ingest_scan_seconds_total`,
//! `s3mem_ingest_tokens_per_second`, `s3mem_collection_{documents,tokens}{collection}`,
//! `s3mem_index_disk_bytes`, `s3mem_model_loaded`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Counter, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::engine::Engine;
use super::error::{Result, ServiceError};
use super::queue::WorkQueue;

/// Bounds of the call duration buckets, in seconds: from a cached read to a long ingest.
const DURATION_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// The daemon's metrics, in a registry of their own (two daemons in one process do not mix).
pub struct Metrics {
    registry: Registry,
    calls: IntCounterVec,
    duration: HistogramVec,
    queue: [IntGaugeVec; 4],
    refusals: IntCounterVec,
    ingest_documents: IntCounter,
    ingest_tokens: IntCounter,
    ingest_scan_seconds: Counter,
    ingest_rate: Gauge,
    collection_documents: IntGaugeVec,
    collection_tokens: IntGaugeVec,
    disk_bytes: IntGauge,
    model_loaded: IntGauge,
}

fn internal(e: prometheus::Error) -> ServiceError {
    ServiceError::Internal(format!("metrics: {e}"))
}

/// Registers a metric just made in `registry` and returns it.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<C>,
) -> Result<C> {
    let c = made.map_err(internal)?;
    registry.register(Box::new(c.clone())).map_err(internal)?;
    Ok(c)
}

impl Metrics {
    /// Returns the metrics, registered and at zero.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            register(r, IntGaugeVec::new(Opts::new(name, help), &[label]))
        };
        let duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "s3mem_grpc_call_duration_seconds",
                    "Seconds from a call's arrival to the end of its reply, by RPC",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["rpc"],
            ),
        )?;
        Ok(Self {
            calls: counter_vec(
                "s3mem_grpc_calls_total",
                "Finished gRPC calls by RPC and status code",
                &["rpc", "code"],
            )?,
            duration,
            queue: [
                gauge_vec("s3mem_queue_workers", "Worker threads of a queue", "queue")?,
                gauge_vec("s3mem_queue_running", "Jobs running in a queue", "queue")?,
                gauge_vec(
                    "s3mem_queue_waiting",
                    "Jobs waiting in a queue (held places included)",
                    "queue",
                )?,
                gauge_vec(
                    "s3mem_queue_depth",
                    "Most jobs that may wait in a queue",
                    "queue",
                )?,
            ],
            refusals: counter_vec(
                "s3mem_queue_refusals_total",
                "Calls refused because a queue was full (RESOURCE_EXHAUSTED)",
                &["queue"],
            )?,
            ingest_documents: register(
                r,
                IntCounter::new(
                    "s3mem_ingest_documents_total",
                    "Documents ingested since the start",
                ),
            )?,
            ingest_tokens: register(
                r,
                IntCounter::new(
                    "s3mem_ingest_tokens_total",
                    "Tokens ingested since the start",
                ),
            )?,
            ingest_scan_seconds: register(
                r,
                Counter::new(
                    "s3mem_ingest_scan_seconds_total",
                    "Seconds of model scan of those ingests (tokens_total over it: the mean rate)",
                ),
            )?,
            ingest_rate: register(
                r,
                Gauge::new(
                    "s3mem_ingest_tokens_per_second",
                    "Scan speed of the last ingest, in tokens per second",
                ),
            )?,
            collection_documents: gauge_vec(
                "s3mem_collection_documents",
                "Documents per collection",
                "collection",
            )?,
            collection_tokens: gauge_vec(
                "s3mem_collection_tokens",
                "Tokens per collection",
                "collection",
            )?,
            disk_bytes: register(
                r,
                IntGauge::new(
                    "s3mem_index_disk_bytes",
                    "Bytes on disk of the index (store, packs, passage vectors, BM25)",
                ),
            )?,
            model_loaded: register(
                r,
                IntGauge::new(
                    "s3mem_model_loaded",
                    "1 once the model is loaded and calls are served, 0 before",
                ),
            )?,
            registry,
        })
    }

    /// Records one finished call.
    fn record_call(&self, rpc: &str, code: tonic::Code, seconds: f64) {
        self.calls.with_label_values(&[rpc, code_name(code)]).inc();
        self.duration.with_label_values(&[rpc]).observe(seconds);
    }

    /// Reads the daemon's state into the gauges and returns every metric in the text format.
    /// Reads the index: call it off the async workers.
    pub fn render(&self, engine: &Engine, queues: &[Arc<WorkQueue>]) -> Result<String> {
        for q in queues.iter().map(|q| q.state()) {
            let values = [q.workers, q.running, q.waiting, q.depth];
            for (gauge, v) in self.queue.iter().zip(values) {
                gauge
                    .with_label_values(&[q.name])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            let refused = self.refusals.with_label_values(&[q.name]);
            refused.inc_by(q.refused.saturating_sub(refused.get()));
        }
        let counts = engine.ingested();
        self.ingest_documents
            .inc_by(counts.documents.saturating_sub(self.ingest_documents.get()));
        self.ingest_tokens
            .inc_by(counts.tokens.saturating_sub(self.ingest_tokens.get()));
        self.ingest_scan_seconds
            .inc_by((counts.scan_seconds - self.ingest_scan_seconds.get()).max(0.0));
        self.ingest_rate.set(counts.last_tokens_per_second);
        self.model_loaded.set(i64::from(engine.is_ready()));
        {
            let index = engine.read();
            // Dropped collections must not linger.
            self.collection_documents.reset();
            self.collection_tokens.reset();
            for c in index.collections()? {
                let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                self.collection_documents
                    .with_label_values(&[&c.name])
                    .set(clamp(c.documents));
                self.collection_tokens
                    .with_label_values(&[&c.name])
                    .set(clamp(c.tokens));
            }
            self.disk_bytes
                .set(i64::try_from(index.disk_bytes()).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(internal)?;
        String::from_utf8(out).map_err(|e| ServiceError::Internal(format!("metrics: {e}")))
    }
}

/// Returns a status code as gRPC's own names write it (`OK`, `InvalidArgument`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Returns the status code a header map carries in `grpc-status`, if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from(value))
}

/// The tower layer that records every gRPC call (see the module's documentation).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Option<Arc<Metrics>>,
}

impl MetricsLayer {
    /// Returns a layer recording into `metrics` (`None`: it records nothing).
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Recorded {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls [`MetricsLayer`] records.
#[derive(Clone)]
pub struct Recorded<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

/// A call being recorded: written once, when its reply ends or is dropped.
struct CallRecord {
    metrics: Arc<Metrics>,
    rpc: String,
    start: Instant,
    code: Option<tonic::Code>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // No status by the end: the reply was dropped unfinished, the client went away.
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        // Unknown methods would make a label per guess: they share one.
        let rpc = if code == tonic::Code::Unimplemented {
            "unknown"
        } else {
            &self.rpc
        };
        self.metrics
            .record_call(rpc, code, self.start.elapsed().as_secs_f64());
    }
}

/// A reply body that watches for its status and records the call when it ends.
pub struct RecordedBody {
    inner: tonic::body::Body,
    call: Option<CallRecord>,
}

impl http_body::Body for RecordedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(call), Some(code)) = (
                    self.call.as_mut(),
                    frame.trailers_ref().and_then(grpc_status),
                ) {
                    call.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(call) = self.call.as_mut() {
                    call.code = Some(status.code());
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = self.call.take() {
                    // A reply that ends without a status is one the server finished.
                    call.code.get_or_insert(tonic::Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tower::Service<http::Request<B>> for Recorded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RecordedBody>;
    type Error = S::Error;
    type Future = Pin<
        Box<dyn std::future::Future<Output = std::result::Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.metrics.clone().map(|metrics| CallRecord {
            metrics,
            rpc: request.uri().path().trim_start_matches('/').to_string(),
            start: Instant::now(),
            code: None,
        });
        let reply = self.inner.call(request);
        Box::pin(async move {
            let response = reply.await?;
            let mut call = call;
            if let Some(c) = call.as_mut() {
                // A trailers-only reply (most errors) carries its status in the headers.
                c.code = grpc_status(response.headers());
            }
            Ok(response.map(|inner| RecordedBody { inner, call }))
        })
    }
}

/// Serves `/metrics` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    queues: Vec<Arc<WorkQueue>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let render = move || {
        let (metrics, engine, queues) = (metrics.clone(), engine.clone(), queues.clone());
        async move {
            let text = tokio::task::spawn_blocking(move || metrics.render(&engine, &queues))
                .await
                .map_err(|e| ServiceError::Internal(format!("metrics: {e}")))
                .and_then(|r| r);
            match text {
                Ok(text) => (
                    http::StatusCode::OK,
                    [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    text,
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics scrape failed");
                    (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        e.to_string(),
                    )
                }
            }
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

/// Binds the metrics address now, so a bad one fails before the data dir is opened.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| ServiceError::Transport(format!("cannot listen on {addr} for metrics: {e}")))
}
