//! The heartbeat datagram: what a node says about itself every interval, and the codec.
//!
//! One fixed-size UDP datagram (68 bytes), all integers big-endian:
//!
//! ```text
//! offset size field        notes
//!      0    4 magic        b"HAHB" (sync uses b"HSYN": the two never parse as each other)
//!      4    1 version      1
//!      5    1 role         1 BACKUP, 2 PRIMARY, 3 FAULT
//!      6    1 priority     0..=255, lower wins
//!      7    1 key_id       which ring key signed it (sync::auth key id)
//!      8    4 node         sender node id, non-zero
//!     12    4 epoch        random per agent start, non-zero
//!     16    8 seq          per (node, epoch), starts at 1, +1 per heartbeat
//!     24    1 flags        bit 0 HEARS_PEER, 1 WANTS_FAILBACK, 2 PROMOTED, 3 STARTING
//!     25    1 demotion     bit 0 SYNC_LINK_DOWN, 1 MONITOR_DOWN, 2 NOT_SYNCED, 3 MAINTENANCE
//!     26    2 reserved     must be 0
//!     28    4 interval_us  the sender's heartbeat interval, 1 ms ..= 60 s
//!     32    4 promote_gen  highest operator-promotion generation the sender knows
//!     36    4 peer_node    echo: the node the sender hears (0 = none yet)
//!     40    4 peer_epoch   echo: that node's epoch (0 iff peer_node is 0)
//!     44    8 peer_seq     echo: highest seq accepted from it (0 iff peer_node is 0)
//!     52   16 tag          HMAC-SHA256(bytes 0..52) with the heartbeat key, first 16 bytes
//! ```
//!
//! Unknown flag / demotion bits and non-zero reserved bytes are refused rather than
//! ignored: new meaning needs a new version, so an old node never misreads a newer
//! one's state as something milder. The key is derived from the shared secret with the
//! purpose [`HEARTBEAT_PURPOSE`], so a sync datagram can never verify as a heartbeat.

use std::time::Duration;

use zerocopy::byteorder::network_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::reject::Reject;
use crate::sync::auth::{KeyError, KeyRing, SyncKey, TAG_LEN, derive_key};

/// `b"HAHB"`.
pub const MAGIC: [u8; 4] = *b"HAHB";
/// The heartbeat version this build speaks.
pub const VERSION: u8 = 1;
/// Signed part (everything before the tag).
pub const HEADER_LEN: usize = 52;
/// A whole heartbeat datagram.
pub const HEARTBEAT_LEN: usize = HEADER_LEN + TAG_LEN;
/// Derivation label of the heartbeat key (sync uses `b"hasync sync v1"`).
pub const HEARTBEAT_PURPOSE: &[u8] = b"hasync heartbeat v1";
/// Intervals a heartbeat may advertise. The config allows (0, 60] s and
/// interval x threshold >= 0.3 s with threshold <= 100, so 3 ms is the real floor.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Standby: holds no virtual addresses, ready to take over.
    Backup = 1,
    /// Active: holds the virtual addresses and forwards traffic.
    Primary = 2,
    /// Its own health forbids serving (a monitored interface is down).
    Fault = 3,
}

