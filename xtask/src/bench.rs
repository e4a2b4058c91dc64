//! `cargo xtask bench [--quick]`: hasync against conntrackd on the namespace lab.
//!
//! Builds hasync and the `bench` harness (release), then runs the harness as root. It
//! installs conntrackd and keepalived with apt when missing, writes `bench/results/<date>.md`
//! (`<date>-quick.md` with `--quick`) plus the latency SVG, and prints the tables.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{setup, sh};

pub fn run(quick: bool, args: &[String]) -> Result<()> {
    setup::ensure(&[])?;
    setup::require_root("build network namespaces and load eBPF programs")?;
    // Both binaries (a `--bin` filter applies to every selected package).
    sh(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "ha-user",
        "--package",
        "bench",
        "--bin",
        "hasync",
        "--bin",
        "bench",
    ]))?;
    // Honour CARGO_TARGET_DIR like cargo did.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let release = target.join("release");
    let mut cmd = Command::new(release.join("bench"));
    cmd.arg("--hasync-bin").arg(release.join("hasync"));
    if quick {
        cmd.arg("--quick");
    }
    sh(cmd.args(args))
}
