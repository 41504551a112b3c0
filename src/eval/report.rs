//! Answer-quality reports: one record per (question, method, budget), aggregated into rows,
//! a Markdown table and charts.

use std::collections::BTreeMap;
use std::path::Path;

use super::plot::{Chart, Series};
use super::{EvalError, Result};

/// Width and height of the report's charts, in pixels.
const CHART_SIZE: (u32, u32) = (800, 500);

/// The budget recorded for methods that have none (full context, closed-book).
pub const NO_BUDGET: usize = 0;

/// One answered question under one method and budget.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The question's id.
    pub id: String,
    /// `full`, `window`, `closed-book` or a retrieval method.
    pub method: String,
    /// The evidence budget in tokens (0 where the method has none).
    pub budget: usize,
    /// Tokens of the document.
    pub doc_tokens: usize,
    /// Whether the whole document fits the model's window with the question and the answer.
    pub fits: bool,
    /// Tokens of the context the model read.
    pub context_tokens: usize,
    /// The model's answer.
    pub answer: String,
    /// Exact match (0 or 1), max over references.
    pub em: f64,
    /// Token F1, max over references.
    pub f1: f64,
    /// Whether the answer holds a reference as whole words (1 or 0; `None` in older reports).
    #[serde(default)]
    pub holds: Option<f64>,
    /// Whether every gold span lies inside the context (None without gold spans).
    pub recalled: Option<bool>,
    /// Milliseconds finding the context (retrieval, or cutting the document).
    pub context_ms: f64,
    /// Milliseconds of the answer's prefill.
    pub prefill_ms: f64,
    /// Milliseconds of decoding.
    pub decode_ms: f64,
    /// Peak resident memory of the process during this run, in bytes, when known.
    pub peak_rss_bytes: Option<u64>,
    /// Peak GPU memory the process had allocated during this run (the weights included), in
    /// bytes; `None` on the CPU.
    #[serde(default)]
    pub peak_gpu_bytes: Option<u64>,
    /// How the reader was asked to answer: free, quote or auto (free in older reports).
    #[serde(default = "free_mode")]
    pub mode: String,
    /// Log-probability of the first token of the best quote (the abstention signal).
    #[serde(default)]
    pub confidence: Option<f32>,
    /// Whether the reader abstained under the run's threshold (`None`: no threshold).
    #[serde(default)]
    pub abstained: Option<bool>,
    /// The reader's log-odds of yes against no that the evidence states the answer (the
    /// support signal; `None` without evidence, and in older reports).
    #[serde(default)]
    pub support: Option<f32>,
    /// Milliseconds the support signal took (its turn after the prefill).
    #[serde(default)]
    pub support_ms: Option<f64>,
}

fn free_mode() -> String {
    "free".into()
}

impl RunRecord {
    /// Returns the value of an abstention signal this run recorded.
    pub fn signal(&self, signal: crate::answer::AbstainSignal) -> Option<f32> {
        match signal {
            crate::answer::AbstainSignal::Quote => self.confidence,
            crate::answer::AbstainSignal::Support => self.support,
        }
    }

    /// End-to-end milliseconds: context, prefill and decoding.
    pub fn total_ms(&self) -> f64 {
        self.context_ms + self.prefill_ms + self.decode_ms
    }
}

/// The mean of a set of runs sharing a method and budget.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SummaryRow {
    /// The method.
    pub method: String,
    /// The budget (0 where the method has none).
    pub budget: usize,
    /// Questions.
    pub questions: usize,
    /// Mean exact match.
    pub em: f64,
    /// Mean token F1.
    pub f1: f64,
    /// Share of answers that hold a reference (`None` when no run recorded it).
    pub holds: Option<f64>,
    /// Share of questions with gold spans whose spans were all in the context.
    pub recall: Option<f64>,
    /// Mean F1 over documents that fit the window (None when there are none).
    pub f1_fits: Option<f64>,
    /// Mean F1 over documents beyond the window.
    pub f1_beyond: Option<f64>,
    /// Mean context tokens.
    pub context_tokens: f64,
    /// Median end-to-end milliseconds.
    pub p50_ms: f64,
    /// Mean end-to-end milliseconds.
    pub mean_ms: f64,
    /// Highest peak resident memory, in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Highest peak GPU memory allocated, in bytes (`None` on the CPU).
    pub peak_gpu_bytes: Option<u64>,
    /// Answered correctly, abstained and answered wrongly, as shares (with a threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<super::abstain::Outcomes>,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Aggregates runs per (method, budget), in the order methods first appear.
