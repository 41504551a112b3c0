//! Unit tests of the data dir: coarse records, super-buckets, the reader, the 2 -> 3 upgrade,
//! damaged packs.

use std::collections::BTreeSet;
use std::path::Path;

use super::reader::MAX_OPEN_PACKS;
use super::*;
use crate::index::coarse;
use crate::index::migrations;
use crate::index::packs::{self, PackStore};
use crate::index::store::Batch;
use crate::index::types::{BlockCount, EncodedDocument, Ingested, LayerFeature};

fn identity() -> StoreIdentity {
    StoreIdentity::for_tests(&[0, 1])
}

/// A document of `n` one-letter words whose features fire in a seed-dependent pattern.
fn synthetic(n: usize, seed: usize) -> (String, EncodedDocument) {
    let text = "w ".repeat(n);
    let offsets = (0..n).map(|i| (2 * i, 2 * i + 1)).collect();
    let mut postings = BTreeMap::new();
    for layer in 0..2u16 {
        for f in 0..24u32 {
            let m = 5 + f as usize + seed % 7;
            let positions: Vec<u32> = (0..n)
                .filter(|p| (p * 7 + f as usize * 13 + seed) % m == 0)
                .map(|p| p as u32)
                .collect();
            if !positions.is_empty() {
                postings.insert(
                    LayerFeature::new(layer, f + 100 * u32::from(layer)),
                    positions,
                );
            }
        }
    }
    let encoded = EncodedDocument {
        offsets,
        postings,
        tokenize_seconds: 0.0,
        scan_seconds: 0.0,
        encode_seconds: 0.0,
        vectors: None,
    };
    (text, encoded)
}

/// A fresh data dir with an empty collection `c`.
fn with_collection() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    index.create_collection("c").unwrap();
    (dir, index)
}

fn put(index: &mut Index, id: &str, n: usize, seed: usize) {
    let (text, encoded) = synthetic(n, seed);
    let doc = NewDocument {
        collection: "c",
        id: Some(id.into()),
        meta: Vec::new(),
        text: &text,
    };
    index.store_encoded(doc, &encoded, &identity()).unwrap();
    index.commit().unwrap();
}

fn coarse_records(index: &Index) -> usize {
    count_prefix(index, b"g/")
}

/// The reader's blocks of every feature equal the blocks counted from all postings.
fn assert_blocks_agree(index: &Index) {
    let cid = index.collection_id("c").unwrap();
    let mut want: BTreeMap<LayerFeature, BTreeMap<u32, u32>> = BTreeMap::new();
    for d in index.documents("c").unwrap() {
        for (k, positions) in index.document_postings("c", &d.id).unwrap() {
            for p in positions {
                *want
                    .entry(k)
                    .or_default()
                    .entry(p / codec::COARSE_BLOCK_TOKENS)
                    .or_insert(0) += 1;
            }
        }
    }
    let mut reader = index.posting_reader(cid).unwrap();
    for (&feature, blocks) in &want {
        let got = reader.coarse_blocks(feature).unwrap();
        let want: Vec<BlockCount> = blocks
            .iter()
            .map(|(&block, &tokens)| BlockCount { block, tokens })
            .collect();
        assert_eq!(got, want, "feature {feature}");
        let tokens: u64 = want.iter().map(|b| u64::from(b.tokens)).sum();
        assert_eq!(reader.token_count(feature).unwrap(), tokens);
    }
}

