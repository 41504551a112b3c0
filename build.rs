//! Compiles the gRPC API (`proto/s3mem/v1/memory.proto`) into Rust, with the file descriptor
//! set that server reflection serves; with the `cuda` feature, also s3mem's own CUDA kernels
//! (attention's softmax, the SAE top-k) to PTX with nvcc (the CUDA compiler the candle kernels
//! are built with; ../shared/gpu/build-gpu.sh puts it on PATH).

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: builds need no system protobuf compiler.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Requests that do not decode are INVALID_ARGUMENT (src/service/codec.rs).
        .codec_path("crate::service::codec::Codec")
        .file_descriptor_set_path(out.join("s3mem_v1_descriptor.bin"))
        .compile_protos(&["proto/s3mem/v1/memory.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    cuda_kernels(&out)
}

fn cuda_kernels(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    // (source, PTX file the Rust side includes)
    const KERNELS: [(&str, &str); 2] = [
        ("src/model/kernels/attention.cu", "attention.ptx"),
        ("src/sae/kernels/topk.cu", "topk.ptx"),
    ];
    for (src, _) in KERNELS {
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(());
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    for (src, ptx) in KERNELS {
        let status = Command::new("nvcc")
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(out.join(ptx))
            .arg(src)
            .status()
            .map_err(|e| format!("the cuda feature needs nvcc (the CUDA compiler) on PATH: {e}"))?;
        if !status.success() {
            return Err(format!("nvcc failed on {src}").into());
        }
    }
    Ok(())
}
