//! Changing a data dir: collections created and dropped, encoded documents stored (replacing
//! one of the same id), documents deleted (with the coarse rebuild when a pack is damaged),
//! each change one sled batch with its journal entry, then BM25.

use std::time::Instant;

use roaring::RoaringBitmap;

use super::{now_unix, u32_be, Index};
use crate::index::coarse::{self, CoarseEdits};
use crate::index::codec;
use crate::index::document::{check_named, GENERATED_ID_PREFIX};
use crate::index::error::{IndexError, Result};
use crate::index::packs;
use crate::index::passages::{passages, Passage};
use crate::index::records::{
    self as rec, CollectionRecord, DocPart, DocumentRecord, JournalOp, MetaEntry, StoreIdentity,
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
        encoded.check()?;
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
        self.put_meta_types(&c, &doc.meta, &mut b)?;
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
        for &feature in encoded.postings.keys() {
            let packed = feature.pack().ok_or_else(|| {
                IndexError::InvalidInput(format!(
                    "layer {} feature {} does not fit the posting key",
                    feature.layer, feature.feature
                ))
            })?;
            features.insert(packed);
        }
        let mut fbytes = Vec::with_capacity(features.serialized_size());
        features
            .serialize_into(&mut fbytes)
            .map_err(|e| IndexError::io(&self.dir, e))?;
        b.put(rec::doc_key(DocPart::Features, c.id, number), fbytes);
        let doc_passages = passages(doc.text, &encoded.offsets);
        if let Some(v) = &encoded.vectors {
            check_vectors_match(v, &doc_passages, &external_id)?;
        }
        // The pack and the vectors go to disk (synced) before the batch that makes them
        // reachable.
        self.packs
            .write(c.id, number, &packs::encode(&encoded.postings)?)?;
        if let Some(v) = &encoded.vectors {
            if let Err(e) = self.vectors.write(c.id, number, v) {
                self.remove_files(c.id, [number]);
                return Err(e);
            }
        }
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
            self.remove_files(c.id, [number]);
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
            self.remove_files(c.id, [old]);
            self.bm25.delete(c.id, old)?;
        }
        self.bm25.put(c.id, number, &doc_passages)?;
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
    fn commit_batch(&mut self, mut b: Batch, journal: Vec<JournalOp>) -> Result<()> {
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
    fn remove_files(&self, cid: u32, docs: impl IntoIterator<Item = u32>) {
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
fn check_vectors_match(vectors: &PassageVectors, passages: &[Passage], id: &str) -> Result<()> {
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
