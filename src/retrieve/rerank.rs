//! Re-ranking by the model's own attention: the first-stage candidates (BM25 passages, S3
//! spans) are cut into sentences, read by the model in one pass as
//! `[frame; evidence sentences; question]`, and each sentence is scored by how much attention
//! the question's tokens put on it through a set of retrieval heads, minus what a null question
//! ("N/A") puts on it from the same place (QRHead's calibration: it removes the heads' pull
//! towards recent, first and long sentences that has nothing to do with the question).
//!
//! The evidence prefix runs once and is cached; the question and the null question each
//! continue it, so calibration costs two short continuations, not a second pass over the
//! evidence. Only layers up to the deepest retrieval head run.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::Instant;

use super::docs::DocCache;
use super::error::{Result, RetrieveError};
use super::frame;
use super::{Candidate, Source};
pub use crate::model::RetrievalHead;
use crate::model::{KvCache, LayerSet, Model};

/// The heads whose attention scores evidence, written `layer.head,layer.head,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSet(Vec<RetrievalHead>);

impl HeadSet {
    /// Returns a set of `heads` (sorted, without repeats); refuses an empty one.
    pub fn new(mut heads: Vec<RetrievalHead>) -> Result<Self> {
        heads.sort();
        heads.dedup();
        if heads.is_empty() {
            return Err(RetrieveError::invalid("heads", "no retrieval head given"));
        }
        Ok(Self(heads))
    }

    /// Returns every head of a model with `layers` layers of `heads` query heads.
    pub fn all(layers: usize, heads: usize) -> Self {
        Self(
            (0..layers)
                .flat_map(|layer| (0..heads).map(move |head| RetrievalHead { layer, head }))
                .collect(),
        )
    }

    /// Returns the heads.
    pub fn heads(&self) -> &[RetrievalHead] {
        &self.0
    }

    /// Returns the layers the heads sit in.
    pub fn layers(&self) -> Vec<usize> {
        let mut l: Vec<usize> = self.0.iter().map(|h| h.layer).collect();
        l.dedup();
        l
    }

    /// Refuses heads the model does not have.
    pub fn check(&self, layers: usize, heads: usize) -> Result<()> {
        match self.0.iter().find(|h| h.layer >= layers || h.head >= heads) {
            Some(h) => Err(RetrieveError::invalid(
                "heads",
                format!("head {h} is not in a model of {layers} layers x {heads} heads"),
            )),
            None => Ok(()),
        }
    }
}

impl FromStr for HeadSet {
    type Err = RetrieveError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            RetrieveError::invalid(
                "heads",
                format!("`{s}` is not a list of layer.head pairs such as 8.3,12.0"),
            )
        };
        let heads = s
            .split(',')
            .map(|p| p.parse::<RetrievalHead>().map_err(|_| bad()))
            .collect::<Result<Vec<_>>>()?;
        Self::new(heads)
    }
}

impl fmt::Display for HeadSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Settings of attention re-ranking.
#[derive(Debug, Clone)]
pub struct RerankConfig {
    /// The heads that score.
    pub heads: HeadSet,
    /// Most tokens of first-stage candidates read.
    pub pool_tokens: usize,
    /// Weight of the first stage's own order in the final one (0: attention alone): a
    /// sentence scores `1/(k + attention rank) + first_stage/(k + pool position)`, k
    /// [`FUSION_K`].
    pub first_stage: f32,
}

/// One sentence of the candidate pool.
#[derive(Debug, Clone)]
pub struct PoolSentence {
    /// Index into the scope's documents.
    pub doc: usize,
    /// Document-local token range.
    pub tokens: Range<usize>,
}

/// Builds the pool: candidates taken in turn from each list (best first), cut into sentences,
/// each token at most once, until `pool_tokens` tokens.
pub fn build_pool(
    lists: &[&[Candidate]],
    docs: &mut DocCache<'_>,
    pool_tokens: usize,
) -> Result<Vec<PoolSentence>> {
    let mut taken: Vec<(usize, Range<usize>)> = Vec::new();
    let mut pool = Vec::new();
    let mut used = 0usize;
    let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
    'outer: for rank in 0..longest {
        for list in lists {
            let Some(c) = list.get(rank) else { continue };
            let doc = docs.get(c.doc)?;
            let n = doc.offsets.len();
            let mut t = c.tokens.start.min(n);
            let end = c.tokens.end.min(n);
            while t < end {
                // One sentence: up to and including the next sentence end.
                let mut e = t;
                while e < end && !doc.ends_sentence(e) {
                    e += 1;
                }
                let e = (e + 1).min(end);
                let range = t..e;
                t = e;
                let overlaps = taken
                    .iter()
                    .any(|(d, r)| *d == c.doc && r.start < range.end && range.start < r.end);
                if overlaps {
                    continue;
                }
                if used + range.len() > pool_tokens {
                    break 'outer;
                }
                used += range.len();
                taken.push((c.doc, range.clone()));
                pool.push(PoolSentence {
                    doc: c.doc,
                    tokens: range,
                });
            }
        }
    }
    Ok(pool)
}

