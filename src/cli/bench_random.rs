//! Benchmarks on models with seeded random weights built on the device (`bench scan
//! --random-shape`), where the weights cannot travel (a Llama-3-8B shape is 16 GB in bf16):
//! scan throughput as MFU, GPU memory against document length, the full-KV prefill baseline,
//! CPU-vs-device parity of SAE features; and SAE training speed per device (`bench sae-train`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, IndexOp, Tensor};
use clap::Args;
use serde::Serialize;

use super::{BenchScanArgs, DeviceArgs};
use crate::model::{
    device_name, gpu_memory, random_tokens, reset_gpu_peak, scan_documents, GpuMemory, KvCache,
    LayerSet, Logits, RandomShape, ScanConfig, TapRequest, Transformer, WeightFormat,
};
use crate::sae::TopKSae;

/// Flags of `bench scan` for models with random weights.
#[derive(Debug, Args, Clone, Default)]
pub struct RandomArgs {
    /// Benchmark seeded random weights of this shape, built on the device, instead of a model
    /// file: llama3-8b, smollm2-135m or tiny. Runs in this process; GPU memory comes from the
    /// driver's pool high watermark, reset before each run.
    #[arg(long)]
    pub random_shape: Option<String>,
    /// Seed of the random weights and documents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scan batches (windows per forward pass) to compare (default: --scan-batch or the
    /// device's default).
    #[arg(long, value_delimiter = ',')]
    pub batches: Vec<usize>,
    /// Document lengths of the full-KV baseline: a full-depth prefill of the whole document in
    /// one pass, keeping its KV cache (lengths up to the model context).
    #[arg(long, value_delimiter = ',')]
    pub prefill: Vec<usize>,
    /// Tokens of a parity run (0: none): the same random model scanned on the CPU in f32 and on
    /// --device in its weight format, in f16 and in f32, keys encoded by random Top-k SAEs (dictionary
    /// 32 x head dim, k 16), top-k feature sets compared per (token, layer, KV head).
    #[arg(long, default_value_t = 0)]
    pub parity_tokens: usize,
    /// The matmul peak MFU is reported against, in TFLOP/s (770: bf16 measured on the H200).
    #[arg(long, default_value_t = 770.0)]
    pub peak_tflops: f64,
    /// Also write every result as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One scan measurement.
#[derive(Debug, Serialize)]
struct ScanRow {
    tokens: usize,
    chunk: usize,
    layers: String,
    batch: usize,
    windows: usize,
    window_tokens: usize,
    padding_tokens: usize,
    seconds: f64,
    /// Document tokens per second (each indexed once).
    tokens_per_s: f64,
    /// Tokens the model ran per second (sinks and overlap included).
    window_tokens_per_s: f64,
    /// Floating-point operations the windows need (padding excluded; causal attention half).
    flops: f64,
    tflops: f64,
    mfu: f64,
    memory: Option<GpuMemory>,
    /// The peak allocation minus the weights: what the scan itself needed at most.
    peak_activation_bytes: Option<u64>,
}

/// One full-KV prefill measurement.
#[derive(Debug, Serialize)]
struct PrefillRow {
    tokens: usize,
    seconds: f64,
    tokens_per_s: f64,
    flops: f64,
    tflops: f64,
    mfu: f64,
    memory: Option<GpuMemory>,
    peak_activation_bytes: Option<u64>,
    /// Bytes of the KV cache kept (all layers, K and V).
    kv_cache_bytes: u64,
}

/// Agreement of top-k feature sets between the CPU and a device.
#[derive(Debug, Serialize)]
struct ParityRow {
    weights: WeightFormat,
    /// (token, layer, KV head) triples compared.
    triples: usize,
    /// Fraction whose sets of fired features are identical.
    identical: f64,
    /// Mean of |A ∩ B| / max(|A|, |B|) over the triples.
    mean_overlap: f64,
    /// Largest absolute difference of any key value against the CPU.
    max_abs_key_diff: f32,
    /// ||keys - cpu keys|| / ||cpu keys|| over all tapped keys.
    rel_key_error: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    shape: RandomShape,
    device: String,
    weights: WeightFormat,
    seed: u64,
    load_seconds: f64,
    weights_bytes: Option<u64>,
    peak_tflops: f64,
    scans: Vec<ScanRow>,
    prefill: Vec<PrefillRow>,
    parity: Vec<ParityRow>,
}

/// `bench scan --random-shape NAME`.
pub fn scan(args: &BenchScanArgs) -> Result<()> {
    let r = &args.random;
    let name = r.random_shape.as_deref().unwrap_or("tiny");
    let shape = RandomShape::named(name)?;
    let device = args.model.device.open()?;
    let weights = args
        .model
        .weights
        .unwrap_or_else(|| WeightFormat::default_for(&device, false));
    let batches = match (&r.batches[..], args.model.device.scan_batch) {
        ([], Some(b)) => vec![b],
        ([], None) => vec![crate::model::default_scan_batch(&device)],
        (list, _) => list.to_vec(),
    };
    for layers in &args.layers {
        layers.check(&shape.config)?;
    }

    let t0 = Instant::now();
    let model = Transformer::random(&shape, weights, r.seed, &device)?;
    let memory = gpu_memory(&device)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let weights_bytes = memory.map(|m| m.allocated_bytes);
    eprintln!(
        "built {name} ({} layers, hidden {}) in {weights:?} on {} in {load_seconds:.1} s; weights {}",
        shape.config.layers,
        shape.config.hidden,
        device_name(&device),
        weights_bytes.map_or("-".into(), gib)
    );

    let mut report = Report {
        shape: shape.clone(),
        device: device_name(&device),
        weights,
        seed: r.seed,
        load_seconds,
        weights_bytes,
        peak_tflops: r.peak_tflops,
        scans: Vec::new(),
        prefill: Vec::new(),
        parity: Vec::new(),
    };

    // Warm-up (kernel loading, cuBLAS handles), not measured.
    let warm = ScanConfig {
        chunk: args.chunks[0],
        ..ScanConfig::default()
    };
    let warm_doc = random_tokens(r.seed ^ 1, warm.chunk * batches[0] * 2, shape.config.vocab);
    run_scan(&model, &warm_doc, &args.layers[0], &warm, batches[0])?;

    for &tokens in &args.tokens {
        let doc = random_tokens(r.seed ^ tokens as u64, tokens, shape.config.vocab);
        for &chunk in &args.chunks {
            let cfg = ScanConfig {
                chunk,
                ..ScanConfig::default()
            };
            for layers in &args.layers {
                for &batch in &batches {
                    reset_gpu_peak(&device)?;
                    let (stats, seconds) = run_scan(&model, &doc, layers, &cfg, batch)?;
                    let memory = gpu_memory(&device)?;
                    let flops: f64 = cfg
                        .windows(doc.len())
                        .map(|w| scan_window_flops(&shape, layers.deepest(), w.len()))
                        .sum();
                    let row = ScanRow {
                        tokens,
                        chunk,
                        layers: layers.to_string(),
                        batch,
                        windows: stats.windows,
                        window_tokens: stats.window_tokens,
                        padding_tokens: stats.padding_tokens,
                        seconds,
                        tokens_per_s: stats.tokens as f64 / seconds,
                        window_tokens_per_s: stats.window_tokens as f64 / seconds,
                        flops,
                        tflops: flops / seconds / 1e12,
                        mfu: flops / seconds / (r.peak_tflops * 1e12),
                        memory,
                        peak_activation_bytes: activation(memory, weights_bytes),
                    };
                    eprintln!("{}", serde_json::to_string(&row)?);
                    report.scans.push(row);
                }
            }
        }
    }

    for &tokens in &r.prefill {
        if tokens > shape.config.context {
            bail!(
                "a prefill of {tokens} tokens exceeds the context of {}",
                shape.config.context
            );
        }
        let doc = random_tokens(r.seed ^ 0xf00d ^ tokens as u64, tokens, shape.config.vocab);
        reset_gpu_peak(&device)?;
        let t0 = Instant::now();
        let mut cache = KvCache::default();
        let out = model.forward(&doc, Some(&mut cache), &TapRequest::default(), Logits::Last)?;
        let logits = out.logits.context("the prefill returned no logits")?;
        // Reading the logits back waits for the device.
        let _ = crate::model::argmax_rows(&logits)?;
        let seconds = t0.elapsed().as_secs_f64();
        let memory = gpu_memory(&device)?;
        let c = &shape.config;
        let kv_cache_bytes = (c.layers * 2 * c.kv_heads * c.head_dim * tokens) as u64
            * model.dtype().size_in_bytes() as u64;
        drop(cache);
        let flops =
            c.layers as f64 * layer_flops(&shape, tokens) + 2.0 * (c.hidden * c.vocab) as f64;
        let row = PrefillRow {
            tokens,
            seconds,
            tokens_per_s: tokens as f64 / seconds,
            flops,
            tflops: flops / seconds / 1e12,
            mfu: flops / seconds / (r.peak_tflops * 1e12),
            memory,
            peak_activation_bytes: activation(memory, weights_bytes),
            kv_cache_bytes,
        };
        eprintln!("{}", serde_json::to_string(&row)?);
        report.prefill.push(row);
    }
    drop(model);

    if r.parity_tokens > 0 {
        report.parity = parity(&shape, r, &args.layers[0], &device, weights)?;
    }

    if let Some(path) = &r.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(())
}

/// Scans `doc` once; returns the totals and the wall-clock seconds.
fn run_scan(
    model: &Transformer,
    doc: &[u32],
    layers: &LayerSet,
    cfg: &ScanConfig,
    batch: usize,
) -> Result<(crate::model::ScanStats, f64)> {
    let taps = TapRequest {
        keys: Some(layers.clone()),
        queries: None,
    };
    let t0 = Instant::now();
    let mut rows = 0usize;
    let stats = scan_documents(model, batch, &[doc], &taps, cfg, &mut |_, chunk| {
        rows += chunk
            .keys
            .iter()
            .map(|t| t.values.dim(0).unwrap_or(0))
            .sum::<usize>();
        Ok(())
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    tracing::debug!(rows, "scan done");
    Ok((stats, seconds))
}

/// FLOPs of one full block over `len` tokens: the projections (2 per weight and token) and
/// causal attention (QK^T and PV, 2 * head_dim each per query head and visible key).
fn layer_flops(shape: &RandomShape, len: usize) -> f64 {
    let c = &shape.config;
    let pairs = (len * (len + 1) / 2) as f64;
    2.0 * shape.block_params() as f64 * len as f64 + 4.0 * (c.heads * c.head_dim) as f64 * pairs
}

/// FLOPs a scan window needs: blocks `0..deepest` in full, then the key projection of block
/// `deepest` (the tap; nothing after it runs).
fn scan_window_flops(shape: &RandomShape, deepest: usize, len: usize) -> f64 {
    let c = &shape.config;
    deepest as f64 * layer_flops(shape, len)
        + 2.0 * (c.hidden * c.kv_heads * c.head_dim * len) as f64
}

fn activation(memory: Option<GpuMemory>, weights: Option<u64>) -> Option<u64> {
    Some(memory?.peak_allocated_bytes.saturating_sub(weights?))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Fired features of each (token, layer, KV head), in scan order, one list per tapped layer.
type Codes = Vec<Vec<Vec<u32>>>;

/// The SAE that encodes the keys of (layer, KV head).
type SaeFor<'a> = &'a dyn Fn(usize, usize) -> Result<&'a TopKSae>;

/// Scans `doc` and encodes every key with the SAE of its layer and head; also returns the keys.
fn encode_scan(
    model: &Transformer,
    batch: usize,
    doc: &[u32],
    layers: &LayerSet,
    sae_for: SaeFor<'_>,
) -> Result<(Codes, Vec<Vec<f32>>)> {
    let taps = TapRequest {
        keys: Some(layers.clone()),
        queries: None,
    };
    let n = layers.layers().len();
    let mut codes: Codes = vec![Vec::new(); n];
    let mut keys: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut failed = None;
    let cfg = ScanConfig::default();
    let scanned = scan_documents(model, batch, &[doc], &taps, &cfg, &mut |_, chunk| {
        for (i, tap) in chunk.keys.iter().enumerate() {
            let heads = tap.values.dim(1)?;
            for h in 0..heads {
                let rows = tap.values.i((.., h, ..))?.contiguous()?;
                let encoded = sae_for(tap.layer, h).and_then(|sae| Ok(sae.encode(&rows)?));
                let c = match encoded {
                    Ok(c) => c,
                    Err(e) => {
                        failed = Some(e);
                        return Err(crate::model::ModelError::Aborted);
                    }
                };
                for r in 0..c.rows() {
                    let (ids, acts) = c.row(r).unwrap_or((&[], &[]));
                    let mut fired: Vec<u32> = ids
                        .iter()
                        .zip(acts)
                        .filter(|(_, &a)| a > 0.0)
                        .map(|(&id, _)| id)
                        .collect();
                    fired.sort_unstable();
                    codes[i].push(fired);
                }
                keys[i].extend(rows.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(())
    });
    if let Some(e) = failed {
        return Err(e);
    }
    scanned?;
    Ok((codes, keys))
}

/// Compares the codes and keys of a device scan with the CPU's.
fn compare(
    format: WeightFormat,
    cpu: &(Codes, Vec<Vec<f32>>),
    dev: &(Codes, Vec<Vec<f32>>),
) -> Result<ParityRow> {
    let (mut same, mut overlap, mut triples) = (0usize, 0f64, 0usize);
    for (a_layer, b_layer) in cpu.0.iter().zip(&dev.0) {
        if a_layer.len() != b_layer.len() {
            bail!("parity: the scans produced different numbers of keys");
        }
        for (a, b) in a_layer.iter().zip(b_layer) {
            triples += 1;
            same += usize::from(a == b);
            let common = a.iter().filter(|id| b.binary_search(id).is_ok()).count();
            overlap += match a.len().max(b.len()) {
                0 => 1.0,
                n => common as f64 / n as f64,
            };
        }
    }
    let (mut max_diff, mut err, mut norm) = (0f32, 0f64, 0f64);
    for (a, b) in cpu.1.iter().flatten().zip(dev.1.iter().flatten()) {
        max_diff = max_diff.max((a - b).abs());
        err += f64::from(a - b).powi(2);
        norm += f64::from(*a).powi(2);
    }
    Ok(ParityRow {
        weights: format,
        triples,
        identical: same as f64 / triples.max(1) as f64,
        mean_overlap: overlap / triples.max(1) as f64,
        max_abs_key_diff: max_diff,
        rel_key_error: (err / norm.max(1e-30)).sqrt(),
    })
}

/// One random Top-k SAE per tapped layer (tied weights, no biases): dictionary 32 x head dim.
fn random_saes(shape: &RandomShape, layers: &LayerSet, seed: u64) -> Result<Vec<TopKSae>> {
    let d = shape.config.head_dim;
    let m = 32 * d;
    layers
        .layers()
        .iter()
        .map(|&l| {
            let w = crate::model::random::uniform_tensor(
                seed,
                1000 + l as u64,
                (m, d),
                1.0,
                &Device::Cpu,
            )?;
            let b_enc = Tensor::zeros(m, candle_core::DType::F32, &Device::Cpu)?;
            let b_dec = Tensor::zeros(d, candle_core::DType::F32, &Device::Cpu)?;
            Ok(TopKSae::new(&w, &b_enc, &w, &b_dec, 16, 1.0)?)
        })
        .collect()
}

fn parity(
    shape: &RandomShape,
    r: &RandomArgs,
    layers: &LayerSet,
    device: &Device,
    weights: WeightFormat,
) -> Result<Vec<ParityRow>> {
    let doc = random_tokens(r.seed ^ 0x9a9a, r.parity_tokens, shape.config.vocab);
    let saes = random_saes(shape, layers, r.seed)?;
    let sae_for = |layer: usize, _head: usize| -> Result<&TopKSae> {
        let i = layers.layers().iter().position(|&l| l == layer);
        i.map(|i| &saes[i]).context("no SAE for this layer")
    };
    let t0 = Instant::now();
    let cpu = Transformer::random(shape, WeightFormat::F32, r.seed, &Device::Cpu)?;
    let cpu_scan = encode_scan(&cpu, 1, &doc, layers, &sae_for)?;
    drop(cpu);
    eprintln!(
        "parity: CPU scan of {} tokens in {:.1} s",
        doc.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    for format in device_formats(weights) {
        let model = Transformer::random(shape, format, r.seed, device)?;
        let batch = crate::model::default_scan_batch(device);
        let dev_scan = encode_scan(&model, batch, &doc, layers, &sae_for)?;
        drop(model);
        let row = compare(format, &cpu_scan, &dev_scan)?;
        eprintln!("{}", serde_json::to_string(&row)?);
        rows.push(row);
    }
    Ok(rows)
}

/// The device's format first, then the others a GPU can use, for comparison.
fn device_formats(first: WeightFormat) -> Vec<WeightFormat> {
    let mut formats = vec![first];
    for f in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::F16] {
        if !formats.contains(&f) {
            formats.push(f);
        }
    }
    formats
}

/// Flags of `bench parity`.
#[derive(Debug, Args)]
pub struct ParityArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// The SAE set: a folder, or `default` for the model's embedded set.
    #[arg(long, default_value = "default")]
    pub sae: String,
    /// Document tokens compared (the file is repeated as needed).
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// The document (UTF-8 text).
    pub file: PathBuf,
}

/// `bench parity`: the model scanned on the CPU in f32 and on --device in its weight format,
/// in f16 and in f32, keys encoded by the SAE set, top-k sets compared per (token, layer, KV
/// head).
pub fn parity_model(args: &ParityArgs, models: &std::path::Path) -> Result<()> {
    let cpu_args = super::ModelArgs {
        model: args.model.model.clone(),
        weights: Some(WeightFormat::F32),
        device: DeviceArgs::default(),
    };
    let cpu = super::commands::load(&cpu_args, models)?;
    let set = super::commands::load_sae_set(&cpu, &args.sae, models)?;
    let mut layers = set.layers();
    layers.dedup();
    let layers = LayerSet::new(layers)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let unit = cpu.tokenizer().encode_ids(&text)?;
    if unit.is_empty() {
        bail!("{} holds no tokens", args.file.display());
    }
    let doc: Vec<u32> = unit.iter().copied().cycle().take(args.tokens).collect();
    let sae_for = |layer: usize, head: usize| -> Result<&TopKSae> { Ok(set.sae_for(layer, head)?) };
    let t0 = Instant::now();
    let cpu_scan = encode_scan(cpu.transformer(), 1, &doc, &layers, &sae_for)?;
    eprintln!(
        "parity: CPU scan of {} tokens in {:.1} s",
        doc.len(),
        t0.elapsed().as_secs_f64()
    );
    drop(cpu);
    // The default for a quantized GGUF is f32 on every device (`WeightFormat::default_for`).
    let first = args.model.weights.unwrap_or(WeightFormat::F32);
    let mut rows = Vec::new();
    for format in device_formats(first) {
        let dev_args = super::ModelArgs {
            weights: Some(format),
            ..args.model.clone()
        };
        let model = super::commands::load(&dev_args, models)?;
        let dev_scan = encode_scan(
            model.transformer(),
            model.scan_batch(),
            &doc,
            &layers,
            &sae_for,
        )?;
        let row = compare(format, &cpu_scan, &dev_scan)?;
        eprintln!("{}", serde_json::to_string(&row)?);
        rows.push(row);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": args.model.model,
            "device": args.model.device.device.to_string(),
            "sae": args.sae,
            "tokens": doc.len(),
            "layers": layers.to_string(),
            "parity": rows,
        }))?
    );
    Ok(())
}

fn print_tables(report: &Report) {
    let mem = |m: &Option<GpuMemory>, f: fn(&GpuMemory) -> u64| {
        m.as_ref().map_or("-".into(), |m| {
            format!("{:.2}", f(m) as f64 / (1u64 << 30) as f64)
        })
    };
    println!(
        "{} on {} ({:?}), weights {} GiB, MFU against {} TFLOP/s",
        report.shape.config.name,
        report.device,
        report.weights,
        report.weights_bytes.map_or("-".into(), |b| format!(
            "{:.2}",
            b as f64 / (1u64 << 30) as f64
        )),
        report.peak_tflops
    );
    if !report.scans.is_empty() {
        println!();
        println!("| tokens | chunk | layers | batch | tokens/s | window tokens/s | TFLOP/s | MFU | peak alloc GiB | peak activations GiB | device used GiB |");
        println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for s in &report.scans {
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1}% | {} | {} | {} |",
                s.tokens,
                s.chunk,
                s.layers,
                s.batch,
                s.tokens_per_s,
                s.window_tokens_per_s,
                s.tflops,
                100.0 * s.mfu,
                mem(&s.memory, |m| m.peak_allocated_bytes),
                s.peak_activation_bytes.map_or("-".into(), |b| format!(
                    "{:.2}",
                    b as f64 / (1u64 << 30) as f64
                )),
                mem(&s.memory, |m| m.device_used_bytes),
            );
        }
    }
    if !report.prefill.is_empty() {
        println!();
        println!("Full-KV baseline (full-depth prefill of the whole document, KV cache kept):");
        println!("| tokens | tokens/s | TFLOP/s | MFU | peak alloc GiB | peak activations GiB | KV cache GiB |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for p in &report.prefill {
            println!(
                "| {} | {:.0} | {:.1} | {:.1}% | {} | {} | {:.2} |",
                p.tokens,
                p.tokens_per_s,
                p.tflops,
                100.0 * p.mfu,
                mem(&p.memory, |m| m.peak_allocated_bytes),
                p.peak_activation_bytes.map_or("-".into(), |b| format!(
                    "{:.2}",
                    b as f64 / (1u64 << 30) as f64
                )),
                p.kv_cache_bytes as f64 / (1u64 << 30) as f64,
            );
        }
    }
    if !report.parity.is_empty() {
        println!();
        println!("Parity against the CPU (f32):");
        println!("| device weights | triples | identical top-k sets | mean overlap | max key diff | rel. key error |");
        println!("|---|---:|---:|---:|---:|---:|");
        for p in &report.parity {
            println!(
                "| {:?} | {} | {:.2}% | {:.4} | {:.2e} | {:.2e} |",
                p.weights,
                p.triples,
                100.0 * p.identical,
                p.mean_overlap,
                p.max_abs_key_diff,
                p.rel_key_error
            );
        }
    }
}

/// Flags of `bench sae-train`.
#[derive(Debug, Args)]
pub struct SaeTrainBenchArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Training vectors (the default set trained on 1.67M per SAE).
    #[arg(long, default_value_t = 1_670_000)]
    pub samples: usize,
    /// Input dimension (SmolLM2's head dim).
    #[arg(long, default_value_t = 64)]
    pub d_in: usize,
    /// Dictionary size.
    #[arg(long, default_value_t = 2048)]
    pub dict: usize,
    /// Features kept per vector.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// Passes over the vectors.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Vectors per optimiser step.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Seed of the data and the training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `bench sae-train`: trains one SAE on synthetic sparse vectors and reports its speed.
pub fn sae_train(args: &SaeTrainBenchArgs) -> Result<()> {
    let device = args.device.open()?;
    let data = sparse_vectors(args.samples, args.d_in, args.seed)?;
    let cfg = crate::sae::TrainConfig {
        dict_size: Some(args.dict),
        k: args.k,
        length: crate::sae::TrainLength::Epochs(args.epochs),
        batch_size: args.batch_size,
        seed: args.seed,
        ..Default::default()
    };
    let (_, report) = crate::sae::train::train_on(&data, &cfg, &device, &mut |_| {})?;
    let out = serde_json::json!({
        "device": device_name(&device),
        "samples": args.samples,
        "epochs": args.epochs,
        "report": report,
    });
    println!("{out}");
    Ok(())
}

/// Vectors that are sparse sums of 8 of 4096 random directions (coefficients in [0.5, 1.5)),
/// the structure an SAE recovers, so dead-latent counts (and the AuxK work) look like real runs.
fn sparse_vectors(n: usize, d: usize, seed: u64) -> Result<Tensor> {
    const ATOMS: usize = 4096;
    const ACTIVE: usize = 8;
    let atoms = crate::model::random::uniform_tensor(seed, 7, (ATOMS, d), 1.0, &Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let picks = random_tokens(seed ^ 0x5a5a, n * ACTIVE, ATOMS);
    let coefs = random_tokens(seed ^ 0xa5a5, n * ACTIVE, 1 << 16);
    let mut data = vec![0f32; n * d];
    for (r, row) in data.chunks_exact_mut(d).enumerate() {
        for j in r * ACTIVE..(r + 1) * ACTIVE {
            let a = picks[j] as usize;
            let c = 0.5 + coefs[j] as f32 / (1 << 16) as f32;
            for (o, &w) in row.iter_mut().zip(&atoms[a * d..(a + 1) * d]) {
                *o += c * w;
            }
        }
    }
    Ok(Tensor::from_vec(data, (n, d), &Device::Cpu)?)
}
