//! The support signal: whether the reader itself says the evidence states the answer.
//!
//! After the prefill of [frame; evidence; question] one short turn asks the reader
//! [`VERIFY`] and opens its reply; the score is the log-odds of yes against no in the next
//! token, `logsumexp` over the vocabulary's spellings of each. It continues the prefill's KV
//! cache, so it costs the ~30 tokens of the turn, not another read of the evidence.

use super::quote::Vocabulary;
use super::{AnswerError, Result};
use crate::model::Model;

/// The verification question asked after the evidence and the question.
pub const VERIFY: &str =
    "Does the evidence above state the answer to the question? Answer yes or no.";

/// How a reply of yes may begin (a token spelled exactly so).
const YES: [&str; 4] = ["yes", "Yes", " yes", " Yes"];
/// How a reply of no may begin.
const NO: [&str; 4] = ["no", "No", " no", " No"];

/// Returns the tokens that ask `reader` [`VERIFY`] after its prompt and open its reply.
pub fn turn(reader: &Model) -> Result<Vec<u32>> {
    Ok(reader.template().follow_up(reader.tokenizer(), VERIFY)?)
}

/// The tokens of a vocabulary that spell yes and no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spellings {
    /// Tokens spelled as one of [`YES`].
    pub yes: Vec<u32>,
    /// Tokens spelled as one of [`NO`].
    pub no: Vec<u32>,
}

impl Spellings {
    /// Returns the tokens among the first `size` of `vocab` spelled as yes or as no; refuses a
    /// vocabulary that has no single token for either.
    pub fn find(vocab: &dyn Vocabulary, size: usize) -> Result<Self> {
        let spelled = |words: &[&str]| -> Vec<u32> {
            (0..size as u32)
                .filter(|&id| words.iter().any(|w| vocab.bytes(id) == w.as_bytes()))
                .collect()
        };
        let (yes, no) = (spelled(&YES), spelled(&NO));
        if yes.is_empty() || no.is_empty() {
            return Err(AnswerError::NoYesNo);
        }
        Ok(Self { yes, no })
    }
}

/// Returns the log-odds of yes against no in `logits` (the same as in its probabilities: the
/// normaliser cancels).
pub fn score(logits: &[f32], spellings: &Spellings) -> f32 {
    let logsumexp = |ids: &[u32]| -> f32 {
        let values: Vec<f32> = ids
            .iter()
            .filter_map(|&id| logits.get(id as usize).copied())
            .collect();
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return max;
        }
        max + values.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
    };
    logsumexp(&spellings.yes) - logsumexp(&spellings.no)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{AbstainSignal, Threshold};
    use crate::model::{KvCache, Logits, RandomShape, TapRequest, Transformer, WeightFormat};
    use candle_core::Device;

    /// 256 single bytes with a few words in place of the first ids, yes and no among them.
    struct Words(Vec<Vec<u8>>);

    impl Words {
        fn new() -> Self {
            let mut table: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
            for (i, w) in ["yes", " Yes", "no", " no", "No", "nope", "Yess"]
                .iter()
                .enumerate()
            {
                table[i + 1] = w.as_bytes().to_vec();
            }
            Self(table)
        }
    }

    impl Vocabulary for Words {
        fn bytes(&self, id: u32) -> &[u8] {
            &self.0[id as usize]
        }
    }

    #[test]
    fn spellings_are_the_tokens_spelled_exactly_yes_or_no() {
        let s = Spellings::find(&Words::new(), 256).unwrap();
        assert_eq!(s.yes, [1, 2]);
        assert_eq!(s.no, [3, 4, 5]);
        let err = Spellings::find(&Words::new(), 3).unwrap_err();
        assert!(matches!(err, AnswerError::NoYesNo), "{err}");
    }

    #[test]
    fn the_score_is_the_log_odds_of_yes_against_no() {
        let s = Spellings {
            yes: vec![0, 1],
            no: vec![2],
        };
        let l = [1.0f32.ln(), 3.0f32.ln(), 2.0f32.ln(), 100.0];
        assert!((score(&l, &s) - 2.0f32.ln()).abs() < 1e-6);
        // Large logits do not overflow.
        let big = [900.0, 900.0, 900.0, 0.0];
        assert!((score(&big, &s) - 2.0f32.ln()).abs() < 1e-4);
    }

    /// The support score of the tiny random model after `seed`'s prompt, the turn continuing
    /// the prompt's cache, and the logits of one forward over prompt and turn together.
    fn support_with(seed: u64) -> (f32, Vec<f32>, Vec<f32>) {
        let shape = RandomShape::named("tiny").unwrap();
        let model = Transformer::random(&shape, WeightFormat::F32, seed, &Device::Cpu).unwrap();
        let logits_of = |tokens: &[u32], cache: &mut KvCache| -> Vec<f32> {
            model
                .forward(tokens, Some(cache), &TapRequest::default(), Logits::Last)
                .unwrap()
                .logits
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let prompt: Vec<u32> = (0..40)
            .map(|i| ((seed * 31 + i * 7) % 250 + 3) as u32)
            .collect();
        let turn: Vec<u32> = (0..12).map(|i| (i * 13 + 5) % 250 + 3).collect();
        let mut cache = KvCache::default();
        logits_of(&prompt, &mut cache);
        let continued = logits_of(&turn, &mut cache.clone());
        let whole: Vec<u32> = prompt.iter().chain(&turn).copied().collect();
        let fresh = logits_of(&whole, &mut KvCache::default());
        let spellings = Spellings::find(&Words::new(), 256).unwrap();
        (score(&continued, &spellings), continued, fresh)
    }

    #[test]
    fn the_support_score_of_a_random_model_is_finite_deterministic_and_decides_abstention() {
        let mut scores = Vec::new();
        for seed in 0..6 {
            let (s, continued, fresh) = support_with(seed);
            assert!(s.is_finite(), "seed {seed}: {s}");
            // The turn continues the cache exactly as a fresh read of prompt and turn.
            let gap = continued
                .iter()
                .zip(&fresh)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(gap < 1e-3, "seed {seed}: {gap}");
            assert_eq!(support_with(seed).0, s, "seed {seed}");
            scores.push(s);
        }
        assert!(
            scores.windows(2).any(|w| w[0] != w[1]),
            "every seed scored {scores:?}"
        );
        let at = |below| Threshold {
            signal: AbstainSignal::Support,
            below,
        };
        for &s in &scores {
            assert!(!at(f32::NEG_INFINITY).abstains(Some(s)));
            assert!(!at(s - 0.01).abstains(Some(s)));
            assert!(!at(s).abstains(Some(s)));
            assert!(at(s + 0.01).abstains(Some(s)));
        }
        // Between the lowest and the highest score a threshold abstains on some seeds only.
        let (lo, hi) = scores
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &s| {
                (l.min(s), h.max(s))
            });
        let middle = at((lo + hi) / 2.0);
        let abstained = scores.iter().filter(|&&s| middle.abstains(Some(s))).count();
        assert!(0 < abstained && abstained < scores.len(), "{scores:?}");
        // Without a score (no evidence) every threshold abstains.
        assert!(at(f32::NEG_INFINITY).abstains(None));
    }
}
