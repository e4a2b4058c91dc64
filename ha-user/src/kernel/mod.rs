//! Everything that talks to the kernel besides the eBPF program.

pub mod ctnetlink;
