//! The persistent index end to end on a tiny random model and a tiny SAE set: ingest, reopen,
//! delete, bad input, identity and format checks, the CLI, the golden v1 store and a crash test
//! that SIGKILLs ingesting processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::Device;
use s3mem::index::{
    FormatKind, Index, IndexConfig, IndexError, KvStore, NewDocument, SledStore, StoreIdentity,
};
use s3mem::ingest::{self, Encoder, IngestError};
use s3mem::model::{Model, ScanConfig, WeightFormat};
use s3mem::retrieve::question::{question_features, Probe};
use s3mem::sae::{SaeExpectation, SaeSet};
use s3mem::text::document_text;

use crate::common::{write_tiny_gguf, TinySpec};

/// The window geometry the tiny model (context 256) needs.
const SCAN: ScanConfig = ScanConfig {
    chunk: 128,
    sinks: 4,
    overlap: 16,
};

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    model_path: PathBuf,
    sae_dir: PathBuf,
    model: Model,
    saes: SaeSet,
}

fn s3mem() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3mem"));
    cmd.env("S3MEM_THREADS", "1");
    cmd
}

/// Returns the tiny model (seed 1) and a shared-per-layer SAE set for layers 0 and 2, trained
/// once per test run through the CLI.
pub(crate) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("tiny.gguf");
        write_tiny_gguf(&model_path, &TinySpec::llama(), 1);
        let corpus = dir.path().join("corpus.txt");
        std::fs::write(&corpus, sample_text(0, 3000)).unwrap();
        let sae_dir = dir.path().join("sae");
        train_tiny_saes(&model_path, &corpus, &sae_dir, &["--layers", "0,2"]);
        let model = Model::load(&model_path, WeightFormat::F32, &Device::Cpu).unwrap();
        let expect = SaeExpectation::new(model.fingerprint().unwrap(), model.config().head_dim);
        let saes = SaeSet::load(&sae_dir, &expect).unwrap();
        Fixture {
            _dir: dir,
            model_path,
            sae_dir,
            model,
            saes,
        }
    })
}

/// Trains a tiny SAE set (dict 64, k 4) on `model` through the CLI with the scan geometry
/// of [`SCAN`]; `extra` adds flags (the layers, `--per-head`).
fn train_tiny_saes(model: &Path, corpus: &Path, out: &Path, extra: &[&str]) {
    run_ok(
        s3mem()
            .args(["sae", "train", "--chunk", "128", "--overlap", "16"])
            .args(extra)
            .args([
                "--dict", "64", "--k", "4", "--tokens", "3000", "--epochs", "2",
            ])
            .args(["--batch-size", "256", "--holdout-every", "0", "--model"])
            .arg(model)
            .arg("--corpus")
            .arg(corpus)
            .arg("--out")
            .arg(out),
    );
}

/// Returns deterministic English-like text of about `words` words with sentence ends.
pub(crate) fn sample_text(seed: usize, words: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "river", "carried", "old", "letters", "past", "a", "mill", "where", "Ada",
        "counted", "seven", "silver", "keys", "and", "one", "brass", "lantern", "while", "rain",
        "fell", "on", "quiet", "roofs", "of", "Lisbon", "during", "winter", "market", "days",
    ];
    let mut s = String::new();
    for i in 0..words {
        let w = WORDS[(i * 7 + seed * 13 + i / 5) % WORDS.len()];
        s.push_str(w);
        s.push(if i % 11 == 10 { '.' } else { ' ' });
        if i % 11 == 10 {
            s.push(' ');
        }
    }
    s
}

pub(crate) fn encoder(f: &Fixture) -> Encoder<'_> {
    Encoder::new(&f.model, &f.saes, SCAN).unwrap()
}

fn ingest(
    index: &mut Index,
    enc: &Encoder<'_>,
    id: &str,
    text: &str,
) -> s3mem::ingest::Result<usize> {
    ingest::ingest(
        enc,
        index,
        NewDocument {
            collection: "c",
            id: Some(id.into()),
            meta: vec![("source".into(), "test".into())],
            text,
        },
        &mut |_, _| {},
    )
    .map(|i| i.tokens)
}

