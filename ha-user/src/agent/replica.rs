//! Which kernel entries this node holds on behalf of its peer.
//!
//! A replicated entry that times out here must not be reported back as a deletion:
//! its owner may still be using it (the peer's copy can expire up to half a timeout
//! before the owner's, by design of the refresh rule). Ownership moves to this node
//! as soon as its own capture reports the entry (traffic now flows here, e.g. after a
//! failover). Keys are stored as 64-bit hashes: 8 bytes per entry, made with foldhash
//! under a per-process random seed: several times cheaper than SipHash on the backup's
//! install path, and the tuples (which anyone sending traffic through the firewall
//! chooses) cannot be aimed at one bucket without the seed.
//!
//! After a restart the set is gone while the kernel still holds the entries, ours and
//! the peer's alike. Entries found at start are therefore *unclaimed*: held (not
//! offered to the peer, not in our digests) until our first bulk sync from the peer
//! ends. Those the peer re-sent are its own; the rest are ours and are claimed then.
//! Without this a restarted backup sends the primary its own entries back, the
//! primary holds them as the backup's, and its next consistency check deletes them.

use std::{
    collections::HashSet,
    hash::{BuildHasher, BuildHasherDefault},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use crate::conntrack::{Change, Key};

type Fingerprints = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

#[derive(Default)]
pub struct ReplicaSet {
    keys: Mutex<Fingerprints>,
    /// Lets the capture path skip the lock when nothing is replicated (the primary).
    len: AtomicUsize,
    /// Entries found in the kernel at start whose owner is not known yet.
    unclaimed: Mutex<Fingerprints>,
    /// True while `unclaimed` waits for the first bulk sync.
    pending: AtomicBool,
    seed: foldhash::quality::RandomState,
}

/// Room reserved up front: growing a hash set rehashes everything at once, a stall of
/// milliseconds at a few hundred thousand keys, right in the install path.
const INITIAL_CAPACITY: usize = 1 << 18;

impl ReplicaSet {
    pub fn new() -> ReplicaSet {
        ReplicaSet {
            keys: Mutex::new(HashSet::with_capacity_and_hasher(
                INITIAL_CAPACITY,
                BuildHasherDefault::default(),
            )),
            len: AtomicUsize::new(0),
            unclaimed: Mutex::default(),
            pending: AtomicBool::new(false),
            seed: foldhash::quality::RandomState::default(),
        }
    }

    fn fingerprint(&self, key: &Key) -> u64 {
        self.seed.hash_one(key)
    }
}

impl ReplicaSet {
    /// Entries found in the kernel at start: held until [`Self::settle`].
    pub fn hold_unclaimed(&self, keys: impl IntoIterator<Item = Key>) -> usize {
        let (Ok(mut held), Ok(mut unclaimed)) = (self.keys.lock(), self.unclaimed.lock()) else {
            return 0;
        };
        for key in keys {
            let f = self.fingerprint(&key);
            held.insert(f);
            unclaimed.insert(f);
        }
        self.len.store(held.len(), Ordering::Relaxed);
        self.pending.store(!unclaimed.is_empty(), Ordering::Relaxed);
        unclaimed.len()
    }

    /// Whether entries found at start still wait for the first bulk sync: until then
    /// this node neither serves digests nor judges the peer's.
    pub fn unsettled(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// The first bulk sync ended (or never will): what the peer did not re-send is
    /// ours. Returns how many entries were claimed.
    pub fn settle(&self) -> usize {
        if !self.pending.swap(false, Ordering::Relaxed) {
            return 0;
        }
        let (Ok(mut held), Ok(mut unclaimed)) = (self.keys.lock(), self.unclaimed.lock()) else {
            return 0;
        };
        let claimed = unclaimed.len();
        for f in unclaimed.drain() {
            held.remove(&f);
        }
        unclaimed.shrink_to_fit();
        self.len.store(held.len(), Ordering::Relaxed);
        claimed
    }

    /// Whichever way its owner is learned (the peer re-sent it, our capture saw it,
    /// it ended), an entry is no longer unclaimed.
    fn known(&self, f: u64) {
        if self.pending.load(Ordering::Relaxed)
            && let Ok(mut unclaimed) = self.unclaimed.lock()
        {
            unclaimed.remove(&f);
        }
    }

    /// The peer's entry was installed here.
    #[cfg(test)]
    pub fn insert(&self, key: &Key) {
        self.mark(std::iter::once((*key, true)));
    }

    /// Applies the peer's `changes` with `install`, so that a table dump taken on
    /// another thread meanwhile never sees one of the peer's entries as ours: keys are
    /// marked before the kernel holds them, and unmarked only once it no longer does.
    /// (Marked after the install, a dump that fell in between served the peer's
    /// entries back to it as ours; the peer then held them as ours and deleted them as
    /// stale after a repair.) From the first deletion on, the marks follow the changes
    /// in order, so a key deleted and created again in one batch stays marked.
    pub fn apply<R>(&self, changes: &[Change], install: impl FnOnce(&[Change]) -> R) -> R {
        self.mark(changes.iter().filter_map(|change| match change {
            Change::Upsert { entry, .. } => Some((entry.key(), true)),
            Change::Delete(_) => None,
        }));
        let result = install(changes);
        if let Some(first) = changes.iter().position(|c| matches!(c, Change::Delete(_))) {
            self.mark(changes[first..].iter().map(|change| match change {
                Change::Upsert { entry, .. } => (entry.key(), true),
                Change::Delete(key) => (*key, false),
            }));
        }
        result
    }

    /// Marks (`true`) or unmarks keys in order, taking the lock once per chunk rather
    /// than once per key. Each insert into a table of millions of keys misses the
    /// cache; a lock released after every key waits for that store to land, while
    /// inserts under one lock overlap their misses (per key: the unlock was most of
    /// the backup's time in this set, `perf annotate`).
    fn mark(&self, marks: impl Iterator<Item = (Key, bool)>) {
        // Bounds how long a lookup on another thread (egress) can wait.
        const CHUNK: usize = 256;
        let mut chunk: Vec<(u64, bool)> = Vec::with_capacity(CHUNK);
        let mut marks = marks.peekable();
        while marks.peek().is_some() {
            chunk.clear();
            chunk.extend(
                marks
                    .by_ref()
                    .take(CHUNK)
                    .map(|(key, mark)| (self.fingerprint(&key), mark)),
            );
            // The lock order of `hold_unclaimed` and `settle`: keys, then unclaimed.
            let Ok(mut keys) = self.keys.lock() else {
                return;
            };
            let mut unclaimed = if self.pending.load(Ordering::Relaxed) {
                self.unclaimed.lock().ok()
            } else {
                None
            };
            for &(f, mark) in &chunk {
                if let Some(unclaimed) = unclaimed.as_mut() {
                    unclaimed.remove(&f);
                }
                if mark {
                    keys.insert(f);
                } else {
                    keys.remove(&f);
                }
            }
            self.len.store(keys.len(), Ordering::Relaxed);
        }
    }

    /// Forgets `key`; true if it was the peer's.
    pub fn remove(&self, key: &Key) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let f = self.fingerprint(key);
        self.known(f);
        match self.keys.lock() {
            Ok(mut keys) => {
                let was = keys.remove(&f);
                self.len.store(keys.len(), Ordering::Relaxed);
                was
            }
            Err(_) => false,
        }
    }

    /// Whether `key` is the peer's entry.
    pub fn contains(&self, key: &Key) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.keys
            .lock()
            .is_ok_and(|keys| keys.contains(&self.fingerprint(key)))
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.clear();
            self.len.store(0, Ordering::Relaxed);
        }
        if let Ok(mut unclaimed) = self.unclaimed.lock() {
            unclaimed.clear();
        }
        self.pending.store(false, Ordering::Relaxed);
    }
}

