//! The index layer: the persistent memory of a data dir. It stores encoded documents (what
//! [`crate::ingest`] makes of a text) and reads them back; it knows no model and no SAE set.
//!
//! [`memory`] keeps collections, documents, postings and BM25 passages in one data dir with
//! atomic per-document visibility (a group of documents, [`StoreGroup`], all at once);
//! [`types`] are the values it takes and gives, [`document`] the checks of names and documents;
//! [`store`] is the key-value trait retrieval reads through; [`records`] and [`codec`] are the
//! on-disk formats; [`migrations`] upgrades old stores; [`packs`] holds each document's
//! postings in one file; [`bm25`] and [`passages`] are the tantivy side; [`snapshot`] copies a
//! data dir into one checked archive and back; [`coarse`] keeps the per-block feature counts
//! that collection-wide retrieval ranks first.

pub mod bm25;
pub mod coarse;
pub mod codec;
pub mod docfiles;
pub mod document;
pub mod error;
pub mod memory;
pub mod migrations;
pub mod packs;
pub mod passages;
pub mod records;
pub mod snapshot;
pub mod store;
pub mod types;
pub mod vectors;

pub use bm25::PassageHit;
pub use document::{
    check_document_fields, check_name, MetaType, MetaValue, NameProblem, MAX_NAME_BYTES,
};
pub use error::{FormatKind, IndexError, Result};
pub use memory::{Index, PostingReader, StoreGroup};
pub use migrations::{STORE_FORMAT_OLDEST_SUPPORTED, STORE_FORMAT_VERSION};
pub use records::StoreIdentity;
pub use store::{Batch, KvStore, SledStore};
pub use types::{
    BlockCount, Bm25Hit, CollectionInfo, ComponentBytes, DocumentInfo, DocumentKey, DocumentPage,
    EncodedDocument, IndexConfig, Ingested, LayerFeature, NewDocument, Stats,
};
pub use vectors::{PassageVectors, VECTORS_FORMAT_VERSION};

/// Tokens per coarse block: the unit in which [`PostingReader::coarse_blocks`] counts a
/// feature's tokens, and so the resolution of collection-wide retrieval's first pass.
pub use codec::COARSE_BLOCK_TOKENS;
