//! A minimal netlink codec: a writer that appends messages and (nested) attributes to a
//! reusable `Vec<u8>`, and bounds-checked readers for messages and attributes.
//!
//! Written by hand because no maintained crate covers ctnetlink completely, and because
//! the installer encodes ~100k messages per batch: the writer never allocates once the
//! buffer has grown to the batch size, and the reader borrows from the receive buffer.

use super::consts::{NFGENMSG_LEN, NLA_F_NESTED, NLA_HDRLEN, NLA_TYPE_MASK, NLMSG_HDRLEN};

/// Why bytes from the kernel (or anywhere else) could not be decoded. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("attribute {what} has length {len}, expected {expected}")]
    AttrLen {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("missing attribute {0}")]
    Missing(&'static str),
    #[error("unsupported address family {0}")]
    Family(u8),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Rounds up to the 4-byte netlink alignment (`NLMSG_ALIGN` / `NLA_ALIGN`).
#[inline]
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages to a buffer. Offsets returned by `begin_*` are patched by the
/// matching `end_*`; nothing is allocated beyond the buffer's own growth.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { buf }
    }

    /// Current length of the underlying buffer.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Starts an nfnetlink message: `nlmsghdr` (length patched by [`end_msg`]) followed by
    /// `nfgenmsg`. Returns the message's start offset.
    ///
    /// [`end_msg`]: Writer::end_msg
    pub fn begin_msg(
        &mut self,
        ty: u16,
        flags: u16,
        seq: u32,
        family: u8,
        version: u8,
        res_id: u16,
    ) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the message is for the kernel.
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(version);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Patches the message length. Attributes are always padded, so the message ends
    /// aligned and the next one can follow directly.
    pub fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Drops a partially written message (used when a message would not fit a batch).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// Appends one attribute with its padding.
    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = (NLA_HDRLEN + data.len()) as u16;
        if data.len() <= 16 {
            // Every ctnetlink attribute we write: header, data and padding in one copy.
            let mut a = [0u8; NLA_HDRLEN + 16];
            a[..2].copy_from_slice(&len.to_ne_bytes());
            a[2..4].copy_from_slice(&ty.to_ne_bytes());
            a[NLA_HDRLEN..NLA_HDRLEN + data.len()].copy_from_slice(data);
            self.buf
                .extend_from_slice(&a[..NLA_HDRLEN + align4(data.len())]);
            return;
        }
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        let pad = align4(data.len()) - data.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
    }

    pub fn put_u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }

    /// A 16-bit attribute in network byte order (ports, zones).
    pub fn put_be16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_be_bytes());
    }

    /// A 32-bit attribute in network byte order (status, timeout, mark).
    pub fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Opens a nested attribute (`NLA_F_NESTED` set, as the kernel's own nests are).
    pub fn begin_nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One netlink message borrowed from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// `nlmsg_pid`: for ctnetlink events, the port id of the socket whose request caused
    /// the event (0 when the kernel acted on its own, e.g. a timeout).
    pub pid: u32,
    /// Everything after the `nlmsghdr`.
    pub payload: &'a [u8],
}

impl<'a> Msg<'a> {
    /// Splits an nfnetlink payload into (`nfgen_family`, `version`, attributes).
    pub fn nfgen(&self) -> Result<(u8, u8, &'a [u8]), DecodeError> {
        if self.payload.len() < NFGENMSG_LEN {
            return Err(DecodeError::Truncated {
                what: "nfgenmsg",
                need: NFGENMSG_LEN,
                have: self.payload.len(),
            });
        }
        Ok((
            self.payload[0],
            self.payload[1],
            &self.payload[NFGENMSG_LEN..],
        ))
    }
}

/// Iterates over the messages of a datagram. Stops after the first malformed header
/// (its length cannot be trusted to find the next one).
pub struct MsgIter<'a> {
    rest: &'a [u8],
}

impl<'a> MsgIter<'a> {
    pub fn new(buf: &'a [u8]) -> MsgIter<'a> {
        MsgIter { rest: buf }
    }
}

fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Iterator for MsgIter<'a> {
    type Item = Result<Msg<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        if b.len() < NLMSG_HDRLEN {
            self.rest = &[];
            return Some(Err(DecodeError::Truncated {
                what: "nlmsghdr",
                need: NLMSG_HDRLEN,
                have: b.len(),
            }));
        }
        let len = ne_u32(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.rest = &[];
            return Some(Err(DecodeError::Truncated {
                what: "netlink message",
                need: len.max(NLMSG_HDRLEN),
                have: b.len(),
            }));
        }
        let msg = Msg {
            ty: ne_u16(b, 4),
            flags: ne_u16(b, 6),
            seq: ne_u32(b, 8),
            pid: ne_u32(b, 12),
            payload: &b[NLMSG_HDRLEN..len],
        };
        self.rest = b.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    }
}

