//! Frames of the replication channel: a fixed header, then a bounded payload.
//!
//! ```text
//! offset size field
//!      0    4 magic     "HSCH"
//!      4    1 version   1
//!      5    1 type      1 HELLO, 2 RESYNC_REQUEST, 3 ENTRIES, 4 RESYNC_DONE,
//!                       5 PING, 6 PONG, 7 ERROR
//!      6    2 reserved  0
//!      8    4 length    payload bytes, big-endian, at most MAX_PAYLOAD
//!     12    … payload
//! ```
//!
//! The decoders here are pure functions over bytes: they never allocate from a length
//! they have not checked against [`MAX_PAYLOAD`], and every header field is checked as
//! soon as its bytes are present, so a peer that sends garbage is refused after at most
//! one header, not after a megabyte. The stream reader (`io.rs`) uses the same
//! [`parse_header`].

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HSCH";
/// The frame format this build speaks.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;
/// The largest payload a peer may announce (1 MiB): bounds every buffer.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    ResyncRequest = 2,
    Entries = 3,
    ResyncDone = 4,
    Ping = 5,
    Pong = 6,
    Error = 7,
}

impl FrameType {
    pub const ALL: [FrameType; 7] = [
        FrameType::Hello,
        FrameType::ResyncRequest,
        FrameType::Entries,
        FrameType::ResyncDone,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::Error,
    ];

    pub fn from_u8(v: u8) -> Option<FrameType> {
        FrameType::ALL.get(usize::from(v).checked_sub(1)?).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::ResyncRequest => "RESYNC_REQUEST",
            FrameType::Entries => "ENTRIES",
            FrameType::ResyncDone => "RESYNC_DONE",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::Error => "ERROR",
        }
    }
}

/// A checked header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameType,
    /// Payload length, at most [`MAX_PAYLOAD`].
    pub len: usize,
}

/// One frame borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: FrameType,
    pub payload: &'a [u8],
}

/// Why received bytes were refused. The connection that sent them is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The input (or the connection) ended inside a frame.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    /// The header announces more than [`MAX_PAYLOAD`] bytes.
    #[error("oversized frame: payload of {len} bytes (at most {MAX_PAYLOAD})")]
    Oversized { len: u64 },
    #[error("bad magic (not a hasync replication channel frame)")]
    BadMagic,
    #[error("unsupported channel protocol version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown frame type {0}")]
    BadType(u8),
    /// Reserved bits set, or bytes after the frame where exactly one was expected.
    #[error("invalid header: {0}")]
    BadHeader(&'static str),
    /// The payload does not decode as its type says (`offset` from the payload start).
    #[error("malformed {frame} payload at offset {offset}: {what}")]
    Malformed {
        frame: &'static str,
        offset: usize,
        what: &'static str,
    },
    /// A well-formed frame that is not allowed at this point of the conversation.
    #[error("unexpected {got} frame: {why}")]
    Unexpected {
        got: &'static str,
        why: &'static str,
    },
}

/// [`FrameError`] without details: indexes counters and the log rate limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameErrorKind {
    Truncated,
    Oversized,
    BadMagic,
    UnsupportedVersion,
    BadType,
    BadHeader,
    Malformed,
    Unexpected,
}

impl FrameErrorKind {
    pub const COUNT: usize = 8;
    pub const ALL: [FrameErrorKind; FrameErrorKind::COUNT] = [
        FrameErrorKind::Truncated,
        FrameErrorKind::Oversized,
        FrameErrorKind::BadMagic,
        FrameErrorKind::UnsupportedVersion,
        FrameErrorKind::BadType,
        FrameErrorKind::BadHeader,
        FrameErrorKind::Malformed,
        FrameErrorKind::Unexpected,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameErrorKind::Truncated => "truncated",
            FrameErrorKind::Oversized => "oversized",
            FrameErrorKind::BadMagic => "bad_magic",
            FrameErrorKind::UnsupportedVersion => "unsupported_version",
            FrameErrorKind::BadType => "bad_type",
            FrameErrorKind::BadHeader => "bad_header",
            FrameErrorKind::Malformed => "malformed",
            FrameErrorKind::Unexpected => "unexpected",
        }
    }
}

