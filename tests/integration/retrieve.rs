//! Retrieval and answers with the real model over a real data dir: the CLI's JSON contract,
//! exact budgets, provenance, the coarse pass, traces and bad input.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::{real_model, run_json, s3mem};
use s3mem::index::{Index, IndexConfig};
use s3mem::retrieve::{EvidenceOrder, Fusion, Method, Query, RetrieveConfig, Retriever};
use s3mem::sae::{SaeExpectation, SaeSet};

pub(crate) const QUESTION: &str =
    "How many days after receiving notice does a licensee have to cure a violation?";

/// Two documents cut from Debian's licence texts (read at test time, not shipped).
struct Fixture {
    dir: PathBuf,
    docs: Vec<(String, String)>,
}

pub(crate) fn licence(name: &str, chars: std::ops::Range<usize>) -> String {
    let text = std::fs::read_to_string(Path::new("/usr/share/common-licenses").join(name))
        .expect("Debian's common licences are installed");
    text.chars().skip(chars.start).take(chars.len()).collect()
}

/// One process at a time may hold a data dir: tests that use the fixture take turns.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        // GPL-3 section 8 (termination, the 30-day cure) with its neighbours, and the
        // opening of the Apache licence.
        let docs = vec![
            ("gpl".to_string(), licence("GPL-3", 19_000..26_000)),
            ("apache".to_string(), licence("Apache-2.0", 0..4_000)),
        ];
        for (id, text) in &docs {
            let path = dir.join(format!("{id}.txt"));
            std::fs::write(&path, text).unwrap();
            run_json(s3mem().args([
                "ingest",
                "--data-dir",
                dir.to_str().unwrap(),
                "--collection",
                "lic",
                "--id",
                id,
                "--json",
                path.to_str().unwrap(),
            ]));
        }
        Fixture { dir, docs }
    })
}

fn default_saes() -> SaeSet {
    let model = real_model();
    let dir = s3mem::sae::defaults::default_set_dir(model, &s3mem::model::fetch::models_dir(None))
        .unwrap()
        .expect("SmolLM2 has a default SAE set");
    SaeSet::load(
        &dir,
        &SaeExpectation::new(model.fingerprint().unwrap(), model.config().head_dim),
    )
    .unwrap()
}

fn retrieve_cli(method: &str, budget: usize, extra: &[&str]) -> serde_json::Value {
    let f = fixture();
    let budget = budget.to_string();
    let mut cmd = s3mem();
    cmd.args([
        "retrieve",
        "--data-dir",
        f.dir.to_str().unwrap(),
        "--collection",
        "lic",
        "--budget",
        &budget,
        "--method",
        method,
        "--json",
    ]);
    cmd.args(extra).arg(QUESTION);
    run_json(&mut cmd)
}

