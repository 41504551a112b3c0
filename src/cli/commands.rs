use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::command_line::{Cli, Command, GenerateArgs, ModelCommand, QuickstartArgs, ScanArgs};
use super::load::{load, load_sae_set};
use crate::ingest;
use crate::model::{fetch, GenerateConfig, Model, ScanConfig, TapPlace, TapRequest};
use crate::sae::SaeSet;
use crate::text::document_text;

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        // Both pools read these once, at first use: set them before any model work.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
    let models = fetch::models_dir(cli.models_dir.as_deref());
    match cli.command {
        Command::Model(ModelCommand::Fetch { name }) => {
            let path = fetch::fetch(fetch::known_or_error(&name)?, &models)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Model(ModelCommand::List) => {
            for m in fetch::KNOWN_MODELS {
                let state = if m.is_present(&models) {
                    "present"
                } else {
                    "not fetched"
                };
                println!(
                    "{:<20} {:>12} bytes  {state:<12} {}",
                    m.name,
                    m.size(),
                    m.location(&models).display()
                );
            }
            Ok(())
        }
        Command::Model(ModelCommand::Info(args)) => {
            if let Some(known) = fetch::known(&args.model).filter(|m| m.folder.is_some()) {
                let info = fetch::folder_info(known, &models)?;
                println!("{}", serde_json::to_string_pretty(&info)?);
                return Ok(());
            }
            let model = load(&args, &models)?;
            let mut info = serde_json::to_value(model.config())?;
            // What full-context inference keeps per token, to set against the index's bytes
            // per token (`s3mem stats`).
            info["kv_cache_bytes_per_token_f16"] =
                model.config().kv_cache_bytes_per_token(2).into();
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Scan(args) => scan(&args, &models),
        Command::Generate(args) => generate(&args, &models),
        Command::Quickstart(args) => quickstart(&args, &models),
        Command::Bench(cmd) => super::bench::run(cmd, &models),
        Command::Sae(cmd) => super::sae::run(cmd, &models),
        Command::Ingest(args) => super::index::ingest(&args, &models),
        Command::Docs(cmd) => super::index::docs(cmd),
        Command::Collections(cmd) => super::index::collections(cmd),
        Command::Stats(args) => super::index::stats(&args),
        Command::Compact(args) => super::index::compact(&args),
        Command::Verify(args) => super::snapshot::verify(&args),
        Command::Snapshot(cmd) => super::snapshot::run(cmd),
        Command::Retrieve(args) => super::ask::retrieve(&args, &models),
        Command::Ask(args) => super::ask::ask(&args, &models),
        Command::Eval(args) => super::eval::run(*args, &models),
        Command::Serve(args) => super::serve::serve(&args, &models),
    }
}

fn read_document(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    document_text(bytes, &path.display().to_string()).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            e.source_name,
            e.offset
        )
    })
}

/// What a scan measured.
#[derive(Debug, serde::Serialize)]
struct ScanReport {
    tokens: usize,
    tokens_per_s: f64,
    peak_rss_bytes: Option<u64>,
    windows: usize,
    window_tokens: usize,
    layers: String,
    chunk: usize,
    sinks: usize,
    overlap: usize,
    weights: crate::model::WeightFormat,
    device: String,
    scan_batch: usize,
    batches: usize,
    /// Seconds in the model's thread (forward passes, taps to the host).
    model_seconds: f64,
    /// GPU memory as the driver reports it (on a GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_memory: Option<crate::model::GpuMemory>,
    tokenize_ms: f64,
    scan_seconds: f64,
    /// Feature activations the SAE set produced (with `--sae`).
    #[serde(skip_serializing_if = "Option::is_none")]
    features_fired: Option<u64>,
    /// Distinct (layer, posting feature) pairs among them, as ingest keeps them (per-head
    /// SAEs' features apart by head).
    #[serde(skip_serializing_if = "Option::is_none")]
    distinct_features: Option<usize>,
}

