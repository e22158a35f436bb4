//! The build cannot silently lose its eBPF probes: without clang it fails and says what to
//! install, unless it opts out with `TAPIO_EBPF=off`, and a binary built that way says so.
//!
//! A real `cargo build` of this crate, in a target directory of its own (the one running
//! these tests is locked by cargo), with `CLANG` pointing nowhere.

use std::path::Path;
use std::process::{Command, Output};

fn build(target: &Path, opt_out: bool) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--locked", "--bin", "tapio-collector"])
        .env("CARGO_TARGET_DIR", target)
        .env("CLANG", "/nonexistent/clang")
        // Smaller and quicker: this build is only run, never debugged.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_INCREMENTAL", "0")
        .env_remove("TAPIO_EBPF");
    if opt_out {
        command.env("TAPIO_EBPF", "off");
    }
    command.output().expect("cargo runs")
}

#[test]
fn without_clang_the_build_fails_unless_it_opts_out_and_then_the_binary_says_so() {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/without-clang");

    let refused = build(&target, false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "built without clang:\n{stderr}");
    assert!(
        stderr.contains("clang (/nonexistent/clang) was not found")
            && stderr.contains("scripts/setup")
            && stderr.contains("TAPIO_EBPF=off"),
        "the failure names clang and both ways out:\n{stderr}"
    );

    let built = build(&target, true);
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(
        built.status.success(),
        "the opt-out build failed:\n{stderr}"
    );
    assert!(
        stderr.contains("TAPIO_EBPF=off: building without eBPF probes"),
        "{stderr}"
    );
    let version = Command::new(target.join("debug/tapio-collector"))
        .arg("--version")
        .output()
        .expect("the binary runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        concat!(
            "tapio-collector ",
            env!("CARGO_PKG_VERSION"),
            " (eBPF probes: left out (TAPIO_EBPF=off))"
        )
    );
    // And the kernel collectors refuse to start, saying why.
    let config = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        config.path(),
        "collectors:\n  kernel: {}\n  synthetic: { config: { events: 10 } }\n",
    )
    .expect("written");
    let run = Command::new(target.join("debug/tapio-collector"))
        .arg("--config")
        .arg(config.path())
        .args(["--server", "none", "--stdout", "--otel-endpoint", "none"])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("built without eBPF probes (TAPIO_EBPF=off)"),
        "{stderr}"
    );

    // The binaries of the normal build have their probes.
    let normal = Command::new(env!("CARGO_BIN_EXE_tapio-collector"))
        .arg("--version")
        .output()
        .expect("runs");
    assert!(
        String::from_utf8_lossy(&normal.stdout).contains("(eBPF probes: built in)"),
        "{}",
        String::from_utf8_lossy(&normal.stdout)
    );
}

#[test]
fn neither_binary_needs_libsystemd_to_start() {
    for binary in [
        env!("CARGO_BIN_EXE_tapio-collector"),
        env!("CARGO_BIN_EXE_tapio-server"),
    ] {
        let out = Command::new("ldd").arg(binary).output().expect("ldd runs");
        let libraries = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{binary}: {libraries}");
        assert!(
            !libraries.contains("libsystemd"),
            "{binary} needs libsystemd:\n{libraries}"
        );
    }
}