/// One attribute: type without the NESTED / BYTEORDER flags, and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub ty: u16,
    pub data: &'a [u8],
}

impl<'a> Attr<'a> {
    fn fixed<const N: usize>(&self, what: &'static str) -> Result<[u8; N], DecodeError> {
        // Netlink allows longer attributes than the type needs (newer kernels may grow a
        // struct); a shorter one is an error.
        match self.data.get(..N) {
            Some(s) => {
                let mut out = [0u8; N];
                out.copy_from_slice(s);
                Ok(out)
            }
            None => Err(DecodeError::AttrLen {
                what,
                len: self.data.len(),
                expected: N,
            }),
        }
    }

    pub fn u8(&self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.fixed::<1>(what)?[0])
    }

    pub fn be16(&self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.fixed(what)?))
    }

    pub fn be32(&self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.fixed(what)?))
    }

    /// Exactly `N` bytes (addresses, labels): a different length is an error.
    pub fn exact<const N: usize>(&self, what: &'static str) -> Result<[u8; N], DecodeError> {
        if self.data.len() != N {
            return Err(DecodeError::AttrLen {
                what,
                len: self.data.len(),
                expected: N,
            });
        }
        self.fixed(what)
    }

    /// The attributes nested in this one.
    pub fn nested(&self) -> AttrIter<'a> {
        AttrIter::new(self.data)
    }
}

/// Iterates over a run of attributes; stops after the first malformed one.
pub struct AttrIter<'a> {
    rest: &'a [u8],
}

impl<'a> AttrIter<'a> {
    pub fn new(buf: &'a [u8]) -> AttrIter<'a> {
        AttrIter { rest: buf }
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<Attr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.rest;
        // Fewer than a header's worth of bytes is trailing padding (the kernel's own
        // nla_for_each_attr ignores it too).
        if b.len() < NLA_HDRLEN {
            self.rest = &[];
            return None;
        }
        let len = ne_u16(b, 0) as usize;
        if len < NLA_HDRLEN || len > b.len() {
            self.rest = &[];
            return Some(Err(DecodeError::Truncated {
                what: "attribute",
                need: len.max(NLA_HDRLEN),
                have: b.len(),
            }));
        }
        let attr = Attr {
            ty: ne_u16(b, 2) & NLA_TYPE_MASK,
            data: &b[NLA_HDRLEN..len],
        };
        self.rest = b.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(attr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_pads_and_patches_lengths() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        let m = w.begin_msg(0x0100, 0x0001, 7, 2, 0, 0);
        let n = w.begin_nest(1);
        w.put_u8(1, 6);
        w.end_nest(n);
        w.put_be16(18, 7);
        w.end_msg(m);
        let mut want = Vec::new();
        want.extend_from_slice(&40u32.to_ne_bytes());
        want.extend_from_slice(&0x0100u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&12u16.to_ne_bytes());
        want.extend_from_slice(&(1u16 | NLA_F_NESTED).to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[6, 0, 0, 0]);
        want.extend_from_slice(&6u16.to_ne_bytes());
        want.extend_from_slice(&18u16.to_ne_bytes());
        want.extend_from_slice(&[0, 7, 0, 0]);
        assert_eq!(buf, want);

        let msgs: Vec<_> = MsgIter::new(&buf).collect();
        assert_eq!(msgs.len(), 1);
        let m = msgs[0].as_ref().unwrap();
        assert_eq!((m.ty, m.flags, m.seq), (0x0100, 1, 7));
        let (fam, _, attrs) = m.nfgen().unwrap();
        assert_eq!(fam, 2);
        let attrs: Vec<_> = AttrIter::new(attrs).map(|a| a.unwrap()).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].ty, 1);
        let inner: Vec<_> = attrs[0].nested().map(|a| a.unwrap()).collect();
        assert_eq!(inner[0].u8("x").unwrap(), 6);
        assert_eq!(attrs[1].be16("zone").unwrap(), 7);
    }

    #[test]
    fn reader_rejects_bad_lengths() {
        // Message length beyond the buffer.
        let mut b = vec![0u8; 16];
        b[0] = 200;
        let r: Vec<_> = MsgIter::new(&b).collect();
        assert!(matches!(r[..], [Err(DecodeError::Truncated { .. })]));
        // Attribute length 2 (< header).
        let a = [2u8, 0, 1, 0, 9, 9];
        let r: Vec<_> = AttrIter::new(&a).collect();
        assert!(matches!(r[..], [Err(DecodeError::Truncated { .. })]));
        // Short fixed-size attribute.
        let attr = Attr { ty: 1, data: &[1] };
        assert!(attr.be32("mark").is_err());
        assert!(attr.exact::<4>("ip").is_err());
    }
}