fn scan_document(
    model: &Model,
    text: &str,
    args_layers: &crate::model::LayerSet,
    cfg: &ScanConfig,
    sae: Option<&SaeSet>,
) -> Result<ScanReport> {
    args_layers.check(model.config())?;
    cfg.check(model.config().context)?;
    let t0 = Instant::now();
    let doc = model.tokenizer().encode_ids(text)?;
    let tokenize_ms = t0.elapsed().as_secs_f64() * 1e3;
    if doc.is_empty() {
        bail!("the document is empty");
    }
    let taps = TapRequest {
        keys: Some(args_layers.clone()),
        queries: None,
    };
    let bar = ProgressBar::new(doc.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} scan [{bar:30}] {pos}/{len} tokens  {per_sec}  eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let t1 = Instant::now();
    let mut checksum = 0f64;
    let mut fired = 0u64;
    let mut distinct = std::collections::HashSet::new();
    let mut sae_error = None;
    // The ingest layer's encoding: each KV head's SAE features in the layer's posting space.
    let codes = match sae {
        Some(set) => ingest::layer_codes(set, model.config().kv_heads)?,
        None => Vec::new(),
    };
    // Keys stay where the model ran, as in an ingest (which encodes a scan batch at once; this
    // command encodes chunk by chunk): on a GPU the SAEs encode them there and no batch's keys
    // are copied to fresh host pages (docs/gpu.md run 19).
    let stats = model.scan_many_to(&[&doc], &taps, cfg, TapPlace::Device, &mut |_, chunk| {
        for tap in &chunk.keys {
            match sae {
                Some(set) => {
                    let encoded =
                        ingest::encode_layer(set, &codes, tap, chunk.chunk.start, &mut |_, f| {
                            fired += 1;
                            distinct.insert(f);
                        });
                    if let Err(e) = encoded {
                        sae_error = Some(e);
                        return Err(crate::model::ModelError::Aborted);
                    }
                }
                // Touch the projections (a sum where they are) so that the measured scan
                // includes producing them.
                None => checksum += tap.values.sum_all()?.to_scalar::<f32>()? as f64,
            }
        }
        bar.inc(chunk.chunk.len() as u64);
        Ok(())
    });
    if let Some(e) = sae_error {
        return Err(e.into());
    }
    let stats = stats?;
    bar.finish_and_clear();
    let secs = t1.elapsed().as_secs_f64();
    tracing::debug!(checksum, "scan done");
    Ok(ScanReport {
        tokens: stats.tokens,
        tokens_per_s: stats.tokens as f64 / secs,
        peak_rss_bytes: crate::sys::peak_rss_bytes(),
        windows: stats.windows,
        window_tokens: stats.window_tokens,
        layers: args_layers.to_string(),
        chunk: cfg.chunk,
        sinks: cfg.sinks,
        overlap: cfg.overlap,
        weights: model.transformer().weight_format(),
        device: crate::model::device_name(model.transformer().device()),
        scan_batch: model.scan_batch(),
        batches: stats.batches,
        model_seconds: stats.model_seconds,
        gpu_memory: crate::model::gpu_memory(model.transformer().device())?,
        tokenize_ms,
        scan_seconds: secs,
        features_fired: sae.map(|_| fired),
        distinct_features: sae.map(|_| distinct.len()),
    })
}

fn scan(args: &ScanArgs, models: &Path) -> Result<()> {
    let model = load(&args.model, models)?;
    let text = read_document(&args.file)?;
    let cfg = args.window.config();
    let sae = match &args.sae {
        Some(spec) => Some(load_sae_set(&model, spec, models)?),
        None => None,
    };
    let report = scan_document(&model, &text, &args.layers, &cfg, sae.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "scanned {} tokens in {} windows: {:.1} tokens/s, peak RSS {}",
            report.tokens,
            report.windows,
            report.tokens_per_s,
            report
                .peak_rss_bytes
                .map_or("unknown".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
        );
    }
    Ok(())
}

