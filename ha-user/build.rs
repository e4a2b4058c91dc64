//! Builds the eBPF object (`ha-ebpf`) with the pinned nightly and bpf-linker, through
//! aya-build, and leaves it in OUT_DIR for `include_bytes_aligned!`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// The nightly whose LLVM major (22) matches bpf-linker's. Keep in sync with
/// `xtask/src/setup.rs`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=HASYNC_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest
        .parent()
        .context("ha-user has no parent directory")?;
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("ha-common/src").display()
    );
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // Lets tools that only type-check (rust-analyzer, docs) work without the eBPF
        // toolchain; the agent then refuses to start with a clear message.
        println!("cargo:warning=AYA_BUILD_SKIP set: the agent is built without its eBPF program");
        std::fs::write(out_dir.join("hasync-ebpf"), b"")?;
        return Ok(());
    }

    let toolchain =
        std::env::var("HASYNC_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_TOOLCHAIN.to_string());
    preflight(&toolchain)?;
    let root_dir = workspace.join("ha-ebpf");
    let root_dir = root_dir.to_str().context("workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ha-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
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
