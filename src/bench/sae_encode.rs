//! SAE encoding on the host cores against encoding on a device (`bench sae-encode`): the same
//! keys through [`TopKSae::encode_on_host`] and [`TopKSae::encode_on_device_with`] both ways (the
//! top k by tensor operations and by the fused kernel), rows per second of each and how often
//! each device path's top-k sets agree with the host's.

use std::time::Instant;

use candle_core::{Device, IndexOp, Tensor};
use serde::Serialize;

use super::{BenchError, Log, Result};
use crate::model::{device_name, random_tokens, LayerSet, Model, TapRequest};
use crate::sae::{DeviceTopK, SaeError, SaeSet, SparseCodes, TopKSae};

/// Relative tolerance under which two activations count as tied.
const TIE_TOLERANCE: f32 = 1e-4;

/// Rows of the untimed first call of each path (the device's first use loads its kernels and
/// copies the SAE's weights).
const WARMUP_ROWS: usize = 1024;

/// The shape of the random SAE and keys of `bench sae-encode` without a model.
#[derive(Debug, Clone)]
pub struct RandomEncode {
    /// Key vectors encoded.
    pub rows: usize,
    /// Input dimension.
    pub d_in: usize,
    /// Dictionary size.
    pub dict: usize,
    /// Features kept per row.
    pub k: usize,
    /// Seed of the weights and the keys.
    pub seed: u64,
}

/// One path's time over all the keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathSpeed {
    /// Seconds spent encoding (keys already where the path reads them).
    pub seconds: f64,
    /// Rows encoded per second.
    pub rows_per_s: f64,
}

/// How often a device path's top-k sets agree with the host path's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Agreement {
    /// Rows whose sets of fired features are identical.
    pub identical_rows: usize,
    /// Rows whose sets differ only by features tied within the tolerance at the k-th place.
    pub tied_rows: usize,
    /// `identical_rows / rows`.
    pub identical_rate: f64,
    /// `(identical_rows + tied_rows) / rows`.
    pub identical_up_to_ties_rate: f64,
}

impl Agreement {
    /// Compares `device` with `host` row by row.
    fn of(host: &SparseCodes, device: &SparseCodes) -> Self {
        let (identical_rows, tied_rows) = agreement(host, device);
        Self {
            identical_rows,
            tied_rows,
            ..Default::default()
        }
    }

    /// Adds another SAE's counts.
    fn add(&mut self, other: &Agreement) {
        self.identical_rows += other.identical_rows;
        self.tied_rows += other.tied_rows;
    }

    /// Derives the rates from the counts over `rows`.
    fn finish(&mut self, rows: usize) {
        self.identical_rate = rate(self.identical_rows, rows as f64);
        self.identical_up_to_ties_rate = rate(self.identical_rows + self.tied_rows, rows as f64);
    }
}

/// The fused kernel's path ([`DeviceTopK::Kernel`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelPath {
    /// Its time.
    #[serde(flatten)]
    pub speed: PathSpeed,
    /// Its agreement with the host path.
    #[serde(flatten)]
    pub agreement: Agreement,
    /// Rows whose codes (ids and activations, in order) equal the tensor-op path's exactly: the
    /// same matmul feeds both, so anything below all rows is a selection bug.
    pub same_as_ops_rows: usize,
}

/// What `bench sae-encode` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EncodeReport {
    /// The device of the device paths.
    pub device: String,
    /// Where the keys came from: `random`, or the model file whose scan gave them.
    pub keys: String,
    /// SAEs compared (one per layer and KV head of a set; one for random keys).
    pub saes: usize,
    /// Key vectors encoded by each path.
    pub rows: usize,
    /// The host path (matmul and per-row top-k on the host cores).
    pub host: PathSpeed,
    /// The device path with the top k by tensor operations ([`DeviceTopK::Ops`]), codes back
    /// to the host.
    pub device_path: PathSpeed,
    /// The tensor-op device path's agreement with the host path.
    #[serde(flatten)]
    pub agreement: Agreement,
    /// The device path with the top k by the fused kernel; `None` where the kernel does not
    /// take the SAE's shape (`kernel_refused` says why).
    pub kernel_path: Option<KernelPath>,
    /// Why the fused kernel was not run, if it was not.
    pub kernel_refused: Option<String>,
}

