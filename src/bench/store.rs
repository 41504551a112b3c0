//! What storage costs: sled's bytes on disk per record (`bench sled`, the measurement behind
//! keeping postings in one pack file per document, docs/index-size.md), and the bytes per token
//! of a data dir's postings under each codec choice (`bench postings`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{BenchError, Result};
use crate::index::codec::{encode_posting, put_varint};
use std::time::Instant;

use crate::index::{
    packs, Batch, DocumentInfo, EncodedDocument, Index, IndexConfig, KvStore, NewDocument,
    SledStore,
};

/// One sled case: `records` records of `value_bytes` each, flushed every `per_batch` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SledCase {
    /// Records written.
    pub records: usize,
    /// Bytes of each value (keys are 8 bytes).
    pub value_bytes: usize,
    /// Records per batch (each batch applied and flushed); `None`: all in one.
    pub per_batch: Option<usize>,
}

/// The cases docs/index-size.md reports: a document's ~6,000 posting records of SmolLM2, ten
/// times as many, larger values, smaller batches, and a few large values.
pub const SLED_CASES: [SledCase; 7] = [
    SledCase::new(6_000, 38, None),
    SledCase::new(60_000, 38, None),
    SledCase::new(6_000, 160, None),
    SledCase::new(6_000, 160, Some(1_000)),
    SledCase::new(600, 1_600, None),
    SledCase::new(60, 16_000, None),
    SledCase::new(10, 100_000, None),
];

impl SledCase {
    /// Returns a case.
    pub const fn new(records: usize, value_bytes: usize, per_batch: Option<usize>) -> Self {
        Self {
            records,
            value_bytes,
            per_batch,
        }
    }
}

/// What one sled case cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SledRow {
    /// The case.
    #[serde(flatten)]
    pub case: SledCase,
    /// Bytes of keys and values written.
    pub logical_bytes: u64,
    /// Bytes of the store's folder after the last flush.
    pub disk_bytes: u64,
}

