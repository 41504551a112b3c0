//! Retrieval: from a question to compact, cited evidence under an exact token budget.
//!
//! [`question`] runs the question through the model and encodes its query projections with the
//! SAEs; [`s3`] scores the indexed tokens by feature co-activation (coarse blocks first on large
//! scopes), smooths, and picks spans by non-maximum suppression; BM25 passages and bias spans
//! (each document's opening) come from here; [`assemble`] fuses the ranked lists and renders the
//! context within the budget. Every span carries its document's char and token range.

pub mod assemble;
pub mod dense;
pub mod docs;
pub mod error;
pub mod filter;
pub mod frame;
mod parts;
pub mod question;
pub mod rerank;
pub mod s3;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::Instant;

pub use error::{Result, RetrieveError};
pub use filter::{Filter, FilterReport};

use self::docs::{DocCache, Scope};
use crate::embed::Embedder;
use crate::index::{Index, StoreIdentity};
use crate::ingest::{layer_codes, LayerCode};
use crate::model::Model;
use crate::sae::SaeSet;

/// How evidence is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Feature co-activation alone.
    S3,
    /// BM25 passages alone.
    Bm25,
    /// S3, BM25 and bias under one budget.
    Hybrid,
    /// Each document's opening alone.
    Bias,
    /// BM25 and S3 candidates cut into sentences and re-ranked by the model's attention.
    Rerank,
    /// Passages by the cosine of their sentence embedding to the question's.
    Dense,
    /// BM25 and dense passages fused by reciprocal rank (the usual hybrid RAG).
    Rag,
}

impl FromStr for Method {
    type Err = RetrieveError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "s3" => Ok(Self::S3),
            "bm25" => Ok(Self::Bm25),
            "hybrid" => Ok(Self::Hybrid),
            "bias" => Ok(Self::Bias),
            "rerank" => Ok(Self::Rerank),
            "dense" => Ok(Self::Dense),
            "rag" => Ok(Self::Rag),
            _ => Err(RetrieveError::invalid(
                "method",
                format!("`{s}` is not one of s3, bm25, hybrid, bias, rerank, dense, rag"),
            )),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::S3 => "s3",
            Self::Bm25 => "bm25",
            Self::Hybrid => "hybrid",
            Self::Bias => "bias",
            Self::Rerank => "rerank",
            Self::Dense => "dense",
            Self::Rag => "rag",
        })
    }
}

/// Where a span came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Feature co-activation.
    S3,
    /// BM25.
    Bm25,
    /// A document's opening.
    Bias,
    /// The model's attention over first-stage candidates.
    Attention,
    /// Sentence embeddings (the dense methods).
    Dense,
}

impl Source {
    /// Returns the name used in evidence.
    pub fn name(self) -> &'static str {
        match self {
            Self::S3 => "s3",
            Self::Bm25 => "bm25",
            Self::Bias => "bias",
            Self::Attention => "attention",
            Self::Dense => "dense",
        }
    }
}

/// A proposed span of one scope document.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Index into the scope's documents.
    pub doc: usize,
    /// Document-local token range.
    pub tokens: Range<usize>,
    /// Who proposed it.
    pub source: Source,
    /// The source's own score.
    pub score: f32,
}

/// How hybrid retrieval shares the budget.
#[derive(Debug, Clone)]
pub struct Fusion {
    /// Reciprocal-rank fusion constant.
    pub rrf_k: f32,
    /// Per-source weights of the fusion score: s3, bm25, bias.
    pub weights: [f32; 3],
    /// Per-source shares of the budget filled first (all zero: fusion order only).
    pub shares: [f32; 3],
    /// Weight of the S3 density rank when hybrid re-ranks the BM25 passages (0: BM25's own
    /// order): a passage's new score is `1/(k + bm25 rank) + rerank/(k + density rank)`.
    pub rerank: f32,
    /// The order the chosen pieces are given in.
    pub order: EvidenceOrder,
}

/// The order of the evidence pieces in the context.
///
/// Best first is the default: on development questions (docs/eval.md, "Evidence order") the
/// Qwen 0.5B reader's answers to needles went from 7 to 10 of 10 exact, and HotpotQA F1 from
/// 11.3 to 19.3 (30 questions), against the same pieces by document and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvidenceOrder {
    /// By document and position (as they were written).
    Position,
    /// Best fused rank first (a small reader tends to take the first piece that looks like
    /// an answer).
    #[default]
    Rank,
}

impl std::str::FromStr for EvidenceOrder {
    type Err = RetrieveError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "position" => Ok(Self::Position),
            "rank" => Ok(Self::Rank),
            _ => Err(RetrieveError::invalid(
                "evidence order",
                format!("`{s}` is not one of position, rank"),
            )),
        }
    }
}

