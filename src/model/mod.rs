//! The model layer: loads a GGUF model, tokenizes with char offsets, runs the transformer with
//! key/query taps, streams documents through bounded windows and generates answers.

mod attention;
mod chat;
mod config;
mod device;
mod error;
pub mod fetch;
mod generate;
mod heads;
pub mod pypi;
pub mod random;
mod scan;
mod softmax;
mod tokenizer;
mod transformer;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Device;
use sha2::{Digest, Sha256};

pub use chat::ChatTemplate;
pub use config::{Architecture, ModelConfig};
pub use device::{device_name, gpu_memory, reset_gpu_peak, DeviceSpec, GpuMemory};
pub use error::{ModelError, Result};
pub use generate::{GenerateConfig, Generation, Prefill, StopReason};
pub use heads::RetrievalHead;
pub use random::{random_tokens, RandomShape};
pub use scan::{
    per_chunk, scan_document_batches, ChunkTaps, ScanConfig, ScanStats, TapPlace, WindowPlan,
};
pub use tokenizer::{StreamDecoder, TextTokenizer, Tokenized, ENCODE_PIECE_BYTES};
pub use transformer::{
    argmax_rows, ForwardOutput, KvCache, LayerSet, LayerTap, Logits, TapRequest, Transformer,
    WeightFormat,
};

/// A loaded model: transformer, tokenizer and chat template from one GGUF file.
pub struct Model {
    path: PathBuf,
    transformer: Transformer,
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    fingerprint: OnceLock<String>,
    scan_batch: usize,
}

/// Windows per forward pass of a scan on a GPU by default: about 4,600 tokens at chunk 512,
/// rows enough for full-rate matmuls. Measured on an H200 with a Llama-3-8B shape (docs/gpu.md):
/// 54% MFU at 8 windows, 50% at 16, 42% at 32 and 64.
pub const GPU_SCAN_BATCH: usize = 8;

impl Model {
    /// Loads a GGUF file with the default weight format for it on `device`
    /// ([`WeightFormat::default_for`]).
    pub fn load_default(path: &Path, device: &Device) -> Result<(Self, WeightFormat)> {
        let ct = read_gguf(path)?;
        let quantized = ct.tensor_infos.values().any(|t| {
            !matches!(
                t.ggml_dtype,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            )
        });
        let format = WeightFormat::default_for(device, quantized);
        Ok((Self::load(path, format, device)?, format))
    }

    /// Loads a GGUF file; weights are held in `format` on `device`.
    pub fn load(path: &Path, format: WeightFormat, device: &Device) -> Result<Self> {
        let io = |source| ModelError::Io {
            path: path.into(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let ct = gguf_file::Content::read(&mut reader).map_err(|e| ModelError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let config = ModelConfig::from_gguf(&ct, path)?;
        let tokenizer = TextTokenizer::from_gguf(&ct, path)?;
        let template_text = config::string(&ct, path, "tokenizer.chat_template").ok();
        let template = ChatTemplate::detect(&tokenizer, template_text.as_deref());
        let transformer = Transformer::from_content(&ct, reader, path, config, format, device)?;
        Ok(Self {
            path: path.into(),
            transformer,
            tokenizer,
            template,
            fingerprint: OnceLock::new(),
            scan_batch: default_scan_batch(device),
        })
    }

    /// Returns how many windows a scan puts through the model at once.
    pub fn scan_batch(&self) -> usize {
        self.scan_batch
    }

    /// Sets how many windows a scan puts through the model at once (at least 1). Results do
    /// not depend on it (up to the rounding of differently shaped matmuls); memory grows with it.
    pub fn set_scan_batch(&mut self, windows: usize) {
        self.scan_batch = windows.max(1);
    }

    /// Returns the file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the model's shape and constants.
    pub fn config(&self) -> &ModelConfig {
        self.transformer.config()
    }

    /// Returns the transformer.
    pub fn transformer(&self) -> &Transformer {
        &self.transformer
    }

    /// Returns the tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Returns the chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Returns the sha256 of the GGUF file (hex), computed once: SAEs and indexes record it.
    pub fn fingerprint(&self) -> Result<&str> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f);
        }
        let digest = sha256_file(&self.path)?;
        Ok(self.fingerprint.get_or_init(|| digest))
    }

    /// Returns the IDs of a chat prompt asking `user`, ready for [`Model::generate`].
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<Vec<u32>> {
        self.template.prompt(&self.tokenizer, system, user)
    }
}

/// Returns the default scan batch on `device`: one window on the CPU (where a batch gains
/// nothing), [`GPU_SCAN_BATCH`] on a GPU.
pub fn default_scan_batch(device: &Device) -> usize {
    if device.is_cpu() {
        1
    } else {
        GPU_SCAN_BATCH
    }
}

/// Returns the sha256 of a file as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| ModelError::Io {
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex_digest(&hasher.finalize()))
}

/// Returns bytes as lowercase hex (digests).
pub fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a GGUF file's header (metadata and tensor table, not the weights).
fn read_gguf(path: &Path) -> Result<gguf_file::Content> {
    let mut reader = BufReader::new(File::open(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?);
    gguf_file::Content::read(&mut reader).map_err(|e| ModelError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })
}
