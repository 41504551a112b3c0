//! Coarse block counts: the first pass of collection-wide retrieval.
//!
//! For each (layer, feature) a collection keeps, per block of
//! [`COARSE_BLOCK_TOKENS`] collection-global positions, how
//! many tokens of the block fired it. Records are split into buckets of `2^16` positions
//! (`g/{cid}{layer}{feature}{bucket}`) and written once, when the collection's positions pass
//! the end of the bucket (the bucket is *sealed*); only deleting a document rewrites them.
//! sled costs about 250 bytes per record on disk, so records rewritten by every small ingest
//! cost more than the postings themselves (`docs/index-size.md`). The open tail (under
//! `2^16` positions) has no records: retrieval counts its blocks from the postings packs.
//! Retrieval reads these small records for the question's features, ranks blocks, and decodes
//! token postings only inside the best blocks: its cost follows the hits, not the size of the
//! collection.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use std::ops::Range;

use super::codec::{self, COARSE_BLOCKS_PER_BUCKET, COARSE_BLOCKS_PER_SUPER, COARSE_BLOCK_TOKENS};
use super::error::{IndexError, Result};
use super::packs::{self, PackStore};
use super::records::{self as rec, CollectionRecord, DocPart, DocumentRecord};
use super::store::{Batch, KvStore};
use super::types::{BlockCount, LayerFeature};

/// Block counts of one coarse record: block within the bucket -> tokens that fired.
type Counts = BTreeMap<u32, u32>;

/// Pending changes to coarse records, loaded on first touch and written in one batch.
#[derive(Default)]
pub struct CoarseEdits {
    records: BTreeMap<Vec<u8>, Counts>,
    /// Sealed-token totals per (layer, feature) (`n/` records).
    totals: BTreeMap<Vec<u8>, u64>,
    /// Start every record empty instead of from the store (rebuilding all of them).
    from_scratch: bool,
}

impl CoarseEdits {
    /// Edits that ignore the stored records: for rebuilding every record.
    pub fn from_scratch() -> Self {
        Self {
            records: BTreeMap::new(),
            totals: BTreeMap::new(),
            from_scratch: true,
        }
    }

    /// The stored value of `key`, or none when rebuilding from scratch.
    fn stored(from_scratch: bool, store: &dyn KvStore, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if from_scratch {
            Ok(None)
        } else {
            store.get(key)
        }
    }

