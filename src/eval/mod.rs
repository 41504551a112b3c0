//! Evaluation: LongBench-format datasets, their builders, and the metrics that need no judge
//! (evidence recall, SQuAD-style exact match and token F1).

pub mod abstain;
pub mod bootstrap;
pub mod build;
pub mod build_extra;
pub mod contexts;
pub mod heads;
pub mod plot;
pub mod recall;
pub mod report;
pub mod run;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use thiserror::Error;

/// Errors of the eval layer.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A dataset file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a dataset is not a valid item.
    #[error("{path} line {line}: {reason}")]
    BadItem {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A builder input is missing something.
    #[error("{0}")]
    Input(String),
    /// A setting of a run is out of range; names it as the command line spells it.
    #[error("--{setting}: {reason}")]
    Setting {
        /// The setting (`methods`, `budgets`, `max-new-tokens`).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The prompt frame and the answer leave no room for context in the model's window.
    #[error(
        "question {id}: the prompt frame ({overhead} tokens) and --max-new-tokens \
         {max_new_tokens} leave no room in the {window}-token window"
    )]
    NoRoom {
        /// The question.
        id: String,
        /// Tokens of the prompt frame with the question.
        overhead: usize,
        /// Tokens of the answer.
        max_new_tokens: usize,
        /// The model's window.
        window: usize,
    },
    /// One question under one method failed.
    #[error("question {id} with {method}")]
    Question {
        /// The question.
        id: String,
        /// The method.
        method: String,
        /// What failed.
        #[source]
        source: Box<EvalError>,
    },
    /// A report file is not what `s3mem eval` writes.
    #[error("{path}: {reason}")]
    BadReport {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A chart could not be drawn.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The index failed (ingest, lookup).
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    /// Retrieval failed.
    #[error(transparent)]
    Retrieve(#[from] crate::retrieve::RetrieveError),
    /// Answering failed.
    #[error(transparent)]
    Answer(#[from] crate::answer::AnswerError),
}

impl EvalError {
    /// Returns an [`EvalError::Io`] for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Returns an [`EvalError::Setting`] for `setting`.
    pub fn setting(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Setting {
            setting,
            reason: reason.into(),
        }
    }
}

/// Result of the eval layer.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// One question of a LongBench-format dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalItem {
    /// Its id.
    #[serde(rename = "_id")]
    pub id: String,
    /// The document it is asked of.
    pub context: String,
    /// The question.
    pub input: String,
    /// Accepted answers.
    pub answers: Vec<String>,
    /// Char ranges (start, end exclusive) of the evidence in `context`, when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gold_spans: Vec<(usize, usize)>,
}

/// Reads a JSONL dataset.
pub fn read_jsonl(path: &Path) -> Result<Vec<EvalItem>> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: name.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| EvalError::Io {
            path: name.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let item: EvalItem = serde_json::from_str(&line).map_err(|e| EvalError::BadItem {
            path: name.clone(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        let chars = item.context.chars().count();
        if let Some(&(s, e)) = item.gold_spans.iter().find(|&&(s, e)| s >= e || e > chars) {
            return Err(EvalError::BadItem {
                path: name.clone(),
                line: i + 1,
                reason: format!("gold span {s}..{e} is empty or past the context's {chars} chars"),
            });
        }
        out.push(item);
    }
    Ok(out)
}

/// Writes a JSONL dataset.
pub fn write_jsonl(path: &Path, items: &[EvalItem]) -> Result<()> {
    let io = |source| EvalError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for item in items {
        let line = serde_json::to_string(item).expect("an item always serialises");
        writeln!(f, "{line}").map_err(io)?;
    }
    f.flush().map_err(io)
}

/// Whether every gold range lies wholly inside one of `spans` (char ranges).
pub fn evidence_recalled(spans: &[(usize, usize)], gold: &[(usize, usize)]) -> bool {
    !gold.is_empty()
        && gold
            .iter()
            .all(|&(gs, ge)| spans.iter().any(|&(s, e)| s <= gs && ge <= e))
}

/// SQuAD answer normalisation: lowercase, no punctuation, no articles, single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match after normalisation, max over references.
pub fn exact_match(prediction: &str, answers: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    if answers.iter().any(|a| normalize_answer(a) == p) {
        1.0
    } else {
        0.0
    }
}

/// Whether the prediction holds a reference, whole words after normalisation (1 or 0): the
/// needle benchmarks' score, which a right code inside a sentence passes and exact match
/// fails.
pub fn holds_answer(prediction: &str, answers: &[String]) -> f64 {
    let p = format!(" {} ", normalize_answer(prediction));
    let held = answers.iter().any(|a| {
        let a = normalize_answer(a);
        !a.is_empty() && p.contains(&format!(" {a} "))
    });
    f64::from(u8::from(held))
}

/// Token F1 after normalisation, max over references.
pub fn token_f1(prediction: &str, answers: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    let pt: Vec<&str> = p.split_whitespace().collect();
    answers
        .iter()
        .map(|a| {
            let a = normalize_answer(a);
            let at: Vec<&str> = a.split_whitespace().collect();
            let mut counts: HashMap<&str, i64> = HashMap::new();
            for t in &at {
                *counts.entry(t).or_insert(0) += 1;
            }
            let mut common = 0i64;
            for t in &pt {
                if let Some(c) = counts.get_mut(t) {
                    if *c > 0 {
                        *c -= 1;
                        common += 1;
                    }
                }
            }
            if common == 0 {
                return 0.0;
            }
            let precision = common as f64 / pt.len() as f64;
            let recall = common as f64 / at.len() as f64;
            2.0 * precision * recall / (precision + recall)
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_metrics() {
        let refs = vec!["The Eiffel Tower".to_string(), "Eiffel".to_string()];
        assert_eq!(normalize_answer("  The  Eiffel-Tower! "), "eiffeltower");
        assert_eq!(exact_match("eiffel tower.", &refs), 1.0);
        assert_eq!(exact_match("tower", &refs), 0.0);
        let f = token_f1("the tower of eiffel", &refs);
        assert!((f - 0.8).abs() < 1e-9, "{f}");
        assert_eq!(token_f1("", &refs), 0.0);
    }

    #[test]
    fn an_answer_holds_a_reference_as_whole_words() {
        let code = vec!["20235".to_string()];
        let said = "The access code of the violet boathouse is 20235.";
        assert_eq!(holds_answer(said, &code), 1.0);
        assert_eq!(exact_match(said, &code), 0.0);
        assert_eq!(holds_answer("20235", &code), 1.0);
        // Part of a longer number, a wrong code or an empty reference hold nothing.
        assert_eq!(holds_answer("120235", &code), 0.0);
        assert_eq!(holds_answer("20784", &code), 0.0);
        assert_eq!(holds_answer("anything", &["".to_string()]), 0.0);
        let names = vec!["The Eiffel Tower".to_string()];
        assert_eq!(
            holds_answer("it is the eiffel tower, in Paris", &names),
            1.0
        );
    }

    #[test]
    fn recall_needs_every_gold_range_inside_one_span() {
        let spans = [(0, 10), (20, 40)];
        assert!(evidence_recalled(&spans, &[(2, 8), (25, 40)]));
        assert!(!evidence_recalled(&spans, &[(2, 8), (15, 25)]));
        assert!(!evidence_recalled(&spans, &[]));
    }
}
