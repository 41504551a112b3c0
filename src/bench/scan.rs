//! `s3mem bench scan`: scan throughput and peak memory, one child `s3mem scan` process per run
//! so its peak RSS is its own; with llama.cpp, its full-context prefill of the same text
//! beside it, and with the full prefill, our own full-context prefill, whose memory grows with
//! the length.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

use super::{BenchError, Log, Result};
use crate::eval::plot::{Chart, Series};
use crate::model::{GenerateConfig, KvCache, LayerSet, Logits, Model, TapRequest, WeightFormat};

/// What `bench scan` measures.
#[derive(Debug, Clone)]
pub struct ScanBench {
    /// The s3mem binary each child runs (`scan --json`, `bench scan --prefill-child`).
    pub exe: PathBuf,
    /// The GGUF file.
    pub model: PathBuf,
    /// Flags every child gets after its subcommand (`--model`, `--weights`, `--device`, ...).
    pub model_flags: Vec<String>,
    /// Text the documents are cut from (repeated as needed).
    pub corpus: Vec<PathBuf>,
    /// Document lengths in tokens.
    pub tokens: Vec<usize>,
    /// Chunk sizes to compare.
    pub chunks: Vec<usize>,
    /// Layer sets to compare.
    pub layers: Vec<LayerSet>,
    /// A Python with `llama_cpp` importable: also prefill each length with llama.cpp.
    pub llamacpp: Option<PathBuf>,
    /// Scan / llama.cpp pairs per length (with llama.cpp; otherwise one scan each).
    pub pairs: usize,
    /// Also measure our own full-context prefill per length up to the context.
    pub full_prefill: bool,
}

/// The measurements of `bench scan`: one JSON object per scan run (the child's `scan --json`
/// output with the llama.cpp and full-prefill numbers of its length beside it).
#[derive(Debug, Clone)]
pub struct ScanReport {
    /// The rows, in the order measured.
    pub rows: Vec<Value>,
    /// Threads both sides got.
    pub threads: usize,
    /// The model's context in tokens.
    pub context: usize,
    /// Whether llama.cpp was measured.
    pub llamacpp: bool,
    /// Whether our full-context prefill was measured.
    pub full_prefill: bool,
}