/// The keys are already foldhash fingerprints: hash them as they are.
#[derive(Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Tuple, Zone, proto};

    fn key(port: u16) -> Key {
        let t = Tuple::new(
            proto::UDP,
            "10.0.0.1".parse().unwrap(),
            1,
            "10.0.0.2".parse().unwrap(),
            port,
        );
        Key {
            orig: t,
            zone: Zone::DEFAULT,
        }
    }

    fn upsert(port: u16) -> Change {
        let orig = key(port).orig;
        Change::Upsert {
            entry: crate::conntrack::Entry::plain(orig),
            new: true,
        }
    }

    #[test]
    fn the_peers_entries_are_marked_before_the_install_and_unmarked_after_it() {
        let set = ReplicaSet::new();
        set.insert(&key(9));
        let changes = [upsert(1), upsert(2), Change::Delete(key(9))];
        set.apply(&changes, |_| {
            // What a dump on another thread would see while the kernel installs.
            assert!(set.contains(&key(1)) && set.contains(&key(2)));
            assert!(
                set.contains(&key(9)),
                "still in the kernel: still the peer's"
            );
        });
        assert!(set.contains(&key(1)) && set.contains(&key(2)));
        assert!(!set.contains(&key(9)));
    }

    #[test]
    fn the_last_change_of_a_key_in_a_batch_decides_its_mark() {
        let set = ReplicaSet::new();
        let cases: [(&[Change], bool); 4] = [
            (&[upsert(1), Change::Delete(key(1))], false),
            (&[Change::Delete(key(1)), upsert(1)], true),
            (&[upsert(1), Change::Delete(key(1)), upsert(1)], true),
            (
                &[Change::Delete(key(2)), upsert(1), Change::Delete(key(1))],
                false,
            ),
        ];
        for (changes, marked) in cases {
            set.clear();
            let installed = set.apply(changes, |c| c.len());
            assert_eq!(installed, changes.len(), "the install's result is returned");
            assert_eq!(set.contains(&key(1)), marked, "{changes:?}");
        }
    }

    #[test]
    fn batches_longer_than_a_lock_chunk_are_marked_in_order() {
        let set = ReplicaSet::new();
        let ports = 1..=1000u16;
        let creates: Vec<Change> = ports.clone().map(upsert).collect();
        set.apply(&creates, |_| ());
        assert_eq!(set.len(), 1000);
        // Every even key deleted, then key 2 created again, all in one batch.
        let mut changes: Vec<Change> = ports
            .clone()
            .filter(|p| p % 2 == 0)
            .map(|p| Change::Delete(key(p)))
            .collect();
        changes.push(upsert(2));
        set.apply(&changes, |_| ());
        assert_eq!(set.len(), 501);
        assert!(
            ports
                .clone()
                .all(|p| set.contains(&key(p)) == (p % 2 == 1 || p == 2))
        );
    }

    #[test]
    fn an_installed_entry_is_no_longer_unclaimed() {
        let set = ReplicaSet::new();
        set.hold_unclaimed([key(1), key(2)]);
        set.apply(&[upsert(1)], |_| ());
        assert_eq!(set.settle(), 1, "key 2 is ours, key 1 the peer's");
        assert!(set.contains(&key(1)) && !set.contains(&key(2)));
    }

    #[test]
    fn tracks_membership() {
        let set = ReplicaSet::default();
        assert!(!set.remove(&key(1)));
        set.insert(&key(1));
        set.insert(&key(2));
        assert_eq!(set.len(), 2);
        assert!(set.remove(&key(1)));
        assert!(!set.remove(&key(1)));
        assert_eq!(set.len(), 1);
        let mut other_zone = key(2);
        other_zone.zone = Zone::new(7);
        assert!(!set.remove(&other_zone), "zone is part of the key");
    }

    #[test]
    fn unclaimed_entries_are_held_until_settled_then_claimed_unless_resent() {
        let set = ReplicaSet::new();
        assert!(!set.unsettled());
        assert_eq!(set.hold_unclaimed([key(1), key(2), key(3)]), 3);
        assert!(set.unsettled());
        assert!(set.contains(&key(1)) && set.contains(&key(2)) && set.contains(&key(3)));
        set.insert(&key(1)); // the peer re-sent it: the peer's
        assert!(set.remove(&key(2))); // our capture saw it: ours now
        assert_eq!(set.settle(), 1, "only key 3 was still unclaimed");
        assert!(!set.unsettled());
        assert!(set.contains(&key(1)), "the peer's entry stays held");
        assert!(!set.contains(&key(3)), "an entry nobody re-sent is ours");
        assert_eq!(set.len(), 1);
        assert_eq!(set.settle(), 0, "settling twice changes nothing");
    }

    #[test]
    fn nothing_found_at_start_means_nothing_to_settle() {
        let set = ReplicaSet::new();
        assert_eq!(set.hold_unclaimed(std::iter::empty()), 0);
        assert!(!set.unsettled());
    }
}
