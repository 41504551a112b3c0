//! Our own forward pass over GGUF weights, with taps on the pre-RoPE key and query projections.
//!
//! candle-transformers keeps its projections private and returns last-position logits only, so
//! s3mem runs its own. The arithmetic mirrors candle's quantized llama (same kernels, same order
//! of operations), which the parity test checks.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::RmsNorm;

use super::attention::{attention, attention_probabilities, causal_mask};
use super::config::{Architecture, ModelConfig};
use super::error::{ModelError, Result};

/// How weights are held in memory; measured trade-offs are in README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// As shipped in the GGUF file (quantized kernels; smallest, slowest on CPU).
    Quantized,
    /// Dequantized to f16 at load.
    F16,
    /// Dequantized to f32 at load: the fastest on CPU.
    #[default]
    F32,
    /// Dequantized to bf16 at load, activations in bf16 too: the GPU default for unquantized
    /// weights (tensor cores).
    Bf16,
}

impl WeightFormat {
    /// Returns the default format on `device`: f32 on the CPU; on a GPU, bf16 for weights
    /// shipped unquantized and f32 for quantized ones (their dequantized values rounded again
    /// to bf16 changed 17% of the top-k feature sets against the CPU, f32 0.003%:
    /// docs/gpu.md).
    pub fn default_for(device: &Device, quantized: bool) -> Self {
        if device.is_cpu() || quantized {
            Self::F32
        } else {
            Self::Bf16
        }
    }

    /// Returns the dtype activations flow in: bf16 for bf16 weights, else f32 (the f16 and
    /// quantized matmuls take and return f32).
    pub fn activation_dtype(self) -> DType {
        match self {
            Self::Bf16 => DType::BF16,
            _ => DType::F32,
        }
    }
}

impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "q" | "quantized" | "gguf" => Ok(Self::Quantized),
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!(
                "unknown weight format `{s}` (quantized, f16, f32, bf16)"
            )),
        }
    }
}

/// A sorted, duplicate-free set of layer indices to tap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerSet(Vec<usize>);

impl LayerSet {
    /// Returns a set from any list of layers (sorted, deduplicated); at least one layer.
    pub fn new(mut layers: Vec<usize>) -> Result<Self> {
        layers.sort_unstable();
        layers.dedup();
        if layers.is_empty() {
            return Err(ModelError::InvalidScan("the layer set is empty".into()));
        }
        Ok(Self(layers))
    }

    /// Returns the layers in ascending order.
    pub fn layers(&self) -> &[usize] {
        &self.0
    }

    /// Returns the deepest layer: the scan stops there.
    pub fn deepest(&self) -> usize {
        self.0[self.0.len() - 1]
    }

    /// Returns whether `layer` is in the set.
    pub fn contains(&self, layer: usize) -> bool {
        self.0.binary_search(&layer).is_ok()
    }

    /// Checks every layer against a model's depth.
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        match self.0.iter().find(|&&l| l >= config.layers) {
            Some(&layer) => Err(ModelError::LayerOutOfRange {
                layer,
                layers: config.layers,
            }),
            None => Ok(()),
        }
    }
}

