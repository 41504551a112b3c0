use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use candle_transformers::models::bert::BertModel;
use tokenizers::{Encoding, Tokenizer};

use super::error::{EmbedError, Result};
use super::files::{self, ModelFiles};
use super::Embedding;

/// Texts per forward pass of [`Embedder::embed`]: sentence-transformers' default batch size.
pub const DEFAULT_BATCH: NonZeroUsize = NonZeroUsize::new(32).unwrap();

/// The smallest token count a mean divides by (sentence-transformers' clamp): never reached,
/// since every text has at least [CLS] and [SEP].
const MIN_TOKENS: f64 = 1e-9;
/// The smallest norm a vector is divided by (torch's `normalize` eps).
const MIN_NORM: f64 = 1e-12;

/// A loaded sentence-embedding model: all-MiniLM-L6-v2 run by candle-transformers' BERT.
pub struct Embedder {
    bert: BertModel,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    pad_id: u32,
    device: Device,
    fingerprint: String,
}

// The service shares one embedder between request threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Embedder>();
};

impl Embedder {
    /// Loads the model folder `dir` (model.safetensors, tokenizer.json, config.json) on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// Loads the model folder `dir` with its weights on `device`.
    pub fn load_on(dir: &Path, device: &Device) -> Result<Self> {
        let files = ModelFiles::in_dir(dir)?;
        let config = files::read_config(&files.config)?;
        let bert = files::load_weights(&files.weights, &config, device)?;
        let tokenizer = files::load_tokenizer(&files.tokenizer, &config)?;
        let fingerprint = files::fingerprint(dir, &files.weights)?;
        Ok(Self {
            fingerprint,
            bert,
            tokenizer,
            tokenizer_path: files.tokenizer,
            // Padded positions are masked out of attention and pooling: any id in range does.
            pad_id: u32::try_from(config.pad_token_id).unwrap_or(0),
            device: device.clone(),
        })
    }

    /// Returns the model's name and weights digest (`{folder}@{16 hex digits of sha256}`):
    /// what stored vectors name as the model that made them.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Returns the device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Returns the token ids the model sees for `text`: [CLS], word pieces, [SEP], truncated at
    /// [`MAX_TOKENS`](super::MAX_TOKENS).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(&[text])?.remove(0).get_ids().to_vec())
    }

    /// Returns the embedding of each text, in order, [`DEFAULT_BATCH`] texts per forward pass.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>> {
        self.embed_batched(texts, DEFAULT_BATCH)
    }

    /// Returns the embedding of each text, in order, at most `batch` texts per forward pass.
    ///
    /// Texts are grouped by length, as sentence-transformers does, so a batch pads little.
    pub fn embed_batched(&self, texts: &[&str], batch: NonZeroUsize) -> Result<Vec<Embedding>> {
        let encodings = self.encode(texts)?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let mut embeddings: Vec<Option<Embedding>> = vec![None; encodings.len()];
        for group in order.chunks(batch.get()) {
            let rows: Vec<&Encoding> = group.iter().map(|&i| &encodings[i]).collect();
            for (&i, embedding) in group.iter().zip(self.forward(&rows)?) {
                embeddings[i] = Some(embedding);
            }
        }
        Ok(embeddings.into_iter().flatten().collect())
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer {
                path: self.tokenizer_path.clone(),
                reason: e.to_string(),
            })
    }

    /// Runs one batch, padded on the right to its longest text, and pools each text's tokens.
    fn forward(&self, rows: &[&Encoding]) -> Result<Vec<Embedding>> {
        let width = rows.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad_id; rows.len() * width];
        let mut mask = vec![0u32; rows.len() * width];
        for (row, encoding) in rows.iter().enumerate() {
            let start = row * width;
            ids[start..start + encoding.len()].copy_from_slice(encoding.get_ids());
            mask[start..start + encoding.len()].fill(1);
        }
        let shape = (rows.len(), width);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let hidden = self.bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        // Mean over the real tokens only, then unit L2 norm (sentence-transformers' Pooling
        // and Normalize modules for this model).
        let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
        let sums = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.maximum(MIN_TOKENS)?;
        let means = sums.broadcast_div(&counts)?;
        let norms = means.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(MIN_NORM)?;
        let unit = means.broadcast_div(&norms)?;
        unit.to_vec2::<f32>()?
            .iter()
            .map(|row| Embedding::try_from(&row[..]))
            .collect()
    }
}
