//! DATA records: one [`Change`] each, hand-packed.
//!
//! ```text
//! size      field        present when
//!    1      op           always: 1 upsert (new), 2 upsert, 3 delete
//!    1      flags        always: see F_*
//!    1      proto        always: IP protocol of both tuples
//!  4/16     orig src     always (16 with F_IPV6)
//!  4/16     orig dst     always
//!    2      orig src_u   always (kernel union bytes, as-is)
//!    2      orig dst_u   always
//! 12/36     reply tuple  upsert without F_REPLY_SWAPPED (src, dst, src_u, dst_u)
//!    4      status       upsert (IPS_* bits)
//!    4      timeout      upsert (seconds)
//!    4      mark         F_MARK
//!    3      zone         F_ZONE: id u16, dir u8
//!  0/5/9/1  proto info   F_PROTO kind: TCP state, wscale[2], flags[2] |
//!                        SCTP state, vtag[2] u32 | DCCP state
//!   16      labels       F_LABELS
//! ```
//!
//! Integers are big-endian. A record's length is a function of its `op` and `flags`
//! bytes alone ([`record_len`]), so records are self-delimiting without a length field;
//! the decoder checks that length against the remaining payload before reading a byte
//! of the body. Sizes: IPv4 UDP upsert without NAT/mark/zone 23 bytes, IPv4 TCP with
//! proto info 28, IPv4 delete 15; IPv6 UDP 47, IPv6 TCP 52; NATed IPv4 TCP 40.
//!
//! Both tuples share the family and protocol (the kernel never tracks anything else);
//! the encoder refuses a [`Change`] that violates that rather than silently altering it.
//! IPv4 addresses occupy the first 4 bytes of `Tuple::src`/`dst`; the encoder sends only
//! those (the model keeps the other 12 zero) and the decoder zero-fills them.

use crate::conntrack::{Change, Entry, ExpectChange, Family, Key, ProtoInfo, Tuple, Zone};

pub const OP_UPSERT_NEW: u8 = 1;
pub const OP_UPSERT: u8 = 2;
pub const OP_DELETE: u8 = 3;

/// Tuples are IPv6 (16-byte addresses).
pub const F_IPV6: u8 = 1 << 0;
/// The reply tuple is `orig.swapped()` and is omitted.
pub const F_REPLY_SWAPPED: u8 = 1 << 1;
/// A non-zero mark follows.
pub const F_MARK: u8 = 1 << 2;
/// A non-default zone follows.
pub const F_ZONE: u8 = 1 << 3;
/// Conntrack labels follow.
pub const F_LABELS: u8 = 1 << 4;
/// Two bits: which [`ProtoInfo`] variant follows (0 none, 1 TCP, 2 SCTP, 3 DCCP).
pub const F_PROTO_MASK: u8 = 0b11 << F_PROTO_SHIFT;
pub const F_PROTO_SHIFT: u8 = 5;
/// Must be zero in v1.
pub const F_RESERVED: u8 = 1 << 7;
/// The flags a delete may carry.
pub const DELETE_FLAGS: u8 = F_IPV6 | F_ZONE;

const PI_NONE: u8 = 0;
const PI_TCP: u8 = 1;
const PI_SCTP: u8 = 2;
const PI_DCCP: u8 = 3;

/// Fixed part: op, flags, proto.
const PREFIX_LEN: usize = 3;
/// The smallest record (an IPv4 delete).
pub const MIN_RECORD_LEN: usize = PREFIX_LEN + 12;
/// The largest record (IPv6 upsert with a full reply, mark, zone, SCTP info, labels).
pub const MAX_RECORD_LEN: usize = PREFIX_LEN + 2 * 36 + 8 + 4 + 3 + 9 + 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("reply tuple family or protocol differs from the original tuple")]
    InconsistentTuples,
    #[error("output buffer too small for the record")]
    BufferTooSmall,
}

/// A payload (record or control message) that does not decode. `offset` is relative to
/// the slice given to the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed payload at offset {offset}: {what}")]
pub struct PayloadError {
    pub offset: usize,
    pub what: &'static str,
}

fn tuple_len(flags: u8) -> usize {
    if flags & F_IPV6 != 0 { 36 } else { 12 }
}

