//! The receiving half: validates, authenticates, de-duplicates and decodes datagrams,
//! and keeps per-peer sequencing state. No I/O and no clock: the driver passes `now`,
//! the source address and the datagram; decoded changes are appended to a
//! caller-provided `Vec` (reused across calls: no allocation per datagram).
//!
//! Nothing touches peer state before the tag verified. Peer state then advances even if
//! the payload turns out malformed: the datagram is genuine, its sequence was used, and
//! asking for it again would fetch the same bytes.
//!
//! Loss recovery: per peer, [`Gaps`](super::nack) tracks what the window misses; the
//! driver polls [`Receiver::poll_nack`] at [`Receiver::poll_timeout`] and sends the
//! NACKs through its Sender, and polls [`Receiver::poll_resync`] for what was given up
//! (→ resync). See `sync::nack` for the schedule and the give-up rules.
//!
//! Versions: a HELLO is negotiated against ours (`sync::hello`); an incompatible peer's
//! other datagrams are refused and it is never NACKed.
//!
//! Restarts: a known node with a new epoch is a restart; its window starts afresh and
//! the old epoch is retired. Datagrams of the last few retired epochs are refused
//! ([`Reject::StaleEpoch`]), which keeps in-flight pre-restart datagrams out and stops a
//! replayed capture of a recent epoch from resetting the peer. (A replay of an epoch
//! older than that memory could still reset the window; closing that fully needs a
//! challenge in HELLO — noted for the HELLO task.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::auth::KeyRing;
use super::hello::{self, PeerVersion};
use super::nack::{Gaps, GiveUp, GiveUpReason, NackConfig, NackRequest, ResyncNeeded};
use super::ratelimit::RateLimiter;
use super::reject::{Reject, RejectKind};
use super::replay::{ReplayError, ReplayWindow};
use super::stats::ReceiverStats;
use super::wire::{
    self, Alive, Bytes, Datagram, DigestChunk, DigestRequest, Hello, Message, MsgType, Nack,
    RepairDone, RepairRequest, ResyncDone, ResyncRequest,
};
use crate::conntrack::{Change, ExpectChange, Key};
use std::collections::HashMap;

pub const DEFAULT_MAX_PEERS: usize = 32;
/// Retired epochs remembered per peer.
const RETIRED_EPOCHS: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Our own node id: datagrams carrying it are refused.
    pub node_id: u32,
    /// Peers tracked at most (only authenticated senders create one).
    pub max_peers: usize,
    /// At most one log line per reject reason per interval.
    pub log_interval: Duration,
    /// NACK schedule; set `max_ranges` from our Sender's datagram size
    /// ([`max_nack_ranges`](super::nack::max_nack_ranges)).
    pub nack: NackConfig,
    /// Our versions, to negotiate peers' HELLOs against ([`hello::ours`]).
    pub hello: Hello,
}

impl ReceiverConfig {
    pub fn new(node_id: u32) -> ReceiverConfig {
        ReceiverConfig {
            node_id,
            max_peers: DEFAULT_MAX_PEERS,
            log_interval: Duration::from_secs(1),
            nack: NackConfig::default(),
            hello: hello::ours(),
        }
    }
}

/// Per-peer counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub datagrams: u64,
    /// Of `datagrams`, those the peer sent encrypted.
    pub encrypted: u64,
    pub records: u64,
    pub lost: u64,
    pub recovered: u64,
    pub expired: u64,
    pub replayed: u64,
    pub too_old: u64,
    pub epoch_changes: u64,
    /// NACK messages for this peer, and the sequences they asked for.
    pub nacks: u64,
    pub nacked_seqs: u64,
    /// Recovered sequences that had been NACKed.
    pub repaired: u64,
    /// Missing sequences given up (reported for a resync).
    pub given_up: u64,
    /// Changes dropped from gap-filling datagrams: a later datagram had changed the key.
    pub stale_dropped: u64,
}

/// Where we stand with a peer's stream ("in sync / behind by N").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSync {
    /// Missing sequences still being recovered (NACKed, or about to be).
    pub outstanding: u64,
    /// Gaps NACKed at least once and not filled yet.
    pub nacks_in_flight: usize,
    /// How long the oldest of the outstanding sequences has been missing.
    pub oldest_missing: Option<Duration>,
    /// Sequences given up and not yet taken by [`Receiver::poll_resync`].
    pub resync_pending: u64,
}

/// What we know of one sender.
#[derive(Clone, Debug)]
pub struct Peer {
    node: u32,
    epoch: u32,
    addr: SocketAddr,
    last_heard: Instant,
    window: ReplayWindow,
    last_alive: Option<Alive>,
    retired: [u32; RETIRED_EPOCHS],
    stats: PeerStats,
    gaps: Gaps,
    version: PeerVersion,
    /// Given up, not yet polled.
    resync: Option<ResyncNeeded>,
    /// While gaps are open: the sequence of the latest datagram that changed each key.
    /// A datagram that fills a gap arrives after later ones were applied; its change
    /// of a key a later datagram already changed is stale and is dropped, or a
    /// retransmitted ESTABLISHED would overwrite the CLOSE that followed it.
    newer: HashMap<Key, u64>,
}

/// Keys remembered while gaps are open, at most (beyond, stale changes from
/// retransmissions can again overwrite newer ones; the consistency check repairs).
const NEWER_KEYS_MAX: usize = 1 << 20;

