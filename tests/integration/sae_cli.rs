//! `s3mem sae train|eval` end to end on a tiny random model: the set is written, evaluated,
//! reused from the sample cache, and refused for another model.

use std::path::Path;

use crate::common::{run_json, s3mem, write_tiny_gguf, TinySpec};

fn corpus(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("corpus.jsonl");
    let lines: String = (0..40)
        .map(|i| {
            let text: String = (0..30)
                .map(|j| format!("word{} ", (i * 7 + j * 3) % 23))
                .collect();
            format!("{}\n", serde_json::json!({ "text": text }))
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

#[test]
fn train_then_eval_a_set_and_refuse_it_for_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let model_a = dir.path().join("a.gguf");
    let model_b = dir.path().join("b.gguf");
    write_tiny_gguf(&model_a, &TinySpec::llama(), 1);
    write_tiny_gguf(&model_b, &TinySpec::llama(), 2);
    let corpus = corpus(dir.path());
    let out = dir.path().join("set");
    let cache = dir.path().join("samples.safetensors");
    let train = |out: &Path| {
        run_json(
            s3mem()
                .args([
                    "sae",
                    "train",
                    "--json",
                    "--layers",
                    "0,2",
                    "--per-head",
                    "--chunk",
                    "128",
                ])
                .args([
                    "--dict", "64", "--k", "4", "--tokens", "3000", "--epochs", "2",
                ])
                .args(["--with-queries", "--batch-size", "256"])
                .arg("--model")
                .arg(&model_a)
                .arg("--corpus")
                .arg(&corpus)
                .arg("--samples-cache")
                .arg(&cache)
                .arg("--out")
                .arg(out),
        )
    };
    let report = train(&out);
    // Two layers, two KV heads each.
    assert_eq!(report["train"].as_array().unwrap().len(), 4);
    assert!(report["corpus_tokens"].as_u64().unwrap() > 1000);
    let heldout = report["heldout"].as_array().unwrap();
    assert_eq!(heldout.len(), 4);
    for h in heldout {
        assert!(h["fvu_keys"].as_f64().unwrap().is_finite());
        assert!(h["fvu_queries"].as_f64().is_some());
    }
    assert!(out.join("manifest.json").is_file());
    assert!(out.join("report.json").is_file());

    // The second run reuses the cached samples and, with the same seed, writes the same set.
    let again = train(&dir.path().join("set2"));
    assert_eq!(again["digest"], report["digest"]);
    assert_eq!(again["corpus_tokens"], report["corpus_tokens"]);

    let eval = run_json(
        s3mem()
            .args([
                "sae", "eval", "--json", "--tokens", "2000", "--chunk", "128", "--model",
            ])
            .arg(&model_a)
            .arg("--sae")
            .arg(&out)
            .arg("--corpus")
            .arg(&corpus),
    );
    let saes = eval["saes"].as_array().unwrap();
    assert_eq!(saes.len(), 4);
    for s in saes {
        assert!(s["layer"].as_u64().is_some());
        assert!(s["head"].as_str().unwrap().starts_with("head:"));
        for field in ["fvu_keys", "fvu_queries", "dead_frac", "mean_l0"] {
            assert!(s[field].as_f64().is_some(), "{field} in {s}");
        }
        assert_eq!(s["fvu_keys_at_k"].as_array().unwrap().len(), 4);
    }

    let refused = s3mem()
        .args([
            "sae", "eval", "--json", "--tokens", "500", "--chunk", "128", "--model",
        ])
        .arg(&model_b)
        .arg("--sae")
        .arg(&out)
        .arg("--corpus")
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("model_fingerprint mismatch"), "{err}");

    // A dictionary smaller than the largest default k (32) is evaluated at the ks it can keep.
    let small = dir.path().join("small");
    let report = run_json(
        s3mem()
            .args(["sae", "train", "--json", "--layers", "0", "--chunk", "128"])
            .args([
                "--dict", "16", "--k", "4", "--tokens", "1500", "--epochs", "1",
            ])
            .arg("--model")
            .arg(&model_a)
            .arg("--corpus")
            .arg(&corpus)
            .arg("--out")
            .arg(&small),
    );
    let ks: Vec<u64> = report["heldout"][0]["fvu_keys_at_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["k"].as_u64().unwrap())
        .collect();
    assert_eq!(ks, [4, 8, 16], "{report}");
    assert!(small.join("report.json").is_file());
}

#[test]
fn a_corpus_without_text_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.gguf");
    write_tiny_gguf(&model, &TinySpec::llama(), 1);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"body": "no text field here"}"#).unwrap();
    let out = s3mem()
        .args([
            "sae", "train", "--layers", "0", "--tokens", "100", "--chunk", "128", "--model",
        ])
        .arg(&model)
        .arg("--corpus")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("set"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("no string `text`"),
        "{err}"
    );
    assert!(!dir.path().join("set").exists());
}
