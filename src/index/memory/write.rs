//! Changing a data dir: collections created and dropped, encoded documents stored (replacing
//! one of the same id; groups of them in `group`), documents deleted (with the coarse rebuild
//! when a pack is damaged), each change one sled batch with its journal entry, then BM25.

use super::{now_unix, u32_be, Index};
use crate::index::coarse::{self, CoarseEdits};
use crate::index::codec;
use crate::index::document::check_named;
use crate::index::error::{IndexError, Result};
use crate::index::passages::Passage;
use crate::index::records::{
    self as rec, CollectionRecord, DocPart, DocumentRecord, JournalOp, StoreIdentity,
};
use crate::index::store::{Batch, KvStore};
use crate::index::types::{DocumentKey, EncodedDocument, Ingested, NewDocument};
use crate::index::vectors::PassageVectors;

/// Adds to `b` the deletes of a document's records (its id entry and every part).
fn delete_records(b: &mut Batch, cid: u32, doc: u32, external_id: &str) {
    b.delete(rec::external_key(cid, external_id));
    for part in DocPart::ALL {
        b.delete(rec::doc_key(part, cid, doc));
    }
}

impl Index {
    /// Creates a collection.
    pub fn create_collection(&mut self, name: &str) -> Result<()> {
        check_named("collection name", name)?;
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
        self.store.flush()?;
        // A crash before this only leaves the folder to be made at the first ingest.
        self.bm25.create(id)
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
        prefixes.push(rec::meta_type_prefix(c.id));
        let numbers: Vec<u32> = self.document_records(c.id)?.iter().map(|d| d.doc).collect();
        for p in prefixes {
            self.store.scan_prefix(&p, &mut |k, _| {
                b.delete(k.to_vec());
                Ok(true)
            })?;
        }
        self.commit_batch(b, vec![JournalOp::DropCollection { collection: c.id }])?;
        self.remove_files(c.id, numbers);
        self.bm25.drop_collection(c.id)?;
        self.commit()
    }

    /// Stores a document encoded with `identity` (by the ingest layer); replaces an existing
    /// one with the same id. Checks the document again: the index may have changed during the
    /// scan (the collection dropped, say). A group of one: see [`Index::group`].
    ///
    /// The document is durable and its postings visible when this returns; its BM25 passages
    /// become searchable at the next [`Index::commit`] (or the next open).
    pub fn store_encoded(
        &mut self,
        doc: NewDocument<'_>,
        encoded: &EncodedDocument,
        identity: &StoreIdentity,
    ) -> Result<Ingested> {
        let mut group = self.group(identity);
        group.add(doc, encoded)?;
        let mut stored = group.commit()?;
        Ok(stored.remove(0))
    }

    /// Adds to `b` the deletes of every record of a document, and to `coarse` the removal
    /// of its block counts.
    pub(super) fn delete_writes(
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
            for (feature, local) in self.packs.read_owned(cid, doc)?.all()? {
                let sealed = local
                    .iter()
                    .map(|p| p + d.first_position)
                    .filter(|&p| p < sealed_end);
                let super_end = codec::super_end(sealed_end);
                coarse.apply(&self.store, cid, feature, sealed, true, super_end)?;
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
        self.remove_files(c.id, [d.doc]);
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
    pub(super) fn commit_batch(&mut self, mut b: Batch, journal: Vec<JournalOp>) -> Result<()> {
        let seq = self.seq + 1;
        b.put(rec::KEY_SEQ.to_vec(), seq.to_be_bytes().to_vec());
        b.put(rec::journal_key(seq), rec::encode(&journal)?);
        self.store.apply(b)?;
        self.store.flush()?;
        self.seq = seq;
        Ok(())
    }

    /// Commits pending BM25 changes, records that every collection's passages hold the
    /// store's sequence number, and trims the journal they cover.
    pub fn commit(&mut self) -> Result<()> {
        self.bm25.commit(self.seq)?;
        let mut b = Batch::default();
        self.store.scan_prefix(rec::JOURNAL_PREFIX, &mut |k, _| {
            b.delete(k.to_vec());
            Ok(true)
        })?;
        let seq = self.seq.to_be_bytes().to_vec();
        if self.store.get(rec::KEY_BM25_SEQ)?.as_deref() != Some(&seq[..]) {
            b.put(rec::KEY_BM25_SEQ.to_vec(), seq);
        }
        if !b.is_empty() {
            // Not flushed: a stale journal entry only replays a change tantivy already has.
            self.store.apply(b)?;
        }
        Ok(())
    }

    /// Removes the packs and vectors of documents deleted by a committed batch: a failure
    /// only leaves an orphan, which the next open removes.
    pub(super) fn remove_files(&self, cid: u32, docs: impl IntoIterator<Item = u32>) {
        for doc in docs {
            if let Err(e) = self.packs.remove(cid, doc) {
                tracing::warn!(cid, doc, error = %e, "could not remove a deleted document's pack");
            }
            if let Err(e) = self.vectors.remove(cid, doc) {
                tracing::warn!(cid, doc, error = %e, "could not remove a deleted document's vectors");
            }
        }
    }

    /// Stores the passage vectors of a stored document (made after its ingest: the ingest
    /// layer's backfill of documents without vectors, or with another model's); replaces the
    /// ones it had. Durable when this returns.
    pub fn put_vectors(&mut self, key: DocumentKey, vectors: &PassageVectors) -> Result<()> {
        let record = self.record_of(key.cid, key.doc)?;
        let passages = self.passages_of(key.cid, key.doc)?;
        check_vectors_match(vectors, &passages, &record.external_id)?;
        self.vectors.write(key.cid, key.doc, vectors)
    }
}

/// Refuses vectors whose passages are not the document's BM25 passages, one row each.
pub(super) fn check_vectors_match(
    vectors: &PassageVectors,
    passages: &[Passage],
    id: &str,
) -> Result<()> {
    vectors.check()?;
    let same = vectors.passages.len() == passages.len()
        && vectors
            .passages
            .iter()
            .zip(passages)
            .all(|(v, p)| *v == p.chars);
    if same {
        Ok(())
    } else {
        Err(IndexError::InvalidInput(format!(
            "the passage vectors of document `{id}` do not match its {} passages",
            passages.len()
        )))
    }
}
