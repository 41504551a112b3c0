//! Stored records and the key layout of the one sled tree.
//!
//! Values are rkyv archives behind a one-byte record version. sled hands values back at any
//! alignment (a 4-byte value came back at an address = 2 mod 4) and the version byte shifts
//! them anyway, so decoding always copies the archive into an aligned buffer first: records
//! are small (tens of bytes), the copy costs nothing measurable, and the standard checked rkyv
//! format stays in use (decided once, here). Postings, offsets and text are not rkyv: they are
//! raw byte codecs ([`super::codec`]) or UTF-8.
//!
//! Keys (all integers big-endian so that key order is numeric order):
//! - `m/...`: store metadata (format version, identity, sequence, id counters)
//! - `c/{name}`: [`CollectionRecord`]
//! - `d/{cid}{doc}`: [`DocumentRecord`]; `e/{cid}{external id}`: doc number
//! - `t/{cid}{doc}`: text; `o/{cid}{doc}`: token offsets; `f/{cid}{doc}`: the document's
//!   (layer, feature) set, so deleting it never scans the postings
//! - `g/{cid}{layer u16}{feature u32}{bucket}`: coarse block counts of a sealed bucket;
//!   `h/{cid}{layer u16}{feature u32}{super}`: the same over a sealed super-bucket of 2^20
//!   positions (its 16 bucket records merge into it); `n/{cid}{layer u16}{feature u32}`:
//!   the total over all sealed buckets
//! - `p/{cid}{layer u16}{feature u32}{doc}`: one posting, in formats 1 and 2 only; format 3
//!   keeps a document's postings in its pack file ([`super::packs`])
//! - `j/{seq u64}`: [`JournalOp`] not yet applied to the BM25 index
//! - `k/{cid}{metadata key}`: the key's type in the collection, one byte
//!   ([`super::document::MetaType`]), written with the first document that carries the key;
//!   stores from before it have none and get them as keys are next seen (no format change)

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::error::{IndexError, Result};
use super::types::LayerFeature;

/// Version byte in front of every rkyv record.
const RECORD_VERSION: u8 = 1;

/// The store format version key.
pub const KEY_FORMAT: &[u8] = b"m/format";
/// The [`StoreIdentity`] key.
pub const KEY_IDENTITY: &[u8] = b"m/identity";
/// The last applied sequence number (u64 BE).
pub const KEY_SEQ: &[u8] = b"m/seq";
/// The next collection id (u32 BE).
pub const KEY_NEXT_COLLECTION: &[u8] = b"m/next_collection";
/// The last sequence number every collection's BM25 index holds (u64 BE); journal entries
/// after it are replayed on open.
pub const KEY_BM25_SEQ: &[u8] = b"m/bm25_seq";

/// What an index was built with; a store refuses an ingest with anything else.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StoreIdentity {
    /// sha256 of the model file.
    pub model_fingerprint: String,
    /// Digest of the SAE set.
    pub sae_digest: String,
    /// Indexed layers, ascending.
    pub layers: Vec<u32>,
    /// Scan chunk size.
    pub chunk: u32,
    /// Scan sink tokens.
    pub sinks: u32,
    /// Scan overlap tokens.
    pub overlap: u32,
}

#[cfg(test)]
impl StoreIdentity {
    /// The identity unit tests store under: a model and SAE set that exist by name only,
    /// indexing `layers`.
    pub(crate) fn for_tests(layers: &[u32]) -> Self {
        Self {
            model_fingerprint: "model".into(),
            sae_digest: "saes".into(),
            layers: layers.to_vec(),
            chunk: 64,
            sinks: 4,
            overlap: 8,
        }
    }
}

/// A collection of documents sharing one position space.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CollectionRecord {
    /// Internal id, part of every key of the collection.
    pub id: u32,
    /// The name users give.
    pub name: String,
    /// The next document number.
    pub next_doc: u32,
    /// The next free collection-global token position.
    pub next_position: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// One metadata entry of a document.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MetaEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// A document's table entry.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DocumentRecord {
    /// Internal number inside the collection.
    pub doc: u32,
    /// The id users give (or the generated one).
    pub external_id: String,
    /// Key-value metadata, in the order given.
    pub meta: Vec<MetaEntry>,
    /// Tokens scanned.
    pub tokens: u32,
    /// Length of the text in chars (Unicode scalar values).
    pub chars: u64,
    /// Length of the text in bytes.
    pub bytes: u64,
    /// First collection-global position; the document holds `first_position..+tokens`.
    pub first_position: u32,
    /// Sequence number of the ingest that wrote it.
    pub seq: u64,
    /// Ingest time, seconds since the Unix epoch.
    pub ingested_unix: u64,
}

/// A change the BM25 index still has to apply (written in the same batch as the change).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum JournalOp {
    /// Add the passages of a document (after removing any it had).
    Put {
        /// Collection id.
        collection: u32,
        /// Document number.
        doc: u32,
    },
    /// Remove the passages of a document.
    Delete {
        /// Collection id.
        collection: u32,
        /// Document number.
        doc: u32,
    },
    /// Remove the passages of a whole collection.
    DropCollection {
        /// Collection id.
        collection: u32,
    },
}

