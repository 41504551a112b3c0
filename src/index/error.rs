//! The error type of the `index` layer.

use std::path::PathBuf;

/// Lists everything that can go wrong while opening, writing or reading the persistent index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Another process holds the data dir.
    #[error("data dir {} is in use by another process (lock file {})", dir.display(), lock.display())]
    Locked {
        /// The data dir.
        dir: PathBuf,
        /// The lock file that is held.
        lock: PathBuf,
    },

    /// A data dir that should hold an index does not (commands that only read or delete never
    /// create one).
    #[error("data dir {} does not exist or holds no index; ingest documents first", dir.display())]
    NoIndex {
        /// The data dir.
        dir: PathBuf,
    },

    /// A store or posting pack is in a format newer than this build reads (a newer s3mem wrote
    /// it): the data is not damaged, this build cannot read it.
    #[error("{kind} format version {found} in {} is newer than this build supports ({supported}): upgrade s3mem", path.display())]
    IncompatibleFormat {
        /// What has the format.
        kind: FormatKind,
        /// The version on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
        /// The data dir (for the store) or the file.
        path: PathBuf,
    },

    /// The store was built with another model, SAE set, layer set or scan geometry.
    #[error("the index was built with {field} {stored}, not {given}: use the same {field} or another data dir")]
    IdentityMismatch {
        /// Which part of the identity differs: `model fingerprint`, `sae set digest`, ...
        field: &'static str,
        /// The value the store records.
        stored: String,
        /// The value the caller brought.
        given: String,
    },

    /// A stored record or file cannot be decoded.
    #[error("corrupt index data in {what}: {reason}")]
    Corrupt {
        /// The record key or file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The named collection does not exist.
    /// A snapshot archive that does not match its manifest, lacks one, or is not whole.
    #[error("snapshot {} is damaged: {problem}", snapshot.display())]
    DamagedSnapshot {
        /// The archive.
        snapshot: PathBuf,
        /// What is wrong, naming the file.
        problem: String,
    },

    #[error("unknown collection `{0}`")]
    UnknownCollection(String),

    /// A collection of that name already exists.
    #[error("collection `{0}` already exists")]
    CollectionExists(String),

    /// The collection has no document with that id.
    #[error("no document `{id}` in collection `{collection}`")]
    UnknownDocument {
        /// The collection searched.
        collection: String,
        /// The external id asked for.
        id: String,
    },

    /// A metadata value does not parse as the type its key has in the collection.
    #[error("metadata key `{key}` holds {stored} values in collection `{collection}`; `{value}` is a {given}")]
    MetaTypeMismatch {
        /// The collection.
        collection: String,
        /// The key.
        key: String,
        /// The key's type, fixed by its first value.
        stored: super::document::MetaType,
        /// The type of the value given.
        given: super::document::MetaType,
        /// The value given.
        value: String,
    },

    /// The caller passed something the index cannot take (empty text, bad name, too large).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A document is larger than the configured limit.
    #[error("document `{id}` has {bytes} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The document's id (or source).
        id: String,
        /// Its size.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A document's bytes are not UTF-8.
    #[error(transparent)]
    NotUtf8(#[from] crate::text::NotUtf8),

    /// A collection ran out of u32 token positions.
    #[error("collection `{collection}` is full: {needed} more token positions do not fit in u32 (compact or use another collection)")]
    PositionsExhausted {
        /// The collection.
        collection: String,
        /// Tokens of the document that did not fit.
        needed: usize,
    },

    /// The key-value store failed.
    #[error("store error: {0}")]
    Store(#[from] sled::Error),

    /// The BM25 index failed.
    #[error("bm25 index error: {0}")]
    Bm25(#[from] tantivy::TantivyError),

    /// Reading or writing a file failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What an on-disk format version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatKind {
    /// The sled store of a data dir (`m/format`, see `migrations/README.md`).
    Store,
    /// A document's posting pack file (its format byte).
    Pack,
    /// A document's passage vectors file (its format byte).
    Vectors,
}

impl std::fmt::Display for FormatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Store => "store",
            Self::Pack => "posting pack",
            Self::Vectors => "passage vectors",
        })
    }
}

impl IndexError {
    /// Returns an [`IndexError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Returns an [`IndexError::Corrupt`] for `what`.
    pub fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// The result type of the `index` layer.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;
