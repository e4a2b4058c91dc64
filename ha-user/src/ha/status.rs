//! A snapshot of the election for the control socket and metrics.

use std::time::{Duration, Instant};

use super::event::Reason;
use super::heartbeat::{Demotion, Flags, Role};

/// Counters (only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Role changes (the initial backup at start is not one).
    pub transitions: u64,
    /// Split-brain episodes detected (both primary while hearing each other).
    pub split_brains: u64,
    pub heartbeats_sent: u64,
    /// Heartbeats that reached the election.
    pub heartbeats_received: u64,
    /// Older than one already seen (reordered): ignored.
    pub heartbeats_stale: u64,
    /// From a third node while the peer is alive: ignored.
    pub heartbeats_foreign: u64,
    pub peer_losses: u64,
    pub peer_restarts: u64,
}

/// What this node knows of its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub node: u32,
    pub epoch: u32,
    pub role: Role,
    pub priority: u8,
    pub demotion: Demotion,
    pub flags: Flags,
    pub interval: Duration,
    pub last_seq: u64,
    pub last_heard: Instant,
    pub alive: bool,
    /// Its last heartbeat says it hears this run of us.
    pub hears_us: bool,
    /// Start of the current two-way contact.
    pub contact_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub node_id: u32,
    pub epoch: u32,
    pub priority: u8,
    pub role: Role,
    /// Why the role is what it is.
    pub reason: Reason,
    pub role_since: Instant,
    /// Still in the startup listen.
    pub starting: bool,
    /// This node's demotion reasons (empty: healthy).
    pub demotion: Demotion,
    pub synced: bool,
    pub maintenance: bool,
    pub promoted: bool,
    pub wants_failback: bool,
    /// When this node will ask for failback if nothing changes (auto mode, backup,
    /// healthy, preferred, peer primary).
    pub failback_at: Option<Instant>,
    /// Both primary right now.
    pub split_brain: bool,
    pub peer: Option<PeerStatus>,
    pub stats: Stats,
}