/// The encoded length of a record with these `op` and `flags`, or `None` when the
/// combination is invalid.
pub fn record_len(op: u8, flags: u8) -> Option<usize> {
    if flags & F_RESERVED != 0 {
        return None;
    }
    let t = tuple_len(flags);
    match op {
        OP_DELETE => {
            if flags & !DELETE_FLAGS != 0 {
                return None;
            }
            Some(PREFIX_LEN + t + if flags & F_ZONE != 0 { 3 } else { 0 })
        }
        OP_UPSERT | OP_UPSERT_NEW => {
            let mut len = PREFIX_LEN + t + 8;
            if flags & F_REPLY_SWAPPED == 0 {
                len += t;
            }
            if flags & F_MARK != 0 {
                len += 4;
            }
            if flags & F_ZONE != 0 {
                len += 3;
            }
            len += match (flags & F_PROTO_MASK) >> F_PROTO_SHIFT {
                PI_TCP => 5,
                PI_SCTP => 9,
                PI_DCCP => 1,
                _ => 0,
            };
            if flags & F_LABELS != 0 {
                len += 16;
            }
            Some(len)
        }
        _ => None,
    }
}

/// What [`encode`] will write: computed first so the batcher can decide whether the
/// record still fits the open datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub op: u8,
    pub flags: u8,
    pub len: usize,
}

fn family_flag(f: Family) -> u8 {
    match f {
        Family::V4 => 0,
        Family::V6 => F_IPV6,
    }
}

/// Plans the encoding of `change`.
pub fn plan(change: &Change) -> Result<Plan, EncodeError> {
    let (op, flags) = match change {
        Change::Delete(key) => {
            let mut flags = family_flag(key.orig.family);
            if key.zone != Zone::DEFAULT {
                flags |= F_ZONE;
            }
            (OP_DELETE, flags)
        }
        Change::Upsert { entry: e, new } => {
            if e.reply.family != e.orig.family || e.reply.proto != e.orig.proto {
                return Err(EncodeError::InconsistentTuples);
            }
            let mut flags = family_flag(e.orig.family);
            if e.reply == e.orig.swapped() {
                flags |= F_REPLY_SWAPPED;
            }
            if e.mark != 0 {
                flags |= F_MARK;
            }
            if e.zone != Zone::DEFAULT {
                flags |= F_ZONE;
            }
            if e.labels.is_some() {
                flags |= F_LABELS;
            }
            let pi = match e.proto {
                ProtoInfo::None => PI_NONE,
                ProtoInfo::Tcp { .. } => PI_TCP,
                ProtoInfo::Sctp { .. } => PI_SCTP,
                ProtoInfo::Dccp { .. } => PI_DCCP,
            };
            flags |= pi << F_PROTO_SHIFT;
            (if *new { OP_UPSERT_NEW } else { OP_UPSERT }, flags)
        }
    };
    match record_len(op, flags) {
        Some(len) => Ok(Plan { op, flags, len }),
        // Unreachable: `plan` only sets valid combinations.
        None => Err(EncodeError::InconsistentTuples),
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    #[inline(always)]
    fn tuple(&mut self, t: &Tuple, alen: usize) {
        self.put(&t.src[..alen]);
        self.put(&t.dst[..alen]);
        self.put(&t.src_u);
        self.put(&t.dst_u);
    }

    #[inline(always)]
    fn zone(&mut self, z: &Zone) {
        self.put(&z.id.to_be_bytes());
        self.put(&[z.dir]);
    }
}

/// Writes the record planned by `plan` (which must come from [`plan`] for the same
/// change) to the start of `out`, returning its length.
pub fn encode(change: &Change, plan: &Plan, out: &mut [u8]) -> Result<usize, EncodeError> {
    if out.len() < plan.len {
        return Err(EncodeError::BufferTooSmall);
    }
    let mut w = Writer {
        buf: &mut out[..plan.len],
        pos: 0,
    };
    let alen = if plan.flags & F_IPV6 != 0 { 16 } else { 4 };
    match change {
        Change::Delete(key) => {
            w.put(&[plan.op, plan.flags, key.orig.proto]);
            w.tuple(&key.orig, alen);
            if plan.flags & F_ZONE != 0 {
                w.zone(&key.zone);
            }
        }
        Change::Upsert { entry: e, .. } => {
            w.put(&[plan.op, plan.flags, e.orig.proto]);
            w.tuple(&e.orig, alen);
            if plan.flags & F_REPLY_SWAPPED == 0 {
                w.tuple(&e.reply, alen);
            }
            w.put(&e.status.to_be_bytes());
            w.put(&e.timeout.to_be_bytes());
            if plan.flags & F_MARK != 0 {
                w.put(&e.mark.to_be_bytes());
            }
            if plan.flags & F_ZONE != 0 {
                w.zone(&e.zone);
            }
            match e.proto {
                ProtoInfo::None => {}
                ProtoInfo::Tcp {
                    state,
                    wscale,
                    flags,
                } => w.put(&[state, wscale[0], wscale[1], flags[0], flags[1]]),
                ProtoInfo::Sctp { state, vtag } => {
                    w.put(&[state]);
                    w.put(&vtag[0].to_be_bytes());
                    w.put(&vtag[1].to_be_bytes());
                }
                ProtoInfo::Dccp { state } => w.put(&[state]),
            }
            if let Some(labels) = &e.labels {
                w.put(labels);
            }
        }
    }
    debug_assert_eq!(w.pos, plan.len);
    Ok(plan.len)
}

/// Plans and encodes in one go.
pub fn encode_record(change: &Change, out: &mut [u8]) -> Result<usize, EncodeError> {
    let p = plan(change)?;
    encode(change, &p, out)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        match self.buf.get(self.pos..self.pos + n) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(PayloadError {
                offset: self.pos,
                what: "record exceeds payload",
            }),
        }
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], PayloadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.arr::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, PayloadError> {
        Ok(u16::from_be_bytes(self.arr()?))
    }

    fn u32(&mut self) -> Result<u32, PayloadError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }

    fn addr(&mut self, family: Family) -> Result<[u8; 16], PayloadError> {
        let mut a = [0u8; 16];
        let n = family.addr_len();
        a[..n].copy_from_slice(self.take(n)?);
        Ok(a)
    }

    fn tuple(&mut self, family: Family, proto: u8) -> Result<Tuple, PayloadError> {
        Ok(Tuple {
            family,
            proto,
            src: self.addr(family)?,
            dst: self.addr(family)?,
            src_u: self.arr()?,
            dst_u: self.arr()?,
        })
    }

    fn zone(&mut self) -> Result<Zone, PayloadError> {
        Ok(Zone {
            id: self.u16()?,
            dir: self.u8()?,
        })
    }
}

