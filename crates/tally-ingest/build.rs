//! Compiles `proto/tally/v1/*.proto` with the vendored protoc, so no system
//! protoc is needed, and writes the descriptor set that gRPC reflection
//! serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // Read at run time, not baked in with `env!` when the build script is
    // compiled: a shared target directory serves clones at other paths.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> =
        ["iou", "ingest", "query", "admin"].iter().map(|name| root.join(format!("tally/v1/{name}.proto"))).collect();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .codec_path("crate::codec::TallyCodec")
        .file_descriptor_set_path(out_dir.join("tally_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    Ok(())
}
