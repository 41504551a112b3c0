//! `s3mem bench scan`: scan throughput and peak memory, one child process per run.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{BenchScanArgs, ModelArgs};
use crate::model::{fetch, Model, WeightFormat};

/// Runs every combination of length, chunk and layer set and prints the numbers.
pub fn scan(args: &BenchScanArgs, models: &std::path::Path) -> Result<()> {
    let model_path = fetch::resolve(&args.model.model, models, true)?;
    // Only the tokenizer is needed here; the child processes load the model on the device.
    let model = Model::load(
        &model_path,
        WeightFormat::Quantized,
        &candle_core::Device::Cpu,
    )?;
    let mut corpus = String::new();
    for p in &args.corpus {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        corpus.push_str(&text);
        corpus.push('\n');
    }
    let unit = model.tokenizer().encode(&corpus)?;
    if unit.ids.is_empty() {
        bail!("the benchmark corpus is empty");
    }
    drop(model);
    let dir = tempfile_dir()?;
    let exe = std::env::current_exe().context("locating the s3mem binary")?;
    let mut rows = Vec::new();
    for &tokens in &args.tokens {
        // Whole copies of the corpus, then a prefix cut on a token boundary.
        let copies = tokens / unit.ids.len();
        let rest = tokens % unit.ids.len();
        let cut_char = if rest == 0 {
            0
        } else {
            unit.offsets[rest - 1].1
        };
        let mut doc = corpus.repeat(copies);
        doc.extend(corpus.chars().take(cut_char));
        let file = dir.join(format!("doc-{tokens}.txt"));
        std::fs::write(&file, &doc)?;
        for &chunk in &args.chunks {
            for layers in &args.layers {
                let out = Command::new(&exe)
                    .args(["scan", "--json", "--chunk", &chunk.to_string()])
                    .args(["--layers", &layers.to_string()])
                    .args(model_flags(&args.model, &model_path))
                    .arg(&file)
                    .output()
                    .context("running s3mem scan")?;
                if !out.status.success() {
                    bail!("scan failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                eprintln!("{v}");
                rows.push(v);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("| tokens | chunk | layers | weights | tokens/s | peak RSS (MB) |");
    println!("|---:|---:|---|---|---:|---:|");
    for v in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.0} |",
            v["tokens"],
            v["chunk"],
            v["layers"].as_str().unwrap_or_default(),
            v["weights"].as_str().unwrap_or_default(),
            v["tokens_per_s"].as_f64().unwrap_or_default(),
            v["peak_rss_bytes"].as_f64().unwrap_or_default() / 1e6,
        );
    }
    Ok(())
}

fn model_flags(args: &ModelArgs, path: &std::path::Path) -> Vec<String> {
    let mut flags = vec!["--model".into(), path.display().to_string()];
    if let Some(w) = args.weights {
        flags.extend(["--weights".into(), format!("{w:?}").to_lowercase()]);
    }
    flags.extend(args.device.to_flags());
    flags
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("s3mem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `s3mem bench retrieve`: retrieve latency against collection size.
///
/// The corpus documents are scanned once; the collection grows by storing copies of their
/// encodings under new ids (real postings, real coarse records, real BM25 passages), so a
/// million-token collection costs one scan of the corpus, not a million tokens of scanning.
pub fn retrieve(args: &super::BenchRetrieveArgs, models: &std::path::Path) -> Result<()> {
    use crate::index::{encode_document, Index, IndexConfig, NewDocument};
    use crate::retrieve::{Query, RetrieveConfig, Retriever};

    let model = super::commands::load(&args.model, models)?;
    let saes = super::commands::load_sae_set(&model, &args.sae, models)?;
    let encoder = crate::index::Encoder::new(&model, &saes, crate::model::ScanConfig::default())?;
    let mut index = Index::open(&args.data_dir, IndexConfig::default())?;
    if index.collection_id(&args.collection).is_err() {
        index.create_collection(&args.collection)?;
    }
    let mut corpus = Vec::new();
    for p in &args.corpus {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let name = p
            .file_name()
            .map_or("doc".into(), |n| n.to_string_lossy().to_string());
        let doc = NewDocument {
            collection: &args.collection,
            id: None,
            meta: Vec::new(),
            text: &text,
        };
        eprintln!("scanning {name} once");
        let encoded = encode_document(&encoder, &doc, &mut |_, _| true)?;
        corpus.push((name, text, encoded));
    }
    let retriever = Retriever::new(&model, &saes, RetrieveConfig::default())?;
    println!(
        "| collection tokens | documents | retrieve p50 ms | retrieve p99 ms | question forward p50 ms |"
    );
    println!("|---|---|---|---|---|");
    let mut copy = 0usize;
    for &target in &args.tokens {
        let have = |index: &Index| -> Result<u64> {
            Ok(index
                .collections()?
                .into_iter()
                .find(|c| c.name == args.collection)
                .map_or(0, |c| c.tokens))
        };
        while have(&index)? < target as u64 {
            for (name, text, encoded) in &corpus {
                index.store_encoded(
                    &encoder,
                    NewDocument {
                        collection: &args.collection,
                        id: Some(format!("copy-{copy}-{name}")),
                        meta: Vec::new(),
                        text,
                    },
                    encoded,
                )?;
            }
            copy += 1;
        }
        index.commit()?;
        let docs = index.documents(&args.collection)?.len();
        let (mut lat, mut fwd) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            let question = &args.questions[run % args.questions.len()];
            let e = retriever.retrieve(
                &index,
                &Query {
                    collection: args.collection.clone(),
                    docs: Vec::new(),
                    question: question.clone(),
                    budget: args.budget,
                    method: args.method,
                    trace: false,
                },
            )?;
            lat.push(e.timings_ms.get("retrieve").copied().unwrap_or(0.0));
            fwd.push(e.timings_ms.get("question_forward").copied().unwrap_or(0.0));
        }
        let pct = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        println!(
            "| {} | {docs} | {:.1} | {:.1} | {:.1} |",
            have(&index)?,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut fwd, 0.5)
        );
    }
    Ok(())
}
