//! `CreateSnapshot`: the engine writes the archive on the blocking pool into a bounded channel
//! of chunks that tonic streams to the client; a client that goes away ends the copy at the
//! next chunk (and so releases the writes waiting on it).

use std::io::{self, Write};
use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;

use super::engine::Engine;
use super::pb;

/// Bytes per streamed chunk: well under any client's default 4 MiB message limit.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// The stream of a snapshot's chunks.
pub type SnapshotStream = tokio_stream::wrappers::ReceiverStream<Result<pb::SnapshotChunk, Status>>;

/// Sends what is written to it in chunks; fails once the receiver (the client) is gone or the
/// daemon stops.
struct ChunkWriter<'a> {
    tx: &'a mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
    engine: &'a Engine,
    buf: Vec<u8>,
}

impl ChunkWriter<'_> {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.engine.is_stopping() {
            return Err(io::Error::other("the daemon is stopping"));
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(pb::SnapshotChunk { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Starts writing a snapshot on the blocking pool and returns the stream of its chunks; an
/// error ends the stream with its status.
pub fn create(engine: Arc<Engine>) -> SnapshotStream {
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx: &tx,
            engine: &engine,
            buf: Vec::with_capacity(CHUNK_BYTES),
        };
        if let Err(e) = engine.snapshot(&mut out) {
            tracing::warn!(error = %e, "snapshot not completed");
            let _ = tx.blocking_send(Err(e.into()));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::config::Limits;
    use super::super::engine::Engine;
    use crate::index::{Index, IndexConfig};

    /// Holds the snapshot at its first write until released.
    struct Paused {
        started: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
        waited: bool,
        bytes: Vec<u8>,
    }

    impl Write for Paused {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if !self.waited {
                self.waited = true;
                self.started.send(()).unwrap();
                self.release.recv().unwrap();
            }
            self.bytes.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_wait_for_a_snapshot_and_reads_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        let engine = std::sync::Arc::new(Engine::new(index, Limits::default()));
        engine.create_collection("before").unwrap();
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let snapshot = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut out = Paused {
                    started: started_tx,
                    release: release_rx,
                    waited: false,
                    bytes: Vec::new(),
                };
                engine.snapshot(&mut out).unwrap()
            })
        };
        started.recv().unwrap();
        // Mid-copy: a write waits...
        let (wrote_tx, wrote) = mpsc::channel();
        let writer = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                engine.create_collection("during").unwrap();
                wrote_tx.send(()).unwrap();
            })
        };
        assert!(wrote.recv_timeout(Duration::from_millis(300)).is_err());
        // ...and reads go on, a writer waiting or not.
        let (read_tx, read) = mpsc::channel();
        let reader = {
            let engine = engine.clone();
            std::thread::spawn(move || read_tx.send(engine.collections().unwrap()).unwrap())
        };
        let names: Vec<String> = read
            .recv_timeout(Duration::from_secs(10))
            .expect("a read waited for the snapshot")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["before"]);
        release.send(()).unwrap();
        let manifest = snapshot.join().unwrap();
        wrote.recv_timeout(Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        reader.join().unwrap();
        assert!(manifest.files.iter().any(|f| f.path.starts_with("store/")));
        assert_eq!(engine.collections().unwrap().len(), 2);
    }
}
