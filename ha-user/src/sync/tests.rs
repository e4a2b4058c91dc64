//! Whole-pipeline tests: Sender → (simulated network) → Receiver.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::wire::record::tests::arb_change;
use super::wire::{self, Datagram, HEADER_LEN, HeaderFields, Message, MsgType};
use super::*;
use crate::conntrack::{Change, Entry, Family, ProtoInfo, Tuple, Zone, proto, status};

fn src() -> SocketAddr {
    "[2001:db8::1]:4800".parse().unwrap()
}

fn key() -> SyncKey {
    SyncKey::derive(b"simulation secret").unwrap()
}

fn ring() -> KeyRing {
    KeyRing::new(key(), None)
}

/// xorshift64*: tiny, seeded, good enough for a network simulation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.next() as u8;
        }
        out
    }
}

fn random_change(rng: &mut Rng) -> Change {
    let family = if rng.chance(300) {
        Family::V6
    } else {
        Family::V4
    };
    let p = [proto::TCP, proto::UDP, proto::ICMP, proto::SCTP][rng.below(4) as usize];
    let mut orig = Tuple {
        family,
        proto: p,
        src: rng.bytes(),
        dst: rng.bytes(),
        src_u: rng.bytes(),
        dst_u: rng.bytes(),
    };
    if family == Family::V4 {
        orig.src[4..].fill(0);
        orig.dst[4..].fill(0);
    }
    let mut reply = orig.swapped();
    let mut st = status::CONFIRMED;
    if rng.chance(200) {
        reply.dst[0] ^= 0x80;
        st |= status::SRC_NAT;
    }
    let entry = Entry {
        orig,
        reply,
        status: st,
        timeout: rng.below(432_000) as u32,
        mark: if rng.chance(100) {
            rng.next() as u32
        } else {
            0
        },
        zone: if rng.chance(50) {
            Zone::new(rng.next() as u16)
        } else {
            Zone::DEFAULT
        },
        proto: match p {
            proto::TCP => ProtoInfo::Tcp {
                state: rng.below(10) as u8,
                wscale: [7, 7],
                flags: [0x23, 0x23],
            },
            proto::SCTP => ProtoInfo::Sctp {
                state: 3,
                vtag: [rng.next() as u32, rng.next() as u32],
            },
            _ => ProtoInfo::None,
        },
        labels: if rng.chance(20) {
            Some(rng.bytes())
        } else {
            None
        },
    };
    if rng.chance(250) {
        Change::Delete(entry.key())
    } else {
        Change::Upsert {
            entry,
            new: rng.chance(500),
        }
    }
}

/// What the sender put in each datagram, read back with the bare wire decoder.
fn truth(d: &[u8]) -> (u64, MsgType, Vec<Change>) {
    let dg = Datagram::parse(d).unwrap();
    let mut changes = Vec::new();
    if let Message::Data(r) = dg.message().unwrap() {
        r.decode_into(&mut changes).unwrap();
    }
    (dg.seq(), dg.msg_type(), changes)
}

