//! S3 retrieval: feature co-activation between the question's queries and the indexed keys.
//!
//! 1. Weights: `w_f = (summed query activation of f) * idf(f)` over the scope; features that
//!    fire almost everywhere (idf below a floor) are dropped, the strongest few hundred kept.
//! 2. Regions: small scopes are scored whole. Larger ones first rank coarse blocks (512
//!    positions) by `sum w_f * count_f(block)` from the coarse records, and only the best
//!    blocks (plus a margin) are scored per token: the cost follows the hits.
//! 3. Token scores `s(t) = sum of w_f over the features that fired at t`, smoothed with a
//!    Gaussian (semantic density), then non-maximum suppression picks span centres; each span
//!    is snapped to sentence or line ends.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::docs::{DocCache, Scope};
use super::error::Result;
use super::parts;
use super::{Candidate, RetrieveConfig, Source};
use crate::index::{BlockCount, Index, LayerFeature, COARSE_BLOCK_TOKENS};

/// A question feature with its statistics in scope.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WeightedFeature {
    /// Layer and posting feature.
    #[serde(flatten)]
    pub feature: LayerFeature,
    /// Summed query activation.
    pub activation: f32,
    /// Tokens in scope where it fired.
    pub df: u64,
    /// Its idf in scope.
    pub idf: f32,
    /// `activation * idf`.
    pub weight: f32,
}

/// A scored position, for traces.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScoredToken {
    /// Document id.
    pub doc_id: String,
    /// Document-local token.
    pub token: usize,
    /// Score.
    pub score: f32,
}

/// What the S3 pass found, with what a trace shows.
#[derive(Debug, Default)]
pub struct S3Outcome {
    /// Spans ranked by peak density.
    pub candidates: Vec<Candidate>,
    /// Features kept, by weight.
    pub features: Vec<WeightedFeature>,
    /// Question features dropped for low idf.
    pub dropped_low_idf: usize,
    /// Whether the coarse pass ran.
    pub coarse: bool,
    /// Tokens scored per token.
    pub scored_tokens: usize,
    /// Posting lists decoded.
    pub postings_read: usize,
    /// Best positions before smoothing.
    pub top_raw: Vec<ScoredToken>,
    /// Best positions after smoothing.
    pub top_smoothed: Vec<ScoredToken>,
    /// Milliseconds per stage.
    pub timings_ms: BTreeMap<String, f64>,
    /// The smoothed density of the scored regions: (scope document, token range, density).
    pub density: Vec<(usize, Range<usize>, Vec<f32>)>,
}

impl S3Outcome {
    /// The highest smoothed density inside a document's token range (0 where nothing scored).
    pub fn peak_density(&self, doc: usize, tokens: &Range<usize>) -> f32 {
        self.density
            .iter()
            .filter(|(d, r, _)| *d == doc && r.start < tokens.end && tokens.start < r.end)
            .flat_map(|(_, r, v)| {
                let lo = tokens.start.max(r.start) - r.start;
                let hi = tokens.end.min(r.end) - r.start;
                v[lo..hi].iter().copied()
            })
            .fold(0.0, f32::max)
    }
}

/// A run of positions of one document that is scored per token.
struct Region {
    doc: usize,
    tokens: Range<usize>,
    raw: Vec<f32>,
    smooth: Vec<f32>,
}

fn idf(n: f64, df: f64) -> f32 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32
}

