//! SAE speed: training on synthetic vectors of the default set's shape (`bench sae-train`), and
//! one training step with the hand-written sparse gradients against the same forward and
//! backward through candle's autograd, plus the encoder at the scan's shape (`bench sae-step`).

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::Serialize;

use super::{BenchError, Result};
use crate::model::{device_name, random_tokens};
use crate::sae::topk::top_k_into;
use crate::sae::{train, TopKSae, TrainConfig, TrainLength, TrainReport};

/// What `bench sae-train` trains.
#[derive(Debug, Clone)]
pub struct TrainBench {
    /// Training vectors.
    pub samples: usize,
    /// Input dimension.
    pub d_in: usize,
    /// Dictionary size.
    pub dict: usize,
    /// Features kept per vector.
    pub k: usize,
    /// Passes over the vectors.
    pub epochs: u32,
    /// Vectors per optimiser step.
    pub batch_size: usize,
    /// Seed of the data and the training.
    pub seed: u64,
}

/// `bench sae-train`: trains one SAE on synthetic sparse vectors on `device` and returns its
/// report (speed, final FVU, dead latents) as JSON.
pub fn train_speed(bench: &TrainBench, device: &Device) -> Result<serde_json::Value> {
    let data = sparse_vectors(bench.samples, bench.d_in, bench.seed)?;
    let cfg = TrainConfig {
        dict_size: Some(bench.dict),
        k: bench.k,
        length: TrainLength::Epochs(bench.epochs),
        batch_size: bench.batch_size,
        seed: bench.seed,
        ..Default::default()
    };
    let (_, report) = crate::sae::train::train_on(&data, &cfg, device, &mut |_| {})?;
    Ok(serde_json::json!({
        "device": device_name(device),
        "samples": bench.samples,
        "epochs": bench.epochs,
        "report": report,
    }))
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

/// What `bench sae-step` times (on the CPU).
#[derive(Debug, Clone)]
pub struct StepBench {
    /// Input dimension (SmolLM2's head dim: 64).
    pub d_in: usize,
    /// Dictionary size.
    pub dict: usize,
    /// Features kept per vector.
    pub k: usize,
    /// Vectors per step.
    pub batch: usize,
    /// Hand-written training steps timed.
    pub steps: u64,
    /// Autograd steps timed.
    pub autograd_steps: usize,
    /// Rows the encoder is timed on (a scan's batch of keys).
    pub encode_rows: usize,
    /// Seed of the data and the training.
    pub seed: u64,
}

/// What `bench sae-step` measured, in milliseconds per step or call.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The settings.
    #[serde(skip)]
    pub bench: StepBench,
    /// One hand-written training step: encoder, top-k, AuxK, sparse backward, Adam.
    pub handwritten_step_ms: f64,
    /// The same forward and backward through autograd (top-k mask given, no AuxK, no Adam).
    pub autograd_step_ms: f64,
    /// One encoder call on `encode_rows` rows.
    pub encode_ms: f64,
    /// The training run behind `handwritten_step_ms`.
    pub train: TrainReport,
}

/// Times training steps with the hand-written gradients, the same forward and backward pass
/// through candle's autograd, and the encoder, all on the CPU.
///
/// The autograd side does less work (no AuxK, no optimiser, top-k selected outside the graph
/// since autograd cannot express it as cheaply), so the ratio is a lower bound.
pub fn step_speed(bench: &StepBench) -> Result<StepReport> {
    let &StepBench {
        d_in,
        dict,
        k,
        batch,
        ..
    } = bench;
    if d_in == 0 || dict == 0 || k == 0 || k > dict || batch == 0 || bench.steps == 0 {
        return Err(BenchError::Input(format!(
            "bench sae-step needs d_in, dict, batch and steps above 0 and 0 < k <= dict \
             (d_in {d_in}, dict {dict}, k {k}, batch {batch}, steps {})",
            bench.steps
        )));
    }
    let x = sparse_vectors(batch * 4, d_in, bench.seed)?;
    let cfg = TrainConfig {
        dict_size: Some(dict),
        k,
        batch_size: batch,
        length: TrainLength::Steps(bench.steps),
        // Low enough that AuxK runs (and is timed) for latents silent over four steps.
        dead_after_tokens: 4 * batch as u64,
        seed: bench.seed,
        ..TrainConfig::default()
    };
    let (sae, report) = train(&x, &cfg, &mut |_| {})?;
    let handwritten_step_ms = 1e3 * report.elapsed_secs / report.steps as f64;

    let rows = x.narrow(0, 0, batch)?;
    let reps = bench.autograd_steps.max(1);
    let t = Instant::now();
    for _ in 0..reps {
        autograd_step(&sae, &rows, k)?;
    }
    let autograd_step_ms = 1e3 * t.elapsed().as_secs_f64() / reps as f64;

    let scan = x.narrow(0, 0, bench.encode_rows.clamp(1, batch * 4))?;
    let calls = 20;
    let t = Instant::now();
    for _ in 0..calls {
        sae.encode(&scan)?;
    }
    let encode_ms = 1e3 * t.elapsed().as_secs_f64() / f64::from(calls);
    Ok(StepReport {
        bench: bench.clone(),
        handwritten_step_ms,
        autograd_step_ms,
        encode_ms,
        train: report,
    })
}