/// Decodes the record at the start of `buf`: the change and the record's length.
pub fn decode_record(buf: &[u8]) -> Result<(Change, usize), PayloadError> {
    let err = |offset, what| PayloadError { offset, what };
    let (op, flags) = match buf {
        [op, flags, _, ..] => (*op, *flags),
        _ => return Err(err(0, "record exceeds payload")),
    };
    if !matches!(op, OP_UPSERT_NEW | OP_UPSERT | OP_DELETE) {
        return Err(err(0, "unknown record op"));
    }
    if flags & F_RESERVED != 0 {
        return Err(err(1, "reserved record flag set"));
    }
    let len = record_len(op, flags).ok_or(err(1, "record flags invalid for op"))?;
    if buf.len() < len {
        return Err(err(0, "record exceeds payload"));
    }
    let mut r = Reader {
        buf: &buf[..len],
        pos: 2,
    };
    let family = if flags & F_IPV6 != 0 {
        Family::V6
    } else {
        Family::V4
    };
    let proto = r.u8()?;
    let orig = r.tuple(family, proto)?;
    let change = if op == OP_DELETE {
        let zone = if flags & F_ZONE != 0 {
            r.zone()?
        } else {
            Zone::DEFAULT
        };
        Change::Delete(Key { orig, zone })
    } else {
        let reply = if flags & F_REPLY_SWAPPED != 0 {
            orig.swapped()
        } else {
            r.tuple(family, proto)?
        };
        let status = r.u32()?;
        let timeout = r.u32()?;
        let mark = if flags & F_MARK != 0 { r.u32()? } else { 0 };
        let zone = if flags & F_ZONE != 0 {
            r.zone()?
        } else {
            Zone::DEFAULT
        };
        let proto_info = match (flags & F_PROTO_MASK) >> F_PROTO_SHIFT {
            PI_TCP => {
                let [state, w0, w1, f0, f1] = r.arr::<5>()?;
                ProtoInfo::Tcp {
                    state,
                    wscale: [w0, w1],
                    flags: [f0, f1],
                }
            }
            PI_SCTP => ProtoInfo::Sctp {
                state: r.u8()?,
                vtag: [r.u32()?, r.u32()?],
            },
            PI_DCCP => ProtoInfo::Dccp { state: r.u8()? },
            _ => ProtoInfo::None,
        };
        let labels = if flags & F_LABELS != 0 {
            Some(r.arr::<16>()?)
        } else {
            None
        };
        Change::Upsert {
            entry: Entry {
                orig,
                reply,
                status,
                timeout,
                mark,
                zone,
                proto: proto_info,
                labels,
            },
            new: op == OP_UPSERT_NEW,
        }
    };
    debug_assert_eq!(r.pos, len);
    Ok((change, len))
}