pub fn summarize(runs: &[RunRecord]) -> Vec<SummaryRow> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<(usize, usize), Vec<&RunRecord>> = BTreeMap::new();
    for r in runs {
        let m = match order.iter().position(|m| *m == r.method) {
            Some(i) => i,
            None => {
                order.push(r.method.clone());
                order.len() - 1
            }
        };
        groups.entry((m, r.budget)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((m, budget), rs)| {
            let mut ms: Vec<f64> = rs.iter().map(|r| r.total_ms()).collect();
            ms.sort_by(f64::total_cmp);
            SummaryRow {
                method: order[m].clone(),
                budget,
                questions: rs.len(),
                em: mean(rs.iter().map(|r| r.em)).unwrap_or(0.0),
                f1: mean(rs.iter().map(|r| r.f1)).unwrap_or(0.0),
                holds: mean(rs.iter().filter_map(|r| r.holds)),
                recall: mean(
                    rs.iter()
                        .filter_map(|r| r.recalled.map(|b| f64::from(u8::from(b)))),
                ),
                f1_fits: mean(rs.iter().filter(|r| r.fits).map(|r| r.f1)),
                f1_beyond: mean(rs.iter().filter(|r| !r.fits).map(|r| r.f1)),
                context_tokens: mean(rs.iter().map(|r| r.context_tokens as f64)).unwrap_or(0.0),
                p50_ms: ms[ms.len() / 2],
                mean_ms: mean(ms.iter().copied()).unwrap_or(0.0),
                peak_rss_bytes: rs.iter().filter_map(|r| r.peak_rss_bytes).max(),
                peak_gpu_bytes: rs.iter().filter_map(|r| r.peak_gpu_bytes).max(),
                outcomes: super::abstain::Outcomes::of(&rs),
            }
        })
        .collect()
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v))
}

fn megabytes(x: Option<u64>) -> String {
    x.map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1e6))
}

/// Returns a budget as tables show it ("-" for methods without one).
pub fn budget_label(budget: usize) -> String {
    if budget == NO_BUDGET {
        "-".to_string()
    } else {
        budget.to_string()
    }
}

/// The rows as a Markdown table (scores in percent).
pub fn markdown(rows: &[SummaryRow]) -> String {
    let mut s = String::from(
        "| method | budget | n | EM | F1 | holds answer | evidence recall | F1 (fits window) \
         | F1 (beyond window) | context tokens | p50 ms | peak RSS MB | peak GPU MB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |\n",
            r.method,
            budget_label(r.budget),
            r.questions,
            pct(Some(r.em)),
            pct(Some(r.f1)),
            pct(r.holds),
            pct(r.recall),
            pct(r.f1_fits),
            pct(r.f1_beyond),
            r.context_tokens,
            r.p50_ms,
            megabytes(r.peak_rss_bytes),
            megabytes(r.peak_gpu_bytes),
        ));
    }
    s.push_str(&super::abstain::markdown(rows));
    s
}

