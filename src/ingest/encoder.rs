//! Where a feature ID becomes a posting: tokenize -> streaming scan -> SAE encode per layer and
//! KV head -> per (layer, feature) lists of document-local token positions.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use candle_core::IndexOp;

use super::error::{IngestError, Result};
use crate::embed::Embedder;
use crate::index::{EncodedDocument, LayerFeature, StoreIdentity};
use crate::model::{
    ChunkTaps, LayerSet, LayerTap, Model, ModelError, ScanConfig, TapPlace, TapRequest, Tokenized,
};
use crate::sae::{HeadMode, SaeError, SaeSet, SparseCodes};

/// Per indexed layer: whether its SAE is shared by the KV heads, and its dictionary size.
///
/// The KV heads of a layer share one posting space: a shared SAE's feature `f` is posting
/// feature `f`; per-head SAEs get disjoint ranges, head `h`'s feature `f` being
/// `h * dict_size + f`. Queries use the same mapping with their KV group as the head.
#[derive(Debug, Clone, Copy)]
pub struct LayerCode {
    /// The model layer.
    pub layer: usize,
    /// Whether one SAE serves every KV head.
    pub shared: bool,
    /// Features per SAE.
    pub dict_size: usize,
}

impl LayerCode {
    /// Returns how many posting features the layer has in a model of `kv_heads` KV heads.
    pub fn span(&self, kv_heads: usize) -> usize {
        if self.shared {
            self.dict_size
        } else {
            self.dict_size * kv_heads
        }
    }

    /// Returns the posting feature of SAE feature `f` of KV head `head`.
    pub fn posting_feature(&self, head: usize, f: u32) -> u32 {
        if self.shared {
            f
        } else {
            (head * self.dict_size) as u32 + f
        }
    }
}

/// Returns the layer codes of an SAE set for a model with `kv_heads` KV heads.
pub fn layer_codes(saes: &SaeSet, kv_heads: usize) -> Result<Vec<LayerCode>> {
    let mut layers = Vec::new();
    for layer in saes.layers() {
        let metas: Vec<_> = saes.metas().filter(|m| m.layer == layer).collect();
        let shared = metas.iter().any(|m| m.head == HeadMode::Shared);
        let dict_size = metas.iter().map(|m| m.dict_size).max().unwrap_or(0);
        let code = LayerCode {
            layer,
            shared,
            dict_size,
        };
        let span = code.span(kv_heads);
        if layer > 255 || span > 1 << 24 {
            return Err(IngestError::InvalidInput(format!(
                "layer {layer} with {span} features does not fit the posting key (layers < 256, features < 2^24)"
            )));
        }
        layers.push(code);
    }
    Ok(layers)
}

/// Chunks of codes a layer's gathering thread may have waiting (each about 200 KB for a
/// 512-token chunk of SmolLM2), counted in the scan's batches (at least 2; 8 at a GPU's
/// default batch of 8, as run 19 measured): the scan waits rather than holding more.
const GATHER_CHUNKS: usize = 64;

/// What the encoding thread hands a layer's gathering thread.
enum ToGather {
    /// The codes of a scan batch's chunks, one [`ChunkRows`] each.
    Batch {
        codes: LayerCodes,
        parts: Vec<ChunkRows>,
    },
    /// Documents up to `doc` (inclusive) are encoded: send their lists back.
    End { doc: usize },
}

/// Which rows of a batch's codes are one chunk, and where they are in its document.
#[derive(Debug, Clone)]
struct ChunkRows {
    doc: usize,
    /// The chunk's first token's document position.
    first: usize,
    /// The chunk's rows in the batch's codes.
    rows: Range<usize>,
}

impl ChunkRows {
    /// Lays out the chunks of a scan batch one after another, as their keys are joined.
    fn of_batch(chunks: &[(usize, ChunkTaps)]) -> Vec<Self> {
        let mut next = 0;
        chunks
            .iter()
            .map(|(doc, c)| {
                let rows = next..next + c.chunk.len();
                next = rows.end;
                Self {
                    doc: *doc,
                    first: c.chunk.start,
                    rows,
                }
            })
            .collect()
    }
}

