//! `s3mem bench scan`: scan throughput and peak memory, one child process per run; with
//! `--llamacpp`, llama.cpp's full-context prefill of the same text beside it, and with
//! `--full-prefill`, our own full-context prefill, whose memory grows with the length.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{BenchScanArgs, ModelArgs};
use crate::model::{fetch, GenerateConfig, KvCache, Logits, Model, TapRequest, WeightFormat};

/// Runs every combination of length, chunk and layer set and prints the numbers.
pub fn scan(args: &BenchScanArgs, models: &Path) -> Result<()> {
    if let Some(file) = &args.prefill_child {
        return prefill_child(args, models, file);
    }
    if args.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let model_path = fetch::resolve(&args.model.model, models, true)?;
    // Only the tokenizer and the config are needed here; the children load the model.
    let model = Model::load(
        &model_path,
        WeightFormat::Quantized,
        &candle_core::Device::Cpu,
    )?;
    let context = model.config().context;
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
    let threads = bench_threads();
    let dir = tempfile_dir()?;
    let exe = std::env::current_exe().context("locating the s3mem binary")?;
    let runs = if args.llamacpp.is_some() {
        args.pairs
    } else {
        1
    };
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
        let fits = tokens <= context;
        let first_row = rows.len();
        for pair in 1..=runs {
            let pair_start = rows.len();
            for &chunk in &args.chunks {
                for layers in &args.layers {
                    let load = load_average();
                    let out = Command::new(&exe)
                        .args(["--threads", &threads.to_string()])
                        .args(["scan", "--json", "--chunk", &chunk.to_string()])
                        .args(["--layers", &layers.to_string()])
                        .args(model_flags(&args.model, &model_path))
                        .arg(&file)
                        .envs(thread_env(threads))
                        .output()
                        .context("running s3mem scan")?;
                    if !out.status.success() {
                        bail!("scan failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    let mut v: Value = serde_json::from_slice(&out.stdout)?;
                    v["threads"] = json!(threads);
                    v["load_average_before"] = json!(load);
                    if args.llamacpp.is_some() {
                        v["pair"] = json!(pair);
                    }
                    eprintln!("{v}");
                    rows.push(v);
                }
            }
            let Some(python) = &args.llamacpp else {
                continue;
            };
            let llama = if fits {
                let load = load_average();
                let mut l =
                    super::bench_llamacpp::prefill(python, &model_path, &file, tokens, threads)?;
                l["load_average_before"] = json!(load);
                eprintln!("llama.cpp pair {pair}: {l}");
                l
            } else {
                json!({ "skipped": format!(
                    "{tokens} tokens exceed the model's context of {context}: no full-context prefill"
                ) })
            };
            for v in &mut rows[pair_start..] {
                if let (Some(ours), Some(theirs)) =
                    (v["tokens_per_s"].as_f64(), llama["tokens_per_s"].as_f64())
                {
                    v["ratio_vs_llamacpp"] = json!(ours / theirs);
                }
                v["llamacpp"] = llama.clone();
            }
        }
        if args.full_prefill {
            let full = if fits {
                let load = load_average();
                let out = Command::new(&exe)
                    .args(["--threads", &threads.to_string()])
                    .args(["bench", "scan", "--prefill-child"])
                    .arg(&file)
                    .args(["--prefill-tokens", &tokens.to_string()])
                    .args(model_flags(&args.model, &model_path))
                    .envs(thread_env(threads))
                    .output()
                    .context("running the full-context prefill")?;
                if !out.status.success() {
                    bail!("prefill failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let mut v: Value = serde_json::from_slice(&out.stdout)?;
                v["load_average_before"] = json!(load);
                eprintln!("full prefill: {v}");
                v
            } else {
                json!({ "skipped": format!(
                    "{tokens} tokens exceed the model's context of {context}"
                ) })
            };
            for v in &mut rows[first_row..] {
                v["full_prefill"] = full.clone();
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(path) = &args.plot {
        memory_chart(&rows, &model_path.display().to_string())
            .save_png(path, 800, 500)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print_table(args, &rows, threads, context);
    Ok(())
}

/// The thread count both sides get: the global `--threads` (which sets `RAYON_NUM_THREADS`
/// before any command runs), else the cores this process may use.
fn bench_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The 1-minute load average (Linux), recorded before each run: on a shared machine it says
/// how much the number can be trusted.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// candle's gemm and its rayon pool read `RAYON_NUM_THREADS`, its quantized kernels'
/// barrier pool `CANDLE_NUM_THREADS` (default: physical cores); the child's `--threads` sets
/// both too, this only makes it explicit.
fn thread_env(threads: usize) -> [(&'static str, String); 2] {
    [
        ("RAYON_NUM_THREADS", threads.to_string()),
        ("CANDLE_NUM_THREADS", threads.to_string()),
    ]
}

fn mb(v: &Value) -> String {
    v.as_f64()
        .map_or("n/a".into(), |b| format!("{:.0}", b / 1e6))
}

fn rate(v: &Value) -> String {
    v.as_f64().map_or("n/a".into(), |r| format!("{r:.1}"))
}

fn print_table(args: &BenchScanArgs, rows: &[Value], threads: usize, context: usize) {
    print!(
        "threads: {threads} (s3mem children: --threads {threads}, RAYON_NUM_THREADS = \
         CANDLE_NUM_THREADS = {threads}"
    );
    if args.llamacpp.is_some() {
        println!("; llama.cpp: n_threads = n_threads_batch = {threads})");
    } else {
        println!(")");
    }
    if args.llamacpp.is_some() {
        if let Some(l) = rows.iter().find_map(|v| {
            v["llamacpp"]["system_info"]
                .as_str()
                .map(|_| &v["llamacpp"])
        }) {
            println!(
                "llama.cpp: llama-cpp-python {}, {}",
                l["version"].as_str().unwrap_or("?"),
                l["system_info"].as_str().unwrap_or_default()
            );
        }
        println!(
            "llama.cpp: Llama(n_ctx = tokens + 16, n_batch = n_ubatch = 512, logits_all = False), \
             timed llm.eval(tokens): a full-context prefill with the KV cache, same GGUF file, \
             same text cut to the same length with llama.cpp's tokenizer; n/a past the model's \
             context ({context} tokens). ratio = s3mem tokens/s / llama.cpp tokens/s."
        );
    }
    if args.full_prefill {
        println!(
            "full prefill: our model, all layers, KV cache, chunks of 512 (the generate path), \
             one child process per length up to the context ({context} tokens)."
        );
    }
    println!(
        "load: the 1-minute load average before each run is in the --json output \
         (load_average_before)."
    );
    println!();
    let llama = args.llamacpp.is_some();
    let mut head = vec!["tokens", "chunk", "layers", "weights"];
    if llama {
        head.push("pair");
    }
    head.extend(["s3mem scan tokens/s", "scan peak RSS (MB)"]);
    if llama {
        head.extend([
            "llama.cpp prefill tokens/s",
            "llama.cpp peak RSS (MB)",
            "ratio",
        ]);
    }
    if args.full_prefill {
        head.extend(["s3mem full prefill tokens/s", "full prefill peak RSS (MB)"]);
    }
    println!("| {} |", head.join(" | "));
    let align: Vec<&str> = head
        .iter()
        .map(|h| {
            if matches!(*h, "layers" | "weights") {
                "---"
            } else {
                "---:"
            }
        })
        .collect();
    println!("|{}|", align.join("|"));
    for v in rows {
        let mut cells = vec![
            v["tokens"].to_string(),
            v["chunk"].to_string(),
            v["layers"].as_str().unwrap_or_default().to_string(),
            v["weights"].as_str().unwrap_or_default().to_string(),
        ];
        if llama {
            cells.push(v["pair"].to_string());
        }
        cells.extend([rate(&v["tokens_per_s"]), mb(&v["peak_rss_bytes"])]);
        if llama {
            cells.extend([
                rate(&v["llamacpp"]["tokens_per_s"]),
                mb(&v["llamacpp"]["peak_rss_bytes"]),
                v["ratio_vs_llamacpp"]
                    .as_f64()
                    .map_or("n/a".into(), |r| format!("{r:.2}")),
            ]);
        }
        if args.full_prefill {
            cells.extend([
                rate(&v["full_prefill"]["tokens_per_s"]),
                mb(&v["full_prefill"]["peak_rss_bytes"]),
            ]);
        }
        println!("| {} |", cells.join(" | "));
    }
}

/// The hidden `--prefill-child FILE`: one full-context prefill of the file's first
/// `--prefill-tokens` tokens through all layers with the KV cache, in chunks of the generate
/// path's prefill size, as generation prefills a prompt; prints one JSON object.
fn prefill_child(args: &BenchScanArgs, models: &Path, file: &Path) -> Result<()> {
    let model = super::commands::load(&args.model, models)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut ids = model.tokenizer().encode_ids(&text)?;
    if args.prefill_tokens > 0 {
        ids.truncate(args.prefill_tokens);
    }
    if ids.is_empty() {
        bail!("the document is empty");
    }
    let chunk = GenerateConfig::default().prefill_chunk;
    let taps = TapRequest::default();
    let mut cache = KvCache::default();
    let t0 = Instant::now();
    let mut logits = None;
    for piece in ids.chunks(chunk) {
        let out = model
            .transformer()
            .forward(piece, Some(&mut cache), &taps, Logits::Last)?;
        logits = out.logits;
    }
    // Bring the last logits to the host, so a device has finished its work.
    let next = match logits {
        Some(l) => crate::model::argmax_rows(&l)?.first().copied(),
        None => None,
    };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "tokens": ids.len(),
            "seconds": secs,
            "tokens_per_s": ids.len() as f64 / secs,
            "peak_rss_bytes": super::peak_rss_bytes(),
            "prefill_chunk": chunk,
            "kv_cache_tokens": cache.len(),
            "layers": model.config().layers,
            "weights": model.transformer().weight_format(),
            "next_token": next,
        })
    );
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
    use crate::index::{Index, IndexConfig, NewDocument};
    use crate::ingest::encode_document;
    use crate::retrieve::{Query, RetrieveConfig, Retriever};

    let model = super::commands::load(&args.model, models)?;
    let saes = super::commands::load_sae_set(&model, &args.sae, models)?;
    let encoder = crate::ingest::Encoder::new(&model, &saes, crate::model::ScanConfig::default())?;
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
        "| collection tokens | documents | disk B/token | store s | retrieve p50 ms | retrieve p99 ms | question forward p50 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut copy = 0usize;
    for &target in &args.tokens {
        let have = |index: &Index| -> Result<u64> {
            Ok(index
                .collections()?
                .into_iter()
                .find(|c| c.name == args.collection)
                .map_or(0, |c| c.tokens))
        };
        let stored_from = std::time::Instant::now();
        while have(&index)? < target as u64 {
            for (name, text, encoded) in &corpus {
                index.store_encoded(
                    NewDocument {
                        collection: &args.collection,
                        id: Some(format!("copy-{copy}-{name}")),
                        meta: Vec::new(),
                        text,
                    },
                    encoded,
                    encoder.identity(),
                )?;
            }
            copy += 1;
        }
        index.commit()?;
        let store_seconds = stored_from.elapsed().as_secs_f64();
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
        let tokens = have(&index)?;
        println!(
            "| {tokens} | {docs} | {:.0} | {store_seconds:.0} | {:.1} | {:.1} | {:.1} |",
            index.disk_bytes() as f64 / tokens as f64,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut fwd, 0.5)
        );
    }
    Ok(())
}

/// Peak RSS against document length: the scan per layer set, our full-context prefill and
/// llama.cpp's, from the rows measured.
fn memory_chart(rows: &[Value], model: &str) -> crate::eval::plot::Chart {
    use crate::eval::plot::{Chart, Series};
    let mut series: Vec<Series> = Vec::new();
    let mut add = |label: String, tokens: &Value, bytes: &Value| {
        let (Some(t), Some(b)) = (tokens.as_f64(), bytes.as_f64()) else {
            return;
        };
        let point = (t, b / 1e6);
        let s = Series::named(&mut series, &label);
        if !s.points.contains(&point) {
            s.points.push(point);
        }
    };
    for v in rows {
        let layers = v["layers"].as_str().unwrap_or("?");
        add(
            format!("scan, layers {layers}"),
            &v["tokens"],
            &v["peak_rss_bytes"],
        );
        add(
            "full prefill (ours)".into(),
            &v["full_prefill"]["tokens"],
            &v["full_prefill"]["peak_rss_bytes"],
        );
        add(
            "llama.cpp prefill".into(),
            &v["llamacpp"]["tokens"],
            &v["llamacpp"]["peak_rss_bytes"],
        );
    }
    let name = std::path::Path::new(model)
        .file_name()
        .map_or(model.to_string(), |n| n.to_string_lossy().into_owned());
    Chart {
        title: format!("{name}: peak RSS vs document length (CPU)"),
        x_label: "document tokens".into(),
        y_label: "peak RSS MB".into(),
        log_x: true,
        log_y: false,
        series,
    }
}

#[cfg(test)]
mod chart_tests {
    use super::*;

    #[test]
    fn memory_chart_has_a_line_per_measurement_kind() {
        let rows = vec![
            json!({"tokens": 2048, "layers": "8,16,24", "peak_rss_bytes": 781e6,
                   "full_prefill": {"tokens": 2048, "peak_rss_bytes": 956e6},
                   "llamacpp": {"tokens": 2048, "peak_rss_bytes": 285e6}}),
            json!({"tokens": 2048, "layers": "8,16,24", "peak_rss_bytes": 782e6,
                   "full_prefill": {"tokens": 2048, "peak_rss_bytes": 956e6}}),
            json!({"tokens": 32768, "layers": "8,16,24", "peak_rss_bytes": 799e6}),
        ];
        let c = memory_chart(&rows, "/m/SmolLM2.gguf");
        assert!(c.title.starts_with("SmolLM2.gguf"));
        let labels: Vec<&str> = c.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "scan, layers 8,16,24",
                "full prefill (ours)",
                "llama.cpp prefill"
            ]
        );
        assert_eq!(c.series[0].points.len(), 3);
        // The repeated full-prefill measurement is drawn once.
        assert_eq!(c.series[1].points, vec![(2048.0, 956.0)]);
    }
}
