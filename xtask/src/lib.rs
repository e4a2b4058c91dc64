//! The parts of `cargo xtask` that tests reuse: the two-node lab.

pub mod lab;
