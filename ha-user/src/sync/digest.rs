//! Table digests for the consistency check: both sides hash what is replicated of an
//! entry, sum the hashes per bucket, compare, and repair only differing buckets.
//!
//! An entry goes to bucket `H(key) mod N` (`N` a power of two) and adds `H(content)` to
//! it (wrapping add: commutative, so the order of a dump does not matter, and
//! [`Digest::remove`] undoes [`Digest::add`] for incremental maintenance). `H` is
//! SipHash-2-4 keyed from the sync secret, so a host that can create connections but
//! does not hold the secret cannot steer flows into one bucket or craft entries whose
//! differences cancel out. Content is an explicit big-endian serialisation, so every
//! build and architecture computes the same digest.
//!
//! Content is what the installer writes and the kernel keeps as written: both tuples,
//! zone, mark, labels, the status bits the installer sets (`IPS_INSTALL_MASK`: the
//! kernel adds CONFIRMED and the NAT_DONE bits itself), and the protocol *state* (TCP,
//! SCTP, DCCP state; SCTP verification tags). Not the timeout (it counts down, and the
//! replica's is longer on purpose), nor TCP window scale and flags (window tracking is
//! not replicated and the installer may set BE_LIBERAL).
//!
//! The entries given to [`Digest::compute`] are the caller's choice: the owner hashes
//! the entries it owns (those a bulk resync would send), the replica holder the
//! entries it holds for that owner. If a side cannot store something (e.g. labels on a
//! kernel without the labels extension), both sides must leave it out of the entries
//! they hash, or that bucket will always differ.

use super::auth::{KeyError, derive_key};
use super::wire::check::digest_room;
use super::wire::{Control, DigestChunk, MIN_DATAGRAM, valid_buckets};
use crate::conntrack::{Entry, Key, ProtoInfo, Tuple};
use crate::kernel::ctnetlink::consts::IPS_INSTALL_MASK;

pub use super::wire::check::{BucketSet, MAX_BUCKETS};

/// The derivation label of the digest key.
pub const DIGEST_PURPOSE: &[u8] = b"hasync digest v1";
/// Default bucket count: 2 KiB of hashes, ~4k entries per bucket at 1M entries.
pub const DEFAULT_BUCKETS: u16 = 256;

const DOMAIN_KEY: u8 = 1;
const DOMAIN_ENTRY: u8 = 2;

