//! The conntrack entry model shared by capture, the wire protocol and the kernel
//! installer.

pub mod display;
mod entry;
pub mod expect;

pub use entry::{
    Change, Entry, Family, Key, NatMapping, ProtoInfo, Tuple, Zone, addr_bytes, proto, status,
};
pub use expect::{
    ExpectChange, ExpectFnName, ExpectKey, ExpectMask, ExpectNat, Expectation, HelperName,
    expect_flags,
};
