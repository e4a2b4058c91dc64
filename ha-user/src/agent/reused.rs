//! Keys whose creation this node sent in the last moments, so a destroy event that
//! arrives after its successor's creation is recognised.
//!
//! New entries come through the ring buffer, deletions through the ctnetlink destroy
//! socket: two channels with no order between them. When a SYN reopens a TCP key whose
//! entry is closed (CLOSE, TIME_WAIT), conntrack kills the old entry and creates a new
//! one in the same packet; the egress thread may read the new entry before the old
//! one's destroy event, and a plain delete would then remove the new connection from
//! the peer. For a destroyed key found here the agent asks the kernel whether the key
//! is in its table again (see `Loop::on_destroy`).
//!
//! Only protocols whose trackers kill and recreate an entry are recorded (TCP, SCTP,
//! DCCP): a UDP packet just reuses the existing entry. Two generations, rotated every
//! [`GENERATION`]: a key stays between one and two generations.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use crate::conntrack::{Entry, Key, proto};

/// Far longer than the two channels can drift apart (one pass of the egress loop).
pub const GENERATION: Duration = Duration::from_millis(100);

pub struct RecentlyCreated {
    current: HashSet<Key, foldhash::quality::RandomState>,
    previous: HashSet<Key, foldhash::quality::RandomState>,
    rotated: Instant,
}

impl RecentlyCreated {
    pub fn new(now: Instant) -> RecentlyCreated {
        RecentlyCreated {
            current: HashSet::default(),
            previous: HashSet::default(),
            rotated: now,
        }
    }

    /// Records a new entry that went to the peer.
    pub fn created(&mut self, entry: &Entry, now: Instant) {
        if !matches!(entry.orig.proto, proto::TCP | proto::SCTP | proto::DCCP) {
            return;
        }
        self.rotate(now);
        self.current.insert(entry.key());
    }

    /// Whether the creation of `key` went to the peer within the last one or two
    /// generations.
    pub fn contains(&mut self, key: &Key, now: Instant) -> bool {
        self.rotate(now);
        self.current.contains(key) || self.previous.contains(key)
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.rotated);
        if age < GENERATION {
            return;
        }
        if age >= 2 * GENERATION {
            // Idle for a while: everything recorded is old.
            self.previous.clear();
        } else {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
        self.current.clear();
        self.rotated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{ProtoInfo, Tuple, Zone};

    fn entry(proto: u8, port: u16) -> Entry {
        let t = Tuple::new(
            proto,
            "10.0.0.1".parse().unwrap(),
            port,
            "10.0.0.2".parse().unwrap(),
            80,
        );
        Entry {
            orig: t,
            reply: t,
            status: 0,
            timeout: 10,
            mark: 0,
            zone: Zone::default(),
            proto: ProtoInfo::None,
            labels: None,
        }
    }

    #[test]
    fn remembers_tcp_for_one_to_two_generations() {
        let t0 = Instant::now();
        let mut r = RecentlyCreated::new(t0);
        let e = entry(proto::TCP, 1000);
        r.created(&e, t0);
        assert!(r.contains(&e.key(), t0));
        assert!(r.contains(&e.key(), t0 + GENERATION));
        assert!(!r.contains(&e.key(), t0 + GENERATION * 2 + GENERATION / 2));
    }

    #[test]
    fn forgets_everything_after_an_idle_spell() {
        let t0 = Instant::now();
        let mut r = RecentlyCreated::new(t0);
        let e = entry(proto::TCP, 1000);
        r.created(&e, t0 + GENERATION / 2);
        assert!(!r.contains(&e.key(), t0 + GENERATION * 3));
    }

    #[test]
    fn udp_is_not_recorded() {
        let t0 = Instant::now();
        let mut r = RecentlyCreated::new(t0);
        let e = entry(proto::UDP, 1000);
        r.created(&e, t0);
        assert!(!r.contains(&e.key(), t0));
    }
}