/// A layer's lists of one document, from its gathering thread.
struct Gathered {
    doc: usize,
    layer: u16,
    /// Positions per posting feature of the layer (empty when the document had no windows).
    lists: Vec<Vec<u32>>,
}

/// Gathers one layer's postings: one list per posting feature of the layer, found by index,
/// per document until its end. A tree map searched per fired feature cost about 100 million
/// searches for 727k tokens of SmolLM2, most of a GPU ingest's host time once the top-k ran
/// on the device; lists by index, one thread per layer beside the thread that encodes (and
/// beside the scan), keep that work off the scan's way. Returns the first feature outside the
/// layer's span.
fn gather_layer(
    code: LayerCode,
    span: usize,
    chunks: std::sync::mpsc::Receiver<ToGather>,
    back: std::sync::mpsc::Sender<Gathered>,
) -> Result<()> {
    let layer = code.layer as u16;
    let mut open: BTreeMap<usize, Vec<Vec<u32>>> = BTreeMap::new();
    let mut ended = 0usize;
    for message in chunks {
        match message {
            ToGather::Batch { codes, parts } => {
                for part in parts {
                    let lists = open
                        .entry(part.doc)
                        .or_insert_with(|| vec![Vec::new(); span]);
                    let mut outside = None;
                    codes.for_each_fired(part.rows, part.first, &mut |pos, f| {
                        match lists.get_mut(f as usize) {
                            Some(list) => {
                                // KV heads of a layer share the posting space: one entry per
                                // token.
                                if list.last() != Some(&pos) {
                                    list.push(pos);
                                }
                            }
                            None => outside = Some(f),
                        }
                    });
                    if let Some(f) = outside {
                        return Err(IngestError::InvalidInput(format!(
                            "feature {f} of layer {layer} is outside the SAE set's dictionary"
                        )));
                    }
                }
            }
            ToGather::End { doc } => {
                for d in ended..=doc {
                    let lists = open.remove(&d).unwrap_or_default();
                    if back
                        .send(Gathered {
                            doc: d,
                            layer,
                            lists,
                        })
                        .is_err()
                    {
                        // The encoding thread stopped: nothing waits for these.
                        return Ok(());
                    }
                }
                ended = ended.max(doc + 1);
            }
        }
    }
    Ok(())
}

/// A tapped layer's SAE codes: per KV head, or every head's rows interleaved when the layer's
/// SAE is shared.
pub struct LayerCodes {
    code: LayerCode,
    heads: usize,
    rows: usize,
    /// (KV head, its codes) for each head with an SAE (a set trained for retrieval heads has
    /// SAEs for their KV heads only); one entry, all heads interleaved, when shared.
    per_head: Vec<(usize, SparseCodes)>,
}

impl LayerCodes {
    /// Calls `fired(position, posting feature)` for every activation of `rows` that fired,
    /// token by token, then head by head; row `rows.start` is document position `first`.
    fn for_each_fired(&self, rows: Range<usize>, first: usize, fired: &mut dyn FnMut(u32, u32)) {
        let mut emit = |pos: u32, h: usize, (ids, acts): (&[u32], &[f32])| {
            for (&f, &a) in ids.iter().zip(acts) {
                // A zero activation is a slot that did not fire.
                if a > 0.0 {
                    fired(pos, self.code.posting_feature(h, f));
                }
            }
        };
        for t in rows.start..rows.end.min(self.rows) {
            let pos = (first + t - rows.start) as u32;
            if self.code.shared {
                let codes = &self.per_head[0].1;
                for h in 0..self.heads {
                    emit(pos, h, codes.row(t * self.heads + h).unwrap_or((&[], &[])));
                }
            } else {
                for (h, codes) in &self.per_head {
                    emit(pos, *h, codes.row(t).unwrap_or((&[], &[])));
                }
            }
        }
    }
}