impl Peer {
    /// Keeps a gap-filling datagram from undoing later changes (see `newer`): drops
    /// from `changes[first..]` what a later datagram already changed, and remembers
    /// this datagram's keys while gaps are open. Returns how many were dropped.
    fn order(
        &mut self,
        seq: u64,
        old_highest: u64,
        changes: &mut Vec<Change>,
        first: usize,
    ) -> usize {
        if !self.gaps.any() {
            self.newer.clear();
            return 0;
        }
        let before = changes.len();
        if seq < old_highest {
            let newer = &self.newer;
            let mut i = 0;
            changes.retain(|c| {
                let keep = i < first || newer.get(&change_key(c)).is_none_or(|&s| s < seq);
                i += 1;
                keep
            });
        }
        for c in &changes[first..] {
            if self.newer.len() >= NEWER_KEYS_MAX {
                break;
            }
            let s = self.newer.entry(change_key(c)).or_insert(seq);
            *s = (*s).max(seq);
        }
        before - changes.len()
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Source address of its latest accepted datagram.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// Highest sequence accepted in the current epoch.
    pub fn last_seq(&self) -> u64 {
        self.window.highest()
    }

    /// Its latest ALIVE in the current epoch.
    pub fn last_alive(&self) -> Option<Alive> {
        self.last_alive
    }

    /// Sequence ranges of the current epoch still missing (what a NACK would ask for).
    pub fn missing(&self) -> impl Iterator<Item = std::ops::RangeInclusive<u64>> + '_ {
        self.window.missing()
    }

    pub fn stats(&self) -> &PeerStats {
        &self.stats
    }

    /// What its HELLO negotiated (for the current epoch).
    pub fn version(&self) -> PeerVersion {
        self.version
    }

    /// Recovery status (walks the gaps: for status pages, not per datagram).
    pub fn sync(&self, now: Instant) -> PeerSync {
        PeerSync {
            outstanding: self.gaps.outstanding(&self.window),
            nacks_in_flight: self.gaps.nacked(),
            oldest_missing: self
                .gaps
                .oldest(&self.window)
                .map(|t| now.saturating_duration_since(t)),
            resync_pending: self.resync.map_or(0, |r| r.seqs),
        }
    }

    /// Whether anything before `seq` (of the current epoch) is still missing: a
    /// marker such as REPAIR_DONE is only complete once this is false.
    pub fn has_missing_before(&self, seq: u64) -> bool {
        seq > 1 && self.window.missing_within(1, seq - 1).next().is_some()
    }

    fn give_up(
        &mut self,
        g: Option<GiveUp>,
        st: &mut ReceiverStats,
        log: &mut RateLimiter<1>,
        now: Instant,
    ) {
        let Some(g) = g else {
            return;
        };
        // Saturating: an authenticated peer can skip almost 2^64 sequences.
        self.stats.given_up = self.stats.given_up.saturating_add(g.seqs);
        st.given_up = st.given_up.saturating_add(g.seqs);
        match &mut self.resync {
            Some(r) => {
                r.seqs = r.seqs.saturating_add(g.seqs);
                r.first = r.first.min(g.first);
                r.last = r.last.max(g.last);
                r.epoch = self.epoch;
            }
            None => {
                self.resync = Some(ResyncNeeded {
                    node: self.node,
                    epoch: self.epoch,
                    seqs: g.seqs,
                    first: g.first,
                    last: g.last,
                    reason: g.reason,
                });
            }
        }
        if let Some(suppressed) = log.check(0, now) {
            tracing::warn!(
                node = self.node,
                epoch = self.epoch,
                seqs = g.seqs,
                first = g.first,
                last = g.last,
                reason = g.reason.as_str(),
                suppressed,
                "sync: datagrams lost beyond recovery; the peer's state needs a resync"
            );
        }
    }

    fn retire(&mut self, epoch: u32) {
        self.retired.rotate_right(1);
        self.retired[0] = epoch;
    }
}

/// How the datagram changed what we know of its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    None,
    /// First datagram from this node.
    NewPeer,
    /// The node restarted: first datagram of a new epoch. Its kernel table may be empty
    /// and our view of its sequence restarts.
    Restarted {
        old_epoch: u32,
    },
}

