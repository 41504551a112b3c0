//! Passage vectors: one embedding per BM25 passage of a document, for the dense methods.
//!
//! The index knows no embedding model: the ingest layer computes the vectors (one per passage
//! of [`super::passages::passages`], in order) and names the model that made them; the index
//! stores, checks and serves them. A document without a file, or with one from another model,
//! is embedded again by the ingest layer's backfill, so the vectors are a derived part of the
//! store with a format of their own ([`VECTORS_FORMAT_VERSION`]) rather than a store format.
//!
//! Layout of `vectors/{cid}-{doc}.vec` (integers little-endian): `S3VE`, a format byte, the
//! model's name (u16 length, UTF-8), the dimension (u32), the passage count (u32), each
//! passage's char range (u32 start, u32 end), the vectors row by row (f32), and the CRC-32 of
//! everything before it (u32). Written and removed as every per-document file is
//! ([`super::docfiles`]).

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use super::docfiles::DocFiles;
use super::error::{FormatKind, IndexError, Result};

const MAGIC: &[u8; 4] = b"S3VE";
/// The vectors format this build writes and reads (the byte after the magic); a newer one is
/// refused as [`IndexError::IncompatibleFormat`].
pub const VECTORS_FORMAT_VERSION: u8 = 1;
/// The widest vector accepted (far above any sentence-embedding model's).
const MAX_DIM: usize = 1 << 14;

/// The embeddings of a document's passages, made by one model.
#[derive(Debug, Clone, PartialEq)]
pub struct PassageVectors {
    /// The model that made them (its name and weights digest).
    pub embedder: String,
    /// Dimensions of each vector.
    pub dim: usize,
    /// Each passage's char range in the document.
    pub passages: Vec<Range<usize>>,
    /// The vectors, row by row (`passages.len() * dim` values).
    pub values: Vec<f32>,
}

impl PassageVectors {
    /// Returns the vector of passage `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Returns the number of passages.
    pub fn len(&self) -> usize {
        self.passages.len()
    }

    /// Returns whether there are no passages.
    pub fn is_empty(&self) -> bool {
        self.passages.is_empty()
    }

    /// Checks the shape: a name, a dimension in range, one row per passage, finite values,
    /// ranges that do not run backwards.
    pub fn check(&self) -> Result<()> {
        let bad = |why: String| Err(IndexError::InvalidInput(format!("passage vectors: {why}")));
        if self.embedder.is_empty() || self.embedder.len() > usize::from(u16::MAX) {
            return bad("the model name is empty or too long".into());
        }
        if !(1..=MAX_DIM).contains(&self.dim) {
            return bad(format!("dimension {} is not in 1..={MAX_DIM}", self.dim));
        }
        if self.values.len() != self.passages.len() * self.dim {
            return bad(format!(
                "{} values for {} passages of {} dimensions",
                self.values.len(),
                self.passages.len(),
                self.dim
            ));
        }
        if self.values.iter().any(|v| !v.is_finite()) {
            return bad("a value is not finite".into());
        }
        if let Some(r) = self
            .passages
            .iter()
            .find(|r| r.start > r.end || r.end > u32::MAX as usize)
        {
            return bad(format!("char range {r:?} is not a range of a document"));
        }
        Ok(())
    }