/// Returns every key and value of the store.
fn dump(index: &Index) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    index
        .store()
        .scan_prefix(b"", &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
    out
}

#[test]
fn index_ingest_reopen_delete_and_replace() {
    let f = fixture();
    let enc = encoder(f);
    let dir = tempfile::tempdir().unwrap();
    let mut texts: Vec<String> = (0..3).map(|i| sample_text(i + 1, 120 + 60 * i)).collect();
    texts[1].push_str(" A quokka swam to Zanzibar.");
    let postings_before;
    {
        let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        index.create_collection("c").unwrap();
        for (i, t) in texts.iter().enumerate() {
            let tokens = ingest(&mut index, &enc, &format!("doc{i}"), t).unwrap();
            assert!(tokens > 100, "{tokens}");
        }
        index.commit().unwrap();
        assert_eq!(index.verify().unwrap(), 3);
        let docs = index.documents("c").unwrap();
        assert_eq!(docs.len(), 3);
        // Positions are collection-global and consecutive.
        assert_eq!(docs[0].positions.start, 0);
        assert_eq!(docs[1].positions.start, docs[0].positions.end);
        assert_eq!(
            docs[0].meta,
            vec![("source".to_string(), "test".to_string())]
        );
        postings_before = index.document_postings("c", "doc1").unwrap();
        assert!(!postings_before.is_empty());
        for (feature, positions) in &postings_before {
            assert!([0u16, 2].contains(&feature.layer));
            assert!(positions
                .iter()
                .all(|&p| docs[1].positions.contains(&u64::from(p))));
        }
        assert_eq!(index.text("c", "doc2", Some(0..9)).unwrap(), texts[2][..9]);
        let offsets = index.offsets("c", "doc0").unwrap();
        assert_eq!(offsets.len(), docs[0].tokens as usize);
    }
    let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    assert_eq!(
        index.document_postings("c", "doc1").unwrap(),
        postings_before
    );
    let (&feature, _) = postings_before.iter().next().unwrap();
    let across = index.feature_postings("c", feature).unwrap();
    assert!(across.iter().any(|(doc, _)| *doc == 1));
    let hits = index.bm25("c", None, "quokka zanzibar", 10).unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].id, "doc1");
    assert!(index
        .text("c", "doc1", Some(hits[0].chars.clone()))
        .unwrap()
        .contains("Zanzibar"));

    // Delete removes the record, text, postings and passages.
    index.delete("c", "doc1").unwrap();
    assert_eq!(index.verify().unwrap(), 2);
    assert!(matches!(
        index.text("c", "doc1", None),
        Err(IndexError::UnknownDocument { .. })
    ));
    let across = index.feature_postings("c", feature).unwrap();
    assert!(across.iter().all(|(doc, _)| *doc != 1));
    assert!(index
        .bm25("c", None, "quokka zanzibar", 10)
        .unwrap()
        .is_empty());
    let dumped = dump(&index);
    assert!(
        !dumped.iter().any(|(k, _)| k.len() == 10
            && !k.starts_with(b"m/")
            && k[k.len() - 4..] == 1u32.to_be_bytes()),
        "records of the deleted document remain"
    );
    let cid = index.collection_id("c").unwrap();
    assert!(
        !dir.path().join(format!("packs/{cid}-1.pack")).exists(),
        "the deleted document's postings pack remains"
    );

    // Re-ingesting an id replaces the document.
    let tokens = ingest(&mut index, &enc, "doc0", &texts[1]).unwrap();
    index.commit().unwrap();
    assert_eq!(index.verify().unwrap(), 2);
    let docs = index.documents("c").unwrap();
    assert_eq!(docs.len(), 2);
    let doc0 = docs.iter().find(|d| d.id == "doc0").unwrap();
    assert_eq!(doc0.tokens as usize, tokens);
    assert_eq!(index.text("c", "doc0", None).unwrap(), texts[1]);

    // Compaction keeps everything readable.
    let index = index.compact().unwrap();
    assert_eq!(index.verify().unwrap(), 2);
    let stats = index.stats().unwrap();
    assert_eq!(stats.documents, 2);
    assert!(stats.bytes_per_token["postings"] > 0.0);

    let mut index = index;
    index.drop_collection("c").unwrap();
    assert_eq!(index.verify().unwrap(), 0);
    assert!(index.collections().unwrap().is_empty());
}

