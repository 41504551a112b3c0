//! Embedding throughput of all-MiniLM-L6-v2 on this machine's CPU (or `--device cuda:N`):
//! passages and tokens per second at each batch size.
//!
//! `cargo run --release --example embed_bench -- [--model-dir DIR] [--tokens 100]
//! [--batches 1,16,64] [--seconds 5]`

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use s3mem::embed::{measure_throughput, throughput_table, Embedder, ThroughputConfig};
use s3mem::model::{fetch, DeviceSpec};

#[derive(Parser)]
struct Args {
    /// Folder with model.safetensors, tokenizer.json and config.json [default: minilm/ in the
    /// models folder].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Tokens per passage, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 100)]
    tokens: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    batches: Vec<NonZeroUsize>,
    /// Least time spent at each batch size.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = args
        .model_dir
        .unwrap_or_else(|| fetch::models_dir(None).join("minilm"));
    let embedder = Embedder::load_on(&dir, &args.device.open()?)?;
    let config = ThroughputConfig {
        tokens: args.tokens,
        batches: args.batches,
        min_time: Duration::try_from_secs_f64(args.seconds)?,
        min_passages: 0,
    };
    let rows = measure_throughput(&embedder, &config)?;
    // On a shared machine the load says how far the numbers can be trusted.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "all-MiniLM-L6-v2 on {}, {}-token passages, {} threads, load average {}",
        args.device,
        args.tokens,
        rayon::current_num_threads(),
        load.split_whitespace().next().unwrap_or("n/a")
    );
    print!("{}", throughput_table(&rows));
    Ok(())
}
