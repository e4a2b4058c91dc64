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
//! ```
//!
//! Fixed-size payloads must have exactly their size and zero reserved fields. HELLO's
//! header and payload layout is frozen across versions so any two versions can
//! negotiate.

use std::ops::RangeInclusive;

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
}

impl MsgType {
    pub fn from_u8(t: u8) -> Option<MsgType> {
        Some(match t {
            1 => MsgType::Data,
            2 => MsgType::Alive,
            3 => MsgType::Nack,
            4 => MsgType::Hello,
            5 => MsgType::ResyncRequest,
            6 => MsgType::ResyncDone,
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

const RANGE_LEN: usize = 16;
const NACK_FIXED: usize = 8;

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
}

fn u64_at(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn err(offset: usize, what: &'static str) -> PayloadError {
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

fn zero(payload: &[u8], at: usize, len: usize) -> Result<(), PayloadError> {
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
}

impl Control<'_> {
    pub fn msg_type(&self) -> MsgType {
        match self {
            Control::Alive(_) => MsgType::Alive,
            Control::Nack { .. } => MsgType::Nack,
            Control::Hello(_) => MsgType::Hello,
            Control::ResyncRequest(_) => MsgType::ResyncRequest,
            Control::ResyncDone(_) => MsgType::ResyncDone,
        }
    }

    /// Writes the payload into `out` (at least 16 bytes), returning its length and the
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(c: Control<'_>) -> (Vec<u8>, u16) {
        let mut buf = vec![0u8; 256];
        let (len, count) = c.encode(&mut buf);
        buf.truncate(len);
        let m = Message::decode(c.msg_type(), count, &buf).unwrap();
        assert_eq!(m.msg_type(), c.msg_type());
        match (c, m) {
            (Control::Alive(a), Message::Alive(b)) => assert_eq!(a, b),
            (Control::Hello(a), Message::Hello(b)) => assert_eq!(a, b),
            (Control::ResyncRequest(a), Message::ResyncRequest(b)) => assert_eq!(a, b),
            (Control::ResyncDone(a), Message::ResyncDone(b)) => assert_eq!(a, b),
            (Control::Nack { node, epoch, .. }, Message::Nack(n)) => {
                assert_eq!((node, epoch), (n.node, n.epoch));
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
        for t in 1..=6 {
            let ty = MsgType::from_u8(t).unwrap();
            assert_eq!(ty as u8, t);
        }
        assert_eq!(MsgType::from_u8(0), None);
        assert_eq!(MsgType::from_u8(7), None);
    }
}
