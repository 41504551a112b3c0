//! The real all-MiniLM-L6-v2 embedder: parity with the sentence-transformers pipeline
//! (tests/fixtures/embed/reference.json, made by make_reference.py beside it), batching and
//! the files a broken folder names.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use s3mem::embed::{
    measure_throughput, synthetic_passages, throughput_table, Embedder, Embedding,
    ThroughputConfig, CONFIG_FILE, DIM, MAX_TOKENS, TOKENIZER_FILE, WEIGHTS_FILE,
};
use s3mem::model::fetch;
use serde::Deserialize;

/// The smallest cosine to the reference each text must reach.
const MIN_COSINE: f32 = 0.9999;
/// The largest difference of one coordinate to the float64 reference, or between two runs of
/// one text: f32 rounding through six layers (measured on x86-64: at most 2.2e-7).
const MAX_ABS_DIFF: f32 = 2e-6;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    texts: Vec<ReferenceText>,
}

#[derive(Deserialize)]
struct ReferenceText {
    name: String,
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embed/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Returns the verified MiniLM folder, fetched through `model fetch`'s own code on a machine
/// that lacks it.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let models = fetch::models_dir(None);
        fetch::resolve_folder("minilm", &models, true).expect("minilm can be fetched")
    })
}

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| Embedder::load(model_dir()).expect("the MiniLM folder loads"))
}

fn max_abs_diff(a: &Embedding, b: &Embedding) -> f32 {
    a.as_array()
        .iter()
        .zip(b.as_array())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn embeddings_match_the_sentence_transformers_reference() {
    let reference = reference();
    assert_eq!(reference.max_seq_length, MAX_TOKENS);
    let texts: Vec<&str> = reference.texts.iter().map(|t| t.text.as_str()).collect();
    // One batch: the long text pads every other row, so masking is checked too.
    let ours = embedder()
        .embed_batched(&texts, NonZeroUsize::new(texts.len()).unwrap())
        .unwrap();
    assert_eq!(ours.len(), texts.len());
    for (text, ours) in reference.texts.iter().zip(&ours) {
        assert_eq!(
            embedder().token_ids(&text.text).unwrap(),
            text.ids,
            "{}: token ids",
            text.name
        );
        let expected = Embedding::try_from(&text.embedding[..]).unwrap();
        let cosine = ours.cosine(&expected);
        let diff = max_abs_diff(ours, &expected);
        assert!(cosine > MIN_COSINE, "{}: cosine {cosine}", text.name);
        assert!(
            diff < MAX_ABS_DIFF,
            "{}: max abs difference {diff}",
            text.name
        );
        assert!(
            (ours.norm() - 1.0).abs() < 1e-5,
            "{}: norm {}",
            text.name,
            ours.norm()
        );
    }
    let long = reference.texts.iter().find(|t| t.name == "long").unwrap();
    assert_eq!(long.ids.len(), MAX_TOKENS, "the long text is truncated");
}

#[test]
fn batch_size_and_order_do_not_change_an_embedding() {
    let reference = reference();
    let texts: Vec<&str> = reference.texts.iter().map(|t| t.text.as_str()).collect();
    let together = embedder().embed(&texts).unwrap();
    let one = NonZeroUsize::new(1).unwrap();
    for (text, batched) in texts.iter().zip(&together) {
        let alone = embedder().embed_batched(&[text], one).unwrap().remove(0);
        let diff = max_abs_diff(&alone, batched);
        assert!(
            diff < MAX_ABS_DIFF,
            "{text:?}: alone vs in a batch differ by {diff}"
        );
    }
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let back = embedder()
        .embed_batched(&reversed, NonZeroUsize::new(2).unwrap())
        .unwrap();
    for (a, b) in together.iter().zip(back.iter().rev()) {
        assert!(max_abs_diff(a, b) < MAX_ABS_DIFF);
    }
    assert!(embedder().embed(&[]).unwrap().is_empty());
}

#[test]
fn a_question_is_closer_to_its_passage_than_to_another() {
    let reference = reference();
    let text = |name: &str| {
        let t = reference.texts.iter().find(|t| t.name == name).unwrap();
        t.text.as_str()
    };
    let e = embedder()
        .embed(&[text("question"), text("long"), text("short")])
        .unwrap();
    let (to_passage, to_other) = (e[0].cosine(&e[1]), e[0].cosine(&e[2]));
    assert!(to_passage > to_other + 0.2, "{to_passage} vs {to_other}");
    assert_eq!(e[0].as_array().len(), DIM);
}

#[test]
fn benchmark_passages_have_the_asked_token_count() {
    for tokens in [2, 17, 100, MAX_TOKENS] {
        for passage in synthetic_passages(5, tokens) {
            assert_eq!(embedder().token_ids(&passage).unwrap().len(), tokens);
        }
    }
}

#[test]
fn throughput_counts_the_passages_and_tokens_it_embedded() {
    let config = ThroughputConfig {
        tokens: 10,
        batches: vec![NonZeroUsize::new(1).unwrap(), NonZeroUsize::new(3).unwrap()],
        min_time: Duration::ZERO,
        min_passages: 4,
    };
    let rows = measure_throughput(embedder(), &config).unwrap();
    assert_eq!(rows.iter().map(|r| r.batch).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(rows.iter().map(|r| r.passages).collect::<Vec<_>>(), [4, 6]);
    for row in &rows {
        assert_eq!(row.tokens, row.passages * 10);
        assert!(row.seconds > 0.0 && row.tokens_per_second() > row.passages_per_second());
        assert!(row.cpu_seconds.is_some_and(|cpu| cpu >= 0.0), "{row:?}");
    }
    let table = throughput_table(&rows);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.lines().nth(2).unwrap().trim_start().starts_with("3 "),
        "{table}"
    );
}

#[test]
fn a_broken_tokenizer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for name in [WEIGHTS_FILE, CONFIG_FILE] {
        std::os::unix::fs::symlink(model_dir().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join(TOKENIZER_FILE), "{\"version\": \"1.0\"}").unwrap();
    let err = Embedder::load(dir.path())
        .err()
        .expect("a broken tokenizer fails")
        .to_string();
    assert!(err.contains("embedding tokenizer"), "{err}");
    assert!(err.contains(TOKENIZER_FILE), "{err}");
}