/// Calibrated attention of each head on each pool sentence.
#[derive(Debug, Clone)]
pub struct HeadScores {
    /// The heads, in the order of `scores`.
    pub heads: Vec<RetrievalHead>,
    /// `scores[h][s]`: head `h`'s mean attention per question token on sentence `s`, minus the
    /// same for the null question.
    pub scores: Vec<Vec<f32>>,
    /// Tokens the model read (frame, evidence and question).
    pub tokens: usize,
    /// Milliseconds of the forward passes.
    pub forward_ms: f64,
    /// Milliseconds of the evidence pass alone (the rest of `forward_ms` is the question and
    /// the null question continuing it).
    pub prefix_ms: f64,
    /// Milliseconds turning the pool's text into the model's tokens.
    pub tokenize_ms: f64,
}

impl HeadScores {
    /// Returns each sentence's score summed over the heads.
    pub fn combined(&self) -> Vec<f32> {
        let n = self.scores.first().map_or(0, Vec::len);
        (0..n)
            .map(|s| self.scores.iter().map(|h| h[s]).sum())
            .collect()
    }
}

/// Tokens of the evidence pass read at once (the cache carries the rest).
const PREFIX_CHUNK: usize = 512;

/// The question placed after the evidence; the null question is the same frame around "N/A".
const NULL_QUESTION: &str = "N/A";

/// Reads the pool and the question with the model and returns every head's calibrated
/// attention per sentence (`heads`: the heads to report).
pub fn head_scores(
    model: &Model,
    docs: &mut DocCache<'_>,
    pool: &[PoolSentence],
    question: &str,
    heads: &HeadSet,
) -> Result<HeadScores> {
    let cfg = model.config();
    heads.check(cfg.layers, cfg.heads)?;
    let tok = model.tokenizer();
    let t_tokens = Instant::now();
    // The chat frame's opening: what the prompt of an empty user turn shares with one of text.
    let empty = model.chat_prompt(Some(frame::SYSTEM), "")?;
    let probe = model.chat_prompt(Some(frame::SYSTEM), "x")?;
    let common = empty.iter().zip(&probe).take_while(|(a, b)| a == b).count();
    let mut ids: Vec<u32> = empty[..common].to_vec();
    ids.extend(tok.encode_ids("Evidence:\n")?);
    let separator = tok.encode_ids("\n\n")?;
    let mut spans: Vec<Range<usize>> = Vec::with_capacity(pool.len());
    for (i, s) in pool.iter().enumerate() {
        let contiguous =
            i > 0 && pool[i - 1].doc == s.doc && pool[i - 1].tokens.end == s.tokens.start;
        if i > 0 && !contiguous {
            ids.extend(&separator);
        }
        let doc = docs.get(s.doc)?;
        let text = doc.chars(doc.token_chars(s.tokens.clone()));
        let start = ids.len();
        ids.extend(tok.encode_ids(text)?);
        spans.push(start..ids.len());
    }
    let lead = tok.encode_ids("\n\nQuestion:")?;
    let asked = tok.encode_ids(&format!("\n\nQuestion: {question}"))?;
    let null = tok.encode_ids(&format!("\n\nQuestion: {NULL_QUESTION}"))?;
    let rows = |c: &[u32]| c.len().saturating_sub(lead.len()).max(1);
    let total = ids.len() + asked.len().max(null.len());
    if total > cfg.context {
        return Err(RetrieveError::invalid(
            "pool",
            format!(
                "{total} tokens of evidence and question are more than the model's window of {}",
                cfg.context
            ),
        ));
    }
    let tokenize_ms = t_tokens.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let layers = LayerSet::new(heads.layers())?;
    let deepest = LayerSet::new(vec![layers.deepest()])?;
    let mut prefix = KvCache::default();
    // On the CPU in pieces, as the scan reads: a 2,048-token pass in one piece materialises
    // [heads, 2048, 2048] scores per layer and ran 3x slower per token there than pieces of
    // 512; the cache makes the result the same pass. A GPU takes the pool in one piece (four
    // pieces cost it 12 ms more; docs/retrieval.md, "Latency").
    let piece_tokens = match model.transformer().device().is_cuda() {
        true => ids.len(),
        false => PREFIX_CHUNK,
    };
    for piece in ids.chunks(piece_tokens) {
        model
            .transformer()
            .attention_rows(piece, Some(&mut prefix), &deepest, 1)?;
    }
    let prefix_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut per_question = Vec::with_capacity(2);
    for cont in [&asked, &null] {
        let mut cache = prefix.clone();
        let taps =
            model
                .transformer()
                .attention_rows(cont, Some(&mut cache), &layers, rows(cont))?;
        per_question.push(taps);
    }
    let forward_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut scores = Vec::with_capacity(heads.heads().len());
    for h in heads.heads() {
        let mut per_sentence = vec![0.0f32; pool.len()];
        for (sign, taps) in [(1.0f32, &per_question[0]), (-1.0, &per_question[1])] {
            let tap = taps
                .iter()
                .find(|t| t.layer == h.layer)
                .expect("every head's layer is tapped");
            // [heads, rows, positions] -> the head's mean attention per position.
            let att = tap.values.get(h.head)?.mean(0)?.to_vec1::<f32>()?;
            for (s, span) in spans.iter().enumerate() {
                per_sentence[s] += sign * att[span.clone()].iter().sum::<f32>();
            }
        }
        scores.push(per_sentence);
    }
    Ok(HeadScores {
        heads: heads.heads().to_vec(),
        scores,
        tokens: total,
        forward_ms,
        prefix_ms,
        tokenize_ms,
    })
}

