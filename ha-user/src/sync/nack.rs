//! Loss recovery, receiving side: which gaps of a peer's sequence to NACK and when, and
//! which to give up on (→ resync), never forgetting one silently.
//!
//! The peer's [`ReplayWindow`] is the truth about what arrived; [`Gaps`] remembers, per
//! gap, when it was found and how often it was asked for. Gaps only ever appear above
//! the highest sequence, so they form an ascending queue: O(1) per datagram; the work
//! is done in [`Gaps::poll`], which the driver calls when [`Gaps::wakeup`] is due.
//!
//! Schedule per gap: first NACK `delay` after it was found (reordering usually fills
//! it before that), then again after `interval`, doubling up to `max_interval`, until
//! every sequence of it arrived. A missing sequence is *given up*, and reported for a
//! resync, when it
//! - would slide out of the replay window (it could no longer be accepted): `Expired`;
//! - is below what the sender still retains (its ALIVE says `retained_from`; the
//!   sender answers a NACK it cannot serve with an ALIVE): `NotRetained`;
//! - was asked for `max_attempts` times without arriving: `Unanswered` (e.g. a peer
//!   that does not retransmit);
//! - belonged to an epoch the peer left (it restarted): `Restarted`;
//! - was (or would be) refused because the peer's versions are incompatible: `Refused`.
//!
//! Nothing else removes a gap: every missing sequence is either recovered or given
//! up, and each is given up at most once.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::replay::{Accepted, ReplayWindow};
use super::wire::message::{NACK_FIXED, RANGE_LEN};
use super::wire::{Control, MIN_DATAGRAM, Nack};

pub const DEFAULT_NACK_DELAY: Duration = Duration::from_millis(2);
pub const DEFAULT_NACK_INTERVAL: Duration = Duration::from_millis(20);
pub const DEFAULT_NACK_MAX_INTERVAL: Duration = Duration::from_secs(1);
/// 20+40+…+640+1000 ms: a peer that has not answered in ~2.3 s will not.
pub const DEFAULT_NACK_ATTEMPTS: u32 = 8;
/// Gaps tracked per peer; past this, new gaps merge into the newest one.
const MAX_GAPS: usize = 1024;

/// How many ranges a NACK in a datagram of `max_datagram` bytes holds.
pub fn max_nack_ranges(max_datagram: usize) -> usize {
    max_datagram.saturating_sub(MIN_DATAGRAM + NACK_FIXED) / RANGE_LEN
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackConfig {
    /// Reordering tolerance: a gap is first NACKed this long after it appeared.
    pub delay: Duration,
    /// First retry interval; doubles per attempt.
    pub interval: Duration,
    pub max_interval: Duration,
    /// NACKs per gap before it is given up (resync).
    pub max_attempts: u32,
    /// Ranges per NACK: [`max_nack_ranges`] of our sender's datagram size.
    pub max_ranges: usize,
}

impl Default for NackConfig {
    fn default() -> Self {
        NackConfig {
            delay: DEFAULT_NACK_DELAY,
            interval: DEFAULT_NACK_INTERVAL,
            max_interval: DEFAULT_NACK_MAX_INTERVAL,
            max_attempts: DEFAULT_NACK_ATTEMPTS,
            max_ranges: max_nack_ranges(super::sender::DEFAULT_MAX_DATAGRAM),
        }
    }
}

impl NackConfig {
    fn backoff(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(20);
        // Never 0: a zero interval would make the driver spin.
        (self.interval * (1u32 << shift))
            .min(self.max_interval)
            .max(Duration::from_millis(1))
    }
}

/// A NACK to send (receiver output) or to serve (sender input): the sequence ranges of
/// `node`'s stream `epoch` that are missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackRequest {
    pub node: u32,
    pub epoch: u32,
    pub ranges: Vec<RangeInclusive<u64>>,
}

impl NackRequest {
    /// An owned copy of a received NACK (to hand to the thread that owns the Sender).
    pub fn from_wire(n: &Nack<'_>) -> NackRequest {
        NackRequest {
            node: n.node,
            epoch: n.epoch,
            ranges: n.ranges().collect(),
        }
    }

    /// The message to queue on our Sender.
    pub fn control(&self) -> Control<'_> {
        Control::Nack {
            node: self.node,
            epoch: self.epoch,
            ranges: &self.ranges,
        }
    }

    /// Sequences asked for.
    pub fn seqs(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| (r.end() - r.start()).saturating_add(1))
            .fold(0, u64::saturating_add)
    }
}