    fn record(&mut self, store: &dyn KvStore, key: Vec<u8>) -> Result<&mut Counts> {
        let from_scratch = self.from_scratch;
        Ok(match self.records.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let counts = match Self::stored(from_scratch, store, e.key())? {
                    Some(v) => decode(e.key(), &v)?
                        .into_iter()
                        .map(|b| (b.block, b.tokens))
                        .collect(),
                    None => Counts::new(),
                };
                e.insert(counts)
            }
        })
    }

    fn total(&mut self, store: &dyn KvStore, key: Vec<u8>) -> Result<&mut u64> {
        let from_scratch = self.from_scratch;
        Ok(match self.totals.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let n = match Self::stored(from_scratch, store, e.key())? {
                    Some(v) => read_total(e.key(), &v)?,
                    None => 0,
                };
                e.insert(n)
            }
        })
    }

    /// Adds (or with `remove`, takes away) the sealed global `positions` where `feature`
    /// fired; those below `super_end` count in super-bucket records.
    pub fn apply(
        &mut self,
        store: &dyn KvStore,
        cid: u32,
        feature: LayerFeature,
        positions: impl Iterator<Item = u32>,
        remove: bool,
        super_end: u32,
    ) -> Result<()> {
        self.apply_counts(
            store,
            cid,
            feature,
            block_counts(positions),
            remove,
            super_end,
        )
    }

    /// Adds (or with `remove`, takes away) the sealed tokens where `feature` fired, counted
    /// per global block (`counts`, ascending by block, as [`block_counts`] returns them).
    pub fn apply_counts(
        &mut self,
        store: &dyn KvStore,
        cid: u32,
        feature: LayerFeature,
        counts: Vec<(u32, u32)>,
        remove: bool,
        super_end: u32,
    ) -> Result<()> {
        let n: u64 = counts.iter().map(|&(_, c)| u64::from(c)).sum();
        if n > 0 {
            let total = self.total(store, rec::total_key(cid, feature))?;
            *total = if remove {
                total.checked_sub(n).ok_or_else(|| {
                    IndexError::corrupt(
                        format!("sealed total of {feature}"),
                        "holds fewer tokens than a document being removed",
                    )
                })?
            } else {
                *total + n
            };
        }
        // Blocks ascend, so a record's blocks come in one run: its key is made and looked up
        // once per run, not once per block.
        let mut run: Option<((bool, u32), &mut Counts)> = None;
        for (global, n) in counts {
            let is_super = global * COARSE_BLOCK_TOKENS < super_end;
            let per_record = if is_super {
                COARSE_BLOCKS_PER_SUPER
            } else {
                COARSE_BLOCKS_PER_BUCKET
            };
            let (bucket, block) = (global / per_record, global % per_record);
            let record = match run.take() {
                Some((place, counts)) if place == (is_super, bucket) => counts,
                _ => {
                    let key = if is_super {
                        rec::super_key(cid, feature, bucket)
                    } else {
                        rec::coarse_key(cid, feature, bucket)
                    };
                    self.record(store, key)?
                }
            };
            let c = record.entry(block).or_insert(0);
            if remove {
                *c = c.checked_sub(n).ok_or_else(|| {
                    IndexError::corrupt(
                        format!("coarse record {feature} bucket {bucket}"),
                        "holds fewer tokens than a document being removed",
                    )
                })?;
                if *c == 0 {
                    record.remove(&block);
                }
            } else {
                *c += n;
            }
            run = Some(((is_super, bucket), record));
        }
        Ok(())
    }

    /// Merges the stored bucket records of `range` (a whole number of super-buckets the
    /// collection has just passed) into super-bucket records; the bucket records go.
    pub fn promote(&mut self, store: &dyn KvStore, cid: u32, range: Range<u32>) -> Result<()> {
        let buckets =
            range.start / codec::COARSE_BUCKET_TOKENS..range.end / codec::COARSE_BUCKET_TOKENS;
        let mut keys = Vec::new();
        store.scan_prefix(&rec::coarse_prefix(cid), &mut |k, _| {
            let (_, feature, bucket) = rec::parse_coarse_key(k)
                .ok_or_else(|| IndexError::corrupt(format!("{k:?}"), "bad coarse key"))?;
            if buckets.contains(&bucket) {
                keys.push((k.to_vec(), feature, bucket));
            }
            Ok(true)
        })?;
        for (key, feature, bucket) in keys {
            let counts = std::mem::take(self.record(store, key)?);
            let first = bucket * COARSE_BLOCKS_PER_BUCKET;
            for (block, n) in counts {
                let global = first + block;
                let index = global / COARSE_BLOCKS_PER_SUPER;
                *self
                    .record(store, rec::super_key(cid, feature, index))?
                    .entry(global % COARSE_BLOCKS_PER_SUPER)
                    .or_insert(0) += n;
            }
        }
        Ok(())
    }

    /// Adds the writes to `b`: changed records, or deletes of emptied ones.
    pub fn write(self, b: &mut Batch) {
        for (key, n) in self.totals {
            if n == 0 {
                b.delete(key);
            } else {
                b.put(key, n.to_be_bytes().to_vec());
            }
        }
        for (key, counts) in self.records {
            if counts.is_empty() {
                b.delete(key);
            } else {
                b.put(key, encode(counts));
            }
        }
    }
}

/// Counts each posting list of a document whose first global position is `first_position`
/// per global block, in the lists' order; a long document's lists on several threads, as its
/// pack is encoded ([`packs::threads_for`]).
pub fn document_block_counts(
    postings: &BTreeMap<LayerFeature, Vec<u32>>,
    first_position: u32,
) -> Vec<(LayerFeature, Vec<(u32, u32)>)> {
    document_block_counts_on(postings, first_position, packs::threads_for(postings))
}

