//! The real embedded default, SmolLM2-135M-Instruct (Q4_1 GGUF): parity with candle's own
//! quantized llama, the tokenizer, taps and generation.

use candle_core::quantized::gguf_file;
use candle_core::{Device, IndexOp, Tensor};
use s3mem::model::{argmax_rows, GenerateConfig, Logits, Model, TapRequest, WeightFormat};

use crate::common::{max_abs_diff, real_model, real_model_path};

const PROMPT: &str = "The capital of France is Paris. The capital of Italy is Rome. \
                      What is the capital of France?";

/// candle-transformers' quantized llama on the real model file.
fn stock_model() -> candle_transformers::models::quantized_llama::ModelWeights {
    let mut f = std::fs::File::open(real_model_path()).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu)
        .unwrap()
}

/// Logits at every prompt position from candle's model, one token at a time with its cache.
fn stock_logits(ids: &[u32]) -> Tensor {
    let mut m = stock_model();
    let rows: Vec<Tensor> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let x = Tensor::new(&[t], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            m.forward(&x, i).unwrap().flatten_all().unwrap()
        })
        .collect();
    Tensor::stack(&rows, 0).unwrap()
}

/// Last-position logits from candle's model, the whole prompt at once.
fn stock_last_logits(ids: &[u32]) -> Tensor {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    stock_model().forward(&x, 0).unwrap().flatten_all().unwrap()
}

#[test]
fn logits_match_candle_transformers_on_a_real_prompt() {
    let quantized = Model::load(&real_model_path(), WeightFormat::Quantized, &Device::Cpu).unwrap();
    let ids = quantized.chat_prompt(None, PROMPT).unwrap();
    assert!(ids.len() > 40, "{} prompt tokens", ids.len());
    let stock = stock_logits(&ids);
    let none = TapRequest::default();
    let ours_q = quantized
        .transformer()
        .forward(&ids, None, &none, Logits::All)
        .unwrap()
        .logits
        .unwrap();
    // candle's quantized kernels differ between one-row and many-row inputs (x86 repacking),
    // so against its token-by-token pass the drift is that of two kernels (measured: 2.0 on
    // logits of about 30): every position still predicts the same token.
    assert_eq!(argmax_rows(&ours_q).unwrap(), argmax_rows(&stock).unwrap());
    let diff_q = max_abs_diff(&ours_q, &stock);
    assert!(diff_q < 3.0, "quantized: max abs logit difference {diff_q}");
    // With the same kernels (the whole prompt in one call) the last position agrees closely.
    let stock_last = stock_last_logits(&ids);
    let ours_last = ours_q.i(ids.len() - 1).unwrap();
    let diff_last = max_abs_diff(&ours_last, &stock_last);
    assert!(diff_last < 1e-3, "quantized, last position: {diff_last}");

    // f32 weights (the default): activations are no longer rounded to 8 bits before each
    // matmul, so where the top two tokens are nearly tied the winner may differ.
    let ours_f = real_model()
        .transformer()
        .forward(&ids, None, &none, Logits::All)
        .unwrap()
        .logits
        .unwrap();
    let (a, b) = (argmax_rows(&ours_f).unwrap(), argmax_rows(&stock).unwrap());
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    let diff_f = max_abs_diff(&ours_f, &stock);
    eprintln!("f32: argmax agreement {agree}, max abs diff {diff_f}");
    assert!(agree >= 0.95, "f32: argmax agrees at {agree} of positions");
    // Measured: 2.86 on logits of about 30, one position of 51 with another argmax.
    assert!(diff_f < 4.0, "f32: max abs logit difference {diff_f}");
    eprintln!("max abs logit difference: quantized {diff_q} (last {diff_last}), f32 {diff_f}");
}

#[test]
fn tokenizer_round_trips_with_contiguous_char_offsets() {
    let tok = real_model().tokenizer();
    let samples = [
        "Hello, world! The year 2024 had 366 days.",
        "  leading spaces\n\nand\ttabs\r\n",
        "naïve café — “quotes” and emoji 🦀🚀 and 漢字かな",
        "x = foo(bar[3]) + 0.25 * baz; // code",
        "<|im_start|>user\nnot a control token<|im_end|>",
    ];
    for text in samples {
        let enc = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&enc.ids), text);
        assert_eq!(enc.ids.len(), enc.offsets.len());
        let chars = text.chars().count();
        assert_eq!(enc.offsets.first().unwrap().0, 0);
        assert_eq!(enc.offsets.last().unwrap().1, chars);
        for w in enc.offsets.windows(2) {
            // A multi-byte char split across tokens gives both tokens its range.
            assert!(
                w[1].0 == w[0].1 || w[1] == w[0] || w[1].0 + 1 == w[0].1,
                "{w:?} in {text:?}"
            );
        }
        // Control-token spellings in text stay text.
        let im_start = tok.token_id("<|im_start|>").unwrap();
        assert!(!enc.ids.contains(&im_start));
    }
    // Digits are split one by one (the `smollm` pre-tokenizer).
    let digits = tok.encode("48213").unwrap();
    assert_eq!(digits.ids.len(), 5);
    assert_eq!(digits.offsets[2], (2, 3));
}

