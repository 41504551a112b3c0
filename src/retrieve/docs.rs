//! The documents in a retrieval's scope, and their text and token offsets, loaded on demand.

use std::collections::HashMap;
use std::ops::Range;

use super::error::{Result, RetrieveError};
use super::filter::{Filter, FilterReport};
use crate::index::{DocumentInfo, Index};

/// One document in scope.
#[derive(Debug, Clone)]
pub struct ScopeDoc {
    /// External id.
    pub id: String,
    /// Internal number.
    pub number: u32,
    /// First collection-global position.
    pub first: u32,
    /// Tokens.
    pub tokens: u32,
}

impl From<DocumentInfo> for ScopeDoc {
    fn from(d: DocumentInfo) -> Self {
        Self {
            first: d.positions.start as u32,
            id: d.id,
            number: d.number,
            tokens: d.tokens,
        }
    }
}

/// The documents a question is asked of, ordered by position in the collection.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The collection's internal id.
    pub cid: u32,
    /// The documents, by ascending first position.
    pub docs: Vec<ScopeDoc>,
    /// Whether the scope is the whole collection.
    pub whole: bool,
    /// What the filter did, when there was one.
    pub filter: Option<FilterReport>,
}

impl Scope {
    /// Returns the scope of `ids` in `collection` (every document when `ids` is empty),
    /// narrowed to the documents that pass `filter`: the one place a question's documents are
    /// chosen, so every method scores only these. A filter may leave the scope empty; without
    /// one, an empty collection is refused.
    pub fn new(
        index: &Index,
        collection: &str,
        ids: &[String],
        filter: Option<&Filter>,
    ) -> Result<Self> {
        let cid = index.collection_id(collection)?;
        let all = index.documents(collection)?;
        let collection_docs = all.len();
        let mut picked: Vec<DocumentInfo> = if ids.is_empty() {
            all
        } else {
            let mut picked: Vec<DocumentInfo> = Vec::new();
            for id in ids {
                let d = index.document(collection, id)?;
                if !picked.iter().any(|p| p.number == d.number) {
                    picked.push(d);
                }
            }
            picked
        };
        let report = match filter {
            Some(f) => {
                let (keep, report) = f.select(&picked, &index.meta_types(collection)?)?;
                let mut keep = keep.into_iter();
                picked.retain(|_| keep.next().unwrap_or(false));
                Some(report)
            }
            None => None,
        };
        if picked.is_empty() && filter.is_none() {
            return Err(RetrieveError::invalid(
                "collection",
                format!("collection `{collection}` holds no documents"),
            ));
        }
        // A filter that keeps every document leaves the collection-wide statistics exact.
        let whole = ids.is_empty() && picked.len() == collection_docs;
        let mut docs: Vec<ScopeDoc> = picked.into_iter().map(ScopeDoc::from).collect();
        docs.sort_by_key(|d| d.first);
        Ok(Self {
            cid,
            docs,
            whole,
            filter: report,
        })
    }

    /// Returns the tokens in scope.
    pub fn tokens(&self) -> u64 {
        self.docs.iter().map(|d| u64::from(d.tokens)).sum()
    }

    /// Returns the documents (as indexes into `docs`) and document-local ranges that a range of
    /// collection-global positions covers.
    pub fn locate(&self, global: Range<u32>) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        // The first document that ends after the range starts.
        let from = self
            .docs
            .partition_point(|d| d.first + d.tokens <= global.start);
        for (i, d) in self.docs.iter().enumerate().skip(from) {
            if d.first >= global.end {
                break;
            }
            let start = global.start.max(d.first) - d.first;
            let end = global.end.min(d.first + d.tokens) - d.first;
            if start < end {
                out.push((i, start as usize..end as usize));
            }
        }
        out
    }
}

/// A document's text, char-to-byte table and token offsets.
pub struct LoadedDoc {
    /// The text.
    pub text: String,
    /// Byte offset of each char, and the text length last.
    char_bytes: Vec<usize>,
    /// Char range of each token.
    pub offsets: Vec<(usize, usize)>,
}

impl LoadedDoc {
    fn new(text: String, offsets: Vec<(usize, usize)>) -> Self {
        let mut char_bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        char_bytes.push(text.len());
        Self {
            text,
            char_bytes,
            offsets,
        }
    }

    /// Returns the text of a char range, clamped.
    pub fn chars(&self, r: Range<usize>) -> &str {
        let n = self.char_bytes.len() - 1;
        let end = r.end.min(n);
        let start = r.start.min(end);
        &self.text[self.char_bytes[start]..self.char_bytes[end]]
    }

