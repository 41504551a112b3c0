//! Answers: the model reads the assembled evidence and the question in its chat frame and
//! answers greedily, streaming tokens. The only KV cache is that of this short prompt.

pub mod error;

use std::collections::BTreeMap;

pub use error::{AnswerError, Result};

use crate::model::{GenerateConfig, Model, StopReason};
use crate::retrieve::{frame, Evidence};

/// Settings of an answer.
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    /// The most tokens to generate.
    pub max_new_tokens: usize,
    /// The most a caller may ask for.
    pub max_new_tokens_limit: usize,
}

impl AnswerConfig {
    /// Refuses a `max_new_tokens` of 0 or over the limit (callers with long work ahead check
    /// this first, so a bad flag fails before the work, not after it).
    pub fn check(&self) -> Result<()> {
        if self.max_new_tokens == 0 || self.max_new_tokens > self.max_new_tokens_limit {
            return Err(AnswerError::MaxNewTokens(format!(
                "{} is not between 1 and {}",
                self.max_new_tokens, self.max_new_tokens_limit
            )));
        }
        Ok(())
    }
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 96,
            max_new_tokens_limit: 2048,
        }
    }
}

/// A finished answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    /// The answer text.
    pub answer: String,
    /// Tokens of the prompt (frame, evidence, question).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Why generation ended.
    pub stop: StopReason,
    /// Milliseconds of prefill and decoding.
    pub timings_ms: BTreeMap<String, f64>,
}

/// Returns the prompt that asks `question` over `context` (or closed-book without one).
pub fn prompt(model: &Model, context: Option<&str>, question: &str) -> Result<Vec<u32>> {
    Ok(model.chat_prompt(Some(frame::SYSTEM), &frame::user_turn(context, question))?)
}

/// Answers from `evidence`, calling `on_text` with each new piece (`false` cancels).
pub fn answer(
    model: &Model,
    evidence: &Evidence,
    config: &AnswerConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Answer> {
    let context = (!evidence.context.is_empty()).then_some(evidence.context.as_str());
    answer_prompt(model, context, &evidence.question, config, on_text)
}

/// Answers `question` over `context` (closed-book when `None`).
pub fn answer_prompt(
    model: &Model,
    context: Option<&str>,
    question: &str,
    config: &AnswerConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Answer> {
    config.check()?;
    let ids = prompt(model, context, question)?;
    let window = model.config().context;
    if ids.len() + config.max_new_tokens > window {
        return Err(AnswerError::TooLong {
            prompt_tokens: ids.len(),
            max_new_tokens: config.max_new_tokens,
            context: window,
        });
    }
    let g = model.generate(
        &ids,
        &GenerateConfig {
            max_new_tokens: config.max_new_tokens,
            ..GenerateConfig::default()
        },
        on_text,
    )?;
    let mut timings_ms = BTreeMap::new();
    timings_ms.insert("prefill".to_string(), g.prefill_ms);
    timings_ms.insert("decode".to_string(), g.decode_ms);
    Ok(Answer {
        answer: g.text.trim().to_string(),
        prompt_tokens: g.prompt_tokens,
        new_tokens: g.tokens.len(),
        stop: g.stop,
        timings_ms,
    })
}
