//! Expectation records: one [`ExpectChange`] each, a record kind of its own that can
//! share a DATA payload with the conntrack records of [`record`](super::record) (whose
//! ops are 1..=3).
//!
//! ```text
//! off  size     field         present when
//!   0    1      op            always: 4 upsert, 5 delete
//!   1    1      len           always: the whole record's length, this header included
//!   2    1      version       always: 1
//!   3    1      flags         always: see F_* (bits 5..7 must be zero)
//!   4    1      proto         always: IP protocol of the expected tuple
//!        1      master proto  upsert
//!      12/36    tuple         always: src, dst (4/16 with F_IPV6), src_u, dst_u (2)
//!       6/18    mask          upsert: src (4/16), src_u (2)
//!      12/36    master tuple  upsert: src, dst, src_u, dst_u
//!        4      timeout       upsert (seconds)
//!        4      flags         upsert (NF_CT_EXPECT_*)
//!        4      class         upsert
//!        3      zone          F_ZONE: id u16, dir u8
//!     7/19      NAT           F_NAT (upsert): dir u8 (0/1), src (4/16), src_u (2)
//!    1+1..15    helper        F_HELPER (upsert): length u8, printable ASCII
//!    1+1..31    callback      F_EXPECTFN (upsert): length u8, printable ASCII
//! ```
//!
//! Integers are big-endian; unions and addresses are the kernel's bytes as-is (IPv4
//! uses 4 bytes; the decoder zero-fills the rest of the model's 16). Unlike conntrack
//! records, names make the length variable, so it is carried explicitly: the decoder
//! checks `len` against the payload before reading the body and requires the body to
//! end exactly there, and a future version byte can be skipped by length.
//! Sizes: IPv4 FTP upsert with helper 52 bytes, with SNAT (NAT + `nat-follow-master`)
//! 77; IPv4 delete 17; the largest ([`MAX_EXPECT_RECORD_LEN`]) 178.

use crate::conntrack::{
    ExpectChange, ExpectFnName, ExpectKey, ExpectMask, ExpectNat, Expectation, Family, HelperName,
    Tuple, Zone, expect::Name,
};

use super::record::PayloadError;

pub const OP_EXPECT_UPSERT: u8 = 4;
pub const OP_EXPECT_DELETE: u8 = 5;
/// The layout described above.
pub const EXPECT_RECORD_VERSION: u8 = 1;

pub const F_IPV6: u8 = 1 << 0;
pub const F_ZONE: u8 = 1 << 1;
pub const F_NAT: u8 = 1 << 2;
pub const F_HELPER: u8 = 1 << 3;
pub const F_EXPECTFN: u8 = 1 << 4;
/// Bits that must be zero in version 1.
pub const F_RESERVED: u8 = !(F_IPV6 | F_ZONE | F_NAT | F_HELPER | F_EXPECTFN);
/// The flags a delete may carry.
pub const DELETE_FLAGS: u8 = F_IPV6 | F_ZONE;

/// op, len, version, flags, proto.
const HEADER_LEN: usize = 5;
/// The smallest record (an IPv4 delete).
pub const MIN_EXPECT_RECORD_LEN: usize = HEADER_LEN + 12;
/// The largest record: IPv6 upsert with zone, NAT and both names at full length.
pub const MAX_EXPECT_RECORD_LEN: usize = HEADER_LEN
    + 1
    + 36
    + 18
    + 36
    + 12
    + 3
    + 19
    + 1
    + HelperName::CAPACITY
    + 1
    + ExpectFnName::CAPACITY;

const _: () = assert!(MAX_EXPECT_RECORD_LEN <= u8::MAX as usize);