impl Default for Fusion {
    fn default() -> Self {
        Self {
            rrf_k: 60.0,
            weights: [0.5, 1.0, 0.1],
            shares: [0.0; 3],
            // docs/retrieval.md: over 402 HotpotQA questions (three sets) above BM25 at every
            // budget, +8 / +11 / +2 questions at 512 / 1024 / 2048 tokens (0.1: +4 / +4 / +1).
            rerank: 0.25,
            order: EvidenceOrder::Rank,
        }
    }
}

impl Fusion {
    fn slot(s: Source) -> Option<usize> {
        match s {
            Source::S3 => Some(0),
            Source::Bm25 => Some(1),
            Source::Bias => Some(2),
            // Re-ranked and dense candidates come alone, in their own order.
            Source::Attention | Source::Dense => None,
        }
    }

    /// Returns the fusion weight of a source.
    pub fn weight(&self, s: Source) -> f32 {
        Self::slot(s).map_or(1.0, |i| self.weights[i])
    }

    /// Returns the budget share of a source.
    pub fn share(&self, s: Source) -> f32 {
        Self::slot(s).map_or(0.0, |i| self.shares[i])
    }
}

/// Settings of retrieval (defaults chosen by the measurements in docs/retrieval.md).
#[derive(Debug, Clone)]
pub struct RetrieveConfig {
    /// Gaussian smoothing of token scores, in tokens.
    pub sigma: f32,
    /// Span length around an NMS peak before snapping, in tokens.
    pub span_tokens: usize,
    /// How far a span may widen to reach a sentence or line end, in tokens per side.
    pub snap_reach: usize,
    /// Most S3 spans.
    pub max_spans: usize,
    /// Features with a lower idf in scope are dropped.
    pub min_idf: f32,
    /// Most question features kept, by weight (for idf statistics and block ranking).
    pub max_features: usize,
    /// Of those, how many score individual tokens.
    pub token_features: usize,
    /// Features per question row (`None`: the SAE's own k).
    pub query_k: Option<usize>,
    /// Scopes with at most this many tokens and documents are scored per token throughout.
    pub coarse_min_tokens: u64,
    /// Scopes with more documents than this use the coarse pass.
    pub token_level_max_docs: usize,
    /// Fewest coarse blocks scored per token.
    pub coarse_blocks: usize,
    /// BM25 passages fetched.
    pub bm25_limit: usize,
    /// Tokens of a document's opening drawn on as bias.
    pub bias_tokens: usize,
    /// How hybrid shares the budget.
    pub fusion: Fusion,
    /// Whether to collect a trace.
    pub trace: bool,
    /// Longest question, in chars.
    pub max_question_chars: usize,
    /// Indexed layers S3 reads (`None`: all of them).
    pub layers: Option<Vec<usize>>,
    /// Which projections of the question are encoded.
    pub probe: question::Probe,
    /// Attention re-ranking (`Method::Rerank`); `None`: that method is refused.
    pub rerank: Option<rerank::RerankConfig>,
    /// Whether hybrid's passages are RAG's (BM25 and dense fused) when the embedding model is
    /// there, rather than BM25's alone.
    pub hybrid_dense: bool,
}

/// The widest Gaussian smoothing, in tokens (its kernel spans 6 sigma).
const MAX_SIGMA: f32 = 1024.0;
/// The longest span and snap reach, in tokens.
const MAX_SPAN_TOKENS: usize = 1 << 16;

impl RetrieveConfig {
    /// Refuses settings that cannot work (a zero, negative, huge or non-finite smoothing or
    /// fusion constant, an empty or huge span), naming the setting.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &'static str, why: String| Err(RetrieveError::invalid(field, why));
        if !(self.sigma > 0.0 && self.sigma <= MAX_SIGMA) {
            return bad(
                "sigma",
                format!("{} is not in (0, {MAX_SIGMA}]", self.sigma),
            );
        }
        if !(1..=MAX_SPAN_TOKENS).contains(&self.span_tokens) {
            let n = self.span_tokens;
            return bad(
                "span_tokens",
                format!("{n} is not in 1..={MAX_SPAN_TOKENS}"),
            );
        }
        if self.snap_reach > MAX_SPAN_TOKENS {
            let n = self.snap_reach;
            return bad("snap_reach", format!("{n} is over {MAX_SPAN_TOKENS}"));
        }
        if let Some(r) = &self.rerank {
            if !(r.first_stage.is_finite() && r.first_stage >= 0.0) {
                let w = r.first_stage;
                return bad(
                    "rerank_first_stage",
                    format!("{w} is not a finite number >= 0"),
                );
            }
        }
        let f = &self.fusion;
        if !(f.rrf_k.is_finite() && f.rrf_k >= 0.0) {
            return bad("rrf_k", format!("{} is not a finite number >= 0", f.rrf_k));
        }
        if !(f.rerank.is_finite() && f.rerank >= 0.0) {
            return bad(
                "rerank",
                format!("{} is not a finite number >= 0", f.rerank),
            );
        }
        if f.weights
            .iter()
            .chain(&f.shares)
            .any(|w| !(w.is_finite() && *w >= 0.0))
        {
            return bad(
                "fusion",
                "weights and shares must be finite and >= 0".into(),
            );
        }
        Ok(())
    }
}

