//! Sentence-aligned passages for BM25: runs of whole sentences of about 64-128 tokens.

/// Fewest tokens a passage should hold before a sentence end closes it.
pub const MIN_PASSAGE_TOKENS: usize = 64;
/// Most tokens a passage holds; a longer sentence is cut here.
pub const MAX_PASSAGE_TOKENS: usize = 128;

/// A passage: a char range of the document and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    /// Char range (Unicode scalar values) in the document.
    pub chars: std::ops::Range<usize>,
    /// Token range in the document.
    pub tokens: std::ops::Range<usize>,
    /// The text of the range.
    pub text: String,
}

/// Maps char offsets to byte offsets of one text.
pub struct CharIndex<'a> {
    text: &'a str,
    /// Byte offset of each char, plus the text length at the end.
    bytes: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    /// Indexes `text`.
    pub fn new(text: &'a str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bytes.push(text.len());
        Self { text, bytes }
    }

    /// Returns the number of chars.
    pub fn chars(&self) -> usize {
        self.bytes.len() - 1
    }

    /// Returns the text of a char range, clamped to the text.
    pub fn slice(&self, chars: std::ops::Range<usize>) -> &'a str {
        let end = chars.end.min(self.chars());
        let start = chars.start.min(end);
        &self.text[self.bytes[start]..self.bytes[end]]
    }
}

/// Cuts a tokenized text into passages that end at sentence or line ends where possible.
pub fn passages(text: &str, offsets: &[(usize, usize)]) -> Vec<Passage> {
    let index = CharIndex::new(text);
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, &(s, e)) in offsets.iter().enumerate() {
        let len = i + 1 - start;
        let piece = index.slice(s..e);
        let sentence_end = piece
            .trim_end_matches([' ', '"', '\'', ')'])
            .ends_with(['.', '!', '?', '\n'])
            || piece.contains('\n');
        let last = i + 1 == offsets.len();
        if (len >= MIN_PASSAGE_TOKENS && sentence_end) || len >= MAX_PASSAGE_TOKENS || last {
            let chars = offsets[start].0..offsets[i].1.max(offsets[start].0);
            out.push(Passage {
                text: index.slice(chars.clone()).to_string(),
                chars,
                tokens: start..i + 1,
            });
            start = i + 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_cover_all_tokens_within_bounds() {
        // One "token" per word, with the char ranges a tokenizer would give.
        let text: String = (0..400)
            .map(|i| if i % 20 == 19 { "end. " } else { "wörd " })
            .collect();
        let mut offsets = Vec::new();
        let mut at = 0;
        for w in text.split_inclusive(' ') {
            let n = w.chars().count();
            offsets.push((at, at + n));
            at += n;
        }
        let ps = passages(&text, &offsets);
        assert_eq!(ps.first().unwrap().tokens.start, 0);
        assert_eq!(ps.last().unwrap().tokens.end, offsets.len());
        for w in ps.windows(2) {
            assert_eq!(w[0].tokens.end, w[1].tokens.start);
        }
        for p in &ps[..ps.len() - 1] {
            assert!(p.tokens.len() >= MIN_PASSAGE_TOKENS && p.tokens.len() <= MAX_PASSAGE_TOKENS);
            assert!(p.text.trim_end().ends_with("end."), "{:?}", p.text);
        }
    }
}