    /// Encodes the vectors in the file layout.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.check()?;
        let mut out = Vec::with_capacity(32 + self.passages.len() * 8 + self.values.len() * 4);
        out.extend_from_slice(MAGIC);
        out.push(VECTORS_FORMAT_VERSION);
        out.extend_from_slice(&(self.embedder.len() as u16).to_le_bytes());
        out.extend_from_slice(self.embedder.as_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        let count = u32::try_from(self.passages.len())
            .map_err(|_| IndexError::InvalidInput("passage vectors: too many passages".into()))?;
        out.extend_from_slice(&count.to_le_bytes());
        for r in &self.passages {
            out.extend_from_slice(&(r.start as u32).to_le_bytes());
            out.extend_from_slice(&(r.end as u32).to_le_bytes());
        }
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let sum = crc32fast::hash(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// Decodes a file's bytes; `what` names the file in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let corrupt = |why: &str| IndexError::corrupt(what, why);
        if bytes.len() < HEADER_BYTES + 4 + 4 + 4 {
            return Err(corrupt("not a passage vectors file"));
        }
        let embedder = embedder_name(bytes, what)?;
        let name_len = embedder.len();
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(sum.try_into().expect("4 bytes")) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut at = HEADER_BYTES + name_len;
        let mut take = |n: usize| -> Result<&[u8]> {
            let piece = body.get(at..at + n).ok_or_else(|| corrupt("truncated"))?;
            at += n;
            Ok(piece)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
        let dim = u32_at(take(4)?);
        let count = u32_at(take(4)?);
        if !(1..=MAX_DIM).contains(&dim) {
            return Err(corrupt("dimension out of range"));
        }
        let expected = count
            .checked_mul(8 + dim * 4)
            .ok_or_else(|| corrupt("sizes overflow"))?;
        if body.len() - 5 - 2 - name_len - 8 != expected {
            return Err(corrupt("size does not match the passage count"));
        }
        let mut passages = Vec::with_capacity(count);
        for _ in 0..count {
            let r = take(8)?;
            passages.push(u32_at(&r[..4])..u32_at(&r[4..]));
        }
        let values = take(count * dim * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let v = Self {
            embedder,
            dim,
            passages,
            values,
        };
        v.check().map_err(|e| corrupt(&e.to_string()))?;
        Ok(v)
    }
}

/// Magic, format byte and the model name's length.
const HEADER_BYTES: usize = 4 + 1 + 2;

/// Returns the model name of a vectors file from its first bytes (the whole file or only its
/// head), after checking the magic and the format byte; `what` names the file in errors.
fn embedder_name(head: &[u8], what: &str) -> Result<String> {
    let corrupt = |why: &str| IndexError::corrupt(what, why);
    if head.len() < HEADER_BYTES || &head[..4] != MAGIC {
        return Err(corrupt("not a passage vectors file"));
    }
    let format = head[4];
    if format > VECTORS_FORMAT_VERSION {
        return Err(IndexError::IncompatibleFormat {
            kind: FormatKind::Vectors,
            found: u32::from(format),
            supported: u32::from(VECTORS_FORMAT_VERSION),
            path: what.into(),
        });
    }
    if format != VECTORS_FORMAT_VERSION {
        return Err(corrupt("unknown format byte"));
    }
    let name_len = usize::from(u16::from_le_bytes([head[5], head[6]]));
    let name = head
        .get(HEADER_BYTES..HEADER_BYTES + name_len)
        .ok_or_else(|| corrupt("truncated"))?;
    std::str::from_utf8(name)
        .map(str::to_string)
        .map_err(|_| corrupt("the model name is not UTF-8"))
}

/// The passage vectors of every document, in `<data dir>/vectors`.
pub struct VectorStore {
    files: DocFiles,
}

impl VectorStore {
    /// Opens (creating) `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            files: DocFiles::open(dir, "vec")?,
        })
    }

    /// Returns the folder.
    pub fn dir(&self) -> &Path {
        self.files.dir()
    }

    /// Writes the vectors of document `doc` durably.
    pub fn write(&self, cid: u32, doc: u32, vectors: &PassageVectors) -> Result<()> {
        self.files.write(cid, doc, &vectors.encode()?)
    }

    /// Writes the vectors of document `doc` with the folder unsynced: durable after
    /// [`VectorStore::sync_folder`].
    pub fn write_unsynced_folder(
        &self,
        cid: u32,
        doc: u32,
        vectors: &PassageVectors,
    ) -> Result<()> {
        self.files
            .write_unsynced_folder(cid, doc, &vectors.encode()?)
    }

