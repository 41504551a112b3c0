//! `s3mem snapshot create|restore` and `s3mem verify`: copies of a data dir in one checked
//! archive (see [`crate::index::snapshot`]), from a running daemon or a data dir no daemon
//! holds, and the check of a data dir's invariants.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::args::{DataDirArgs, ServerArgs};
use crate::index::snapshot::{self, Manifest};
use crate::index::Index;

/// `s3mem snapshot`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write a consistent snapshot of a data dir (from the daemon with --server, or of a data
    /// dir no daemon holds with --data-dir) to one tar archive.
    Create(CreateArgs),
    /// Restore a snapshot into a new or empty folder, checking format versions and every
    /// file's sha256 first; a damaged snapshot is refused and writes nothing.
    Restore(RestoreArgs),
}

/// `s3mem snapshot create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The archive to write (replaced only once whole).
    pub out: PathBuf,
}

/// `s3mem snapshot restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot archive.
    pub snapshot: PathBuf,
    /// The data dir to create (must not exist or be empty).
    pub dir: PathBuf,
}

/// Runs `s3mem snapshot`.
pub fn run(cmd: SnapshotCommand) -> Result<()> {
    let t0 = Instant::now();
    match cmd {
        SnapshotCommand::Create(args) => {
            let manifest = match args.server.connect()? {
                Some(mut client) => {
                    client.snapshot(&args.out)?;
                    // The daemon's bytes crossed a network: check them as a restore will.
                    snapshot::verify_snapshot(&args.out).with_context(|| {
                        format!("checking the snapshot received in {}", args.out.display())
                    })?
                }
                None => snapshot::snapshot_data_dir(args.data.dir()?, &args.out)?,
            };
            report("snapshot", &manifest, &args.out, t0);
        }
        SnapshotCommand::Restore(args) => {
            let manifest = snapshot::restore_snapshot(&args.snapshot, &args.dir)?;
            report("restored", &manifest, &args.dir, t0);
        }
    }
    Ok(())
}

fn report(what: &str, manifest: &Manifest, path: &Path, t0: Instant) {
    eprintln!(
        "{what}: {} files, {} bytes (store format {}) {} in {:.2} s",
        manifest.files.len(),
        manifest.bytes(),
        manifest.store_format,
        path.display(),
        t0.elapsed().as_secs_f64()
    );
}

/// Runs `s3mem verify`: opens the data dir and checks every invariant between the store, the
/// packs, the vectors and BM25.
pub fn verify(args: &DataDirArgs) -> Result<()> {
    let dir = args.dir()?;
    let documents = Index::open_existing(dir)?
        .verify()
        .with_context(|| format!("verifying {}", dir.display()))?;
    println!("{documents} documents verified in {}", dir.display());
    Ok(())
}
