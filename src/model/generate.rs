//! Greedy decoding with a KV cache over the short answer prompt.

use std::time::Instant;

use candle_core::Tensor;

use super::error::{ModelError, Result};
use super::transformer::{argmax_rows, KvCache, Logits, TapRequest};
use super::Model;

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    /// The most tokens to generate.
    pub max_new_tokens: usize,
    /// Tokens that end the answer, besides the template's own.
    pub extra_stop_tokens: Vec<u32>,
    /// Prompt tokens per prefill step; bounds the attention matrix.
    pub prefill_chunk: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            extra_stop_tokens: Vec::new(),
            prefill_chunk: 512,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    MaxTokens,
    ContextFull,
    Cancelled,
}

/// A finished generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// A prompt read into a KV cache: the logits of its last position and the cache to continue
/// from. A clone shares the cached tensors, so one prompt can be answered several ways.
#[derive(Debug, Clone)]
pub struct Prefill {
    /// The cache over the prompt.
    pub cache: KvCache,
    /// Logits of the prompt's last position, `[1, vocab]`, f32.
    pub logits: Tensor,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Milliseconds the prefill took.
    pub ms: f64,
}

impl Model {
    /// Reads `prompt` into a fresh KV cache in steps of `chunk` tokens.
    pub fn prefill(&self, prompt: &[u32], chunk: usize) -> Result<Prefill> {
        let context = self.config().context;
        if prompt.is_empty() {
            return Err(ModelError::Tokenizer("empty prompt".into()));
        }
        if prompt.len() >= context {
            return Err(ModelError::WindowTooLong {
                tokens: prompt.len(),
                context,
            });
        }
        let taps = TapRequest::default();
        let mut cache = KvCache::default();
        let t0 = Instant::now();
        let mut logits = None;
        for piece in prompt.chunks(chunk.max(1)) {
            let out = self
                .transformer()
                .forward(piece, Some(&mut cache), &taps, Logits::Last)?;
            logits = out.logits;
        }
        let logits = logits.ok_or_else(|| ModelError::Tokenizer("no logits".into()))?;
        Ok(Prefill {
            cache,
            logits,
            prompt_tokens: prompt.len(),
            ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Runs one token after `cache` and returns the next position's logits, `[1, vocab]`.
    pub fn step(&self, token: u32, cache: &mut KvCache) -> Result<Tensor> {
        let out = self.transformer().forward(
            &[token],
            Some(cache),
            &TapRequest::default(),
            Logits::Last,
        )?;
        out.logits
            .ok_or_else(|| ModelError::Tokenizer("no logits".into()))
    }

    /// Generates greedily after `prompt`, calling `on_text` with each decoded piece.
    ///
    /// `on_text` returns `false` to stop early (a client went away, say).
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerateConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let prefill = self.prefill(prompt, config.prefill_chunk)?;
        self.generate_from(prefill, config, on_text)
    }

    /// Generates greedily after a prefilled prompt (see [`Model::generate`]).
    pub fn generate_from(
        &self,
        prefill: Prefill,
        config: &GenerateConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let context = self.config().context;
        let mut stops = self.template().stop_tokens(self.tokenizer());
        stops.extend(&config.extra_stop_tokens);
        let Prefill {
            mut cache,
            logits,
            prompt_tokens,
            ms: prefill_ms,
        } = prefill;
        let mut logits = Some(logits);
        let t1 = Instant::now();
        let mut decoder = self.tokenizer().stream_decoder();
        let mut tokens = Vec::new();
        let mut text = String::new();
        let stop = loop {
            // Checked first, so that 0 new tokens means a prefill alone.
            if tokens.len() >= config.max_new_tokens {
                break StopReason::MaxTokens;
            }
            let Some(l) = logits.take() else {
                break StopReason::StopToken;
            };
            let next = argmax_rows(&l)?[0];
            if stops.contains(&next) {
                break StopReason::StopToken;
            }
            tokens.push(next);
            let piece = decoder.push(next);
            text.push_str(&piece);
            if !piece.is_empty() && !on_text(&piece) {
                break StopReason::Cancelled;
            }
            if tokens.len() >= config.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if cache.len() + 1 > context {
                break StopReason::ContextFull;
            }
            logits = Some(self.step(next, &mut cache)?);
        };
        let rest = decoder.finish();
        if !rest.is_empty() {
            text.push_str(&rest);
            on_text(&rest);
        }
        Ok(Generation {
            text,
            tokens,
            prompt_tokens,
            stop,
            prefill_ms,
            decode_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    }
}
