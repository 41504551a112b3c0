//! Golden stores, one per store format (`tests/golden/v<N>/` with its expected contents in
//! `v<N>.json`, see `migrations/README.md`): each opens with this build, upgrading to the
//! current format, and its documents, postings and retrieval's inputs (the reader's postings,
//! coarse blocks and token counts, BM25 passages) come out as they went in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use s3mem::index::migrations::stored_version;
use s3mem::index::{
    BlockCount, EncodedDocument, Index, IndexConfig, KvStore, LayerFeature, NewDocument, SledStore,
    COARSE_BLOCK_TOKENS, STORE_FORMAT_VERSION,
};
use s3mem::ingest;

use crate::index::{copy_dir, encoder, fixture, sample_text};

/// The collection of model-encoded documents in every golden store.
const GOLDEN: &str = "golden";
/// The collection of synthetic documents that seal a coarse bucket (from format 3 on).
const SEALED: &str = "sealed";
/// Tokens of each of the two synthetic documents: together past the first 2^16 positions.
const SEALED_TOKENS: usize = 33_000;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Returns a copy of golden store `v<version>` and its expected view.
fn golden_copy(version: u32) -> (tempfile::TempDir, serde_json::Value) {
    let golden = golden_dir();
    let expected = std::fs::read(golden.join(format!("v{version}.json"))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&golden.join(format!("v{version}")), dir.path());
    (dir, serde_json::from_slice(&expected).unwrap())
}

/// Returns the format version the store of data dir `dir` records, read without opening
/// (and so without upgrading) it.
fn format_on_disk(dir: &Path) -> Option<u32> {
    stored_version(&SledStore::open(&dir.join("store")).unwrap()).unwrap()
}

/// Returns what the golden test compares: documents, texts, postings and identity.
fn golden_view(index: &Index) -> serde_json::Value {
    let docs = index.documents(GOLDEN).unwrap();
    let docs: Vec<serde_json::Value> = docs
        .iter()
        .map(|d| {
            let postings: BTreeMap<String, Vec<u32>> = index
                .document_postings(GOLDEN, &d.id)
                .unwrap()
                .into_iter()
                .map(|(f, p)| (f.to_string(), p))
                .collect();
            serde_json::json!({
                "document": d,
                "text": index.text(GOLDEN, &d.id, None).unwrap(),
                "offsets": index.offsets(GOLDEN, &d.id).unwrap(),
                "postings": postings,
            })
        })
        .collect();
    let id = index.identity().unwrap().unwrap();
    serde_json::json!({
        "identity": {
            "model_fingerprint": id.model_fingerprint,
            "sae_digest": id.sae_digest,
            "layers": id.layers,
            "scan": [id.chunk, id.sinks, id.overlap],
        },
        "documents": docs,
    })
}

/// A stored document as retrieval sees it.
struct Expected {
    id: String,
    number: u32,
    first: u32,
    text: String,
    /// Collection-global positions per feature.
    postings: BTreeMap<LayerFeature, Vec<u32>>,
}