/// A lossy, reordering, duplicating network between one sender and one receiver:
/// every change delivered is applied exactly once, in order within its datagram;
/// duplicates are rejected; losses are accounted exactly.
fn simulate(seed: u64) -> ReceiverStats {
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut cfg = SenderConfig::new(1, 0x5eed_0000 | seed as u32);
    cfg.max_datagram = 512 + rng.below(1000) as usize;
    cfg.alive_interval = Duration::from_millis(50);
    cfg.retain = 256;
    let mut s = Sender::new(cfg, key(), t0).unwrap();
    let mut r = Receiver::new(ReceiverConfig::new(2), ring());

    let (drop, dup, reorder) = (rng.below(150), rng.below(100), rng.below(300));
    let mut sent: BTreeMap<u64, Vec<Change>> = BTreeMap::new();
    let mut accepted: BTreeSet<u64> = BTreeSet::new();
    let mut in_flight: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    let mut dup_rejects = 0u64;
    let mut copies_delivered = 0u64;

    let deliver = |r: &mut Receiver,
                   now: Instant,
                   bytes: &[u8],
                   out: &mut Vec<Change>,
                   sent: &BTreeMap<u64, Vec<Change>>,
                   accepted: &mut BTreeSet<u64>,
                   dup_rejects: &mut u64| {
        out.clear();
        match r.handle(now, src(), bytes, out) {
            Ok(got) => {
                assert!(accepted.insert(got.seq), "seq {} accepted twice", got.seq);
                assert_eq!(out, &sent[&got.seq], "seq {}", got.seq);
            }
            Err(Reject::Replayed { seq }) => {
                assert!(accepted.contains(&seq));
                assert!(out.is_empty());
                *dup_rejects += 1;
            }
            Err(e) => panic!("unexpected reject {e:?}"),
        }
    };

    for tick in 0..3000u64 {
        let now = t0 + Duration::from_millis(tick);
        // Bursty load: idle ticks, single events, bursts of hundreds.
        let burst = match rng.below(10) {
            0..=3 => 0,
            4..=7 => rng.below(3),
            _ => rng.below(300),
        };
        for _ in 0..burst {
            s.push(&random_change(&mut rng)).unwrap();
        }
        s.flush();
        s.handle_timeout(now);
        for d in s.ready() {
            assert!(d.len() <= s.max_datagram());
            let (seq, _, changes) = truth(d);
            sent.insert(seq, changes);
            if rng.chance(drop) {
                continue;
            }
            let delay = if rng.chance(reorder) {
                rng.below(20)
            } else {
                0
            };
            in_flight.push((tick + delay, d.to_vec()));
            if rng.chance(dup) {
                in_flight.push((tick + rng.below(30), d.to_vec()));
            }
        }
        let n = s.ready_len();
        s.mark_sent(n);
        // Deliver what is due, in a scrambled order.
        let mut due = Vec::new();
        in_flight.retain(|(at, d)| {
            if *at <= tick {
                due.push(d.clone());
                false
            } else {
                true
            }
        });
        while !due.is_empty() {
            let i = rng.below(due.len() as u64) as usize;
            let d = due.swap_remove(i);
            copies_delivered += 1;
            deliver(
                &mut r,
                now,
                &d,
                &mut out,
                &sent,
                &mut accepted,
                &mut dup_rejects,
            );
        }
    }
    // Drain the network, then one final ALIVE over a perfect link exposes any tail loss.
    let end = t0 + Duration::from_secs(10);
    for (_, d) in std::mem::take(&mut in_flight) {
        copies_delivered += 1;
        deliver(
            &mut r,
            end,
            &d,
            &mut out,
            &sent,
            &mut accepted,
            &mut dup_rejects,
        );
    }
    assert!(s.handle_timeout(end));
    let last: Vec<u8> = s.ready().next().unwrap().to_vec();
    let (seq, _, _) = truth(&last);
    sent.insert(seq, Vec::new());
    copies_delivered += 1;
    deliver(
        &mut r,
        end,
        &last,
        &mut out,
        &sent,
        &mut accepted,
        &mut dup_rejects,
    );

    let never: BTreeSet<u64> = sent
        .keys()
        .copied()
        .filter(|s| !accepted.contains(s))
        .collect();
    let st = r.stats();
    assert_eq!(st.lost - st.recovered, never.len() as u64, "seed {seed}");
    let peer = r.peer(1).unwrap();
    assert_eq!(
        peer.missing_count_for_tests() + st.expired,
        never.len() as u64
    );
    let missing: BTreeSet<u64> = peer.missing().flatten().collect();
    assert!(missing.iter().all(|m| never.contains(m)));
    assert_eq!(st.rejects.replayed, dup_rejects);
    assert_eq!(
        st.rejects.total(),
        dup_rejects,
        "only duplicates are rejected"
    );
    assert_eq!(st.datagrams + dup_rejects, copies_delivered);
    let records: usize = accepted.iter().map(|s| sent[s].len()).sum();
    assert_eq!(st.records, records as u64);
    assert_eq!(s.stats().datagrams, sent.len() as u64);
    assert_eq!(s.stats().overruns, 0);
    *st
}

impl Peer {
    fn missing_count_for_tests(&self) -> u64 {
        self.missing().map(|r| r.end() - r.start() + 1).sum()
    }
}

#[test]
fn simulated_lossy_network() {
    let mut total = ReceiverStats::default();
    for seed in 1..=12 {
        let st = simulate(seed);
        total.lost += st.lost;
        total.recovered += st.recovered;
        total.expired += st.expired;
        total.rejects.replayed += st.rejects.replayed;
        total.records += st.records;
    }
    // The channel really was lossy, reordering and duplicating.
    assert!(total.lost > 100, "{total:?}");
    assert!(total.recovered > 100, "{total:?}");
    assert!(total.expired > 0, "{total:?}");
    assert!(total.rejects.replayed > 100, "{total:?}");
    println!("{total:?}");
}

