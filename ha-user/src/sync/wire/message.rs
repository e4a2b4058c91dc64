//! Message types and the payloads of the control messages.
//!
//! ```text
//! type             payload (big-endian)                                    count
//! 1 DATA           records (see record.rs)                                 records
//! 2 ALIVE          retained_from u64, interval_ms u32, reserved u32 (16 B) 0
//! 3 NACK           node u32, epoch u32, count × (first u64, last u64)      ranges
//! 4 HELLO          min_version u8, max_version u8, reserved u16,
//!                  features u32 (8 B)                                      0
//! 5 RESYNC_REQUEST target u32 (0 = every peer), request_id u32 (8 B)       0
//! 6 RESYNC_DONE    requester u32, request_id u32, records u64 (16 B)       0
//! 7..=10           digest and repair, see check.rs
//! ```
//!
//! Fixed-size payloads must have exactly their size and zero reserved fields. HELLO's
//! header and payload layout is frozen across versions so any two versions can
//! negotiate: a HELLO is always framed with a version-1 header (see `sync::hello`).

use std::ops::RangeInclusive;

use super::check::{self, BucketSet, DigestChunk, DigestRequest, RepairDone, RepairRequest};
use super::record::{PayloadError, Records};

/// The message type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// A batch of conntrack changes.
    Data = 1,
    /// Periodic liveness; its sequence number exposes tail loss.
    Alive = 2,
    /// Sequence ranges a receiver is missing.
    Nack = 3,
    /// Version negotiation.
    Hello = 4,
    /// Ask a peer for a full-table dump.
    ResyncRequest = 5,
    /// A full-table dump is complete.
    ResyncDone = 6,
    /// Ask a peer for a digest of its table.
    DigestRequest = 7,
    /// A chunk of a table digest (per-bucket hashes).
    Digest = 8,
    /// Ask a peer for the full content of some buckets.
    RepairRequest = 9,
    /// The content of the requested buckets was sent in full.
    RepairDone = 10,
}

impl MsgType {
    /// Every type, in wire order.
    pub const ALL: [MsgType; 10] = [
        MsgType::Data,
        MsgType::Alive,
        MsgType::Nack,
        MsgType::Hello,
        MsgType::ResyncRequest,
        MsgType::ResyncDone,
        MsgType::DigestRequest,
        MsgType::Digest,
        MsgType::RepairRequest,
        MsgType::RepairDone,
    ];

    pub fn from_u8(t: u8) -> Option<MsgType> {
        Some(match t {
            1 => MsgType::Data,
            2 => MsgType::Alive,
            3 => MsgType::Nack,
            4 => MsgType::Hello,
            5 => MsgType::ResyncRequest,
            6 => MsgType::ResyncDone,
            7 => MsgType::DigestRequest,
            8 => MsgType::Digest,
            9 => MsgType::RepairRequest,
            10 => MsgType::RepairDone,
            _ => return None,
        })
    }
}

/// ALIVE payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alive {
    /// The oldest sequence the sender can still retransmit (0: none). A receiver missing
    /// anything older needs a resync, not a NACK.
    pub retained_from: u64,
    /// The sender's ALIVE interval, so receivers can judge silence.
    pub interval_ms: u32,
}

/// HELLO payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u8,
    pub max_version: u8,
    /// Feature bits (none defined in v1).
    pub features: u32,
}

/// RESYNC_REQUEST payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncRequest {
    /// The node whose table is wanted; 0 asks every peer.
    pub target: u32,
    pub request_id: u32,
}

/// RESYNC_DONE payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncDone {
    /// The node that asked.
    pub requester: u32,
    pub request_id: u32,
    /// How many records the dump held, so the requester can tell it is complete.
    pub records: u64,
}

/// A received NACK: which sender epoch it addresses and the missing ranges (validated
/// on decode; iterated without allocating).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nack<'a> {
    pub node: u32,
    pub epoch: u32,
    ranges: &'a [u8],
}

pub(crate) const RANGE_LEN: usize = 16;
pub(crate) const NACK_FIXED: usize = 8;

impl<'a> Nack<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len() / RANGE_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> impl ExactSizeIterator<Item = RangeInclusive<u64>> + 'a {
        self.ranges.chunks_exact(RANGE_LEN).map(|c| {
            let (a, b) = c.split_at(8);
            u64_at(a)..=u64_at(b)
        })
    }
}