/// Runs every combination of length, chunk and layer set in child processes; `log` gets each
/// measurement as a JSON line.
pub fn scan(bench: &ScanBench, log: Log<'_>) -> Result<ScanReport> {
    if bench.pairs == 0 {
        return Err(BenchError::Input("--pairs must be at least 1".into()));
    }
    // Only the tokenizer and the config are needed here; the children load the model.
    let model = Model::load(
        &bench.model,
        WeightFormat::Quantized,
        &candle_core::Device::Cpu,
    )?;
    let context = model.config().context;
    let mut corpus = String::new();
    for p in &bench.corpus {
        corpus.push_str(&super::read_text(p)?);
        corpus.push('\n');
    }
    let unit = model.tokenizer().encode(&corpus)?;
    if unit.ids.is_empty() {
        return Err(BenchError::Input("the benchmark corpus is empty".into()));
    }
    drop(model);
    let threads = bench_threads();
    let dir = std::env::temp_dir().join(format!("s3mem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
    let runs = if bench.llamacpp.is_some() {
        bench.pairs
    } else {
        1
    };
    let mut rows = Vec::new();
    for &tokens in &bench.tokens {
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
        std::fs::write(&file, &doc).map_err(|e| BenchError::io(&file, e))?;
        let fits = tokens <= context;
        let first_row = rows.len();
        for pair in 1..=runs {
            let pair_start = rows.len();
            for &chunk in &bench.chunks {
                for layers in &bench.layers {
                    let load = crate::sys::load_average();
                    let mut child = child(&bench.exe, threads);
                    child
                        .args(["scan", "--json", "--chunk", &chunk.to_string()])
                        .args(["--layers", &layers.to_string()])
                        .args(&bench.model_flags)
                        .arg(&file);
                    let mut v = run_child(child, "scan")?;
                    v["threads"] = json!(threads);
                    v["load_average_before"] = json!(load);
                    if bench.llamacpp.is_some() {
                        v["pair"] = json!(pair);
                    }
                    log(&v.to_string());
                    rows.push(v);
                }
            }
            let Some(python) = &bench.llamacpp else {
                continue;
            };
            let llama = if fits {
                let load = crate::sys::load_average();
                let mut l = super::llamacpp::prefill(python, &bench.model, &file, tokens, threads)?;
                l["load_average_before"] = json!(load);
                log(&format!("llama.cpp pair {pair}: {l}"));
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
        if bench.full_prefill {
            let full = if fits {
                let load = crate::sys::load_average();
                let mut child = child(&bench.exe, threads);
                child
                    .args(["bench", "scan", "--prefill-child"])
                    .arg(&file)
                    .args(["--prefill-tokens", &tokens.to_string()])
                    .args(&bench.model_flags);
                let mut v = run_child(child, "prefill")?;
                v["load_average_before"] = json!(load);
                log(&format!("full prefill: {v}"));
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
    Ok(ScanReport {
        rows,
        threads,
        context,
        llamacpp: bench.llamacpp.is_some(),
        full_prefill: bench.full_prefill,
    })
}

/// A child `s3mem` process with the thread settings both sides get.
fn child(exe: &Path, threads: usize) -> Command {
    let mut c = Command::new(exe);
    c.args(["--threads", &threads.to_string()])
        .envs(thread_env(threads));
    c
}

/// Runs a child and parses the JSON it prints.
fn run_child(mut child: Command, what: &str) -> Result<Value> {
    let fail = |detail: String| BenchError::Child {
        what: what.into(),
        detail,
    };
    let out = child.output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("its output: {e}")))
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

impl ScanReport {
    /// Returns the notes on how each side was run and the Markdown table of the rows.
    pub fn table(&self) -> String {
        let (threads, context, llama) = (self.threads, self.context, self.llamacpp);
        let mut s = format!(
            "threads: {threads} (s3mem children: --threads {threads}, RAYON_NUM_THREADS = \
             CANDLE_NUM_THREADS = {threads}"
        );
        if llama {
            s.push_str(&format!(
                "; llama.cpp: n_threads = n_threads_batch = {threads})\n"
            ));
            if let Some(l) = self.rows.iter().find_map(|v| {
                v["llamacpp"]["system_info"]
                    .as_str()
                    .map(|_| &v["llamacpp"])
            }) {
                s.push_str(&format!(
                    "llama.cpp: llama-cpp-python {}, {}\n",
                    l["version"].as_str().unwrap_or("?"),
                    l["system_info"].as_str().unwrap_or_default()
                ));
            }
            s.push_str(&format!(
                "llama.cpp: Llama(n_ctx = tokens + 16, n_batch = n_ubatch = 512, logits_all = \
                 False), timed llm.eval(tokens): a full-context prefill with the KV cache, same \
                 GGUF file, same text cut to the same length with llama.cpp's tokenizer; n/a \
                 past the model's context ({context} tokens). ratio = s3mem tokens/s / \
                 llama.cpp tokens/s.\n"
            ));
        } else {
            s.push_str(")\n");
        }
        if self.full_prefill {
            s.push_str(&format!(
                "full prefill: our model, all layers, KV cache, chunks of 512 (the generate \
                 path), one child process per length up to the context ({context} tokens).\n"
            ));
        }
        s.push_str(
            "load: the 1-minute load average before each run is in the --json output \
             (load_average_before).\n\n",
        );
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
        if self.full_prefill {
            head.extend(["s3mem full prefill tokens/s", "full prefill peak RSS (MB)"]);
        }
        s.push_str(&format!("| {} |\n", head.join(" | ")));
        let align: Vec<&str> = head
            .iter()
            .map(|h| match *h {
                "layers" | "weights" => "---",
                _ => "---:",
            })
            .collect();
        s.push_str(&format!("|{}|\n", align.join("|")));
        for v in &self.rows {
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
            if self.full_prefill {
                cells.extend([
                    rate(&v["full_prefill"]["tokens_per_s"]),
                    mb(&v["full_prefill"]["peak_rss_bytes"]),
                ]);
            }
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        s
    }
}

/// One full-context prefill of `text`'s first `tokens` tokens (all of them for 0) through all
/// layers with the KV cache, in chunks of the generate path's prefill size, as generation
/// prefills a prompt (the hidden `bench scan --prefill-child FILE`).
pub fn prefill(model: &Model, text: &str, tokens: usize) -> Result<Value> {
    let mut ids = model.tokenizer().encode_ids(text)?;
    if tokens > 0 {
        ids.truncate(tokens);
    }
    if ids.is_empty() {
        return Err(BenchError::Input("the document is empty".into()));
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
    Ok(json!({
        "tokens": ids.len(),
        "seconds": secs,
        "tokens_per_s": ids.len() as f64 / secs,
        "peak_rss_bytes": crate::sys::peak_rss_bytes(),
        "prefill_chunk": chunk,
        "kv_cache_tokens": cache.len(),
        "layers": model.config().layers,
        "weights": model.transformer().weight_format(),
        "next_token": next,
    }))
}

/// Peak RSS against document length: the scan per layer set, our full-context prefill and
/// llama.cpp's, from the rows measured.
pub fn memory_chart(rows: &[Value], model: &Path) -> Chart {
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
    let name = model.file_name().map_or_else(
        || model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
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
mod tests {
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
        let c = memory_chart(&rows, Path::new("/m/SmolLM2.gguf"));
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

    #[test]
    fn the_table_has_a_column_per_side_measured() {
        let rows = vec![json!({"tokens": 2048, "chunk": 512, "layers": "8,16,24",
            "weights": "f32", "tokens_per_s": 150.04, "peak_rss_bytes": 781e6,
            "full_prefill": {"tokens_per_s": 90.0, "peak_rss_bytes": 956e6}})];
        let mut report = ScanReport {
            rows,
            threads: 2,
            context: 8192,
            llamacpp: false,
            full_prefill: false,
        };
        let t = report.table();
        assert!(t.starts_with("threads: 2 (s3mem children: --threads 2, RAYON_NUM_THREADS = CANDLE_NUM_THREADS = 2)\n"), "{t}");
        assert!(
            t.contains("| 2048 | 512 | 8,16,24 | f32 | 150.0 | 781 |\n"),
            "{t}"
        );
        report.full_prefill = true;
        let t = report.table();
        assert!(t.contains("| 150.0 | 781 | 90.0 | 956 |\n"), "{t}");
        assert!(
            t.contains("|---:|---:|---|---|---:|---:|---:|---:|\n"),
            "{t}"
        );
    }
}