impl Role {
    pub fn from_wire(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Backup),
            2 => Some(Role::Primary),
            3 => Some(Role::Fault),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Backup => "backup",
            Role::Primary => "primary",
            Role::Fault => "fault",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! bitset {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $flag:ident = $bit:expr, $label:literal;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name(u8);

        impl $name {
            $($(#[$fm])* pub const $flag: $name = $name($bit);)*
            /// Every defined bit.
            pub const ALL: $name = $name(0 $(| $bit)*);
            const NAMES: &[($name, &'static str)] = &[$(($name::$flag, $label)),*];

            pub const fn empty() -> $name {
                $name(0)
            }
            pub const fn bits(self) -> u8 {
                self.0
            }
            /// `None` if an undefined bit is set.
            pub const fn from_bits(bits: u8) -> Option<$name> {
                if bits & !Self::ALL.0 == 0 { Some($name(bits)) } else { None }
            }
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
            /// All bits of `other` are set.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
            /// Some bit of `other` is set.
            pub const fn intersects(self, other: $name) -> bool {
                self.0 & other.0 != 0
            }
            pub const fn union(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
            pub const fn intersection(self, other: $name) -> $name {
                $name(self.0 & other.0)
            }
            pub fn set(&mut self, other: $name, on: bool) {
                if on { self.0 |= other.0 } else { self.0 &= !other.0 }
            }
            /// Names of the set bits, for logs and status.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::NAMES.iter().filter(move |(f, _)| self.contains(*f)).map(|(_, n)| *n)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.is_empty() {
                    return f.write_str("none");
                }
                for (i, n) in self.names().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(n)?;
                }
                Ok(())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }
    };
}

bitset! {
    /// Why a node should not serve (CARP's demotion counter, as reasons).
    Demotion {
        /// The conntrack sync link is down: the node's state is going stale.
        SYNC_LINK_DOWN = 1, "sync-link-down";
        /// A monitored interface is down: the node cannot serve at all (FAULT).
        MONITOR_DOWN = 2, "monitor-down";
        /// The bulk sync after (re)joining has not finished.
        NOT_SYNCED = 4, "not-synced";
        /// An operator put the node in maintenance.
        MAINTENANCE = 8, "maintenance";
    }
}

impl Demotion {
    /// Reasons that forbid serving altogether.
    pub const INELIGIBLE: Demotion = Demotion(2 | 8);
    /// Reasons that only rank the node below a healthy peer.
    pub const SOFT: Demotion = Demotion(1 | 4);
}

bitset! {
    /// Heartbeat flags.
    Flags {
        /// The sender considers its peer (named by the echo fields) alive.
        HEARS_PEER = 1, "hears-peer";
        /// The sender is the preferred node, has been healthy and in contact for
        /// `failback_delay`, and asks the current primary to hand the role back.
        WANTS_FAILBACK = 2, "wants-failback";
        /// An operator promoted the sender (generation in `promote_gen`).
        PROMOTED = 4, "promoted";
        /// The sender is still in its startup listen period.
        STARTING = 8, "starting";
    }
}

/// The sender's view of its peer: the last heartbeat it accepted from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Echo {
    pub node: u32,
    pub epoch: u32,
    pub seq: u64,
}

/// A decoded (or to-be-encoded) heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    pub node: u32,
    pub epoch: u32,
    pub seq: u64,
    pub role: Role,
    pub priority: u8,
    pub flags: Flags,
    pub demotion: Demotion,
    pub promote_gen: u32,
    /// Whole microseconds on the wire.
    pub interval: Duration,
    pub peer: Option<Echo>,
}

/// The on-wire layout, read and written in place with `zerocopy`.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
struct Wire {
    magic: [u8; 4],
    version: u8,
    role: u8,
    priority: u8,
    key_id: u8,
    node: U32,
    epoch: U32,
    seq: U64,
    flags: u8,
    demotion: u8,
    reserved: [u8; 2],
    interval_us: U32,
    promote_gen: U32,
    peer_node: U32,
    peer_epoch: U32,
    peer_seq: U64,
}

const _: () = assert!(size_of::<Wire>() == HEADER_LEN);

/// The heartbeat signing key for the configured secret.
pub fn heartbeat_key(secret: &[u8]) -> Result<SyncKey, KeyError> {
    Ok(SyncKey::from_key(&derive_key(secret, HEARTBEAT_PURPOSE)?))
}

/// The heartbeat key ring: the first secret signs, the second (rotation) also verifies.
pub fn heartbeat_keys(primary: &[u8], secondary: Option<&[u8]>) -> Result<KeyRing, KeyError> {
    Ok(KeyRing::new(
        heartbeat_key(primary)?,
        secondary.map(heartbeat_key).transpose()?,
    ))
}

fn interval_us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Serialises and signs `hb`. Fields are written as given; a heartbeat the decoder
/// would refuse (zero node, interval out of range, ...) is the caller's bug.
pub fn encode(hb: &Heartbeat, key: &SyncKey) -> [u8; HEARTBEAT_LEN] {
    let echo = hb.peer.unwrap_or(Echo {
        node: 0,
        epoch: 0,
        seq: 0,
    });
    let w = Wire {
        magic: MAGIC,
        version: VERSION,
        role: hb.role as u8,
        priority: hb.priority,
        key_id: key.id(),
        node: U32::new(hb.node),
        epoch: U32::new(hb.epoch),
        seq: U64::new(hb.seq),
        flags: hb.flags.bits(),
        demotion: hb.demotion.bits(),
        reserved: [0; 2],
        interval_us: U32::new(interval_us(hb.interval)),
        promote_gen: U32::new(hb.promote_gen),
        peer_node: U32::new(echo.node),
        peer_epoch: U32::new(echo.epoch),
        peer_seq: U64::new(echo.seq),
    };
    let mut out = [0u8; HEARTBEAT_LEN];
    out[..HEADER_LEN].copy_from_slice(w.as_bytes());
    let tag = key.tag(&out[..HEADER_LEN]);
    out[HEADER_LEN..].copy_from_slice(&tag);
    out
}

/// A structurally valid heartbeat whose tag has not been checked yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unverified<'a> {
    pub heartbeat: Heartbeat,
    pub key_id: u8,
    signed: &'a [u8],
    tag: &'a [u8; TAG_LEN],
}

