//! The answer-quality evaluation behind `s3mem eval DATASET`: every question answered with
//! each method and budget side by side, with the evidence recall, latency and peak memory of
//! each run; the report (JSON, Markdown, PNG charts) is rewritten after each question.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::report::{self, RunRecord, NO_BUDGET};
use super::{EvalError, EvalItem, Result};
use crate::answer::{self, AnswerConfig, AnswerMode, Passage, Threshold};
use crate::index::Index;
use crate::model::{gpu_memory, reset_gpu_peak, Model, Tokenized};
use crate::retrieve::{Method, Query, Retriever};
use crate::sys::{peak_rss_bytes, reset_peak_rss};

/// Tokens kept at the start by the `window` method (StreamingLLM's attention sink).
const SINK_TOKENS: usize = 4;
/// Tokens of slack for the seam where two cut pieces of text meet and re-tokenize.
const SEAM_SLACK: usize = 8;
/// The default `--instruction`, said after each question when the model answers (not when
/// evidence is retrieved): EM and F1 score short answers, so this is LongBench's own
/// instruction. Chosen on a dev set by full-context F1 (docs/eval.md): Qwen2.5-Coder-0.5B scored
/// 44.6 with it, 19.4 with "Answer with the answer only, in a few words.".
pub const SHORT_ANSWER: &str = "Only give me the answer and do not output any other words.";

/// The question as the model is asked it (retrieval uses `item.input` alone).
fn asked(item: &EvalItem, instruction: &str) -> String {
    if instruction.trim().is_empty() {
        item.input.clone()
    } else {
        format!("{}\n{}", item.input, instruction.trim())
    }
}

/// How one run builds its context.
#[derive(Debug, Clone, Copy)]
enum Plan {
    ClosedBook,
    Full,
    Window(usize),
    Retrieve(Method, usize),
}

impl Plan {
    fn name(&self) -> String {
        match self {
            Plan::ClosedBook => "closed-book".into(),
            Plan::Full => "full".into(),
            Plan::Window(_) => "window".into(),
            Plan::Retrieve(m, _) => m.to_string(),
        }
    }

    fn budget(&self) -> usize {
        match *self {
            Plan::ClosedBook | Plan::Full => NO_BUDGET,
            Plan::Window(b) | Plan::Retrieve(_, b) => b,
        }
    }
}

fn plans(methods: &[String], budgets: &[usize]) -> Result<Vec<Plan>> {
    if budgets.contains(&0) {
        return Err(EvalError::setting(
            "budgets",
            "a budget must be at least 1 token",
        ));
    }
    let mut out = Vec::new();
    for m in methods {
        match m.as_str() {
            "closed-book" => out.push(Plan::ClosedBook),
            "full" => out.push(Plan::Full),
            "window" => out.extend(budgets.iter().map(|&b| Plan::Window(b))),
            other => {
                let method: Method = other.parse().map_err(|_| {
                    EvalError::setting(
                        "methods",
                        format!("unknown method `{other}` (full, window, closed-book, s3, bm25, hybrid, bias)"),
                    )
                })?;
                out.extend(budgets.iter().map(|&b| Plan::Retrieve(method, b)));
            }
        }
    }
    if out.is_empty() {
        return Err(EvalError::setting("methods", "no method given"));
    }
    Ok(out)
}

/// Char ranges of a document that a context holds.
type CharRanges = Vec<(usize, usize)>;

/// A document cut to some of its tokens: the text the model reads and the char ranges kept.
struct Cut {
    text: String,
    ranges: Vec<(usize, usize)>,
}

/// Keeps the first `head` and the last `tail` tokens of a document (all of it if that is
/// everything).
fn cut(doc: &str, tok: &Tokenized, head: usize, tail: usize) -> Cut {
    let n = tok.ids.len();
    let chars = doc.chars().count();
    if head + tail >= n {
        return Cut {
            text: doc.to_string(),
            ranges: vec![(0, chars)],
        };
    }
    let a = if head == 0 {
        0
    } else {
        tok.offsets[head - 1].1
    };
    let b = if tail == 0 {
        chars
    } else {
        tok.offsets[n - tail].0
    };
    let byte = |c: usize| doc.char_indices().nth(c).map_or(doc.len(), |(i, _)| i);
    let mut text = doc[..byte(a)].to_string();
    text.push_str(&doc[byte(b)..]);
    let ranges = [(0, a), (b, chars)]
        .into_iter()
        .filter(|(s, e)| s < e)
        .collect();
    Cut { text, ranges }
}

