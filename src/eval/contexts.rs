//! The contexts of a dataset as documents of a collection: each distinct context is ingested
//! once, under an id made from its text, and reused by later runs.

use std::collections::BTreeSet;

use super::{EvalItem, Result};
use crate::index::{Index, IndexError, NewDocument};
use crate::model::hex_digest;

/// Returns the document id a context is ingested under: a digest of its text.
pub fn context_id(context: &str) -> String {
    use sha2::Digest;
    format!(
        "ctx-{}",
        &hex_digest(&sha2::Sha256::digest(context.as_bytes()))[..16]
    )
}

/// Returns the distinct contexts of `items` that `collection` does not hold yet, in the order
/// they first appear, as documents to ingest; creates the collection if it is missing.
pub fn missing_contexts<'a>(
    index: &mut Index,
    collection: &'a str,
    items: &'a [EvalItem],
) -> Result<Vec<NewDocument<'a>>> {
    if index.collection_id(collection).is_err() {
        index.create_collection(collection)?;
    }
    let mut seen = BTreeSet::new();
    let mut missing = Vec::new();
    for item in items {
        let id = context_id(&item.context);
        if !seen.insert(id.clone()) {
            continue;
        }
        match index.document(collection, &id) {
            Ok(_) => continue,
            Err(IndexError::UnknownDocument { .. }) => missing.push(NewDocument {
                collection,
                id: Some(id),
                meta: Vec::new(),
                text: &item.context,
            }),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_id_depends_on_the_text_alone() {
        let a = context_id("some text");
        assert_eq!(a, context_id("some text"));
        assert_ne!(a, context_id("some text."));
        assert!(a.starts_with("ctx-") && a.len() == 20, "{a}");
    }
}