/// F1 against budget: one line per budgeted method; methods without a budget are drawn flat
/// across the budgets measured.
pub fn score_chart(rows: &[SummaryRow], title: &str) -> Chart {
    let budgets: Vec<usize> = {
        let mut b: Vec<usize> = rows
            .iter()
            .map(|r| r.budget)
            .filter(|&b| b != NO_BUDGET)
            .collect();
        b.sort_unstable();
        b.dedup();
        b
    };
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        let points: Vec<(f64, f64)> = if r.budget == NO_BUDGET {
            budgets.iter().map(|&b| (b as f64, 100.0 * r.f1)).collect()
        } else {
            vec![(r.budget as f64, 100.0 * r.f1)]
        };
        Series::named(&mut series, &r.method).points.extend(points);
    }
    Chart {
        title: title.to_string(),
        x_label: "evidence budget (tokens)".to_string(),
        y_label: "F1 %".to_string(),
        log_x: true,
        log_y: false,
        series,
    }
}

/// Which peak memory a chart draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// The process's peak resident memory (host).
    Rss,
    /// The peak GPU memory allocated.
    Gpu,
}

impl Memory {
    fn of(self, r: &RunRecord) -> Option<u64> {
        match self {
            Memory::Rss => r.peak_rss_bytes,
            Memory::Gpu => r.peak_gpu_bytes,
        }
    }

    /// The axis label.
    pub fn label(self) -> &'static str {
        match self {
            Memory::Rss => "peak RSS MB",
            Memory::Gpu => "peak GPU MB",
        }
    }
}

/// Peak memory against document length, one line per (method, budget).
pub fn memory_chart(runs: &[RunRecord], memory: Memory, title: &str) -> Chart {
    let mut series: Vec<Series> = Vec::new();
    for r in runs {
        let Some(bytes) = memory.of(r) else {
            continue;
        };
        let label = if r.budget == NO_BUDGET {
            r.method.clone()
        } else {
            format!("{}@{}", r.method, r.budget)
        };
        let point = (r.doc_tokens as f64, bytes as f64 / 1e6);
        Series::named(&mut series, &label).points.push(point);
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Chart {
        title: title.to_string(),
        x_label: "document tokens".to_string(),
        y_label: memory.label().to_string(),
        log_x: true,
        log_y: false,
        series,
    }
}

/// Writes `bytes` to `path`, naming the file on failure.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| EvalError::io(path, e))
}

/// Draws a report's charts into `out`: score.png, memory.png and, where runs measured GPU
/// memory, gpu-memory.png; returns whether that last one was drawn.
pub fn write_charts(
    out: &Path,
    model: &str,
    rows: &[SummaryRow],
    runs: &[RunRecord],
) -> Result<bool> {
    let (w, h) = CHART_SIZE;
    let title = format!("{model}: F1 vs budget");
    write_file(
        &out.join("score.png"),
        &score_chart(rows, &title).to_png(w, h)?,
    )?;
    let title = format!("{model}: peak RSS");
    let memory = memory_chart(runs, Memory::Rss, &title);
    write_file(&out.join("memory.png"), &memory.to_png(w, h)?)?;
    let gpu = runs.iter().any(|r| r.peak_gpu_bytes.is_some());
    if gpu {
        let title = format!("{model}: peak GPU memory");
        let chart = memory_chart(runs, Memory::Gpu, &title);
        write_file(&out.join("gpu-memory.png"), &chart.to_png(w, h)?)?;
    }
    Ok(gpu)
}

