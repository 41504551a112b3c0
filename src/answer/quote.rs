//! Quoted answers: greedy decoding constrained so that the answer is a verbatim substring of
//! the evidence, returned with where it stands.
//!
//! At each step the reader's candidates are taken in order of probability; a token is taken
//! only if the answer it makes still occurs in some passage of the evidence (at a char
//! boundary). The first passage where the finished answer occurs gives its provenance.

use super::Result;

/// Candidates looked at per step once the quote has begun: past these the reader wants
/// something the evidence does not hold, and the quote ends.
const CANDIDATES: usize = 40;

/// Where a token's text comes from: the reader's tokenizer, or a test's table.
pub trait Vocabulary {
    /// Returns the bytes token `id` stands for (empty for control tokens).
    fn bytes(&self, id: u32) -> &[u8];
}

impl Vocabulary for crate::model::TextTokenizer {
    fn bytes(&self, id: u32) -> &[u8] {
        self.bytes_of(id)
    }
}

/// One passage of evidence a quote may come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// The passage's text, exactly as in its document.
    pub text: String,
    /// The document it comes from (`None` for text without one).
    pub doc_id: Option<String>,
    /// Char offset of the passage in its document.
    pub char_start: usize,
    /// Its `[n]` in the evidence, when it has one.
    pub label: Option<usize>,
}

/// A quote and where it stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quote {
    /// The quoted text (`document[char_start..char_end]`).
    pub text: String,
    /// The document, when the passage has one.
    pub doc_id: Option<String>,
    /// First char in the document.
    pub char_start: usize,
    /// Char after the last.
    pub char_end: usize,
    /// The `[n]` of the evidence piece it comes from, when it has one.
    pub label: Option<usize>,
}

/// Why a quote ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteEnd {
    /// The reader's most probable fitting candidate was its end token.
    StopToken,
    /// The quote reached a sentence end or a line break.
    SentenceEnd,
    /// None of the reader's best candidates continues the quote.
    Diverged,
    /// The length limit.
    MaxTokens,
}

/// A finished quote decoding.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quoted {
    /// The quote, `None` when no token of the vocabulary occurs in the evidence.
    pub quote: Option<Quote>,
    /// The tokens taken.
    pub tokens: Vec<u32>,
    /// Log-probability of each token taken under the reader's full distribution.
    pub logprobs: Vec<f32>,
    /// Why it ended.
    pub end: QuoteEnd,
}

impl Quoted {
    /// Returns the mean log-probability of the quote's tokens (`-inf` without any).
    pub fn mean_logprob(&self) -> f32 {
        if self.logprobs.is_empty() {
            return f32::NEG_INFINITY;
        }
        self.logprobs.iter().sum::<f32>() / self.logprobs.len() as f32
    }
}

/// Returns `logits` as log-probabilities (log-softmax).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|&l| l - log_sum).collect()
}

/// Token ids by descending logit.
fn by_probability(logits: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    order
}

/// A place where the quote so far occurs: a passage and the byte where the quote starts.
type Occurrence = (usize, usize);

/// Returns where `bytes` occurs in the passages, at char boundaries.
fn occurrences(passages: &[Passage], bytes: &[u8]) -> Vec<Occurrence> {
    let mut out = Vec::new();
    for (p, passage) in passages.iter().enumerate() {
        let text = passage.text.as_bytes();
        if bytes.len() > text.len() {
            continue;
        }
        for start in 0..=text.len() - bytes.len() {
            if text[start..].starts_with(bytes) && passage.text.is_char_boundary(start) {
                out.push((p, start));
            }
        }
    }
    out
}

/// Returns the occurrences that the quote of `len` bytes so far extends by `bytes`.
fn extended(passages: &[Passage], at: &[Occurrence], len: usize, bytes: &[u8]) -> Vec<Occurrence> {
    at.iter()
        .copied()
        .filter(|&(p, start)| passages[p].text.as_bytes()[start + len..].starts_with(bytes))
        .collect()
}

/// Whether a first token would begin a quote with nothing but whitespace (it says nothing,
/// and occurs everywhere).
fn blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// The most probable token that can begin a quote, with its log-probability.
pub fn first_token(
    logits: &[f32],
    vocab: &dyn Vocabulary,
    passages: &[Passage],
) -> Option<(u32, f32, Vec<Occurrence>)> {
    let logprobs = log_softmax(logits);
    by_probability(logits).into_iter().find_map(|id| {
        let bytes = vocab.bytes(id);
        if bytes.is_empty() || blank(bytes) {
            return None;
        }
        let at = occurrences(passages, bytes);
        (!at.is_empty()).then(|| (id, logprobs[id as usize], at))
    })
}

/// Whether the quote so far ends a sentence where it stands in its passage: `.`, `!` or `?`
/// followed by whitespace or the passage's end (so "U.S." or "3.5" go on).
fn sentence_end(passage: &str, start: usize, quote: &[u8]) -> bool {
    let trimmed = quote.trim_ascii_end();
    if !matches!(trimmed.last(), Some(b'.' | b'!' | b'?')) {
        return false;
    }
    let after = start + trimmed.len();
    passage
        .as_bytes()
        .get(after)
        .is_none_or(u8::is_ascii_whitespace)
}

