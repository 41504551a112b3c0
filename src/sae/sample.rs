//! A bounded uniform sample of a stream of vectors, for training SAEs on a corpus far larger than
//! memory.

use candle_core::{Device, Tensor};

use super::error::{Result, SaeError};
use super::rng::SplitMix64;

/// Keeps a uniform random sample of at most `capacity` vectors from a stream (Algorithm R,
/// seeded, so the same stream and seed keep the same vectors).
#[derive(Debug, Clone)]
pub struct Reservoir {
    d_in: usize,
    capacity: usize,
    seen: u64,
    data: Vec<f32>,
    rng: SplitMix64,
}

impl Reservoir {
    /// Returns an empty reservoir for vectors of `d_in` floats holding at most `capacity`.
    pub fn new(d_in: usize, capacity: usize, seed: u64) -> Result<Self> {
        if d_in == 0 || capacity == 0 {
            return Err(SaeError::InvalidConfig(format!(
                "reservoir needs positive d_in and capacity, got {d_in} and {capacity}"
            )));
        }
        if capacity.checked_mul(d_in).is_none() {
            return Err(SaeError::InvalidConfig(format!(
                "reservoir of {capacity} vectors of {d_in} floats overflows"
            )));
        }
        Ok(Self {
            d_in,
            capacity,
            seen: 0,
            data: Vec::new(),
            rng: SplitMix64::new(seed),
        })
    }

    /// Offers one vector of `d_in` floats to the sample.
    pub fn push(&mut self, v: &[f32]) -> Result<()> {
        if v.len() != self.d_in {
            return Err(SaeError::Shape {
                what: "reservoir vector",
                expected: format!("{} floats", self.d_in),
                found: format!("{} floats", v.len()),
            });
        }
        self.seen += 1;
        let held = self.len();
        if held < self.capacity {
            if self.data.len() == self.data.capacity() {
                // Grow by doubling, but never past the capacity: memory stays within
                // `capacity * d_in` floats.
                let limit = self.capacity * self.d_in;
                let grow = self
                    .data
                    .len()
                    .max(1024 * self.d_in)
                    .min(limit - self.data.len());
                self.data.reserve_exact(grow);
            }
            self.data.extend_from_slice(v);
        } else {
            // Item number `seen` replaces a random slot with probability capacity / seen.
            let slot = self.rng.below(self.seen) as usize;
            if slot < self.capacity {
                self.data[slot * self.d_in..(slot + 1) * self.d_in].copy_from_slice(v);
            }
        }
        Ok(())
    }

    /// Offers every row of a row-major `[n, d_in]` buffer, in order.
    pub fn push_rows(&mut self, rows: &[f32]) -> Result<()> {
        if rows.len() % self.d_in != 0 {
            return Err(SaeError::Shape {
                what: "reservoir rows",
                expected: format!("a multiple of {} floats", self.d_in),
                found: format!("{} floats", rows.len()),
            });
        }
        for v in rows.chunks_exact(self.d_in) {
            self.push(v)?;
        }
        Ok(())
    }

    /// Returns the number of vectors held.
    pub fn len(&self) -> usize {
        self.data.len() / self.d_in
    }

    /// Returns true when no vector has been pushed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Returns the number of vectors offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Returns the maximum number of vectors held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Returns the held vectors as a row-major slice.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Returns the sample as a `[len, d_in]` f32 tensor on the CPU, without copying.
    pub fn into_tensor(self) -> Result<Tensor> {
        let rows = self.len();
        Ok(Tensor::from_vec(
            self.data,
            (rows, self.d_in),
            &Device::Cpu,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_exactly_capacity_items_and_samples_uniformly() {
        let (items, capacity, runs, buckets) = (5_000usize, 500usize, 200u64, 10usize);
        let mut counts = vec![0u64; buckets];
        for seed in 0..runs {
            let mut r = Reservoir::new(1, capacity, seed).unwrap();
            for i in 0..items {
                r.push(&[i as f32]).unwrap();
            }
            assert_eq!(r.len(), capacity);
            assert_eq!(r.seen(), items as u64);
            let mut held: Vec<usize> = r.as_slice().iter().map(|&v| v as usize).collect();
            held.sort_unstable();
            held.dedup();
            assert_eq!(held.len(), capacity, "an item was kept twice");
            for i in held {
                counts[i * buckets / items] += 1;
            }
        }
        // Each bucket of 500 consecutive items expects 500 * 0.1 * 200 = 10,000 inclusions;
        // the binomial sd is about 95, so 3% (300) is more than 3 sd.
        let expected = (runs as usize * capacity / buckets) as f64;
        for (b, &c) in counts.iter().enumerate() {
            let rel = (c as f64 - expected).abs() / expected;
            assert!(rel < 0.03, "bucket {b}: {c} inclusions against {expected}");
        }
    }

    #[test]
    fn short_streams_are_kept_whole_and_in_order() {
        let mut r = Reservoir::new(2, 10, 1).unwrap();
        r.push_rows(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(r.len(), 2);
        let t = r.into_tensor().unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
    }

    #[test]
    fn same_seed_keeps_the_same_sample() {
        let run = |seed| {
            let mut r = Reservoir::new(1, 50, seed).unwrap();
            for i in 0..1000 {
                r.push(&[i as f32]).unwrap();
            }
            r.as_slice().to_vec()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut r = Reservoir::new(3, 4, 0).unwrap();
        assert!(matches!(r.push(&[1.0]), Err(SaeError::Shape { .. })));
        assert!(matches!(
            r.push_rows(&[1.0; 4]),
            Err(SaeError::Shape { .. })
        ));
        assert!(Reservoir::new(0, 4, 0).is_err());
    }
}
