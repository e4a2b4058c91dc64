//! Keys changed by live events while a table dump is taken and served.
//!
//! A bulk resync or a consistency repair dumps the kernel table on a helper thread and
//! sends it afterwards, in paced chunks. Live events keep flowing meanwhile, so by the
//! time a dumped entry goes out the peer may already hold a newer state of it (or have
//! deleted it) from a live event. Sending the dumped copy then would put the older
//! state back. The egress thread opens a window when it starts such a dump, notes every
//! key a live event changes, leaves those keys out of what it serves, and closes the
//! window when no dump is taken or served any more.

use std::collections::HashSet;

use crate::conntrack::{Change, Key};

/// Keys remembered per window at most (beyond, dumped entries go out as they are: the
/// next digest repairs what they overwrite).
pub const MAX_KEYS: usize = 1 << 21;

#[derive(Default)]
pub struct LiveSinceDump {
    changed: Option<HashSet<Key, foldhash::quality::RandomState>>,
}

impl LiveSinceDump {
    /// A dump starts: from now on live changes are noted (a window already open stays
    /// as it is: it covers the earlier dump too).
    pub fn open(&mut self) {
        self.changed.get_or_insert_default();
    }

    /// No dump is taken or served any more.
    pub fn close(&mut self) {
        self.changed = None;
    }

    pub fn is_open(&self) -> bool {
        self.changed.is_some()
    }

    /// A live change went to the peer.
    pub fn note(&mut self, change: &Change) {
        if let Some(set) = &mut self.changed
            && set.len() < MAX_KEYS
        {
            set.insert(key_of(change));
        }
    }

    /// Whether a dumped change must be left out: a live change of its key already
    /// went out after the dump began.
    pub fn superseded(&self, dumped: &Change) -> bool {
        self.changed
            .as_ref()
            .is_some_and(|set| set.contains(&key_of(dumped)))
    }
}

fn key_of(change: &Change) -> Key {
    match change {
        Change::Upsert { entry, .. } => entry.key(),
        Change::Delete(key) => *key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Entry, Tuple, proto};

    fn udp_entry(port: u16) -> Entry {
        let orig = Tuple::new(
            proto::UDP,
            "10.0.0.1".parse().unwrap(),
            port,
            "10.0.0.2".parse().unwrap(),
            53,
        );
        Entry::plain(orig)
    }

    fn upsert(port: u16) -> Change {
        Change::Upsert {
            entry: udp_entry(port),
            new: false,
        }
    }

    #[test]
    fn nothing_is_left_out_without_a_dump() {
        let mut w = LiveSinceDump::default();
        w.note(&upsert(1));
        assert!(!w.superseded(&upsert(1)));
        assert!(!w.is_open());
    }

    #[test]
    fn live_updates_and_deletes_during_a_dump_win_over_the_dumped_state() {
        let mut w = LiveSinceDump::default();
        w.open();
        w.note(&upsert(1));
        w.note(&Change::Delete(udp_entry(2).key()));
        assert!(w.superseded(&upsert(1)), "a newer state went out live");
        assert!(w.superseded(&upsert(2)), "deleted live: not put back");
        assert!(!w.superseded(&upsert(3)), "untouched keys are served");
    }

    #[test]
    fn a_second_dump_keeps_what_the_first_noted_and_closing_forgets() {
        let mut w = LiveSinceDump::default();
        w.open();
        w.note(&upsert(1));
        w.open();
        assert!(w.superseded(&upsert(1)));
        w.close();
        assert!(!w.superseded(&upsert(1)));
        w.note(&upsert(4));
        w.open();
        assert!(!w.superseded(&upsert(4)), "noted before the window opened");
    }
}