#[test]
fn index_bad_input_is_refused_and_writes_nothing() {
    let f = fixture();
    let enc = encoder(f);
    let dir = tempfile::tempdir().unwrap();
    let mut index = Index::open(
        dir.path(),
        IndexConfig {
            max_document_bytes: 2000,
        },
    )
    .unwrap();
    index.create_collection("c").unwrap();
    let before = dump(&index);
    let mut doc = |collection: &'static str, id: &str, text: &str| {
        ingest::ingest(
            &enc,
            &mut index,
            NewDocument {
                collection,
                id: Some(id.into()),
                meta: vec![],
                text,
            },
            &mut |_, _| {},
        )
    };
    let e = doc("nope", "a", "some text").unwrap_err();
    assert!(matches!(
        e,
        IngestError::Index(IndexError::UnknownCollection(_))
    ));
    assert_eq!(e.to_string(), "unknown collection `nope`");
    let e = doc("c", "a", "  \n ").unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    let big = sample_text(1, 1000);
    let e = doc("c", "big", &big).unwrap_err();
    assert!(matches!(e, IngestError::Index(IndexError::TooLarge { .. })));
    assert!(
        e.to_string().contains("over the limit of 2000 bytes"),
        "{e}"
    );
    let e = doc("c", "#3", "text").unwrap_err();
    assert!(e.to_string().contains("kept for generated ids"), "{e}");
    let e = doc("c", "", "text").unwrap_err();
    assert!(e.to_string().contains("document id is empty"), "{e}");
    let e = document_text(vec![b'o', b'k', 0xff, 0xfe], "x.txt").unwrap_err();
    assert_eq!(
        e.to_string(),
        "x.txt is not utf-8 text (invalid byte at offset 2)"
    );
    assert_eq!(dump(&index), before, "a refused document wrote something");
    assert_eq!(index.verify().unwrap(), 0);
}

