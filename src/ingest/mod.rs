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

use std::time::Instant;

pub use encoder::{encode_layer, layer_codes, Encoder, LayerCode};
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
    Ok(ingest_many(encoder, index, vec![doc], progress)?.remove(0))
}

/// Ingests several documents through one scan, so that their windows share the model's
/// batches (`--scan-batch`); each is then stored atomically on its own, in order. Every
/// document is checked and tokenized before the scan: a bad one stops the call before
/// anything is written. `progress` gets (tokens done, tokens in all).
pub fn ingest_many(
    encoder: &Encoder<'_>,
    index: &mut Index,
    docs: Vec<NewDocument<'_>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Ingested>> {
    for doc in &docs {
        check_document(encoder, index, doc)?;
    }
    let t0 = Instant::now();
    let tokens = docs
        .iter()
        .map(|doc| tokenize_document(encoder, doc))
        .collect::<Result<Vec<_>>>()?;
    let tokenize_seconds = t0.elapsed().as_secs_f64();
    let total: usize = tokens.iter().map(|t| t.ids.len()).sum();
    let encoded = encoder.encode_many(tokens, &mut |done| {
        progress(done, total);
        true
    })?;
    docs.into_iter()
        .zip(encoded)
        .map(|(doc, mut e)| {
            e.tokenize_seconds = tokenize_seconds * e.tokens() as f64 / total as f64;
            vectors::attach(encoder.embedder(), doc.text, &mut e)?;
            Ok(index.store_encoded(doc, &e, encoder.identity())?)
        })
        .collect()
}
