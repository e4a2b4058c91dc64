//! Why a received datagram was dropped.

/// Why a datagram was rejected. Nothing from a rejected datagram is applied.
///
/// Everything up to and including [`Reject::AuthFailed`] is decided before the tag is
/// checked and changes no state; the rest is only ever returned for authenticated
/// datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Shorter than a header plus tag, or than the header's payload length says.
    #[error("truncated datagram ({len} bytes)")]
    Truncated { len: usize },
    /// Longer than the largest UDP payload, or than the header's payload length says.
    #[error("oversized datagram ({len} bytes)")]
    Oversized { len: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown message type {0}")]
    BadType(u8),
    /// Unknown flag bits, non-zero reserved bytes, zero node id / epoch / sequence.
    #[error("invalid header: {0}")]
    BadHeader(&'static str),
    /// An encrypted datagram handed over in a read-only buffer (it is decrypted in
    /// place); the agent always passes a writable one.
    #[error("encrypted datagram in a read-only buffer")]
    Encrypted,
    /// Our own node id: multicast loopback, or two nodes configured with one id.
    #[error("datagram carries our own node id")]
    OwnNode,
    /// No key in the ring has this key id, or the tag does not verify.
    #[error("authentication failed")]
    AuthFailed,
    /// A retired epoch of a known peer (in-flight datagrams from before a restart, or a
    /// replay of an older capture).
    #[error("stale epoch {epoch:#x}")]
    StaleEpoch { epoch: u32 },
    /// The peer table is full.
    #[error("too many peers")]
    TooManyPeers,
    /// Sequence already received within the window.
    #[error("replayed or duplicate sequence {seq}")]
    Replayed { seq: u64 },
    /// Sequence older than the replay window (or than the start of the epoch we saw).
    #[error("sequence {seq} is older than the replay window")]
    TooOld { seq: u64 },
    /// Authenticated but undecodable payload. `offset` is from the start of the datagram.
    #[error("malformed payload at offset {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
    /// The peer's HELLO announced versions we do not speak: everything but its HELLOs
    /// is refused until it announces a common version.
    #[error("peer speaks protocol versions {min}..={max} only")]
    Incompatible { min: u8, max: u8 },
}

/// The reason without its details: indexes counters and the log rate limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RejectKind {
    Truncated,
    Oversized,
    BadMagic,
    UnsupportedVersion,
    BadType,
    BadHeader,
    Encrypted,
    OwnNode,
    AuthFailed,
    StaleEpoch,
    TooManyPeers,
    Replayed,
    TooOld,
    Malformed,
    Incompatible,
}

impl RejectKind {
    pub const COUNT: usize = 15;
    pub const ALL: [RejectKind; RejectKind::COUNT] = [
        RejectKind::Truncated,
        RejectKind::Oversized,
        RejectKind::BadMagic,
        RejectKind::UnsupportedVersion,
        RejectKind::BadType,
        RejectKind::BadHeader,
        RejectKind::Encrypted,
        RejectKind::OwnNode,
        RejectKind::AuthFailed,
        RejectKind::StaleEpoch,
        RejectKind::TooManyPeers,
        RejectKind::Replayed,
        RejectKind::TooOld,
        RejectKind::Malformed,
        RejectKind::Incompatible,
    ];

    /// A stable snake_case name (metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Truncated => "truncated",
            RejectKind::Oversized => "oversized",
            RejectKind::BadMagic => "bad_magic",
            RejectKind::UnsupportedVersion => "unsupported_version",
            RejectKind::BadType => "bad_type",
            RejectKind::BadHeader => "bad_header",
            RejectKind::Encrypted => "encrypted",
            RejectKind::OwnNode => "own_node",
            RejectKind::AuthFailed => "auth_failed",
            RejectKind::StaleEpoch => "stale_epoch",
            RejectKind::TooManyPeers => "too_many_peers",
            RejectKind::Replayed => "replayed",
            RejectKind::TooOld => "too_old",
            RejectKind::Malformed => "malformed",
            RejectKind::Incompatible => "incompatible_version",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Reject {
    pub fn kind(&self) -> RejectKind {
        match self {
            Reject::Truncated { .. } => RejectKind::Truncated,
            Reject::Oversized { .. } => RejectKind::Oversized,
            Reject::BadMagic => RejectKind::BadMagic,
            Reject::UnsupportedVersion(_) => RejectKind::UnsupportedVersion,
            Reject::BadType(_) => RejectKind::BadType,
            Reject::BadHeader(_) => RejectKind::BadHeader,
            Reject::Encrypted => RejectKind::Encrypted,
            Reject::OwnNode => RejectKind::OwnNode,
            Reject::AuthFailed => RejectKind::AuthFailed,
            Reject::StaleEpoch { .. } => RejectKind::StaleEpoch,
            Reject::TooManyPeers => RejectKind::TooManyPeers,
            Reject::Replayed { .. } => RejectKind::Replayed,
            Reject::TooOld { .. } => RejectKind::TooOld,
            Reject::Malformed { .. } => RejectKind::Malformed,
            Reject::Incompatible { .. } => RejectKind::Incompatible,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let names: std::collections::HashSet<_> =
            RejectKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), RejectKind::COUNT);
    }
}
