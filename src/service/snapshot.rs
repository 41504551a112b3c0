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
