//! The `s3mem` binary: scan and generate on the real model, and clear errors on bad input.

use crate::common::{real_model_path, run_json, s3mem};

#[test]
fn scan_json_reports_tokens_speed_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.txt");
    let text: String = (0..120)
        .map(|i| format!("Sentence number {i} talks about topic {}. ", i % 7))
        .collect();
    std::fs::write(&doc, &text).unwrap();
    let v = run_json(
        s3mem()
            .args([
                "scan", "--json", "--layers", "2,4", "--chunk", "256", "--model",
            ])
            .arg(real_model_path())
            .arg(&doc),
    );
    let tokens = v["tokens"].as_u64().unwrap();
    assert!(tokens > 1000, "{v}");
    assert_eq!(v["windows"].as_u64().unwrap(), tokens.div_ceil(256));
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 50_000_000);
}

#[test]
fn generate_answers_from_the_prompt() {
    let v = run_json(
        s3mem()
            .args(["generate", "--json", "--max-new-tokens", "40", "--model"])
            .arg(real_model_path())
            .args([
                "--prompt",
                "The passkey is 48213. Remember it. What is the passkey?",
            ]),
    );
    assert!(v["answer"].as_str().unwrap().contains("48213"), "{v}");
}

#[test]
fn bad_input_gets_a_clear_error_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("blob.bin");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "A small document.").unwrap();
    let set = dir.path().join("set.jsonl");
    let item = r#"{"_id":"q","context":"A small document.","input":"What is small?","answers":["document"],"gold_spans":[[8,17]]}"#;
    std::fs::write(&set, item).unwrap();
    let model = real_model_path();
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec!["scan".into(), "--model".into(), model.clone().into(), binary.clone().into()],
            "is not UTF-8 text (invalid byte at offset 2)",
        ),
        (
            vec!["scan".into(), "--model".into(), model.clone().into(), empty.clone().into()],
            "the document is empty",
        ),
        (
            vec![
                "scan".into(),
                "--layers".into(),
                "8,30".into(),
                "--model".into(),
                model.clone().into(),
                empty.clone().into(),
            ],
            "layer 30 is out of range: the model has 30 layers",
        ),
        (
            vec!["scan".into(), "--layers".into(), "8,x".into(), empty.clone().into()],
            "`x` is not a layer index",
        ),
        (
            vec!["scan".into(), "--model".into(), "gpt-17".into(), empty.clone().into()],
            "unknown model `gpt-17`",
        ),
        (
            vec!["scan".into(), "--model".into(), binary.clone().into(), empty.clone().into()],
            "is not a valid GGUF file",
        ),
        (
            vec![
                "scan".into(),
                "--chunk".into(),
                "9000".into(),
                "--model".into(),
                model.clone().into(),
                small.clone().into(),
            ],
            "a window of 9068 tokens (chunk 9000 + sinks 4 + overlap 64) exceeds the model context of 8192",
        ),
        (
            // A chunk so large the window's sum overflows: refused, not wrapped.
            vec![
                "scan".into(),
                "--chunk".into(),
                "18446744073709551612".into(),
                "--model".into(),
                model.clone().into(),
                small.clone().into(),
            ],
            "overflows; the model context is 8192",
        ),
        (
            vec![
                "bench".into(),
                "retrieve".into(),
                "--runs".into(),
                "0".into(),
                "--data-dir".into(),
                dir.path().join("b").into(),
            ],
            "invalid value '0' for '--runs <RUNS>'",
        ),
        (
            vec![
                "eval".into(),
                "recall".into(),
                "--sigma".into(),
                "1e9".into(),
                "--data-dir".into(),
                dir.path().join("r").into(),
                "--dataset".into(),
                set.clone().into(),
            ],
            "sigma: 1000000000 is not in (0, 1024]",
        ),
    ];
    for (args, expected) in cases {
        let out = s3mem().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn scan_with_the_default_sae_set_counts_features() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.txt");
    std::fs::write(&doc, "Keys become sparse features. ".repeat(20)).unwrap();
    let v = run_json(
        s3mem()
            .args([
                "scan", "--json", "--layers", "8,16,24", "--sae", "default", "--model",
            ])
            .arg(real_model_path())
            .arg("--models-dir")
            .arg(dir.path())
            .arg(&doc),
    );
    let tokens = v["tokens"].as_u64().unwrap();
    let fired = v["features_fired"].as_u64().unwrap();
    // At most k = 16 features per key, 3 KV heads, 3 layers; most slots fire.
    assert!(
        fired <= tokens * 3 * 3 * 16 && fired > tokens * 3 * 3 * 8,
        "{v}"
    );
    let distinct = v["distinct_features"].as_u64().unwrap();
    assert!(distinct > 16 && distinct <= 3 * 2048, "{v}");
}

#[test]
fn model_info_reports_the_shape_and_the_kv_cache_per_token() {
    let v = run_json(
        s3mem()
            .args(["model", "info", "--model"])
            .arg(real_model_path()),
    );
    assert_eq!(v["arch"], "llama");
    assert_eq!(v["layers"], 30);
    assert_eq!(v["kv_heads"], 3);
    // Keys and values, 30 layers, 3 KV heads of 64 dims, 2 bytes each.
    assert_eq!(v["kv_cache_bytes_per_token_f16"], 2 * 30 * 3 * 64 * 2);
}
