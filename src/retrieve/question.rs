//! The question's side of S3: its query projections, encoded by the SAEs into features.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{IndexOp, Tensor};

use super::error::{Result, RetrieveError};
use super::frame;
use crate::index::LayerFeature;
use crate::ingest::LayerCode;
use crate::model::{LayerSet, Logits, Model, TapRequest};
use crate::sae::SaeSet;

/// The SAE features a question fired, summed over its tokens and query heads.
#[derive(Debug, Clone, Default)]
pub struct QuestionFeatures {
    /// Summed activation per (layer, posting feature).
    pub activation: BTreeMap<LayerFeature, f32>,
    /// Question tokens whose queries were encoded.
    pub tokens: usize,
    /// Milliseconds of the forward pass.
    pub forward_ms: f64,
    /// Milliseconds of SAE encoding.
    pub encode_ms: f64,
}

/// Returns the rows of `with` that are not in `without`: the common prefix and suffix of two
/// prompts that differ only in the question are the frame.
fn question_rows(without: &[u32], with: &[u32]) -> std::ops::Range<usize> {
    let prefix = without.iter().zip(with).take_while(|(a, b)| a == b).count();
    let suffix = without[prefix..]
        .iter()
        .rev()
        .zip(with[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    prefix..with.len() - suffix
}

/// Which projections of the question's tokens are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Query projections, each query head through the SAE of its KV group (the paper's).
    Queries,
    /// Key projections, as documents are indexed: the question as if it were a document.
    Keys,
    /// Both.
    Both,
    /// The attention probe: a key's SAE code reconstructs it, `k ≈ Σ_f a_f d_f`, so the
    /// model's own logit is `q·k ≈ Σ_f a_f (q·d_f)`; each query head row weighs feature `f` by
    /// `q·d_f` against the decoder atoms of its KV group's SAE, keeping its `k` strongest
    /// positive ones.
    Attention,
}

impl std::str::FromStr for Probe {
    type Err = RetrieveError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "queries" => Ok(Self::Queries),
            "keys" => Ok(Self::Keys),
            "both" => Ok(Self::Both),
            "attention" => Ok(Self::Attention),
            _ => Err(RetrieveError::invalid(
                "probe",
                format!("`{s}` is not one of queries, keys, both, attention"),
            )),
        }
    }
}

/// Encodes `x` (`[rows, d]`) with `sae` and adds its features to `activation`.
fn add_codes(
    sae: &crate::sae::TopKSae,
    x: &candle_core::Tensor,
    k: Option<usize>,
    code: &LayerCode,
    kv: usize,
    activation: &mut BTreeMap<LayerFeature, f32>,
) -> Result<()> {
    let codes = match k {
        Some(k) => sae.encode_with_k(x, k)?,
        None => sae.encode(x)?,
    };
    for r in 0..codes.rows() {
        let (fs, acts) = codes.row(r).unwrap_or((&[], &[]));
        for (&f, &a) in fs.iter().zip(acts) {
            if a > 0.0 {
                *activation
                    .entry(LayerFeature::new(
                        code.layer as u16,
                        code.posting_feature(kv, f),
                    ))
                    .or_insert(0.0) += a;
            }
        }
    }
    Ok(())
}

/// Weighs each feature of `sae` by the attention logit `q·d_f` of each row of `q` (`[rows, d]`)
/// with its decoder atom, and adds the `k` largest positive weights of each row to
/// `activation`.
fn add_attention_weights(
    sae: &crate::sae::TopKSae,
    q: &candle_core::Tensor,
    k: usize,
    code: &LayerCode,
    kv: usize,
    activation: &mut BTreeMap<LayerFeature, f32>,
) -> Result<()> {
    let logits = q.matmul(&sae.w_dec().t()?)?.to_vec2::<f32>()?;
    for row in logits {
        let mut order: Vec<usize> = (0..row.len()).filter(|&f| row[f] > 0.0).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for &f in order.iter().take(k) {
            *activation
                .entry(LayerFeature::new(
                    code.layer as u16,
                    code.posting_feature(kv, f as u32),
                ))
                .or_insert(0.0) += row[f];
        }
    }
    Ok(())
}