#[test]
fn coarse_records_cover_sealed_buckets_and_follow_deletes_and_replaces() {
    let (dir, mut index) = with_collection();
    put(&mut index, "a", 30_000, 1);
    put(&mut index, "b", 30_000, 2);
    // 60,000 positions: the first bucket is still open, so no coarse record exists.
    assert_eq!(coarse_records(&index), 0);
    assert_eq!(index.verify().unwrap(), 2);
    assert_blocks_agree(&index);
    put(&mut index, "c", 30_000, 3);
    // 90,000: bucket 0 (positions below 65,536) is sealed.
    assert!(coarse_records(&index) > 0);
    assert!(index
        .store
        .get(&rec::total_key(1, LayerFeature::new(0, 0)))
        .unwrap()
        .is_some());
    assert_eq!(index.verify().unwrap(), 3);
    assert_blocks_agree(&index);
    // Deleting a sealed document takes its counts away.
    index.delete("c", "b").unwrap();
    assert_eq!(index.verify().unwrap(), 2);
    assert_blocks_agree(&index);
    // Replacing the document that straddles the sealed end, then sealing another bucket.
    put(&mut index, "c", 20_000, 4);
    put(&mut index, "d", 50_000, 5);
    assert_eq!(index.verify().unwrap(), 3);
    assert_blocks_agree(&index);
    drop(index);
    // A pack no record owns (a crash between pack and batch) goes on reopen.
    let packs = PackStore::open(&dir.path().join("packs")).unwrap();
    let stray = packs::encode(&synthetic(10, 0).1.postings).unwrap();
    packs.write(1, 99, &stray).unwrap();
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    assert!(!packs.list().unwrap().contains(&(1, 99)));
    assert_eq!(index.verify().unwrap(), 3);
    assert_blocks_agree(&index);
    // Dropping the collection removes every pack and coarse record.
    let mut index = index;
    index.drop_collection("c").unwrap();
    assert!(packs.list().unwrap().is_empty());
    assert_eq!(coarse_records(&index), 0);
    assert_eq!(index.verify().unwrap(), 0);
}

fn count_prefix(index: &Index, prefix: &[u8]) -> usize {
    let mut n = 0;
    index
        .store
        .scan_prefix(prefix, &mut |_, _| {
            n += 1;
            Ok(true)
        })
        .unwrap();
    n
}

/// Past 2^20 positions the first 16 buckets merge into super-bucket records; deletes and
/// replaces reach into them; blocks and totals still equal the counts from all postings.
#[test]
fn buckets_merge_into_a_super_bucket() {
    let (_dir, mut index) = with_collection();
    for i in 0..34 {
        put(&mut index, &format!("d{i}"), 30_000, i);
    }
    // 1,020,000 positions: 15 sealed buckets, no super-bucket yet.
    assert_eq!(count_prefix(&index, b"h/"), 0);
    assert_blocks_agree(&index);
    put(&mut index, "d34", 30_000, 34);
    // 1,050,000: the first 2^20 positions are one super-bucket; only bucket 16 is left.
    assert!(count_prefix(&index, b"h/") > 0);
    let mut buckets = BTreeSet::new();
    index
        .store
        .scan_prefix(b"g/", &mut |k, _| {
            buckets.insert(rec::parse_coarse_key(k).unwrap().2);
            Ok(true)
        })
        .unwrap();
    assert!(buckets.iter().all(|&b| b >= 16), "{buckets:?}");
    assert_eq!(index.verify().unwrap(), 35);
    assert_blocks_agree(&index);
    // A delete inside the super-bucket and a replace of a document in it.
    index.delete("c", "d3").unwrap();
    put(&mut index, "d5", 10_000, 99);
    assert_eq!(index.verify().unwrap(), 34);
    assert_blocks_agree(&index);
}

/// A question over many documents holds at most MAX_OPEN_PACKS files open, and reads the
/// same postings as one pack at a time.
#[test]
fn a_reader_keeps_few_files_open() {
    let (_dir, mut index) = with_collection();
    for i in 0..(MAX_OPEN_PACKS + 20) {
        put(&mut index, &format!("d{i}"), 50, i);
    }
    let cid = index.collection_id("c").unwrap();
    let docs = index.documents("c").unwrap();
    let mut reader = index.posting_reader(cid).unwrap();
    for round in 0..2 {
        for d in &docs {
            let got = reader.posting(d.number, LayerFeature::new(0, 3)).unwrap();
            assert_eq!(
                got,
                index
                    .posting(cid, LayerFeature::new(0, 3), d.number)
                    .unwrap(),
                "round {round}"
            );
        }
        let (read, open) = reader.packs_read();
        assert_eq!(read, docs.len());
        assert!(open <= MAX_OPEN_PACKS, "{open} files open");
    }
}

