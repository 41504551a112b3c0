//! Posting packs: each document's postings in one immutable file beside the sled store.
//!
//! sled 0.34 costs about 250 bytes on disk per record whatever its size (measured in
//! `docs/index-size.md`): a document's ~6,000 postings as separate records came to 480-990
//! bytes per token. A pack holds all of them in one file written once, at its logical size.
//!
//! Layout of `packs/{cid}-{doc}.pack` (integers are LEB128 varints unless noted): `S3PK`, a
//! format byte, the directory's length (u32 LE), the directory (entry count, then per
//! (layer, feature) ascending its packed id as a gap from the previous one, its posting's
//! byte length, and the posting's CRC-32 as u32 LE), the directory's CRC-32 (u32 LE), the
//! postings ([`codec`] encoding) back to back, and their CRC-32 (u32 LE). Retrieval reads the
//! directory and then only the postings it needs, each checked against its own sum; `verify`
//! reads it all.
//!
//! Crash order: that of every per-document file ([`super::docfiles`]): written before the sled
//! batch that makes its document visible, removed after the batch that deletes it, removed at
//! open when no document owns it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::docfiles::DocFiles;

use super::codec::{self, get_varint, put_varint};
use super::error::{FormatKind, IndexError, Result};
use super::types::LayerFeature;

/// One decoded posting: (layer, feature) and its ascending positions.
pub type Posting = (LayerFeature, Vec<u32>);

const MAGIC: &[u8; 4] = b"S3PK";
/// The pack format this build writes and reads (the byte after the magic); a newer one is
/// refused as [`IndexError::IncompatibleFormat`], not as damage.
pub const PACK_FORMAT_VERSION: u8 = 1;
/// Magic, format byte and directory length.
const PREAMBLE: usize = 4 + 1 + 4;
/// Largest directory accepted: more than every (layer, feature) pair of any real SAE set.
const MAX_DIRECTORY_BYTES: usize = 64 << 20;

/// Positions below which a pack is encoded on the calling thread: threads cost more than
/// they save for a small document.
const PARALLEL_MIN_POSITIONS: usize = 1 << 20;

/// Most threads one pack's encoding uses.
const MAX_ENCODE_THREADS: usize = 8;

/// Encodes a document's postings (document-local positions per (layer, feature)). A long
/// document's postings are encoded on several threads (a 727k-token document of SmolLM2 has
/// about 100 million positions, and its pack is the store's work that waits for the scan's
/// end); the bytes are the same whatever the threads.
pub fn encode(postings: &BTreeMap<LayerFeature, Vec<u32>>) -> Result<Vec<u8>> {
    encode_on(postings, threads_for(postings))
}

/// Returns the threads a document's postings are worked on: one below
/// [`PARALLEL_MIN_POSITIONS`], else the host's cores up to [`MAX_ENCODE_THREADS`].
pub fn threads_for(postings: &BTreeMap<LayerFeature, Vec<u32>>) -> usize {
    let positions: usize = postings.values().map(Vec::len).sum();
    if positions < PARALLEL_MIN_POSITIONS {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_ENCODE_THREADS)
    }
}

