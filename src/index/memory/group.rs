//! Storing documents together: a [`StoreGroup`] writes each document's files as it is added,
//! then one sled batch for all of them (records, the coarse records of the buckets they seal,
//! one journal entry), flushed once, then their BM25 passages.
//!
//! The order is a single document's, per group: files synced (the folders once) before the
//! batch that makes them reachable, the batch flushed before tantivy sees the passages. So a
//! crash at any moment leaves every document of a group whole or absent, and all of one group
//! alike; files of a group that never landed are orphans, removed on open.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use roaring::RoaringBitmap;

use super::write::check_vectors_match;
use super::{now_unix, Index};
use crate::index::coarse::{self, CoarseEdits};
use crate::index::codec;
use crate::index::document::{check_document_fields, MetaType, GENERATED_ID_PREFIX};
use crate::index::error::{IndexError, Result};
use crate::index::packs;
use crate::index::passages::{passages, Passage};
use crate::index::records::{
    self as rec, CollectionRecord, DocPart, DocumentRecord, JournalOp, MetaEntry, StoreIdentity,
};
use crate::index::store::Batch;
use crate::index::types::{DocumentKey, EncodedDocument, Ingested, LayerFeature, NewDocument};

/// A collection as a group changes it.
struct Staging {
    /// Its record when the group began: where its sealed buckets ended.
    before: CollectionRecord,
    /// Its record with the group's documents counted.
    after: CollectionRecord,
    /// The metadata key types the group's documents fix.
    types: BTreeMap<String, MetaType>,
    /// External id -> place in the group of its latest document with that id.
    ids: HashMap<String, usize>,
}

/// A document added to a group: its files written, its records ready.
struct Staged {
    cid: u32,
    /// Its record (the sequence number is the group's, set when it commits).
    record: DocumentRecord,
    text: Vec<u8>,
    offsets: Vec<u8>,
    /// Its (layer, feature) set, serialized.
    features: Vec<u8>,
    /// Per (layer, feature), its tokens per collection-global coarse block, ascending: what
    /// sealing the buckets it reaches adds, counted from the postings in memory rather than
    /// read back from its pack at commit.
    blocks: Vec<(LayerFeature, Vec<(u32, u32)>)>,
    passages: Vec<Passage>,
    /// The stored document of the same id it replaces.
    replaces: Option<u32>,
    /// Replaced by a later document of the same group, so never stored.
    superseded: bool,
    out: Ingested,
}

/// What a group writes to sled, and what it replaces.
struct GroupBatch {
    /// Every collection's coarse changes and records, every document's records.
    writes: Batch,
    /// The batch's journal entry.
    journal: Vec<JournalOp>,
    /// The stored documents it replaces.
    replaced: Vec<DocumentKey>,
}

/// Documents stored together: added one by one ([`StoreGroup::add`], which writes each one's
/// pack and vectors), made durable and visible at once by [`StoreGroup::commit`]. Dropped
/// without a commit, it removes its files and stores nothing. It holds the index alone: no
/// other write can come between its documents.
pub struct StoreGroup<'a> {
    index: &'a mut Index,
    identity: StoreIdentity,
    collections: BTreeMap<String, Staging>,
    staged: Vec<Staged>,
    tokens: usize,
    /// Whether any document brought passage vectors (their folder is synced too).
    vectors: bool,
    /// Set once the batch was tried: the files stay from then on.
    settled: bool,
}

impl Index {
    /// Starts a group of documents encoded with `identity`, stored by [`StoreGroup::commit`]
    /// in one atomic batch.
    pub fn group(&mut self, identity: &StoreIdentity) -> StoreGroup<'_> {
        StoreGroup {
            index: self,
            identity: identity.clone(),
            collections: BTreeMap::new(),
            staged: Vec::new(),
            tokens: 0,
            vectors: false,
            settled: false,
        }
    }
}

