//! Why a received heartbeat was dropped, and a counter per reason.

/// Why a heartbeat was rejected. Nothing from a rejected heartbeat reaches the election.
///
/// The structural reasons and [`Reject::AuthFailed`] are decided before anything is
/// known to be genuine; [`Reject::OwnNode`] and the epoch / replay reasons concern
/// authenticated heartbeats. No rejected heartbeat changes any state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("truncated heartbeat ({len} bytes)")]
    Truncated { len: usize },
    #[error("oversized heartbeat ({len} bytes)")]
    Oversized { len: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported heartbeat version {0}")]
    UnsupportedVersion(u8),
    /// Unknown role / bits, non-zero reserved bytes, zero ids, interval out of range,
    /// inconsistent echo.
    #[error("invalid heartbeat: {0}")]
    BadHeader(&'static str),
    /// Our own node id: `peer_addr` points at ourselves, or both nodes share a node id
    /// (then neither can see the other: fix the configuration).
    #[error("heartbeat carries our own node id")]
    OwnNode,
    #[error("authentication failed")]
    AuthFailed,
    /// A retired epoch of a known peer (in flight from before a restart, or replayed).
    #[error("stale epoch {epoch:#x}")]
    StaleEpoch { epoch: u32 },
    /// A new epoch of a peer whose current epoch is still talking, and it does not echo
    /// our epoch: a replayed capture, or a restart we accept as soon as it hears us.
    #[error("unconfirmed new epoch {epoch:#x}")]
    UnconfirmedEpoch { epoch: u32 },
    #[error("too many peers")]
    TooManyPeers,
    #[error("replayed or duplicate sequence {seq}")]
    Replayed { seq: u64 },
    #[error("sequence {seq} is older than the replay window")]
    TooOld { seq: u64 },
}

/// The reason without its details: indexes counters and the log rate limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RejectKind {
    Truncated,
    Oversized,
    BadMagic,
    UnsupportedVersion,
    BadHeader,
    OwnNode,
    AuthFailed,
    StaleEpoch,
    UnconfirmedEpoch,
    TooManyPeers,
    Replayed,
    TooOld,
}

impl RejectKind {
    pub const COUNT: usize = 12;
    pub const ALL: [RejectKind; RejectKind::COUNT] = [
        RejectKind::Truncated,
        RejectKind::Oversized,
        RejectKind::BadMagic,
        RejectKind::UnsupportedVersion,
        RejectKind::BadHeader,
        RejectKind::OwnNode,
        RejectKind::AuthFailed,
        RejectKind::StaleEpoch,
        RejectKind::UnconfirmedEpoch,
        RejectKind::TooManyPeers,
        RejectKind::Replayed,
        RejectKind::TooOld,
    ];

    /// A stable snake_case name (metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Truncated => "truncated",
            RejectKind::Oversized => "oversized",
            RejectKind::BadMagic => "bad_magic",
            RejectKind::UnsupportedVersion => "unsupported_version",
            RejectKind::BadHeader => "bad_header",
            RejectKind::OwnNode => "own_node",
            RejectKind::AuthFailed => "auth_failed",
            RejectKind::StaleEpoch => "stale_epoch",
            RejectKind::UnconfirmedEpoch => "unconfirmed_epoch",
            RejectKind::TooManyPeers => "too_many_peers",
            RejectKind::Replayed => "replayed",
            RejectKind::TooOld => "too_old",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Seen in normal operation (duplicates, reordering, restarts): debug, not warn.
    pub fn expected(self) -> bool {
        matches!(
            self,
            RejectKind::Replayed
                | RejectKind::TooOld
                | RejectKind::StaleEpoch
                | RejectKind::UnconfirmedEpoch
        )
    }
}

impl Reject {
    pub fn kind(&self) -> RejectKind {
        match self {
            Reject::Truncated { .. } => RejectKind::Truncated,
            Reject::Oversized { .. } => RejectKind::Oversized,
            Reject::BadMagic => RejectKind::BadMagic,
            Reject::UnsupportedVersion(_) => RejectKind::UnsupportedVersion,
            Reject::BadHeader(_) => RejectKind::BadHeader,
            Reject::OwnNode => RejectKind::OwnNode,
            Reject::AuthFailed => RejectKind::AuthFailed,
            Reject::StaleEpoch { .. } => RejectKind::StaleEpoch,
            Reject::UnconfirmedEpoch { .. } => RejectKind::UnconfirmedEpoch,
            Reject::TooManyPeers => RejectKind::TooManyPeers,
            Reject::Replayed { .. } => RejectKind::Replayed,
            Reject::TooOld { .. } => RejectKind::TooOld,
        }
    }
}

/// One counter per [`RejectKind`] (Prometheus counters: they only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectCounters([u64; RejectKind::COUNT]);

impl RejectCounters {
    pub fn bump(&mut self, k: RejectKind) {
        self.0[k.index()] += 1;
    }

    pub fn get(&self, k: RejectKind) -> u64 {
        self.0[k.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(label, count)` for every reason, in [`RejectKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (RejectKind, u64)> + '_ {
        RejectKind::ALL.iter().map(|&k| (k, self.get(k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_with_unique_names() {
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let names: std::collections::HashSet<_> =
            RejectKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), RejectKind::COUNT);
        let mut c = RejectCounters::default();
        c.bump(RejectKind::TooOld);
        c.bump(RejectKind::TooOld);
        assert_eq!((c.get(RejectKind::TooOld), c.total()), (2, 2));
        assert_eq!(c.iter().count(), RejectKind::COUNT);
    }
}
