//! Benchmarks on models with seeded random weights built on the device (`bench scan
//! --random-shape`), where the weights cannot travel (a Llama-3-8B shape is 16 GB in bf16):
//! scan throughput as MFU, GPU memory against document length, the full-KV prefill baseline,
//! and CPU-vs-device parity of SAE features ([`super::parity`]).

use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use super::parity::{parity_random, ParityRow};
use super::{BenchError, Log, Result};
use crate::model::{
    device_name, gpu_memory, random_tokens, reset_gpu_peak, scan_document_batches, GpuMemory,
    KvCache, LayerSet, Logits, RandomShape, ScanConfig, TapPlace, TapRequest, Transformer,
    WeightFormat,
};

/// What `bench scan --random-shape NAME` measures.
#[derive(Debug, Clone)]
pub struct RandomBench {
    /// The shape: llama3-8b, smollm2-135m or tiny.
    pub shape: String,
    /// Seed of the random weights and documents.
    pub seed: u64,
    /// How the weights are held on the device.
    pub weights: WeightFormat,
    /// Document lengths in tokens.
    pub tokens: Vec<usize>,
    /// Chunk sizes to compare.
    pub chunks: Vec<usize>,
    /// Layer sets to compare.
    pub layers: Vec<LayerSet>,
    /// Scan batches (windows per forward pass) to compare.
    pub batches: Vec<usize>,
    /// Where the scans leave the key taps, to compare: on the host (copied there after each
    /// batch, as a CPU SAE encoding needs) or on the device (as a GPU ingest leaves them for
    /// the SAEs there).
    pub taps: Vec<TapPlace>,
    /// Document lengths of the full-KV baseline (up to the model context).
    pub prefill: Vec<usize>,
    /// Tokens of a parity run (0: none).
    pub parity_tokens: usize,
    /// The matmul peak MFU is reported against, in TFLOP/s.
    pub peak_tflops: f64,
}

