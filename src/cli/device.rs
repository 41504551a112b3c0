//! `--device` and `--scan-batch`: where model work runs, flattened into [`super::args::ModelArgs`]
//! so every command that loads a model takes them.

use clap::Args;

use crate::model::DeviceSpec;

/// Where the model runs.
#[derive(Debug, Args, Clone, Default)]
pub struct DeviceArgs {
    /// Where the model runs: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu", env = "S3MEM_DEVICE")]
    pub device: DeviceSpec,
    /// Windows per forward pass of a scan (default: 1 on the CPU, 8 on a GPU).
    #[arg(long)]
    pub scan_batch: Option<usize>,
}

impl DeviceArgs {
    /// Opens the device (an error, not a panic, for CUDA in a build without it).
    pub fn open(&self) -> crate::model::Result<candle_core::Device> {
        self.device.open()
    }

    /// Returns these flags as arguments for a child `s3mem` process.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = vec!["--device".into(), self.device.to_string()];
        if let Some(b) = self.scan_batch {
            flags.extend(["--scan-batch".into(), b.to_string()]);
        }
        flags
    }
}