/// Draws the charts of a finished `report.json` again into `out` (see [`write_charts`]), from
/// its model name and its runs; returns the files written.
pub fn plot_report(report: &Path, out: &Path) -> Result<Vec<String>> {
    let bad = |reason: String| EvalError::BadReport {
        path: report.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(report).map_err(|e| EvalError::io(report, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = json["model"]
        .as_str()
        .ok_or_else(|| bad("no \"model\" name".into()))?;
    let runs: Vec<RunRecord> =
        serde_json::from_value(json["runs"].clone()).map_err(|e| bad(format!("\"runs\": {e}")))?;
    if runs.is_empty() {
        return Err(bad("no runs to draw".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    let gpu = write_charts(out, model, &summarize(&runs), &runs)?;
    let mut files = vec!["score.png".to_string(), "memory.png".to_string()];
    if gpu {
        files.push("gpu-memory.png".into());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, method: &str, budget: usize, fits: bool, f1: f64, ms: f64) -> RunRecord {
        RunRecord {
            id: id.into(),
            method: method.into(),
            budget,
            doc_tokens: if fits { 4000 } else { 20000 },
            fits,
            context_tokens: budget,
            answer: String::new(),
            em: f64::from(u8::from(f1 == 1.0)),
            f1,
            holds: Some(f64::from(u8::from(f1 > 0.0))),
            recalled: (method != "full").then_some(f1 > 0.5),
            context_ms: ms,
            prefill_ms: 0.0,
            decode_ms: 0.0,
            peak_rss_bytes: Some(1_000_000 * budget as u64),
            peak_gpu_bytes: (method == "full").then_some(3_000_000_000),
            mode: "free".into(),
            confidence: None,
            abstained: None,
            support: None,
            support_ms: None,
        }
    }

    #[test]
    fn rows_split_by_method_budget_and_window() {
        let runs = vec![
            run("a", "full", 0, true, 1.0, 10.0),
            run("b", "full", 0, false, 0.0, 30.0),
            run("a", "hybrid", 512, true, 0.5, 1.0),
            run("b", "hybrid", 512, false, 1.0, 3.0),
            run("a", "hybrid", 1024, true, 1.0, 2.0),
        ];
        let rows = summarize(&runs);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].method.as_str(), rows[0].budget), ("full", 0));
        assert_eq!(rows[0].f1_fits, Some(1.0));
        assert_eq!(rows[0].f1_beyond, Some(0.0));
        assert_eq!(rows[0].recall, None);
        assert_eq!(rows[0].p50_ms, 30.0);
        let h = &rows[1];
        assert_eq!(
            (h.method.as_str(), h.budget, h.questions),
            ("hybrid", 512, 2)
        );
        assert_eq!(h.f1, 0.75);
        assert_eq!(h.em, 0.5);
        assert_eq!(h.recall, Some(0.5));
        assert_eq!(h.holds, Some(1.0));
        assert_eq!(h.peak_rss_bytes, Some(512_000_000));
        assert_eq!(h.peak_gpu_bytes, None);
        assert_eq!(rows[0].peak_gpu_bytes, Some(3_000_000_000));
        assert_eq!(rows[2].f1_beyond, None);
        let md = markdown(&rows);
        assert!(
            md.contains("| full | - | 2 | 50.0 | 50.0 | 50.0 | - | 100.0 | 0.0 |")
                && md.contains("| 0 | 3000 |\n"),
            "{md}"
        );
        assert!(
            md.contains("| hybrid | 512 | 2 | 50.0 | 75.0 | 100.0 | 50.0 |"),
            "{md}"
        );
    }

    #[test]
    fn charts_draw_budgetless_methods_flat() {
        let runs = vec![
            run("a", "full", 0, true, 0.5, 1.0),
            run("a", "bm25", 512, true, 0.25, 1.0),
            run("a", "bm25", 2048, true, 1.0, 1.0),
        ];
        let rows = summarize(&runs);
        let c = score_chart(&rows, "t");
        assert_eq!(c.series.len(), 2);
        assert_eq!(c.series[0].points, vec![(512.0, 50.0), (2048.0, 50.0)]);
        assert_eq!(c.series[1].points, vec![(512.0, 25.0), (2048.0, 100.0)]);
        let m = memory_chart(&runs, Memory::Rss, "m");
        assert_eq!(m.series.len(), 3);
        assert_eq!(m.series[1].label, "bm25@512");
        // GPU memory: only the runs that have it (here the full-context one).
        let g = memory_chart(&runs, Memory::Gpu, "g");
        assert_eq!(g.series.len(), 1);
        assert_eq!(g.series[0].points, vec![(4000.0, 3000.0)]);
        assert_eq!(g.y_label, "peak GPU MB");
    }
}
