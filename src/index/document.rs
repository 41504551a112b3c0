//! What a document must be before the index takes it: one check of names (collection names,
//! document ids, metadata keys) with one limit, and of a document's fields.

use super::error::{IndexError, Result};
use super::types::NewDocument;

/// Longest collection name or external id, in bytes.
const MAX_NAME_BYTES: usize = 512;

/// Generated external ids start with this; user ids may not.
pub(crate) const GENERATED_ID_PREFIX: char = '#';

/// Checks what a document carries, whatever its collection or index: its size against
/// `max_document_bytes`, its text, id and metadata keys (callers check a batch with it before
/// they create anything).
pub fn check_document_fields(doc: &NewDocument<'_>, max_document_bytes: usize) -> Result<()> {
    let id_for_errors = doc.id.clone().unwrap_or_else(|| "(new)".into());
    if doc.text.len() > max_document_bytes {
        return Err(IndexError::TooLarge {
            id: id_for_errors,
            bytes: doc.text.len(),
            limit: max_document_bytes,
        });
    }
    if doc.text.trim().is_empty() {
        return Err(IndexError::InvalidInput(format!(
            "document `{id_for_errors}` is empty"
        )));
    }
    if let Some(id) = &doc.id {
        check_name("document id", id)?;
        if id.starts_with(GENERATED_ID_PREFIX) {
            return Err(IndexError::InvalidInput(format!(
                "document id `{id}` starts with `{GENERATED_ID_PREFIX}`, which is kept for generated ids"
            )));
        }
    }
    for (k, _) in &doc.meta {
        check_name("metadata key", k)?;
    }
    Ok(())
}

/// Checks a collection name or external id.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(IndexError::InvalidInput(format!("the {kind} is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(IndexError::InvalidInput(format!(
            "the {kind} has {} bytes, over the limit of {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(IndexError::InvalidInput(format!(
            "the {kind} {name:?} contains control characters"
        )));
    }
    Ok(())
}

/// Returns `bytes` as text, or an error naming `source_name` and the first invalid byte.
pub fn document_text(bytes: Vec<u8>, source_name: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| IndexError::NotUtf8 {
        source_name: source_name.to_string(),
        offset: e.utf8_error().valid_up_to(),
    })
}
