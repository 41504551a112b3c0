//! Evidence recall per method and budget (`s3mem eval recall`): a question counts when every
//! gold span lies wholly inside the evidence; random spans are the floor every method must beat.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;

use super::contexts::context_id;
use super::{EvalError, EvalItem, Result};
use crate::index::Index;
use crate::retrieve::{Method, Query, Retriever};

/// How a recall run finds evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallMethod {
    /// Random spans of the retriever's span length until the budget.
    Random,
    /// A retrieval method.
    Retrieve(Method),
}

impl RecallMethod {
    /// Parses `random` or a retrieval method's name.
    pub fn parse(name: &str) -> Result<Self> {
        if name == "random" {
            return Ok(Self::Random);
        }
        name.parse().map(Self::Retrieve).map_err(|_| {
            EvalError::setting(
                "methods",
                format!(
                    "unknown method `{name}` (random, s3, bm25, hybrid, bias, rerank, dense, rag)"
                ),
            )
        })
    }
}

/// What a recall run measures.
#[derive(Debug, Clone)]
pub struct RecallConfig {
    /// The methods, by the names the table shows.
    pub methods: Vec<String>,
    /// Budgets in tokens.
    pub budgets: Vec<usize>,
    /// The collection holding the contexts (see [`super::contexts`]).
    pub collection: String,
}

/// Recall and retrieve time of one (method, budget).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Cell {
    recalled: usize,
    questions: usize,
    retrieve_ms: f64,
}

/// Evidence recall per (method, budget).
#[derive(Debug, Clone, PartialEq)]
pub struct RecallTable {
    methods: Vec<String>,
    budgets: Vec<usize>,
    cells: BTreeMap<(String, usize), Cell>,
    /// Per (method, budget), each question's outcome (1 recalled, 0 not) in question order:
    /// the paired bootstrap's input.
    outcomes: BTreeMap<(String, usize), Vec<(String, f64)>>,
}

/// The baselines a user would pick instead of s3mem's own methods.
const BASELINES: [&str; 3] = ["bm25", "dense", "rag"];

/// Returns the questions of `items` that have gold spans, the first `limit` of them.
pub fn with_gold_spans(mut items: Vec<EvalItem>, limit: Option<usize>) -> Result<Vec<EvalItem>> {
    items.retain(|i| !i.gold_spans.is_empty());
    if let Some(n) = limit {
        items.truncate(n);
    }
    if items.is_empty() {
        return Err(EvalError::Input(
            "no items with gold spans in the dataset".into(),
        ));
    }
    Ok(items)
}

/// Random spans of `span` tokens until `budget` tokens: the floor every method must beat.
fn random_spans(
    offsets: &[(usize, usize)],
    budget: usize,
    span: usize,
    seed: &mut u64,
) -> Vec<(usize, usize)> {
    let n = offsets.len();
    let mut out = Vec::new();
    let mut used = 0;
    while used + span <= budget && n > 0 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let start = ((*seed >> 33) as usize) % n;
        let end = (start + span).min(n);
        out.push((offsets[start].0, offsets[end - 1].1));
        used += span + 6;
    }
    out
}