/// Runs `work` over contiguous runs of `lists` of about equal positions, one run per thread
/// (at most `threads`, the calling thread alone for one), and returns the runs' results in
/// order.
pub fn in_runs<T: Send>(
    lists: &[&[u32]],
    threads: usize,
    work: impl Fn(&[&[u32]]) -> T + Sync,
) -> Vec<T> {
    let runs = split_runs(lists, threads.max(1));
    if runs.len() <= 1 {
        return runs.iter().map(|r| work(&lists[r.clone()])).collect();
    }
    let work = &work;
    std::thread::scope(|s| {
        let jobs: Vec<_> = runs
            .iter()
            .map(|r| {
                let run = &lists[r.clone()];
                s.spawn(move || work(run))
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Encodes as [`encode`] does on `threads` threads (at least one): the postings are cut into
/// runs of about equal positions, each run encoded on its own thread, and the runs joined in
/// order.
pub fn encode_on(postings: &BTreeMap<LayerFeature, Vec<u32>>, threads: usize) -> Result<Vec<u8>> {
    let mut ids = Vec::with_capacity(postings.len());
    for feature in postings.keys() {
        ids.push(feature.pack().ok_or_else(|| {
            IndexError::InvalidInput(format!(
                "layer {} feature {} does not fit a posting pack",
                feature.layer, feature.feature
            ))
        })?);
    }
    let lists: Vec<&[u32]> = postings.values().map(Vec::as_slice).collect();
    let encoded = in_runs(&lists, threads, encode_run);
    let mut dir = Vec::with_capacity(postings.len() * 3 + 8);
    put_varint(&mut dir, postings.len() as u64);
    let mut prev: Option<u32> = None;
    let entries = encoded.iter().flat_map(|r| r.entries.iter());
    for (&packed, &(len, crc)) in ids.iter().zip(entries) {
        let gap = match prev {
            None => packed,
            Some(p) => packed - p - 1,
        };
        prev = Some(packed);
        put_varint(&mut dir, u64::from(gap));
        put_varint(&mut dir, len as u64);
        dir.extend_from_slice(&crc.to_le_bytes());
    }
    let body_len: usize = encoded.iter().map(|r| r.body.len()).sum();
    let mut out = Vec::with_capacity(PREAMBLE + dir.len() + body_len + 8);
    out.extend_from_slice(MAGIC);
    out.push(PACK_FORMAT_VERSION);
    out.extend_from_slice(&(dir.len() as u32).to_le_bytes());
    out.extend_from_slice(&dir);
    out.extend_from_slice(&crc32fast::hash(&dir).to_le_bytes());
    let mut body_crc = crc32fast::Hasher::new();
    for r in &encoded {
        out.extend_from_slice(&r.body);
        body_crc.combine(&r.crc);
    }
    out.extend_from_slice(&body_crc.finalize().to_le_bytes());
    Ok(out)
}

/// Cuts `lists` into at most `threads` contiguous runs of about equal positions.
fn split_runs(lists: &[&[u32]], threads: usize) -> Vec<Range<usize>> {
    let total: usize = lists.iter().map(|l| l.len()).sum();
    let share = total.div_ceil(threads).max(1);
    let mut runs = Vec::with_capacity(threads);
    let (mut start, mut filled) = (0, 0);
    for (i, l) in lists.iter().enumerate() {
        filled += l.len();
        if filled >= share && runs.len() + 1 < threads {
            runs.push(start..i + 1);
            start = i + 1;
            filled = 0;
        }
    }
    if start < lists.len() || runs.is_empty() {
        runs.push(start..lists.len());
    }
    runs
}

/// One run of postings encoded: each posting's byte length and CRC-32, their bytes back to
/// back, and the running CRC-32 of those bytes.
struct EncodedRun {
    entries: Vec<(usize, u32)>,
    body: Vec<u8>,
    crc: crc32fast::Hasher,
}

fn encode_run(lists: &[&[u32]]) -> EncodedRun {
    let mut entries = Vec::with_capacity(lists.len());
    let mut body = Vec::new();
    for positions in lists {
        let bytes = codec::encode_posting(positions);
        entries.push((bytes.len(), crc32fast::hash(&bytes)));
        body.extend_from_slice(&bytes);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&body);
    EncodedRun { entries, body, crc }
}

/// One posting in a pack's directory.
#[derive(Debug, Clone)]
struct Entry {
    /// Packed (layer, feature).
    id: u32,
    /// Byte range within the body.
    range: Range<u64>,
    /// CRC-32 of those bytes.
    crc: u32,
}

/// Parses a directory into its entries, ascending by id.
fn parse_directory(dir: &[u8], body_len: u64) -> std::result::Result<Vec<Entry>, String> {
    let mut pos = 0;
    let n = get_varint(dir, &mut pos).ok_or("truncated count")?;
    if n as usize > dir.len() {
        return Err(format!("{n} entries in a {}-byte directory", dir.len()));
    }
    let mut entries = Vec::with_capacity(n as usize);
    let mut prev: Option<u64> = None;
    let mut at = 0u64;
    for _ in 0..n {
        let gap = get_varint(dir, &mut pos).ok_or("truncated id")?;
        let len = get_varint(dir, &mut pos).ok_or("truncated length")?;
        let crc = dir
            .get(pos..pos + 4)
            .ok_or("truncated checksum")?
            .try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| "truncated checksum")?;
        pos += 4;
        let id = match prev {
            None => Some(gap),
            Some(p) => p.checked_add(gap).and_then(|i| i.checked_add(1)),
        }
        .filter(|&i| i <= u64::from(u32::MAX))
        .ok_or("a feature id out of range")?;
        prev = Some(id);
        let end = at
            .checked_add(len)
            .filter(|&e| e <= body_len)
            .ok_or("a posting runs past the end")?;
        entries.push(Entry {
            id: id as u32,
            range: at..end,
            crc,
        });
        at = end;
    }
    if pos != dir.len() {
        return Err(format!("{} stray directory bytes", dir.len() - pos));
    }
    if at != body_len {
        return Err(format!("{} body bytes no posting covers", body_len - at));
    }
    Ok(entries)
}

/// A pack whose directory was read and checked; postings are read on demand, through the
/// file kept open unless [`Pack::close`] let it go.
#[derive(Debug)]
pub struct Pack {
    path: PathBuf,
    file: Option<File>,
    what: String,
    /// Offset of the body in the file.
    body_at: u64,
    body_len: u64,
    /// The postings, ascending by id.
    entries: Vec<Entry>,
}

impl Pack {
    /// Reads and checks the directory of the pack `file` opened at `path`.
    fn from_file(path: &Path, mut file: File) -> Result<Self> {
        let what = path.display().to_string();
        let io = |e| IndexError::io(path, e);
        let size = file.metadata().map_err(io)?.len();
        let bad = |why: String| Err(IndexError::corrupt(&what, why));
        let mut pre = [0u8; PREAMBLE];
        if size < (PREAMBLE + 8) as u64 || file.read_exact(&mut pre).is_err() || &pre[..4] != MAGIC
        {
            return bad("not a posting pack (bad magic or too short)".into());
        }
        if pre[4] > PACK_FORMAT_VERSION {
            return Err(IndexError::IncompatibleFormat {
                kind: FormatKind::Pack,
                found: pre[4].into(),
                supported: PACK_FORMAT_VERSION.into(),
                path: path.into(),
            });
        }
        if pre[4] != PACK_FORMAT_VERSION {
            return bad(format!("unknown pack format {}", pre[4]));
        }
        let dir_len = u32::from_le_bytes(pre[5..9].try_into().expect("4 bytes")) as usize;
        if dir_len > MAX_DIRECTORY_BYTES || (PREAMBLE + dir_len + 8) as u64 > size {
            return bad(format!(
                "directory of {dir_len} bytes in a {size}-byte file"
            ));
        }
        let mut dir = vec![0u8; dir_len + 4];
        file.read_exact(&mut dir).map_err(io)?;
        let (dir, crc) = dir.split_at(dir_len);
        if crc32fast::hash(dir) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return bad("directory checksum mismatch (the file is damaged)".into());
        }
        let body_at = (PREAMBLE + dir_len + 4) as u64;
        let body_len = size - body_at - 4;
        let entries = match parse_directory(dir, body_len) {
            Ok(e) => e,
            Err(why) => return bad(why),
        };
        Ok(Self {
            path: path.into(),
            file: Some(file),
            what,
            body_at,
            body_len,
            entries,
        })
    }

    /// Lets the file go (a reader holding many packs keeps few descriptors); reads reopen it.
    pub fn close(&mut self) {
        self.file = None;
    }

    /// Reopens the file after [`Pack::close`].
    pub fn reopen(&mut self) -> Result<()> {
        if self.file.is_none() {
            self.file = Some(File::open(&self.path).map_err(|e| IndexError::io(&self.path, e))?);
        }
        Ok(())
    }

    /// Returns whether the file is held open.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    fn read_at(&self, r: Range<u64>) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        let mut read = |f: &File| f.read_exact_at(&mut buf, self.body_at + r.start);
        match &self.file {
            Some(f) => read(f),
            None => File::open(&self.path).and_then(|f| read(&f)),
        }
        .map_err(|e| IndexError::io(&self.what, e))?;
        Ok(buf)
    }

    fn decode(&self, id: u32, bytes: &[u8]) -> Result<Vec<u32>> {
        let feature = LayerFeature::unpack(id);
        codec::decode_posting(bytes)
            .map_err(|e| IndexError::corrupt(format!("posting {feature} in {}", self.what), e))
    }

    /// Returns the positions where `feature` fired (empty when it never did).
    pub fn get(&self, feature: LayerFeature) -> Result<Vec<u32>> {
        let Some(id) = feature.pack() else {
            return Ok(Vec::new());
        };
        match self.entries.binary_search_by_key(&id, |e| e.id) {
            Err(_) => Ok(Vec::new()),
            Ok(i) => {
                let e = &self.entries[i];
                let bytes = self.read_at(e.range.clone())?;
                if crc32fast::hash(&bytes) != e.crc {
                    return Err(IndexError::corrupt(
                        &self.what,
                        format!("checksum mismatch in posting {feature} (the file is damaged)"),
                    ));
                }
                self.decode(id, &bytes)
            }
        }
    }

    /// Returns the size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.body_at + self.body_len + 4
    }

    /// Returns the number of postings.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns whether the pack holds no posting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the packed (layer, feature) ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// Reads the whole body, checking its sum.
    fn body(&self) -> Result<Vec<u8>> {
        let mut body = self.read_at(0..self.body_len + 4)?;
        let crc = body.split_off(self.body_len as usize);
        if crc32fast::hash(&body) != u32::from_le_bytes(crc[..].try_into().expect("4 bytes")) {
            return Err(IndexError::corrupt(
                &self.what,
                "posting checksum mismatch (the file is damaged)",
            ));
        }
        Ok(body)
    }

    /// Decodes every posting, checking the body's sum: ((layer, feature), positions), ascending.
    pub fn all(&self) -> Result<Vec<Posting>> {
        let body = self.body()?;
        self.entries
            .iter()
            .map(|e| {
                let p = self.decode(e.id, &body[e.range.start as usize..e.range.end as usize])?;
                Ok((LayerFeature::unpack(e.id), p))
            })
            .collect()
    }

    /// Returns the number of positions over all postings, checking the body's sum.
    pub fn entry_count(&self) -> Result<u64> {
        let body = self.body()?;
        self.entries
            .iter()
            .map(|e| {
                codec::posting_len(&body[e.range.start as usize..e.range.end as usize])
                    .map_err(|err| IndexError::corrupt(&self.what, err))
            })
            .sum()
    }
}

/// The folder of posting packs of a data dir.
#[derive(Debug, Clone)]
pub struct PackStore {
    files: DocFiles,
}

impl PackStore {
    /// Opens (creating) `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            files: DocFiles::open(dir, "pack")?,
        })
    }

    /// Returns the folder.
    pub fn dir(&self) -> &Path {
        self.files.dir()
    }

    /// Writes the pack of document `doc` durably (temporary name, sync, rename, sync the folder).
    pub fn write(&self, cid: u32, doc: u32, bytes: &[u8]) -> Result<()> {
        self.files.write(cid, doc, bytes)
    }

    /// Writes the pack of document `doc` with the folder unsynced (see
    /// [`DocFiles::write_unsynced_folder`]): durable after [`PackStore::sync_folder`].
    pub fn write_unsynced_folder(&self, cid: u32, doc: u32, bytes: &[u8]) -> Result<()> {
        self.files.write_unsynced_folder(cid, doc, bytes)
    }

    /// Makes the names of the packs written so far durable.
    pub fn sync_folder(&self) -> Result<()> {
        self.files.sync_folder()
    }

    /// Reads the pack of document `doc`; `None` when there is no file.
    pub fn read(&self, cid: u32, doc: u32) -> Result<Option<Pack>> {
        let path = self.files.path(cid, doc);
        match File::open(&path) {
            Ok(file) => Pack::from_file(&path, file).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IndexError::io(&path, e)),
        }
    }

    /// Reads the pack of a document that must have one.
    pub fn read_owned(&self, cid: u32, doc: u32) -> Result<Pack> {
        self.read(cid, doc)?.ok_or_else(|| {
            IndexError::corrupt(
                self.files.path(cid, doc).display().to_string(),
                "the posting pack of a stored document is missing",
            )
        })
    }

    /// Removes the pack of document `doc` if it is there.
    pub fn remove(&self, cid: u32, doc: u32) -> Result<()> {
        self.files.remove(cid, doc)
    }

    /// Lists the (cid, doc) of every finished pack (a read: it changes nothing).
    pub fn list(&self) -> Result<Vec<(u32, u32)>> {
        self.files.list()
    }

    /// Removes unfinished packs and the packs of documents `owned` says no record owns.
    pub fn remove_orphans(&self, owned: &mut dyn FnMut(u32, u32) -> Result<bool>) -> Result<()> {
        self.files.remove_orphans(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BTreeMap<LayerFeature, Vec<u32>> {
        let mut m = BTreeMap::new();
        m.insert(LayerFeature::new(8, 3), vec![0, 5, 9]);
        m.insert(LayerFeature::new(8, 2047), (0..500).collect());
        m.insert(LayerFeature::new(24, 0), vec![77]);
        m
    }

    fn written(m: &BTreeMap<LayerFeature, Vec<u32>>) -> (tempfile::TempDir, PackStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = PackStore::open(dir.path()).unwrap();
        s.write(1, 2, &encode(m).unwrap()).unwrap();
        (dir, s)
    }

    /// Up to 40 postings of layers below 30 and features below `features`, each of 1 to
    /// `longest` distinct positions below 100,000.
    fn postings(
        features: u32,
        longest: usize,
    ) -> impl Strategy<Value = BTreeMap<LayerFeature, Vec<u32>>> {
        proptest::collection::btree_map(
            (0u16..30, 0u32..features),
            proptest::collection::btree_set(0u32..100_000, 1..longest),
            0..40,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|((l, f), p)| (LayerFeature::new(l, f), p.into_iter().collect()))
                .collect()
        })
    }

    /// The pack layout written out in turn, one posting after the other: what the threads'
    /// runs must join into, byte for byte.
    fn encode_in_turn(postings: &BTreeMap<LayerFeature, Vec<u32>>) -> Vec<u8> {
        let mut dir = Vec::new();
        put_varint(&mut dir, postings.len() as u64);
        let mut body = Vec::new();
        let mut prev: Option<u32> = None;
        for (f, positions) in postings {
            let packed = f.pack().unwrap();
            put_varint(&mut dir, u64::from(prev.map_or(packed, |p| packed - p - 1)));
            prev = Some(packed);
            let bytes = codec::encode_posting(positions);
            put_varint(&mut dir, bytes.len() as u64);
            dir.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
            body.extend_from_slice(&bytes);
        }
        let mut out = MAGIC.to_vec();
        out.push(PACK_FORMAT_VERSION);
        out.extend_from_slice(&(dir.len() as u32).to_le_bytes());
        out.extend_from_slice(&dir);
        out.extend_from_slice(&crc32fast::hash(&dir).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out
    }

    proptest! {
        #[test]
        fn any_number_of_threads_writes_the_same_pack(
            m in postings(5000, 300),
            threads in 1usize..9,
        ) {
            let want = encode_in_turn(&m);
            prop_assert_eq!(&encode_on(&m, threads).unwrap(), &want);
            prop_assert_eq!(&encode(&m).unwrap(), &want);
        }
    }

    #[test]
    fn a_long_document_is_cut_into_balanced_runs() {
        let long: Vec<u32> = (0..1000).collect();
        let lists: Vec<&[u32]> = vec![&long[..10], &long, &long[..1], &long, &long[..500]];
        let runs = split_runs(&lists, 3);
        assert_eq!(runs, vec![0..2, 2..4, 4..5]);
        assert_eq!(split_runs(&lists, 1), vec![0..5]);
        assert_eq!(split_runs(&[], 4), vec![0..0]);
        // More threads than lists: one run a list at most, every list in one run.
        let runs = split_runs(&lists, 16);
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), lists.len());
        assert!(runs.iter().all(|r| !r.is_empty()));
    }

    #[test]
    fn round_trip_and_lookup() {
        let (_d, s) = written(&sample());
        let p = s.read_owned(1, 2).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get(LayerFeature::new(8, 3)).unwrap(), vec![0, 5, 9]);
        assert_eq!(p.get(LayerFeature::new(24, 0)).unwrap(), vec![77]);
        assert!(p.get(LayerFeature::new(16, 3)).unwrap().is_empty());
        assert_eq!(p.entry_count().unwrap(), 504);
        let all: BTreeMap<_, _> = p.all().unwrap().into_iter().collect();
        assert_eq!(all, sample());
    }

    #[test]
    fn damage_is_detected_not_decoded() {
        let bytes = encode(&sample()).unwrap();
        let (dir, s) = written(&sample());
        let path = dir.path().join("1-2.pack");
        for i in [0, 4, 6, 10, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            std::fs::write(&path, &b).unwrap();
            let e = match s.read(1, 2) {
                Err(e) => e,
                Ok(p) => p.unwrap().all().unwrap_err(),
            };
            assert!(e.to_string().contains("1-2.pack"), "byte {i}: {e}");
        }
        // A flipped bit inside one posting is caught by that posting's own sum on a lookup.
        let mut b = bytes.clone();
        // The body ends with the posting of (24, 0) (3 bytes) and the body's sum (4 bytes).
        let at = b.len() - 5;
        b[at] ^= 0x01;
        std::fs::write(&path, &b).unwrap();
        let p = s.read_owned(1, 2).unwrap();
        let e = p.get(LayerFeature::new(24, 0)).unwrap_err().to_string();
        assert!(e.contains("checksum") && e.contains("24/0"), "{e}");
        assert_eq!(p.get(LayerFeature::new(8, 3)).unwrap(), vec![0, 5, 9]);
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(s.read(1, 2).is_err() || s.read(1, 2).unwrap().unwrap().all().is_err());
        std::fs::write(&path, b"").unwrap();
        assert!(s.read(1, 2).is_err());
    }

    /// A newer pack format is an incompatibility (FAILED_PRECONDITION), not damage; a format
    /// byte no build ever wrote is damage.
    #[test]
    fn a_newer_pack_format_is_incompatible_not_corrupt() {
        let (dir, s) = written(&sample());
        let path = dir.path().join("1-2.pack");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4] = PACK_FORMAT_VERSION + 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = s.read(1, 2).unwrap_err();
        assert!(
            matches!(
                e,
                IndexError::IncompatibleFormat {
                    kind: FormatKind::Pack,
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("posting pack format version 2")
                && e.to_string().contains("newer than this build supports (1)"),
            "{e}"
        );
        bytes[4] = 0;
        std::fs::write(&path, &bytes).unwrap();
        let e = s.read(1, 2).unwrap_err();
        assert!(matches!(e, IndexError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn store_writes_lists_and_removes() {
        let (dir, s) = written(&sample());
        // A temporary pack of today's writer and one of older builds.
        std::fs::write(dir.path().join(".1-7.pack.tmp-99-0"), b"partial").unwrap();
        std::fs::write(dir.path().join("1-8.pack.tmp"), b"partial").unwrap();
        assert_eq!(s.list().unwrap(), vec![(1, 2)]);
        s.remove_orphans(&mut |_, _| Ok(true)).unwrap();
        assert!(!dir.path().join(".1-7.pack.tmp-99-0").exists());
        assert!(!dir.path().join("1-8.pack.tmp").exists());
        assert!(s.read(1, 8).unwrap().is_none());
        assert!(s.read_owned(1, 8).is_err());
        s.remove(1, 2).unwrap();
        s.remove(1, 2).unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_postings_round_trip(m in postings(4096, 50)) {
            let (_d, s) = written(&m);
            let p = s.read_owned(1, 2).unwrap();
            for (&f, v) in &m {
                prop_assert_eq!(&p.get(f).unwrap(), v);
            }
            let back: BTreeMap<_, _> = p.all().unwrap().into_iter().collect();
            prop_assert_eq!(back, m);
        }
    }
}
