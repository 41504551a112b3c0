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
//!
//! Documents stored together ([`StoreGroup`]) share one batch, one flush and one sync of each
//! file folder: every document of a group is visible, or none.
//!
//! This file holds [`Index`] and its read paths; the rest is split by job: `open` (the lock,
//! recovery, journal replay), `write` (collections, storing and deleting documents, the coarse
//! rebuild), `group` (storing documents together), `maintain` (stats, compact, verify) and
//! `reader` ([`PostingReader`]).

mod group;
mod maintain;
mod meta;
mod open;
mod reader;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use roaring::RoaringBitmap;

pub use group::StoreGroup;
pub(crate) use open::rebuild_bm25;
pub use reader::PostingReader;

use super::bm25::{Bm25, PassageHit};
use super::codec;
use super::document::check_document_fields;
use super::error::{IndexError, Result};
use super::packs::PackStore;
use super::passages::{passages, CharIndex, Passage};
use super::records::{self as rec, CollectionRecord, DocPart, DocumentRecord, StoreIdentity};
use super::store::{KvStore, SledStore};
use super::types::{
    Bm25Hit, CollectionInfo, DocumentInfo, DocumentKey, DocumentPage, IndexConfig, LayerFeature,
    NewDocument,
};
use super::vectors::{PassageVectors, VectorStore};

/// One data dir, open and locked.
pub struct Index {
    dir: PathBuf,
    store: SledStore,
    packs: PackStore,
    vectors: VectorStore,
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

impl Index {
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

    /// Checks a document before it is encoded: its collection, size, id and metadata (each
    /// value against its key's type in the collection), and that `identity` (the encoding's)
    /// is what the index was built with.
    pub fn check_document(&self, doc: &NewDocument<'_>, identity: &StoreIdentity) -> Result<()> {
        let c = self.collection(doc.collection)?;
        check_document_fields(doc, self.config.max_document_bytes)?;
        self.new_meta_types(&c, &doc.meta, &BTreeMap::new())?;
        self.check_identity(identity)
    }

    fn collection(&self, name: &str) -> Result<CollectionRecord> {
        match self.store.get(&rec::collection_key(name))? {
            Some(v) => rec::decode(&v, &format!("collection {name}")),
            None => Err(IndexError::UnknownCollection(name.into())),
        }
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

    /// Lists at most `limit` documents of a collection in ingest order, from document number
    /// `from` on, with the number of the document after them, if any.
    pub fn documents_page(
        &self,
        collection: &str,
        from: u32,
        limit: usize,
    ) -> Result<DocumentPage> {
        let c = self.collection(collection)?;
        let mut out = Vec::new();
        let mut next = None;
        self.store
            .scan_prefix(&rec::doc_prefix(DocPart::Record, c.id), &mut |k, v| {
                let Some((_, doc)) = rec::parse_doc_key(k) else {
                    return Ok(true);
                };
                if doc < from {
                    return Ok(true);
                }
                if out.len() == limit {
                    next = Some(doc);
                    return Ok(false);
                }
                let d: DocumentRecord = rec::decode(v, &format!("document {k:?}"))?;
                out.push(DocumentInfo::from(&d));
                Ok(true)
            })?;
        Ok(DocumentPage {
            documents: out,
            next,
        })
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
    ) -> Result<BTreeMap<LayerFeature, Vec<u32>>> {
        let (c, d) = self.record(collection, id)?;
        Ok(self
            .packs
            .read_owned(c.id, d.doc)?
            .all()?
            .into_iter()
            .map(|(k, local)| (k, local.iter().map(|p| p + d.first_position).collect()))
            .collect())
    }

    /// Returns the postings of `feature` across a collection: per document number, its
    /// collection-global positions.
    pub fn feature_postings(
        &self,
        collection: &str,
        feature: LayerFeature,
    ) -> Result<Vec<(u32, Vec<u32>)>> {
        let c = self.collection(collection)?;
        let mut out = Vec::new();
        for d in self.document_records(c.id)? {
            let local = self.packs.read_owned(c.id, d.doc)?.get(feature)?;
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

    /// Returns the document-local positions where `feature` fired in document `doc`.
    pub fn posting(&self, cid: u32, feature: LayerFeature, doc: u32) -> Result<Vec<u32>> {
        self.packs.read_owned(cid, doc)?.get(feature)
    }

    /// Returns the text of document number `doc` of collection `cid`.
    pub fn text_of(&self, cid: u32, doc: u32) -> Result<String> {
        self.stored_text(cid, doc)
    }

    /// Returns the token char ranges of document number `doc` of collection `cid`.
    pub fn offsets_of(&self, cid: u32, doc: u32) -> Result<Vec<(usize, usize)>> {
        self.stored_offsets(cid, doc)
    }

    /// Returns the record of document number `doc` of collection `cid`.
    fn record_of(&self, cid: u32, doc: u32) -> Result<DocumentRecord> {
        let what = format!("document {cid}/{doc}");
        let v = self
            .store
            .get(&rec::doc_key(DocPart::Record, cid, doc))?
            .ok_or_else(|| IndexError::InvalidInput(format!("{what} is not stored")))?;
        rec::decode(&v, &what)
    }

    /// Returns the passage vectors of document number `doc` of collection `cid` (`None`: it
    /// has none).
    pub fn vectors_of(&self, cid: u32, doc: u32) -> Result<Option<PassageVectors>> {
        self.vectors.read(cid, doc)
    }

    /// Returns the BM25 passages of document number `doc` of collection `cid`, in order: what
    /// its passage vectors embed.
    pub fn passages_of(&self, cid: u32, doc: u32) -> Result<Vec<Passage>> {
        Ok(passages(
            &self.stored_text(cid, doc)?,
            &self.stored_offsets(cid, doc)?,
        ))
    }

    /// Lists every stored document whose passage vectors are missing or were made by a model
    /// other than `embedder`, in store order.
    pub fn documents_without_vectors(&self, embedder: &str) -> Result<Vec<DocumentKey>> {
        let mut out = Vec::new();
        for c in self.collections()? {
            let cid = self.collection_id(&c.name)?;
            for d in self.document_records(cid)? {
                // A damaged file counts as missing: embedding the document again replaces it.
                let current = self
                    .vectors
                    .embedder_of(cid, d.doc)
                    .ok()
                    .flatten()
                    .is_some_and(|name| name == embedder);
                if !current {
                    out.push(DocumentKey { cid, doc: d.doc });
                }
            }
        }
        Ok(out)
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
}