/// A decoded message. DATA records are decoded on demand ([`Records::decode_into`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Data(Records<'a>),
    Alive(Alive),
    Nack(Nack<'a>),
    Hello(Hello),
    ResyncRequest(ResyncRequest),
    ResyncDone(ResyncDone),
    DigestRequest(DigestRequest),
    Digest(DigestChunk<'a>),
    RepairRequest(RepairRequest<'a>),
    RepairDone(RepairDone<'a>),
}

pub(crate) fn u64_at(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn err(offset: usize, what: &'static str) -> PayloadError {
    PayloadError { offset, what }
}

fn exact(payload: &[u8], len: usize, count: u16) -> Result<(), PayloadError> {
    if count != 0 {
        return Err(err(0, "count must be 0 for this message type"));
    }
    if payload.len() != len {
        return Err(err(payload.len().min(len), "wrong payload length"));
    }
    Ok(())
}

pub(crate) fn zero(payload: &[u8], at: usize, len: usize) -> Result<(), PayloadError> {
    if payload[at..at + len].iter().any(|&b| b != 0) {
        return Err(err(at, "reserved field not zero"));
    }
    Ok(())
}

impl<'a> Message<'a> {
    /// Decodes a payload of type `ty` with the header's `count`. Offsets in errors are
    /// relative to the payload. DATA records are only checked by `decode_into`.
    pub fn decode(ty: MsgType, count: u16, p: &'a [u8]) -> Result<Message<'a>, PayloadError> {
        Ok(match ty {
            MsgType::Data => Message::Data(Records::new(p, count)),
            MsgType::Alive => {
                exact(p, 16, count)?;
                zero(p, 12, 4)?;
                Message::Alive(Alive {
                    retained_from: u64_at(p),
                    interval_ms: u32_at(p, 8),
                })
            }
            MsgType::Nack => {
                let want = NACK_FIXED + usize::from(count) * RANGE_LEN;
                if p.len() != want {
                    return Err(err(p.len().min(want), "NACK length does not match count"));
                }
                let ranges = &p[NACK_FIXED..];
                for (i, c) in ranges.chunks_exact(RANGE_LEN).enumerate() {
                    let (first, last) = (u64_at(c), u64_at(&c[8..]));
                    if first == 0 || first > last {
                        return Err(err(NACK_FIXED + i * RANGE_LEN, "invalid NACK range"));
                    }
                }
                Message::Nack(Nack {
                    node: u32_at(p, 0),
                    epoch: u32_at(p, 4),
                    ranges,
                })
            }
            MsgType::Hello => {
                exact(p, 8, count)?;
                zero(p, 2, 2)?;
                let (min_version, max_version) = (p[0], p[1]);
                if min_version == 0 || min_version > max_version {
                    return Err(err(0, "invalid version range"));
                }
                Message::Hello(Hello {
                    min_version,
                    max_version,
                    features: u32_at(p, 4),
                })
            }
            MsgType::ResyncRequest => {
                exact(p, 8, count)?;
                Message::ResyncRequest(ResyncRequest {
                    target: u32_at(p, 0),
                    request_id: u32_at(p, 4),
                })
            }
            MsgType::ResyncDone => {
                exact(p, 16, count)?;
                Message::ResyncDone(ResyncDone {
                    requester: u32_at(p, 0),
                    request_id: u32_at(p, 4),
                    records: u64_at(&p[8..]),
                })
            }
            MsgType::DigestRequest => {
                Message::DigestRequest(check::decode_digest_request(count, p)?)
            }
            MsgType::Digest => Message::Digest(check::decode_digest(count, p)?),
            MsgType::RepairRequest => {
                Message::RepairRequest(check::decode_repair_request(count, p)?)
            }
            MsgType::RepairDone => Message::RepairDone(check::decode_repair_done(count, p)?),
        })
    }

    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Data(_) => MsgType::Data,
            Message::Alive(_) => MsgType::Alive,
            Message::Nack(_) => MsgType::Nack,
            Message::Hello(_) => MsgType::Hello,
            Message::ResyncRequest(_) => MsgType::ResyncRequest,
            Message::ResyncDone(_) => MsgType::ResyncDone,
            Message::DigestRequest(_) => MsgType::DigestRequest,
            Message::Digest(_) => MsgType::Digest,
            Message::RepairRequest(_) => MsgType::RepairRequest,
            Message::RepairDone(_) => MsgType::RepairDone,
        }
    }
}

/// A control message to send (everything but DATA, which the batcher builds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control<'a> {
    Alive(Alive),
    /// Ranges that do not fit the datagram are left out (the first ones are kept).
    /// Empty or inverted ranges and ranges starting at 0 are skipped.
    Nack {
        node: u32,
        epoch: u32,
        ranges: &'a [RangeInclusive<u64>],
    },
    Hello(Hello),
    ResyncRequest(ResyncRequest),
    ResyncDone(ResyncDone),
    DigestRequest(DigestRequest),
    /// One chunk: as many of `hashes` (buckets `first..`) as fit; the header count
    /// says how many went (see `sync::digest::Digest::chunks`, which sizes them).
    Digest {
        request_id: u32,
        buckets: u16,
        first: u16,
        entries: u64,
        hashes: &'a [u64],
    },
    RepairRequest {
        target: u32,
        request_id: u32,
        set: &'a BucketSet,
    },
    RepairDone {
        requester: u32,
        request_id: u32,
        records: u64,
        set: &'a BucketSet,
    },
}

impl Control<'_> {
    pub fn msg_type(&self) -> MsgType {
        match self {
            Control::Alive(_) => MsgType::Alive,
            Control::Nack { .. } => MsgType::Nack,
            Control::Hello(_) => MsgType::Hello,
            Control::ResyncRequest(_) => MsgType::ResyncRequest,
            Control::ResyncDone(_) => MsgType::ResyncDone,
            Control::DigestRequest(_) => MsgType::DigestRequest,
            Control::Digest { .. } => MsgType::Digest,
            Control::RepairRequest { .. } => MsgType::RepairRequest,
            Control::RepairDone { .. } => MsgType::RepairDone,
        }
    }

    /// Writes the payload into `out` (at least 16 bytes; 276 for the repair messages,
    /// which every configurable datagram size leaves), returning its length and the
    /// header count.
    pub fn encode(&self, out: &mut [u8]) -> (usize, u16) {
        let put = |out: &mut [u8], at: usize, b: &[u8]| out[at..at + b.len()].copy_from_slice(b);
        match *self {
            Control::Alive(a) => {
                put(out, 0, &a.retained_from.to_be_bytes());
                put(out, 8, &a.interval_ms.to_be_bytes());
                put(out, 12, &[0; 4]);
                (16, 0)
            }
            Control::Nack {
                node,
                epoch,
                ranges,
            } => {
                put(out, 0, &node.to_be_bytes());
                put(out, 4, &epoch.to_be_bytes());
                let room = out.len().saturating_sub(NACK_FIXED) / RANGE_LEN;
                let room = room.min(usize::from(u16::MAX));
                let mut n = 0;
                for r in ranges
                    .iter()
                    .filter(|r| *r.start() != 0 && r.start() <= r.end())
                    .take(room)
                {
                    let at = NACK_FIXED + n * RANGE_LEN;
                    put(out, at, &r.start().to_be_bytes());
                    put(out, at + 8, &r.end().to_be_bytes());
                    n += 1;
                }
                (NACK_FIXED + n * RANGE_LEN, n as u16)
            }
            Control::Hello(h) => {
                put(out, 0, &[h.min_version, h.max_version, 0, 0]);
                put(out, 4, &h.features.to_be_bytes());
                (8, 0)
            }
            Control::ResyncRequest(r) => {
                put(out, 0, &r.target.to_be_bytes());
                put(out, 4, &r.request_id.to_be_bytes());
                (8, 0)
            }
            Control::ResyncDone(d) => {
                put(out, 0, &d.requester.to_be_bytes());
                put(out, 4, &d.request_id.to_be_bytes());
                put(out, 8, &d.records.to_be_bytes());
                (16, 0)
            }
            Control::DigestRequest(r) => check::encode_digest_request(&r, out),
            Control::Digest {
                request_id,
                buckets,
                first,
                entries,
                hashes,
            } => check::encode_digest(request_id, buckets, first, entries, hashes, out),
            Control::RepairRequest {
                target,
                request_id,
                set,
            } => check::encode_repair(target, request_id, set.buckets(), None, set.bitmap(), out),
            Control::RepairDone {
                requester,
                request_id,
                records,
                set,
            } => check::encode_repair(
                requester,
                request_id,
                set.buckets(),
                Some(records),
                set.bitmap(),
                out,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes, decodes, and checks the decoded message equals the original.
    fn roundtrip(c: Control<'_>) -> (Vec<u8>, u16) {
        let mut buf = vec![0u8; 1500];
        let (len, count) = c.encode(&mut buf);
        buf.truncate(len);
        let m = Message::decode(c.msg_type(), count, &buf).unwrap();
        assert_eq!(m.msg_type(), c.msg_type());
        match (c, m) {
            (Control::Alive(a), Message::Alive(b)) => assert_eq!(a, b),
            (Control::Hello(a), Message::Hello(b)) => assert_eq!(a, b),
            (Control::ResyncRequest(a), Message::ResyncRequest(b)) => assert_eq!(a, b),
            (Control::ResyncDone(a), Message::ResyncDone(b)) => assert_eq!(a, b),
            (Control::DigestRequest(a), Message::DigestRequest(b)) => assert_eq!(a, b),
            (Control::Nack { node, epoch, .. }, Message::Nack(n)) => {
                assert_eq!((node, epoch), (n.node, n.epoch));
            }
            (
                Control::Digest {
                    request_id,
                    buckets,
                    first,
                    entries,
                    hashes,
                },
                Message::Digest(d),
            ) => {
                assert_eq!(
                    (request_id, buckets, first, entries),
                    (d.request_id, d.buckets, d.first, d.entries)
                );
                assert_eq!(d.hashes().collect::<Vec<_>>(), hashes[..d.len()]);
            }
            (
                Control::RepairRequest {
                    target,
                    request_id,
                    set,
                },
                Message::RepairRequest(r),
            ) => {
                assert_eq!((target, request_id), (r.target, r.request_id));
                assert_eq!(
                    BucketSet::from_bitmap(r.buckets, r.bitmap()).as_ref(),
                    Some(set)
                );
            }
            (
                Control::RepairDone {
                    requester,
                    request_id,
                    records,
                    set,
                },
                Message::RepairDone(r),
            ) => {
                assert_eq!(
                    (requester, request_id, records),
                    (r.requester, r.request_id, r.records)
                );
                assert_eq!(
                    BucketSet::from_bitmap(r.buckets, r.bitmap()).as_ref(),
                    Some(set)
                );
            }
            other => panic!("mismatch {other:?}"),
        }
        (buf, count)
    }

    #[test]
    fn control_roundtrips() {
        roundtrip(Control::Alive(Alive {
            retained_from: 77,
            interval_ms: 1000,
        }));
        roundtrip(Control::Hello(Hello {
            min_version: 1,
            max_version: 3,
            features: 5,
        }));
        roundtrip(Control::ResyncRequest(ResyncRequest {
            target: 0,
            request_id: 9,
        }));
        roundtrip(Control::ResyncDone(ResyncDone {
            requester: 2,
            request_id: 9,
            records: 1 << 40,
        }));
        #[allow(clippy::reversed_empty_ranges)]
        let ranges = [3..=5, 0..=1, 9..=9, 12..=11, 20..=30];
        let (buf, count) = roundtrip(Control::Nack {
            node: 1,
            epoch: 2,
            ranges: &ranges,
        });
        assert_eq!(count, 3);
        let Ok(Message::Nack(n)) = Message::decode(MsgType::Nack, count, &buf) else {
            panic!()
        };
        assert_eq!(n.ranges().collect::<Vec<_>>(), vec![3..=5, 9..=9, 20..=30]);
    }

    #[test]
    fn check_messages_exact_bytes() {
        let (b, count) = roundtrip(Control::DigestRequest(DigestRequest {
            target: 2,
            request_id: 7,
            buckets: 256,
        }));
        assert_eq!((b, count), (vec![0, 0, 0, 2, 0, 0, 0, 7, 1, 0, 0, 0], 0));
        let (b, count) = roundtrip(Control::Digest {
            request_id: 7,
            buckets: 4,
            first: 2,
            entries: 3,
            hashes: &[0x0102_0304_0506_0708, 9],
        });
        #[rustfmt::skip]
        assert_eq!(b, vec![
            0, 0, 0, 7,  0, 4,  0, 2,  0, 0, 0, 0, 0, 0, 0, 3,
            1, 2, 3, 4, 5, 6, 7, 8,
            0, 0, 0, 0, 0, 0, 0, 9,
        ]);
        assert_eq!(count, 2);
        let set = BucketSet::from_ids(16, [0, 9, 15]).unwrap();
        let (b, _) = roundtrip(Control::RepairRequest {
            target: 1,
            request_id: 7,
            set: &set,
        });
        assert_eq!(
            b,
            vec![0, 0, 0, 1, 0, 0, 0, 7, 0, 16, 0, 0, 0b1, 0b1000_0010]
        );
        let set = BucketSet::from_ids(2, [1]).unwrap();
        let (b, _) = roundtrip(Control::RepairDone {
            requester: 1,
            request_id: 7,
            records: 5,
            set: &set,
        });
        assert_eq!(
            b,
            vec![
                0, 0, 0, 1, 0, 0, 0, 7, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0b10
            ]
        );
    }

    #[test]
    fn nack_ranges_are_cut_to_fit() {
        let ranges: Vec<_> = (1..100u64).map(|i| i * 10..=i * 10 + 1).collect();
        let mut buf = [0u8; NACK_FIXED + 3 * RANGE_LEN + 5];
        let (len, count) = Control::Nack {
            node: 1,
            epoch: 1,
            ranges: &ranges,
        }
        .encode(&mut buf);
        assert_eq!((len, count), (NACK_FIXED + 3 * RANGE_LEN, 3));
    }

    #[test]
    fn digest_hashes_are_cut_to_fit() {
        let hashes = [7u64; 100];
        let mut buf = [0u8; 16 + 3 * 8 + 7];
        let (len, count) = Control::Digest {
            request_id: 1,
            buckets: 128,
            first: 0,
            entries: 0,
            hashes: &hashes,
        }
        .encode(&mut buf);
        assert_eq!((len, count), (16 + 3 * 8, 3));
    }

    #[test]
    fn control_errors() {
        let alive = [0u8; 16];
        assert!(Message::decode(MsgType::Alive, 0, &alive).is_ok());
        assert!(Message::decode(MsgType::Alive, 1, &alive).is_err());
        assert!(Message::decode(MsgType::Alive, 0, &alive[..15]).is_err());
        let mut bad = alive;
        bad[15] = 1;
        assert_eq!(
            Message::decode(MsgType::Alive, 0, &bad).unwrap_err().offset,
            12
        );
        assert!(Message::decode(MsgType::Hello, 0, &[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Message::decode(MsgType::Hello, 0, &[2, 1, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Message::decode(MsgType::Nack, 1, &[0; 8]).is_err());
        let mut nack = [0u8; 24];
        assert!(
            Message::decode(MsgType::Nack, 1, &nack).is_err(),
            "range from 0"
        );
        nack[15] = 2;
        nack[23] = 1;
        assert!(
            Message::decode(MsgType::Nack, 1, &nack).is_err(),
            "inverted"
        );
        nack[23] = 2;
        assert!(Message::decode(MsgType::Nack, 1, &nack).is_ok());
        for t in 1..=10 {
            let ty = MsgType::from_u8(t).unwrap();
            assert_eq!(ty as u8, t);
            assert_eq!(MsgType::ALL[usize::from(t) - 1], ty);
        }
        assert_eq!(MsgType::from_u8(0), None);
        assert_eq!(MsgType::from_u8(11), None);
    }

    #[test]
    fn check_message_errors() {
        let dec = |t, count, p: &[u8]| Message::decode(t, count, p).map(|_| ()).map_err(|e| e.what);
        // DIGEST_REQUEST: length, bucket count, reserved.
        let mut req = [0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0];
        assert!(dec(MsgType::DigestRequest, 0, &req).is_ok());
        assert!(dec(MsgType::DigestRequest, 1, &req).is_err());
        assert!(dec(MsgType::DigestRequest, 0, &req[..11]).is_err());
        req[9] = 1; // 257 buckets
        assert!(dec(MsgType::DigestRequest, 0, &req).is_err());
        req[8] = 0x10; // 4097
        req[9] = 0;
        assert!(dec(MsgType::DigestRequest, 0, &req).is_err(), "4096 > max");
        req[8] = 0;
        assert!(dec(MsgType::DigestRequest, 0, &req).is_err(), "0 buckets");
        req[9] = 2;
        req[11] = 1;
        assert!(dec(MsgType::DigestRequest, 0, &req).is_err(), "reserved");
        // DIGEST: count must match, be >= 1 and stay inside the buckets.
        let mut d = vec![0, 0, 0, 1, 0, 4, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend([0u8; 16]);
        assert!(dec(MsgType::Digest, 2, &d).is_ok());
        assert!(dec(MsgType::Digest, 1, &d).is_err());
        assert!(dec(MsgType::Digest, 3, &d).is_err());
        d[7] = 3;
        assert!(dec(MsgType::Digest, 2, &d).is_err(), "3 + 2 > 4");
        assert!(dec(MsgType::Digest, 0, &d[..16]).is_err(), "empty chunk");
        // REPAIR_*: bitmap length and padding bits.
        let mut r = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 4, 0, 0, 0b1111];
        assert!(dec(MsgType::RepairRequest, 0, &r).is_ok());
        r[12] = 0b1_0000;
        assert_eq!(
            dec(MsgType::RepairRequest, 0, &r),
            Err("bitmap bits past the bucket count")
        );
        r[12] = 0;
        r.push(0);
        assert!(dec(MsgType::RepairRequest, 0, &r).is_err(), "long bitmap");
        assert!(dec(MsgType::RepairRequest, 0, &r[..11]).is_err());
        let mut done = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 8, 0, 0];
        done.extend([0u8; 8]);
        done.push(0xff);
        assert!(dec(MsgType::RepairDone, 0, &done).is_ok());
        done.pop();
        assert!(dec(MsgType::RepairDone, 0, &done).is_err());
    }

    fn arb_buckets() -> impl Strategy<Value = u16> {
        (0u32..12).prop_map(|e| 1u16 << e)
    }

    proptest! {
        /// Every control message decodes to what was encoded, at any datagram room.
        #[test]
        fn prop_control_roundtrip(
            kind in 0u8..10,
            a in any::<u32>(),
            b in any::<u32>(),
            c in any::<u64>(),
            v in (1u8..=255, 0u8..=255),
            buckets in arb_buckets(),
            ids in proptest::collection::vec(any::<u16>(), 0..40),
            hashes in proptest::collection::vec(any::<u64>(), 1..300),
            ranges in proptest::collection::vec((1u64..1 << 40, 0u64..1000), 0..200),
        ) {
            let set = BucketSet::from_ids(buckets, ids.iter().map(|i| i % buckets)).unwrap();
            let ranges: Vec<_> = ranges.iter().map(|&(s, n)| s..=s + n).collect();
            let first = (a as u16) % buckets;
            let n = hashes.len().min(usize::from(buckets - first));
            let c = match kind {
                0 => Control::Alive(Alive { retained_from: c, interval_ms: a }),
                1 => Control::Nack { node: a, epoch: b, ranges: &ranges },
                2 => Control::Hello(Hello {
                    min_version: v.0,
                    max_version: v.0.max(v.1),
                    features: a,
                }),
                3 => Control::ResyncRequest(ResyncRequest { target: a, request_id: b }),
                4 => Control::ResyncDone(ResyncDone { requester: a, request_id: b, records: c }),
                5 => Control::DigestRequest(DigestRequest { target: a, request_id: b, buckets }),
                6 => Control::Digest {
                    request_id: b,
                    buckets,
                    first,
                    entries: c,
                    hashes: &hashes[..n],
                },
                7 => Control::RepairRequest { target: a, request_id: b, set: &set },
                _ => Control::RepairDone { requester: a, request_id: b, records: c, set: &set },
            };
            let (buf, count) = roundtrip(c);
            if let Control::Nack { .. } = c {
                let Ok(Message::Nack(got)) = Message::decode(MsgType::Nack, count, &buf) else {
                    panic!()
                };
                let want: Vec<_> = ranges.iter().take(got.len()).cloned().collect();
                prop_assert_eq!(got.ranges().collect::<Vec<_>>(), want);
                prop_assert_eq!(got.len(), ranges.len().min((1500 - NACK_FIXED) / RANGE_LEN));
            }
        }

        /// Arbitrary payloads of every type never panic the decoders.
        #[test]
        fn prop_decode_arbitrary(
            t in 1u8..=10,
            count in 0u16..40,
            p in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let ty = MsgType::from_u8(t).unwrap();
            if let Ok(m) = Message::decode(ty, count, &p) {
                prop_assert_eq!(m.msg_type(), ty);
            }
        }
    }
}
