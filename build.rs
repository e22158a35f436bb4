//! Compiles the wire contract in proto/ with a protoc that ships inside a crate, so a
//! build needs nothing from the system package manager.

fn main() -> anyhow::Result<()> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/tapio/v1/event.proto", "proto/tapio/v1/service.proto"],
        &["proto"],
    )?;
    Ok(())
}
