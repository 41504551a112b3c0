//! What the daemon does, without gRPC: the open index shared by readers and one writer at a
//! time, the model and SAE set once loaded, and each operation as a blocking function that the
//! server runs on a work queue or the blocking pool.
//!
//! Sharing the index: sled and tantivy both serve concurrent readers, so reads (retrieve, ask,
//! listings, stats) take the `RwLock` shared; writes take it alone, and only for the store
//! step. An ingest scans without the lock (the slow part, minutes for a long document) and
//! takes it only to write the finished document, so questions are answered during a scan.
//!
//! Ingests that finish their scans together share the store step: each puts its document in a
//! queue and waits for the write lock; whoever takes it first stores every document waiting
//! (up to [`STORE_GROUP_DOCUMENTS`]) as one group ([`Index::group`]: one batch, one flush, one
//! BM25 commit) and answers each call, which returns once its document is durable.
//!
//! Every write first takes the write admission, a mutex in front of the lock: a snapshot holds
//! the admission while it copies the files, and reads the index shared meanwhile, so writes
//! wait and questions do not (a writer waiting on the `RwLock` itself would hold new readers
//! back).

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::{Duration, Instant};

use super::config::Limits;
use super::error::{Result, ServiceError};
use crate::answer::{self, AbstainSignal, Answer, AnswerConfig, AnswerMode};
use crate::embed::Embedder;
use crate::index::{
    snapshot::Manifest, CollectionInfo, DocumentInfo, DocumentPage, EncodedDocument, Index,
    IndexError, Ingested, NewDocument, Stats, StoreIdentity,
};
use crate::ingest::{self, Encoder, IngestError};
use crate::model::{Model, ModelError, ScanConfig};
use crate::retrieve::rerank::RerankConfig;
use crate::retrieve::{Evidence, Method, Query, RetrieveConfig, RetrieveError, Retriever};
use crate::sae::SaeSet;

/// The model side of the daemon, loaded once after start-up.
pub struct Loaded {
    /// The LLM.
    pub model: Arc<Model>,
    /// Its SAE set.
    pub saes: Arc<SaeSet>,
    /// The scan geometry documents are ingested with.
    pub scan: ScanConfig,
    /// The embedding model of the dense methods, when the daemon has one.
    pub embedder: Option<Arc<Embedder>>,
    /// The readers loaded at start (`answer_model`), the first the default; empty: the index
    /// model answers.
    pub readers: Vec<Reader>,
    /// How readers answer calls that name no mode (`answer_mode`).
    pub answer_mode: AnswerMode,
    /// The signal of the readers' calibrated abstention (`abstain_signal`).
    pub abstain_signal: AbstainSignal,
    /// The method of calls that name none and attention re-ranking.
    pub retrieval: Retrieval,
}

/// How the daemon retrieves besides each call's own fields.
#[derive(Clone)]
pub struct Retrieval {
    /// The method of calls that send `METHOD_UNSPECIFIED` (`default_method`).
    pub default_method: Method,
    /// Attention re-ranking (the `[rerank]` settings); `None`: `METHOD_RERANK` is refused.
    pub rerank: Option<Reranking>,
}

impl Default for Retrieval {
    fn default() -> Self {
        Self {
            default_method: Method::Hybrid,
            rerank: None,
        }
    }
}

/// Attention re-ranking as the daemon runs it: the heads and pool, and the model that reads it.
#[derive(Clone)]
pub struct Reranking {
    /// The heads, the pool and the first stage's weight.
    pub config: RerankConfig,
    /// The model whose attention re-ranks (`rerank_model`), loaded once at start; `None`: the
    /// index model.
    pub model: Option<Arc<Model>>,
}

/// A model that answers from evidence, loaded once at start and named as the settings name it.
pub struct Reader {
    /// Its name in the settings and in `AskRequest.answer_model` (a known name or a path).
    pub name: String,
    /// The model.
    pub model: Arc<Model>,
}

impl Loaded {
    /// Returns the reader `name` names (empty: the default reader), or an invalid-argument
    /// error listing the loaded ones.
    pub fn reader(&self, name: &str) -> Result<Arc<Model>> {
        if name.is_empty() {
            return Ok(self
                .readers
                .first()
                .map_or_else(|| self.model.clone(), |r| r.model.clone()));
        }
        if let Some(r) = self.readers.iter().find(|r| r.name == name) {
            return Ok(r.model.clone());
        }
        let loaded: Vec<&str> = self.readers.iter().map(|r| r.name.as_str()).collect();
        Err(ServiceError::invalid(
            "answer_model",
            format!(
                "no reader `{name}` is loaded (loaded: {}; the daemon loads readers at start: \
                 --answer-model)",
                if loaded.is_empty() {
                    "only the index model, as the default".to_string()
                } else {
                    loaded.join(", ")
                }
            ),
        ))
    }

