//! Generates the gRPC code. protoc comes from the `protoc-bin-vendored` crate unless `PROTOC`
//! names one (for example the OS package `protobuf-compiler`), so a fresh machine needs nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // prost-build reads PROTOC from this process's environment.
        // SAFETY: a build script runs on a single thread; nothing reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc);
        }
    }
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<_> = [
        "common.proto",
        "catalog.proto",
        "agents.proto",
        "executions.proto",
        "approvals.proto",
        "credits.proto",
        "bench_raw.proto",
    ]
    .iter()
    .map(|name| proto_dir.join(name))
    .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    tonic_prost_build::configure().compile_protos(&files, &[proto_dir])?;
    Ok(())
}
