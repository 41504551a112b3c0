//! "Not in the evidence": questions whose gold evidence was removed from the haystack, the
//! rates of answered-correctly / abstained / wrong, and the calibration of the abstention
//! threshold of each signal on development questions.

use std::collections::BTreeMap;

use super::report::{budget_label, RunRecord, SummaryRow};
use super::{EvalError, EvalItem, Result};
use crate::answer::{AbstainSignal, Threshold};

/// An answer counts as correct at this token F1 or above.
pub const CORRECT_F1: f64 = 0.5;

/// The share of answers that were right, abstained and wrong.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Outcomes {
    /// Answered with token F1 of at least [`CORRECT_F1`].
    pub correct: f64,
    /// Said "not in the evidence".
    pub abstained: f64,
    /// Answered, below [`CORRECT_F1`].
    pub wrong: f64,
}

impl Outcomes {
    /// Returns the outcomes of the runs that had a threshold (`None` when none had).
    pub fn of(runs: &[&RunRecord]) -> Option<Self> {
        let judged: Vec<(bool, f64)> = runs
            .iter()
            .filter_map(|r| r.abstained.map(|a| (a, r.f1)))
            .collect();
        if judged.is_empty() {
            return None;
        }
        let n = judged.len() as f64;
        let count =
            |f: &dyn Fn(&(bool, f64)) -> bool| judged.iter().filter(|x| f(x)).count() as f64 / n;
        Some(Self {
            correct: count(&|&(a, f1)| !a && f1 >= CORRECT_F1),
            abstained: count(&|&(a, _)| a),
            wrong: count(&|&(a, f1)| !a && f1 < CORRECT_F1),
        })
    }
}

/// The outcomes of the rows that have them, as a Markdown table (empty when none has).
pub fn markdown(rows: &[SummaryRow]) -> String {
    let with: Vec<(&SummaryRow, Outcomes)> = rows
        .iter()
        .filter_map(|r| r.outcomes.map(|o| (r, o)))
        .collect();
    if with.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\nWith abstention (correct: token F1 >= {CORRECT_F1}):\n\n\
         | method | budget | n | answered correctly | abstained | wrong |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    for (r, o) in with {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.method,
            budget_label(r.budget),
            r.questions,
            100.0 * o.correct,
            100.0 * o.abstained,
            100.0 * o.wrong
        ));
    }
    s
}

/// Returns the items with the gold evidence of every question removed from their contexts:
/// each context loses the gold spans of all the questions asked of it, and only questions
/// whose references no longer occur in it (yes/no questions always) are kept, without gold
/// spans. Their right answer is "not in the evidence".
pub fn without_gold(items: &[EvalItem]) -> Result<Vec<EvalItem>> {
    let mut spans: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for item in items {
        if item.gold_spans.is_empty() {
            return Err(EvalError::Input(format!(
                "question {} has no gold spans to remove",
                item.id
            )));
        }
        spans
            .entry(item.context.as_str())
            .or_default()
            .extend(item.gold_spans.iter().copied());
    }
    let cut: BTreeMap<&str, String> = spans
        .into_iter()
        .map(|(context, ranges)| (context, remove_chars(context, ranges)))
        .collect();
    Ok(items
        .iter()
        .filter_map(|item| {
            let context = cut[item.context.as_str()].clone();
            let lower = context.to_lowercase();
            let still = item.answers.iter().any(|a| {
                let a = a.trim().to_lowercase();
                !matches!(a.as_str(), "yes" | "no") && lower.contains(&a)
            });
            (!still).then(|| EvalItem {
                id: format!("{}-removed", item.id),
                context,
                input: item.input.clone(),
                answers: item.answers.clone(),
                gold_spans: Vec::new(),
            })
        })
        .collect())
}

/// Returns `text` without the char ranges `ranges` (overlaps allowed).
fn remove_chars(text: &str, mut ranges: Vec<(usize, usize)>) -> String {
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut next = ranges.into_iter().peekable();
    let mut skip_until = 0;
    for (i, c) in text.chars().enumerate() {
        while let Some(&(a, b)) = next.peek() {
            if a > i {
                break;
            }
            skip_until = skip_until.max(b);
            next.next();
        }
        if i >= skip_until {
            out.push(c);
        }
    }
    out
}

/// One candidate threshold and what it does on both sets.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Calibration {
    /// Abstain below this value of the signal.
    pub threshold: f32,
    /// Answerable questions: answered correctly, abstained, wrong.
    pub answerable: Outcomes,
    /// Answerable questions abstained on although their gold evidence was in the context (or,
    /// without gold spans, although the answer was right).
    pub wrongly_abstained: f64,
    /// Questions whose evidence was removed: the share abstained.
    pub removed_abstained: f64,
}

/// Whether the evidence supported an answer: the gold spans were in the context, or, for
/// questions without gold spans, the answer was right.
fn supported(r: &RunRecord) -> bool {
    r.recalled.unwrap_or(r.f1 >= CORRECT_F1)
}

