//! The receiving half: validates, authenticates and de-duplicates heartbeats, and keeps
//! per-peer epoch and replay state. No I/O, no clock: the driver passes `now`.
//!
//! Epochs. Epochs are random, so they carry no order: a heartbeat of another epoch of a
//! known node may be a restart, a packet of the previous incarnation still in flight,
//! or a replayed capture. Switching to a stale one would retire the live epoch and make
//! the live peer look dead for good. What does carry order is the echo: the sequence of
//! *our* heartbeat the sender last heard, which only grows with time. So another epoch
//! is taken when
//! - it echoes our current epoch with a sequence above every echo accepted from that
//!   node so far (it heard us more recently than anything we know of: fresher), or
//! - the current epoch has been silent for `silence` (the peer is dead anyway) and the
//!   new epoch was never retired (a restarted peer that cannot hear us).
//!
//! A restarted peer echoes us within an interval of starting, so this delays noticing a
//! restart by about one interval. Otherwise: `StaleEpoch` for retired epochs,
//! `UnconfirmedEpoch` for the rest.
//! Residual risk (documented): after *our* restart, before the peer echoes us, a capture
//! of a dead peer's epoch that we never saw is accepted as first contact.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::heartbeat::{self, Heartbeat};
use super::reject::{Reject, RejectCounters, RejectKind};
use crate::sync::auth::KeyRing;
use crate::sync::ratelimit::RateLimiter;
use crate::sync::replay::{ReplayError, ReplayWindow};

/// Nodes tracked at most. A pair needs one; a few more let a misconfigured third node
/// be seen (and ignored by the election) without evicting the real peer.
pub const DEFAULT_MAX_PEERS: usize = 4;
const RETIRED_EPOCHS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    pub node_id: u32,
    /// Our epoch: echoes of it confirm a peer's new epoch.
    pub epoch: u32,
    /// Silence after which a peer's new epoch is accepted unconfirmed: the election's
    /// dead interval (`heartbeat_interval x failure_threshold`).
    pub silence: Duration,
    pub max_peers: usize,
    /// At most one log line per reject reason per interval.
    pub log_interval: Duration,
}

