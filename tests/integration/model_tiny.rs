//! The forward pass on tiny random models of both architectures: parity with candle's own
//! quantized models, taps, the scan and the KV cache. Values do not matter here, shapes do.

use candle_core::quantized::gguf_file;
use candle_core::{Device, IndexOp, Tensor};
use s3mem::model::{
    argmax_rows, KvCache, LayerSet, Logits, Model, ModelError, ScanConfig, TapRequest, WeightFormat,
};

use crate::common::{max_abs_diff, write_tiny_gguf, TinySpec};

fn tiny(spec: &TinySpec, format: WeightFormat) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, spec, 7);
    let model = Model::load(&path, format, &Device::Cpu).unwrap();
    (dir, model)
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 256).collect()
}

/// Logits at every position from candle's model, one token at a time with its KV cache.
fn stock_logits(path: &std::path::Path, arch: &str, ids: &[u32]) -> Tensor {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    if arch == "qwen2" {
        let mut m =
            candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(ct, &mut f, &dev)
                .unwrap();
        for (i, &t) in ids.iter().enumerate() {
            let x = Tensor::new(&[t], &dev).unwrap().unsqueeze(0).unwrap();
            rows.push(m.forward(&x, i).unwrap().flatten_all().unwrap());
        }
    } else {
        let mut m =
            candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut f, &dev)
                .unwrap();
        for (i, &t) in ids.iter().enumerate() {
            let x = Tensor::new(&[t], &dev).unwrap().unsqueeze(0).unwrap();
            rows.push(m.forward(&x, i).unwrap().flatten_all().unwrap());
        }
    }
    Tensor::stack(&rows, 0).unwrap()
}

fn check_parity(spec: TinySpec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &spec, 3);
    let model = Model::load(&path, WeightFormat::Quantized, &Device::Cpu).unwrap();
    let ids = tokens(40);
    let ours = model
        .transformer()
        .forward(&ids, None, &TapRequest::default(), Logits::All)
        .unwrap()
        .logits
        .unwrap();
    let stock = stock_logits(&path, spec.arch, &ids);
    assert_eq!(ours.dims(), stock.dims());
    assert_eq!(argmax_rows(&ours).unwrap(), argmax_rows(&stock).unwrap());
    let diff = max_abs_diff(&ours, &stock);
    assert!(
        diff < 1e-4,
        "{}: max abs logit difference {diff}",
        spec.arch
    );
}

#[test]
fn llama_logits_match_candle_quantized_llama() {
    check_parity(TinySpec::llama());
}

#[test]
fn qwen2_logits_match_candle_quantized_qwen2() {
    check_parity(TinySpec::qwen2());
}

#[test]
fn taps_do_not_depend_on_how_deep_the_pass_runs() {
    for spec in [TinySpec::llama(), TinySpec::qwen2()] {
        let (_d, model) = tiny(&spec, WeightFormat::F32);
        let ids = tokens(30);
        let layers: LayerSet = "1".parse().unwrap();
        let shallow = TapRequest {
            keys: Some(layers.clone()),
            queries: Some(layers.clone()),
        };
        let short = model
            .transformer()
            .forward(&ids, None, &shallow, Logits::None)
            .unwrap();
        let full = model
            .transformer()
            .forward(&ids, None, &shallow, Logits::All)
            .unwrap();
        assert!(short.logits.is_none());
        assert_eq!(short.keys.len(), 1);
        assert_eq!(short.keys[0].values.dims(), &[30, 2, 16]);
        assert_eq!(short.queries[0].values.dims(), &[30, 4, 16]);
        assert_eq!(
            max_abs_diff(&short.keys[0].values, &full.keys[0].values),
            0.0
        );
        assert_eq!(
            max_abs_diff(&short.queries[0].values, &full.queries[0].values),
            0.0
        );
    }
}

#[test]
fn keys_are_taken_before_rope() {
    // At layer 0 a key depends on its token alone; after RoPE it would depend on position.
    let (_d, model) = tiny(&TinySpec::llama(), WeightFormat::F32);
    let ids = vec![5, 9, 5, 12, 5];
    let taps = TapRequest {
        keys: Some("0".parse().unwrap()),
        queries: None,
    };
    let out = model
        .transformer()
        .forward(&ids, None, &taps, Logits::None)
        .unwrap();
    let k = &out.keys[0].values;
    let (a, b, c) = (k.i(0).unwrap(), k.i(2).unwrap(), k.i(4).unwrap());
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert_eq!(max_abs_diff(&a, &c), 0.0);
    assert!(max_abs_diff(&a, &k.i(1).unwrap()) > 0.0);
}

