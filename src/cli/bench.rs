//! `s3mem bench`: wiring of the bench layer (src/bench): flags to a benchmark's settings, the
//! model and data it runs on, and its tables or JSON printed.

use std::path::Path;

use anyhow::{Context, Result};

use super::args::ModelArgs;
use super::bench_args::{
    BenchCommand, BenchFilterArgs, BenchRetrieveArgs, BenchScanArgs, EmbedBenchArgs, ParityArgs,
    PostingsArgs, SaeEncodeArgs, SaeStepArgs, SaeTrainBenchArgs, ScanChartArgs, StoreDocumentArgs,
    TapsArg,
};
use super::device::DeviceArgs;
use super::load::{embed_missing, load, load_embedder, load_sae_set, load_second};
use crate::bench::{self, parity, random, retrieve, sae, sae_encode, scan, store};
use crate::index::{Index, IndexConfig};
use crate::ingest::Encoder;
use crate::model::{fetch, TapPlace, WeightFormat};
use crate::retrieve::{RetrieveConfig, Retriever};

/// Runs a `bench` subcommand.
pub fn run(cmd: BenchCommand, models: &Path) -> Result<()> {
    match cmd {
        BenchCommand::Scan(args) if args.prefill_child.is_some() => prefill_child(&args, models),
        BenchCommand::Scan(args) if args.random.random_shape.is_some() => scan_random(&args),
        BenchCommand::Scan(args) => scan_model(&args, models),
        BenchCommand::SaeTrain(args) => sae_train(&args),
        BenchCommand::Parity(args) => parity_model(&args, models),
        BenchCommand::Retrieve(args) => retrieve_latency(&args, models),
        BenchCommand::Filter(args) => filter_cost(&args, models),
        BenchCommand::SaeStep(args) => sae_step(&args),
        BenchCommand::SaeEncode(args) => sae_encode(&args, models),
        BenchCommand::Sled => sled(),
        BenchCommand::Postings(args) => postings(&args),
        BenchCommand::StoreDocument(args) => store_document(&args),
        BenchCommand::ScanChart(args) => scan_chart(&args),
        BenchCommand::Embed(args) => embed_throughput(&args, models),
    }
}

/// Each measurement on its own stderr line, as it is taken.
fn log(line: &str) {
    eprintln!("{line}");
}

/// The flags a child `s3mem` process gets for the model: the resolved file and the same
/// weights and device.
fn model_flags(args: &ModelArgs, path: &Path) -> Vec<String> {
    let mut flags = vec!["--model".into(), path.display().to_string()];
    if let Some(w) = args.weights {
        flags.extend(["--weights".into(), format!("{w:?}").to_lowercase()]);
    }
    flags.extend(args.device.to_flags());
    flags
}

/// `bench scan` on a model file.
fn scan_model(args: &BenchScanArgs, models: &Path) -> Result<()> {
    let model = fetch::resolve(&args.model.model, models, true)?;
    let config = scan::ScanBench {
        exe: std::env::current_exe().context("locating the s3mem binary")?,
        model_flags: model_flags(&args.model, &model),
        model,
        corpus: args.corpus.clone(),
        tokens: args.tokens.clone(),
        chunks: args.chunks.clone(),
        layers: args.layers.clone(),
        llamacpp: args.llamacpp.clone(),
        pairs: args.pairs,
        full_prefill: args.full_prefill,
    };
    let report = scan::scan(&config, &mut log)?;
    if let Some(path) = &args.plot {
        scan::memory_chart(&report.rows, &config.model)
            .save_png(path, 800, 500)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.rows)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The hidden `bench scan --prefill-child FILE`: one full-context prefill, printed as JSON.
fn prefill_child(args: &BenchScanArgs, models: &Path) -> Result<()> {
    let file = args.prefill_child.as_deref().context("no prefill file")?;
    let model = load(&args.model, models)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    println!("{}", scan::prefill(&model, &text, args.prefill_tokens)?);
    Ok(())
}

/// `bench scan --random-shape NAME`.
fn scan_random(args: &BenchScanArgs) -> Result<()> {
    let r = &args.random;
    let device = args.model.device.open()?;
    let batches = match (&r.batches[..], args.model.device.scan_batch) {
        ([], Some(b)) => vec![b],
        ([], None) => vec![crate::model::default_scan_batch(&device)],
        (list, _) => list.to_vec(),
    };
    let config = random::RandomBench {
        shape: r.random_shape.clone().unwrap_or_else(|| "tiny".into()),
        seed: r.seed,
        weights: args
            .model
            .weights
            .unwrap_or_else(|| WeightFormat::default_for(&device, false)),
        tokens: args.tokens.clone(),
        chunks: args.chunks.clone(),
        layers: args.layers.clone(),
        batches,
        taps: r
            .taps
            .iter()
            .map(|t| match t {
                TapsArg::Host => TapPlace::Host,
                TapsArg::Device => TapPlace::Device,
            })
            .collect(),
        prefill: r.prefill.clone(),
        parity_tokens: r.parity_tokens,
        peak_tflops: r.peak_tflops,
    };
    let report = random::scan(&config, &device, &mut log)?;
    if let Some(path) = &r.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.tables());
    }
    Ok(())
}

