//! Generates the gRPC code from `proto/` with protox (a protobuf compiler
//! in Rust), so building needs no system `protoc`.

use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    protos(Path::new("proto"), &mut files)?;
    files.sort();
    let descriptors = protox::compile(&files, ["proto"])?;
    // The HTTP gateway maps JSON to and from these messages at run time.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs not implemented yet (auth's user and role calls) answer
        // UNIMPLEMENTED.
        .generate_default_stubs(true)
        // The mvcc crate's record is etcd's KeyValue with the same tags.
        .extern_path(".mvccpb.KeyValue", "::mvcc::KeyValue")
        .compile_fds(descriptors)?;
    Ok(())
}
