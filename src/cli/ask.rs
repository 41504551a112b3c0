//! `s3mem retrieve|ask`: evidence for a question, and an answer from it.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::command_line::{AskArgs, RetrieveArgs};
use super::load::{embed_missing, load, load_embedder, load_sae_set};
use crate::answer::{self, AnswerConfig};
use crate::embed::Embedder;
use crate::index::Index;
use crate::model::Model;
use crate::retrieve::{Evidence, Query, RetrieveConfig, Retriever};
use crate::sae::SaeSet;

/// The model, SAE set, embedding model and index a question needs.
struct Loaded {
    model: Model,
    saes: SaeSet,
    embedder: Option<Embedder>,
    index: Index,
}

impl Loaded {
    fn retriever(&self) -> Result<Retriever<'_>> {
        Ok(
            Retriever::new(&self.model, &self.saes, RetrieveConfig::default())?
                .with_embedder(self.embedder.as_ref()),
        )
    }
}

fn load_all(args: &RetrieveArgs, models: &Path) -> Result<Loaded> {
    let mut index = Index::open_existing(args.data.dir()?)?;
    let model = load(&args.model, models)?;
    let saes = load_sae_set(&model, &args.sae, models)?;
    let embedder = load_embedder(&args.model, models)?;
    embed_missing(embedder.as_ref(), &mut index)?;
    Ok(Loaded {
        model,
        saes,
        embedder,
        index,
    })
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

/// Returns the JSON of evidence; a daemon's evidence brings its trace as JSON beside it.
fn evidence_json(e: &Evidence, remote_trace: Option<Value>) -> Result<Value> {
    let mut v = serde_json::to_value(e)?;
    if let Some(t) = remote_trace {
        v["trace"] = t;
    }
    Ok(v)
}

/// An answer as printed: from the local model or from a daemon.
struct Answered {
    answer: String,
    prompt_tokens: usize,
    new_tokens: usize,
    stop: Value,
    timings_ms: std::collections::BTreeMap<String, f64>,
}

/// Prints the cited spans, readable.
pub(super) fn print_spans(e: &Evidence) {
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
    let (e, trace) = match args.server.connect()? {
        Some(mut client) => client.retrieve(args)?,
        None => {
            let l = load_all(args, models)?;
            let r = l.retriever()?;
            (r.retrieve(&l.index, &query(args))?, None)
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&evidence_json(&e, trace)?)?);
    } else {
        print_spans(&e);
    }
    Ok(())
}

/// Runs `s3mem ask`.
pub fn ask(args: &AskArgs, models: &Path) -> Result<()> {
    let a = &args.retrieve;
    let mut out = std::io::stdout();
    let stream = !a.json;
    let mut on_text = |piece: &str| {
        if stream {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        true
    };
    let (e, trace, ans) = match a.server.connect()? {
        Some(mut client) => {
            let (e, trace, done) = client.ask(a, args.max_new_tokens, &mut on_text)?;
            let ans = Answered {
                answer: done.answer,
                prompt_tokens: done.prompt_tokens as usize,
                new_tokens: done.new_tokens as usize,
                stop: json!(done.stop),
                timings_ms: done.timings_ms.into_iter().collect(),
            };
            (e, trace, ans)
        }
        None => {
            let l = load_all(a, models)?;
            let r = l.retriever()?;
            let e = r.retrieve(&l.index, &query(a))?;
            let config = AnswerConfig {
                max_new_tokens: args.max_new_tokens,
                ..AnswerConfig::default()
            };
            let ans = answer::answer(&l.model, &e, &config, &mut on_text)?;
            let ans = Answered {
                answer: ans.answer,
                prompt_tokens: ans.prompt_tokens,
                new_tokens: ans.new_tokens,
                stop: json!(ans.stop),
                timings_ms: ans.timings_ms,
            };
            (e, None, ans)
        }
    };
    if a.json {
        let mut v = evidence_json(&e, trace)?;
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