/// Encodes one tapped layer's keys (`[tokens, kv_heads, d]`) with the SAE of each KV head.
/// The layer must be one of `codes` (a layer the SAE set does not index is refused).
fn code_layer(saes: &SaeSet, codes: &[LayerCode], tap: &LayerTap) -> Result<LayerCodes> {
    let Some(&code) = codes.iter().find(|c| c.layer == tap.layer) else {
        return Err(SaeError::NotFound {
            layer: tap.layer,
            kv_head: 0,
        }
        .into());
    };
    let values = &tap.values;
    let (n, heads, d) = values.dims3()?;
    let per_head: Vec<(usize, SparseCodes)> = if code.shared {
        let sae = saes.sae_for(code.layer, 0)?;
        vec![(0, sae.encode(&values.reshape((n * heads, d))?)?)]
    } else {
        // A KV head without an SAE (a set for retrieval heads) is not indexed.
        (0..heads)
            .filter_map(|h| saes.sae_for(code.layer, h).ok().map(|sae| (h, sae)))
            .map(|(h, sae)| Ok((h, sae.encode(&values.i((.., h, ..))?.contiguous()?)?)))
            .collect::<Result<_>>()?
    };
    Ok(LayerCodes {
        code,
        heads,
        rows: n,
        per_head,
    })
}

/// Encodes one tapped layer's keys (`[tokens, kv_heads, d]`, the chunk's first token at
/// document position `first`) with the SAE of each KV head, and calls `fired(position,
/// (layer, posting feature))` for every activation that fired, token by token, then head by
/// head.
///
/// The layer must be one of `codes` (a layer the SAE set does not index is refused).
pub fn encode_layer(
    saes: &SaeSet,
    codes: &[LayerCode],
    tap: &LayerTap,
    first: usize,
    fired: &mut dyn FnMut(u32, LayerFeature),
) -> Result<()> {
    let coded = code_layer(saes, codes, tap)?;
    let layer = coded.code.layer as u16;
    coded.for_each_fired(0..coded.rows, first, &mut |pos, f| {
        fired(pos, LayerFeature::new(layer, f))
    });
    Ok(())
}

/// Turns documents into postings with one model, one SAE set and one scan geometry.
pub struct Encoder<'a> {
    model: &'a Model,
    saes: &'a SaeSet,
    scan: ScanConfig,
    layers: Vec<LayerCode>,
    identity: StoreIdentity,
    embedder: Option<&'a Embedder>,
}

impl<'a> Encoder<'a> {
    /// Returns an encoder for the layers of `saes`, checked against `model` and `scan`.
    pub fn new(model: &'a Model, saes: &'a SaeSet, scan: ScanConfig) -> Result<Self> {
        let mc = model.config();
        scan.check(mc.context)?;
        let layers = layer_codes(saes, mc.kv_heads)?;
        let set = LayerSet::new(layers.iter().map(|l| l.layer).collect())?;
        set.check(mc)?;
        // What the index records and refuses to mix: a store holds one encoding only.
        let identity = StoreIdentity {
            model_fingerprint: model.fingerprint()?.to_string(),
            sae_digest: saes.digest().to_string(),
            layers: set.layers().iter().map(|&l| l as u32).collect(),
            chunk: scan.chunk as u32,
            sinks: scan.sinks as u32,
            overlap: scan.overlap as u32,
        };
        Ok(Self {
            model,
            saes,
            scan,
            layers,
            identity,
            embedder: None,
        })
    }

    /// Returns this encoder with `embedder` embedding each document's passages (the dense
    /// methods' vectors), or without one when `None`.
    pub fn with_embedder(self, embedder: Option<&'a Embedder>) -> Self {
        Self { embedder, ..self }
    }

