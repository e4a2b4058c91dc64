//! Fuzzes the replication channel's frame and message decoders (everything a TLS peer
//! can make the channel parse).
//!
//! The first byte picks the mode:
//! - even: the rest is a byte stream, decoded frame after frame as a connection would
//!   (`frame::decode`, then `Message::decode`), until it ends or is refused;
//! - odd: the rest is one payload for the frame type `(byte >> 1) % 7 + 1`, handed
//!   straight to `Message::decode`, so the payload decoders (ENTRIES records above all)
//!   are reached without having to guess a header.
//!
//! Checked beyond "no panic": a decoded frame is consistent with the streaming and the
//! exact decoders (any shorter prefix asks for more bytes; the whole frame alone decodes
//! the same); every decoded message re-encodes and decodes to itself, byte for byte
//! except ENTRIES (records may spell a reply tuple that the encoder folds); header
//! errors are the same whatever follows the header.

#![no_main]

use hasync::channel::frame::{self, FrameError, FrameType, HEADER_LEN, MAX_PAYLOAD};
use hasync::channel::message::Message;
use libfuzzer_sys::fuzz_target;

fn check_message(kind: FrameType, payload: &[u8]) {
    let f = frame::Frame { kind, payload };
    let Ok(m) = Message::decode(&f) else {
        return;
    };
    assert_eq!(m.kind(), kind);
    let mut out = Vec::new();
    m.encode(&mut out).expect("a decoded message re-encodes");
    assert!(out.len() <= HEADER_LEN + MAX_PAYLOAD);
    let again = Message::decode_frame(&out).expect("a re-encoded message decodes");
    assert_eq!(again, m, "round trip");
    if kind != FrameType::Entries {
        assert_eq!(&out[HEADER_LEN..], payload, "canonical payload");
    }
}

fn stream(mut buf: &[u8]) {
    loop {
        match frame::decode(buf) {
            Ok(Some((f, n))) => {
                assert!((HEADER_LEN..=HEADER_LEN + MAX_PAYLOAD).contains(&n));
                assert_eq!(n, HEADER_LEN + f.payload.len());
                assert_eq!(
                    frame::decode(&buf[..n - 1]),
                    Ok(None),
                    "a prefix is incomplete"
                );
                let exact = frame::decode_exact(&buf[..n]).expect("the frame alone decodes");
                assert_eq!(exact, f);
                check_message(f.kind, f.payload);
                buf = &buf[n..];
            }
            Ok(None) => {
                assert!(matches!(
                    frame::decode_exact(buf),
                    Err(FrameError::Truncated { .. })
                ));
                return;
            }
            Err(e) => {
                // Header errors depend on the header bytes alone.
                let cut = buf.len().min(HEADER_LEN);
                if !matches!(e, FrameError::Truncated { .. }) {
                    assert_eq!(frame::parse_header(&buf[..cut]).err(), Some(e));
                }
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        stream(rest);
    } else if let Some(kind) = FrameType::from_u8((mode >> 1) % 7 + 1) {
        check_message(kind, rest);
    }
});
