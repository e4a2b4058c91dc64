//! Fuzzes the sync wire decoder, the Receiver (with its NACK / version / give-up state
//! machines) and the Sender's NACK handling.
//!
//! The input is a sequence of chunks, all fed to one Receiver so replay windows, peers,
//! epochs, gaps and negotiated versions are exercised too. Each chunk is
//! `ctl u8, len u16 (LE), body`:
//! - `ctl` even: `body` is a raw datagram (parsed, decoded without a key, and handed to
//!   the Receiver, where almost everything fails authentication);
//! - `ctl` odd: `body` = `type u8, count u16, epoch u8, seq u16, node u8, payload…` is
//!   wrapped in a valid header and signed with the Receiver's key (encrypted when the
//!   node byte's top bit is set), so arbitrary payloads of every message type (and
//!   invalid types) reach the authenticated decoders, through both the HMAC and the
//!   decrypt-in-place path. The Sender encrypts when the input's first byte is odd.
//!
//! `ctl >> 1` advances the simulated clock (ms), so NACK timers fire. After each chunk
//! the Receiver is polled for NACKs and resyncs; NACKs (and every received NACK
//! payload) are served by one Sender, whose retransmission queue is checked.
//!
//! DATA payloads go through the expectation-aware decoder (`handle_with_expects`,
//! conntrack records mixed with expectation records, ops 4/5), and the raw path decodes
//! them both ways (strict and mixed).
//!
//! Checked beyond "no panic": a rejected datagram adds no changes or expectations;
//! every decoded change and expectation change re-encodes and decodes to itself; every accepted control message re-encodes to the
//! exact payload bytes; the Sender's ready queue is consistent and every datagram in it
//! opens; given-up counts match what `poll_resync` reported; the window accounting
//! (`lost - recovered - expired == missing`) holds.

#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hasync::conntrack::{Change, ExpectChange};
use hasync::sync::wire::expect as xwire;
use hasync::sync::wire::record::{decode_record, encode_record};
use hasync::sync::wire::{
    self, BucketSet, Control, Datagram, HEADER_LEN, HeaderFields, MAX_RECORD_LEN, Message,
};
use hasync::sync::{
    DigestAssembly, KeyRing, NackRequest, Payload, Receiver, ReceiverConfig, Sender, SenderConfig,
    SyncKey,
};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SyncKey> =
    LazyLock::new(|| SyncKey::derive(b"fuzz secret").unwrap_or_else(|_| unreachable!()));
static RING: LazyLock<KeyRing> = LazyLock::new(|| KeyRing::new(KEY.clone(), None));
static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

fn check_roundtrip(changes: &[Change]) {
    let mut buf = [0u8; MAX_RECORD_LEN];
    for c in changes {
        let n = encode_record(c, &mut buf).expect("decoded changes re-encode");
        let (d, m) = decode_record(&buf[..n]).expect("re-encoded changes decode");
        assert_eq!((&d, m), (c, n));
    }
}

fn check_expect_roundtrip(changes: &[ExpectChange]) {
    let mut buf = [0u8; xwire::MAX_EXPECT_RECORD_LEN];
    for c in changes {
        let n = xwire::encode(c, &mut buf).expect("decoded expectations re-encode");
        let (d, m) = xwire::decode(&buf[..n]).expect("re-encoded expectations decode");
        assert_eq!((&d, m), (c, n));
    }
}

fn raw(bytes: &[u8]) {
    let mut out = Vec::new();
    let mut xs = Vec::new();
    if let Ok(dg) = Datagram::parse(bytes)
        && let Ok(Message::Data(records)) = dg.message()
    {
        if records.decode_into(&mut out).is_ok() {
            check_roundtrip(&out);
        }
        out.clear();
        match records.decode_mixed_into(&mut out, &mut xs) {
            Ok(n) => {
                assert_eq!(n, out.len() + xs.len());
                check_roundtrip(&out);
                check_expect_roundtrip(&xs);
            }
            Err(_) => assert!(out.is_empty() && xs.is_empty()),
        }
    }
    // The record decoder on its own, at every offset a record could start.
    if let Ok((c, n)) = xwire::decode(bytes) {
        assert!(n <= bytes.len());
        check_expect_roundtrip(&[c]);
    }
}

