//! The Top-k sparse autoencoder: encoding key and query vectors into sparse feature IDs.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Tensor, D};

use rayon::prelude::*;

use super::error::{Result, SaeError};

/// Rows encoded per matmul: the `[rows, dict_size]` pre-activations (2 MiB at m 2048) stay in
/// cache and their allocation is reused instead of page-faulted in; measured 25 ms against 36 ms
/// with 4096-row blocks for 1536 rows at m 2048, k 16.
const ENCODE_CHUNK_ROWS: usize = 256;

/// Rows encoded per pass of [`TopKSae::encode_on_device`]: bounds the `[rows, dict_size]`
/// pre-activations and their masks on the device (64 MiB of f32 at m 2048) whatever the batch.
const DEVICE_CHUNK_ROWS: usize = 8192;

/// Holds the top-k features of each encoded row.
///
/// Row `r` occupies `ids[r * k..(r + 1) * k]` and `acts[r * k..(r + 1) * k]`, sorted by
/// activation, largest first (ties: lower feature id first). When a row has fewer than `k`
/// positive pre-activations, the remaining entries carry activation `0.0`: those features did not
/// fire and consumers (postings, scoring) must skip them.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseCodes {
    /// Features kept per row.
    pub k: usize,
    /// Feature ids, `rows * k` of them, row-major.
    pub ids: Vec<u32>,
    /// Activations (after ReLU, in the SAE's scaled units), parallel to `ids`.
    pub acts: Vec<f32>,
}

impl SparseCodes {
    /// Returns the number of encoded rows.
    pub fn rows(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }

    /// Returns the feature ids and activations of row `row`, or `None` past the end.
    pub fn row(&self, row: usize) -> Option<(&[u32], &[f32])> {
        let start = row.checked_mul(self.k)?;
        let end = start.checked_add(self.k)?;
        Some((self.ids.get(start..end)?, self.acts.get(start..end)?))
    }

    /// Returns how many features fired (activation above zero), summed over all rows.
    pub fn fired(&self) -> usize {
        self.acts.iter().filter(|&&a| a > 0.0).count()
    }
}

/// Maps `d_in`-float vectors to their top-k dictionary features and back.
///
/// `z = TopK(ReLU(W_enc (x * s - b_dec) + b_enc))` and `x_hat = (W_dec^T z + b_dec) / s`, where `s`
/// is the input scale fixed at training time (the mean squared norm of scaled training inputs is
/// `d_in`). Decoder rows have unit norm.
#[derive(Debug, Clone)]
pub struct TopKSae {
    d_in: usize,
    dict_size: usize,
    k: usize,
    input_scale: f32,
    w_enc: Tensor,
    b_enc: Tensor,
    w_dec: Tensor,
    b_dec: Tensor,
    // Flat copies for the sparse loops, which index single rows.
    b_enc_flat: Vec<f32>,
    w_dec_flat: Vec<f32>,
    b_dec_flat: Vec<f32>,
    // The encoder's weights copied to the last accelerator it ran on (clones share the copy).
    on_device: Arc<Mutex<Option<EncoderWeights>>>,
}

/// The tensors encoding needs, on one device.
#[derive(Debug, Clone)]
struct EncoderWeights {
    device: Device,
    w_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
}

/// How an encoding on a device selects each row's top k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTopK {
    /// `k` rounds of tensor operations (row maximum; the lowest feature holding it; that
    /// feature masked), each a few passes over the `[rows, dict_size]` pre-activations.
    Ops,
    /// One fused kernel that reads the pre-activations once (`src/sae/kernels/topk.cu`); it
    /// takes `k` up to 64 on CUDA and on the CPU (where the same op runs the host's selection).
    Kernel,
}

impl DeviceTopK {
    /// Returns the kernel where it runs and takes `dict_size` and `k`, else the tensor
    /// operations.
    pub fn for_shape(device: &Device, dict_size: usize, k: usize) -> Self {
        let runs_here = device.is_cuda() || device.is_cpu();
        match super::fused::kernel_width(dict_size, k) {
            Ok(_) if runs_here => Self::Kernel,
            Ok(_) => Self::Ops,
            Err(e) => {
                tracing::debug!(dict_size, k, reason = %e, "sae top-k by tensor ops");
                Self::Ops
            }
        }
    }
}

/// The constant tensors of the tensor-op top k on one device, for one dictionary size.
struct OpsTopK {
    /// `[1, m]`: each feature's id as f32, exact because dictionaries stay below 2^24.
    iota: Tensor,
    m: usize,
}