    /// Refuses re-ranking settings the models cannot run and a default method the daemon
    /// cannot serve, naming the setting: checked once at start, not on every call.
    pub fn check_retrieval(&self, limits: &Limits) -> Result<()> {
        let bad = |setting, reason: String| Err(ServiceError::Config { setting, reason });
        if let Some(r) = &self.retrieval.rerank {
            let c = r.model.as_deref().unwrap_or(&self.model).config();
            if let Err(e) = r.config.heads.check(c.layers, c.heads) {
                return bad("heads", format!("{e} (the re-ranking model)"));
            }
            let room = r.config.pool_tokens + limits.max_question_tokens;
            if room > c.context {
                return bad(
                    "pool_tokens",
                    format!(
                        "{} tokens of pool and {} of question (max_question_tokens) are more \
                         than the re-ranking model's window of {}",
                        r.config.pool_tokens, limits.max_question_tokens, c.context
                    ),
                );
            }
        }
        match self.retrieval.default_method {
            Method::Rerank if self.retrieval.rerank.is_none() => bad(
                "default_method",
                "rerank needs retrieval heads: set heads (--heads L.H,...)".into(),
            ),
            m @ (Method::Dense | Method::Rag) if self.embedder.is_none() => bad(
                "default_method",
                format!("{m} needs the embedding model: run `s3mem model fetch minilm`"),
            ),
            _ => Ok(()),
        }
    }

    /// Refuses a method the daemon was not started with the settings for, naming them.
    pub fn check_method(&self, method: Method) -> Result<()> {
        if method == Method::Rerank && self.retrieval.rerank.is_none() {
            return Err(ServiceError::NotConfigured {
                method,
                how: "--heads L.H,... (S3MEM_HEADS, or heads under [rerank] in the config file)",
            });
        }
        Ok(())
    }

    /// Returns the encoder of ingests.
    fn encoder(&self) -> Result<Encoder<'_>> {
        Ok(Encoder::new(&self.model, &self.saes, self.scan)?
            .with_embedder(self.embedder.as_deref()))
    }
}

/// A flag a call sets when its caller goes away; workers check it between steps.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Returns whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cancels its [`Cancel`] when dropped: a call's future holds it, and tonic drops that future
/// when the client disconnects.
#[derive(Debug, Default)]
pub struct CancelOnDrop(Cancel);

impl CancelOnDrop {
    /// Returns the token the worker checks.
    pub fn token(&self) -> Cancel {
        self.0.clone()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0 .0.store(true, Ordering::Relaxed);
    }
}

/// A document received over the network, before it is scanned.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The collection.
    pub collection: String,
    /// External id, or `None` to generate one.
    pub id: Option<String>,
    /// Metadata in order.
    pub meta: Vec<(String, String)>,
    /// The text.
    pub text: String,
}

impl Upload {
    fn document(&self) -> NewDocument<'_> {
        NewDocument {
            collection: &self.collection,
            id: self.id.clone(),
            meta: self.meta.clone(),
            text: &self.text,
        }
    }
}

/// Most scanned documents one ingest stores as a group for itself and the calls waiting with
/// it (at most one per ingest worker wait, so this only caps a very wide pool).
pub const STORE_GROUP_DOCUMENTS: usize = 64;

/// A scanned document waiting for the write lock, and where its call waits for the answer.
struct Waiting {
    upload: Upload,
    encoded: EncodedDocument,
    cancel: Cancel,
    reply: SyncSender<Result<Ingested>>,
}

/// The index taken alone for a write, behind the write admission.
pub struct Writing<'a> {
    index: RwLockWriteGuard<'a, Index>,
    _admission: MutexGuard<'a, ()>,
}

impl std::ops::Deref for Writing<'_> {
    type Target = Index;

    fn deref(&self) -> &Index {
        &self.index
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Index {
        &mut self.index
    }
}

/// The daemon's state: index, model, limits, and whether it is stopping.
pub struct Engine {
    index: RwLock<Index>,
    /// Taken by every write before the index's write lock, and by a snapshot for its copy.
    admission: Mutex<()>,
    loaded: OnceLock<Loaded>,
    limits: Limits,
    stopping: AtomicBool,
    ingested: IngestTally,
    /// Scanned documents waiting to be stored, in arrival order.
    waiting: Mutex<VecDeque<Waiting>>,
}