/// Retrieves evidence for every question with every method and budget from `index` (which
/// holds each question's context) and counts the questions recalled; `progress` is called
/// after each question.
pub fn measure(
    index: &Index,
    retriever: &Retriever<'_>,
    items: &[EvalItem],
    config: &RecallConfig,
    progress: &mut dyn FnMut(),
) -> Result<RecallTable> {
    let methods = config
        .methods
        .iter()
        .map(|m| RecallMethod::parse(m))
        .collect::<Result<Vec<_>>>()?;
    let mut table = RecallTable {
        methods: config.methods.clone(),
        budgets: config.budgets.clone(),
        cells: BTreeMap::new(),
        outcomes: BTreeMap::new(),
    };
    let mut seed = 0x5eed_u64;
    for item in items {
        let doc = context_id(&item.context);
        for (name, method) in config.methods.iter().zip(&methods) {
            for &budget in &config.budgets {
                let t = Instant::now();
                let (spans, ms) = match *method {
                    RecallMethod::Random => {
                        let offsets = index.offsets(&config.collection, &doc)?;
                        let span = retriever.config().span_tokens;
                        let s = random_spans(&offsets, budget, span, &mut seed);
                        (s, t.elapsed().as_secs_f64() * 1e3)
                    }
                    RecallMethod::Retrieve(method) => {
                        let e = retriever.retrieve(
                            index,
                            &Query {
                                collection: config.collection.clone(),
                                docs: vec![doc.clone()],
                                question: item.input.clone(),
                                budget,
                                method,
                                trace: false,
                                filter: None,
                            },
                        )?;
                        let s = e.spans.iter().map(|s| (s.char_start, s.char_end)).collect();
                        (s, e.timings_ms.get("retrieve").copied().unwrap_or(0.0))
                    }
                };
                let hit = super::evidence_recalled(&spans, &item.gold_spans);
                table.add(name, budget, hit, ms);
                table
                    .outcomes
                    .entry((name.clone(), budget))
                    .or_default()
                    .push((item.id.clone(), f64::from(u8::from(hit))));
            }
        }
        progress();
    }
    Ok(table)
}

impl RecallTable {
    fn add(&mut self, method: &str, budget: usize, recalled: bool, ms: f64) {
        let cell = self.cells.entry((method.to_string(), budget)).or_default();
        cell.recalled += usize::from(recalled);
        cell.questions += 1;
        cell.retrieve_ms += ms;
    }

    /// Returns one JSON line per question, method and budget: `{"id","method","budget","hit"}`.
    pub fn per_question(&self) -> Vec<serde_json::Value> {
        self.outcomes
            .iter()
            .flat_map(|((m, b), rows)| {
                rows.iter().map(
                    move |(id, hit)| json!({"id": id, "method": m, "budget": b, "hit": *hit > 0.5}),
                )
            })
            .collect()
    }

    /// For every method and budget that is not the best baseline there, the paired bootstrap
    /// interval of its recall minus the best baseline's (the baseline with the highest recall
    /// at that budget among those run).
    pub fn against_best_baseline(
        &self,
    ) -> BTreeMap<(String, usize), (String, super::bootstrap::Interval)> {
        let mut out = BTreeMap::new();
        let hits = |m: &str, b: usize| -> Option<Vec<f64>> {
            self.outcomes
                .get(&(m.to_string(), b))
                .map(|v| v.iter().map(|(_, h)| *h).collect())
        };
        for &b in &self.budgets {
            let best = BASELINES
                .iter()
                .filter_map(|base| Some((*base, self.recall(base, b)?)))
                .max_by(|x, y| x.1.total_cmp(&y.1));
            let Some((base, _)) = best else { continue };
            let Some(base_hits) = hits(base, b) else {
                continue;
            };
            for m in self.methods.iter().filter(|m| m.as_str() != base) {
                let Some(m_hits) = hits(m, b) else { continue };
                if let Some(i) =
                    super::bootstrap::paired_difference(&m_hits, &base_hits, 10_000, 17)
                {
                    out.insert((m.clone(), b), (base.to_string(), i));
                }
            }
        }
        out
    }

    /// Returns the share of questions recalled by `method` at `budget`.
    pub fn recall(&self, method: &str, budget: usize) -> Option<f64> {
        let c = self.cells.get(&(method.to_string(), budget))?;
        Some(c.recalled as f64 / c.questions.max(1) as f64)
    }

    /// Returns the rows as JSON: method, budget, recall, questions and mean retrieve ms.
    pub fn json(&self) -> serde_json::Value {
        let intervals = self.against_best_baseline();
        let rows: Vec<_> = self
            .cells
            .iter()
            .map(|((m, b), c)| {
                let n = c.questions as f64;
                let vs = intervals.get(&(m.clone(), *b)).map(|(base, i)| {
                    json!({"baseline": base, "difference": i.mean, "low": i.low, "high": i.high})
                });
                json!({"method": m, "budget": b, "recall": c.recalled as f64 / n,
                       "questions": c.questions, "retrieve_ms_mean": c.retrieve_ms / n,
                       "vs_best_baseline": vs})
            })
            .collect();
        json!({ "rows": rows })
    }