impl Unverified<'_> {
    /// Checks the tag against the ring.
    pub fn verify(&self, keys: &KeyRing) -> Result<Heartbeat, Reject> {
        if keys.verify(self.key_id, self.signed, self.tag) {
            Ok(self.heartbeat)
        } else {
            Err(Reject::AuthFailed)
        }
    }
}

/// Stateless checks, cheapest first; no key needed (the fuzzer's raw mode uses it).
pub fn parse(bytes: &[u8]) -> Result<Unverified<'_>, Reject> {
    let len = bytes.len();
    if let Some(magic) = bytes.get(..4)
        && magic != MAGIC
    {
        return Err(Reject::BadMagic);
    }
    // The version comes before the length: a later version may have another size.
    match bytes.get(4) {
        None => return Err(Reject::Truncated { len }),
        Some(&v) if v != VERSION => return Err(Reject::UnsupportedVersion(v)),
        Some(_) => {}
    }
    if len < HEARTBEAT_LEN {
        return Err(Reject::Truncated { len });
    }
    if len > HEARTBEAT_LEN {
        return Err(Reject::Oversized { len });
    }
    let (signed, tag) = bytes.split_at(HEADER_LEN);
    let w = Wire::read_from_bytes(signed).map_err(|_| Reject::Truncated { len })?;
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| Reject::Truncated { len })?;
    let heartbeat = fields(&w)?;
    Ok(Unverified {
        heartbeat,
        key_id: w.key_id,
        signed,
        tag,
    })
}

/// [`parse`] then verify: a heartbeat that is well formed and genuine (but maybe a
/// replay; that is the receiver's job).
pub fn decode(bytes: &[u8], keys: &KeyRing) -> Result<Heartbeat, Reject> {
    parse(bytes)?.verify(keys)
}

