//! Passage vectors: each BM25 passage of a document embedded by the embedding model, at
//! ingest and, for documents stored without them (or with another model's), by a backfill
//! when the index is opened with an embedding model.

use std::time::Instant;

use super::error::Result;
use crate::embed::{Embedder, DIM};
use crate::index::passages::passages;
use crate::index::{DocumentKey, EncodedDocument, Index, PassageVectors};

/// Returns the embedding of each passage of a document (its text and token char ranges).
pub fn embed_passages(
    embedder: &Embedder,
    text: &str,
    offsets: &[(usize, usize)],
) -> Result<PassageVectors> {
    let pieces = passages(text, offsets);
    let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
    let embeddings = embedder.embed(&texts)?;
    Ok(PassageVectors {
        embedder: embedder.fingerprint().to_string(),
        dim: DIM,
        passages: pieces.into_iter().map(|p| p.chars).collect(),
        values: embeddings
            .iter()
            .flat_map(|e| e.as_array().iter().copied())
            .collect(),
    })
}

/// Adds the passage vectors of `text` to `encoded` when `embedder` is given; the time goes to
/// the encoding's seconds.
pub(super) fn attach(
    embedder: Option<&Embedder>,
    text: &str,
    encoded: &mut EncodedDocument,
) -> Result<()> {
    if let Some(embedder) = embedder {
        let t0 = Instant::now();
        encoded.vectors = Some(embed_passages(embedder, text, &encoded.offsets)?);
        encoded.encode_seconds += t0.elapsed().as_secs_f64();
    }
    Ok(())
}

/// Embeds every stored document that has no passage vectors from `embedder` (stored before the
/// dense methods, without an embedding model, or with another one) and stores them; returns
/// how many were embedded. `progress` gets (documents done, documents to do) and returns false
/// to stop early: what is done stays done.
pub fn backfill(
    embedder: &Embedder,
    index: &mut Index,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<usize> {
    let todo: Vec<DocumentKey> = index.documents_without_vectors(embedder.fingerprint())?;
    for (i, &key) in todo.iter().enumerate() {
        if !progress(i, todo.len()) {
            return Ok(i);
        }
        let text = index.text_of(key.cid, key.doc)?;
        let offsets = index.offsets_of(key.cid, key.doc)?;
        let vectors = embed_passages(embedder, &text, &offsets)?;
        index.put_vectors(key, &vectors)?;
    }
    progress(todo.len(), todo.len());
    Ok(todo.len())
}
