//! `cargo xtask <command>`: the project's entry points.
//!
//! Every command that needs the eBPF toolchain runs `setup` first when something is
//! missing, so a fresh machine needs no manual step.

mod bench;
mod fuzz;
mod setup;

use xtask::lab;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hasync development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (apt packages, pinned nightly, bpf-linker).
    Setup,
    /// Build the workspace (and the eBPF object through ha-user/build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Lints (fmt, clippy), every test including the namespace tests (needs root), and
    /// a short run of every fuzz target.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Seconds per fuzz target (0 = skip fuzzing).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The two-node demo: builds hasync, starts fw-a and fw-b in namespaces, drives
    /// traffic and shows them syncing live; cleans everything up at the end or on Ctrl-C.
    Lab {
        /// Seconds to run (0 = until Ctrl-C).
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// New UDP flows per second from the client.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Kill fw-a halfway (agent SIGKILL, links down) and show fw-b's takeover and
        /// whether a long-running TCP transfer survived.
        #[arg(long)]
        failover: bool,
    },
    /// Run every fuzz target (decoders of network input) for a while.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Benchmark hasync against conntrackd (root): bench/results/<date>.md + SVG.
    Bench {
        /// CI-sized run, under 5 minutes.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for the harness (e.g. `--only latency,install`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build (release) and run the agent in the current network namespace.
    Run {
        #[arg(long, short)]
        config: String,
        /// Extra arguments for `hasync run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::env::set_current_dir(workspace_root()?)?;
    match cli.cmd {
        Cmd::Setup => setup::run(&[]),
        Cmd::Build { release } => {
            setup::ensure(&[])?;
            cargo(&["build", "--workspace"], release)
        }
        Cmd::Test {
            no_lint,
            fuzz_seconds,
            args,
        } => {
            test(no_lint, &args)?;
            if fuzz_seconds > 0 {
                fuzz::run(fuzz_seconds)?;
            }
            Ok(())
        }
        Cmd::Fuzz { seconds } => fuzz::run(seconds),
        Cmd::Lab {
            duration,
            rate,
            failover,
        } => {
            setup::ensure(&[])?;
            setup::require_root("create network namespaces")?;
            cargo(&["build", "--package", "ha-user", "--bin", "hasync"], true)?;
            lab::run(lab::LabArgs {
                duration,
                rate,
                binary: "target/release/hasync".into(),
                failover,
                prefix: "lab".into(),
                quiet: false,
                incumbent: false,
            })
        }
        Cmd::Bench { quick, args } => bench::run(quick, &args),
        Cmd::Run { config, args } => {
            setup::ensure(&[])?;
            setup::require_root("load eBPF programs")?;
            cargo(&["build", "--package", "ha-user", "--bin", "hasync"], true)?;
            let mut cmd = Command::new("target/release/hasync");
            cmd.args(["run", "--config", &config]).args(&args);
            sh(&mut cmd)
        }
    }
}

fn test(no_lint: bool, args: &[String]) -> Result<()> {
    setup::ensure(&[])?;
    setup::require_root("run the namespace tests")?;
    if !no_lint {
        sh(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))
            .context("formatting differs: run `cargo fmt --all`")?;
        // Default members: everything but ha-ebpf, which only builds for the BPF target
        // (ha-user/build.rs builds it; on the host, feature unification pulls std in).
        sh(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    sh(Command::new("cargo").arg("test").args(args))
}

fn cargo(args: &[&str], release: bool) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(args);
    if release {
        cmd.arg("--release");
    }
    sh(&mut cmd)
}

/// Runs a command with inherited stdio, failing on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn workspace_root() -> Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(dir
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}
