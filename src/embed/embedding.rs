use super::error::{EmbedError, Result};

/// The number of dimensions of an embedding: all-MiniLM-L6-v2's hidden size.
pub const DIM: usize = 384;

/// A sentence embedding: [`DIM`] floats, of unit L2 norm when an [`Embedder`](super::Embedder)
/// made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding([f32; DIM]);

/// Independent partial sums: lets the compiler keep eight lanes in one SIMD register instead
/// of one strictly ordered float sum.
const LANES: usize = 8;

impl Embedding {
    /// Wraps `DIM` floats as they are (no normalisation).
    pub fn new(values: [f32; DIM]) -> Self {
        Self(values)
    }

    /// Returns the floats.
    pub fn as_array(&self) -> &[f32; DIM] {
        &self.0
    }

    /// Returns the dot product with `other`: the cosine when both have unit norm.
    pub fn dot(&self, other: &Embedding) -> f32 {
        let mut sums = [0f32; LANES];
        for (a, b) in self.0.chunks_exact(LANES).zip(other.0.chunks_exact(LANES)) {
            for lane in 0..LANES {
                sums[lane] += a[lane] * b[lane];
            }
        }
        sums.iter().sum()
    }

    /// Returns the L2 norm.
    pub fn norm(&self) -> f32 {
        self.dot(self).sqrt()
    }

    /// Returns the cosine similarity with `other`; 0 when either is all zeros.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        let norms = self.norm() * other.norm();
        if norms == 0.0 {
            0.0
        } else {
            self.dot(other) / norms
        }
    }
}

// DIM is a multiple of LANES, so `dot` misses no tail.
const _: () = assert!(DIM % LANES == 0);

impl TryFrom<&[f32]> for Embedding {
    type Error = EmbedError;

    fn try_from(values: &[f32]) -> Result<Self> {
        let array = <[f32; DIM]>::try_from(values)
            .map_err(|_| EmbedError::Dimensions { got: values.len() })?;
        Ok(Self(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis(i: usize, scale: f32) -> Embedding {
        let mut v = [0.0; DIM];
        v[i] = scale;
        Embedding::new(v)
    }

    #[test]
    fn dot_and_cosine_agree_with_a_plain_sum() {
        let a: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.11).cos()).collect();
        let (ea, eb) = (
            Embedding::try_from(&a[..]).unwrap(),
            Embedding::try_from(&b[..]).unwrap(),
        );
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
        assert!((f64::from(ea.dot(&eb)) - plain).abs() < 1e-4);
        let norms = a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * b.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((ea.cosine(&eb) - ea.dot(&eb) / norms).abs() < 1e-6);
        assert!((ea.cosine(&ea) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn cosine_ignores_scale_and_zero_vectors_score_zero() {
        assert_eq!(basis(3, 2.0).cosine(&basis(3, 5.0)), 1.0);
        assert_eq!(basis(3, 2.0).cosine(&basis(4, 5.0)), 0.0);
        assert_eq!(basis(3, 2.0).cosine(&Embedding::new([0.0; DIM])), 0.0);
        assert_eq!(basis(3, 2.0).norm(), 2.0);
    }

    #[test]
    fn a_slice_of_another_length_is_refused() {
        let err = Embedding::try_from(&[0.5f32; 768][..]).unwrap_err();
        assert_eq!(err.to_string(), "an embedding has 384 dimensions, got 768");
    }
}