impl Default for RetrieveConfig {
    fn default() -> Self {
        Self {
            sigma: 8.0,
            span_tokens: 48,
            snap_reach: 24,
            max_spans: 64,
            min_idf: 3.0,
            max_features: 384,
            token_features: 192,
            query_k: None,
            coarse_min_tokens: 65_536,
            token_level_max_docs: 16,
            coarse_blocks: 12,
            bm25_limit: 40,
            bias_tokens: 48,
            fusion: Fusion::default(),
            trace: false,
            max_question_chars: 4096,
            layers: None,
            probe: question::Probe::Keys,
            rerank: None,
            hybrid_dense: false,
        }
    }
}

/// A question to retrieve evidence for.
#[derive(Debug, Clone)]
pub struct Query {
    /// The collection.
    pub collection: String,
    /// Documents to restrict to (empty: the whole collection).
    pub docs: Vec<String>,
    /// The question.
    pub question: String,
    /// Most tokens of context.
    pub budget: usize,
    /// The method.
    pub method: Method,
    /// Whether to include a trace.
    pub trace: bool,
    /// Only the documents that pass it (`None`: no filter).
    pub filter: Option<Filter>,
}

/// One span of evidence. `text == document[char_start..char_end]` (chars, end exclusive).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvidenceSpan {
    /// The document's external id.
    pub doc_id: String,
    /// First char.
    pub char_start: usize,
    /// Char after the last.
    pub char_end: usize,
    /// First token.
    pub token_start: usize,
    /// Token after the last.
    pub token_end: usize,
    /// Sources joined by `+` (`s3`, `bm25`, `bias`).
    pub source: String,
    /// The best score of the source that proposed it.
    pub score: f32,
    /// The text.
    pub text: String,
}

/// A span as a trace lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceSpan {
    /// Document id.
    pub doc_id: String,
    /// Token range start.
    pub token_start: usize,
    /// Token range end.
    pub token_end: usize,
    /// Score.
    pub score: f32,
}

/// What retrieval did, step by step.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Trace {
    /// What the filter kept, and conditions that could pass nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterReport>,
    /// Question tokens encoded.
    pub question_tokens: usize,
    /// Question features with df, idf and weight, strongest first (at most 64).
    pub query_features: Vec<s3::WeightedFeature>,
    /// Features kept in all.
    pub features_kept: usize,
    /// Features dropped for idf below the floor.
    pub features_dropped_low_idf: usize,
    /// Whether the coarse block pass ran.
    pub coarse_pass: bool,
    /// Tokens scored per token.
    pub scored_tokens: usize,
    /// Posting lists decoded.
    pub postings_read: usize,
    /// Best positions before smoothing.
    pub top_raw: Vec<s3::ScoredToken>,
    /// Best positions after smoothing.
    pub top_smoothed: Vec<s3::ScoredToken>,
    /// S3 spans that survived non-maximum suppression.
    pub nms: Vec<TraceSpan>,
    /// BM25 passages.
    pub bm25: Vec<TraceSpan>,
    /// The fused ranking.
    pub fused: Vec<assemble::FusedRank>,
}

/// Evidence for a question: the context the model reads and where each piece comes from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evidence {
    /// The question.
    pub question: String,
    /// The method.
    pub method: Method,
    /// The budget.
    pub budget: usize,
    /// The assembled context.
    pub context: String,
    /// Its length in model tokens (never above the budget).
    pub context_tokens: usize,
    /// Its pieces in context order; `[n]` in the context is `spans[n - 1]`.
    pub spans: Vec<EvidenceSpan>,
    /// Milliseconds per stage; `retrieve` excludes the question's forward pass.
    pub timings_ms: BTreeMap<String, f64>,
    /// Step-by-step detail, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
}

/// Where a pool sentence sits.
#[derive(Debug, Clone)]
pub struct PoolSentenceInfo {
    /// The document's external id.
    pub doc_id: String,
    /// Char range in the document.
    pub chars: Range<usize>,
    /// Token range in the document.
    pub tokens: Range<usize>,
}

/// A re-ranking pool and every head's attention on it (see [`Retriever::pool_scores`]).
#[derive(Debug, Clone)]
pub struct PoolScores {
    /// The pool's sentences, in first-stage order.
    pub sentences: Vec<PoolSentenceInfo>,
    /// The heads' calibrated attention per sentence.
    pub scores: rerank::HeadScores,
}