/// Writes each case into a fresh sled store under `scratch` through [`SledStore`], flushes,
/// and sizes the folder.
pub fn sled_record_cost(scratch: &Path, cases: &[SledCase]) -> Result<Vec<SledRow>> {
    let mut rows = Vec::new();
    for (n, &case) in cases.iter().enumerate() {
        let dir = scratch.join(format!("sled-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = SledStore::open(&dir)?;
            let mut batch = Batch::default();
            let per_batch = case.per_batch.unwrap_or(usize::MAX).max(1);
            for i in 0..case.records {
                batch.put(
                    (i as u64).to_be_bytes().to_vec(),
                    vec![7u8; case.value_bytes],
                );
                if (i + 1) % per_batch == 0 {
                    store.apply(std::mem::take(&mut batch))?;
                    store.flush()?;
                }
            }
            store.apply(batch)?;
            store.flush()?;
        }
        let disk_bytes = folder_bytes(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
        rows.push(SledRow {
            case,
            logical_bytes: (case.records * (8 + case.value_bytes)) as u64,
            disk_bytes,
        });
    }
    Ok(rows)
}

/// Returns the bytes of the files under `dir`, however deep.
fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| BenchError::io(&d, e))? {
            let entry = entry.map_err(|e| BenchError::io(&d, e))?;
            let meta = entry
                .metadata()
                .map_err(|e| BenchError::io(&entry.path(), e))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Returns the sled rows as the Markdown table of docs/index-size.md.
pub fn sled_table(rows: &[SledRow]) -> String {
    let mut s = String::from(
        "| records | value bytes | per batch | logical bytes | on disk | on disk / logical | on disk per record |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let c = r.case;
        let per_batch = c
            .per_batch
            .filter(|&b| b < c.records)
            .map_or("all".to_string(), |b| b.to_string());
        s.push_str(&format!(
            "| {} | {} | {per_batch} | {} | {} | {:.2}x | {:.0} B |\n",
            c.records,
            c.value_bytes,
            r.logical_bytes,
            r.disk_bytes,
            r.disk_bytes as f64 / r.logical_bytes as f64,
            r.disk_bytes as f64 / c.records as f64
        ));
    }
    s
}

/// The bytes a data dir's postings take under each codec choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PostingSizes {
    /// Tokens in the data dir.
    pub tokens: u64,
    /// Postings (one per document and (layer, feature)).
    pub postings: usize,
    /// Positions in all postings.
    pub entries: usize,
    /// The codec as stored: delta-varint or roaring, whichever is smaller, with its tag byte.
    pub chosen: usize,
    /// Delta-varint for every posting (with a tag byte).
    pub deltas: usize,
    /// Roaring for every posting (serialized size).
    pub roaring: usize,
    /// Plain u32 positions.
    pub raw: usize,
}

/// Encodes every posting of every document of `index` under each codec choice.
pub fn posting_sizes(index: &Index) -> Result<PostingSizes> {
    let mut sizes = PostingSizes {
        tokens: index.stats()?.tokens,
        ..PostingSizes::default()
    };
    for c in index.collections()? {
        for d in index.documents(&c.name)? {
            for p in index.document_postings(&c.name, &d.id)?.into_values() {
                sizes.add(&p);
            }
        }
    }
    Ok(sizes)
}

/// What encoding a document's pack costs (the store's step that waits for a long document's
/// scan to end): on one thread and on the threads [`crate::index::packs::encode`] takes.
#[derive(Debug, Clone, Serialize)]
pub struct PackEncodeTime {
    /// The document's external id.
    pub id: String,
    /// Its positions (postings' entries).
    pub positions: usize,
    /// Best of three, seconds, one thread.
    pub one_thread_seconds: f64,
    /// Best of three, seconds, as the store encodes it.
    pub store_seconds: f64,
}

/// The `n` documents of `index` with the most tokens, most first, with their collections.
fn largest_documents(index: &Index, n: usize) -> Result<Vec<(String, DocumentInfo)>> {
    let mut docs = Vec::new();
    for c in index.collections()? {
        for d in index.documents(&c.name)? {
            docs.push((c.name.clone(), d));
        }
    }
    docs.sort_by_key(|(_, d)| std::cmp::Reverse(d.tokens));
    docs.truncate(n);
    Ok(docs)
}

/// Times encoding the pack of each of the `largest` documents of `index` with the most
/// positions; checks both ways give the same bytes.
pub fn pack_encode_times(index: &Index, largest: usize) -> Result<Vec<PackEncodeTime>> {
    let best = |f: &dyn Fn() -> Vec<u8>| {
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                let bytes = f();
                (t.elapsed().as_secs_f64(), bytes)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("three runs")
    };
    let mut out = Vec::new();
    for (collection, d) in largest_documents(index, largest)? {
        let id = d.id;
        let postings = index.document_postings(&collection, &id)?;
        let (one, a) =
            best(&|| packs::encode_on(&postings, 1).expect("postings read back fit a pack"));
        let (store, b) = best(&|| packs::encode(&postings).expect("postings read back fit a pack"));
        if a != b {
            return Err(BenchError::Input(format!(
                "the pack of `{id}` differs between one thread and the store's threads"
            )));
        }
        out.push(PackEncodeTime {
            id,
            positions: postings.values().map(Vec::len).sum(),
            one_thread_seconds: one,
            store_seconds: store,
        });
    }
    Ok(out)
}

/// What storing one document again costs, step by step (`bench store-document`).
#[derive(Debug, Clone, Serialize)]
pub struct StoreDocumentTime {
    /// The document's external id.
    pub id: String,
    /// Its tokens.
    pub tokens: u32,
    /// Its postings' positions.
    pub positions: usize,
    /// Seconds of adding it to a group: checks, coarse feature set, BM25 passages cut, pack
    /// encoded and written (and vectors).
    pub add_seconds: f64,
    /// Seconds of committing the group: the folders synced, the sled batch (text, offsets,
    /// records) flushed, the BM25 passages added.
    pub commit_seconds: f64,
    /// Seconds of the BM25 commit that makes the passages searchable.
    pub bm25_commit_seconds: f64,
}

/// Stores each of the `largest` documents of `index` with the most tokens again, into a fresh
/// data dir under `scratch` (removed after), as an ingest's store step does with what the scan
/// made of it: its text, offsets, postings and vectors read back.
pub fn store_document_times(
    index: &Index,
    scratch: &Path,
    largest: usize,
) -> Result<Vec<StoreDocumentTime>> {
    let identity = index
        .identity()?
        .ok_or_else(|| BenchError::Input("the data dir holds no documents".into()))?;
    let mut out = Vec::new();
    for (collection, d) in largest_documents(index, largest)? {
        let text = index.text(&collection, &d.id, None)?;
        let first = d.positions.start as u32;
        let encoded = EncodedDocument {
            offsets: index.offsets(&collection, &d.id)?,
            postings: index
                .document_postings(&collection, &d.id)?
                .into_iter()
                .map(|(f, p)| (f, p.into_iter().map(|x| x - first).collect()))
                .collect(),
            tokenize_seconds: 0.0,
            scan_seconds: 0.0,
            encode_seconds: 0.0,
            vectors: index.vectors_of(index.collection_id(&collection)?, d.number)?,
        };
        let dir = scratch.join(format!("s3mem-store-document-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut fresh = Index::open(&dir, IndexConfig::default())?;
        fresh.create_collection(&collection)?;
        let t = Instant::now();
        let mut group = fresh.group(&identity);
        group.add(
            NewDocument {
                collection: &collection,
                id: Some(d.id.clone()),
                meta: d.meta.clone(),
                text: &text,
            },
            &encoded,
        )?;
        let add_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        group.commit()?;
        let commit_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        fresh.commit()?;
        let bm25_commit_seconds = t.elapsed().as_secs_f64();
        drop(fresh);
        std::fs::remove_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
        out.push(StoreDocumentTime {
            id: d.id,
            tokens: d.tokens,
            positions: encoded.postings.values().map(Vec::len).sum(),
            add_seconds,
            commit_seconds,
            bm25_commit_seconds,
        });
    }
    Ok(out)
}

/// Returns the store step times as a Markdown table.
pub fn store_document_table(rows: &[StoreDocumentTime]) -> String {
    let mut s = String::from(
        "| document | tokens | positions | add s | commit s | BM25 commit s | all s | µs per token |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let all = r.add_seconds + r.commit_seconds + r.bm25_commit_seconds;
        s += &format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |\n",
            r.id,
            r.tokens,
            r.positions,
            r.add_seconds,
            r.commit_seconds,
            r.bm25_commit_seconds,
            all,
            all * 1e6 / f64::from(r.tokens.max(1))
        );
    }
    s
}

/// Returns the pack encoding times as a Markdown table.
pub fn pack_encode_table(rows: &[PackEncodeTime]) -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut s = format!(
        "\nencoding each pack ({threads} cores here; best of 3)\n\n\
         | document | positions | one thread s | store s | M positions/s (store) |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {:.3} | {:.3} | {:.1} |\n",
            r.id,
            r.positions,
            r.one_thread_seconds,
            r.store_seconds,
            r.positions as f64 / r.store_seconds.max(1e-9) / 1e6
        );
    }
    s
}