/// Whether a record starting with `op` is an expectation record.
pub fn is_expect_op(op: u8) -> bool {
    matches!(op, OP_EXPECT_UPSERT | OP_EXPECT_DELETE)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpectEncodeError {
    /// The expectation breaks an invariant of the model ([`Expectation::validate`]).
    #[error("expectation not encodable: {0}")]
    Invalid(&'static str),
    #[error("output buffer too small for the record")]
    BufferTooSmall,
}

fn family_flag(f: Family) -> u8 {
    match f {
        Family::V4 => 0,
        Family::V6 => F_IPV6,
    }
}

/// The record's `(op, flags, len)` without writing it (for batching decisions).
pub fn plan(change: &ExpectChange) -> Result<(u8, u8, usize), ExpectEncodeError> {
    match change {
        ExpectChange::Delete(k) => {
            let mut flags = family_flag(k.tuple.family);
            let mut len = HEADER_LEN + 2 * k.tuple.family.addr_len() + 4;
            if k.zone != Zone::DEFAULT {
                flags |= F_ZONE;
                len += 3;
            }
            Ok((OP_EXPECT_DELETE, flags, len))
        }
        ExpectChange::Upsert(e) => {
            e.validate().map_err(ExpectEncodeError::Invalid)?;
            let a = e.family().addr_len();
            let mut flags = family_flag(e.family());
            let mut len = HEADER_LEN + 1 + (2 * a + 4) + (a + 2) + (2 * a + 4) + 12;
            if e.zone != Zone::DEFAULT {
                flags |= F_ZONE;
                len += 3;
            }
            if e.nat.is_some() {
                flags |= F_NAT;
                len += 1 + a + 2;
            }
            if let Some(h) = &e.helper {
                flags |= F_HELPER;
                len += 1 + h.len();
            }
            if let Some(f) = &e.expectfn {
                flags |= F_EXPECTFN;
                len += 1 + f.len();
            }
            Ok((OP_EXPECT_UPSERT, flags, len))
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    fn tuple(&mut self, t: &Tuple, a: usize) {
        self.put(&t.src[..a]);
        self.put(&t.dst[..a]);
        self.put(&t.src_u);
        self.put(&t.dst_u);
    }

    fn zone(&mut self, z: &Zone) {
        self.put(&z.id.to_be_bytes());
        self.put(&[z.dir]);
    }

    fn name<const N: usize>(&mut self, n: &Name<N>) {
        self.put(&[n.len() as u8]);
        self.put(n.as_bytes());
    }
}

/// Writes the record for `change` to the start of `out`; returns its length.
pub fn encode(change: &ExpectChange, out: &mut [u8]) -> Result<usize, ExpectEncodeError> {
    let (op, flags, len) = plan(change)?;
    if out.len() < len {
        return Err(ExpectEncodeError::BufferTooSmall);
    }
    let mut w = Writer {
        buf: &mut out[..len],
        pos: 0,
    };
    match change {
        ExpectChange::Delete(k) => {
            let a = k.tuple.family.addr_len();
            w.put(&[op, len as u8, EXPECT_RECORD_VERSION, flags, k.tuple.proto]);
            w.tuple(&k.tuple, a);
            if flags & F_ZONE != 0 {
                w.zone(&k.zone);
            }
        }
        ExpectChange::Upsert(e) => {
            let a = e.family().addr_len();
            w.put(&[op, len as u8, EXPECT_RECORD_VERSION, flags, e.tuple.proto]);
            w.put(&[e.master.proto]);
            w.tuple(&e.tuple, a);
            w.put(&e.mask.src[..a]);
            w.put(&e.mask.src_u);
            w.tuple(&e.master, a);
            w.put(&e.timeout.to_be_bytes());
            w.put(&e.flags.to_be_bytes());
            w.put(&e.class.to_be_bytes());
            if flags & F_ZONE != 0 {
                w.zone(&e.zone);
            }
            if let Some(n) = &e.nat {
                w.put(&[n.dir]);
                w.put(&n.src[..a]);
                w.put(&n.src_u);
            }
            if let Some(h) = &e.helper {
                w.name(h);
            }
            if let Some(f) = &e.expectfn {
                w.name(f);
            }
        }
    }
    debug_assert_eq!(w.pos, len);
    Ok(len)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &'static str) -> PayloadError {
        PayloadError {
            offset: self.pos,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        match self.buf.get(self.pos..self.pos + n) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.err("expectation record body exceeds its length")),
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

    fn u32(&mut self) -> Result<u32, PayloadError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }

    fn addr(&mut self, f: Family) -> Result<[u8; 16], PayloadError> {
        let mut a = [0u8; 16];
        let n = f.addr_len();
        a[..n].copy_from_slice(self.take(n)?);
        Ok(a)
    }

    fn tuple(&mut self, f: Family, proto: u8) -> Result<Tuple, PayloadError> {
        Ok(Tuple {
            family: f,
            proto,
            src: self.addr(f)?,
            dst: self.addr(f)?,
            src_u: self.arr()?,
            dst_u: self.arr()?,
        })
    }

    fn zone(&mut self) -> Result<Zone, PayloadError> {
        let id = u16::from_be_bytes(self.arr()?);
        Ok(Zone {
            id,
            dir: self.u8()?,
        })
    }

    fn name<const N: usize>(&mut self, what: &'static str) -> Result<Name<N>, PayloadError> {
        let at = self.pos;
        let n = usize::from(self.u8()?);
        let bytes = self.take(n)?;
        Name::from_bytes(bytes).ok_or(PayloadError { offset: at, what })
    }
}

/// The `(op, len)` of the expectation record at the start of `buf`, after checking the
/// header (op, version, reserved flags, length within `buf`). Lets a payload decoder
/// dispatch on the op and step over the record.
pub fn peek(buf: &[u8]) -> Result<(u8, usize), PayloadError> {
    let err = |offset, what| PayloadError { offset, what };
    let [op, len, version, flags, ..] = *buf else {
        return Err(err(0, "expectation record exceeds payload"));
    };
    if !is_expect_op(op) {
        return Err(err(0, "not an expectation record op"));
    }
    if version != EXPECT_RECORD_VERSION {
        return Err(err(2, "unsupported expectation record version"));
    }
    if flags & F_RESERVED != 0 {
        return Err(err(3, "reserved expectation record flag set"));
    }
    if op == OP_EXPECT_DELETE && flags & !DELETE_FLAGS != 0 {
        return Err(err(3, "expectation record flags invalid for delete"));
    }
    let len = usize::from(len);
    if len < MIN_EXPECT_RECORD_LEN {
        return Err(err(1, "expectation record length too small"));
    }
    if len > buf.len() {
        return Err(err(0, "expectation record exceeds payload"));
    }
    Ok((op, len))
}

/// Decodes the record at the start of `buf`: the change and the record's length.
pub fn decode(buf: &[u8]) -> Result<(ExpectChange, usize), PayloadError> {
    let (op, len) = peek(buf)?;
    let flags = buf[3];
    let mut r = Reader {
        buf: &buf[..len],
        pos: 4,
    };
    let f = if flags & F_IPV6 != 0 {
        Family::V6
    } else {
        Family::V4
    };
    let proto = r.u8()?;
    let change = if op == OP_EXPECT_DELETE {
        let tuple = r.tuple(f, proto)?;
        let zone = if flags & F_ZONE != 0 {
            r.zone()?
        } else {
            Zone::DEFAULT
        };
        ExpectChange::Delete(ExpectKey { tuple, zone })
    } else {
        let master_proto = r.u8()?;
        let tuple = r.tuple(f, proto)?;
        let mask = ExpectMask {
            src: r.addr(f)?,
            src_u: r.arr()?,
        };
        let master = r.tuple(f, master_proto)?;
        let timeout = r.u32()?;
        let xflags = r.u32()?;
        let class = r.u32()?;
        let zone = if flags & F_ZONE != 0 {
            r.zone()?
        } else {
            Zone::DEFAULT
        };
        let nat = if flags & F_NAT != 0 {
            let dir = r.u8()?;
            if dir > 1 {
                return Err(PayloadError {
                    offset: r.pos - 1,
                    what: "expectation NAT direction is neither 0 nor 1",
                });
            }
            Some(ExpectNat {
                dir,
                src: r.addr(f)?,
                src_u: r.arr()?,
            })
        } else {
            None
        };
        let helper = if flags & F_HELPER != 0 {
            Some(r.name::<{ HelperName::CAPACITY }>("invalid helper name")?)
        } else {
            None
        };
        let expectfn = if flags & F_EXPECTFN != 0 {
            Some(r.name::<{ ExpectFnName::CAPACITY }>("invalid expectation callback name")?)
        } else {
            None
        };
        ExpectChange::Upsert(Expectation {
            master,
            tuple,
            mask,
            zone,
            timeout,
            flags: xflags,
            class,
            helper,
            expectfn,
            nat,
        })
    };
    if r.pos != len {
        return Err(r.err("expectation record length does not match its body"));
    }
    Ok((change, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{expect::strategies, proto};
    use proptest::prelude::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ftp() -> Expectation {
        Expectation {
            master: Tuple::new(
                proto::TCP,
                ip("192.168.10.10"),
                40000,
                ip("203.0.113.100"),
                21,
            ),
            tuple: Tuple::new(
                proto::TCP,
                ip("192.168.10.10"),
                0,
                ip("203.0.113.100"),
                50000,
            ),
            mask: ExpectMask::any_port(Family::V4),
            zone: Zone::DEFAULT,
            timeout: 300,
            flags: 0,
            class: 0,
            helper: HelperName::new("ftp"),
            expectfn: None,
            nat: None,
        }
    }

    fn roundtrip(c: &ExpectChange) -> usize {
        let mut buf = [0u8; MAX_EXPECT_RECORD_LEN];
        let n = encode(c, &mut buf).unwrap();
        assert_eq!(decode(&buf[..n]).unwrap(), (*c, n));
        n
    }

    #[test]
    fn exact_bytes_ipv4_ftp() {
        let c = ExpectChange::Upsert(ftp());
        let mut buf = [0u8; MAX_EXPECT_RECORD_LEN];
        let n = encode(&c, &mut buf).unwrap();
        #[rustfmt::skip]
        let want: [u8; 52] = [
            OP_EXPECT_UPSERT, 52, 1, F_HELPER, 6,
            6,                                  // master proto
            192, 168, 10, 10, 203, 0, 113, 100, // tuple src, dst
            0, 0, 0xc3, 0x50,                   // sport 0, dport 50000
            255, 255, 255, 255, 0, 0,           // mask src, src_u
            192, 168, 10, 10, 203, 0, 113, 100, // master src, dst
            0x9c, 0x40, 0, 21,                  // 40000 -> 21
            0, 0, 1, 44,                        // timeout 300
            0, 0, 0, 0,                         // flags
            0, 0, 0, 0,                         // class
            3, b'f', b't', b'p',                // helper
        ];
        assert_eq!(&buf[..n], &want);
        assert_eq!(decode(&want).unwrap(), (c, 52));
    }

    #[test]
    fn sizes() {
        let mut e = ftp();
        assert_eq!(roundtrip(&ExpectChange::Upsert(e)), 52);
        e.nat = Some(ExpectNat {
            dir: 0,
            src: [0; 16],
            src_u: 50000u16.to_be_bytes(),
        });
        e.expectfn = ExpectFnName::new("nat-follow-master");
        assert_eq!(roundtrip(&ExpectChange::Upsert(e)), 77);
        assert_eq!(
            roundtrip(&ExpectChange::Delete(e.key())),
            MIN_EXPECT_RECORD_LEN
        );
        let v6 = |s| ip(s);
        e.master = Tuple::new(proto::TCP, v6("2001:db8::1"), 1, v6("2001:db8::2"), 21);
        e.tuple = Tuple::new(proto::TCP, v6("2001:db8::1"), 0, v6("2001:db8::2"), 2);
        e.mask = ExpectMask::any_port(Family::V6);
        e.zone = Zone { id: 3, dir: 1 };
        e.helper = HelperName::new("0123456789abcde");
        e.expectfn = ExpectFnName::new("0123456789abcdef0123456789abcde");
        assert_eq!(roundtrip(&ExpectChange::Upsert(e)), MAX_EXPECT_RECORD_LEN);
    }

    #[test]
    fn refuses_and_rejects() {
        let mut e = ftp();
        e.master = Tuple::new(proto::TCP, ip("::1"), 1, ip("::2"), 21);
        let mut buf = [0u8; MAX_EXPECT_RECORD_LEN];
        assert!(matches!(
            encode(&ExpectChange::Upsert(e), &mut buf),
            Err(ExpectEncodeError::Invalid(_))
        ));
        assert_eq!(
            encode(&ExpectChange::Upsert(ftp()), &mut buf[..20]),
            Err(ExpectEncodeError::BufferTooSmall)
        );
        let n = encode(&ExpectChange::Upsert(ftp()), &mut buf).unwrap();
        let good = buf;
        let bad = |at: usize, v: u8| {
            let mut b = good;
            b[at] = v;
            decode(&b[..n]).unwrap_err()
        };
        assert_eq!(bad(0, 3).what, "not an expectation record op");
        assert_eq!(bad(2, 2).what, "unsupported expectation record version");
        assert_eq!(bad(3, F_HELPER | 0x80).offset, 3);
        assert_eq!(bad(1, 200).what, "expectation record exceeds payload");
        assert_eq!(bad(1, 10).what, "expectation record length too small");
        // A length that does not match the body.
        assert_eq!(
            bad(1, (n - 1) as u8).what,
            "expectation record body exceeds its length"
        );
        // Name with a control character; length byte beyond the record.
        assert_eq!(bad(n - 2, 1).what, "invalid helper name");
        assert_eq!(
            bad(n - 4, 9).what,
            "expectation record body exceeds its length"
        );
        // A delete that claims NAT.
        let d = encode(&ExpectChange::Delete(ftp().key()), &mut buf).unwrap();
        buf[3] |= F_NAT;
        assert_eq!(
            decode(&buf[..d]).unwrap_err().what,
            "expectation record flags invalid for delete"
        );
        // Longer than needed: trailing bytes inside the declared length.
        let d = encode(&ExpectChange::Delete(ftp().key()), &mut buf).unwrap();
        buf[1] = (d + 1) as u8;
        assert_eq!(
            decode(&buf[..d + 1]).unwrap_err().what,
            "expectation record length does not match its body"
        );
        for cut in 0..n {
            assert!(decode(&good[..cut]).is_err());
        }
        assert!(is_expect_op(4) && is_expect_op(5) && !is_expect_op(3));
    }

    proptest! {
        #[test]
        fn prop_roundtrip(c in strategies::change()) {
            let mut buf = [0u8; MAX_EXPECT_RECORD_LEN];
            let (_, _, len) = plan(&c).unwrap();
            let n = encode(&c, &mut buf).unwrap();
            prop_assert_eq!(n, len);
            prop_assert!(n >= MIN_EXPECT_RECORD_LEN);
            prop_assert_eq!(decode(&buf[..n]).unwrap(), (c, n));
            prop_assert_eq!(peek(&buf[..n]).unwrap().1, n);
            for cut in 0..n {
                prop_assert!(decode(&buf[..cut]).is_err());
            }
            // Trailing bytes after the record are not part of it.
            let mut longer = buf[..n].to_vec();
            longer.extend_from_slice(&[0xaa; 7]);
            prop_assert_eq!(decode(&longer).unwrap(), (c, n));
        }

        #[test]
        fn prop_decode_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            // Garbage behind a valid-looking header.
            let mut b = vec![OP_EXPECT_UPSERT, bytes.len().min(255) as u8, 1, 0];
            b.extend_from_slice(&bytes);
            let _ = decode(&b);
        }
    }
}
