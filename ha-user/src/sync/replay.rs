//! Per-(sender, epoch) sliding replay window over sequence numbers, which doubles as the
//! record of missing sequences that NACK generation will read.
//!
//! The window tracks the [`WINDOW`] sequences ending at the highest one accepted; a bit
//! per sequence says whether it arrived. A sequence above the highest is accepted and
//! slides the window (everything it skips becomes *missing*: counted as lost); one
//! inside the window is accepted once (a late arrival *recovers* a missing sequence);
//! anything older is too old. A missing sequence that slides out of the window
//! *expires*: it can no longer be accepted, so only a resync repairs it. At all times
//! `lost - recovered - expired == missing_count()`.
//!
//! The first sequence seen of an epoch sets the start: if it is within the first
//! [`WINDOW`] sequences the sender has sent, the epoch is taken to start at 1 (so the
//! lost start of a fresh epoch counts); otherwise we joined mid-stream and nothing
//! before it is expected.
//!
//! The window is also the retransmission horizon: a retransmitted sequence is only
//! accepted while it is in the window, so a sender retaining more than [`WINDOW`]
//! datagrams gains nothing. 16384 sequences, for 2 KiB per peer: ~8 s of full
//! datagrams at 100k events/s, and ~2.5 s at 50k events/s, where adaptive batching
//! sends ~8 flows per datagram. A sync-link flap that long is repaired by
//! retransmission alone (with 4096, a 1 s outage at 50k/s needed a bulk resync).

use std::ops::RangeInclusive;

/// Sequences tracked behind the highest accepted one.
#[cfg(not(test))]
pub const WINDOW: u64 = 16384;
/// Unit tests use a quarter of it: nothing in the window's logic depends on its size,
/// and the model-based property test, linear in the window per step, stays fast while
/// its jumps still reach past the window (the agent tests run the real size).
#[cfg(test)]
pub const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Already received.
    Replayed,
    /// Before the window, or before the start of the epoch as we saw it.
    TooOld,
}

/// Bookkeeping of one accepted sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Sequences it skipped (now missing).
    pub lost: u64,
    /// It was a missing sequence (late or retransmitted).
    pub recovered: bool,
    /// Missing sequences pushed out of the window by it.
    pub expired: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Lowest sequence this epoch is expected to have (>= 1).
    floor: u64,
    /// Highest accepted sequence (`floor - 1` before the first).
    highest: u64,
    /// Bit `seq % WINDOW`: `seq` received, for tracked sequences.
    bits: [u64; WORDS],
}

fn slot(seq: u64) -> (usize, u64) {
    let i = seq % WINDOW;
    ((i / 64) as usize, 1u64 << (i % 64))
}

impl ReplayWindow {
    /// A window for an epoch whose first datagram we see carries `first_seq` (>= 1).
    pub fn new(first_seq: u64) -> ReplayWindow {
        let floor = if first_seq <= WINDOW { 1 } else { first_seq };
        ReplayWindow {
            floor,
            highest: floor - 1,
            bits: [0; WORDS],
        }
    }

    /// Highest accepted sequence (0 if none).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Lowest sequence the window still tracks.
    pub fn low(&self) -> u64 {
        self.floor.max((self.highest + 1).saturating_sub(WINDOW))
    }

    /// What [`low`](Self::low) would be after accepting `seq` (to see what is about to
    /// expire while the bits still say it).
    pub fn low_after(&self, seq: u64) -> u64 {
        self.floor
            .max((self.highest.max(seq) + 1).saturating_sub(WINDOW))
    }

    /// Whether `seq` is tracked and has not arrived.
    pub fn is_missing(&self, seq: u64) -> bool {
        seq >= self.low() && seq <= self.highest && !self.get(seq)
    }

    fn get(&self, seq: u64) -> bool {
        let (w, m) = slot(seq);
        self.bits[w] & m != 0
    }

    fn set(&mut self, seq: u64, v: bool) {
        let (w, m) = slot(seq);
        if v {
            self.bits[w] |= m;
        } else {
            self.bits[w] &= !m;
        }
    }

