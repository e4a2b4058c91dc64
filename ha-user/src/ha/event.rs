//! What the driver feeds the election, and what it must act on.

use super::heartbeat::Heartbeat;

/// An input to [`Election::handle`](super::Election::handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A heartbeat the [`HeartbeatReceiver`](super::HeartbeatReceiver) accepted.
    Heartbeat(Heartbeat),
    /// Local health, fed on every change (and once at start if not all up).
    /// `sync_link_up`: the conntrack sync interface has carrier (soft demotion when
    /// down). `monitored_up`: every `monitor_interfaces` entry is up (FAULT when not).
    LocalHealth {
        sync_link_up: bool,
        monitored_up: bool,
    },
    /// This node's conntrack table now holds the peer's state: the bulk sync after
    /// (re)joining finished (or the peer has nothing to send). Idempotent.
    SyncComplete,
    /// This node's copy became incomplete (a resync is needed). Ignored while primary:
    /// the primary's table is the reference.
    SyncLost,
    /// Operator: make this node primary and keep it there (the peer does not fail
    /// back) until it loses the role for any reason. Clears maintenance.
    Promote,
    /// Operator: maintenance. Leave primary at once and never take it, not even when
    /// the peer dies, until [`Input::ClearOperator`] or [`Input::Promote`].
    Demote,
    /// Operator: clear maintenance and any promotion; automatic election resumes.
    ClearOperator,
}

/// Why a role changed (also the `reason` in status and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Agent start: listen before claiming anything.
    Startup,
    /// The startup listen ended without hearing a peer.
    NoPeer,
    /// The peer fell silent for the dead interval.
    PeerDead,
    /// The peer is alive but in FAULT or maintenance.
    PeerUnavailable,
    /// No primary, and this node ranks first.
    Elected,
    /// The preferred node took the role back (or the primary handed it back).
    Failback,
    /// Operator promotion of this node.
    Promoted,
    /// The peer was promoted by an operator.
    PeerPromoted,
    /// Operator maintenance.
    Maintenance,
    /// This node is soft-demoted and the peer is healthy (CARP demotion).
    PeerHealthier,
    /// Both were primary and the peer ranks first.
    SplitBrain,
    /// Both were primary and the peer has not heard us for a dead interval (one-way
    /// link): it will never step down, so we do.
    PeerCannotHearUs,
    /// A monitored interface is down.
    MonitorDown,
    /// Monitored interfaces are back up.
    FaultCleared,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::NoPeer => "no_peer",
            Reason::PeerDead => "peer_dead",
            Reason::PeerUnavailable => "peer_unavailable",
            Reason::Elected => "elected",
            Reason::Failback => "failback",
            Reason::Promoted => "promoted",
            Reason::PeerPromoted => "peer_promoted",
            Reason::Maintenance => "maintenance",
            Reason::PeerHealthier => "peer_healthier",
            Reason::SplitBrain => "split_brain",
            Reason::PeerCannotHearUs => "peer_cannot_hear_us",
            Reason::MonitorDown => "monitor_down",
            Reason::FaultCleared => "fault_cleared",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How this node expects a split brain to end, decided when it is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// We rank first: we stay primary, the peer steps down.
    KeepPrimary,
    /// The peer ranks first: we step down.
    StepDown,
    /// We rank first but the peer does not hear us; we stay for a dead interval, then
    /// step down if it still cannot hear us.
    WaitForPeer,
}

/// Something the driver must do, from [`Election::poll_action`](super::Election::poll_action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the virtual IPs / MACs, send gratuitous ARPs, run `notify_command`.
    BecomePrimary { reason: Reason },
    /// Remove the virtual IPs / MACs, run `notify_command`. Also emitted once at start
    /// (reason `Startup`): clear leftovers of a previous run.
    BecomeBackup { reason: Reason },
    /// As backup, plus report the fault.
    EnterFault { reason: Reason },
    /// Both nodes were primary. Already logged at error level and counted.
    SplitBrain { peer: u32, resolution: Resolution },
    /// FGSP `down_intfs_before_sess_sync`: bring the held interfaces up. Emitted once
    /// per run: on the first `SyncComplete`, or on becoming primary, whichever is first
    /// (a primary must serve even without a peer to sync from).
    InterfacesMayGoUp,
    /// The peer became alive (first heartbeat, after silence, or a new epoch).
    /// `restarted`: a new epoch of a node we knew: its table may be empty (push a
    /// bulk sync if we are primary).
    PeerUp {
        node: u32,
        epoch: u32,
        restarted: bool,
    },
    /// The peer fell silent for the dead interval.
    PeerDown { node: u32 },
}