impl OpsTopK {
    fn new(device: &Device, m: usize) -> Result<Self> {
        let iota = Tensor::arange(0u32, m as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((1, m))?;
        Ok(Self { iota, m })
    }

    /// Appends the top `out.k` of `pre + bias` per row to `out` (after the ReLU) by `k` rounds
    /// of (row maximum; the lowest feature holding it, the host's tie rule; that feature masked
    /// with `-inf`); returns the first row holding a non-finite value, if any.
    fn top_k(&self, pre: &Tensor, bias: &Tensor, out: &mut SparseCodes) -> Result<Option<usize>> {
        let (dev, k) = (pre.device(), out.k);
        let shape = (pre.dim(0)?, self.m);
        let iota = self.iota.broadcast_as(shape)?;
        let past_end = Tensor::new(self.m as f32, dev)?.broadcast_as(shape)?;
        let masked = Tensor::new(f32::NEG_INFINITY, dev)?.broadcast_as(shape)?;
        let mut pre = pre.broadcast_add(bias)?;
        // Zero for a row of finite values; inf * 0 and NaN make it NaN.
        let poison = pre.affine(0.0, 0.0)?.sum(D::Minus1)?;
        let mut tops = Vec::with_capacity(k);
        let mut top_ids = Vec::with_capacity(k);
        for _ in 0..k {
            let top = pre.max_keepdim(D::Minus1)?;
            let id = pre
                .broadcast_eq(&top)?
                .where_cond(&iota, &past_end)?
                .min_keepdim(D::Minus1)?;
            pre = iota.broadcast_eq(&id)?.where_cond(&masked, &pre)?;
            tops.push(top);
            top_ids.push(id);
        }
        let poison = poison.to_vec1::<f32>()?;
        if let Some(r) = poison.iter().position(|&p| p != 0.0) {
            return Ok(Some(r));
        }
        let chunk_ids = Tensor::cat(&top_ids, 1)?.to_dtype(DType::U32)?;
        out.ids.extend(chunk_ids.flatten_all()?.to_vec1::<u32>()?);
        let chunk_acts = Tensor::cat(&tops, 1)?.relu()?;
        out.acts.extend(chunk_acts.flatten_all()?.to_vec1::<f32>()?);
        Ok(None)
    }
}

impl TopKSae {
    /// Builds an SAE from its four weight tensors: `w_enc` `[m, d_in]`, `b_enc` `[m]`, `w_dec`
    /// `[m, d_in]`, `b_dec` `[d_in]`.
    pub fn new(
        w_enc: &Tensor,
        b_enc: &Tensor,
        w_dec: &Tensor,
        b_dec: &Tensor,
        k: usize,
        input_scale: f32,
    ) -> Result<Self> {
        let (dict_size, d_in) = match w_enc.dims() {
            &[m, d] => (m, d),
            other => {
                return Err(SaeError::Shape {
                    what: "w_enc",
                    expected: "[dict_size, d_in]".into(),
                    found: format!("{other:?}"),
                })
            }
        };
        Self::from_vecs(
            d_in,
            dict_size,
            tensor_to_vec(w_enc)?,
            tensor_to_vec(b_enc)?,
            tensor_to_vec(w_dec)?,
            tensor_to_vec(b_dec)?,
            k,
            input_scale,
        )
    }