/// Finds evidence with one model and SAE set.
pub struct Retriever<'a> {
    model: &'a Model,
    saes: &'a SaeSet,
    codes: Vec<LayerCode>,
    config: RetrieveConfig,
    embedder: Option<&'a Embedder>,
    /// The model whose attention re-ranks (`None`: the index model): a larger model can read
    /// the pool of a small one's index, since the pool is re-tokenized from its text.
    reranker: Option<&'a Model>,
    /// The last re-ranked question's pool and scores: the same question asked again at another
    /// budget (as evaluations do) reads the same pool, so its forward pass is not repeated.
    last_rerank:
        std::sync::Mutex<Option<(RerankKey, Vec<rerank::PoolSentence>, rerank::HeadScores)>>,
}

/// What the S3 stage hands back from its thread: the question's features, the scoring's
/// outcome and milliseconds, and the documents it loaded (kept for assembly).
struct S3Stage<'a> {
    question: question::QuestionFeatures,
    scoring_ms: f64,
    out: s3::S3Outcome,
    docs: DocCache<'a>,
}

/// What a re-ranking pool depends on besides the index (which a caller does not change while
/// it holds one retriever).
type RerankKey = (String, Vec<String>, Option<String>, String);

/// Which first-stage sources a question runs ([`Retriever::first_stage`]).
#[derive(Clone, Copy)]
struct FirstStage<'e> {
    /// The question's forward pass and S3 scoring.
    s3: bool,
    /// BM25 passages.
    bm25: bool,
    /// Dense passages, with this embedder.
    embedder: Option<&'e Embedder>,
    /// Tokens the S3 stage selects (a re-ranking pool's, when larger than the budget).
    s3_budget: usize,
}

/// The first stage's candidates of each source, and the question's forward pass.
#[derive(Default)]
struct FirstStageOut {
    s3: s3::S3Outcome,
    bm25: Vec<Candidate>,
    dense: Vec<Candidate>,
    forward_ms: f64,
    question_tokens: usize,
}

impl<'a> Retriever<'a> {
    /// Returns a retriever; the SAE set must belong to the model.
    pub fn new(model: &'a Model, saes: &'a SaeSet, config: RetrieveConfig) -> Result<Self> {
        config.check()?;
        let fingerprint = model.fingerprint()?;
        if saes.model_fingerprint() != fingerprint {
            return Err(RetrieveError::SaeForAnotherModel {
                sae_model: saes.model_fingerprint().to_string(),
                model: fingerprint.to_string(),
            });
        }
        let mut codes = layer_codes(saes, model.config().kv_heads)?;
        if let Some(layers) = &config.layers {
            if let Some(l) = layers
                .iter()
                .find(|l| !codes.iter().any(|c| c.layer == **l))
            {
                return Err(RetrieveError::invalid(
                    "layers",
                    format!("layer {l} is not indexed by this SAE set"),
                ));
            }
        }
        if let Some(layers) = &config.layers {
            codes.retain(|c| layers.contains(&c.layer));
        }
        Ok(Self {
            model,
            saes,
            codes,
            config,
            embedder: None,
            reranker: None,
            last_rerank: std::sync::Mutex::new(None),
        })
    }

    /// Returns this retriever with `embedder` for the dense methods (without one, they are
    /// refused with [`RetrieveError::NoEmbedder`]).
    pub fn with_embedder(self, embedder: Option<&'a Embedder>) -> Self {
        Self { embedder, ..self }
    }

    /// Returns this retriever with `reranker` reading the re-ranking pool instead of the index
    /// model (`None`: the index model); its own heads are what `RerankConfig::heads` names.
    pub fn with_reranker(self, reranker: Option<&'a Model>) -> Self {
        Self { reranker, ..self }
    }

    /// Returns the model whose attention re-ranks.
    pub fn reranker(&self) -> &Model {
        self.reranker.unwrap_or(self.model)
    }

    /// Returns the settings.
    pub fn config(&self) -> &RetrieveConfig {
        &self.config
    }

    /// Refuses an index built with another model or SAE set.
    fn check_index(&self, index: &Index) -> Result<()> {
        let Some(stored) = index.identity()? else {
            return Ok(());
        };
        let given = StoreIdentity {
            model_fingerprint: self.model.fingerprint()?.to_string(),
            sae_digest: self.saes.digest().to_string(),
            layers: layer_codes(self.saes, self.model.config().kv_heads)?
                .iter()
                .map(|c| c.layer as u32)
                .collect(),
            ..stored.clone()
        };
        Ok(index.check_identity(&given)?)
    }

    fn check_query(&self, q: &Query) -> Result<()> {
        if q.question.trim().is_empty() {
            return Err(RetrieveError::invalid("question", "it is empty"));
        }
        let chars = q.question.chars().count();
        if chars > self.config.max_question_chars {
            return Err(RetrieveError::invalid(
                "question",
                format!(
                    "it has {chars} chars, over the limit of {}",
                    self.config.max_question_chars
                ),
            ));
        }
        let context = self.model.config().context;
        if q.budget == 0 || q.budget > context {
            return Err(RetrieveError::invalid(
                "budget",
                format!(
                    "{} tokens; it must be between 1 and the model's window of {context}",
                    q.budget
                ),
            ));
        }
        Ok(())
    }

