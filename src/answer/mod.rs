//! Answers: a reader (the index model or another) reads the assembled evidence and the
//! question in its chat frame, once, and answers greedily in one of three modes: `free` text
//! whose sentences cite the evidence pieces they rest on, a `quote` copied verbatim from the
//! evidence with its place in the document, or `auto`, which picks one by the question. When
//! a signal of the reader's own (its best quote's first token, or its yes to "does the
//! evidence state the answer?") is below a threshold it says "not in the evidence" instead.
//! The only KV cache is that of this short prompt.

pub mod abstain;
pub mod cite;
pub mod error;
pub mod mode;
pub mod quote;
pub mod support;

use std::cell::OnceCell;
use std::collections::BTreeMap;

pub use abstain::{Abstain, AbstainSignal, Threshold};
pub use error::{AnswerError, Result};
pub use mode::AnswerMode;
pub use quote::{Passage, Quote, QuoteEnd};

use crate::model::{GenerateConfig, Logits, Model, Prefill, StopReason, TapRequest};
use crate::retrieve::{frame, Evidence};

/// What the reader says when its evidence does not support an answer.
pub const NOT_IN_EVIDENCE: &str = "not in the evidence";

/// Prompt tokens per prefill step; bounds the attention matrix.
const PREFILL_CHUNK: usize = 512;

/// Settings of an answer.
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    /// The most tokens to generate.
    pub max_new_tokens: usize,
    /// The most a caller may ask for.
    pub max_new_tokens_limit: usize,
    /// How the reader answers.
    pub mode: AnswerMode,
    /// Abstain ("not in the evidence") when the rule's signal is below its threshold; `None`
    /// never abstains.
    pub abstain: Option<Threshold>,
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
            mode: AnswerMode::default(),
            abstain: None,
        }
    }
}

/// A finished answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    /// The answer as delivered: the quote, the free text with its `[n]` citations, or
    /// [`NOT_IN_EVIDENCE`].
    pub answer: String,
    /// What the reader produced, without citations (empty when it abstained first).
    pub generated: String,
    /// The mode it answered in (`quote` or `free`; `auto` is resolved).
    pub mode: AnswerMode,
    /// The quote's provenance (quote mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote: Option<Quote>,
    /// Per sentence of a free answer, the `[n]` it rests on (0: none).
    pub citations: Vec<usize>,
    /// Whether the reader abstained: its evidence did not support an answer.
    pub not_in_evidence: bool,
    /// Log-probability of the quote's first token: how much the reader's answer rests on the
    /// evidence (`None` without evidence).
    pub confidence: Option<f32>,
    /// The reader's log-odds of yes against no that the evidence states the answer (`None`
    /// without evidence, or when the support signal was not asked for).
    pub support: Option<f32>,
    /// Tokens of the prompt (frame, evidence, question).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Why generation ended.
    pub stop: StopReason,
    /// Milliseconds of prefill and decoding.
    pub timings_ms: BTreeMap<String, f64>,
}

impl Answer {
    /// Returns "not in the evidence" for a question that has none, streamed through `on_text`.
    fn without_evidence(mode: AnswerMode, on_text: &mut dyn FnMut(&str) -> bool) -> Self {
        let stop = if on_text(NOT_IN_EVIDENCE) {
            StopReason::StopToken
        } else {
            StopReason::Cancelled
        };
        Answer {
            answer: NOT_IN_EVIDENCE.to_string(),
            generated: String::new(),
            mode,
            quote: None,
            citations: Vec::new(),
            not_in_evidence: true,
            confidence: None,
            support: None,
            prompt_tokens: 0,
            new_tokens: 0,
            stop,
            timings_ms: BTreeMap::new(),
        }
    }
}

/// Returns the prompt that asks `question` over `context` (or closed-book without one).
pub fn prompt(model: &Model, context: Option<&str>, question: &str) -> Result<Vec<u32>> {
    Ok(model.chat_prompt(Some(frame::SYSTEM), &frame::user_turn(context, question))?)
}

/// Returns the evidence's pieces as passages a quote may come from, labelled `[n]`.
pub fn passages(evidence: &Evidence) -> Vec<Passage> {
    evidence
        .spans
        .iter()
        .enumerate()
        .map(|(i, s)| Passage {
            text: s.text.clone(),
            doc_id: Some(s.doc_id.clone()),
            char_start: s.char_start,
            label: Some(i + 1),
        })
        .collect()
}

