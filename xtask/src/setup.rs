//! `cargo xtask setup`: installs what building and testing hasync needs, idempotently.
//!
//! - Debian packages: LLVM 22 (for bpf-linker), conntrack-tools and nftables (tests and
//!   the lab), iproute2 and ping.
//! - The pinned nightly with rust-src, used only for the eBPF object: its LLVM major
//!   (22) must match bpf-linker's; nightlies with LLVM 23 make bpf-linker fail with
//!   "Invalid record". Userspace stays on the machine's stable toolchain.
//! - bpf-linker built against Debian's LLVM 22 (`LLVM_PREFIX`, else its build script
//!   follows /usr/bin/llvm-config, LLVM 14 on bookworm, and fails to link).

use std::process::Command;

use anyhow::{Result, bail};

use crate::sh;

/// Keep in sync with `ha-user/build.rs`.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Packages to build the eBPF toolchain.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Packages the tests and the lab run.
const RUNTIME_PACKAGES: &[&str] = &[
    "conntrack",
    "nftables",
    "iproute2",
    "iputils-ping",
    "procps",
];

/// What is missing, in install order.
#[derive(Debug, Default)]
pub struct Missing {
    pub packages: Vec<&'static str>,
    pub toolchain: bool,
    pub rust_src: bool,
    pub bpf_linker: bool,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && !self.toolchain && !self.rust_src && !self.bpf_linker
    }
}

/// Checks (fast, no network) what `setup` would install.
pub fn check(extra: &[&'static str]) -> Missing {
    let packages = BUILD_PACKAGES
        .iter()
        .chain(RUNTIME_PACKAGES)
        .chain(extra)
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    let toolchain =
        !quiet(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--version"]));
    let rust_src = toolchain || !rust_src_installed();
    let bpf_linker = !Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    Missing {
        packages,
        toolchain,
        rust_src,
        bpf_linker,
    }
}

/// Installs whatever [`check`] reports missing.
pub fn run(extra: &[&'static str]) -> Result<()> {
    let missing = check(extra);
    if missing.is_empty() {
        println!(
            "setup: everything is installed (toolchain {EBPF_TOOLCHAIN}, bpf-linker {BPF_LINKER_VERSION})"
        );
        return Ok(());
    }
    if !missing.packages.is_empty() {
        require_root("install Debian packages")?;
        println!("setup: installing {}", missing.packages.join(" "));
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing.packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if missing.toolchain || missing.rust_src {
        println!("setup: installing {EBPF_TOOLCHAIN} with rust-src (eBPF only)");
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    if missing.bpf_linker {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        sh(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("RUSTUP_TOOLCHAIN", "stable"))?;
    }
    let left = check(extra);
    if !left.is_empty() {
        bail!("setup finished but still missing: {left:?}");
    }
    println!("setup: done");
    Ok(())
}

/// Runs [`run`] only when something is missing (the build, test and lab commands call
/// this first).
pub fn ensure(extra: &[&'static str]) -> Result<()> {
    if check(extra).is_empty() {
        Ok(())
    } else {
        run(extra)
    }
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("need root to {what}: run it as root (sudo -E cargo xtask ...)");
    }
    Ok(())
}

/// Whether we run as root (namespaces, BPF and apt need it).
pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}