/// Runs `question` through layers `0..=max(L)` in the answer's frame (no evidence) and encodes
/// the pre-RoPE projections of its tokens that `probe` names: query heads through the SAE of
/// their KV group, keys through their own, keeping `k` features per row (`None`: the SAE's k).
pub fn question_features(
    model: &Model,
    saes: &SaeSet,
    codes: &[LayerCode],
    question: &str,
    k: Option<usize>,
    probe: Probe,
) -> Result<QuestionFeatures> {
    let empty = model.chat_prompt(Some(frame::SYSTEM), &frame::user_turn(None, ""))?;
    let ids = model.chat_prompt(Some(frame::SYSTEM), &frame::user_turn(None, question))?;
    let rows = question_rows(&empty, &ids);
    if rows.is_empty() {
        return Err(RetrieveError::invalid("question", "it has no tokens"));
    }
    let context = model.config().context;
    if ids.len() > context {
        return Err(RetrieveError::invalid(
            "question",
            format!(
                "its prompt has {} tokens, more than the model's window of {context}",
                ids.len()
            ),
        ));
    }
    let t0 = Instant::now();
    let layers = LayerSet::new(codes.iter().map(|c| c.layer).collect())?;
    let taps = TapRequest {
        keys: matches!(probe, Probe::Keys | Probe::Both).then(|| layers.clone()),
        queries: (probe != Probe::Keys).then_some(layers),
    };
    let out = model
        .transformer()
        .forward(&ids, None, &taps, Logits::None)?;
    let forward_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mc = model.config();
    let group = mc.heads / mc.kv_heads.max(1);
    let mut activation = BTreeMap::new();
    for tap in &out.queries {
        let Some(code) = codes.iter().find(|c| c.layer == tap.layer) else {
            continue;
        };
        // [question tokens, heads, head_dim]
        let q = tap.values.i(rows.clone())?;
        let (n, heads, d) = q.dims3()?;
        // A set trained for retrieval heads reads only their queries.
        let chosen = saes.retrieval_heads();
        for kv in 0..heads / group.max(1) {
            // A KV head without an SAE (a set for retrieval heads) is not indexed.
            let Ok(sae) = saes.sae_for(code.layer, kv) else {
                continue;
            };
            let group_heads: Vec<usize> = (kv * group..(kv + 1) * group)
                .filter(|&h| {
                    chosen.is_empty() || chosen.iter().any(|r| r.layer == code.layer && r.head == h)
                })
                .collect();
            if group_heads.is_empty() {
                continue;
            }
            let x = if group_heads.len() == group {
                q.i((.., kv * group..(kv + 1) * group, ..))?
                    .contiguous()?
                    .reshape((n * group, d))?
            } else {
                let picked = group_heads
                    .iter()
                    .map(|&h| q.i((.., h..h + 1, ..)))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&picked, 1)?
                    .contiguous()?
                    .reshape((n * group_heads.len(), d))?
            };
            if probe == Probe::Attention {
                let keep = k.unwrap_or(sae.k());
                add_attention_weights(sae, &x, keep, code, kv, &mut activation)?;
            } else {
                add_codes(sae, &x, k, code, kv, &mut activation)?;
            }
        }
    }
    for tap in &out.keys {
        let Some(code) = codes.iter().find(|c| c.layer == tap.layer) else {
            continue;
        };
        // [question tokens, kv heads, head_dim]
        let keys = tap.values.i(rows.clone())?;
        for kv in 0..keys.dim(1)? {
            let Ok(sae) = saes.sae_for(code.layer, kv) else {
                continue;
            };
            let x = keys.i((.., kv, ..))?.contiguous()?;
            add_codes(sae, &x, k, code, kv, &mut activation)?;
        }
    }
    Ok(QuestionFeatures {
        activation,
        tokens: rows.len(),
        forward_ms,
        encode_ms: t1.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Features are weighed by the logit of each row with their decoder atom; each row keeps
    /// its `k` strongest positive ones, summed over rows.
    #[test]
    fn the_attention_probe_weighs_features_by_q_dot_atom() {
        let dev = Device::Cpu;
        // Four atoms in two dimensions: +x, -x, +y, x+y.
        let atoms = Tensor::new(&[[1f32, 0.], [-1., 0.], [0., 1.], [1., 1.]], &dev).unwrap();
        let sae = crate::sae::TopKSae::new(
            &atoms,
            &Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap(),
            &atoms,
            &Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap(),
            2,
            1.0,
        )
        .unwrap();
        let code = LayerCode {
            layer: 3,
            shared: true,
            dict_size: 4,
        };
        let q = Tensor::new(&[[2f32, 0.5], [0., -1.]], &dev).unwrap();
        let mut activation = BTreeMap::new();
        add_attention_weights(&sae, &q, 2, &code, 0, &mut activation).unwrap();
        let f = |i| LayerFeature::new(3, code.posting_feature(0, i));
        // Row 1: logits 2, -2, 0.5, 2.5 -> atoms 3 and 0; row 2: 0, 0, -1, -1 -> none positive.
        assert_eq!(activation.len(), 2);
        assert_eq!(activation[&f(3)], 2.5);
        assert_eq!(activation[&f(0)], 2.0);
        assert_eq!("attention".parse::<Probe>().unwrap(), Probe::Attention);
        assert!("nope".parse::<Probe>().is_err());
    }

    #[test]
    fn question_rows_are_what_differs_between_the_prompts() {
        assert_eq!(question_rows(&[1, 2, 9, 9], &[1, 2, 5, 6, 7, 9, 9]), 2..5);
        assert_eq!(question_rows(&[1, 9], &[1, 5, 9]), 1..2);
        assert_eq!(question_rows(&[1, 2], &[1, 2]), 2..2);
    }
}