    /// Builds an SAE from row-major weight buffers, checking every length and value.
    #[expect(
        clippy::too_many_arguments,
        reason = "the four weights plus their shape"
    )]
    pub(crate) fn from_vecs(
        d_in: usize,
        dict_size: usize,
        w_enc: Vec<f32>,
        b_enc: Vec<f32>,
        w_dec: Vec<f32>,
        b_dec: Vec<f32>,
        k: usize,
        input_scale: f32,
    ) -> Result<Self> {
        if d_in == 0 || dict_size == 0 {
            return Err(SaeError::InvalidConfig(format!(
                "d_in ({d_in}) and dict_size ({dict_size}) must be positive"
            )));
        }
        check_k(k, dict_size)?;
        if !(input_scale.is_finite() && input_scale > 0.0) {
            return Err(SaeError::InvalidConfig(format!(
                "input scale must be finite and positive, got {input_scale}"
            )));
        }
        let md = dict_size
            .checked_mul(d_in)
            .ok_or_else(|| SaeError::InvalidConfig("dict_size * d_in overflows".into()))?;
        // (name, buffer, length, elements per row for error reports)
        for (what, buf, len, width) in [
            ("w_enc", &w_enc, md, d_in),
            ("b_enc", &b_enc, dict_size, 1),
            ("w_dec", &w_dec, md, d_in),
            ("b_dec", &b_dec, d_in, d_in),
        ] {
            if buf.len() != len {
                return Err(SaeError::Shape {
                    what,
                    expected: format!("{len} elements"),
                    found: format!("{} elements", buf.len()),
                });
            }
            if let Some(pos) = buf.iter().position(|v| !v.is_finite()) {
                return Err(SaeError::NonFinite {
                    what,
                    row: pos / width,
                });
            }
        }
        let dev = Device::Cpu;
        Ok(Self {
            d_in,
            dict_size,
            k,
            input_scale,
            w_enc: Tensor::from_vec(w_enc, (dict_size, d_in), &dev)?,
            b_enc: Tensor::from_slice(&b_enc, dict_size, &dev)?,
            w_dec: Tensor::from_slice(&w_dec, (dict_size, d_in), &dev)?,
            b_dec: Tensor::from_slice(&b_dec, d_in, &dev)?,
            b_enc_flat: b_enc,
            w_dec_flat: w_dec,
            b_dec_flat: b_dec,
            on_device: Arc::default(),
        })
    }

    /// Returns the input dimension (`d_in`, the head dimension of the model).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Returns the number of dictionary features (`m`).
    pub fn dict_size(&self) -> usize {
        self.dict_size
    }

    /// Returns the number of features [`TopKSae::encode`] keeps per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Returns the scalar applied to inputs before encoding.
    pub fn input_scale(&self) -> f32 {
        self.input_scale
    }

    /// Returns the encoder weights, `[dict_size, d_in]`.
    pub fn w_enc(&self) -> &Tensor {
        &self.w_enc
    }

    /// Returns the encoder bias, `[dict_size]`.
    pub fn b_enc(&self) -> &Tensor {
        &self.b_enc
    }

    /// Returns the decoder weights, `[dict_size, d_in]`, one unit-norm row per feature.
    pub fn w_dec(&self) -> &Tensor {
        &self.w_dec
    }

    /// Returns the decoder bias, `[d_in]`, in scaled units.
    pub fn b_dec(&self) -> &Tensor {
        &self.b_dec
    }

    /// Encodes `x` (`[n, d_in]`) into its top-`k` features per row.
    pub fn encode(&self, x: &Tensor) -> Result<SparseCodes> {
        self.encode_with_k(x, self.k)
    }

    /// Encodes `x` (`[n, d_in]`) keeping `k` features per row instead of the trained `k`.
    ///
    /// Keys on the CPU are encoded by [`TopKSae::encode_on_host`] (faster there); keys on an
    /// accelerator by [`TopKSae::encode_on_device`], so that only the codes cross to the host.
    pub fn encode_with_k(&self, x: &Tensor, k: usize) -> Result<SparseCodes> {
        if x.device().is_cpu() {
            self.encode_on_host(x, k)
        } else {
            self.encode_on_device(x, k)
        }
    }

    /// Encodes `x` on the host cores: one matmul per block of rows, then a per-row top-k.
    pub fn encode_on_host(&self, x: &Tensor, k: usize) -> Result<SparseCodes> {
        check_k(k, self.dict_size)?;
        let x = self.check_input(x)?;
        let n = x.dim(0)?;
        let mut ids = vec![0u32; n * k];
        let mut acts = vec![0f32; n * k];
        let w_enc_t = self.w_enc.t()?;
        // Blocks of rows are independent: encode them on all cores (a GPU scan hands the host
        // keys faster than one core encodes them), then report the first failing row, if any.
        let block = ENCODE_CHUNK_ROWS * k;
        let results: Vec<Result<()>> = ids
            .par_chunks_mut(block)
            .zip(acts.par_chunks_mut(block))
            .enumerate()
            .map(|(b, (ids, acts))| {
                let start = b * ENCODE_CHUNK_ROWS;
                let rows = ids.len() / k;
                let centred = x
                    .narrow(0, start, rows)?
                    .affine(f64::from(self.input_scale), 0.0)?
                    .broadcast_sub(&self.b_dec)?;
                let pre = centred.matmul(&w_enc_t)?;
                let pre = F32View::new(&pre)?;
                let pre = pre.as_slice();
                for r in 0..rows {
                    let row = &pre[r * self.dict_size..(r + 1) * self.dict_size];
                    let out = r * k..(r + 1) * k;
                    let finite = top_k_into(
                        row,
                        &self.b_enc_flat,
                        &mut ids[out.clone()],
                        &mut acts[out.clone()],
                    );
                    if !finite {
                        return Err(SaeError::NonFinite {
                            what: "input",
                            row: start + r,
                        });
                    }
                    for a in &mut acts[out] {
                        *a = a.max(0.0);
                    }
                }
                Ok(())
            })
            .collect();
        results.into_iter().collect::<Result<()>>()?;
        Ok(SparseCodes { k, ids, acts })
    }

    /// Encodes `x` on `x`'s own device; only the `[n, k]` feature ids and activations come back
    /// to the host.
    ///
    /// The top k are selected by the fused kernel ([`DeviceTopK::Kernel`]) when it takes this
    /// dictionary size and `k`, else by tensor operations ([`DeviceTopK::Ops`]); both give the
    /// codes of [`TopKSae::encode_on_host`].
    pub fn encode_on_device(&self, x: &Tensor, k: usize) -> Result<SparseCodes> {
        let top_k = DeviceTopK::for_shape(x.device(), self.dict_size, k);
        self.encode_on_device_with(x, k, top_k)
    }

    /// Encodes `x` on `x`'s own device, selecting the top k as `top_k` says.
    ///
    /// The codes are those of [`TopKSae::encode_on_host`]: the same centring, matmul and bias
    /// (added in f32 as there), the same selection (the largest first, ties to the lower
    /// feature), then the ReLU. Maxima and comparisons are exact, so on one device both ways
    /// select identically; across devices only the matmul's rounding differs (`s3mem bench
    /// sae-encode` reports the rate). [`DeviceTopK::Kernel`] refuses a shape it does not take
    /// with [`SaeError::UnsupportedKernelShape`].
    pub fn encode_on_device_with(
        &self,
        x: &Tensor,
        k: usize,
        top_k: DeviceTopK,
    ) -> Result<SparseCodes> {
        check_k(k, self.dict_size)?;
        self.check_shape(x)?;
        if top_k == DeviceTopK::Kernel {
            super::fused::kernel_width(self.dict_size, k)?;
        }
        let n = x.dim(0)?;
        let weights = self.weights_on(x.device())?;
        let w_enc_t = weights.w_enc.t()?;
        let mut codes = SparseCodes {
            k,
            ids: Vec::with_capacity(n * k),
            acts: Vec::with_capacity(n * k),
        };
        let mut ops = None;
        for start in (0..n).step_by(DEVICE_CHUNK_ROWS) {
            let rows = DEVICE_CHUNK_ROWS.min(n - start);
            let centred = x
                .narrow(0, start, rows)?
                .to_dtype(DType::F32)?
                .affine(f64::from(self.input_scale), 0.0)?
                .broadcast_sub(&weights.b_dec)?;
            let pre = centred.matmul(&w_enc_t)?;
            let poisoned = match top_k {
                DeviceTopK::Kernel => super::fused::top_k(&pre, &weights.b_enc, &mut codes)?,
                DeviceTopK::Ops => {
                    let ops = match &mut ops {
                        Some(ops) => ops,
                        None => ops.insert(OpsTopK::new(x.device(), self.dict_size)?),
                    };
                    ops.top_k(&pre, &weights.b_enc, &mut codes)?
                }
            };
            if let Some(r) = poisoned {
                return Err(SaeError::NonFinite {
                    what: "input",
                    row: start + r,
                });
            }
        }
        Ok(codes)
    }

    /// Returns the encoder's weights on `device`, copying them there on first use.
    fn weights_on(&self, device: &Device) -> Result<EncoderWeights> {
        if device.is_cpu() {
            return Ok(EncoderWeights {
                device: device.clone(),
                w_enc: self.w_enc.clone(),
                b_enc: self.b_enc.clone(),
                b_dec: self.b_dec.clone(),
            });
        }
        // A poisoned lock only means another thread failed mid-copy: copy again.
        let mut cached = self.on_device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = cached.as_ref().filter(|w| w.device.same_device(device)) {
            return Ok(w.clone());
        }
        let w = EncoderWeights {
            device: device.clone(),
            w_enc: self.w_enc.to_device(device)?,
            b_enc: self.b_enc.to_device(device)?,
            b_dec: self.b_dec.to_device(device)?,
        };
        *cached = Some(w.clone());
        Ok(w)
    }

    /// Decodes sparse codes back to vectors `[rows, d_in]` in the caller's (unscaled) units.
    pub fn decode(&self, codes: &SparseCodes) -> Result<Tensor> {
        let rows = self.check_codes(codes)?;
        let mut out = vec![0f32; rows * self.d_in];
        for (r, dst) in out.chunks_exact_mut(self.d_in).enumerate() {
            let span = r * codes.k..(r + 1) * codes.k;
            self.decode_row_into(&codes.ids[span.clone()], &codes.acts[span], dst);
        }
        Ok(Tensor::from_vec(out, (rows, self.d_in), &Device::Cpu)?)
    }

    /// Returns the SAE's reconstruction of `x` (`[n, d_in]`), in the caller's units.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode(x)?)
    }

    /// Writes the unscaled reconstruction of one row from already-validated codes into `dst`.
    pub(crate) fn decode_row_into(&self, ids: &[u32], acts: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(&self.b_dec_flat);
        for (&id, &a) in ids.iter().zip(acts) {
            if a == 0.0 {
                continue;
            }
            let id = id as usize;
            let w = &self.w_dec_flat[id * self.d_in..(id + 1) * self.d_in];
            for (o, wv) in dst.iter_mut().zip(w) {
                *o += a * wv;
            }
        }
        let inv = 1.0 / self.input_scale;
        for o in dst.iter_mut() {
            *o *= inv;
        }
    }

    /// Checks that `x` is `[n, d_in]` and returns it as a CPU f32 tensor.
    pub(crate) fn check_input(&self, x: &Tensor) -> Result<Tensor> {
        self.check_shape(x)?;
        Ok(x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
    }

    /// Checks that `x` is `[n, d_in]`.
    fn check_shape(&self, x: &Tensor) -> Result<()> {
        match x.dims() {
            &[_, d] if d == self.d_in => {}
            other => {
                return Err(SaeError::Shape {
                    what: "input",
                    expected: format!("[n, {}]", self.d_in),
                    found: format!("{other:?}"),
                })
            }
        }
        Ok(())
    }

    /// Checks that `codes` fit this SAE and returns their row count.
    fn check_codes(&self, codes: &SparseCodes) -> Result<usize> {
        if codes.k == 0 || codes.ids.len() != codes.acts.len() || codes.ids.len() % codes.k != 0 {
            return Err(SaeError::Shape {
                what: "sparse codes",
                expected: format!(
                    "ids and acts of equal length, a multiple of k = {}",
                    codes.k
                ),
                found: format!("{} ids, {} acts", codes.ids.len(), codes.acts.len()),
            });
        }
        if let Some(&id) = codes.ids.iter().find(|&&id| id as usize >= self.dict_size) {
            return Err(SaeError::FeatureOutOfRange {
                id,
                dict_size: self.dict_size,
            });
        }
        if let Some(pos) = codes.acts.iter().position(|a| !a.is_finite()) {
            return Err(SaeError::NonFinite {
                what: "sparse codes",
                row: pos / codes.k,
            });
        }
        Ok(codes.ids.len() / codes.k)
    }
}