/// What an evaluation is asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The LongBench-format JSONL dataset.
    pub dataset: PathBuf,
    /// Methods: full, window, closed-book and the retrieval methods.
    pub methods: Vec<String>,
    /// Evidence budgets in tokens.
    pub budgets: Vec<usize>,
    /// Most tokens of each answer.
    pub max_new_tokens: usize,
    /// Said after each question when the model answers (empty for none).
    pub instruction: String,
    /// Only the first N questions.
    pub limit: Option<usize>,
    /// The folder the report is written to.
    pub out: PathBuf,
    /// The collection the contexts are ingested into.
    pub collection: String,
    /// The device the model runs on, as the report names it.
    pub device: String,
    /// How the reader answers; each mode is one run from the same prefill (closed-book
    /// answers free only).
    pub modes: Vec<AnswerMode>,
    /// Abstain below this value of a signal (`None`: never). Both signals are recorded
    /// either way, so one run calibrates both.
    pub abstain: Option<Threshold>,
}

/// An index and a retriever over the dataset's contexts, for the retrieval methods.
#[derive(Clone, Copy)]
pub struct Retrieval<'a> {
    /// The index holding the contexts (see [`super::contexts`]).
    pub index: &'a Index,
    /// The retriever.
    pub retriever: &'a Retriever<'a>,
}

/// What a run reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Answering question `id` with `method`.
    Answering {
        /// The method.
        method: &'a str,
        /// The question.
        id: &'a str,
    },
    /// One answer done.
    Answered,
}

/// The finished report, as also written to the out folder.
#[derive(Debug, Clone)]
pub struct Report {
    /// report.json.
    pub json: serde_json::Value,
    /// report.md.
    pub markdown: String,
    /// Whether gpu-memory.png was drawn (only GPU runs have it).
    pub gpu_chart: bool,
}

/// A checked evaluation: its questions read and its plans made, before any model work.
#[derive(Debug)]
pub struct Evaluation {
    config: RunConfig,
    plans: Vec<Plan>,
    items: Vec<EvalItem>,
    answer: AnswerConfig,
}

impl Evaluation {
    /// Checks the settings and reads the questions; nothing is loaded or ingested yet.
    pub fn new(config: RunConfig) -> Result<Self> {
        let plans = plans(&config.methods, &config.budgets)?;
        if config.modes.is_empty() {
            return Err(EvalError::setting("answer-mode", "no answer mode given"));
        }
        let mut items = super::read_jsonl(&config.dataset)?;
        if let Some(n) = config.limit {
            items.truncate(n);
        }
        if items.is_empty() {
            return Err(EvalError::Input(format!(
                "{}: no questions",
                config.dataset.display()
            )));
        }
        let answer = AnswerConfig {
            max_new_tokens: config.max_new_tokens,
            ..AnswerConfig::default()
        };
        answer
            .check()
            .map_err(|e| EvalError::setting("max-new-tokens", e.to_string()))?;
        Ok(Self {
            config,
            plans,
            items,
            answer,
        })
    }

    /// Returns the evaluation abstaining by `rule` (known once the reader is).
    pub fn abstaining_below(mut self, rule: Option<Threshold>) -> Self {
        self.config.abstain = rule;
        self
    }

    /// Returns the questions.
    pub fn items(&self) -> &[EvalItem] {
        &self.items
    }

    /// Returns the number of answers the run gives (questions x plans).
    pub fn answers(&self) -> usize {
        self.items.len() * self.plans.len()
    }

    /// Whether any method retrieves evidence (and so needs an index and an SAE set).
    pub fn needs_retrieval(&self) -> bool {
        self.plans.iter().any(|p| matches!(p, Plan::Retrieve(..)))
    }

