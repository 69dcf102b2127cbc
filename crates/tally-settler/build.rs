//! Compiles `proto/tally/v1/settlement.proto` with the vendored protoc and
//! writes its descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // Read at run time, not baked in with `env!` when the build script is
    // compiled: a shared target directory serves clones at other paths.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("tally/v1/settlement.proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("settlement_descriptor.bin"))
        .compile_protos(std::slice::from_ref(&file), std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", file.display());
    Ok(())
}