#[test]
fn index_refuses_another_identity_a_newer_format_and_a_second_opener() {
    let f = fixture();
    let enc = encoder(f);
    let dir = tempfile::tempdir().unwrap();
    {
        let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        index.create_collection("c").unwrap();
        ingest(&mut index, &enc, "a", &sample_text(2, 50)).unwrap();
        index.commit().unwrap();
        assert_eq!(index.identity().unwrap().as_ref(), Some(enc.identity()));
        let other = StoreIdentity {
            model_fingerprint: "0".repeat(64),
            ..enc.identity().clone()
        };
        let e = index.check_identity(&other).unwrap_err();
        assert!(e.to_string().contains("model fingerprint"), "{e}");
        let other = StoreIdentity {
            sae_digest: "feed".into(),
            ..enc.identity().clone()
        };
        let e = index.check_identity(&other).unwrap_err();
        assert!(e.to_string().contains("sae set digest"), "{e}");
        // A different scan geometry is refused at ingest.
        let wide = Encoder::new(
            &f.model,
            &f.saes,
            ScanConfig {
                overlap: 32,
                ..SCAN
            },
        )
        .unwrap();
        let e = ingest(&mut index, &wide, "b", "more text here").unwrap_err();
        assert!(matches!(
            e,
            IngestError::Index(IndexError::IdentityMismatch { .. })
        ));
        assert!(e.to_string().contains("scan geometry"), "{e}");

        let second = Index::open(dir.path(), IndexConfig::default());
        assert!(matches!(second, Err(IndexError::Locked { .. })));
    }
    {
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let mut b = s3mem::index::Batch::default();
        let newer = s3mem::index::STORE_FORMAT_VERSION + 1;
        b.put(b"m/format".to_vec(), newer.to_be_bytes().to_vec());
        store.apply(b).unwrap();
        store.flush().unwrap();
    }
    let e = Index::open(dir.path(), IndexConfig::default())
        .err()
        .unwrap();
    assert!(
        matches!(e, IndexError::IncompatibleFormat { kind: FormatKind::Store, found, .. } if found == s3mem::index::STORE_FORMAT_VERSION + 1),
        "{e}"
    );
    assert!(
        e.to_string().contains("newer than this build supports"),
        "{e}"
    );
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ingest_cmd(f: &Fixture, data: &Path) -> Command {
    ingest_cmd_with(Path::new(env!("CARGO_BIN_EXE_s3mem")), f, data)
}

fn ingest_cmd_with(exe: &Path, f: &Fixture, data: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env("S3MEM_THREADS", "1");
    cmd.arg("ingest")
        .arg("--data-dir")
        .arg(data)
        .args([
            "--collection",
            "c",
            "--chunk",
            "128",
            "--overlap",
            "16",
            "--model",
        ])
        .arg(&f.model_path)
        .arg("--sae")
        .arg(&f.sae_dir);
    cmd
}

#[test]
fn index_cli_ingest_docs_collections_stats() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(docs.join("a.txt"), sample_text(3, 80)).unwrap();
    std::fs::write(docs.join("sub/b.md"), sample_text(4, 90)).unwrap();
    std::fs::write(docs.join("skip.bin"), [0u8, 1, 2]).unwrap();
    let out = run_ok(
        ingest_cmd(f, &data)
            .args(["--json", "--meta", "lang=en"])
            .arg(&docs),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed = v["documents"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0]["tokens"].as_u64().unwrap() > 50);
    let seconds = v["seconds"].as_f64().unwrap();
    // The seconds before the first scan are part of the run's, apart.
    let load = v["load_seconds"].as_f64().unwrap();
    assert!(load > 0.0 && load < seconds, "load {load} of {seconds} s");
    assert!(listed.iter().all(|d| d["replaced"] == false));

    // stdin with an explicit id.
    let mut child = ingest_cmd(f, &data)
        .args(["--id", "from-stdin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sample_text(5, 40).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let d = |args: &[&str]| {
        let mut cmd = s3mem();
        cmd.args(args).arg("--data-dir").arg(&data);
        cmd
    };
    let list: serde_json::Value = serde_json::from_str(&run_ok(&mut d(&[
        "docs",
        "list",
        "--collection",
        "c",
        "--json",
    ])))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let text = run_ok(&mut d(&[
        "docs",
        "get",
        "--collection",
        "c",
        "from-stdin",
        "--chars",
        "0..9",
    ]));
    assert_eq!(text, sample_text(5, 40)[..9]);
    run_ok(&mut d(&[
        "docs",
        "delete",
        "--collection",
        "c",
        "from-stdin",
    ]));
    let cols: serde_json::Value =
        serde_json::from_str(&run_ok(&mut d(&["collections", "list", "--json"]))).unwrap();
    assert_eq!(cols[0]["documents"], 2);
    run_ok(&mut d(&["collections", "create", "other"]));
    run_ok(&mut d(&["collections", "drop", "other"]));
    let stats: serde_json::Value =
        serde_json::from_str(&run_ok(&mut d(&["stats", "--json"]))).unwrap();
    assert_eq!(stats["documents"], 2);
    assert!(stats["bytes_per_token"]["total"].as_f64().unwrap() > 0.0);

    // Bad input: a non-UTF-8 file stops the run before anything is written.
    std::fs::write(dir.path().join("bad.txt"), [b'h', b'i', 0xc3, 0x28]).unwrap();
    let out = ingest_cmd(f, &data)
        .arg(docs.join("a.txt"))
        .arg(dir.path().join("bad.txt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.txt is not utf-8 text (invalid byte at offset 2)"),
        "{err}"
    );
    // A bad id (the file's name) is found before anything is written: a fresh data dir gets
    // neither the good document before it nor the collection.
    std::fs::write(dir.path().join("#bad.txt"), "some text").unwrap();
    let fresh = dir.path().join("fresh");
    let out = ingest_cmd(f, &fresh)
        .current_dir(dir.path())
        .arg(docs.join("a.txt"))
        .arg("#bad.txt")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("starts with `#`"), "{err}");
    assert!(!fresh.exists(), "nothing written, not even the data dir");
    let out = d(&["docs", "get", "--collection", "nope", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown collection `nope`"));
    let out = s3mem()
        .args(["stats", "--data-dir"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!dir.path().join("missing").exists());
    let stats2: serde_json::Value =
        serde_json::from_str(&run_ok(&mut d(&["stats", "--json"]))).unwrap();
    assert_eq!(stats2["documents"], 2);
}

/// `s3mem scan --sae` counts features as ingest stores them: with one SAE per KV head, head
/// `h`'s feature `f` is posting feature `h * dict + f` (a scan once counted `f` for every
/// head), and every activation is a posting entry of its own.
#[test]
fn index_scan_sae_counts_features_as_ingest_stores_them() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, sample_text(0, 3000)).unwrap();
    let sae_dir = dir.path().join("per-head");
    train_tiny_saes(
        &f.model_path,
        &corpus,
        &sae_dir,
        &["--layers", "0", "--per-head"],
    );
    let doc = dir.path().join("doc.txt");
    let text = sample_text(21, 400);
    std::fs::write(&doc, &text).unwrap();
    let out = run_ok(
        s3mem()
            .args([
                "scan",
                "--json",
                "--layers",
                "0",
                "--chunk",
                "128",
                "--overlap",
                "16",
            ])
            .arg("--sae")
            .arg(&sae_dir)
            .arg("--model")
            .arg(&f.model_path)
            .arg(&doc),
    );
    let scan: serde_json::Value = serde_json::from_str(&out).unwrap();

    let expect = SaeExpectation::new(f.model.fingerprint().unwrap(), f.model.config().head_dim);
    let saes = SaeSet::load(&sae_dir, &expect).unwrap();
    let enc = Encoder::new(&f.model, &saes, SCAN).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut index = Index::open(data.path(), IndexConfig::default()).unwrap();
    index.create_collection("c").unwrap();
    ingest(&mut index, &enc, "doc", &text).unwrap();
    let postings = index.document_postings("c", "doc").unwrap();
    assert!(
        postings.keys().any(|k| k.feature >= 64),
        "no feature of the second KV head"
    );
    let entries: usize = postings.values().map(Vec::len).sum();
    assert_eq!(scan["distinct_features"], postings.len(), "{scan}");
    assert_eq!(scan["features_fired"], entries, "{scan}");
}

/// `sae train --heads` trains one SAE per KV head its retrieval heads read (the tiny model has
/// 2 query heads per KV head: 0.0 reads KV head 0, 2.3 KV head 1), records the heads in the
/// set's manifest and digest, and an index built with it holds postings of those KV heads only;
/// the question's features come from the same heads.
#[test]
fn index_a_set_for_retrieval_heads_indexes_their_kv_heads_only() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, sample_text(0, 3000)).unwrap();
    let sae_dir = dir.path().join("heads");
    train_tiny_saes(&f.model_path, &corpus, &sae_dir, &["--heads", "2.3,0.0"]);
    let expect = SaeExpectation::new(f.model.fingerprint().unwrap(), f.model.config().head_dim);
    let saes = SaeSet::load(&sae_dir, &expect).unwrap();
    let heads: Vec<String> = saes
        .retrieval_heads()
        .iter()
        .map(|h| h.to_string())
        .collect();
    assert_eq!(heads, ["0.0", "2.3"]);
    let members: Vec<(usize, String)> = saes
        .metas()
        .map(|m| (m.layer, m.head.to_string()))
        .collect();
    assert_eq!(
        members,
        [(0, "head:0".to_string()), (2, "head:1".to_string())]
    );
    assert!(saes.sae_for(2, 1).is_ok() && saes.sae_for(2, 0).is_err());

    let enc = Encoder::new(&f.model, &saes, SCAN).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut index = Index::open(data.path(), IndexConfig::default()).unwrap();
    index.create_collection("c").unwrap();
    let text = sample_text(21, 400);
    ingest(&mut index, &enc, "doc", &text).unwrap();
    let postings = index.document_postings("c", "doc").unwrap();
    // dict 64: KV head h's features are h * 64 .. (h + 1) * 64.
    let in_head = |layer: u16, head: u32| {
        postings
            .keys()
            .filter(|k| k.layer == layer && k.feature / 64 == head)
            .count()
    };
    assert!(
        in_head(0, 0) > 0 && in_head(2, 1) > 0,
        "{:?}",
        postings.keys().take(5).collect::<Vec<_>>()
    );
    assert_eq!(postings.len(), in_head(0, 0) + in_head(2, 1));

    let codes = ingest::layer_codes(&saes, f.model.config().kv_heads).unwrap();
    for probe in [Probe::Keys, Probe::Queries] {
        let q =
            question_features(&f.model, &saes, &codes, "where are the keys", None, probe).unwrap();
        assert!(!q.activation.is_empty(), "{probe:?}");
        for k in q.activation.keys() {
            let head = k.feature / 64;
            assert!(
                (k.layer, head) == (0, 0) || (k.layer, head) == (2, 1),
                "{probe:?}: {k:?}"
            );
        }
    }
}