    /// Makes the names of the vector files written so far durable.
    pub fn sync_folder(&self) -> Result<()> {
        self.files.sync_folder()
    }

    /// Reads the vectors of document `doc`; `None` when it has none.
    pub fn read(&self, cid: u32, doc: u32) -> Result<Option<PassageVectors>> {
        let Some(bytes) = self.files.read(cid, doc)? else {
            return Ok(None);
        };
        let path = self.files.path(cid, doc);
        PassageVectors::decode(&bytes, &path.display().to_string()).map(Some)
    }

    /// Returns the name of the model that made document `doc`'s vectors (`None`: it has none)
    /// from the file's head alone: what deciding whether a document needs embedding reads,
    /// instead of every vector of the store.
    pub fn embedder_of(&self, cid: u32, doc: u32) -> Result<Option<String>> {
        let path = self.files.path(cid, doc);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IndexError::io(&path, e)),
        };
        let mut head = Vec::new();
        file.take((HEADER_BYTES + usize::from(u16::MAX)) as u64)
            .read_to_end(&mut head)
            .map_err(|e| IndexError::io(&path, e))?;
        embedder_name(&head, &path.display().to_string()).map(Some)
    }

    /// Removes the vectors of document `doc` if there are any.
    pub fn remove(&self, cid: u32, doc: u32) -> Result<()> {
        self.files.remove(cid, doc)
    }

    /// Lists the (cid, doc) of every document with vectors.
    pub fn list(&self) -> Result<Vec<(u32, u32)>> {
        self.files.list()
    }

    /// Removes unfinished files and the vectors of documents `owned` says no record owns.
    pub fn remove_orphans(&self, owned: &mut dyn FnMut(u32, u32) -> Result<bool>) -> Result<()> {
        self.files.remove_orphans(owned)
    }

    /// Returns the bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.files.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PassageVectors {
        PassageVectors {
            embedder: "test-model@00ff".into(),
            dim: 3,
            passages: vec![0..10, 10..25],
            values: vec![1.0, 0.0, 0.0, 0.0, 0.6, 0.8],
        }
    }

    #[test]
    fn round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = VectorStore::open(dir.path()).unwrap();
        s.write(1, 7, &sample()).unwrap();
        assert_eq!(s.read(1, 7).unwrap(), Some(sample()));
        assert_eq!(s.read(1, 8).unwrap(), None);
        assert_eq!(s.list().unwrap(), vec![(1, 7)]);
        assert_eq!(s.read(1, 7).unwrap().unwrap().row(1), &[0.0, 0.6, 0.8]);
        assert_eq!(
            s.embedder_of(1, 7).unwrap().as_deref(),
            Some("test-model@00ff")
        );
        assert_eq!(s.embedder_of(1, 8).unwrap(), None);
        s.remove(1, 7).unwrap();
        assert_eq!(s.read(1, 7).unwrap(), None);
    }

    #[test]
    fn damage_and_bad_shapes_are_named() {
        let bytes = sample().encode().unwrap();
        for i in [0, 4, 8, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            let e = PassageVectors::decode(&b, "f.vec").unwrap_err().to_string();
            assert!(e.contains("f.vec"), "byte {i}: {e}");
        }
        assert!(PassageVectors::decode(&bytes[..bytes.len() - 5], "f.vec").is_err());
        let mut newer = bytes.clone();
        newer[4] = VECTORS_FORMAT_VERSION + 1;
        assert!(matches!(
            PassageVectors::decode(&newer, "f.vec").unwrap_err(),
            IndexError::IncompatibleFormat {
                kind: FormatKind::Vectors,
                ..
            }
        ));
        let mut short = sample();
        short.values.pop();
        assert!(short.encode().unwrap_err().to_string().contains("values"));
        let mut nan = sample();
        nan.values[0] = f32::NAN;
        assert!(nan.encode().unwrap_err().to_string().contains("finite"));
    }
}
