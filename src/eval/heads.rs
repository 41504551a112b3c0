//! Choosing retrieval heads: on development questions with gold evidence, how well each
//! attention head's calibrated attention ranks the gold sentences of the re-ranking pool
//! (QRHead's head selection, measured by ranking quality instead of raw attention mass), and
//! what evidence recall the best few heads together would reach at each budget.
//!
//! The recall here is simulated from the pool alone (sentences taken best first while their
//! tokens and a per-piece overhead fit the budget, adjacent ones merged), so that many head
//! sets can be compared from one forward pass per question; `eval recall --methods rerank`
//! measures the chosen set through the real assembly.

use std::ops::Range;

use crate::retrieve::rerank::{fuse_with_pool_order, RetrievalHead};
use crate::retrieve::PoolScores;

/// Tokens a piece of context costs besides its text (label and separator), as assembly counts.
const PIECE_OVERHEAD: usize = 6;

/// One head's ranking quality over the questions scored so far.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadQuality {
    /// The head, `layer.head`.
    pub head: String,
    /// Its layer.
    pub layer: usize,
    /// Its query head.
    pub index: usize,
    /// Mean over questions of the mean reciprocal rank of the gold sentences in the pool.
    pub mrr: f64,
    /// Mean over questions of the share of gold sentences among the head's top 10.
    pub recall_at_10: f64,
    /// Questions with a gold sentence in the pool.
    pub questions: usize,
}

/// Simulated evidence recall of one ranking at each budget.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetRecall {
    /// What ranks: `pool order` (the first stage's own order) or `top N heads`.
    pub ranking: String,
    /// The heads summed, `layer.head,...` (empty for the pool order).
    pub heads: String,
    /// `(budget, recall)` pairs, recall over every question (gold outside the pool counts as
    /// missed).
    pub recall: Vec<(usize, f64)>,
}

/// One scored question.
#[derive(Debug)]
struct Scored {
    /// Per pool sentence: char range (in the asked document, `None` for another document) and
    /// tokens.
    sentences: Vec<(Option<Range<usize>>, usize, Range<usize>)>,
    gold: Vec<(usize, usize)>,
    golden: Vec<bool>,
    /// `[head][sentence]`.
    scores: Vec<Vec<f32>>,
}

/// Weights of the pool's own order fused with the heads' order that the simulation tries
/// (`rerank --rerank-first-stage`).
const FIRST_STAGE_WEIGHTS: &[f32] = &[0.0, 0.5, 1.0];

/// Accumulates per-head ranking quality over questions.
#[derive(Debug, Default)]
pub struct HeadTally {
    heads: Vec<RetrievalHead>,
    questions: Vec<Scored>,
    asked: usize,
}

/// Returns whether a pool sentence overlaps a gold char range of the same document.
fn is_gold(sentence: &Range<usize>, gold: &[(usize, usize)]) -> bool {
    gold.iter()
        .any(|&(s, e)| sentence.start < e && s < sentence.end)
}

