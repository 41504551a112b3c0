//! The bounded-memory streaming scan: a document is read once, one window at a time.
//!
//! A window is `[sink tokens of the document] + [last tokens of the previous chunk] + [chunk]`,
//! at positions local to the window. Only the chunk's own projections come out; nothing but
//! token IDs crosses windows, so memory is bounded by the window, never by the document.

use std::ops::Range;
use std::time::Instant;

use candle_core::IndexOp;

use super::error::{ModelError, Result};
use super::transformer::{LayerTap, TapRequest, Transformer};
use super::Model;

/// Window geometry of the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanConfig {
    /// Tokens indexed per window (C).
    pub chunk: usize,
    /// Opening tokens of the document put before every later window (S).
    pub sinks: usize,
    /// Tokens of the previous chunk put before the chunk (W).
    pub overlap: usize,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            chunk: 512,
            sinks: 4,
            overlap: 64,
        }
    }
}

impl ScanConfig {
    /// Checks the geometry against a model context.
    pub fn check(&self, context: usize) -> Result<()> {
        if self.chunk == 0 {
            return Err(ModelError::InvalidScan(
                "chunk must be at least 1 token".into(),
            ));
        }
        let window = self
            .chunk
            .checked_add(self.sinks)
            .and_then(|w| w.checked_add(self.overlap));
        match window {
            Some(w) if w <= context => {}
            Some(w) => {
                return Err(ModelError::InvalidScan(format!(
                    "a window of {w} tokens (chunk {} + sinks {} + overlap {}) exceeds the model context of {context}",
                    self.chunk, self.sinks, self.overlap
                )))
            }
            None => {
                return Err(ModelError::InvalidScan(format!(
                    "chunk {} + sinks {} + overlap {} tokens overflows; the model context is {context}",
                    self.chunk, self.sinks, self.overlap
                )))
            }
        }
        Ok(())
    }

    /// Returns the windows that cover a document of `len` tokens, in order.
    pub fn windows(&self, len: usize) -> impl Iterator<Item = WindowPlan> + '_ {
        (0..len).step_by(self.chunk.max(1)).map(move |start| {
            let chunk = start..(start + self.chunk).min(len);
            let sinks = 0..self.sinks.min(start);
            let overlap = start.saturating_sub(self.overlap).max(sinks.end)..start;
            WindowPlan {
                sinks,
                overlap,
                chunk,
            }
        })
    }
}

/// Which document tokens one window holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    pub sinks: Range<usize>,
    pub overlap: Range<usize>,
    pub chunk: Range<usize>,
}

impl WindowPlan {
    /// Returns the window's token IDs in order.
    pub fn tokens(&self, doc: &[u32]) -> Vec<u32> {
        [&self.sinks, &self.overlap, &self.chunk]
            .into_iter()
            .flat_map(|r| doc[r.clone()].iter().copied())
            .collect()
    }

    /// Returns where the chunk starts inside the window.
    pub fn chunk_offset(&self) -> usize {
        self.sinks.len() + self.overlap.len()
    }

    /// Returns the window length in tokens.
    pub fn len(&self) -> usize {
        self.chunk_offset() + self.chunk.len()
    }

    /// Returns whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Projections of one chunk's own tokens.
#[derive(Debug)]
pub struct ChunkTaps {
    /// The chunk's token range in the document.
    pub chunk: Range<usize>,
    /// `[chunk tokens, kv_heads, head_dim]` per tapped layer.
    pub keys: Vec<LayerTap>,
    /// `[chunk tokens, heads, head_dim]` per tapped layer.
    pub queries: Vec<LayerTap>,
}

/// Totals of one scan.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScanStats {
    /// Document tokens scanned (each once).
    pub tokens: usize,
    /// Windows run.
    pub windows: usize,
    /// Tokens the model ran, context included.
    pub window_tokens: usize,
    /// Forward passes (batches of windows) run.
    pub batches: usize,
    /// Padding tokens run to give the windows of a batch one length.
    pub padding_tokens: usize,
    /// Seconds spent in the model (forward passes and taps back to the host).
    pub model_seconds: f64,
}

/// Where a scan leaves the taps it hands to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TapPlace {
    /// On the host, f32 (what every caller that reads values gets).
    #[default]
    Host,
    /// On the model's device, f32, for callers that compute there (SAE encoding on a GPU);
    /// the same as `Host` for a model on the CPU.
    Device,
}

/// One window of one document, waiting for its batch.
struct Job {
    doc: usize,
    plan: WindowPlan,
}

