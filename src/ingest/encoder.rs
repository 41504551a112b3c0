//! Where a feature ID becomes a posting: tokenize -> streaming scan -> SAE encode per layer and
//! KV head -> per (layer, feature) lists of document-local token positions.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::IndexOp;

use super::error::{IngestError, Result};
use crate::embed::Embedder;
use crate::index::{EncodedDocument, LayerFeature, StoreIdentity};
use crate::model::{
    LayerSet, LayerTap, Model, ModelError, ScanConfig, TapPlace, TapRequest, Tokenized,
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

/// Where a document's postings are gathered while it is encoded: one list per (layer, posting
/// feature), laid out layer after layer, found by index. A sorted map cost a tree search per
/// fired feature (about 100 million of them for 727k tokens of SmolLM2, most of a GPU ingest's
/// host time once the top-k ran on the device); the map the store takes is built once per
/// document from the lists that are not empty.
struct PostingSlots {
    /// Per model layer (below 256): its first slot and how many features it has (0: not
    /// indexed).
    by_layer: Vec<(u32, u32)>,
    /// (layer, features) of each indexed layer, in layer order (the order of the slots).
    layers: Vec<(u16, u32)>,
    /// Slots in all.
    total: usize,
}

impl PostingSlots {
    fn new(codes: &[LayerCode], kv_heads: usize) -> Self {
        let mut by_layer = vec![(0, 0); 256];
        let mut layers = Vec::with_capacity(codes.len());
        let mut total = 0usize;
        for c in codes {
            let span = c.span(kv_heads);
            // layer_codes refused layers past 255 and spans past 2^24.
            by_layer[c.layer] = (total as u32, span as u32);
            layers.push((c.layer as u16, span as u32));
            total += span;
        }
        Self {
            by_layer,
            layers,
            total,
        }
    }

    /// Returns the slot of `f`, or `None` for a feature outside every indexed layer's span.
    fn slot(&self, f: LayerFeature) -> Option<usize> {
        let &(first, span) = self.by_layer.get(usize::from(f.layer))?;
        (f.feature < span).then_some((first + f.feature) as usize)
    }

    /// Returns the non-empty lists as the store's map.
    fn postings_of(&self, lists: Vec<Vec<u32>>) -> BTreeMap<LayerFeature, Vec<u32>> {
        let mut lists = lists.into_iter();
        let mut out = BTreeMap::new();
        for &(layer, span) in &self.layers {
            for (f, list) in (0..span).zip(lists.by_ref()) {
                if !list.is_empty() {
                    out.insert(LayerFeature::new(layer, f), list);
                }
            }
        }
        out
    }
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
    let Some(code) = codes.iter().find(|c| c.layer == tap.layer) else {
        return Err(SaeError::NotFound {
            layer: tap.layer,
            kv_head: 0,
        }
        .into());
    };
    let values = &tap.values;
    let (n, heads, d) = values.dims3()?;
    // codes[h] holds rows in token order for head h (or all heads interleaved when shared).
    let per_head: Vec<SparseCodes> = if code.shared {
        let sae = saes.sae_for(code.layer, 0)?;
        vec![sae.encode(&values.reshape((n * heads, d))?)?]
    } else {
        (0..heads)
            .map(|h| {
                let sae = saes.sae_for(code.layer, h)?;
                Ok(sae.encode(&values.i((.., h, ..))?.contiguous()?)?)
            })
            .collect::<Result<_>>()?
    };
    let layer = code.layer as u16;
    for t in 0..n {
        let pos = (first + t) as u32;
        for h in 0..heads {
            let (ids, acts) = if code.shared {
                per_head[0].row(t * heads + h).unwrap_or((&[], &[]))
            } else {
                per_head[h].row(t).unwrap_or((&[], &[]))
            };
            for (&f, &a) in ids.iter().zip(acts) {
                // A zero activation is a slot that did not fire.
                if a > 0.0 {
                    fired(pos, LayerFeature::new(layer, code.posting_feature(h, f)));
                }
            }
        }
    }
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
    /// false to stop the scan after the current window ([`ModelError::Aborted`]).
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
        let mut pending = Pending {
            postings: vec![None; ids.len()],
            slots: PostingSlots::new(&self.layers, self.model.config().kv_heads),
            encode_seconds: vec![0.0; ids.len()],
            offsets,
            next: 0,
        };
        // Tokens of the documents before each one, for progress over all of them.
        let before: Vec<usize> = ids
            .iter()
            .scan(0, |sum, d| {
                let b = *sum;
                *sum += d.len();
                Some(b)
            })
            .collect();
        let mut failure: Option<IngestError> = None;
        let slices: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let stats = self.model.scan_many_to(
            &slices,
            &taps,
            &self.scan,
            // Keys stay where the model ran: on a GPU the SAEs encode them there and only the
            // codes cross to the host.
            TapPlace::Device,
            &mut |doc, chunk| {
                let t0 = Instant::now();
                let slots = &pending.slots;
                let lists =
                    pending.postings[doc].get_or_insert_with(|| vec![Vec::new(); slots.total]);
                for tap in &chunk.keys {
                    let mut outside = None;
                    let added = encode_layer(
                        self.saes,
                        &self.layers,
                        tap,
                        chunk.chunk.start,
                        &mut |pos, f| match slots.slot(f) {
                            Some(i) => {
                                let list = &mut lists[i];
                                // KV heads of a layer share the posting space: one entry per
                                // token.
                                if list.last() != Some(&pos) {
                                    list.push(pos);
                                }
                            }
                            None => outside = Some(f),
                        },
                    )
                    .and_then(|()| match outside {
                        Some(f) => Err(IngestError::InvalidInput(format!(
                            "feature {} of layer {} is outside the SAE set's dictionary",
                            f.feature, f.layer
                        ))),
                        None => Ok(()),
                    });
                    if let Err(e) = added {
                        failure = Some(e);
                        return Err(ModelError::InvalidScan("sae encoding failed".into()));
                    }
                }
                pending.encode_seconds[doc] += t0.elapsed().as_secs_f64();
                if chunk.chunk.end == slices[doc].len() {
                    if let Err(e) = pending.hand_over(doc + 1, done) {
                        failure = Some(e);
                        return Err(ModelError::Aborted);
                    }
                }
                if progress(before[doc] + chunk.chunk.end) {
                    Ok(())
                } else {
                    Err(ModelError::Aborted)
                }
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        let stats = stats?;
        // Documents without windows (no tokens) are handed over at the end.
        pending.hand_over(slices.len(), done)?;
        Ok(stats.model_seconds)
    }
}

/// Encoded documents not yet handed over, and where the next one starts.
struct Pending {
    /// Each document's lists by slot, made when its first window is encoded.
    postings: Vec<Option<Vec<Vec<u32>>>>,
    slots: PostingSlots,
    encode_seconds: Vec<f64>,
    offsets: Vec<Vec<(usize, usize)>>,
    next: usize,
}

impl Pending {
    /// Hands documents `next..upto` to `done`, in order.
    fn hand_over(
        &mut self,
        upto: usize,
        done: &mut dyn FnMut(usize, EncodedDocument) -> Result<()>,
    ) -> Result<()> {
        while self.next < upto {
            let d = self.next;
            self.next += 1;
            done(
                d,
                EncodedDocument {
                    offsets: std::mem::take(&mut self.offsets[d]),
                    postings: self.postings[d]
                        .take()
                        .map(|lists| self.slots.postings_of(lists))
                        .unwrap_or_default(),
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
