//! The persistent index of one data dir: collections, documents, postings and BM25 passages.
//!
//! Layout of a data dir: `LOCK` (held by the process that has it open), `store/` (sled: every
//! record, see [`super::records`]), `packs/` (each document's postings in one file, see
//! [`super::packs`]) and `bm25/` (tantivy passages).
//!
//! A document's pack is written and synced first; then sled, in one atomic batch per change,
//! flushed before tantivy sees it: a document is visible (record, text, offsets, postings)
//! entirely or not at all. A pack that no record owns (a crash before the batch, or after a
//! delete's batch) is removed when the index opens.
//! Each batch also writes a journal entry under its sequence number; tantivy's commit payload
//! records the last sequence it holds, and opening replays the journal past it, so after any
//! crash both sides agree again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fs2::FileExt;
use roaring::RoaringBitmap;

use super::bm25::{Bm25, PassageHit};
use super::coarse::{self, CoarseEdits};
use super::codec;
use super::error::{IndexError, Result};
use super::migrations::{self, STORE_FORMAT_VERSION};
use super::packs::{self, Pack, PackStore};
use super::passages::{passages, CharIndex};
use super::records::{
    self as rec, CollectionRecord, DocPart, DocumentRecord, JournalOp, MetaEntry, StoreIdentity,
};
use super::store::{Batch, KvStore, SledStore};

/// Longest collection name or external id, in bytes.
const MAX_NAME_BYTES: usize = 512;
/// Generated external ids start with this; user ids may not.
const GENERATED_ID_PREFIX: char = '#';

/// Limits of an open index.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Largest document accepted, in bytes of UTF-8 text.
    pub max_document_bytes: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 64 << 20,
        }
    }
}

/// A document to ingest.
#[derive(Debug, Clone)]
pub struct NewDocument<'a> {
    /// The collection it goes into (must exist).
    pub collection: &'a str,
    /// External id; an existing one is replaced. `None` generates `#<number>`.
    pub id: Option<String>,
    /// Key-value metadata.
    pub meta: Vec<(String, String)>,
    /// The text.
    pub text: &'a str,
}

/// A document turned into everything the store keeps, before it is written: what the ingest
/// layer makes of a text.
#[derive(Debug, Clone, Default)]
pub struct EncodedDocument {
    /// Each token's char range.
    pub offsets: Vec<(usize, usize)>,
    /// Positions (document-local, ascending) per (layer, feature).
    pub postings: BTreeMap<(u16, u32), Vec<u32>>,
    /// Seconds spent tokenizing.
    pub tokenize_seconds: f64,
    /// Seconds spent in the model (the scan alone).
    pub scan_seconds: f64,
    /// Seconds spent in SAE encoding and building postings.
    pub encode_seconds: f64,
}

impl EncodedDocument {
    /// Returns the number of tokens.
    pub fn tokens(&self) -> usize {
        self.offsets.len()
    }
}

/// What an ingest did and how long each part took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ingested {
    /// The document's external id.
    pub id: String,
    /// Tokens scanned and indexed.
    pub tokens: usize,
    /// Whether an earlier document with the same id was replaced.
    pub replaced: bool,
    /// Seconds in the model's scan.
    pub scan_seconds: f64,
    /// Seconds in SAE encoding.
    pub encode_seconds: f64,
    /// Seconds writing sled and tantivy.
    pub store_seconds: f64,
}

/// A collection as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CollectionInfo {
    /// Its name.
    pub name: String,
    /// Documents in it.
    pub documents: u64,
    /// Tokens in it.
    pub tokens: u64,
}

/// A document as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DocumentInfo {
    /// External id.
    pub id: String,
    /// Internal number in the collection.
    pub number: u32,
    /// Tokens.
    pub tokens: u32,
    /// Chars of text.
    pub chars: u64,
    /// Bytes of text.
    pub bytes: u64,
    /// Collection-global positions of its tokens.
    pub positions: Range<u64>,
    /// Metadata.
    pub meta: Vec<(String, String)>,
}

impl From<&DocumentRecord> for DocumentInfo {
    fn from(d: &DocumentRecord) -> Self {
        let first = u64::from(d.first_position);
        Self {
            id: d.external_id.clone(),
            number: d.doc,
            tokens: d.tokens,
            chars: d.chars,
            bytes: d.bytes,
            positions: first..first + u64::from(d.tokens),
            meta: d
                .meta
                .iter()
                .map(|m| (m.key.clone(), m.value.clone()))
                .collect(),
        }
    }
}

/// A BM25 hit with its document's external id.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bm25Hit {
    /// External id.
    pub id: String,
    /// Char range of the passage.
    pub chars: Range<usize>,
    /// BM25 score.
    pub score: f32,
}

/// Bytes of one kind of record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ComponentBytes {
    /// Records.
    pub records: u64,
    /// Key plus value bytes.
    pub bytes: u64,
}

/// Sizes and counts of a data dir.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Collections.
    pub collections: u64,
    /// Documents.
    pub documents: u64,
    /// Tokens indexed.
    pub tokens: u64,
    /// Posting lists (one per document, layer and feature).
    pub postings: u64,
    /// Positions in all posting lists.
    pub posting_entries: u64,
    /// Logical bytes (keys + values) per kind: postings (pack files), offsets, text, features,
    /// coarse, records.
    pub components: BTreeMap<String, ComponentBytes>,
    /// Bytes on disk of the sled directory and the posting packs.
    pub store_disk_bytes: u64,
    /// Bytes of the tantivy directory on disk.
    pub bm25_disk_bytes: u64,
    /// Logical bytes per token of each component, plus the BM25 index on disk; `store_disk`
    /// (sled and packs on disk) and `disk_total` (everything on disk) per token.
    pub bytes_per_token: BTreeMap<String, f64>,
}

/// One data dir, open and locked.
pub struct Index {
    dir: PathBuf,
    store: SledStore,
    packs: PackStore,
    bm25: Bm25,
    config: IndexConfig,
    seq: u64,
    /// Held for the lifetime of the index: a second process gets [`IndexError::Locked`].
    _lock: File,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn u64_be(bytes: &[u8], what: &str) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| IndexError::corrupt(what, "not a u64"))
}

fn u32_be(bytes: &[u8], what: &str) -> Result<u32> {
    <[u8; 4]>::try_from(bytes)
        .map(u32::from_be_bytes)
        .map_err(|_| IndexError::corrupt(what, "not a u32"))
}

/// Returns the bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Adds to `b` the deletes of a document's records (its id entry and every part).
fn delete_records(b: &mut Batch, cid: u32, doc: u32, external_id: &str) {
    b.delete(rec::external_key(cid, external_id));
    for part in DocPart::ALL {
        b.delete(rec::doc_key(part, cid, doc));
    }
}

/// Checks what a document carries, whatever its collection or index: its size against
/// `max_document_bytes`, its text, id and metadata keys (callers check a batch with it before
/// they create anything).
pub fn check_document_fields(doc: &NewDocument<'_>, max_document_bytes: usize) -> Result<()> {
    let id_for_errors = doc.id.clone().unwrap_or_else(|| "(new)".into());
    if doc.text.len() > max_document_bytes {
        return Err(IndexError::TooLarge {
            id: id_for_errors,
            bytes: doc.text.len(),
            limit: max_document_bytes,
        });
    }
    if doc.text.trim().is_empty() {
        return Err(IndexError::InvalidInput(format!(
            "document `{id_for_errors}` is empty"
        )));
    }
    if let Some(id) = &doc.id {
        check_name("document id", id)?;
        if id.starts_with(GENERATED_ID_PREFIX) {
            return Err(IndexError::InvalidInput(format!(
                "document id `{id}` starts with `{GENERATED_ID_PREFIX}`, which is kept for generated ids"
            )));
        }
    }
    for (k, _) in &doc.meta {
        check_name("metadata key", k)?;
    }
    Ok(())
}