/// Decodes a quote after a prompt whose last logits are `logits`; `step` feeds a taken token
/// and returns the next logits. `stops` end the quote once it has begun.
pub fn decode(
    logits: Vec<f32>,
    step: &mut dyn FnMut(u32) -> Result<Vec<f32>>,
    vocab: &dyn Vocabulary,
    stops: &[u32],
    passages: &[Passage],
    max_tokens: usize,
) -> Result<Quoted> {
    let mut quoted = Quoted {
        quote: None,
        tokens: Vec::new(),
        logprobs: Vec::new(),
        end: QuoteEnd::MaxTokens,
    };
    let Some((first, logprob, mut at)) = first_token(&logits, vocab, passages) else {
        quoted.end = QuoteEnd::Diverged;
        return Ok(quoted);
    };
    if max_tokens == 0 {
        return Ok(quoted);
    }
    let mut bytes = vocab.bytes(first).to_vec();
    quoted.tokens.push(first);
    quoted.logprobs.push(logprob);
    while quoted.tokens.len() < max_tokens {
        if let Some(cut) = line_break(&bytes) {
            bytes.truncate(cut);
            quoted.end = QuoteEnd::SentenceEnd;
            break;
        }
        let (p, start) = at[0];
        if sentence_end(&passages[p].text, start, &bytes) {
            quoted.end = QuoteEnd::SentenceEnd;
            break;
        }
        let logits = step(*quoted.tokens.last().expect("a token was taken"))?;
        let logprobs = log_softmax(&logits);
        let mut taken = None;
        for id in by_probability(&logits).into_iter().take(CANDIDATES) {
            if stops.contains(&id) {
                break;
            }
            let piece = vocab.bytes(id);
            if piece.is_empty() {
                continue;
            }
            let next = extended(passages, &at, bytes.len(), piece);
            if !next.is_empty() {
                taken = Some((id, next));
                break;
            }
        }
        let Some((id, next)) = taken else {
            // The reader's best candidate was an end token or nothing fits: which one decides
            // how the quote is reported, not what it is.
            let wants_end = by_probability(&logits)
                .into_iter()
                .take(CANDIDATES)
                .find(|&id| stops.contains(&id) || !vocab.bytes(id).is_empty())
                .is_some_and(|id| stops.contains(&id));
            quoted.end = if wants_end {
                QuoteEnd::StopToken
            } else {
                QuoteEnd::Diverged
            };
            break;
        };
        bytes.extend_from_slice(vocab.bytes(id));
        quoted.tokens.push(id);
        quoted.logprobs.push(logprobs[id as usize]);
        at = next;
    }
    quoted.quote = provenance(passages, at[0], &bytes);
    Ok(quoted)
}

/// Where a line break ends the quote (after some text), if it does.
fn line_break(bytes: &[u8]) -> Option<usize> {
    let content = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    bytes[content..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| content + i)
}

