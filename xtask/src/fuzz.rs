//! `cargo xtask fuzz`: a short run of every fuzz target (each decoder of network input).
//!
//! cargo-fuzz needs a nightly compiler for its sanitizer flags; the pinned eBPF nightly
//! (installed by `setup`) serves. The build skips the eBPF object (`AYA_BUILD_SKIP`):
//! the targets only exercise decoders.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{setup, sh};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs each target in `fuzz/fuzz_targets` for `seconds`; a crash fails the run and
/// leaves the input in `fuzz/artifacts/<target>/`.
pub fn run(seconds: u64) -> Result<()> {
    setup::ensure(&[])?;
    ensure_cargo_fuzz()?;
    let mut targets: Vec<String> = std::fs::read_dir(Path::new("fuzz/fuzz_targets"))
        .context("reading fuzz/fuzz_targets")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_string)
        })
        .collect();
    targets.sort();
    for t in &targets {
        println!("fuzz: {t} for {seconds} s");
        std::fs::create_dir_all(Path::new("fuzz/corpus").join(t))?;
        sh(Command::new("cargo")
            .arg(format!("+{}", setup::EBPF_TOOLCHAIN))
            .args(["fuzz", "run", t])
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .env("AYA_BUILD_SKIP", "1"))
        .with_context(|| format!("fuzz target {t} failed: see fuzz/artifacts/{t}/"))?;
    }
    println!(
        "fuzz: {} targets ran {seconds} s each without a crash",
        targets.len()
    );
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    sh(Command::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .env("RUSTUP_TOOLCHAIN", "stable"))
}