/// What the daemon has ingested since it started (read by the metrics).
#[derive(Debug, Default)]
pub struct IngestTally {
    documents: AtomicU64,
    tokens: AtomicU64,
    /// Microseconds of scanning (the model's part of an ingest).
    scan_micros: AtomicU64,
    /// Tokens per second of the last ingest's scan, as f64 bits.
    last_rate: AtomicU64,
}

/// A reading of [`IngestTally`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IngestCounts {
    /// Documents ingested.
    pub documents: u64,
    /// Their tokens.
    pub tokens: u64,
    /// Seconds their scans took.
    pub scan_seconds: f64,
    /// Tokens per second of the last scan (0 before the first).
    pub last_tokens_per_second: f64,
}

impl IngestTally {
    fn add(&self, tokens: u64, scan_seconds: f64) {
        self.documents.fetch_add(1, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        self.scan_micros
            .fetch_add((scan_seconds * 1e6) as u64, Ordering::Relaxed);
        if scan_seconds > 0.0 {
            let rate = tokens as f64 / scan_seconds;
            self.last_rate.store(rate.to_bits(), Ordering::Relaxed);
        }
    }

    /// Returns the counts so far.
    pub fn read(&self) -> IngestCounts {
        IngestCounts {
            documents: self.documents.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            scan_seconds: self.scan_micros.load(Ordering::Relaxed) as f64 / 1e6,
            last_tokens_per_second: f64::from_bits(self.last_rate.load(Ordering::Relaxed)),
        }
    }
}

impl Engine {
    /// Returns an engine over an open index; the model comes later ([`Engine::set_loaded`]).
    pub fn new(index: Index, limits: Limits) -> Self {
        Self {
            index: RwLock::new(index),
            admission: Mutex::new(()),
            loaded: OnceLock::new(),
            limits,
            stopping: AtomicBool::new(false),
            ingested: IngestTally::default(),
            waiting: Mutex::new(VecDeque::new()),
        }
    }

    /// Returns the per-call limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Returns what the daemon has ingested since it started.
    pub fn ingested(&self) -> IngestCounts {
        self.ingested.read()
    }

    /// Installs the model and SAE set, refusing them if the index was built with others;
    /// first embeds the passages of stored documents that lack vectors from the embedding
    /// model (one document at a time, so reads go on meanwhile).
    pub fn set_loaded(&self, loaded: Loaded) -> Result<()> {
        loaded.check_retrieval(&self.limits)?;
        self.read().check_identity(loaded.encoder()?.identity())?;
        if let Some(embedder) = &loaded.embedder {
            self.embed_missing(embedder)?;
        }
        if self.loaded.set(loaded).is_err() {
            return Err(ServiceError::Internal("the model was loaded twice".into()));
        }
        Ok(())
    }

