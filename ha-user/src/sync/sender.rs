//! The sending half: batches changes into DATA datagrams, seals (sequence + tag) and
//! queues them, emits the periodic ALIVE and HELLO, and retransmits what NACKs ask
//! for. No I/O and no clock: the driver passes `now`, sends what [`Sender::ready`]
//! yields (several at once suit `sendmmsg`) and reports how many went out with
//! [`Sender::mark_sent`].
//!
//! Batching is adaptive, never timed: [`Sender::push`] fills the open DATA datagram
//! and seals it when the next record would not fit; the driver calls
//! [`Sender::flush`] whenever its event source is drained. Under load datagrams are
//! full; when idle each event leaves at once in a small datagram.
//!
//! Storage is a ring of `retain` datagram buffers indexed by `seq % retain`, allocated
//! on first use and reused: no allocation per event or per datagram in steady state.
//! Sealed datagrams stay in the ring after they were sent, so [`Sender::handle_nack`]
//! can queue them again byte for byte (same sequence, same tag: the receiver's replay
//! window accepts a sequence it has not seen, and drops a duplicate). ALIVE advertises
//! the oldest one still there; a NACK for anything older is answered with an ALIVE at
//! once, which tells the receiver to resync. If the driver falls `retain` datagrams
//! behind, the oldest unsent ones are overwritten and counted as overruns (receivers
//! see the gap, then the ALIVE).
//!
//! Sizing `retain`: the ring must cover the time it takes to notice a loss and get a
//! NACK back (a few ms on a sync link, more under load) plus retries, and ideally a
//! short sync-link outage. Datagrams are only full under heavy load: at 50k events/s
//! adaptive batching sends ~6,500 datagrams/s of ~8 flows each. The default of 16384
//! (≈ 24 MiB once filled) keeps ~2.5 s of that, matching the receiver's replay window
//! ([`crate::sync::WINDOW`]); more than the window gains nothing.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::auth::{SyncKey, TAG_LEN};
use super::hello;
use super::nack::NackRequest;
use super::resend::{Budgets, DEFAULT_RESEND_HOLD_OFF, DEFAULT_RESEND_RATE, NackOutcome};
use super::stats::SenderStats;
use super::wire::expect::{self, ExpectEncodeError};
use super::wire::record::{self, EncodeError, MIN_RECORD_LEN};
use super::wire::{
    Alive, Control, FLAG_ENCRYPTED, HEADER_LEN, HeaderFields, Hello, MAX_DATAGRAM, MsgType,
};
use crate::conntrack::{Change, ExpectChange};

/// Default datagram size: a 1500-byte MTU minus IPv4 and UDP headers.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;
/// Smallest configurable datagram size.
pub const MIN_MAX_DATAGRAM: usize = 512;
pub const DEFAULT_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_HELLO_INTERVAL: Duration = Duration::from_secs(10);
/// Datagrams retained for retransmission (see the module documentation).
pub const DEFAULT_RETAIN: usize = 16384;
pub const MAX_RETAIN: usize = 65536;
/// NACK ranges looked at per NACK (a datagram holds at most ~4000).
const MAX_NACK_RANGES: usize = 1024;

