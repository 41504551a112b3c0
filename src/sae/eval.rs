//! Measuring an SAE on held-out vectors: FVU, dead features, L0.

use candle_core::Tensor;
use serde::Serialize;

use super::error::{Result, SaeError};
use super::topk::{check_k, F32View, TopKSae};
use super::vecops::total_variance;

/// The k values [`evaluate`] reports FVU at when the caller has no preference.
pub const DEFAULT_EVAL_KS: [usize; 4] = [4, 8, 16, 32];

/// Rows encoded per pass, bounding the memory of an evaluation over many vectors.
const EVAL_CHUNK_ROWS: usize = 8192;

/// Holds the FVU obtained when encoding keeps `k` features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KFvu {
    /// Features kept per vector.
    pub k: usize,
    /// Fraction of variance unexplained at that k.
    pub fvu: f32,
}

/// Summarises an SAE's quality on a set of vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Vectors evaluated.
    pub samples: usize,
    /// Input dimension.
    pub d_in: usize,
    /// Dictionary size.
    pub dict_size: usize,
    /// The SAE's own k.
    pub k: usize,
    /// FVU at the SAE's own k: `sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`.
    pub fvu: f32,
    /// Fraction of features that never fired (at the SAE's own k) on these vectors.
    pub dead_fraction: f32,
    /// Mean number of features firing per vector (at most k).
    pub mean_l0: f32,
    /// FVU at each requested k, in the order requested.
    pub fvu_at_k: Vec<KFvu>,
}

/// Returns the fraction of variance of `x` (`[n, d_in]`) the SAE leaves unexplained.
pub fn fvu(sae: &TopKSae, x: &Tensor) -> Result<f32> {
    Ok(evaluate(sae, x, &[])?.fvu)
}

/// Returns the FVU of `x` when encoding keeps `k` features instead of the SAE's own k.
pub fn fvu_at_k(sae: &TopKSae, x: &Tensor, k: usize) -> Result<f32> {
    let report = evaluate(sae, x, &[k])?;
    Ok(report.fvu_at_k.first().map_or(report.fvu, |r| r.fvu))
}

/// Returns the fraction of features that never fire on `x`.
pub fn dead_fraction(sae: &TopKSae, x: &Tensor) -> Result<f32> {
    Ok(evaluate(sae, x, &[])?.dead_fraction)
}

/// Returns the mean number of features firing per row of `x`.
pub fn mean_l0(sae: &TopKSae, x: &Tensor) -> Result<f32> {
    Ok(evaluate(sae, x, &[])?.mean_l0)
}