/// A prompt the reader has read: answered once or in several modes from one prefill.
pub struct Reading<'a> {
    reader: &'a Model,
    prefill: Prefill,
    passages: Vec<Passage>,
    question: String,
    confidence: Option<f32>,
    /// The support signal and the milliseconds it took, once asked for.
    support: OnceCell<(Option<f32>, f64)>,
}

/// Reads `question` over `context` (closed-book when `None`); quotes come from `passages`.
/// The context is text: the reader tokenizes it with its own tokenizer.
pub fn read<'a>(
    reader: &'a Model,
    context: Option<&str>,
    question: &str,
    passages: Vec<Passage>,
    config: &AnswerConfig,
) -> Result<Reading<'a>> {
    config.check()?;
    let ids = prompt(reader, context, question)?;
    let window = reader.config().context;
    if ids.len() + config.max_new_tokens > window {
        return Err(AnswerError::TooLong {
            prompt_tokens: ids.len(),
            max_new_tokens: config.max_new_tokens,
            context: window,
        });
    }
    let prefill = reader.prefill(&ids, PREFILL_CHUNK)?;
    let logits = host_logits(&prefill.logits)?;
    let confidence = quote::first_token(&logits, reader.tokenizer(), &passages).map(|t| t.1);
    Ok(Reading {
        reader,
        prefill,
        passages,
        question: question.to_string(),
        confidence,
        support: OnceCell::new(),
    })
}

fn host_logits(logits: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(logits
        .flatten_all()
        .and_then(|l| l.to_vec1::<f32>())
        .map_err(crate::model::ModelError::from)?)
}

