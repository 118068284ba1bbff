//! Generates the gRPC code for proto/node.proto with a vendored protoc, so that building
//! needs no system-installed protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Tensor bytes as `Bytes`: a message retried after a transient error is cloned
    // without copying its (possibly tens of MiB of) data.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &["proto/node.proto"], &["proto"])?;
    Ok(())
}