    /// Returns the char range of a token range (non-empty, within the document).
    pub fn token_chars(&self, t: Range<usize>) -> Range<usize> {
        let start = self.offsets[t.start].0;
        let end = self.offsets[t.start..t.end]
            .iter()
            .map(|o| o.1)
            .max()
            .unwrap_or(start);
        start..end
    }

    /// Returns the tokens that overlap a char range.
    pub fn char_tokens(&self, c: Range<usize>) -> Range<usize> {
        let start = self.offsets.partition_point(|o| o.1 <= c.start);
        let end = self.offsets.partition_point(|o| o.0 < c.end);
        start..end.max(start)
    }

    /// Returns whether token `t` ends a sentence or a line.
    pub fn ends_sentence(&self, t: usize) -> bool {
        let (s, e) = self.offsets[t];
        let piece = self.chars(s..e);
        piece.contains('\n')
            || piece
                .trim_end_matches([' ', '"', '\'', ')', ']'])
                .ends_with(['.', '!', '?'])
    }

    /// Widens a token range to sentence or line boundaries, by at most `reach` tokens a side.
    pub fn snap(&self, t: Range<usize>, reach: usize) -> Range<usize> {
        let n = self.offsets.len();
        let mut start = t.start.min(n);
        let floor = start.saturating_sub(reach);
        while start > floor && !self.ends_sentence(start - 1) {
            start -= 1;
        }
        if start == floor && start > 0 && !self.ends_sentence(start - 1) {
            start = t.start;
        }
        let mut end = t.end.min(n).max(start);
        let ceil = (end + reach).min(n);
        while end < ceil && (end == 0 || !self.ends_sentence(end - 1)) {
            end += 1;
        }
        if end == ceil && end < n && !self.ends_sentence(end - 1) {
            end = t.end.min(n).max(start);
        }
        start..end
    }
}

/// Documents loaded so far, by index into the scope.
pub struct DocCache<'a> {
    index: &'a Index,
    scope: &'a Scope,
    loaded: HashMap<usize, LoadedDoc>,
}

impl<'a> DocCache<'a> {
    /// Returns an empty cache over `scope`.
    pub fn new(index: &'a Index, scope: &'a Scope) -> Self {
        Self {
            index,
            scope,
            loaded: HashMap::new(),
        }
    }

    /// Returns document `i` of the scope, loading it on first use.
    pub fn get(&mut self, i: usize) -> Result<&LoadedDoc> {
        if !self.loaded.contains_key(&i) {
            let d = &self.scope.docs[i];
            let text = self.index.text_of(self.scope.cid, d.number)?;
            let offsets = self.index.offsets_of(self.scope.cid, d.number)?;
            self.loaded.insert(i, LoadedDoc::new(text, offsets));
        }
        Ok(&self.loaded[&i])
    }

    /// Keeps the documents `other` loaded (over the same scope) that this cache lacks.
    pub fn absorb(&mut self, other: DocCache<'_>) {
        for (i, doc) in other.loaded {
            self.loaded.entry(i).or_insert(doc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> LoadedDoc {
        // One token per word, with its trailing space.
        let mut offsets = Vec::new();
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c == ' ' || c == '\n' {
                offsets.push((start, i + 1));
                start = i + 1;
            }
        }
        if start < text.len() {
            offsets.push((start, text.len()));
        }
        LoadedDoc::new(text.into(), offsets)
    }

    #[test]
    fn snap_widens_to_sentence_ends_within_reach() {
        let d = doc("One two. Three four five six. Seven eight.");
        // tokens: One two. | Three four five six. | Seven eight.
        assert_eq!(d.snap(3..4, 8), 2..6);
        // The sentence start is within reach, its end is not: only the start moves.
        assert_eq!(d.snap(3..4, 1), 2..4);
        // The sentence end is within reach, its start is not: only the end moves.
        assert_eq!(d.snap(4..5, 1), 4..6);
        assert_eq!(d.snap(3..4, 0), 3..4);
        assert_eq!(d.chars(d.token_chars(2..6)), "Three four five six. ");
        assert_eq!(d.char_tokens(9..14), 2..3);
    }

    #[test]
    fn scope_locates_global_ranges_in_documents() {
        let scope = Scope {
            cid: 1,
            docs: vec![
                ScopeDoc {
                    id: "a".into(),
                    number: 0,
                    first: 0,
                    tokens: 100,
                },
                ScopeDoc {
                    id: "b".into(),
                    number: 2,
                    first: 300,
                    tokens: 50,
                },
            ],
            whole: false,
            filter: None,
        };
        assert_eq!(scope.locate(90..310), vec![(0, 90..100), (1, 0..10)]);
        assert_eq!(scope.locate(100..300), vec![]);
        assert_eq!(scope.tokens(), 150);
    }
}