impl ReceiverConfig {
    pub fn new(node_id: u32, epoch: u32, silence: Duration) -> ReceiverConfig {
        ReceiverConfig {
            node_id,
            epoch,
            silence,
            max_peers: DEFAULT_MAX_PEERS,
            log_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    node: u32,
    epoch: u32,
    window: ReplayWindow,
    last_heard: Instant,
    /// Highest sequence of ours this node echoed (any of its epochs).
    max_echo: u64,
    retired: [u32; RETIRED_EPOCHS],
}

/// What the receiver saw (counters only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub accepted: u64,
    pub new_peers: u64,
    pub epoch_changes: u64,
    pub rejects: RejectCounters,
}

pub struct HeartbeatReceiver {
    cfg: ReceiverConfig,
    keys: KeyRing,
    slots: Vec<Slot>,
    stats: ReceiverStats,
    log: RateLimiter<{ RejectKind::COUNT }>,
}

impl std::fmt::Debug for HeartbeatReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatReceiver")
            .field("node", &self.cfg.node_id)
            .field("peers", &self.slots.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl HeartbeatReceiver {
    pub fn new(cfg: ReceiverConfig, keys: KeyRing) -> HeartbeatReceiver {
        HeartbeatReceiver {
            log: RateLimiter::new(cfg.log_interval),
            cfg,
            keys,
            slots: Vec::new(),
            stats: ReceiverStats::default(),
        }
    }

    /// Replaces the key ring (rotation).
    pub fn set_keys(&mut self, keys: KeyRing) {
        self.keys = keys;
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Processes one datagram. Rejections are counted and logged (rate-limited:
    /// `warn` for what should never happen, `debug` for duplicates and restarts).
    pub fn handle(
        &mut self,
        now: Instant,
        src: SocketAddr,
        bytes: &[u8],
    ) -> Result<Heartbeat, Reject> {
        let res = self.handle_inner(now, bytes);
        match &res {
            Ok(_) => self.stats.accepted += 1,
            Err(r) => {
                let kind = r.kind();
                self.stats.rejects.bump(kind);
                if let Some(suppressed) = self.log.check(kind.index(), now) {
                    if kind.expected() {
                        tracing::debug!(%src, reason = %r, suppressed, "ha: heartbeat dropped");
                    } else {
                        tracing::warn!(%src, reason = %r, suppressed, "ha: heartbeat dropped");
                    }
                }
            }
        }
        res
    }

    fn handle_inner(&mut self, now: Instant, bytes: &[u8]) -> Result<Heartbeat, Reject> {
        let hb = heartbeat::parse(bytes)?.verify(&self.keys)?;
        // Authenticated from here on (so a forged packet cannot fake the misconfiguration
        // that OwnNode reports).
        if hb.node == self.cfg.node_id {
            return Err(Reject::OwnNode);
        }
        let idx = self.slot_for(now, &hb)?;
        let echo = self.echo_of_us(&hb);
        let slot = &mut self.slots[idx];
        match slot.window.accept(hb.seq) {
            Ok(_) => {}
            Err(ReplayError::Replayed) => return Err(Reject::Replayed { seq: hb.seq }),
            Err(ReplayError::TooOld) => return Err(Reject::TooOld { seq: hb.seq }),
        }
        slot.last_heard = now;
        if let Some(seq) = echo {
            slot.max_echo = slot.max_echo.max(seq);
        }
        Ok(hb)
    }

    /// The sequence of our heartbeat `hb` says it heard, if it names this run of us.
    fn echo_of_us(&self, hb: &Heartbeat) -> Option<u64> {
        hb.peer
            .filter(|e| e.node == self.cfg.node_id && e.epoch == self.cfg.epoch)
            .map(|e| e.seq)
    }

    fn slot_for(&mut self, now: Instant, hb: &Heartbeat) -> Result<usize, Reject> {
        let Some(idx) = self.slots.iter().position(|s| s.node == hb.node) else {
            if self.slots.len() >= self.cfg.max_peers {
                return Err(Reject::TooManyPeers);
            }
            self.slots.push(Slot {
                node: hb.node,
                epoch: hb.epoch,
                window: ReplayWindow::new(hb.seq),
                last_heard: now,
                max_echo: 0,
                retired: [0; RETIRED_EPOCHS],
            });
            self.stats.new_peers += 1;
            return Ok(self.slots.len() - 1);
        };
        if self.slots[idx].epoch == hb.epoch {
            return Ok(idx);
        }
        let echo = self.echo_of_us(hb);
        let slot = &mut self.slots[idx];
        let fresher = echo.is_some_and(|seq| seq > slot.max_echo);
        let retired = slot.retired.contains(&hb.epoch);
        let silent = now.saturating_duration_since(slot.last_heard) >= self.cfg.silence;
        if !(fresher || (silent && !retired)) {
            return Err(if retired {
                Reject::StaleEpoch { epoch: hb.epoch }
            } else {
                Reject::UnconfirmedEpoch { epoch: hb.epoch }
            });
        }
        let old = slot.epoch;
        // Keep the list free of the epoch we switch to (it may have been retired).
        if let Some(i) = slot.retired.iter().position(|&e| e == hb.epoch) {
            slot.retired[i] = 0;
        }
        slot.retired.rotate_right(1);
        slot.retired[0] = old;
        slot.epoch = hb.epoch;
        slot.window = ReplayWindow::new(hb.seq);
        self.stats.epoch_changes += 1;
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::heartbeat::tests::{key, sample};
    use crate::ha::heartbeat::{Echo, Flags, encode, heartbeat_key};

    const ME: u32 = 9;
    const MY_EPOCH: u32 = 0x5555;

    fn src() -> SocketAddr {
        "192.0.2.7:9002".parse().unwrap()
    }

    fn rx() -> HeartbeatReceiver {
        HeartbeatReceiver::new(
            ReceiverConfig::new(ME, MY_EPOCH, Duration::from_secs(3)),
            KeyRing::new(key(), None),
        )
    }

    fn hb(node: u32, epoch: u32, seq: u64, echo_us: bool) -> Vec<u8> {
        hb_echo(node, epoch, seq, echo_us.then_some(1))
    }

    /// `echo`: the sequence of ours it claims to have heard last.
    fn hb_echo(node: u32, epoch: u32, seq: u64, echo: Option<u64>) -> Vec<u8> {
        let mut h = sample();
        h.node = node;
        h.epoch = epoch;
        h.seq = seq;
        h.peer = echo.map(|seq| Echo {
            node: ME,
            epoch: MY_EPOCH,
            seq,
        });
        h.flags.set(Flags::HEARS_PEER, echo.is_some());
        encode(&h, &key()).to_vec()
    }

    #[test]
    fn accepts_once_and_counts_every_rejection() {
        let t = Instant::now();
        let mut r = rx();
        let a1 = hb(1, 7, 1, false);
        assert_eq!(r.handle(t, src(), &a1).map(|h| h.seq), Ok(1));
        assert_eq!(r.handle(t, src(), &a1), Err(Reject::Replayed { seq: 1 }));
        assert!(r.handle(t, src(), &hb(1, 7, 3, false)).is_ok());
        assert!(
            r.handle(t, src(), &hb(1, 7, 2, false)).is_ok(),
            "late, inside window"
        );
        let beyond = crate::sync::WINDOW + 10;
        assert!(r.handle(t, src(), &hb(1, 7, beyond, false)).is_ok());
        assert_eq!(
            r.handle(t, src(), &hb(1, 7, 3, false)),
            Err(Reject::TooOld { seq: 3 })
        );
        let mut own = sample();
        own.node = ME;
        assert_eq!(
            r.handle(t, src(), &encode(&own, &key())),
            Err(Reject::OwnNode)
        );
        let wrong = heartbeat_key(b"not our secret").unwrap();
        assert_eq!(
            r.handle(t, src(), &encode(&sample(), &wrong)),
            Err(Reject::AuthFailed)
        );
        assert_eq!(
            r.handle(t, src(), &a1[..10]),
            Err(Reject::Truncated { len: 10 })
        );
        let s = r.stats();
        assert_eq!(s.accepted, 4);
        assert_eq!(s.rejects.total(), 5);
        for (k, n) in [
            (RejectKind::Replayed, 1),
            (RejectKind::TooOld, 1),
            (RejectKind::OwnNode, 1),
            (RejectKind::AuthFailed, 1),
            (RejectKind::Truncated, 1),
        ] {
            assert_eq!(s.rejects.get(k), n, "{k:?}");
        }
    }

    #[test]
    fn nothing_unauthenticated_creates_state() {
        let t = Instant::now();
        let mut r = rx();
        let wrong = heartbeat_key(b"not our secret").unwrap();
        for node in 10..59 {
            let mut h = sample();
            h.node = node;
            let _ = r.handle(t, src(), &encode(&h, &wrong));
        }
        assert!(r.slots.is_empty());
        assert_eq!(r.stats().rejects.get(RejectKind::AuthFailed), 49);
    }

    #[test]
    fn new_epoch_needs_an_echo_or_silence() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut r = rx();
        assert!(r.handle(t, src(), &hb(1, 7, 10, false)).is_ok());
        // A replayed old capture (other epoch, no echo of us) while 7 talks: refused.
        assert_eq!(
            r.handle(t + ms(100), src(), &hb(1, 6, 500, false)),
            Err(Reject::UnconfirmedEpoch { epoch: 6 })
        );
        assert!(r.handle(t + ms(200), src(), &hb(1, 7, 11, false)).is_ok());
        // The real restart echoes us: taken at once, 7 retired.
        assert!(r.handle(t + ms(300), src(), &hb(1, 8, 1, true)).is_ok());
        assert_eq!(
            r.handle(t + ms(400), src(), &hb(1, 7, 12, true)),
            Err(Reject::StaleEpoch { epoch: 7 })
        );
        // Unconfirmed, but 8 has been silent for the dead interval: taken.
        assert_eq!(
            r.handle(t + ms(3200), src(), &hb(1, 6, 1, false)),
            Err(Reject::UnconfirmedEpoch { epoch: 6 })
        );
        assert!(r.handle(t + ms(3300), src(), &hb(1, 6, 1, false)).is_ok());
        assert_eq!(r.stats().epoch_changes, 2);
        // Both retired epochs stay refused.
        for e in [7, 8] {
            assert_eq!(
                r.handle(t + ms(9000), src(), &hb(1, e, 99, true)),
                Err(Reject::StaleEpoch { epoch: e })
            );
        }
    }

    #[test]
    fn only_a_fresher_echo_switches_epochs_so_stragglers_cannot_lock_out_a_restart() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut r = rx();
        // The old incarnation (7) heard our heartbeat 5; the new one (8) heard 6.
        assert!(r.handle(t, src(), &hb_echo(1, 7, 40, Some(5))).is_ok());
        assert!(
            r.handle(t + ms(10), src(), &hb_echo(1, 8, 1, Some(6)))
                .is_ok()
        );
        // A straggler of 7 still in flight: refused, 8 stays current.
        assert_eq!(
            r.handle(t + ms(11), src(), &hb_echo(1, 7, 41, Some(5))),
            Err(Reject::StaleEpoch { epoch: 7 })
        );
        assert!(
            r.handle(t + ms(12), src(), &hb_echo(1, 8, 2, Some(6)))
                .is_ok()
        );
        // Equal echo is not fresher either; a third epoch without a fresher echo waits.
        assert_eq!(
            r.handle(t + ms(13), src(), &hb_echo(1, 9, 1, Some(6))),
            Err(Reject::UnconfirmedEpoch { epoch: 9 })
        );
        assert_eq!(
            r.handle(t + ms(14), src(), &hb_echo(1, 9, 2, None)),
            Err(Reject::UnconfirmedEpoch { epoch: 9 })
        );
        // Fresher wins, even for a retired epoch (it is demonstrably alive now).
        assert!(
            r.handle(t + ms(15), src(), &hb_echo(1, 7, 42, Some(7)))
                .is_ok()
        );
        assert_eq!(
            r.handle(t + ms(16), src(), &hb_echo(1, 8, 3, Some(7))),
            Err(Reject::StaleEpoch { epoch: 8 })
        );
        assert!(
            r.handle(t + ms(17), src(), &hb_echo(1, 8, 4, Some(8)))
                .is_ok()
        );
        assert_eq!(r.stats().epoch_changes, 3);
    }

    #[test]
    fn peer_table_is_bounded() {
        let t = Instant::now();
        let mut r = rx();
        for node in 1..=DEFAULT_MAX_PEERS as u32 {
            assert!(r.handle(t, src(), &hb(node, 1, 1, false)).is_ok());
        }
        assert_eq!(
            r.handle(t, src(), &hb(100, 1, 1, false)),
            Err(Reject::TooManyPeers)
        );
        assert!(r.handle(t, src(), &hb(1, 1, 2, false)).is_ok());
    }
}