fn generate(args: &GenerateArgs, models: &Path) -> Result<()> {
    let model = load(&args.model, models)?;
    let prompt = model.chat_prompt(args.system.as_deref(), &args.prompt)?;
    let cfg = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        ..Default::default()
    };
    let mut stdout = std::io::stdout();
    let json = args.json;
    let out = model.generate(&prompt, &cfg, &mut |piece| {
        if !json {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
        true
    })?;
    if json {
        let tokens_per_s = out.tokens.len() as f64 / (out.decode_ms / 1e3).max(1e-9);
        println!(
            "{}",
            json!({
                "answer": out.text,
                "prompt_tokens": out.prompt_tokens,
                "new_tokens": out.tokens.len(),
                "stop": out.stop,
                "prefill_ms": out.prefill_ms,
                "decode_ms": out.decode_ms,
                "decode_tokens_per_s": tokens_per_s,
            })
        );
    } else {
        println!();
    }
    Ok(())
}

fn quickstart(args: &QuickstartArgs, models: &Path) -> Result<()> {
    use crate::index::{Index, IndexConfig, IndexError, NewDocument};
    use crate::ingest::Encoder;
    use crate::retrieve::{Method, Query, RetrieveConfig, Retriever};

    eprintln!("1/4 model: {}", args.model.model);
    let model = load(&args.model, models)?;
    eprintln!(
        "    {} ({:?}, {} layers, {} KV heads x {} dims), weights {:?}",
        model.path().display(),
        model.config().arch,
        model.config().layers,
        model.config().kv_heads,
        model.config().head_dim,
        model.transformer().weight_format()
    );
    eprintln!("2/4 default SAE set");
    let sae = load_sae_set(&model, "default", models)?;
    eprintln!("    layers {:?}, digest {}", sae.layers(), sae.digest());
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| models.parent().unwrap_or(models).join("quickstart"));
    eprintln!(
        "3/4 ingest {} documents into {} (collection `{}`; kept for later runs)",
        args.documents.len(),
        data_dir.display(),
        args.collection
    );
    let mut index = Index::open(&data_dir, IndexConfig::default())?;
    if index.collection_id(&args.collection).is_err() {
        index.create_collection(&args.collection)?;
    }
    let encoder = Encoder::new(&model, &sae, ScanConfig::default())?;
    for path in &args.documents {
        let id = path.display().to_string();
        let text = read_document(path)?;
        match index.document(&args.collection, &id) {
            Ok(d) if d.bytes == text.len() as u64 => {
                eprintln!("    {id}: already ingested ({} tokens)", d.tokens);
                continue;
            }
            Ok(_) | Err(IndexError::UnknownDocument { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let out = super::index::ingest_with_progress(
            &mut index,
            &encoder,
            NewDocument {
                collection: &args.collection,
                id: Some(id.clone()),
                meta: Vec::new(),
                text: &text,
            },
        )?;
        eprintln!(
            "    {id}: {} tokens, scan {:.1} s ({:.0} tokens/s)",
            out.tokens,
            out.scan_seconds,
            out.tokens as f64 / out.scan_seconds.max(1e-9)
        );
    }
    index.commit()?;
    eprintln!(
        "4/4 ask (hybrid, budget {}): {}",
        args.budget, args.question
    );
    let retriever = Retriever::new(&model, &sae, RetrieveConfig::default())?;
    let evidence = retriever.retrieve(
        &index,
        &Query {
            collection: args.collection.clone(),
            docs: Vec::new(),
            question: args.question.clone(),
            budget: args.budget,
            method: Method::Hybrid,
            trace: false,
            filter: None,
        },
    )?;
    let reader = super::load::load_reader(
        &super::args::AnswerArgs {
            answer_model: Some(args.answer_model.clone()),
            abstain_below: crate::answer::Abstain::Calibrated,
            abstain_signal: crate::answer::AbstainSignal::default(),
        },
        &args.model,
        models,
    )?;
    let reader = reader.as_ref().unwrap_or(&model);
    let config = crate::answer::AnswerConfig {
        mode: args.answer_mode,
        abstain: crate::answer::Abstain::Calibrated
            .threshold(reader, crate::answer::AbstainSignal::default()),
        ..crate::answer::AnswerConfig::default()
    };
    eprintln!(
        "    reader {} ({} mode)",
        args.answer_model, args.answer_mode
    );
    let mut stdout = std::io::stdout();
    crate::answer::answer(reader, &evidence, &config, &mut |piece| {
        let _ = write!(stdout, "{piece}");
        let _ = stdout.flush();
        true
    })?;
    println!("\n");
    super::ask::print_spans(&evidence);
    Ok(())
}