/// A format-2 store (postings as `p/` records, coarse records for every bucket) upgrades
/// to packs and sealed-bucket coarse records.
#[test]
fn a_format_2_store_upgrades_to_packs() {
    let (dir, index) = with_collection();
    {
        let mut index = index;
        put(&mut index, "a", 40_000, 1);
        put(&mut index, "b", 40_000, 2);
        // Turn it back into format 2.
        let cid = index.collection_id("c").unwrap();
        let mut b = Batch::default();
        for d in index.documents("c").unwrap() {
            for (feature, local) in index
                .packs
                .read_owned(cid, d.number)
                .unwrap()
                .all()
                .unwrap()
            {
                b.put(
                    rec::posting_key(cid, feature, d.number),
                    codec::encode_posting(&local),
                );
            }
            index.packs.remove(cid, d.number).unwrap();
        }
        migrations::version_write(&mut b, 2);
        index.store.apply(b).unwrap();
        let all_buckets = coarse::migrate_v1(&index.store, dir.path()).unwrap();
        index.store.apply(all_buckets).unwrap();
        index.store.flush().unwrap();
        assert!(index.verify().is_err());
    }
    let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    assert_eq!(
        migrations::stored_version(&index.store).unwrap(),
        Some(migrations::STORE_FORMAT_VERSION)
    );
    assert_eq!(index.verify().unwrap(), 2);
    assert!(coarse_records(&index) > 0);
    assert_blocks_agree(&index);
}

#[test]
fn a_damaged_pack_is_named_by_verify_and_reads() {
    let (dir, mut index) = with_collection();
    put(&mut index, "a", 2_000, 1);
    let path = dir.path().join("packs").join("1-0.pack");
    damage(dir.path(), "1-0.pack", |len| len - 10);
    let e = index.verify().unwrap_err().to_string();
    assert!(e.contains("1-0.pack") && e.contains("checksum"), "{e}");
    let e = index.document_postings("c", "a").unwrap_err().to_string();
    assert!(e.contains("1-0.pack"), "{e}");
    std::fs::remove_file(&path).unwrap();
    let e = index.verify().unwrap_err().to_string();
    assert!(e.contains("pack is missing"), "{e}");
}

/// Flips the bits of one byte of a pack, at `at(file length)`.
fn damage(dir: &Path, pack: &str, at: fn(usize) -> usize) {
    let path = dir.join("packs").join(pack);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = at(bytes.len());
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
}

#[test]
fn a_document_with_a_damaged_pack_in_a_sealed_bucket_can_be_deleted() {
    let (dir, mut index) = with_collection();
    put(&mut index, "a", 30_000, 1);
    put(&mut index, "b", 30_000, 2);
    put(&mut index, "c", 30_000, 3);
    assert!(coarse_records(&index) > 0, "bucket 0 is sealed");
    damage(dir.path(), "1-1.pack", |len| len / 2);
    // b's counts cannot be subtracted: the coarse records are rebuilt from a and c.
    index.delete("c", "b").unwrap();
    let left: Vec<String> = index
        .documents("c")
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, ["a", "c"]);
    assert!(!dir.path().join("packs").join("1-1.pack").exists());
    assert_eq!(index.verify().unwrap(), 2);
    assert_blocks_agree(&index);
    // The collection seals its next bucket as usual afterwards.
    put(&mut index, "d", 60_000, 4);
    assert_eq!(index.verify().unwrap(), 3);
    assert_blocks_agree(&index);
    // Two damaged packs: the rebuild for one needs the other, so the delete is refused,
    // naming it, and nothing changes.
    damage(dir.path(), "1-0.pack", |len| len / 2);
    damage(dir.path(), "1-2.pack", |len| len / 2);
    let e = index.delete("c", "a").unwrap_err().to_string();
    assert!(e.contains("1-2.pack"), "{e}");
    assert_eq!(index.documents("c").unwrap().len(), 3);
}

#[test]
fn open_existing_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let e = Index::open_existing(&missing).err().unwrap();
    assert!(matches!(e, IndexError::NoIndex { .. }), "{e}");
    assert!(
        e.to_string().contains("does not exist or holds no index"),
        "{e}"
    );
    assert!(!missing.exists());
    drop(Index::open(&missing, IndexConfig::default()).unwrap());
    assert!(Index::open_existing(&missing).is_ok());
}