fn fields(w: &Wire) -> Result<Heartbeat, Reject> {
    let bad = Reject::BadHeader;
    let role = Role::from_wire(w.role).ok_or(bad("unknown role"))?;
    let flags = Flags::from_bits(w.flags).ok_or(bad("unknown flag bits"))?;
    let demotion = Demotion::from_bits(w.demotion).ok_or(bad("unknown demotion bits"))?;
    if w.reserved != [0; 2] {
        return Err(bad("reserved bytes not zero"));
    }
    let (node, epoch, seq) = (w.node.get(), w.epoch.get(), w.seq.get());
    if node == 0 || epoch == 0 || seq == 0 {
        return Err(bad("zero node, epoch or sequence"));
    }
    let interval = Duration::from_micros(u64::from(w.interval_us.get()));
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(bad("interval out of range"));
    }
    let (pn, pe, ps) = (w.peer_node.get(), w.peer_epoch.get(), w.peer_seq.get());
    let peer = match (pn, pe, ps) {
        (0, 0, 0) => None,
        (0, _, _) => return Err(bad("echo without a node")),
        (_, 0, _) | (_, _, 0) => return Err(bad("echo with zero epoch or sequence")),
        _ => Some(Echo {
            node: pn,
            epoch: pe,
            seq: ps,
        }),
    };
    if flags.contains(Flags::HEARS_PEER) && peer.is_none() {
        return Err(bad("hears a peer it does not name"));
    }
    Ok(Heartbeat {
        node,
        epoch,
        seq,
        role,
        priority: w.priority,
        flags,
        demotion,
        promote_gen: w.promote_gen.get(),
        interval,
        peer,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Heartbeat {
        Heartbeat {
            node: 0x0102_0304,
            epoch: 0xdead_beef,
            seq: 0x1122_3344_5566_7788,
            role: Role::Primary,
            priority: 50,
            flags: Flags::HEARS_PEER.union(Flags::PROMOTED),
            demotion: Demotion::SYNC_LINK_DOWN,
            promote_gen: 7,
            interval: Duration::from_millis(100),
            peer: Some(Echo {
                node: 9,
                epoch: 0x0a0b_0c0d,
                seq: 42,
            }),
        }
    }

    pub(crate) fn key() -> SyncKey {
        heartbeat_key(b"heartbeat test secret").unwrap()
    }

    fn ring() -> KeyRing {
        KeyRing::new(key(), None)
    }

    #[test]
    fn exact_bytes() {
        let k = key();
        let b = encode(&sample(), &k);
        #[rustfmt::skip]
        let expected: [u8; HEADER_LEN] = [
            b'H', b'A', b'H', b'B',         // magic
            1,                              // version
            2,                              // role = PRIMARY
            50,                             // priority
            k.id(),                         // key id
            1, 2, 3, 4,                     // node
            0xde, 0xad, 0xbe, 0xef,         // epoch
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // seq
            0b101,                          // flags: HEARS_PEER | PROMOTED
            0b1,                            // demotion: SYNC_LINK_DOWN
            0, 0,                           // reserved
            0, 0x01, 0x86, 0xa0,            // interval_us = 100_000
            0, 0, 0, 7,                     // promote_gen
            0, 0, 0, 9,                     // peer_node
            0x0a, 0x0b, 0x0c, 0x0d,         // peer_epoch
            0, 0, 0, 0, 0, 0, 0, 42,        // peer_seq
        ];
        assert_eq!(b[..HEADER_LEN], expected);
        assert_eq!(b[HEADER_LEN..], k.tag(&expected));
        assert_eq!(decode(&b, &ring()), Ok(sample()));
    }

    #[test]
    fn distinct_from_sync_key() {
        let sync = SyncKey::derive(b"heartbeat test secret").unwrap();
        let b = encode(&sample(), &sync);
        assert_eq!(decode(&b, &ring()), Err(Reject::AuthFailed));
        assert_eq!(
            decode(&b, &KeyRing::new(sync.clone(), None)),
            Ok(sample()),
            "only the purpose differs"
        );
    }

    /// Re-signs a mutated datagram so the structural checks, not the tag, decide.
    fn resign(mut b: [u8; HEARTBEAT_LEN]) -> [u8; HEARTBEAT_LEN] {
        let tag = key().tag(&b[..HEADER_LEN]);
        b[HEADER_LEN..].copy_from_slice(&tag);
        b
    }

    #[test]
    fn rejection_table() {
        let good = encode(&sample(), &key());
        let other = heartbeat_key(b"another secret").unwrap();
        let set = |off: usize, v: &[u8]| {
            let mut b = good;
            b[off..off + v.len()].copy_from_slice(v);
            resign(b)
        };
        let mut long = good.to_vec();
        long.push(0);
        let mut forged = good;
        forged[HEARTBEAT_LEN - 1] ^= 1;
        let mut flipped = good;
        flipped[6] = 0; // priority 50 -> 0 without re-signing
        let mut bad_magic = good;
        bad_magic[0] = b'X';
        let mut v2 = good;
        v2[4] = 2;
        let mut sync_magic = good;
        sync_magic[..4].copy_from_slice(b"HSYN");
        let bad = Reject::BadHeader;
        let cases: Vec<(&str, Vec<u8>, Reject)> = vec![
            ("empty", vec![], Reject::Truncated { len: 0 }),
            (
                "magic only",
                good[..4].to_vec(),
                Reject::Truncated { len: 4 },
            ),
            ("short magic", b"HA".to_vec(), Reject::Truncated { len: 2 }),
            (
                "no tag",
                good[..HEADER_LEN].to_vec(),
                Reject::Truncated { len: HEADER_LEN },
            ),
            (
                "one short",
                good[..HEARTBEAT_LEN - 1].to_vec(),
                Reject::Truncated {
                    len: HEARTBEAT_LEN - 1,
                },
            ),
            (
                "one long",
                long,
                Reject::Oversized {
                    len: HEARTBEAT_LEN + 1,
                },
            ),
            ("huge", vec![0; 65507], Reject::BadMagic),
            ("bad magic", bad_magic.to_vec(), Reject::BadMagic),
            ("sync magic", sync_magic.to_vec(), Reject::BadMagic),
            ("version 2", v2.to_vec(), Reject::UnsupportedVersion(2)),
            (
                "version 0 short",
                vec![b'H', b'A', b'H', b'B', 0],
                Reject::UnsupportedVersion(0),
            ),
            ("role 0", set(5, &[0]).to_vec(), bad("unknown role")),
            ("role 4", set(5, &[4]).to_vec(), bad("unknown role")),
            (
                "flag bit 4",
                set(24, &[0x10]).to_vec(),
                bad("unknown flag bits"),
            ),
            (
                "demotion bit 7",
                set(25, &[0x80]).to_vec(),
                bad("unknown demotion bits"),
            ),
            (
                "reserved",
                set(27, &[1]).to_vec(),
                bad("reserved bytes not zero"),
            ),
            (
                "node 0",
                set(8, &[0; 4]).to_vec(),
                bad("zero node, epoch or sequence"),
            ),
            (
                "epoch 0",
                set(12, &[0; 4]).to_vec(),
                bad("zero node, epoch or sequence"),
            ),
            (
                "seq 0",
                set(16, &[0; 8]).to_vec(),
                bad("zero node, epoch or sequence"),
            ),
            (
                "interval 0",
                set(28, &[0; 4]).to_vec(),
                bad("interval out of range"),
            ),
            (
                "interval 999us",
                set(28, &999u32.to_be_bytes()).to_vec(),
                bad("interval out of range"),
            ),
            (
                "interval 61s",
                set(28, &61_000_000u32.to_be_bytes()).to_vec(),
                bad("interval out of range"),
            ),
            (
                "echo no node",
                set(36, &[0; 4]).to_vec(),
                bad("echo without a node"),
            ),
            (
                "echo epoch 0",
                set(40, &[0; 4]).to_vec(),
                bad("echo with zero epoch or sequence"),
            ),
            (
                "echo seq 0",
                set(44, &[0; 8]).to_vec(),
                bad("echo with zero epoch or sequence"),
            ),
            (
                "hears nobody",
                set(36, &[0; 16]).to_vec(),
                bad("hears a peer it does not name"),
            ),
            ("forged tag", forged.to_vec(), Reject::AuthFailed),
            ("forged field", flipped.to_vec(), Reject::AuthFailed),
            (
                "wrong key",
                encode(&sample(), &other).to_vec(),
                Reject::AuthFailed,
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(&bytes, &ring()), Err(want), "{name}");
        }
        // Boundary intervals are fine.
        assert!(decode(&set(28, &1000u32.to_be_bytes()), &ring()).is_ok());
        assert!(decode(&set(28, &60_000_000u32.to_be_bytes()), &ring()).is_ok());
        // No echo at all is fine when HEARS_PEER is clear.
        let mut lone = sample();
        lone.peer = None;
        lone.flags = Flags::empty();
        assert_eq!(decode(&encode(&lone, &key()), &ring()), Ok(lone));
    }

    #[test]
    fn rotation_ring_accepts_both_keys() {
        let old = heartbeat_key(b"old secret").unwrap();
        let ring = heartbeat_keys(b"new secret", Some(b"old secret")).unwrap();
        assert!(decode(&encode(&sample(), &old), &ring).is_ok());
        assert!(decode(&encode(&sample(), ring.primary()), &ring).is_ok());
        assert!(heartbeat_keys(b"", None).is_err());
    }

    #[test]
    fn bitset_display() {
        assert_eq!(Demotion::empty().to_string(), "none");
        assert_eq!(
            Demotion::SYNC_LINK_DOWN
                .union(Demotion::MAINTENANCE)
                .to_string(),
            "sync-link-down,maintenance"
        );
        assert_eq!(Demotion::ALL.bits(), 0x0f);
        assert_eq!(Flags::ALL.bits(), 0x0f);
        assert_eq!(Demotion::INELIGIBLE.union(Demotion::SOFT), Demotion::ALL);
        assert!(Demotion::INELIGIBLE.intersection(Demotion::SOFT).is_empty());
        assert_eq!(Demotion::from_bits(0x10), None);
    }

    pub(crate) fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
        (
            (1u32.., 1u32.., 1u64.., 1u8..=3, any::<u8>()),
            (0u8..16, 0u8..16, any::<u32>(), 1_000u32..=60_000_000),
            proptest::option::of((1u32.., 1u32.., 1u64..)),
        )
            .prop_map(
                |((node, epoch, seq, role, priority), (f, d, gen_, us), echo)| {
                    let mut flags = Flags::from_bits(f).unwrap_or_default();
                    let peer = echo.map(|(node, epoch, seq)| Echo { node, epoch, seq });
                    if peer.is_none() {
                        flags.set(Flags::HEARS_PEER, false);
                    }
                    Heartbeat {
                        node,
                        epoch,
                        seq,
                        role: Role::from_wire(role).unwrap_or(Role::Backup),
                        priority,
                        flags,
                        demotion: Demotion::from_bits(d).unwrap_or_default(),
                        promote_gen: gen_,
                        interval: Duration::from_micros(u64::from(us)),
                        peer,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn prop_roundtrip(hb in arb_heartbeat()) {
            let b = encode(&hb, &key());
            prop_assert_eq!(decode(&b, &ring()), Ok(hb));
        }

        #[test]
        fn prop_any_single_bit_flip_is_refused(hb in arb_heartbeat(), bit in 0usize..HEARTBEAT_LEN * 8) {
            let mut b = encode(&hb, &key());
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&b, &ring()).is_err());
        }

        #[test]
        fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, &ring());
        }
    }
}