#[test]
fn scan_yields_each_chunk_once_with_the_keys_of_its_window() {
    let (_d, model) = tiny(&TinySpec::llama(), WeightFormat::F32);
    let doc = tokens(100);
    let cfg = ScanConfig {
        chunk: 32,
        sinks: 2,
        overlap: 8,
    };
    let taps = TapRequest {
        keys: Some("0,2".parse().unwrap()),
        queries: None,
    };
    let mut chunks = Vec::new();
    let stats = model
        .scan(&doc, &taps, &cfg, &mut |c| {
            chunks.push(c);
            Ok(())
        })
        .unwrap();
    assert_eq!(stats.tokens, 100);
    assert_eq!(stats.windows, 4);
    let covered: Vec<usize> = chunks.iter().flat_map(|c| c.chunk.clone()).collect();
    assert_eq!(covered, (0..100).collect::<Vec<_>>());
    for (plan, chunk) in cfg.windows(doc.len()).zip(&chunks) {
        let window = plan.tokens(&doc);
        let direct = model
            .transformer()
            .forward(&window, None, &taps, Logits::None)
            .unwrap();
        for (tap, full) in chunk.keys.iter().zip(&direct.keys) {
            assert_eq!(tap.values.dims()[0], plan.chunk.len());
            let own = full.values.i(plan.chunk_offset()..).unwrap();
            assert_eq!(max_abs_diff(&tap.values, &own), 0.0);
        }
    }
    // Later windows see the document's sinks, so their keys differ from a context-free pass.
    let alone = model
        .transformer()
        .forward(&doc[32..64], None, &taps, Logits::None)
        .unwrap();
    assert!(max_abs_diff(&alone.keys[1].values, &chunks[1].keys[1].values) > 0.0);
}

#[test]
fn kv_cache_steps_match_a_full_pass() {
    let (_d, model) = tiny(&TinySpec::qwen2(), WeightFormat::Quantized);
    let ids = tokens(20);
    let none = TapRequest::default();
    let full = model
        .transformer()
        .forward(&ids, None, &none, Logits::All)
        .unwrap()
        .logits
        .unwrap();
    let mut cache = KvCache::default();
    model
        .transformer()
        .forward(&ids[..12], Some(&mut cache), &none, Logits::Last)
        .unwrap();
    for (i, &t) in ids.iter().enumerate().skip(12) {
        let step = model
            .transformer()
            .forward(&[t], Some(&mut cache), &none, Logits::Last)
            .unwrap()
            .logits
            .unwrap();
        let diff = max_abs_diff(&step.squeeze(0).unwrap(), &full.i(i).unwrap());
        assert!(diff < 1e-4, "position {i}: {diff}");
    }
    assert_eq!(cache.len(), 20);
}

#[test]
fn bad_inputs_get_named_errors() {
    let (_d, model) = tiny(&TinySpec::llama(), WeightFormat::F32);
    let t = model.transformer();
    let none = TapRequest::default();
    let too_long = vec![1u32; 257];
    assert!(matches!(
        t.forward(&too_long, None, &none, Logits::Last),
        Err(ModelError::WindowTooLong {
            tokens: 257,
            context: 256
        })
    ));
    assert!(matches!(
        t.forward(&[1, 999], None, &none, Logits::Last),
        Err(ModelError::TokenOutOfRange { id: 999, .. })
    ));
    let deep = TapRequest {
        keys: Some("3".parse().unwrap()),
        queries: None,
    };
    let err = t.forward(&[1, 2], None, &deep, Logits::None).unwrap_err();
    assert!(err.to_string().contains("layer 3 is out of range"), "{err}");
    let wide = ScanConfig {
        chunk: 250,
        sinks: 4,
        overlap: 64,
    };
    let err = model
        .scan(&[1, 2, 3], &deep, &wide, &mut |_| Ok(()))
        .unwrap_err();
    assert!(
        err.to_string().contains("exceeds the model context"),
        "{err}"
    );
}

#[test]
fn a_corrupt_or_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf file").unwrap();
    let err = Model::load(&junk, WeightFormat::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("junk.gguf"));
    let missing = dir.path().join("absent.gguf");
    let err = Model::load(&missing, WeightFormat::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
}

/// Chunks of `docs` as (document, chunk range, keys and queries per layer), scanned `batch`
/// windows at a time.
fn scan_all(
    model: &mut Model,
    batch: usize,
    docs: &[&[u32]],
    taps: &TapRequest,
    cfg: &ScanConfig,
) -> Vec<(usize, std::ops::Range<usize>, Vec<Tensor>)> {
    model.set_scan_batch(batch);
    let mut out = Vec::new();
    let stats = model
        .scan_many(docs, taps, cfg, &mut |doc, c| {
            let values = c.keys.iter().chain(&c.queries).map(|t| t.values.clone());
            out.push((doc, c.chunk, values.collect()));
            Ok(())
        })
        .unwrap();
    let windows: usize = docs.iter().map(|d| cfg.windows(d.len()).count()).sum();
    assert_eq!(stats.windows, windows);
    assert_eq!(stats.batches, windows.div_ceil(batch));
    out
}