/// Returns the documents of a golden view.
fn expected_documents(view: &serde_json::Value) -> Vec<Expected> {
    let docs = view["documents"].as_array().unwrap();
    docs.iter()
        .map(|d| {
            let postings = d["postings"].as_object().unwrap();
            Expected {
                id: d["document"]["id"].as_str().unwrap().into(),
                number: d["document"]["number"].as_u64().unwrap() as u32,
                first: d["document"]["positions"]["start"].as_u64().unwrap() as u32,
                text: d["text"].as_str().unwrap().into(),
                postings: postings
                    .iter()
                    .map(|(k, v)| {
                        let (l, f) = k.split_once('/').unwrap();
                        let positions = serde_json::from_value(v.clone()).unwrap();
                        (
                            LayerFeature::new(l.parse().unwrap(), f.parse().unwrap()),
                            positions,
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Checks what retrieval reads from `collection` against `docs`: each document's postings
/// through the reader, every feature's coarse blocks and token count, and a BM25 search for
/// each document's first word within that document.
fn assert_retrieval_inputs(index: &Index, collection: &str, docs: &[Expected]) {
    let cid = index.collection_id(collection).unwrap();
    let mut reader = index.posting_reader(cid).unwrap();
    let mut blocks: BTreeMap<LayerFeature, BTreeMap<u32, u32>> = BTreeMap::new();
    for d in docs {
        for (&feature, positions) in &d.postings {
            let local: Vec<u32> = positions.iter().map(|p| p - d.first).collect();
            assert_eq!(
                reader.posting(d.number, feature).unwrap(),
                local,
                "{}",
                d.id
            );
            for p in positions {
                *blocks
                    .entry(feature)
                    .or_default()
                    .entry(p / COARSE_BLOCK_TOKENS)
                    .or_insert(0) += 1;
            }
        }
        let word = d.text.split_whitespace().next().unwrap();
        let hits = index.bm25(collection, Some(&[d.number]), word, 10).unwrap();
        assert!(!hits.is_empty(), "no passage of {} for `{word}`", d.id);
        assert!(hits.iter().all(|h| h.id == d.id), "{hits:?}");
    }
    for (&feature, counts) in &blocks {
        let want: Vec<BlockCount> = counts
            .iter()
            .map(|(&block, &tokens)| BlockCount { block, tokens })
            .collect();
        assert_eq!(reader.coarse_blocks(feature).unwrap(), want, "{feature}");
        let tokens: u64 = want.iter().map(|b| u64::from(b.tokens)).sum();
        assert_eq!(reader.token_count(feature).unwrap(), tokens, "{feature}");
    }
}

/// Checks a golden store opened by this build: the current format, every invariant, the
/// expected view and retrieval's inputs.
fn assert_golden(index: &Index, expected: &serde_json::Value) {
    assert_eq!(
        stored_version(index.store()).unwrap(),
        Some(STORE_FORMAT_VERSION)
    );
    let docs = expected_documents(expected);
    let sealed = index.collection_id(SEALED).is_ok();
    let want = docs.len() + if sealed { 2 } else { 0 };
    assert_eq!(index.verify().unwrap(), want as u64);
    assert_eq!(golden_view(index), *expected);
    assert_retrieval_inputs(index, GOLDEN, &docs);
}

/// Format 1 (the first): opening runs 1 -> 2 (coarse block counts from the token postings)
/// and 2 -> 3 (postings into packs, coarse records for sealed buckets only: none here).
#[test]
fn index_golden_v1_store_opens() {
    let (dir, expected) = golden_copy(1);
    assert_eq!(format_on_disk(dir.path()), Some(1));
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    assert_golden(&index, &expected);
    let stats = index.stats().unwrap();
    assert_eq!(stats.components["postings"].records, 2);
    assert!(!stats.components.contains_key("coarse"));
    assert!(stats.posting_entries > 0);
}

/// Format 2, written by the last build that wrote it: postings as sled records, coarse records
/// for every bucket, a replaced and a deleted document. Opening runs 2 -> 3.
#[test]
fn index_golden_v2_store_upgrades() {
    let (dir, expected) = golden_copy(2);
    {
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        assert_eq!(stored_version(&store).unwrap(), Some(2));
        let mut old = 0;
        store
            .scan_prefix(b"p/", &mut |_, _| {
                old += 1;
                Ok(true)
            })
            .unwrap();
        assert!(old > 0, "a format-2 store keeps its postings as records");
    }
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    assert_golden(&index, &expected);
    let stats = index.stats().unwrap();
    assert_eq!(stats.components["postings"].records, 2);
    // Bucket 0 is still open: its format-2 coarse records are counted from the packs now.
    assert!(!stats.components.contains_key("coarse"));
}

/// Format 3: packs, and a collection past 2^16 positions whose sealed bucket has coarse
/// records and totals. Opening runs 3 -> 4 (the shared BM25 index split per collection).
#[test]
fn index_golden_v3_store_opens() {
    let (dir, expected) = golden_copy(3);
    assert_eq!(format_on_disk(dir.path()), Some(3));
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    assert_golden(&index, &expected);
    assert!(index.stats().unwrap().components.contains_key("coarse"));
    let mut docs = Vec::new();
    for (i, d) in index.documents(SEALED).unwrap().iter().enumerate() {
        let (text, encoded) = sealed_document(i);
        assert_eq!(index.text(SEALED, &d.id, None).unwrap(), text);
        let first = d.positions.start as u32;
        let postings: BTreeMap<LayerFeature, Vec<u32>> = encoded
            .postings
            .into_iter()
            .map(|(f, local)| (f, local.iter().map(|p| p + first).collect()))
            .collect();
        assert_eq!(index.document_postings(SEALED, &d.id).unwrap(), postings);
        docs.push(Expected {
            id: d.id.clone(),
            number: d.number,
            first,
            text,
            postings,
        });
    }
    assert_eq!(docs.len(), 2);
    assert_retrieval_inputs(&index, SEALED, &docs);
    assert_bm25_per_collection(dir.path(), &index);
}

/// Format 4 (the current one): v3's contents with one BM25 index per collection.
#[test]
fn index_golden_v4_store_opens() {
    let (dir, expected) = golden_copy(4);
    assert_eq!(format_on_disk(dir.path()), Some(4));
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    assert_golden(&index, &expected);
    assert_bm25_per_collection(dir.path(), &index);
}

/// Checks the BM25 side of format 4: one tantivy index per collection (`bm25/<id>/`) and
/// nothing else under `bm25/`, each finding only its own collection's passages.
fn assert_bm25_per_collection(dir: &Path, index: &Index) {
    let mut folders: Vec<String> = std::fs::read_dir(dir.join("bm25"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    folders.sort();
    let mut ids: Vec<String> = [GOLDEN, SEALED]
        .iter()
        .map(|c| index.collection_id(c).unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(folders, ids);
    // `w` fills the sealed collection's documents; the golden collection has none of it.
    assert!(!index.bm25(SEALED, None, "w", 10).unwrap().is_empty());
    assert!(index.bm25(GOLDEN, None, "w", 10).unwrap().is_empty());
}

/// Synthetic document `i` of the sealed collection: `w w w ...`, a few features firing at
/// seeded positions. Golden stores hold it: never change it.
fn sealed_document(i: usize) -> (String, EncodedDocument) {
    let text = "w ".repeat(SEALED_TOKENS);
    let offsets = (0..SEALED_TOKENS).map(|t| (2 * t, 2 * t + 1)).collect();
    let mut postings = BTreeMap::new();
    for layer in [0u16, 2] {
        for f in 0..8u32 {
            let m = 40 + f as usize + i;
            let positions: Vec<u32> = (0..SEALED_TOKENS)
                .filter(|p| (p * 7 + f as usize * 13 + i) % m == 0)
                .map(|p| p as u32)
                .collect();
            if !positions.is_empty() {
                postings.insert(LayerFeature::new(layer, f), positions);
            }
        }
    }
    let encoded = EncodedDocument {
        offsets,
        postings,
        ..EncodedDocument::default()
    };
    (text, encoded)
}

/// Writes the golden store of the current format into `tests/golden/v<N>` and its view into
/// `v<N>.json`. Run `cargo test --test integration index_write_golden -- --ignored` once, when
/// a format is introduced: never overwrite an older one (v1 and v2 were written by the builds
/// of their time, see `migrations/README.md`).
#[test]
#[ignore = "writes the checked-in golden store"]
fn index_write_golden() {
    let f = fixture();
    let enc = encoder(f);
    let golden = golden_dir();
    let version = STORE_FORMAT_VERSION;
    let target = golden.join(format!("v{version}"));
    assert!(
        !target.exists(),
        "the golden v{version} store exists already"
    );
    {
        let mut index = Index::open(&target, IndexConfig::default()).unwrap();
        index.create_collection(GOLDEN).unwrap();
        // Three documents; the second replaced and the third deleted, so numbers have gaps.
        for (id, seed) in [("first", 7), ("second", 8), ("third", 9), ("second", 10)] {
            ingest::ingest(
                &enc,
                &mut index,
                NewDocument {
                    collection: GOLDEN,
                    id: Some(id.into()),
                    meta: vec![("seed".into(), seed.to_string())],
                    text: &sample_text(seed, 12),
                },
                &mut |_, _| {},
            )
            .unwrap();
        }
        index.delete(GOLDEN, "third").unwrap();
        index.create_collection(SEALED).unwrap();
        for i in 0..2 {
            let (text, encoded) = sealed_document(i);
            let doc = NewDocument {
                collection: SEALED,
                id: Some(format!("s{i}")),
                meta: Vec::new(),
                text: &text,
            };
            index.store_encoded(doc, &encoded, enc.identity()).unwrap();
        }
        index.commit().unwrap();
        assert_eq!(index.verify().unwrap(), 4);
        let view = golden_view(&index);
        let json = golden.join(format!("v{version}.json"));
        std::fs::write(json, serde_json::to_vec(&view).unwrap()).unwrap();
    }
    std::fs::remove_file(target.join("LOCK")).unwrap();
}
