//! `s3mem eval DATASET`: answer quality per method and budget, side by side, with the
//! evidence recall, latency and peak memory of each run; writes JSON, Markdown and PNG charts.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::commands::{load, load_sae_set};
use super::eval::{context_id, ingest_contexts};
use super::{peak_rss_bytes, reset_peak_rss, EvalRunArgs};
use crate::answer::{self, AnswerConfig};
use crate::eval::report::{self, Memory, RunRecord, NO_BUDGET};
use crate::eval::{self, EvalItem};
use crate::index::{Index, IndexConfig};
use crate::ingest::Encoder;
use crate::model::{gpu_memory, reset_gpu_peak, Model, Tokenized};
use crate::retrieve::{Method, Query, RetrieveConfig, Retriever};

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
        bail!("--budgets: a budget must be at least 1 token");
    }
    let mut out = Vec::new();
    for m in methods {
        match m.as_str() {
            "closed-book" => out.push(Plan::ClosedBook),
            "full" => out.push(Plan::Full),
            "window" => out.extend(budgets.iter().map(|&b| Plan::Window(b))),
            other => {
                let method: Method = other.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--methods: unknown method `{other}` (full, window, closed-book, s3, bm25, hybrid, bias)"
                    )
                })?;
                out.extend(budgets.iter().map(|&b| Plan::Retrieve(method, b)));
            }
        }
    }
    if out.is_empty() {
        bail!("--methods: no method given");
    }
    Ok(out)
}

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

