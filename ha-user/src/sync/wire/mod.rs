//! The sync wire format, version 1: `header (32) ‖ payload ‖ tag (16)`.
//!
//! Why a fixed `zerocopy` header plus hand-written records rather than a serde format:
//! bincode is unmaintained; postcard would work, but its varints and serde visitor
//! machinery sit on the hot path (one record per conntrack event), give less control
//! over compactness (presence flags, omitting a reply tuple that is just the swapped
//! original), and hide the bounds checks. Here the header is a plain `#[repr(C)]`
//! struct read in place, every record field is an explicit bounds-checked read whose
//! length is known from two bytes up front, unknown op codes and flag bits are errors,
//! and the whole decoder is small enough to fuzz to saturation. Versioning is explicit:
//! the magic and version byte come first and are checked before anything else, so a
//! future layout change is reported as `UnsupportedVersion`, not as garbage.
//!
//! Order of checks on receive ([`Datagram::parse`], then `verify` or [`open`], then
//! `message`): magic, version, size, type, flags, reserved/zero fields, declared length
//! — all stateless — then the tag (of the HMAC, or of the AEAD that also decrypts the
//! payload in place when the header's ENCRYPTED flag is set); only an authenticated
//! datagram touches peer state or is decoded. One bad record rejects the whole
//! datagram: it is authenticated, so a bad record means a bug or version skew on the
//! sender, and applying half a batch would hide it; it is counted as `Malformed` with
//! its offset.

pub mod check;
pub mod expect;
pub mod header;
pub mod message;
pub mod record;

pub use check::{
    BucketSet, DigestChunk, DigestRequest, MAX_BUCKETS, RepairDone, RepairRequest, valid_buckets,
};
pub use header::{FLAG_ENCRYPTED, HEADER_LEN, Header, HeaderFields, KNOWN_FLAGS, MAGIC, VERSION};
pub use message::{Alive, Control, Hello, Message, MsgType, Nack, ResyncDone, ResyncRequest};
pub use record::{EncodeError, MAX_RECORD_LEN, PayloadError, Records};

use zerocopy::IntoBytes;

use super::auth::{AeadNonce, KeyRing, SyncKey, TAG_LEN};
use super::reject::Reject;

/// Header plus tag: the smallest datagram.
pub const MIN_DATAGRAM: usize = HEADER_LEN + TAG_LEN;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65507;

/// A received datagram's bytes. An encrypted one is decrypted in place, so only a
/// writable buffer can be opened; a shared one can still be verified if it is plaintext.
#[derive(Debug)]
pub enum Bytes<'a> {
    Shared(&'a [u8]),
    Writable(&'a mut [u8]),
}

impl<'a> From<&'a [u8]> for Bytes<'a> {
    fn from(b: &'a [u8]) -> Bytes<'a> {
        Bytes::Shared(b)
    }
}

impl<'a> From<&'a Vec<u8>> for Bytes<'a> {
    fn from(b: &'a Vec<u8>) -> Bytes<'a> {
        Bytes::Shared(b)
    }
}

impl<'a> From<&'a mut [u8]> for Bytes<'a> {
    fn from(b: &'a mut [u8]) -> Bytes<'a> {
        Bytes::Writable(b)
    }
}

impl<'a> From<&'a mut Vec<u8>> for Bytes<'a> {
    fn from(b: &'a mut Vec<u8>) -> Bytes<'a> {
        Bytes::Writable(b)
    }
}

impl Bytes<'_> {
    pub fn len(&self) -> usize {
        match self {
            Bytes::Shared(b) => b.len(),
            Bytes::Writable(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Shared(b) => b,
            Bytes::Writable(b) => b,
        }
    }
}

/// The AEAD nonce of a datagram: its header's epoch and sequence (bytes 12..24).
fn nonce_of(header: &[u8]) -> AeadNonce {
    let mut n = [0u8; 12];
    n.copy_from_slice(&header[12..24]);
    n
}

/// Authenticates a datagram: checks a plaintext one's HMAC tag, or decrypts an
/// encrypted one in place (a writable buffer is needed for that; a shared encrypted
/// one is refused as [`Reject::Encrypted`]). The result's payload is plaintext. A
/// datagram that fails leaves the buffer as it was.
pub fn open<'a>(bytes: Bytes<'a>, keys: &KeyRing) -> Result<Datagram<'a>, Reject> {
    match bytes {
        Bytes::Shared(b) => {
            let dg = Datagram::parse(b)?;
            dg.verify(keys)?;
            Ok(dg)
        }
        Bytes::Writable(b) => {
            let (encrypted, key_id, signed_len) = {
                let dg = Datagram::parse(b)?;
                (dg.encrypted(), dg.header.key_id, dg.signed.len())
            };
            if !encrypted {
                // Nothing to decrypt: the read-only path, as is.
                return open(Bytes::Shared(b), keys);
            }
            let (signed, tag) = b.split_at_mut(signed_len);
            let tag: [u8; TAG_LEN] = (&*tag)
                .try_into()
                .map_err(|_| Reject::Truncated { len: signed_len })?;
            let (header, payload) = signed.split_at_mut(HEADER_LEN);
            if !keys.open(key_id, &nonce_of(header), header, payload, &tag) {
                return Err(Reject::AuthFailed);
            }
            let b: &'a [u8] = b;
            Datagram::parse(b)
        }
    }
}

