//! Ordered upgrade steps of the store format (see `migrations/README.md`).
//!
//! Each step upgrades from one version to the next; its writes and the new version go in one
//! atomic batch, so an interrupted upgrade resumes at the step that did not finish.

use super::error::{IndexError, Result};
use super::records::KEY_FORMAT;
use super::store::{Batch, KvStore};

/// The store format this build writes.
pub const STORE_FORMAT_VERSION: u32 = 2;
/// The oldest store format this build can upgrade.
pub const STORE_FORMAT_OLDEST_SUPPORTED: u32 = 1;

/// One upgrade step.
pub struct Step {
    /// The version it upgrades from; it writes `from + 1`.
    pub from: u32,
    /// What it changes, for logs.
    pub name: &'static str,
    /// Returns the writes that upgrade the store (applied with the version in one batch).
    pub run: fn(&dyn KvStore) -> Result<Batch>,
}

/// The steps in order.
pub const STEPS: &[Step] = &[Step {
    from: 1,
    name: "coarse block counts for collection-wide retrieval",
    run: super::coarse::migrate_v1,
}];

/// Returns the format version a store records, or `None` for a store never written.
pub fn stored_version(store: &dyn KvStore) -> Result<Option<u32>> {
    match store.get(KEY_FORMAT)? {
        None => Ok(None),
        Some(v) => match <[u8; 4]>::try_from(v.as_slice()) {
            Ok(b) => Ok(Some(u32::from_be_bytes(b))),
            Err(_) => Err(IndexError::corrupt("m/format", "not a u32")),
        },
    }
}

/// Returns the batch write that records `version`.
pub fn version_write(batch: &mut Batch, version: u32) {
    batch.put(KEY_FORMAT.to_vec(), version.to_be_bytes().to_vec());
}

/// Brings a store at `found` up to `target` with `steps`, one batch each.
pub fn upgrade(store: &dyn KvStore, found: u32, target: u32, steps: &[Step]) -> Result<u32> {
    let mut version = found;
    while version < target {
        let step = steps.iter().find(|s| s.from == version).ok_or_else(|| {
            IndexError::corrupt(
                "m/format",
                format!("no upgrade step from store format {version}"),
            )
        })?;
        let mut batch = (step.run)(store)?;
        version_write(&mut batch, version + 1);
        store.apply(batch)?;
        store.flush()?;
        tracing::info!(
            from = version,
            to = version + 1,
            step = step.name,
            "store upgraded"
        );
        version += 1;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::store::SledStore;

    fn rename_v0(store: &dyn KvStore) -> Result<Batch> {
        let mut b = Batch::default();
        if let Some(v) = store.get(b"old")? {
            b.delete(b"old".to_vec());
            b.put(b"new".to_vec(), v);
        }
        Ok(b)
    }

    #[test]
    fn steps_run_in_order_and_write_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(b"old".to_vec(), b"x".to_vec());
        version_write(&mut b, 0);
        s.apply(b).unwrap();
        let steps = [Step {
            from: 0,
            name: "rename old to new",
            run: rename_v0,
        }];
        assert_eq!(upgrade(&s, 0, 1, &steps).unwrap(), 1);
        assert_eq!(stored_version(&s).unwrap(), Some(1));
        assert_eq!(s.get(b"new").unwrap().as_deref(), Some(&b"x"[..]));
        assert!(upgrade(&s, 1, 2, &[]).is_err());
    }
}
