//! Embedding throughput: passages and tokens per second at a passage length and batch sizes.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use super::error::Result;
use super::Embedder;

/// Words of one word piece each, so a passage grows one token per word.
const WORDS: &str =
    "the river rises in a high valley of stone and runs north for four hundred miles \
     before it meets sea mills were built along banks from twelfth century town records \
     mention seventeen grinding grain cloth timber forests below plain orchards bridges \
     flood destroyed old walls people moved west after war school church market road \
     train station opened year later closed again";

/// Distinct passages cycled through while timing: more than the largest batch.
const POOL: usize = 128;

/// What to measure: passages of `tokens` tokens ([CLS] and [SEP] included), embedded
/// `batch` at a time for each batch size, each for at least `min_time` and `min_passages`.
#[derive(Debug, Clone)]
pub struct ThroughputConfig {
    pub tokens: usize,
    pub batches: Vec<NonZeroUsize>,
    pub min_time: Duration,
    pub min_passages: usize,
}

/// One measured batch size.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub batch: usize,
    pub passages: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// CPU time the whole process spent meanwhile (Linux only): unlike `seconds`, barely
    /// moved by other work on a shared machine.
    pub cpu_seconds: Option<f64>,
}

impl Throughput {
    /// Returns passages embedded per second.
    pub fn passages_per_second(&self) -> f64 {
        self.passages as f64 / self.seconds
    }

    /// Returns tokens embedded per second (real tokens, padding excluded).
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }

    /// Returns tokens embedded per CPU second, where the CPU time is known.
    pub fn tokens_per_cpu_second(&self) -> Option<f64> {
        self.cpu_seconds.map(|cpu| self.tokens as f64 / cpu)
    }
}

/// Returns the CPU time (user and system) this process has used, from /proc/self/stat.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of proc(5), in USER_HZ ticks (100 on Linux).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Returns `count` passages of `tokens` tokens each ([CLS] and [SEP] included) in
/// all-MiniLM-L6-v2's vocabulary, where each of their words is one word piece.
pub fn synthetic_passages(count: usize, tokens: usize) -> Vec<String> {
    let vocabulary: Vec<&str> = WORDS.split_whitespace().collect();
    let words = tokens.saturating_sub(2);
    (0..count)
        .map(|p| {
            (0..words)
                .map(|w| vocabulary[(p * 7 + w * (p % 5 + 1)) % vocabulary.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Measures throughput at each batch size of `config`, after one warm-up batch each.
pub fn measure_throughput(
    embedder: &Embedder,
    config: &ThroughputConfig,
) -> Result<Vec<Throughput>> {
    let largest = config.batches.iter().map(|b| b.get()).max().unwrap_or(1);
    let passages = synthetic_passages(POOL.max(largest), config.tokens);
    // Counted, not assumed: another vocabulary may split a word.
    let token_counts: Vec<usize> = passages
        .iter()
        .map(|p| embedder.token_ids(p).map(|ids| ids.len()))
        .collect::<Result<_>>()?;
    let texts: Vec<&str> = passages.iter().map(String::as_str).collect();
    let mut rows = Vec::with_capacity(config.batches.len());
    for &batch in &config.batches {
        let size = batch.get();
        embedder.embed_batched(&texts[..size], batch)?;
        let (mut done, mut tokens, mut start_at) = (0, 0, 0);
        let cpu_start = process_cpu_seconds();
        let clock = Instant::now();
        while clock.elapsed() < config.min_time || done < config.min_passages {
            if start_at + size > texts.len() {
                start_at = 0;
            }
            embedder.embed_batched(&texts[start_at..start_at + size], batch)?;
            tokens += token_counts[start_at..start_at + size]
                .iter()
                .sum::<usize>();
            done += size;
            start_at += size;
        }
        rows.push(Throughput {
            batch: size,
            passages: done,
            tokens,
            seconds: clock.elapsed().as_secs_f64(),
            cpu_seconds: process_cpu_seconds()
                .zip(cpu_start)
                .map(|(end, start)| end - start),
        });
    }
    Ok(rows)
}

/// Formats measurements as a plain-text table, one row per batch size.
pub fn throughput_table(rows: &[Throughput]) -> String {
    let mut out =
        String::from("batch  passages  seconds  passages/s  tokens/s  cpu s  tokens/cpu-s\n");
    for r in rows {
        let (cpu, per_cpu) = match (r.cpu_seconds, r.tokens_per_cpu_second()) {
            (Some(cpu), Some(rate)) => (format!("{cpu:.2}"), format!("{rate:.0}")),
            _ => ("n/a".into(), "n/a".into()),
        };
        let _ = writeln!(
            out,
            "{:>5}  {:>8}  {:>7.2}  {:>10.1}  {:>8.0}  {cpu:>5}  {per_cpu:>12}",
            r.batch,
            r.passages,
            r.seconds,
            r.passages_per_second(),
            r.tokens_per_second()
        );
    }
    out
}