impl StoreGroup<'_> {
    /// Returns the number of documents added.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Returns whether no document was added.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Returns the tokens of the documents added.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Adds a document encoded with the group's identity; a later one with the same id
    /// replaces it (and an earlier stored one, as [`Index::store_encoded`] does). Checks the
    /// document as [`Index::check_document`] does, its metadata also against the types earlier
    /// documents of the group fix, and writes its pack and vectors (not yet reachable).
    ///
    /// A refused document leaves the group as it was: the caller drops the group (storing
    /// none of its documents) or goes on without that one.
    pub fn add(&mut self, doc: NewDocument<'_>, encoded: &EncodedDocument) -> Result<()> {
        let t0 = Instant::now();
        self.stage_collection(doc.collection)?;
        let staging = &self.collections[doc.collection];
        let c = staging.after.clone();
        check_document_fields(&doc, self.index.config.max_document_bytes)?;
        let types = self.index.new_meta_types(&c, &doc.meta, &staging.types)?;
        self.index.check_identity(&self.identity)?;
        encoded.check()?;
        let tokens = encoded.tokens();
        if c.next_position + tokens as u64 > u64::from(u32::MAX) + 1 {
            return Err(IndexError::PositionsExhausted {
                collection: c.name,
                needed: tokens,
            });
        }
        let number = c.next_doc;
        let next_doc = number.checked_add(1).ok_or_else(|| {
            IndexError::InvalidInput(format!(
                "collection `{}` has no document numbers left",
                c.name
            ))
        })?;
        let external_id = doc
            .id
            .clone()
            .unwrap_or_else(|| format!("{GENERATED_ID_PREFIX}{number}"));
        let earlier = staging.ids.get(&external_id).copied();
        let replaces = match earlier {
            Some(i) => self.staged[i].replaces,
            None => self.index.document_number(c.id, &external_id)?,
        };
        let features = feature_set(encoded, &self.index.dir)?;
        let doc_passages = passages(doc.text, &encoded.offsets);
        if let Some(v) = &encoded.vectors {
            check_vectors_match(v, &doc_passages, &external_id)?;
        }
        let first_position = c.next_position as u32;
        let blocks = coarse::document_block_counts(&encoded.postings, first_position);
        let pack = packs::encode(&encoded.postings)?;
        self.index
            .packs
            .write_unsynced_folder(c.id, number, &pack)?;
        if let Some(v) = &encoded.vectors {
            if let Err(e) = self.index.vectors.write_unsynced_folder(c.id, number, v) {
                self.index.remove_files(c.id, [number]);
                return Err(e);
            }
            self.vectors = true;
        }
        // Nothing below fails: the group takes the document.
        if let Some(i) = earlier {
            let e = &mut self.staged[i];
            e.superseded = true;
            e.replaces = None;
            // Never reachable: its files can go now.
            self.index.remove_files(e.cid, [e.record.doc]);
        }
        let staging = self
            .collections
            .get_mut(doc.collection)
            .expect("staged above");
        staging.after.next_doc = next_doc;
        staging.after.next_position += tokens as u64;
        staging.types.extend(types);
        staging.ids.insert(external_id.clone(), self.staged.len());
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
            seq: 0,
            ingested_unix: now_unix(),
        };
        self.staged.push(Staged {
            cid: c.id,
            record,
            text: doc.text.as_bytes().to_vec(),
            offsets: codec::encode_offsets(&encoded.offsets),
            features,
            blocks,
            passages: doc_passages,
            replaces,
            superseded: false,
            out: Ingested {
                id: external_id,
                tokens,
                replaced: earlier.is_some() || replaces.is_some(),
                scan_seconds: encoded.scan_seconds,
                encode_seconds: encoded.encode_seconds,
                store_seconds: t0.elapsed().as_secs_f64(),
            },
        });
        self.tokens += tokens;
        Ok(())
    }

    /// Reads the record of collection `name` when the group first meets it.
    fn stage_collection(&mut self, name: &str) -> Result<()> {
        if !self.collections.contains_key(name) {
            let c = self.index.collection(name)?;
            self.collections.insert(
                name.into(),
                Staging {
                    before: c.clone(),
                    after: c,
                    types: BTreeMap::new(),
                    ids: HashMap::new(),
                },
            );
        }
        Ok(())
    }

    /// Stores every document added: the folders of their files synced, one sled batch
    /// flushed, then their BM25 passages added (searchable at the next [`Index::commit`]).
    /// Returns what was stored, in the order added; each document's `store_seconds` is its
    /// own part plus its share (by tokens) of the group's.
    ///
    /// A failure before the batch stores none of the documents and removes their files; after
    /// it (BM25), every document is stored whole and the next open re-adds the passages.
    pub fn commit(mut self) -> Result<Vec<Ingested>> {
        if self.staged.is_empty() {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let GroupBatch {
            writes,
            journal,
            replaced,
        } = self.batch()?;
        self.index.packs.sync_folder()?;
        if self.vectors {
            self.index.vectors.sync_folder()?;
        }
        // A failed commit keeps the files: if the batch did not land, the next open removes
        // them as orphans; if it did, the documents need them.
        self.settled = true;
        self.index.commit_batch(writes, journal)?;
        for old in replaced {
            self.index.remove_files(old.cid, [old.doc]);
            self.index.bm25.delete(old.cid, old.doc)?;
        }
        let staged = std::mem::take(&mut self.staged);
        for s in staged.iter().filter(|s| !s.superseded) {
            self.index.bm25.put(s.cid, s.record.doc, &s.passages)?;
            tracing::debug!(id = %s.record.external_id, tokens = s.record.tokens, seq = self.index.seq, "document stored");
        }
        let shared = t0.elapsed().as_secs_f64();
        let tokens = self.tokens.max(1) as f64;
        Ok(staged
            .into_iter()
            .map(|s| Ingested {
                store_seconds: s.out.store_seconds + shared * s.out.tokens as f64 / tokens,
                ..s.out
            })
            .collect())
    }

    /// Returns the group's batch; the documents' bytes move into it.
    fn batch(&mut self) -> Result<GroupBatch> {
        let index = &*self.index;
        let seq = index.seq + 1;
        let mut b = Batch::default();
        if index.identity()?.is_none() {
            b.put(rec::KEY_IDENTITY.to_vec(), rec::encode(&self.identity)?);
        }
        let mut replaced = Vec::new();
        for staging in self.collections.values() {
            let cid = staging.before.id;
            let sealed_before = codec::sealed_end(staging.before.next_position);
            let sealed_after = codec::sealed_end(staging.after.next_position);
            let olds: Vec<u32> = self
                .staged
                .iter()
                .filter(|s| s.cid == cid)
                .filter_map(|s| s.replaces)
                .collect();
            let mut coarse = CoarseEdits::default();
            for &old in &olds {
                index.delete_writes(cid, sealed_before, old, &mut b, &mut coarse)?;
                replaced.push(DocumentKey { cid, doc: old });
            }
            if sealed_after > sealed_before {
                let super_before = codec::super_end(sealed_before);
                let super_after = codec::super_end(sealed_after);
                if super_after > super_before {
                    coarse.promote(&index.store, cid, super_before..super_after)?;
                }
                // Stored documents reaching into the sealed buckets are read from their
                // packs; the group's own are counted from the blocks kept at `add` (bucket
                // ends are block ends, so keeping the blocks inside is keeping the positions).
                let docs: Vec<coarse::DocPlace> = index
                    .document_records(cid)?
                    .iter()
                    .filter(|d| !olds.contains(&d.doc))
                    .map(|d| (d.doc, d.first_position, d.tokens))
                    .collect();
                coarse::add_range(
                    &mut coarse,
                    &index.store,
                    &index.packs,
                    cid,
                    &docs,
                    sealed_before..sealed_after,
                    super_after,
                )?;
                let sealing = sealed_before / codec::COARSE_BLOCK_TOKENS
                    ..sealed_after / codec::COARSE_BLOCK_TOKENS;
                for s in self.staged.iter().filter(|s| s.cid == cid && !s.superseded) {
                    for (feature, blocks) in &s.blocks {
                        let inside: Vec<(u32, u32)> = blocks
                            .iter()
                            .copied()
                            .filter(|(b, _)| sealing.contains(b))
                            .collect();
                        coarse.apply_counts(
                            &index.store,
                            cid,
                            *feature,
                            inside,
                            false,
                            super_after,
                        )?;
                    }
                }
            }
            coarse.write(&mut b);
            for (key, t) in &staging.types {
                b.put(rec::meta_type_key(cid, key), vec![t.code()]);
            }
            b.put(
                rec::collection_key(&staging.after.name),
                rec::encode(&staging.after)?,
            );
        }
        let mut journal = Vec::new();
        for s in &mut self.staged {
            let (cid, number) = (s.cid, s.record.doc);
            if let Some(old) = s.replaces {
                journal.push(JournalOp::Delete {
                    collection: cid,
                    doc: old,
                });
            }
            if s.superseded {
                continue;
            }
            let record = DocumentRecord {
                seq,
                ..s.record.clone()
            };
            b.put(
                rec::doc_key(DocPart::Record, cid, number),
                rec::encode(&record)?,
            );
            b.put(
                rec::external_key(cid, &record.external_id),
                number.to_be_bytes().to_vec(),
            );
            b.put(
                rec::doc_key(DocPart::Text, cid, number),
                std::mem::take(&mut s.text),
            );
            b.put(
                rec::doc_key(DocPart::Offsets, cid, number),
                std::mem::take(&mut s.offsets),
            );
            b.put(
                rec::doc_key(DocPart::Features, cid, number),
                std::mem::take(&mut s.features),
            );
            journal.push(JournalOp::Put {
                collection: cid,
                doc: number,
            });
        }
        Ok(GroupBatch {
            writes: b,
            journal,
            replaced,
        })
    }
}

impl Drop for StoreGroup<'_> {
    fn drop(&mut self) {
        if !self.settled {
            for s in self.staged.iter().filter(|s| !s.superseded) {
                self.index.remove_files(s.cid, [s.record.doc]);
            }
        }
    }
}

/// Returns the serialized set of a document's (layer, feature) keys.
fn feature_set(encoded: &EncodedDocument, dir: &Path) -> Result<Vec<u8>> {
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
    let mut bytes = Vec::with_capacity(features.serialized_size());
    features
        .serialize_into(&mut bytes)
        .map_err(|e| IndexError::io(dir, e))?;
    Ok(bytes)
}
