//! `s3mem retrieve|ask`: evidence for a question, and an answer from it.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::commands::{load, load_sae_set};
use super::{AskArgs, RetrieveArgs};
use crate::answer::{self, AnswerConfig};
use crate::index::{Index, IndexConfig};
use crate::model::Model;
use crate::retrieve::{Evidence, Query, RetrieveConfig, Retriever};
use crate::sae::SaeSet;

/// Opens an existing data dir for reading.
fn open_existing(data_dir: &Path) -> Result<Index> {
    if !data_dir.join("store").is_dir() {
        bail!(
            "data dir {} does not exist or holds no index; ingest documents first",
            data_dir.display()
        );
    }
    Ok(Index::open(data_dir, IndexConfig::default())?)
}

/// The model, SAE set and index a question needs.
struct Loaded {
    model: Model,
    saes: SaeSet,
    index: Index,
}

fn load_all(args: &RetrieveArgs, models: &Path) -> Result<Loaded> {
    let index = open_existing(&args.data.data_dir)?;
    let model = load(&args.model, models)?;
    let saes = load_sae_set(&model, &args.sae, models)?;
    Ok(Loaded { model, saes, index })
}

fn query(args: &RetrieveArgs) -> Query {
    Query {
        collection: args.collection.clone(),
        docs: args.docs.clone(),
        question: args.question.clone(),
        budget: args.budget,
        method: args.method,
        trace: args.trace,
    }
}

fn evidence_json(e: &Evidence) -> Result<Value> {
    Ok(serde_json::to_value(e)?)
}

/// Prints the cited spans, readable.
fn print_spans(e: &Evidence) {
    println!(
        "evidence: {} spans, {} of {} tokens ({})",
        e.spans.len(),
        e.context_tokens,
        e.budget,
        e.method
    );
    for (i, s) in e.spans.iter().enumerate() {
        let text: String = s.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let shown: String = text.chars().take(240).collect();
        let more = if shown.len() < text.len() { " ..." } else { "" };
        println!(
            "[{}] {} chars {}..{} ({}, score {:.3})\n    {shown}{more}",
            i + 1,
            s.doc_id,
            s.char_start,
            s.char_end,
            s.source,
            s.score
        );
    }
}

/// Runs `s3mem retrieve`.
pub fn retrieve(args: &RetrieveArgs, models: &Path) -> Result<()> {
    let l = load_all(args, models)?;
    let r = Retriever::new(&l.model, &l.saes, RetrieveConfig::default())?;
    let e = r.retrieve(&l.index, &query(args))?;
    if args.json {
        println!("{}", serde_json::to_string(&evidence_json(&e)?)?);
    } else {
        print_spans(&e);
    }
    Ok(())
}

/// Runs `s3mem ask`.
pub fn ask(args: &AskArgs, models: &Path) -> Result<()> {
    let a = &args.retrieve;
    let l = load_all(a, models)?;
    let r = Retriever::new(&l.model, &l.saes, RetrieveConfig::default())?;
    let e = r.retrieve(&l.index, &query(a))?;
    let config = AnswerConfig {
        max_new_tokens: args.max_new_tokens,
        ..AnswerConfig::default()
    };
    let mut out = std::io::stdout();
    let stream = !a.json;
    let ans = answer::answer(&l.model, &e, &config, &mut |piece| {
        if stream {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        true
    })?;
    if a.json {
        let mut v = evidence_json(&e)?;
        v["answer"] = json!(ans.answer);
        v["usage"] = json!({
            "prompt_tokens": ans.prompt_tokens,
            "new_tokens": ans.new_tokens,
            "stop": ans.stop,
        });
        for (k, t) in &ans.timings_ms {
            v["timings_ms"][format!("answer_{k}")] = json!(t);
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("\n");
        print_spans(&e);
    }
    Ok(())
}