    /// Embeds and stores the passages of every document without vectors from `embedder`; a
    /// document deleted or replaced meanwhile is skipped (its replacement was embedded at
    /// ingest). Stops early when the daemon stops.
    fn embed_missing(&self, embedder: &Embedder) -> Result<()> {
        let todo = self
            .read()
            .documents_without_vectors(embedder.fingerprint())?;
        if !todo.is_empty() {
            tracing::info!(
                documents = todo.len(),
                "embedding the passages of stored documents"
            );
        }
        for key in todo {
            if self.is_stopping() {
                break;
            }
            // Read under the lock, embedded outside it; a document deleted since the list was
            // made has no text to read: skipped.
            let passages = self.read().passages_of(key.cid, key.doc);
            let Ok(passages) = passages else {
                continue;
            };
            let vectors = ingest::vectors::embed_pieces(embedder, passages)?;
            match self.write().put_vectors(key, &vectors) {
                Ok(()) | Err(IndexError::InvalidInput(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Returns whether the model is loaded.
    pub fn is_ready(&self) -> bool {
        self.loaded.get().is_some()
    }

    /// Returns the model side, or why work cannot start now.
    pub fn loaded(&self) -> Result<&Loaded> {
        if self.is_stopping() {
            return Err(ServiceError::ShuttingDown);
        }
        self.loaded.get().ok_or(ServiceError::NotReady)
    }

    /// Makes running and queued work stop at its next check.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Returns whether the daemon is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Returns the index for reading, shared with other readers.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        // A panic under the lock cannot leave a half-applied write: sled batches are atomic.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the index alone for a write, once no snapshot is being copied.
    fn write(&self) -> Writing<'_> {
        let admission = self.admit();
        Writing {
            index: self.index.write().unwrap_or_else(PoisonError::into_inner),
            _admission: admission,
        }
    }

    fn admit(&self) -> MutexGuard<'_, ()> {
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a snapshot of the data dir to `out` (see [`crate::index::snapshot`]): writes wait
    /// from the start until the last file is copied; questions are answered meanwhile, held
    /// back only for the commit and flush before the copy.
    pub fn snapshot(&self, out: &mut dyn Write) -> Result<Manifest> {
        let _admission = self.admit();
        let merges = self
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .quiesce()?;
        // Outside the index lock: a merge can take a moment, and only writes must wait.
        merges.wait()?;
        let manifest = self.read().write_snapshot(out)?;
        tracing::info!(
            files = manifest.files.len(),
            bytes = manifest.bytes(),
            "snapshot written"
        );
        Ok(manifest)
    }

    /// Fails when the daemon stops or the caller went away.
    pub fn check_live(&self, cancel: &Cancel) -> Result<()> {
        if self.is_stopping() {
            Err(ServiceError::ShuttingDown)
        } else if cancel.is_cancelled() {
            Err(ServiceError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Returns why work that was told to stop stopped: the daemon's shutdown, or else the
    /// caller's cancel.
    fn stop_reason(&self) -> ServiceError {
        if self.is_stopping() {
            ServiceError::ShuttingDown
        } else {
            ServiceError::Cancelled
        }
    }

    /// Scans, encodes and stores a document; nothing is written if the scan fails, the caller
    /// goes away or the daemon stops before the store step. The document is stored in a group
    /// with the documents of other calls waiting at the same time (see the module's notes), and
    /// is durable and searchable when this returns.
    pub fn ingest(&self, upload: &Upload, cancel: &Cancel) -> Result<Ingested> {
        let loaded = self.loaded()?;
        self.check_live(cancel)?;
        let encoder = loaded.encoder()?;
        let doc = upload.document();
        ingest::check_document(&encoder, &self.read(), &doc)?;
        let encoded = ingest::encode_document(&encoder, &doc, &mut |done, total| {
            tracing::trace!(done, total, "scan progress");
            !self.is_stopping() && !cancel.is_cancelled()
        })
        .map_err(|e| match e {
            IngestError::Model(ModelError::Aborted) => self.stop_reason(),
            e => e.into(),
        })?;
        let (reply, answer) = sync_channel(1);
        self.queue_lock().push_back(Waiting {
            upload: upload.clone(),
            encoded,
            cancel: cancel.clone(),
            reply,
        });
        loop {
            let mut index = self.write();
            // Another call's group may have stored this document while this one waited.
            if let Ok(out) = answer.try_recv() {
                return out;
            }
            self.store_waiting(&mut index, encoder.identity());
            if let Ok(out) = answer.try_recv() {
                return out;
            }
        }
    }

    fn queue_lock(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the documents waiting (the oldest [`STORE_GROUP_DOCUMENTS`]) and answers their
    /// calls: one group, or when it fails, each document alone, so that every call gets its
    /// own document's answer.
    fn store_waiting(&self, index: &mut Index, identity: &StoreIdentity) {
        let waiting: Vec<Waiting> = {
            let mut queue = self.queue_lock();
            let n = queue.len().min(STORE_GROUP_DOCUMENTS);
            queue.drain(..n).collect()
        };
        // Checked under the write lock: past this point a document is written whole.
        let live: Vec<Waiting> = waiting
            .into_iter()
            .filter_map(|w| match self.check_live(&w.cancel) {
                Ok(()) => Some(w),
                Err(e) => {
                    let _ = w.reply.send(Err(e));
                    None
                }
            })
            .collect();
        if live.len() > 1 {
            match self.store_group(index, identity, &live) {
                Ok(stored) => {
                    for (w, out) in live.into_iter().zip(stored) {
                        let _ = w.reply.send(Ok(out));
                    }
                    return;
                }
                Err(e) => tracing::warn!(
                    documents = live.len(),
                    error = %e,
                    "storing scanned documents as a group failed; storing each alone"
                ),
            }
        }
        for w in live {
            let out = self
                .store_group(index, identity, std::slice::from_ref(&w))
                .map(|mut stored| stored.remove(0));
            let _ = w.reply.send(out);
        }
    }

    /// Stores `docs` as one group and commits BM25; each document's `store_seconds` is its
    /// share (by tokens) of the whole.
    fn store_group(
        &self,
        index: &mut Index,
        identity: &StoreIdentity,
        docs: &[Waiting],
    ) -> Result<Vec<Ingested>> {
        let t0 = Instant::now();
        let mut group = index.group(identity);
        for w in docs {
            group.add(w.upload.document(), &w.encoded)?;
        }
        let tokens = group.tokens().max(1) as f64;
        let mut stored = group.commit()?;
        index.commit()?;
        // The commit makes the passages searchable: part of storing, as the caller sees it.
        let seconds = t0.elapsed().as_secs_f64();
        for (out, w) in stored.iter_mut().zip(docs) {
            out.store_seconds = seconds * out.tokens as f64 / tokens;
            tracing::info!(id = %out.id, tokens = out.tokens, collection = %w.upload.collection, "document ingested");
            self.ingested.add(out.tokens as u64, out.scan_seconds);
        }
        Ok(stored)
    }

    /// Retrieves the evidence for a question (the index shared with other readers); stops
    /// between stages when the caller goes away or the daemon stops.
    pub fn retrieve(&self, query: &Query, cancel: &Cancel) -> Result<Evidence> {
        self.retrieve_until(query, &|| cancel.is_cancelled())
    }

    /// Retrieves as [`Engine::retrieve`] does, asking `gone` whether the caller went away.
    ///
    /// The question is tokenized and held to `max_question_tokens` before its forward pass:
    /// the bytes limit alone lets a question of emoji cost seconds of model time per call.
    pub fn retrieve_until(&self, query: &Query, gone: &dyn Fn() -> bool) -> Result<Evidence> {
        let loaded = self.loaded()?;
        loaded.check_method(query.method)?;
        let stopped = || self.is_stopping() || gone();
        if stopped() {
            return Err(self.stop_reason());
        }
        let tokens = loaded.model.tokenizer().encode_ids(&query.question)?.len();
        let limit = self.limits.max_question_tokens;
        if tokens > limit {
            return Err(ServiceError::invalid(
                "question",
                format!("has {tokens} tokens, over the limit of {limit} (max_question_tokens)"),
            ));
        }
        let config = RetrieveConfig {
            max_question_chars: self.limits.max_question_bytes,
            rerank: loaded.retrieval.rerank.as_ref().map(|r| r.config.clone()),
            ..RetrieveConfig::default()
        };
        let reranker = loaded
            .retrieval
            .rerank
            .as_ref()
            .and_then(|r| r.model.as_deref());
        let retriever = Retriever::new(&loaded.model, &loaded.saes, config)?
            .with_embedder(loaded.embedder.as_deref())
            .with_reranker(reranker);
        let index = self.read();
        retriever
            .retrieve_until(&index, query, &stopped)
            .map_err(|e| match e {
                RetrieveError::Cancelled => self.stop_reason(),
                e => e.into(),
            })
    }

    /// Answers from `evidence` with `reader` (see [`Loaded::reader`]), calling `on_text` with
    /// each piece (`false` stops); stops too when the daemon does.
    pub fn answer(
        &self,
        reader: &Model,
        evidence: &Evidence,
        config: &AnswerConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        let out = answer::answer(reader, evidence, config, &mut |piece| {
            on_text(piece) && !self.is_stopping()
        })?;
        if out.stop == crate::model::StopReason::Cancelled {
            return Err(self.stop_reason());
        }
        Ok(out)
    }

    /// Creates a collection.
    pub fn create_collection(&self, name: &str) -> Result<()> {
        Ok(self.write().create_collection(name)?)
    }

    /// Lists the collections.
    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        Ok(self.read().collections()?)
    }

    /// Drops a collection and its documents.
    pub fn drop_collection(&self, name: &str) -> Result<()> {
        Ok(self.write().drop_collection(name)?)
    }

    /// Lists at most `limit` documents of a collection from document number `from` on, and
    /// the number of the next one (see [`Index::documents_page`]).
    pub fn documents_page(
        &self,
        collection: &str,
        from: u32,
        limit: usize,
    ) -> Result<DocumentPage> {
        Ok(self.read().documents_page(collection, from, limit)?)
    }

    /// Returns a document's record and its text (or a char range of it).
    pub fn document(
        &self,
        collection: &str,
        id: &str,
        chars: Option<Range<usize>>,
    ) -> Result<(DocumentInfo, String)> {
        let index = self.read();
        let info = index.document(collection, id)?;
        let text = index.text(collection, id, chars)?;
        Ok((info, text))
    }

    /// Deletes a document.
    pub fn delete(&self, collection: &str, id: &str) -> Result<()> {
        Ok(self.write().delete(collection, id)?)
    }

    /// Counts and sizes the data dir.
    pub fn stats(&self) -> Result<Stats> {
        Ok(self.read().stats()?)
    }

    /// Commits BM25 and flushes the store, waiting for the write lock at most until
    /// `deadline`; returns whether it could. When a reader still holds the index then, the
    /// store alone is flushed (every write has committed BM25 already).
    pub fn flush(&self, deadline: Instant) -> Result<bool> {
        loop {
            match self.index.try_write() {
                Ok(mut index) => {
                    index.commit()?;
                    index.store().flush()?;
                    return Ok(true);
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    let mut index = p.into_inner();
                    index.commit()?;
                    index.store().flush()?;
                    return Ok(true);
                }
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    if let Ok(index) = self.index.try_read() {
                        index.store().flush()?;
                    }
                    return Ok(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::mpsc::Receiver;

    use super::*;
    use crate::index::{IndexConfig, LayerFeature};

    fn identity() -> StoreIdentity {
        StoreIdentity::for_tests(&[0])
    }

    /// Queues a document of `words` words (with metadata `year`, if given) as a call that
    /// scanned it would, and returns where its answer comes.
    fn wait(
        engine: &Engine,
        id: &str,
        year: Option<&str>,
        words: usize,
        cancel: Cancel,
    ) -> Receiver<Result<Ingested>> {
        let text = "w ".repeat(words);
        let encoded = EncodedDocument {
            offsets: (0..words).map(|i| (2 * i, 2 * i + 1)).collect(),
            postings: BTreeMap::from([(LayerFeature::new(0, 3), vec![0, (words - 1) as u32])]),
            ..EncodedDocument::default()
        };
        let upload = Upload {
            collection: "c".into(),
            id: Some(id.into()),
            meta: year
                .map(|y| vec![("year".to_string(), y.to_string())])
                .unwrap_or_default(),
            text,
        };
        let (reply, answer) = sync_channel(1);
        engine.queue_lock().push_back(Waiting {
            upload,
            encoded,
            cancel,
            reply,
        });
        answer
    }

    /// The documents of several calls waiting together are stored by one of them as a group,
    /// each call answered with its own document; a cancelled call writes nothing; when the
    /// group fails on one document (a metadata type another document of it fixed), the others
    /// are stored alone and only that call gets the error.
    #[test]
    fn waiting_documents_are_stored_together_and_answered_each() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        let engine = Engine::new(index, Limits::default());
        engine.create_collection("c").unwrap();
        let gone = CancelOnDrop::default();
        let cancelled = gone.token();
        drop(gone);
        let a = wait(&engine, "a", None, 40, Cancel::default());
        let b = wait(&engine, "b", None, 60, cancelled);
        let c = wait(&engine, "c", None, 30, Cancel::default());
        engine.store_waiting(&mut engine.write(), &identity());
        assert!(engine.queue_lock().is_empty());
        assert_eq!(a.try_recv().unwrap().unwrap().id, "a");
        assert!(matches!(
            b.try_recv().unwrap(),
            Err(ServiceError::Cancelled)
        ));
        let c = c.try_recv().unwrap().unwrap();
        assert_eq!((c.id.as_str(), c.tokens, c.replaced), ("c", 30, false));
        let ids = |engine: &Engine| -> Vec<String> {
            engine
                .read()
                .documents("c")
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect()
        };
        assert_eq!(ids(&engine), ["a", "c"]);
        // Committed: both are searchable when their calls are answered.
        assert_eq!(engine.read().bm25("c", None, "w", 10).unwrap().len(), 2);
        let d = wait(&engine, "d", Some("2020"), 20, Cancel::default());
        let e = wait(&engine, "e", Some("soon"), 20, Cancel::default());
        let f = wait(&engine, "a", None, 25, Cancel::default());
        engine.store_waiting(&mut engine.write(), &identity());
        assert_eq!(d.try_recv().unwrap().unwrap().id, "d");
        let err = e.try_recv().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                ServiceError::Index(IndexError::MetaTypeMismatch { .. })
            ),
            "{err}"
        );
        assert!(f.try_recv().unwrap().unwrap().replaced);
        assert_eq!(ids(&engine), ["c", "d", "a"]);
        assert_eq!(engine.read().verify().unwrap(), 3);
        assert_eq!(engine.ingested().documents, 4);
    }
}
