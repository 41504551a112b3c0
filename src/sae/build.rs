//! Building and measuring SAE sets from a corpus: the scan feeds bounded reservoirs of key (and
//! query) vectors per SAE; each reservoir trains or evaluates one SAE.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::corpus::{corpus_files, for_each_document};
use super::error::{Result, SaeError};
use super::eval::{evaluate, EvalReport, DEFAULT_EVAL_KS};
use super::file::{HeadMode, SaeMeta, SaeSet, TrainedOn};
use super::sample::Reservoir;
use super::train::{train, TrainConfig, TrainProgress, TrainReport};
use crate::model::{LayerSet, Model, RetrievalHead, ScanConfig, TapRequest};

/// Which SAE a vector belongs to: a layer and a head mode.
pub type SaeSlot = (usize, HeadMode);

/// What to draw from a corpus.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// Layers whose projections are sampled.
    pub layers: LayerSet,
    /// One SAE per KV head instead of one per layer.
    pub per_head: bool,
    /// With `per_head`: only the KV heads these retrieval heads read get an SAE (empty: every
    /// KV head of `layers`); the set records them.
    pub heads: Vec<RetrievalHead>,
    /// Also sample query projections (each query head goes to its KV group's SAE).
    pub queries: bool,
    /// Corpus tokens to use, after `skip_tokens`.
    pub tokens: u64,
    /// Corpus tokens to pass over first (to evaluate on tokens a training run did not see).
    pub skip_tokens: u64,
    /// Vectors kept per SAE and kind; beyond it the reservoir samples uniformly.
    pub max_samples: usize,
    /// Every n-th chunk goes to the held-out reservoirs instead (0: none held out).
    pub holdout_every: usize,
    /// The scan geometry.
    pub scan: ScanConfig,
    /// JSON field holding a record's text.
    pub text_field: String,
    /// Seed of the reservoirs.
    pub seed: u64,
}

/// Vectors per SAE slot, `[n, d]` each (slots with no vectors are absent).
pub type Samples = BTreeMap<SaeSlot, Tensor>;

/// Vectors drawn from a corpus, per SAE slot.
pub struct Collected {
    pub keys: Samples,
    pub queries: Samples,
    pub heldout_keys: Samples,
    pub heldout_queries: Samples,
    /// sha256 of the token IDs used, in order.
    pub corpus_digest: String,
    /// Corpus tokens used.
    pub tokens: u64,
}

/// The four reservoirs of a collection in progress.
struct Pools {
    keys: BTreeMap<SaeSlot, Reservoir>,
    queries: BTreeMap<SaeSlot, Reservoir>,
    heldout_keys: BTreeMap<SaeSlot, Reservoir>,
    heldout_queries: BTreeMap<SaeSlot, Reservoir>,
}

fn into_samples(pool: BTreeMap<SaeSlot, Reservoir>) -> Result<Samples> {
    pool.into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(slot, r)| Ok((slot, r.into_tensor()?)))
        .collect()
}

const SAMPLE_KINDS: [&str; 4] = ["keys", "queries", "heldout_keys", "heldout_queries"];

impl Collected {
    fn kinds(&self) -> [&Samples; 4] {
        [
            &self.keys,
            &self.queries,
            &self.heldout_keys,
            &self.heldout_queries,
        ]
    }

    /// Saves the samples as safetensors beside a JSON file holding `key` (what made them).
    pub fn save(&self, path: &Path, key: &serde_json::Value) -> Result<()> {
        let mut tensors = std::collections::HashMap::new();
        for (kind, samples) in SAMPLE_KINDS.iter().zip(self.kinds()) {
            for ((layer, head), t) in samples {
                tensors.insert(format!("{kind}/{layer}/{head}"), t.clone());
            }
        }
        let meta = serde_json::json!({
            "key": key,
            "corpus_digest": self.corpus_digest,
            "tokens": self.tokens,
        });
        let io = |e| SaeError::Io {
            path: path.into(),
            source: e,
        };
        candle_core::safetensors::save(&tensors, path)?;
        std::fs::write(path.with_extension("json"), meta.to_string()).map_err(io)?;
        Ok(())
    }