/// Counts as [`document_block_counts`] does on `threads` threads (at least one).
pub fn document_block_counts_on(
    postings: &BTreeMap<LayerFeature, Vec<u32>>,
    first_position: u32,
    threads: usize,
) -> Vec<(LayerFeature, Vec<(u32, u32)>)> {
    let lists: Vec<&[u32]> = postings.values().map(Vec::as_slice).collect();
    let counted = packs::in_runs(&lists, threads, |run| {
        run.iter()
            .map(|local| block_counts(local.iter().map(|&p| p + first_position)))
            .collect::<Vec<_>>()
    });
    postings
        .keys()
        .copied()
        .zip(counted.into_iter().flatten())
        .collect()
}

/// Counts positions per global block, ascending by block (postings ascend, so counting is one
/// pass; any other order is sorted after).
pub fn block_counts(positions: impl Iterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut ascending = true;
    for p in positions {
        let block = p / COARSE_BLOCK_TOKENS;
        match out.last_mut() {
            Some((last, n)) if *last == block => *n += 1,
            last => {
                ascending &= last.is_none_or(|(l, _)| *l < block);
                out.push((block, 1));
            }
        }
    }
    if !ascending {
        out.sort_unstable_by_key(|&(block, _)| block);
        out.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
    }
    out
}

fn read_total(key: &[u8], v: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| IndexError::corrupt(format!("sealed total {key:?}"), "not a u64"))
}

/// Returns how many tokens of the sealed buckets fired `feature`.
pub fn sealed_total(store: &dyn KvStore, cid: u32, feature: LayerFeature) -> Result<u64> {
    let key = rec::total_key(cid, feature);
    match store.get(&key)? {
        Some(v) => read_total(&key, &v),
        None => Ok(0),
    }
}

/// Blocks per record under `key`: a super-bucket's (`h/`) or a bucket's (`g/`).
fn blocks_per_record(key: &[u8]) -> u32 {
    if key.starts_with(b"h/") {
        COARSE_BLOCKS_PER_SUPER
    } else {
        COARSE_BLOCKS_PER_BUCKET
    }
}

fn decode(key: &[u8], v: &[u8]) -> Result<Vec<BlockCount>> {
    codec::decode_coarse(v, blocks_per_record(key))
        .map_err(|e| IndexError::corrupt(format!("coarse record {key:?}"), e))
}

/// Encodes a record's counts (block within the record -> tokens).
fn encode(counts: Counts) -> Vec<u8> {
    let v: Vec<BlockCount> = counts
        .into_iter()
        .map(|(block, tokens)| BlockCount { block, tokens })
        .collect();
    codec::encode_coarse(&v)
}

/// Returns the global blocks of `feature` across a collection with their counts, ascending.
pub fn read(store: &dyn KvStore, cid: u32, feature: LayerFeature) -> Result<Vec<BlockCount>> {
    let mut out = Vec::new();
    // Super-buckets first: they cover the lowest positions.
    for prefix in [
        rec::super_feature_prefix(cid, feature),
        rec::coarse_feature_prefix(cid, feature),
    ] {
        store.scan_prefix(&prefix, &mut |k, v| {
            let (_, _, index) = rec::parse_coarse_key(k)
                .ok_or_else(|| IndexError::corrupt(format!("{k:?}"), "bad coarse key"))?;
            let first = index * blocks_per_record(k);
            for b in decode(k, v)? {
                out.push(BlockCount {
                    block: first + b.block,
                    ..b
                });
            }
            Ok(true)
        })?;
    }
    Ok(out)
}

/// Adds to `edits` the positions inside `range` of every document in `docs`
/// ((number, first position, tokens)): what sealing the buckets of `range` writes; positions
/// below `super_end` go to super-bucket records.
pub fn add_range(
    edits: &mut CoarseEdits,
    store: &dyn KvStore,
    packs: &PackStore,
    cid: u32,
    docs: &[DocPlace],
    range: Range<u32>,
    super_end: u32,
) -> Result<()> {
    for &(doc, first, tokens) in docs {
        if first >= range.end || u64::from(first) + u64::from(tokens) <= u64::from(range.start) {
            continue;
        }
        for (feature, local) in packs.read_owned(cid, doc)?.all()? {
            let inside = local
                .iter()
                .map(|p| p + first)
                .filter(|p| range.contains(p));
            edits.apply(store, cid, feature, inside, false, super_end)?;
        }
    }
    Ok(())
}