impl PostingSizes {
    fn add(&mut self, posting: &[u32]) {
        self.postings += 1;
        self.entries += posting.len();
        self.chosen += encode_posting(posting).len();
        let mut d = Vec::new();
        put_varint(&mut d, posting.len() as u64);
        let mut prev = None;
        for &x in posting {
            put_varint(&mut d, u64::from(prev.map_or(x, |p: u32| x - p - 1)));
            prev = Some(x);
        }
        self.deltas += d.len() + 1;
        let mut r: roaring::RoaringBitmap = posting.iter().copied().collect();
        r.optimize();
        self.roaring += r.serialized_size();
        self.raw += 4 * posting.len();
    }

    /// Returns the sizes as a Markdown table, in bytes and bytes per token.
    pub fn table(&self) -> String {
        let per_token = |b: usize| b as f64 / self.tokens.max(1) as f64;
        let mut s = format!(
            "{} postings, {} entries over {} tokens ({:.1} entries per token)\n\n\
             | codec | bytes | bytes per token |\n|---|---:|---:|\n",
            self.postings,
            self.entries,
            self.tokens,
            per_token(self.entries)
        );
        for (name, bytes) in [
            ("chosen (delta-varint or roaring, the smaller)", self.chosen),
            ("delta-varint only", self.deltas),
            ("roaring only", self.roaring),
            ("raw u32", self.raw),
        ] {
            s.push_str(&format!("| {name} | {bytes} | {:.1} |\n", per_token(bytes)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_cases_are_sized_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            SledCase::new(200, 38, None),
            SledCase::new(200, 38, Some(50)),
        ];
        let rows = sled_record_cost(dir.path(), &cases).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].logical_bytes, 200 * 46);
        assert!(
            rows.iter().all(|r| r.disk_bytes >= r.logical_bytes),
            "{rows:?}"
        );
        let t = sled_table(&rows);
        assert!(t.contains("| 200 | 38 | all | 9200 |"), "{t}");
        assert!(t.contains("| 200 | 38 | 50 | 9200 |"), "{t}");
        // The scratch folders are gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A data dir with two stored documents, "short" (3 tokens) and "long" (9).
    fn two_documents() -> (tempfile::TempDir, Index) {
        use crate::index::{
            EncodedDocument, IndexConfig, LayerFeature, NewDocument, StoreIdentity,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        index.create_collection("c").unwrap();
        let identity = StoreIdentity::for_tests(&[0]);
        for (id, n) in [("short", 3usize), ("long", 9)] {
            let text = "w ".repeat(n);
            let encoded = EncodedDocument {
                offsets: (0..n).map(|i| (2 * i, 2 * i + 1)).collect(),
                postings: [(LayerFeature::new(0, 7), (0..n as u32).step_by(2).collect())].into(),
                tokenize_seconds: 0.0,
                scan_seconds: 0.0,
                encode_seconds: 0.0,
                vectors: None,
            };
            let doc = NewDocument {
                collection: "c",
                id: Some(id.into()),
                meta: vec![("k".into(), id.into())],
                text: &text,
            };
            index.store_encoded(doc, &encoded, &identity).unwrap();
        }
        (dir, index)
    }

    #[test]
    fn the_largest_document_is_stored_again_and_its_scratch_removed() {
        let (_dir, index) = two_documents();
        let scratch = tempfile::tempdir().unwrap();
        let rows = store_document_times(&index, scratch.path(), 1).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].id.as_str(), rows[0].tokens, rows[0].positions),
            ("long", 9, 5)
        );
        assert!(rows[0].add_seconds > 0.0 && rows[0].commit_seconds > 0.0);
        assert!(store_document_table(&rows).contains("| long | 9 | 5 |"));
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
        // An empty data dir has nothing to store.
        let empty = tempfile::tempdir().unwrap();
        let index = Index::open(empty.path(), IndexConfig::default()).unwrap();
        let err = store_document_times(&index, scratch.path(), 1).unwrap_err();
        assert!(err.to_string().contains("no documents"), "{err}");
    }

    #[test]
    fn each_large_document_s_pack_is_timed_both_ways() {
        let (_dir, index) = two_documents();
        let rows = pack_encode_times(&index, 1).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].id.as_str(), rows[0].positions), ("long", 5));
        let t = pack_encode_table(&rows);
        assert!(t.contains("| long | 5 |"), "{t}");
        assert_eq!(pack_encode_times(&index, 5).unwrap().len(), 2);
    }

    #[test]
    fn each_codec_choice_is_counted() {
        let mut s = PostingSizes {
            tokens: 10,
            ..PostingSizes::default()
        };
        s.add(&[0, 1, 2, 300]);
        assert_eq!((s.postings, s.entries, s.raw), (1, 4, 16));
        // Tag, count and four gaps of which the last needs two bytes.
        assert_eq!(s.deltas, 1 + 1 + 5);
        assert_eq!(s.chosen, encode_posting(&[0, 1, 2, 300]).len());
        assert!(s.chosen <= s.deltas.max(s.roaring));
        let t = s.table();
        assert!(t.contains("| raw u32 | 16 | 1.6 |"), "{t}");
        assert!(t.starts_with("1 postings, 4 entries over 10 tokens (0.4 entries per token)"));
    }
}
