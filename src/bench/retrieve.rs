//! `s3mem bench retrieve`: retrieve latency against collection size.
//!
//! The corpus documents are scanned once; the collection grows by storing copies of their
//! encodings under new ids (real postings, real coarse records, real BM25 passages), so a
//! million-token collection costs one scan of the corpus, not a million tokens of scanning.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::{BenchError, Log, Result};
use crate::index::{EncodedDocument, Index, NewDocument};
use crate::ingest::{encode_document, Encoder};
use crate::retrieve::{Method, Query, Retriever};

/// What `bench retrieve` measures.
#[derive(Debug, Clone)]
pub struct RetrieveBench {
    /// The benchmark collection (created if missing; later runs only add what is missing).
    pub collection: String,
    /// Documents scanned once and stored in copies.
    pub corpus: Vec<PathBuf>,
    /// Collection sizes in tokens, ascending.
    pub tokens: Vec<usize>,
    /// Questions asked in turn.
    pub questions: Vec<String>,
    /// Retrievals per size.
    pub runs: usize,
    /// Evidence budget in tokens.
    pub budget: usize,
    /// The method.
    pub method: Method,
}

/// The measurements at one collection size.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RetrieveRow {
    /// Tokens in the collection.
    pub tokens: u64,
    /// Documents in the collection.
    pub documents: usize,
    /// Bytes on disk per token (the whole data dir).
    pub disk_bytes_per_token: f64,
    /// Seconds storing the copies that reached this size.
    pub store_seconds: f64,
    /// Median retrieve milliseconds, the question's forward pass excluded.
    pub retrieve_p50_ms: f64,
    /// 99th percentile of the same.
    pub retrieve_p99_ms: f64,
    /// Median milliseconds of the question's forward pass.
    pub question_forward_p50_ms: f64,
    /// Median milliseconds of the whole call (forward pass, re-ranking and assembly included):
    /// the question's latency.
    pub question_p50_ms: f64,
    /// Median milliseconds of each stage the retriever timed (`Evidence::timings_ms`: s3, bm25,
    /// dense, rerank_forward, rerank, assemble, ...), so a latency can be split.
    pub stages_p50_ms: BTreeMap<String, f64>,
}

/// The header of the Markdown table [`RetrieveRow::markdown`] rows belong to.
pub const TABLE_HEADER: &str = "| collection tokens | documents | disk B/token | store s | retrieve p50 ms | retrieve p99 ms | question forward p50 ms | question p50 ms |\n|---|---|---|---|---|---|---|---|\n";

impl RetrieveRow {
    /// Returns the row as a line of the Markdown table.
    pub fn markdown(&self) -> String {
        format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.tokens,
            self.documents,
            self.disk_bytes_per_token,
            self.store_seconds,
            self.retrieve_p50_ms,
            self.retrieve_p99_ms,
            self.question_forward_p50_ms,
            self.question_p50_ms
        )
    }

    /// Returns the stage medians as one line (`stages p50 ms at N tokens: s3 1.0, ...`).
    pub fn stages_line(&self) -> String {
        let parts: Vec<String> = self
            .stages_p50_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        format!(
            "stages p50 ms at {} tokens: {}",
            self.tokens,
            parts.join(", ")
        )
    }
}

/// A corpus document scanned once: its file name, text and encoding.
pub(super) type ScannedDocument = (String, String, EncodedDocument);

/// Scans each corpus file once (for `collection`), to be stored in copies.
pub(super) fn scan_corpus(
    encoder: &Encoder<'_>,
    collection: &str,
    paths: &[PathBuf],
    log: Log<'_>,
) -> Result<Vec<ScannedDocument>> {
    let mut corpus = Vec::new();
    for p in paths {
        let text = super::read_text(p)?;
        let name = p
            .file_name()
            .map_or("doc".into(), |n| n.to_string_lossy().to_string());
        let doc = NewDocument {
            collection,
            id: None,
            meta: Vec::new(),
            text: &text,
        };
        log(&format!("scanning {name} once"));
        let encoded = encode_document(encoder, &doc, &mut |_, _| true)?;
        corpus.push((name, text, encoded));
    }
    Ok(corpus)
}

