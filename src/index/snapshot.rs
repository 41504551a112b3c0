//! Snapshots of a data dir: one tar archive of every file the index keeps (sled's files after a
//! flush, the posting packs, the passage vectors, each collection's tantivy folder under
//! `bm25/`), ending with a manifest (the snapshot and store format versions, every file's size
//! and sha256), and the restore that checks all of it before the restored data dir appears.
//!
//! The files are copied as they are, not re-encoded: a restored data dir is the source's bytes,
//! and opening it is the recovery every open does (the same as after a crash at that moment).
//! Consistency is the caller's: from [`Index::quiesce`] until [`write_snapshot`] returns, no
//! write may reach the index (the daemon holds its write admission; the CLI holds the lock).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{IndexError, Result};
use super::migrations::{self, STORE_FORMAT_OLDEST_SUPPORTED, STORE_FORMAT_VERSION};
use super::Index;
use crate::durable;

/// The version of the archive's layout and manifest; a restore refuses any other.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// The manifest's name in the archive: its last entry.
pub const MANIFEST_NAME: &str = "MANIFEST.json";

/// Entries of a data dir's top level that are not copied: the process lock, and the staging
/// folders of a store creation or compaction (absent while the index is open).
const NOT_COPIED: [&str; 4] = ["LOCK", "store.new", "store.compact", "store.old"];

/// The largest manifest a restore reads (a data dir of a million files needs under 200 MB).
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// What a snapshot holds: its formats and every file with its size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`SNAPSHOT_FORMAT_VERSION`] of the build that wrote it.
    pub snapshot_format: u32,
    /// The store format of the data dir ([`STORE_FORMAT_VERSION`] when it was upgraded).
    pub store_format: u32,
    /// The version of s3mem that wrote it.
    pub written_by: String,
    /// Seconds since the Unix epoch when it was written.
    pub created_unix: u64,
    /// Every folder, `/`-separated, in archive order (an empty one too, so a restore is the
    /// data dir's whole tree).
    pub folders: Vec<String>,
    /// Every file, in archive order.
    pub files: Vec<SnapshotFile>,
}

impl Manifest {
    /// Returns the bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Its path inside the data dir, `/`-separated.
    pub path: String,
    /// Its length in bytes.
    pub size: u64,
    /// The lowercase hex sha256 of its bytes.
    pub sha256: String,
}

/// Counts and hashes the bytes that pass through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn digest(self) -> (u64, String) {
        (self.bytes, hex(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The archive's destination, remembering whether a write to it failed: an error while an
/// entry is appended is then the destination's (a full disk, a client gone), not the source
/// file's.
struct Output<'a> {
    inner: &'a mut dyn Write,
    failed: bool,
}

impl Write for Output<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(bytes);
        self.failed |= n.is_err();
        n
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.failed |= r.is_err();
        r
    }
}

/// The path an error of the snapshot's destination is reported against.
const OUTPUT: &str = "the snapshot's destination";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of a data dir a snapshot copies: its `/`-separated path inside, its full path,
/// and whether it is a folder.
struct DataEntry {
    name: String,
    path: PathBuf,
    folder: bool,
}

/// Returns the folders and files of the data dir `dir` a snapshot copies, each folder before
/// what it holds, in a stable order.
fn data_entries(dir: &Path) -> Result<Vec<DataEntry>> {
    let mut entries = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || !NOT_COPIED.iter().any(|n| e.file_name() == *n));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            IndexError::io(path, e.into())
        })?;
        let inside = entry.path().strip_prefix(dir).expect("walked under dir");
        let name = inside
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                IndexError::InvalidInput(format!(
                    "{} is not a UTF-8 path: a snapshot cannot name it",
                    entry.path().display()
                ))
            })?
            .join("/");
        let folder = entry.file_type().is_dir();
        if !folder && !entry.file_type().is_file() {
            return Err(IndexError::InvalidInput(format!(
                "{} is not a regular file: a data dir holds only files and folders",
                entry.path().display()
            )));
        }
        entries.push(DataEntry {
            name,
            path: entry.path().to_path_buf(),
            folder,
        });
    }
    Ok(entries)
}