/// `bench parity`.
fn parity_model(args: &ParityArgs, models: &Path) -> Result<()> {
    let cpu_args = ModelArgs {
        model: args.model.model.clone(),
        weights: Some(WeightFormat::F32),
        device: DeviceArgs::default(),
        embedder: "none".into(),
    };
    let cpu = load(&cpu_args, models)?;
    let set = load_sae_set(&cpu, &args.sae, models)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let device = parity::ModelSource {
        path: fetch::resolve(&args.model.model, models, true)?,
        device: args.model.device.open()?,
        scan_batch: args.model.device.scan_batch,
    };
    // The default for a quantized GGUF is f32 on every device (`WeightFormat::default_for`).
    let first = args.model.weights.unwrap_or(WeightFormat::F32);
    let measured = parity::parity_model(cpu, &set, &text, args.tokens, &device, first, &mut log)
        .with_context(|| format!("parity on {}", args.file.display()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": args.model.model,
            "device": args.model.device.device.to_string(),
            "sae": args.sae,
            "tokens": measured.tokens,
            "layers": measured.layers,
            "parity": measured.parity,
        }))?
    );
    Ok(())
}

/// `bench sae-train`.
fn sae_train(args: &SaeTrainBenchArgs) -> Result<()> {
    let device = args.device.open()?;
    let config = sae::TrainBench {
        samples: args.samples,
        d_in: args.shape.d_in,
        dict: args.shape.dict,
        k: args.shape.k,
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
    };
    println!("{}", sae::train_speed(&config, &device)?);
    Ok(())
}

/// `bench sae-step`.
fn sae_step(args: &SaeStepArgs) -> Result<()> {
    let report = sae::step_speed(&sae::StepBench {
        d_in: args.shape.d_in,
        dict: args.shape.dict,
        k: args.shape.k,
        batch: args.batch_size,
        steps: args.steps,
        autograd_steps: args.autograd_steps,
        encode_rows: args.encode_rows,
        seed: args.seed,
    })?;
    print!("{}", report.table());
    Ok(())
}

