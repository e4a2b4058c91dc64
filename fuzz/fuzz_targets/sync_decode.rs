//! Fuzzes the sync wire decoder and the Receiver.
//!
//! The input is a sequence of chunks, all fed to one Receiver so replay windows, peers
//! and epochs are exercised too. Each chunk is `ctl u8, len u16 (LE), body`:
//! - `ctl` even: `body` is a raw datagram (parsed, decoded without a key, and handed to
//!   the Receiver, where almost everything fails authentication);
//! - `ctl` odd: `body` = `type u8, count u16, epoch u8, seq u16, node u8, payload…` is
//!   wrapped in a valid header and signed with the Receiver's key, so arbitrary payloads
//!   reach the authenticated decoders.
//!
//! Checked beyond "no panic": a rejected datagram adds no changes; every decoded change
//! re-encodes and decodes to itself.

#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hasync::conntrack::Change;
use hasync::sync::wire::record::{decode_record, encode_record};
use hasync::sync::wire::{self, Datagram, HEADER_LEN, HeaderFields, MAX_RECORD_LEN, Message};
use hasync::sync::{KeyRing, Payload, Receiver, ReceiverConfig, SyncKey};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SyncKey> =
    LazyLock::new(|| SyncKey::derive(b"fuzz secret").unwrap_or_else(|_| unreachable!()));
static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

fn check_roundtrip(changes: &[Change]) {
    let mut buf = [0u8; MAX_RECORD_LEN];
    for c in changes {
        let n = encode_record(c, &mut buf).expect("decoded changes re-encode");
        let (d, m) = decode_record(&buf[..n]).expect("re-encoded changes decode");
        assert_eq!((&d, m), (c, n));
    }
}

fn raw(bytes: &[u8]) {
    let mut out = Vec::new();
    if let Ok(dg) = Datagram::parse(bytes)
        && let Ok(Message::Data(records)) = dg.message()
        && records.decode_into(&mut out).is_ok()
    {
        check_roundtrip(&out);
    }
}

fn signed(body: &[u8]) -> Option<Vec<u8>> {
    let (hdr, payload) = body.split_at_checked(8)?;
    let payload = &payload[..payload.len().min(wire::MAX_DATAGRAM - wire::MIN_DATAGRAM)];
    let fields = HeaderFields {
        msg_type: hdr[0] % 8,
        flags: 0,
        node: u32::from(hdr[6] % 4),
        epoch: u32::from(hdr[3] % 4),
        seq: u64::from(u16::from_le_bytes([hdr[4], hdr[5]])),
        payload_len: payload.len() as u16,
        count: u16::from_le_bytes([hdr[1], hdr[2]]),
    };
    let mut buf = vec![0u8; wire::MIN_DATAGRAM + payload.len()];
    buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let n = wire::seal(&mut buf, fields, &KEY);
    buf.truncate(n);
    Some(buf)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Receiver::new(ReceiverConfig::new(3), KeyRing::new(KEY.clone(), None));
    let src: SocketAddr = "192.0.2.1:4800".parse().unwrap_or_else(|_| unreachable!());
    let mut out: Vec<Change> = Vec::new();
    let mut rest = data;
    let mut tick = 0u64;
    while let Some((&ctl, tail)) = rest.split_first() {
        let Some((len, tail)) = tail.split_at_checked(2) else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([len[0], len[1]])).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let datagram = if ctl & 1 == 0 {
            raw(body);
            body.to_vec()
        } else {
            match signed(body) {
                Some(d) => d,
                None => continue,
            }
        };
        tick += u64::from(ctl >> 1);
        let now = *T0 + Duration::from_millis(tick);
        let before = out.len();
        match r.handle(now, src, &datagram, &mut out) {
            Ok(got) => {
                if let Payload::Data { changes } = got.payload {
                    assert_eq!(out.len(), before + changes);
                    check_roundtrip(&out[before..]);
                } else {
                    assert_eq!(out.len(), before);
                }
            }
            Err(_) => assert_eq!(out.len(), before, "a rejected datagram adds nothing"),
        }
    }
    let st = r.stats();
    assert_eq!(st.lost - st.recovered - st.expired, {
        r.peers()
            .iter()
            .map(|p| p.missing().map(|m| m.end() - m.start() + 1).sum::<u64>())
            .sum::<u64>()
    });
});