/// Adds to `edits` every sealed position (below `sealed_end`) of `docs`, laid out as the
/// store keeps them: what a collection's coarse records are when rebuilt from its packs.
pub fn add_sealed(
    edits: &mut CoarseEdits,
    store: &dyn KvStore,
    packs: &PackStore,
    cid: u32,
    docs: &[DocPlace],
    sealed_end: u32,
) -> Result<()> {
    let super_end = codec::super_end(sealed_end);
    add_range(edits, store, packs, cid, docs, 0..sealed_end, super_end)
}

/// A document's place in its collection: (number, first position, tokens).
pub type DocPlace = (u32, u32, u32);

/// Every collection's sealed end and documents, by collection id.
pub struct Layout {
    /// Collection id -> the end of its sealed buckets.
    pub sealed: BTreeMap<u32, u32>,
    /// Collection id -> its documents.
    pub docs: BTreeMap<u32, Vec<DocPlace>>,
}

/// Reads the [`Layout`] of every collection.
pub fn layout(store: &dyn KvStore) -> Result<Layout> {
    let mut sealed = BTreeMap::new();
    store.scan_prefix(rec::COLLECTION_PREFIX, &mut |k, v| {
        let c: CollectionRecord = rec::decode(v, &String::from_utf8_lossy(k))?;
        sealed.insert(c.id, codec::sealed_end(c.next_position));
        Ok(true)
    })?;
    let mut docs: BTreeMap<u32, Vec<DocPlace>> = BTreeMap::new();
    store.scan_prefix(DocPart::Record.prefix(), &mut |k, v| {
        let (cid, _) = rec::parse_doc_key(k)
            .ok_or_else(|| IndexError::corrupt(format!("{k:?}"), "bad key"))?;
        let d: DocumentRecord = rec::decode(v, "document")?;
        docs.entry(cid)
            .or_default()
            .push((d.doc, d.first_position, d.tokens));
        Ok(true)
    })?;
    Ok(Layout { sealed, docs })
}

/// Computes every coarse record and sealed total from the postings packs: what the store
/// should hold under `g/` and `n/`.
pub fn expected(store: &dyn KvStore, packs: &PackStore) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let Layout { sealed, docs } = layout(store)?;
    let mut edits = CoarseEdits::from_scratch();
    for (cid, docs) in &docs {
        let end = sealed.get(cid).copied().unwrap_or(0);
        add_sealed(&mut edits, store, packs, *cid, docs, end)?;
    }
    let totals = edits
        .totals
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k, n.to_be_bytes().to_vec()));
    Ok(edits
        .records
        .into_iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(k, c)| (k, encode(c)))
        .chain(totals)
        .collect())
}