impl FromStr for LayerSet {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let layers = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("`{p}` is not a layer index"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Self::new(layers).map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for LayerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|l| l.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// Which projections a forward pass records, and at which layers.
#[derive(Debug, Clone, Default)]
pub struct TapRequest {
    /// Layers whose pre-RoPE key projections are returned.
    pub keys: Option<LayerSet>,
    /// Layers whose pre-RoPE query projections are returned.
    pub queries: Option<LayerSet>,
}

impl TapRequest {
    fn deepest(&self) -> Option<usize> {
        let k = self.keys.as_ref().map(LayerSet::deepest);
        let q = self.queries.as_ref().map(LayerSet::deepest);
        k.max(q)
    }
}

/// Which logits a forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// Projections recorded at one layer: `[tokens, heads, head_dim]`, f32, before RoPE.
#[derive(Debug, Clone)]
pub struct LayerTap {
    pub layer: usize,
    pub values: Tensor,
}

/// What a forward pass returns.
#[derive(Debug, Default)]
pub struct ForwardOutput {
    /// Key projections per tapped layer, `[tokens, kv_heads, head_dim]`.
    pub keys: Vec<LayerTap>,
    /// Query projections per tapped layer, `[tokens, heads, head_dim]`.
    pub queries: Vec<LayerTap>,
    /// `[tokens, vocab]` (`Logits::All`) or `[1, vocab]` (`Logits::Last`).
    pub logits: Option<Tensor>,
    /// Attention probabilities of the last rows per tapped layer, `[heads, rows, window]`
    /// (only [`Transformer::attention_rows`] asks for them).
    pub attention: Vec<LayerTap>,
}

/// Which layers' attention rows a forward pass records, for the last `rows` positions.
struct AttentionTap<'a> {
    layers: &'a LayerSet,
    rows: usize,
}

/// The KV cache of one generation; the scan never keeps one. A clone shares the cached tensors
/// (they are never written in place), so one prefix can be continued several ways.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Returns the number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Inputs of at most this many rows take the narrow (quantized) path when there is one.
const NARROW_ROWS: usize = 4;

/// A projection with two layouts: dense for prefill and scan, where gemm shines, and Q8_0 for
/// decode steps, where gemm's packing of the whole dense matrix for one row costs more than
/// the product (f32 decode ran 6 tokens/s, Q8_0 several times that).
struct Linear {
    wide: QMatMul,
    narrow: Option<QMatMul>,
}

impl Linear {
    /// Applies the projection to the last axis of `x`. Leading axes are folded into rows first,
    /// so a batch of windows is one large matmul rather than one per window.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let (lead, d_in) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, d_in[0]))?;
        let y = match &self.narrow {
            Some(n) if rows <= NARROW_ROWS => n.forward(&x2)?,
            _ => self.wide.forward(&x2)?,
        };
        let mut out = lead.to_vec();
        out.push(y.dim(1)?);
        y.reshape(out)
    }
}

struct Block {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    ffn_norm: RmsNorm,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// A loaded decoder-only transformer (llama or qwen2 family).
pub struct Transformer {
    config: ModelConfig,
    format: WeightFormat,
    /// The dtype activations flow in (`format.activation_dtype()`).
    dtype: DType,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

struct Loader<'a> {
    ct: &'a gguf_file::Content,
    reader: BufReader<File>,
    path: PathBuf,
    device: Device,
    format: WeightFormat,
}

impl Loader<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        if !self.ct.tensor_infos.contains_key(name) {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            });
        }
        self.ct
            .tensor(&mut self.reader, name, &self.device)
            .map_err(|e| ModelError::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })
    }

    fn optional(&mut self, name: &str) -> Result<Option<Tensor>> {
        if !self.ct.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(self.dense(name)?))
    }

    /// A small tensor (norm, bias) dequantized to the activation dtype.
    fn dense(&mut self, name: &str) -> Result<Tensor> {
        let t = self.qtensor(name)?.dequantize(&self.device)?;
        Ok(t.to_dtype(self.format.activation_dtype())?)
    }

    fn matmul(&mut self, name: &str) -> Result<Linear> {
        let q = self.qtensor(name)?;
        self.to_linear(q, None)
    }

    /// Builds both layouts; `dense` reuses an already dequantized copy of `q`.
    fn to_linear(&self, q: QTensor, dense: Option<Tensor>) -> Result<Linear> {
        let dense = |q: &QTensor| -> Result<Tensor> {
            match &dense {
                Some(t) => Ok(t.clone()),
                None => Ok(q.dequantize(&self.device)?),
            }
        };
        let narrow = |q: QTensor, w: &Tensor| -> Result<QMatMul> {
            let q = match q.dtype() {
                GgmlDType::Q8_0 => q,
                _ => QTensor::quantize(w, GgmlDType::Q8_0)?,
            };
            Ok(QMatMul::QTensor(Arc::new(q)))
        };
        Ok(match self.format {
            WeightFormat::Quantized => Linear {
                wide: match q.dtype() {
                    // Float tensors have no quantized kernel worth using.
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        QMatMul::Tensor(q.dequantize(&self.device)?)
                    }
                    _ => QMatMul::QTensor(Arc::new(q)),
                },
                narrow: None,
            },
            WeightFormat::F16 => {
                let w = dense(&q)?;
                Linear {
                    wide: QMatMul::TensorF16(w.to_dtype(DType::F16)?),
                    narrow: Some(narrow(q, &w)?),
                }
            }
            WeightFormat::F32 => {
                let w = dense(&q)?;
                Linear {
                    narrow: Some(narrow(q, &w)?),
                    wide: QMatMul::Tensor(w),
                }
            }
            // On a GPU a dense bf16 matmul is fast for one row too: no second layout.
            WeightFormat::Bf16 => Linear {
                wide: QMatMul::Tensor(dense(&q)?.to_dtype(DType::BF16)?),
                narrow: None,
            },
        })
    }
}