/// A pack of a newer format is refused as incompatible everywhere, and deleting its document
/// from a sealed bucket does not take it for damage (which would rebuild the coarse records
/// around it and drop the file).
#[test]
fn a_newer_pack_format_is_refused_not_repaired() {
    let (dir, mut index) = with_collection();
    for (id, seed) in [("a", 1), ("b", 2), ("c", 3)] {
        put(&mut index, id, 30_000, seed);
    }
    assert!(coarse_records(&index) > 0, "bucket 0 is sealed");
    let path = dir.path().join("packs").join("1-1.pack");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4] += 1;
    std::fs::write(&path, &bytes).unwrap();
    let incompatible = |e: IndexError| {
        assert!(
            matches!(e, IndexError::IncompatibleFormat { found: 2, .. }),
            "{e}"
        );
    };
    incompatible(index.verify().unwrap_err());
    incompatible(index.document_postings("c", "b").unwrap_err());
    incompatible(index.delete("c", "b").unwrap_err());
    assert_eq!(index.documents("c").unwrap().len(), 3);
    assert!(path.exists());
}

/// Postings that would break the store's invariants are refused before anything is written.
#[test]
fn bad_postings_are_refused() {
    let (_dir, mut index) = with_collection();
    let (text, good) = synthetic(100, 1);
    let f = LayerFeature::new(0, 7);
    for bad in [vec![], vec![5, 3], vec![3, 3], vec![100]] {
        let mut encoded = good.clone();
        encoded.postings.insert(f, bad.clone());
        let doc = NewDocument {
            collection: "c",
            id: Some("a".into()),
            meta: Vec::new(),
            text: &text,
        };
        let e = index.store_encoded(doc, &encoded, &identity()).unwrap_err();
        assert!(e.to_string().contains("posting 0/7"), "{bad:?}: {e}");
    }
    assert!(index.documents("c").unwrap().is_empty());
    assert_eq!(index.verify().unwrap(), 0);
}

/// A document of collection `c` with the given id and metadata.
fn new_doc<'a>(id: &str, text: &'a str, meta: &[(&str, &str)]) -> NewDocument<'a> {
    NewDocument {
        collection: "c",
        id: Some(id.into()),
        meta: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        text,
    }
}

/// Every coarse record and sealed total (`g/`, `h/`, `n/`), to compare two stores.
fn coarse_state(index: &Index) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for prefix in [&b"g/"[..], b"h/", b"n/"] {
        index
            .store
            .scan_prefix(prefix, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(true)
            })
            .unwrap();
    }
    out
}

/// A group that seals a bucket, replaces a stored document and repeats an id of its own
/// stores what the same documents stored one by one store: the same numbers, positions,
/// postings and coarse records; its ids are unique, and it reads the same after a reopen.
#[test]
fn a_group_stores_what_one_by_one_stores_and_survives_reopen() {
    // (id, tokens, seed): `s` replaces a stored document, the second `a` the group's own.
    let docs = [
        ("a", 20_000, 1),
        ("b", 20_000, 2),
        ("s", 5_000, 3),
        ("c", 20_000, 4),
        ("a", 10_000, 5),
        ("d", 30_000, 6),
    ];
    let encoded: Vec<(String, EncodedDocument)> = docs
        .iter()
        .map(|&(_, n, seed)| synthetic(n, seed))
        .collect();
    let (_one_dir, mut one) = with_collection();
    let (group_dir, mut grouped) = with_collection();
    put(&mut one, "s", 10_000, 9);
    put(&mut grouped, "s", 10_000, 9);
    let mut singles = Vec::new();
    for (&(id, _, _), (text, e)) in docs.iter().zip(&encoded) {
        singles.push(
            one.store_encoded(new_doc(id, text, &[]), e, &identity())
                .unwrap(),
        );
    }
    one.commit().unwrap();
    let seq_before = grouped.seq;
    let mut group = grouped.group(&identity());
    for (&(id, _, _), (text, e)) in docs.iter().zip(&encoded) {
        group.add(new_doc(id, text, &[]), e).unwrap();
    }
    assert_eq!((group.len(), group.tokens()), (6, 105_000));
    let stored = group.commit().unwrap();
    grouped.commit().unwrap();
    // One batch: one sequence number for the whole group.
    assert_eq!(grouped.seq, seq_before + 1);
    let summary = |v: &[Ingested]| -> Vec<(String, usize, bool)> {
        v.iter()
            .map(|i| (i.id.clone(), i.tokens, i.replaced))
            .collect()
    };
    assert_eq!(summary(&stored), summary(&singles));
    assert_eq!(
        stored.iter().map(|i| i.replaced).collect::<Vec<_>>(),
        [false, false, true, false, true, false]
    );
    assert!(coarse_records(&grouped) > 0, "the group sealed bucket 0");
    let listing = grouped.documents("c").unwrap();
    assert_eq!(listing, one.documents("c").unwrap());
    let ids: BTreeSet<&str> = listing.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), listing.len());
    assert_eq!(ids, BTreeSet::from(["a", "b", "c", "d", "s"]));
    assert_eq!(coarse_state(&grouped), coarse_state(&one));
    for d in &listing {
        assert_eq!(
            grouped.document_postings("c", &d.id).unwrap(),
            one.document_postings("c", &d.id).unwrap()
        );
    }
    // Only the stored documents' packs are left: not the replaced `s`, not the first `a`.
    let numbers: Vec<(u32, u32)> = listing.iter().map(|d| (1, d.number)).collect();
    let mut packs = grouped.packs.list().unwrap();
    packs.sort();
    assert_eq!(packs, numbers);
    assert_eq!(grouped.verify().unwrap(), 5);
    assert_blocks_agree(&grouped);
    drop(grouped);
    let reopened = Index::open(group_dir.path(), IndexConfig::default()).unwrap();
    assert_eq!(reopened.documents("c").unwrap(), listing);
    assert_eq!(reopened.verify().unwrap(), 5);
    assert_eq!(coarse_state(&reopened), coarse_state(&one));
    let hits = reopened.bm25("c", None, "w", 1_000).unwrap();
    let found: BTreeSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(found, ids, "passages of exactly the stored documents");
    assert_eq!(
        hits.len(),
        one.bm25("c", None, "w", 1_000).unwrap().len(),
        "no passage of a replaced document is left"
    );
}