/// Runs with the abstention recorded under `rule`.
fn judged(runs: &[&RunRecord], rule: Threshold) -> Vec<RunRecord> {
    runs.iter()
        .map(|r| RunRecord {
            abstained: Some(rule.abstains(r.signal(rule.signal))),
            ..(*r).clone()
        })
        .collect()
}

/// Refuses sets that cannot be calibrated on `signal`: either empty, or no run recording it.
fn check_sets(
    answerable: &[&RunRecord],
    removed: &[&RunRecord],
    signal: AbstainSignal,
) -> Result<()> {
    if answerable.is_empty() || removed.is_empty() {
        return Err(EvalError::Input(
            "calibration needs runs of both sets with the method and budget given".into(),
        ));
    }
    for (set, runs) in [("answerable", answerable), ("removed", removed)] {
        if runs.iter().all(|r| r.signal(signal).is_none()) {
            return Err(EvalError::Input(format!(
                "no run of the {set} set records the {signal} signal (reports of runs without \
                 evidence, or written before the signal was recorded)"
            )));
        }
    }
    Ok(())
}

/// Returns what abstaining below `threshold` of `signal` does on the answerable runs and the
/// runs without their evidence (a threshold chosen on other questions, applied to these).
pub fn at(
    answerable: &[&RunRecord],
    removed: &[&RunRecord],
    signal: AbstainSignal,
    threshold: f32,
) -> Result<Calibration> {
    check_sets(answerable, removed, signal)?;
    let rule = Threshold {
        signal,
        below: threshold,
    };
    let a = judged(answerable, rule);
    let refs: Vec<&RunRecord> = a.iter().collect();
    let right_but_abstained = a
        .iter()
        .filter(|r| r.abstained == Some(true) && supported(r))
        .count();
    let gone = judged(removed, rule);
    Ok(Calibration {
        threshold,
        answerable: Outcomes::of(&refs).expect("every run was judged"),
        wrongly_abstained: right_but_abstained as f64 / a.len() as f64,
        removed_abstained: gone.iter().filter(|r| r.abstained == Some(true)).count() as f64
            / gone.len() as f64,
    })
}

/// Returns what each threshold of `signal` (just above every value seen, and no abstention)
/// does on the answerable runs and the runs without their evidence, by threshold.
pub fn calibrate(
    answerable: &[&RunRecord],
    removed: &[&RunRecord],
    signal: AbstainSignal,
) -> Result<Vec<Calibration>> {
    check_sets(answerable, removed, signal)?;
    let mut thresholds: Vec<f32> = answerable
        .iter()
        .chain(removed)
        .filter_map(|r| r.signal(signal))
        .map(|c| c + 1e-4)
        .collect();
    thresholds.push(f32::NEG_INFINITY);
    thresholds.sort_by(f32::total_cmp);
    thresholds.dedup();
    thresholds
        .into_iter()
        .map(|t| at(answerable, removed, signal, t))
        .collect()
}