impl EncodeReport {
    /// Returns the report as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "| path | rows | seconds | rows/s |\n|---|---:|---:|---:|\n\
             | host | {rows} | {:.3} | {:.0} |\n| device ({}) | {rows} | {:.3} | {:.0} |\n",
            self.host.seconds,
            self.host.rows_per_s,
            self.device,
            self.device_path.seconds,
            self.device_path.rows_per_s,
            rows = self.rows,
        );
        if let Some(kernel) = &self.kernel_path {
            out += &format!(
                "| device, fused top-k ({}) | {} | {:.3} | {:.0} |\n",
                self.device, self.rows, kernel.speed.seconds, kernel.speed.rows_per_s,
            );
        }
        out += &format!(
            "\nkeys: {}, {} SAE(s); identical top-k sets: {:.4}% ({:.4}% up to ties within {TIE_TOLERANCE:e})\n",
            self.keys,
            self.saes,
            100.0 * self.agreement.identical_rate,
            100.0 * self.agreement.identical_up_to_ties_rate,
        );
        match (&self.kernel_path, &self.kernel_refused) {
            (Some(kernel), _) => {
                out += &format!(
                    "fused top-k: identical top-k sets {:.4}% ({:.4}% up to ties); codes equal to the tensor ops' in {} of {} rows\n",
                    100.0 * kernel.agreement.identical_rate,
                    100.0 * kernel.agreement.identical_up_to_ties_rate,
                    kernel.same_as_ops_rows,
                    self.rows,
                );
            }
            (None, Some(why)) => out += &format!("fused top-k not run: {why}\n"),
            (None, None) => {}
        }
        out
    }

    /// Adds one SAE's comparison to the totals.
    fn add(&mut self, one: &EncodeReport) {
        let first = self.saes == 0;
        self.saes += one.saes;
        self.rows += one.rows;
        self.host.seconds += one.host.seconds;
        self.device_path.seconds += one.device_path.seconds;
        self.agreement.add(&one.agreement);
        match (&mut self.kernel_path, &one.kernel_path) {
            (Some(total), Some(kernel)) => {
                total.speed.seconds += kernel.speed.seconds;
                total.agreement.add(&kernel.agreement);
                total.same_as_ops_rows += kernel.same_as_ops_rows;
            }
            // The first SAE starts the kernel's totals; one it refused ends them.
            (None, Some(kernel)) if first => self.kernel_path = Some(kernel.clone()),
            _ => {
                self.kernel_path = None;
                self.kernel_refused = self.kernel_refused.take().or(one.kernel_refused.clone());
            }
        }
        self.finish();
    }

    /// Derives the rates from the counts.
    fn finish(&mut self) {
        self.host.rows_per_s = rate(self.rows, self.host.seconds);
        self.device_path.rows_per_s = rate(self.rows, self.device_path.seconds);
        self.agreement.finish(self.rows);
        if let Some(kernel) = &mut self.kernel_path {
            kernel.speed.rows_per_s = rate(self.rows, kernel.speed.seconds);
            kernel.agreement.finish(self.rows);
        }
    }
}

/// Returns `num / den`, 0 for an empty denominator.
fn rate(num: usize, den: f64) -> f64 {
    num as f64 / den.max(f64::MIN_POSITIVE)
}

/// `bench sae-encode` without a model: a random SAE of the given shape and random keys.
pub fn random_keys(bench: &RandomEncode, device: &Device, log: Log<'_>) -> Result<EncodeReport> {
    use crate::model::random::uniform_tensor;
    let (m, d, cpu) = (bench.dict, bench.d_in, &Device::Cpu);
    let w_enc = uniform_tensor(bench.seed, 1, (m, d), 1.0 / (d as f32).sqrt(), cpu)?;
    let b_enc = uniform_tensor(bench.seed, 2, m, 0.1, cpu)?;
    let b_dec = uniform_tensor(bench.seed, 3, d, 0.1, cpu)?;
    let sae = TopKSae::new(&w_enc, &b_enc, &w_enc, &b_dec, bench.k, 1.0)?;
    let keys = uniform_tensor(bench.seed, 4, (bench.rows, d), 1.0, cpu)?;
    let mut report = compare(&sae, &keys, device)?;
    report.keys = "random".into();
    log(&super::to_json(&report));
    Ok(report)
}

