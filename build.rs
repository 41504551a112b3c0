//! With the `cuda` feature, compiles s3mem's own CUDA kernels to PTX with nvcc (the CUDA
//! compiler the candle kernels are built with; ../shared/gpu/build-gpu.sh puts it on PATH).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/model/kernels/attention.cu";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let status = Command::new("nvcc")
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(out.join("attention.ptx"))
        .arg(src)
        .status()
        .expect("the cuda feature needs nvcc (the CUDA compiler) on PATH");
    assert!(status.success(), "nvcc failed on {src}");
}