/// The reciprocal-rank constant of the attention order fused with the pool's own order.
pub const FUSION_K: f32 = 60.0;

/// Returns each sentence's score when its attention rank (by `attention`, best first) is fused
/// with its pool position: `1/(k + rank) + first_stage/(k + position)`, ranks from 1; with
/// `first_stage` 0, the attention scores as they are.
pub fn fuse_with_pool_order(attention: &[f32], first_stage: f32) -> Vec<f32> {
    if first_stage <= 0.0 {
        return attention.to_vec();
    }
    let mut order: Vec<usize> = (0..attention.len()).collect();
    order.sort_by(|&a, &b| attention[b].total_cmp(&attention[a]).then(a.cmp(&b)));
    let mut fused = vec![0.0f32; attention.len()];
    for (rank, &i) in order.iter().enumerate() {
        fused[i] = 1.0 / (FUSION_K + rank as f32 + 1.0);
    }
    for (position, s) in fused.iter_mut().enumerate() {
        *s += first_stage / (FUSION_K + position as f32 + 1.0);
    }
    fused
}

/// Returns the pool's sentences as candidates, best first: by the heads' combined score,
/// fused with the pool's own order by `first_stage` (see [`RerankConfig::first_stage`]).
pub fn ranked(pool: &[PoolSentence], scores: &HeadScores, first_stage: f32) -> Vec<Candidate> {
    let combined = fuse_with_pool_order(&scores.combined(), first_stage);
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.sort_by(|&a, &b| combined[b].total_cmp(&combined[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .map(|i| Candidate {
            doc: pool[i].doc,
            tokens: pool[i].tokens.clone(),
            source: Source::Attention,
            score: combined[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_sets_parse_sort_and_refuse_what_is_not_a_head() {
        let s: HeadSet = "12.0, 8.3,8.3".parse().unwrap();
        assert_eq!(s.to_string(), "8.3,12.0");
        assert_eq!(s.layers(), vec![8, 12]);
        assert!(s.check(30, 9).is_ok());
        assert!(s.check(12, 9).unwrap_err().to_string().contains("12.0"));
        for bad in ["", "8", "8.x", "a.1", "8.3;9.1"] {
            assert!(bad.parse::<HeadSet>().is_err(), "{bad}");
        }
        assert_eq!(HeadSet::all(2, 3).heads().len(), 6);
    }

    #[test]
    fn fusion_with_the_pool_order_lifts_early_sentences() {
        let attention = [0.1, 0.5, 0.3];
        assert_eq!(fuse_with_pool_order(&attention, 0.0), attention.to_vec());
        let fused = fuse_with_pool_order(&attention, 1.0);
        // Sentence 0: attention rank 3, position 1; sentence 1: rank 1, position 2.
        let k = FUSION_K;
        assert!((fused[0] - (1.0 / (k + 3.0) + 1.0 / (k + 1.0))).abs() < 1e-7);
        assert!((fused[1] - (1.0 / (k + 1.0) + 1.0 / (k + 2.0))).abs() < 1e-7);
        // Ties with the pool order break towards attention's first choice.
        assert!(fused[1] > fused[0] && fused[1] > fused[2]);
    }
}