/// Serialises a record with its version byte.
pub fn encode<T>(value: &T) -> Result<Vec<u8>>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    let bytes = rkyv::to_bytes::<rancor::Error>(value)
        .map_err(|e| IndexError::corrupt("record", format!("cannot serialise: {e}")))?;
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&bytes);
    Ok(out)
}

/// Deserialises a record written by [`encode`]; `what` names it in errors.
pub fn decode<T>(bytes: &[u8], what: &str) -> Result<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
{
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            let mut aligned = AlignedVec::<16>::with_capacity(body.len());
            aligned.extend_from_slice(body);
            rkyv::from_bytes::<T, rancor::Error>(&aligned)
                .map_err(|e| IndexError::corrupt(what, format!("invalid record: {e}")))
        }
        Some((v, _)) => Err(IndexError::corrupt(
            what,
            format!("unknown record version {v}"),
        )),
        None => Err(IndexError::corrupt(what, "empty record")),
    }
}

/// Returns `prefix` followed by the big-endian bytes of each part.
fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    k.extend_from_slice(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Key of a collection record.
pub fn collection_key(name: &str) -> Vec<u8> {
    key(b"c/", &[name.as_bytes()])
}

/// Prefix of all collection records.
pub const COLLECTION_PREFIX: &[u8] = b"c/";

/// Per-document record kinds that share the `{kind}/{cid}{doc}` layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocPart {
    /// The [`DocumentRecord`].
    Record,
    /// The text.
    Text,
    /// The token offsets.
    Offsets,
    /// The (layer, feature) set.
    Features,
}

impl DocPart {
    /// Every part, for deletes.
    pub const ALL: [DocPart; 4] = [Self::Record, Self::Text, Self::Offsets, Self::Features];

    /// Returns the key prefix of the part.
    pub fn prefix(self) -> &'static [u8] {
        match self {
            Self::Record => b"d/",
            Self::Text => b"t/",
            Self::Offsets => b"o/",
            Self::Features => b"f/",
        }
    }
}

/// Key of one part of a document.
pub fn doc_key(part: DocPart, cid: u32, doc: u32) -> Vec<u8> {
    key(part.prefix(), &[&cid.to_be_bytes(), &doc.to_be_bytes()])
}

/// Prefix of one part of every document of a collection.
pub fn doc_prefix(part: DocPart, cid: u32) -> Vec<u8> {
    key(part.prefix(), &[&cid.to_be_bytes()])
}

/// Key mapping an external id to its document number.
pub fn external_key(cid: u32, external_id: &str) -> Vec<u8> {
    key(b"e/", &[&cid.to_be_bytes(), external_id.as_bytes()])
}

/// Key of a metadata key's type in a collection.
pub fn meta_type_key(cid: u32, meta_key: &str) -> Vec<u8> {
    key(b"k/", &[&cid.to_be_bytes(), meta_key.as_bytes()])
}

/// Prefix of the metadata key types of a collection.
pub fn meta_type_prefix(cid: u32) -> Vec<u8> {
    key(b"k/", &[&cid.to_be_bytes()])
}

/// Prefix of the external ids of a collection.
pub fn external_prefix(cid: u32) -> Vec<u8> {
    key(b"e/", &[&cid.to_be_bytes()])
}

/// Returns `prefix`, the collection id and (layer, feature), then `tail` (a document, a
/// bucket or a super-bucket) if any: the layout of posting, coarse and total keys.
fn feature_key(prefix: &[u8], cid: u32, f: LayerFeature, tail: Option<u32>) -> Vec<u8> {
    let tail = tail.map(u32::to_be_bytes);
    key(
        prefix,
        &[
            &cid.to_be_bytes(),
            &f.layer.to_be_bytes(),
            &f.feature.to_be_bytes(),
            tail.as_ref().map_or(&[][..], |t| &t[..]),
        ],
    )
}

/// Key of one document's posting of (layer, feature).
pub fn posting_key(cid: u32, f: LayerFeature, doc: u32) -> Vec<u8> {
    feature_key(b"p/", cid, f, Some(doc))
}

/// Prefix of every document's posting of (layer, feature).
pub fn feature_prefix(cid: u32, f: LayerFeature) -> Vec<u8> {
    feature_key(b"p/", cid, f, None)
}

/// Prefix of all postings of a collection.
pub fn posting_prefix(cid: u32) -> Vec<u8> {
    key(b"p/", &[&cid.to_be_bytes()])
}

/// Key of the coarse record of (layer, feature) over one bucket of collection positions.
pub fn coarse_key(cid: u32, f: LayerFeature, bucket: u32) -> Vec<u8> {
    feature_key(b"g/", cid, f, Some(bucket))
}

/// Prefix of every coarse record of (layer, feature).
pub fn coarse_feature_prefix(cid: u32, f: LayerFeature) -> Vec<u8> {
    feature_key(b"g/", cid, f, None)
}

