//! The README's demo, `cargo xtask lab --failover`, as a test: the lab comes up, the
//! preferred node takes the gateway addresses, traffic flows through them, fw-a dies
//! halfway, fw-b takes over and the long-running TCP transfer survives.

use std::path::PathBuf;

#[test]
fn lab_demo_with_failover_passes() {
    xtask::lab::run(xtask::lab::LabArgs {
        duration: 8,
        rate: 500,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_hasync")),
        failover: true,
        prefix: "xlab".into(),
        quiet: true,
    })
    .unwrap_or_else(|e| panic!("lab demo failed: {e:#}"));
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
    })
    .unwrap_or_else(|e| panic!("lab demo failed: {e:#}"));
}
