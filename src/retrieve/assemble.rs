//! Fusion and assembly: ranked spans from S3, BM25 and bias become one context under an exact
//! token budget.
//!
//! Candidates are taken in fused order (each source first fills its share of the budget, if
//! shares are set, then reciprocal-rank fusion orders the rest). A candidate that overlaps or
//! touches a chosen span merges with it. The context is rendered as `[n] text` pieces, best
//! fused rank first (or by document and position, [`EvidenceOrder::Position`]), joined by a
//! blank line, and counted with the model's tokenizer;
//! while it is over budget the lowest-ranked piece is cut back. The budget is never exceeded.

use std::collections::BTreeMap;
use std::ops::Range;

use super::docs::{DocCache, Scope};
use super::error::Result;
use super::{Candidate, EvidenceOrder, EvidenceSpan, Fusion, Source};
use crate::model::TextTokenizer;

/// Separator between pieces of the context.
pub const SEPARATOR: &str = "\n\n";
/// Tokens a piece costs besides its text (its `[n] ` label and the separator), an estimate the
/// exact count afterwards corrects.
const PIECE_OVERHEAD: usize = 6;
/// The fewest text tokens worth a piece of their own.
const MIN_PIECE_TOKENS: usize = 8;

/// A candidate's place in the fused ranking, for traces.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FusedRank {
    /// The source that proposed it.
    pub source: Source,
    /// Its rank within the source (0 = best).
    pub rank: usize,
    /// Document id.
    pub doc_id: String,
    /// Token range.
    pub token_start: usize,
    /// Token range end (exclusive).
    pub token_end: usize,
    /// Its reciprocal-rank fusion score.
    pub fused: f32,
    /// Whether any of it went into the context.
    pub kept: bool,
}

/// A chosen range of one document.
#[derive(Debug, Clone)]
struct Piece {
    tokens: Range<usize>,
    sources: Vec<Source>,
    score: f32,
    /// The best fused position among its candidates: pieces are cut back from the worst.
    order: usize,
}

/// The assembled evidence.
pub struct Assembled {
    /// The context text.
    pub context: String,
    /// Its length in model tokens.
    pub context_tokens: usize,
    /// The pieces, in context order.
    pub spans: Vec<EvidenceSpan>,
    /// The fused ranking.
    pub fused: Vec<FusedRank>,
}

/// Orders candidates: by source shares first, then by reciprocal-rank fusion.
fn fuse(lists: &[Vec<Candidate>], fusion: &Fusion, budget: usize) -> Vec<(Candidate, usize, f32)> {
    let mut all: Vec<(Candidate, usize, f32)> = Vec::new();
    for list in lists {
        for (rank, c) in list.iter().enumerate() {
            let w = fusion.weight(c.source);
            all.push((c.clone(), rank, w / (fusion.rrf_k + rank as f32 + 1.0)));
        }
    }
    all.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.source.cmp(&b.0.source)));
    if fusion.shares.iter().all(|&s| s <= 0.0) {
        return all;
    }
    // Each source's best candidates up to its share of the budget come first.
    let mut first = Vec::new();
    let mut rest = Vec::new();
    let mut used: BTreeMap<Source, usize> = BTreeMap::new();
    for item in all {
        let s = item.0.source;
        let quota = (fusion.share(s) * budget as f32) as usize;
        let u = used.entry(s).or_insert(0);
        if *u < quota {
            *u += item.0.tokens.len();
            first.push(item);
        } else {
            rest.push(item);
        }
    }
    first.extend(rest);
    first
}

/// Chooses, merges and renders candidates within `budget` tokens.
pub fn assemble(
    tokenizer: &TextTokenizer,
    scope: &Scope,
    docs: &mut DocCache<'_>,
    lists: &[Vec<Candidate>],
    fusion: &Fusion,
    budget: usize,
) -> Result<Assembled> {
    let ranked = fuse(lists, fusion, budget);
    let mut chosen: BTreeMap<usize, Vec<Piece>> = BTreeMap::new();
    let mut used = 0usize;
    let mut fused = Vec::with_capacity(ranked.len());
    for (order, (c, rank, score)) in ranked.into_iter().enumerate() {
        let pieces = chosen.entry(c.doc).or_default();
        let kept = add(pieces, &c, order, budget, &mut used);
        fused.push(FusedRank {
            source: c.source,
            rank,
            doc_id: scope.docs[c.doc].id.clone(),
            token_start: c.tokens.start,
            token_end: c.tokens.end,
            fused: score,
            kept,
        });
    }
    chosen.retain(|_, p| !p.is_empty());
    // Exact count; cut back the worst-ranked piece while over budget.
    loop {
        let (context, spans) = render(scope, docs, &chosen, fusion.order)?;
        let n = if context.is_empty() {
            0
        } else {
            tokenizer.encode_ids(&context)?.len()
        };
        if n <= budget {
            return Ok(Assembled {
                context,
                context_tokens: n,
                spans,
                fused,
            });
        }
        let over = n - budget;
        let Some((&doc, i)) = chosen
            .iter()
            .flat_map(|(d, ps)| ps.iter().enumerate().map(move |(i, p)| ((d, i), p.order)))
            .max_by_key(|(_, order)| *order)
            .map(|(k, _)| k)
        else {
            unreachable!("a non-empty context has a piece");
        };
        let pieces = chosen.get_mut(&doc).expect("chosen above");
        let p = &mut pieces[i];
        if p.tokens.len() > over + MIN_PIECE_TOKENS {
            p.tokens.end -= over.max(1);
        } else {
            pieces.remove(i);
            if pieces.is_empty() {
                chosen.remove(&doc);
            }
        }
    }
}