/// One scan measurement.
#[derive(Debug, Serialize)]
struct ScanRow {
    tokens: usize,
    chunk: usize,
    layers: String,
    batch: usize,
    /// Where the key taps were left: `host` or `device`.
    taps: &'static str,
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

/// Everything `bench scan --random-shape` measured.
#[derive(Debug, Serialize)]
pub struct Report {
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

/// Builds the random model on `device` and measures its scans, its full-KV prefills and, if
/// asked, its parity with the CPU; `log` gets each measurement as a JSON line.
pub fn scan(r: &RandomBench, device: &Device, log: Log<'_>) -> Result<Report> {
    let name = r.shape.as_str();
    let shape = RandomShape::named(name)?;
    let weights = r.weights;
    let batches = &r.batches;
    let (Some(&first_chunk), Some(first_layers), Some(&first_batch), Some(&first_place)) = (
        r.chunks.first(),
        r.layers.first(),
        batches.first(),
        r.taps.first(),
    ) else {
        return Err(BenchError::Input(
            "give at least one chunk, layer set, scan batch and tap place".into(),
        ));
    };
    for layers in &r.layers {
        layers.check(&shape.config)?;
    }

    let t0 = Instant::now();
    let model = Transformer::random(&shape, weights, r.seed, device)?;
    let memory = gpu_memory(device)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let weights_bytes = memory.map(|m| m.allocated_bytes);
    log(&format!(
        "built {name} ({} layers, hidden {}) in {weights:?} on {} in {load_seconds:.1} s; weights {}",
        shape.config.layers,
        shape.config.hidden,
        device_name(device),
        weights_bytes.map_or("-".into(), gib)
    ));

    let mut report = Report {
        shape: shape.clone(),
        device: device_name(device),
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
        chunk: first_chunk,
        ..ScanConfig::default()
    };
    let warm_doc = random_tokens(r.seed ^ 1, warm.chunk * first_batch * 2, shape.config.vocab);
    run_scan(
        &model,
        &warm_doc,
        first_layers,
        &warm,
        first_batch,
        first_place,
    )?;

    for &tokens in &r.tokens {
        let doc = random_tokens(r.seed ^ tokens as u64, tokens, shape.config.vocab);
        for &chunk in &r.chunks {
            let cfg = ScanConfig {
                chunk,
                ..ScanConfig::default()
            };
            for layers in &r.layers {
                for (&batch, &place) in batches
                    .iter()
                    .flat_map(|b| r.taps.iter().map(move |p| (b, p)))
                {
                    reset_gpu_peak(device)?;
                    let (stats, seconds) = run_scan(&model, &doc, layers, &cfg, batch, place)?;
                    let memory = gpu_memory(device)?;
                    let flops: f64 = cfg
                        .windows(doc.len())
                        .map(|w| scan_window_flops(&shape, layers.deepest(), w.len()))
                        .sum();
                    let row = ScanRow {
                        tokens,
                        chunk,
                        layers: layers.to_string(),
                        batch,
                        taps: place_name(place),
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
                    log(&super::to_json(&row));
                    report.scans.push(row);
                }
            }
        }
    }

    for &tokens in &r.prefill {
        if tokens > shape.config.context {
            return Err(BenchError::Input(format!(
                "a prefill of {tokens} tokens exceeds the context of {}",
                shape.config.context
            )));
        }
        let doc = random_tokens(r.seed ^ 0xf00d ^ tokens as u64, tokens, shape.config.vocab);
        reset_gpu_peak(device)?;
        let t0 = Instant::now();
        let mut cache = KvCache::default();
        let out = model.forward(&doc, Some(&mut cache), &TapRequest::default(), Logits::Last)?;
        let logits = out
            .logits
            .ok_or_else(|| BenchError::Input("the prefill returned no logits".into()))?;
        // Reading the logits back waits for the device.
        let _ = crate::model::argmax_rows(&logits)?;
        let seconds = t0.elapsed().as_secs_f64();
        let memory = gpu_memory(device)?;
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
        log(&super::to_json(&row));
        report.prefill.push(row);
    }
    drop(model);

    if r.parity_tokens > 0 {
        report.parity = parity_random(
            &shape,
            r.seed,
            r.parity_tokens,
            first_layers,
            device,
            weights,
            log,
        )?;
    }
    Ok(report)
}

/// Names a tap place in the report.
fn place_name(place: TapPlace) -> &'static str {
    match place {
        TapPlace::Host => "host",
        TapPlace::Device => "device",
    }
}

/// Scans `doc` once, leaving the taps at `place`; returns the totals and the wall-clock
/// seconds.
fn run_scan(
    model: &Transformer,
    doc: &[u32],
    layers: &LayerSet,
    cfg: &ScanConfig,
    batch: usize,
    place: TapPlace,
) -> Result<(crate::model::ScanStats, f64)> {
    let taps = TapRequest {
        keys: Some(layers.clone()),
        queries: None,
    };
    let t0 = Instant::now();
    let mut rows = 0usize;
    let stats = scan_document_batches(model, batch, &[doc], &taps, cfg, place, &mut |chunks| {
        rows += chunks
            .iter()
            .flat_map(|(_, chunk)| &chunk.keys)
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

impl Report {
    /// Returns the Markdown tables of the scans, the prefills and the parity rows.
    pub fn tables(&self) -> String {
        let gib2 = |b: u64| format!("{:.2}", b as f64 / (1u64 << 30) as f64);
        let mem = |m: &Option<GpuMemory>, f: fn(&GpuMemory) -> u64| {
            m.as_ref().map_or("-".into(), |m| gib2(f(m)))
        };
        let mut out = format!(
            "{} on {} ({:?}), weights {} GiB, MFU against {} TFLOP/s\n",
            self.shape.config.name,
            self.device,
            self.weights,
            self.weights_bytes.map_or("-".into(), gib2),
            self.peak_tflops
        );
        if !self.scans.is_empty() {
            out.push_str("\n| tokens | chunk | layers | batch | taps | tokens/s | window tokens/s | TFLOP/s | MFU | peak alloc GiB | peak activations GiB | device used GiB |\n");
            out.push_str("|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
            for s in &self.scans {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1}% | {} | {} | {} |\n",
                    s.tokens,
                    s.chunk,
                    s.layers,
                    s.batch,
                    s.taps,
                    s.tokens_per_s,
                    s.window_tokens_per_s,
                    s.tflops,
                    100.0 * s.mfu,
                    mem(&s.memory, |m| m.peak_allocated_bytes),
                    s.peak_activation_bytes.map_or("-".into(), gib2),
                    mem(&s.memory, |m| m.device_used_bytes),
                ));
            }
        }
        if !self.prefill.is_empty() {
            out.push_str(
                "\nFull-KV baseline (full-depth prefill of the whole document, KV cache kept):\n",
            );
            out.push_str("| tokens | tokens/s | TFLOP/s | MFU | peak alloc GiB | peak activations GiB | KV cache GiB |\n");
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
            for p in &self.prefill {
                out.push_str(&format!(
                    "| {} | {:.0} | {:.1} | {:.1}% | {} | {} | {} |\n",
                    p.tokens,
                    p.tokens_per_s,
                    p.tflops,
                    100.0 * p.mfu,
                    mem(&p.memory, |m| m.peak_allocated_bytes),
                    p.peak_activation_bytes.map_or("-".into(), gib2),
                    gib2(p.kv_cache_bytes),
                ));
            }
        }
        if !self.parity.is_empty() {
            out.push_str("\nParity against the CPU (f32):\n");
            out.push_str(&super::parity::table(&self.parity));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_random_model_is_measured_on_the_cpu() {
        let bench = RandomBench {
            shape: "tiny".into(),
            seed: 3,
            weights: WeightFormat::F32,
            tokens: vec![300],
            chunks: vec![64],
            layers: vec![LayerSet::new(vec![1]).unwrap()],
            batches: vec![1],
            taps: vec![TapPlace::Host, TapPlace::Device],
            prefill: vec![100],
            parity_tokens: 80,
            peak_tflops: 1.0,
        };
        let mut lines = Vec::new();
        let report = scan(&bench, &Device::Cpu, &mut |l| lines.push(l.to_string())).unwrap();
        // One scan per tap place, each over the same windows.
        assert_eq!(report.scans.len(), 2);
        for (row, place) in report.scans.iter().zip(["host", "device"]) {
            assert_eq!((row.tokens, row.taps), (300, place));
            assert!(row.tokens_per_s > 0.0);
            assert_eq!(row.windows, report.scans[0].windows);
        }
        assert_eq!(report.prefill.len(), 1);
        // The CPU against itself in f32 agrees on every feature set.
        assert_eq!(report.parity[0].weights, WeightFormat::F32);
        assert_eq!(report.parity[0].identical, 1.0);
        let t = report.tables();
        assert!(t.contains("| 300 | 64 | 1 | 1 | host |"), "{t}");
        assert!(t.contains("| 300 | 64 | 1 | 1 | device |"), "{t}");
        assert!(t.contains("Full-KV baseline"), "{t}");
        assert!(t.contains("Parity against the CPU (f32):"), "{t}");
        assert!(lines.len() >= 3, "{lines:?}");
        let bad = RandomBench {
            prefill: vec![1 << 30],
            ..bench
        };
        let e = scan(&bad, &Device::Cpu, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("exceeds the context"), "{e}");
    }
}