/// A datagram whose header passed the stateless checks. Not yet authenticated, and an
/// encrypted one's payload is ciphertext until [`open`] has run.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    header: &'a Header,
    msg_type: MsgType,
    signed: &'a [u8],
    payload: &'a [u8],
    tag: &'a [u8; TAG_LEN],
}

impl<'a> Datagram<'a> {
    /// Checks everything that can be checked without a key or peer state.
    pub fn parse(bytes: &'a [u8]) -> Result<Datagram<'a>, Reject> {
        let len = bytes.len();
        // Magic and version first, so version skew is reported as such even when the
        // other version's header has another size.
        if len < 5 {
            return Err(Reject::Truncated { len });
        }
        if bytes[..4] != MAGIC {
            return Err(Reject::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(Reject::UnsupportedVersion(bytes[4]));
        }
        if len > MAX_DATAGRAM {
            return Err(Reject::Oversized { len });
        }
        let header = Header::parse(bytes).ok_or(Reject::Truncated { len })?;
        let msg_type = MsgType::from_u8(header.msg_type).ok_or(Reject::BadType(header.msg_type))?;
        let flags = header.flags.get();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Reject::BadHeader("unknown flag bits"));
        }
        if header.reserved != [0; 3] {
            return Err(Reject::BadHeader("reserved bytes not zero"));
        }
        if header.node.get() == 0 {
            return Err(Reject::BadHeader("node id 0"));
        }
        if header.epoch.get() == 0 {
            return Err(Reject::BadHeader("epoch 0"));
        }
        if header.seq.get() == 0 {
            return Err(Reject::BadHeader("sequence 0"));
        }
        let want = MIN_DATAGRAM + usize::from(header.payload_len.get());
        if len < want {
            return Err(Reject::Truncated { len });
        }
        if len > want {
            return Err(Reject::Oversized { len });
        }
        let (signed, tag) = bytes.split_at(want - TAG_LEN);
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| Reject::Truncated { len })?;
        Ok(Datagram {
            header,
            msg_type,
            signed,
            payload: &signed[HEADER_LEN..],
            tag,
        })
    }

    pub fn header(&self) -> &'a Header {
        self.header
    }

    pub fn msg_type(&self) -> MsgType {
        self.msg_type
    }

    pub fn node(&self) -> u32 {
        self.header.node.get()
    }

    pub fn epoch(&self) -> u32 {
        self.header.epoch.get()
    }

    pub fn seq(&self) -> u64 {
        self.header.seq.get()
    }

    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Whether the sender encrypted the payload.
    pub fn encrypted(&self) -> bool {
        self.header.flags.get() & FLAG_ENCRYPTED != 0
    }

    /// Checks a plaintext datagram's tag against the ring key(s) with the header's key
    /// id. An encrypted one needs [`open`] (it decrypts in place).
    pub fn verify(&self, keys: &KeyRing) -> Result<(), Reject> {
        if self.encrypted() {
            return Err(Reject::Encrypted);
        }
        if keys.verify(self.header.key_id, self.signed, self.tag) {
            Ok(())
        } else {
            Err(Reject::AuthFailed)
        }
    }

    /// Decodes the payload (DATA records stay lazy). Error offsets are from the start
    /// of the datagram.
    pub fn message(&self) -> Result<Message<'a>, Reject> {
        Message::decode(self.msg_type, self.header.count.get(), self.payload).map_err(malformed)
    }
}