/// `bench sae-encode --model`: the keys of `tokens` tokens of `text` (repeated as needed;
/// random tokens without one) scanned by `model` on its own device, encoded by the SAE of each
/// layer and KV head of `set` both ways.
pub fn model_keys(
    model: &Model,
    set: &SaeSet,
    text: Option<&str>,
    tokens: usize,
    log: Log<'_>,
) -> Result<EncodeReport> {
    let doc = match text {
        Some(text) => {
            let unit = model.tokenizer().encode_ids(text)?;
            if unit.is_empty() {
                return Err(BenchError::Input("the corpus holds no tokens".into()));
            }
            unit.iter().copied().cycle().take(tokens).collect()
        }
        None => random_tokens(0, tokens, model.config().vocab),
    };
    let layers = LayerSet::new(set.layers())?;
    let taps = TapRequest {
        keys: Some(layers.clone()),
        queries: None,
    };
    let kv_heads = model.config().kv_heads;
    // Per layer, per KV head: the keys in scan order, on the host.
    let mut keys: Vec<Vec<Vec<Tensor>>> = vec![vec![Vec::new(); kv_heads]; layers.layers().len()];
    model.scan(&doc, &taps, &Default::default(), &mut |chunk| {
        for (per_head, tap) in keys.iter_mut().zip(&chunk.keys) {
            for (h, rows) in per_head.iter_mut().enumerate() {
                rows.push(tap.values.i((.., h, ..))?.contiguous()?);
            }
        }
        Ok(())
    })?;
    let device = model.transformer().device();
    let mut total = EncodeReport {
        device: device_name(device),
        keys: model.path().display().to_string(),
        ..Default::default()
    };
    for (&layer, per_head) in layers.layers().iter().zip(&keys) {
        for (head, rows) in per_head.iter().enumerate() {
            let one = compare(set.sae_for(layer, head)?, &Tensor::cat(rows, 0)?, device)?;
            log(&format!(
                "layer {layer} head {head}: {}",
                super::to_json(&one)
            ));
            total.add(&one);
        }
    }
    Ok(total)
}

