//! Compiles the wire contract in proto/ with a protoc that ships inside a crate, and the
//! eBPF probes in ebpf/ with clang (CO-RE objects that the binary embeds).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> anyhow::Result<()> {
    // Naming any path below turns off cargo's default of rerunning on every change.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "proto/tapio/v1/event.proto",
            "proto/tapio/v1/service.proto",
            "proto/cri/api.proto",
        ],
        &["proto"],
    )?;
    compile_probes(&PathBuf::from(std::env::var("OUT_DIR")?))
}

/// Without clang the build fails, naming what to install, unless it opts out of the probes
/// with `TAPIO_EBPF=off`: then the objects are empty, the binaries say so (`--version`, the
/// log at start) and the kernel collectors refuse to start. A build that silently lost its
/// probes once cached its empty objects, and no later build brought them back; a failed
/// build script caches nothing, and the choice is an input cargo watches.
fn compile_probes(out: &Path) -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=ebpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=TAPIO_EBPF");
    let wanted = match std::env::var("TAPIO_EBPF").as_deref() {
        Err(_) | Ok("" | "on") => true,
        Ok("off") => false,
        Ok(other) => anyhow::bail!("TAPIO_EBPF={other:?}: expected on (the default) or off"),
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let (define, multiarch) = match arch.as_str() {
        "x86_64" => ("__TARGET_ARCH_x86", "x86_64-linux-gnu"),
        "aarch64" => ("__TARGET_ARCH_arm64", "aarch64-linux-gnu"),
        other => anyhow::bail!("eBPF probes: no build recipe for target architecture {other}"),
    };
    let available = wanted && Command::new(&clang).arg("--version").output().is_ok();
    if wanted && !available {
        anyhow::bail!(
            "clang ({clang}) was not found, and the eBPF probes are compiled with it. Run \
             scripts/setup (it installs clang and libbpf-dev), or set CLANG to a clang, or \
             build without the kernel collectors with TAPIO_EBPF=off"
        );
    }
    if !wanted {
        println!("cargo:warning=TAPIO_EBPF=off: building without eBPF probes");
    }
    println!(
        "cargo:rustc-env=TAPIO_PROBES={}",
        if wanted {
            "built in"
        } else {
            "left out (TAPIO_EBPF=off)"
        }
    );
    // Every `ebpf/<name>.bpf.c` becomes `<name>.bpf.o`, which `object!("<name>")` embeds.
    let mut probes: Vec<String> = std::fs::read_dir("ebpf")?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".bpf.c")?.to_owned())
        })
        .collect();
    probes.sort();
    for probe in probes {
        let object = out.join(format!("{probe}.bpf.o"));
        if !available {
            std::fs::write(&object, [])?;
            continue;
        }
        let source = format!("ebpf/{probe}.bpf.c");
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D{define}"))
            .arg(format!("-I/usr/include/{multiarch}"))
            .args(["-c", &source, "-o"])
            .arg(&object)
            .status()?;
        anyhow::ensure!(status.success(), "clang failed on {source}");
    }
    Ok(())
}