    /// Retrieves evidence for `q` from `index`.
    pub fn retrieve(&self, index: &Index, q: &Query) -> Result<Evidence> {
        self.retrieve_until(index, q, &|| false)
    }

    /// Retrieves evidence for `q` from `index` as [`Retriever::retrieve`] does, asking `stop`
    /// between the stages (question forward pass, S3 scoring, BM25, attention re-ranking,
    /// assembly) and giving up with [`RetrieveError::Cancelled`] when it says so: a caller
    /// that went away, or a daemon stopping, frees the worker at the next stage.
    pub fn retrieve_until(
        &self,
        index: &Index,
        q: &Query,
        stop: &dyn Fn() -> bool,
    ) -> Result<Evidence> {
        let checkpoint = || {
            if stop() {
                Err(RetrieveError::Cancelled)
            } else {
                Ok(())
            }
        };
        let t_all = Instant::now();
        self.check_query(q)?;
        self.check_index(index)?;
        let cfg = RetrieveConfig {
            trace: q.trace,
            ..self.config.clone()
        };
        let mut timings = BTreeMap::new();
        let scope = Scope::new(index, &q.collection, &q.docs, q.filter.as_ref())?;
        let mut docs = DocCache::new(index, &scope);
        let rerank_cfg = match (q.method, &cfg.rerank) {
            (Method::Rerank, None) => {
                return Err(RetrieveError::invalid(
                    "method",
                    "rerank needs retrieval heads (no head set is configured)",
                ))
            }
            (Method::Rerank, Some(r)) => Some(r.clone()),
            _ => None,
        };
        let want_s3 = matches!(q.method, Method::S3 | Method::Hybrid | Method::Rerank);
        let want_bm25 = matches!(
            q.method,
            Method::Bm25 | Method::Hybrid | Method::Rerank | Method::Rag
        );
        // Re-ranking adds dense passages to its pool when it can.
        let embedder = match (q.method, self.embedder) {
            (Method::Dense | Method::Rag, None) => return Err(RetrieveError::NoEmbedder),
            (Method::Dense | Method::Rag | Method::Rerank, e) => e,
            (Method::Hybrid, e) if cfg.hybrid_dense => e,
            _ => None,
        };
        if scope.docs.is_empty() {
            // A filter passed no document: nothing to read, an empty context.
            let total = t_all.elapsed().as_secs_f64() * 1e3;
            timings.insert("retrieve".to_string(), total);
            timings.insert("total".to_string(), total);
            return Ok(Evidence {
                question: q.question.clone(),
                method: q.method,
                budget: q.budget,
                context: String::new(),
                context_tokens: 0,
                spans: Vec::new(),
                timings_ms: timings,
                trace: q.trace.then(|| Trace {
                    filter: scope.filter.clone(),
                    ..Trace::default()
                }),
            });
        }
        // Re-ranking reads a pool of candidates larger than the budget.
        let s3_budget = rerank_cfg
            .as_ref()
            .map_or(q.budget, |r| r.pool_tokens.max(q.budget));
        let stages = FirstStage {
            s3: want_s3,
            bm25: want_bm25,
            embedder,
            s3_budget,
        };
        let first = self.first_stage(index, &scope, &mut docs, q, &cfg, stages, &mut timings)?;
        let forward_ms = first.forward_ms;
        let question_tokens = first.question_tokens;
        let s3_out = first.s3;
        let (mut bm25, dense) = (first.bm25, first.dense);
        checkpoint()?;
        let bias = match q.method {
            Method::Bias => self.bias(&scope, &mut docs, (0..scope.docs.len()).collect())?,
            Method::Hybrid => {
                // The openings of the documents the other sources drew on, best first.
                let mut order = Vec::new();
                let (a, b) = (&s3_out.candidates, &bm25);
                for i in 0..a.len().max(b.len()) {
                    for c in [a.get(i), b.get(i)].into_iter().flatten() {
                        if !order.contains(&c.doc) {
                            order.push(c.doc);
                        }
                    }
                }
                self.bias(&scope, &mut docs, order)?
            }
            _ => Vec::new(),
        };
        if q.method == Method::Hybrid && !dense.is_empty() {
            bm25 = dense::reciprocal_rank_fusion(&[&bm25, &dense], cfg.fusion.rrf_k);
        }
        if matches!(q.method, Method::Hybrid | Method::Rerank) && cfg.fusion.rerank > 0.0 {
            rerank_by_density(&mut bm25, &s3_out, &cfg.fusion);
        }
        let mut attention = Vec::new();
        if let Some(r) = &rerank_cfg {
            let t = Instant::now();
            let key: RerankKey = (
                q.collection.clone(),
                q.docs.clone(),
                q.filter.as_ref().map(Filter::to_string),
                q.question.clone(),
            );
            let cached = self
                .last_rerank
                .lock()
                .ok()
                .and_then(|last| last.as_ref().filter(|l| l.0 == key).cloned());
            let (pool, scores) = match cached {
                Some((_, pool, scores)) => (pool, scores),
                None => {
                    let pool = rerank::build_pool(
                        &[&bm25, &dense, &s3_out.candidates],
                        &mut docs,
                        r.pool_tokens,
                    )?;
                    checkpoint()?;
                    let scores = rerank::head_scores(
                        self.reranker(),
                        &mut docs,
                        &pool,
                        &q.question,
                        &r.heads,
                    )?;
                    if let Ok(mut last) = self.last_rerank.lock() {
                        *last = Some((key, pool.clone(), scores.clone()));
                    }
                    (pool, scores)
                }
            };
            timings.insert("rerank_forward".to_string(), scores.forward_ms);
            timings.insert("rerank_prefix".to_string(), scores.prefix_ms);
            timings.insert("rerank_tokenize".to_string(), scores.tokenize_ms);
            timings.insert("rerank_pool_tokens".to_string(), scores.tokens as f64);
            attention = rerank::ranked(&pool, &scores, r.first_stage);
            timings.insert("rerank".to_string(), t.elapsed().as_secs_f64() * 1e3);
        }
        checkpoint()?;
        let t = Instant::now();
        let lists = match q.method {
            Method::Rerank => vec![attention],
            Method::Dense => vec![dense.clone()],
            Method::Rag => vec![dense::reciprocal_rank_fusion(
                &[&bm25, &dense],
                cfg.fusion.rrf_k,
            )],
            _ => vec![s3_out.candidates.clone(), bm25.clone(), bias],
        };
        let out = assemble::assemble(
            self.model.tokenizer(),
            &scope,
            &mut docs,
            &lists,
            &cfg.fusion,
            q.budget,
        )?;
        timings.insert("assemble".to_string(), t.elapsed().as_secs_f64() * 1e3);
        let total = t_all.elapsed().as_secs_f64() * 1e3;
        timings.insert("retrieve".to_string(), total - forward_ms);
        timings.insert("total".to_string(), total);
        let trace = q.trace.then(|| {
            let span = |c: &Candidate| TraceSpan {
                doc_id: scope.docs[c.doc].id.clone(),
                token_start: c.tokens.start,
                token_end: c.tokens.end,
                score: c.score,
            };
            Trace {
                filter: scope.filter.clone(),
                question_tokens,
                features_kept: s3_out.features.len(),
                query_features: s3_out.features.iter().take(64).cloned().collect(),
                features_dropped_low_idf: s3_out.dropped_low_idf,
                coarse_pass: s3_out.coarse,
                scored_tokens: s3_out.scored_tokens,
                postings_read: s3_out.postings_read,
                top_raw: s3_out.top_raw.clone(),
                top_smoothed: s3_out.top_smoothed.clone(),
                nms: s3_out.candidates.iter().map(span).collect(),
                bm25: bm25.iter().map(span).collect(),
                fused: out.fused.clone(),
            }
        });
        Ok(Evidence {
            question: q.question.clone(),
            method: q.method,
            budget: q.budget,
            context: out.context,
            context_tokens: out.context_tokens,
            spans: out.spans,
            timings_ms: timings,
            trace,
        })
    }