/// Checks that `k` is usable with a dictionary of `dict_size` features.
pub(crate) fn check_k(k: usize, dict_size: usize) -> Result<()> {
    if k == 0 || k > dict_size {
        return Err(SaeError::InvalidConfig(format!(
            "k must be in 1..={dict_size}, got {k}"
        )));
    }
    Ok(())
}

/// Writes the `ids.len()` largest values of `pre[j] + bias[j]` into `ids`/`vals`, largest first,
/// ties to the lower index; returns false when a value is not finite.
///
/// A sorted buffer of k with an insertion on each value above its minimum: on random-order rows
/// only about `k ln(m / k)` values enter, so the scan is one compare per value. Values are
/// checked 16 at a time against the buffer's minimum, a loop the compiler vectorises; measured
/// at m 2048, k 16: 2x faster than `select_nth_unstable_by` plus a sort of the k.
pub(crate) fn top_k_into(pre: &[f32], bias: &[f32], ids: &mut [u32], vals: &mut [f32]) -> bool {
    const LANES: usize = 16;
    let k = ids.len().min(vals.len());
    if k == 0 {
        return true;
    }
    // -inf slots behave as empty: every finite value beats them.
    vals[..k].fill(f32::NEG_INFINITY);
    ids[..k].fill(0);
    // Stays 0 while every value is finite; inf * 0 and NaN turn it into NaN.
    let mut poison = 0f32;
    let mut buf = [0f32; LANES];
    let n = pre.len().min(bias.len());
    let mut base = 0;
    while base < n {
        let len = LANES.min(n - base);
        let mut max = f32::NEG_INFINITY;
        for ((slot, &p), &b) in buf[..len]
            .iter_mut()
            .zip(&pre[base..base + len])
            .zip(&bias[base..base + len])
        {
            let v = p + b;
            *slot = v;
            poison += v * 0.0;
            max = if v > max { v } else { max };
        }
        if max > vals[k - 1] {
            for (i, &v) in buf[..len].iter().enumerate() {
                if v > vals[k - 1] {
                    insert_sorted(ids, vals, (base + i) as u32, v);
                }
            }
        }
        base += len;
    }
    poison == 0.0
}

