//! Opening a data dir: the lock, finishing or cleaning up a compaction, creating or upgrading
//! the store, and the recovery that makes BM25 and the store agree again (journal replay) and
//! removes packs no document owns.

use std::fs::File;
use std::path::Path;

use fs4::fs_std::FileExt;

use super::{u64_be, Index};
use crate::durable;
use crate::index::bm25::Bm25;
use crate::index::error::{FormatKind, IndexError, Result};
use crate::index::migrations::{self, STORE_FORMAT_VERSION};
use crate::index::packs::PackStore;
use crate::index::passages::passages;
use crate::index::records::{self as rec, DocPart, JournalOp};
use crate::index::store::{Batch, KvStore, SledStore};
use crate::index::types::IndexConfig;
use crate::index::vectors::VectorStore;

impl Index {
    /// Opens (or creates) the data dir `dir`, upgrading an older store and reconciling BM25.
    pub fn open(dir: &Path, config: IndexConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        finish_compaction(dir)?;
        let store_dir = dir.join("store");
        if !store_dir.exists() {
            create_store(dir)?;
        }
        let store = SledStore::open(&store_dir)?;
        let packs = PackStore::open(&dir.join("packs"))?;
        let vectors = VectorStore::open(&dir.join("vectors"))?;
        match migrations::stored_version(&store)? {
            None => {
                let mut b = Batch::default();
                migrations::version_write(&mut b, STORE_FORMAT_VERSION);
                store.apply(b)?;
                store.flush()?;
            }
            Some(v) if v > STORE_FORMAT_VERSION => {
                return Err(IndexError::IncompatibleFormat {
                    kind: FormatKind::Store,
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
            vectors,
            bm25,
            config,
            seq,
            _lock: lock,
        };
        index.reconcile()?;
        index.remove_orphan_files()?;
        Ok(index)
    }

    /// Opens the data dir `dir` that must hold an index already, as [`Index::open`] does
    /// otherwise; creates nothing when it holds none ([`IndexError::NoIndex`]).
    pub fn open_existing(dir: &Path) -> Result<Self> {
        if !dir.join("store").is_dir() {
            return Err(IndexError::NoIndex { dir: dir.into() });
        }
        Self::open(dir, IndexConfig::default())
    }

    /// Removes the packs and passage vectors no document record owns (and unfinished
    /// temporary files).
    fn remove_orphan_files(&self) -> Result<()> {
        let store = &self.store;
        let mut owned = |cid: u32, doc: u32| -> Result<bool> {
            Ok(store
                .get(&rec::doc_key(DocPart::Record, cid, doc))?
                .is_some())
        };
        self.packs.remove_orphans(&mut owned)?;
        self.vectors.remove_orphans(&mut owned)
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
}

/// Takes the data dir's process lock (`LOCK`), held as long as the returned file is open.
pub(super) fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join("LOCK");
    let lock = File::create(&lock_path).map_err(|e| IndexError::io(&lock_path, e))?;
    match lock.try_lock_exclusive() {
        Ok(true) => Ok(lock),
        Ok(false) => Err(IndexError::Locked {
            dir: dir.into(),
            lock: lock_path,
        }),
        Err(e) => Err(IndexError::io(lock_path, e)),
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
    durable::sync_dir(&staging).map_err(|e| IndexError::io(&staging, e))?;
    let target = dir.join("store");
    std::fs::rename(&staging, &target).map_err(|e| IndexError::io(&target, e))?;
    durable::sync_dir(dir).map_err(|e| IndexError::io(dir, e))
}

/// Swaps a finished compaction copy in, or cleans up one that never finished.
///
/// Order on disk: the copy is marked `COMPLETE`; the old store moves to `store.old`; the copy
/// moves to `store`; `store.old` goes. Any crash in between leaves a state this resumes from.
pub(super) fn finish_compaction(dir: &Path) -> Result<()> {
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