/// A fresh random non-zero epoch for this agent run (the only OS input of this module,
/// for the driver to call once at start).
pub fn random_epoch() -> Result<u32, getrandom::Error> {
    loop {
        let e = getrandom::u32()?;
        if e != 0 {
            return Ok(e);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// This node's id (non-zero).
    pub node_id: u32,
    /// This run's epoch (non-zero, random per agent start).
    pub epoch: u32,
    /// Largest datagram (UDP payload), `MIN_MAX_DATAGRAM..=65507`.
    pub max_datagram: usize,
    /// ALIVE period.
    pub alive_interval: Duration,
    /// HELLO period (the first goes out with the first ALIVE).
    pub hello_interval: Duration,
    /// The versions and features announced ([`hello::ours`]; tests use others).
    pub hello: Hello,
    /// Datagrams kept for the driver and for retransmission, `1..=MAX_RETAIN`.
    pub retain: usize,
    /// A datagram is not retransmitted again within this time.
    pub resend_hold_off: Duration,
    /// Retransmissions per second allowed per requester.
    pub resend_rate: u32,
    /// Retransmissions allowed at once per requester.
    pub resend_burst: u32,
    /// Encrypt every datagram's payload (`encrypt_sync`); it is authenticated either way.
    pub encrypt: bool,
}

impl SenderConfig {
    pub fn new(node_id: u32, epoch: u32) -> SenderConfig {
        SenderConfig {
            node_id,
            epoch,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            alive_interval: DEFAULT_ALIVE_INTERVAL,
            hello_interval: DEFAULT_HELLO_INTERVAL,
            hello: hello::ours(),
            retain: DEFAULT_RETAIN,
            resend_hold_off: DEFAULT_RESEND_HOLD_OFF,
            resend_rate: DEFAULT_RESEND_RATE,
            resend_burst: DEFAULT_RETAIN as u32,
            encrypt: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("max datagram size {0} is outside {MIN_MAX_DATAGRAM}..={MAX_DATAGRAM}")]
    MaxDatagram(usize),
    #[error("node id must not be 0")]
    NodeId,
    #[error("epoch must not be 0")]
    Epoch,
    #[error("retain must be within 1..={MAX_RETAIN}, not {0}")]
    Retain(usize),
    #[error("the ALIVE and HELLO intervals must be positive")]
    AliveInterval,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    buf: Vec<u8>,
    len: usize,
    /// Queued for retransmission.
    resend: bool,
    /// When it was last queued for retransmission.
    resent_at: Option<Instant>,
}

pub struct Sender {
    node: u32,
    epoch: u32,
    /// Header flags of every datagram (ENCRYPTED or none).
    flags: u16,
    max: usize,
    interval: Duration,
    hello_interval: Duration,
    hello: Hello,
    key: SyncKey,
    slots: Vec<Slot>,
    /// Sequence of the open (or next) datagram.
    next_seq: u64,
    /// First sealed sequence not handed to the driver yet.
    unsent_from: u64,
    /// End of the open DATA datagram's payload in its slot (0: none open).
    open_end: usize,
    open_count: u16,
    next_alive: Instant,
    next_hello: Instant,
    /// Retained datagrams flagged for retransmission, and a lower bound of their seqs.
    resend_count: usize,
    resend_lo: u64,
    hold_off: Duration,
    budgets: Budgets,
    /// Last ALIVE sent in answer to an unserviceable NACK.
    answered_at: Option<Instant>,
    stats: SenderStats,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("node", &self.node)
            .field("epoch", &self.epoch)
            .field("next_seq", &self.next_seq)
            .field("ready", &self.ready_len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender whose first HELLO and ALIVE are due at `now` (announcing the epoch and
    /// versions at once).
    pub fn new(cfg: SenderConfig, key: SyncKey, now: Instant) -> Result<Sender, ConfigError> {
        if !(MIN_MAX_DATAGRAM..=MAX_DATAGRAM).contains(&cfg.max_datagram) {
            return Err(ConfigError::MaxDatagram(cfg.max_datagram));
        }
        if cfg.node_id == 0 {
            return Err(ConfigError::NodeId);
        }
        if cfg.epoch == 0 {
            return Err(ConfigError::Epoch);
        }
        if !(1..=MAX_RETAIN).contains(&cfg.retain) {
            return Err(ConfigError::Retain(cfg.retain));
        }
        if cfg.alive_interval.is_zero() || cfg.hello_interval.is_zero() {
            return Err(ConfigError::AliveInterval);
        }
        Ok(Sender {
            node: cfg.node_id,
            epoch: cfg.epoch,
            flags: if cfg.encrypt { FLAG_ENCRYPTED } else { 0 },
            max: cfg.max_datagram,
            interval: cfg.alive_interval,
            hello_interval: cfg.hello_interval,
            hello: cfg.hello,
            key,
            slots: vec![Slot::default(); cfg.retain],
            next_seq: 1,
            unsent_from: 1,
            open_end: 0,
            open_count: 0,
            next_alive: now,
            next_hello: now,
            resend_count: 0,
            resend_lo: 1,
            hold_off: cfg.resend_hold_off,
            budgets: Budgets::new(cfg.resend_rate, cfg.resend_burst),
            answered_at: None,
            stats: SenderStats::default(),
        })
    }

    pub fn node_id(&self) -> u32 {
        self.node
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn max_datagram(&self) -> usize {
        self.max
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// The sequence the next datagram will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn index(&self, seq: u64) -> usize {
        (seq % self.slots.len() as u64) as usize
    }

    /// Starts a datagram in the slot of `next_seq`, evicting what it held.
    fn open_slot(&mut self) -> usize {
        let n = self.slots.len() as u64;
        if let Some(evicted) = self.next_seq.checked_sub(n)
            && evicted >= self.unsent_from
        {
            self.unsent_from = evicted + 1;
            self.stats.overruns += 1;
        }
        let idx = self.index(self.next_seq);
        let max = self.max;
        let slot = &mut self.slots[idx];
        if slot.resend {
            // Asked for, but overwritten before the driver took it: the receiver
            // learns from the next ALIVE that it is gone.
            slot.resend = false;
            self.resend_count = self.resend_count.saturating_sub(1);
            self.stats.resend_evicted += 1;
        }
        slot.resent_at = None;
        if slot.buf.len() != max {
            slot.buf.resize(max, 0);
        }
        slot.len = 0;
        idx
    }

    fn seal(&mut self, msg_type: MsgType, payload_len: usize, count: u16) {
        let idx = self.index(self.next_seq);
        let fields = HeaderFields {
            msg_type: msg_type as u8,
            flags: self.flags,
            node: self.node,
            epoch: self.epoch,
            seq: self.next_seq,
            // Bounded by max_datagram <= 65507.
            payload_len: payload_len as u16,
            count,
        };
        let len = super::wire::seal(&mut self.slots[idx].buf, fields, &self.key);
        self.slots[idx].len = len;
        self.next_seq += 1;
        self.stats.datagrams += 1;
        self.stats.bytes += len as u64;
    }

    fn seal_data(&mut self) {
        if self.open_end == 0 {
            return;
        }
        let payload_len = self.open_end - HEADER_LEN;
        let count = self.open_count;
        self.open_end = 0;
        self.open_count = 0;
        self.seal(MsgType::Data, payload_len, count);
        self.stats.data_datagrams += 1;
    }

    /// Whether this sender encrypts its datagrams.
    pub fn encrypts(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    /// Adds one change to the open DATA datagram, sealing it first if the record does
    /// not fit, and after if no further record could. Never splits a record. An error
    /// (a change the encoder refuses) is counted and leaves everything else as it was.
    pub fn push(&mut self, change: &Change) -> Result<(), EncodeError> {
        let plan = match record::plan(change) {
            Ok(p) => p,
            Err(e) => {
                self.stats.encode_errors += 1;
                return Err(e);
            }
        };
        if self.open_end != 0
            && (self.open_end + plan.len + TAG_LEN > self.max || self.open_count == u16::MAX)
        {
            self.seal_data();
        }
        if self.open_end == 0 {
            self.open_slot();
            self.open_end = HEADER_LEN;
        }
        let idx = self.index(self.next_seq);
        let start = self.open_end;
        let n = record::encode(change, &plan, &mut self.slots[idx].buf[start..])?;
        self.open_end += n;
        self.open_count += 1;
        self.stats.records += 1;
        if self.open_end + MIN_RECORD_LEN + TAG_LEN > self.max {
            self.seal_data();
        }
        Ok(())
    }

    /// Adds one expectation change to the open DATA datagram, batched like
    /// [`push`](Self::push) (records of both kinds share datagrams). Only for peers
    /// that agreed to [`hello::FEATURE_EXPECT`]: others reject the whole datagram.
    pub fn push_expect(&mut self, change: &ExpectChange) -> Result<(), ExpectEncodeError> {
        let len = match expect::plan(change) {
            Ok((_, _, len)) => len,
            Err(e) => {
                self.stats.encode_errors += 1;
                return Err(e);
            }
        };
        if self.open_end != 0
            && (self.open_end + len + TAG_LEN > self.max || self.open_count == u16::MAX)
        {
            self.seal_data();
        }
        if self.open_end == 0 {
            self.open_slot();
            self.open_end = HEADER_LEN;
        }
        let idx = self.index(self.next_seq);
        let start = self.open_end;
        let n = expect::encode(change, &mut self.slots[idx].buf[start..])?;
        self.open_end += n;
        self.open_count += 1;
        self.stats.records += 1;
        self.stats.expect_records += 1;
        if self.open_end + MIN_RECORD_LEN + TAG_LEN > self.max {
            self.seal_data();
        }
        Ok(())
    }

    /// Seals the open DATA datagram, if any. Call when the event source is drained.
    pub fn flush(&mut self) {
        self.seal_data();
    }

    /// Queues a control message (sealing any open DATA first, so sequence order is
    /// event order).
    pub fn queue(&mut self, msg: Control<'_>) {
        self.seal_data();
        let idx = self.open_slot();
        let (len, count) = msg.encode(&mut self.slots[idx].buf[HEADER_LEN..self.max - TAG_LEN]);
        self.seal(msg.msg_type(), len, count);
        match msg {
            Control::Alive(_) => self.stats.alives += 1,
            Control::Hello(_) => self.stats.hellos += 1,
            Control::Nack { .. } => self.stats.nacks_sent += 1,
            _ => self.stats.controls += 1,
        }
    }

    /// Queues a HELLO now (e.g. when a new or restarted peer shows up, so it learns
    /// our versions without waiting for the periodic one).
    pub fn queue_hello(&mut self) {
        self.queue(Control::Hello(self.hello));
    }

    /// Queues an ALIVE now, outside the periodic schedule.
    fn queue_alive(&mut self) {
        // The ALIVE's own slot evicts `next_seq - retain` (after the flush below).
        self.seal_data();
        let retained_from = (self.next_seq + 1)
            .saturating_sub(self.slots.len() as u64)
            .max(1);
        let interval_ms = u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX);
        self.queue(Control::Alive(Alive {
            retained_from,
            interval_ms,
        }));
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    pub fn poll_timeout(&self) -> Instant {
        self.next_alive.min(self.next_hello)
    }

    /// Queues the HELLO and ALIVE due at `now`. Returns whether it queued anything.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let mut queued = false;
        if now >= self.next_hello {
            self.queue_hello();
            self.next_hello = now + self.hello_interval;
            queued = true;
        }
        if now < self.next_alive {
            return queued;
        }
        self.queue_alive();
        let next = self.next_alive + self.interval;
        // After a stall, resume the period from now instead of catching up in a burst.
        self.next_alive = if next <= now {
            now + self.interval
        } else {
            next
        };
        true
    }

    /// How many datagrams wait for the driver: retransmissions, then new ones.
    pub fn ready_len(&self) -> usize {
        self.resend_count + self.new_len()
    }

    fn new_len(&self) -> usize {
        (self.next_seq - self.unsent_from) as usize
    }

    /// The datagrams to send, in order: retransmissions (oldest first), then sealed
    /// datagrams not sent yet (oldest first).
    pub fn ready(&self) -> Ready<'_> {
        Ready {
            s: self,
            resend_left: self.resend_count,
            scan: self.resend_lo.max(*self.retained_range().start()),
            new_next: self.unsent_from,
        }
    }

    /// The driver handed the first `n` [`ready`](Self::ready) datagrams to the kernel.
    pub fn mark_sent(&mut self, n: usize) {
        let mut n = n;
        let mut seq = self.resend_lo.max(*self.retained_range().start());
        while n > 0 && self.resend_count > 0 && seq < self.unsent_from {
            let idx = self.index(seq);
            let slot = &mut self.slots[idx];
            if slot.resend {
                slot.resend = false;
                self.resend_count -= 1;
                self.stats.retransmits += 1;
                self.stats.retransmit_bytes += slot.len as u64;
                n -= 1;
            }
            seq += 1;
        }
        // Every flagged sequence below `seq` was just cleared.
        self.resend_lo = seq;
        self.unsent_from += n.min(self.new_len()) as u64;
    }

    /// Sequences whose sealed datagram is still in the ring (empty if none).
    pub fn retained_range(&self) -> RangeInclusive<u64> {
        let n = self.slots.len() as u64;
        // An open DATA datagram has already taken over its slot.
        let open = u64::from(self.open_end != 0);
        let first = (self.next_seq + open).saturating_sub(n).max(1);
        first..=self.next_seq - 1
    }

    /// A sealed datagram still in the ring, for retransmission.
    pub fn retained(&self, seq: u64) -> Option<&[u8]> {
        if !self.retained_range().contains(&seq) {
            return None;
        }
        let slot = &self.slots[self.index(seq)];
        Some(&slot.buf[..slot.len])
    }

    /// Serves a NACK from `requester` (the node whose receiver sent it): queues the
    /// retained datagrams it asks for, at most once each per `resend_hold_off` and
    /// within the requester's budget. If it asks for anything no longer retained, an
    /// ALIVE (with the current `retained_from`) is queued at once, at most once per
    /// hold-off, so the receiver gives those up and resyncs. A NACK for another node or
    /// epoch is ignored. Send [`ready`](Self::ready) afterwards.
    pub fn handle_nack(&mut self, now: Instant, requester: u32, nack: &NackRequest) -> NackOutcome {
        let mut out = NackOutcome::default();
        if nack.node != self.node || nack.epoch != self.epoch {
            self.stats.nacks_ignored += 1;
            return out;
        }
        self.stats.nacks_received += 1;
        let lo = *self.retained_range().start();
        // Only what was handed to the driver: the rest goes out anyway.
        let hi = self.unsent_from - 1;
        let hold_off = self.hold_off;
        let mut budget = self.budgets.available(requester, now);
        // Bounds the work of one NACK, whatever its ranges.
        let mut work = 2 * self.slots.len();
        for r in nack.ranges.iter().take(MAX_NACK_RANGES) {
            let (a, b) = (*r.start(), *r.end());
            if a == 0 || a > b {
                continue;
            }
            // Counts saturate: a NACK may ask for anything (sequences that never
            // existed are not counted at all).
            if a < lo {
                out.unserviceable = out.unserviceable.saturating_add(b.min(lo - 1) - a + 1);
            }
            let top = b.min(self.next_seq - 1);
            let from = a.max(hi + 1);
            if from <= top {
                out.unsent = out.unsent.saturating_add(top - from + 1);
            }
            let (a, b) = (a.max(lo), b.min(hi));
            if a > b {
                continue;
            }
            for seq in a..=b {
                if budget == 0 || work == 0 {
                    out.throttled += b - seq + 1;
                    break;
                }
                work -= 1;
                let idx = self.index(seq);
                let slot = &mut self.slots[idx];
                if slot.resend || slot.resent_at.is_some_and(|t| now < t + hold_off) {
                    out.duplicate += 1;
                    continue;
                }
                slot.resend = true;
                slot.resent_at = Some(now);
                self.resend_count += 1;
                self.resend_lo = self.resend_lo.min(seq);
                budget -= 1;
                out.queued += 1;
            }
        }
        self.budgets.spend(requester, now, out.queued);
        let st = &mut self.stats;
        st.resend_queued += out.queued;
        st.resend_unserviceable = st.resend_unserviceable.saturating_add(out.unserviceable);
        st.resend_duplicate += out.duplicate;
        st.resend_throttled += out.throttled;
        if out.unserviceable > 0
            && self
                .answered_at
                .is_none_or(|t| now.saturating_duration_since(t) >= hold_off)
        {
            self.answered_at = Some(now);
            self.queue_alive();
            out.answered_alive = true;
        }
        if out.throttled > 0 {
            tracing::debug!(
                requester,
                throttled = out.throttled,
                "sync: retransmission budget exhausted"
            );
        }
        out
    }
}

/// The datagrams waiting for the driver ([`Sender::ready`]).
pub struct Ready<'a> {
    s: &'a Sender,
    resend_left: usize,
    scan: u64,
    new_next: u64,
}

impl<'a> Iterator for Ready<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.s;
        while self.resend_left > 0 && self.scan < s.unsent_from {
            let slot = &s.slots[s.index(self.scan)];
            self.scan += 1;
            if slot.resend {
                self.resend_left -= 1;
                return Some(&slot.buf[..slot.len]);
            }
        }
        self.resend_left = 0;
        if self.new_next >= s.next_seq {
            return None;
        }
        let slot = &s.slots[s.index(self.new_next)];
        self.new_next += 1;
        Some(&slot.buf[..slot.len])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.resend_left + (self.s.next_seq - self.new_next) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Ready<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::resend::NackOutcome;
    use crate::sync::wire::record::tests::udp4;
    use crate::sync::wire::{Datagram, Message};

    fn key() -> SyncKey {
        SyncKey::derive(b"test").unwrap()
    }

    fn sender(retain: usize, now: Instant) -> Sender {
        let mut cfg = SenderConfig::new(1, 0xabcd);
        cfg.retain = retain;
        cfg.max_datagram = 512;
        Sender::new(cfg, key(), now).unwrap()
    }

    fn upsert() -> Change {
        Change::Upsert {
            entry: udp4(),
            new: true,
        }
    }

    #[test]
    fn epochs_are_random_and_non_zero() {
        let a = random_epoch().unwrap();
        let b = random_epoch().unwrap();
        assert!(a != 0 && b != 0);
        assert_ne!(a, b, "1 in 2^32");
    }

    #[test]
    fn config_is_validated() {
        let now = Instant::now();
        let mut cfg = SenderConfig::new(1, 1);
        cfg.max_datagram = 511;
        assert_eq!(
            Sender::new(cfg.clone(), key(), now).unwrap_err(),
            ConfigError::MaxDatagram(511)
        );
        cfg.max_datagram = 65508;
        assert!(Sender::new(cfg.clone(), key(), now).is_err());
        cfg.max_datagram = 65507;
        assert!(Sender::new(cfg.clone(), key(), now).is_ok());
        assert!(Sender::new(SenderConfig::new(0, 1), key(), now).is_err());
        assert!(Sender::new(SenderConfig::new(1, 0), key(), now).is_err());
        cfg.retain = 0;
        assert!(Sender::new(cfg, key(), now).is_err());
    }

    #[test]
    fn adaptive_batching() {
        let now = Instant::now();
        let mut s = sender(16, now);
        s.push(&upsert()).unwrap();
        assert_eq!(s.ready_len(), 0, "a partial datagram waits for flush");
        s.flush();
        assert_eq!(s.ready_len(), 1);
        let d = s.ready().next().unwrap();
        assert_eq!(d.len(), 32 + 23 + 16);
        s.flush();
        assert_eq!(s.ready_len(), 1, "flush with nothing open is a no-op");
        // (512 - 48) / 23 = 20 records fill a datagram; the 21st opens the next.
        for _ in 0..21 {
            s.push(&upsert()).unwrap();
        }
        assert_eq!(s.ready_len(), 2);
        let full = s.ready().nth(1).unwrap();
        let dg = Datagram::parse(full).unwrap();
        let Message::Data(recs) = dg.message().unwrap() else {
            panic!()
        };
        assert_eq!(recs.len(), 20);
        assert!(full.len() <= 512);
        s.mark_sent(5);
        assert_eq!(s.ready_len(), 0);
        assert_eq!(
            *s.stats(),
            SenderStats {
                datagrams: 2,
                data_datagrams: 2,
                records: 22,
                bytes: (32 + 23 + 16) + (32 + 20 * 23 + 16),
                ..SenderStats::default()
            }
        );
    }

    #[test]
    fn alive_schedule() {
        let t0 = Instant::now();
        let mut s = sender(4, t0);
        assert_eq!(s.poll_timeout(), t0);
        assert!(s.handle_timeout(t0));
        assert!(!s.handle_timeout(t0 + Duration::from_millis(999)));
        s.push(&upsert()).unwrap();
        assert!(s.handle_timeout(t0 + Duration::from_secs(1)));
        // HELLO first; the open DATA before the ALIVE, which carries the latest seq.
        assert_eq!(
            types(&s),
            vec![
                (1, MsgType::Hello),
                (2, MsgType::Alive),
                (3, MsgType::Data),
                (4, MsgType::Alive)
            ]
        );
        // After a stall the period restarts from now; HELLO every 10 s.
        assert!(s.handle_timeout(t0 + Duration::from_secs(10)));
        assert_eq!(s.poll_timeout(), t0 + Duration::from_secs(11));
        assert_eq!((s.stats().alives, s.stats().hellos), (3, 2));
        let hellos: Vec<_> = s
            .ready()
            .filter_map(|d| match Datagram::parse(d).unwrap().message().unwrap() {
                Message::Hello(h) => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(hellos, vec![crate::sync::hello::ours()]);
    }

    #[test]
    fn ring_overrun_and_retention() {
        let t0 = Instant::now();
        let mut s = sender(4, t0);
        for _ in 0..6 {
            s.push(&upsert()).unwrap();
            s.flush();
        }
        // Seqs 1..=6 sealed, ring holds 4: 1 and 2 were overwritten unsent.
        assert_eq!(s.stats().overruns, 2);
        assert_eq!(s.ready_len(), 4);
        let first = Datagram::parse(s.ready().next().unwrap()).unwrap().seq();
        assert_eq!(first, 3);
        assert_eq!(s.retained_range(), 3..=6);
        assert!(s.retained(2).is_none());
        assert_eq!(Datagram::parse(s.retained(5).unwrap()).unwrap().seq(), 5);
        s.mark_sent(4);
        s.push(&upsert()).unwrap();
        assert_eq!(
            s.retained_range(),
            4..=6,
            "the open datagram took seq 3's slot"
        );
        s.flush();
        assert_eq!(
            s.stats().overruns,
            2,
            "sent datagrams are overwritten silently"
        );
        // ALIVE advertises what remains after its own slot is taken (HELLO took 8).
        assert!(s.handle_timeout(t0));
        let alive = s.ready().last().unwrap();
        let Message::Alive(a) = Datagram::parse(alive).unwrap().message().unwrap() else {
            panic!()
        };
        assert_eq!(a.retained_from, 6);
        assert_eq!(s.retained_range(), 6..=9);
    }

    fn types(s: &Sender) -> Vec<(u64, MsgType)> {
        s.ready()
            .map(|d| {
                let d = Datagram::parse(d).unwrap();
                (d.seq(), d.msg_type())
            })
            .collect()
    }

    fn seqs(s: &Sender) -> Vec<u64> {
        types(s).into_iter().map(|(q, _)| q).collect()
    }

    /// `n` DATA datagrams, sent.
    fn sent(s: &mut Sender, n: usize) {
        for _ in 0..n {
            s.push(&upsert()).unwrap();
            s.flush();
        }
        let k = s.ready_len();
        s.mark_sent(k);
    }

    fn nack(s: &Sender, ranges: &[RangeInclusive<u64>]) -> NackRequest {
        NackRequest {
            node: s.node_id(),
            epoch: s.epoch(),
            ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn nacked_datagrams_are_retransmitted_byte_for_byte_first() {
        let t = Instant::now();
        let mut s = sender(8, t);
        sent(&mut s, 5);
        s.push(&upsert()).unwrap();
        s.flush(); // seq 6, not sent yet
        // 7 does not exist yet: not counted.
        let out = s.handle_nack(t, 9, &nack(&s, &[2..=3, 5..=7]));
        assert_eq!(
            out,
            NackOutcome {
                queued: 3,
                unsent: 1,
                ..NackOutcome::default()
            }
        );
        assert_eq!(s.ready_len(), 4);
        assert_eq!(s.ready().len(), 4);
        assert_eq!(seqs(&s), vec![2, 3, 5, 6], "retransmissions, then new");
        for (got, seq) in s.ready().zip([2, 3, 5]) {
            assert_eq!(got, s.retained(seq).unwrap());
        }
        // A partial send: the first two retransmissions went out.
        s.mark_sent(2);
        assert_eq!(seqs(&s), vec![5, 6]);
        s.mark_sent(2);
        assert_eq!(s.ready_len(), 0);
        let st = s.stats();
        assert_eq!(
            (st.retransmits, st.resend_queued, st.nacks_received),
            (3, 3, 1)
        );
        assert_eq!(st.retransmit_bytes, 3 * s.retained(2).unwrap().len() as u64);
        assert_eq!(st.datagrams, 6, "each sequence counted once");
    }

    #[test]
    fn nack_storms_are_deduplicated_and_held_off() {
        let t = Instant::now();
        let mut s = sender(16, t);
        sent(&mut s, 10);
        // Overlapping ranges, and the same NACK twice: each seq queued once.
        let out = s.handle_nack(t, 9, &nack(&s, &[2..=5, 4..=7, 2..=2]));
        assert_eq!((out.queued, out.duplicate), (6, 3));
        let out = s.handle_nack(t, 9, &nack(&s, &[2..=7]));
        assert_eq!((out.queued, out.duplicate), (0, 6));
        s.mark_sent(6);
        // Retransmitted just now: held off...
        let ms = Duration::from_millis;
        let out = s.handle_nack(t + ms(5), 9, &nack(&s, &[2..=3]));
        assert_eq!((out.queued, out.duplicate), (0, 2));
        // ...until the hold-off has passed (a genuine retry).
        let out = s.handle_nack(t + ms(10), 9, &nack(&s, &[2..=3]));
        assert_eq!(out.queued, 2);
        assert_eq!(seqs(&s), vec![2, 3]);
        // Garbage ranges are skipped.
        #[allow(clippy::reversed_empty_ranges)]
        let out = s.handle_nack(
            t + ms(10),
            9,
            &nack(&s, &[0..=3, 5..=4, u64::MAX..=u64::MAX]),
        );
        assert_eq!(out, NackOutcome::default());
        // Counts saturate whatever the ranges.
        let out = s.handle_nack(t + ms(10), 7, &nack(&s, &vec![1..=u64::MAX; 1024]));
        assert_eq!((out.unsent, out.unserviceable), (0, 0));
    }

    #[test]
    fn nack_budget_per_requester() {
        let t = Instant::now();
        let mut cfg = SenderConfig::new(1, 0xabcd);
        cfg.retain = 64;
        cfg.resend_rate = 100;
        cfg.resend_burst = 3;
        let mut s = Sender::new(cfg, key(), t).unwrap();
        sent(&mut s, 20);
        let out = s.handle_nack(t, 9, &nack(&s, &[1..=4, 10..=11]));
        assert_eq!((out.queued, out.throttled), (3, 3));
        assert_eq!(seqs(&s), vec![1, 2, 3]);
        let out = s.handle_nack(t, 8, &nack(&s, &[10..=11]));
        assert_eq!(out.queued, 2, "another requester has its own budget");
        // 100/s: one more token after 10 ms.
        let out = s.handle_nack(t + Duration::from_millis(10), 9, &nack(&s, &[4..=6]));
        assert_eq!((out.queued, out.throttled), (1, 2));
        assert_eq!(s.stats().resend_throttled, 5);
    }

    #[test]
    fn unserviceable_nacks_are_answered_with_an_alive() {
        let t = Instant::now();
        let mut s = sender(4, t);
        sent(&mut s, 10); // retains 7..=10
        let out = s.handle_nack(t, 9, &nack(&s, &[2..=3, 6..=8]));
        assert_eq!((out.unserviceable, out.queued), (3, 2));
        assert!(out.answered_alive);
        // The retransmissions, then the ALIVE (whose slot evicted seq 7's copy).
        let ready: Vec<_> = types(&s);
        assert_eq!(ready, vec![(8, MsgType::Data), (11, MsgType::Alive)]);
        assert_eq!(s.stats().resend_evicted, 1);
        let Message::Alive(a) = Datagram::parse(s.ready().last().unwrap())
            .unwrap()
            .message()
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(a.retained_from, 8);
        // At most one such ALIVE per hold-off.
        let out = s.handle_nack(t, 9, &nack(&s, &[1..=1]));
        assert!(!out.answered_alive && out.unserviceable == 1);
        assert_eq!(s.stats().resend_unserviceable, 4);
        // Another node's or epoch's NACK is none of our business.
        let mut other = nack(&s, &[8..=8]);
        other.epoch += 1;
        assert_eq!(s.handle_nack(t, 9, &other), NackOutcome::default());
        other.epoch -= 1;
        other.node += 1;
        assert_eq!(s.handle_nack(t, 9, &other), NackOutcome::default());
        assert_eq!(s.stats().nacks_ignored, 2);
    }

    #[test]
    fn queued_retransmissions_can_be_overrun() {
        let t = Instant::now();
        let mut s = sender(4, t);
        sent(&mut s, 4);
        assert_eq!(s.handle_nack(t, 9, &nack(&s, &[1..=2])).queued, 2);
        // The driver stalls while 3 more datagrams are sealed: seqs 1..=3 are
        // overwritten (1 and 2 queued for retransmission).
        for _ in 0..3 {
            s.push(&upsert()).unwrap();
            s.flush();
        }
        assert_eq!(s.stats().resend_evicted, 2);
        assert_eq!(s.stats().overruns, 0, "they had been sent once");
        assert_eq!(seqs(&s), vec![5, 6, 7]);
        assert_eq!(s.ready_len(), 3);
    }

    #[test]
    fn encode_errors_are_counted() {
        let mut s = sender(4, Instant::now());
        let mut e = udp4();
        e.reply.family = crate::conntrack::Family::V6;
        assert!(
            s.push(&Change::Upsert {
                entry: e,
                new: false
            })
            .is_err()
        );
        assert_eq!(s.stats().encode_errors, 1);
        s.flush();
        assert_eq!(s.ready_len(), 0);
    }
}