/// Inserts `(id, v)` into the descending buffer, dropping its last entry; `v` must beat it.
fn insert_sorted(ids: &mut [u32], vals: &mut [f32], id: u32, v: f32) {
    let mut i = vals.len() - 1;
    while i > 0 && vals[i - 1] < v {
        vals[i] = vals[i - 1];
        ids[i] = ids[i - 1];
        i -= 1;
    }
    vals[i] = v;
    ids[i] = id;
}

/// Like [`top_k_into`] over explicit `(id, value)` pairs, which must come in ascending id order
/// for the tie rule to hold; slots beyond the number of pairs get `f32::NEG_INFINITY`.
pub(crate) fn top_k_pairs_into(
    pairs: impl Iterator<Item = (u32, f32)>,
    ids: &mut [u32],
    vals: &mut [f32],
) -> bool {
    let k = ids.len().min(vals.len());
    if k == 0 {
        return true;
    }
    vals[..k].fill(f32::NEG_INFINITY);
    ids[..k].fill(0);
    let mut finite = true;
    for (id, v) in pairs {
        finite &= v.is_finite();
        if v > vals[k - 1] {
            insert_sorted(&mut ids[..k], &mut vals[..k], id, v);
        }
    }
    finite
}

/// Copies any tensor's values into a flat f32 vector.
pub(crate) fn tensor_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Reads a tensor's values as one f32 slice, borrowing CPU f32 contiguous storage instead of
/// copying it (training reads the whole sample set through this).
pub(crate) struct F32View<'a> {
    inner: ViewInner<'a>,
}