fn signed(body: &[u8]) -> Option<Vec<u8>> {
    let (hdr, payload) = body.split_at_checked(8)?;
    let payload = &payload[..payload.len().min(wire::MAX_DATAGRAM - wire::MIN_DATAGRAM)];
    let fields = HeaderFields {
        // 0 and 11 are invalid types.
        msg_type: hdr[0] % 12,
        flags: if hdr[6] & 0x80 != 0 {
            wire::FLAG_ENCRYPTED
        } else {
            0
        },
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

/// An accepted control message re-encodes to exactly its payload bytes.
fn check_reencode(payload: &[u8], count: u16, p: &Payload<'_>) {
    let mut buf = vec![0u8; payload.len().max(64) + 16];
    let ranges;
    let hashes: Vec<u64>;
    let set;
    let c = match *p {
        Payload::Data { .. } => return,
        Payload::Alive(a) => Control::Alive(a),
        Payload::Nack(n) => {
            ranges = n.ranges().collect::<Vec<_>>();
            Control::Nack {
                node: n.node,
                epoch: n.epoch,
                ranges: &ranges,
            }
        }
        Payload::Hello { hello, .. } => Control::Hello(hello),
        Payload::ResyncRequest(r) => Control::ResyncRequest(r),
        Payload::ResyncDone(d) => Control::ResyncDone(d),
        Payload::DigestRequest(r) => Control::DigestRequest(r),
        Payload::Digest(d) => {
            hashes = d.hashes().collect();
            Control::Digest {
                request_id: d.request_id,
                buckets: d.buckets,
                first: d.first,
                entries: d.entries,
                hashes: &hashes,
            }
        }
        Payload::RepairRequest(r) => {
            set = BucketSet::from_bitmap(r.buckets, r.bitmap()).expect("decoded bitmaps are valid");
            Control::RepairRequest {
                target: r.target,
                request_id: r.request_id,
                set: &set,
            }
        }
        Payload::RepairDone(d) => {
            set = BucketSet::from_bitmap(d.buckets, d.bitmap()).expect("decoded bitmaps are valid");
            Control::RepairDone {
                requester: d.requester,
                request_id: d.request_id,
                records: d.records,
                set: &set,
            }
        }
    };
    let (n, c2) = c.encode(&mut buf);
    assert_eq!((&buf[..n], c2), (payload, count), "{p:?}");
}

fn check_sender(s: &Sender) {
    assert_eq!(s.ready().count(), s.ready_len());
    assert_eq!(s.ready().len(), s.ready_len());
    for d in s.ready() {
        let mut copy = d.to_vec();
        let dg = wire::open((&mut copy).into(), &RING).expect("own datagrams open");
        assert!(s.retained_range().contains(&dg.seq()));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Receiver::new(ReceiverConfig::new(3), RING.clone());
    let mut cfg = SenderConfig::new(1, 1);
    cfg.retain = 16;
    cfg.max_datagram = 512;
    cfg.encrypt = data.first().is_some_and(|b| b & 1 == 1);
    let mut s = Sender::new(cfg, KEY.clone(), *T0).unwrap_or_else(|_| unreachable!());
    let mut asm = DigestAssembly::default();
    let src: SocketAddr = "192.0.2.1:4800".parse().unwrap_or_else(|_| unreachable!());
    let mut out: Vec<Change> = Vec::new();
    let mut xs: Vec<ExpectChange> = Vec::new();
    let mut rest = data;
    let mut tick = 0u64;
    let mut reported = 0u64;
    while let Some((&ctl, tail)) = rest.split_first() {
        let Some((len, tail)) = tail.split_at_checked(2) else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([len[0], len[1]])).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let mut datagram = if ctl & 1 == 0 {
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
        let (before, xbefore) = (out.len(), xs.len());
        let sent = datagram.clone();
        // What the receiver will see once it has decrypted (opening is stateless).
        let mut plain = datagram.clone();
        let _ = wire::open((&mut plain).into(), &RING);
        match r.handle_with_expects(now, src, &mut datagram, &mut out, &mut xs) {
            Ok(got) => {
                if let Payload::Data { changes } = got.payload {
                    assert_eq!(out.len(), before + changes);
                    check_roundtrip(&out[before..]);
                    check_expect_roundtrip(&xs[xbefore..]);
                    // Through the sender too: anything decoded can be re-sent.
                    for c in &out[before..] {
                        s.push(c).expect("decoded changes encode");
                    }
                    for x in &xs[xbefore..] {
                        s.push_expect(x).expect("decoded expectations encode");
                    }
                } else {
                    assert_eq!((out.len(), xs.len()), (before, xbefore));
                }
                let dg = Datagram::parse(&plain).expect("accepted datagrams parse");
                check_reencode(dg.payload(), dg.header().count.get(), &got.payload);
                match got.payload {
                    Payload::Nack(n) => {
                        // Served as if addressed to our sender, whatever it says.
                        let mut req = NackRequest::from_wire(&n);
                        req.node = s.node_id();
                        req.epoch = s.epoch();
                        s.handle_nack(now, got.node, &req);
                    }
                    Payload::Digest(c) => {
                        let _ = asm.add(got.node, &c);
                    }
                    _ => {}
                }
            }
            Err(e) => {
                assert_eq!(
                    (out.len(), xs.len()),
                    (before, xbefore),
                    "a rejected datagram adds nothing"
                );
                // Unauthenticated: untouched. Refused after authentication (replayed,
                // malformed, ...): decrypted, as `open` alone would have left it.
                if e == hasync::sync::Reject::AuthFailed {
                    assert_eq!(datagram, sent, "an unauthenticated datagram is left as it was");
                } else {
                    assert!(datagram == sent || datagram == plain, "{e:?}");
                }
            }
        }
        // The receiver's timers: its NACKs are served by the sender (bounded loop: each
        // poll either returns ranges or stops being due).
        for _ in 0..64 {
            let Some(mut n) = r.poll_nack(now) else {
                break;
            };
            assert!(!n.ranges.is_empty());
            n.node = s.node_id();
            n.epoch = s.epoch();
            s.queue(n.control());
            s.handle_nack(now, 2, &n);
        }
        while let Some(x) = r.poll_resync() {
            assert!(x.seqs > 0 && x.first <= x.last);
            reported += x.seqs;
        }
        s.flush();
        s.handle_timeout(now);
        check_sender(&s);
        // A partial send now and then.
        s.mark_sent(usize::from(ctl % 4));
        check_sender(&s);
        for p in r.peers() {
            let _ = p.sync(now);
        }
    }
    let st = r.stats();
    assert_eq!(st.given_up, reported);
    assert_eq!(st.lost - st.recovered - st.expired, {
        r.peers()
            .iter()
            .map(|p| p.missing().map(|m| m.end() - m.start() + 1).sum::<u64>())
            .sum::<u64>()
    });
});
