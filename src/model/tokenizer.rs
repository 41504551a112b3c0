//! The byte-level BPE tokenizer, built from a GGUF file's own vocabulary and merges.
//!
//! Control tokens (`<|im_start|>` and the like) are never produced from text: prompts place
//! them by ID, so a document that happens to contain their spelling stays plain text.

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::config::string;
use super::error::{ModelError, Result};

const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token type of control tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Token IDs of a text with the char range (Unicode scalar values, end exclusive) each covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

/// Bytes of text the tokenizer encodes at once at most, where the text has line starts to cut
/// at (see [`TextTokenizer::encode`]).
pub const ENCODE_PIECE_BYTES: usize = 1 << 16;

/// Returns where the piece of `text` starting at byte `start` ends: the text's end if that is
/// within `max` bytes, else the last line start (just after a `\n` that a non-whitespace char
/// follows) in the second half of the next `max` bytes, else the text's end.
fn piece_end(text: &str, start: usize, max: usize) -> usize {
    if text.len() - start <= max {
        return text.len();
    }
    let bytes = text.as_bytes();
    let lo = start + max / 2;
    let mut i = start + max;
    debug_assert!(i < text.len());
    while i > lo {
        // bytes[i - 1] == b'\n' makes i a char boundary (UTF-8 never reuses ASCII bytes).
        if bytes[i - 1] == b'\n' && text[i..].chars().next().is_some_and(|c| !c.is_whitespace()) {
            return i;
        }
        i -= 1;
    }
    text.len()
}

/// A model's tokenizer.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Each token's bytes (empty for control tokens, which decode to nothing).
    token_bytes: Vec<Vec<u8>>,
    tokens: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl TextTokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Self> {
        let err = |m: String| ModelError::Tokenizer(format!("{}: {m}", path.display()));
        let model = string(ct, path, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = string_array(ct, "tokenizer.ggml.tokens").map_err(err)?;
        let merges = string_array(ct, "tokenizer.ggml.merges")
            .map_err(err)?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(err(format!("invalid merge `{m}`"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| err(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let pre = string(ct, path, "tokenizer.ggml.pre").unwrap_or_else(|_| "gpt2".into());
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            "smollm" => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            "qwen2" => {
                inner
                    .with_normalizer(Some(NFC))
                    .map_err(|e| err(e.to_string()))?;
                split_then_bytes(REGEX_QWEN2).map_err(err)?
            }
            "llama3" | "llama-bpe" | "smaug-bpe" => split_then_bytes(REGEX_LLAMA3).map_err(err)?,
            _ => ByteLevel::new(false, true, true).into(),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));

        let unbyte = byte_decoder();
        let token_bytes = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .map(|(t, &ty)| {
                if ty == TOKEN_TYPE_CONTROL {
                    Vec::new()
                } else {
                    // Tokens outside the byte alphabet (user-defined) decode as their UTF-8.
                    t.chars()
                        .map(|c| unbyte.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .unwrap_or_else(|| t.as_bytes().to_vec())
                }
            })
            .collect();
        let id = |key: &str| {
            ct.metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .filter(|&i| (i as usize) < tokens.len())
        };
        Ok(Self {
            inner,
            token_bytes,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            tokens,
        })
    }

    /// Encodes plain text (no special tokens) with char offsets per token.
    ///
    /// Long text is encoded in pieces of about [`ENCODE_PIECE_BYTES`] cut at line starts
    /// (where every supported pre-tokenizer splits anyway, so the tokens are the same): the
    /// tokenizer's per-token working set (token strings, words, masks) then stays bounded,
    /// and only IDs and offsets grow with the document.
    pub fn encode(&self, text: &str) -> Result<Tokenized> {
        self.encode_in_pieces(text, ENCODE_PIECE_BYTES)
    }

    /// Encodes like [`TextTokenizer::encode`] with pieces of about `max_piece_bytes` (the
    /// tokens do not depend on it; `usize::MAX` encodes the text at once).
    pub fn encode_in_pieces(&self, text: &str, max_piece_bytes: usize) -> Result<Tokenized> {
        let mut out = Tokenized::default();
        let (mut start, mut start_char) = (0, 0);
        while start < text.len() {
            let end = piece_end(text, start, max_piece_bytes);
            let piece = &text[start..end];
            let enc = self
                .inner
                .encode_char_offsets(piece, false)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            out.ids.extend_from_slice(enc.get_ids());
            out.offsets.extend(
                enc.get_offsets()
                    .iter()
                    .map(|&(a, b)| (a + start_char, b + start_char)),
            );
            start_char += piece.chars().count();
            start = end;
        }
        Ok(out)
    }

    /// Encodes plain text, returning IDs only.
    pub fn encode_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(text)?.ids)
    }

    /// Decodes IDs to text; control tokens decode to nothing, broken UTF-8 to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.bytes_of(i))
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Returns the ID of a token spelled exactly `token` (for example `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Returns the spelling of a token as stored in the vocabulary.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Returns the beginning-of-sequence token, if the model declares one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Returns the end-of-sequence token, if the model declares one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Returns the vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Returns a decoder that turns a stream of IDs into text pieces on UTF-8 boundaries.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
        }
    }

    /// Returns the bytes a token stands for (nothing for control tokens and unknown IDs).
    pub fn bytes_of(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// Turns generated token IDs into text as soon as they form whole characters.
pub struct StreamDecoder<'a> {
    tokenizer: &'a TextTokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tokenizer.bytes_of(id));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete sequence at the end waits for the next token; garbage does not.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let done: Vec<u8> = self.pending.drain(..valid).collect();
        String::from_utf8_lossy(&done).into_owned()
    }

    /// Returns whatever is left, lossily.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

fn split_then_bytes(regex: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| e.to_string())?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])
    .into())
}

fn string_array(ct: &gguf_file::Content, key: &str) -> std::result::Result<Vec<String>, String> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| format!("missing `{key}`"))?;
    v.to_vec()
        .map_err(|e| format!("`{key}`: {e}"))?
        .iter()
        .map(|s| s.to_string().cloned().map_err(|e| format!("`{key}`: {e}")))
        .collect()
}

/// GPT-2's byte-level alphabet, inverted: the char standing for each byte.
fn byte_decoder() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let c = if printable.contains(&b) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        map.insert(char::from_u32(c).expect("byte alphabet is valid"), b);
    }
    map
}
