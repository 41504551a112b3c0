//! `s3mem retrieve|ask`: evidence for a question, and an answer from it.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::command_line::{AskArgs, RetrieveArgs};
use super::load::{embed_missing, load, load_embedder, load_reader, load_sae_set, load_second};
use crate::answer::{self, AnswerConfig, Quote};
use crate::embed::Embedder;
use crate::index::Index;
use crate::model::Model;
use crate::retrieve::{Evidence, Query, RetrieveConfig, Retriever};
use crate::sae::SaeSet;

/// The model, SAE set, embedding model, re-ranking model and index a question needs.
struct Loaded {
    model: Model,
    saes: SaeSet,
    embedder: Option<Embedder>,
    reranker: Option<Model>,
    config: RetrieveConfig,
    index: Index,
}

impl Loaded {
    fn retriever(&self) -> Result<Retriever<'_>> {
        Ok(
            Retriever::new(&self.model, &self.saes, self.config.clone())?
                .with_embedder(self.embedder.as_ref())
                .with_reranker(self.reranker.as_ref()),
        )
    }
}

fn load_all(args: &RetrieveArgs, models: &Path) -> Result<Loaded> {
    // Settings first: a bad one stops the command before any model loads.
    let config = RetrieveConfig {
        rerank: args.attention.config(),
        ..RetrieveConfig::default()
    };
    config.check()?;
    let mut index = Index::open_existing(args.data.dir()?)?;
    let model = load(&args.model, models)?;
    let saes = load_sae_set(&model, &args.sae, models)?;
    let embedder = load_embedder(&args.model, models)?;
    embed_missing(embedder.as_ref(), &mut index)?;
    let reranker = load_second(
        args.attention.reranker.rerank_model.as_deref(),
        &args.model,
        models,
    )?;
    Ok(Loaded {
        model,
        saes,
        embedder,
        reranker,
        config,
        index,
    })
}

/// Refuses re-ranking flags in client mode: a daemon re-ranks with the settings it was
/// started with, the same for every call.
fn refuse_remote_rerank(args: &RetrieveArgs) -> Result<()> {
    let flags = args.attention.heads.is_some() || args.attention.reranker.rerank_model.is_some();
    if flags && args.server.server.is_some() {
        anyhow::bail!(
            "--heads and --rerank-model apply to a local data dir (--data-dir); \
             a daemon (--server) re-ranks with its own: set them on `s3mem serve` \
             (--heads, --pool-tokens, --rerank-first-stage, --rerank-model) and ask with \
             --method rerank alone"
        );
    }
    Ok(())
}

fn query(args: &RetrieveArgs) -> Query {
    Query {
        collection: args.collection.clone(),
        docs: args.docs.clone(),
        question: args.question.clone(),
        budget: args.budget,
        method: args.method,
        trace: args.trace,
        filter: args.filter.clone(),
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
    mode: String,
    quote: Option<Quote>,
    citations: Vec<usize>,
    not_in_evidence: bool,
    confidence: Option<f32>,
    /// The support signal, when it was computed (a daemon does not send it).
    support: Option<f32>,
}

impl Answered {
    /// Prints what follows the streamed answer: the cited text of a free answer, the place of
    /// a quote.
    fn print_provenance(&self) {
        if let Some(q) = &self.quote {
            let piece = q.label.map_or(String::new(), |n| format!(" [{n}]"));
            println!(
                "\nquoted from {} chars {}..{}{piece}",
                q.doc_id.as_deref().unwrap_or("the evidence"),
                q.char_start,
                q.char_end
            );
        } else if !self.not_in_evidence && self.citations.iter().any(|&n| n > 0) {
            println!("\ncited: {}", self.answer);
        }
    }
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
    refuse_remote_rerank(args)?;
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
    refuse_remote_rerank(a)?;
    args.answer.check()?;
    let (e, trace, ans) = match a.server.connect()? {
        Some(mut client) => {
            let (e, trace, done) = client.ask(args, &mut on_text)?;
            let ans = Answered {
                quote: done.quote.map(|q| Quote {
                    text: done.answer.clone(),
                    doc_id: Some(q.doc_id),
                    char_start: q.char_start as usize,
                    char_end: q.char_end as usize,
                    label: (q.evidence > 0).then_some(q.evidence as usize),
                }),
                answer: done.answer,
                prompt_tokens: done.prompt_tokens as usize,
                new_tokens: done.new_tokens as usize,
                stop: json!(done.stop),
                timings_ms: done.timings_ms.into_iter().collect(),
                mode: done.mode,
                citations: done.citations.into_iter().map(|n| n as usize).collect(),
                not_in_evidence: done.not_in_evidence,
                confidence: done.confidence,
                support: None,
            };
            (e, trace, ans)
        }
        None => {
            let l = load_all(a, models)?;
            let reader = load_reader(&args.answer, &a.model, models)?;
            let r = l.retriever()?;
            let e = r.retrieve(&l.index, &query(a))?;
            // The evidence is text: the reader tokenizes it with its own tokenizer.
            let reader = reader.as_ref().unwrap_or(&l.model);
            let config = AnswerConfig {
                max_new_tokens: args.max_new_tokens,
                mode: args.answer_mode.unwrap_or_default(),
                abstain: args.answer.threshold(reader),
                ..AnswerConfig::default()
            };
            let ans = answer::answer(reader, &e, &config, &mut on_text)?;
            let ans = Answered {
                answer: ans.answer,
                prompt_tokens: ans.prompt_tokens,
                new_tokens: ans.new_tokens,
                stop: json!(ans.stop),
                timings_ms: ans.timings_ms,
                mode: ans.mode.to_string(),
                quote: ans.quote,
                citations: ans.citations,
                not_in_evidence: ans.not_in_evidence,
                confidence: ans.confidence,
                support: ans.support,
            };
            (e, None, ans)
        }
    };
    if a.json {
        let mut v = evidence_json(&e, trace)?;
        v["answer"] = json!(ans.answer);
        v["answer_mode"] = json!(ans.mode);
        v["not_in_evidence"] = json!(ans.not_in_evidence);
        v["citations"] = json!(ans.citations);
        v["confidence"] = json!(ans.confidence);
        if let Some(s) = ans.support {
            v["support"] = json!(s);
        }
        if let Some(q) = &ans.quote {
            v["quote"] = serde_json::to_value(q)?;
        }
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
        ans.print_provenance();
        println!("\n");
        print_spans(&e);
    }
    Ok(())
}
