//! The README's demo, `cargo xtask lab --failover`, as a test: the lab comes up, the
//! preferred node takes the gateway addresses, traffic flows through them, fw-a dies
//! halfway, fw-b takes over and the long-running TCP transfer survives.

use std::path::PathBuf;

/// Namespaces whose names start with `prefix` (the lab's names are `<prefix><role>`
/// plus a unique suffix).
fn namespaces(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn lab_demo_with_failover_passes() {
    xtask::lab::run(xtask::lab::LabArgs {
        duration: 8,
        rate: 500,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_hasync")),
        failover: true,
        prefix: "xlab".into(),
        quiet: true,
        incumbent: false,
    })
    .unwrap_or_else(|e| panic!("lab demo failed: {e:#}"));
    assert!(
        namespaces("xlab").is_empty(),
        "the lab left namespaces behind"
    );
}

#[test]
fn lab_demo_converges_without_failover() {
    xtask::lab::run(xtask::lab::LabArgs {
        duration: 4,
        rate: 500,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_hasync")),
        failover: false,
        prefix: "xlbc".into(),
        quiet: true,
        incumbent: false,
    })
    .unwrap_or_else(|e| panic!("lab demo failed: {e:#}"));
    assert!(
        namespaces("xlbc").is_empty(),
        "the lab left namespaces behind"
    );
}