impl FrameError {
    pub fn kind(&self) -> FrameErrorKind {
        match self {
            FrameError::Truncated { .. } => FrameErrorKind::Truncated,
            FrameError::Oversized { .. } => FrameErrorKind::Oversized,
            FrameError::BadMagic => FrameErrorKind::BadMagic,
            FrameError::UnsupportedVersion(_) => FrameErrorKind::UnsupportedVersion,
            FrameError::BadType(_) => FrameErrorKind::BadType,
            FrameError::BadHeader(_) => FrameErrorKind::BadHeader,
            FrameError::Malformed { .. } => FrameErrorKind::Malformed,
            FrameError::Unexpected { .. } => FrameErrorKind::Unexpected,
        }
    }
}

/// Checks the header fields present in `buf` (which may be shorter than a header).
/// `Ok(None)`: everything present is valid but the header is incomplete.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(FrameError::BadMagic);
    }
    if let Some(&v) = buf.get(4)
        && v != VERSION
    {
        return Err(FrameError::UnsupportedVersion(v));
    }
    let kind = match buf.get(5) {
        Some(&t) => Some(FrameType::from_u8(t).ok_or(FrameError::BadType(t))?),
        None => None,
    };
    if buf.iter().skip(6).take(2).any(|&b| b != 0) {
        return Err(FrameError::BadHeader("reserved bytes are not zero"));
    }
    let (Some(kind), Some(len)) = (kind, buf.get(8..12)) else {
        return Ok(None);
    };
    let mut l = [0u8; 4];
    l.copy_from_slice(len);
    let len = u32::from_be_bytes(l);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::Oversized { len: len.into() });
    }
    Ok(Some(Header {
        kind,
        len: len as usize,
    }))
}

/// Decodes the frame at the start of `buf` (a stream buffer): the frame and its total
/// length, `Ok(None)` when more bytes are needed, or why the bytes can never form one.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(h) = parse_header(buf)? else {
        return Ok(None);
    };
    let end = HEADER_LEN + h.len;
    match buf.get(HEADER_LEN..end) {
        Some(payload) => Ok(Some((
            Frame {
                kind: h.kind,
                payload,
            },
            end,
        ))),
        None => Ok(None),
    }
}

/// Decodes `buf` as exactly one frame (a datagram-style, complete input).
pub fn decode_exact(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    match decode(buf)? {
        Some((f, n)) if n == buf.len() => Ok(f),
        Some(_) => Err(FrameError::BadHeader("bytes after the frame")),
        None => {
            let need = match parse_header(buf)? {
                Some(h) => HEADER_LEN + h.len,
                None => HEADER_LEN,
            };
            Err(FrameError::Truncated {
                have: buf.len(),
                need,
            })
        }
    }
}

/// The header for a payload of `len` bytes.
pub fn header(kind: FrameType, len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if len > MAX_PAYLOAD {
        return Err(FrameError::Oversized { len: len as u64 });
    }
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = kind as u8;
    h[8..].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(h)
}