    /// Returns the attention re-ranking pool of `q` (its first stage as `Method::Rerank` runs
    /// it, `pool_tokens` tokens) and the calibrated attention of each of `heads` on each
    /// sentence: what choosing retrieval heads measures.
    pub fn pool_scores(
        &self,
        index: &Index,
        q: &Query,
        heads: &rerank::HeadSet,
        pool_tokens: usize,
    ) -> Result<PoolScores> {
        self.check_query(q)?;
        self.check_index(index)?;
        let scope = Scope::new(index, &q.collection, &q.docs, q.filter.as_ref())?;
        let mut docs = DocCache::new(index, &scope);
        let stages = FirstStage {
            s3: true,
            bm25: true,
            embedder: self.embedder,
            s3_budget: pool_tokens.max(q.budget),
        };
        let mut timings = BTreeMap::new();
        let first = self.first_stage(
            index,
            &scope,
            &mut docs,
            q,
            &self.config,
            stages,
            &mut timings,
        )?;
        let (s3_out, mut bm25, dense) = (first.s3, first.bm25, first.dense);
        if self.config.fusion.rerank > 0.0 {
            rerank_by_density(&mut bm25, &s3_out, &self.config.fusion);
        }
        let pool =
            rerank::build_pool(&[&bm25, &dense, &s3_out.candidates], &mut docs, pool_tokens)?;
        let scores = rerank::head_scores(self.reranker(), &mut docs, &pool, &q.question, heads)?;
        let mut sentences = Vec::with_capacity(pool.len());
        for p in &pool {
            let chars = docs.get(p.doc)?.token_chars(p.tokens.clone());
            sentences.push(PoolSentenceInfo {
                doc_id: scope.docs[p.doc].id.clone(),
                chars,
                tokens: p.tokens.clone(),
            });
        }
        Ok(PoolScores { sentences, scores })
    }

