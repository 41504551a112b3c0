//! One immutable file per stored document in a folder beside the sled store: what posting packs
//! (`packs/{cid}-{doc}.pack`) and passage vectors (`vectors/{cid}-{doc}.vec`) share.
//!
//! Crash order, the same for every kind: a file is written with
//! [`crate::durable::write_atomic`] (a temporary name, synced, renamed, the folder synced)
//! before the sled batch that makes its document visible, and removed only after the batch that
//! deletes the document; opening the index removes files no document owns. The documents of a
//! group write their files with the folder unsynced and sync it once, before their batch.

use std::path::{Path, PathBuf};

use super::error::{IndexError, Result};
use crate::durable;

/// The folder of one kind of per-document file.
#[derive(Debug, Clone)]
pub struct DocFiles {
    dir: PathBuf,
    /// The file name's extension, without the dot.
    ext: &'static str,
}

impl DocFiles {
    /// Opens (creating) `dir`, whose files end in `.{ext}`.
    pub fn open(dir: &Path, ext: &'static str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        Ok(Self {
            dir: dir.into(),
            ext,
        })
    }

    /// Returns the folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the path of document `doc`'s file.
    pub fn path(&self, cid: u32, doc: u32) -> PathBuf {
        self.dir.join(format!("{cid}-{doc}.{}", self.ext))
    }

    /// Writes the file of document `doc` durably (temporary name, sync, rename, sync the folder).
    pub fn write(&self, cid: u32, doc: u32, bytes: &[u8]) -> Result<()> {
        let path = self.path(cid, doc);
        durable::write_atomic(&path, bytes).map_err(|e| IndexError::io(path, e))
    }

    /// Writes the file of document `doc` with its content synced but not the folder: it is
    /// durable after the next [`DocFiles::sync_folder`], which the files of a group share.
    pub fn write_unsynced_folder(&self, cid: u32, doc: u32, bytes: &[u8]) -> Result<()> {
        let path = self.path(cid, doc);
        durable::write_atomic_unsynced_dir(&path, bytes).map_err(|e| IndexError::io(path, e))
    }

    /// Makes the folder's entries durable (the names written by
    /// [`DocFiles::write_unsynced_folder`]).
    pub fn sync_folder(&self) -> Result<()> {
        durable::sync_dir(&self.dir).map_err(|e| IndexError::io(&self.dir, e))
    }

    /// Returns the bytes of document `doc`'s file; `None` when there is no file.
    pub fn read(&self, cid: u32, doc: u32) -> Result<Option<Vec<u8>>> {
        let path = self.path(cid, doc);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IndexError::io(&path, e)),
        }
    }

    /// Removes the file of document `doc` if it is there.
    pub fn remove(&self, cid: u32, doc: u32) -> Result<()> {
        let path = self.path(cid, doc);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IndexError::io(&path, e)),
        }
    }

    /// Lists the (cid, doc) of every finished file (a read: it changes nothing).
    pub fn list(&self) -> Result<Vec<(u32, u32)>> {
        let mut out = Vec::new();
        let suffix = format!(".{}", self.ext);
        for path in self.entries()? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if self.is_unfinished(name) {
                continue;
            }
            let parsed = name.strip_suffix(suffix.as_str()).and_then(|stem| {
                let (c, d) = stem.split_once('-')?;
                Some((c.parse().ok()?, d.parse().ok()?))
            });
            match parsed {
                Some(key) => out.push(key),
                None => tracing::warn!(path = %path.display(), "not a document file; left alone"),
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Removes the temporary files whose writing never finished.
    pub fn remove_unfinished(&self) -> Result<()> {
        for path in self.entries()? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if self.is_unfinished(name) {
                std::fs::remove_file(&path).map_err(|e| IndexError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Removes unfinished files and the files of documents `owned` says no record owns.
    pub fn remove_orphans(&self, owned: &mut dyn FnMut(u32, u32) -> Result<bool>) -> Result<()> {
        self.remove_unfinished()?;
        for (cid, doc) in self.list()? {
            if !owned(cid, doc)? {
                tracing::info!(cid, doc, ext = self.ext, "removing a file no document owns");
                self.remove(cid, doc)?;
            }
        }
        Ok(())
    }

    /// Returns the total bytes of the folder's files.
    pub fn bytes(&self) -> u64 {
        self.entries()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn entries(&self) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| IndexError::io(&self.dir, e))?;
        entries
            .map(|e| {
                e.map(|e| e.path())
                    .map_err(|e| IndexError::io(&self.dir, e))
            })
            .collect()
    }

    /// Returns whether a file of the folder is one whose writing never finished: a temporary
    /// file of [`durable::write_atomic`], or `*.{ext}.tmp` of builds before it.
    fn is_unfinished(&self, name: &str) -> bool {
        durable::is_temp_name(name)
            || name
                .strip_suffix(".tmp")
                .is_some_and(|n| n.ends_with(&format!(".{}", self.ext)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_listed_read_and_orphans_removed() {
        let dir = tempfile::tempdir().unwrap();
        let f = DocFiles::open(dir.path(), "vec").unwrap();
        f.write(1, 2, b"a").unwrap();
        f.write(1, 3, b"bc").unwrap();
        std::fs::write(dir.path().join("1-4.vec.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        assert_eq!(f.list().unwrap(), vec![(1, 2), (1, 3)]);
        assert_eq!(f.read(1, 3).unwrap().as_deref(), Some(&b"bc"[..]));
        assert_eq!(f.read(1, 9).unwrap(), None);
        f.remove_orphans(&mut |_, doc| Ok(doc == 2)).unwrap();
        assert_eq!(f.list().unwrap(), vec![(1, 2)]);
        assert!(!dir.path().join("1-4.vec.tmp").exists());
        // What is not a document file is left alone.
        assert!(dir.path().join("notes.txt").exists());
        f.remove(1, 2).unwrap();
        f.remove(1, 2).unwrap();
        assert!(f.list().unwrap().is_empty());
    }
}