    /// Returns the embedding model, when there is one.
    pub fn embedder(&self) -> Option<&'a Embedder> {
        self.embedder
    }

    /// Returns what a store built by this encoder records.
    pub fn identity(&self) -> &StoreIdentity {
        &self.identity
    }

    /// Returns the model.
    pub fn model(&self) -> &Model {
        self.model
    }

    /// Tokenizes `text` (char offsets only, no scan).
    pub fn tokenize(&self, text: &str) -> Result<Tokenized> {
        Ok(self.model.tokenizer().encode(text)?)
    }

    /// Scans and encodes a tokenized document; `progress` gets the tokens done so far.
    pub fn encode(
        &self,
        tokens: Tokenized,
        progress: &mut dyn FnMut(usize),
    ) -> Result<EncodedDocument> {
        self.encode_until(tokens, &mut |done| {
            progress(done);
            true
        })
    }

    /// Scans and encodes a tokenized document like [`Encoder::encode`]; `progress` returns
    /// false to stop the scan after the current scan batch, whose chunks are encoded first
    /// ([`ModelError::Aborted`]).
    pub fn encode_until(
        &self,
        tokens: Tokenized,
        progress: &mut dyn FnMut(usize) -> bool,
    ) -> Result<EncodedDocument> {
        let mut docs = self.encode_many(vec![tokens], progress)?;
        Ok(docs.remove(0))
    }

    /// Scans and encodes several tokenized documents in one scan, so that windows of one
    /// document and the next share the model's batches (`--scan-batch`, 8 on a GPU).
    /// `progress` gets the tokens done so far over all of them and returns false to stop.
    pub fn encode_many(
        &self,
        docs: Vec<Tokenized>,
        progress: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<EncodedDocument>> {
        let tokens: Vec<usize> = docs.iter().map(|d| d.ids.len()).collect();
        let mut out = Vec::with_capacity(docs.len());
        let model_seconds = self.encode_each(docs, progress, &mut |_, e| {
            out.push(e);
            Ok(())
        })?;
        for (d, share) in out.iter_mut().zip(scan_shares(&tokens, model_seconds)) {
            d.scan_seconds = share;
        }
        Ok(out)
    }

    /// Scans and encodes documents like [`Encoder::encode_many`], handing each to `done(index,
    /// document)` in order as soon as its last window is encoded, while the scan goes on with
    /// the next ones; an error from `done` stops the scan and is returned. Returns the model's
    /// seconds over all documents (a handed document's `scan_seconds` is 0: its share is only
    /// known at the end, see [`scan_shares`]).
    pub fn encode_each(
        &self,
        docs: Vec<Tokenized>,
        progress: &mut dyn FnMut(usize) -> bool,
        done: &mut dyn FnMut(usize, EncodedDocument) -> Result<()>,
    ) -> Result<f64> {
        let taps = TapRequest {
            keys: Some(LayerSet::new(
                self.layers.iter().map(|l| l.layer).collect(),
            )?),
            queries: None,
        };
        let (ids, offsets): (Vec<Vec<u32>>, Vec<_>) =
            docs.into_iter().map(|d| (d.ids, d.offsets)).unzip();
        // Tokens of the documents before each one, for progress over all of them.
        let before: Vec<usize> = ids
            .iter()
            .scan(0, |sum, d| {
                let b = *sum;
                *sum += d.len();
                Some(b)
            })
            .collect();
        let slices: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let kv_heads = self.model.config().kv_heads;
        let layer_of: BTreeMap<usize, usize> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.layer, i))
            .collect();
        // This thread encodes (on a GPU: launches the SAEs and takes their codes back) while
        // a thread per indexed layer gathers the codes into postings.
        std::thread::scope(|scope| -> Result<f64> {
            let (back_tx, back) = std::sync::mpsc::channel::<Gathered>();
            let mut to_layers = Vec::with_capacity(self.layers.len());
            let mut gatherers = Vec::with_capacity(self.layers.len());
            for &code in &self.layers {
                let batches = (GATHER_CHUNKS / self.model.scan_batch()).max(2);
                let (tx, rx) = std::sync::mpsc::sync_channel::<ToGather>(batches);
                let back_tx = back_tx.clone();
                let span = code.span(kv_heads);
                gatherers.push(scope.spawn(move || gather_layer(code, span, rx, back_tx)));
                to_layers.push(tx);
            }
            drop(back_tx);
            let mut pending = Pending {
                layers: self.layers.len(),
                arrived: vec![Vec::new(); ids.len()],
                postings: vec![BTreeMap::new(); ids.len()],
                encode_seconds: vec![0.0; ids.len()],
                offsets,
                next: 0,
            };
            // Whether a layer's gathering thread went away (it returns why when joined).
            let mut gather_stopped = false;
            let mut failure: Option<IngestError> = None;
            let stats = self.model.scan_batches_to(
                &slices,
                &taps,
                &self.scan,
                // Keys stay where the model ran: on a GPU the SAEs encode them there and only
                // the codes cross to the host.
                TapPlace::Device,
                &mut |chunks| {
                    let t0 = Instant::now();
                    // One SAE pass per layer and head over the whole batch (on a GPU: a few
                    // large kernels and one copy back instead of those of each chunk).
                    let parts = ChunkRows::of_batch(&chunks);
                    let Some((_, lead)) = chunks.first() else {
                        return Ok(());
                    };
                    for (li, first) in lead.keys.iter().enumerate() {
                        let code = self.layers[layer_of[&first.layer]];
                        let rows_per_token = if code.shared { kv_heads } else { 1 };
                        let sent = join_layer(&chunks, li, first.layer)
                            .and_then(|tap| code_layer(self.saes, &self.layers, &tap))
                            .map_err(|e| locate_refusal(e, &parts, code.layer, rows_per_token))
                            .map(|codes| {
                                let to = &to_layers[layer_of[&first.layer]];
                                let parts = parts.clone();
                                to.send(ToGather::Batch { codes, parts }).is_ok()
                            });
                        match sent {
                            Ok(true) => {}
                            Ok(false) => {
                                gather_stopped = true;
                                return Err(ModelError::Aborted);
                            }
                            Err(e) => {
                                failure = Some(e);
                                return Err(ModelError::InvalidScan("sae encoding failed".into()));
                            }
                        }
                    }
                    let ended = chunks
                        .iter()
                        .filter(|(doc, c)| c.chunk.end == slices[*doc].len());
                    for (doc, _) in ended {
                        if to_layers
                            .iter()
                            .any(|to| to.send(ToGather::End { doc: *doc }).is_err())
                        {
                            gather_stopped = true;
                            return Err(ModelError::Aborted);
                        }
                    }
                    // The batch's seconds, shared by its chunks' rows.
                    let seconds = t0.elapsed().as_secs_f64();
                    let rows = parts.last().map_or(0, |p| p.rows.end).max(1) as f64;
                    for p in &parts {
                        pending.encode_seconds[p.doc] += seconds * p.rows.len() as f64 / rows;
                    }
                    // Hand over the documents whose every layer came back.
                    let handed = back.try_iter().try_for_each(|g| pending.arrive(g, done));
                    if let Err(e) = handed {
                        failure = Some(e);
                        return Err(ModelError::Aborted);
                    }
                    for (doc, c) in &chunks {
                        if !progress(before[*doc] + c.chunk.end) {
                            return Err(ModelError::Aborted);
                        }
                    }
                    Ok(())
                },
            );
            // Documents without windows (no tokens) end here too; then the gatherers finish.
            if failure.is_none() && !gather_stopped && stats.is_ok() && !slices.is_empty() {
                let last = slices.len() - 1;
                gather_stopped = to_layers
                    .iter()
                    .any(|to| to.send(ToGather::End { doc: last }).is_err());
            }
            drop(to_layers);
            let mut gathered = Ok(());
            for g in gatherers {
                let r = g.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                gathered = gathered.and(r);
            }
            // A gatherer's error explains a stopped scan better than the scan's.
            gathered?;
            if let Some(e) = failure {
                return Err(e);
            }
            if gather_stopped {
                return Err(IngestError::InvalidInput(
                    "a layer's gathering thread stopped".into(),
                ));
            }
            let stats = stats?;
            for g in back.try_iter() {
                pending.arrive(g, done)?;
            }
            // Without indexed layers every document is whole as it is.
            pending.hand_over(done)?;
            Ok(stats.model_seconds)
        })
    }
}