/// Prefix of all coarse records of a collection.
pub fn coarse_prefix(cid: u32) -> Vec<u8> {
    key(b"g/", &[&cid.to_be_bytes()])
}

/// Key of the coarse record of (layer, feature) over one sealed super-bucket.
pub fn super_key(cid: u32, f: LayerFeature, index: u32) -> Vec<u8> {
    feature_key(b"h/", cid, f, Some(index))
}

/// Prefix of every super-bucket record of (layer, feature).
pub fn super_feature_prefix(cid: u32, f: LayerFeature) -> Vec<u8> {
    feature_key(b"h/", cid, f, None)
}

/// Prefix of all super-bucket records of a collection.
pub fn super_prefix(cid: u32) -> Vec<u8> {
    key(b"h/", &[&cid.to_be_bytes()])
}

/// Key of the sealed-token total of (layer, feature): how many tokens of the sealed buckets
/// fired it (u64 BE), the document frequency retrieval's idf needs without reading buckets.
pub fn total_key(cid: u32, f: LayerFeature) -> Vec<u8> {
    feature_key(b"n/", cid, f, None)
}

/// Prefix of all sealed-token totals of a collection.
pub fn total_prefix(cid: u32) -> Vec<u8> {
    key(b"n/", &[&cid.to_be_bytes()])
}

/// Splits a coarse key (`g/`, or `h/` for a super-bucket) into (cid, (layer, feature), bucket
/// or super-bucket): the same layout as a posting key.
pub fn parse_coarse_key(k: &[u8]) -> Option<(u32, LayerFeature, u32)> {
    if !k.starts_with(b"g/") && !k.starts_with(b"h/") {
        return None;
    }
    let mut p = k.to_vec();
    p[0] = b'p';
    parse_posting_key(&p)
}

/// Splits a posting key into (cid, (layer, feature), doc).
pub fn parse_posting_key(k: &[u8]) -> Option<(u32, LayerFeature, u32)> {
    if k.len() != 2 + 4 + 2 + 4 + 4 || !k.starts_with(b"p/") {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes(k[i..i + 4].try_into().expect("4 bytes"));
    Some((
        u32_at(2),
        LayerFeature::new(u16::from_be_bytes([k[6], k[7]]), u32_at(8)),
        u32_at(12),
    ))
}

/// Splits a `{kind}/{cid}{doc}` key into (cid, doc).
pub fn parse_doc_key(k: &[u8]) -> Option<(u32, u32)> {
    if k.len() != 10 {
        return None;
    }
    Some((
        u32::from_be_bytes(k[2..6].try_into().ok()?),
        u32::from_be_bytes(k[6..10].try_into().ok()?),
    ))
}

/// Key of a journal entry.
pub fn journal_key(seq: u64) -> Vec<u8> {
    key(b"j/", &[&seq.to_be_bytes()])
}

/// Prefix of the journal.
pub const JOURNAL_PREFIX: &[u8] = b"j/";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn documents_round_trip(
            id in ".{0,40}",
            meta in proptest::collection::vec((".{0,10}", ".{0,20}"), 0..5),
            tokens in any::<u32>(),
            first in any::<u32>(),
            seq in any::<u64>(),
        ) {
            let rec = DocumentRecord {
                doc: tokens ^ 7,
                external_id: id,
                meta: meta.into_iter().map(|(key, value)| MetaEntry { key, value }).collect(),
                tokens,
                chars: u64::from(tokens) * 3,
                bytes: u64::from(tokens) * 4,
                first_position: first,
                seq,
                ingested_unix: 1,
            };
            let bytes = encode(&rec).unwrap();
            // Any alignment sled might hand back.
            for shift in 0..4 {
                let mut shifted = vec![0u8; shift];
                shifted.extend_from_slice(&bytes);
                prop_assert_eq!(decode::<DocumentRecord>(&shifted[shift..], "doc").unwrap(), rec.clone());
            }
        }

        #[test]
        fn garbage_records_are_errors(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode::<DocumentRecord>(&bytes, "doc");
            let _ = decode::<JournalOp>(&bytes, "journal");
        }

        #[test]
        fn keys_parse_back(cid in any::<u32>(), layer in any::<u16>(), feature in any::<u32>(), doc in any::<u32>()) {
            let f = LayerFeature::new(layer, feature);
            prop_assert_eq!(parse_posting_key(&posting_key(cid, f, doc)), Some((cid, f, doc)));
            prop_assert_eq!(parse_doc_key(&doc_key(DocPart::Text, cid, doc)), Some((cid, doc)));
        }
    }

    #[test]
    fn journal_ops_round_trip() {
        for op in [
            JournalOp::Put {
                collection: 1,
                doc: 2,
            },
            JournalOp::Delete {
                collection: 3,
                doc: 4,
            },
            JournalOp::DropCollection { collection: 5 },
        ] {
            assert_eq!(decode::<JournalOp>(&encode(&op).unwrap(), "j").unwrap(), op);
        }
    }
}
