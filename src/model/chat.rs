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
        let mut out = Ids::new(tok);
        match self {
            Self::ChatMl { default_system, .. } => {
                self.turn(&mut out, "system", system.unwrap_or(default_system))?;
                self.turn(&mut out, "user", user)?;
                self.open_reply(&mut out)?;
            }
            Self::Llama3 { begin, .. } => {
                out.ids.extend(begin);
                if let Some(system) = system {
                    self.turn(&mut out, "system", system)?;
                }
                self.turn(&mut out, "user", user)?;
                self.open_reply(&mut out)?;
            }
            Self::Plain => {
                out.ids.extend(tok.bos());
                if let Some(s) = system {
                    out.text(&format!("{s}\n\n"))?;
                }
                out.text(&format!("{user}\nAnswer:"))?;
            }
        }
        if out.ids.is_empty() {
            return Err(ModelError::Tokenizer("empty prompt".into()));
        }
        Ok(out.ids)
    }

    /// Returns the IDs that continue a [`ChatTemplate::prompt`] already read: the assistant's
    /// turn it opened is closed empty, `user` is asked in a new turn and the assistant's reply
    /// is opened, so a question about the prompt continues its KV cache instead of redoing it.
    pub fn follow_up(&self, tok: &TextTokenizer, user: &str) -> Result<Vec<u32>> {
        let mut out = Ids::new(tok);
        match self {
            Self::ChatMl { im_end, .. } => {
                out.ids.push(*im_end);
                out.text("\n")?;
            }
            Self::Llama3 { eot, .. } => out.ids.push(*eot),
            Self::Plain => {
                out.text(&format!("\n\n{user}\nAnswer:"))?;
                return Ok(out.ids);
            }
        }
        self.turn(&mut out, "user", user)?;
        self.open_reply(&mut out)?;
        Ok(out.ids)
    }

    /// Appends a whole turn of `role` saying `body` (chat formats only).
    fn turn(&self, out: &mut Ids<'_>, role: &str, body: &str) -> Result<()> {
        match self {
            Self::ChatMl {
                im_start, im_end, ..
            } => {
                out.ids.push(*im_start);
                out.text(&format!("{role}\n{body}"))?;
                out.ids.push(*im_end);
                out.text("\n")
            }
            Self::Llama3 {
                header_start,
                header_end,
                eot,
                ..
            } => {
                out.ids.push(*header_start);
                out.text(role)?;
                out.ids.push(*header_end);
                out.text(&format!("\n\n{body}"))?;
                out.ids.push(*eot);
                Ok(())
            }
            Self::Plain => out.text(body),
        }
    }

    /// Appends the opening of the assistant's turn, where its answer begins.
    fn open_reply(&self, out: &mut Ids<'_>) -> Result<()> {
        match self {
            Self::ChatMl { im_start, .. } => {
                out.ids.push(*im_start);
                out.text("assistant\n")
            }
            Self::Llama3 {
                header_start,
                header_end,
                ..
            } => {
                out.ids.push(*header_start);
                out.text("assistant")?;
                out.ids.push(*header_end);
                out.text("\n\n")
            }
            Self::Plain => Ok(()),
        }
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

/// Prompt IDs as they are built: text through the tokenizer, control tokens by ID.
struct Ids<'a> {
    tok: &'a TextTokenizer,
    ids: Vec<u32>,
}

impl<'a> Ids<'a> {
    fn new(tok: &'a TextTokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
        }
    }

    fn text(&mut self, s: &str) -> Result<()> {
        self.ids.extend(self.tok.encode_ids(s)?);
        Ok(())
    }
}
