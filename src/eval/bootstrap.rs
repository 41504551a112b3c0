//! Paired bootstrap intervals: how sure a difference between two methods measured on the same
//! questions is. Questions are resampled with replacement, both methods' outcomes travel
//! together, and the 2.5th and 97.5th percentiles of the resampled mean difference bound a 95%
//! interval (Efron's percentile interval; a difference whose interval excludes 0 is the one
//! worth reporting).

use crate::sae::rng::SplitMix64;

/// A mean difference and its 95% interval, in the units of the outcomes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    /// The observed mean difference.
    pub mean: f64,
    /// 2.5th percentile of the resampled differences.
    pub low: f64,
    /// 97.5th percentile of the resampled differences.
    pub high: f64,
}

/// Returns the paired bootstrap 95% interval of `mean(a) - mean(b)` over `resamples`
/// resamples; `a[i]` and `b[i]` are the two methods' outcomes on question `i`. `None` when
/// there are no questions or the lists differ in length.
pub fn paired_difference(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Option<Interval> {
    if a.is_empty() || a.len() != b.len() || resamples == 0 {
        return None;
    }
    let n = a.len();
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = diff.iter().sum::<f64>() / n as f64;
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let s: f64 = (0..n).map(|_| diff[rng.below(n as u64) as usize]).sum();
            s / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Some(Interval {
        mean,
        low: at(0.025),
        high: at(0.975),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_that_wins_everywhere_has_an_interval_above_zero() {
        let a = vec![1.0; 50];
        let b: Vec<f64> = (0..50).map(|i| f64::from(i % 2 == 0)).collect();
        let i = paired_difference(&a, &b, 2000, 7).unwrap();
        assert!((i.mean - 0.5).abs() < 1e-12);
        assert!(i.low > 0.3 && i.high <= 0.7, "{i:?}");
    }

    #[test]
    fn equal_methods_straddle_zero_and_bad_input_gives_none() {
        let a: Vec<f64> = (0..40).map(|i| f64::from(i % 3 == 0)).collect();
        let b: Vec<f64> = (0..40).map(|i| f64::from(i % 3 == 1)).collect();
        let i = paired_difference(&a, &b, 2000, 1).unwrap();
        assert!(i.low < 0.0 && i.high > 0.0, "{i:?}");
        assert!(paired_difference(&a, &b[1..], 100, 1).is_none());
        assert!(paired_difference(&[], &[], 100, 1).is_none());
    }
}