impl Index {
    /// Writes a snapshot of the data dir to `out` and returns its manifest.
    ///
    /// The caller has called [`Index::quiesce`] and waited for its merges, and keeps every
    /// write out until this returns; readers may go on meanwhile.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> Result<Manifest> {
        let dir = self.dir();
        let store_format = migrations::stored_version(self.store())?.ok_or_else(|| {
            IndexError::corrupt(dir.display().to_string(), "the store records no format")
        })?;
        let mut archive = tar::Builder::new(Output {
            inner: out,
            failed: false,
        });
        let (mut folders, mut files) = (Vec::new(), Vec::new());
        for DataEntry { name, path, folder } in data_entries(dir)? {
            let io = |e| IndexError::io(&path, e);
            let appended = |archive: &tar::Builder<Output<'_>>, e| {
                let to = if archive.get_ref().failed {
                    OUTPUT.as_ref()
                } else {
                    path.as_path()
                };
                IndexError::io(to, e)
            };
            if folder {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                if let Err(e) = archive.append_data(&mut header, &name, io::empty()) {
                    return Err(appended(&archive, e));
                }
                folders.push(name);
                continue;
            }
            let file = File::open(&path).map_err(io)?;
            let meta = file.metadata().map_err(io)?;
            let mut header = tar::Header::new_gnu();
            header.set_size(meta.len());
            header.set_mode(0o644);
            header.set_mtime(
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
            );
            let mut reader = Hashing::new(file.take(meta.len()));
            if let Err(e) = archive.append_data(&mut header, &name, &mut reader) {
                return Err(appended(&archive, e));
            }
            let (size, sha256) = reader.digest();
            if size != meta.len() {
                // The archive now holds a short entry: the caller must not keep it.
                return Err(IndexError::corrupt(
                    path.display().to_string(),
                    format!(
                        "shrank from {} to {size} bytes while it was copied",
                        meta.len()
                    ),
                ));
            }
            files.push(SnapshotFile {
                path: name,
                size,
                sha256,
            });
        }
        let manifest = Manifest {
            snapshot_format: SNAPSHOT_FORMAT_VERSION,
            store_format,
            written_by: env!("CARGO_PKG_VERSION").to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            folders,
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| IndexError::InvalidInput(format!("the manifest: {e}")))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(manifest.created_unix);
        let io = |e| IndexError::io(OUTPUT, e);
        archive
            .append_data(&mut header, MANIFEST_NAME, json.as_slice())
            .map_err(io)?;
        archive.into_inner().map_err(io)?.flush().map_err(io)?;
        Ok(manifest)
    }
}

/// Writes a snapshot of the data dir `dir` (no daemon may hold it) to the file `out`, through
/// a temporary file beside it: `out` appears only whole.
pub fn snapshot_data_dir(dir: &Path, out: &Path) -> Result<Manifest> {
    let mut index = Index::open_existing(dir)?;
    index.quiesce()?.wait()?;
    let mut failure = None;
    let written = durable::write_atomic_with(out, |file| {
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        match index.write_snapshot(&mut writer) {
            Ok(manifest) => writer.flush().map(|()| manifest),
            Err(e) => {
                failure = Some(e);
                Err(io::Error::other("the snapshot failed"))
            }
        }
    });
    match (written, failure) {
        (_, Some(e)) => Err(e),
        (Ok(manifest), None) => Ok(manifest),
        (Err(e), None) => Err(IndexError::io(out, e)),
    }
}

/// An entry of a snapshot as [`read_snapshot`] hands it on.
enum Entry<'a> {
    /// A folder.
    Folder,
    /// A file's contents.
    File(&'a mut dyn Read),
}

/// What a snapshot's entries held, checked against its manifest at the end.
#[derive(Default)]
struct Seen {
    folders: BTreeSet<String>,
    /// Each file's size and sha256.
    files: BTreeMap<String, (u64, String)>,
}