/// Returns sentence indexes best first.
fn order_by(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

impl Scored {
    /// Mean reciprocal rank of the gold sentences and their share in the top 10.
    fn quality(&self, order: &[usize]) -> (f64, f64) {
        let gold = self.golden.iter().filter(|&&g| g).count();
        let (mut rr, mut top) = (0.0, 0usize);
        for (rank, &s) in order.iter().enumerate() {
            if self.golden[s] {
                rr += 1.0 / (rank as f64 + 1.0);
                top += usize::from(rank < 10);
            }
        }
        (rr / gold as f64, top as f64 / gold.min(10) as f64)
    }

    /// Whether taking sentences in `order` under `budget` covers every gold range.
    fn recalled(&self, order: &[usize], budget: usize) -> bool {
        let mut chosen: Vec<usize> = Vec::new();
        let mut used = 0usize;
        for &s in order {
            let (_, _, tokens) = &self.sentences[s];
            let touches = chosen.iter().any(|&c| {
                let t = &self.sentences[c].2;
                self.sentences[c].0.is_some() == self.sentences[s].0.is_some()
                    && (t.end == tokens.start || tokens.end == t.start)
            });
            let cost = tokens.len() + if touches { 0 } else { PIECE_OVERHEAD };
            if used + cost <= budget {
                used += cost;
                chosen.push(s);
            }
        }
        // Merge the chosen sentences of the asked document into char ranges.
        let mut ranges: Vec<Range<usize>> = chosen
            .iter()
            .filter_map(|&c| self.sentences[c].0.clone())
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(m) if r.start <= m.end + 1 => m.end = m.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.gold
            .iter()
            .all(|&(s, e)| merged.iter().any(|m| m.start <= s && e <= m.end))
    }
}

impl HeadTally {
    /// Adds one question: its pool with every head's scores, and its gold char ranges (in the
    /// document `doc_id`).
    pub fn add(&mut self, pool: &PoolScores, doc_id: &str, gold: &[(usize, usize)]) {
        self.asked += 1;
        let sentences: Vec<_> = pool
            .sentences
            .iter()
            .map(|s| {
                let chars = (s.doc_id == doc_id).then(|| s.chars.clone());
                (chars, s.tokens.len(), s.tokens.clone())
            })
            .collect();
        let golden: Vec<bool> = sentences
            .iter()
            .map(|(c, _, _)| c.as_ref().is_some_and(|c| is_gold(c, gold)))
            .collect();
        if self.heads.is_empty() {
            self.heads = pool.scores.heads.clone();
        }
        self.questions.push(Scored {
            sentences,
            gold: gold.to_vec(),
            golden,
            scores: pool.scores.scores.clone(),
        });
    }

    /// Returns every head, best mean reciprocal rank first (questions without a gold sentence
    /// in the pool left out).
    pub fn ranking(&self) -> Vec<HeadQuality> {
        let with_gold: Vec<&Scored> = self
            .questions
            .iter()
            .filter(|q| q.golden.iter().any(|&g| g))
            .collect();
        let n = with_gold.len().max(1) as f64;
        let mut out: Vec<HeadQuality> = self
            .heads
            .iter()
            .enumerate()
            .map(|(h, head)| {
                let (mut mrr, mut top) = (0.0, 0.0);
                for q in &with_gold {
                    let (a, b) = q.quality(&order_by(&q.scores[h]));
                    mrr += a;
                    top += b;
                }
                HeadQuality {
                    head: head.to_string(),
                    layer: head.layer,
                    index: head.head,
                    mrr: mrr / n,
                    recall_at_10: top / n,
                    questions: with_gold.len(),
                }
            })
            .collect();
        out.sort_by(|a, b| b.mrr.total_cmp(&a.mrr).then(a.head.cmp(&b.head)));
        out
    }

    /// Returns the pool order's quality as a row like a head's (`pool order`).
    pub fn pool_order(&self) -> HeadQuality {
        let with_gold: Vec<&Scored> = self
            .questions
            .iter()
            .filter(|q| q.golden.iter().any(|&g| g))
            .collect();
        let n = with_gold.len().max(1) as f64;
        let (mut mrr, mut top) = (0.0, 0.0);
        for q in &with_gold {
            let order: Vec<usize> = (0..q.golden.len()).collect();
            let (a, b) = q.quality(&order);
            mrr += a;
            top += b;
        }
        HeadQuality {
            head: "pool order".into(),
            layer: 0,
            index: 0,
            mrr: mrr / n,
            recall_at_10: top / n,
            questions: with_gold.len(),
        }
    }

    /// Returns the simulated recall at `budgets` of the pool order and of the best `sizes`
    /// heads of `ranking` summed.
    pub fn set_recall(
        &self,
        ranking: &[HeadQuality],
        sizes: &[usize],
        budgets: &[usize],
    ) -> Vec<SetRecall> {
        let n = self.questions.len().max(1) as f64;
        let recall_of = |order_of: &dyn Fn(&Scored) -> Vec<usize>| {
            budgets
                .iter()
                .map(|&b| {
                    let hits = self
                        .questions
                        .iter()
                        .filter(|q| q.recalled(&order_of(q), b))
                        .count();
                    (b, hits as f64 / n)
                })
                .collect::<Vec<_>>()
        };
        let mut out = vec![SetRecall {
            ranking: "pool order".into(),
            heads: String::new(),
            recall: recall_of(&|q: &Scored| (0..q.golden.len()).collect()),
        }];
        for &k in sizes.iter().filter(|&&k| k <= ranking.len()) {
            let picked: Vec<usize> = ranking[..k]
                .iter()
                .filter_map(|h| {
                    self.heads
                        .iter()
                        .position(|x| x.layer == h.layer && x.head == h.index)
                })
                .collect();
            let heads = ranking[..k]
                .iter()
                .map(|h| h.head.clone())
                .collect::<Vec<_>>()
                .join(",");
            for &first_stage in FIRST_STAGE_WEIGHTS {
                let combined = |q: &Scored| {
                    let n = q.golden.len();
                    let sum: Vec<f32> = (0..n)
                        .map(|s| picked.iter().map(|&h| q.scores[h][s]).sum())
                        .collect();
                    order_by(&fuse_with_pool_order(&sum, first_stage))
                };
                let ranking = if first_stage > 0.0 {
                    format!("top {k} heads, first stage {first_stage}")
                } else {
                    format!("top {k} heads")
                };
                out.push(SetRecall {
                    ranking,
                    heads: heads.clone(),
                    recall: recall_of(&combined),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieve::rerank::HeadScores;
    use crate::retrieve::PoolSentenceInfo;

    fn sentence(chars: Range<usize>) -> PoolSentenceInfo {
        PoolSentenceInfo {
            doc_id: "d".into(),
            tokens: chars.start / 2..chars.end / 2,
            chars,
        }
    }

    fn pool() -> PoolScores {
        PoolScores {
            sentences: vec![sentence(0..20), sentence(20..40), sentence(40..60)],
            scores: HeadScores {
                heads: vec![
                    RetrievalHead { layer: 0, head: 0 },
                    RetrievalHead { layer: 1, head: 2 },
                ],
                // Head 0.0 puts the gold sentence (20..40) last, head 1.2 first.
                scores: vec![vec![0.3, 0.1, 0.2], vec![0.0, 0.5, 0.1]],
                tokens: 0,
                forward_ms: 0.0,
                prefix_ms: 0.0,
                tokenize_ms: 0.0,
            },
        }
    }

    #[test]
    fn a_head_that_ranks_gold_first_wins() {
        let mut t = HeadTally::default();
        t.add(&pool(), "d", &[(22, 30)]);
        // A question whose gold is not in the pool counts for nobody's ranking.
        t.add(&pool(), "d", &[(80, 90)]);
        let r = t.ranking();
        assert_eq!(r[0].head, "1.2");
        assert!((r[0].mrr - 1.0).abs() < 1e-9);
        assert!((r[1].mrr - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(r[0].questions, 1);
        assert!((t.pool_order().mrr - 0.5).abs() < 1e-9);
    }

    #[test]
    fn simulated_recall_follows_the_ranking_and_the_budget() {
        let mut t = HeadTally::default();
        t.add(&pool(), "d", &[(22, 30)]);
        let r = t.ranking();
        // One sentence of 10 tokens + 6 fits 16; two do not.
        let sets = t.set_recall(&r, &[1, 2], &[16, 100]);
        assert_eq!(sets[0].ranking, "pool order");
        assert_eq!(sets[0].recall, vec![(16, 0.0), (100, 1.0)]);
        assert_eq!(sets[1].heads, "1.2");
        assert_eq!(sets[1].recall, vec![(16, 1.0), (100, 1.0)]);
    }
}
