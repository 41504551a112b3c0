//! Attention of the forward pass: grouped-query attention (the fused GPU softmax or candle's
//! ops on the CPU), the causal mask, and the probabilities of a few rows read back for
//! re-ranking.

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};

/// Grouped-query attention without copying K/V per query head: the query heads of one KV
/// group are stacked along the row axis and meet their shared K/V in one matmul. On a GPU the
/// scale, the causal mask and the softmax are one fused kernel (`softmax.rs`); on the CPU they
/// are candle's ops, as they always were.
#[expect(
    clippy::too_many_arguments,
    reason = "the heads' shape and the window position"
)]
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    start: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> Result<Tensor> {
    let (batch, _, seq, _) = q.dims4()?;
    let kv_len = k.dim(2)?;
    let group = nh / nkv;
    let q = q.reshape((batch * nkv, group * seq, hd))?;
    let k = k.reshape((batch * nkv, kv_len, hd))?;
    let v = v.reshape((batch * nkv, kv_len, hd))?;
    if q.device().is_cuda() {
        let att = q.matmul(&k.t()?)?;
        super::softmax::causal_softmax_(&att, seq, start, 1.0 / (hd as f32).sqrt())?;
        return Ok(att.matmul(&v)?.reshape((batch, nh, seq, hd))?);
    }
    let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
    let att = match mask {
        Some(m) => att
            .reshape((batch * nkv, group, seq, kv_len))?
            .broadcast_add(m)?,
        None => att,
    };
    let att =
        candle_nn::ops::softmax_last_dim(&att.reshape((batch * nkv, group * seq, kv_len))?)?;
    Ok(att.matmul(&v)?.reshape((batch, nh, seq, hd))?)
}

/// Softmax attention of the last `rows` query rows of a one-sequence batch over all its keys,
/// per query head: `[heads, rows, keys]` in f32. Computed apart from [`attention`] (which never
/// materialises probabilities on a GPU) for the few rows that are read back.
pub(super) fn attention_probabilities(
    q: &Tensor,
    k: &Tensor,
    rows: usize,
    start: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> Result<Tensor> {
    let (batch, _, seq, _) = q.dims4()?;
    if batch != 1 {
        return Err(ModelError::InvalidScan(
            "attention rows are read of one sequence, not a batch".into(),
        ));
    }
    let kv_len = k.dim(2)?;
    let group = nh / nkv;
    let q = q
        .narrow(2, seq - rows, rows)?
        .to_dtype(DType::F32)?
        .reshape((nkv, group * rows, hd))?;
    let k = k.to_dtype(DType::F32)?.reshape((nkv, kv_len, hd))?;
    let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
    // Row i sits at position first + i of the kv_len = first + rows positions: the causal mask
    // of `rows` rows after `first` (none for one row, which sees everything).
    let first = start + seq - rows;
    let att = att.reshape((nkv, group, rows, kv_len))?;
    let att = match causal_mask(rows, first, q.device())? {
        Some(mask) => att.broadcast_add(&mask)?,
        None => att,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    Ok(att.reshape((nh, rows, kv_len))?)
}

/// Returns an additive mask `[seq, start + seq]`: position `start + i` sees `0..=start + i`.
pub(super) fn causal_mask(seq: usize, start: usize, device: &Device) -> Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let kv = start + seq;
    let data: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..kv).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(data, (seq, kv), device)?))
}