/// Grows the collection to each size in turn and times `runs` retrievals there; `on_row` gets
/// each size's row as soon as it is measured and `log` the scans.
pub fn retrieve(
    index: &mut Index,
    encoder: &Encoder<'_>,
    retriever: &Retriever<'_>,
    bench: &RetrieveBench,
    log: Log<'_>,
    on_row: &mut dyn FnMut(&RetrieveRow),
) -> Result<Vec<RetrieveRow>> {
    if bench.runs == 0 || bench.questions.is_empty() {
        return Err(BenchError::Input(
            "bench retrieve needs at least one run and one question".into(),
        ));
    }
    if index.collection_id(&bench.collection).is_err() {
        index.create_collection(&bench.collection)?;
    }
    let corpus = scan_corpus(encoder, &bench.collection, &bench.corpus, log)?;
    let have = |index: &Index| -> Result<u64> {
        Ok(index
            .collections()?
            .into_iter()
            .find(|c| c.name == bench.collection)
            .map_or(0, |c| c.tokens))
    };
    let mut rows = Vec::new();
    let mut copy = 0usize;
    for &target in &bench.tokens {
        let stored_from = Instant::now();
        while have(index)? < target as u64 {
            for (name, text, encoded) in &corpus {
                index.store_encoded(
                    NewDocument {
                        collection: &bench.collection,
                        id: Some(format!("copy-{copy}-{name}")),
                        meta: Vec::new(),
                        text,
                    },
                    encoded,
                    encoder.identity(),
                )?;
            }
            copy += 1;
        }
        index.commit()?;
        let store_seconds = stored_from.elapsed().as_secs_f64();
        let documents = index.documents(&bench.collection)?.len();
        let (mut lat, mut fwd, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for run in 0..bench.runs {
            let question = &bench.questions[run % bench.questions.len()];
            let asked = Instant::now();
            let e = retriever.retrieve(
                index,
                &Query {
                    collection: bench.collection.clone(),
                    docs: Vec::new(),
                    question: question.clone(),
                    budget: bench.budget,
                    method: bench.method,
                    trace: false,
                    filter: None,
                },
            )?;
            whole.push(asked.elapsed().as_secs_f64() * 1e3);
            lat.push(e.timings_ms.get("retrieve").copied().unwrap_or(0.0));
            fwd.push(e.timings_ms.get("question_forward").copied().unwrap_or(0.0));
            for (k, v) in &e.timings_ms {
                stages.entry(k.clone()).or_default().push(*v);
            }
        }
        let tokens = have(index)?;
        let row = RetrieveRow {
            tokens,
            documents,
            disk_bytes_per_token: index.disk_bytes() as f64 / tokens as f64,
            store_seconds,
            retrieve_p50_ms: super::quantile(&mut lat, 0.5).unwrap_or(0.0),
            retrieve_p99_ms: super::quantile(&mut lat, 0.99).unwrap_or(0.0),
            question_forward_p50_ms: super::quantile(&mut fwd, 0.5).unwrap_or(0.0),
            question_p50_ms: super::quantile(&mut whole, 0.5).unwrap_or(0.0),
            stages_p50_ms: stages
                .into_iter()
                .filter_map(|(k, mut v)| Some((k, super::quantile(&mut v, 0.5)?)))
                .collect(),
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_prints_as_a_table_line() {
        let row = RetrieveRow {
            tokens: 13_523,
            documents: 3,
            disk_bytes_per_token: 161.2,
            store_seconds: 0.4,
            retrieve_p50_ms: 15.64,
            retrieve_p99_ms: 21.0,
            question_forward_p50_ms: 170.0,
            question_p50_ms: 190.04,
            stages_p50_ms: [("s3".to_string(), 12.04), ("bm25".to_string(), 3.0)].into(),
        };
        assert_eq!(
            row.markdown(),
            "| 13523 | 3 | 161 | 0 | 15.6 | 21.0 | 170.0 | 190.0 |"
        );
        assert_eq!(
            TABLE_HEADER.lines().next().unwrap().matches('|').count(),
            row.markdown().matches('|').count()
        );
        assert_eq!(
            row.stages_line(),
            "stages p50 ms at 13523 tokens: bm25 3.0, s3 12.0"
        );
    }
}