/// Checks a collection name or external id.
fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(IndexError::InvalidInput(format!("the {kind} is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(IndexError::InvalidInput(format!(
            "the {kind} has {} bytes, over the limit of {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(IndexError::InvalidInput(format!(
            "the {kind} {name:?} contains control characters"
        )));
    }
    Ok(())
}

/// Returns `bytes` as text, or an error naming `source_name` and the first invalid byte.
pub fn document_text(bytes: Vec<u8>, source_name: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| IndexError::NotUtf8 {
        source_name: source_name.to_string(),
        offset: e.utf8_error().valid_up_to(),
    })
}

impl Index {
    /// Opens (or creates) the data dir `dir`, upgrading an older store and reconciling BM25.
    pub fn open(dir: &Path, config: IndexConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| IndexError::io(&lock_path, e))?;
        if lock.try_lock_exclusive().is_err() {
            return Err(IndexError::Locked {
                dir: dir.into(),
                lock: lock_path,
            });
        }
        finish_compaction(dir)?;
        let store_dir = dir.join("store");
        if !store_dir.exists() {
            create_store(dir)?;
        }
        let store = SledStore::open(&store_dir)?;
        let packs = PackStore::open(&dir.join("packs"))?;
        match migrations::stored_version(&store)? {
            None => {
                let mut b = Batch::default();
                migrations::version_write(&mut b, STORE_FORMAT_VERSION);
                store.apply(b)?;
                store.flush()?;
            }
            Some(v) if v > STORE_FORMAT_VERSION => {
                return Err(IndexError::NewerFormat {
                    found: v,
                    supported: STORE_FORMAT_VERSION,
                    path: dir.into(),
                })
            }
            Some(v) if v < migrations::STORE_FORMAT_OLDEST_SUPPORTED => {
                return Err(IndexError::corrupt(
                    dir.display().to_string(),
                    format!("store format {v} is older than any this build can upgrade"),
                ))
            }
            Some(v) if v < STORE_FORMAT_VERSION => {
                migrations::upgrade(&store, dir, v, STORE_FORMAT_VERSION, migrations::STEPS)?;
            }
            Some(_) => {}
        }
        let seq = match store.get(rec::KEY_SEQ)? {
            Some(v) => u64_be(&v, "m/seq")?,
            None => 0,
        };
        let bm25 = Bm25::open(&dir.join("bm25"))?;
        let mut index = Self {
            dir: dir.into(),
            store,
            packs,
            bm25,
            config,
            seq,
            _lock: lock,
        };
        index.reconcile()?;
        index.remove_orphan_packs()?;
        Ok(index)
    }

    /// Removes the packs no document record owns (and unfinished temporary packs).
    fn remove_orphan_packs(&self) -> Result<()> {
        self.packs.remove_unfinished()?;
        for (cid, doc) in self.packs.list()? {
            if self
                .store
                .get(&rec::doc_key(DocPart::Record, cid, doc))?
                .is_none()
            {
                tracing::info!(cid, doc, "removing a posting pack no document owns");
                self.packs.remove(cid, doc)?;
            }
        }
        Ok(())
    }

    /// Removes the packs of documents deleted by a committed batch: a failure only leaves an
    /// orphan, which the next open removes.
    fn remove_packs(&self, cid: u32, docs: impl IntoIterator<Item = u32>) {
        for doc in docs {
            if let Err(e) = self.packs.remove(cid, doc) {
                tracing::warn!(cid, doc, error = %e, "could not remove a deleted document's pack");
            }
        }
    }

    /// Returns the data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the key-value store (what retrieval reads postings from).
    pub fn store(&self) -> &dyn KvStore {
        &self.store
    }

    /// Returns what the index was built with, if anything was ingested yet.
    pub fn identity(&self) -> Result<Option<StoreIdentity>> {
        self.store
            .get(rec::KEY_IDENTITY)?
            .map(|v| rec::decode(&v, "m/identity"))
            .transpose()
    }

    /// Refuses `given` unless it is what the store was built with (or the store is new).
    pub fn check_identity(&self, given: &StoreIdentity) -> Result<()> {
        let Some(stored) = self.identity()? else {
            return Ok(());
        };
        let fmt_layers = |l: &[u32]| l.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let checks: [(&'static str, String, String); 4] = [
            (
                "model fingerprint",
                stored.model_fingerprint.clone(),
                given.model_fingerprint.clone(),
            ),
            (
                "sae set digest",
                stored.sae_digest.clone(),
                given.sae_digest.clone(),
            ),
            (
                "layer set",
                fmt_layers(&stored.layers),
                fmt_layers(&given.layers),
            ),
            (
                "scan geometry (chunk/sinks/overlap)",
                format!("{}/{}/{}", stored.chunk, stored.sinks, stored.overlap),
                format!("{}/{}/{}", given.chunk, given.sinks, given.overlap),
            ),
        ];
        for (field, stored, given) in checks {
            if stored != given {
                return Err(IndexError::IdentityMismatch {
                    field,
                    stored,
                    given,
                });
            }
        }
        Ok(())
    }

    fn collection(&self, name: &str) -> Result<CollectionRecord> {
        match self.store.get(&rec::collection_key(name))? {
            Some(v) => rec::decode(&v, &format!("collection {name}")),
            None => Err(IndexError::UnknownCollection(name.into())),
        }
    }

    /// Creates a collection.
    pub fn create_collection(&mut self, name: &str) -> Result<()> {
        check_name("collection name", name)?;
        if self.store.get(&rec::collection_key(name))?.is_some() {
            return Err(IndexError::CollectionExists(name.into()));
        }
        let id = match self.store.get(rec::KEY_NEXT_COLLECTION)? {
            Some(v) => u32_be(&v, "m/next_collection")?,
            None => 1,
        };
        let next = id.checked_add(1).ok_or_else(|| {
            IndexError::InvalidInput("no collection ids left (u32 exhausted)".into())
        })?;
        let record = CollectionRecord {
            id,
            name: name.into(),
            next_doc: 0,
            next_position: 0,
            created_unix: now_unix(),
        };
        let mut b = Batch::default();
        b.put(rec::collection_key(name), rec::encode(&record)?);
        b.put(
            rec::KEY_NEXT_COLLECTION.to_vec(),
            next.to_be_bytes().to_vec(),
        );
        self.store.apply(b)?;
        self.store.flush()
    }

    /// Lists the collections with their document and token counts.
    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        let mut records = Vec::new();
        self.store
            .scan_prefix(rec::COLLECTION_PREFIX, &mut |k, v| {
                records.push(rec::decode::<CollectionRecord>(
                    v,
                    &String::from_utf8_lossy(k),
                )?);
                Ok(true)
            })?;
        records
            .into_iter()
            .map(|c| {
                let docs = self.document_records(c.id)?;
                Ok(CollectionInfo {
                    name: c.name,
                    documents: docs.len() as u64,
                    tokens: docs.iter().map(|d| u64::from(d.tokens)).sum(),
                })
            })
            .collect()
    }

    /// Drops a collection with all its documents.
    pub fn drop_collection(&mut self, name: &str) -> Result<()> {
        let c = self.collection(name)?;
        let mut b = Batch::default();
        b.delete(rec::collection_key(name));
        let mut prefixes: Vec<Vec<u8>> = DocPart::ALL
            .iter()
            .map(|&p| rec::doc_prefix(p, c.id))
            .collect();
        prefixes.push(rec::external_prefix(c.id));
        prefixes.push(rec::coarse_prefix(c.id));
        prefixes.push(rec::super_prefix(c.id));
        prefixes.push(rec::total_prefix(c.id));
        let numbers: Vec<u32> = self.document_records(c.id)?.iter().map(|d| d.doc).collect();
        for p in prefixes {
            self.store.scan_prefix(&p, &mut |k, _| {
                b.delete(k.to_vec());
                Ok(true)
            })?;
        }
        self.commit_batch(b, vec![JournalOp::DropCollection { collection: c.id }])?;
        self.remove_packs(c.id, numbers);
        self.bm25.drop_collection(c.id)?;
        self.commit()
    }

    fn document_records(&self, cid: u32) -> Result<Vec<DocumentRecord>> {
        let mut out = Vec::new();
        self.store
            .scan_prefix(&rec::doc_prefix(DocPart::Record, cid), &mut |k, v| {
                out.push(rec::decode(v, &format!("document {k:?}"))?);
                Ok(true)
            })?;
        Ok(out)
    }

    fn document_number(&self, cid: u32, external_id: &str) -> Result<Option<u32>> {
        self.store
            .get(&rec::external_key(cid, external_id))?
            .map(|v| u32_be(&v, "external id"))
            .transpose()
    }

    fn record(&self, collection: &str, id: &str) -> Result<(CollectionRecord, DocumentRecord)> {
        let c = self.collection(collection)?;
        let unknown = || IndexError::UnknownDocument {
            collection: collection.into(),
            id: id.into(),
        };
        let doc = self.document_number(c.id, id)?.ok_or_else(unknown)?;
        let v = self
            .store
            .get(&rec::doc_key(DocPart::Record, c.id, doc))?
            .ok_or_else(unknown)?;
        let d = rec::decode(&v, &format!("document {id}"))?;
        Ok((c, d))
    }

    /// Lists the documents of a collection in ingest order.
    pub fn documents(&self, collection: &str) -> Result<Vec<DocumentInfo>> {
        let c = self.collection(collection)?;
        Ok(self
            .document_records(c.id)?
            .iter()
            .map(DocumentInfo::from)
            .collect())
    }

    /// Returns one document's table entry.
    pub fn document(&self, collection: &str, id: &str) -> Result<DocumentInfo> {
        Ok(DocumentInfo::from(&self.record(collection, id)?.1))
    }

    /// Returns a document's text, or the char range `chars` of it (clamped to the text).
    pub fn text(&self, collection: &str, id: &str, chars: Option<Range<usize>>) -> Result<String> {
        let (c, d) = self.record(collection, id)?;
        let text = self.stored_text(c.id, d.doc)?;
        Ok(match chars {
            None => text,
            Some(r) => CharIndex::new(&text).slice(r).to_string(),
        })
    }

    fn stored_text(&self, cid: u32, doc: u32) -> Result<String> {
        let what = format!("text of document {cid}/{doc}");
        let bytes = self
            .store
            .get(&rec::doc_key(DocPart::Text, cid, doc))?
            .ok_or_else(|| IndexError::corrupt(&what, "missing"))?;
        String::from_utf8(bytes).map_err(|e| IndexError::corrupt(what, e))
    }

    fn stored_offsets(&self, cid: u32, doc: u32) -> Result<Vec<(usize, usize)>> {
        let what = format!("offsets of document {cid}/{doc}");
        let bytes = self
            .store
            .get(&rec::doc_key(DocPart::Offsets, cid, doc))?
            .ok_or_else(|| IndexError::corrupt(&what, "missing"))?;
        codec::decode_offsets(&bytes).map_err(|e| IndexError::corrupt(what, e))
    }

    fn stored_features(&self, cid: u32, doc: u32) -> Result<RoaringBitmap> {
        let what = format!("features of document {cid}/{doc}");
        let bytes = self
            .store
            .get(&rec::doc_key(DocPart::Features, cid, doc))?
            .ok_or_else(|| IndexError::corrupt(&what, "missing"))?;
        RoaringBitmap::deserialize_from(&bytes[..]).map_err(|e| IndexError::corrupt(what, e))
    }

    /// Returns each token's char range of a document.
    pub fn offsets(&self, collection: &str, id: &str) -> Result<Vec<(usize, usize)>> {
        let (c, d) = self.record(collection, id)?;
        self.stored_offsets(c.id, d.doc)
    }

    /// Returns a document's postings: collection-global positions per (layer, feature).
    pub fn document_postings(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<BTreeMap<(u16, u32), Vec<u32>>> {
        let (c, d) = self.record(collection, id)?;
        Ok(self
            .packs
            .read_owned(c.id, d.doc)?
            .all()?
            .into_iter()
            .map(|(k, local)| (k, local.iter().map(|p| p + d.first_position).collect()))
            .collect())
    }

    /// Returns the postings of (layer, feature) across a collection: per document number, its
    /// collection-global positions.
    pub fn feature_postings(
        &self,
        collection: &str,
        layer: u16,
        feature: u32,
    ) -> Result<Vec<(u32, Vec<u32>)>> {
        let c = self.collection(collection)?;
        let mut out = Vec::new();
        for d in self.document_records(c.id)? {
            let local = self.packs.read_owned(c.id, d.doc)?.get(layer, feature)?;
            if !local.is_empty() {
                out.push((d.doc, local.iter().map(|p| p + d.first_position).collect()));
            }
        }
        Ok(out)
    }

    /// Returns a collection's internal id (what the read paths below take).
    pub fn collection_id(&self, collection: &str) -> Result<u32> {
        Ok(self.collection(collection)?.id)
    }

    /// Returns a reader of collection `cid`'s postings and coarse blocks for one question.
    pub fn posting_reader(&self, cid: u32) -> Result<PostingReader<'_>> {
        let mut next_position = None;
        self.store
            .scan_prefix(rec::COLLECTION_PREFIX, &mut |k, v| {
                let c: CollectionRecord = rec::decode(v, &String::from_utf8_lossy(k))?;
                if c.id == cid {
                    next_position = Some(c.next_position);
                }
                Ok(next_position.is_none())
            })?;
        let next_position = next_position
            .ok_or_else(|| IndexError::UnknownCollection(format!("(internal id {cid})")))?;
        let sealed_end = codec::sealed_end(next_position);
        let tail = self
            .document_records(cid)?
            .into_iter()
            .filter(|d| u64::from(d.first_position) + u64::from(d.tokens) > u64::from(sealed_end))
            .map(|d| (d.doc, d.first_position))
            .collect();
        Ok(PostingReader {
            index: self,
            cid,
            sealed_end,
            tail,
            packs: HashMap::new(),
            open: std::collections::VecDeque::new(),
            tail_blocks: HashMap::new(),
        })
    }

    /// Returns the document-local positions where (layer, feature) fired in document `doc`.
    pub fn posting(&self, cid: u32, layer: u16, feature: u32, doc: u32) -> Result<Vec<u32>> {
        self.packs.read_owned(cid, doc)?.get(layer, feature)
    }

    /// Returns the text of document number `doc` of collection `cid`.
    pub fn text_of(&self, cid: u32, doc: u32) -> Result<String> {
        self.stored_text(cid, doc)
    }

    /// Returns the token char ranges of document number `doc` of collection `cid`.
    pub fn offsets_of(&self, cid: u32, doc: u32) -> Result<Vec<(usize, usize)>> {
        self.stored_offsets(cid, doc)
    }

    /// Searches a collection's passages with BM25 (committed changes only), optionally only
    /// those of the documents numbered `docs`.
    pub fn bm25(
        &self,
        collection: &str,
        docs: Option<&[u32]>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Bm25Hit>> {
        let c = self.collection(collection)?;
        let ids: BTreeMap<u32, String> = self
            .document_records(c.id)?
            .into_iter()
            .map(|d| (d.doc, d.external_id))
            .collect();
        self.bm25
            .search(c.id, docs, query, limit)?
            .into_iter()
            .filter_map(|PassageHit { doc, chars, score }| {
                ids.get(&doc).map(|id| {
                    Ok(Bm25Hit {
                        id: id.clone(),
                        chars,
                        score,
                    })
                })
            })
            .collect()
    }

    /// Checks a document before it is encoded: its collection, size, id and metadata, and
    /// that `identity` (the encoding's) is what the index was built with.
    pub fn check_document(&self, doc: &NewDocument<'_>, identity: &StoreIdentity) -> Result<()> {
        self.collection(doc.collection)?;
        check_document_fields(doc, self.config.max_document_bytes)?;
        self.check_identity(identity)
    }

    /// Stores a document encoded with `identity` (by the ingest layer); replaces an existing
    /// one with the same id. Checks the document again: the index may have changed during the
    /// scan (the collection dropped, say).
    ///
    /// The document is durable and its postings visible when this returns; its BM25 passages
    /// become searchable at the next [`Index::commit`] (or the next open).
    pub fn store_encoded(
        &mut self,
        doc: NewDocument<'_>,
        encoded: &EncodedDocument,
        identity: &StoreIdentity,
    ) -> Result<Ingested> {
        self.check_document(&doc, identity)?;
        let c = self.collection(doc.collection)?;
        let n = encoded.tokens();
        if c.next_position + n as u64 > u64::from(u32::MAX) + 1 {
            return Err(IndexError::PositionsExhausted {
                collection: c.name,
                needed: n,
            });
        }
        let t1 = Instant::now();
        let out = self.store_document(c, doc, encoded, identity)?;
        Ok(Ingested {
            store_seconds: t1.elapsed().as_secs_f64(),
            scan_seconds: encoded.scan_seconds,
            encode_seconds: encoded.encode_seconds,
            ..out
        })
    }

    /// Writes an encoded document: one sled batch, flushed, then its passages to tantivy.
    fn store_document(
        &mut self,
        mut c: CollectionRecord,
        doc: NewDocument<'_>,
        encoded: &EncodedDocument,
        identity: &StoreIdentity,
    ) -> Result<Ingested> {
        let number = c.next_doc;
        c.next_doc = c.next_doc.checked_add(1).ok_or_else(|| {
            IndexError::InvalidInput(format!(
                "collection `{}` has no document numbers left",
                c.name
            ))
        })?;
        let external_id = doc
            .id
            .clone()
            .unwrap_or_else(|| format!("{GENERATED_ID_PREFIX}{number}"));
        let first_position = c.next_position as u32;
        let tokens = encoded.tokens();
        let sealed_before = codec::sealed_end(c.next_position);
        c.next_position += tokens as u64;
        let sealed_after = codec::sealed_end(c.next_position);
        let mut b = Batch::default();
        let mut journal = Vec::new();
        let old = self.document_number(c.id, &external_id)?;
        let mut coarse = CoarseEdits::default();
        if let Some(old) = old {
            self.delete_writes(c.id, sealed_before, old, &mut b, &mut coarse)?;
            journal.push(JournalOp::Delete {
                collection: c.id,
                doc: old,
            });
        }
        if self.identity()?.is_none() {
            b.put(rec::KEY_IDENTITY.to_vec(), rec::encode(identity)?);
        }
        let seq = self.seq + 1;
        let record = DocumentRecord {
            doc: number,
            external_id: external_id.clone(),
            meta: doc
                .meta
                .iter()
                .map(|(k, v)| MetaEntry {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            tokens: tokens as u32,
            chars: doc.text.chars().count() as u64,
            bytes: doc.text.len() as u64,
            first_position,
            seq,
            ingested_unix: now_unix(),
        };
        b.put(rec::collection_key(&c.name), rec::encode(&c)?);
        b.put(
            rec::doc_key(DocPart::Record, c.id, number),
            rec::encode(&record)?,
        );
        b.put(
            rec::external_key(c.id, &external_id),
            number.to_be_bytes().to_vec(),
        );
        b.put(
            rec::doc_key(DocPart::Text, c.id, number),
            doc.text.as_bytes().to_vec(),
        );
        b.put(
            rec::doc_key(DocPart::Offsets, c.id, number),
            codec::encode_offsets(&encoded.offsets),
        );
        let mut features = RoaringBitmap::new();
        for &(layer, feature) in encoded.postings.keys() {
            let packed = rec::pack_feature(layer, feature).ok_or_else(|| {
                IndexError::InvalidInput(format!(
                    "layer {layer} feature {feature} does not fit the posting key"
                ))
            })?;
            features.insert(packed);
        }
        let mut fbytes = Vec::with_capacity(features.serialized_size());
        features
            .serialize_into(&mut fbytes)
            .map_err(|e| IndexError::io(&self.dir, e))?;
        b.put(rec::doc_key(DocPart::Features, c.id, number), fbytes);
        // The pack goes to disk (synced) before the batch that makes it reachable.
        self.packs
            .write(c.id, number, &packs::encode(&encoded.postings)?)?;
        let sealed = (|| {
            if sealed_after > sealed_before {
                let super_before = codec::super_end(sealed_before);
                let super_after = codec::super_end(sealed_after);
                if super_after > super_before {
                    coarse.promote(&self.store, c.id, super_before..super_after)?;
                }
                let mut docs: Vec<coarse::DocPlace> = self
                    .document_records(c.id)?
                    .iter()
                    .filter(|d| Some(d.doc) != old)
                    .map(|d| (d.doc, d.first_position, d.tokens))
                    .collect();
                docs.push((number, first_position, tokens as u32));
                coarse::add_range(
                    &mut coarse,
                    &self.store,
                    &self.packs,
                    c.id,
                    &docs,
                    sealed_before..sealed_after,
                    super_after,
                )?;
            }
            Ok(())
        })();
        if let Err(e) = sealed {
            // Nothing refers to the pack yet.
            self.remove_packs(c.id, [number]);
            return Err(e);
        }
        coarse.write(&mut b);
        journal.push(JournalOp::Put {
            collection: c.id,
            doc: number,
        });
        // A failed commit keeps the pack: if the batch did not land, the next open removes it
        // as an orphan; if it did, the document needs it.
        self.commit_batch(b, journal)?;
        if let Some(old) = old {
            self.remove_packs(c.id, [old]);
            self.bm25.delete(c.id, old)?;
        }
        self.bm25
            .put(c.id, number, &passages(doc.text, &encoded.offsets))?;
        tracing::debug!(id = %external_id, tokens, seq, "document stored");
        Ok(Ingested {
            id: external_id,
            tokens,
            replaced: old.is_some(),
            scan_seconds: 0.0,
            encode_seconds: 0.0,
            store_seconds: 0.0,
        })
    }

    /// Adds to `b` the deletes of every record of a document, and to `coarse` the removal
    /// of its block counts.
    fn delete_writes(
        &self,
        cid: u32,
        sealed_end: u32,
        doc: u32,
        b: &mut Batch,
        coarse: &mut CoarseEdits,
    ) -> Result<()> {
        let v = self
            .store
            .get(&rec::doc_key(DocPart::Record, cid, doc))?
            .ok_or_else(|| IndexError::corrupt(format!("document {cid}/{doc}"), "missing"))?;
        let d: DocumentRecord = rec::decode(&v, "document")?;
        // Only sealed buckets have coarse records.
        if d.first_position < sealed_end {
            for ((layer, feature), local) in self.packs.read_owned(cid, doc)?.all()? {
                let sealed = local
                    .iter()
                    .map(|p| p + d.first_position)
                    .filter(|&p| p < sealed_end);
                let super_end = codec::super_end(sealed_end);
                coarse.apply(&self.store, cid, (layer, feature), sealed, true, super_end)?;
            }
        }
        delete_records(b, cid, doc, &d.external_id);
        Ok(())
    }

    /// Deletes a document: its record, text, offsets, postings and passages.
    ///
    /// A document whose pack is damaged can still be deleted: its postings cannot be taken
    /// out of the coarse records, so those of the collection are rebuilt from the other
    /// documents' packs in the same batch (a damaged pack of another document stops it,
    /// named).
    pub fn delete(&mut self, collection: &str, id: &str) -> Result<()> {
        let (c, d) = self.record(collection, id)?;
        let sealed_end = codec::sealed_end(c.next_position);
        let mut b = Batch::default();
        let mut coarse = CoarseEdits::default();
        match self.delete_writes(c.id, sealed_end, d.doc, &mut b, &mut coarse) {
            Ok(()) => coarse.write(&mut b),
            Err(e @ IndexError::Corrupt { .. }) => {
                tracing::warn!(
                    "deleting `{id}` of `{collection}`: {e}; rebuilding the collection's coarse \
                     records from the other documents' packs"
                );
                b = Batch::default();
                delete_records(&mut b, c.id, d.doc, &d.external_id);
                self.rebuild_coarse_without(c.id, sealed_end, d.doc, &mut b)?;
            }
            Err(e) => return Err(e),
        }
        self.commit_batch(
            b,
            vec![JournalOp::Delete {
                collection: c.id,
                doc: d.doc,
            }],
        )?;
        self.remove_packs(c.id, [d.doc]);
        self.bm25.delete(c.id, d.doc)?;
        self.commit()
    }

    /// Adds to `b` every coarse record and sealed total of collection `cid` computed afresh
    /// from the packs of its documents other than `except`, and deletes of the stored ones.
    fn rebuild_coarse_without(
        &self,
        cid: u32,
        sealed_end: u32,
        except: u32,
        b: &mut Batch,
    ) -> Result<()> {
        for prefix in [
            rec::coarse_prefix(cid),
            rec::super_prefix(cid),
            rec::total_prefix(cid),
        ] {
            self.store.scan_prefix(&prefix, &mut |k, _| {
                b.delete(k.to_vec());
                Ok(true)
            })?;
        }
        let docs: Vec<coarse::DocPlace> = self
            .document_records(cid)?
            .into_iter()
            .filter(|d| d.doc != except)
            .map(|d| (d.doc, d.first_position, d.tokens))
            .collect();
        let mut edits = CoarseEdits::from_scratch();
        coarse::add_sealed(&mut edits, &self.store, &self.packs, cid, &docs, sealed_end)?;
        edits.write(b);
        Ok(())
    }

    /// Applies `b` with the next sequence number and its journal entry, and flushes.
    fn commit_batch(&mut self, mut b: Batch, journal: Vec<JournalOp>) -> Result<()> {
        let seq = self.seq + 1;
        b.put(rec::KEY_SEQ.to_vec(), seq.to_be_bytes().to_vec());
        b.put(rec::journal_key(seq), rec::encode(&journal)?);
        self.store.apply(b)?;
        self.store.flush()?;
        self.seq = seq;
        Ok(())
    }

    /// Commits pending BM25 changes and trims the journal they cover.
    pub fn commit(&mut self) -> Result<()> {
        self.bm25.commit(self.seq)?;
        let mut b = Batch::default();
        self.store.scan_prefix(rec::JOURNAL_PREFIX, &mut |k, _| {
            b.delete(k.to_vec());
            Ok(true)
        })?;
        if !b.is_empty() {
            // Not flushed: a stale journal entry only replays a change tantivy already has.
            self.store.apply(b)?;
        }
        Ok(())
    }

    /// Brings BM25 up to the store's sequence number by replaying the journal (or, when the
    /// journal does not reach back far enough, rebuilding every passage).
    fn reconcile(&mut self) -> Result<()> {
        let applied = self.bm25.applied_seq()?;
        let mut pending: Vec<(u64, Vec<JournalOp>)> = Vec::new();
        self.store.scan_prefix(rec::JOURNAL_PREFIX, &mut |k, v| {
            let seq = u64_be(&k[2..], "journal key")?;
            if seq > applied {
                pending.push((seq, rec::decode(v, &format!("journal entry {seq}"))?));
            }
            Ok(true)
        })?;
        if applied == self.seq && pending.is_empty() {
            return Ok(());
        }
        let complete = applied <= self.seq
            && pending.len() as u64 == self.seq - applied
            && pending.first().is_none_or(|(s, _)| *s == applied + 1);
        if complete {
            tracing::info!(
                from = applied,
                to = self.seq,
                "replaying the journal into bm25"
            );
            for (_, ops) in pending {
                for op in ops {
                    match op {
                        JournalOp::Put { collection, doc } => {
                            self.replay_put(collection, doc)?;
                        }
                        JournalOp::Delete { collection, doc } => {
                            self.bm25.delete(collection, doc)?;
                        }
                        JournalOp::DropCollection { collection } => {
                            self.bm25.drop_collection(collection)?;
                        }
                    }
                }
            }
        } else {
            tracing::warn!(bm25 = applied, store = self.seq, "rebuilding bm25 passages");
            self.bm25.clear()?;
            let mut docs = Vec::new();
            self.store
                .scan_prefix(DocPart::Record.prefix(), &mut |k, _| {
                    if let Some(d) = rec::parse_doc_key(k) {
                        docs.push(d);
                    }
                    Ok(true)
                })?;
            for (cid, doc) in docs {
                self.replay_put(cid, doc)?;
            }
        }
        self.commit()
    }

    /// Re-adds a document's passages from its stored text and offsets, if it still exists.
    fn replay_put(&mut self, cid: u32, doc: u32) -> Result<()> {
        if self
            .store
            .get(&rec::doc_key(DocPart::Record, cid, doc))?
            .is_none()
        {
            return self.bm25.delete(cid, doc);
        }
        let text = self.stored_text(cid, doc)?;
        let offsets = self.stored_offsets(cid, doc)?;
        self.bm25.put(cid, doc, &passages(&text, &offsets))
    }

    /// Returns the bytes on disk of the store, the packs and BM25 (without reading them).
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir.join("store"))
            + dir_bytes(self.packs.dir())
            + dir_bytes(self.bm25.dir())
    }

    /// Counts and sizes everything in the data dir.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        let mut add = |name: &str, k: &[u8], v: &[u8]| {
            let e = s.components.entry(name.to_string()).or_default();
            e.records += 1;
            e.bytes += (k.len() + v.len()) as u64;
        };
        let mut postings = 0u64;
        let mut entries = 0u64;
        let mut documents = 0u64;
        let mut tokens = 0u64;
        let mut collections = 0u64;
        self.store.scan_prefix(b"", &mut |k, v| {
            let name = match &k[..2.min(k.len())] {
                b"o/" => "offsets",
                b"g/" | b"h/" | b"n/" => "coarse",
                b"t/" => "text",
                b"f/" => "features",
                b"d/" => {
                    let d: DocumentRecord = rec::decode(v, "document")?;
                    documents += 1;
                    tokens += u64::from(d.tokens);
                    "records"
                }
                b"c/" => {
                    collections += 1;
                    "records"
                }
                _ => "records",
            };
            add(name, k, v);
            Ok(true)
        })?;
        for (cid, doc) in self.packs.list()? {
            let pack = self.packs.read_owned(cid, doc)?;
            postings += pack.len() as u64;
            entries += pack.entry_count()?;
            let e = s.components.entry("postings".into()).or_default();
            e.records += 1;
            e.bytes += pack.file_len();
        }
        s.collections = collections;
        s.documents = documents;
        s.tokens = tokens;
        s.postings = postings;
        s.posting_entries = entries;
        s.store_disk_bytes = dir_bytes(&self.dir.join("store")) + dir_bytes(self.packs.dir());
        s.bm25_disk_bytes = dir_bytes(self.bm25.dir());
        if tokens > 0 {
            let t = tokens as f64;
            let mut total = 0.0;
            for (name, c) in &s.components {
                s.bytes_per_token.insert(name.clone(), c.bytes as f64 / t);
                total += c.bytes as f64 / t;
            }
            let bm25 = s.bm25_disk_bytes as f64 / t;
            s.bytes_per_token.insert("bm25".into(), bm25);
            s.bytes_per_token.insert("total".into(), total + bm25);
            s.bytes_per_token
                .insert("store_disk".into(), s.store_disk_bytes as f64 / t);
            s.bytes_per_token.insert(
                "disk_total".into(),
                (s.store_disk_bytes + s.bm25_disk_bytes) as f64 / t,
            );
        }
        Ok(s)
    }

    /// Rewrites the store without the space of deleted records and merges BM25 segments.
    pub fn compact(self) -> Result<Self> {
        let dir = self.dir.clone();
        let config = self.config.clone();
        let staging = dir.join("store.compact");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| IndexError::io(&staging, e))?;
        }
        self.store.copy_to(&staging)?;
        let done = staging.join("COMPLETE");
        File::create(&done).map_err(|e| IndexError::io(&done, e))?;
        let mut this = self;
        this.bm25.compact()?;
        // Release sled and the lock before the directories swap.
        drop(this);
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| IndexError::io(&lock_path, e))?;
        if lock.try_lock_exclusive().is_err() {
            return Err(IndexError::Locked {
                dir: dir.clone(),
                lock: lock_path,
            });
        }
        finish_compaction(&dir)?;
        drop(lock);
        Self::open(&dir, config)
    }

    /// Checks the invariants of the store and its agreement with BM25; returns the number of
    /// documents checked.
    pub fn verify(&self) -> Result<u64> {
        let mut docs: BTreeMap<(u32, u32), DocumentRecord> = BTreeMap::new();
        self.store
            .scan_prefix(DocPart::Record.prefix(), &mut |k, v| {
                let key = rec::parse_doc_key(k)
                    .ok_or_else(|| IndexError::corrupt(format!("{k:?}"), "bad document key"))?;
                docs.insert(key, rec::decode(v, "document")?);
                Ok(true)
            })?;
        let bad = |what: String, why: &str| Err(IndexError::corrupt(what, why));
        for (&(cid, doc), d) in &docs {
            let what = format!("document {cid}/{doc} ({})", d.external_id);
            let text = self.stored_text(cid, doc)?;
            if text.len() as u64 != d.bytes {
                return bad(what, "text length differs from the record");
            }
            let offsets = self.stored_offsets(cid, doc)?;
            if offsets.len() != d.tokens as usize {
                return bad(what, "offset count differs from the token count");
            }
            if self.document_number(cid, &d.external_id)? != Some(doc) {
                return bad(what, "external id does not point back");
            }
            let Some(pack) = self.packs.read(cid, doc)? else {
                return bad(what, "its posting pack is missing");
            };
            let features = self.stored_features(cid, doc)?;
            if !pack.ids().eq(features.iter()) {
                return bad(what, "its pack and its feature set list different features");
            }
            for (_, positions) in pack.all()? {
                if positions.is_empty() || positions.iter().any(|&x| x >= d.tokens) {
                    return bad(what, "a posting is empty or points past the document");
                }
            }
        }
        let orphans = self
            .packs
            .list()?
            .into_iter()
            .filter(|k| !docs.contains_key(k))
            .count();
        if orphans > 0 {
            return bad(format!("{orphans} posting packs"), "no document owns them");
        }
        let mut old_postings = 0u64;
        self.store.scan_prefix(b"p/", &mut |_, _| {
            old_postings += 1;
            Ok(true)
        })?;
        if old_postings > 0 {
            return bad(
                format!("{old_postings} posting records"),
                "format 3 keeps postings in packs only",
            );
        }
        for part in [DocPart::Text, DocPart::Offsets, DocPart::Features] {
            let mut stray = 0u64;
            self.store.scan_prefix(part.prefix(), &mut |k, _| {
                if rec::parse_doc_key(k).is_none_or(|d| !docs.contains_key(&d)) {
                    stray += 1;
                }
                Ok(true)
            })?;
            if stray > 0 {
                return bad(format!("{stray} {part:?} records"), "no document owns them");
            }
        }
        let want = coarse::expected(&self.store, &self.packs)?;
        let mut have = BTreeMap::new();
        for prefix in [b"g/", b"h/", b"n/"] {
            self.store.scan_prefix(prefix, &mut |k, v| {
                have.insert(k.to_vec(), v.to_vec());
                Ok(true)
            })?;
        }
        if want != have {
            let differ = want
                .keys()
                .chain(have.keys())
                .filter(|k| want.get(*k) != have.get(*k))
                .count();
            return bad(
                format!("{differ} coarse records"),
                "they disagree with the token postings",
            );
        }
        let in_bm25: BTreeSet<(u32, u32)> = self.bm25.documents()?.into_keys().collect();
        let in_store: BTreeSet<(u32, u32)> = docs.keys().copied().collect();
        if in_bm25 != in_store {
            let extra: Vec<_> = in_bm25.difference(&in_store).collect();
            let missing: Vec<_> = in_store.difference(&in_bm25).collect();
            return bad(
                "bm25 passages".into(),
                &format!(
                    "documents without passages {missing:?}, passages without documents {extra:?}"
                ),
            );
        }
        Ok(docs.len() as u64)
    }
}

