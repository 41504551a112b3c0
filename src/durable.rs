//! Durable file writes: the one routine every layer uses to put a file on disk so that a crash
//! leaves the old file or the whole new one, never a part (packs, SAE files, fetched models,
//! configuration).
//!
//! A write goes to a temporary file in the same directory (same filesystem, so the rename is
//! atomic), is synced, renamed over the target, and the directory is synced so the rename
//! itself survives a power loss. The layers wrap the plain `io::Error` with the path in their
//! own error enum.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes concurrent temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of every temporary file this module creates (`.NAME.tmp-PID-N`), so that a folder's
/// owner can recognise and remove leftovers of a crash.
pub const TEMP_MARKER: &str = ".tmp-";

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` atomically and durably from `fill`, which writes the content into the
/// temporary file (for content streamed from elsewhere, such as a download being hashed).
/// When `fill` fails, nothing is renamed and the temporary file is removed; its error is
/// returned. `fill` may refuse the content (for example a checksum mismatch) by returning an
/// error after writing it.
pub fn write_atomic_with<T>(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    let value = write_renamed(path, fill)?;
    sync_dir(&parent_dir(path))?;
    Ok(value)
}

/// Writes `bytes` to `path` atomically with its content synced, but not its directory: the new
/// name is durable only after the directory's next [`sync_dir`], which several files written
/// into one directory (a group of documents) share.
pub fn write_atomic_unsynced_dir(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_renamed(path, |f| f.write_all(bytes))
}

/// Writes `path` from `fill` under a temporary name, syncs it and renames it into place (the
/// directory not synced); on failure removes the temporary file.
fn write_renamed<T>(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<T>) -> io::Result<T> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}{TEMP_MARKER}{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let value = fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        Ok(value)
    })();
    if written.is_err() {
        // Best effort: the temporary file may not exist if creating it failed.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Makes a directory's entries (new files, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Returns whether `name` is a temporary file left by [`write_atomic`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new content").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new content");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write_atomic(&path, b"old").unwrap();
        let e = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err::<(), _>(io::Error::other("checksum mismatch"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        for entry in fs::read_dir(dir.path()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!is_temp_name(&name), "left behind: {name}");
        }
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
