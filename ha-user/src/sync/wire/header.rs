//! The fixed datagram header.
//!
//! ```text
//! offset size field        notes
//!      0    4 magic        b"HSYN"
//!      4    1 version      1
//!      5    1 type         MsgType (1..=10)
//!      6    2 flags        bit 0 ENCRYPTED (payload is AES-256-GCM-SIV ciphertext); others 0
//!      8    4 node         sender node id, non-zero
//!     12    4 epoch        sender epoch, non-zero, new at every agent start
//!     16    8 seq          per (node, epoch), starts at 1, +1 per datagram of ANY type
//!     24    2 payload_len  bytes between header and tag
//!     26    2 count        DATA: records; NACK: ranges; DIGEST: hashes; others: 0
//!     28    1 key_id       which ring key signed it (a fingerprint of the derived key)
//!     29    3 reserved     must be 0
//!     32    … payload
//!  32+len  16 tag          HMAC-SHA256(header ‖ payload), first 16 bytes; ENCRYPTED:
//!                          the AEAD tag (nonce = epoch ‖ seq, associated data = header)
//! ```
//!
//! All integers are big-endian (network order). There is no separate "ack" / "last
//! sequence" field: every datagram, control messages included, consumes a sequence
//! number from the one per-epoch space, so the `seq` of any datagram (in particular of
//! the periodic ALIVE) tells receivers the sender's latest sequence, which is what makes
//! tail loss visible. It also means the reliability layer can retransmit any retained
//! datagram byte for byte: the receiver's replay window accepts a sequence it has not
//! seen. Reliability state that is not per-datagram (what the sender still retains, which
//! ranges are missing) travels in payloads (ALIVE, NACK).

use zerocopy::byteorder::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `b"HSYN"`.
pub const MAGIC: [u8; 4] = *b"HSYN";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 32;

/// Header flag: the payload is encrypted (see `sync::auth`). Builds before it was
/// implemented reject such datagrams as "encrypted", so enabling it on one node of a
/// mixed pair is visible in the peer's reject counters.
pub const FLAG_ENCRYPTED: u16 = 1 << 0;
/// Flags this build understands (and accepts).
pub const KNOWN_FLAGS: u16 = FLAG_ENCRYPTED;

/// The on-wire header, read and written in place with `zerocopy`.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    pub magic: [u8; 4],
    pub version: u8,
    pub msg_type: u8,
    pub flags: U16,
    pub node: U32,
    pub epoch: U32,
    pub seq: U64,
    pub payload_len: U16,
    pub count: U16,
    pub key_id: u8,
    pub reserved: [u8; 3],
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN);

/// The header fields a sender chooses (magic, version and reserved are implied; the
/// key id comes from the signing key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    pub msg_type: u8,
    pub flags: u16,
    pub node: u32,
    pub epoch: u32,
    pub seq: u64,
    pub payload_len: u16,
    pub count: u16,
}

impl Header {
    pub fn new(f: HeaderFields, key_id: u8) -> Header {
        Header {
            magic: MAGIC,
            version: VERSION,
            msg_type: f.msg_type,
            flags: U16::new(f.flags),
            node: U32::new(f.node),
            epoch: U32::new(f.epoch),
            seq: U64::new(f.seq),
            payload_len: U16::new(f.payload_len),
            count: U16::new(f.count),
            key_id,
            reserved: [0; 3],
        }
    }

    /// The header at the start of `bytes`, if there are at least [`HEADER_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Option<&Header> {
        Header::ref_from_prefix(bytes).ok().map(|(h, _)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes() {
        let h = Header::new(
            HeaderFields {
                msg_type: 1,
                flags: 0,
                node: 0x0102_0304,
                epoch: 0xdead_beef,
                seq: 0x1122_3344_5566_7788,
                payload_len: 0x05dc,
                count: 42,
            },
            0x9a,
        );
        #[rustfmt::skip]
        let expected: [u8; HEADER_LEN] = [
            b'H', b'S', b'Y', b'N',     // magic
            1,                          // version
            1,                          // type = DATA
            0, 0,                       // flags
            1, 2, 3, 4,                 // node
            0xde, 0xad, 0xbe, 0xef,     // epoch
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // seq
            0x05, 0xdc,                 // payload_len = 1500
            0, 42,                      // count
            0x9a,                       // key_id
            0, 0, 0,                    // reserved
        ];
        assert_eq!(h.as_bytes(), &expected);
        assert_eq!(Header::parse(&expected), Some(&h));
        assert_eq!(Header::parse(&expected[..31]), None);
    }
}