/// Builds a datagram with an arbitrary (signed) payload.
fn signed(msg_type: u8, count: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; wire::MIN_DATAGRAM + payload.len()];
    buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let fields = HeaderFields {
        msg_type,
        flags: 0,
        node: 1,
        epoch: 1,
        seq: 1,
        payload_len: payload.len() as u16,
        count,
    };
    let n = wire::seal(&mut buf, fields, &key());
    assert_eq!(n, buf.len());
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Datagrams never exceed the maximum, records are never split, order is kept.
    #[test]
    fn prop_batching(
        changes in proptest::collection::vec(arb_change(), 0..300),
        max in 512usize..2000,
        flush_every in 1usize..80,
    ) {
        let t = Instant::now();
        let mut cfg = SenderConfig::new(1, 1);
        cfg.max_datagram = max;
        cfg.retain = 1024;
        let mut s = Sender::new(cfg, key(), t).unwrap();
        for (i, c) in changes.iter().enumerate() {
            s.push(c).unwrap();
            if i % flush_every == 0 {
                s.flush();
            }
        }
        s.flush();
        let mut r = Receiver::new(ReceiverConfig::new(2), ring());
        let mut out = Vec::new();
        for d in s.ready() {
            prop_assert!(d.len() <= max);
            prop_assert!(r.handle(t, src(), d, &mut out).is_ok());
        }
        prop_assert_eq!(out, changes);
    }

    /// Any single bit flip of an authenticated datagram is rejected, with no output.
    #[test]
    fn prop_bit_flips_are_rejected(
        changes in proptest::collection::vec(arb_change(), 1..8),
    ) {
        let t = Instant::now();
        let mut s = Sender::new(SenderConfig::new(1, 1), key(), t).unwrap();
        for c in &changes {
            s.push(c).unwrap();
        }
        s.flush();
        let good = s.ready().next().unwrap().to_vec();
        let mut r = Receiver::new(ReceiverConfig::new(2), ring());
        let mut out = Vec::new();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(r.handle(t, src(), &bad, &mut out).is_err(), "bit {}", bit);
            prop_assert!(out.is_empty());
        }
        prop_assert!(r.peers().is_empty());
        prop_assert!(r.handle(t, src(), &good, &mut out).is_ok());
    }

    /// Arbitrary bytes never panic the parser, the decoder or the receiver.
    #[test]
    fn prop_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut r = Receiver::new(ReceiverConfig::new(2), ring());
        let mut out = Vec::new();
        if let Ok(dg) = Datagram::parse(&bytes)
            && let Ok(Message::Data(recs)) = dg.message()
        {
            let _ = recs.decode_into(&mut out);
        }
        out.clear();
        if r.handle(Instant::now(), src(), &bytes, &mut out).is_err() {
            prop_assert!(out.is_empty());
        }
    }

    /// Authenticated garbage: reaches the payload decoders, still never panics, and a
    /// rejected datagram delivers nothing.
    #[test]
    fn prop_signed_garbage(
        ty in 1u8..=6,
        count in 0u16..6,
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let d = signed(ty, count, &payload);
        let mut r = Receiver::new(ReceiverConfig::new(2), ring());
        let mut out = Vec::new();
        match r.handle(Instant::now(), src(), &d, &mut out) {
            Ok(got) => {
                if let Payload::Data { changes } = got.payload {
                    prop_assert_eq!(changes, out.len());
                }
            }
            Err(e) => {
                prop_assert!(matches!(e, Reject::Malformed { .. }), "{:?}", e);
                prop_assert!(out.is_empty());
            }
        }
    }
}

/// Rough throughput of encode + batch + sign (and of the receive side), for the
/// performance budget. Run in release:
/// `cargo test --release -p ha-user --lib sync::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput() {
    let mut rng = Rng::new(7);
    let tcp: Vec<Change> = (0..4096)
        .map(|_| {
            loop {
                let c = random_change(&mut rng);
                if let Change::Upsert { entry, .. } = c
                    && entry.orig.proto == proto::TCP
                    && entry.orig.family == Family::V4
                    && entry.status & status::SRC_NAT == 0
                {
                    break c;
                }
            }
        })
        .collect();
    let t = Instant::now();
    let mut cfg = SenderConfig::new(1, 1);
    cfg.retain = 1024;
    let mut s = Sender::new(cfg, key(), t).unwrap();
    let n = 2_000_000usize;
    let start = Instant::now();
    for i in 0..n {
        s.push(&tcp[i % tcp.len()]).unwrap();
        if s.ready_len() >= 64 {
            s.mark_sent(64);
        }
    }
    s.flush();
    let el = start.elapsed();
    let st = *s.stats();
    println!(
        "send: {n} IPv4 TCP upserts in {el:?}: {:.1} ns/event, {:.2} M events/s, \
         {} datagrams ({:.1} records/datagram, {:.0} B avg)",
        el.as_nanos() as f64 / n as f64,
        n as f64 / el.as_secs_f64() / 1e6,
        st.datagrams,
        st.records as f64 / st.datagrams as f64,
        st.bytes as f64 / st.datagrams as f64,
    );

    // Receive side: verify + replay + decode of the same stream.
    let mut s = Sender::new(SenderConfig::new(1, 1), key(), t).unwrap();
    let mut dgs = Vec::new();
    for i in 0..200_000 {
        s.push(&tcp[i % tcp.len()]).unwrap();
        if s.ready_len() > 0 {
            dgs.extend(s.ready().map(<[u8]>::to_vec));
            let k = s.ready_len();
            s.mark_sent(k);
        }
    }
    let mut r = Receiver::new(ReceiverConfig::new(2), ring());
    let mut out = Vec::with_capacity(128);
    let start = Instant::now();
    let mut records = 0;
    for d in &dgs {
        out.clear();
        r.handle(t, src(), d, &mut out).unwrap();
        records += out.len();
    }
    let el = start.elapsed();
    println!(
        "receive: {records} records in {el:?}: {:.1} ns/event",
        el.as_nanos() as f64 / records as f64
    );
}
