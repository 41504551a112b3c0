//! The fused top-k of SAE pre-activations: one op reads `[rows, m]` pre-activations and a
//! `[m]` bias and returns each row's top-k features, selected exactly as the host's
//! [`top_k_into`] selects them. On CUDA it is one kernel (`kernels/topk.cu`) in place of `k`
//! rounds of tensor ops; on the CPU the same op runs [`top_k_into`] row by row, the reference
//! the kernel is checked against.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::error::{Result, SaeError};
use super::topk::{top_k_into, SparseCodes};

/// The list widths the kernel is built for (`sae_top_k_16`, ...); a row's top k is merged from
/// per-lane lists of the narrowest width at least `k`.
const WIDTHS: [usize; 3] = [16, 32, 64];

/// Returns the kernel's list width for a dictionary of `dict_size` features and `k` kept per
/// row, or why the kernel cannot select them.
///
/// Feature ids and the dictionary size travel as 32-bit signed integers, and `u32::MAX` marks an
/// empty slot, so the dictionary must stay below `i32::MAX` features.
pub(crate) fn kernel_width(dict_size: usize, k: usize) -> Result<usize> {
    let unsupported = |reason: String| SaeError::UnsupportedKernelShape {
        dict_size,
        k,
        reason,
    };
    if dict_size >= i32::MAX as usize {
        return Err(unsupported(format!(
            "the dictionary must hold fewer than {} features",
            i32::MAX
        )));
    }
    if k == 0 || k > dict_size {
        return Err(unsupported(format!("k must be in 1..={dict_size}")));
    }
    WIDTHS
        .iter()
        .copied()
        .find(|&w| k <= w)
        .ok_or_else(|| unsupported(format!("k must be at most {}", WIDTHS[WIDTHS.len() - 1])))
}

/// Rows per launch at most: row, id and output indices stay far from `i32::MAX` in the kernel.
const MAX_ROWS: usize = 1 << 24;

/// Selects the top `out.k` of `pre + bias` per row (`pre` `[rows, m]`, `bias` `[m]`, both f32,
/// contiguous) and appends them to `out` (after the ReLU). Returns the first row (counted from
/// `pre`'s first) that holds a non-finite value, if any; the codes appended for a batch with
/// such a row are not meaningful.
pub(crate) fn top_k(pre: &Tensor, bias: &Tensor, out: &mut SparseCodes) -> Result<Option<usize>> {
    let (rows, k) = (pre.dim(0)?, out.k);
    if rows == 0 {
        return Ok(None);
    }
    let packed = pre
        .apply_op2_no_bwd(bias, &FusedTopK { k })?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let (ids, act_bits) = packed.split_at(rows * k);
    out.ids.extend_from_slice(ids);
    let first = out.acts.len();
    out.acts.extend(act_bits.iter().map(|&b| f32::from_bits(b)));
    // A selected activation is finite and at least 0; NaN marks a row with a non-finite value.
    Ok(out.acts[first..]
        .iter()
        .position(|a| a.is_nan())
        .map(|p| p / k))
}

/// The op: output `[2, rows, k]` u32, the feature ids then the activations' f32 bits.
struct FusedTopK {
    k: usize,
}

/// What the op reads: the pre-activations' rows and width and both inputs' element ranges.
struct Operands {
    rows: usize,
    dict_size: usize,
    pre: (usize, usize),
    bias: (usize, usize),
}

impl FusedTopK {
    /// Checks both layouts and the shape against the kernel's limits.
    fn operands(&self, pre: &Layout, bias: &Layout) -> candle_core::Result<Operands> {
        let (&[rows, dict_size], Some(pre_range)) = (pre.dims(), pre.contiguous_offsets()) else {
            candle_core::bail!(
                "fused top-k needs contiguous [rows, m] pre-activations, got {:?}",
                pre.dims()
            );
        };
        let bias_range = match (bias.dims(), bias.contiguous_offsets()) {
            (&[m], Some(range)) if m == dict_size => range,
            (dims, _) => candle_core::bail!(
                "fused top-k needs a contiguous bias of [{dict_size}], got {dims:?}"
            ),
        };
        if rows > MAX_ROWS {
            candle_core::bail!("fused top-k takes at most {MAX_ROWS} rows a call, got {rows}");
        }
        kernel_width(dict_size, self.k).map_err(candle_core::Error::wrap)?;
        Ok(Operands {
            rows,
            dict_size,
            pre: pre_range,
            bias: bias_range,
        })
    }
}