/// Batches of scanned chunks in flight between the model thread and the caller: one being
/// handed over while the next is computed.
const BATCHES_IN_FLIGHT: usize = 1;

impl Model {
    /// Scans a tokenized document, calling `on_chunk` with each chunk's projections in order.
    pub fn scan(
        &self,
        doc: &[u32],
        taps: &TapRequest,
        config: &ScanConfig,
        on_chunk: &mut dyn FnMut(ChunkTaps) -> Result<()>,
    ) -> Result<ScanStats> {
        self.scan_many(&[doc], taps, config, &mut |_, chunk| on_chunk(chunk))
    }

    /// Scans several documents, calling `on_chunk(document index, chunk)` for each chunk in
    /// order, [`Model::scan_batch`] windows at a time (see [`scan_document_batches`]).
    pub fn scan_many(
        &self,
        docs: &[&[u32]],
        taps: &TapRequest,
        config: &ScanConfig,
        on_chunk: &mut dyn FnMut(usize, ChunkTaps) -> Result<()>,
    ) -> Result<ScanStats> {
        self.scan_many_to(docs, taps, config, TapPlace::Host, on_chunk)
    }

    /// Scans several documents like [`Model::scan_many_to`], handing the chunks over a batch at
    /// a time: `on_batch` gets each forward pass's (document index, chunk) pairs in order, so
    /// that it can work on all of them at once (one SAE pass per layer instead of one per
    /// chunk).
    pub fn scan_batches_to(
        &self,
        docs: &[&[u32]],
        taps: &TapRequest,
        config: &ScanConfig,
        place: TapPlace,
        on_batch: &mut dyn FnMut(Vec<(usize, ChunkTaps)>) -> Result<()>,
    ) -> Result<ScanStats> {
        scan_document_batches(
            self.transformer(),
            self.scan_batch(),
            docs,
            taps,
            config,
            place,
            on_batch,
        )
    }

    /// Scans several documents like [`Model::scan_many`], leaving the taps at `place`.
    pub fn scan_many_to(
        &self,
        docs: &[&[u32]],
        taps: &TapRequest,
        config: &ScanConfig,
        place: TapPlace,
        on_chunk: &mut dyn FnMut(usize, ChunkTaps) -> Result<()>,
    ) -> Result<ScanStats> {
        self.scan_batches_to(docs, taps, config, place, &mut per_chunk(on_chunk))
    }
}

/// Hands a batch's chunks to `on_chunk(document index, chunk)` one by one, in order: a caller
/// of [`scan_document_batches`] that works chunk by chunk.
pub fn per_chunk<'a>(
    on_chunk: &'a mut dyn FnMut(usize, ChunkTaps) -> Result<()>,
) -> impl FnMut(Vec<(usize, ChunkTaps)>) -> Result<()> + 'a {
    move |chunks| {
        chunks
            .into_iter()
            .try_for_each(|(doc, chunk)| on_chunk(doc, chunk))
    }
}

/// Scans several documents with `transformer`, calling `on_batch` with each forward pass's
/// (document index, chunk) pairs, in order. Windows go through the model `batch` at a time,
/// consecutive windows of one document and of the next sharing a batch, so device memory is
/// bounded by the batch, never by the documents. The model runs on a thread of its own while
/// the caller's `on_batch` (SAE encoding, postings) handles the previous batch. The taps are
/// left at `place`.
pub fn scan_document_batches(
    transformer: &Transformer,
    batch: usize,
    docs: &[&[u32]],
    taps: &TapRequest,
    config: &ScanConfig,
    place: TapPlace,
    on_batch: &mut dyn FnMut(Vec<(usize, ChunkTaps)>) -> Result<()>,
) -> Result<ScanStats> {
    config.check(transformer.config().context)?;
    let batch = batch.max(1);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(BATCHES_IN_FLIGHT);
        // Named so that a profile of the host threads tells the model's thread apart.
        let producer = std::thread::Builder::new()
            .name("scan-model".into())
            .spawn_scoped(scope, move || -> Result<ScanStats> {
                let mut stats = ScanStats::default();
                let mut jobs = docs.iter().enumerate().flat_map(|(doc, tokens)| {
                    config
                        .windows(tokens.len())
                        .map(move |plan| Job { doc, plan })
                });
                loop {
                    let group: Vec<Job> = jobs.by_ref().take(batch).collect();
                    if group.is_empty() {
                        return Ok(stats);
                    }
                    let chunks = scan_batch(transformer, docs, &group, taps, place, &mut stats)?;
                    if tx.send(chunks).is_err() {
                        // The caller stopped (its `on_batch` failed): stop too.
                        return Ok(stats);
                    }
                }
            })
            .map_err(|e| ModelError::InvalidScan(format!("cannot start the scan's thread: {e}")))?;
        let mut failed = None;
        for chunks in rx {
            if let Err(e) = on_batch(chunks) {
                failed = Some(e);
                break;
            }
        }
        // Dropping the receiver (the loop ended) lets a producer blocked on a send stop.
        let stats = match producer.join() {
            Ok(stats) => stats,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match failed {
            Some(e) => Err(e),
            None => stats,
        }
    })
}

