//! Who should be primary: the one total order both nodes evaluate identically.
//!
//! Better first:
//! 1. eligible (not FAULT, not in maintenance) before ineligible;
//! 2. operator-promoted before not promoted; between two promotions the newer
//!    generation (the later operator command) wins;
//! 3. healthy before soft-demoted (sync link down, or bulk sync unfinished) — CARP's
//!    demotion counter;
//! 4. lower `priority`;
//! 5. lower node id (ties are deterministic; two nodes never share an id).
//!
//! A node uses its *current* state for itself and the peer's *last heartbeat* for the
//! peer. Every change of what a node advertises is sent at once, so the two views agree
//! within one network delay.

use std::cmp::Reverse;

use super::heartbeat::{Demotion, Flags, Heartbeat, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub node: u32,
    pub priority: u8,
    pub demotion: Demotion,
    pub promoted: bool,
    pub promote_gen: u32,
}

impl Standing {
    /// The standing a heartbeat advertises. A FAULT role counts as a monitor failure
    /// whatever the bits say.
    pub fn of(hb: &Heartbeat) -> Standing {
        let mut demotion = hb.demotion;
        if hb.role == Role::Fault {
            demotion.set(Demotion::MONITOR_DOWN, true);
        }
        Standing {
            node: hb.node,
            priority: hb.priority,
            demotion,
            promoted: hb.flags.contains(Flags::PROMOTED),
            promote_gen: hb.promote_gen,
        }
    }

    /// May serve at all.
    pub fn eligible(&self) -> bool {
        !self.demotion.intersects(Demotion::INELIGIBLE)
    }

    /// No demotion reason at all (synced, sync link up, monitors up, no maintenance).
    pub fn healthy(&self) -> bool {
        self.demotion.is_empty()
    }

    fn key(&self) -> (bool, bool, Reverse<u32>, bool, u8, u32) {
        (
            !self.eligible(),
            !self.promoted,
            Reverse(if self.promoted { self.promote_gen } else { 0 }),
            self.demotion.intersects(Demotion::SOFT),
            self.priority,
            self.node,
        )
    }

    /// Strictly better than `other` in the order above.
    pub fn beats(&self, other: &Standing) -> bool {
        self.key() < other.key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(node: u32, priority: u8) -> Standing {
        Standing {
            node,
            priority,
            demotion: Demotion::empty(),
            promoted: false,
            promote_gen: 0,
        }
    }

    #[test]
    fn order() {
        // Priority, then node id.
        assert!(s(2, 10).beats(&s(1, 20)));
        assert!(s(1, 10).beats(&s(2, 10)));
        assert!(!s(2, 10).beats(&s(1, 10)));
        assert!(!s(1, 10).beats(&s(1, 10)), "irreflexive");
        // Soft demotion outranks priority.
        let mut unsynced = s(1, 0);
        unsynced.demotion = Demotion::NOT_SYNCED;
        assert!(s(2, 255).beats(&unsynced));
        let mut link = s(1, 0);
        link.demotion = Demotion::SYNC_LINK_DOWN;
        assert!(
            !link.beats(&unsynced) && !unsynced.beats(&link),
            "soft reasons rank alike"
        );
        // Promotion outranks soft demotion; ineligibility outranks everything.
        let mut promoted = unsynced;
        promoted.promoted = true;
        promoted.promote_gen = 1;
        assert!(promoted.beats(&s(2, 0)));
        let mut maint = promoted;
        maint.demotion = Demotion::MAINTENANCE;
        assert!(s(2, 255).beats(&maint));
        // Newer promotion wins.
        let mut newer = s(2, 255);
        newer.promoted = true;
        newer.promote_gen = 2;
        assert!(newer.beats(&promoted));
        // A FAULT role is ineligible even without the bit.
        let hb = Heartbeat {
            node: 1,
            epoch: 1,
            seq: 1,
            role: Role::Fault,
            priority: 0,
            flags: Flags::empty(),
            demotion: Demotion::empty(),
            promote_gen: 0,
            interval: std::time::Duration::from_secs(1),
            peer: None,
        };
        assert!(!Standing::of(&hb).eligible());
    }

    #[test]
    fn total_strict_order_on_distinct_nodes() {
        // Every pair of distinct standings is ordered exactly one way.
        let mut all = Vec::new();
        for node in 1..=2 {
            for priority in [0, 100] {
                for d in 0..16 {
                    for (promoted, gen_) in [(false, 0), (true, 1), (true, 2)] {
                        all.push(Standing {
                            node,
                            priority,
                            demotion: Demotion::from_bits(d).unwrap(),
                            promoted,
                            promote_gen: gen_,
                        });
                    }
                }
            }
        }
        for a in &all {
            for b in &all {
                if a.node != b.node {
                    assert!(a.beats(b) ^ b.beats(a), "{a:?} vs {b:?}");
                }
            }
        }
    }
}
