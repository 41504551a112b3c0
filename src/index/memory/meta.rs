//! The types of a collection's metadata keys: fixed by a key's first value, checked at every
//! later ingest, read by filters.

use std::collections::BTreeMap;

use super::Index;
use crate::index::document::MetaType;
use crate::index::error::{IndexError, Result};
use crate::index::records::{self as rec, CollectionRecord};
use crate::index::store::KvStore;

impl Index {
    /// Returns the type of every metadata key the collection has typed.
    pub fn meta_types(&self, collection: &str) -> Result<BTreeMap<String, MetaType>> {
        let c = self.collection(collection)?;
        let prefix = rec::meta_type_prefix(c.id);
        let mut out = BTreeMap::new();
        self.store.scan_prefix(&prefix, &mut |k, v| {
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let t = v
                .first()
                .and_then(|&b| MetaType::from_code(b))
                .ok_or_else(|| {
                    IndexError::corrupt(
                        format!("type of metadata key `{name}`"),
                        format!("unknown type code {v:?}"),
                    )
                })?;
            out.insert(name, t);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Checks each metadata value of a document against its key's type in collection `c`
    /// (or in `pending`: the types documents not yet stored fixed, earlier in a group) and
    /// returns the keys it types for the first time, with their types. A key without a type
    /// record but carried by stored documents (stores from before types) takes the type of the
    /// earliest such document's value.
    pub(super) fn new_meta_types(
        &self,
        c: &CollectionRecord,
        meta: &[(String, String)],
        pending: &BTreeMap<String, MetaType>,
    ) -> Result<Vec<(String, MetaType)>> {
        let mut known = self.meta_types(&c.name)?;
        known.extend(pending.iter().map(|(k, &t)| (k.clone(), t)));
        let mut added = Vec::new();
        let mut stored_docs = None;
        for (key, value) in meta {
            let stored = match known.get(key) {
                Some(&t) => t,
                None => {
                    let docs = match &mut stored_docs {
                        Some(d) => d,
                        None => stored_docs.insert(self.document_records(c.id)?),
                    };
                    let earliest = docs
                        .iter()
                        .find_map(|d| d.meta.iter().find(|m| &m.key == key));
                    let t =
                        earliest.map_or_else(|| MetaType::of(value), |m| MetaType::of(&m.value));
                    known.insert(key.clone(), t);
                    added.push((key.clone(), t));
                    t
                }
            };
            if stored.read(value).is_none() {
                return Err(IndexError::MetaTypeMismatch {
                    collection: c.name.clone(),
                    key: key.clone(),
                    stored,
                    given: MetaType::of(value),
                    value: value.clone(),
                });
            }
        }
        Ok(added)
    }
}