/// Appends one frame to `out`.
pub fn encode(kind: FrameType, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.extend_from_slice(&header(kind, payload.len())?);
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: FrameType, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(kind, payload, &mut v).unwrap();
        v
    }

    #[test]
    fn round_trip_every_type() {
        for kind in FrameType::ALL {
            let bytes = frame(kind, b"abc");
            assert_eq!(bytes.len(), HEADER_LEN + 3);
            let f = decode_exact(&bytes).unwrap();
            assert_eq!((f.kind, f.payload), (kind, &b"abc"[..]));
            assert_eq!(FrameType::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(FrameType::from_u8(0), None);
        assert_eq!(FrameType::from_u8(8), None);
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let bytes = frame(FrameType::Ping, &[0; 8]);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let (f, n) = decode(&bytes).unwrap().unwrap();
        assert_eq!((f.kind, n), (FrameType::Ping, bytes.len()));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut bytes = frame(FrameType::Ping, &[1; 8]);
        bytes.extend(frame(FrameType::Pong, &[2; 8]));
        let (a, n) = decode(&bytes).unwrap().unwrap();
        let (b, m) = decode(&bytes[n..]).unwrap().unwrap();
        assert_eq!(
            (a.kind, b.kind, n + m),
            (FrameType::Ping, FrameType::Pong, bytes.len())
        );
    }

    #[test]
    fn bad_frames_table() {
        let good = frame(FrameType::Hello, &[0, 0, 0, 1, 1]);
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };
        let mut oversized = good.clone();
        oversized[8..12].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
            ("empty", vec![], FrameError::Truncated { have: 0, need: 12 }),
            (
                "header only",
                good[..HEADER_LEN].to_vec(),
                FrameError::Truncated { have: 12, need: 17 },
            ),
            (
                "payload cut",
                good[..15].to_vec(),
                FrameError::Truncated { have: 15, need: 17 },
            ),
            ("bad magic", with(0, b'X'), FrameError::BadMagic),
            ("bad magic, short", b"HTTP".to_vec(), FrameError::BadMagic),
            (
                "tls record",
                vec![0x16, 3, 1, 0, 0xc4],
                FrameError::BadMagic,
            ),
            ("version 0", with(4, 0), FrameError::UnsupportedVersion(0)),
            ("version 2", with(4, 2), FrameError::UnsupportedVersion(2)),
            ("type 0", with(5, 0), FrameError::BadType(0)),
            ("type 200", with(5, 200), FrameError::BadType(200)),
            (
                "reserved",
                with(7, 1),
                FrameError::BadHeader("reserved bytes are not zero"),
            ),
            (
                "oversized",
                oversized,
                FrameError::Oversized {
                    len: MAX_PAYLOAD as u64 + 1,
                },
            ),
            (
                "trailing",
                trailing,
                FrameError::BadHeader("bytes after the frame"),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode_exact(&bytes).err(), Some(want), "{name}");
        }
    }

    #[test]
    fn garbage_is_refused_before_a_full_header() {
        assert_eq!(decode(b"G"), Err(FrameError::BadMagic));
        assert_eq!(decode(b"HSCH\x09"), Err(FrameError::UnsupportedVersion(9)));
        assert_eq!(decode(b"HSCH\x01\x63"), Err(FrameError::BadType(0x63)));
        assert_eq!(
            decode(b"HSCH\x01\x01\x01"),
            Err(FrameError::BadHeader("reserved bytes are not zero"))
        );
        // A maximal announced length is refused from the header alone.
        assert_eq!(
            decode(b"HSCH\x01\x03\x00\x00\xff\xff\xff\xff"),
            Err(FrameError::Oversized {
                len: u32::MAX.into()
            })
        );
    }

    #[test]
    fn encoder_refuses_oversized_payloads() {
        let big = vec![0u8; MAX_PAYLOAD + 1];
        let mut out = Vec::new();
        assert!(matches!(
            encode(FrameType::Entries, &big, &mut out),
            Err(FrameError::Oversized { .. })
        ));
        assert!(encode(FrameType::Entries, &big[..MAX_PAYLOAD], &mut out).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
            let _ = decode_exact(&bytes);
            let _ = parse_header(&bytes);
        }

        #[test]
        fn valid_prefix_then_garbage(
            kind in 1u8..=7,
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            tail in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let kind = FrameType::from_u8(kind).unwrap();
            let mut bytes = frame(kind, &payload);
            let n = bytes.len();
            bytes.extend(&tail);
            let (f, used) = decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, n);
            prop_assert_eq!(f.kind, kind);
            prop_assert_eq!(f.payload, &payload[..]);
        }
    }
}
