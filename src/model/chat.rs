//! Chat prompt frames, built as token IDs so control tokens never come from user text.

use super::error::{ModelError, Result};
use super::tokenizer::TextTokenizer;

/// The prompt format a model was trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen2).
    ChatMl {
        im_start: u32,
        im_end: u32,
        default_system: String,
    },
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3).
    Llama3 {
        begin: Option<u32>,
        header_start: u32,
        header_end: u32,
        eot: u32,
    },
    /// No chat format: the question is completed as plain text.
    Plain,
}

impl ChatTemplate {
    /// Picks the template from the control tokens the vocabulary has and the GGUF's template text.
    pub fn detect(tokenizer: &TextTokenizer, template_text: Option<&str>) -> Self {
        let id = |t: &str| tokenizer.token_id(t);
        if let (Some(im_start), Some(im_end)) = (id("<|im_start|>"), id("<|im_end|>")) {
            let text = template_text.unwrap_or_default();
            let default_system = if text.contains("You are Qwen") {
                "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
            } else if text.contains("SmolLM") {
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
            } else {
                "You are a helpful assistant."
            };
            return Self::ChatMl {
                im_start,
                im_end,
                default_system: default_system.into(),
            };
        }
        if let (Some(header_start), Some(header_end), Some(eot)) = (
            id("<|start_header_id|>"),
            id("<|end_header_id|>"),
            id("<|eot_id|>"),
        ) {
            return Self::Llama3 {
                begin: id("<|begin_of_text|>"),
                header_start,
                header_end,
                eot,
            };
        }
        Self::Plain
    }

    /// Returns the IDs of a one-turn prompt that ends where the assistant's answer begins.
    pub fn prompt(
        &self,
        tok: &TextTokenizer,
        system: Option<&str>,
        user: &str,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let text = |ids: &mut Vec<u32>, s: &str| -> Result<()> {
            ids.extend(tok.encode_ids(s)?);
            Ok(())
        };
        match self {
            Self::ChatMl {
                im_start,
                im_end,
                default_system,
            } => {
                let system = system.unwrap_or(default_system);
                ids.push(*im_start);
                text(&mut ids, &format!("system\n{system}"))?;
                ids.push(*im_end);
                text(&mut ids, "\n")?;
                ids.push(*im_start);
                text(&mut ids, &format!("user\n{user}"))?;
                ids.push(*im_end);
                text(&mut ids, "\n")?;
                ids.push(*im_start);
                text(&mut ids, "assistant\n")?;
            }
            Self::Llama3 {
                begin,
                header_start,
                header_end,
                eot,
            } => {
                ids.extend(begin);
                for (role, body) in [("system", system), ("user", Some(user))] {
                    let Some(body) = body else { continue };
                    ids.push(*header_start);
                    text(&mut ids, role)?;
                    ids.push(*header_end);
                    text(&mut ids, &format!("\n\n{body}"))?;
                    ids.push(*eot);
                }
                ids.push(*header_start);
                text(&mut ids, "assistant")?;
                ids.push(*header_end);
                text(&mut ids, "\n\n")?;
            }
            Self::Plain => {
                ids.extend(tok.bos());
                if let Some(s) = system {
                    text(&mut ids, &format!("{s}\n\n"))?;
                }
                text(&mut ids, &format!("{user}\nAnswer:"))?;
            }
        }
        if ids.is_empty() {
            return Err(ModelError::Tokenizer("empty prompt".into()));
        }
        Ok(ids)
    }

    /// Returns the tokens that end an answer in this format.
    pub fn stop_tokens(&self, tok: &TextTokenizer) -> Vec<u32> {
        let mut stops: Vec<u32> = tok.eos().into_iter().collect();
        match self {
            Self::ChatMl { im_end, .. } => stops.push(*im_end),
            Self::Llama3 { eot, .. } => stops.push(*eot),
            Self::Plain => {}
        }
        stops.extend(tok.token_id("<|endoftext|>"));
        stops.sort_unstable();
        stops.dedup();
        stops
    }
}