/// The threshold that abstains most on removed evidence while wrongly abstaining (on questions
/// whose evidence was there) on at most `max_wrongly` of the answerable ones (ties: the lower
/// threshold).
pub fn choose(rows: &[Calibration], max_wrongly: f64) -> Option<Calibration> {
    rows.iter()
        .filter(|c| c.wrongly_abstained <= max_wrongly)
        .max_by(|a, b| {
            a.removed_abstained
                .total_cmp(&b.removed_abstained)
                .then(b.threshold.total_cmp(&a.threshold))
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, context: &str, answer: &str, gold: (usize, usize)) -> EvalItem {
        EvalItem {
            id: id.into(),
            context: context.into(),
            input: "q?".into(),
            answers: vec![answer.into()],
            gold_spans: vec![gold],
        }
    }

    #[test]
    fn removing_gold_drops_every_questions_spans_and_keeps_unanswerable_ones() {
        let ctx = "Ann was born in Rome. Bob likes tea. Cy is tall. Rome is old.";
        let items = [
            item("a", ctx, "Tea", (22, 36)),
            item("b", ctx, "Rome", (0, 21)),
            item("c", ctx, "yes", (37, 48)),
        ];
        let out = without_gold(&items).unwrap();
        // "Rome" still occurs ("Rome is old."), so b is not kept.
        let ids: Vec<&str> = out.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a-removed", "c-removed"]);
        assert_eq!(out[0].context, "   Rome is old.");
        assert!(out.iter().all(|i| i.gold_spans.is_empty()));
        let mut no_gold = items[0].clone();
        no_gold.gold_spans.clear();
        assert!(without_gold(&[no_gold]).is_err());
    }

    fn judged_run(f1: f64, confidence: f32) -> RunRecord {
        RunRecord {
            id: "q".into(),
            method: "bm25/quote".into(),
            budget: 1024,
            doc_tokens: 1,
            fits: true,
            context_tokens: 1,
            answer: String::new(),
            em: 0.0,
            f1,
            holds: None,
            recalled: None,
            context_ms: 0.0,
            prefill_ms: 0.0,
            decode_ms: 0.0,
            peak_rss_bytes: None,
            peak_gpu_bytes: None,
            mode: "quote".into(),
            confidence: Some(confidence),
            abstained: None,
            support: None,
            support_ms: None,
        }
    }

    /// A run with both signals: the quote's first token and the support log-odds.
    fn signalled(f1: f64, confidence: f32, support: f32) -> RunRecord {
        RunRecord {
            support: Some(support),
            ..judged_run(f1, confidence)
        }
    }

    #[test]
    fn calibration_picks_the_threshold_that_abstains_most_within_the_bound() {
        let answerable = [
            judged_run(1.0, -0.1),
            judged_run(1.0, -0.5),
            judged_run(0.0, -3.0),
            judged_run(1.0, -1.0),
        ];
        let removed = [
            judged_run(0.0, -2.0),
            judged_run(0.0, -0.8),
            judged_run(0.0, -4.0),
        ];
        let a: Vec<&RunRecord> = answerable.iter().collect();
        let r: Vec<&RunRecord> = removed.iter().collect();
        let rows = calibrate(&a, &r, AbstainSignal::Quote).unwrap();
        assert_eq!(rows[0].threshold, f32::NEG_INFINITY);
        assert_eq!(rows[0].removed_abstained, 0.0);
        let best = choose(&rows, 0.0).unwrap();
        // Catching all three removed needs a threshold above -0.8, which also abstains on the
        // right answer at -1.0: with none wrongly abstained, 2 of 3 is the most.
        assert!(
            (best.removed_abstained - 2.0 / 3.0).abs() < 1e-9,
            "{best:?}"
        );
        assert_eq!(best.wrongly_abstained, 0.0);
        assert!((best.answerable.abstained - 0.25).abs() < 1e-9);
        let loose = choose(&rows, 0.25).unwrap();
        assert_eq!(loose.removed_abstained, 1.0);
        assert!(calibrate(&a, &[], AbstainSignal::Quote).is_err());
    }

    #[test]
    fn each_signal_is_calibrated_on_its_own_values_and_applied_to_held_out_runs() {
        // The quote signal cannot tell the sets apart here; support can.
        let answerable = [
            signalled(1.0, -0.5, 3.0),
            signalled(1.0, -2.0, 2.0),
            signalled(1.0, -1.0, 1.5),
            signalled(0.0, -0.7, -0.5),
        ];
        let removed = [
            signalled(0.0, -0.4, -2.0),
            signalled(0.0, -1.5, -1.0),
            signalled(0.0, -0.6, 0.5),
        ];
        let a: Vec<&RunRecord> = answerable.iter().collect();
        let r: Vec<&RunRecord> = removed.iter().collect();
        let quote = choose(&calibrate(&a, &r, AbstainSignal::Quote).unwrap(), 0.0).unwrap();
        let support = choose(&calibrate(&a, &r, AbstainSignal::Support).unwrap(), 0.0).unwrap();
        // Quote: above -2.0 the right answer at -2.0 is lost, so nothing is caught at 0%.
        assert_eq!(quote.removed_abstained, 0.0, "{quote:?}");
        // Support: below 1.5 catches all three removed and the one wrong answer alone.
        assert_eq!(support.removed_abstained, 1.0, "{support:?}");
        assert_eq!(support.wrongly_abstained, 0.0);
        assert!(
            (support.threshold - (0.5 + 1e-4)).abs() < 1e-6,
            "{support:?}"
        );
        assert!((support.answerable.correct - 0.75).abs() < 1e-9);
        assert!((support.answerable.abstained - 0.25).abs() < 1e-9);
        // The dev threshold on held-out runs: what it does there, not what is best there.
        let held_a = [signalled(1.0, -0.5, 0.2), signalled(1.0, -0.5, 2.0)];
        let held_r = [signalled(0.0, -0.5, 0.9), signalled(0.0, -0.5, -3.0)];
        let ha: Vec<&RunRecord> = held_a.iter().collect();
        let hr: Vec<&RunRecord> = held_r.iter().collect();
        let held = at(&ha, &hr, AbstainSignal::Support, support.threshold).unwrap();
        assert_eq!(held.wrongly_abstained, 0.5);
        assert_eq!(held.removed_abstained, 0.5);
        assert_eq!(held.threshold, support.threshold);
        // Reports without the support signal are refused by name, not calibrated as all-abstain.
        let old = [judged_run(1.0, -0.5)];
        let o: Vec<&RunRecord> = old.iter().collect();
        let err = calibrate(&o, &r, AbstainSignal::Support)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("answerable") && err.contains("support"),
            "{err}"
        );
        assert!(calibrate(&o, &r, AbstainSignal::Quote).is_ok());
    }
}