    /// Whether `seq` would be accepted. Changes nothing.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq > self.highest {
            Ok(())
        } else if seq < self.low() {
            Err(ReplayError::TooOld)
        } else if self.get(seq) {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Accepts `seq` if [`check`](Self::check) allows it.
    pub fn accept(&mut self, seq: u64) -> Result<Accepted, ReplayError> {
        self.check(seq)?;
        if seq <= self.highest {
            self.set(seq, true);
            return Ok(Accepted {
                recovered: true,
                ..Accepted::default()
            });
        }
        let d = seq - self.highest;
        let mut expired = 0;
        if d > WINDOW {
            // The whole old window leaves, and so does everything skipped up to the
            // new window's start.
            expired = self.missing_count() + (seq - WINDOW - self.highest);
            self.bits = [0; WORDS];
        } else {
            let low = self.low();
            for s in self.highest + 1..=seq {
                // Slot `s` held `s - WINDOW`, which leaves the window now.
                if let Some(old) = s.checked_sub(WINDOW)
                    && old >= low
                    && !self.get(old)
                {
                    expired += 1;
                }
                self.set(s, false);
            }
        }
        self.set(seq, true);
        self.highest = seq;
        Ok(Accepted {
            lost: d - 1,
            recovered: false,
            expired,
        })
    }

    /// Missing sequences still in the window, as ranges in ascending order.
    pub fn missing(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.missing_within(self.low(), self.highest)
    }

    /// Missing sequences within `first..=last` (clipped to the window), as ranges in
    /// ascending order.
    pub fn missing_within(
        &self,
        first: u64,
        last: u64,
    ) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        let mut s = first.max(self.low());
        let end = last.min(self.highest);
        std::iter::from_fn(move || {
            while s <= end && self.get(s) {
                // Skip whole received words (the common case) 64 at a time.
                if s.is_multiple_of(64) && s + 63 <= end && self.bits[slot(s).0] == u64::MAX {
                    s += 64;
                    continue;
                }
                s += 1;
            }
            if s > end {
                return None;
            }
            let first = s;
            while s <= end && !self.get(s) {
                s += 1;
            }
            Some(first..=s - 1)
        })
    }

    /// How many sequences are missing in the window.
    pub fn missing_count(&self) -> u64 {
        self.missing().map(|r| r.end() - r.start() + 1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn basics() {
        let mut w = ReplayWindow::new(1);
        assert_eq!(w.accept(1), Ok(Accepted::default()));
        assert_eq!(w.accept(1), Err(ReplayError::Replayed));
        let a = w.accept(5).unwrap();
        assert_eq!(a.lost, 3);
        assert_eq!(w.missing().collect::<Vec<_>>(), vec![2..=4]);
        assert!(w.accept(3).unwrap().recovered);
        assert_eq!(w.missing().collect::<Vec<_>>(), vec![2..=2, 4..=4]);
        assert_eq!(w.missing_count(), 2);
        // Slide 2 and 4 out of the window.
        let a = w.accept(5 + WINDOW).unwrap();
        assert_eq!((a.lost, a.expired), (WINDOW - 1, 2));
        assert_eq!(w.check(5), Err(ReplayError::TooOld));
        assert_eq!(w.check(6), Ok(()));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn fresh_epoch_counts_its_lost_start_but_a_late_join_does_not() {
        let mut w = ReplayWindow::new(4);
        assert_eq!(w.accept(4).unwrap().lost, 3);
        assert_eq!(w.missing().collect::<Vec<_>>(), vec![1..=3]);
        let late = WINDOW + 904;
        let mut w = ReplayWindow::new(late);
        assert_eq!(w.accept(late).unwrap().lost, 0);
        assert_eq!(w.check(late - 1), Err(ReplayError::TooOld));
        assert_eq!(w.missing().count(), 0);
    }

    #[test]
    fn huge_jump_expires_everything() {
        let mut w = ReplayWindow::new(1);
        w.accept(1).unwrap();
        w.accept(3).unwrap(); // 2 missing
        let a = w.accept(3 + 5 * WINDOW).unwrap();
        assert_eq!(a.lost, 5 * WINDOW - 1);
        // 2, plus everything skipped that never entered the new window.
        assert_eq!(a.expired, 1 + (5 * WINDOW - WINDOW));
        assert_eq!(w.missing_count(), WINDOW - 1);
    }

    /// The obvious model: a set of seen sequences.
    struct Model {
        floor: u64,
        highest: u64,
        seen: BTreeSet<u64>,
    }

    impl Model {
        fn check(&self, seq: u64) -> Result<(), ReplayError> {
            if seq > self.highest {
                return Ok(());
            }
            if seq < self.floor || self.highest - seq >= WINDOW {
                return Err(ReplayError::TooOld);
            }
            if self.seen.contains(&seq) {
                return Err(ReplayError::Replayed);
            }
            Ok(())
        }

        fn missing(&self) -> Vec<u64> {
            let low = self.floor.max((self.highest + 1).saturating_sub(WINDOW));
            (low..=self.highest)
                .filter(|s| !self.seen.contains(s))
                .collect()
        }
    }

    proptest! {
        #[test]
        fn prop_matches_model(
            first in 1u64..9000,
            steps in proptest::collection::vec((0u8..4, 0u64..6000), 1..300),
        ) {
            let mut w = ReplayWindow::new(first);
            let mut m = Model { floor: w.floor, highest: w.floor - 1, seen: BTreeSet::new() };
            let (mut lost, mut recovered, mut expired) = (0u64, 0u64, 0u64);
            let mut cur = first;
            for (kind, n) in steps {
                // Mostly near the front, sometimes far behind or far ahead.
                let seq = match kind {
                    0 => cur + n % 8,
                    1 => cur.saturating_sub(n),
                    2 => cur + n,
                    _ => cur.saturating_sub(n % 40),
                };
                let want = m.check(seq);
                let got = w.accept(seq);
                prop_assert_eq!(got.map(|_| ()), want, "seq {}", seq);
                if let Ok(a) = got {
                    lost += a.lost;
                    recovered += u64::from(a.recovered);
                    expired += a.expired;
                    m.seen.insert(seq);
                    m.highest = m.highest.max(seq);
                    cur = cur.max(seq);
                }
                let missing: Vec<u64> = w.missing().flatten().collect();
                prop_assert_eq!(&missing, &m.missing());
                let (a, b) = (cur.saturating_sub(n % 5000), cur.saturating_sub(n % 97));
                let within: Vec<u64> = w.missing_within(a, b).flatten().collect();
                let want: Vec<u64> = missing.iter().copied().filter(|s| (a..=b).contains(s)).collect();
                prop_assert_eq!(within, want);
                prop_assert_eq!(w.low_after(seq), m.floor.max((m.highest.max(seq) + 1).saturating_sub(WINDOW)));
                prop_assert_eq!(w.missing_count(), missing.len() as u64);
                prop_assert_eq!(lost - recovered - expired, w.missing_count());
            }
        }
    }
}