/// Why missing sequences were given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// They slid out of the replay window.
    Expired,
    /// The sender no longer retains them.
    NotRetained,
    /// NACKed `max_attempts` times in vain.
    Unanswered,
    /// The peer restarted (new epoch) before they arrived.
    Restarted,
    /// The peer's versions are incompatible: its DATA is refused.
    Refused,
}

impl GiveUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Expired => "expired",
            GiveUpReason::NotRetained => "not_retained",
            GiveUpReason::Unanswered => "unanswered",
            GiveUpReason::Restarted => "restarted",
            GiveUpReason::Refused => "refused",
        }
    }
}

/// Driver output: `node`'s changes were lost beyond recovery; its state must be
/// resynced (bulk resync or a full repair). Accumulates until polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncNeeded {
    pub node: u32,
    /// The epoch the sequences belonged to.
    pub epoch: u32,
    /// Sequences given up.
    pub seqs: u64,
    /// Span of the given-up sequences (a superset when several merged).
    pub first: u64,
    pub last: u64,
    /// Why the first of them was given up.
    pub reason: GiveUpReason,
}

/// Sequences given up in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GiveUp {
    pub seqs: u64,
    pub first: u64,
    pub last: u64,
    pub reason: GiveUpReason,
}

impl GiveUp {
    fn merge(into: &mut Option<GiveUp>, g: GiveUp) {
        match into {
            None => *into = Some(g),
            Some(a) => {
                a.seqs = a.seqs.saturating_add(g.seqs);
                a.first = a.first.min(g.first);
                a.last = a.last.max(g.last);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Gap {
    first: u64,
    last: u64,
    found: Instant,
    next_at: Instant,
    attempts: u32,
}

/// The gaps of one peer epoch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gaps {
    gaps: VecDeque<Gap>,
    wakeup: Option<Instant>,
    retained_from: u64,
}

fn count(w: &ReplayWindow, first: u64, last: u64) -> (u64, u64, u64) {
    let mut n = 0;
    let (mut lo, mut hi) = (u64::MAX, 0);
    for r in w.missing_within(first, last) {
        n += r.end() - r.start() + 1;
        lo = lo.min(*r.start());
        hi = hi.max(*r.end());
    }
    (n, lo, hi)
}

impl Gaps {
    /// When [`poll`](Self::poll) has something to do.
    pub fn wakeup(&self) -> Option<Instant> {
        self.wakeup
    }

    fn arm(&mut self, at: Instant) {
        self.wakeup = Some(self.wakeup.map_or(at, |w| w.min(at)));
    }

    /// Gives up the still-missing part of every gap below `limit` (the bits must still
    /// be valid, i.e. before the window slides past them).
    fn give_up_below(
        &mut self,
        w: &ReplayWindow,
        limit: u64,
        reason: GiveUpReason,
    ) -> Option<GiveUp> {
        let mut out = None;
        while let Some(g) = self.gaps.front_mut() {
            if g.first >= limit {
                break;
            }
            let end = g.last.min(limit - 1);
            let (n, lo, hi) = count(w, g.first, end);
            if n > 0 {
                GiveUp::merge(
                    &mut out,
                    GiveUp {
                        seqs: n,
                        first: lo,
                        last: hi,
                        reason,
                    },
                );
            }
            if g.last < limit {
                self.gaps.pop_front();
            } else {
                g.first = limit;
            }
        }
        out
    }

    /// Before `seq` is accepted: what it pushes out of the window is given up.
    pub fn before_accept(&mut self, w: &ReplayWindow, seq: u64) -> Option<GiveUp> {
        let limit = w.low_after(seq);
        match self.gaps.front() {
            Some(g) if g.first < limit => self.give_up_below(w, limit, GiveUpReason::Expired),
            _ => None,
        }
    }

    /// After `seq` was accepted (`old_highest` was the highest before). Returns whether
    /// it filled a gap that had been NACKed (a repair rather than a reordering), and
    /// what a jump of more than a window skipped without ever tracking it.
    pub fn on_accept(
        &mut self,
        now: Instant,
        w: &ReplayWindow,
        old_highest: u64,
        seq: u64,
        acc: &Accepted,
        cfg: &NackConfig,
    ) -> (bool, Option<GiveUp>) {
        if acc.recovered {
            let i = self.gaps.partition_point(|g| g.last < seq);
            let nacked = self
                .gaps
                .get(i)
                .is_some_and(|g| g.first <= seq && g.attempts > 0);
            return (nacked, None);
        }
        if acc.lost == 0 {
            return (false, None);
        }
        // Skipped sequences: `old_highest + 1 ..= seq - 1`. Those below the window (a
        // jump of more than a window) were never even tracked.
        let first = old_highest + 1;
        let low = w.low().max(first);
        let skipped = (low > first).then_some(GiveUp {
            seqs: low - first,
            first,
            last: low - 1,
            reason: GiveUpReason::Expired,
        });
        if low < seq {
            self.push(now, low, seq - 1, cfg);
        }
        (false, skipped)
    }

    fn push(&mut self, now: Instant, first: u64, last: u64, cfg: &NackConfig) {
        if self.gaps.len() >= MAX_GAPS
            && let Some(g) = self.gaps.back_mut()
        {
            // Degenerate (a huge number of gaps nobody polled): widen the newest one.
            g.last = last;
            return;
        }
        let next_at = now + cfg.delay;
        self.gaps.push_back(Gap {
            first,
            last,
            found: now,
            next_at,
            attempts: 0,
        });
        self.arm(next_at);
    }

    /// The sender's ALIVE (or its answer to a NACK) says it retains `retained_from..`
    /// (0: nothing). Everything missing below is given up.
    pub fn on_retained_from(
        &mut self,
        w: &ReplayWindow,
        retained_from: u64,
        alive_seq: u64,
    ) -> Option<GiveUp> {
        let limit = if retained_from == 0 {
            alive_seq
        } else {
            self.retained_from = self.retained_from.max(retained_from);
            self.retained_from
        };
        self.give_up_below(w, limit, GiveUpReason::NotRetained)
    }

    /// NACK ranges due at `now`, appended to `ranges` (at most `cfg.max_ranges` in
    /// all); gives up what cannot be recovered and drops what arrived. If ranges were
    /// left out for lack of room, the wake-up stays at `now`: poll again.
    pub fn poll(
        &mut self,
        now: Instant,
        w: &ReplayWindow,
        cfg: &NackConfig,
        ranges: &mut Vec<RangeInclusive<u64>>,
    ) -> Option<GiveUp> {
        match self.wakeup {
            Some(t) if t <= now => {}
            _ => return None,
        }
        let max_ranges = cfg.max_ranges.max(1);
        let mut out = self.give_up_below(w, self.retained_from, GiveUpReason::NotRetained);
        let mut wakeup: Option<Instant> = None;
        let mut i = 0;
        while i < self.gaps.len() {
            let g = self.gaps[i];
            let mut missing = w.missing_within(g.first, g.last).peekable();
            let Some(first_missing) = missing.peek().map(|r| *r.start()) else {
                self.gaps.remove(i);
                continue;
            };
            self.gaps[i].first = first_missing;
            if g.next_at > now {
                wakeup = Some(wakeup.map_or(g.next_at, |t| t.min(g.next_at)));
                i += 1;
                continue;
            }
            if g.attempts >= cfg.max_attempts {
                let (n, lo, hi) = count(w, first_missing, g.last);
                GiveUp::merge(
                    &mut out,
                    GiveUp {
                        seqs: n,
                        first: lo,
                        last: hi,
                        reason: GiveUpReason::Unanswered,
                    },
                );
                self.gaps.remove(i);
                continue;
            }
            if ranges.len() >= max_ranges {
                wakeup = Some(now);
                break;
            }
            let mut split = None;
            for r in missing {
                if ranges.len() >= max_ranges {
                    split = Some(*r.start());
                    break;
                }
                ranges.push(r);
            }
            let attempts = g.attempts + 1;
            let next_at = now + cfg.backoff(attempts);
            let gap = &mut self.gaps[i];
            gap.attempts = attempts;
            gap.next_at = next_at;
            wakeup = Some(wakeup.map_or(next_at, |t| t.min(next_at)));
            if let Some(at) = split {
                // The rest did not fit: it stays due, as a gap of its own.
                gap.last = at - 1;
                self.gaps.insert(i + 1, Gap { first: at, ..g });
                wakeup = Some(now);
                break;
            }
            i += 1;
        }
        // Gaps after an early stop still need their wake-up.
        for g in self.gaps.iter().skip(i) {
            wakeup = Some(wakeup.map_or(g.next_at, |t| t.min(g.next_at)));
        }
        self.wakeup = wakeup;
        out
    }

    /// Whether any gap is being tracked (filled or not; cheap, for every datagram).
    pub fn any(&self) -> bool {
        !self.gaps.is_empty()
    }

    /// Gives up everything still missing (the peer's epoch ended) and forgets it.
    pub fn clear(&mut self, w: &ReplayWindow, reason: GiveUpReason) -> Option<GiveUp> {
        let out = self.give_up_below(w, u64::MAX, reason);
        *self = Gaps::default();
        out
    }

    /// Sequences still missing and not given up.
    pub fn outstanding(&self, w: &ReplayWindow) -> u64 {
        self.gaps.iter().map(|g| count(w, g.first, g.last).0).sum()
    }

    /// Gaps NACKed at least once and not yet filled (as of the last poll).
    pub fn nacked(&self) -> usize {
        self.gaps.iter().filter(|g| g.attempts > 0).count()
    }

    /// When the oldest gap still missing something was found.
    pub fn oldest(&self, w: &ReplayWindow) -> Option<Instant> {
        self.gaps
            .iter()
            .find(|g| w.missing_within(g.first, g.last).next().is_some())
            .map(|g| g.found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct T {
        w: ReplayWindow,
        g: Gaps,
        cfg: NackConfig,
        given: Option<GiveUp>,
    }

    impl T {
        fn new() -> T {
            T {
                w: ReplayWindow::new(1),
                g: Gaps::default(),
                cfg: NackConfig::default(),
                given: None,
            }
        }

        fn recv(&mut self, now: Instant, seq: u64) -> bool {
            if let Some(x) = self.g.before_accept(&self.w, seq) {
                GiveUp::merge(&mut self.given, x);
            }
            let old = self.w.highest();
            let Ok(acc) = self.w.accept(seq) else {
                return false;
            };
            let (repaired, skipped) = self.g.on_accept(now, &self.w, old, seq, &acc, &self.cfg);
            if let Some(x) = skipped {
                GiveUp::merge(&mut self.given, x);
            }
            repaired
        }

        fn poll(&mut self, now: Instant) -> Vec<RangeInclusive<u64>> {
            let mut r = Vec::new();
            if let Some(x) = self.g.poll(now, &self.w, &self.cfg, &mut r) {
                GiveUp::merge(&mut self.given, x);
            }
            r
        }
    }

    #[test]
    fn reordering_within_the_delay_sends_nothing() {
        let t0 = Instant::now();
        let mut t = T::new();
        t.recv(t0, 1);
        t.recv(t0, 3);
        assert_eq!(t.g.wakeup(), Some(t0 + ms(2)));
        assert!(t.poll(t0 + ms(1)).is_empty(), "not due");
        assert!(!t.recv(t0 + ms(1), 2), "a reordering, not a repair");
        assert!(t.poll(t0 + ms(2)).is_empty());
        assert_eq!(t.g.wakeup(), None);
        assert_eq!(t.given, None);
    }

    #[test]
    fn nack_schedule_backs_off_then_gives_up() {
        let t0 = Instant::now();
        let mut t = T::new();
        t.cfg.max_attempts = 3;
        t.recv(t0, 1);
        t.recv(t0, 5);
        t.recv(t0 + ms(1), 9);
        assert_eq!(t.poll(t0 + ms(2)), vec![2..=4]);
        assert_eq!(t.g.wakeup(), Some(t0 + ms(3)), "the second gap's delay");
        assert_eq!(t.poll(t0 + ms(3)), vec![6..=8]);
        assert_eq!(t.g.wakeup(), Some(t0 + ms(22)));
        assert_eq!(t.g.nacked(), 2);
        // 7 arrives (a retransmission): counted as a repair; the gap splits.
        assert!(t.recv(t0 + ms(5), 7));
        assert_eq!(t.poll(t0 + ms(22)), vec![2..=4]);
        assert_eq!(t.poll(t0 + ms(23)), vec![6..=6, 8..=8]);
        // Backoff: 20, 40, then given up at the fourth due time.
        assert_eq!(t.g.wakeup(), Some(t0 + ms(62)));
        assert_eq!(t.poll(t0 + ms(62)), vec![2..=4]);
        assert_eq!(t.g.wakeup(), Some(t0 + ms(63)));
        assert_eq!(t.poll(t0 + ms(63)), vec![6..=6, 8..=8]);
        assert_eq!(t.g.outstanding(&t.w), 5);
        assert!(t.poll(t0 + ms(141)).is_empty());
        assert_eq!(t.given, None);
        assert!(t.poll(t0 + ms(143)).is_empty());
        assert_eq!(
            t.given,
            Some(GiveUp {
                seqs: 5,
                first: 2,
                last: 8,
                reason: GiveUpReason::Unanswered
            })
        );
        assert_eq!(t.g.outstanding(&t.w), 0);
        assert_eq!(t.g.wakeup(), None);
    }

    #[test]
    fn not_retained_and_expired_are_given_up_once() {
        let t0 = Instant::now();
        let mut t = T::new();
        t.recv(t0, 1);
        t.recv(t0, 10); // 2..=9 missing
        t.recv(t0, 20); // 11..=19 missing
        let g = t.g.on_retained_from(&t.w, 5, 21).unwrap();
        assert_eq!((g.seqs, g.first, g.last), (3, 2, 4));
        assert_eq!(g.reason, GiveUpReason::NotRetained);
        assert_eq!(t.g.on_retained_from(&t.w, 5, 22), None, "only once");
        assert_eq!(t.g.on_retained_from(&t.w, 3, 23), None, "never backwards");
        assert_eq!(t.poll(t0 + ms(2)), vec![5..=9, 11..=19]);
        // A jump past the window expires the rest, and skips some untracked ones.
        let far = 20 + crate::sync::WINDOW + 5;
        t.recv(t0 + ms(3), far);
        let g = t.given.unwrap();
        assert_eq!(g.reason, GiveUpReason::Expired);
        // 5..=9 and 11..=19 (14) plus 21..=25 never tracked (far - WINDOW = 25).
        assert_eq!((g.seqs, g.first, g.last), (14 + 5, 5, 25));
        assert_eq!(t.g.outstanding(&t.w), crate::sync::WINDOW - 1);
        t.given = None;
        assert_eq!(
            t.g.clear(&t.w, GiveUpReason::Restarted).map(|g| g.seqs),
            Some(crate::sync::WINDOW - 1)
        );
    }

    #[test]
    fn nacks_are_capped_and_the_rest_stays_due() {
        let t0 = Instant::now();
        let mut t = T::new();
        t.cfg.max_ranges = 3;
        t.recv(t0, 1);
        for s in (3..=15).step_by(2) {
            t.recv(t0, s); // 2, 4, ..., 14 missing: 7 gaps
        }
        assert_eq!(t.poll(t0 + ms(2)), vec![2..=2, 4..=4, 6..=6]);
        assert_eq!(t.g.wakeup(), Some(t0 + ms(2)), "more to send now");
        assert_eq!(t.poll(t0 + ms(2)), vec![8..=8, 10..=10, 12..=12]);
        assert_eq!(t.poll(t0 + ms(2)), vec![14..=14]);
        assert_eq!(t.g.wakeup(), Some(t0 + ms(22)));
        assert!(t.poll(t0 + ms(2)).is_empty());
    }

    #[test]
    fn one_big_gap_is_split_across_nacks() {
        let t0 = Instant::now();
        let mut t = T::new();
        t.cfg.max_ranges = 2;
        t.recv(t0, 1);
        t.recv(t0, 10);
        for s in [3, 5, 7] {
            t.recv(t0, s);
        }
        assert_eq!(t.poll(t0 + ms(2)), vec![2..=2, 4..=4]);
        assert_eq!(t.poll(t0 + ms(2)), vec![6..=6, 8..=9]);
        assert_eq!(t.g.nacked(), 2);
        assert_eq!(t.g.outstanding(&t.w), 5);
    }

    #[test]
    fn gap_count_is_bounded() {
        let t0 = Instant::now();
        let mut t = T::new();
        t.recv(t0, 1);
        for i in 0..(MAX_GAPS as u64 + 10) {
            t.recv(t0, 3 + 2 * i);
        }
        assert_eq!(t.g.gaps.len(), MAX_GAPS);
        assert_eq!(t.g.outstanding(&t.w), MAX_GAPS as u64 + 10);
    }

    #[test]
    fn oldest_missing_age() {
        let t0 = Instant::now();
        let mut t = T::new();
        t.recv(t0, 1);
        t.recv(t0, 3);
        t.recv(t0 + ms(5), 5);
        assert_eq!(t.g.oldest(&t.w), Some(t0));
        t.recv(t0 + ms(6), 2);
        assert_eq!(t.g.oldest(&t.w), Some(t0 + ms(5)));
    }
}