    /// Loads samples saved by [`Collected::save`] if they were made with the same `key`.
    pub fn load(path: &Path, key: &serde_json::Value) -> Result<Option<Self>> {
        let Ok(meta) = std::fs::read_to_string(path.with_extension("json")) else {
            return Ok(None);
        };
        let meta: serde_json::Value =
            serde_json::from_str(&meta).map_err(|e| SaeError::Corrupt {
                path: path.with_extension("json"),
                reason: e.to_string(),
            })?;
        if &meta["key"] != key {
            return Ok(None);
        }
        let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
        let mut out = Collected {
            keys: Samples::new(),
            queries: Samples::new(),
            heldout_keys: Samples::new(),
            heldout_queries: Samples::new(),
            corpus_digest: meta["corpus_digest"].as_str().unwrap_or_default().into(),
            tokens: meta["tokens"].as_u64().unwrap_or_default(),
        };
        for (name, t) in tensors {
            let parts: Vec<&str> = name.split('/').collect();
            let bad = || SaeError::Corrupt {
                path: path.into(),
                reason: format!("unexpected tensor `{name}`"),
            };
            let [kind, layer, head] = parts[..] else {
                return Err(bad());
            };
            let layer: usize = layer.parse().map_err(|_| bad())?;
            let head = HeadMode::parse(head).ok_or_else(bad)?;
            let target = match kind {
                "keys" => &mut out.keys,
                "queries" => &mut out.queries,
                "heldout_keys" => &mut out.heldout_keys,
                "heldout_queries" => &mut out.heldout_queries,
                _ => return Err(bad()),
            };
            target.insert((layer, head), t);
        }
        Ok(Some(out))
    }
}

fn slots(cfg: &CollectConfig, kv_heads: usize, group: usize) -> Vec<SaeSlot> {
    if !cfg.heads.is_empty() {
        let mut slots: Vec<SaeSlot> = cfg
            .heads
            .iter()
            .map(|h| (h.layer, HeadMode::Head(h.kv_head(group))))
            .collect();
        slots.sort();
        slots.dedup();
        return slots;
    }
    cfg.layers
        .layers()
        .iter()
        .flat_map(|&l| {
            let heads: Vec<HeadMode> = if cfg.per_head {
                (0..kv_heads).map(HeadMode::Head).collect()
            } else {
                vec![HeadMode::Shared]
            };
            heads.into_iter().map(move |h| (l, h))
        })
        .collect()
}

fn reservoirs(
    slots: &[SaeSlot],
    d: usize,
    cap: usize,
    seed: u64,
) -> Result<BTreeMap<SaeSlot, Reservoir>> {
    slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ok((
                *s,
                Reservoir::new(d, cap, seed.wrapping_add(i as u64 * 7919))?,
            ))
        })
        .collect()
}

