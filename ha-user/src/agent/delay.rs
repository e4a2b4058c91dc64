//! Sync delay (FortiGate's session-pickup-delay): replicate only connections that
//! live longer than `sync_delay`. Short-lived connections (DNS lookups, health checks)
//! are then never sent at all, which spares the sync link and the peer's table at the
//! cost of not surviving a failover in their first moments. Off by default.
//!
//! A new entry is held; updates to it replace the held copy; its deletion within the
//! delay cancels it (neither is sent); when the delay expires the latest copy goes out.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::conntrack::{Change, Key};

pub struct DelayQueue {
    delay: Duration,
    /// Deadlines in arrival order (the delay is fixed, so they are sorted). A key may
    /// be stale (cancelled): `held` is the truth.
    queue: VecDeque<(Instant, Key)>,
    held: HashMap<Key, Change>,
    /// Entries whose deletion cancelled them before they were sent.
    pub cancelled: u64,
}

impl DelayQueue {
    pub fn new(delay: Duration) -> DelayQueue {
        DelayQueue {
            delay,
            queue: VecDeque::new(),
            held: HashMap::new(),
            cancelled: 0,
        }
    }

    /// Takes a captured change; returns it when it should go out now.
    pub fn offer(&mut self, now: Instant, change: Change) -> Option<Change> {
        match change {
            Change::Upsert { entry, new: true } => {
                let key = entry.key();
                if self.held.insert(key, change).is_none() {
                    self.queue.push_back((now + self.delay, key));
                }
                None
            }
            Change::Upsert { entry, new: false } => match self.held.get_mut(&entry.key()) {
                // Still young: keep the newest state, still as a creation.
                Some(held) => {
                    *held = Change::Upsert { entry, new: true };
                    None
                }
                None => Some(change),
            },
            Change::Delete(key) => {
                if self.held.remove(&key).is_some() {
                    self.cancelled += 1;
                    None
                } else {
                    Some(change)
                }
            }
        }
    }

    /// Moves every change whose delay expired to `out`.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Change>) {
        while let Some((at, key)) = self.queue.front().copied() {
            if at > now {
                break;
            }
            self.queue.pop_front();
            if let Some(change) = self.held.remove(&key) {
                out.push(change);
            }
        }
    }

    /// When the next held change is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Entry, ProtoInfo, Tuple, proto};

    fn entry(port: u16, state: u8) -> Entry {
        let orig = Tuple::new(
            proto::TCP,
            "10.0.0.1".parse().unwrap(),
            port,
            "10.0.0.2".parse().unwrap(),
            80,
        );
        Entry {
            proto: ProtoInfo::Tcp {
                state,
                wscale: [0; 2],
                flags: [0; 2],
            },
            ..Entry::plain(orig)
        }
    }

    #[test]
    fn short_lived_connections_are_never_sent() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(Duration::from_millis(500));
        assert_eq!(
            q.offer(
                t0,
                Change::Upsert {
                    entry: entry(1, 1),
                    new: true
                }
            ),
            None
        );
        assert_eq!(
            q.offer(
                t0 + Duration::from_millis(100),
                Change::Delete(entry(1, 1).key())
            ),
            None
        );
        let mut out = Vec::new();
        q.due(t0 + Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
        assert_eq!(q.cancelled, 1);
    }

    #[test]
    fn long_lived_connections_go_out_with_their_latest_state() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(Duration::from_millis(500));
        q.offer(
            t0,
            Change::Upsert {
                entry: entry(1, 1),
                new: true,
            },
        );
        q.offer(
            t0 + Duration::from_millis(10),
            Change::Upsert {
                entry: entry(1, 3),
                new: false,
            },
        );
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(500)));
        let mut out = Vec::new();
        q.due(t0 + Duration::from_millis(499), &mut out);
        assert!(out.is_empty());
        q.due(t0 + Duration::from_millis(500), &mut out);
        assert_eq!(
            out,
            vec![Change::Upsert {
                entry: entry(1, 3),
                new: true
            }]
        );
        // Older entries pass straight through.
        let later = Change::Upsert {
            entry: entry(1, 4),
            new: false,
        };
        assert_eq!(q.offer(t0 + Duration::from_secs(2), later), Some(later));
        let del = Change::Delete(entry(1, 4).key());
        assert_eq!(q.offer(t0 + Duration::from_secs(3), del), Some(del));
        assert!(q.is_empty());
    }
}
