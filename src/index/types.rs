//! The values the index takes and gives: documents to store (as text and as the ingest layer
//! encoded them), what a store did, listings and sizes.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use super::error::{IndexError, Result};
use super::records::DocumentRecord;
use super::vectors::PassageVectors;

/// A feature of one layer: the key of a posting list. The KV heads of a layer share one
/// posting space (`ingest::LayerCode` maps each head's SAE features into it), so a layer and
/// a posting feature name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct LayerFeature {
    /// The model layer (below 256 in a posting key).
    pub layer: u16,
    /// The posting feature (below 2^24 in a posting key).
    pub feature: u32,
}

impl LayerFeature {
    /// Returns the feature `feature` of layer `layer`.
    pub const fn new(layer: u16, feature: u32) -> Self {
        Self { layer, feature }
    }

    /// Returns the pair packed into one u32 (the layer in the top byte), as a document's
    /// feature set and a pack's directory hold it; `None` when it does not fit (a layer of
    /// 256 or more, a feature of 2^24 or more). Packed ids sort as the pairs do.
    pub fn pack(self) -> Option<u32> {
        (self.layer < 256 && self.feature < (1 << 24))
            .then_some((u32::from(self.layer) << 24) | self.feature)
    }

    /// Returns the pair that [`LayerFeature::pack`] packed into `packed`.
    pub fn unpack(packed: u32) -> Self {
        Self::new((packed >> 24) as u16, packed & 0x00ff_ffff)
    }
}

impl fmt::Display for LayerFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.layer, self.feature)
    }
}

/// How many tokens of one coarse block fired a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCount {
    /// The block: collection-global as the reader returns it, or counted from the start of
    /// its coarse record inside one.
    pub block: u32,
    /// Tokens of the block that fired the feature (one at least).
    pub tokens: u32,
}

/// Limits of an open index.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Largest document accepted, in bytes of UTF-8 text.
    pub max_document_bytes: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 64 << 20,
        }
    }
}

/// A document to ingest.
#[derive(Debug, Clone)]
pub struct NewDocument<'a> {
    /// The collection it goes into (must exist).
    pub collection: &'a str,
    /// External id; an existing one is replaced. `None` generates `#<number>`.
    pub id: Option<String>,
    /// Key-value metadata.
    pub meta: Vec<(String, String)>,
    /// The text.
    pub text: &'a str,
}

/// A document turned into everything the store keeps, before it is written: what the ingest
/// layer makes of a text.
#[derive(Debug, Clone, Default)]
pub struct EncodedDocument {
    /// Each token's char range.
    pub offsets: Vec<(usize, usize)>,
    /// Positions (document-local, ascending) per (layer, feature).
    pub postings: BTreeMap<LayerFeature, Vec<u32>>,
    /// Seconds spent tokenizing.
    pub tokenize_seconds: f64,
    /// Seconds spent in the model (the scan alone).
    pub scan_seconds: f64,
    /// Seconds spent in SAE encoding and building postings (and embedding passages).
    pub encode_seconds: f64,
    /// Each BM25 passage's embedding, when the ingest layer has an embedding model.
    pub vectors: Option<PassageVectors>,
}

/// One page of a collection's document list.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentPage {
    /// The documents, in ingest order.
    pub documents: Vec<DocumentInfo>,
    /// The number of the document after them, where the next page starts; `None` at the end.
    pub next: Option<u32>,
}

/// A stored document by its internal numbers: collection id and document number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocumentKey {
    /// The collection's internal id.
    pub cid: u32,
    /// The document's number inside the collection.
    pub doc: u32,
}

impl EncodedDocument {
    /// Returns the number of tokens.
    pub fn tokens(&self) -> usize {
        self.offsets.len()
    }

    /// Checks what the store's invariants need of the postings: each one non-empty, its
    /// positions ascending and inside the document (the ingest layer makes them so; a caller
    /// that builds postings itself may not).
    pub fn check(&self) -> Result<()> {
        let n = self.tokens();
        for (feature, positions) in &self.postings {
            let ascending = positions.windows(2).all(|w| w[0] < w[1]);
            let inside = positions.last().is_some_and(|&p| (p as usize) < n);
            if !ascending || !inside {
                return Err(IndexError::InvalidInput(format!(
                    "posting {feature} is empty, not ascending or past the document's {n} tokens"
                )));
            }
        }
        Ok(())
    }
}

/// What an ingest did and how long each part took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ingested {
    /// The document's external id.
    pub id: String,
    /// Tokens scanned and indexed.
    pub tokens: usize,
    /// Whether an earlier document with the same id was replaced.
    pub replaced: bool,
    /// Seconds in the model's scan.
    pub scan_seconds: f64,
    /// Seconds in SAE encoding.
    pub encode_seconds: f64,
    /// Seconds writing sled and tantivy.
    pub store_seconds: f64,
}

/// A collection as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CollectionInfo {
    /// Its name.
    pub name: String,
    /// Documents in it.
    pub documents: u64,
    /// Tokens in it.
    pub tokens: u64,
}

/// A document as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DocumentInfo {
    /// External id.
    pub id: String,
    /// Internal number in the collection.
    pub number: u32,
    /// Tokens.
    pub tokens: u32,
    /// Chars of text.
    pub chars: u64,
    /// Bytes of text.
    pub bytes: u64,
    /// Collection-global positions of its tokens.
    pub positions: Range<u64>,
    /// Metadata.
    pub meta: Vec<(String, String)>,
}

impl From<&DocumentRecord> for DocumentInfo {
    fn from(d: &DocumentRecord) -> Self {
        let first = u64::from(d.first_position);
        Self {
            id: d.external_id.clone(),
            number: d.doc,
            tokens: d.tokens,
            chars: d.chars,
            bytes: d.bytes,
            positions: first..first + u64::from(d.tokens),
            meta: d
                .meta
                .iter()
                .map(|m| (m.key.clone(), m.value.clone()))
                .collect(),
        }
    }
}

/// A BM25 hit with its document's external id.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bm25Hit {
    /// External id.
    pub id: String,
    /// Char range of the passage.
    pub chars: Range<usize>,
    /// BM25 score.
    pub score: f32,
}

/// Bytes of one kind of record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ComponentBytes {
    /// Records.
    pub records: u64,
    /// Key plus value bytes.
    pub bytes: u64,
}

/// Sizes and counts of a data dir.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Collections.
    pub collections: u64,
    /// Documents.
    pub documents: u64,
    /// Tokens indexed.
    pub tokens: u64,
    /// Posting lists (one per document, layer and feature).
    pub postings: u64,
    /// Positions in all posting lists.
    pub posting_entries: u64,
    /// Logical bytes (keys + values) per kind: postings (pack files), offsets, text, features,
    /// coarse, records.
    pub components: BTreeMap<String, ComponentBytes>,
    /// Bytes on disk of the sled directory and the posting packs.
    pub store_disk_bytes: u64,
    /// Bytes of the tantivy directory on disk.
    pub bm25_disk_bytes: u64,
    /// Logical bytes per token of each component, plus the BM25 index on disk; `store_disk`
    /// (sled and packs on disk) and `disk_total` (everything on disk) per token.
    pub bytes_per_token: BTreeMap<String, f64>,
}