/// An accepted datagram's content (DATA changes went to the caller's `Vec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Data {
        changes: usize,
    },
    Alive(Alive),
    /// Addressed to `nack.node`: only that node's driver serves it.
    Nack(Nack<'a>),
    /// The peer's HELLO and what it negotiated.
    Hello {
        hello: Hello,
        version: PeerVersion,
    },
    ResyncRequest(ResyncRequest),
    ResyncDone(ResyncDone),
    DigestRequest(DigestRequest),
    Digest(DigestChunk<'a>),
    RepairRequest(RepairRequest<'a>),
    RepairDone(RepairDone<'a>),
}

/// An accepted datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received<'a> {
    pub node: u32,
    pub epoch: u32,
    pub seq: u64,
    pub peer_event: PeerEvent,
    /// Sequences this datagram revealed as missing.
    pub lost: u64,
    /// It filled a gap that had been NACKed (a retransmission, most likely).
    pub repaired: bool,
    pub payload: Payload<'a>,
}

pub struct Receiver {
    node: u32,
    max_peers: usize,
    keys: KeyRing,
    peers: Vec<Peer>,
    stats: ReceiverStats,
    log: RateLimiter<{ RejectKind::COUNT }>,
    log_resync: RateLimiter<1>,
    nack: NackConfig,
    hello: Hello,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("node", &self.node)
            .field("peers", &self.peers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    pub fn new(cfg: ReceiverConfig, keys: KeyRing) -> Receiver {
        Receiver {
            node: cfg.node_id,
            max_peers: cfg.max_peers,
            keys,
            peers: Vec::new(),
            stats: ReceiverStats::default(),
            log: RateLimiter::new(cfg.log_interval),
            log_resync: RateLimiter::new(cfg.log_interval),
            nack: cfg.nack,
            hello: cfg.hello,
        }
    }

    /// The next NACK to send, if one is due at `now` (call until `None`). Also gives
    /// up what can no longer be recovered (see [`poll_resync`](Self::poll_resync)).
    pub fn poll_nack(&mut self, now: Instant) -> Option<NackRequest> {
        for p in &mut self.peers {
            if p.gaps.wakeup().is_none_or(|t| t > now) {
                continue;
            }
            let mut ranges = Vec::new();
            let g = p.gaps.poll(now, &p.window, &self.nack, &mut ranges);
            p.give_up(g, &mut self.stats, &mut self.log_resync, now);
            if ranges.is_empty() {
                continue;
            }
            let req = NackRequest {
                node: p.node,
                epoch: p.epoch,
                ranges,
            };
            let seqs = req.seqs();
            p.stats.nacks += 1;
            p.stats.nacked_seqs += seqs;
            self.stats.nacks += 1;
            self.stats.nacked_seqs += seqs;
            return Some(req);
        }
        None
    }

    /// When [`poll_nack`](Self::poll_nack) next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.iter().filter_map(|p| p.gaps.wakeup()).min()
    }

    /// A peer whose changes were lost beyond recovery, if any (call until `None`; each
    /// loss is reported once, merged per peer until polled).
    pub fn poll_resync(&mut self) -> Option<ResyncNeeded> {
        self.peers.iter_mut().find_map(|p| p.resync.take())
    }

    /// Replaces the key ring (rotation).
    pub fn set_keys(&mut self, keys: KeyRing) {
        self.keys = keys;
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn peer(&self, node: u32) -> Option<&Peer> {
        self.peers.iter().find(|p| p.node == node)
    }

    /// Processes one datagram from `src`. On success DATA changes have been appended to
    /// `changes`; on rejection `changes` is untouched. Pass the datagram writable
    /// (`&mut`): an encrypted one is decrypted in place once authenticated (one that
    /// fails authentication is left as it was); a read-only one can only be plaintext. Rejections are counted and
    /// logged (rate-limited). Expectation records are refused as malformed here (what
    /// a build without [`hello::FEATURE_EXPECT`] does); see
    /// [`handle_with_expects`](Self::handle_with_expects).
    pub fn handle<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: impl Into<Bytes<'a>>,
        changes: &mut Vec<Change>,
    ) -> Result<Received<'a>, Reject> {
        self.handle_checked(now, src, datagram.into(), changes, None)
    }

    /// Like [`handle`](Self::handle), and expectation records of DATA datagrams are
    /// appended to `expects` (after `changes` on the caller's side: an expectation
    /// needs its master). On rejection neither vector is touched.
    pub fn handle_with_expects<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: impl Into<Bytes<'a>>,
        changes: &mut Vec<Change>,
        expects: &mut Vec<ExpectChange>,
    ) -> Result<Received<'a>, Reject> {
        self.handle_checked(now, src, datagram.into(), changes, Some(expects))
    }

    /// Whether expectation records may go on the wire: some peer agreed a version by
    /// HELLO, and every peer that did offers [`hello::FEATURE_EXPECT`] (one that does
    /// not would reject whole datagrams).
    pub fn peers_decode_expectations(&self) -> bool {
        let mut agreed = self.peers.iter().filter_map(|p| match p.version {
            PeerVersion::Agreed(a) => Some(a),
            _ => None,
        });
        let mut any = false;
        agreed.all(|a| {
            any = true;
            a.features & hello::FEATURE_EXPECT != 0
        }) && any
    }

    fn handle_checked<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: Bytes<'a>,
        changes: &mut Vec<Change>,
        expects: Option<&mut Vec<ExpectChange>>,
    ) -> Result<Received<'a>, Reject> {
        let res = self.handle_inner(now, src, datagram, changes, expects);
        if let Err(r) = &res {
            let kind = r.kind();
            self.stats.rejects.bump(kind);
            if let Some(suppressed) = self.log.check(kind.index(), now) {
                match kind {
                    // Expected in normal operation (duplicates, multicast loopback,
                    // pre-restart stragglers): keep them out of the default log.
                    // Incompatible: logged at error once per peer epoch, at its HELLO.
                    RejectKind::Replayed
                    | RejectKind::TooOld
                    | RejectKind::OwnNode
                    | RejectKind::StaleEpoch
                    | RejectKind::Incompatible => {
                        tracing::debug!(%src, reason = %r, suppressed, "sync: datagram dropped");
                    }
                    _ => tracing::warn!(%src, reason = %r, suppressed, "sync: datagram dropped"),
                }
            }
        }
        res
    }

    fn handle_inner<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: Bytes<'a>,
        changes: &mut Vec<Change>,
        expects: Option<&mut Vec<ExpectChange>>,
    ) -> Result<Received<'a>, Reject> {
        let len = datagram.len();
        // Our own (multicast loopback) is dropped before any cryptography.
        if Datagram::parse(datagram.as_slice())?.node() == self.node {
            return Err(Reject::OwnNode);
        }
        let dg = wire::open(datagram, &self.keys)?;
        let (node, epoch, seq) = (dg.node(), dg.epoch(), dg.seq());
        // Authenticated (and decrypted) from here on.
        let (idx, peer_event) = self.peer_for(now, src, node, epoch, seq)?;
        let p = &mut self.peers[idx];
        let track = !p.version.is_incompatible();
        let expired = if track {
            p.gaps.before_accept(&p.window, seq)
        } else {
            None
        };
        let old_highest = p.window.highest();
        let acc = match p.window.accept(seq) {
            Ok(a) => a,
            Err(ReplayError::Replayed) => {
                p.stats.replayed += 1;
                return Err(Reject::Replayed { seq });
            }
            Err(ReplayError::TooOld) => {
                p.stats.too_old += 1;
                return Err(Reject::TooOld { seq });
            }
        };
        let st = &mut self.stats;
        p.give_up(expired, st, &mut self.log_resync, now);
        let mut repaired = false;
        if track {
            let (r, skipped) = p
                .gaps
                .on_accept(now, &p.window, old_highest, seq, &acc, &self.nack);
            repaired = r;
            p.give_up(skipped, st, &mut self.log_resync, now);
        }
        p.addr = src;
        p.last_heard = now;
        p.stats.lost = p.stats.lost.saturating_add(acc.lost);
        p.stats.recovered += u64::from(acc.recovered);
        p.stats.expired = p.stats.expired.saturating_add(acc.expired);
        p.stats.repaired += u64::from(repaired);
        st.lost = st.lost.saturating_add(acc.lost);
        st.recovered += u64::from(acc.recovered);
        st.expired = st.expired.saturating_add(acc.expired);
        st.repaired += u64::from(repaired);
        if let PeerVersion::Incompatible(i) = p.version
            && dg.msg_type() != MsgType::Hello
        {
            if dg.msg_type() == MsgType::Data {
                // Its changes are not applied: never silently.
                let g = GiveUp {
                    seqs: 1,
                    first: seq,
                    last: seq,
                    reason: GiveUpReason::Refused,
                };
                p.give_up(Some(g), st, &mut self.log_resync, now);
            }
            return Err(Reject::Incompatible {
                min: i.theirs_min,
                max: i.theirs_max,
            });
        }
        p.stats.datagrams += 1;
        st.datagrams += 1;
        st.bytes += len as u64;
        if dg.encrypted() {
            p.stats.encrypted += 1;
            st.encrypted += 1;
        }

        let first = changes.len();
        let payload = match dg.message()? {
            Message::Data(records) => {
                let (n, x) = match expects {
                    Some(expects) => {
                        let (before, xbefore) = (changes.len(), expects.len());
                        records
                            .decode_mixed_into(changes, expects)
                            .map_err(wire::malformed)?;
                        (changes.len() - before, expects.len() - xbefore)
                    }
                    None => (records.decode_into(changes).map_err(wire::malformed)?, 0),
                };
                p.stats.records += (n + x) as u64;
                st.records += (n + x) as u64;
                st.expect_records += x as u64;
                let stale = p.order(seq, old_highest, changes, first);
                p.stats.stale_dropped += stale as u64;
                st.stale_dropped += stale as u64;
                Payload::Data { changes: n - stale }
            }
            Message::Alive(a) => {
                p.last_alive = Some(a);
                st.alives += 1;
                if track {
                    let g = p.gaps.on_retained_from(&p.window, a.retained_from, seq);
                    p.give_up(g, st, &mut self.log_resync, now);
                }
                Payload::Alive(a)
            }
            Message::Nack(n) => Payload::Nack(n),
            Message::Hello(h) => {
                let version = match hello::negotiate(&self.hello, &h) {
                    Ok(a) => {
                        if p.version != PeerVersion::Agreed(a) {
                            tracing::info!(
                                node,
                                epoch,
                                version = a.version,
                                features = a.features,
                                "sync: protocol version agreed"
                            );
                        }
                        PeerVersion::Agreed(a)
                    }
                    Err(e) => {
                        if !p.version.is_incompatible() {
                            // Once per peer epoch (until it agrees again).
                            st.incompatible_peers += 1;
                            tracing::error!(node, epoch, %src, "sync: peer refused: {e}");
                            // What it still missed would be refused too.
                            let g = p.gaps.clear(&p.window, GiveUpReason::Refused);
                            p.give_up(g, st, &mut self.log_resync, now);
                        }
                        PeerVersion::Incompatible(e)
                    }
                };
                p.version = version;
                Payload::Hello { hello: h, version }
            }
            Message::ResyncRequest(r) => Payload::ResyncRequest(r),
            Message::ResyncDone(d) => Payload::ResyncDone(d),
            Message::DigestRequest(r) => Payload::DigestRequest(r),
            Message::Digest(d) => Payload::Digest(d),
            Message::RepairRequest(r) => Payload::RepairRequest(r),
            Message::RepairDone(d) => Payload::RepairDone(d),
        };
        Ok(Received {
            node,
            epoch,
            seq,
            peer_event,
            lost: acc.lost,
            repaired,
            payload,
        })
    }

    /// Finds (or creates, or resets for a new epoch) the peer of an authenticated
    /// datagram.
    fn peer_for(
        &mut self,
        now: Instant,
        src: SocketAddr,
        node: u32,
        epoch: u32,
        seq: u64,
    ) -> Result<(usize, PeerEvent), Reject> {
        let Some(idx) = self.peers.iter().position(|p| p.node == node) else {
            if self.peers.len() >= self.max_peers {
                return Err(Reject::TooManyPeers);
            }
            self.peers.push(Peer {
                node,
                epoch,
                addr: src,
                last_heard: now,
                window: ReplayWindow::new(seq),
                last_alive: None,
                retired: [0; RETIRED_EPOCHS],
                stats: PeerStats::default(),
                gaps: Gaps::default(),
                version: PeerVersion::Unknown,
                resync: None,
                newer: HashMap::new(),
            });
            self.stats.new_peers += 1;
            tracing::info!(node, epoch, %src, seq, "sync: new peer");
            return Ok((self.peers.len() - 1, PeerEvent::NewPeer));
        };
        let p = &mut self.peers[idx];
        if p.epoch == epoch {
            return Ok((idx, PeerEvent::None));
        }
        if p.retired.contains(&epoch) {
            return Err(Reject::StaleEpoch { epoch });
        }
        let old_epoch = p.epoch;
        // Whatever the old epoch still missed can no longer be delivered.
        let expired = p.window.missing_count();
        p.stats.expired += expired;
        self.stats.expired += expired;
        let g = p.gaps.clear(&p.window, GiveUpReason::Restarted);
        p.give_up(g, &mut self.stats, &mut self.log_resync, now);
        p.retire(old_epoch);
        p.epoch = epoch;
        p.window = ReplayWindow::new(seq);
        p.last_alive = None;
        // A restart may be an upgrade: versions are negotiated afresh.
        p.version = PeerVersion::Unknown;
        p.stats.epoch_changes += 1;
        self.stats.epoch_changes += 1;
        tracing::info!(
            node,
            old_epoch,
            epoch,
            %src,
            seq,
            "sync: peer restarted (new epoch)"
        );
        Ok((idx, PeerEvent::Restarted { old_epoch }))
    }
}

