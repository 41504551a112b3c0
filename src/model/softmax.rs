//! The causal softmax of attention scores as one in-place op: `softmax(scale * x)` over the keys
//! a query may see, 0 for the keys after it. On CUDA it is one fused kernel
//! (`kernels/attention.cu`) instead of four passes (scale, mask, candle's softmax); on the CPU
//! the forward pass keeps its composed ops (bit-identical to earlier releases) and this CPU
//! version serves as the reference the kernel is checked against.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};

use super::error::Result;

/// Scores `[batch, rows, cols]` where row `r` is query position `start + r % seq`.
struct CausalSoftmax {
    seq: usize,
    start: usize,
    scale: f32,
}

impl CausalSoftmax {
    fn visible(&self, row: usize, cols: usize) -> usize {
        (self.start + row % self.seq + 1).min(cols)
    }
}

/// Replaces each row of `scores` (contiguous, last axis the keys; rows of query `start + r %
/// seq`) by its causal softmax with `scale`.
pub(crate) fn causal_softmax_(scores: &Tensor, seq: usize, start: usize, scale: f32) -> Result<()> {
    Ok(scores.inplace_op1(&CausalSoftmax { seq, start, scale })?)
}

fn softmax_rows<T: Copy>(
    op: &CausalSoftmax,
    data: &mut [T],
    cols: usize,
    get: impl Fn(T) -> f32,
    put: impl Fn(f32) -> T,
) {
    for (r, row) in data.chunks_exact_mut(cols).enumerate() {
        let visible = op.visible(r, cols);
        let m = row[..visible]
            .iter()
            .map(|&v| get(v) * op.scale)
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row[..visible]
            .iter()
            .map(|&v| (get(v) * op.scale - m).exp())
            .sum();
        for (j, v) in row.iter_mut().enumerate() {
            *v = put(if j < visible {
                (get(*v) * op.scale - m).exp() / sum
            } else {
                0.0
            });
        }
    }
}

impl InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "s3mem-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal softmax needs contiguous scores");
        };
        let cols = layout.dims()[layout.dims().len() - 1];
        match storage {
            CpuStorage::F32(v) => softmax_rows(self, &mut v[o1..o2], cols, |x| x, |x| x),
            CpuStorage::BF16(v) => softmax_rows(
                self,
                &mut v[o1..o2],
                cols,
                half::bf16::to_f32,
                half::bf16::from_f32,
            ),
            CpuStorage::F16(v) => softmax_rows(
                self,
                &mut v[o1..o2],
                cols,
                half::f16::to_f32,
                half::f16::from_f32,
            ),
            _ => candle_core::bail!("causal softmax of an integer tensor"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    #[expect(
        unsafe_code,
        reason = "launching a CUDA kernel is unsafe; the SAFETY comment at the launch says why it is sound"
    )]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        use candle_core::DType;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
        const ROWS_PER_BLOCK: usize = 8;

        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal softmax needs contiguous scores");
        };
        let cols = layout.dims()[layout.dims().len() - 1];
        let rows = (o2 - o1) / cols;
        let kernel = match storage.dtype() {
            DType::BF16 => "causal_softmax_bf16",
            DType::F16 => "causal_softmax_f16",
            DType::F32 => "causal_softmax_f32",
            other => candle_core::bail!("causal softmax of {other:?}"),
        };
        let dev = storage.device().clone();
        let func = dev.get_or_load_custom_func(kernel, "s3mem_attention", PTX)?;
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows, cols, seq, start) =
            (rows as i32, cols as i32, self.seq as i32, self.start as i32);
        macro_rules! launch {
            ($t:ty) => {{
                let mut slice = storage.as_cuda_slice_mut::<$t>()?.slice_mut(o1..o2);
                let mut builder = func.builder();
                builder.arg(&mut slice);
                builder.arg(&rows);
                builder.arg(&cols);
                builder.arg(&seq);
                builder.arg(&start);
                builder.arg(&self.scale);
                // SAFETY: the kernel reads and writes `rows * cols` elements of `slice`, which
                // holds exactly that many; the scalar arguments match its signature.
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match storage.dtype() {
            DType::BF16 => launch!(half::bf16),
            DType::F16 => launch!(half::f16),
            _ => launch!(f32),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// The composed ops the CPU forward pass uses: scale, additive causal mask, softmax.
    fn reference(x: &Tensor, seq: usize, start: usize, scale: f64) -> Tensor {
        let (b, rows, cols) = x.dims3().unwrap();
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| {
                (0..cols).map(move |j| {
                    if j > start + r % seq {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (rows, cols), &Device::Cpu).unwrap();
        let s = (x * scale).unwrap().broadcast_add(&mask).unwrap();
        assert_eq!(s.dims(), &[b, rows, cols]);
        candle_nn::ops::softmax_last_dim(&s).unwrap()
    }

    #[test]
    fn matches_scale_mask_and_softmax() {
        // 2 groups of 3 query rows each (seq 3) against 7 keys, the queries at positions 4..7.
        let x = Tensor::randn(0f32, 3.0, (2, 6, 7), &Device::Cpu).unwrap();
        let fused = x.copy().unwrap();
        causal_softmax_(&fused, 3, 4, 0.125).unwrap();
        let diff = (fused - reference(&x, 3, 4, 0.125))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
        let half = x.to_dtype(DType::BF16).unwrap();
        causal_softmax_(&half, 3, 4, 0.125).unwrap();
        assert_eq!(half.dtype(), DType::BF16);
    }
}