impl Reading<'_> {
    /// Returns the log-probability of the quote's first token (`None` without evidence).
    pub fn confidence(&self) -> Option<f32> {
        self.confidence
    }

    /// Returns the support signal: after the prefill, the reader is asked in one more turn
    /// whether the evidence states the answer, and its log-odds of yes against no come back
    /// (`None` without evidence). Computed once, continuing a clone of the prefill's cache.
    pub fn support(&self) -> Result<Option<f32>> {
        if let Some(&(score, _)) = self.support.get() {
            return Ok(score);
        }
        let t = std::time::Instant::now();
        let score = if self.passages.is_empty() {
            None
        } else {
            Some(self.verify()?)
        };
        let _ = self.support.set((score, t.elapsed().as_secs_f64() * 1e3));
        Ok(score)
    }

    /// Returns the milliseconds the support signal took (`None` until asked for).
    pub fn support_ms(&self) -> Option<f64> {
        self.support.get().map(|&(_, ms)| ms)
    }

    fn verify(&self) -> Result<f32> {
        let reader = self.reader;
        let turn = support::turn(reader)?;
        let mut cache = self.prefill.cache.clone();
        let window = reader.config().context;
        if cache.len() + turn.len() > window {
            return Err(AnswerError::NoRoomToVerify {
                prompt_tokens: self.prefill.prompt_tokens,
                turn_tokens: turn.len(),
                context: window,
            });
        }
        let out = reader.transformer().forward(
            &turn,
            Some(&mut cache),
            &TapRequest::default(),
            Logits::Last,
        )?;
        let logits = out
            .logits
            .ok_or_else(|| crate::model::ModelError::Tokenizer("no logits".into()))?;
        let tok = reader.tokenizer();
        let spellings = support::Spellings::find(tok, tok.vocab_size())?;
        Ok(support::score(&host_logits(&logits)?, &spellings))
    }

    /// Whether `rule` makes the reader abstain here (computing the support signal when the
    /// rule compares it).
    pub fn abstains(&self, rule: Option<Threshold>) -> Result<bool> {
        let Some(rule) = rule else {
            return Ok(false);
        };
        let value = match rule.signal {
            AbstainSignal::Quote => self.confidence,
            AbstainSignal::Support => self.support()?,
        };
        Ok(rule.abstains(value))
    }

    /// Answers in `config.mode` (auto resolved by the question), calling `on_text` with each
    /// piece (`false` cancels); abstains first when `config.abstain` says so.
    pub fn answer(
        &self,
        config: &AnswerConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        let mode = config.mode.for_question(&self.question);
        let mut timings_ms = BTreeMap::new();
        timings_ms.insert("prefill".to_string(), self.prefill.ms);
        let mut answer = Answer {
            answer: String::new(),
            generated: String::new(),
            mode,
            quote: None,
            citations: Vec::new(),
            not_in_evidence: false,
            confidence: self.confidence,
            support: None,
            prompt_tokens: self.prefill.prompt_tokens,
            new_tokens: 0,
            stop: StopReason::StopToken,
            timings_ms,
        };
        let abstains = self.abstains(config.abstain)?;
        answer.support = self.support.get().and_then(|&(score, _)| score);
        if let Some(ms) = self.support_ms() {
            answer.timings_ms.insert("support".to_string(), ms);
        }
        let t = std::time::Instant::now();
        if abstains {
            answer.not_in_evidence = true;
            answer.answer = NOT_IN_EVIDENCE.to_string();
            if !on_text(NOT_IN_EVIDENCE) {
                answer.stop = StopReason::Cancelled;
            }
        } else if mode == AnswerMode::Quote {
            self.quote(config, &mut answer, on_text)?;
        } else {
            self.free(config, &mut answer, on_text)?;
        }
        answer
            .timings_ms
            .insert("decode".to_string(), t.elapsed().as_secs_f64() * 1e3);
        Ok(answer)
    }

    fn free(
        &self,
        config: &AnswerConfig,
        answer: &mut Answer,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<()> {
        let g = self.reader.generate_from(
            self.prefill.clone(),
            &GenerateConfig {
                max_new_tokens: config.max_new_tokens,
                prefill_chunk: PREFILL_CHUNK,
                ..GenerateConfig::default()
            },
            on_text,
        )?;
        answer.generated = g.text.trim().to_string();
        let cited = cite::cite(&answer.generated, &self.passages);
        answer.answer = cited.text;
        answer.citations = cited.citations;
        answer.new_tokens = g.tokens.len();
        answer.stop = g.stop;
        Ok(())
    }

    fn quote(
        &self,
        config: &AnswerConfig,
        answer: &mut Answer,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<()> {
        let reader = self.reader;
        let mut cache = self.prefill.cache.clone();
        let window = reader.config().context;
        let mut step = |id: u32| -> Result<Vec<f32>> {
            if cache.len() + 1 > window {
                return Err(AnswerError::TooLong {
                    prompt_tokens: self.prefill.prompt_tokens,
                    max_new_tokens: config.max_new_tokens,
                    context: window,
                });
            }
            host_logits(&reader.step(id, &mut cache)?)
        };
        let stops = reader.template().stop_tokens(reader.tokenizer());
        let q = quote::decode(
            host_logits(&self.prefill.logits)?,
            &mut step,
            reader.tokenizer(),
            &stops,
            &self.passages,
            config.max_new_tokens,
        )?;
        answer.new_tokens = q.tokens.len();
        answer.stop = match q.end {
            QuoteEnd::MaxTokens => StopReason::MaxTokens,
            QuoteEnd::StopToken | QuoteEnd::SentenceEnd | QuoteEnd::Diverged => {
                StopReason::StopToken
            }
        };
        if let Some(quote) = q.quote {
            answer.generated = quote.text.clone();
            answer.answer = quote.text.clone();
            if !on_text(&quote.text) {
                answer.stop = StopReason::Cancelled;
            }
            answer.quote = Some(quote);
        }
        Ok(())
    }
}

/// Answers from `evidence` with `reader`, calling `on_text` with each new piece (`false`
/// cancels).
pub fn answer(
    reader: &Model,
    evidence: &Evidence,
    config: &AnswerConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Answer> {
    if evidence.context.is_empty() {
        // Nothing was retrieved (a filter passed no document, an empty scope): no answer can
        // rest on evidence, and the reader, asked anyway, would answer closed-book and cite
        // nothing. It is not asked.
        return Ok(Answer::without_evidence(
            config.mode.for_question(&evidence.question),
            on_text,
        ));
    }
    read(
        reader,
        Some(evidence.context.as_str()),
        &evidence.question,
        passages(evidence),
        config,
    )?
    .answer(config, on_text)
}

/// Answers `question` over `context` (closed-book when `None`); quotes come from the context
/// as one passage without a document.
pub fn answer_prompt(
    reader: &Model,
    context: Option<&str>,
    question: &str,
    config: &AnswerConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Answer> {
    let passages = context
        .map(|c| Passage {
            text: c.to_string(),
            doc_id: None,
            char_start: 0,
            label: None,
        })
        .into_iter()
        .collect();
    read(reader, context, question, passages, config)?.answer(config, on_text)
}
