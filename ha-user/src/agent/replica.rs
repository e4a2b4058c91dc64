//! Which kernel entries this node holds on behalf of its peer.
//!
//! A replicated entry that times out here must not be reported back as a deletion:
//! its owner may still be using it (the peer's copy can expire up to half a timeout
//! before the owner's, by design of the refresh rule). Ownership moves to this node
//! as soon as its own capture reports the entry (traffic now flows here, e.g. after a
//! failover). Keys are stored as 64-bit hashes: 8 bytes per entry.

use std::{
    collections::HashSet,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::conntrack::Key;

#[derive(Default)]
pub struct ReplicaSet {
    keys: Mutex<HashSet<u64, BuildHasherDefault<IdentityHasher>>>,
    /// Lets the capture path skip the lock when nothing is replicated (the primary).
    len: AtomicUsize,
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
        }
    }
}

fn fingerprint(key: &Key) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

impl ReplicaSet {
    /// The peer's entry was installed here.
    pub fn insert(&self, key: &Key) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(fingerprint(key));
            self.len.store(keys.len(), Ordering::Relaxed);
        }
    }

    /// Forgets `key`; true if it was the peer's.
    pub fn remove(&self, key: &Key) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self.keys.lock() {
            Ok(mut keys) => {
                let was = keys.remove(&fingerprint(key));
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
            .is_ok_and(|keys| keys.contains(&fingerprint(key)))
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
    }
}

/// The keys are already SipHash fingerprints: hash them as they are.
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
}