/// Checks provenance, order and the exact budget of one JSON evidence object.
fn check_evidence(v: &serde_json::Value, budget: usize) {
    let f = fixture();
    for key in [
        "question",
        "method",
        "budget",
        "context",
        "context_tokens",
        "spans",
        "timings_ms",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    let context = v["context"].as_str().unwrap();
    let n = v["context_tokens"].as_u64().unwrap() as usize;
    assert!(n <= budget, "{n} tokens over the budget of {budget}");
    let counted = if context.is_empty() {
        0
    } else {
        real_model().tokenizer().encode_ids(context).unwrap().len()
    };
    assert_eq!(n, counted, "context_tokens is the tokenizer's count");
    // Spans come in the context's order (best first), each after the one before, and never
    // overlap within a document.
    let mut chosen: Vec<(&str, u64, u64)> = Vec::new();
    let mut at = 0;
    for (n, s) in v["spans"].as_array().unwrap().iter().enumerate() {
        let doc = s["doc_id"].as_str().unwrap();
        let text = &f.docs.iter().find(|(id, _)| id == doc).unwrap().1;
        let (a, b) = (
            s["char_start"].as_u64().unwrap(),
            s["char_end"].as_u64().unwrap(),
        );
        let slice: String = text
            .chars()
            .skip(a as usize)
            .take((b - a) as usize)
            .collect();
        assert_eq!(
            s["text"].as_str().unwrap(),
            slice,
            "text is document[char_start..char_end]"
        );
        assert!(s["token_start"].as_u64() < s["token_end"].as_u64());
        for part in s["source"].as_str().unwrap().split('+') {
            assert!(["s3", "bm25", "bias"].contains(&part), "{part}");
        }
        assert!(
            chosen.iter().all(|&(d, x, y)| d != doc || b <= x || y <= a),
            "spans of one document do not overlap"
        );
        chosen.push((doc, a, b));
        let piece = format!("[{}] {}", n + 1, s["text"].as_str().unwrap().trim());
        let found = context[at..]
            .find(&piece)
            .unwrap_or_else(|| panic!("piece {} in context order", n + 1));
        at += found + piece.len();
    }
}

#[test]
fn retrieve_json_contract_holds_for_every_method() {
    let _turn = turn();
    for method in ["s3", "bm25", "hybrid", "bias"] {
        let v = retrieve_cli(method, 256, &[]);
        assert_eq!(v["method"], method);
        assert_eq!(v["budget"], 256);
        assert_eq!(v["question"], QUESTION);
        assert!(
            !v["spans"].as_array().unwrap().is_empty(),
            "{method}: no spans"
        );
        check_evidence(&v, 256);
        if method == "bias" {
            assert_eq!(v["spans"][0]["char_start"], 0);
        }
        if method == "s3" || method == "hybrid" {
            assert!(v["timings_ms"]["question_forward"].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn hybrid_evidence_holds_the_cure_period_and_an_answer_comes_with_it() {
    let _turn = turn();
    let f = fixture();
    let v = run_json(s3mem().args([
        "ask",
        "--data-dir",
        f.dir.to_str().unwrap(),
        "--collection",
        "lic",
        "--budget",
        "256",
        "--method",
        "hybrid",
        "--max-new-tokens",
        "48",
        "--json",
        QUESTION,
    ]));
    check_evidence(&v, 512);
    assert!(
        v["context"].as_str().unwrap().contains("30 days"),
        "{}",
        v["context"]
    );
    // What the 135M model makes of it varies (it often picks the 60-day reinstatement clause
    // beside it); the evidence is what is checked, the answer only for being there.
    let answer = v["answer"].as_str().unwrap();
    assert!(!answer.trim().is_empty());
    assert!(v["usage"]["new_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn budgets_are_exact_and_never_exceeded() {
    let _turn = turn();
    let f = fixture();
    let model = real_model();
    let saes = default_saes();
    let index = Index::open(&f.dir, IndexConfig::default()).unwrap();
    let r = Retriever::new(model, &saes, RetrieveConfig::default()).unwrap();
    for budget in [4, 12, 40, 100, 333, 900] {
        for method in [Method::Hybrid, Method::S3, Method::Bm25] {
            let e = r
                .retrieve(
                    &index,
                    &Query {
                        collection: "lic".into(),
                        docs: Vec::new(),
                        question: QUESTION.into(),
                        budget,
                        method,
                        trace: false,
                        filter: None,
                    },
                )
                .unwrap();
            assert!(
                e.context_tokens <= budget,
                "{method} {budget}: {}",
                e.context_tokens
            );
            let n = if e.context.is_empty() {
                0
            } else {
                model.tokenizer().encode_ids(&e.context).unwrap().len()
            };
            assert_eq!(n, e.context_tokens);
            if budget >= 100 {
                // A real budget is used, not wasted.
                assert!(
                    e.context_tokens * 10 >= budget * 7,
                    "{method} {budget}: {}",
                    e.context_tokens
                );
            }
        }
    }
    drop(index);
}

#[test]
fn rank_order_gives_the_same_pieces_best_first() {
    let _turn = turn();
    let f = fixture();
    let model = real_model();
    let saes = default_saes();
    let index = Index::open(&f.dir, IndexConfig::default()).unwrap();
    let query = Query {
        collection: "lic".into(),
        docs: Vec::new(),
        question: QUESTION.into(),
        budget: 400,
        method: Method::Hybrid,
        trace: true,
        filter: None,
    };
    let by = |order| {
        let config = RetrieveConfig {
            fusion: Fusion {
                order,
                ..Fusion::default()
            },
            ..RetrieveConfig::default()
        };
        Retriever::new(model, &saes, config)
            .unwrap()
            .retrieve(&index, &query)
            .unwrap()
    };
    let position = by(EvidenceOrder::Position);
    let rank = by(EvidenceOrder::Rank);
    let key = |s: &s3mem::retrieve::EvidenceSpan| (s.doc_id.clone(), s.token_start, s.token_end);
    let in_position: Vec<_> = position.spans.iter().map(key).collect();
    let mut in_rank: Vec<_> = rank.spans.iter().map(key).collect();
    assert!(in_position.len() >= 2, "{in_position:?}");
    // Position order: each document's pieces together, in position order.
    let mut seen: Vec<&String> = Vec::new();
    for w in in_position.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(w[0].1 < w[1].1, "{in_position:?}");
        } else {
            seen.push(&w[0].0);
            assert!(!seen.contains(&&w[1].0), "{in_position:?}");
        }
    }
    // The best fused candidate that went in opens the rank-ordered context.
    let best = rank
        .trace
        .as_ref()
        .unwrap()
        .fused
        .iter()
        .find(|f| f.kept)
        .unwrap();
    let first = &rank.spans[0];
    assert!(
        first.doc_id == best.doc_id
            && first.token_start <= best.token_start
            && best.token_end <= first.token_end,
        "first piece {:?}, best candidate {best:?}",
        key(first)
    );
    assert!(rank
        .context
        .starts_with(&format!("[1] {}", first.text.trim())));
    // Here the best piece is not the first by position, so the orders differ.
    assert_ne!(in_rank, in_position);
    let mut in_position = in_position;
    in_position.sort();
    in_rank.sort();
    assert_eq!(in_rank, in_position);
    assert_eq!(rank.context_tokens, position.context_tokens);
}

#[test]
fn the_coarse_pass_finds_what_token_level_scoring_finds_when_it_covers_everything() {
    let _turn = turn();
    let f = fixture();
    let model = real_model();
    let saes = default_saes();
    let index = Index::open(&f.dir, IndexConfig::default()).unwrap();
    let q = Query {
        collection: "lic".into(),
        docs: Vec::new(),
        question: QUESTION.into(),
        budget: 400,
        method: Method::S3,
        trace: true,
        filter: None,
    };
    let token = Retriever::new(model, &saes, RetrieveConfig::default())
        .unwrap()
        .retrieve(&index, &q)
        .unwrap();
    let coarse = Retriever::new(
        model,
        &saes,
        RetrieveConfig {
            coarse_min_tokens: 0,
            coarse_blocks: 10_000,
            ..RetrieveConfig::default()
        },
    )
    .unwrap()
    .retrieve(&index, &q)
    .unwrap();
    let (tt, ct) = (token.trace.unwrap(), coarse.trace.unwrap());
    assert!(!tt.coarse_pass && ct.coarse_pass);
    assert_eq!(token.spans, coarse.spans);
    // With few blocks the coarse pass scores fewer tokens.
    let narrow = Retriever::new(
        model,
        &saes,
        RetrieveConfig {
            coarse_min_tokens: 0,
            coarse_blocks: 1,
            ..RetrieveConfig::default()
        },
    )
    .unwrap()
    .retrieve(&index, &q)
    .unwrap();
    assert!(narrow.trace.unwrap().scored_tokens < tt.scored_tokens);
}

#[test]
fn trace_shows_features_positions_nms_bm25_and_fusion() {
    let _turn = turn();
    let v = retrieve_cli("hybrid", 300, &["--trace"]);
    let t = &v["trace"];
    let f = t["query_features"].as_array().unwrap();
    assert!(!f.is_empty());
    for x in f {
        assert!(x["idf"].as_f64().unwrap() >= 1.0 && x["weight"].as_f64().unwrap() > 0.0);
    }
    for key in ["top_raw", "top_smoothed", "nms", "bm25", "fused"] {
        assert!(!t[key].as_array().unwrap().is_empty(), "{key} is empty");
    }
    assert!(t["fused"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["kept"] == true));
}

#[test]
fn bad_questions_and_ids_are_named_errors() {
    let _turn = turn();
    let f = fixture();
    let dir = f.dir.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--collection", "nope", "q"], "nope"),
        (&["--collection", "lic", "--doc", "missing", "q"], "missing"),
        (&["--collection", "lic", "--budget", "0", "q"], "budget"),
        (&["--collection", "lic", "  "], "question"),
        (
            &["--collection", "lic", "--method", "sparse", "q"],
            "sparse",
        ),
        (
            &[
                "--collection",
                "lic",
                "--method",
                "dense",
                "--embedder",
                "none",
                "q",
            ],
            "model fetch minilm",
        ),
    ];
    for (args, needle) in cases {
        assert_refused(&[&["retrieve", "--data-dir", dir], args].concat(), needle);
    }
}

/// Runs `s3mem ARGS` and checks it fails with an error naming `needle`, without a panic.
fn assert_refused(args: &[&str], needle: &str) {
    let out = s3mem().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn rerank_reads_the_pool_with_the_index_model_or_another_and_is_local_only() {
    let _turn = turn();
    let f = fixture();
    let dir = f.dir.to_str().unwrap();
    // SmolLM2's own heads, then Qwen2.5-Coder-0.5B reading the same pool re-tokenized.
    for extra in [
        &["--heads", "8.1,12.3", "--rerank-first-stage", "1"][..],
        &[
            "--heads",
            "10.1,12.3",
            "--rerank-model",
            "qwen2.5-coder-0.5b",
            "--pool-tokens",
            "512",
        ][..],
    ] {
        let v = retrieve_cli("rerank", 128, extra);
        assert_eq!(v["method"], "rerank", "{extra:?}");
        let spans = v["spans"].as_array().unwrap();
        assert!(!spans.is_empty(), "{extra:?}: no spans");
        assert!(v["context_tokens"].as_u64().unwrap() <= 128);
        assert!(
            v["timings_ms"]["rerank_forward"].as_f64().unwrap() > 0.0,
            "{extra:?}: {}",
            v["timings_ms"]
        );
        for s in spans {
            let text = &f
                .docs
                .iter()
                .find(|(id, _)| id == s["doc_id"].as_str().unwrap());
            let text = &text.unwrap().1;
            let (a, b) = (
                s["char_start"].as_u64().unwrap() as usize,
                s["char_end"].as_u64().unwrap() as usize,
            );
            let slice: String = text.chars().skip(a).take(b - a).collect();
            assert_eq!(s["text"].as_str().unwrap(), slice);
        }
    }
    // Named errors: no heads; a head the model lacks; re-ranking flags with a daemon.
    let cases: [(&[&str], &str); 3] = [
        (&["--method", "rerank"], "heads"),
        (&["--method", "rerank", "--heads", "99.0"], "99.0"),
        (
            &["--server", "http://127.0.0.1:9", "--heads", "8.1"],
            "local data dir",
        ),
    ];
    for (args, needle) in cases {
        let head = ["retrieve", "--data-dir", dir, "--collection", "lic"];
        assert_refused(&[&head[..], args, &[QUESTION]].concat(), needle);
    }
}
