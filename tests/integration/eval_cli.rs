//! `s3mem eval DATASET` with the real model: every method and budget answered, the report's
//! JSON, Markdown and PNG charts written, and bad flags refused by name.

use std::path::Path;

use crate::common::{run_json, s3mem};

fn licence(name: &str, chars: std::ops::Range<usize>) -> String {
    let text = std::fs::read_to_string(Path::new("/usr/share/common-licenses").join(name))
        .expect("Debian's common licences are installed");
    text.chars().skip(chars.start).take(chars.len()).collect()
}

/// Writes a two-question dataset cut from Debian's licences (not shipped).
fn dataset(dir: &Path) -> std::path::PathBuf {
    let gpl = licence("GPL-3", 20_500..23_500);
    let cure = "if you cease all violation of this License";
    let start = gpl.find(cure).expect("the cure clause is in the slice");
    let start = gpl[..start].chars().count();
    let gold = (start, start + cure.chars().count());
    let apache = licence("Apache-2.0", 0..2_500);
    let items = [
        serde_json::json!({"_id": "gpl-cure", "context": gpl, "input": "How many days does a licensee have to cure a violation after notice?", "answers": ["30 days", "thirty days"], "gold_spans": [gold]}),
        serde_json::json!({"_id": "apache-version", "context": apache, "input": "Which version of the Apache License is this?", "answers": ["2.0", "Version 2.0"]}),
    ];
    let path = dir.join("set.jsonl");
    let lines: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn eval_answers_every_method_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let set = dataset(dir.path());
    let out_dir = dir.path().join("report");
    let report = run_json(
        s3mem()
            .args(["eval", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--methods",
                "full,window,bm25,hybrid,closed-book",
                "--budgets",
                "96",
                "--max-new-tokens",
                "6",
                "--instruction",
                "Reply in one word.",
                "--json",
                "--out",
            ])
            .arg(&out_dir)
            .arg(&set),
    );
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["rows"], on_disk["rows"]);
    assert_eq!(on_disk["complete"], true);
    assert_eq!(on_disk["instruction"], "Reply in one word.");
    let rows = report["rows"].as_array().unwrap();
    let keys: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["budget"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("full".to_string(), 0),
            ("window".to_string(), 96),
            ("bm25".to_string(), 96),
            ("hybrid".to_string(), 96),
            ("closed-book".to_string(), 0)
        ]
    );
    for r in rows {
        assert_eq!(r["questions"], 2, "{r}");
        let f1 = r["f1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f1), "{r}");
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 10_000_000, "{r}");
        assert!(r["peak_gpu_bytes"].is_null(), "no GPU here: {r}");
    }
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 10);
    for run in runs {
        let method = run["method"].as_str().unwrap();
        let tokens = run["context_tokens"].as_u64().unwrap();
        match method {
            "closed-book" => {
                assert_eq!(tokens, 0);
                assert!(run["recalled"].is_null());
            }
            "full" => {
                // Both documents fit SmolLM2's window: the whole text, gold included.
                assert_eq!(run["fits"], true);
                assert!(tokens > 400, "{run}");
                if run["id"] == "gpl-cure" {
                    assert_eq!(run["recalled"], true, "{run}");
                }
            }
            // bm25 and hybrid are exact; the window's cut pieces may re-tokenize by a token.
            "bm25" | "hybrid" => assert!(tokens <= 96 && tokens > 0, "{run}"),
            "window" => assert!((80..=98).contains(&tokens), "{run}"),
            other => panic!("unexpected method {other}"),
        }
        if run["id"] == "apache-version" {
            assert!(run["recalled"].is_null(), "no gold spans, no recall: {run}");
        }
    }
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(md.contains("| full | - | 2 |"), "{md}");
    assert!(md.contains("| hybrid | 96 | 2 |"), "{md}");
    assert!(md.contains("instruction \"Reply in one word.\""), "{md}");
    for png in ["score.png", "memory.png"] {
        let bytes = std::fs::read(out_dir.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }
    assert!(
        !out_dir.join("gpu-memory.png").exists(),
        "the GPU chart is drawn only from GPU runs"
    );
    // The charts drawn again from the report alone.
    let again = dir.path().join("again");
    let out = s3mem()
        .args(["eval", "plot", "--report"])
        .arg(out_dir.join("report.json"))
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for png in ["score.png", "memory.png"] {
        assert_eq!(
            std::fs::read(again.join(png)).unwrap(),
            std::fs::read(out_dir.join(png)).unwrap(),
            "{png} is the report's own"
        );
    }
}

#[test]
fn eval_plot_names_a_report_it_cannot_draw() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("report.json");
    std::fs::write(&bad, r#"{"model": "m", "runs": []}"#).unwrap();
    let out = s3mem()
        .args(["eval", "plot", "--report"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("report.json: no runs to draw"), "{err}");
}

#[test]
fn eval_refuses_unknown_methods_and_a_missing_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let set = dataset(dir.path());
    let out = s3mem()
        .args(["eval", "--methods", "full,oracle", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(&set)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown method `oracle`"), "{err}");
    let out = s3mem().args(["eval"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATASET"), "{err}");
    // An answer length out of range stops the run before any document is ingested.
    let data = dir.path().join("data2");
    let out = s3mem()
        .args(["eval", "--max-new-tokens", "5000", "--data-dir"])
        .arg(&data)
        .arg(&set)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-new-tokens") && err.contains("5000 is not between 1 and 2048"),
        "{err}"
    );
    assert!(!data.exists(), "nothing ingested");
}