/// A document the group refuses (a metadata type an earlier document of the group fixed,
/// bad postings) leaves the group as it was; dropped, the group stores none of its documents
/// and leaves no file, type or document number taken; committed, it stores the others.
#[test]
fn a_refused_document_stores_none_of_its_dropped_group() {
    let (dir, mut index) = with_collection();
    put(&mut index, "s", 1_000, 1);
    let (text, good) = synthetic(2_000, 2);
    let mut bad = good.clone();
    bad.postings.insert(LayerFeature::new(0, 7), vec![5, 3]);
    {
        let mut group = index.group(&identity());
        group
            .add(new_doc("a", &text, &[("year", "2020")]), &good)
            .unwrap();
        group.add(new_doc("b", &text, &[]), &good).unwrap();
        let e = group
            .add(new_doc("c", &text, &[("year", "soon")]), &good)
            .unwrap_err();
        assert!(matches!(e, IndexError::MetaTypeMismatch { .. }), "{e}");
        let e = group.add(new_doc("d", &text, &[]), &bad).unwrap_err();
        assert!(e.to_string().contains("posting 0/7"), "{e}");
        let e = group
            .add(
                NewDocument {
                    collection: "nope",
                    ..new_doc("e", &text, &[])
                },
                &good,
            )
            .unwrap_err();
        assert!(matches!(e, IndexError::UnknownCollection(_)), "{e}");
        assert_eq!(group.len(), 2);
        assert_eq!(dir.path().join("packs").read_dir().unwrap().count(), 3);
    }
    let ids = |index: &Index| -> Vec<String> {
        index
            .documents("c")
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect()
    };
    assert_eq!(ids(&index), ["s"]);
    assert_eq!(index.packs.list().unwrap(), [(1, 0)]);
    assert!(index.meta_types("c").unwrap().is_empty());
    assert_eq!(index.verify().unwrap(), 1);
    // The numbers the dropped group took are free again.
    put(&mut index, "e", 100, 3);
    assert_eq!(index.document("c", "e").unwrap().number, 1);
    // Going on without the refused document: the others are stored.
    let mut group = index.group(&identity());
    group
        .add(new_doc("f", &text, &[("year", "2021")]), &good)
        .unwrap();
    group
        .add(new_doc("g", &text, &[("year", "later")]), &good)
        .unwrap_err();
    group.add(new_doc("h", &text, &[]), &good).unwrap();
    let stored = group.commit().unwrap();
    index.commit().unwrap();
    assert_eq!(
        stored.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["f", "h"]
    );
    assert_eq!(ids(&index), ["s", "e", "f", "h"]);
    assert_eq!(index.verify().unwrap(), 4);
    let empty = index.group(&identity());
    assert!(empty.commit().unwrap().is_empty());
}