#[test]
fn taps_have_the_model_shape() {
    let model = real_model();
    let ids = model
        .tokenizer()
        .encode_ids("A short sentence about keys.")
        .unwrap();
    let taps = TapRequest {
        keys: Some("8,16,24".parse().unwrap()),
        queries: Some("8,16,24".parse().unwrap()),
    };
    let out = model
        .transformer()
        .forward(&ids, None, &taps, Logits::None)
        .unwrap();
    assert_eq!(
        out.keys.iter().map(|t| t.layer).collect::<Vec<_>>(),
        [8, 16, 24]
    );
    for t in &out.keys {
        assert_eq!(t.values.dims(), &[ids.len(), 3, 64]);
    }
    for t in &out.queries {
        assert_eq!(t.values.dims(), &[ids.len(), 9, 64]);
    }
}

#[test]
fn answers_the_passkey_question() {
    let model = real_model();
    let prompt = model
        .chat_prompt(
            None,
            "The passkey is 48213. Remember it. What is the passkey?",
        )
        .unwrap();
    let mut streamed = String::new();
    let cfg = GenerateConfig {
        max_new_tokens: 48,
        ..Default::default()
    };
    let out = model
        .generate(&prompt, &cfg, &mut |piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert!(out.text.contains("48213"), "answer: {:?}", out.text);
    assert_eq!(streamed, out.text);
    assert!(out.tokens.len() <= 48);
}

#[test]
fn generation_stops_when_the_caller_says_so() {
    let model = real_model();
    let prompt = model.chat_prompt(None, "Count from one to fifty.").unwrap();
    let mut pieces = 0;
    let out = model
        .generate(&prompt, &GenerateConfig::default(), &mut |_| {
            pieces += 1;
            pieces < 3
        })
        .unwrap();
    assert_eq!(out.stop, s3mem::model::StopReason::Cancelled);
    assert_eq!(pieces, 3);
}

#[test]
fn zero_new_tokens_is_a_prefill_alone() {
    let model = real_model();
    let prompt = model.chat_prompt(None, "Say hello.").unwrap();
    let cfg = GenerateConfig {
        max_new_tokens: 0,
        ..Default::default()
    };
    let out = model.generate(&prompt, &cfg, &mut |_| true).unwrap();
    assert!(
        out.tokens.is_empty() && out.text.is_empty(),
        "{:?}",
        out.text
    );
    assert_eq!(out.stop, s3mem::model::StopReason::MaxTokens);
    assert_eq!(out.prompt_tokens, prompt.len());
}

/// Text encoded in pieces cut at line starts gives the tokens and offsets of the text encoded
/// at once, for both pre-tokenizers (SmolLM2's and Qwen2's), including text with no line start
/// to cut at.
fn check_piecewise_encoding(tok: &s3mem::model::TextTokenizer) {
    let gpl = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap();
    let mixed = format!("{gpl}\n  indented line\n\n12345 naïve 🦀\r\nend{gpl}");
    let one_line = "word ".repeat(3000);
    for text in [mixed.as_str(), one_line.as_str()] {
        let whole = tok.encode_in_pieces(text, usize::MAX).unwrap();
        for piece in [1000, 4096, s3mem::model::ENCODE_PIECE_BYTES] {
            let cut = tok.encode_in_pieces(text, piece).unwrap();
            assert_eq!(cut.ids, whole.ids, "piece {piece}");
            assert_eq!(cut.offsets, whole.offsets, "piece {piece}");
        }
    }
}

#[test]
fn encoding_in_pieces_changes_no_token() {
    check_piecewise_encoding(real_model().tokenizer());
    let dir = s3mem::model::fetch::models_dir(None);
    let path = s3mem::model::fetch::resolve("qwen2.5-coder-0.5b", &dir, true).unwrap();
    let qwen = Model::load(&path, WeightFormat::Quantized, &Device::Cpu).unwrap();
    check_piecewise_encoding(qwen.tokenizer());
}

/// The qwen2 architecture on the real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), fetched if missing.
#[test]
fn qwen2_matches_candle_and_answers() {
    let dir = s3mem::model::fetch::models_dir(None);
    let path = s3mem::model::fetch::resolve("qwen2.5-coder-0.5b", &dir, true).unwrap();
    let model = Model::load(&path, WeightFormat::Quantized, &Device::Cpu).unwrap();
    assert_eq!(model.config().arch, s3mem::model::Architecture::Qwen2);
    let ids = model.chat_prompt(None, PROMPT).unwrap();
    let none = TapRequest::default();
    let ours = model
        .transformer()
        .forward(&ids, None, &none, Logits::All)
        .unwrap()
        .logits
        .unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut stock = candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(
        ct,
        &mut f,
        &Device::Cpu,
    )
    .unwrap();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let stock_last = stock.forward(&x, 0).unwrap().flatten_all().unwrap();
    let ours_last = ours.i(ids.len() - 1).unwrap();
    assert_eq!(
        argmax_rows(&ours_last.unsqueeze(0).unwrap()).unwrap(),
        argmax_rows(&stock_last.unsqueeze(0).unwrap()).unwrap()
    );
    let diff = max_abs_diff(&ours_last, &stock_last);
    assert!(
        diff < 1e-2,
        "qwen2 last-position max abs logit difference {diff}"
    );

    let prompt = model
        .chat_prompt(
            None,
            "The passkey is 48213. Remember it. What is the passkey?",
        )
        .unwrap();
    let cfg = GenerateConfig {
        max_new_tokens: 24,
        ..Default::default()
    };
    let out = model.generate(&prompt, &cfg, &mut |_| true).unwrap();
    assert!(out.text.contains("48213"), "answer: {:?}", out.text);
}

/// The embedded default SAE set fits the default model and turns its keys into feature IDs.
#[test]
fn default_sae_set_encodes_real_keys() {
    use s3mem::sae::{defaults::default_set_dir, SaeExpectation, SaeSet};
    let model = real_model();
    let models = tempfile::tempdir().unwrap();
    let dir = default_set_dir(model, models.path())
        .unwrap()
        .expect("a default set");
    // A second call finds the written-out copy.
    assert_eq!(default_set_dir(model, models.path()).unwrap().unwrap(), dir);
    let expect = SaeExpectation::new(model.fingerprint().unwrap(), model.config().head_dim);
    let set = SaeSet::load(&dir, &expect).unwrap();
    assert_eq!(set.layers(), [8, 16, 24]);
    let ids = model
        .tokenizer()
        .encode_ids("Sparse features of attention keys make a searchable memory.")
        .unwrap();
    let taps = TapRequest {
        keys: Some("8,16,24".parse().unwrap()),
        queries: None,
    };
    let out = model
        .transformer()
        .forward(&ids, None, &taps, Logits::None)
        .unwrap();
    for tap in &out.keys {
        let sae = set.sae_for(tap.layer, 0).unwrap();
        let rows = tap.values.reshape(((), 64)).unwrap();
        let codes = sae.encode(&rows).unwrap();
        assert_eq!(codes.rows(), ids.len() * 3);
        assert!(codes.ids.iter().all(|&f| (f as usize) < sae.dict_size()));
        let fvu = s3mem::sae::eval::fvu(sae, &rows).unwrap();
        assert!(fvu < 0.5, "layer {}: FVU {fvu} on real keys", tap.layer);
    }
}

#[test]
fn the_support_turn_follows_the_answer_prompt_and_decides_abstention() {
    use s3mem::answer::{self, AbstainSignal, AnswerConfig, Passage, Threshold};
    let model = real_model();
    let tok = model.tokenizer();
    let turn = answer::support::turn(model).unwrap();
    // The empty answer turn closed, the question asked as a user, the reply opened.
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(turn[0], im_end);
    assert_eq!(turn.iter().filter(|&&t| t == im_start).count(), 2);
    assert_eq!(
        tok.decode(&turn),
        format!("\nuser\n{}\nassistant\n", answer::support::VERIFY)
    );
    let context = "The passkey of the blue door is 48213.";
    let passage = || {
        vec![Passage {
            text: context.into(),
            doc_id: None,
            char_start: 0,
            label: None,
        }]
    };
    let rule = |below| AnswerConfig {
        max_new_tokens: 8,
        abstain: Some(Threshold {
            signal: AbstainSignal::Support,
            below,
        }),
        ..AnswerConfig::default()
    };
    let reading = answer::read(
        model,
        Some(context),
        "What is the passkey of the blue door?",
        passage(),
        &rule(0.0),
    )
    .unwrap();
    let score = reading.support().unwrap().unwrap();
    assert!(score.is_finite(), "{score}");
    assert_eq!(reading.support().unwrap(), Some(score));
    let low = reading.answer(&rule(score - 1.0), &mut |_| true).unwrap();
    assert!(!low.not_in_evidence);
    assert_eq!(low.support, Some(score));
    assert!(low.timings_ms.contains_key("support"));
    let high = reading.answer(&rule(score + 1.0), &mut |_| true).unwrap();
    assert!(high.not_in_evidence);
    assert_eq!(high.answer, answer::NOT_IN_EVIDENCE);
    // The same prompt read again gives the same score; without passages there is nothing
    // to judge and no score.
    let read_again = |passages| {
        answer::read(
            model,
            Some(context),
            "What is the passkey of the blue door?",
            passages,
            &rule(0.0),
        )
        .unwrap()
        .support()
        .unwrap()
    };
    assert_eq!(read_again(passage()), Some(score));
    assert_eq!(read_again(Vec::new()), None);
}
