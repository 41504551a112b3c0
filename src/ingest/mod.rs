//! The ingest layer: where a document's text becomes what the index stores.
//!
//! Text -> tokens (the model's tokenizer, with each token's char range) -> streaming scan
//! (bounded windows) -> Top-k SAE codes per layer and KV head -> an [`EncodedDocument`]: per
//! (layer, feature) the document-local positions where it fired. [`crate::index`] stores
//! encoded documents and knows no model; everything that needs the model or the SAE set is
//! here, between `sae` and `index`.

mod encoder;
pub mod error;
pub mod vectors;

use std::sync::mpsc::sync_channel;
use std::time::Instant;

pub use encoder::{encode_layer, layer_codes, scan_shares, Encoder, LayerCode};
pub use error::{IngestError, Result};

use crate::index::{EncodedDocument, Index, Ingested, NewDocument};
use crate::model::Tokenized;

/// Checks a document before its scan: its collection, size, id and metadata, and that
/// `encoder` is what the index was built with.
pub fn check_document(encoder: &Encoder<'_>, index: &Index, doc: &NewDocument<'_>) -> Result<()> {
    Ok(index.check_document(doc, encoder.identity())?)
}

/// Tokenizes, scans and encodes a document with `encoder` (no index needed: the slow part of
/// an ingest, which can run while the index serves reads). `progress` gets the tokens done and
/// the total, and returns false to abort the scan.
pub fn encode_document(
    encoder: &Encoder<'_>,
    doc: &NewDocument<'_>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<EncodedDocument> {
    let t0 = Instant::now();
    let tokens = tokenize_document(encoder, doc)?;
    let tokenize_seconds = t0.elapsed().as_secs_f64();
    let n = tokens.ids.len();
    let mut encoded = encoder.encode_until(tokens, &mut |done| progress(done, n))?;
    encoded.tokenize_seconds = tokenize_seconds;
    vectors::attach(encoder.embedder(), doc.text, &mut encoded)?;
    Ok(encoded)
}

/// Tokenizes a document, refusing one that has no tokens.
fn tokenize_document(encoder: &Encoder<'_>, doc: &NewDocument<'_>) -> Result<Tokenized> {
    let tokens = encoder.tokenize(doc.text)?;
    if tokens.ids.is_empty() {
        return Err(IngestError::InvalidInput(format!(
            "document `{}` has no tokens",
            doc.id.as_deref().unwrap_or("(new)")
        )));
    }
    Ok(tokens)
}