enum ViewInner<'a> {
    Borrowed {
        guard: StorageRef<'a>,
        start: usize,
        end: usize,
    },
    Owned(Vec<f32>),
}

impl<'a> F32View<'a> {
    /// Borrows `t`'s storage when it is contiguous CPU f32, else copies it.
    pub(crate) fn new(t: &'a Tensor) -> Result<Self> {
        if t.dtype() == DType::F32 {
            let (guard, layout) = t.storage_and_layout();
            if let (Storage::Cpu(CpuStorage::F32(_)), Some((start, end))) =
                (&*guard, layout.contiguous_offsets())
            {
                return Ok(Self {
                    inner: ViewInner::Borrowed { guard, start, end },
                });
            }
        }
        Ok(Self {
            inner: ViewInner::Owned(tensor_to_vec(t)?),
        })
    }

    /// Returns the values, row-major.
    pub(crate) fn as_slice(&self) -> &[f32] {
        match &self.inner {
            ViewInner::Owned(v) => v,
            ViewInner::Borrowed { guard, start, end } => match &**guard {
                Storage::Cpu(CpuStorage::F32(v)) => &v[*start..*end],
                // `new` borrows only CPU f32 storage, and a tensor's storage never changes type.
                _ => &[],
            },
        }
    }
}

/// Returns an SAE with features along +x, +y, +z and -x of a 3-d space, k 2 (a test fixture).
#[cfg(test)]
pub(crate) fn axes_sae() -> TopKSae {
    let w = vec![
        1.0, 0.0, 0.0, //
        0.0, 1.0, 0.0, //
        0.0, 0.0, 1.0, //
        -1.0, 0.0, 0.0,
    ];
    TopKSae::from_vecs(3, 4, w.clone(), vec![0.0; 4], w, vec![0.0; 3], 2, 1.0).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_matches_a_full_sort() {
        let mut rng = super::super::rng::SplitMix64::new(3);
        for trial in 0..50 {
            let m = 1 + (trial * 37) % 300;
            let k = 1 + trial % m.min(20);
            // Few distinct values so that ties are exercised.
            let vals: Vec<f32> = (0..m).map(|_| rng.below(17) as f32 - 8.0).collect();
            let mut ids = vec![0u32; k];
            let mut got = vec![0f32; k];
            assert!(top_k_into(&vals, &vec![0.0; m], &mut ids, &mut got));
            let mut order: Vec<u32> = (0..m as u32).collect();
            order.sort_by(|&a, &b| {
                vals[b as usize]
                    .total_cmp(&vals[a as usize])
                    .then(a.cmp(&b))
            });
            assert_eq!(ids, order[..k]);
            let want: Vec<f32> = order[..k].iter().map(|&i| vals[i as usize]).collect();
            assert_eq!(got, want);
        }
    }

    /// Returns an SAE of random weights and `n` random keys; with `coarse`, weights, biases and
    /// keys are small integers, so that many pre-activations tie exactly.
    fn random_case(seed: u64, n: usize, coarse: bool) -> (TopKSae, Tensor) {
        let mut rng = super::super::rng::SplitMix64::new(seed);
        let d = 2 + rng.below(12) as usize;
        let m = 4 + rng.below(300) as usize;
        let k = 1 + rng.below(m.min(24) as u64) as usize;
        let mut draw = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| match coarse {
                    true => rng.below(5) as f32 - 2.0,
                    false => rng.normal() as f32,
                })
                .collect()
        };
        let (w_enc, b_enc, w_dec, b_dec, x) =
            (draw(m * d), draw(m), draw(m * d), draw(d), draw(n * d));
        let sae = TopKSae::from_vecs(d, m, w_enc, b_enc, w_dec, b_dec, k, 1.0).unwrap();
        (sae, Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap())
    }

    const BOTH: [DeviceTopK; 2] = [DeviceTopK::Ops, DeviceTopK::Kernel];

    #[test]
    fn device_encoding_selects_what_the_host_selects() {
        let mut ties = 0;
        for seed in 0..40 {
            let coarse = seed % 2 == 0;
            let (sae, x) = random_case(seed, 1 + (seed as usize * 53) % 700, coarse);
            let host = sae.encode_on_host(&x, sae.k()).unwrap();
            for top_k in BOTH {
                let device = sae.encode_on_device_with(&x, sae.k(), top_k).unwrap();
                assert_eq!(host, device, "seed {seed}, {top_k:?}");
            }
            assert_eq!(sae.encode_on_device(&x, sae.k()).unwrap(), host);
            // The cases must exercise ties and rows the ReLU zeroes, or they prove little.
            ties += host
                .acts
                .chunks(sae.k())
                .filter(|r| r.windows(2).any(|w| w[0] == w[1]))
                .count();
            assert_eq!(
                sae.encode(&x).unwrap(),
                host,
                "the CPU default is the host path"
            );
        }
        assert!(ties > 100, "only {ties} rows with tied activations");
    }

    #[test]
    fn device_encoding_spans_several_passes_and_keeps_zeroed_slots() {
        let (sae, x) = random_case(7, DEVICE_CHUNK_ROWS + 37, false);
        let host = sae.encode_on_host(&x, sae.k()).unwrap();
        assert!(host.acts.contains(&0.0), "some slot should not fire");
        // Another k than the trained one selects the same way.
        let k = sae.dict_size().min(3);
        let host_k = sae.encode_on_host(&x, k).unwrap();
        for top_k in BOTH {
            assert_eq!(sae.encode_on_device_with(&x, sae.k(), top_k).unwrap(), host);
            assert_eq!(sae.encode_on_device_with(&x, k, top_k).unwrap(), host_k);
        }
    }

    #[test]
    fn the_kernel_is_chosen_where_it_fits_and_tensor_ops_elsewhere() {
        let cpu = &Device::Cpu;
        assert_eq!(DeviceTopK::for_shape(cpu, 2048, 16), DeviceTopK::Kernel);
        assert_eq!(DeviceTopK::for_shape(cpu, 4096, 64), DeviceTopK::Kernel);
        assert_eq!(DeviceTopK::for_shape(cpu, 4096, 65), DeviceTopK::Ops);
        // k above the kernel's widest list (and above 32, a warp): the default falls back to
        // tensor ops, the kernel asked for by name refuses with the reason.
        let mut rng = super::super::rng::SplitMix64::new(11);
        let (d, m, n) = (6, 200, 300);
        let mut draw =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.below(7) as f32 - 3.0).collect() };
        let (w, b, x) = (draw(m * d), draw(m), draw(n * d));
        let sae = TopKSae::from_vecs(d, m, w.clone(), b, w, vec![0.0; d], 70, 1.0).unwrap();
        let x = Tensor::from_vec(x, (n, d), cpu).unwrap();
        let host = sae.encode_on_host(&x, 70).unwrap();
        assert_eq!(sae.encode_on_device(&x, 70).unwrap(), host);
        let refused = sae.encode_on_device_with(&x, 70, DeviceTopK::Kernel);
        assert!(
            matches!(
                refused,
                Err(SaeError::UnsupportedKernelShape {
                    dict_size: 200,
                    k: 70,
                    ..
                })
            ),
            "{refused:?}"
        );
        // k above a warp's 32 lanes, up to the widest list, is the kernel's too.
        for k in [33, 48, 64] {
            let kernel = sae
                .encode_on_device_with(&x, k, DeviceTopK::Kernel)
                .unwrap();
            assert_eq!(kernel, sae.encode_on_host(&x, k).unwrap(), "k {k}");
        }
    }

    #[test]
    fn device_encoding_refuses_what_the_host_refuses() {
        let sae = axes_sae();
        let nan = Tensor::new(
            &[
                [0.0f32, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, f32::INFINITY, 0.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let wrong = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let one = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
        // bf16 keys (a bf16 scan's taps) are encoded in f32, as on the host.
        let half = Tensor::new(&[[2.0f32, 0.5, 0.0]], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        for top_k in BOTH {
            assert!(matches!(
                sae.encode_on_device_with(&nan, 2, top_k),
                Err(SaeError::NonFinite { row: 2, .. })
            ));
            assert!(matches!(
                sae.encode_on_device_with(&wrong, 2, top_k),
                Err(SaeError::Shape { .. })
            ));
            assert!(matches!(
                sae.encode_on_device_with(&one, 5, top_k),
                Err(SaeError::InvalidConfig(_))
            ));
            assert_eq!(
                sae.encode_on_device_with(&half, 2, top_k).unwrap(),
                sae.encode_on_host(&half, 2).unwrap()
            );
        }
        // A non-finite row in a later pass is reported by its row in the whole batch.
        let mut rows = vec![0f32; (DEVICE_CHUNK_ROWS + 5) * 3];
        rows[(DEVICE_CHUNK_ROWS + 3) * 3 + 1] = f32::NAN;
        let late = Tensor::from_vec(rows, (DEVICE_CHUNK_ROWS + 5, 3), &Device::Cpu).unwrap();
        for top_k in BOTH {
            let e = sae.encode_on_device_with(&late, 2, top_k).unwrap_err();
            assert!(
                matches!(e, SaeError::NonFinite { row, .. } if row == DEVICE_CHUNK_ROWS + 3),
                "{e}"
            );
        }
    }

    #[test]
    fn an_sae_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TopKSae>();
        assert_send_sync::<SparseCodes>();
    }

    #[test]
    fn top_k_flags_non_finite_values() {
        let mut ids = [0u32; 2];
        let mut vals = [0f32; 2];
        assert!(!top_k_into(
            &[1.0, f32::NAN, 0.5],
            &[0.0; 3],
            &mut ids,
            &mut vals
        ));
        assert!(!top_k_into(
            &[1.0, 2.0, 0.5],
            &[0.0, f32::INFINITY, 0.0],
            &mut ids,
            &mut vals
        ));
    }

    #[test]
    fn encode_and_decode_round_trip_on_axes() {
        let sae = axes_sae();
        let x = Tensor::new(&[[2.0f32, 0.5, 0.0], [-3.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let codes = sae.encode(&x).unwrap();
        assert_eq!(codes.rows(), 2);
        assert_eq!(codes.row(0).unwrap(), (&[0u32, 1][..], &[2.0f32, 0.5][..]));
        // Only feature 3 is positive in row 1; the second slot did not fire and carries 0.
        let (ids, acts) = codes.row(1).unwrap();
        assert_eq!((ids[0], acts[0]), (3, 3.0));
        assert_eq!(acts[1], 0.0);
        assert_eq!(codes.fired(), 3);
        let back = sae.decode(&codes).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(back, vec![vec![2.0, 0.5, 0.0], vec![-3.0, 0.0, 0.0]]);
    }

    #[test]
    fn bad_inputs_are_refused_not_panicked_on() {
        let sae = axes_sae();
        let wrong = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(sae.encode(&wrong), Err(SaeError::Shape { .. })));
        let nan = Tensor::new(&[[0.0f32, 0.0, 0.0], [f32::NAN, 0.0, 0.0]], &Device::Cpu).unwrap();
        assert!(matches!(
            sae.encode(&nan),
            Err(SaeError::NonFinite { row: 1, .. })
        ));
        assert!(matches!(
            sae.encode_with_k(&Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap(), 5),
            Err(SaeError::InvalidConfig(_))
        ));
        let codes = SparseCodes {
            k: 2,
            ids: vec![0, 9],
            acts: vec![1.0, 1.0],
        };
        assert!(matches!(
            sae.decode(&codes),
            Err(SaeError::FeatureOutOfRange { id: 9, .. })
        ));
        let ragged = SparseCodes {
            k: 2,
            ids: vec![0, 1, 2],
            acts: vec![1.0, 1.0, 1.0],
        };
        assert!(matches!(sae.decode(&ragged), Err(SaeError::Shape { .. })));
    }
}
