//! Models with seeded random weights at a real model's shape, for benchmarks and GPU parity
//! runs: their weights need not travel (a Llama-3-8B shape is 16 GB in bf16), and the same
//! seed gives the same weights on every device.

use candle_core::{Device, Shape, Tensor};
use rayon::prelude::*;

use super::config::{Architecture, ModelConfig};
use super::error::{ModelError, Result};

/// A model shape: the configuration plus the MLP width (which GGUF gives by tensor shape).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RandomShape {
    pub config: ModelConfig,
    /// Hidden size of the gated MLP.
    pub ffn: usize,
}

impl RandomShape {
    /// The shapes known by name.
    pub const NAMES: [&'static str; 3] = ["llama3-8b", "smollm2-135m", "tiny"];

    /// Returns a known shape: `llama3-8b` (Meta-Llama-3-8B), `smollm2-135m` (the embedded
    /// default model) or `tiny` (for tests).
    pub fn named(name: &str) -> Result<Self> {
        let llama = |name: &str, layers, hidden, heads, kv_heads, ffn, vocab, context, rope| Self {
            config: ModelConfig {
                arch: Architecture::Llama,
                name: format!("random {name}"),
                layers,
                hidden,
                heads,
                kv_heads,
                head_dim: hidden / heads,
                vocab,
                context,
                rope_base: rope,
                rms_eps: 1e-5,
            },
            ffn,
        };
        Ok(match name {
            "llama3-8b" => llama(name, 32, 4096, 32, 8, 14336, 128_256, 8192, 500_000.0),
            "smollm2-135m" => llama(name, 30, 576, 9, 3, 1536, 49_152, 8192, 100_000.0),
            "tiny" => llama(name, 4, 64, 4, 2, 96, 256, 1024, 10_000.0),
            _ => {
                return Err(ModelError::UnknownModel {
                    name: name.into(),
                    known: Self::NAMES.join(", "),
                })
            }
        })
    }

    /// Returns the weights of the projections of one block (attention and MLP).
    pub fn block_params(&self) -> u64 {
        let c = &self.config;
        let (h, q, kv) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        (h * q * 2 + h * kv * 2 + 3 * h * self.ffn) as u64
    }
}

/// Elements generated from one seed; chunks are generated in parallel.
const CHUNK: usize = 1 << 20;

/// Returns a tensor of `shape` with values uniform in `[-a, a]`, `a = std * sqrt(3)`, from
/// `(seed, stream)`, built on the host and moved to `device` (identical on every device).
pub fn uniform_tensor(
    seed: u64,
    stream: u64,
    shape: impl Into<Shape>,
    std: f32,
    device: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let a = std * 3f32.sqrt();
    let mut data = vec![0f32; n];
    data.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let mut state = mix(seed ^ mix(stream.wrapping_add(1) ^ mix(i as u64 + 1)));
        for v in out.iter_mut() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            // 24 random bits to [0, 1), then to [-a, a).
            let u = (mix(state) >> 40) as f32 / (1u64 << 24) as f32;
            *v = (2.0 * u - 1.0) * a;
        }
    });
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_device(device)?)
}

/// Returns `n` token IDs below `vocab` from `seed` (a random document).
pub fn random_tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut state = mix(seed);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            (mix(state) % vocab as u64) as u32
        })
        .collect()
}

/// The SplitMix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_tensors_are_seeded_and_scaled() {
        let a = uniform_tensor(1, 2, (300, 7000), 0.02, &Device::Cpu).unwrap();
        let b = uniform_tensor(1, 2, (300, 7000), 0.02, &Device::Cpu).unwrap();
        let c = uniform_tensor(1, 3, (300, 7000), 0.02, &Device::Cpu).unwrap();
        let (va, vb, vc) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let var = va.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / va.len() as f64;
        assert!((var.sqrt() - 0.02).abs() < 1e-3, "std {}", var.sqrt());
        let toks = random_tokens(5, 1000, 50);
        assert!(toks.iter().all(|&t| t < 50));
        assert_eq!(toks, random_tokens(5, 1000, 50));
    }

    #[test]
    fn known_shapes() {
        let s = RandomShape::named("llama3-8b").unwrap();
        assert_eq!(s.config.head_dim, 128);
        // 32 blocks of 218M weights: the 7B of Llama-3-8B without its embeddings.
        assert_eq!(s.block_params(), 218_103_808);
        assert!(RandomShape::named("gpt5").is_err());
    }
}