/// Scans, encodes and stores a document; replaces an existing one with the same id.
///
/// The document is durable and its postings visible when this returns; its BM25 passages
/// become searchable at the next [`Index::commit`] (or the next open).
pub fn ingest(
    encoder: &Encoder<'_>,
    index: &mut Index,
    doc: NewDocument<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Ingested> {
    Ok(ingest_many(encoder, index, vec![doc], progress)?
        .documents
        .remove(0))
}

/// Encoded documents waiting for the storing thread: the scan runs at most this many ahead of
/// the store, so host memory stays bounded by them whatever the number of documents.
const STORE_QUEUE: usize = 2;

/// Most documents stored as one group (one sled batch, one flush): bounds what a group holds
/// until it commits (texts, offsets, passages; the postings are in their packs already).
const GROUP_DOCUMENTS: usize = 64;

/// Most tokens of one group; a longer document is a group of its own.
const GROUP_TOKENS: usize = 1 << 18;

/// What [`ingest_many`] stored, and how much of the storing overlapped the scan.
#[derive(Debug, Clone, Default)]
pub struct GroupIngested {
    /// The documents, in the order given.
    pub documents: Vec<Ingested>,
    /// Seconds of storing (embedding passages included) done while the scan still ran.
    pub store_overlapped_seconds: f64,
}

/// Ingests several documents through one scan, so that their windows share the model's
/// batches (`--scan-batch`), and stores them in groups ([`Index::group`]: one atomic batch for
/// up to [`GROUP_DOCUMENTS`] documents or [`GROUP_TOKENS`] tokens). A storing thread adds each
/// document to the open group as soon as its last window is encoded (its pack is written
/// then), while the scan goes on with the next ones, and commits the group when it is full or
/// the last document is in.
///
/// Every document is checked and tokenized before the scan: a bad one stops the call before
/// anything is written. A failure in the store stops the call: the groups committed before it
/// stay, each document whole, and the open group is not stored, none of its documents (a
/// warning names them); a failure in the scan stops it once the documents encoded before it
/// are stored. After a crash likewise: every document is whole or absent, all of a group
/// alike. `progress` gets (tokens done, tokens in all).
pub fn ingest_many(
    encoder: &Encoder<'_>,
    index: &mut Index,
    docs: Vec<NewDocument<'_>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GroupIngested> {
    for doc in &docs {
        check_document(encoder, index, doc)?;
    }
    let t0 = Instant::now();
    let tokens = docs
        .iter()
        .map(|doc| tokenize_document(encoder, doc))
        .collect::<Result<Vec<_>>>()?;
    let tokenize_seconds = t0.elapsed().as_secs_f64();
    let counts: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
    let total: usize = counts.iter().sum();
    let identity = encoder.identity().clone();
    let embedder = encoder.embedder();
    // When each step of storing started and ended, to tell how much overlapped the scan.
    let mut spans: Vec<(Instant, Instant)> = Vec::with_capacity(counts.len());
    let spans_out = &mut spans;
    let (documents, scan_end) = std::thread::scope(|scope| -> Result<_> {
        let (tx, rx) = sync_channel::<EncodedDocument>(STORE_QUEUE);
        let storer = scope.spawn(move || -> Result<Vec<Ingested>> {
            let mut stored = Vec::new();
            // The ids of the open group, named if it is not stored.
            let mut open: Vec<String> = Vec::new();
            let mut group = index.group(&identity);
            for (doc, mut e) in docs.into_iter().zip(rx) {
                let start = Instant::now();
                open.push(doc.id.clone().unwrap_or_else(|| "(new)".into()));
                e.tokenize_seconds = tokenize_seconds * e.tokens() as f64 / total as f64;
                let added = vectors::attach(embedder, doc.text, &mut e)
                    .and_then(|()| Ok(group.add(doc, &e)?));
                spans_out.push((start, Instant::now()));
                if let Err(err) = added {
                    warn_not_stored(&open, stored.len(), &err);
                    return Err(err);
                }
                if group.len() >= GROUP_DOCUMENTS || group.tokens() >= GROUP_TOKENS {
                    stored.extend(commit_group(group, &mut open, stored.len(), spans_out)?);
                    group = index.group(&identity);
                }
            }
            stored.extend(commit_group(group, &mut open, stored.len(), spans_out)?);
            Ok(stored)
        });
        let scanned = encoder.encode_each(
            tokens,
            &mut |done| {
                progress(done, total);
                true
            },
            &mut |_, e| {
                tx.send(e)
                    .map_err(|_| IngestError::InvalidInput("the storing thread stopped".into()))
            },
        );
        let scan_end = Instant::now();
        drop(tx);
        let stored = match storer.join() {
            Ok(stored) => stored,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // The storing thread's own error explains a failed hand-over better than the send.
        let mut documents = stored?;
        for (d, share) in documents.iter_mut().zip(scan_shares(&counts, scanned?)) {
            d.scan_seconds = share;
        }
        Ok((documents, scan_end))
    })?;
    let store_overlapped_seconds = spans
        .iter()
        .map(|&(a, b)| b.min(scan_end).saturating_duration_since(a).as_secs_f64())
        .sum();
    Ok(GroupIngested {
        documents,
        store_overlapped_seconds,
    })
}

/// Commits a group of the storing thread (the ids in `open`, which it empties), noting its
/// span; a failure is warned about with the documents it leaves out.
fn commit_group(
    group: crate::index::StoreGroup<'_>,
    open: &mut Vec<String>,
    stored_before: usize,
    spans: &mut Vec<(Instant, Instant)>,
) -> Result<Vec<Ingested>> {
    let start = Instant::now();
    let committed = group.commit();
    spans.push((start, Instant::now()));
    match committed {
        Ok(stored) => {
            open.clear();
            Ok(stored)
        }
        Err(e) => {
            let e = IngestError::from(e);
            warn_not_stored(open, stored_before, &e);
            Err(e)
        }
    }
}

/// Warns that the documents of a group (`open`) were not stored, and how many before them were.
fn warn_not_stored(open: &[String], stored: usize, error: &IngestError) {
    tracing::warn!(
        stored,
        not_stored = ?open,
        %error,
        "storing a group of documents failed: the documents before it are stored; of the group, \
         none (or, if it failed after the group's batch, each whole: the next open re-adds \
         their passages)"
    );
}