/// `bench sae-encode`.
fn sae_encode(args: &SaeEncodeArgs, models: &Path) -> Result<()> {
    if args.rows == 0 {
        anyhow::bail!("--rows must be at least 1");
    }
    let report = match &args.model {
        None => sae_encode::random_keys(
            &sae_encode::RandomEncode {
                rows: args.rows,
                d_in: args.shape.d_in,
                dict: args.shape.dict,
                k: args.shape.k,
                seed: args.seed,
            },
            &args.device.open()?,
            &mut log,
        )?,
        Some(name) => {
            let model = load(
                &ModelArgs {
                    model: name.clone(),
                    weights: None,
                    device: args.device.clone(),
                    embedder: "none".into(),
                },
                models,
            )?;
            let set = load_sae_set(&model, &args.sae, models)?;
            let text = match &args.corpus {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            sae_encode::model_keys(&model, &set, text.as_deref(), args.rows, &mut log)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// `bench retrieve`.
fn retrieve_latency(args: &BenchRetrieveArgs, models: &Path) -> Result<()> {
    // Settings first: a bad one stops the benchmark before any model loads.
    let retrieve_config = RetrieveConfig {
        rerank: args.attention.config(),
        ..RetrieveConfig::default()
    };
    retrieve_config.check()?;
    let model = load(&args.model, models)?;
    let saes = load_sae_set(&model, &args.sae, models)?;
    let embedder = load_embedder(&args.model, models)?;
    let encoder = Encoder::new(&model, &saes, crate::model::ScanConfig::default())?
        .with_embedder(embedder.as_ref());
    let mut index = Index::open(&args.data_dir, IndexConfig::default())?;
    embed_missing(embedder.as_ref(), &mut index)?;
    let reranker = load_second(
        args.attention.reranker.rerank_model.as_deref(),
        &args.model,
        models,
    )?;
    let retriever = Retriever::new(&model, &saes, retrieve_config)?
        .with_embedder(embedder.as_ref())
        .with_reranker(reranker.as_ref());
    let config = retrieve::RetrieveBench {
        collection: args.collection.clone(),
        corpus: args.asked.corpus.clone(),
        tokens: args.tokens.clone(),
        questions: args.asked.questions.clone(),
        runs: args.asked.runs,
        budget: args.asked.budget,
        method: args.asked.method,
    };
    print!("{}", retrieve::TABLE_HEADER);
    let rows = retrieve::retrieve(
        &mut index,
        &encoder,
        &retriever,
        &config,
        &mut log,
        &mut |row| println!("{}", row.markdown()),
    )?;
    println!();
    for row in &rows {
        println!("{}", row.stages_line());
    }
    Ok(())
}

/// `bench filter`.
fn filter_cost(args: &BenchFilterArgs, models: &Path) -> Result<()> {
    let model = std::sync::Arc::new(load(&args.model, models)?);
    let saes = std::sync::Arc::new(load_sae_set(&model, &args.sae, models)?);
    let embedder = load_embedder(&args.model, models)?.map(std::sync::Arc::new);
    let encoder = Encoder::new(&model, &saes, crate::model::ScanConfig::default())?
        .with_embedder(embedder.as_deref());
    let retriever = Retriever::new(&model, &saes, RetrieveConfig::default())?
        .with_embedder(embedder.as_deref());
    let config = bench::filter::FilterBench {
        dir: args.dir.clone(),
        corpus: args.asked.corpus.clone(),
        tokens: args.tokens,
        tenants: args.tenants,
        questions: args.asked.questions.clone(),
        runs: args.asked.runs,
        budget: args.asked.budget,
        method: args.asked.method,
        metrics_rounds: args.metrics_rounds,
    };
    let row = bench::filter::filter(&encoder, &retriever, &config, &mut log)?;
    println!(
        "| collection tokens | documents | kept documents | kept tokens | filtered p50 ms | alone p50 ms | overhead |\n|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.1} | {:.1} | {:+.1}% |",
        row.tokens,
        row.documents,
        row.kept_documents,
        row.kept_tokens,
        row.filtered_p50_ms,
        row.alone_p50_ms,
        row.overhead_percent()
    );
    if args.metrics_rounds > 0 {
        let loaded = || crate::service::Loaded {
            model: model.clone(),
            saes: saes.clone(),
            scan: crate::model::ScanConfig::default(),
            embedder: embedder.clone(),
            readers: Vec::new(),
            answer_mode: Default::default(),
            abstain_signal: Default::default(),
            retrieval: Default::default(),
        };
        let m = bench::filter::metrics(&config, &loaded, &mut log)?;
        println!(
            "\n| Retrieve calls each way | metrics off p50 ms | metrics on p50 ms | overhead |\n|---|---|---|---|\n| {} | {:.2} | {:.2} | {:+.2}% |",
            m.calls,
            m.off_p50_ms,
            m.on_p50_ms,
            m.overhead_percent()
        );
    }
    Ok(())
}

/// `bench sled`.
fn sled() -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("s3mem-bench-sled-{}", std::process::id()));
    let rows = store::sled_record_cost(&scratch, &store::SLED_CASES);
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "sled 0.34 through s3mem's SledStore: records of one size written, flushed, the folder sized\n"
    );
    print!("{}", store::sled_table(&rows?));
    Ok(())
}

/// `bench postings`.
fn postings(args: &PostingsArgs) -> Result<()> {
    if !args.data_dir.join("store").is_dir() {
        anyhow::bail!(
            "data dir {} does not exist or holds no index",
            args.data_dir.display()
        );
    }
    let index = Index::open(&args.data_dir, IndexConfig::default())?;
    print!("{}", bench::store::posting_sizes(&index)?.table());
    let times = bench::store::pack_encode_times(&index, args.largest)?;
    print!("{}", bench::store::pack_encode_table(&times));
    Ok(())
}

/// `bench store-document`.
fn store_document(args: &StoreDocumentArgs) -> Result<()> {
    let index = Index::open_existing(&args.data_dir)?;
    let scratch = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let rows = bench::store::store_document_times(&index, &scratch, args.largest)?;
    print!("{}", bench::store::store_document_table(&rows));
    Ok(())
}

/// `bench scan-chart`.
fn scan_chart(args: &ScanChartArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.rows)
        .with_context(|| format!("reading {}", args.rows.display()))?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a JSON array of bench scan rows",
            args.rows.display()
        )
    })?;
    scan::memory_chart(&rows, &args.model).save_png(&args.out, 800, 500)?;
    println!("{}", args.out.display());
    Ok(())
}

/// `bench embed`.
fn embed_throughput(args: &EmbedBenchArgs, models: &Path) -> Result<()> {
    let dir = fetch::resolve_folder(&args.embedder, models, true)?;
    let embedder = crate::embed::Embedder::load_on(&dir, &args.device.open()?)?;
    let config = crate::embed::ThroughputConfig {
        tokens: args.tokens,
        batches: args.batches.clone(),
        min_time: std::time::Duration::try_from_secs_f64(args.seconds)?,
        min_passages: 0,
    };
    let rows = crate::embed::measure_throughput(&embedder, &config)?;
    // On a shared machine the load says how far the numbers can be trusted.
    println!(
        "{} on {}, {}-token passages, {} threads, load average {}",
        embedder.fingerprint(),
        args.device.device,
        args.tokens,
        rayon::current_num_threads(),
        crate::sys::load_average().map_or("n/a".into(), |l| format!("{l:.2}"))
    );
    print!("{}", crate::embed::throughput_table(&rows));
    Ok(())
}