impl CustomOp2 for FusedTopK {
    fn name(&self) -> &'static str {
        "s3mem-sae-top-k"
    }

    fn cpu_fwd(
        &self,
        pre: &CpuStorage,
        pre_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ops = self.operands(pre_layout, bias_layout)?;
        let (CpuStorage::F32(pre), CpuStorage::F32(bias)) = (pre, bias) else {
            candle_core::bail!("fused top-k needs f32 pre-activations and bias");
        };
        let (pre, bias) = (&pre[ops.pre.0..ops.pre.1], &bias[ops.bias.0..ops.bias.1]);
        let (k, n) = (self.k, ops.rows * self.k);
        let mut out = vec![0u32; 2 * n];
        let mut vals = vec![0f32; k];
        let (ids, acts) = out.split_at_mut(n);
        for (r, row) in pre.chunks_exact(ops.dict_size).enumerate() {
            let slots = r * k..(r + 1) * k;
            let finite = top_k_into(row, bias, &mut ids[slots.clone()], &mut vals);
            for (bits, &v) in acts[slots].iter_mut().zip(&vals) {
                *bits = if finite { v.max(0.0) } else { f32::NAN }.to_bits();
            }
        }
        Ok((CpuStorage::U32(out), Shape::from((2, ops.rows, k))))
    }

    #[cfg(feature = "cuda")]
    #[expect(
        unsafe_code,
        reason = "launching a CUDA kernel is unsafe; the SAFETY comment at the launch says why it is sound"
    )]
    fn cuda_fwd(
        &self,
        pre: &candle_core::CudaStorage,
        pre_layout: &Layout,
        bias: &candle_core::CudaStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/topk.ptx"));
        // One warp per row; few warps a block, since the widest lists use 255 registers a lane.
        const ROWS_PER_BLOCK: usize = 4;

        let ops = self.operands(pre_layout, bias_layout)?;
        let width = kernel_width(ops.dict_size, self.k).map_err(candle_core::Error::wrap)?;
        if ops.rows == 0 {
            candle_core::bail!("fused top-k of no rows");
        }
        let dev = pre.device().clone();
        let func =
            dev.get_or_load_custom_func(&format!("sae_top_k_{width}"), "s3mem_sae_topk", PTX)?;
        let pre = pre.as_cuda_slice::<f32>()?.slice(ops.pre.0..ops.pre.1);
        let bias = bias.as_cuda_slice::<f32>()?.slice(ops.bias.0..ops.bias.1);
        let mut out = dev.alloc_zeros::<u32>(2 * ops.rows * self.k)?;
        let cfg = LaunchConfig {
            grid_dim: (ops.rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // `operands` bounds all three far below i32::MAX.
        let (rows, m, k) = (ops.rows as i32, ops.dict_size as i32, self.k as i32);
        let mut builder = func.builder();
        builder.arg(&pre);
        builder.arg(&bias);
        builder.arg(&mut out);
        builder.arg(&rows);
        builder.arg(&m);
        builder.arg(&k);
        // SAFETY: the kernel reads `rows * m` floats of `pre` and `m` of `bias`, exactly the
        // views' lengths, and writes `2 * rows * k` u32 of `out`, its length; warps past the
        // last row return before touching memory, and k <= the kernel's list width
        // (`kernel_width`); the scalar arguments match its signature.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((2, ops.rows, self.k)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn widths_cover_every_k_up_to_64_and_refuse_the_rest() {
        assert_eq!(kernel_width(2048, 16).unwrap(), 16);
        assert_eq!(kernel_width(2048, 1).unwrap(), 16);
        assert_eq!(kernel_width(4096, 17).unwrap(), 32);
        assert_eq!(kernel_width(4096, 33).unwrap(), 64);
        assert_eq!(kernel_width(64, 64).unwrap(), 64);
        for (m, k) in [(2048, 65), (2048, 0), (8, 9), (i32::MAX as usize, 16)] {
            let e = kernel_width(m, k).unwrap_err();
            assert!(
                matches!(e, SaeError::UnsupportedKernelShape { dict_size, k: ek, .. } if dict_size == m && ek == k),
                "{e}"
            );
        }
        let msg = kernel_width(2048, 100).unwrap_err().to_string();
        assert!(msg.contains("k 100") && msg.contains("at most 64"), "{msg}");
    }

    #[test]
    fn the_op_packs_ids_then_activation_bits() {
        let pre = Tensor::new(
            &[[1.0f32, 3.0, -2.0, 3.0], [0.5, -1.0, -3.0, -0.5]],
            &Device::Cpu,
        )
        .unwrap();
        let bias = Tensor::new(&[0.0f32, 0.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let mut out = SparseCodes {
            k: 3,
            ids: Vec::new(),
            acts: Vec::new(),
        };
        assert_eq!(top_k(&pre, &bias, &mut out).unwrap(), None);
        // Ties to the lower id; the ReLU after selection keeps the ids of negative values.
        assert_eq!(out.ids, [1, 3, 0, 0, 3, 1]);
        assert_eq!(out.acts, [3.0, 3.0, 1.0, 0.5, 0.0, 0.0]);
        // Appends, and reports a non-finite row counted from this batch's first.
        let bad = Tensor::new(
            &[[1.0f32, 2.0, 3.0, 4.0], [1.0, f32::INFINITY, 0.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(top_k(&bad, &bias, &mut out).unwrap(), Some(1));
        assert_eq!((out.ids.len(), out.acts.len()), (12, 12));
    }

    #[test]
    fn the_op_refuses_what_the_kernel_cannot_take() {
        let dev = &Device::Cpu;
        let pre = Tensor::zeros((3, 8), DType::F32, dev).unwrap();
        let bias = Tensor::zeros(8, DType::F32, dev).unwrap();
        let run = |pre: &Tensor, bias: &Tensor, k| {
            let (ids, acts) = (Vec::new(), Vec::new());
            top_k(pre, bias, &mut SparseCodes { k, ids, acts })
        };
        let too_many = run(
            &Tensor::zeros((3, 100), DType::F32, dev).unwrap(),
            &Tensor::zeros(100, DType::F32, dev).unwrap(),
            65,
        );
        assert!(too_many.unwrap_err().to_string().contains("at most 64"));
        assert!(run(&pre, &Tensor::zeros(7, DType::F32, dev).unwrap(), 2).is_err());
        assert!(run(
            &pre.t().unwrap(),
            &Tensor::zeros(3, DType::F32, dev).unwrap(),
            2
        )
        .is_err());
        assert!(run(&pre.to_dtype(DType::F16).unwrap(), &bias, 2).is_err());
        assert_eq!(run(&pre.narrow(0, 0, 0).unwrap(), &bias, 2).unwrap(), None);
    }
}