/// One forward and backward pass of the reconstruction loss through autograd, the top-k mask
/// chosen by the same selection the trainer uses.
fn autograd_step(sae: &TopKSae, batch: &Tensor, k: usize) -> Result<()> {
    let (rows, m) = (batch.dim(0)?, sae.w_enc().dim(0)?);
    let w_enc = Var::from_tensor(sae.w_enc())?;
    let b_enc = Var::from_tensor(sae.b_enc())?;
    let w_dec = Var::from_tensor(sae.w_dec())?;
    let b_dec = Var::from_tensor(sae.b_dec())?;
    let pre = batch
        .broadcast_sub(&b_dec)?
        .matmul(&w_enc.t()?)?
        .broadcast_add(&b_enc)?;
    let pre_v = pre.flatten_all()?.to_vec1::<f32>()?;
    let mut mask = vec![0f32; rows * m];
    let (mut ids, mut vals) = (vec![0u32; k], vec![0f32; k]);
    let zeros = vec![0f32; m];
    for r in 0..rows {
        top_k_into(&pre_v[r * m..(r + 1) * m], &zeros, &mut ids, &mut vals);
        for &j in &ids {
            mask[r * m + j as usize] = 1.0;
        }
    }
    let mask = Tensor::from_vec(mask, (rows, m), &Device::Cpu)?;
    let z = (pre.relu()? * mask)?;
    let x_hat = z.matmul(&w_dec)?.broadcast_add(&b_dec)?;
    let loss = (batch - x_hat)?.sqr()?.sum_all()?;
    let grads = loss.backward()?;
    if grads.get(w_enc.as_tensor()).is_none() {
        return Err(BenchError::Input(
            "autograd gave no encoder gradient".into(),
        ));
    }
    Ok(())
}

impl StepReport {
    /// Returns the measurements as a Markdown table.
    pub fn table(&self) -> String {
        let b = &self.bench;
        let shape = format!(
            "batch {}, d_in {}, dict {}, k {}",
            b.batch, b.d_in, b.dict, b.k
        );
        format!(
            "| measurement | shape | ms |\n|---|---|---:|\n\
             | hand-written training step (top-k, AuxK, sparse backward, Adam; mean of {} steps) | {shape} | {:.1} |\n\
             | autograd forward + backward (top-k mask given; no AuxK, no Adam; mean of {}) | {shape} | {:.1} |\n\
             | autograd / hand-written | | {:.1}x |\n\
             | encode (one scan batch of keys) | {} x {}, dict {}, k {} | {:.2} |\n",
            self.train.steps,
            self.handwritten_step_ms,
            b.autograd_steps.max(1),
            self.autograd_step_ms,
            self.autograd_step_ms / self.handwritten_step_ms,
            b.encode_rows,
            b.d_in,
            b.dict,
            b.k,
            self.encode_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_step_bench_measures_both_sides() {
        let bench = StepBench {
            d_in: 8,
            dict: 32,
            k: 4,
            batch: 64,
            steps: 3,
            autograd_steps: 2,
            encode_rows: 50,
            seed: 1,
        };
        let r = step_speed(&bench).unwrap();
        assert_eq!(r.train.steps, 3);
        assert!(r.handwritten_step_ms > 0.0 && r.autograd_step_ms > 0.0 && r.encode_ms > 0.0);
        let t = r.table();
        assert!(t.contains("| autograd / hand-written | |"), "{t}");
        assert!(t.contains("| 50 x 8, dict 32, k 4 |"), "{t}");
        let bad = StepBench { k: 40, ..bench };
        assert!(step_speed(&bad)
            .unwrap_err()
            .to_string()
            .contains("k <= dict"));
    }

    #[test]
    fn sparse_vectors_are_sums_of_a_few_directions() {
        let v = sparse_vectors(10, 4, 2).unwrap();
        assert_eq!(v.dims(), &[10, 4]);
        let again = sparse_vectors(10, 4, 2).unwrap();
        assert_eq!(
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            again.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
