//! hasync: conntrack state synchronisation and high availability for Linux firewalls.
//!
//! The event path, by folder:
//! `capture` (eBPF program + ring buffer) -> `sync` (batch, frame, authenticate, UDP)
//! -> peer's `sync` (verify, decode) -> peer's `kernel` (ctnetlink install).

pub mod agent;
pub mod capture;
pub mod channel;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod ha;
pub mod kernel;
pub mod metrics;
pub mod sync;