    /// Runs the first stage: the S3 stage (the question's forward pass and scoring over the
    /// postings) and the text stages (BM25, dense). They need nothing of each other, so they
    /// run side by side and a question waits for the slower of the two, not their sum. Each
    /// stage's milliseconds go into `timings`; the documents the S3 stage loaded join `docs`.
    #[allow(clippy::too_many_arguments)]
    fn first_stage<'d>(
        &self,
        index: &'d Index,
        scope: &'d Scope,
        docs: &mut DocCache<'d>,
        q: &Query,
        cfg: &RetrieveConfig,
        stages: FirstStage<'_>,
        timings: &mut BTreeMap<String, f64>,
    ) -> Result<FirstStageOut> {
        let (s3_stage, text_stage) = std::thread::scope(|s| {
            let s3_job = stages.s3.then(|| {
                s.spawn(|| -> Result<S3Stage<'d>> {
                    let mut s3_docs = DocCache::new(index, scope);
                    let qf = question::question_features(
                        self.model,
                        self.saes,
                        &self.codes,
                        &q.question,
                        cfg.query_k,
                        cfg.probe,
                    )?;
                    let t = Instant::now();
                    let out = s3::retrieve(
                        index,
                        scope,
                        &mut s3_docs,
                        &qf.activation,
                        cfg,
                        stages.s3_budget,
                    )?;
                    Ok(S3Stage {
                        scoring_ms: t.elapsed().as_secs_f64() * 1e3,
                        question: qf,
                        out,
                        docs: s3_docs,
                    })
                })
            });
            let text = (|| -> Result<(Vec<Candidate>, Vec<Candidate>)> {
                let mut bm25 = Vec::new();
                if stages.bm25 {
                    let t = Instant::now();
                    bm25 = self.bm25(index, &q.collection, scope, docs, &q.question)?;
                    timings.insert("bm25".to_string(), t.elapsed().as_secs_f64() * 1e3);
                }
                let mut dense = Vec::new();
                if let Some(e) = stages.embedder {
                    let t = Instant::now();
                    dense = dense::dense(e, index, scope, docs, &q.question, cfg.bm25_limit)?;
                    timings.insert("dense".to_string(), t.elapsed().as_secs_f64() * 1e3);
                }
                Ok((bm25, dense))
            })();
            let s3 = s3_job
                // A panic there is the caller's, as it was when the stages ran in turn.
                .map(|job| job.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .transpose();
            (s3, text)
        });
        let mut out = FirstStageOut::default();
        if let Some(stage) = s3_stage? {
            out.forward_ms = stage.question.forward_ms;
            out.question_tokens = stage.question.tokens;
            timings.insert("question_forward".to_string(), stage.question.forward_ms);
            timings.insert("question_encode".to_string(), stage.question.encode_ms);
            timings.insert("s3".to_string(), stage.scoring_ms);
            for (k, v) in &stage.out.timings_ms {
                timings.insert(format!("s3_{k}"), *v);
            }
            out.s3 = stage.out;
            docs.absorb(stage.docs);
        }
        (out.bm25, out.dense) = text_stage?;
        Ok(out)
    }

    /// BM25 passages of the scope, best first.
    fn bm25(
        &self,
        index: &Index,
        collection: &str,
        scope: &Scope,
        docs: &mut DocCache<'_>,
        question: &str,
    ) -> Result<Vec<Candidate>> {
        let by_id: HashMap<&str, usize> = scope
            .docs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        let numbers: Vec<u32> = scope.docs.iter().map(|d| d.number).collect();
        let filter = (!scope.whole).then_some(numbers.as_slice());
        let mut out = Vec::new();
        for hit in index.bm25(collection, filter, question, self.config.bm25_limit)? {
            let Some(&d) = by_id.get(hit.id.as_str()) else {
                continue;
            };
            let tokens = docs.get(d)?.char_tokens(hit.chars);
            if !tokens.is_empty() {
                out.push(Candidate {
                    doc: d,
                    tokens,
                    source: Source::Bm25,
                    score: hit.score,
                });
            }
        }
        Ok(out)
    }

    /// The openings of documents `order` (scope indexes), in that order.
    fn bias(
        &self,
        scope: &Scope,
        docs: &mut DocCache<'_>,
        order: Vec<usize>,
    ) -> Result<Vec<Candidate>> {
        let mut out = Vec::new();
        for (rank, d) in order.into_iter().enumerate() {
            let n = scope.docs[d].tokens as usize;
            let head = docs
                .get(d)?
                .snap(0..self.config.bias_tokens.min(n), self.config.snap_reach);
            if !head.is_empty() {
                out.push(Candidate {
                    doc: d,
                    tokens: head,
                    source: Source::Bias,
                    score: 1.0 / (rank as f32 + 1.0),
                });
            }
        }
        Ok(out)
    }
}