/// Scans `corpus` with `model` and samples its projections into bounded reservoirs.
///
/// `progress` is called with the corpus tokens used so far.
pub fn collect(
    model: &Model,
    corpus: &[PathBuf],
    cfg: &CollectConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<Collected> {
    let mc = model.config();
    cfg.layers.check(mc)?;
    cfg.scan.check(mc.context)?;
    if cfg.tokens == 0 {
        return Err(SaeError::InvalidConfig("the token budget is 0".into()));
    }
    if let Some(h) = cfg.heads.iter().find(|h| {
        h.layer >= mc.layers || h.head >= mc.heads || !cfg.layers.layers().contains(&h.layer)
    }) {
        return Err(SaeError::InvalidConfig(format!(
            "retrieval head {h} is not a head of the sampled layers of a model of {} layers x {} heads",
            mc.layers, mc.heads
        )));
    }
    if !cfg.heads.is_empty() && !cfg.per_head {
        return Err(SaeError::InvalidConfig(
            "retrieval heads need one sae per kv head (per_head)".into(),
        ));
    }
    let files = corpus_files(corpus)?;
    let slots = slots(cfg, mc.kv_heads, mc.group_size());
    let d = mc.head_dim;
    let cap = cfg.max_samples;
    let mut pools = Pools {
        keys: reservoirs(&slots, d, cap, cfg.seed)?,
        queries: reservoirs(&slots, d, cap, cfg.seed ^ 0x5151)?,
        heldout_keys: reservoirs(&slots, d, cap, cfg.seed ^ 0xa0a0)?,
        heldout_queries: reservoirs(&slots, d, cap, cfg.seed ^ 0x0a0a)?,
    };
    let mut used = 0u64;
    let taps = TapRequest {
        keys: Some(cfg.layers.clone()),
        queries: cfg.queries.then(|| cfg.layers.clone()),
    };
    let group = mc.group_size();
    let mut hasher = Sha256::new();
    let mut skipped = 0u64;
    let mut chunk_no = 0usize;
    for file in &files {
        let mut on_doc = |text: String| -> Result<bool> {
            let mut ids = model.tokenizer().encode_ids(&text)?;
            let skip = (cfg.skip_tokens - skipped).min(ids.len() as u64) as usize;
            skipped += skip as u64;
            ids.drain(..skip);
            let left = (cfg.tokens - used) as usize;
            ids.truncate(left);
            if ids.is_empty() {
                return Ok(used < cfg.tokens);
            }
            for id in &ids {
                hasher.update(id.to_le_bytes());
            }
            let mut failed: Option<SaeError> = None;
            let scanned = model.scan(&ids, &taps, &cfg.scan, &mut |chunk| {
                chunk_no += 1;
                let held = cfg.holdout_every > 0 && chunk_no % cfg.holdout_every == 0;
                let (keys, queries) = if held {
                    (&mut pools.heldout_keys, &mut pools.heldout_queries)
                } else {
                    (&mut pools.keys, &mut pools.queries)
                };
                let pushed = chunk
                    .keys
                    .iter()
                    .try_for_each(|t| push_rows(keys, t.layer, &t.values, 1, cfg.per_head))
                    .and_then(|()| {
                        chunk.queries.iter().try_for_each(|t| {
                            push_rows(queries, t.layer, &t.values, group, cfg.per_head)
                        })
                    });
                if let Err(e) = pushed {
                    failed = Some(e);
                    return Err(crate::model::ModelError::Aborted);
                }
                used += chunk.chunk.len() as u64;
                progress(used);
                Ok(())
            });
            if let Some(e) = failed {
                return Err(e);
            }
            scanned?;
            Ok(used < cfg.tokens)
        };
        for_each_document(file, &cfg.text_field, &mut on_doc)?;
        if used >= cfg.tokens {
            break;
        }
    }
    if used == 0 {
        return Err(SaeError::Corpus {
            path: files[0].clone(),
            reason: format!("no tokens left after skipping {}", cfg.skip_tokens),
        });
    }
    Ok(Collected {
        keys: into_samples(pools.keys)?,
        queries: into_samples(pools.queries)?,
        heldout_keys: into_samples(pools.heldout_keys)?,
        heldout_queries: into_samples(pools.heldout_queries)?,
        corpus_digest: crate::model::hex_digest(&hasher.finalize()),
        tokens: used,
    })
}

/// Adds the rows of `values` (`[tokens, heads, d]`) to the reservoirs of `layer`; head `h`
/// belongs to KV head `h / group`.
fn push_rows(
    res: &mut BTreeMap<SaeSlot, Reservoir>,
    layer: usize,
    values: &Tensor,
    group: usize,
    per_head: bool,
) -> Result<()> {
    let (_, heads, d) = values.dims3()?;
    let flat: Vec<f32> = values.flatten_all()?.to_vec1()?;
    for (i, row) in flat.chunks_exact(d).enumerate() {
        let head = if per_head {
            HeadMode::Head((i % heads) / group)
        } else {
            HeadMode::Shared
        };
        if let Some(r) = res.get_mut(&(layer, head)) {
            r.push(row)?;
        }
    }
    Ok(())
}

/// Trains one SAE per slot of `collected` and saves them as a set in `out`, recording the
/// retrieval `heads` it was sampled for (empty: by layer).
pub fn train_set(
    model: &Model,
    collected: Collected,
    heads: &[RetrievalHead],
    with_queries: bool,
    train_cfg: &TrainConfig,
    out: &Path,
    progress: &mut dyn FnMut(SaeSlot, TrainProgress),
) -> Result<(SaeSet, Vec<(SaeSlot, TrainReport)>)> {
    let fingerprint = model.fingerprint()?.to_string();
    let mut members = Vec::new();
    let mut reports = Vec::new();
    let Collected {
        keys,
        mut queries,
        corpus_digest,
        tokens,
        ..
    } = collected;
    for (slot, mut x) in keys {
        if with_queries {
            if let Some(q) = queries.remove(&slot) {
                x = Tensor::cat(&[&x, &q], 0)?;
            }
        }
        let (sae, report) = train(&x, train_cfg, &mut |p| progress(slot, p))?;
        let mut meta = SaeMeta::describe(&sae, fingerprint.clone(), slot.0, slot.1);
        meta.trained_on = if with_queries {
            TrainedOn::KeysAndQueries
        } else {
            TrainedOn::Keys
        };
        meta.corpus_digest = corpus_digest.clone();
        meta.corpus_tokens = tokens;
        meta.seed = train_cfg.seed;
        members.push((meta, sae));
        reports.push((slot, report));
    }
    let set = SaeSet::save_for_heads(out, members, heads.to_vec())?;
    Ok((set, reports))
}

/// One SAE's figures on held-out vectors.
#[derive(Debug, Clone, Serialize)]
pub struct SaeEval {
    pub layer: usize,
    pub head: String,
    pub fvu_keys: f32,
    pub fvu_queries: Option<f32>,
    pub dead_frac: f32,
    pub mean_l0: f32,
    pub fvu_keys_at_k: Vec<super::eval::KFvu>,
    pub fvu_queries_at_k: Vec<super::eval::KFvu>,
    pub key_samples: usize,
    pub query_samples: usize,
}

/// Evaluates every SAE of `set` on the given key and query reservoirs.
pub fn eval_set(set: &SaeSet, keys: &Samples, queries: &Samples) -> Result<Vec<SaeEval>> {
    let mut out = Vec::new();
    for (&(layer, head), k) in keys {
        let kv = match head {
            HeadMode::Head(h) => h,
            HeadMode::Shared => 0,
        };
        let sae = set.sae_for(layer, kv)?;
        // FVU at the default ks a dictionary this size can keep (a small one has fewer).
        let ks: Vec<usize> = DEFAULT_EVAL_KS
            .into_iter()
            .filter(|&k| k <= sae.dict_size())
            .collect();
        let rk: EvalReport = evaluate(sae, k, &ks)?;
        let rq = match queries.get(&(layer, head)) {
            Some(q) => Some(evaluate(sae, q, &ks)?),
            None => None,
        };
        out.push(SaeEval {
            layer,
            head: head.to_string(),
            fvu_keys: rk.fvu,
            fvu_queries: rq.as_ref().map(|r| r.fvu),
            dead_frac: rk.dead_fraction,
            mean_l0: rk.mean_l0,
            fvu_keys_at_k: rk.fvu_at_k,
            fvu_queries_at_k: rq.as_ref().map(|r| r.fvu_at_k.clone()).unwrap_or_default(),
            key_samples: rk.samples,
            query_samples: rq.map_or(0, |r| r.samples),
        });
    }
    Ok(out)
}