/// Most pack files a [`PostingReader`] holds open at once (its directories stay in memory).
const MAX_OPEN_PACKS: usize = 64;

/// Reads one collection's postings for one question: each document's pack directory is read
/// once; at most [`MAX_OPEN_PACKS`] files stay open, the least recently opened let go first.
pub struct PostingReader<'a> {
    index: &'a Index,
    cid: u32,
    /// Positions below this have coarse records.
    sealed_end: u32,
    /// (number, first position) of the documents reaching past `sealed_end`.
    tail: Vec<(u32, u32)>,
    packs: HashMap<u32, Pack>,
    /// Documents whose pack file is open, oldest first.
    open: std::collections::VecDeque<u32>,
    /// Block counts of the open tail per (layer, feature), once computed.
    tail_blocks: HashMap<(u16, u32), Vec<(u32, u32)>>,
}

impl PostingReader<'_> {
    /// Returns the document-local positions where (layer, feature) fired in document `doc`.
    pub fn posting(&mut self, doc: u32, layer: u16, feature: u32) -> Result<Vec<u32>> {
        match self.packs.get_mut(&doc) {
            Some(pack) if pack.is_open() => {}
            Some(pack) => {
                pack.reopen()?;
                self.open.push_back(doc);
            }
            None => {
                let pack = self.index.packs.read_owned(self.cid, doc)?;
                self.packs.insert(doc, pack);
                self.open.push_back(doc);
            }
        }
        while self.open.len() > MAX_OPEN_PACKS {
            if let Some(old) = self.open.pop_front() {
                if let Some(p) = self.packs.get_mut(&old) {
                    p.close();
                }
            }
        }
        self.packs[&doc].get(layer, feature)
    }

    /// Returns (collection-global block, tokens that fired) of (layer, feature), ascending;
    /// blocks are [`codec::COARSE_BLOCK_TOKENS`] positions long. Sealed buckets come from
    /// their coarse records, the open tail from the postings of the documents in it.
    pub fn coarse_blocks(&mut self, layer: u16, feature: u32) -> Result<Vec<(u32, u32)>> {
        let mut out = coarse::read(&self.index.store, self.cid, layer, feature)?;
        out.extend(self.tail_blocks(layer, feature)?.iter().copied());
        Ok(out)
    }

    /// Returns how many tokens fired (layer, feature) in the whole collection: the sealed
    /// total from its one record, the open tail from the packs.
    pub fn token_count(&mut self, layer: u16, feature: u32) -> Result<u64> {
        let sealed = coarse::sealed_total(&self.index.store, self.cid, layer, feature)?;
        let tail: u64 = self
            .tail_blocks(layer, feature)?
            .iter()
            .map(|&(_, n)| u64::from(n))
            .sum();
        Ok(sealed + tail)
    }

    /// Returns (global block, tokens that fired) of (layer, feature) in the open tail,
    /// ascending; read from the packs once per question and feature.
    fn tail_blocks(&mut self, layer: u16, feature: u32) -> Result<&[(u32, u32)]> {
        if !self.tail_blocks.contains_key(&(layer, feature)) {
            let mut blocks: BTreeMap<u32, u32> = BTreeMap::new();
            for i in 0..self.tail.len() {
                let (doc, first) = self.tail[i];
                for p in self.posting(doc, layer, feature)? {
                    let p = p + first;
                    if p >= self.sealed_end {
                        *blocks.entry(p / codec::COARSE_BLOCK_TOKENS).or_insert(0) += 1;
                    }
                }
            }
            self.tail_blocks
                .insert((layer, feature), blocks.into_iter().collect());
        }
        Ok(&self.tail_blocks[&(layer, feature)])
    }

    /// Returns the number of packs read so far, and how many of their files are open.
    pub fn packs_read(&self) -> (usize, usize) {
        (self.packs.len(), self.open.len())
    }
}

