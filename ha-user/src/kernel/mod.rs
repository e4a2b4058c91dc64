//! Everything that talks to the kernel besides the eBPF program.

pub mod announce;
pub mod ctnetlink;
pub mod netlink_socket;
pub mod rtnetlink;
