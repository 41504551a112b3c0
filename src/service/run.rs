//! Starting and stopping the daemon: listen, TLS, the bearer-token check, health, reflection,
//! the model loading in the background, and the graceful shutdown that flushes the stores.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use super::budget::ByteBudget;
use super::config::ServeConfig;
use super::engine::{Engine, Loaded};
use super::error::{Result, ServiceError};
use super::metrics::{self, Metrics, MetricsLayer};
use super::pb;
use super::queue::WorkQueue;
use super::server::MemoryService;
use crate::index::Index;

/// Loads the model side on a blocking thread after the daemon listens.
pub type Loader = Box<dyn FnOnce() -> std::result::Result<Loaded, String> + Send + 'static>;

/// Checks the bearer token of every call it guards, in constant time.
#[derive(Clone)]
pub struct Auth {
    /// sha256 of the token: comparing digests hides the token's length too.
    digest: Option<[u8; 32]>,
}

impl Auth {
    /// Returns a check for `token`, or one that lets every call through.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }
}

/// Returns whether two digests are equal, looking at every byte whatever differs.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the compiler from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let Some(expected) = &self.digest else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            // Exactly the token: a token with spaces around it is another token.
            .map(|t| <[u8; 32]>::from(Sha256::digest(t.as_bytes())));
        match given {
            Some(d) if same_digest(&d, expected) => Ok(request),
            _ => Err(ServiceError::Unauthenticated.into()),
        }
    }
}

/// A running daemon.
pub struct Daemon {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

/// Stops a running daemon from elsewhere (a signal handler).
#[derive(Clone)]
pub struct Stopper(watch::Sender<bool>);

impl Stopper {
    /// Starts the graceful shutdown.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Daemon {
    /// Returns the address the daemon listens on (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the address serving `/metrics`, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Returns a handle that starts the shutdown.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Waits until the daemon has stopped (after [`Stopper::stop`], or a failed model load)
    /// and its stores are flushed.
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| ServiceError::Internal(format!("the daemon task failed: {e}")))?
    }

    /// Stops the daemon gracefully and waits until the stores are flushed.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the daemon");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn read_file(setting: &'static str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ServiceError::Config {
        setting,
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

/// What a daemon needs besides its index, checked: the settings, the bearer token, the TLS
/// identity and the bound listening socket.
pub struct Prepared {
    config: ServeConfig,
    auth: Auth,
    tls: Option<ServerTlsConfig>,
    listener: std::net::TcpListener,
    metrics_listener: Option<std::net::TcpListener>,
}

/// Checks everything `serve` is configured with before anything touches the disk: the
/// settings, the token file, the TLS files (read and parsed) and the listening address (by
/// binding it).
pub fn prepare(config: ServeConfig) -> Result<Prepared> {
    config.check()?;
    let auth = Auth::new(config.auth_token()?.as_deref());
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTlsConfig::new().identity(Identity::from_pem(
            read_file("tls_cert", cert)?,
            read_file("tls_key", key)?,
        ))),
        _ => None,
    };
    if let Some(tls) = &tls {
        // Parses the certificate and key now rather than after the data dir is opened.
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(|e| ServiceError::Config {
                setting: "tls_cert",
                reason: e.to_string(),
            })?;
    }
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| ServiceError::Transport(format!("cannot listen on {}: {e}", config.listen)))?;
    let metrics_listener = config.metrics_listen.map(metrics::bind).transpose()?;
    Ok(Prepared {
        config,
        auth,
        tls,
        listener,
        metrics_listener,
    })
}

/// Starts the daemon on an open index: listens at once (health NOT_SERVING), loads the model
/// with `loader` in the background and reports SERVING when it is in place.
pub async fn start(config: ServeConfig, index: Index, loader: Loader) -> Result<Daemon> {
    start_prepared(prepare(config)?, index, loader).await
}

