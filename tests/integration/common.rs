//! Shared fixtures: the real default model (fetched once per machine) and tiny random models.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use s3mem::model::{fetch, Model, WeightFormat};

/// Returns the path of the real SmolLM2 GGUF, fetching it on a machine that lacks it.
pub fn real_model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = fetch::models_dir(None);
        fetch::resolve(fetch::DEFAULT_MODEL, &dir, true).expect("the default model can be fetched")
    })
    .clone()
}

/// Returns the real SmolLM2 model loaded once with f32 weights.
pub fn real_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        Model::load(&real_model_path(), WeightFormat::F32, &Device::Cpu).expect("model loads")
    })
}

/// Shape of a tiny random model.
pub struct TinySpec {
    pub arch: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub context: usize,
}

impl TinySpec {
    pub fn llama() -> Self {
        Self {
            arch: "llama",
            layers: 3,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            context: 256,
        }
    }

    pub fn qwen2() -> Self {
        Self {
            arch: "qwen2",
            ..Self::llama()
        }
    }
}

/// GPT-2's byte alphabet: the char that stands for each byte.
fn byte_chars() -> Vec<String> {
    let mut printable: Vec<u32> = (33..=126).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// Writes a GGUF file of random f32 weights at `spec`'s shape, with a byte-level vocabulary
/// plus the ChatML control tokens.
pub fn write_tiny_gguf(path: &Path, spec: &TinySpec, seed: u64) {
    let dev = Device::Cpu;
    // candle's CPU randn is not seedable; derive values from a small LCG instead.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rand = |shape: &[usize], scale: f32, offset: f32| -> QTensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 40) as f32) / ((1u64 << 24) as f32);
                offset + scale * (2.0 * u - 1.0)
            })
            .collect();
        let t = Tensor::from_vec(data, shape, &dev).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    };
    let mut tokens = byte_chars();
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let vocab = tokens.len();
    let head_dim = spec.hidden / spec.heads;
    let kv = spec.kv_heads * head_dim;
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            rand(&[vocab, spec.hidden], 1.0, 0.0),
        ),
        ("output_norm.weight".into(), rand(&[spec.hidden], 0.1, 1.0)),
    ];
    for l in 0..spec.layers {
        let p = format!("blk.{l}");
        let w = |n: &str| format!("{p}.{n}");
        let s = 1.0 / (spec.hidden as f32).sqrt();
        tensors.push((w("attn_norm.weight"), rand(&[spec.hidden], 0.1, 1.0)));
        tensors.push((
            w("attn_q.weight"),
            rand(&[spec.hidden, spec.hidden], s, 0.0),
        ));
        tensors.push((w("attn_k.weight"), rand(&[kv, spec.hidden], s, 0.0)));
        tensors.push((w("attn_v.weight"), rand(&[kv, spec.hidden], s, 0.0)));
        tensors.push((
            w("attn_output.weight"),
            rand(&[spec.hidden, spec.hidden], s, 0.0),
        ));
        if spec.arch == "qwen2" {
            tensors.push((w("attn_q.bias"), rand(&[spec.hidden], 0.1, 0.0)));
            tensors.push((w("attn_k.bias"), rand(&[kv], 0.1, 0.0)));
            tensors.push((w("attn_v.bias"), rand(&[kv], 0.1, 0.0)));
        }
        tensors.push((w("ffn_norm.weight"), rand(&[spec.hidden], 0.1, 1.0)));
        tensors.push((w("ffn_gate.weight"), rand(&[spec.ffn, spec.hidden], s, 0.0)));
        tensors.push((w("ffn_up.weight"), rand(&[spec.ffn, spec.hidden], s, 0.0)));
        let sd = 1.0 / (spec.ffn as f32).sqrt();
        tensors.push((
            w("ffn_down.weight"),
            rand(&[spec.hidden, spec.ffn], sd, 0.0),
        ));
    }
    use gguf_file::Value as V;
    let a = spec.arch;
    let mut types = vec![V::I32(1); vocab];
    types[vocab - 2] = V::I32(3);
    types[vocab - 1] = V::I32(3);
    let md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(a.into())),
        ("general.name".into(), V::String(format!("tiny-{a}"))),
        (format!("{a}.block_count"), V::U32(spec.layers as u32)),
        (format!("{a}.embedding_length"), V::U32(spec.hidden as u32)),
        (format!("{a}.feed_forward_length"), V::U32(spec.ffn as u32)),
        (
            format!("{a}.attention.head_count"),
            V::U32(spec.heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            V::U32(spec.kv_heads as u32),
        ),
        (format!("{a}.context_length"), V::U32(spec.context as u32)),
        (format!("{a}.rope.dimension_count"), V::U32(head_dim as u32)),
        (format!("{a}.rope.freq_base"), V::F32(10000.0)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            V::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            V::String(if a == "qwen2" { "qwen2" } else { "smollm" }.into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(tokens.iter().map(|t| V::String(t.clone())).collect()),
        ),
        ("tokenizer.ggml.merges".into(), V::Array(vec![])),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        (
            "tokenizer.ggml.eos_token_id".into(),
            V::U32(vocab as u32 - 1),
        ),
    ];
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// Returns the largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Returns a command running the `s3mem` binary under test on two threads.
pub fn s3mem() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3mem"));
    cmd.env("S3MEM_THREADS", "2");
    cmd
}

/// Runs a command that must succeed and print one JSON object.
pub fn run_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
