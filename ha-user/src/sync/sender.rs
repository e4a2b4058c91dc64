//! The sending half: batches changes into DATA datagrams, seals (sequence + tag) and
//! queues them, and emits the periodic ALIVE. No I/O and no clock: the driver passes
//! `now`, sends what [`Sender::ready`] yields (several at once suit `sendmmsg`) and
//! reports how many went out with [`Sender::mark_sent`].
//!
//! Batching is adaptive, never timed: [`Sender::push`] fills the open DATA datagram
//! and seals it when the next record would not fit; the driver calls
//! [`Sender::flush`] whenever its event source is drained. Under load datagrams are
//! full; when idle each event leaves at once in a small datagram.
//!
//! Storage is a ring of `retain` datagram buffers indexed by `seq % retain`, allocated
//! on first use and reused: no allocation per event or per datagram in steady state.
//! Sealed datagrams stay in the ring after they were sent, so the reliability layer can
//! retransmit them byte for byte ([`Sender::retained`]); ALIVE advertises the oldest
//! one still there. If the driver falls `retain` datagrams behind, the oldest unsent
//! ones are overwritten and counted as overruns (receivers see the gap).

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::auth::{SyncKey, TAG_LEN};
use super::stats::SenderStats;
use super::wire::record::{self, EncodeError, MIN_RECORD_LEN};
use super::wire::{Alive, Control, HEADER_LEN, HeaderFields, MAX_DATAGRAM, MsgType};
use crate::conntrack::Change;

/// Default datagram size: a 1500-byte MTU minus IPv4 and UDP headers.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;
/// Smallest configurable datagram size.
pub const MIN_MAX_DATAGRAM: usize = 512;
pub const DEFAULT_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_RETAIN: usize = 256;
pub const MAX_RETAIN: usize = 65536;

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
    /// Datagrams kept for the driver and for retransmission, `1..=MAX_RETAIN`.
    pub retain: usize,
}

impl SenderConfig {
    pub fn new(node_id: u32, epoch: u32) -> SenderConfig {
        SenderConfig {
            node_id,
            epoch,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            alive_interval: DEFAULT_ALIVE_INTERVAL,
            retain: DEFAULT_RETAIN,
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
    #[error("the ALIVE interval must be positive")]
    AliveInterval,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    buf: Vec<u8>,
    len: usize,
}

pub struct Sender {
    node: u32,
    epoch: u32,
    max: usize,
    interval: Duration,
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
    /// A sender whose first ALIVE is due at `now` (announcing the epoch at once).
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
        if cfg.alive_interval.is_zero() {
            return Err(ConfigError::AliveInterval);
        }
        Ok(Sender {
            node: cfg.node_id,
            epoch: cfg.epoch,
            max: cfg.max_datagram,
            interval: cfg.alive_interval,
            key,
            slots: vec![Slot::default(); cfg.retain],
            next_seq: 1,
            unsent_from: 1,
            open_end: 0,
            open_count: 0,
            next_alive: now,
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
        let slot = &mut self.slots[idx];
        if slot.buf.len() != self.max {
            slot.buf.resize(self.max, 0);
        }
        slot.len = 0;
        idx
    }

    fn seal(&mut self, msg_type: MsgType, payload_len: usize, count: u16) {
        let idx = self.index(self.next_seq);
        let fields = HeaderFields {
            msg_type: msg_type as u8,
            flags: 0,
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
            _ => self.stats.controls += 1,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    pub fn poll_timeout(&self) -> Instant {
        self.next_alive
    }

    /// Queues an ALIVE if one is due at `now`. Returns whether it did.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if now < self.next_alive {
            return false;
        }
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
        let next = self.next_alive + self.interval;
        // After a stall, resume the period from now instead of catching up in a burst.
        self.next_alive = if next <= now {
            now + self.interval
        } else {
            next
        };
        true
    }

    /// How many sealed datagrams wait for the driver.
    pub fn ready_len(&self) -> usize {
        (self.next_seq - self.unsent_from) as usize
    }

    /// The sealed datagrams not yet sent, oldest first.
    pub fn ready(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.ready_len()).map(move |i| {
            let slot = &self.slots[self.index(self.unsent_from + i as u64)];
            &slot.buf[..slot.len]
        })
    }

    /// The driver handed the first `n` ready datagrams to the kernel.
    pub fn mark_sent(&mut self, n: usize) {
        self.unsent_from += n.min(self.ready_len()) as u64;
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
}

#[cfg(test)]
mod tests {
    use super::*;
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
        // The open DATA went first; the ALIVE carries the latest sequence.
        let seqs: Vec<(u64, MsgType)> = s
            .ready()
            .map(|d| {
                let d = Datagram::parse(d).unwrap();
                (d.seq(), d.msg_type())
            })
            .collect();
        assert_eq!(
            seqs,
            vec![(1, MsgType::Alive), (2, MsgType::Data), (3, MsgType::Alive)]
        );
        // After a stall the period restarts from now.
        assert!(s.handle_timeout(t0 + Duration::from_secs(10)));
        assert_eq!(s.poll_timeout(), t0 + Duration::from_secs(11));
        assert_eq!(s.stats().alives, 3);
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
        // ALIVE advertises what remains after its own slot is taken.
        assert!(s.handle_timeout(t0));
        let alive = s.ready().last().unwrap();
        let Message::Alive(a) = Datagram::parse(alive).unwrap().message().unwrap() else {
            panic!()
        };
        assert_eq!(a.retained_from, 5);
        assert_eq!(s.retained_range(), 5..=8);
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