/// Copies a folder recursively (a golden store, a crashed store kept for diagnosis).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// SIGKILLs an ingesting `s3mem` at random moments; after each kill the store must reopen with
/// every invariant intact and every document seen before still there, unchanged. Each run
/// stores its documents as one group (one batch): they must all be there or none.
/// `S3MEM_CRASH_KILLS` sets the number of kills (default 200).
#[test]
fn index_crash_test_sigkill_during_ingest() {
    let f = fixture();
    let kills: usize = std::env::var("S3MEM_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    // A private copy: a build sharing the target dir may replace the binary mid-test.
    let exe = dir.path().join("s3mem");
    std::fs::copy(env!("CARGO_BIN_EXE_s3mem"), &exe).unwrap();
    let data = dir.path().join("data");
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    // Texts by id, so every document found can be checked against what was sent.
    let mut sent: BTreeMap<String, String> = BTreeMap::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Seed documents fill the collection to just under 2^16 positions, so early rounds seal
    // the first coarse bucket (kills may land in it) and later replaces delete from it.
    {
        let enc = encoder(f);
        let mut index = Index::open(&data, IndexConfig::default()).unwrap();
        index.create_collection("c").unwrap();
        let mut tokens = 0usize;
        let mut i = 0;
        while tokens < 64_000 {
            let id = format!("seed{i}");
            let text = sample_text(1_000 + i, 2_000.min((64_000 - tokens) / 2).max(20));
            tokens += ingest(&mut index, &enc, &id, &text).unwrap();
            sent.insert(id.clone(), text.clone());
            seen.insert(id, text);
            i += 1;
        }
        index.commit().unwrap();
    }
    let t0 = Instant::now();
    let mut completed = 0usize;
    let mut killed = 0usize;
    let mut round = 0usize;
    let mut groups_landed = 0usize;
    // How long a whole run takes on this machine, the shortest seen (the first round runs to
    // its end; it may also embed the seed documents): kills land anywhere in a run, its
    // start-up and its store alike, however fast the machine.
    let mut full_run: Option<Duration> = None;
    while killed < kills {
        round += 1;
        // Each round sends three new documents and re-sends an old id (a replace).
        let mut files = Vec::new();
        let mut new_ids = Vec::new();
        for j in 0..3 {
            let id = format!("r{round}-{j}");
            let text = sample_text(round * 3 + j, 30 + (next() % 60) as usize);
            let path = inputs.join(format!("{id}.txt"));
            std::fs::write(&path, &text).unwrap();
            sent.insert(path.display().to_string(), text);
            new_ids.push(path.display().to_string());
            files.push(path);
        }
        if round > 2 {
            let old = inputs.join(format!("r{}-0.txt", 1 + next() as usize % (round - 1)));
            files.push(old);
        }
        let mut child = ingest_cmd_with(&exe, f, &data)
            .args(&files)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the ingest after {killed} kills: {e}"));
        let delay = full_run.map_or(Duration::MAX, |full| {
            Duration::from_millis(next() % (full.as_millis() as u64 * 5 / 4 + 1))
        });
        let start = Instant::now();
        let mut finished = false;
        while start.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if finished {
            completed += 1;
            let took = start.elapsed();
            full_run = Some(full_run.map_or(took, |full| full.min(took)));
        } else {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        // Other tests of this process spawn children too: between their fork and exec a child
        // can briefly hold a copy of our lock's descriptor. Wait that out, briefly.
        let mut reopen = Index::open(&data, IndexConfig::default());
        for _ in 0..100 {
            if !matches!(reopen, Err(IndexError::Locked { .. })) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            reopen = Index::open(&data, IndexConfig::default());
        }
        let index = reopen.unwrap_or_else(|e| {
            // Keep the store that failed to open for diagnosis.
            let kept = std::env::temp_dir().join(format!("s3mem-crash-{}", std::process::id()));
            copy_dir(&data, &kept);
            panic!(
                "reopen after kill {killed} (round {round}): {e} (store kept in {})",
                kept.display()
            )
        });
        if index.collections().unwrap().is_empty() {
            continue;
        }
        index
            .verify()
            .unwrap_or_else(|e| panic!("after kill {killed}: {e}"));
        let docs = index.documents("c").unwrap();
        let now: BTreeMap<String, String> = docs
            .iter()
            .map(|d| (d.id.clone(), index.text("c", &d.id, None).unwrap()))
            .collect();
        for (id, text) in &now {
            assert_eq!(
                Some(text),
                sent.get(id),
                "document {id} differs from what was sent"
            );
        }
        for id in seen.keys() {
            assert!(
                now.contains_key(id),
                "document {id} was lost after kill {killed}"
            );
        }
        let landed = new_ids.iter().filter(|id| now.contains_key(*id)).count();
        assert!(
            landed == 0 || landed == new_ids.len(),
            "round {round}: {landed} of the group's {} new documents are stored after kill {killed}",
            new_ids.len()
        );
        if landed > 0 {
            groups_landed += 1;
        }
        seen = now;
    }
    eprintln!(
        "crash test: {killed} kills, {completed} runs finished, {groups_landed} groups stored, \
         {} documents, {:.1} s (the shortest whole run {:.2} s)",
        seen.len(),
        t0.elapsed().as_secs_f64(),
        full_run.unwrap_or_default().as_secs_f64()
    );
    assert!(seen.len() > 2, "no ingest ever got through: {}", seen.len());
    assert!(
        groups_landed > 1,
        "only {groups_landed} groups were stored: the kills missed the store"
    );
    let index = Index::open(&data, IndexConfig::default()).unwrap();
    assert!(
        index.stats().unwrap().components.contains_key("coarse"),
        "the collection never sealed a coarse bucket: the test missed that path"
    );
}

/// Documents scanned together (windows of one and the next sharing a batch) give the same
/// postings as each scanned alone, and `ingest_many` stores each as `ingest` would.
#[test]
fn batched_ingest_of_several_documents_matches_one_by_one() {
    let f = fixture();
    let mut batched_model = Model::load(&f.model_path, WeightFormat::F32, &Device::Cpu).unwrap();
    batched_model.set_scan_batch(3);
    let batched = Encoder::new(&batched_model, &f.saes, SCAN).unwrap();
    let single = encoder(f);
    let texts = [
        sample_text(11, 700),
        sample_text(12, 90),
        sample_text(13, 400),
    ];
    let tokens: Vec<_> = texts.iter().map(|t| single.tokenize(t).unwrap()).collect();
    let mut seen = Vec::new();
    let many = batched
        .encode_many(tokens.clone(), &mut |done| {
            seen.push(done);
            true
        })
        .unwrap();
    let total: usize = tokens.iter().map(|t| t.ids.len()).sum();
    assert_eq!(
        seen.last(),
        Some(&total),
        "progress runs over all documents"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(many.len(), 3);
    for (t, m) in tokens.into_iter().zip(&many) {
        let one = single.encode(t, &mut |_| {}).unwrap();
        assert_eq!(one.offsets, m.offsets);
        assert_eq!(one.postings, m.postings);
    }

    let dir = tempfile::tempdir().unwrap();
    let mut a = Index::open(dir.path(), IndexConfig::default()).unwrap();
    a.create_collection("c").unwrap();
    let docs = texts
        .iter()
        .enumerate()
        .map(|(i, text)| NewDocument {
            collection: "c",
            id: Some(format!("d{i}")),
            meta: Vec::new(),
            text,
        })
        .collect();
    let out = ingest::ingest_many(&batched, &mut a, docs, &mut |_, _| {}).unwrap();
    assert_eq!(
        out.documents
            .iter()
            .map(|o| o.id.as_str())
            .collect::<Vec<_>>(),
        ["d0", "d1", "d2"]
    );
    // Storing overlaps the scan by at most the time spent storing.
    let stored: f64 = out.documents.iter().map(|o| o.store_seconds).sum();
    assert!((0.0..=stored + 1.0).contains(&out.store_overlapped_seconds));
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = Index::open(dir_b.path(), IndexConfig::default()).unwrap();
    b.create_collection("c").unwrap();
    for (i, text) in texts.iter().enumerate() {
        ingest(&mut b, &single, &format!("d{i}"), text).unwrap();
    }
    for i in 0..3 {
        let id = format!("d{i}");
        assert_eq!(a.offsets("c", &id).unwrap(), b.offsets("c", &id).unwrap());
    }
    a.commit().unwrap();
    a.verify().unwrap();
    // A bad document in the group stops the call before anything is written.
    let bad = vec![
        NewDocument {
            collection: "c",
            id: Some("fine".into()),
            meta: Vec::new(),
            text: "some words",
        },
        NewDocument {
            collection: "c",
            id: Some("empty".into()),
            meta: Vec::new(),
            text: "   ",
        },
    ];
    let e = ingest::ingest_many(&batched, &mut a, bad, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    assert!(matches!(
        a.document("c", "fine"),
        Err(IndexError::UnknownDocument { .. })
    ));
}

/// A document without tokens between two others in one scan batch comes back empty, and the
/// others as each scanned alone: its end is told to every layer's gathering thread in order.
#[test]
fn a_batch_with_an_empty_document_between_two_keeps_each_whole() {
    let f = fixture();
    let mut batched_model = Model::load(&f.model_path, WeightFormat::F32, &Device::Cpu).unwrap();
    batched_model.set_scan_batch(3);
    let batched = Encoder::new(&batched_model, &f.saes, SCAN).unwrap();
    let single = encoder(f);
    let first = single.tokenize(&sample_text(21, 40)).unwrap();
    let last = single.tokenize(&sample_text(22, 30)).unwrap();
    let empty = single.tokenize("").unwrap();
    assert!(empty.ids.is_empty());
    // Two windows of the first, then the last's first window: one batch of three spans the
    // empty document.
    assert_eq!(SCAN.windows(first.ids.len()).count(), 2);
    let docs = vec![first.clone(), empty, last.clone()];
    let many = batched.encode_many(docs, &mut |_| true).unwrap();
    assert_eq!(many.len(), 3);
    assert!(many[1].postings.is_empty() && many[1].offsets.is_empty());
    for (t, m) in [(first, &many[0]), (last, &many[2])] {
        let one = single.encode(t, &mut |_| {}).unwrap();
        assert!(!one.postings.is_empty());
        assert_eq!(one.postings, m.postings);
        assert_eq!(one.offsets, m.offsets);
    }
}