/// The upgrade step from store format 1: writes the coarse records of every collection from
/// the format-1 token postings (`p/` records; format 3 moves them into packs).
pub fn migrate_v1(store: &dyn KvStore, _dir: &std::path::Path) -> Result<Batch> {
    let mut b = Batch::default();
    store.scan_prefix(b"g/", &mut |k, _| {
        b.delete(k.to_vec());
        Ok(true)
    })?;
    let mut firsts: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    store.scan_prefix(DocPart::Record.prefix(), &mut |k, v| {
        let key = rec::parse_doc_key(k)
            .ok_or_else(|| IndexError::corrupt(format!("{k:?}"), "bad key"))?;
        let d: DocumentRecord = rec::decode(v, "document")?;
        firsts.insert(key, d.first_position);
        Ok(true)
    })?;
    let mut counts: BTreeMap<Vec<u8>, Counts> = BTreeMap::new();
    store.scan_prefix(b"p/", &mut |k, v| {
        let what = || format!("posting {k:?}");
        let (cid, feature, doc) =
            rec::parse_posting_key(k).ok_or_else(|| IndexError::corrupt(what(), "bad key"))?;
        let first = *firsts
            .get(&(cid, doc))
            .ok_or_else(|| IndexError::corrupt(what(), "no such document"))?;
        let local = codec::decode_posting(v).map_err(|e| IndexError::corrupt(what(), e))?;
        for (global, n) in block_counts(local.iter().map(|p| p + first)) {
            let (bucket, block) = (
                global / COARSE_BLOCKS_PER_BUCKET,
                global % COARSE_BLOCKS_PER_BUCKET,
            );
            *counts
                .entry(rec::coarse_key(cid, feature, bucket))
                .or_default()
                .entry(block)
                .or_insert(0) += n;
        }
        Ok(true)
    })?;
    for (k, c) in counts {
        b.put(k, encode(c));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::codec::{COARSE_BUCKET_TOKENS, COARSE_SUPER_TOKENS};
    use crate::index::store::SledStore;

    #[test]
    fn a_long_documents_block_counts_on_threads_match_one_list_at_a_time() {
        // Over a million positions: counted on several threads where the host has them.
        let first = 5 * COARSE_BLOCK_TOKENS + 17;
        let postings: BTreeMap<LayerFeature, Vec<u32>> = (0..600u32)
            .map(|f| {
                let positions = (0..2_000u32).map(|i| i * 97 + f % 97).collect();
                let feature = LayerFeature {
                    layer: (f % 3) as u16,
                    feature: f,
                };
                (feature, positions)
            })
            .collect();
        assert!(postings.values().map(Vec::len).sum::<usize>() > 1 << 20);
        let one_by_one: Vec<_> = postings
            .iter()
            .map(|(&f, l)| (f, block_counts(l.iter().map(|&p| p + first))))
            .collect();
        for threads in [1, 3, 8] {
            let counted = document_block_counts_on(&postings, first, threads);
            assert_eq!(counted, one_by_one, "{threads} threads");
        }
        assert_eq!(document_block_counts(&postings, first), one_by_one);
    }

    #[test]
    fn blocks_are_counted_in_order_whatever_order_positions_come_in() {
        let b = COARSE_BLOCK_TOKENS;
        let ascending = [0, 1, b - 1, b, 3 * b, 3 * b + 7];
        let want = vec![(0, 3), (1, 1), (3, 2)];
        assert_eq!(block_counts(ascending.iter().copied()), want);
        let shuffled = [3 * b + 7, 1, b, 0, 3 * b, b - 1];
        assert_eq!(block_counts(shuffled.iter().copied()), want);
        assert!(block_counts(std::iter::empty()).is_empty());
    }

    #[test]
    fn a_feature_across_buckets_and_super_buckets_lands_in_each_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let f = LayerFeature::new(3, 9);
        let super_end = COARSE_SUPER_TOKENS;
        // One position in super-bucket 0, two in bucket 16 (block 0 and 1), one in bucket 17.
        let positions = [
            5,
            super_end,
            super_end + COARSE_BLOCK_TOKENS,
            super_end + COARSE_BUCKET_TOKENS + 3,
        ];
        let mut edits = CoarseEdits::default();
        edits
            .apply(&store, 1, f, positions.iter().copied(), false, super_end)
            .unwrap();
        let bucket = super_end / COARSE_BUCKET_TOKENS;
        assert_eq!(edits.records.len(), 3);
        assert_eq!(
            edits.records[&rec::super_key(1, f, 0)],
            Counts::from([(0, 1)])
        );
        assert_eq!(
            edits.records[&rec::coarse_key(1, f, bucket)],
            Counts::from([(0, 1), (1, 1)])
        );
        assert_eq!(
            edits.records[&rec::coarse_key(1, f, bucket + 1)],
            Counts::from([(0, 1)])
        );
        assert_eq!(edits.totals[&rec::total_key(1, f)], 4);
        // Taking the same positions away empties every record.
        edits
            .apply(&store, 1, f, positions.iter().copied(), true, super_end)
            .unwrap();
        assert!(edits.records.values().all(|c| c.is_empty()));
        assert_eq!(edits.totals[&rec::total_key(1, f)], 0);
    }
}