/// Runs `s3mem eval DATASET`; the report is rewritten after each question and finished at
/// the end.
pub fn run(args: &EvalRunArgs, models: &Path) -> Result<()> {
    let dataset = args
        .dataset
        .as_deref()
        .context("give the JSONL dataset: s3mem eval DATASET (or a subcommand)")?;
    let plans = plans(&args.methods, &args.budgets)?;
    let mut items = eval::read_jsonl(dataset)?;
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    if items.is_empty() {
        bail!("{}: no questions", dataset.display());
    }
    let config = AnswerConfig {
        max_new_tokens: args.max_new_tokens,
        ..AnswerConfig::default()
    };
    config.check().context("--max-new-tokens")?;
    let model = load(&args.store.model, models)?;
    let retrieval = plans.iter().any(|p| matches!(p, Plan::Retrieve(..)));
    let mut ingest_seconds = 0.0;
    let saes;
    let mut index = None;
    let mut retriever = None;
    if retrieval {
        saes = load_sae_set(&model, &args.store.sae, models)?;
        let mut ix = Index::open(args.store.data.dir()?, IndexConfig::default())?;
        let encoder = Encoder::new(&model, &saes, crate::model::ScanConfig::default())?;
        let t = Instant::now();
        ingest_contexts(&mut ix, &encoder, &args.store.collection, &items)?;
        ingest_seconds = t.elapsed().as_secs_f64();
        retriever = Some(Retriever::new(&model, &saes, RetrieveConfig::default())?);
        index = Some(ix);
    }
    let bar = ProgressBar::new((items.len() * plans.len()) as u64).with_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} answers eta {eta} {msg}")?
            .progress_chars("=> "),
    );
    let device = model.transformer().device();
    let mut runs = Vec::new();
    for item in &items {
        let tok = model.tokenizer().encode(&item.context)?;
        let overhead = answer::prompt(&model, Some(""), &asked(item, &args.instruction))?.len();
        let window = model.config().context;
        let room = window
            .checked_sub(overhead + args.max_new_tokens + SEAM_SLACK)
            .filter(|&r| r > SINK_TOKENS)
            .with_context(|| {
                format!(
                    "question {}: the prompt frame ({overhead} tokens) and --max-new-tokens {} leave no room in the {window}-token window",
                    item.id, args.max_new_tokens
                )
            })?;
        for plan in &plans {
            bar.set_message(format!("{} {}", plan.name(), item.id));
            reset_peak_rss();
            reset_gpu_peak(device)?;
            let mut record = run_one(
                &model,
                item,
                &args.instruction,
                &tok,
                room,
                *plan,
                &config,
                index.as_ref().zip(retriever.as_ref()),
                &args.store.collection,
            )
            .with_context(|| format!("question {} with {}", item.id, plan.name()))?;
            record.peak_gpu_bytes = peak_gpu_bytes(device)?;
            runs.push(record);
            bar.inc(1);
        }
        // The report so far, after each question: a long run stopped early keeps its results.
        write_report(args, dataset, &model, &runs, ingest_seconds, false)?;
    }
    bar.finish_and_clear();
    write_report(args, dataset, &model, &runs, ingest_seconds, true)
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    model: &Model,
    item: &EvalItem,
    instruction: &str,
    tok: &Tokenized,
    room: usize,
    plan: Plan,
    config: &AnswerConfig,
    retrieval: Option<(&Index, &Retriever<'_>)>,
    collection: &str,
) -> Result<RunRecord> {
    let t = Instant::now();
    let (context, ranges): (Option<String>, Option<Vec<(usize, usize)>>) = match plan {
        Plan::ClosedBook => (None, None),
        Plan::Full => {
            // LongBench: keep the first and last halves of what fits.
            let c = cut(&item.context, tok, room / 2, room - room / 2);
            (Some(c.text), Some(c.ranges))
        }
        Plan::Window(budget) => {
            let keep = budget.min(room);
            let sink = SINK_TOKENS.min(keep);
            let c = cut(&item.context, tok, sink, keep - sink);
            (Some(c.text), Some(c.ranges))
        }
        Plan::Retrieve(method, budget) => {
            let (index, retriever) = retrieval.context("retrieval was not set up")?;
            let e = retriever.retrieve(
                index,
                &Query {
                    collection: collection.to_string(),
                    docs: vec![context_id(&item.context)],
                    question: item.input.clone(),
                    budget,
                    method,
                    trace: false,
                },
            )?;
            let spans = e.spans.iter().map(|s| (s.char_start, s.char_end)).collect();
            ((!e.context.is_empty()).then_some(e.context), Some(spans))
        }
    };
    let context_ms = t.elapsed().as_secs_f64() * 1e3;
    let a = answer::answer_prompt(
        model,
        context.as_deref(),
        &asked(item, instruction),
        config,
        &mut |_| true,
    )?;
    let context_tokens = match &context {
        Some(c) => model.tokenizer().encode_ids(c)?.len(),
        None => 0,
    };
    let recalled = match (&ranges, item.gold_spans.is_empty()) {
        (Some(r), false) => Some(eval::evidence_recalled(r, &item.gold_spans)),
        _ => None,
    };
    Ok(RunRecord {
        id: item.id.clone(),
        method: plan.name(),
        budget: plan.budget(),
        doc_tokens: tok.ids.len(),
        fits: tok.ids.len() <= room,
        context_tokens,
        em: eval::exact_match(&a.answer, &item.answers),
        f1: eval::token_f1(&a.answer, &item.answers),
        answer: a.answer,
        recalled,
        context_ms,
        prefill_ms: a.timings_ms.get("prefill").copied().unwrap_or(0.0),
        decode_ms: a.timings_ms.get("decode").copied().unwrap_or(0.0),
        peak_rss_bytes: peak_rss_bytes(),
        peak_gpu_bytes: None,
    })
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

fn write_report(
    args: &EvalRunArgs,
    dataset: &Path,
    model: &Model,
    runs: &[RunRecord],
    ingest_seconds: f64,
    done: bool,
) -> Result<()> {
    let rows = report::summarize(runs);
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let name = model.config().name.clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let header = format!(
        "{} questions of {} with {} ({}-token window, {} on {} cores), answers of at most {} \
         tokens, instruction {:?}; ingest (scan + index) {:.0} s before the runs.\n\n",
        runs.iter()
            .map(|r| &r.id)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        dataset.display(),
        name,
        model.config().context,
        args.store.model.device.device,
        cores,
        args.max_new_tokens,
        args.instruction,
        ingest_seconds
    );
    let md = format!("{header}{}", report::markdown(&rows));
    let json = json!({
        "complete": done,
        "dataset": dataset.display().to_string(),
        "model": name,
        "window": model.config().context,
        "device": args.store.model.device.device.to_string(),
        "cores": cores,
        "max_new_tokens": args.max_new_tokens,
        "instruction": args.instruction,
        "ingest_seconds": ingest_seconds,
        "rows": rows,
        "runs": runs,
    });
    let write = |file: &str, bytes: &[u8]| {
        let p = out.join(file);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    write(
        "report.json",
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    write("report.md", md.as_bytes())?;
    let title = format!("{name}: F1 vs budget");
    write(
        "score.png",
        &report::score_chart(&rows, &title).to_png(800, 500),
    )?;
    let title = format!("{name}: peak RSS");
    write(
        "memory.png",
        &report::memory_chart(runs, Memory::Rss, &title).to_png(800, 500),
    )?;
    let gpu = runs.iter().any(|r| r.peak_gpu_bytes.is_some());
    if gpu {
        let title = format!("{name}: peak GPU memory");
        write(
            "gpu-memory.png",
            &report::memory_chart(runs, Memory::Gpu, &title).to_png(800, 500),
        )?;
    }
    if !done {
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string(&json)?);
    } else {
        print!("{md}");
        println!(
            "\nwrote {}/report.{{json,md}}, score.png, memory.png{}",
            out.display(),
            if gpu { ", gpu-memory.png" } else { "" }
        );
    }
    Ok(())
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
