//! Deterministic log rate limiting: at most one line per key per interval, reporting
//! how many were suppressed in between. Time is an input, so tests drive it.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    last: Option<Instant>,
    suppressed: u64,
}

/// `N` independent keys (e.g. one per [`RejectKind`](super::RejectKind)).
#[derive(Clone, Debug)]
pub struct RateLimiter<const N: usize> {
    interval: Duration,
    slots: [Slot; N],
}

impl<const N: usize> RateLimiter<N> {
    pub fn new(interval: Duration) -> Self {
        RateLimiter {
            interval,
            slots: [Slot::default(); N],
        }
    }

    /// Whether to log an event of `key` now. `Some(n)`: log it, mentioning the `n`
    /// events suppressed since the last line. `None`: stay quiet (counted). Keys out of
    /// range are always suppressed.
    pub fn check(&mut self, key: usize, now: Instant) -> Option<u64> {
        let slot = self.slots.get_mut(key)?;
        match slot.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                slot.suppressed += 1;
                None
            }
            _ => {
                slot.last = Some(now);
                Some(std::mem::take(&mut slot.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_per_key() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rl = RateLimiter::<2>::new(Duration::from_secs(1));
        assert_eq!(rl.check(0, t0), Some(0));
        assert_eq!(rl.check(0, t0 + ms(10)), None);
        assert_eq!(rl.check(1, t0 + ms(10)), Some(0), "keys are independent");
        assert_eq!(rl.check(0, t0 + ms(999)), None);
        assert_eq!(rl.check(0, t0 + ms(1000)), Some(2));
        assert_eq!(rl.check(0, t0 + ms(1001)), None);
        assert_eq!(rl.check(0, t0 + ms(5000)), Some(1));
        assert_eq!(rl.check(2, t0), None);
        // A clock that goes backwards does not unlock logging.
        assert_eq!(rl.check(0, t0), None);
    }
}