/// Names the document and position of a key the SAEs refused as non-finite: the SAE counts
/// rows of the whole batch, `rows_per_token` of them per token (a shared SAE's KV heads).
fn locate_refusal(
    e: IngestError,
    parts: &[ChunkRows],
    layer: usize,
    rows_per_token: usize,
) -> IngestError {
    let IngestError::Sae(SaeError::NonFinite { row, .. }) = &e else {
        return e;
    };
    let t = row / rows_per_token.max(1);
    match parts.iter().find(|p| p.rows.contains(&t)) {
        Some(p) => IngestError::InvalidInput(format!(
            "the key of layer {layer} at token {} of the call's document {} (from 0) holds a \
             non-finite value",
            p.first + t - p.rows.start,
            p.doc
        )),
        None => e,
    }
}

/// Joins the keys of tapped layer `li` (model layer `layer`) of a batch's chunks, one chunk's
/// rows after another (as [`ChunkRows::of_batch`] lays them out).
fn join_layer(chunks: &[(usize, ChunkTaps)], li: usize, layer: usize) -> Result<LayerTap> {
    let values: Vec<&candle_core::Tensor> =
        chunks.iter().map(|(_, c)| &c.keys[li].values).collect();
    let values = match values[..] {
        [one] => one.clone(),
        _ => candle_core::Tensor::cat(&values, 0)?,
    };
    Ok(LayerTap { layer, values })
}

