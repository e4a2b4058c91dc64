//! Counters the agent exports (Prometheus counters: they only ever grow).

use super::reject::RejectKind;

/// What a [`Sender`](super::Sender) produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Datagrams sealed, all types.
    pub datagrams: u64,
    /// DATA datagrams sealed.
    pub data_datagrams: u64,
    /// Records (changes) encoded.
    pub records: u64,
    /// Bytes of sealed datagrams (UDP payload).
    pub bytes: u64,
    pub alives: u64,
    pub hellos: u64,
    /// NACKs this node sent (as a receiver, through its own Sender).
    pub nacks_sent: u64,
    /// Control messages other than ALIVE, HELLO and NACK.
    pub controls: u64,
    /// Changes refused by the encoder (inconsistent tuples: a capture bug).
    pub encode_errors: u64,
    /// Expectation records encoded (also counted in `records`).
    pub expect_records: u64,
    /// Sealed datagrams overwritten before the driver took them (driver too slow).
    pub overruns: u64,
    /// NACKs for this sender served / ignored (for another node or epoch).
    pub nacks_received: u64,
    pub nacks_ignored: u64,
    /// Datagrams queued for retransmission.
    pub resend_queued: u64,
    /// Retransmitted datagrams handed to the driver, and their bytes (`datagrams` and
    /// `bytes` count each sequence once, when sealed).
    pub retransmits: u64,
    pub retransmit_bytes: u64,
    /// Requested sequences no longer retained (answered with an ALIVE → resync).
    pub resend_unserviceable: u64,
    /// Requested sequences already queued or retransmitted within the hold-off.
    pub resend_duplicate: u64,
    /// Requested sequences refused by the requester's budget.
    pub resend_throttled: u64,
    /// Queued retransmissions overwritten before the driver took them.
    pub resend_evicted: u64,
}

/// One counter per [`RejectKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectCounters {
    pub truncated: u64,
    pub oversized: u64,
    pub bad_magic: u64,
    pub unsupported_version: u64,
    pub bad_type: u64,
    pub bad_header: u64,
    pub encrypted: u64,
    pub own_node: u64,
    pub auth_failed: u64,
    pub stale_epoch: u64,
    pub too_many_peers: u64,
    pub replayed: u64,
    pub too_old: u64,
    pub malformed: u64,
    pub incompatible: u64,
}

impl RejectCounters {
    fn field(&mut self, k: RejectKind) -> &mut u64 {
        match k {
            RejectKind::Truncated => &mut self.truncated,
            RejectKind::Oversized => &mut self.oversized,
            RejectKind::BadMagic => &mut self.bad_magic,
            RejectKind::UnsupportedVersion => &mut self.unsupported_version,
            RejectKind::BadType => &mut self.bad_type,
            RejectKind::BadHeader => &mut self.bad_header,
            RejectKind::Encrypted => &mut self.encrypted,
            RejectKind::OwnNode => &mut self.own_node,
            RejectKind::AuthFailed => &mut self.auth_failed,
            RejectKind::StaleEpoch => &mut self.stale_epoch,
            RejectKind::TooManyPeers => &mut self.too_many_peers,
            RejectKind::Replayed => &mut self.replayed,
            RejectKind::TooOld => &mut self.too_old,
            RejectKind::Malformed => &mut self.malformed,
            RejectKind::Incompatible => &mut self.incompatible,
        }
    }

    pub fn bump(&mut self, k: RejectKind) {
        *self.field(k) += 1;
    }

    pub fn get(&self, k: RejectKind) -> u64 {
        let mut copy = *self;
        *copy.field(k)
    }

    pub fn total(&self) -> u64 {
        RejectKind::ALL.iter().map(|&k| self.get(k)).sum()
    }
}

/// What a [`Receiver`](super::Receiver) saw, over all peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Datagrams accepted (authenticated, fresh), all types; includes malformed ones.
    pub datagrams: u64,
    /// Of `datagrams`, those that arrived encrypted.
    pub encrypted: u64,
    pub bytes: u64,
    /// Changes delivered.
    pub records: u64,
    /// Expectation records among `records`.
    pub expect_records: u64,
    pub alives: u64,
    /// Sequences skipped (datagrams presumed lost when detected).
    pub lost: u64,
    /// Missing sequences that arrived late (reordering or retransmission).
    pub recovered: u64,
    /// Missing sequences that left the replay window (only a resync repairs those).
    pub expired: u64,
    /// NACK messages produced, and the sequences they asked for (retries included).
    pub nacks: u64,
    pub nacked_seqs: u64,
    /// Recovered sequences that had been NACKed (retransmissions, mostly); the rest of
    /// `recovered` were reordered.
    pub repaired: u64,
    /// Missing sequences given up and reported for a resync ([`ResyncNeeded`]).
    ///
    /// [`ResyncNeeded`]: super::ResyncNeeded
    pub given_up: u64,
    /// Changes dropped from gap-filling datagrams because a later datagram had already
    /// changed the same entry (they would have put an older state back).
    pub stale_dropped: u64,
    /// HELLOs whose versions we do not share (refused peer epochs).
    pub incompatible_peers: u64,
    /// Peers first heard.
    pub new_peers: u64,
    /// Known peers that came back with a new epoch (restarts).
    pub epoch_changes: u64,
    pub rejects: RejectCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_counter() {
        let mut c = RejectCounters::default();
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.bump(*k);
            }
        }
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(c.get(*k), i as u64 + 1);
        }
        assert_eq!(c.total(), (1..=RejectKind::COUNT as u64).sum::<u64>());
    }
}
