//! Parity of SAE features between a CPU scan in f32 and a device scan (`bench parity`, and
//! `bench scan --random-shape ... --parity-tokens N`): per (token, layer, KV head), whether
//! the top-k feature sets agree, and how far the keys are apart.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, IndexOp, Tensor};
use serde::Serialize;

use super::{BenchError, Log, Result};
use crate::model::{
    per_chunk, random_tokens, scan_document_batches, LayerSet, Model, RandomShape, ScanConfig,
    TapPlace, TapRequest, Transformer, WeightFormat,
};
use crate::sae::{SaeSet, TopKSae};

/// Agreement of top-k feature sets between the CPU and a device.
#[derive(Debug, Clone, Serialize)]
pub struct ParityRow {
    pub weights: WeightFormat,
    /// (token, layer, KV head) triples compared.
    pub triples: usize,
    /// Fraction whose sets of fired features are identical.
    pub identical: f64,
    /// Mean of |A ∩ B| / max(|A|, |B|) over the triples.
    pub mean_overlap: f64,
    /// Largest absolute difference of any key value against the CPU.
    pub max_abs_key_diff: f32,
    /// ||keys - cpu keys|| / ||cpu keys|| over all tapped keys.
    pub rel_key_error: f64,
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
    let scanned = scan_document_batches(
        model,
        batch,
        &[doc],
        &taps,
        &cfg,
        TapPlace::Host,
        &mut per_chunk(&mut |_, chunk| {
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
        }),
    );
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
            return Err(BenchError::Input(
                "parity: the scans produced different numbers of keys".into(),
            ));
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

/// Parity of a model with random weights: `tokens` random tokens scanned on the CPU in f32 and
/// on `device` in `weights`, in f16 and in f32, keys encoded by random Top-k SAEs (dictionary
/// 32 x head dim, k 16), top-k sets compared per (token, layer, KV head).
pub fn parity_random(
    shape: &RandomShape,
    seed: u64,
    tokens: usize,
    layers: &LayerSet,
    device: &Device,
    weights: WeightFormat,
    log: Log<'_>,
) -> Result<Vec<ParityRow>> {
    let doc = random_tokens(seed ^ 0x9a9a, tokens, shape.config.vocab);
    let saes = random_saes(shape, layers, seed)?;
    let sae_for = |layer: usize, _head: usize| -> Result<&TopKSae> {
        let i = layers.layers().iter().position(|&l| l == layer);
        i.map(|i| &saes[i])
            .ok_or_else(|| BenchError::Input(format!("no SAE for layer {layer}")))
    };
    let t0 = Instant::now();
    let cpu = Transformer::random(shape, WeightFormat::F32, seed, &Device::Cpu)?;
    let cpu_scan = encode_scan(&cpu, 1, &doc, layers, &sae_for)?;
    drop(cpu);
    log(&format!(
        "parity: CPU scan of {} tokens in {:.1} s",
        doc.len(),
        t0.elapsed().as_secs_f64()
    ));
    let mut rows = Vec::new();
    for format in device_formats(weights) {
        let model = Transformer::random(shape, format, seed, device)?;
        let batch = crate::model::default_scan_batch(device);
        let dev_scan = encode_scan(&model, batch, &doc, layers, &sae_for)?;
        drop(model);
        let row = compare(format, &cpu_scan, &dev_scan)?;
        log(&super::to_json(&row));
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

/// Where the device's copies of a model come from: its file, the device and the scan batch.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The GGUF file.
    pub path: PathBuf,
    /// The device the copies run on.
    pub device: Device,
    /// Windows per forward pass (default: the device's).
    pub scan_batch: Option<usize>,
}

impl ModelSource {
    /// Loads the model with its weights held in `format`.
    pub fn load(&self, format: WeightFormat) -> Result<Model> {
        let mut model = Model::load(&self.path, format, &self.device)?;
        if let Some(b) = self.scan_batch {
            model.set_scan_batch(b);
        }
        Ok(model)
    }
}

/// What `bench parity` measured.
#[derive(Debug, Serialize)]
pub struct ModelParity {
    /// Document tokens compared.
    pub tokens: usize,
    /// The layers the SAE set encodes.
    pub layers: String,
    /// One row per device weight format.
    pub parity: Vec<ParityRow>,
}

/// `bench parity`: `text` (repeated to `tokens` tokens) scanned by `cpu` (f32 on the CPU) and
/// by the device's copies in `first`, then the other formats a GPU can use; keys encoded by
/// `set`, top-k sets compared per (token, layer, KV head).
pub fn parity_model(
    cpu: Model,
    set: &SaeSet,
    text: &str,
    tokens: usize,
    device: &ModelSource,
    first: WeightFormat,
    log: Log<'_>,
) -> Result<ModelParity> {
    let mut layers = set.layers();
    layers.dedup();
    let layers = LayerSet::new(layers)?;
    let unit = cpu.tokenizer().encode_ids(text)?;
    if unit.is_empty() {
        return Err(BenchError::Input("the document holds no tokens".into()));
    }
    let doc: Vec<u32> = unit.iter().copied().cycle().take(tokens).collect();
    let sae_for = |layer: usize, head: usize| -> Result<&TopKSae> { Ok(set.sae_for(layer, head)?) };
    let t0 = Instant::now();
    let cpu_scan = encode_scan(cpu.transformer(), 1, &doc, &layers, &sae_for)?;
    log(&format!(
        "parity: CPU scan of {} tokens in {:.1} s",
        doc.len(),
        t0.elapsed().as_secs_f64()
    ));
    drop(cpu);
    let mut parity = Vec::new();
    for format in device_formats(first) {
        let model = device.load(format)?;
        let dev_scan = encode_scan(
            model.transformer(),
            model.scan_batch(),
            &doc,
            &layers,
            &sae_for,
        )?;
        let row = compare(format, &cpu_scan, &dev_scan)?;
        log(&super::to_json(&row));
        parity.push(row);
    }
    Ok(ModelParity {
        tokens: doc.len(),
        layers: layers.to_string(),
        parity,
    })
}

/// Returns the parity rows as a Markdown table.
pub fn table(rows: &[ParityRow]) -> String {
    let mut s = String::from(
        "| device weights | triples | identical top-k sets | mean overlap | max key diff | rel. key error |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for p in rows {
        s.push_str(&format!(
            "| {:?} | {} | {:.2}% | {:.4} | {:.2e} | {:.2e} |\n",
            p.weights,
            p.triples,
            100.0 * p.identical,
            p.mean_overlap,
            p.max_abs_key_diff,
            p.rel_key_error
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_scans_agree_fully_and_others_are_measured() {
        let cpu = (
            vec![vec![vec![1, 2, 3], vec![4, 5]]],
            vec![vec![1.0f32, 2.0, 2.0]],
        );
        let same = compare(WeightFormat::F32, &cpu, &cpu).unwrap();
        assert_eq!(
            (same.triples, same.identical, same.mean_overlap),
            (2, 1.0, 1.0)
        );
        assert_eq!(same.rel_key_error, 0.0);
        let dev = (
            vec![vec![vec![1, 2, 9], vec![4, 5]]],
            vec![vec![1.0f32, 2.0, 0.0]],
        );
        let other = compare(WeightFormat::Bf16, &cpu, &dev).unwrap();
        assert_eq!(other.identical, 0.5);
        assert!((other.mean_overlap - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(other.max_abs_key_diff, 2.0);
        assert!((other.rel_key_error - 2.0 / 3.0).abs() < 1e-12);
        let short = (vec![vec![vec![1]]], vec![vec![1.0f32]]);
        assert!(compare(WeightFormat::F16, &cpu, &short).is_err());
        let t = table(&[same]);
        assert!(
            t.contains("| F32 | 2 | 100.00% | 1.0000 | 0.00e0 | 0.00e0 |"),
            "{t}"
        );
    }

    #[test]
    fn the_device_format_comes_first() {
        use WeightFormat::*;
        assert_eq!(device_formats(Bf16), [Bf16, F32, F16]);
        assert_eq!(device_formats(Quantized), [Quantized, F32, Bf16, F16]);
    }
}
