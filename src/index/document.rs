//! What a document must be before the index takes it: the one check of names (collection
//! names, document ids, metadata keys) with one limit, and the check of a document's fields.

use super::error::{IndexError, Result};
use super::types::NewDocument;

/// Longest name (collection name, document id, metadata key), in bytes.
pub const MAX_NAME_BYTES: usize = 512;

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
        check_named("document id", id)?;
        if id.starts_with(GENERATED_ID_PREFIX) {
            return Err(IndexError::InvalidInput(format!(
                "document id `{id}` starts with `{GENERATED_ID_PREFIX}`, which is kept for generated ids"
            )));
        }
    }
    for (k, _) in &doc.meta {
        check_named("metadata key", k)?;
    }
    Ok(())
}

/// What is wrong with a name (a collection name, document id or metadata key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// It has no bytes.
    #[error("is empty")]
    Empty,
    /// It is longer than [`MAX_NAME_BYTES`].
    #[error("has {bytes} bytes, over the limit of {MAX_NAME_BYTES}")]
    TooLong {
        /// Its length.
        bytes: usize,
    },
    /// It holds a control character (a newline, say).
    #[error("contains control characters")]
    ControlCharacters,
}

/// Checks a name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters. Every layer that takes
/// names (the index, the daemon's request checks) checks them here.
pub fn check_name(name: &str) -> std::result::Result<(), NameProblem> {
    if name.is_empty() {
        Err(NameProblem::Empty)
    } else if name.len() > MAX_NAME_BYTES {
        Err(NameProblem::TooLong { bytes: name.len() })
    } else if name.chars().any(char::is_control) {
        Err(NameProblem::ControlCharacters)
    } else {
        Ok(())
    }
}

/// Checks a name of the given kind (`collection name`, `document id`, ...) as
/// [`check_name`] does, refusing it as invalid input that names the kind.
pub(crate) fn check_named(kind: &str, name: &str) -> Result<()> {
    check_name(name).map_err(|problem| {
        // A control character is invisible: the name is quoted escaped.
        let shown = match problem {
            NameProblem::ControlCharacters => format!(" {name:?}"),
            _ => String::new(),
        };
        IndexError::InvalidInput(format!("the {kind}{shown} {problem}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_once_with_one_limit() {
        assert_eq!(check_name("notes"), Ok(()));
        assert_eq!(check_name(&"x".repeat(MAX_NAME_BYTES)), Ok(()));
        assert_eq!(check_name(""), Err(NameProblem::Empty));
        assert_eq!(
            check_name(&"x".repeat(MAX_NAME_BYTES + 1)),
            Err(NameProblem::TooLong { bytes: 513 })
        );
        assert_eq!(check_name("a\nb"), Err(NameProblem::ControlCharacters));
        let e = check_named("collection name", "a\nb").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: the collection name \"a\\nb\" contains control characters"
        );
        let e = check_named("document id", &"x".repeat(600)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: the document id has 600 bytes, over the limit of 512"
        );
    }
}