/// Returns a normalised Gaussian kernel of `sigma` tokens, cut at three sigma.
fn kernel(sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (3.0 * sigma).ceil() as i32;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

fn smooth(raw: &[f32], k: &[f32]) -> Vec<f32> {
    let r = (k.len() / 2) as isize;
    let n = raw.len() as isize;
    (0..n)
        .map(|i| {
            let mut acc = 0.0;
            for (j, w) in k.iter().enumerate() {
                let t = i + j as isize - r;
                if (0..n).contains(&t) {
                    acc += w * raw[t as usize];
                }
            }
            acc
        })
        .collect()
}

/// Merges overlapping or touching ranges per document.
fn merge_regions(mut r: Vec<(usize, Range<usize>)>) -> Vec<(usize, Range<usize>)> {
    r.sort_by_key(|(d, t)| (*d, t.start));
    let mut out: Vec<(usize, Range<usize>)> = Vec::new();
    for (d, t) in r {
        match out.last_mut() {
            Some((ld, lt)) if *ld == d && t.start <= lt.end => lt.end = lt.end.max(t.end),
            _ => out.push((d, t)),
        }
    }
    out
}

/// Question features one host thread counts at least: a count is one record read (a whole
/// collection), a few packs (its open tail) or a block list (a subset).
const FEATURES_PER_PART: usize = 32;

/// Scope documents one host thread scores tokens of at least.
const DOCUMENTS_PER_PART: usize = 4;

/// How often a question feature fired in scope, and what was read to count it.
struct FeatureCount {
    /// Tokens in scope where it fired.
    df: u64,
    /// Its coarse blocks in scope, when a subset was counted by them.
    blocks: Option<Vec<BlockCount>>,
    /// Its postings in each scope document, when a filter's small scope counted them.
    postings: Option<Vec<Vec<u32>>>,
}

/// Counts the tokens of `scope` where `feature` fired: for a whole collection exact, from one
/// total record (plus the open tail); for a filter's small scope (`own_postings`) from its
/// documents' postings; for another subset by whole blocks of the coarse records.
fn count_in_scope(
    reader: &mut crate::index::PostingReader<'_>,
    scope: &Scope,
    feature: LayerFeature,
    own_postings: bool,
) -> Result<FeatureCount> {
    if own_postings {
        let per_doc = scope_postings(reader, scope, feature)?;
        return Ok(FeatureCount {
            df: per_doc.iter().map(|p| p.len() as u64).sum(),
            blocks: None,
            postings: Some(per_doc),
        });
    }
    if scope.whole {
        return Ok(FeatureCount {
            df: reader.token_count(feature)?,
            blocks: None,
            postings: None,
        });
    }
    let block = COARSE_BLOCK_TOKENS;
    let mut b = reader.coarse_blocks(feature)?;
    b.retain(|c| {
        !scope
            .locate(c.block * block..(c.block + 1) * block)
            .is_empty()
    });
    Ok(FeatureCount {
        df: b.iter().map(|c| u64::from(c.tokens)).sum(),
        blocks: Some(b),
        postings: None,
    })
}

/// Returns the postings of `feature` in each document of the scope, in scope order.
fn scope_postings(
    reader: &mut crate::index::PostingReader<'_>,
    scope: &Scope,
    feature: LayerFeature,
) -> Result<Vec<Vec<u32>>> {
    Ok(scope
        .docs
        .iter()
        .map(|d| reader.posting(d.number, feature))
        .collect::<crate::index::Result<Vec<_>>>()?)
}

/// Runs S3 over `scope` for the question features `activation`, producing spans until about
/// `want_tokens` tokens are covered.
pub fn retrieve(
    index: &Index,
    scope: &Scope,
    docs: &mut DocCache<'_>,
    activation: &BTreeMap<LayerFeature, f32>,
    cfg: &RetrieveConfig,
    want_tokens: usize,
) -> Result<S3Outcome> {
    let mut out = S3Outcome::default();
    let mut clock = std::time::Instant::now();
    let mut lap = |name: &str, out: &mut S3Outcome| {
        out.timings_ms
            .insert(name.into(), clock.elapsed().as_secs_f64() * 1e3);
        clock = std::time::Instant::now();
    };
    let n_tokens = scope.tokens();
    let coarse = scope.docs.len() > cfg.token_level_max_docs || n_tokens > cfg.coarse_min_tokens;
    out.coarse = coarse;
    let block = COARSE_BLOCK_TOKENS;
    // Document frequency per feature: for a whole collection exact, from one total record per
    // feature (plus the open tail); for a subset counted by whole blocks of the coarse records.
    // Block lists are read only for the features kept (the common ones the idf floor drops
    // fire in every bucket: reading theirs cost most of a 10M-token question).
    let mut reader = index.posting_reader(scope.cid)?;
    // What each part's reader starts from (the collection's sealed end and open tail).
    let fresh = reader.another();
    // A filter's small scope counts from its own documents' postings: exact, and what the
    // same documents alone in a data dir would count, at their cost rather than the
    // collection's (the coarse records span the whole collection). The postings are kept
    // for the token pass.
    let own_postings = scope.filter.is_some() && !coarse;
    let features: Vec<LayerFeature> = activation.keys().copied().collect();
    // Each part of the features reads with a reader of its own (one record or a few packs
    // per feature).
    let counts = parts::in_parts(&features, FEATURES_PER_PART, |part| {
        let mut reader = fresh.another();
        part.iter()
            .map(|&f| count_in_scope(&mut reader, scope, f, own_postings))
            .collect()
    })?;
    let mut dfs: Vec<u64> = Vec::with_capacity(counts.len());
    let mut blocks: Vec<Option<Vec<BlockCount>>> = Vec::with_capacity(counts.len());
    let mut prefetched: HashMap<usize, Vec<Vec<u32>>> = HashMap::new();
    for (i, count) in counts.into_iter().enumerate() {
        dfs.push(count.df);
        blocks.push(count.blocks);
        if let Some(per_doc) = count.postings {
            out.postings_read += per_doc.len();
            prefetched.insert(i, per_doc);
        }
    }
    lap("df", &mut out);
    // Weights.
    let mut weighted: Vec<(usize, WeightedFeature)> = Vec::new();
    for (i, (&feature, &a)) in activation.iter().enumerate() {
        let df = dfs[i];
        if df == 0 {
            continue;
        }
        let idf = idf(n_tokens as f64, df as f64);
        if idf < cfg.min_idf {
            out.dropped_low_idf += 1;
            continue;
        }
        weighted.push((
            i,
            WeightedFeature {
                feature,
                activation: a,
                df,
                idf,
                weight: a * idf,
            },
        ));
    }
    weighted.sort_by(|a, b| b.1.weight.total_cmp(&a.1.weight));
    weighted.truncate(cfg.max_features);
    // Token path: the kept features' postings in every scope document.
    let mut postings: HashMap<usize, Vec<Vec<u32>>> = HashMap::new();
    if !coarse {
        for (i, w) in weighted.iter().take(cfg.token_features) {
            let per_doc = match prefetched.remove(i) {
                Some(p) => p,
                None => {
                    let p = scope_postings(&mut reader, scope, w.feature)?;
                    out.postings_read += p.len();
                    p
                }
            };
            postings.insert(*i, per_doc);
        }
    }
    // Regions to score per token.
    let margin = (3.0 * cfg.sigma).ceil() as usize + cfg.span_tokens;
    let regions: Vec<(usize, Range<usize>)> = if coarse {
        let missing: Vec<(usize, LayerFeature)> = weighted
            .iter()
            .filter(|(i, _)| blocks[*i].is_none())
            .map(|(i, w)| (*i, w.feature))
            .collect();
        let read = parts::in_parts(&missing, FEATURES_PER_PART, |part| {
            let mut reader = fresh.another();
            part.iter()
                .map(|&(_, f)| Ok(reader.coarse_blocks(f)?))
                .collect()
        })?;
        for ((i, _), b) in missing.into_iter().zip(read) {
            blocks[i] = Some(b);
        }
        // Dense block scores: a common feature touches most blocks of a large collection,
        // and a hash map per (feature, block) cost ~100 ms at 10M tokens.
        let n_blocks = weighted
            .iter()
            .filter_map(|(i, _)| blocks[*i].as_deref()?.last().map(|c| c.block as usize + 1))
            .max()
            .unwrap_or(0);
        let mut score = vec![0f32; n_blocks];
        for (i, w) in &weighted {
            for c in blocks[*i].as_deref().unwrap_or_default() {
                score[c.block as usize] += w.weight * c.tokens as f32;
            }
        }
        let wanted = cfg
            .coarse_blocks
            .max((4 * want_tokens).div_ceil(block as usize));
        let mut ranked: Vec<(u32, f32)> = score
            .into_iter()
            .enumerate()
            .filter(|&(_, v)| v > 0.0)
            .map(|(g, v)| (g as u32, v))
            .collect();
        let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if ranked.len() > wanted {
            ranked.select_nth_unstable_by(wanted, by_score);
            ranked.truncate(wanted);
        }
        ranked.sort_by(by_score);
        let mut r = Vec::new();
        for (g, _) in ranked {
            for (d, t) in scope.locate(g * block..(g + 1) * block) {
                let len = scope.docs[d].tokens as usize;
                r.push((d, t.start.saturating_sub(margin)..(t.end + margin).min(len)));
            }
        }
        merge_regions(r)
    } else {
        (0..scope.docs.len())
            .map(|d| (d, 0..scope.docs[d].tokens as usize))
            .collect()
    };
    lap("coarse", &mut out);
    let mut regions: Vec<Region> = regions
        .into_iter()
        .map(|(doc, tokens)| Region {
            doc,
            raw: Vec::new(),
            smooth: Vec::new(),
            tokens,
        })
        .collect();
    out.scored_tokens = regions.iter().map(|r| r.tokens.len()).sum();
    // Token scores, document by document, each part of the documents on a thread with a
    // reader of its own: a token's score adds its features' weights in the same order
    // (strongest first) however the documents are cut.
    let mut by_doc: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, r) in regions.iter().enumerate() {
        by_doc.entry(r.doc).or_default().push(i);
    }
    let by_doc: Vec<(usize, Vec<usize>)> = by_doc.into_iter().collect();
    // The strongest features score tokens; the rest only helped rank blocks.
    let scoring: Vec<&(usize, WeightedFeature)> =
        weighted.iter().take(cfg.token_features).collect();
    let scored = parts::in_parts(&by_doc, DOCUMENTS_PER_PART, |part| {
        let mut reader = None;
        let mut out = Vec::with_capacity(part.len());
        for (d, rs) in part {
            let mut raws: Vec<Vec<f32>> = rs
                .iter()
                .map(|&ri| vec![0.0; regions[ri].tokens.len()])
                .collect();
            let mut read = 0;
            for &&(i, ref w) in &scoring {
                let fetched;
                let positions: &[u32] = if coarse {
                    // Skip documents where the coarse record shows no hit near the regions.
                    let doc = &scope.docs[*d];
                    let lo = (doc.first
                        + rs.iter()
                            .map(|&r| regions[r].tokens.start)
                            .min()
                            .unwrap_or(0) as u32)
                        / block;
                    let hi = (doc.first
                        + rs.iter().map(|&r| regions[r].tokens.end).max().unwrap_or(0) as u32)
                        .div_ceil(block);
                    let b = blocks[i].as_deref().unwrap_or_default();
                    let from = b.partition_point(|c| c.block < lo);
                    if b.get(from).is_none_or(|c| c.block >= hi) {
                        continue;
                    }
                    let reader = match &mut reader {
                        Some(r) => r,
                        None => reader.insert(fresh.another()),
                    };
                    fetched = reader.posting(doc.number, w.feature)?;
                    read += 1;
                    &fetched
                } else {
                    &postings[&i][*d]
                };
                for (&ri, raw) in rs.iter().zip(&mut raws) {
                    let r = &regions[ri];
                    let from = positions.partition_point(|&p| (p as usize) < r.tokens.start);
                    for &p in &positions[from..] {
                        let p = p as usize;
                        if p >= r.tokens.end {
                            break;
                        }
                        raw[p - r.tokens.start] += w.weight;
                    }
                }
            }
            out.push((raws, read));
        }
        Ok(out)
    })?;
    for ((_, rs), (raws, read)) in by_doc.iter().zip(scored) {
        for (&ri, raw) in rs.iter().zip(raws) {
            regions[ri].raw = raw;
        }
        out.postings_read += read;
    }
    lap("score", &mut out);
    let k = kernel(cfg.sigma);
    for r in &mut regions {
        r.smooth = smooth(&r.raw, &k);
    }
    lap("smooth", &mut out);
    // Non-maximum suppression over the smoothed density.
    let mut peaks: Vec<(f32, usize, usize)> = Vec::new();
    for (ri, r) in regions.iter().enumerate() {
        for (j, &s) in r.smooth.iter().enumerate() {
            if s > 0.0 {
                peaks.push((s, ri, j));
            }
        }
    }
    peaks.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let top = |v: &mut Vec<ScoredToken>, pick: &dyn Fn(&Region, usize) -> f32| {
        let mut all: Vec<(f32, usize, usize)> = Vec::new();
        for (ri, r) in regions.iter().enumerate() {
            for j in 0..r.raw.len() {
                let s = pick(r, j);
                if s > 0.0 {
                    all.push((s, ri, j));
                }
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (s, ri, j) in all.into_iter().take(20) {
            let r = &regions[ri];
            v.push(ScoredToken {
                doc_id: scope.docs[r.doc].id.clone(),
                token: r.tokens.start + j,
                score: s,
            });
        }
    };
    if cfg.trace {
        let mut raw = Vec::new();
        top(&mut raw, &|r, j| r.raw[j]);
        let mut sm = Vec::new();
        top(&mut sm, &|r, j| r.smooth[j]);
        out.top_raw = raw;
        out.top_smoothed = sm;
    }
    let half = cfg.span_tokens / 2;
    let mut suppressed: HashMap<usize, Vec<Range<usize>>> = HashMap::new();
    let mut covered = 0usize;
    for (s, ri, j) in peaks {
        if covered >= 2 * want_tokens || out.candidates.len() >= cfg.max_spans {
            break;
        }
        let r = &regions[ri];
        let d = r.doc;
        let p = r.tokens.start + j;
        if suppressed
            .get(&d)
            .is_some_and(|v| v.iter().any(|x| x.contains(&p)))
        {
            continue;
        }
        let len = scope.docs[d].tokens as usize;
        let raw = p.saturating_sub(half)..(p + half + 1).min(len);
        let span = docs.get(d)?.snap(raw, cfg.snap_reach);
        suppressed
            .entry(d)
            .or_default()
            .push(span.start.saturating_sub(half)..span.end + half);
        covered += span.len();
        out.candidates.push(Candidate {
            doc: d,
            tokens: span,
            source: Source::S3,
            score: s,
        });
    }
    out.features = weighted.into_iter().map(|(_, w)| w).collect();
    out.density = regions
        .into_iter()
        .map(|r| (r.doc, r.tokens, r.smooth))
        .collect();
    lap("nms", &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_normalised_and_smoothing_keeps_mass_inside() {
        let k = kernel(2.0);
        assert_eq!(k.len(), 13);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let mut raw = vec![0.0; 41];
        raw[20] = 1.0;
        let s = smooth(&raw, &k);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(s[20] > s[19] && s[19] > s[15]);
    }

    #[test]
    fn idf_falls_with_df() {
        assert!(idf(1000.0, 1.0) > idf(1000.0, 100.0));
        assert!(idf(1000.0, 999.0) < 0.1);
    }

    #[test]
    fn regions_merge_per_document() {
        let m = merge_regions(vec![
            (1, 5..9),
            (0, 0..4),
            (1, 9..12),
            (1, 20..30),
            (0, 2..3),
        ]);
        assert_eq!(m, vec![(0, 0..4), (1, 5..12), (1, 20..30)]);
    }
}
