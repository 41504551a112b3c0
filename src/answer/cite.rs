//! Citations of free answers: each sentence carries the `[n]` of the evidence piece whose
//! words it shares most.

use std::collections::HashSet;

use super::quote::Passage;

/// Words too common to say which piece a sentence rests on.
const STOPWORDS: [&str; 24] = [
    "a", "an", "the", "of", "in", "on", "at", "to", "and", "or", "is", "are", "was", "were", "be",
    "by", "for", "with", "as", "it", "its", "that", "this", "from",
];

/// The lowercase words of `text` that can tell pieces apart.
fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Splits an answer into sentences: after `.`, `!` or `?` followed by whitespace, and at line
/// breaks. Each sentence keeps its trailing whitespace, so joined they give the answer back.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let ends =
            c == '\n' || (matches!(c, '.' | '!' | '?') && next.is_none_or(char::is_whitespace));
        if ends {
            // The sentence takes the whitespace that follows it.
            let mut end = i + c.len_utf8();
            while let Some(&(j, w)) = chars.peek() {
                if !w.is_whitespace() {
                    break;
                }
                end = j + w.len_utf8();
                chars.next();
            }
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Returns the `[n]` of the labelled passage sharing the most words with `sentence` (the
/// first on ties), or `None` when it shares none.
fn best_piece(sentence: &str, pieces: &[(usize, HashSet<String>)]) -> Option<usize> {
    let mine = words(sentence);
    let mut best = None;
    let mut most = 0;
    for (label, theirs) in pieces {
        let shared = mine.intersection(theirs).count();
        if shared > most {
            most = shared;
            best = Some(*label);
        }
    }
    best
}

/// A free answer with its citations.
#[derive(Debug, Clone, PartialEq)]
pub struct Cited {
    /// The answer with ` [n]` after each sentence that rests on a piece.
    pub text: String,
    /// Per sentence, the `[n]` it rests on (0: none shares a word with it).
    pub citations: Vec<usize>,
}

/// Cites `answer` against the labelled passages: each sentence gets the `[n]` of the piece it
/// shares most words with, unless it already cites one (the reader was asked to), whose
/// number is then recorded.
pub fn cite(answer: &str, passages: &[Passage]) -> Cited {
    let pieces: Vec<(usize, HashSet<String>)> = passages
        .iter()
        .filter_map(|p| p.label.map(|l| (l, words(&p.text))))
        .collect();
    let mut text = String::new();
    let mut citations = Vec::new();
    for sentence in sentences(answer) {
        let body = sentence.trim_end();
        if !body.chars().any(char::is_alphanumeric) {
            text.push_str(sentence);
            continue;
        }
        if let Some(n) = cited_already(body) {
            citations.push(n);
            text.push_str(sentence);
            continue;
        }
        let label = best_piece(body, &pieces);
        citations.push(label.unwrap_or(0));
        text.push_str(body);
        if let Some(n) = label {
            text.push_str(&format!(" [{n}]"));
        }
        text.push_str(&sentence[body.len()..]);
    }
    Cited { text, citations }
}

/// The first `[n]` a sentence already carries.
fn cited_already(sentence: &str) -> Option<usize> {
    let open = sentence.find('[')?;
    let rest = &sentence[open + 1..];
    let close = rest.find(']')?;
    rest[..close].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(label: usize, text: &str) -> Passage {
        Passage {
            text: text.into(),
            doc_id: None,
            char_start: 0,
            label: Some(label),
        }
    }

    #[test]
    fn sentences_split_at_ends_followed_by_space_and_join_back() {
        let text = "It was 3.5 m long. Then it grew!\nNo end";
        let s = sentences(text);
        assert_eq!(s, ["It was 3.5 m long. ", "Then it grew!\n", "No end"]);
        assert_eq!(s.concat(), text);
        assert!(sentences("").is_empty());
    }

    #[test]
    fn each_sentence_cites_the_piece_it_shares_most_words_with() {
        let pieces = [
            piece(1, "The lighthouse keeper wrote the access code down."),
            piece(2, "Paris is the capital of France, on the Seine."),
        ];
        let c = cite(
            "The capital is Paris. The access code was written down.",
            &pieces,
        );
        assert_eq!(
            c.text,
            "The capital is Paris. [2] The access code was written down. [1]"
        );
        assert_eq!(c.citations, [2, 1]);
        let none = cite("Nothing here matches.", &pieces);
        assert_eq!(none.text, "Nothing here matches.");
        assert_eq!(none.citations, [0]);
        let already = cite("Paris [2] it is.", &pieces);
        assert_eq!(already.text, "Paris [2] it is.");
        assert_eq!(already.citations, [2]);
    }
}