/// Starts the daemon as [`start`] does, with settings [`prepare`] checked already.
pub async fn start_prepared(prepared: Prepared, index: Index, loader: Loader) -> Result<Daemon> {
    let Prepared {
        config,
        auth,
        tls,
        listener,
        metrics_listener,
    } = prepared;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| ServiceError::Transport(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServiceError::Transport(e.to_string()))?;

    let limits = config.limits.clone();
    let engine = Arc::new(Engine::new(index, limits.clone()));
    let q = &config.queues;
    let service = MemoryService {
        engine: engine.clone(),
        ingest: Arc::new(WorkQueue::new(
            "ingest",
            q.ingest_workers,
            q.ingest_queue_depth,
        )?),
        query: Arc::new(WorkQueue::new(
            "query",
            q.query_workers,
            q.query_queue_depth,
        )?),
        buffers: ByteBudget::new(limits.max_ingest_buffer_bytes),
    };
    let queues = [service.ingest.clone(), service.query.clone()];

    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServiceError::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServiceError::Internal(format!("reflection: {e}")))?;
    let memory = pb::memory_server::MemoryServer::new(service)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);

    let metrics = match metrics_listener {
        Some(l) => {
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(|e| ServiceError::Transport(format!("metrics listener: {e}")))?;
            Some((Arc::new(Metrics::new()?), l))
        }
        None => None,
    };
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(MetricsLayer::new(metrics.as_ref().map(|m| m.0.clone())));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| ServiceError::Config {
            setting: "tls_cert",
            reason: e.to_string(),
        })?;
    }
    let router = builder
        .add_service(health)
        .add_service(InterceptedService::new(memory, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth));

    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_addr = match metrics {
        Some((m, listener)) => {
            let addr = listener
                .local_addr()
                .map_err(|e| ServiceError::Transport(e.to_string()))?;
            let mut stopped = stop_rx.clone();
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let (engine, queues) = (engine.clone(), queues.to_vec());
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(listener, m, engine, queues, stop).await {
                    tracing::error!(error = %e, "the metrics server stopped");
                }
            });
            tracing::info!(%addr, "serving metrics at /metrics");
            Some(addr)
        }
        None => None,
    };
    let load_failure: Arc<Mutex<Option<String>>> = Arc::default();
    spawn_loader(
        loader,
        engine.clone(),
        reporter.clone(),
        stop_tx.clone(),
        load_failure.clone(),
    );

    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let task = tokio::spawn(async move {
        let mut stopped = stop_rx.clone();
        let stop_engine = engine.clone();
        let stop_reporter = reporter.clone();
        let signal = async move {
            let _ = stopped.wait_for(|s| *s).await;
            tracing::info!("shutting down");
            // Running scans and answers stop at their next step; queued work is refused.
            stop_engine.stop();
            set_health(&stop_reporter, ServingStatus::NotServing).await;
        };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        // Boxed, not pinned on the stack: dropping it must drop the services it holds.
        let mut serve = Box::pin(router.serve_with_incoming_shutdown(incoming, signal));
        let mut deadline = None;
        let mut watch_stop = stop_rx;
        let served = loop {
            tokio::select! {
                r = &mut serve => break Some(r),
                _ = watch_stop.wait_for(|s| *s), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    tracing::warn!(seconds = grace.as_secs(), "calls still running after the grace period; stopping anyway");
                    break None;
                }
            }
        };
        // The router (and the services it holds) goes before the engine is flushed and closed.
        drop(serve);
        // One deadline for the whole shutdown. Work still running then is left to the process
        // exit: every write is committed when it lands, so the stores are consistent anyway.
        let end = deadline.map_or_else(|| Instant::now() + grace, tokio::time::Instant::into_std);
        let flushed = tokio::task::spawn_blocking(move || {
            for q in &queues {
                q.close();
            }
            for q in &queues {
                if !q.join_until(end) {
                    tracing::warn!("a worker is still running; its work is not written");
                }
            }
            drop(queues);
            let flushed = engine.flush(end);
            // Other holders are finished jobs' leftovers at most; wait for them until the
            // deadline so the data dir's lock goes with this task.
            let mut engine = engine;
            loop {
                match Arc::try_unwrap(engine) {
                    Ok(e) => {
                        drop(e);
                        break;
                    }
                    Err(e) if Instant::now() < end => {
                        engine = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => {
                        tracing::warn!("the index is still held; the process exit releases it");
                        break;
                    }
                }
            }
            flushed
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("flushing failed: {e}")))?;
        match flushed {
            Ok(true) => tracing::info!("stores flushed"),
            Ok(false) => tracing::warn!(
                "a call still held the index; the store is flushed, its work is not written"
            ),
            Err(e) => return Err(e),
        }
        if let Some(Err(e)) = served {
            return Err(ServiceError::Transport(e.to_string()));
        }
        if let Some(msg) = load_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(ServiceError::Load(msg));
        }
        Ok(())
    });
    tracing::info!(%addr, "listening");
    Ok(Daemon {
        addr,
        metrics_addr,
        stop: stop_tx,
        task,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <pb::memory_server::MemoryServer<MemoryService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

fn spawn_loader(
    loader: Loader,
    engine: Arc<Engine>,
    reporter: tonic_health::server::HealthReporter,
    stop: watch::Sender<bool>,
    failure: Arc<Mutex<Option<String>>>,
) {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let load_engine = engine.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = loader()?;
            load_engine.set_loaded(loaded).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the loader panicked: {e}")));
        match loaded {
            Ok(()) if !engine.is_stopping() => {
                set_health(&reporter, ServingStatus::Serving).await;
                tracing::info!(
                    ms = t0.elapsed().as_millis() as u64,
                    "model loaded; serving"
                );
            }
            Ok(()) => {}
            Err(msg) => {
                tracing::error!(error = %msg, "loading the model failed; stopping");
                *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(msg);
                let _ = stop.send(true);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let mut auth = Auth::new(Some("s3cret"));
        let mut req = Request::new(());
        assert_eq!(
            auth.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        req.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(auth.call(req).is_ok());
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer s3creT".parse().unwrap());
        assert!(auth.call(wrong).is_err());
        for padded in ["Bearer s3cret ", "Bearer  s3cret", "Bearer s3cret\t"] {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", padded.parse().unwrap());
            assert!(auth.call(r).is_err(), "{padded:?}");
        }
        assert!(Auth::new(None).call(Request::new(())).is_ok());
    }
}
