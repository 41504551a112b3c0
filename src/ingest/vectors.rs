//! Passage vectors: each BM25 passage of a document embedded by the embedding model, at
//! ingest and, for documents stored without them (or with another model's), by a backfill
//! when the index is opened with an embedding model.

use std::time::Instant;

use super::error::Result;
use crate::embed::{Embedder, DIM};
use crate::index::passages::{passages, Passage};
use crate::index::{DocumentKey, EncodedDocument, Index, PassageVectors};

/// Returns the embedding of each passage of a document (its text and token char ranges).
pub fn embed_passages(
    embedder: &Embedder,
    text: &str,
    offsets: &[(usize, usize)],
) -> Result<PassageVectors> {
    embed_pieces(embedder, passages(text, offsets))
}

/// Returns the embedding of each passage of the stored document `key` (read once).
pub fn embed_stored(
    embedder: &Embedder,
    index: &Index,
    key: DocumentKey,
) -> Result<PassageVectors> {
    embed_pieces(embedder, index.passages_of(key.cid, key.doc)?)
}

/// Returns the embedding of each of a document's passages, in order.
pub fn embed_pieces(embedder: &Embedder, pieces: Vec<Passage>) -> Result<PassageVectors> {
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
        let vectors = embed_stored(embedder, index, key)?;
        index.put_vectors(key, &vectors)?;
    }
    progress(todo.len(), todo.len());
    Ok(todo.len())
}
