//! The dense methods: a question's sentence embedding against the stored embedding of every
//! BM25 passage in scope (exact cosine: the vectors are normalised, so a dot product), and
//! `rag`, BM25 and dense fused by reciprocal rank, the usual hybrid RAG first stage.

use std::collections::HashMap;
use std::ops::Range;

use super::docs::{DocCache, Scope};
use super::error::{Result, RetrieveError};
use super::parts;
use super::{Candidate, Source};
use crate::embed::Embedder;
use crate::index::Index;

/// Returns the `limit` passages of the scope most similar to `question`, best first.
pub fn dense(
    embedder: &Embedder,
    index: &Index,
    scope: &Scope,
    docs: &mut DocCache<'_>,
    question: &str,
    limit: usize,
) -> Result<Vec<Candidate>> {
    let q = embedder.embed(&[question])?.remove(0);
    let q = q.as_array();
    // Each part of the scope reads its documents' vectors and keeps its own best `limit`; the
    // best of those are the scope's (the order is total, so the parts change nothing).
    let numbers: Vec<usize> = (0..scope.docs.len()).collect();
    let best = parts::in_parts(&numbers, DOCUMENTS_PER_PART, |part| {
        let mut scored = Vec::new();
        for &d in part {
            let sd = &scope.docs[d];
            let vectors = index
                .vectors_of(scope.cid, sd.number)?
                .filter(|v| v.embedder == embedder.fingerprint() && v.dim == q.len())
                .ok_or_else(|| RetrieveError::MissingVectors {
                    doc: sd.id.clone(),
                    embedder: embedder.fingerprint().to_string(),
                })?;
            for (i, chars) in vectors.passages.iter().enumerate() {
                let score: f32 = vectors.row(i).iter().zip(q).map(|(a, b)| a * b).sum();
                scored.push(ScoredPassage {
                    score,
                    doc: d,
                    passage: i,
                    chars: chars.clone(),
                });
            }
        }
        Ok(best_first(scored, limit))
    })?;
    let scored = best_first(best, limit);
    let mut out = Vec::with_capacity(scored.len());
    for p in scored {
        let tokens = docs.get(p.doc)?.char_tokens(p.chars);
        if !tokens.is_empty() {
            out.push(Candidate {
                doc: p.doc,
                tokens,
                source: Source::Dense,
                score: p.score,
            });
        }
    }
    Ok(out)
}

/// Scope documents one host thread reads the vectors of at least.
const DOCUMENTS_PER_PART: usize = 16;

/// A passage's cosine to the question.
struct ScoredPassage {
    score: f32,
    /// Scope document.
    doc: usize,
    /// Passage of the document.
    passage: usize,
    chars: Range<usize>,
}

/// Returns the `limit` best of `scored`: higher cosine first, ties in document and passage
/// order.
fn best_first(mut scored: Vec<ScoredPassage>, limit: usize) -> Vec<ScoredPassage> {
    let order = |a: &ScoredPassage, b: &ScoredPassage| {
        b.score
            .total_cmp(&a.score)
            .then((a.doc, a.passage).cmp(&(b.doc, b.passage)))
    };
    if scored.len() > limit {
        scored.select_nth_unstable_by(limit, order);
        scored.truncate(limit);
    }
    scored.sort_by(order);
    scored
}

/// Fuses ranked lists of passages by reciprocal rank (`1/(k + rank)` summed over the lists a
/// passage is in); a passage keeps the source of the list that ranked it best.
pub fn reciprocal_rank_fusion(lists: &[&[Candidate]], k: f32) -> Vec<Candidate> {
    let mut fused: Vec<(f32, usize, Candidate)> = Vec::new();
    let mut at: HashMap<(usize, usize, usize), usize> = HashMap::new();
    for list in lists {
        for (rank, c) in list.iter().enumerate() {
            let score = 1.0 / (k + rank as f32 + 1.0);
            let key = (c.doc, c.tokens.start, c.tokens.end);
            match at.get(&key) {
                Some(&i) => {
                    let entry = &mut fused[i];
                    entry.0 += score;
                    if rank < entry.1 {
                        entry.1 = rank;
                        entry.2.source = c.source;
                    }
                }
                None => {
                    at.insert(key, fused.len());
                    fused.push((score, rank, c.clone()));
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..fused.len()).collect();
    order.sort_by(|&a, &b| fused[b].0.total_cmp(&fused[a].0).then(a.cmp(&b)));
    order
        .into_iter()
        .map(|i| Candidate {
            score: fused[i].0,
            ..fused[i].2.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(doc: usize, tokens: Range<usize>, source: Source) -> Candidate {
        Candidate {
            doc,
            tokens,
            source,
            score: 0.0,
        }
    }

    #[test]
    fn the_best_passages_are_those_of_a_full_sort() {
        // Scores with many ties, in document and passage order.
        let all: Vec<ScoredPassage> = (0..200)
            .map(|n| ScoredPassage {
                score: ((n * 37) % 11) as f32 / 10.0,
                doc: n / 20,
                passage: n % 20,
                chars: n..n + 1,
            })
            .collect();
        let mut sorted: Vec<(f32, usize)> = all.iter().map(|p| (p.score, p.chars.start)).collect();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let copy = |v: &[ScoredPassage]| -> Vec<ScoredPassage> {
            v.iter()
                .map(|p| ScoredPassage {
                    chars: p.chars.clone(),
                    ..*p
                })
                .collect()
        };
        for limit in [0, 1, 5, 19, 20, 199, 200, 500] {
            let best: Vec<(f32, usize)> = best_first(copy(&all), limit)
                .iter()
                .map(|p| (p.score, p.chars.start))
                .collect();
            assert_eq!(best, sorted[..limit.min(200)], "limit {limit}");
            // Cut into parts, each part's best, then the best of those: the same.
            let parts: Vec<ScoredPassage> = all
                .chunks(33)
                .flat_map(|part| best_first(copy(part), limit))
                .collect();
            let joined: Vec<(f32, usize)> = best_first(parts, limit)
                .iter()
                .map(|p| (p.score, p.chars.start))
                .collect();
            assert_eq!(joined, best, "limit {limit}");
        }
    }

    #[test]
    fn a_passage_in_both_lists_comes_first() {
        let bm25 = [
            c(0, 0..10, Source::Bm25),
            c(0, 10..20, Source::Bm25),
            c(1, 0..10, Source::Bm25),
        ];
        let dense = [
            c(1, 5..15, Source::Dense),
            c(1, 0..10, Source::Dense),
            c(0, 30..40, Source::Dense),
        ];
        let fused = reciprocal_rank_fusion(&[&bm25, &dense], 60.0);
        let order: Vec<_> = fused.iter().map(|c| (c.doc, c.tokens.start)).collect();
        // (1, 0) is in both lists; then the two first places, BM25's before dense's by order.
        assert_eq!(order, vec![(1, 0), (0, 0), (1, 5), (0, 10), (0, 30)]);
        assert_eq!(fused.len(), 5);
        // It keeps the source of its better rank (dense ranked it 2nd, BM25 3rd).
        assert_eq!(fused[0].source, Source::Dense);
        let both = 1.0 / 63.0 + 1.0 / 62.0;
        assert!((fused[0].score - both).abs() < 1e-7);
        assert!(reciprocal_rank_fusion(&[], 60.0).is_empty());
    }
}