/// Measures FVU, dead fraction and mean L0 at the SAE's k, and FVU at each of `ks`, in one pass.
///
/// Codes are sorted by activation, so the top-k' features are a prefix of the top-k for any
/// k' <= k: one encoding at the largest k serves every k.
pub fn evaluate(sae: &TopKSae, x: &Tensor, ks: &[usize]) -> Result<EvalReport> {
    let x = sae.check_input(x)?;
    let n = x.dim(0)?;
    let d = sae.d_in();
    for &k in ks {
        check_k(k, sae.dict_size())?;
    }
    let view = F32View::new(&x)?;
    let data = view.as_slice();
    let tv = total_variance(data, d);
    if tv.is_nan() || tv <= 0.0 {
        return Err(SaeError::DegenerateSamples {
            reason: format!("{n} vectors with zero total variance"),
        });
    }

    // Position 0 is the SAE's own k; the caller's ks follow.
    let all_ks: Vec<usize> = std::iter::once(sae.k()).chain(ks.iter().copied()).collect();
    let k_max = all_ks.iter().copied().max().unwrap_or(sae.k());
    let mut sq_err = vec![0f64; all_ks.len()];
    let mut fired = vec![false; sae.dict_size()];
    let mut l0 = 0u64;
    let mut x_hat = vec![0f32; d];

    let mut start = 0;
    while start < n {
        let rows = EVAL_CHUNK_ROWS.min(n - start);
        let codes = sae.encode_with_k(&x.narrow(0, start, rows)?, k_max)?;
        for r in 0..rows {
            let ids = &codes.ids[r * k_max..(r + 1) * k_max];
            let acts = &codes.acts[r * k_max..(r + 1) * k_max];
            let target = &data[(start + r) * d..(start + r + 1) * d];
            for (err, &k) in sq_err.iter_mut().zip(&all_ks) {
                sae.decode_row_into(&ids[..k], &acts[..k], &mut x_hat);
                *err += x_hat
                    .iter()
                    .zip(target)
                    .map(|(&a, &b)| f64::from(a - b).powi(2))
                    .sum::<f64>();
            }
            for (&id, &a) in ids[..sae.k()].iter().zip(&acts[..sae.k()]) {
                if a > 0.0 {
                    fired[id as usize] = true;
                    l0 += 1;
                }
            }
        }
        start += rows;
    }

    let dead = fired.iter().filter(|&&f| !f).count();
    Ok(EvalReport {
        samples: n,
        d_in: d,
        dict_size: sae.dict_size(),
        k: sae.k(),
        fvu: (sq_err[0] / tv) as f32,
        dead_fraction: dead as f32 / sae.dict_size() as f32,
        mean_l0: (l0 as f64 / n as f64) as f32,
        fvu_at_k: all_ks[1..]
            .iter()
            .zip(&sq_err[1..])
            .map(|(&k, &e)| KFvu {
                k,
                fvu: (e / tv) as f32,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::sae::topk::axes_sae;

    fn rows(v: &[[f32; 3]]) -> Tensor {
        let flat: Vec<f32> = v.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (v.len(), 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn exact_codes_give_zero_fvu_and_fewer_features_do_not() {
        let sae = axes_sae();
        let x = rows(&[
            [2.0, 0.5, 0.0],
            [-3.0, 0.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, 1.0, 0.0],
        ]);
        let report = evaluate(&sae, &x, &[1, 2, 4]).unwrap();
        assert_eq!(report.fvu, 0.0);
        assert_eq!(report.dead_fraction, 0.0);
        // Rows 0 and 3 use two features, rows 1 and 2 one.
        assert_eq!(report.mean_l0, 1.5);
        assert_eq!(report.samples, 4);
        let ks: Vec<usize> = report.fvu_at_k.iter().map(|r| r.k).collect();
        assert_eq!(ks, vec![1, 2, 4]);
        assert!(report.fvu_at_k[0].fvu > 0.0);
        assert_eq!(report.fvu_at_k[1].fvu, report.fvu);
        assert_eq!(report.fvu_at_k[2].fvu, 0.0);
        assert_eq!(fvu_at_k(&sae, &x, 1).unwrap(), report.fvu_at_k[0].fvu);
        assert_eq!(fvu(&sae, &x).unwrap(), 0.0);
        assert_eq!(mean_l0(&sae, &x).unwrap(), 1.5);
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"fvu_at_k\""));
    }

    #[test]
    fn unused_features_count_as_dead() {
        let sae = axes_sae();
        // Nothing points along z.
        let x = rows(&[[2.0, 0.5, 0.0], [-3.0, 1.0, 0.0]]);
        assert_eq!(dead_fraction(&sae, &x).unwrap(), 0.25);
    }

    #[test]
    fn degenerate_inputs_are_refused() {
        let sae = axes_sae();
        let same = rows(&[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]);
        assert!(matches!(
            fvu(&sae, &same),
            Err(SaeError::DegenerateSamples { .. })
        ));
        let x = rows(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        assert!(matches!(
            evaluate(&sae, &x, &[5]),
            Err(SaeError::InvalidConfig(_))
        ));
        let wrong = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(fvu(&sae, &wrong), Err(SaeError::Shape { .. })));
    }
}