/// The records of a DATA payload, decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Records<'a> {
    payload: &'a [u8],
    count: u16,
}

impl<'a> Records<'a> {
    pub fn new(payload: &'a [u8], count: u16) -> Records<'a> {
        Records { payload, count }
    }

    /// The record count the header announces.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Decodes every record, appending to `out`. Either all `count` records decode and
    /// exactly fill the payload, or `out` is left as it was and the first problem is
    /// returned (offset relative to the payload start).
    pub fn decode_into(&self, out: &mut Vec<Change>) -> Result<usize, PayloadError> {
        let start = out.len();
        let res = self.decode_all(out);
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    /// Like [`decode_into`](Self::decode_into), but expectation records
    /// ([`expect`](super::expect), ops 4/5) are accepted too and appended to `expects`.
    /// Returns the number of records of both kinds; on error both vectors are left as
    /// they were.
    pub fn decode_mixed_into(
        &self,
        out: &mut Vec<Change>,
        expects: &mut Vec<ExpectChange>,
    ) -> Result<usize, PayloadError> {
        let (start, xstart) = (out.len(), expects.len());
        let res = self.decode_walk(out, Some(expects));
        if res.is_err() {
            out.truncate(start);
            expects.truncate(xstart);
        }
        res
    }

    fn decode_all(&self, out: &mut Vec<Change>) -> Result<usize, PayloadError> {
        self.decode_walk(out, None)
    }

    fn decode_walk(
        &self,
        out: &mut Vec<Change>,
        mut expects: Option<&mut Vec<ExpectChange>>,
    ) -> Result<usize, PayloadError> {
        // The count is only trusted as far as the payload could hold that many records.
        out.reserve(self.len().min(self.payload.len() / MIN_RECORD_LEN));
        let mut pos = 0;
        for _ in 0..self.count {
            let rest = self.payload.get(pos..).unwrap_or_default();
            let at = |e: PayloadError| PayloadError {
                offset: pos + e.offset,
                what: e.what,
            };
            let len = match (rest.first(), expects.as_deref_mut()) {
                (Some(&op), Some(x)) if super::expect::is_expect_op(op) => {
                    let (change, len) = super::expect::decode(rest).map_err(at)?;
                    x.push(change);
                    len
                }
                _ => {
                    let (change, len) = decode_record(rest).map_err(at)?;
                    out.push(change);
                    len
                }
            };
            pos += len;
        }
        if pos != self.payload.len() {
            return Err(PayloadError {
                offset: pos,
                what: "trailing bytes after the last record",
            });
        }
        Ok(self.len())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::conntrack::{proto, status};
    use proptest::prelude::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub(crate) fn udp4() -> Entry {
        let orig = Tuple::new(proto::UDP, ip("10.0.0.1"), 5000, ip("192.0.2.53"), 53);
        Entry {
            orig,
            reply: orig.swapped(),
            status: status::CONFIRMED | status::SEEN_REPLY,
            timeout: 30,
            mark: 0,
            zone: Zone::DEFAULT,
            proto: ProtoInfo::None,
            labels: None,
        }
    }

    fn roundtrip(c: &Change) -> usize {
        let mut buf = [0u8; MAX_RECORD_LEN];
        let n = encode_record(c, &mut buf).unwrap();
        let (d, m) = decode_record(&buf[..n]).unwrap();
        assert_eq!(&d, c);
        assert_eq!(n, m);
        n
    }

    #[test]
    fn exact_bytes_ipv4_udp() {
        let c = Change::Upsert {
            entry: udp4(),
            new: true,
        };
        let mut buf = [0u8; MAX_RECORD_LEN];
        let n = encode_record(&c, &mut buf).unwrap();
        #[rustfmt::skip]
        let expected: [u8; 23] = [
            OP_UPSERT_NEW,
            F_REPLY_SWAPPED,        // IPv4, reply omitted, no options
            17,                     // UDP
            10, 0, 0, 1,            // orig src
            192, 0, 2, 53,          // orig dst
            0x13, 0x88,             // sport 5000
            0, 53,                  // dport 53
            0, 0, 0, 0x0a,          // status CONFIRMED|SEEN_REPLY
            0, 0, 0, 30,            // timeout
        ];
        assert_eq!(&buf[..n], &expected);
        assert_eq!(decode_record(&expected).unwrap(), (c, 23));
    }

    #[test]
    fn size_targets() {
        let udp = udp4();
        assert!(
            roundtrip(&Change::Upsert {
                entry: udp,
                new: false
            }) <= 32
        );
        let mut tcp = udp;
        tcp.orig.proto = proto::TCP;
        tcp.reply = tcp.orig.swapped();
        tcp.proto = ProtoInfo::Tcp {
            state: 3,
            wscale: [7, 7],
            flags: [0x23, 0x23],
        };
        assert_eq!(
            roundtrip(&Change::Upsert {
                entry: tcp,
                new: false
            }),
            28
        );
        let mut nat = tcp;
        nat.reply.dst = crate::conntrack::addr_bytes(ip("198.51.100.1"));
        nat.status |= status::SRC_NAT;
        assert_eq!(
            roundtrip(&Change::Upsert {
                entry: nat,
                new: false
            }),
            40
        );
        let mut v6 = tcp;
        v6.orig = Tuple::new(proto::TCP, ip("2001:db8::1"), 1, ip("2001:db8::2"), 2);
        v6.reply = v6.orig.swapped();
        assert_eq!(
            roundtrip(&Change::Upsert {
                entry: v6,
                new: true
            }),
            52
        );
        v6.proto = ProtoInfo::None;
        v6.orig.proto = proto::UDP;
        v6.reply = v6.orig.swapped();
        assert_eq!(
            roundtrip(&Change::Upsert {
                entry: v6,
                new: true
            }),
            47
        );
        assert_eq!(roundtrip(&Change::Delete(udp.key())), MIN_RECORD_LEN);
        let mut full = v6;
        full.reply.src[15] ^= 1;
        full.mark = 1;
        full.zone = Zone { id: 7, dir: 1 };
        full.proto = ProtoInfo::Sctp {
            state: 1,
            vtag: [1, 2],
        };
        full.labels = Some([0xff; 16]);
        assert_eq!(
            roundtrip(&Change::Upsert {
                entry: full,
                new: true
            }),
            MAX_RECORD_LEN
        );
    }

    #[test]
    fn inconsistent_tuples_are_refused() {
        let mut e = udp4();
        e.reply.proto = proto::TCP;
        let c = Change::Upsert {
            entry: e,
            new: false,
        };
        assert_eq!(plan(&c), Err(EncodeError::InconsistentTuples));
        let mut buf = [0u8; 8];
        assert_eq!(
            encode_record(
                &Change::Upsert {
                    entry: udp4(),
                    new: false
                },
                &mut buf
            ),
            Err(EncodeError::BufferTooSmall)
        );
    }

    #[test]
    fn invalid_records_are_errors() {
        let mut buf = [0u8; MAX_RECORD_LEN];
        let n = encode_record(&Change::Delete(udp4().key()), &mut buf).unwrap();
        // Unknown op.
        let mut b = buf;
        b[0] = 9;
        assert_eq!(
            decode_record(&b[..n]).unwrap_err().what,
            "unknown record op"
        );
        // Reserved flag.
        b = buf;
        b[1] |= F_RESERVED;
        assert_eq!(decode_record(&b[..n]).unwrap_err().offset, 1);
        // A delete with a flag only upserts may carry.
        b = buf;
        b[1] |= F_MARK;
        assert_eq!(
            decode_record(&b[..n]).unwrap_err().what,
            "record flags invalid for op"
        );
        // Truncated.
        for cut in 0..n {
            assert!(decode_record(&buf[..cut]).is_err());
        }
        // Records: count larger than the payload holds, trailing bytes.
        let mut out = vec![Change::Delete(udp4().key())];
        let recs = Records::new(&buf[..n], 2);
        assert!(recs.decode_into(&mut out).is_err());
        assert_eq!(out.len(), 1, "a failed decode leaves the output as it was");
        let mut two = buf[..n].to_vec();
        two.push(0);
        assert_eq!(
            Records::new(&two, 1).decode_into(&mut out).unwrap_err(),
            PayloadError {
                offset: n,
                what: "trailing bytes after the last record"
            }
        );
        assert_eq!(Records::new(&buf[..n], 1).decode_into(&mut out), Ok(1));
        assert_eq!(out.len(), 2);
    }

    prop_compose! {
        fn arb_tuple(family: Family, proto: u8)(
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
            src_u in any::<[u8; 2]>(), dst_u in any::<[u8; 2]>(),
        ) -> Tuple {
            let (mut src, mut dst) = (src, dst);
            if family == Family::V4 {
                src[4..].fill(0);
                dst[4..].fill(0);
            }
            Tuple { family, proto, src, dst, src_u, dst_u }
        }
    }

    pub(crate) fn arb_proto_info() -> impl Strategy<Value = ProtoInfo> {
        prop_oneof![
            Just(ProtoInfo::None),
            (any::<u8>(), any::<[u8; 2]>(), any::<[u8; 2]>()).prop_map(|(state, wscale, flags)| {
                ProtoInfo::Tcp {
                    state,
                    wscale,
                    flags,
                }
            }),
            (any::<u8>(), any::<[u32; 2]>())
                .prop_map(|(state, vtag)| ProtoInfo::Sctp { state, vtag }),
            any::<u8>().prop_map(|state| ProtoInfo::Dccp { state }),
        ]
    }

    fn arb_zone() -> impl Strategy<Value = Zone> {
        prop_oneof![
            Just(Zone::DEFAULT),
            (any::<u16>(), any::<u8>()).prop_map(|(id, dir)| Zone { id, dir }),
        ]
    }

    fn arb_family_proto() -> impl Strategy<Value = (Family, u8)> {
        (
            prop_oneof![Just(Family::V4), Just(Family::V6)],
            prop_oneof![
                Just(proto::TCP),
                Just(proto::UDP),
                Just(proto::ICMP),
                any::<u8>()
            ],
        )
    }

    pub(crate) fn arb_entry() -> impl Strategy<Value = Entry> {
        arb_family_proto().prop_flat_map(|(family, p)| {
            (
                arb_tuple(family, p),
                prop_oneof![Just(None), arb_tuple(family, p).prop_map(Some)],
                any::<u32>(),
                any::<u32>(),
                prop_oneof![Just(0u32), any::<u32>()],
                arb_zone(),
                arb_proto_info(),
                proptest::option::of(any::<[u8; 16]>()),
            )
                .prop_map(
                    |(orig, reply, status, timeout, mark, zone, proto, labels)| Entry {
                        orig,
                        reply: reply.unwrap_or_else(|| orig.swapped()),
                        status,
                        timeout,
                        mark,
                        zone,
                        proto,
                        labels,
                    },
                )
        })
    }

    pub(crate) fn arb_change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (arb_entry(), any::<bool>()).prop_map(|(entry, new)| Change::Upsert { entry, new }),
            arb_entry().prop_map(|e| Change::Delete(e.key())),
        ]
    }

    proptest! {
        #[test]
        fn prop_roundtrip(c in arb_change()) {
            let mut buf = [0u8; MAX_RECORD_LEN];
            let p = plan(&c).unwrap();
            prop_assert_eq!(record_len(p.op, p.flags), Some(p.len));
            let n = encode(&c, &p, &mut buf).unwrap();
            prop_assert_eq!(n, p.len);
            prop_assert_eq!(decode_record(&buf[..n]).unwrap(), (c, n));
            // Every strict prefix is an error, never a panic.
            for cut in 0..n {
                prop_assert!(decode_record(&buf[..cut]).is_err());
            }
        }

        #[test]
        fn prop_decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..160), count in 0u16..8) {
            let _ = decode_record(&bytes);
            let mut out = Vec::new();
            if Records::new(&bytes, count).decode_into(&mut out).is_err() {
                prop_assert!(out.is_empty());
            }
        }
    }
}
