//! Builds the eBPF object (`ha-ebpf`) with the pinned nightly and bpf-linker and leaves
//! it in OUT_DIR for `include_bytes_aligned!`.
//!
//! This does what aya-build does, minus forwarding every line of the nested build as a
//! cargo warning: the output is shown only when the build fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The nightly whose LLVM major (22) matches bpf-linker's. Keep in sync with
/// `xtask/src/setup.rs`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";
const OBJECT: &str = "hasync-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=HASYNC_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest
        .parent()
        .context("ha-user has no parent directory")?;
    for dir in [
        "ha-common/src",
        "ha-common/Cargo.toml",
        "ha-ebpf/src",
        "ha-ebpf/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // Lets tools that only type-check (rust-analyzer, docs) work without the eBPF
        // toolchain; the agent then refuses to start with a clear message.
        println!("cargo:warning=AYA_BUILD_SKIP set: the agent is built without its eBPF program");
        std::fs::write(out_dir.join(OBJECT), b"")?;
        return Ok(());
    }

    let toolchain =
        std::env::var("HASYNC_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_TOOLCHAIN.to_string());
    preflight(&toolchain)?;
    let object = build(workspace, &out_dir, &toolchain)?;
    std::fs::copy(&object, out_dir.join(OBJECT))
        .with_context(|| format!("copying {} to OUT_DIR", object.display()))?;
    Ok(())
}

/// `cargo build` of ha-ebpf for the BPF target, in a target directory of its own
/// (the outer cargo holds the lock of ours).
fn build(workspace: &Path, out_dir: &Path, toolchain: &str) -> anyhow::Result<PathBuf> {
    let endian = std::env::var("CARGO_CFG_TARGET_ENDIAN")?;
    let target = if endian == "big" {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let target_dir = out_dir.join("ebpf-target");
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    let output = Command::new("rustup")
        .args([
            "run",
            toolchain,
            "cargo",
            "build",
            "--package",
            "ha-ebpf",
            "--bins",
            "--release",
        ])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("RUSTUP_AUTO_INSTALL", "0")
        // The outer build's compiler settings must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .context("running the eBPF build (rustup run ... cargo build)")?;
    if !output.status.success() {
        bail!(
            "building the eBPF program (ha-ebpf) failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(target_dir.join(target).join("release").join(OBJECT))
}

/// Fails early, naming the fix, when the eBPF toolchain is not installed.
fn preflight(toolchain: &str) -> anyhow::Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!(
            "the eBPF toolchain `{toolchain}` (with rust-src) is not installed; \
             run `cargo xtask setup` (it installs everything the build needs)"
        );
    }
    if !Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!("bpf-linker is not installed; run `cargo xtask setup`");
    }
    Ok(())
}