    /// Returns a Markdown table: a row per method, a column per budget, and the mean retrieve
    /// milliseconds over its budgets.
    pub fn markdown(&self) -> String {
        let budgets: Vec<String> = self.budgets.iter().map(|b| format!("@{b}")).collect();
        let mut s = format!("| method | {} | mean retrieve ms |\n", budgets.join(" | "));
        s.push_str(&format!("|---|{}---|\n", "---|".repeat(budgets.len())));
        for m in &self.methods {
            let mut cells = Vec::new();
            let (mut ms, mut n) = (0.0, 0);
            for &b in &self.budgets {
                let c = self.cells.get(&(m.clone(), b)).copied().unwrap_or_default();
                cells.push(format!(
                    "{:.1}%",
                    100.0 * c.recalled as f64 / c.questions as f64
                ));
                ms += c.retrieve_ms;
                n += c.questions;
            }
            s.push_str(&format!(
                "| {m} | {} | {:.1} |\n",
                cells.join(" | "),
                ms / n as f64
            ));
        }
        let intervals = self.against_best_baseline();
        if !intervals.is_empty() {
            s.push_str("\ndifference to the best baseline (bm25, dense or rag) at each budget, in points, with its paired bootstrap 95% interval:\n\n");
            s.push_str(&format!("| method | {} |\n", budgets.join(" | ")));
            s.push_str(&format!("|---|{}\n", "---|".repeat(budgets.len())));
            for m in &self.methods {
                let cells: Vec<String> = self
                    .budgets
                    .iter()
                    .map(|b| match intervals.get(&(m.clone(), *b)) {
                        Some((base, i)) => format!(
                            "{:+.1} [{:+.1}, {:+.1}] vs {base}",
                            100.0 * i.mean,
                            100.0 * i.low,
                            100.0 * i.high
                        ),
                        None => "-".to_string(),
                    })
                    .collect();
                s.push_str(&format!("| {m} | {} |\n", cells.join(" | ")));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_counts_recall_per_method_and_budget() {
        let mut t = RecallTable {
            methods: vec!["bm25".into(), "random".into()],
            budgets: vec![512, 1024],
            cells: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        };
        t.add("bm25", 512, true, 10.0);
        t.add("bm25", 512, false, 20.0);
        t.add("bm25", 1024, true, 30.0);
        t.add("bm25", 1024, true, 40.0);
        t.add("random", 512, false, 1.0);
        t.add("random", 1024, false, 1.0);
        assert_eq!(t.recall("bm25", 512), Some(0.5));
        assert_eq!(t.recall("bm25", 1024), Some(1.0));
        assert_eq!(t.recall("s3", 512), None);
        assert_eq!(
            t.markdown(),
            "| method | @512 | @1024 | mean retrieve ms |\n|---|---|---|---|\n\
             | bm25 | 50.0% | 100.0% | 25.0 |\n| random | 0.0% | 0.0% | 1.0 |\n"
        );
        let rows = t.json()["rows"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0]["method"], "bm25");
        assert_eq!(rows[0]["retrieve_ms_mean"], 15.0);
    }

    #[test]
    fn random_spans_stay_within_the_budget_and_the_document() {
        let offsets: Vec<(usize, usize)> = (0..100).map(|i| (2 * i, 2 * i + 1)).collect();
        let mut seed = 1;
        let spans = random_spans(&offsets, 100, 20, &mut seed);
        // A span starts while its 20 tokens fit after 26 per earlier span (6 for separators).
        assert_eq!(spans.len(), 4);
        assert!(spans.iter().all(|&(s, e)| s < e && e <= 199), "{spans:?}");
        assert!(random_spans(&[], 100, 20, &mut seed).is_empty());
    }

    #[test]
    fn unknown_methods_are_named() {
        assert_eq!(RecallMethod::parse("random").unwrap(), RecallMethod::Random);
        assert_eq!(
            RecallMethod::parse("bm25").unwrap(),
            RecallMethod::Retrieve(Method::Bm25)
        );
        let e = RecallMethod::parse("oracle").unwrap_err().to_string();
        assert!(e.contains("--methods: unknown method `oracle`"), "{e}");
    }
}
