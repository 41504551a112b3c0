//! `s3mem sae train|eval`.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::command_line::{SaeCommand, SaeEvalArgs, SaeTrainArgs};
use super::load::{load, load_sae_set};
use crate::model::Model;
use crate::sae::build::{collect, eval_set, train_set, CollectConfig, Collected, SaeEval};
use crate::sae::{TrainConfig, TrainLength};

/// Runs an `sae` subcommand.
pub fn run(cmd: SaeCommand, models: &Path) -> Result<()> {
    match cmd {
        SaeCommand::Train(args) => train(&args, models),
        SaeCommand::Eval(args) => eval(&args, models),
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{msg}} eta {{eta}}"
        ))
        .expect("static template")
        .progress_chars("=> "),
    )
}

fn scan_corpus(
    model: &Model,
    cfg: &CollectConfig,
    corpus: &[std::path::PathBuf],
) -> Result<crate::sae::build::Collected> {
    let pb = bar(cfg.tokens, "scan tokens");
    let t0 = Instant::now();
    let collected = collect(model, corpus, cfg, &mut |n| {
        pb.set_position(n);
        pb.set_message(format!(
            "{:.0} tok/s",
            n as f64 / t0.elapsed().as_secs_f64()
        ));
    })?;
    pb.finish_and_clear();
    tracing::info!(
        tokens = collected.tokens,
        secs = t0.elapsed().as_secs_f64(),
        "corpus scanned"
    );
    Ok(collected)
}

fn train(args: &SaeTrainArgs, models: &Path) -> Result<()> {
    let model = load(&args.model, models)?;
    let heads = args
        .heads
        .as_ref()
        .map(|h| h.heads().to_vec())
        .unwrap_or_default();
    let layers = match &args.heads {
        Some(h) => crate::model::LayerSet::new(h.layers())?,
        None => args.layers.clone(),
    };
    let cfg = CollectConfig {
        layers,
        per_head: args.per_head || !heads.is_empty(),
        heads: heads.clone(),
        queries: true,
        tokens: args.tokens,
        skip_tokens: args.corpus.skip_tokens,
        max_samples: args.max_samples,
        holdout_every: args.holdout_every,
        scan: args.window.config(),
        text_field: args.corpus.text_field.clone(),
        seed: args.seed,
    };
    let t0 = Instant::now();
    let cache_key = json!({
        "model": model.fingerprint()?,
        "corpus": args.corpus.corpus,
        "text_field": args.corpus.text_field,
        "skip_tokens": args.corpus.skip_tokens,
        "tokens": args.tokens,
        "layers": cfg.layers.to_string(),
        "per_head": cfg.per_head,
        "heads": heads.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_samples": args.max_samples,
        "holdout_every": args.holdout_every,
        "seed": args.seed,
        "window": [args.window.chunk, args.window.sinks, args.window.overlap],
    });
    let cached = match &args.samples_cache {
        Some(p) => Collected::load(p, &cache_key)?,
        None => None,
    };
    let mut collected = match cached {
        Some(c) => {
            eprintln!(
                "reusing the vectors sampled earlier in {}",
                args.samples_cache
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            c
        }
        None => {
            let c = scan_corpus(&model, &cfg, &args.corpus.corpus)?;
            if let Some(p) = &args.samples_cache {
                c.save(p, &cache_key)?;
            }
            c
        }
    };
    let scan_secs = t0.elapsed().as_secs_f64();
    let heldout_keys = std::mem::take(&mut collected.heldout_keys);
    let heldout_queries = std::mem::take(&mut collected.heldout_queries);
    let tokens = collected.tokens;
    let train_cfg = TrainConfig {
        dict_size: args.dict,
        k: args.k,
        length: TrainLength::Epochs(args.epochs),
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let t1 = Instant::now();
    let pb = bar(0, "train steps");
    let (set, reports) = train_set(
        &model,
        collected,
        &heads,
        args.with_queries,
        &train_cfg,
        &args.out,
        &mut |slot, p| {
            if p.step == 1 {
                pb.set_length(p.total_steps);
                pb.reset();
            }
            pb.set_position(p.step);
            pb.set_message(format!(
                "layer {} {}: fvu {:.3} dead {:.3}",
                slot.0, slot.1, p.fvu, p.dead_fraction
            ));
        },
    )?;
    pb.finish_and_clear();
    let train_secs = t1.elapsed().as_secs_f64();
    let heldout = eval_set(&set, &heldout_keys, &heldout_queries)?;
    let report = json!({
        "out": args.out,
        "digest": set.digest(),
        "retrieval_heads": set.retrieval_heads().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "model_fingerprint": set.model_fingerprint(),
        "corpus_tokens": tokens,
        "scan_seconds": scan_secs,
        "train_seconds": train_secs,
        "train": reports.iter().map(|((l, h), r)| json!({"layer": l, "head": h.to_string(), "report": r})).collect::<Vec<_>>(),
        "heldout": heldout,
    });
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if args.json {
        println!("{report}");
    } else {
        println!(
            "trained {} SAEs on {tokens} tokens in {:.0} s (scan {:.0} s, train {:.0} s) -> {}",
            reports.len(),
            scan_secs + train_secs,
            scan_secs,
            train_secs,
            args.out.display()
        );
        print_evals(&heldout);
    }
    Ok(())
}

fn eval(args: &SaeEvalArgs, models: &Path) -> Result<()> {
    let model = load(&args.model, models)?;
    let spec = args
        .sae
        .as_ref()
        .map_or("default".into(), |d| d.display().to_string());
    let set = load_sae_set(&model, &spec, models)?;
    let mut layers: Vec<usize> = set.layers();
    layers.dedup();
    let per_head = set.metas().any(|m| m.head != crate::sae::HeadMode::Shared);
    let cfg = CollectConfig {
        layers: crate::model::LayerSet::new(layers)?,
        per_head,
        heads: set.retrieval_heads().to_vec(),
        queries: true,
        tokens: args.tokens,
        skip_tokens: args.corpus.skip_tokens,
        max_samples: args.max_samples,
        holdout_every: 0,
        scan: args.window.config(),
        text_field: args.corpus.text_field.clone(),
        seed: 1,
    };
    let collected = scan_corpus(&model, &cfg, &args.corpus.corpus)?;
    let tokens = collected.tokens;
    let evals = eval_set(&set, &collected.keys, &collected.queries)?;
    if args.json {
        println!(
            "{}",
            json!({"sae": spec, "digest": set.digest(), "tokens": tokens, "saes": evals})
        );
    } else {
        println!("SAE set {spec} ({tokens} tokens held out)");
        print_evals(&evals);
    }
    Ok(())
}

fn print_evals(evals: &[SaeEval]) {
    println!("| layer | head | FVU keys | FVU queries | dead | L0 | FVU keys at k=4/8/16/32 |");
    println!("|---:|---|---:|---:|---:|---:|---|");
    for e in evals {
        let at: Vec<String> = e
            .fvu_keys_at_k
            .iter()
            .map(|k| format!("{:.3}", k.fvu))
            .collect();
        println!(
            "| {} | {} | {:.3} | {} | {:.3} | {:.1} | {} |",
            e.layer,
            e.head,
            e.fvu_keys,
            e.fvu_queries.map_or("-".into(), |f| format!("{f:.3}")),
            e.dead_frac,
            e.mean_l0,
            at.join(" / ")
        );
    }
}