/// Encodes `keys` (on the host) with the host path and both device paths of `sae` and compares
/// their codes.
fn compare(sae: &TopKSae, keys: &Tensor, device: &Device) -> Result<EncodeReport> {
    let (rows, k) = (keys.dim(0)?, sae.k());
    let on_device = keys.to_device(device)?;
    let warm = rows.min(WARMUP_ROWS);
    let on_device_warm = on_device.narrow(0, 0, warm)?;
    sae.encode_on_host(&keys.narrow(0, 0, warm)?, k)?;
    sae.encode_on_device_with(&on_device_warm, k, DeviceTopK::Ops)?;
    let kernel_refused = match sae.encode_on_device_with(&on_device_warm, k, DeviceTopK::Kernel) {
        Ok(_) => None,
        Err(e @ SaeError::UnsupportedKernelShape { .. }) => Some(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    device.synchronize()?;
    let (host, host_seconds) = timed(|| sae.encode_on_host(keys, k))?;
    let (ops, ops_seconds) = timed(|| sae.encode_on_device_with(&on_device, k, DeviceTopK::Ops))?;
    let kernel_path = match kernel_refused {
        Some(_) => None,
        None => {
            let (kernel, seconds) =
                timed(|| sae.encode_on_device_with(&on_device, k, DeviceTopK::Kernel))?;
            Some(KernelPath {
                speed: PathSpeed {
                    seconds,
                    ..Default::default()
                },
                agreement: Agreement::of(&host, &kernel),
                same_as_ops_rows: (0..rows).filter(|&r| kernel.row(r) == ops.row(r)).count(),
            })
        }
    };
    let mut report = EncodeReport {
        device: device_name(device),
        saes: 1,
        rows,
        host: PathSpeed {
            seconds: host_seconds,
            ..Default::default()
        },
        device_path: PathSpeed {
            seconds: ops_seconds,
            ..Default::default()
        },
        agreement: Agreement::of(&host, &ops),
        kernel_path,
        kernel_refused,
        ..Default::default()
    };
    report.finish();
    Ok(report)
}

/// Runs one encoding and returns its codes and seconds (the codes are on the host when it
/// returns, so the device's work is inside the time).
fn timed(encode: impl FnOnce() -> crate::sae::Result<SparseCodes>) -> Result<(SparseCodes, f64)> {
    let t0 = Instant::now();
    let codes = encode()?;
    Ok((codes, t0.elapsed().as_secs_f64()))
}

/// Counts the rows of `a` and `b` whose fired-feature sets are identical, and those that differ
/// only by features whose activation ties the other side's k-th within [`TIE_TOLERANCE`].
fn agreement(a: &SparseCodes, b: &SparseCodes) -> (usize, usize) {
    let (mut identical, mut tied) = (0, 0);
    for r in 0..a.rows().min(b.rows()) {
        let (Some(ra), Some(rb)) = (a.row(r), b.row(r)) else {
            break;
        };
        let fired = |(ids, acts): (&[u32], &[f32])| -> Vec<(u32, f32)> {
            let mut f: Vec<(u32, f32)> = ids
                .iter()
                .zip(acts)
                .filter(|(_, &x)| x > 0.0)
                .map(|(&i, &x)| (i, x))
                .collect();
            f.sort_by_key(|&(i, _)| i);
            f
        };
        let (fa, fb) = (fired(ra), fired(rb));
        if fa.iter().map(|p| p.0).eq(fb.iter().map(|p| p.0)) {
            identical += 1;
        } else if only_ties(&fa, &fb, kth(rb.1)) && only_ties(&fb, &fa, kth(ra.1)) {
            tied += 1;
        }
    }
    (identical, tied)
}

/// Returns a row's k-th (smallest kept) activation; 0 when a slot did not fire.
fn kth(acts: &[f32]) -> f32 {
    acts.iter().copied().fold(f32::INFINITY, f32::min).max(0.0)
}

/// Whether every feature of `ours` missing from `theirs` sits within tolerance of the value
/// (`their_kth`) it would have had to beat there.
fn only_ties(ours: &[(u32, f32)], theirs: &[(u32, f32)], their_kth: f32) -> bool {
    ours.iter()
        .filter(|(i, _)| !theirs.iter().any(|(j, _)| j == i))
        .all(|&(_, x)| (x - their_kth).abs() <= TIE_TOLERANCE * their_kth.abs().max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_paths_agree_on_the_cpu_and_the_rates_add_up() {
        let bench = RandomEncode {
            rows: 700,
            d_in: 16,
            dict: 128,
            k: 8,
            seed: 5,
        };
        let report = random_keys(&bench, &Device::Cpu, &mut |_| {}).unwrap();
        assert_eq!(report.rows, 700);
        assert_eq!(report.agreement.identical_rows, 700);
        assert_eq!(report.agreement.identical_rate, 1.0);
        assert!(report.host.rows_per_s > 0.0 && report.device_path.rows_per_s > 0.0);
        let kernel = report.kernel_path.as_ref().expect("the kernel takes k 8");
        assert_eq!(kernel.agreement.identical_rate, 1.0);
        assert_eq!(kernel.same_as_ops_rows, 700);
        assert!(kernel.speed.rows_per_s > 0.0);
        let table = report.table();
        assert!(table.contains("| host | 700 |"), "{table}");
        assert!(
            table.contains("| device, fused top-k (cpu) | 700 |"),
            "{table}"
        );
        // Totals over two SAEs keep the kernel's counts.
        let mut total = EncodeReport::default();
        total.add(&report);
        total.add(&report);
        let both = total.kernel_path.as_ref().unwrap();
        assert_eq!((total.rows, both.same_as_ops_rows), (1400, 1400));
        assert_eq!(both.agreement.identical_rate, 1.0);
    }

    #[test]
    fn a_shape_the_kernel_does_not_take_is_reported_not_failed() {
        let bench = RandomEncode {
            rows: 50,
            d_in: 8,
            dict: 256,
            k: 80,
            seed: 1,
        };
        let report = random_keys(&bench, &Device::Cpu, &mut |_| {}).unwrap();
        assert_eq!(report.agreement.identical_rows, 50);
        assert!(report.kernel_path.is_none());
        let why = report.kernel_refused.as_deref().unwrap();
        assert!(why.contains("k 80"), "{why}");
        assert!(report.table().contains("fused top-k not run"));
        let json = super::super::to_json(&report);
        assert!(json.contains("\"kernel_path\":null"), "{json}");
        assert!(json.contains("\"identical_rows\":50"), "{json}");
    }

    #[test]
    fn rows_that_differ_by_a_tie_are_told_from_real_differences() {
        let codes = |ids: Vec<u32>, acts: Vec<f32>| SparseCodes { k: 2, ids, acts };
        let a = codes(vec![1, 2, 1, 2, 1, 2], vec![3.0, 1.0, 3.0, 1.0, 3.0, 1.0]);
        // Row 0 the same; row 1 swaps feature 2 for 5 at an equal activation; row 2 for 7 at a
        // clearly lower one (and 2 is missing on the other side, where its kth is 0.5).
        let b = codes(vec![1, 2, 1, 5, 1, 7], vec![3.0, 1.0, 3.0, 1.0, 3.0, 0.5]);
        assert_eq!(agreement(&a, &b), (1, 1));
        // A slot that fired on one side only, at a activation near zero, is a tie with the ReLU.
        let c = codes(vec![1, 2], vec![3.0, 1e-6]);
        let d = codes(vec![1, 9], vec![3.0, 0.0]);
        assert_eq!(agreement(&c, &d), (0, 1));
    }
}
