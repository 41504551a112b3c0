//! Compiles the gRPC API (`proto/s3mem/v1/memory.proto`) into Rust, with the file descriptor
//! set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: builds need no system protobuf compiler.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("s3mem_v1_descriptor.bin"))
        .compile_protos(&["proto/s3mem/v1/memory.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