    /// Answers every question with every plan, rewriting the report after each question, and
    /// returns the finished report. `reader` answers (the index model, or another: the
    /// evidence is text, read with the reader's own tokenizer and window); `ingest_seconds`
    /// (the time spent ingesting the contexts before) goes into its header.
    pub fn run(
        &self,
        reader: &Model,
        retrieval: Option<Retrieval<'_>>,
        ingest_seconds: f64,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Report> {
        let config = &self.config;
        let model = reader;
        let device = model.transformer().device();
        let mut runs = Vec::new();
        // Room for the answer, and for the support signal's turn after the same prompt.
        let after_prompt = config
            .max_new_tokens
            .max(answer::support::turn(model)?.len());
        for item in &self.items {
            let tok = model.tokenizer().encode(&item.context)?;
            let overhead =
                answer::prompt(model, Some(""), &asked(item, &config.instruction))?.len();
            let window = model.config().context;
            let room = window
                .checked_sub(overhead + after_prompt + SEAM_SLACK)
                .filter(|&r| r > SINK_TOKENS)
                .ok_or_else(|| EvalError::NoRoom {
                    id: item.id.clone(),
                    overhead,
                    max_new_tokens: after_prompt,
                    window,
                })?;
            for plan in &self.plans {
                let method = plan.name();
                progress(Progress::Answering {
                    method: &method,
                    id: &item.id,
                });
                reset_peak_rss();
                reset_gpu_peak(device)?;
                let records = self
                    .run_one(model, item, &tok, room, *plan, retrieval)
                    .map_err(|e| EvalError::Question {
                        id: item.id.clone(),
                        method: method.clone(),
                        source: Box::new(e),
                    })?;
                let peak = peak_gpu_bytes(device)?;
                for mut record in records {
                    record.peak_gpu_bytes = peak;
                    runs.push(record);
                }
                progress(Progress::Answered);
            }
            // The report so far, after each question: a long run stopped early keeps its results.
            self.write_report(model, &runs, ingest_seconds, false)?;
        }
        self.write_report(model, &runs, ingest_seconds, true)
    }

    fn run_one(
        &self,
        model: &Model,
        item: &EvalItem,
        tok: &Tokenized,
        room: usize,
        plan: Plan,
        retrieval: Option<Retrieval<'_>>,
    ) -> Result<Vec<RunRecord>> {
        let t = Instant::now();
        // A cut document is one passage (quotes from it have no document range).
        let whole = |text: &str| {
            vec![Passage {
                text: text.to_string(),
                doc_id: None,
                char_start: 0,
                label: None,
            }]
        };
        let (context, ranges, passages): (Option<String>, Option<CharRanges>, Vec<Passage>) =
            match plan {
                Plan::ClosedBook => (None, None, Vec::new()),
                Plan::Full => {
                    // LongBench: keep the first and last halves of what fits.
                    let c = cut(&item.context, tok, room / 2, room - room / 2);
                    let p = whole(&c.text);
                    (Some(c.text), Some(c.ranges), p)
                }
                Plan::Window(budget) => {
                    let keep = budget.min(room);
                    let sink = SINK_TOKENS.min(keep);
                    let c = cut(&item.context, tok, sink, keep - sink);
                    let p = whole(&c.text);
                    (Some(c.text), Some(c.ranges), p)
                }
                Plan::Retrieve(method, budget) => {
                    let r = retrieval.ok_or_else(|| {
                        EvalError::Input("retrieval was not set up: no index given".into())
                    })?;
                    let e = r.retriever.retrieve(
                        r.index,
                        &Query {
                            collection: self.config.collection.clone(),
                            docs: vec![super::contexts::context_id(&item.context)],
                            question: item.input.clone(),
                            budget,
                            method,
                            trace: false,
                            filter: None,
                        },
                    )?;
                    let spans = e.spans.iter().map(|s| (s.char_start, s.char_end)).collect();
                    let p = answer::passages(&e);
                    ((!e.context.is_empty()).then_some(e.context), Some(spans), p)
                }
            };
        let context_ms = t.elapsed().as_secs_f64() * 1e3;
        let reading = answer::read(
            model,
            context.as_deref(),
            &asked(item, &self.config.instruction),
            passages,
            &self.answer,
        )?;
        let context_tokens = match &context {
            Some(c) => model.tokenizer().encode_ids(c)?.len(),
            None => 0,
        };
        let recalled = match (&ranges, item.gold_spans.is_empty()) {
            (Some(r), false) => Some(super::evidence_recalled(r, &item.gold_spans)),
            _ => None,
        };
        // Both signals of every reading with evidence, whatever the run's rule: one run
        // calibrates either.
        let support = reading.support()?;
        let abstained = match self.config.abstain {
            Some(rule) => Some(reading.abstains(Some(rule))?),
            None => None,
        };
        let modes = match plan {
            Plan::ClosedBook => &[AnswerMode::Free][..],
            _ => &self.config.modes[..],
        };
        let mut records = Vec::new();
        for &mode in modes {
            let config = AnswerConfig {
                mode,
                ..self.answer.clone()
            };
            let a = reading.answer(&config, &mut |_| true)?;
            // What the reader said, without the `[n]` it was asked to cite: scores count words.
            let said = strip_citations(&a.generated);
            let method = match mode {
                AnswerMode::Free => plan.name(),
                other => format!("{}/{other}", plan.name()),
            };
            records.push(RunRecord {
                id: item.id.clone(),
                method,
                budget: plan.budget(),
                doc_tokens: tok.ids.len(),
                fits: tok.ids.len() <= room,
                context_tokens,
                em: super::exact_match(&said, &item.answers),
                f1: super::token_f1(&said, &item.answers),
                holds: Some(super::holds_answer(&said, &item.answers)),
                answer: a.answer,
                recalled,
                context_ms,
                prefill_ms: a.timings_ms.get("prefill").copied().unwrap_or(0.0),
                decode_ms: a.timings_ms.get("decode").copied().unwrap_or(0.0),
                peak_rss_bytes: peak_rss_bytes(),
                peak_gpu_bytes: None,
                mode: mode.to_string(),
                confidence: a.confidence,
                abstained,
                support,
                support_ms: reading.support_ms(),
            });
        }
        Ok(records)
    }

    fn write_report(
        &self,
        model: &Model,
        runs: &[RunRecord],
        ingest_seconds: f64,
        done: bool,
    ) -> Result<Report> {
        let config = &self.config;
        let rows = report::summarize(runs);
        let out = &config.out;
        std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
        let name = model.config().name.clone();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let header = format!(
            "{} questions of {} with {} ({}-token window, {} on {} cores), answers of at most {} \
             tokens, instruction {:?}; ingest (scan + index) {:.0} s before the runs.\n\n",
            runs.iter()
                .map(|r| &r.id)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            config.dataset.display(),
            name,
            model.config().context,
            config.device,
            cores,
            config.max_new_tokens,
            config.instruction,
            ingest_seconds
        );
        let markdown = format!("{header}{}", report::markdown(&rows));
        let json = json!({
            "complete": done,
            "dataset": config.dataset.display().to_string(),
            "model": name,
            "window": model.config().context,
            "device": config.device,
            "cores": cores,
            "max_new_tokens": config.max_new_tokens,
            "instruction": config.instruction,
            "ingest_seconds": ingest_seconds,
            "rows": rows,
            "runs": runs,
        });
        let text = serde_json::to_string_pretty(&json).expect("a report always serialises");
        report::write_file(&out.join("report.json"), text.as_bytes())?;
        report::write_file(&out.join("report.md"), markdown.as_bytes())?;
        let gpu_chart = report::write_charts(out, &name, &rows, runs)?;
        Ok(Report {
            json,
            markdown,
            gpu_chart,
        })
    }
}

/// Returns `text` without `[n]` citation marks.
fn strip_citations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close)
                if !after[..close].is_empty()
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The most GPU memory the process had allocated since [`reset_gpu_peak`] (the weights
/// included), `None` on the CPU.
fn peak_gpu_bytes(device: &candle_core::Device) -> Result<Option<u64>> {
    Ok(gpu_memory(device)?.map(|m| {
        if m.peak_allocated_bytes > 0 {
            m.peak_allocated_bytes
        } else {
            // No stream-ordered pool to ask: what the whole device has in use now.
            m.device_used_bytes
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_head_and_tail_chars() {
        let doc = "ab cd ef gh";
        let tok = Tokenized {
            ids: vec![1, 2, 3, 4],
            offsets: vec![(0, 2), (2, 5), (5, 8), (8, 11)],
        };
        let c = cut(doc, &tok, 1, 1);
        assert_eq!(c.text, "ab gh");
        assert_eq!(c.ranges, vec![(0, 2), (8, 11)]);
        let whole = cut(doc, &tok, 2, 2);
        assert_eq!(whole.text, doc);
        assert_eq!(whole.ranges, vec![(0, 11)]);
        let tail_only = cut(doc, &tok, 0, 2);
        assert_eq!(tail_only.text, " ef gh");
        assert_eq!(tail_only.ranges, vec![(5, 11)]);
        // A budget of no more than the sink keeps the head alone.
        let head_only = cut(doc, &tok, 2, 0);
        assert_eq!(head_only.text, "ab cd");
        assert_eq!(head_only.ranges, vec![(0, 5)]);
    }

    #[test]
    fn the_instruction_follows_the_question_and_may_be_empty() {
        let item = EvalItem {
            id: "q".into(),
            context: String::new(),
            input: "Who wrote it?".into(),
            answers: vec!["A".into()],
            gold_spans: Vec::new(),
        };
        assert_eq!(asked(&item, ""), "Who wrote it?");
        assert_eq!(asked(&item, "  "), "Who wrote it?");
        assert_eq!(asked(&item, " Be brief. "), "Who wrote it?\nBe brief.");
        assert_eq!(
            asked(&item, SHORT_ANSWER),
            format!("Who wrote it?\n{SHORT_ANSWER}")
        );
    }

    #[test]
    fn citation_marks_are_not_scored() {
        assert_eq!(
            strip_citations("Paris [2]. It is [1, 3] old"),
            "Paris . It is  old"
        );
        assert_eq!(strip_citations("a [b] [] c[4"), "a [b] [] c[4");
    }

    #[test]
    fn plans_expand_budgets_and_name_unknown_methods() {
        let p = plans(
            &["full".into(), "window".into(), "hybrid".into()],
            &[512, 1024],
        )
        .unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(p[1].name(), "window");
        assert_eq!(p[4].budget(), 1024);
        let e = plans(&["nope".into()], &[512]).unwrap_err().to_string();
        assert!(e.contains("unknown method `nope`"), "{e}");
        assert!(plans(&["full".into()], &[0]).is_err());
    }
}