/// Encoded documents not yet handed over, and where the next one starts.
struct Pending {
    /// Indexed layers: a document is whole when this many layers sent their lists back.
    layers: usize,
    /// The layers back per document.
    arrived: Vec<Vec<u16>>,
    /// Each document's postings so far.
    postings: Vec<BTreeMap<LayerFeature, Vec<u32>>>,
    encode_seconds: Vec<f64>,
    offsets: Vec<Vec<(usize, usize)>>,
    next: usize,
}

impl Pending {
    /// Takes a layer's lists of a document, then hands over the documents that are whole.
    fn arrive(
        &mut self,
        g: Gathered,
        done: &mut dyn FnMut(usize, EncodedDocument) -> Result<()>,
    ) -> Result<()> {
        // A layer's lists come back once per document: a second would count a missing layer
        // as there and hand over a document without its postings.
        if self.arrived[g.doc].contains(&g.layer) {
            return Err(IngestError::InvalidInput(format!(
                "layer {} of document {} came back from its gathering thread twice",
                g.layer, g.doc
            )));
        }
        self.arrived[g.doc].push(g.layer);
        let postings = &mut self.postings[g.doc];
        for (f, list) in g.lists.into_iter().enumerate() {
            if !list.is_empty() {
                postings.insert(LayerFeature::new(g.layer, f as u32), list);
            }
        }
        self.hand_over(done)
    }

    /// Hands the whole documents from `next` on to `done`, in order.
    fn hand_over(
        &mut self,
        done: &mut dyn FnMut(usize, EncodedDocument) -> Result<()>,
    ) -> Result<()> {
        while self.next < self.arrived.len() && self.arrived[self.next].len() == self.layers {
            let d = self.next;
            self.next += 1;
            done(
                d,
                EncodedDocument {
                    offsets: std::mem::take(&mut self.offsets[d]),
                    postings: std::mem::take(&mut self.postings[d]),
                    tokenize_seconds: 0.0,
                    scan_seconds: 0.0,
                    encode_seconds: self.encode_seconds[d],
                    vectors: None,
                },
            )?;
        }
        Ok(())
    }
}

