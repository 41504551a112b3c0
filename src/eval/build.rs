//! Dataset builders: HotpotQA long haystacks and needle-in-a-haystack over essays.

use std::path::Path;

use super::{EvalError, EvalItem, Result};

/// A small seeded generator (splitmix64): datasets rebuild identically.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

#[derive(serde::Deserialize)]
struct HotpotQuestion {
    #[serde(rename = "_id")]
    id: String,
    question: String,
    answer: String,
    supporting_facts: Vec<(String, usize)>,
    context: Vec<(String, Vec<String>)>,
}

/// A sentence placed in a document: its paragraph title, index and char range.
type Located = (String, usize, (usize, usize));

/// The longest document a builder makes, in tokens.
const MAX_BUILD_TOKENS: usize = 1 << 24;

/// Returns the chars of a document of `tokens` tokens at `chars_per_token`, refusing a length
/// of 0 or over [`MAX_BUILD_TOKENS`] and an estimate outside 0.5-32 chars per token.
pub(super) fn target_chars(tokens: usize, chars_per_token: f64) -> Result<usize> {
    if !(0.5..=32.0).contains(&chars_per_token) {
        return Err(EvalError::Input(format!(
            "--chars-per-token {chars_per_token} is not between 0.5 and 32"
        )));
    }
    if tokens == 0 || tokens > MAX_BUILD_TOKENS {
        return Err(EvalError::Input(format!(
            "a document of {tokens} tokens is not between 1 and {MAX_BUILD_TOKENS}"
        )));
    }
    Ok((tokens as f64 * chars_per_token) as usize)
}

/// Returns the question at `next` and moves past it; an error names the file when none is left.
pub(super) fn take_next<'a, T>(
    questions: &'a [T],
    next: &mut usize,
    input: &Path,
) -> Result<&'a T> {
    let q = questions.get(*next).ok_or_else(|| {
        EvalError::Input(format!(
            "{} runs out of questions after {next}",
            input.display()
        ))
    })?;
    *next += 1;
    Ok(q)
}

/// Settings of the HotpotQA haystack builder.
#[derive(Debug, Clone)]
pub struct HotpotConfig {
    /// Documents to build.
    pub documents: usize,
    /// About this many tokens per document (estimated from chars).
    pub doc_tokens: usize,
    /// Chars per token of the estimate.
    pub chars_per_token: f64,
    /// Questions skipped at the start of the file.
    pub skip: usize,
    /// Seed of the paragraph order.
    pub seed: u64,
}

/// Concatenates the paragraphs of many HotpotQA questions into long documents (shuffled, so
/// each question's supporting sentences sit anywhere inside), RULER-style. Each question
/// becomes an item whose gold spans are its supporting sentences.
pub fn hotpot_haystacks(input: &Path, cfg: &HotpotConfig) -> Result<Vec<EvalItem>> {
    let bytes = std::fs::read(input).map_err(|source| EvalError::Io {
        path: input.display().to_string(),
        source,
    })?;
    let questions: Vec<HotpotQuestion> = serde_json::from_slice(&bytes).map_err(|e| {
        EvalError::Input(format!(
            "{}: not a HotpotQA JSON list: {e}",
            input.display()
        ))
    })?;
    let target_chars = target_chars(cfg.doc_tokens, cfg.chars_per_token)?;
    let mut rng = Rng(cfg.seed);
    let mut out = Vec::new();
    let mut next = cfg.skip;
    for _ in 0..cfg.documents {
        // Take questions until their paragraphs fill the document.
        let mut taken = Vec::new();
        let mut chars = 0usize;
        while chars < target_chars {
            let q = take_next(&questions, &mut next, input)?;
            // Every supporting fact must name a paragraph and sentence that exist.
            let ok = q.supporting_facts.iter().all(|(t, i)| {
                q.context
                    .iter()
                    .any(|(title, sents)| title == t && *i < sents.len())
            });
            if !ok || q.supporting_facts.is_empty() {
                continue;
            }
            chars += q
                .context
                .iter()
                .map(|(t, s)| t.len() + s.iter().map(String::len).sum::<usize>() + 3)
                .sum::<usize>();
            taken.push(q);
        }
        // Paragraphs of all taken questions, shuffled; remember whose they are.
        let mut paragraphs: Vec<(usize, &str, &[String])> = Vec::new();
        for (qi, q) in taken.iter().enumerate() {
            for (title, sents) in &q.context {
                paragraphs.push((qi, title, sents));
            }
        }
        rng.shuffle(&mut paragraphs);
        let mut text = String::new();
        let mut at = 0usize; // chars
                             // Per question: char range of each (title, sentence).
        let mut where_: Vec<Vec<Located>> = vec![Vec::new(); taken.len()];
        for (qi, title, sents) in paragraphs {
            let head = format!("{title}\n");
            text.push_str(&head);
            at += head.chars().count();
            for (si, s) in sents.iter().enumerate() {
                let trimmed = s.trim();
                if si > 0 {
                    text.push(' ');
                    at += 1;
                }
                let n = trimmed.chars().count();
                where_[qi].push((title.to_string(), si, (at, at + n)));
                text.push_str(trimmed);
                at += n;
            }
            text.push_str("\n\n");
            at += 2;
        }
        for (qi, q) in taken.iter().enumerate() {
            let gold: Vec<(usize, usize)> = q
                .supporting_facts
                .iter()
                .filter_map(|(t, i)| {
                    where_[qi]
                        .iter()
                        .find(|(title, si, _)| title == t && si == i)
                        .map(|w| w.2)
                })
                .collect();
            out.push(EvalItem {
                id: q.id.clone(),
                context: text.clone(),
                input: q.question.clone(),
                answers: vec![q.answer.clone()],
                gold_spans: gold,
            });
        }
    }
    Ok(out)
}