#[test]
fn batched_scan_gives_the_taps_of_the_unbatched_scan() {
    let (_d, mut model) = tiny(&TinySpec::llama(), WeightFormat::F32);
    let a = tokens(100);
    let b: Vec<u32> = tokens(45).iter().map(|t| (t * 7 + 3) % 256).collect();
    let docs: [&[u32]; 2] = [&a, &b];
    let cfg = ScanConfig {
        chunk: 32,
        sinks: 2,
        overlap: 8,
    };
    let taps = TapRequest {
        keys: Some("0,2".parse().unwrap()),
        queries: Some("1".parse().unwrap()),
    };
    let one = scan_all(&mut model, 1, &docs, &taps, &cfg);
    // Batches of 3 mix windows of both documents and of different lengths (padded).
    let three = scan_all(&mut model, 3, &docs, &taps, &cfg);
    assert_eq!(one.len(), 6);
    assert_eq!(one.len(), three.len());
    for ((doc_a, range_a, va), (doc_b, range_b, vb)) in one.iter().zip(&three) {
        assert_eq!((doc_a, range_a), (doc_b, range_b));
        for (x, y) in va.iter().zip(vb) {
            assert_eq!(x.dims(), y.dims());
            // Only the matmul shapes differ: equal up to f32 rounding.
            let diff = max_abs_diff(x, y);
            assert!(diff < 1e-5, "doc {doc_a} chunk {range_a:?}: {diff}");
        }
    }
    // Each document's chunks come in order, the first document's first.
    let ranges: Vec<_> = one.iter().map(|(d, r, _)| (*d, r.start)).collect();
    assert_eq!(
        ranges,
        vec![(0, 0), (0, 32), (0, 64), (0, 96), (1, 0), (1, 32)]
    );
}

#[test]
fn bf16_weights_scan_close_to_f32() {
    let (_d, f32_model) = tiny(&TinySpec::llama(), WeightFormat::F32);
    let (_e, bf16_model) = tiny(&TinySpec::llama(), WeightFormat::Bf16);
    assert_eq!(bf16_model.transformer().dtype(), candle_core::DType::BF16);
    let doc = tokens(80);
    let taps = TapRequest {
        keys: Some("2".parse().unwrap()),
        queries: None,
    };
    let cfg = ScanConfig {
        chunk: 32,
        sinks: 2,
        overlap: 8,
    };
    let keys = |m: &Model| {
        let mut rows = Vec::new();
        m.scan(&doc, &taps, &cfg, &mut |c| {
            rows.push(c.keys[0].values.clone());
            Ok(())
        })
        .unwrap();
        Tensor::cat(&rows, 0).unwrap()
    };
    let (a, b) = (keys(&f32_model), keys(&bf16_model));
    // Taps come back as f32 whatever the weights.
    assert_eq!(b.dtype(), candle_core::DType::F32);
    let rel = ((&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        / a.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap())
    .sqrt();
    assert!(rel > 0.0 && rel < 0.03, "relative error {rel}");
}

#[test]
fn random_models_are_seeded_and_batch_like_loaded_ones() {
    use s3mem::model::{per_chunk, scan_document_batches, RandomShape, TapPlace, Transformer};
    let shape = RandomShape::named("tiny").unwrap();
    let dev = Device::Cpu;
    let m = Transformer::random(&shape, WeightFormat::F32, 3, &dev).unwrap();
    let again = Transformer::random(&shape, WeightFormat::F32, 3, &dev).unwrap();
    let doc = s3mem::model::random_tokens(1, 300, shape.config.vocab);
    let taps = TapRequest {
        keys: Some("1,3".parse().unwrap()),
        queries: None,
    };
    let cfg = ScanConfig {
        chunk: 64,
        sinks: 4,
        overlap: 16,
    };
    let run_at = |t: &Transformer, batch: usize, place: TapPlace| {
        let mut rows = Vec::new();
        let mut take = |_, c: s3mem::model::ChunkTaps| {
            rows.push(c.keys[1].values.clone());
            Ok(())
        };
        scan_document_batches(
            t,
            batch,
            &[&doc],
            &taps,
            &cfg,
            place,
            &mut per_chunk(&mut take),
        )
        .unwrap();
        Tensor::cat(&rows, 0).unwrap()
    };
    let run = |t: &Transformer, batch: usize| run_at(t, batch, TapPlace::Host);
    let base = run(&m, 1);
    // On the CPU the model's device is the host: taps left there are the same values.
    assert_eq!(max_abs_diff(&base, &run_at(&m, 1, TapPlace::Device)), 0.0);
    assert_eq!(base.dims(), &[300, 2, 16]);
    assert_eq!(max_abs_diff(&base, &run(&again, 1)), 0.0);
    assert!(max_abs_diff(&base, &run(&m, 4)) < 1e-5);
}

#[test]
fn a_failing_consumer_stops_the_scan_with_its_error() {
    let (_d, mut model) = tiny(&TinySpec::llama(), WeightFormat::F32);
    model.set_scan_batch(2);
    let doc = tokens(200);
    let taps = TapRequest {
        keys: Some("0".parse().unwrap()),
        queries: None,
    };
    let cfg = ScanConfig {
        chunk: 16,
        sinks: 2,
        overlap: 4,
    };
    let mut seen = 0;
    let err = model
        .scan(&doc, &taps, &cfg, &mut |_| {
            seen += 1;
            if seen == 3 {
                Err(ModelError::Aborted)
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::Aborted));
    assert_eq!(seen, 3);
}