/// Runs one batch of windows and cuts each window's chunk out of the taps.
fn scan_batch(
    transformer: &Transformer,
    docs: &[&[u32]],
    group: &[Job],
    taps: &TapRequest,
    place: TapPlace,
    stats: &mut ScanStats,
) -> Result<Vec<(usize, ChunkTaps)>> {
    let t0 = Instant::now();
    let windows: Vec<Vec<u32>> = group.iter().map(|j| j.plan.tokens(docs[j.doc])).collect();
    let slices: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let out = match place {
        TapPlace::Host => transformer.forward_windows(&slices, taps)?,
        TapPlace::Device => transformer.forward_windows_on_device(&slices, taps)?,
    };
    let longest = slices.iter().map(|w| w.len()).max().unwrap_or(0);
    let mut chunks = Vec::with_capacity(group.len());
    for (i, job) in group.iter().enumerate() {
        let (skip, len) = (job.plan.chunk_offset(), job.plan.chunk.len());
        let own = |t: &LayerTap| -> Result<LayerTap> {
            Ok(LayerTap {
                layer: t.layer,
                values: t.values.i((i, skip..skip + len))?.contiguous()?,
            })
        };
        chunks.push((
            job.doc,
            ChunkTaps {
                chunk: job.plan.chunk.clone(),
                keys: out.keys.iter().map(own).collect::<Result<_>>()?,
                queries: out.queries.iter().map(own).collect::<Result<_>>()?,
            },
        ));
        stats.windows += 1;
        stats.window_tokens += windows[i].len();
        stats.padding_tokens += longest - windows[i].len();
        stats.tokens += len;
    }
    if place == TapPlace::Device {
        // Device work is queued, not done: wait for it so that the model's seconds are its own
        // and not charged to the caller's first read of the taps.
        transformer.device().synchronize()?;
    }
    stats.batches += 1;
    stats.model_seconds += t0.elapsed().as_secs_f64();
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_each_token_once_with_bounded_context() {
        let cfg = ScanConfig {
            chunk: 10,
            sinks: 3,
            overlap: 4,
        };
        let plans: Vec<_> = cfg.windows(35).collect();
        assert_eq!(plans.len(), 4);
        let covered: Vec<usize> = plans.iter().flat_map(|p| p.chunk.clone()).collect();
        assert_eq!(covered, (0..35).collect::<Vec<_>>());
        assert_eq!(plans[0].chunk_offset(), 0);
        assert_eq!(plans[1].sinks, 0..3);
        assert_eq!(plans[1].overlap, 6..10);
        assert_eq!(plans[3].chunk, 30..35);
        assert!(plans.iter().all(|p| p.len() <= 17));
    }

    #[test]
    fn overlap_never_repeats_sink_tokens() {
        let cfg = ScanConfig {
            chunk: 5,
            sinks: 4,
            overlap: 64,
        };
        let plans: Vec<_> = cfg.windows(12).collect();
        assert_eq!(plans[1].sinks, 0..4);
        assert_eq!(plans[1].overlap, 4..5);
        let doc: Vec<u32> = (0..12).collect();
        assert_eq!(plans[2].tokens(&doc), (0..12).collect::<Vec<u32>>());
    }

    #[test]
    fn window_longer_than_context_is_refused() {
        let cfg = ScanConfig::default();
        assert!(cfg.check(8192).is_ok());
        assert!(matches!(cfg.check(512), Err(ModelError::InvalidScan(_))));
        let zero = ScanConfig { chunk: 0, ..cfg };
        assert!(zero.check(8192).is_err());
        // A chunk that overflows the window's sum is refused, not wrapped into a small one.
        let huge = ScanConfig {
            chunk: usize::MAX - 3,
            ..cfg
        };
        let e = huge.check(8192).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
    }
}