/// Settings of the needle builder.
#[derive(Debug, Clone)]
pub struct NeedleConfig {
    /// Haystack lengths, in tokens (estimated from chars).
    pub lengths: Vec<usize>,
    /// Needle depths, as percent of the haystack.
    pub depths: Vec<f64>,
    /// Chars per token of the estimate.
    pub chars_per_token: f64,
    /// Whether all depths of one length share one haystack (a needle each, distinct facts)
    /// instead of one haystack per depth.
    pub shared: bool,
    /// Seed of the facts.
    pub seed: u64,
}

const COLORS: [&str; 10] = [
    "crimson", "amber", "teal", "violet", "ochre", "silver", "indigo", "olive", "scarlet", "ivory",
];
const THINGS: [&str; 10] = [
    "lighthouse",
    "greenhouse",
    "observatory",
    "boathouse",
    "workshop",
    "library",
    "granary",
    "windmill",
    "chapel",
    "bakery",
];

/// Inserts facts ("The access code of the crimson lighthouse is 48213.") into essay text at
/// paragraph boundaries near each depth; each fact becomes a question whose gold span is it.
pub fn needles(essays: &str, cfg: &NeedleConfig) -> Result<Vec<EvalItem>> {
    let paragraphs: Vec<&str> = essays
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if paragraphs.is_empty() {
        return Err(EvalError::Input("the essays text has no paragraphs".into()));
    }
    let mut rng = Rng(cfg.seed);
    let mut out = Vec::new();
    let targets = cfg
        .lengths
        .iter()
        .map(|&len| target_chars(len, cfg.chars_per_token))
        .collect::<Result<Vec<_>>>()?;
    for (&len, target) in cfg.lengths.iter().zip(targets) {
        // The haystack: paragraphs from the start, wrapping around, up to the target.
        let mut hay: Vec<&str> = Vec::new();
        let mut chars = 0;
        let mut i = 0;
        while chars < target {
            let p = paragraphs[i % paragraphs.len()];
            chars += p.chars().count() + 2;
            hay.push(p);
            i += 1;
        }
        let groups: Vec<Vec<f64>> = if cfg.shared {
            vec![cfg.depths.clone()]
        } else {
            cfg.depths.iter().map(|&d| vec![d]).collect()
        };
        for depths in groups {
            let facts: Vec<(usize, String, String, String)> = depths
                .iter()
                .enumerate()
                .map(|(k, &d)| {
                    let at = ((d / 100.0) * hay.len() as f64).round() as usize;
                    let color = COLORS[k % COLORS.len()];
                    let thing = THINGS[(k / COLORS.len() + k) % THINGS.len()];
                    let code = 10_000 + rng.next() % 90_000;
                    (
                        at.min(hay.len()),
                        format!("The access code of the {color} {thing} is {code}."),
                        format!("What is the access code of the {color} {thing}?"),
                        code.to_string(),
                    )
                })
                .collect();
            let mut text = String::new();
            let mut spans = vec![(0, 0); facts.len()];
            let mut at = 0usize;
            for p in 0..=hay.len() {
                for (k, f) in facts.iter().enumerate() {
                    if f.0 == p {
                        let n = f.1.chars().count();
                        spans[k] = (at, at + n);
                        text.push_str(&f.1);
                        text.push_str("\n\n");
                        at += n + 2;
                    }
                }
                if let Some(h) = hay.get(p) {
                    text.push_str(h);
                    text.push_str("\n\n");
                    at += h.chars().count() + 2;
                }
            }
            for (k, f) in facts.iter().enumerate() {
                out.push(EvalItem {
                    id: format!("needle-{len}-{}", depths[k]),
                    context: text.clone(),
                    input: f.2.clone(),
                    answers: vec![f.3.clone()],
                    gold_spans: vec![spans[k]],
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needles_sit_at_their_depths_and_gold_spans_hold_them() {
        let essays = (0..100)
            .map(|i| format!("Paragraph {i} says something about startups."))
            .collect::<Vec<_>>()
            .join("\n\n");
        let cfg = NeedleConfig {
            lengths: vec![500],
            depths: vec![0.0, 50.0, 100.0],
            chars_per_token: 4.0,
            shared: true,
            seed: 7,
        };
        let items = needles(&essays, &cfg).unwrap();
        assert_eq!(items.len(), 3);
        for item in &items {
            let (s, e) = item.gold_spans[0];
            let fact: String = item.context.chars().skip(s).take(e - s).collect();
            assert!(fact.starts_with("The access code"), "{fact}");
            assert!(fact.contains(&item.answers[0]));
        }
        let depth = |i: usize| items[i].gold_spans[0].0 as f64 / items[i].context.len() as f64;
        assert!(depth(0) < 0.05 && (0.4..0.6).contains(&depth(1)) && depth(2) > 0.95);
    }

    #[test]
    fn lengths_and_estimates_out_of_range_are_refused() {
        let essays = "One paragraph.\n\nAnother one.";
        let cfg = |lengths: Vec<usize>, chars_per_token: f64| NeedleConfig {
            lengths,
            depths: vec![50.0],
            chars_per_token,
            shared: true,
            seed: 1,
        };
        for (lengths, cpt) in [
            (vec![500, usize::MAX], 4.0),
            (vec![0], 4.0),
            (vec![500], f64::INFINITY),
            (vec![500], f64::NAN),
            (vec![500], 0.0),
        ] {
            let e = needles(essays, &cfg(lengths.clone(), cpt)).unwrap_err();
            assert!(matches!(e, EvalError::Input(_)), "{lengths:?} {cpt}: {e}");
        }
        assert_eq!(target_chars(1000, 4.2).unwrap(), 4200);
    }
}