/// The SipHash key both sides derive from the configured secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigestKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// The digest key for the configured `secret_key`.
    pub fn derive(secret: &[u8]) -> Result<DigestKey, KeyError> {
        let k = derive_key(secret, DIGEST_PURPOSE)?;
        let mut b = [0u8; 16];
        b.copy_from_slice(&k[..16]);
        Ok(DigestKey::from_bytes(b))
    }

    pub fn from_bytes(b: [u8; 16]) -> DigestKey {
        let (a, c) = b.split_at(8);
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(a);
        k1.copy_from_slice(c);
        DigestKey {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    fn hash(&self, data: &[u8]) -> u64 {
        siphash24(self.k0, self.k1, data)
    }
}

/// SipHash-2-4 (Aumasson & Bernstein), 64-bit output.
fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let m = u64::from_le_bytes(b);
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let rest = words.remainder();
    last[..rest.len()].copy_from_slice(rest);
    let m = u64::from_le_bytes(last) | ((data.len() as u64) << 56);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// A fixed stack buffer for the canonical serialisation (no allocation per entry).
struct Buf {
    b: [u8; 128],
    n: usize,
}

impl Buf {
    fn new(domain: u8) -> Buf {
        let mut b = Buf { b: [0; 128], n: 0 };
        b.put(&[domain]);
        b
    }

    fn put(&mut self, x: &[u8]) {
        self.b[self.n..self.n + x.len()].copy_from_slice(x);
        self.n += x.len();
    }

    fn tuple(&mut self, t: &Tuple) {
        self.put(&[t.family.af(), t.proto]);
        self.put(&t.src);
        self.put(&t.dst);
        self.put(&t.src_u);
        self.put(&t.dst_u);
    }

    fn key(&mut self, k: &Key) {
        self.tuple(&k.orig);
        self.put(&k.zone.id.to_be_bytes());
        self.put(&[k.zone.dir]);
    }

    fn bytes(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

/// The bucket of an entry with key `k` among `buckets` (a power of two).
pub fn bucket_of(key: &DigestKey, k: &Key, buckets: u16) -> u16 {
    let mut b = Buf::new(DOMAIN_KEY);
    b.key(k);
    // Truncation is intended: buckets <= 2048.
    (key.hash(b.bytes()) & u64::from(buckets.max(1) - 1)) as u16
}

/// The hash of what is replicated of `e` (see the module documentation).
pub fn entry_hash(key: &DigestKey, e: &Entry) -> u64 {
    let mut b = Buf::new(DOMAIN_ENTRY);
    b.key(&e.key());
    b.tuple(&e.reply);
    b.put(&(e.status & IPS_INSTALL_MASK).to_be_bytes());
    b.put(&e.mark.to_be_bytes());
    match e.proto {
        ProtoInfo::None => b.put(&[0]),
        // State only: window scale and flags are the kernel's business.
        ProtoInfo::Tcp { state, .. } => b.put(&[1, state]),
        ProtoInfo::Sctp { state, vtag } => {
            b.put(&[2, state]);
            b.put(&vtag[0].to_ne_bytes());
            b.put(&vtag[1].to_ne_bytes());
        }
        ProtoInfo::Dccp { state } => b.put(&[3, state]),
    }
    match e.labels {
        None => b.put(&[0]),
        Some(l) => {
            b.put(&[1]);
            b.put(&l);
        }
    }
    key.hash(b.bytes())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("bucket count {0} is not a power of two within 1..={MAX_BUCKETS}")]
    Buckets(u16),
}

/// Per-bucket sums of entry hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    buckets: Vec<u64>,
    entries: u64,
}

impl Digest {
    /// The digest of an empty table.
    pub fn empty(buckets: u16) -> Result<Digest, DigestError> {
        if !valid_buckets(buckets) {
            return Err(DigestError::Buckets(buckets));
        }
        Ok(Digest {
            buckets: vec![0; usize::from(buckets)],
            entries: 0,
        })
    }

    /// The digest of `entries` (any order; each key at most once).
    pub fn compute<'a>(
        key: &DigestKey,
        entries: impl IntoIterator<Item = &'a Entry>,
        buckets: u16,
    ) -> Result<Digest, DigestError> {
        let mut d = Digest::empty(buckets)?;
        for e in entries {
            d.add(key, e);
        }
        Ok(d)
    }

    fn slot(&self, key: &DigestKey, e: &Entry) -> usize {
        usize::from(bucket_of(key, &e.key(), self.len()))
    }

    pub fn add(&mut self, key: &DigestKey, e: &Entry) {
        let i = self.slot(key, e);
        self.buckets[i] = self.buckets[i].wrapping_add(entry_hash(key, e));
        self.entries = self.entries.wrapping_add(1);
    }

    /// Undoes [`add`](Self::add) of the same entry.
    pub fn remove(&mut self, key: &DigestKey, e: &Entry) {
        let i = self.slot(key, e);
        self.buckets[i] = self.buckets[i].wrapping_sub(entry_hash(key, e));
        self.entries = self.entries.wrapping_sub(1);
    }

    /// The bucket count.
    pub fn len(&self) -> u16 {
        // Bounded by MAX_BUCKETS.
        self.buckets.len() as u16
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Entries hashed.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Bucket ids whose hashes differ, ascending. Digests of different bucket counts
    /// cannot be compared bucket by bucket: every bucket of `self` then differs.
    pub fn differing(&self, other: &Digest) -> Vec<u16> {
        if self.buckets.len() != other.buckets.len() {
            return (0..self.len()).collect();
        }
        (0..self.len())
            .filter(|&b| self.buckets[usize::from(b)] != other.buckets[usize::from(b)])
            .collect()
    }

    /// [`differing`](Self::differing) as a set, for a REPAIR_REQUEST.
    pub fn differing_set(&self, other: &Digest) -> BucketSet {
        let mut set = BucketSet::sized(self.len());
        for b in self.differing(other) {
            set.insert(b);
        }
        set
    }

    /// The DIGEST messages carrying this digest in datagrams of `max_datagram` bytes,
    /// to queue in order on the Sender.
    pub fn chunks(
        &self,
        request_id: u32,
        max_datagram: usize,
    ) -> impl Iterator<Item = Control<'_>> + '_ {
        let per = digest_room(max_datagram.saturating_sub(MIN_DATAGRAM)).max(1);
        self.buckets
            .chunks(per)
            .enumerate()
            .map(move |(i, hashes)| Control::Digest {
                request_id,
                buckets: self.len(),
                first: (i * per) as u16,
                entries: self.entries,
                hashes,
            })
    }
}

/// Puts a digest back together from its DIGEST chunks (one peer, one digest at a
/// time: a chunk of another digest starts over).
#[derive(Clone, Debug, Default)]
pub struct DigestAssembly {
    cur: Option<Partial>,
}

#[derive(Clone, Debug)]
struct Partial {
    node: u32,
    request_id: u32,
    digest: Digest,
    have: BucketSet,
    missing: usize,
}

impl DigestAssembly {
    /// Adds a chunk from `node`; returns the digest (and its request id) once complete.
    pub fn add(&mut self, node: u32, c: &DigestChunk<'_>) -> Option<(u32, Digest)> {
        let same = self.cur.as_ref().is_some_and(|p| {
            p.node == node
                && p.request_id == c.request_id
                && p.digest.len() == c.buckets
                && p.digest.entries == c.entries
        });
        if !same {
            let mut digest = Digest::empty(c.buckets).ok()?;
            digest.entries = c.entries;
            self.cur = Some(Partial {
                node,
                request_id: c.request_id,
                digest,
                have: BucketSet::new(c.buckets)?,
                missing: usize::from(c.buckets),
            });
        }
        let p = self.cur.as_mut()?;
        for (i, h) in c.hashes().enumerate() {
            let b = c.first.saturating_add(i as u16);
            if b < c.buckets && !p.have.contains(b) {
                p.have.insert(b);
                p.digest.buckets[usize::from(b)] = h;
                p.missing -= 1;
            }
        }
        if p.missing > 0 {
            return None;
        }
        self.cur.take().map(|p| (p.request_id, p.digest))
    }

    /// Forgets a partial digest (e.g. after a timeout).
    pub fn reset(&mut self) {
        self.cur = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Family, Zone, proto, status};
    use crate::sync::wire::record::tests::{arb_entry, udp4};
    use crate::sync::wire::{Datagram, Message};
    use proptest::prelude::*;

    fn key() -> DigestKey {
        DigestKey::derive(b"digest test").unwrap()
    }

    #[test]
    fn siphash_reference_vectors() {
        // From the SipHash paper's reference implementation (vectors.h): key
        // 00..0f, messages 00..(n-1).
        let k = DigestKey::from_bytes(std::array::from_fn(|i| i as u8));
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(k.hash(&msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(k.hash(&msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(k.hash(&msg[..15]), 0xa129_ca61_49be_45e5);
        // And the same as std's (deprecated, but SipHash-2-4) implementation.
        for n in 0..64 {
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(k.k0, k.k1);
            std::hash::Hasher::write(&mut h, &msg[..n]);
            assert_eq!(k.hash(&msg[..n]), std::hash::Hasher::finish(&h), "{n}");
        }
    }

    fn tcp() -> Entry {
        let mut e = udp4();
        e.orig.proto = proto::TCP;
        e.reply = e.orig.swapped();
        e.proto = ProtoInfo::Tcp {
            state: 3,
            wscale: [7, 7],
            flags: [0x23, 0x23],
        };
        e
    }

    #[test]
    fn what_counts_and_what_does_not() {
        let k = key();
        let base = tcp();
        let h = entry_hash(&k, &base);
        let same = |f: &dyn Fn(&mut Entry)| {
            let mut e = base;
            f(&mut e);
            entry_hash(&k, &e) == h
        };
        // Drifting or kernel-owned: ignored.
        assert!(same(&|e| e.timeout = 1));
        assert!(same(
            &|e| e.status |= status::CONFIRMED | status::SRC_NAT_DONE
        ));
        assert!(same(&|e| e.status |= status::DYING | status::EXPECTED));
        assert!(same(&|e| e.proto = ProtoInfo::Tcp {
            state: 3,
            wscale: [1, 2],
            flags: [0x08, 0x2b]
        }));
        // Replicated: each one changes the hash.
        assert!(!same(&|e| e.status |= status::ASSURED));
        assert!(!same(&|e| e.status |= status::DST_NAT));
        assert!(!same(&|e| e.status |= status::FIXED_TIMEOUT));
        assert!(!same(&|e| e.mark = 1));
        assert!(!same(&|e| e.zone = Zone::new(3)));
        assert!(!same(&|e| e.zone.dir = Zone::DIR_ORIG));
        assert!(!same(&|e| e.labels = Some([0; 16])));
        assert!(!same(&|e| e.reply.dst[3] ^= 1));
        assert!(!same(&|e| e.orig.src_u[1] ^= 1));
        assert!(!same(&|e| e.proto = ProtoInfo::Tcp {
            state: 4,
            wscale: [7, 7],
            flags: [0x23, 0x23]
        }));
        assert!(!same(&|e| e.proto = ProtoInfo::Sctp {
            state: 3,
            vtag: [0, 0]
        }));
        assert!(!same(&|e| e.orig.family = Family::V6));
        // Keyed: another secret, another hash.
        assert_ne!(entry_hash(&DigestKey::derive(b"other").unwrap(), &base), h);
    }

    #[test]
    fn buckets_depend_on_the_key_only() {
        let k = key();
        let mut e = tcp();
        let b = bucket_of(&k, &e.key(), 256);
        e.mark = 5;
        e.status |= status::ASSURED;
        e.reply.src[0] ^= 1;
        assert_eq!(bucket_of(&k, &e.key(), 256), b);
        assert_eq!(bucket_of(&k, &e.key(), 1), 0);
        assert_eq!(bucket_of(&k, &e.key(), 16), b % 16, "a prefix of the bits");
    }

    fn distinct(entries: Vec<Entry>) -> Vec<Entry> {
        let mut seen = std::collections::HashSet::new();
        entries
            .into_iter()
            .filter(|e| seen.insert(e.key()))
            .collect()
    }

    proptest! {
        /// Order does not matter; removing undoes adding; identical state gives
        /// identical digests.
        #[test]
        fn prop_order_independent(
            entries in proptest::collection::vec(arb_entry(), 0..60),
            seed in any::<u64>(),
        ) {
            let k = key();
            let entries = distinct(entries);
            let d = Digest::compute(&k, &entries, 64).unwrap();
            let mut shuffled = entries.clone();
            let n = shuffled.len().max(1);
            for i in 0..shuffled.len() {
                shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % n);
            }
            // Timeouts drift between the two sides; the digest does not.
            for e in &mut shuffled {
                e.timeout = e.timeout.wrapping_mul(3).wrapping_add(1);
            }
            let d2 = Digest::compute(&k, &shuffled, 64).unwrap();
            prop_assert_eq!(&d, &d2);
            prop_assert!(d.differing(&d2).is_empty());
            let mut inc = Digest::empty(64).unwrap();
            for e in &entries {
                inc.add(&k, e);
            }
            if let Some(e) = entries.first() {
                inc.remove(&k, e);
                inc.add(&k, e);
            }
            prop_assert_eq!(&inc, &d);
            for e in &entries {
                inc.remove(&k, e);
            }
            prop_assert_eq!(inc, Digest::empty(64).unwrap());
        }

        /// One changed, added or removed entry: exactly its bucket differs.
        #[test]
        fn prop_one_change_one_bucket(
            entries in proptest::collection::vec(arb_entry(), 1..60),
            which in any::<usize>(),
            change in 0u8..4,
        ) {
            let k = key();
            let entries = distinct(entries);
            let a = Digest::compute(&k, &entries, 256).unwrap();
            let mut other = entries.clone();
            let i = which % other.len();
            let target = other[i];
            match change {
                0 => other[i].mark ^= 0x8000_0000,
                1 => other[i].status ^= status::ASSURED,
                2 => { other.remove(i); }
                _ => other[i].labels = Some([0xab; 16]),
            }
            if change == 3 && target.labels == Some([0xab; 16]) {
                return Ok(());
            }
            let b = Digest::compute(&k, &other, 256).unwrap();
            prop_assert_eq!(a.differing(&b), vec![bucket_of(&k, &target.key(), 256)]);
            prop_assert_eq!(b.differing(&a), a.differing(&b));
        }
    }

    #[test]
    fn differing_with_another_bucket_count_is_everything() {
        let a = Digest::empty(16).unwrap();
        let b = Digest::empty(32).unwrap();
        assert_eq!(a.differing(&b), (0..16).collect::<Vec<_>>());
        assert_eq!(Digest::empty(0), Err(DigestError::Buckets(0)));
        assert_eq!(Digest::empty(4096), Err(DigestError::Buckets(4096)));
        assert_eq!(Digest::empty(100), Err(DigestError::Buckets(100)));
        assert!(Digest::empty(MAX_BUCKETS).is_ok());
    }

    #[test]
    fn chunks_reassemble_in_any_order() {
        let k = key();
        let mut rng = 0x1234_5678_u64;
        let entries: Vec<Entry> = (0..500)
            .map(|i| {
                let mut e = tcp();
                e.orig.src_u = (i as u16).to_be_bytes();
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                e.mark = (rng >> 33) as u32;
                e
            })
            .collect();
        let d = Digest::compute(&k, &entries, 256).unwrap();
        assert_eq!(d.entries(), 500);
        let key = crate::sync::SyncKey::derive(b"s").unwrap();
        let mut sender = crate::sync::Sender::new(
            crate::sync::SenderConfig::new(1, 1),
            key,
            std::time::Instant::now(),
        )
        .unwrap();
        for c in d.chunks(42, sender.max_datagram()) {
            sender.queue(c);
        }
        let dgs: Vec<Vec<u8>> = sender.ready().map(<[u8]>::to_vec).collect();
        assert_eq!(dgs.len(), 2, "2 KiB in two 1472-byte datagrams");
        assert!(dgs.iter().all(|d| d.len() <= 1472));
        let mut asm = DigestAssembly::default();
        let mut got = None;
        for dg in dgs.iter().rev().chain(dgs.iter()) {
            let dg = Datagram::parse(dg).unwrap();
            let Message::Digest(c) = dg.message().unwrap() else {
                panic!()
            };
            if let Some(done) = asm.add(7, &c) {
                got = Some(done);
                break;
            }
        }
        assert_eq!(got, Some((42, d.clone())));
        // Small datagrams: more, smaller chunks.
        assert_eq!(
            d.chunks(1, 512).count(),
            256usize.div_ceil((512 - 48 - 16) / 8)
        );
        // A chunk of another digest starts over.
        let mut asm = DigestAssembly::default();
        let mut dgs = Vec::new();
        for id in [1, 2] {
            let mut buf = vec![0u8; 1500];
            for c in d.chunks(id, 1472) {
                let (n, count) = c.encode(&mut buf);
                dgs.push((id, buf[..n].to_vec(), count));
            }
        }
        let chunk = |i: usize| {
            let (_, b, count) = &dgs[i];
            match Message::decode(crate::sync::MsgType::Digest, *count, b).unwrap() {
                Message::Digest(c) => c,
                _ => panic!(),
            }
        };
        assert_eq!(asm.add(7, &chunk(0)), None);
        assert_eq!(asm.add(7, &chunk(3)), None, "id 2, second half");
        assert_eq!(asm.add(8, &chunk(2)), None, "another node");
        assert_eq!(asm.add(7, &chunk(3)), None);
        assert_eq!(asm.add(7, &chunk(2)).map(|(id, _)| id), Some(2));
    }
}
