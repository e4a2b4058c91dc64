//! High availability: heartbeats and the primary/backup election (the I/O-free core;
//! the driver owns sockets, clocks, interfaces and addresses).
//!
//! ```text
//! driver ─ UDP bytes ─▶ HeartbeatReceiver::handle(now, src, bytes)  (parse, verify,
//!                          epoch, replay; rejects counted + rate-limited log)
//!        ─ Input ─────▶ Election::handle(now, input) / handle_timeout(now)
//!        ◀ Heartbeat ── Election::poll_transmit(now) ─▶ heartbeat::encode ─▶ UDP
//!        ◀ Action ───── Election::poll_action()      (roles, split brain, FGSP, peer)
//!        ◀ Instant ──── Election::poll_timeout()     (the only timer to arm)
//! ```
//!
//! # Election rules
//!
//! Ranking ([`rank`]): eligible (not FAULT / maintenance) > operator-promoted (newer
//! generation first) > healthy > soft-demoted (sync link down, bulk sync unfinished) >
//! lower priority > lower node id. Each node ranks itself from its current state and
//! the peer from its last heartbeat; every change to what a node advertises is sent at
//! once, so both sides agree within a network delay.
//!
//! Peer liveness: dead after `failure_threshold` x the slower of the two advertised
//! intervals without a valid heartbeat. "Two-way contact": alive, and its heartbeat
//! says it hears *this run* of us (HEARS_PEER + echo of our node id and epoch).
//!
//! 1. Start: BACKUP, listening. The listen ends after the dead interval, or at the
//!    first heartbeat from the peer. Nothing is claimed while listening (except by an
//!    operator promotion).
//! 2. FAULT: a monitored interface down ⇒ FAULT at once, from any role. A FAULT node
//!    never holds PRIMARY. When monitors recover: BACKUP (or straight to PRIMARY if
//!    rule 4 says so).
//! 3. Maintenance (operator demote): leave PRIMARY at once and never take it — not even
//!    when the peer dies (the operator said this box must not carry traffic; the
//!    condition "no node is primary" is logged at error level). Cleared by
//!    `ClearOperator` or `Promote`.
//! 4. A BACKUP takes PRIMARY when it is eligible, done listening, and
//!    - no peer is alive (reason `NoPeer` / `PeerDead`) — its own soft demotion does
//!      not matter, there is nobody better; or
//!    - the peer is alive and not PRIMARY, and either the peer is ineligible
//!      (`PeerUnavailable`), or the peer hears us and we rank first (`Elected`,
//!      `Failback`, `Promoted`). If the peer does not hear us it considers us dead and
//!      will take the role itself, so we wait.
//!
//!    A BACKUP never takes the role from a live PRIMARY: handovers are
//!    release-then-take (below), so planned moves never overlap.
//! 5. A PRIMARY steps down (→ BACKUP) when
//!    - it enters maintenance / FAULT (rules 2, 3);
//!    - split brain: the peer is PRIMARY too, hears us and ranks first (`SplitBrain`);
//!      or the peer is PRIMARY and has not heard us although we have heard it for a
//!      dead interval (`PeerCannotHearUs`: a one-way link; it will never step down);
//!    - handover, only with two-way contact and an eligible BACKUP peer:
//!      the peer is promoted and ranks first (`PeerPromoted`); else, unless we are
//!      promoted: we are soft-demoted and the peer is healthy (`PeerHealthier`, CARP
//!      demotion, immediate); or the peer sets WANTS_FAILBACK, is healthy and has a
//!      strictly lower priority value (`Failback`).
//!
//!    The step-down heartbeat goes out at once; the peer takes on receiving it (rule
//!    4), so the gap is about one network round trip (one interval if it is lost).
//! 6. Failback (auto mode only): a BACKUP sets WANTS_FAILBACK when it is healthy (no
//!    demotion at all: synced, sync link and monitors up, no maintenance), has a
//!    strictly lower priority value than the PRIMARY peer, that peer is not promoted,
//!    and it has been both healthy and in two-way contact for `failback_delay`. Equal
//!    priorities never fail back. Manual mode never sets it: the role moves only by
//!    operator promotion.
//! 7. Split brain (both PRIMARY, peer alive): counted and logged at error level once
//!    per episode, `Action::SplitBrain` emitted; it ends by rule 5 within one network
//!    round trip of two-way contact (the lower-ranked node yields).
//! 8. Operator promote: this node ranks first (newest generation wins between two
//!    promotions) and takes the role via rules 4/5; it clears maintenance and pins the
//!    role (no failback, no health handover) until the node leaves PRIMARY for any
//!    reason, or `Demote` / `ClearOperator`. A promoted node in FAULT waits for the
//!    fault to clear. A promotion cannot move the role across a one-way link.
//! 9. Sync: a node starts unsynced (soft-demoted) unless sync is not required;
//!    `SyncComplete` clears it, `SyncLost` sets it (ignored on the primary, whose
//!    table is the reference); becoming PRIMARY counts as synced.
//!    `InterfacesMayGoUp` is emitted once, at the first of the two.
//!
//! Timers: the heartbeat interval, the startup listen, the peer's dead deadline, the
//! one-way yield deadline and the failback countdown — all through `poll_timeout`.

pub mod config;
pub mod driver;
pub mod election;
pub mod event;
pub mod heartbeat;
pub mod rank;
pub mod receiver;
pub mod reject;
pub mod status;
pub mod takeover;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, ElectionConfig};
pub use election::Election;
pub use event::{Action, Input, Reason, Resolution};
pub use heartbeat::{
    Demotion, Echo, Flags, HEARTBEAT_LEN, HEARTBEAT_PURPOSE, Heartbeat, Role, decode, encode,
    heartbeat_key, heartbeat_keys,
};
pub use receiver::{HeartbeatReceiver, ReceiverConfig, ReceiverStats};
pub use reject::{Reject, RejectCounters, RejectKind};
pub use status::{PeerStatus, Stats, Status};
