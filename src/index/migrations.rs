//! Ordered upgrade steps of the store format (see `migrations/README.md`).
//!
//! Each step upgrades from one version to the next; its writes and the new version go in one
//! atomic batch, so an interrupted upgrade resumes at the step that did not finish.

use std::path::Path;

use super::bm25::Bm25;
use super::coarse::{self, CoarseEdits};
use super::error::{IndexError, Result};
use super::memory::rebuild_bm25;
use super::packs::{self, PackStore};
use super::records::{self as rec, DocPart, KEY_FORMAT};
use super::store::{Batch, KvStore};
use super::types::LayerFeature;

/// The store format this build writes.
pub const STORE_FORMAT_VERSION: u32 = 4;
/// The oldest store format this build can upgrade.
pub const STORE_FORMAT_OLDEST_SUPPORTED: u32 = 1;

/// One upgrade step.
pub struct Step {
    /// The version it upgrades from; it writes `from + 1`.
    pub from: u32,
    /// What it changes, for logs.
    pub name: &'static str,
    /// Returns the writes that upgrade the store (applied with the version in one batch);
    /// gets the data dir for files beside the store.
    pub run: fn(&dyn KvStore, &Path) -> Result<Batch>,
}

/// The steps in order.
pub const STEPS: &[Step] = &[
    Step {
        from: 1,
        name: "coarse block counts for collection-wide retrieval",
        run: coarse::migrate_v1,
    },
    Step {
        from: 2,
        name: "postings into one pack file per document; coarse records of sealed buckets only",
        run: postings_to_packs,
    },
    Step {
        from: 3,
        name: "one bm25 index per collection",
        run: bm25_per_collection,
    },
];

/// Format 3 -> 4: replaces the one tantivy index all collections shared (whose document
/// frequencies and lengths mixed every collection's) with one per collection, re-indexing
/// each collection's passages from the texts and offsets the store keeps. The new indexes are
/// committed before the batch that records format 4, so an interrupted upgrade just runs again.
fn bm25_per_collection(store: &dyn KvStore, dir: &Path) -> Result<Batch> {
    let bm25_dir = dir.join("bm25");
    if bm25_dir.exists() {
        std::fs::remove_dir_all(&bm25_dir).map_err(|e| IndexError::io(&bm25_dir, e))?;
    }
    let seq = match store.get(rec::KEY_SEQ)? {
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| IndexError::corrupt("m/seq", "not a u64"))?,
        None => 0,
    };
    let mut bm25 = Bm25::open(&bm25_dir)?;
    rebuild_bm25(store, &mut bm25)?;
    bm25.commit(seq)?;
    drop(bm25);
    let mut b = Batch::default();
    // Every change up to `seq` is in the new indexes: the journal has nothing to replay.
    store.scan_prefix(rec::JOURNAL_PREFIX, &mut |k, _| {
        b.delete(k.to_vec());
        Ok(true)
    })?;
    b.put(rec::KEY_BM25_SEQ.to_vec(), seq.to_be_bytes().to_vec());
    Ok(b)
}

/// Format 2 -> 3: writes each document's `p/` postings into its pack (synced before the
/// batch that deletes them, so an interrupted upgrade just runs again), and rebuilds the
/// coarse records for sealed buckets only.
fn postings_to_packs(store: &dyn KvStore, dir: &Path) -> Result<Batch> {
    let packs = PackStore::open(&dir.join("packs"))?;
    let coarse::Layout { sealed, docs } = coarse::layout(store)?;
    let mut b = Batch::default();
    for prefix in [&b"p/"[..], &b"g/"[..], &b"h/"[..], &b"n/"[..]] {
        store.scan_prefix(prefix, &mut |k, _| {
            b.delete(k.to_vec());
            Ok(true)
        })?;
    }
    let mut edits = CoarseEdits::from_scratch();
    for (&cid, docs) in &docs {
        let end = sealed.get(&cid).copied().unwrap_or(0);
        for &(doc, first, _) in docs {
            let features = match store.get(&rec::doc_key(DocPart::Features, cid, doc))? {
                Some(v) => roaring::RoaringBitmap::deserialize_from(&v[..])
                    .map_err(|e| IndexError::corrupt(format!("feature set of {cid}/{doc}"), e))?,
                None => roaring::RoaringBitmap::new(),
            };
            let mut postings = std::collections::BTreeMap::new();
            for packed in &features {
                let feature = LayerFeature::unpack(packed);
                let what = format!("posting {feature} of {cid}/{doc}");
                let v = store
                    .get(&rec::posting_key(cid, feature, doc))?
                    .ok_or_else(|| IndexError::corrupt(&what, "missing"))?;
                let local =
                    super::codec::decode_posting(&v).map_err(|e| IndexError::corrupt(&what, e))?;
                let sealed_part = local.iter().map(|p| p + first).filter(|&p| p < end);
                let super_end = super::codec::super_end(end);
                edits.apply(store, cid, feature, sealed_part, false, super_end)?;
                postings.insert(feature, local);
            }
            packs.write(cid, doc, &packs::encode(&postings)?)?;
        }
    }
    edits.write(&mut b);
    Ok(b)
}

/// Returns the format version a store records, or `None` for a store never written.
pub fn stored_version(store: &dyn KvStore) -> Result<Option<u32>> {
    match store.get(KEY_FORMAT)? {
        None => Ok(None),
        Some(v) => match <[u8; 4]>::try_from(v.as_slice()) {
            Ok(b) => Ok(Some(u32::from_be_bytes(b))),
            Err(_) => Err(IndexError::corrupt("m/format", "not a u32")),
        },
    }
}

/// Returns the batch write that records `version`.
pub fn version_write(batch: &mut Batch, version: u32) {
    batch.put(KEY_FORMAT.to_vec(), version.to_be_bytes().to_vec());
}

/// Brings the store of data dir `dir` at `found` up to `target` with `steps`, one batch each.
pub fn upgrade(
    store: &dyn KvStore,
    dir: &Path,
    found: u32,
    target: u32,
    steps: &[Step],
) -> Result<u32> {
    let mut version = found;
    while version < target {
        let step = steps.iter().find(|s| s.from == version).ok_or_else(|| {
            IndexError::corrupt(
                "m/format",
                format!("no upgrade step from store format {version}"),
            )
        })?;
        let mut batch = (step.run)(store, dir)?;
        version_write(&mut batch, version + 1);
        store.apply(batch)?;
        store.flush()?;
        tracing::info!(
            from = version,
            to = version + 1,
            step = step.name,
            "store upgraded"
        );
        version += 1;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::store::SledStore;

    fn rename_v0(store: &dyn KvStore, _dir: &Path) -> Result<Batch> {
        let mut b = Batch::default();
        if let Some(v) = store.get(b"old")? {
            b.delete(b"old".to_vec());
            b.put(b"new".to_vec(), v);
        }
        Ok(b)
    }

    #[test]
    fn steps_run_in_order_and_write_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(b"old".to_vec(), b"x".to_vec());
        version_write(&mut b, 0);
        s.apply(b).unwrap();
        let steps = [Step {
            from: 0,
            name: "rename old to new",
            run: rename_v0,
        }];
        assert_eq!(upgrade(&s, dir.path(), 0, 1, &steps).unwrap(), 1);
        assert_eq!(stored_version(&s).unwrap(), Some(1));
        assert_eq!(s.get(b"new").unwrap().as_deref(), Some(&b"x"[..]));
        assert!(upgrade(&s, dir.path(), 1, 2, &[]).is_err());
    }
}
