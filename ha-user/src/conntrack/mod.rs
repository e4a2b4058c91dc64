//! The conntrack entry model shared by capture, the wire protocol and the kernel
//! installer.

pub mod display;
mod entry;

pub use entry::{
    Change, Entry, Family, Key, NatMapping, ProtoInfo, Tuple, Zone, addr_bytes, proto, status,
};