/// A payload error as a [`Reject`], offset moved from payload- to datagram-relative.
pub fn malformed(e: PayloadError) -> Reject {
    Reject::Malformed {
        offset: HEADER_LEN + e.offset,
        what: e.what,
    }
}

/// Completes a datagram whose payload (`fields.payload_len` bytes) is already at
/// `buf[HEADER_LEN..]`: writes the header and appends the tag; with
/// [`FLAG_ENCRYPTED`] in `fields.flags` the payload is encrypted in place first (the
/// header is the associated data). Returns the datagram length. `buf` must hold
/// `MIN_DATAGRAM + payload_len` bytes.
pub fn seal(buf: &mut [u8], fields: HeaderFields, key: &SyncKey) -> usize {
    let header = Header::new(fields, key.id());
    buf[..HEADER_LEN].copy_from_slice(header.as_bytes());
    let end = HEADER_LEN + usize::from(fields.payload_len);
    let tag = if fields.flags & FLAG_ENCRYPTED != 0 {
        let (header, payload) = buf[..end].split_at_mut(HEADER_LEN);
        key.seal(&nonce_of(header), header, payload)
    } else {
        key.tag(&buf[..end])
    };
    buf[end..end + TAG_LEN].copy_from_slice(&tag);
    end + TAG_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> HeaderFields {
        HeaderFields {
            msg_type: MsgType::Alive as u8,
            flags: 0,
            node: 1,
            epoch: 2,
            seq: 3,
            payload_len: 16,
            count: 0,
        }
    }

    fn alive(key: &SyncKey) -> Vec<u8> {
        let mut buf = vec![0u8; MIN_DATAGRAM + 16];
        let (n, _) = Control::Alive(Alive {
            retained_from: 1,
            interval_ms: 1000,
        })
        .encode(&mut buf[HEADER_LEN..]);
        assert_eq!(n, 16);
        assert_eq!(seal(&mut buf, fields(), key), buf.len());
        buf
    }

    #[test]
    fn parse_verify_decode() {
        let key = SyncKey::derive(b"k").unwrap();
        let ring = KeyRing::new(key.clone(), None);
        let buf = alive(&key);
        let d = Datagram::parse(&buf).unwrap();
        assert_eq!((d.node(), d.epoch(), d.seq()), (1, 2, 3));
        d.verify(&ring).unwrap();
        assert_eq!(
            d.message().unwrap(),
            Message::Alive(Alive {
                retained_from: 1,
                interval_ms: 1000
            })
        );
        let other = KeyRing::new(SyncKey::derive(b"other").unwrap(), None);
        assert_eq!(d.verify(&other), Err(Reject::AuthFailed));
    }

    fn encrypted_alive(key: &SyncKey) -> Vec<u8> {
        let mut buf = vec![0u8; MIN_DATAGRAM + 16];
        Control::Alive(Alive {
            retained_from: 1,
            interval_ms: 1000,
        })
        .encode(&mut buf[HEADER_LEN..]);
        let f = HeaderFields {
            flags: FLAG_ENCRYPTED,
            ..fields()
        };
        assert_eq!(seal(&mut buf, f, key), buf.len());
        buf
    }

    #[test]
    fn encrypted_datagrams_open_only_in_place_and_only_with_the_key() {
        let key = SyncKey::derive(b"k").unwrap();
        let ring = KeyRing::new(key.clone(), None);
        let plain = alive(&key);
        let sealed = encrypted_alive(&key);
        // The header is the same apart from the flag; the payload is not in clear.
        assert_eq!(sealed[..6], plain[..6]);
        assert_eq!(sealed[8..HEADER_LEN], plain[8..HEADER_LEN]);
        assert_ne!(sealed[HEADER_LEN..], plain[HEADER_LEN..]);
        let d = Datagram::parse(&sealed).unwrap();
        assert!(d.encrypted());
        assert_eq!(d.verify(&ring), Err(Reject::Encrypted));
        assert_eq!(
            open(Bytes::from(&sealed), &ring).err(),
            Some(Reject::Encrypted)
        );

        let mut buf = sealed.clone();
        let d = open(Bytes::from(&mut buf), &ring).unwrap();
        assert_eq!(
            d.message().unwrap(),
            Message::Alive(Alive {
                retained_from: 1,
                interval_ms: 1000
            })
        );
        assert_eq!(
            buf[HEADER_LEN..buf.len() - TAG_LEN],
            plain[HEADER_LEN..plain.len() - TAG_LEN]
        );

        // Wrong key, any flipped bit of header, ciphertext or tag: refused, and the
        // buffer is unchanged.
        let other = KeyRing::new(SyncKey::derive(b"other").unwrap(), None);
        let mut buf = sealed.clone();
        assert_eq!(
            open(Bytes::from(&mut buf), &other).err(),
            Some(Reject::AuthFailed)
        );
        assert_eq!(buf, sealed);
        for at in [9, 13, 20, HEADER_LEN, HEADER_LEN + 5, sealed.len() - 1] {
            let mut buf = sealed.clone();
            buf[at] ^= 1;
            let before = buf.clone();
            assert_eq!(
                open(Bytes::from(&mut buf), &ring).err(),
                Some(Reject::AuthFailed),
                "byte {at}"
            );
            assert_eq!(buf, before);
        }
        // A plaintext datagram in a writable buffer is verified, not changed.
        let mut buf = plain.clone();
        assert!(open(Bytes::from(&mut buf), &ring).is_ok());
        assert_eq!(buf, plain);
        // Clearing the flag of an encrypted datagram does not make it a plaintext one.
        let mut buf = sealed.clone();
        buf[7] = 0;
        assert_eq!(
            open(Bytes::from(&mut buf), &ring).err(),
            Some(Reject::AuthFailed)
        );
    }

    #[test]
    fn stateless_rejects() {
        let key = SyncKey::derive(b"k").unwrap();
        let good = alive(&key);
        let parse = |b: &[u8]| Datagram::parse(b).map(|_| ());
        assert_eq!(parse(&good[..3]), Err(Reject::Truncated { len: 3 }));
        assert_eq!(parse(&good[..40]), Err(Reject::Truncated { len: 40 }));
        assert_eq!(
            parse(&good[..good.len() - 1]),
            Err(Reject::Truncated { len: 63 })
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse(&long), Err(Reject::Oversized { len: 65 }));
        let mut huge = good.clone();
        huge.resize(MAX_DATAGRAM + 1, 0);
        assert_eq!(
            parse(&huge),
            Err(Reject::Oversized {
                len: MAX_DATAGRAM + 1
            })
        );
        let with = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            parse(&b)
        };
        assert_eq!(with(0, b'X'), Err(Reject::BadMagic));
        assert_eq!(with(4, 2), Err(Reject::UnsupportedVersion(2)));
        assert_eq!(with(5, 0), Err(Reject::BadType(0)));
        assert_eq!(with(5, 11), Err(Reject::BadType(11)));
        assert!(with(7, 1).is_ok(), "ENCRYPTED is a known flag");
        assert_eq!(with(6, 0x80), Err(Reject::BadHeader("unknown flag bits")));
        assert_eq!(
            with(31, 1),
            Err(Reject::BadHeader("reserved bytes not zero"))
        );
        let mut zero_seq = good.clone();
        zero_seq[16..24].fill(0);
        assert_eq!(parse(&zero_seq), Err(Reject::BadHeader("sequence 0")));
        assert!(parse(&good).is_ok());
    }
}