/// The kernel identity a change applies to.
fn change_key(c: &Change) -> Key {
    match c {
        Change::Upsert { entry, .. } => entry.key(),
        Change::Delete(k) => *k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::auth::SyncKey;
    use crate::sync::sender::{Sender, SenderConfig};
    use crate::sync::wire::record::tests::udp4;
    use crate::sync::wire::{Control, HEADER_LEN, HeaderFields, MsgType};

    fn src() -> SocketAddr {
        "192.0.2.1:4800".parse().unwrap()
    }

    fn key(s: &str) -> SyncKey {
        SyncKey::derive(s.as_bytes()).unwrap()
    }

    fn receiver(keys: KeyRing) -> Receiver {
        Receiver::new(ReceiverConfig::new(9), keys)
    }

    fn sender(node: u32, epoch: u32, k: SyncKey, now: Instant) -> Sender {
        Sender::new(SenderConfig::new(node, epoch), k, now).unwrap()
    }

    fn upsert() -> Change {
        Change::Upsert {
            entry: udp4(),
            new: false,
        }
    }

    /// One sealed DATA datagram with `n` upserts.
    fn data(s: &mut Sender, n: usize) -> Vec<u8> {
        data_of(s, &vec![upsert(); n])
    }

    fn ftp_expect() -> crate::conntrack::Expectation {
        use crate::conntrack::{ExpectMask, Expectation, Family, HelperName, Tuple, Zone, proto};
        let ip = |s: &str| s.parse().unwrap();
        Expectation {
            master: Tuple::new(proto::TCP, ip("10.0.0.1"), 40000, ip("10.0.0.2"), 21),
            tuple: Tuple::new(proto::TCP, ip("10.0.0.1"), 0, ip("10.0.0.2"), 50000),
            mask: ExpectMask::any_port(Family::V4),
            zone: Zone::DEFAULT,
            timeout: 300,
            flags: 0,
            class: 0,
            helper: HelperName::new("ftp"),
            expectfn: None,
            nat: None,
        }
    }

    #[test]
    fn expectation_records_share_data_datagrams() {
        let t = Instant::now();
        let mut s = sender(1, 7, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let e = ftp_expect();
        s.push(&upsert()).unwrap();
        s.push_expect(&ExpectChange::Upsert(e)).unwrap();
        s.push_expect(&ExpectChange::Delete(e.key())).unwrap();
        let d = data(&mut s, 1);
        assert_eq!(s.stats().expect_records, 2);
        let (mut out, mut xs) = (Vec::new(), Vec::new());
        let got = r
            .handle_with_expects(t, src(), &d, &mut out, &mut xs)
            .unwrap();
        assert_eq!(got.payload, Payload::Data { changes: 2 });
        assert_eq!(out, vec![upsert(); 2]);
        assert_eq!(
            xs,
            vec![ExpectChange::Upsert(e), ExpectChange::Delete(e.key())]
        );
        assert_eq!((r.stats().records, r.stats().expect_records), (4, 2));

        // A receiver without the feature (plain `handle`) refuses the whole datagram.
        let mut old = receiver(KeyRing::new(key("k"), None));
        let mut out = Vec::new();
        assert!(matches!(
            old.handle(t, src(), &d, &mut out),
            Err(Reject::Malformed { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn expectations_go_out_only_to_peers_that_decode_them() {
        let t = Instant::now();
        let mut r = receiver(KeyRing::new(key("k"), None));
        assert!(!r.peers_decode_expectations(), "no peer known yet");
        let hello = |node: u32, features: u32| {
            let mut cfg = SenderConfig::new(node, 7);
            cfg.hello.features = features;
            let mut s = Sender::new(cfg, key("k"), t).unwrap();
            s.queue_hello();
            s.ready().last().unwrap().to_vec()
        };
        let mut out = Vec::new();
        r.handle(t, src(), &hello(1, hello::FEATURES), &mut out)
            .unwrap();
        assert!(r.peers_decode_expectations());
        r.handle(t, src(), &hello(2, 0), &mut out).unwrap();
        assert!(!r.peers_decode_expectations(), "node 2 would reject them");
    }

    /// One sealed DATA datagram with the given changes.
    fn data_of(s: &mut Sender, changes: &[Change]) -> Vec<u8> {
        for c in changes {
            s.push(c).unwrap();
        }
        s.flush();
        let d = s.ready().last().unwrap().to_vec();
        s.mark_sent(usize::MAX);
        d
    }

    #[test]
    fn a_gap_filler_does_not_undo_later_changes() {
        let t = Instant::now();
        let mut s = sender(1, 7, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let a = udp4();
        let mut b = udp4();
        b.orig.src_u = [0x99, 0x99];
        let mut a_later = a;
        a_later.timeout += 100;
        let up = |entry| Change::Upsert { entry, new: false };
        let d1 = data_of(&mut s, &[up(a)]);
        let d2 = data_of(&mut s, &[up(a), up(b)]);
        let d3 = data_of(&mut s, &[up(a_later)]);
        let d4 = data_of(&mut s, &[Change::Delete(b.key())]);
        let mut out = Vec::new();
        r.handle(t, src(), &d1, &mut out).unwrap();
        // d2 is lost; d3 and d4 change a and delete b.
        r.handle(t, src(), &d3, &mut out).unwrap();
        r.handle(t, src(), &d4, &mut out).unwrap();
        out.clear();
        // The retransmitted d2 arrives last: both of its changes are older.
        let got = r.handle(t, src(), &d2, &mut out).unwrap();
        assert_eq!(got.payload, Payload::Data { changes: 0 });
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(r.stats().stale_dropped, 2);
        // Gap closed (the ingress polls after every batch): the memory goes, later
        // datagrams apply as they come.
        while r.poll_nack(t + Duration::from_secs(1)).is_some() {}
        let d5 = data_of(&mut s, &[up(a)]);
        r.handle(t, src(), &d5, &mut out).unwrap();
        assert_eq!(out, vec![up(a)]);
        assert!(r.peers[0].newer.is_empty());
    }

    #[test]
    fn a_gap_filler_keeps_changes_no_later_datagram_touched() {
        let t = Instant::now();
        let mut s = sender(1, 7, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let a = udp4();
        let mut b = udp4();
        b.orig.src_u = [0x99, 0x99];
        let up = |entry| Change::Upsert { entry, new: true };
        let d1 = data_of(&mut s, &[up(a), up(b)]);
        let d2 = data_of(&mut s, &[up(a)]);
        let mut out = Vec::new();
        r.handle(t, src(), &d2, &mut out).unwrap();
        out.clear();
        r.handle(t, src(), &d1, &mut out).unwrap();
        assert_eq!(out, vec![up(b)], "a's change in d1 is older than d2's");
    }

    #[test]
    fn accepts_data_and_rejects_the_replay() {
        let t = Instant::now();
        let mut s = sender(1, 7, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let d = data(&mut s, 3);
        let mut out = Vec::new();
        let got = r.handle(t, src(), &d, &mut out).unwrap();
        assert_eq!(got.payload, Payload::Data { changes: 3 });
        assert_eq!(got.peer_event, PeerEvent::NewPeer);
        assert_eq!((got.node, got.epoch, got.seq), (1, 7, 1));
        assert_eq!(out, vec![upsert(); 3]);
        assert_eq!(
            r.handle(t, src(), &d, &mut out),
            Err(Reject::Replayed { seq: 1 })
        );
        assert_eq!(out.len(), 3);
        assert_eq!(r.stats().rejects.replayed, 1);
        assert_eq!(r.peer(1).unwrap().stats().replayed, 1);
        assert_eq!(r.stats().records, 3);
    }

    #[test]
    fn rejects_with_the_right_reason_and_no_output() {
        let t = Instant::now();
        let mut s = sender(1, 7, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let good = data(&mut s, 2);
        let mut out = Vec::new();

        // Wrong key (same key id impossible to rely on: both paths give AuthFailed).
        let mut other = sender(1, 7, key("other"), t);
        let wrong = data(&mut other, 2);
        assert_eq!(
            r.handle(t, src(), &wrong, &mut out),
            Err(Reject::AuthFailed)
        );

        // Wrong version.
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(
            r.handle(t, src(), &v2, &mut out),
            Err(Reject::UnsupportedVersion(2))
        );

        // Truncated.
        assert_eq!(
            r.handle(t, src(), &good[..good.len() - 1], &mut out),
            Err(Reject::Truncated {
                len: good.len() - 1
            })
        );

        // Forged: valid structure, recomputed lengths, bad tag.
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 0x55;
        assert_eq!(
            r.handle(t, src(), &forged, &mut out),
            Err(Reject::AuthFailed)
        );
        let mut forged = good.clone();
        forged[HEADER_LEN + 5] ^= 1; // an address byte
        assert_eq!(
            r.handle(t, src(), &forged, &mut out),
            Err(Reject::AuthFailed)
        );

        // Our own node id.
        let mut me = sender(9, 1, key("k"), t);
        let mine = data(&mut me, 1);
        assert_eq!(r.handle(t, src(), &mine, &mut out), Err(Reject::OwnNode));

        assert!(out.is_empty());
        assert!(r.peers().is_empty(), "no state from rejected datagrams");
        let rej = r.stats().rejects;
        assert_eq!(
            (
                rej.auth_failed,
                rej.unsupported_version,
                rej.truncated,
                rej.own_node
            ),
            (3, 1, 1, 1)
        );
        // The genuine one still goes through.
        assert!(r.handle(t, src(), &good, &mut out).is_ok());
    }

    #[test]
    fn malformed_authenticated_record() {
        let t = Instant::now();
        let k = key("k");
        let mut r = receiver(KeyRing::new(k.clone(), None));
        let mut buf = vec![0u8; 200];
        let n =
            crate::sync::wire::record::encode_record(&upsert(), &mut buf[HEADER_LEN..]).unwrap();
        buf[HEADER_LEN + n] = 0x42; // a second record with an unknown op
        buf[HEADER_LEN + n + 1..HEADER_LEN + n + 3].fill(0);
        let fields = HeaderFields {
            msg_type: MsgType::Data as u8,
            flags: 0,
            node: 1,
            epoch: 1,
            seq: 1,
            payload_len: (n + 3) as u16,
            count: 2,
        };
        let len = crate::sync::wire::seal(&mut buf, fields, &k);
        buf.truncate(len);
        let mut out = Vec::new();
        assert_eq!(
            r.handle(t, src(), &buf, &mut out),
            Err(Reject::Malformed {
                offset: HEADER_LEN + n,
                what: "unknown record op"
            })
        );
        assert!(out.is_empty(), "one bad record rejects the whole datagram");
        assert_eq!(r.stats().rejects.malformed, 1);
        // The sequence was used.
        assert_eq!(r.peer(1).unwrap().last_seq(), 1);
    }

    #[test]
    fn restart_resets_and_stale_epochs_are_refused() {
        let t = Instant::now();
        let mut r = receiver(KeyRing::new(key("k"), None));
        let mut out = Vec::new();
        let mut a = sender(1, 100, key("k"), t);
        let a1 = data(&mut a, 1);
        let _lost = data(&mut a, 1);
        let a3 = data(&mut a, 1);
        r.handle(t, src(), &a1, &mut out).unwrap();
        assert_eq!(r.handle(t, src(), &a3, &mut out).unwrap().lost, 1);
        let mut b = sender(1, 200, key("k"), t);
        let b1 = data(&mut b, 1);
        let got = r.handle(t, src(), &b1, &mut out).unwrap();
        assert_eq!(got.peer_event, PeerEvent::Restarted { old_epoch: 100 });
        assert_eq!(got.seq, 1);
        assert_eq!(r.stats().epoch_changes, 1);
        assert_eq!(
            r.stats().expired,
            1,
            "the old epoch's gap can't be repaired"
        );
        // A straggler (or replay) of the old epoch does not flip us back.
        let a4 = data(&mut a, 1);
        assert_eq!(
            r.handle(t, src(), &a4, &mut out),
            Err(Reject::StaleEpoch { epoch: 100 })
        );
        assert_eq!(r.peer(1).unwrap().epoch(), 200);
        // Forged new epoch without the key: no reset.
        let mut evil = sender(1, 300, key("evil"), t);
        let e1 = data(&mut evil, 1);
        assert_eq!(r.handle(t, src(), &e1, &mut out), Err(Reject::AuthFailed));
        assert_eq!(r.peer(1).unwrap().epoch(), 200);
    }

    #[test]
    fn key_rotation() {
        let t = Instant::now();
        let mut r = receiver(KeyRing::new(key("new"), Some(key("old"))));
        let mut out = Vec::new();
        let mut old = sender(1, 1, key("old"), t);
        let mut new = sender(2, 1, key("new"), t);
        assert!(r.handle(t, src(), &data(&mut old, 1), &mut out).is_ok());
        assert!(r.handle(t, src(), &data(&mut new, 1), &mut out).is_ok());
        r.set_keys(KeyRing::new(key("new"), None));
        assert_eq!(
            r.handle(t, src(), &data(&mut old, 1), &mut out),
            Err(Reject::AuthFailed)
        );
    }

    #[test]
    fn alive_reveals_tail_loss() {
        let t = Instant::now();
        let mut s = sender(1, 1, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let mut out = Vec::new();
        s.handle_timeout(t); // HELLO 1, ALIVE 2
        for d in s.ready() {
            r.handle(t, src(), d, &mut out).unwrap();
        }
        s.mark_sent(2);
        let _ = data(&mut s, 1); // lost
        let _ = data(&mut s, 1); // lost
        let later = t + Duration::from_secs(1);
        assert!(s.handle_timeout(later));
        let alive = s.ready().next().unwrap().to_vec();
        let got = r.handle(later, src(), &alive, &mut out).unwrap();
        assert_eq!(got.lost, 2);
        assert!(matches!(got.payload, Payload::Alive(_)));
        let p = r.peer(1).unwrap();
        assert_eq!(p.missing().collect::<Vec<_>>(), vec![3..=4]);
        assert_eq!(p.last_heard(), later);
        assert_eq!(p.last_alive().unwrap().interval_ms, 1000);
        assert_eq!(r.stats().lost, 2);
        assert_eq!(r.stats().alives, 2);
        let sync = p.sync(later + Duration::from_millis(5));
        assert_eq!(sync.outstanding, 2);
        assert_eq!(sync.oldest_missing, Some(Duration::from_millis(5)));
        assert_eq!(sync.nacks_in_flight, 0);
        assert!(p.has_missing_before(5) && !p.has_missing_before(3));
        assert_eq!(r.poll_timeout(), Some(later + Duration::from_millis(2)));
    }

    #[test]
    fn peer_table_is_bounded() {
        let t = Instant::now();
        let mut cfg = ReceiverConfig::new(9);
        cfg.max_peers = 2;
        let mut r = Receiver::new(cfg, KeyRing::new(key("k"), None));
        let mut out = Vec::new();
        for node in 1..=3 {
            let mut s = sender(node, 1, key("k"), t);
            let d = data(&mut s, 1);
            assert_eq!(r.handle(t, src(), &d, &mut out).is_ok(), node <= 2);
        }
        assert_eq!(r.stats().rejects.too_many_peers, 1);
    }

    #[test]
    fn control_messages_are_delivered() {
        let t = Instant::now();
        let mut s = sender(1, 1, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        s.queue(Control::Nack {
            node: 9,
            epoch: 3,
            ranges: &[4..=6, 10..=10],
        });
        s.queue(Control::Hello(Hello {
            min_version: 1,
            max_version: 1,
            features: 0,
        }));
        s.queue(Control::ResyncRequest(ResyncRequest {
            target: 9,
            request_id: 5,
        }));
        s.queue(Control::ResyncDone(ResyncDone {
            requester: 9,
            request_id: 5,
            records: 1000,
        }));
        let dgs: Vec<Vec<u8>> = s.ready().map(<[u8]>::to_vec).collect();
        let mut out = Vec::new();
        let got: Vec<_> = dgs
            .iter()
            .map(|d| r.handle(t, src(), d, &mut out).unwrap().payload)
            .collect();
        let Payload::Nack(n) = got[0] else { panic!() };
        assert_eq!((n.node, n.epoch), (9, 3));
        assert_eq!(n.ranges().collect::<Vec<_>>(), vec![4..=6, 10..=10]);
        assert!(matches!(
            got[1],
            Payload::Hello { hello, version: PeerVersion::Agreed(a) }
                if hello.max_version == 1 && a.version == 1
        ));
        assert!(matches!(got[2], Payload::ResyncRequest(q) if q.request_id == 5));
        assert!(matches!(got[3], Payload::ResyncDone(d) if d.records == 1000));
        let st = s.stats();
        assert_eq!((st.controls, st.hellos, st.nacks_sent), (2, 1, 1));
    }

    fn hello_from(s: &mut Sender, min_version: u8, max_version: u8) -> Vec<u8> {
        s.queue(Control::Hello(Hello {
            min_version,
            max_version,
            features: 0,
        }));
        let d = s.ready().last().unwrap().to_vec();
        s.mark_sent(usize::MAX);
        d
    }

    #[test]
    fn incompatible_peers_are_refused_until_they_agree() {
        let t = Instant::now();
        let mut s = sender(1, 1, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let mut out = Vec::new();
        // A future node speaking 2..=3 only (its HELLO is v1-framed).
        let h = hello_from(&mut s, 2, 3);
        let got = r.handle(t, src(), &h, &mut out).unwrap();
        let want = crate::sync::hello::Incompatible {
            ours_min: 1,
            ours_max: 1,
            theirs_min: 2,
            theirs_max: 3,
        };
        assert_eq!(
            got.payload,
            Payload::Hello {
                hello: Hello {
                    min_version: 2,
                    max_version: 3,
                    features: 0
                },
                version: PeerVersion::Incompatible(want)
            }
        );
        assert_eq!(
            r.peer(1).unwrap().version(),
            PeerVersion::Incompatible(want)
        );
        // Its data is refused, counted, and reported for a resync (never silent).
        assert_eq!(
            r.handle(t, src(), &data(&mut s, 2), &mut out),
            Err(Reject::Incompatible { min: 2, max: 3 })
        );
        assert!(out.is_empty());
        assert_eq!(r.stats().rejects.incompatible, 1);
        let rs = r.poll_resync().unwrap();
        assert_eq!((rs.node, rs.seqs, rs.reason), (1, 1, GiveUpReason::Refused));
        // Repeated HELLOs: counted (and logged) once per epoch.
        r.handle(t, src(), &hello_from(&mut s, 2, 3), &mut out)
            .unwrap();
        assert_eq!(r.stats().incompatible_peers, 1);
        // Gaps of an incompatible peer are not NACKed.
        let _lost = data(&mut s, 1);
        let _ = r.handle(t, src(), &data(&mut s, 1), &mut out);
        assert_eq!(r.poll_timeout(), None);
        // It comes back speaking 1..=2: they agree on 1 and its data flows again.
        let h = hello_from(&mut s, 1, 2);
        let got = r.handle(t, src(), &h, &mut out).unwrap();
        assert!(matches!(
            got.payload,
            Payload::Hello { version: PeerVersion::Agreed(a), .. } if a.version == 1
        ));
        assert!(r.handle(t, src(), &data(&mut s, 1), &mut out).is_ok());
        assert_eq!(out.len(), 1);
        // A restart forgets the negotiation.
        let mut s2 = sender(1, 2, key("k"), t);
        r.handle(t, src(), &data(&mut s2, 1), &mut out).unwrap();
        assert_eq!(r.peer(1).unwrap().version(), PeerVersion::Unknown);
    }

    #[test]
    fn nack_retransmit_roundtrip() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut s = sender(1, 1, key("k"), t);
        let mut r = receiver(KeyRing::new(key("k"), None));
        let mut out = Vec::new();
        r.handle(t, src(), &data(&mut s, 1), &mut out).unwrap();
        let _lost = data(&mut s, 2);
        let d3 = data(&mut s, 1);
        assert_eq!(r.handle(t, src(), &d3, &mut out).unwrap().lost, 1);
        assert_eq!(r.poll_nack(t + ms(1)), None, "reordering tolerance");
        assert_eq!(r.poll_timeout(), Some(t + ms(2)));
        let n = r.poll_nack(t + ms(2)).unwrap();
        assert_eq!(
            n,
            NackRequest {
                node: 1,
                epoch: 1,
                ranges: vec![2..=2]
            }
        );
        assert_eq!(r.poll_nack(t + ms(2)), None);
        // Through the wire and the sender.
        let mut me = sender(8, 5, key("k"), t);
        me.queue(n.control());
        let wire = me.ready().next().unwrap().to_vec();
        let mut s_rx = receiver(KeyRing::new(key("k"), None));
        let got = s_rx.handle(t, src(), &wire, &mut Vec::new()).unwrap();
        let Payload::Nack(w) = got.payload else {
            panic!()
        };
        let out_n = s.handle_nack(t + ms(3), got.node, &NackRequest::from_wire(&w));
        assert_eq!(out_n.queued, 1);
        let retx = s.ready().next().unwrap().to_vec();
        s.mark_sent(1);
        out.clear();
        let got = r.handle(t + ms(3), src(), &retx, &mut out).unwrap();
        assert!(got.repaired);
        // Same entry as d3, which was applied first: the older changes are dropped.
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(r.stats().stale_dropped, 2);
        let p = r.peer(1).unwrap();
        assert_eq!(
            (p.stats().repaired, p.stats().nacks, p.stats().nacked_seqs),
            (1, 1, 1)
        );
        assert_eq!(p.sync(t + ms(3)).outstanding, 0);
        assert_eq!(r.poll_nack(t + ms(100)), None);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.poll_resync(), None);
        assert_eq!(s.stats().retransmits, 1);
        // The retransmission again (a duplicate) is dropped as a replay.
        assert_eq!(
            r.handle(t, src(), &retx, &mut out),
            Err(Reject::Replayed { seq: 2 })
        );
    }
}