/// Re-orders BM25 passages by reciprocal-rank fusion of their BM25 rank and the rank of their
/// peak S3 density (see [`Fusion::rerank`]).
fn rerank_by_density(bm25: &mut [Candidate], s3: &s3::S3Outcome, fusion: &Fusion) {
    let density: Vec<f32> = bm25
        .iter()
        .map(|c| s3.peak_density(c.doc, &c.tokens))
        .collect();
    let mut by_density: Vec<usize> = (0..bm25.len()).collect();
    by_density.sort_by(|&a, &b| density[b].total_cmp(&density[a]).then(a.cmp(&b)));
    let mut score = vec![0.0f32; bm25.len()];
    for (rank, &i) in by_density.iter().enumerate() {
        score[i] = fusion.rerank / (fusion.rrf_k + rank as f32 + 1.0);
    }
    for (rank, s) in score.iter_mut().enumerate() {
        *s += 1.0 / (fusion.rrf_k + rank as f32 + 1.0);
    }
    let mut order: Vec<usize> = (0..bm25.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let reordered: Vec<Candidate> = order.iter().map(|&i| bm25[i].clone()).collect();
    bm25.clone_from_slice(&reordered);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(doc: usize, tokens: Range<usize>, score: f32) -> Candidate {
        Candidate {
            doc,
            tokens,
            source: Source::Bm25,
            score,
        }
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        assert!(RetrieveConfig::default().check().is_ok());
        let with = |f: &dyn Fn(&mut RetrieveConfig)| {
            let mut c = RetrieveConfig::default();
            f(&mut c);
            c.check().unwrap_err().to_string()
        };
        for sigma in [0.0, -1.0, 1e9, f32::INFINITY, f32::NAN] {
            let e = with(&|c| c.sigma = sigma);
            assert!(e.contains("sigma"), "{sigma}: {e}");
        }
        assert!(with(&|c| c.span_tokens = 0).contains("span_tokens"));
        assert!(with(&|c| c.span_tokens = usize::MAX).contains("span_tokens"));
        assert!(with(&|c| c.snap_reach = usize::MAX).contains("snap_reach"));
        assert!(with(&|c| c.fusion.rrf_k = f32::NAN).contains("rrf_k"));
        assert!(with(&|c| c.fusion.rerank = -0.5).contains("rerank"));
        assert!(with(&|c| c.fusion.weights[1] = f32::INFINITY).contains("fusion"));
    }

    #[test]
    fn density_reranking_lifts_a_dense_passage_and_keeps_order_without_density() {
        let s3 = s3::S3Outcome {
            density: vec![(0, 100..200, {
                let mut v = vec![0.0; 100];
                v[60] = 5.0; // token 160
                v[10] = 1.0; // token 110
                v
            })],
            ..Default::default()
        };
        assert_eq!(s3.peak_density(0, &(150..170)), 5.0);
        assert_eq!(s3.peak_density(0, &(0..120)), 1.0);
        assert_eq!(s3.peak_density(1, &(150..170)), 0.0);
        assert_eq!(s3.peak_density(0, &(300..400)), 0.0);
        let list = vec![
            passage(0, 0..64, 9.0),
            passage(0, 64..128, 8.0),
            passage(1, 0..64, 7.0),
            passage(0, 128..192, 6.0),
        ];
        // Weight 1 moves the densest passage (4th by BM25) up one place only.
        let mut small = list.clone();
        let fusion = |rerank| Fusion {
            rerank,
            ..Fusion::default()
        };
        rerank_by_density(&mut small, &s3, &fusion(1.0));
        let order = |l: &[Candidate]| l.iter().map(|c| c.score).collect::<Vec<_>>();
        assert_eq!(order(&small), [9.0, 8.0, 6.0, 7.0]);
        // A large weight puts it first.
        let mut large = list.clone();
        rerank_by_density(&mut large, &s3, &fusion(4.0));
        assert_eq!(order(&large)[0], 6.0);
        // Without density anywhere, BM25's order stays.
        let mut flat = list.clone();
        rerank_by_density(&mut flat, &s3::S3Outcome::default(), &fusion(1.0));
        assert_eq!(order(&flat), [9.0, 8.0, 7.0, 6.0]);
    }
}
