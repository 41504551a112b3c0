//! Looking after a data dir: its sizes and counts, compaction, and the check of every
//! invariant between the store, the packs and BM25.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;

use super::open::{finish_compaction, lock_dir};
use super::Index;
use crate::index::bm25::Merges;
use crate::index::coarse;
use crate::index::error::{IndexError, Result};
use crate::index::passages::passages;
use crate::index::records::{self as rec, DocPart, DocumentRecord};
use crate::index::store::KvStore;
use crate::index::types::Stats;

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

impl Index {
    /// Commits BM25, flushes the store and closes BM25's writers, so that no file of the data
    /// dir changes until the next write once the returned merges are waited for (outside any
    /// lock readers need: merges can take a moment). Snapshots copy the files after this.
    pub fn quiesce(&mut self) -> Result<Merges> {
        self.commit()?;
        self.store.flush()?;
        Ok(self.bm25.take_writers())
    }

    /// Returns the bytes on disk of the store, the packs, the passage vectors and BM25
    /// (without reading them).
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir.join("store"))
            + dir_bytes(self.packs.dir())
            + self.vectors.bytes()
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
        let lock = lock_dir(&dir)?;
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
            // Vectors are optional (a store without an embedding model has none), but the
            // ones there must be whole and match the document's passages.
            if let Some(v) = self.vectors.read(cid, doc)? {
                let chars: Vec<_> = passages(&text, &offsets)
                    .into_iter()
                    .map(|p| p.chars)
                    .collect();
                if v.passages != chars {
                    return bad(what, "its passage vectors do not match its passages");
                }
            }
        }
        for (kind, files) in [
            ("posting packs", self.packs.list()?),
            ("passage vectors", self.vectors.list()?),
        ] {
            let orphans = files.into_iter().filter(|k| !docs.contains_key(k)).count();
            if orphans > 0 {
                return bad(format!("{orphans} {kind}"), "no document owns them");
            }
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
