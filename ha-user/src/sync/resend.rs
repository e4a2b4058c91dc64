//! Loss recovery, sending side: what a NACK may cost.
//!
//! Retransmission itself lives in the Sender's ring (a flag per retained datagram, so
//! a sequence is queued at most once however many NACKs ask for it). This is the
//! per-requester budget on top: a token bucket of datagrams per second, so one peer's
//! NACK storm (a bug, a misconfigured MTU, a receiver far behind) cannot turn the
//! sender into a retransmission loop. What is refused is counted; the receiver asks
//! again with backoff and in the end resyncs.

use std::time::{Duration, Instant};

/// Requesters tracked (beyond this, the least recently seen is forgotten).
const MAX_REQUESTERS: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    node: u32,
    tokens: f64,
    last: Instant,
}

#[derive(Clone, Debug)]
pub(crate) struct Budgets {
    rate: f64,
    burst: f64,
    peers: Vec<Bucket>,
}

impl Budgets {
    /// `rate` datagrams per second, at most `burst` at once, per requester.
    pub fn new(rate: u32, burst: u32) -> Budgets {
        Budgets {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            peers: Vec::new(),
        }
    }

    fn bucket(&mut self, node: u32, now: Instant) -> &mut Bucket {
        let i = match self.peers.iter().position(|b| b.node == node) {
            Some(i) => i,
            None => {
                let fresh = Bucket {
                    node,
                    tokens: self.burst,
                    last: now,
                };
                if self.peers.len() < MAX_REQUESTERS {
                    self.peers.push(fresh);
                    self.peers.len() - 1
                } else {
                    let (i, _) = self
                        .peers
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, b)| b.last)
                        .unwrap_or((0, &fresh));
                    self.peers[i] = fresh;
                    i
                }
            }
        };
        let (rate, burst) = (self.rate, self.burst);
        let b = &mut self.peers[i];
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.last = b.last.max(now);
        b
    }

    /// Whole datagrams `node` may have retransmitted now.
    pub fn available(&mut self, node: u32, now: Instant) -> u64 {
        self.bucket(node, now).tokens as u64
    }

    /// `n` datagrams were queued for `node`.
    pub fn spend(&mut self, node: u32, now: Instant, n: u64) {
        let b = self.bucket(node, now);
        b.tokens = (b.tokens - n as f64).max(0.0);
    }
}

/// What one NACK led to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NackOutcome {
    /// Datagrams queued for retransmission.
    pub queued: u64,
    /// Sequences no longer retained (the receiver must resync them).
    pub unserviceable: u64,
    /// Sequences already queued, or retransmitted less than `resend_hold_off` ago.
    pub duplicate: u64,
    /// Sequences refused by the requester's budget.
    pub throttled: u64,
    /// Sequences not sent yet (nothing to do: they are on their way).
    pub unsent: u64,
    /// An ALIVE was queued to tell the requester what is retained.
    pub answered_alive: bool,
}

/// Default per-requester retransmission rate: ten times what 10% loss at 100k events/s
/// needs (~200 datagrams/s).
pub const DEFAULT_RESEND_RATE: u32 = 20_000;
/// A sequence is not retransmitted again sooner than this (half the receiver's first
/// NACK retry interval, so genuine retries are served and duplicates are not).
pub const DEFAULT_RESEND_HOLD_OFF: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_per_requester() {
        let t0 = Instant::now();
        let mut b = Budgets::new(1000, 100);
        assert_eq!(b.available(1, t0), 100);
        b.spend(1, t0, 100);
        assert_eq!(b.available(1, t0), 0);
        assert_eq!(b.available(2, t0), 100, "independent");
        assert_eq!(b.available(1, t0 + Duration::from_millis(10)), 10);
        assert_eq!(b.available(1, t0 + Duration::from_secs(10)), 100, "capped");
        // A clock going backwards adds nothing.
        b.spend(1, t0 + Duration::from_secs(10), 100);
        assert_eq!(b.available(1, t0), 0);
        // Bounded table: the stalest requester is forgotten.
        for n in 10..10 + MAX_REQUESTERS as u32 {
            b.available(n, t0 + Duration::from_secs(20));
        }
        assert_eq!(b.peers.len(), MAX_REQUESTERS);
        assert!(b.peers.iter().all(|p| p.node != 2));
    }
}