/// Adds `c` to a document's pieces if it fits the estimated budget (cut to fit if needed).
fn add(
    pieces: &mut Vec<Piece>,
    c: &Candidate,
    order: usize,
    budget: usize,
    used: &mut usize,
) -> bool {
    let r = c.tokens.clone();
    if r.is_empty() {
        return false;
    }
    // Tokens not yet covered, and whether it joins an existing piece.
    let covered: usize = pieces
        .iter()
        .map(|p| {
            r.end
                .min(p.tokens.end)
                .saturating_sub(r.start.max(p.tokens.start))
        })
        .sum();
    let touches = pieces
        .iter()
        .any(|p| r.start <= p.tokens.end && p.tokens.start <= r.end);
    let new = r.len() - covered;
    if new == 0 {
        // Already inside: record the source.
        for p in pieces.iter_mut() {
            if p.tokens.start <= r.start && r.end <= p.tokens.end && !p.sources.contains(&c.source)
            {
                p.sources.push(c.source);
            }
        }
        return true;
    }
    let mut cost = new + if touches { 0 } else { PIECE_OVERHEAD };
    let mut r = r;
    if *used + cost > budget {
        // Cut a new piece to what is left, when enough is.
        let left = budget.saturating_sub(*used + PIECE_OVERHEAD);
        if touches || left < MIN_PIECE_TOKENS {
            return false;
        }
        r.end = r.start + left;
        cost = left + PIECE_OVERHEAD;
    }
    let mut merged = Piece {
        tokens: r,
        sources: vec![c.source],
        score: c.score,
        order,
    };
    let mut i = 0;
    while i < pieces.len() {
        let p = &pieces[i];
        if merged.tokens.start <= p.tokens.end && p.tokens.start <= merged.tokens.end {
            let p = pieces.remove(i);
            merged.tokens =
                merged.tokens.start.min(p.tokens.start)..merged.tokens.end.max(p.tokens.end);
            for s in p.sources {
                if !merged.sources.contains(&s) {
                    merged.sources.push(s);
                }
            }
            merged.score = merged.score.max(p.score);
            merged.order = merged.order.min(p.order);
        } else {
            i += 1;
        }
    }
    *used += cost;
    pieces.push(merged);
    pieces.sort_by_key(|p| p.tokens.start);
    true
}

/// Renders the pieces in `order`: by document and position, or best fused rank first.
fn render(
    scope: &Scope,
    docs: &mut DocCache<'_>,
    chosen: &BTreeMap<usize, Vec<Piece>>,
    order: EvidenceOrder,
) -> Result<(String, Vec<EvidenceSpan>)> {
    let mut context = String::new();
    let mut spans = Vec::new();
    let mut pieces: Vec<(usize, &Piece)> = chosen
        .iter()
        .flat_map(|(&d, ps)| ps.iter().map(move |p| (d, p)))
        .collect();
    if order == EvidenceOrder::Rank {
        pieces.sort_by_key(|(_, p)| p.order);
    }
    for (d, p) in pieces {
        let doc = docs.get(d)?;
        let chars = doc.token_chars(p.tokens.clone());
        let text = doc.chars(chars.clone()).to_string();
        if !context.is_empty() {
            context.push_str(SEPARATOR);
        }
        context.push_str(&format!("[{}] {}", spans.len() + 1, text.trim()));
        let mut sources = p.sources.clone();
        sources.sort();
        spans.push(EvidenceSpan {
            doc_id: scope.docs[d].id.clone(),
            char_start: chars.start,
            char_end: chars.end,
            token_start: p.tokens.start,
            token_end: p.tokens.end,
            source: sources
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join("+"),
            score: p.score,
            text,
        });
    }
    Ok((context, spans))
}