/// Creates an empty store under a staging name and renames it into place.
///
/// sled writes its `conf` file in place on creation: a process killed in the middle left a
/// partial file that the next open refuses as corruption (seen in the crash test). A store
/// that appears under its real name is always complete.
fn create_store(dir: &Path) -> Result<()> {
    let staging = dir.join("store.new");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| IndexError::io(&staging, e))?;
    }
    {
        let store = SledStore::open(&staging)?;
        let mut b = Batch::default();
        migrations::version_write(&mut b, STORE_FORMAT_VERSION);
        store.apply(b)?;
        store.flush()?;
    }
    sync_dir(&staging)?;
    let target = dir.join("store");
    std::fs::rename(&staging, &target).map_err(|e| IndexError::io(&target, e))?;
    sync_dir(dir)
}

/// Makes a directory's entries (renames, new files) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| IndexError::io(dir, e))
}

/// Swaps a finished compaction copy in, or cleans up one that never finished.
///
/// Order on disk: the copy is marked `COMPLETE`; the old store moves to `store.old`; the copy
/// moves to `store`; `store.old` goes. Any crash in between leaves a state this resumes from.
fn finish_compaction(dir: &Path) -> Result<()> {
    let staging = dir.join("store.compact");
    let store = dir.join("store");
    let old = dir.join("store.old");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| IndexError::io(p, e)
    };
    if staging.exists() {
        if !staging.join("COMPLETE").is_file() {
            // The copy never finished: the old store is intact and authoritative.
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        } else {
            if store.exists() {
                if old.exists() {
                    std::fs::remove_dir_all(&old).map_err(io(&old))?;
                }
                std::fs::rename(&store, &old).map_err(io(&store))?;
            }
            std::fs::rename(&staging, &store).map_err(io(&staging))?;
        }
    }
    if old.exists() {
        if store.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&old, &store).map_err(io(&old))?;
        }
    }
    let marker = store.join("COMPLETE");
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(io(&marker))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> StoreIdentity {
        StoreIdentity {
            model_fingerprint: "model".into(),
            sae_digest: "saes".into(),
            layers: vec![0, 1],
            chunk: 64,
            sinks: 4,
            overlap: 8,
        }
    }

    /// A document of `n` one-letter words whose features fire in a seed-dependent pattern.
    fn synthetic(n: usize, seed: usize) -> (String, EncodedDocument) {
        let text = "w ".repeat(n);
        let offsets = (0..n).map(|i| (2 * i, 2 * i + 1)).collect();
        let mut postings = BTreeMap::new();
        for layer in 0..2u16 {
            for f in 0..24u32 {
                let m = 5 + f as usize + seed % 7;
                let positions: Vec<u32> = (0..n)
                    .filter(|p| (p * 7 + f as usize * 13 + seed) % m == 0)
                    .map(|p| p as u32)
                    .collect();
                if !positions.is_empty() {
                    postings.insert((layer, f + 100 * u32::from(layer)), positions);
                }
            }
        }
        let encoded = EncodedDocument {
            offsets,
            postings,
            tokenize_seconds: 0.0,
            scan_seconds: 0.0,
            encode_seconds: 0.0,
        };
        (text, encoded)
    }

    /// A fresh data dir with an empty collection `c`.
    fn with_collection() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        index.create_collection("c").unwrap();
        (dir, index)
    }

    fn put(index: &mut Index, id: &str, n: usize, seed: usize) {
        let (text, encoded) = synthetic(n, seed);
        let c = index.collection("c").unwrap();
        let doc = NewDocument {
            collection: "c",
            id: Some(id.into()),
            meta: Vec::new(),
            text: &text,
        };
        index.store_document(c, doc, &encoded, &identity()).unwrap();
        index.commit().unwrap();
    }

    fn coarse_records(index: &Index) -> usize {
        count_prefix(index, b"g/")
    }

    /// The reader's blocks of every feature equal the blocks counted from all postings.
    fn assert_blocks_agree(index: &Index) {
        let cid = index.collection_id("c").unwrap();
        let mut want: BTreeMap<(u16, u32), BTreeMap<u32, u32>> = BTreeMap::new();
        for d in index.documents("c").unwrap() {
            for (k, positions) in index.document_postings("c", &d.id).unwrap() {
                for p in positions {
                    *want
                        .entry(k)
                        .or_default()
                        .entry(p / codec::COARSE_BLOCK_TOKENS)
                        .or_insert(0) += 1;
                }
            }
        }
        let mut reader = index.posting_reader(cid).unwrap();
        for (&(layer, feature), blocks) in &want {
            let got = reader.coarse_blocks(layer, feature).unwrap();
            let want: Vec<(u32, u32)> = blocks.iter().map(|(&b, &c)| (b, c)).collect();
            assert_eq!(got, want, "layer {layer} feature {feature}");
            let tokens: u64 = want.iter().map(|&(_, c)| u64::from(c)).sum();
            assert_eq!(reader.token_count(layer, feature).unwrap(), tokens);
        }
    }

    #[test]
    fn coarse_records_cover_sealed_buckets_and_follow_deletes_and_replaces() {
        let (dir, mut index) = with_collection();
        put(&mut index, "a", 30_000, 1);
        put(&mut index, "b", 30_000, 2);
        // 60,000 positions: the first bucket is still open, so no coarse record exists.
        assert_eq!(coarse_records(&index), 0);
        assert_eq!(index.verify().unwrap(), 2);
        assert_blocks_agree(&index);
        put(&mut index, "c", 30_000, 3);
        // 90,000: bucket 0 (positions below 65,536) is sealed.
        assert!(coarse_records(&index) > 0);
        assert!(index.store.get(&rec::total_key(1, 0, 0)).unwrap().is_some());
        assert_eq!(index.verify().unwrap(), 3);
        assert_blocks_agree(&index);
        // Deleting a sealed document takes its counts away.
        index.delete("c", "b").unwrap();
        assert_eq!(index.verify().unwrap(), 2);
        assert_blocks_agree(&index);
        // Replacing the document that straddles the sealed end, then sealing another bucket.
        put(&mut index, "c", 20_000, 4);
        put(&mut index, "d", 50_000, 5);
        assert_eq!(index.verify().unwrap(), 3);
        assert_blocks_agree(&index);
        drop(index);
        // A pack no record owns (a crash between pack and batch) goes on reopen.
        let packs = PackStore::open(&dir.path().join("packs")).unwrap();
        let stray = packs::encode(&synthetic(10, 0).1.postings).unwrap();
        packs.write(1, 99, &stray).unwrap();
        let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        assert!(!packs.list().unwrap().contains(&(1, 99)));
        assert_eq!(index.verify().unwrap(), 3);
        assert_blocks_agree(&index);
        // Dropping the collection removes every pack and coarse record.
        let mut index = index;
        index.drop_collection("c").unwrap();
        assert!(packs.list().unwrap().is_empty());
        assert_eq!(coarse_records(&index), 0);
        assert_eq!(index.verify().unwrap(), 0);
    }

    fn count_prefix(index: &Index, prefix: &[u8]) -> usize {
        let mut n = 0;
        index
            .store
            .scan_prefix(prefix, &mut |_, _| {
                n += 1;
                Ok(true)
            })
            .unwrap();
        n
    }

    /// Past 2^20 positions the first 16 buckets merge into super-bucket records; deletes and
    /// replaces reach into them; blocks and totals still equal the counts from all postings.
    #[test]
    fn buckets_merge_into_a_super_bucket() {
        let (_dir, mut index) = with_collection();
        for i in 0..34 {
            put(&mut index, &format!("d{i}"), 30_000, i);
        }
        // 1,020,000 positions: 15 sealed buckets, no super-bucket yet.
        assert_eq!(count_prefix(&index, b"h/"), 0);
        assert_blocks_agree(&index);
        put(&mut index, "d34", 30_000, 34);
        // 1,050,000: the first 2^20 positions are one super-bucket; only bucket 16 is left.
        assert!(count_prefix(&index, b"h/") > 0);
        let mut buckets = BTreeSet::new();
        index
            .store
            .scan_prefix(b"g/", &mut |k, _| {
                buckets.insert(rec::parse_coarse_key(k).unwrap().3);
                Ok(true)
            })
            .unwrap();
        assert!(buckets.iter().all(|&b| b >= 16), "{buckets:?}");
        assert_eq!(index.verify().unwrap(), 35);
        assert_blocks_agree(&index);
        // A delete inside the super-bucket and a replace of a document in it.
        index.delete("c", "d3").unwrap();
        put(&mut index, "d5", 10_000, 99);
        assert_eq!(index.verify().unwrap(), 34);
        assert_blocks_agree(&index);
    }

    /// A question over many documents holds at most MAX_OPEN_PACKS files open, and reads the
    /// same postings as one pack at a time.
    #[test]
    fn a_reader_keeps_few_files_open() {
        let (_dir, mut index) = with_collection();
        for i in 0..(MAX_OPEN_PACKS + 20) {
            put(&mut index, &format!("d{i}"), 50, i);
        }
        let cid = index.collection_id("c").unwrap();
        let docs = index.documents("c").unwrap();
        let mut reader = index.posting_reader(cid).unwrap();
        for round in 0..2 {
            for d in &docs {
                let got = reader.posting(d.number, 0, 3).unwrap();
                assert_eq!(
                    got,
                    index.posting(cid, 0, 3, d.number).unwrap(),
                    "round {round}"
                );
            }
            let (read, open) = reader.packs_read();
            assert_eq!(read, docs.len());
            assert!(open <= MAX_OPEN_PACKS, "{open} files open");
        }
    }

    /// A format-2 store (postings as `p/` records, coarse records for every bucket) upgrades
    /// to packs and sealed-bucket coarse records.
    #[test]
    fn a_format_2_store_upgrades_to_packs() {
        let (dir, index) = with_collection();
        {
            let mut index = index;
            put(&mut index, "a", 40_000, 1);
            put(&mut index, "b", 40_000, 2);
            // Turn it back into format 2.
            let cid = index.collection_id("c").unwrap();
            let mut b = Batch::default();
            for d in index.documents("c").unwrap() {
                for ((layer, feature), local) in index
                    .packs
                    .read_owned(cid, d.number)
                    .unwrap()
                    .all()
                    .unwrap()
                {
                    b.put(
                        rec::posting_key(cid, layer, feature, d.number),
                        codec::encode_posting(&local),
                    );
                }
                index.packs.remove(cid, d.number).unwrap();
            }
            migrations::version_write(&mut b, 2);
            index.store.apply(b).unwrap();
            let all_buckets = coarse::migrate_v1(&index.store, dir.path()).unwrap();
            index.store.apply(all_buckets).unwrap();
            index.store.flush().unwrap();
            assert!(index.verify().is_err());
        }
        let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        assert_eq!(migrations::stored_version(&index.store).unwrap(), Some(3));
        assert_eq!(index.verify().unwrap(), 2);
        assert!(coarse_records(&index) > 0);
        assert_blocks_agree(&index);
    }

    #[test]
    fn a_damaged_pack_is_named_by_verify_and_reads() {
        let (dir, mut index) = with_collection();
        put(&mut index, "a", 2_000, 1);
        let path = dir.path().join("packs").join("1-0.pack");
        damage(dir.path(), "1-0.pack", |len| len - 10);
        let e = index.verify().unwrap_err().to_string();
        assert!(e.contains("1-0.pack") && e.contains("checksum"), "{e}");
        let e = index.document_postings("c", "a").unwrap_err().to_string();
        assert!(e.contains("1-0.pack"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = index.verify().unwrap_err().to_string();
        assert!(e.contains("pack is missing"), "{e}");
    }

    /// Flips the bits of one byte of a pack, at `at(file length)`.
    fn damage(dir: &Path, pack: &str, at: fn(usize) -> usize) {
        let path = dir.join("packs").join(pack);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = at(bytes.len());
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
    }

    #[test]
    fn a_document_with_a_damaged_pack_in_a_sealed_bucket_can_be_deleted() {
        let (dir, mut index) = with_collection();
        put(&mut index, "a", 30_000, 1);
        put(&mut index, "b", 30_000, 2);
        put(&mut index, "c", 30_000, 3);
        assert!(coarse_records(&index) > 0, "bucket 0 is sealed");
        damage(dir.path(), "1-1.pack", |len| len / 2);
        // b's counts cannot be subtracted: the coarse records are rebuilt from a and c.
        index.delete("c", "b").unwrap();
        let left: Vec<String> = index
            .documents("c")
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(left, ["a", "c"]);
        assert!(!dir.path().join("packs").join("1-1.pack").exists());
        assert_eq!(index.verify().unwrap(), 2);
        assert_blocks_agree(&index);
        // The collection seals its next bucket as usual afterwards.
        put(&mut index, "d", 60_000, 4);
        assert_eq!(index.verify().unwrap(), 3);
        assert_blocks_agree(&index);
        // Two damaged packs: the rebuild for one needs the other, so the delete is refused,
        // naming it, and nothing changes.
        damage(dir.path(), "1-0.pack", |len| len / 2);
        damage(dir.path(), "1-2.pack", |len| len / 2);
        let e = index.delete("c", "a").unwrap_err().to_string();
        assert!(e.contains("1-2.pack"), "{e}");
        assert_eq!(index.documents("c").unwrap().len(), 3);
    }
}