/// Returns the dense projection of `w` (f32, `[out, in]`) held in `format`, without a narrow
/// layout (models built in memory are for scanning and benchmarks, not decoding).
fn dense_linear(w: Tensor, format: WeightFormat) -> Result<Linear> {
    let wide = match format {
        WeightFormat::F32 => QMatMul::Tensor(w),
        WeightFormat::F16 => QMatMul::TensorF16(w.to_dtype(DType::F16)?),
        WeightFormat::Bf16 => QMatMul::Tensor(w.to_dtype(DType::BF16)?),
        WeightFormat::Quantized => {
            QMatMul::QTensor(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?))
        }
    };
    Ok(Linear { wide, narrow: None })
}

impl Transformer {
    pub(crate) fn from_content(
        ct: &gguf_file::Content,
        reader: BufReader<File>,
        path: &Path,
        config: ModelConfig,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let mut ld = Loader {
            ct,
            reader,
            path: path.into(),
            device: device.clone(),
            format,
        };
        let eps = config.rms_eps;
        let dtype = format.activation_dtype();
        let embed_q = ld.qtensor("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?.to_dtype(dtype)?;
        let lm_head = if ct.tensor_infos.contains_key("output.weight") {
            ld.matmul("output.weight")?
        } else {
            // Tied embeddings: share the dequantized table instead of a second copy.
            ld.to_linear(embed_q, Some(embed.clone()))?
        };
        let norm = RmsNorm::new(ld.dense("output_norm.weight")?, eps);
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: RmsNorm::new(ld.dense(&format!("{p}.attn_norm.weight"))?, eps),
                wq: ld.matmul(&format!("{p}.attn_q.weight"))?,
                wk: ld.matmul(&format!("{p}.attn_k.weight"))?,
                wv: ld.matmul(&format!("{p}.attn_v.weight"))?,
                wo: ld.matmul(&format!("{p}.attn_output.weight"))?,
                bq: ld.optional(&format!("{p}.attn_q.bias"))?,
                bk: ld.optional(&format!("{p}.attn_k.bias"))?,
                bv: ld.optional(&format!("{p}.attn_v.bias"))?,
                ffn_norm: RmsNorm::new(ld.dense(&format!("{p}.ffn_norm.weight"))?, eps),
                w_gate: ld.matmul(&format!("{p}.ffn_gate.weight"))?,
                w_up: ld.matmul(&format!("{p}.ffn_up.weight"))?,
                w_down: ld.matmul(&format!("{p}.ffn_down.weight"))?,
            });
        }
        let (cos, sin) = rope_tables(config.head_dim, config.rope_base, config.context, device)?;
        Ok(Self {
            config,
            format,
            dtype,
            embed,
            blocks,
            norm,
            lm_head,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            device: device.clone(),
        })
    }

    /// Builds a model of `shape` with seeded random weights (norms 1, matrices uniform with
    /// standard deviation 0.02) in `format` on `device`: for benchmarks and parity runs where
    /// values do not matter but shapes do. The same seed gives the same weights on any device.
    pub fn random(
        shape: &super::random::RandomShape,
        format: WeightFormat,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        use super::random::uniform_tensor;
        let config = shape.config.clone();
        let dtype = format.activation_dtype();
        let (h, hd, ffn) = (config.hidden, config.head_dim, shape.ffn);
        let (q_dim, kv_dim) = (config.heads * hd, config.kv_heads * hd);
        let mut next = 0u64;
        let mut matrix = |rows: usize, cols: usize| -> Result<Tensor> {
            next += 1;
            uniform_tensor(seed, next, (rows, cols), 0.02, device)
        };
        let embed = matrix(config.vocab, h)?.to_dtype(dtype)?;
        let ones = || Tensor::ones(h, dtype, device);
        let eps = config.rms_eps;
        let mut blocks = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            blocks.push(Block {
                attn_norm: RmsNorm::new(ones()?, eps),
                wq: dense_linear(matrix(q_dim, h)?, format)?,
                wk: dense_linear(matrix(kv_dim, h)?, format)?,
                wv: dense_linear(matrix(kv_dim, h)?, format)?,
                wo: dense_linear(matrix(h, q_dim)?, format)?,
                bq: None,
                bk: None,
                bv: None,
                ffn_norm: RmsNorm::new(ones()?, eps),
                w_gate: dense_linear(matrix(ffn, h)?, format)?,
                w_up: dense_linear(matrix(ffn, h)?, format)?,
                w_down: dense_linear(matrix(h, ffn)?, format)?,
            });
        }
        let lm_head = dense_linear(matrix(config.vocab, h)?, format)?;
        let (cos, sin) = rope_tables(hd, config.rope_base, config.context, device)?;
        Ok(Self {
            norm: RmsNorm::new(ones()?, eps),
            format,
            dtype,
            embed,
            blocks,
            lm_head,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            device: device.clone(),
            config,
        })
    }

    /// Returns the model's shape and constants.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Returns the weight format in memory.
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// Returns the device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Returns the dtype activations flow in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs `tokens` at positions `start..start + tokens.len()`.
    ///
    /// Only layers `0..=d` run, where `d` is the deepest tapped layer, unless logits are asked
    /// for. With a cache, attention also sees the cached positions and the cache grows;
    /// without one, the window is self-contained and nothing outlives the call. Taps come back
    /// on the host as f32, `[tokens, heads, head_dim]`; logits stay on the device, as f32.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: Option<&mut KvCache>,
        taps: &TapRequest,
        logits: Logits,
    ) -> Result<ForwardOutput> {
        let start = cache.as_ref().map_or(0, |c| c.len);
        self.check_window(tokens, start, taps)?;
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut out = self.run(&ids, start, cache, taps, logits, None)?;
        for tap in out.keys.iter_mut().chain(out.queries.iter_mut()) {
            tap.values = to_host_f32(&tap.values.squeeze(0)?)?;
        }
        if let Some(l) = out.logits.take() {
            out.logits = Some(l.squeeze(0)?.to_dtype(DType::F32)?);
        }
        Ok(out)
    }

    /// Runs a batch of self-contained windows in one pass, each at positions `0..len`; shorter
    /// windows are padded at the end, which causal attention keeps from affecting real tokens.
    /// Taps come back on the host as f32, `[windows, longest window, heads, head_dim]` (rows
    /// past a window's length are padding). Layers past the deepest tap do not run.
    pub fn forward_windows(&self, windows: &[&[u32]], taps: &TapRequest) -> Result<ForwardOutput> {
        let mut out = self.forward_windows_on_device(windows, taps)?;
        for tap in out.keys.iter_mut().chain(out.queries.iter_mut()) {
            tap.values = tap.values.to_device(&Device::Cpu)?;
        }
        Ok(out)
    }

    /// Runs windows like [`Transformer::forward_windows`] but leaves the taps (f32) on the
    /// model's device, for consumers that work there (SAE encoding on a GPU).
    pub fn forward_windows_on_device(
        &self,
        windows: &[&[u32]],
        taps: &TapRequest,
    ) -> Result<ForwardOutput> {
        let seq = windows.iter().map(|w| w.len()).max().unwrap_or(0);
        for w in windows {
            self.check_window(w, 0, taps)?;
        }
        let mut ids = Vec::with_capacity(windows.len() * seq);
        for w in windows {
            ids.extend_from_slice(w);
            ids.resize(ids.len() + seq - w.len(), 0);
        }
        let ids = Tensor::from_vec(ids, (windows.len(), seq), &self.device)?;
        let mut out = self.run(&ids, 0, None, taps, Logits::None, None)?;
        for tap in out.keys.iter_mut().chain(out.queries.iter_mut()) {
            tap.values = tap.values.to_dtype(DType::F32)?;
        }
        Ok(out)
    }

    /// Runs `tokens` (after the cached positions, if a cache is given, which then grows by the
    /// layers that run) and returns, at each layer of `layers`, the attention probabilities of
    /// its last `rows` positions over every position so far, per query head:
    /// `[heads, rows, positions]`, f32 on the host (row `i` is position `positions - rows + i`;
    /// causal, so it gives zero to the positions after it). Layers past the deepest one do not
    /// run. Used to score evidence by where the model's own heads look.
    pub fn attention_rows(
        &self,
        tokens: &[u32],
        cache: Option<&mut KvCache>,
        layers: &LayerSet,
        rows: usize,
    ) -> Result<Vec<LayerTap>> {
        let start = cache.as_ref().map_or(0, |c| c.len);
        self.check_window(tokens, start, &TapRequest::default())?;
        layers.check(&self.config)?;
        if rows == 0 || rows > tokens.len() {
            return Err(ModelError::InvalidScan(format!(
                "{rows} attention rows asked of a window of {} tokens",
                tokens.len()
            )));
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let tap = AttentionTap { layers, rows };
        let out = self.run(
            &ids,
            start,
            cache,
            &TapRequest::default(),
            Logits::None,
            Some(&tap),
        )?;
        out.attention
            .into_iter()
            .map(|t| {
                Ok(LayerTap {
                    layer: t.layer,
                    values: to_host_f32(&t.values)?,
                })
            })
            .collect()
    }

    fn check_window(&self, tokens: &[u32], start: usize, taps: &TapRequest) -> Result<()> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidScan("empty window".into()));
        }
        if start + tokens.len() > self.config.context {
            return Err(ModelError::WindowTooLong {
                tokens: start + tokens.len(),
                context: self.config.context,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: self.config.vocab,
            });
        }
        for set in [&taps.keys, &taps.queries].into_iter().flatten() {
            set.check(&self.config)?;
        }
        Ok(())
    }

    /// The forward pass over `ids` (`[batch, seq]`, checked) at positions `start..start + seq`.
    /// Taps stay on the device in the activation dtype, `[batch, seq, heads, head_dim]`; logits
    /// are `[batch, seq or 1, vocab]`. A cache needs a batch of one.
    fn run(
        &self,
        ids: &Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
        taps: &TapRequest,
        logits: Logits,
        attention_tap: Option<&AttentionTap<'_>>,
    ) -> Result<ForwardOutput> {
        let (batch, seq) = ids.dims2()?;
        if cache.is_some() && batch != 1 {
            return Err(ModelError::InvalidScan(
                "a KV cache holds one sequence, not a batch".into(),
            ));
        }
        let deepest = taps
            .deepest()
            .max(attention_tap.map(|a| a.layers.deepest()));
        let depth = match (logits, deepest) {
            (Logits::None, Some(d)) => d + 1,
            (Logits::None, None) => return Ok(ForwardOutput::default()),
            _ => self.config.layers,
        };
        // Past the deepest key/query tap only a layer's projections are needed, unless its
        // attention is tapped too.
        let projections_only = |l: usize| {
            logits == Logits::None
                && l + 1 == depth
                && !attention_tap.is_some_and(|a| a.layers.contains(l))
        };
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.config.layers, || None);
        }

        let (nh, nkv, hd) = (
            self.config.heads,
            self.config.kv_heads,
            self.config.head_dim,
        );
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            batch,
            seq,
            self.config.hidden,
        ))?;
        // The fused GPU softmax masks by position itself.
        let mask = match self.device.is_cuda() {
            true => None,
            false => causal_mask(seq, start, &self.device)?,
        };
        let mask = mask.map(|m| m.to_dtype(self.dtype)).transpose()?;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        let mut out = ForwardOutput::default();

        for (l, block) in self.blocks.iter().enumerate().take(depth) {
            let h = block.attn_norm.forward(&x)?;
            let k = with_bias(block.wk.forward(&h)?, block.bk.as_ref())?;
            let q = with_bias(block.wq.forward(&h)?, block.bq.as_ref())?;
            if taps.keys.as_ref().is_some_and(|s| s.contains(l)) {
                let values = k.reshape((batch, seq, nkv, hd))?;
                out.keys.push(LayerTap { layer: l, values });
            }
            if taps.queries.as_ref().is_some_and(|s| s.contains(l)) {
                let values = q.reshape((batch, seq, nh, hd))?;
                out.queries.push(LayerTap { layer: l, values });
            }
            if projections_only(l) {
                // The deepest tap needs only this layer's projections, not its attention or MLP.
                break;
            }
            let v = with_bias(block.wv.forward(&h)?, block.bv.as_ref())?;
            let heads = |t: Tensor, n: usize| -> Result<Tensor> {
                Ok(t.reshape((batch, seq, n, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = self.rope(&heads(q, nh)?, &cos, &sin)?;
            let k = self.rope(&heads(k, nkv)?, &cos, &sin)?;
            let v = heads(v, nkv)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => {
                    let (k, v) = match c.layers[l].take() {
                        Some((pk, pv)) => {
                            (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
                        }
                        None => (k, v),
                    };
                    c.layers[l] = Some((k.clone(), v.clone()));
                    (k, v)
                }
                None => (k, v),
            };
            if let Some(a) = attention_tap.filter(|a| a.layers.contains(l)) {
                let values = attention_probabilities(&q, &k, a.rows, start, nh, nkv, hd)?;
                out.attention.push(LayerTap { layer: l, values });
                if logits == Logits::None && l + 1 == depth {
                    break;
                }
            }
            let y = attention(&q, &k, &v, mask.as_ref(), start, nh, nkv, hd)?;
            let y = y.transpose(1, 2)?.reshape((batch, seq, nh * hd))?;
            x = (block.wo.forward(&y)? + &x)?;
            let h = block.ffn_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&block.w_gate.forward(&h)?)?;
            let mlp = block.w_down.forward(&(gate * block.w_up.forward(&h)?)?)?;
            x = (mlp + &x)?;
        }
        if let Some(c) = cache {
            c.len = start + seq;
        }
        if logits != Logits::None {
            let x = match logits {
                Logits::Last => x.i((.., seq - 1..seq, ..))?,
                _ => x,
            };
            let x = self.norm.forward(&x)?;
            out.logits = Some(self.lm_head.forward(&x)?);
        }
        Ok(out)
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(match self.config.arch {
            Architecture::Llama => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
            Architecture::Qwen2 => candle_nn::rotary_emb::rope(x, cos, sin)?,
        })
    }
}

fn with_bias(x: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => x.broadcast_add(b)?,
        None => x,
    })
}

fn rope_tables(
    head_dim: usize,
    base: f32,
    positions: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let idx = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((idx.cos()?, idx.sin()?))
}

/// Brings a tap to the host as f32 (a no-op for f32 tensors on the CPU).
fn to_host_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
}

/// Returns the index of the largest value of each row of `[rows, vocab]` logits.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