/// Returns each document's share of the model's seconds of one scan, by its `tokens`.
pub fn scan_shares(tokens: &[usize], model_seconds: f64) -> Vec<f64> {
    let total = tokens.iter().sum::<usize>().max(1) as f64;
    tokens
        .iter()
        .map(|&n| model_seconds * n as f64 / total)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::{SaeMeta, TopKSae};
    use candle_core::{Device, Tensor};

    fn random_sae(d: usize, m: usize, k: usize, seed: u64) -> TopKSae {
        let mut rng = crate::sae::rng::SplitMix64::new(seed);
        let mut normal =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
        let (w_enc, b_enc, w_dec, b_dec) = (normal(m * d), normal(m), normal(m * d), normal(d));
        TopKSae::from_vecs(d, m, w_enc, b_enc, w_dec, b_dec, k, 1.0).unwrap()
    }

    /// Random keys `[len, heads, d]` of a chunk.
    fn keys(seed: u64, len: usize, heads: usize, d: usize) -> Tensor {
        let mut rng = crate::sae::rng::SplitMix64::new(seed);
        let v: Vec<f32> = (0..len * heads * d).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (len, heads, d), &Device::Cpu).unwrap()
    }

    /// A scan batch's chunk of `doc` over `range`, `values` the keys of `layer`.
    fn chunk(doc: usize, range: Range<usize>, layer: usize, values: Tensor) -> (usize, ChunkTaps) {
        let keys = vec![LayerTap { layer, values }];
        let taps = ChunkTaps {
            chunk: range,
            keys,
            queries: Vec::new(),
        };
        (doc, taps)
    }

    /// A scan batch's chunks encoded as one (their keys joined, one SAE pass per layer and
    /// head) fire the same features at the same document positions as each chunk encoded
    /// alone, for a layer whose SAE the KV heads share and a layer with one SAE per head.
    #[test]
    fn a_batch_encoded_at_once_fires_as_its_chunks_one_by_one() {
        let (d, heads) = (8, 2);
        let dir = tempfile::tempdir().unwrap();
        let shared = random_sae(d, 32, 4, 1);
        let mut members = vec![(SaeMeta::describe(&shared, "m", 3, HeadMode::Shared), shared)];
        for h in 0..heads {
            let sae = random_sae(d, 16, 3, 10 + h as u64);
            members.push((SaeMeta::describe(&sae, "m", 5, HeadMode::Head(h)), sae));
        }
        let saes = SaeSet::save(dir.path(), members).unwrap();
        let codes = layer_codes(&saes, heads).unwrap();
        // Three chunks of two documents, of different lengths, as a scan batch hands them; 440
        // rows, past the host encoder's blocks of 256.
        let spans = [(0usize, 0..170), (0, 170..290), (1, 0..150)];
        for layer in [3usize, 5] {
            let chunks: Vec<(usize, ChunkTaps)> = spans
                .iter()
                .enumerate()
                .map(|(i, (doc, range))| {
                    let values = keys(100 + i as u64, range.len(), heads, d);
                    chunk(*doc, range.clone(), layer, values)
                })
                .collect();
            let mut alone = Vec::new();
            for (doc, c) in &chunks {
                encode_layer(&saes, &codes, &c.keys[0], c.chunk.start, &mut |pos, f| {
                    alone.push((*doc, pos, f))
                })
                .unwrap();
            }
            let joined = join_layer(&chunks, 0, layer).unwrap();
            assert_eq!(joined.values.dims3().unwrap(), (440, heads, d));
            let coded = code_layer(&saes, &codes, &joined).unwrap();
            let mut together = Vec::new();
            for part in ChunkRows::of_batch(&chunks) {
                coded.for_each_fired(part.rows, part.first, &mut |pos, f| {
                    together.push((part.doc, pos, LayerFeature::new(layer as u16, f)))
                });
            }
            assert!(!alone.is_empty());
            assert_eq!(together, alone, "layer {layer}");
        }
    }

    /// A non-finite key in a joined batch is named by its document and position, not by its
    /// row in the batch.
    #[test]
    fn a_non_finite_key_is_named_by_its_document_and_position() {
        let (d, heads) = (4, 3);
        let dir = tempfile::tempdir().unwrap();
        let sae = random_sae(d, 16, 2, 5);
        let members = vec![(SaeMeta::describe(&sae, "m", 2, HeadMode::Shared), sae)];
        let saes = SaeSet::save(dir.path(), members).unwrap();
        let codes = layer_codes(&saes, heads).unwrap();
        let spans = [(0usize, 40..50), (1, 0..6)];
        let chunks: Vec<(usize, ChunkTaps)> = spans
            .iter()
            .enumerate()
            .map(|(i, (doc, range))| {
                let mut values = keys(i as u64, range.len(), heads, d);
                if i == 1 {
                    // Token 4 of the second chunk, KV head 2.
                    let mut v = values.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v[(4 * heads + 2) * d + 1] = f32::NAN;
                    values = Tensor::from_vec(v, (range.len(), heads, d), &Device::Cpu).unwrap();
                }
                chunk(*doc, range.clone(), 2, values)
            })
            .collect();
        let joined = join_layer(&chunks, 0, 2).unwrap();
        let Err(refused) = code_layer(&saes, &codes, &joined) else {
            panic!("a NaN key was encoded");
        };
        let named = locate_refusal(refused, &ChunkRows::of_batch(&chunks), 2, heads).to_string();
        assert!(
            named.contains("layer 2 at token 4 of the call's document 1"),
            "{named}"
        );
    }
}