/// Returns the quote of `bytes` at `(passage, start)`, trimmed of surrounding whitespace and
/// of a trailing broken character, with its char range in the document.
fn provenance(passages: &[Passage], (p, start): Occurrence, bytes: &[u8]) -> Option<Quote> {
    let passage = &passages[p];
    let text = passage.text.as_str();
    let mut end = start + bytes.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let raw = &text[start..end];
    let lead = raw.len() - raw.trim_start().len();
    let quoted = raw.trim();
    if quoted.is_empty() {
        return None;
    }
    let (a, b) = (start + lead, start + lead + quoted.len());
    let char_start = passage.char_start + text[..a].chars().count();
    Some(Quote {
        text: quoted.to_string(),
        doc_id: passage.doc_id.clone(),
        char_start,
        char_end: char_start + quoted.chars().count(),
        label: passage.label,
    })
    .filter(|_| b <= text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvCache, Logits, RandomShape, TapRequest, Transformer, WeightFormat};
    use candle_core::Device;

    /// A byte-level vocabulary of 256 tokens: 0 ends, 1-15 are words, the rest single bytes.
    struct Bytes(Vec<Vec<u8>>);

    impl Bytes {
        fn new() -> Self {
            let words = [
                "the ",
                " the",
                "lighthouse",
                " code",
                " is",
                " 7",
                "24",
                "65",
                "é",
                "Paris",
                " of",
                "ing",
                ".",
                " ",
                "\n",
            ];
            let mut table: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
            table[0] = Vec::new();
            for (i, w) in words.iter().enumerate() {
                table[i + 1] = w.as_bytes().to_vec();
            }
            Self(table)
        }
    }

    impl Vocabulary for Bytes {
        fn bytes(&self, id: u32) -> &[u8] {
            &self.0[id as usize]
        }
    }

    fn passages(doc: &str, pieces: &[(usize, usize)]) -> Vec<Passage> {
        pieces
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| Passage {
                text: doc.chars().skip(a).take(b - a).collect(),
                doc_id: Some("doc".into()),
                char_start: a,
                label: Some(i + 1),
            })
            .collect()
    }

    /// Quotes with a tiny random model from `seed`'s prompt.
    fn quote_with(seed: u64, passages: &[Passage], max_tokens: usize) -> Quoted {
        let shape = RandomShape::named("tiny").unwrap();
        let model = Transformer::random(&shape, WeightFormat::F32, seed, &Device::Cpu).unwrap();
        let logits_of = |tokens: &[u32], cache: &mut KvCache| -> Vec<f32> {
            let out = model
                .forward(tokens, Some(cache), &TapRequest::default(), Logits::Last)
                .unwrap();
            out.logits
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let mut cache = KvCache::default();
        let prompt: Vec<u32> = (0..12)
            .map(|i| ((seed * 31 + i * 7) % 250 + 3) as u32)
            .collect();
        let first = logits_of(&prompt, &mut cache);
        let mut step = |id: u32| Ok(logits_of(&[id], &mut cache));
        decode(first, &mut step, &Bytes::new(), &[0], passages, max_tokens).unwrap()
    }

    #[test]
    fn a_quote_is_a_substring_of_the_evidence_at_its_char_range() {
        let doc = "Prologue. The access code of the crimson lighthouse is 72465.\n\
                   Café Paris: the ending of the story is near. More text follows here!";
        let ps = passages(doc, &[(10, 62), (63, 130)]);
        let chars: Vec<char> = doc.chars().collect();
        let mut quoted_any = 0;
        for seed in 0..24 {
            let q = quote_with(seed, &ps, 16);
            assert!(q.tokens.len() <= 16);
            assert_eq!(q.tokens.len(), q.logprobs.len());
            assert!(q.logprobs.iter().all(|&l| l <= 0.0 && l.is_finite()));
            let Some(quote) = q.quote else { continue };
            quoted_any += 1;
            let at: String = chars[quote.char_start..quote.char_end].iter().collect();
            assert_eq!(at, quote.text, "seed {seed}");
            assert!(!quote.text.is_empty() && quote.text.trim() == quote.text);
            let label = quote.label.unwrap();
            assert!(
                ps[label - 1].text.contains(&quote.text),
                "seed {seed}: {quote:?}"
            );
            assert_eq!(quote.doc_id.as_deref(), Some("doc"));
        }
        assert!(
            quoted_any > 12,
            "only {quoted_any} of 24 seeds quoted anything"
        );
    }

    #[test]
    fn quotes_stop_at_the_limit_and_nothing_quotes_empty_evidence() {
        let ps = passages("aaaa aaaa aaaa aaaa aaaa aaaa", &[(0, 29)]);
        for seed in 0..4 {
            assert!(quote_with(seed, &ps, 3).tokens.len() <= 3);
        }
        let empty = quote_with(1, &[], 8);
        assert_eq!(empty.quote, None);
        assert_eq!(empty.end, QuoteEnd::Diverged);
    }

    #[test]
    fn the_most_probable_candidate_that_extends_an_occurrence_is_taken() {
        let ps = passages("the code is 72465. the code of", &[(0, 30)]);
        let one = |pairs: &[(u32, f32)]| {
            let mut l = vec![0.0f32; 256];
            for &(id, v) in pairs {
                l[id as usize] = v;
            }
            l
        };
        let b = |c: u8| u32::from(c);
        // "lighthouse" (3) is the most probable first token but does not occur: "the " does.
        let first = one(&[(3, 9.0), (1, 5.0)]);
        let mut script = vec![
            one(&[(4, 9.0), (b(b'c'), 8.0)]), // " code" would make "the  code"
            one(&[(b(b'o'), 8.0)]),
            one(&[(b(b'd'), 8.0)]),
            one(&[(b(b'e'), 8.0)]),
            one(&[(5, 9.0)]),                 // " is"
            one(&[(6, 9.0)]),                 // " 7"
            one(&[(8, 9.0), (b(b'2'), 8.0)]), // "65" does not follow "7" here
            one(&[(0, 9.0), (b(b'4'), 8.0)]), // the end token comes first
        ]
        .into_iter();
        let mut step = |_id: u32| Ok(script.next().expect("no more steps were scripted"));
        let q = decode(first, &mut step, &Bytes::new(), &[0], &ps, 20).unwrap();
        let quote = q.quote.unwrap();
        assert_eq!(quote.text, "the code is 72");
        assert_eq!((quote.char_start, quote.char_end), (0, 14));
        assert_eq!(q.end, QuoteEnd::StopToken);
        assert_eq!(q.tokens.len(), 8);
    }

    #[test]
    fn sentence_ends_need_a_space_after_them() {
        assert!(sentence_end("It is 3.5 m. Then", 0, b"It is 3.5 m."));
        assert!(!sentence_end("It is 3.5 m. Then", 0, b"It is 3."));
        assert!(sentence_end("Done.", 0, b"Done."));
        assert_eq!(line_break(b"\n  ab\ncd"), Some(5));
        assert_eq!(line_break(b"  \n"), None);
    }
}