/// Reads a snapshot, handing each entry's path and contents to `each` (which may read a file
/// to the end), and checks every folder and file against the manifest: returns the manifest
/// when all match, else what is wrong, by file.
fn read_snapshot(
    snapshot: &Path,
    each: &mut dyn FnMut(&str, Entry<'_>) -> Result<()>,
) -> Result<Manifest> {
    let damaged = |problem: String| IndexError::DamagedSnapshot {
        snapshot: snapshot.into(),
        problem,
    };
    let file = File::open(snapshot).map_err(|e| IndexError::io(snapshot, e))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let malformed = |e: io::Error| {
        damaged(format!(
            "the archive is truncated or not a tar archive ({e})"
        ))
    };
    let mut seen = Seen::default();
    let mut manifest: Option<Manifest> = None;
    for entry in archive.entries().map_err(malformed)? {
        let entry = entry.map_err(malformed)?;
        let name = entry_name(&entry).map_err(&damaged)?;
        if manifest.is_some() {
            return Err(damaged(format!(
                "`{name}` follows the manifest, which must be the last entry"
            )));
        }
        let declared = entry.header().size().map_err(malformed)?;
        if name == MANIFEST_NAME {
            if declared > MAX_MANIFEST_BYTES {
                return Err(damaged(format!("the manifest claims {declared} bytes")));
            }
            let mut json = Vec::new();
            entry
                .take(declared)
                .read_to_end(&mut json)
                .map_err(malformed)?;
            if json.len() as u64 != declared {
                return Err(damaged("the manifest is cut short".into()));
            }
            manifest = Some(
                serde_json::from_slice(&json)
                    .map_err(|e| damaged(format!("the manifest does not parse: {e}")))?,
            );
            continue;
        }
        if seen.files.contains_key(&name) || seen.folders.contains(&name) {
            return Err(damaged(format!("`{name}` appears twice")));
        }
        if entry.header().entry_type() == tar::EntryType::Directory {
            each(&name, Entry::Folder)?;
            seen.folders.insert(name);
            continue;
        }
        let mut reader = Hashing::new(entry);
        each(&name, Entry::File(&mut reader))?;
        // A reader that stopped early would hash a prefix: read what is left.
        io::copy(&mut reader, &mut io::sink()).map_err(malformed)?;
        let (size, sha256) = reader.digest();
        if size != declared {
            return Err(damaged(format!(
                "`{name}` is cut short, {size} of {declared} bytes: the archive is truncated"
            )));
        }
        seen.files.insert(name, (size, sha256));
    }
    let manifest = manifest.ok_or_else(|| {
        damaged(format!(
            "no {MANIFEST_NAME}: the archive is truncated or not an s3mem snapshot"
        ))
    })?;
    check_manifest(&manifest, &seen).map_err(damaged)?;
    Ok(manifest)
}

/// Returns the `/`-separated path of an archive entry, refusing anything but a folder or a
/// regular file at a plain relative path.
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> std::result::Result<String, String> {
    let path = entry
        .path()
        .map_err(|e| format!("an entry's path is not readable ({e})"))?;
    let kind = entry.header().entry_type();
    if kind != tar::EntryType::Regular && kind != tar::EntryType::Directory {
        return Err(format!(
            "`{}` is neither a file nor a folder ({kind:?})",
            path.display()
        ));
    }
    let parts: Option<Vec<&str>> = path
        .components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    match parts {
        Some(parts) if !parts.is_empty() => Ok(parts.join("/")),
        _ => Err(format!(
            "`{}` is not a plain relative path inside a data dir",
            path.display()
        )),
    }
}

/// Checks the files read against the manifest: formats, then every file's presence, size and
/// digest.
fn check_manifest(manifest: &Manifest, seen: &Seen) -> std::result::Result<(), String> {
    if manifest.snapshot_format != SNAPSHOT_FORMAT_VERSION {
        return Err(format!(
            "unknown snapshot format version {} (this build reads {SNAPSHOT_FORMAT_VERSION})",
            manifest.snapshot_format
        ));
    }
    if !(STORE_FORMAT_OLDEST_SUPPORTED..=STORE_FORMAT_VERSION).contains(&manifest.store_format) {
        return Err(format!(
            "unknown store format version {} (this build reads {STORE_FORMAT_OLDEST_SUPPORTED} \
             to {STORE_FORMAT_VERSION})",
            manifest.store_format
        ));
    }
    let mut listed = BTreeMap::new();
    for f in &manifest.files {
        if listed.insert(f.path.as_str(), f).is_some() {
            return Err(format!("the manifest lists `{}` twice", f.path));
        }
        let Some((size, sha256)) = seen.files.get(&f.path) else {
            return Err(format!(
                "`{}` is listed in the manifest but missing from the archive",
                f.path
            ));
        };
        if *size != f.size {
            return Err(format!(
                "`{}` has {size} bytes, the manifest says {}",
                f.path, f.size
            ));
        }
        if *sha256 != f.sha256 {
            return Err(format!(
                "`{}` does not match its sha256 in the manifest (its bytes changed)",
                f.path
            ));
        }
    }
    if let Some(extra) = seen.files.keys().find(|k| !listed.contains_key(k.as_str())) {
        return Err(format!(
            "`{extra}` is in the archive but not in the manifest"
        ));
    }
    let folders: BTreeSet<String> = manifest.folders.iter().cloned().collect();
    if let Some(missing) = folders.difference(&seen.folders).next() {
        return Err(format!(
            "folder `{missing}` is listed in the manifest but missing from the archive"
        ));
    }
    if let Some(extra) = seen.folders.difference(&folders).next() {
        return Err(format!(
            "folder `{extra}` is in the archive but not in the manifest"
        ));
    }
    Ok(())
}

/// Checks a snapshot without writing anything: every file against the manifest.
pub fn verify_snapshot(snapshot: &Path) -> Result<Manifest> {
    read_snapshot(snapshot, &mut |_, _| Ok(()))
}

/// Restores a snapshot into the data dir `dir`, which must not exist or be empty.
///
/// The files go into a temporary folder beside `dir`, each synced; only when every one matches
/// the manifest is the folder renamed to `dir`. A damaged snapshot leaves nothing behind.
pub fn restore_snapshot(snapshot: &Path, dir: &Path) -> Result<Manifest> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| IndexError::io(dir, e))?;
        if entries.next().is_some() {
            return Err(IndexError::InvalidInput(format!(
                "{} is not empty: restore into a new or empty folder",
                dir.display()
            )));
        }
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| IndexError::InvalidInput(format!("{} names no folder", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".{name}.restore-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| IndexError::io(&staging, e))?;
    }
    let result = restore_into(snapshot, &staging).and_then(|manifest| {
        if dir.exists() {
            // Empty (checked above): rename replaces only a missing name portably.
            std::fs::remove_dir(dir).map_err(|e| IndexError::io(dir, e))?;
        }
        std::fs::rename(&staging, dir).map_err(|e| IndexError::io(dir, e))?;
        durable::sync_dir(&parent).map_err(|e| IndexError::io(&parent, e))?;
        Ok(manifest)
    });
    if result.is_err() && staging.exists() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Writes every file of the snapshot under `staging`, synced, and checks the manifest.
fn restore_into(snapshot: &Path, staging: &Path) -> Result<Manifest> {
    std::fs::create_dir_all(staging).map_err(|e| IndexError::io(staging, e))?;
    let mut folders = vec![staging.to_path_buf()];
    let manifest = read_snapshot(snapshot, &mut |name, entry| {
        let path = staging.join(name);
        let io = |e| IndexError::io(&path, e);
        // Folders come before their files; a hand-made archive may leave them out.
        if let Some(parent) = path.parent().filter(|p| !p.exists()) {
            std::fs::create_dir_all(parent).map_err(io)?;
            folders.push(parent.to_path_buf());
        }
        match entry {
            Entry::Folder => {
                if !path.is_dir() {
                    std::fs::create_dir(&path).map_err(io)?;
                }
                folders.push(path.clone());
                Ok(())
            }
            Entry::File(contents) => {
                let mut file = File::create_new(&path).map_err(io)?;
                io::copy(contents, &mut file).map_err(io)?;
                file.sync_all().map_err(io)
            }
        }
    })?;
    for folder in folders {
        durable::sync_dir(&folder).map_err(|e| IndexError::io(&folder, e))?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<SnapshotFile>) -> Manifest {
        Manifest {
            snapshot_format: SNAPSHOT_FORMAT_VERSION,
            store_format: STORE_FORMAT_VERSION,
            written_by: "test".into(),
            created_unix: 0,
            folders: vec!["f".into()],
            files,
        }
    }

    fn file(path: &str, size: u64, sha256: &str) -> SnapshotFile {
        SnapshotFile {
            path: path.into(),
            size,
            sha256: sha256.into(),
        }
    }

    #[test]
    fn the_manifest_check_names_each_kind_of_damage() {
        let seen = Seen {
            folders: ["f".to_string()].into(),
            files: [("a".to_string(), (3, "aa".to_string()))].into(),
        };
        assert_eq!(
            check_manifest(&manifest(vec![file("a", 3, "aa")]), &seen),
            Ok(())
        );
        let err = |m: Manifest| check_manifest(&m, &seen).unwrap_err();
        assert!(err(manifest(vec![file("a", 3, "ab")])).contains("sha256"));
        assert!(err(manifest(vec![file("a", 4, "aa")])).contains("3 bytes"));
        assert!(err(manifest(vec![file("a", 3, "aa"), file("b", 1, "bb")]))
            .contains("`b` is listed in the manifest but missing"));
        assert!(err(manifest(vec![])).contains("`a` is in the archive but not in the manifest"));
        let mut more = manifest(vec![file("a", 3, "aa")]);
        more.folders.push("g".into());
        assert!(err(more).contains("folder `g` is listed in the manifest but missing"));
        let mut fewer = manifest(vec![file("a", 3, "aa")]);
        fewer.folders.clear();
        assert!(err(fewer).contains("folder `f` is in the archive but not in the manifest"));
        let mut newer = manifest(vec![file("a", 3, "aa")]);
        newer.snapshot_format = SNAPSHOT_FORMAT_VERSION + 1;
        assert!(err(newer).contains("unknown snapshot format version"));
        let mut newer = manifest(vec![file("a", 3, "aa")]);
        newer.store_format = STORE_FORMAT_VERSION + 1;
        assert!(err(newer).contains("unknown store format version"));
    }
}
