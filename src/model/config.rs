use std::path::Path;

use candle_core::quantized::gguf_file;

use super::error::{ModelError, Result};

/// The transformer families s3mem can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama and Mistral: no attention biases, interleaved RoPE (GGUF permutes q/k for it).
    Llama,
    /// Qwen2: q/k/v biases, half-split ("NeoX") RoPE.
    Qwen2,
}

/// Shape and constants of a model, read from GGUF metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub name: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rms_eps: f64,
}

impl ModelConfig {
    /// Bytes a full-context KV cache holds per token with `bytes_per_value`-byte values: keys
    /// and values of every layer and KV head.
    pub fn kv_cache_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value
    }

    /// Reads the configuration from a GGUF header.
    pub fn from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Self> {
        let arch_name = string(ct, path, "general.architecture")?;
        let arch = match arch_name.as_str() {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: path.into(),
                    arch: arch_name,
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let heads = uint(ct, path, &key("attention.head_count"))?;
        let hidden = uint(ct, path, &key("embedding_length"))?;
        let head_dim = match ct.metadata.get(&key("attention.key_length")) {
            Some(v) => v.to_u32().map_err(|e| corrupt(path, e))? as usize,
            None => hidden / heads.max(1),
        };
        let vocab = match ct.metadata.get("tokenizer.ggml.tokens") {
            Some(v) => v.to_vec().map_err(|e| corrupt(path, e))?.len(),
            None => return Err(missing(path, "tokenizer.ggml.tokens")),
        };
        let config = Self {
            arch,
            name: string(ct, path, "general.name").unwrap_or_else(|_| arch_name.clone()),
            layers: uint(ct, path, &key("block_count"))?,
            hidden,
            heads,
            kv_heads: uint(ct, path, &key("attention.head_count_kv"))?,
            head_dim,
            vocab,
            context: uint(ct, path, &key("context_length"))?,
            rope_base: match ct.metadata.get(&key("rope.freq_base")) {
                Some(v) => v.to_f32().map_err(|e| corrupt(path, e))?,
                None => 10_000.0,
            },
            rms_eps: ct
                .metadata
                .get(&key("attention.layer_norm_rms_epsilon"))
                .ok_or_else(|| missing(path, &key("attention.layer_norm_rms_epsilon")))?
                .to_f32()
                .map_err(|e| corrupt(path, e))? as f64,
        };
        if config.heads == 0
            || config.kv_heads == 0
            || config.heads % config.kv_heads != 0
            || config.head_dim % 2 != 0
            || config.heads * config.head_dim != config.hidden
        {
            return Err(ModelError::Corrupt {
                path: path.into(),
                reason: format!(
                    "inconsistent attention shape: {} heads, {} kv heads, head dim {}, hidden {}",
                    config.heads, config.kv_heads, config.head_dim, config.hidden
                ),
            });
        }
        Ok(config)
    }

    /// Returns how many query heads share one KV head.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    }
}

fn missing(path: &Path, key: &str) -> ModelError {
    ModelError::MissingMetadata {
        path: path.into(),
        key: key.into(),
    }
}

pub(crate) fn string(ct: &gguf_file::Content, path: &Path, key: &str) -> Result<String> {
    ct.metadata
        .get(key)
        .ok_or_else(|| missing(path, key))?
        .to_string()
        .cloned()
        .map_err(|e| corrupt(path, e))
}

pub(crate) fn uint(ct: &gguf_file::Content, path: &Path, key: &str) -> Result<usize> {
    use gguf_file::Value as V;
    match ct.metadata.get(key).ok_or_else(|| missing(path, key))? {
        V::U8(v) => Ok(*v as usize),
        V::U16(v) => Ok(*v as usize),
        V::U32(v) => Ok(*v as usize),
        V::U64(v) => Ok(*v as usize),
        V::I32(v) if *v >= 0 => Ok(*v as usize),
        V::I64(v) if *v >= 0 => Ok(*v as usize),
        other => Err(corrupt(
            path,
            format!("`{key}` is not an unsigned integer: {other:?}"),
        )),
    }
}
