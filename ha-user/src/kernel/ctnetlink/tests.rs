//! Codec unit tests, property tests, and tests against the real kernel in throwaway
//! network namespaces (root only; skipped otherwise).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use crate::conntrack::{Change, Entry, Family, Key, ProtoInfo, Tuple, Zone, proto, status};

use super::{
    consts::*,
    decode::{parse_ct, parse_error},
    encode::{
        EncodeOptions, encode_create, encode_delete, encode_update, install_status, unnat_reply,
    },
    nla::{MsgIter, Writer},
    *,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Entry {
    let orig = Tuple::new(proto::UDP, ip(src), sport, ip(dst), dport);
    Entry {
        orig,
        reply: orig.swapped(),
        status: status::CONFIRMED,
        timeout: 30,
        mark: 0,
        zone: Zone::DEFAULT,
        proto: ProtoInfo::None,
        labels: None,
    }
}

/// TCP ESTABLISHED, SNAT 10.0.0.5:40000 -> 198.51.100.1:61000 towards 192.0.2.9:80.
fn tcp_snat() -> Entry {
    let orig = Tuple::new(proto::TCP, ip("10.0.0.5"), 40000, ip("192.0.2.9"), 80);
    let reply = Tuple::new(proto::TCP, ip("192.0.2.9"), 80, ip("198.51.100.1"), 61000);
    Entry {
        orig,
        reply,
        status: status::SRC_NAT | status::SEEN_REPLY | status::ASSURED | status::CONFIRMED,
        timeout: 3600,
        mark: 0,
        zone: Zone::DEFAULT,
        proto: ProtoInfo::Tcp {
            state: TCP_CONNTRACK_ESTABLISHED,
            wscale: [7, 6],
            flags: [
                IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM,
                IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM,
            ],
        },
        labels: None,
    }
}

/// UDP DNAT 198.51.100.1:53 -> 10.0.0.53:5353.
fn udp_dnat() -> Entry {
    let orig = Tuple::new(proto::UDP, ip("192.0.2.9"), 5000, ip("198.51.100.1"), 53);
    let reply = Tuple::new(proto::UDP, ip("10.0.0.53"), 5353, ip("192.0.2.9"), 5000);
    Entry {
        status: status::DST_NAT | status::SEEN_REPLY | status::CONFIRMED,
        timeout: 120,
        ..udp("192.0.2.9", 5000, "198.51.100.1", 53)
    }
    .with_tuples(orig, reply)
}

fn icmp_echo() -> Entry {
    let mut orig = Tuple::new(proto::ICMP, ip("10.0.0.5"), 0, ip("192.0.2.9"), 0);
    orig.src_u = 77u16.to_be_bytes();
    orig.dst_u = [8, 0];
    let mut reply = orig.swapped();
    reply.src_u = 77u16.to_be_bytes();
    reply.dst_u = [0, 0];
    Entry {
        status: status::SEEN_REPLY | status::CONFIRMED,
        ..udp("10.0.0.5", 0, "192.0.2.9", 0)
    }
    .with_tuples(orig, reply)
}

trait WithTuples {
    fn with_tuples(self, orig: Tuple, reply: Tuple) -> Entry;
}

impl WithTuples for Entry {
    fn with_tuples(mut self, orig: Tuple, reply: Tuple) -> Entry {
        self.orig = orig;
        self.reply = reply;
        self
    }
}

fn encode_one(f: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    let mut buf = Vec::new();
    f(&mut Writer::new(&mut buf));
    buf
}

fn decode_one(buf: &[u8]) -> CtMessage {
    let msgs: Vec<_> = MsgIter::new(buf).collect();
    assert_eq!(msgs.len(), 1);
    parse_ct(msgs[0].as_ref().unwrap()).unwrap()
}

// ---- encoding against hand-derived bytes ----------------------------------------------

fn nla(out: &mut Vec<u8>, len: u16, ty: u16) {
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
}

/// A UDP create, byte for byte from the header layouts: nlmsghdr (16), nfgenmsg (4),
/// then each attribute as {u16 len, u16 type} + payload padded to 4 bytes; nests carry
/// NLA_F_NESTED (0x8000); numbers inside attributes are big-endian.
#[test]
fn create_message_matches_hand_derived_bytes() {
    let e = Entry {
        status: status::SEEN_REPLY,
        ..udp("10.0.0.1", 1000, "10.0.0.2", 53)
    };
    let got = encode_one(|w| encode_create(w, 5, &e, &EncodeOptions::default()));

    let mut want = Vec::new();
    want.extend_from_slice(&148u32.to_ne_bytes()); // nlmsg_len
    want.extend_from_slice(&0x0100u16.to_ne_bytes()); // CTNETLINK << 8 | CT_NEW
    want.extend_from_slice(&0x0601u16.to_ne_bytes()); // REQUEST|EXCL|CREATE
    want.extend_from_slice(&5u32.to_ne_bytes()); // seq
    want.extend_from_slice(&0u32.to_ne_bytes()); // pid
    want.extend_from_slice(&[2, 0, 0, 0]); // AF_INET, v0, res_id 0
    for (ty, src, dst, sport, dport) in [
        (1u16, [10, 0, 0, 1], [10, 0, 0, 2], 1000u16, 53u16),
        (2u16, [10, 0, 0, 2], [10, 0, 0, 1], 53, 1000),
    ] {
        nla(&mut want, 52, ty | 0x8000); // CTA_TUPLE_ORIG / CTA_TUPLE_REPLY
        nla(&mut want, 20, 1 | 0x8000); // CTA_TUPLE_IP
        nla(&mut want, 8, 1); // CTA_IP_V4_SRC
        want.extend_from_slice(&src);
        nla(&mut want, 8, 2); // CTA_IP_V4_DST
        want.extend_from_slice(&dst);
        nla(&mut want, 28, 2 | 0x8000); // CTA_TUPLE_PROTO
        nla(&mut want, 5, 1); // CTA_PROTO_NUM
        want.extend_from_slice(&[17, 0, 0, 0]);
        nla(&mut want, 6, 2); // CTA_PROTO_SRC_PORT
        want.extend_from_slice(&sport.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        nla(&mut want, 6, 3); // CTA_PROTO_DST_PORT
        want.extend_from_slice(&dport.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
    }
    nla(&mut want, 8, 3); // CTA_STATUS: SEEN_REPLY | CONFIRMED
    want.extend_from_slice(&[0, 0, 0, 0x0a]);
    nla(&mut want, 8, 7); // CTA_TIMEOUT 30
    want.extend_from_slice(&[0, 0, 0, 30]);
    nla(&mut want, 8, 8); // CTA_MARK 0
    want.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(want.len(), 148);
    assert_eq!(got, want);
}

/// The SNAT create carries the un-translated reply tuple and a CTA_NAT_SRC nest.
#[test]
fn snat_create_sends_untranslated_reply_and_nat_nest() {
    let e = tcp_snat();
    let got = encode_one(|w| encode_create(w, 1, &e, &EncodeOptions::default()));
    let m = decode_one(&got);
    // The decoder re-applies the NAT nest; check the raw reply tuple separately.
    let un = unnat_reply(&e);
    assert_eq!(un, e.orig.swapped());
    assert_eq!(m.reply, Some(un));
    let nat = m.nat_src.unwrap();
    assert_eq!(nat.ip(), ip("198.51.100.1"));
    assert_eq!(nat.port, Some(61000u16.to_be_bytes()));
    assert_eq!(m.nat_dst, None);
    assert_eq!(
        m.entry().unwrap(),
        Entry {
            status: install_status(e.status),
            ..e
        }
    );
    // The NAT nest, byte for byte: MINIP, MAXIP, PROTO{PORT_MIN, PORT_MAX}.
    let mut nest = Vec::new();
    nla(&mut nest, 40, CTA_NAT_SRC | 0x8000);
    nla(&mut nest, 8, CTA_NAT_V4_MINIP);
    nest.extend_from_slice(&[198, 51, 100, 1]);
    nla(&mut nest, 8, CTA_NAT_V4_MAXIP);
    nest.extend_from_slice(&[198, 51, 100, 1]);
    nla(&mut nest, 20, CTA_NAT_PROTO | 0x8000);
    for ty in [CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX] {
        nla(&mut nest, 6, ty);
        nest.extend_from_slice(&61000u16.to_be_bytes());
        nest.extend_from_slice(&[0, 0]);
    }
    assert!(got.windows(nest.len()).any(|w| w == nest.as_slice()));
}

#[test]
fn dnat_and_icmp_unnat() {
    let d = udp_dnat();
    assert_eq!(unnat_reply(&d), d.orig.swapped());
    let i = icmp_echo();
    assert_eq!(
        unnat_reply(&i),
        i.reply,
        "no NAT: reply kept (ICMP type stays 0)"
    );
    let mut isnat = i;
    isnat.status |= status::SRC_NAT;
    isnat.reply.dst = crate::conntrack::addr_bytes(ip("198.51.100.1"));
    isnat.reply.src_u = 1234u16.to_be_bytes();
    let un = unnat_reply(&isnat);
    assert_eq!(un.dst_ip(), ip("10.0.0.5"));
    assert_eq!(un.src_u, 77u16.to_be_bytes());
    assert_eq!(un.dst_u, [0, 0]);
}

#[test]
fn update_and_delete_round_trip() {
    let mut e = tcp_snat();
    e.zone = Zone::new(7);
    e.mark = 0x42;
    e.labels = Some([0xa5; 16]);
    let m = decode_one(&encode_one(|w| {
        encode_update(w, 9, &e, true, &EncodeOptions::default())
    }));
    assert_eq!(m.key().unwrap(), e.key());
    assert_eq!(m.reply, None, "updates carry no reply tuple");
    assert_eq!((m.nat_src, m.nat_dst), (None, None), "updates carry no NAT");
    assert_eq!(m.status, install_status(e.status));
    assert_eq!(
        (m.mark, m.timeout, m.proto, m.labels),
        (0x42, 3600, e.proto, e.labels)
    );
    // Without status.
    let m = decode_one(&encode_one(|w| {
        encode_update(w, 9, &e, false, &EncodeOptions::default())
    }));
    assert_eq!(m.status, 0);
    // Fixed timeouts are not refreshed (the kernel answers EPERM).
    e.status |= status::FIXED_TIMEOUT;
    let m = decode_one(&encode_one(|w| {
        encode_update(w, 9, &e, true, &EncodeOptions::default())
    }));
    assert_eq!(m.timeout, 0);
    // Delete: key only, for each zone direction the kernel can look up.
    for zone in [
        Zone::DEFAULT,
        Zone::new(7),
        Zone {
            id: 9,
            dir: Zone::DIR_ORIG,
        },
    ] {
        let key = Key { orig: e.orig, zone };
        let m = decode_one(&encode_one(|w| encode_delete(w, 3, &key)));
        assert_eq!(m.key().unwrap(), key);
        assert_eq!(m.reply, None);
    }
}

/// SCTP verification tags are the kernel's `__be32` as capture copies it from memory:
/// their native bytes go on the wire unchanged.
#[test]
fn sctp_vtag_bytes_are_kept() {
    let mut e = udp("10.0.0.1", 1, "10.0.0.2", 2);
    e.orig.proto = proto::SCTP;
    e.reply.proto = proto::SCTP;
    let tag = u32::from_ne_bytes([0x11, 0x22, 0x33, 0x44]);
    e.proto = ProtoInfo::Sctp {
        state: 3,
        vtag: [tag, 0],
    };
    let b = encode_one(|w| encode_create(w, 1, &e, &EncodeOptions::default()));
    let mut attr = Vec::new();
    nla(&mut attr, 8, CTA_PROTOINFO_SCTP_VTAG_ORIGINAL);
    attr.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    assert!(b.windows(8).any(|w| w == attr.as_slice()));
    assert_eq!(decode_one(&b).proto, e.proto);
}

#[test]
fn liberal_option_sets_the_flag() {
    let e = tcp_snat();
    let opts = EncodeOptions {
        tcp_be_liberal: true,
    };
    let m = decode_one(&encode_one(|w| encode_create(w, 1, &e, &opts)));
    let ProtoInfo::Tcp { flags, .. } = m.proto else {
        panic!("no tcp info")
    };
    assert_eq!(
        flags[0] & IP_CT_TCP_FLAG_BE_LIBERAL,
        IP_CT_TCP_FLAG_BE_LIBERAL
    );
    assert_eq!(
        flags[1] & IP_CT_TCP_FLAG_BE_LIBERAL,
        IP_CT_TCP_FLAG_BE_LIBERAL
    );
}

#[test]
fn error_messages_decode_and_garbage_does_not() {
    // NLMSG_ERROR for seq 42, errno EEXIST, capped (original header only).
    let mut b = Vec::new();
    b.extend_from_slice(&36u32.to_ne_bytes());
    b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    b.extend_from_slice(&NLM_F_CAPPED.to_ne_bytes());
    b.extend_from_slice(&42u32.to_ne_bytes());
    b.extend_from_slice(&1234u32.to_ne_bytes());
    b.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
    b.extend_from_slice(&[0u8; 16]);
    let m = MsgIter::new(&b).next().unwrap().unwrap();
    assert_eq!((m.ty, m.seq), (NLMSG_ERROR, 42));
    assert_eq!(parse_error(&m), Ok(libc::EEXIST));
    // Truncated error payload.
    let mut t = b[..18].to_vec();
    t[0] = 18;
    let m = MsgIter::new(&t).next().unwrap().unwrap();
    assert!(parse_error(&m).is_err());
}

/// A kernel reply cut short or garbled at every position decodes to errors, never a
/// panic, and never to a wrong entry with a complete message length.
#[test]
fn truncated_and_garbled_replies_are_errors() {
    let mut e = tcp_snat();
    e.labels = Some([1; 16]);
    e.zone = Zone::new(3);
    let full = encode_one(|w| encode_create(w, 1, &e, &EncodeOptions::default()));
    for cut in 0..full.len() {
        let mut b = full[..cut].to_vec();
        // Claim the full length in the header, as a truncated datagram would.
        for r in MsgIter::new(&b) {
            assert!(r.is_err(), "cut at {cut}");
        }
        // Or fix up the header length so only the attributes are short.
        if cut >= NLMSG_HDRLEN {
            b[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            if let Some(Ok(m)) = MsgIter::new(&b).next() {
                let _ = parse_ct(&m).and_then(|c| c.entry());
            }
        }
    }
    for i in NLMSG_HDRLEN..full.len() {
        for v in [0u8, 1, 3, 0x7f, 0xff] {
            let mut b = full.clone();
            b[i] = v;
            for m in MsgIter::new(&b).flatten() {
                let _ = parse_ct(&m).and_then(|c| c.entry());
                let _ = parse_error(&m);
            }
        }
    }
}

// ---- property tests ---------------------------------------------------------------------

fn arb_tuple_parts() -> impl Strategy<Value = (Family, u8, [u8; 16], [u8; 16], [u8; 4], [u8; 4])> {
    (
        prop_oneof![Just(Family::V4), Just(Family::V6)],
        prop_oneof![
            Just(proto::TCP),
            Just(proto::UDP),
            Just(proto::ICMP),
            Just(proto::ICMPV6),
            Just(proto::SCTP),
            Just(proto::DCCP),
            Just(proto::GRE),
            Just(proto::UDPLITE),
            any::<u8>(),
        ],
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
    )
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        arb_tuple_parts(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        (any::<u16>(), 0u8..4),
        (
            0u8..4,
            any::<u8>(),
            any::<[u8; 2]>(),
            any::<[u8; 2]>(),
            any::<[u32; 2]>(),
        ),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(
            |((family, p, src, dst, ou, ru), rsrc, rdst, st, timeout, mark, zone, pi, labels)| {
                let mk = |src: [u8; 16], dst: [u8; 16], u: [u8; 4]| {
                    let mut t = Tuple {
                        family,
                        proto: p,
                        src,
                        dst,
                        src_u: [u[0], u[1]],
                        dst_u: [u[2], u[3]],
                    };
                    if family == Family::V4 {
                        t.src[4..].fill(0);
                        t.dst[4..].fill(0);
                    }
                    t
                };
                let proto_info = match pi.0 {
                    0 => ProtoInfo::None,
                    1 => ProtoInfo::Tcp {
                        state: pi.1,
                        wscale: pi.2,
                        flags: pi.3,
                    },
                    2 => ProtoInfo::Sctp {
                        state: pi.1,
                        vtag: pi.4,
                    },
                    _ => ProtoInfo::Dccp { state: pi.1 },
                };
                Entry {
                    orig: mk(src, dst, ou),
                    reply: mk(rsrc, rdst, ru),
                    status: st,
                    timeout,
                    mark,
                    zone: Zone {
                        id: zone.0,
                        dir: zone.1,
                    },
                    proto: proto_info,
                    labels,
                }
            },
        )
}

/// What survives encode → decode: the kernel format has no ports for protocols without
/// them, no zone 0, only the directions 1/2/3, only the protocol info of the tuple's
/// protocol, and the status bits hasync installs.
fn representable(mut e: Entry) -> Entry {
    for t in [&mut e.orig, &mut e.reply] {
        if !(proto::has_ports(t.proto) || proto::is_icmp(t.proto) || t.proto == proto::GRE) {
            t.src_u = [0; 2];
            t.dst_u = [0; 2];
        }
    }
    e.status = install_status(e.status);
    e.zone = if e.zone.id == 0 {
        Zone::DEFAULT
    } else if e.zone.dir == Zone::DIR_ORIG || e.zone.dir == Zone::DIR_REPL {
        e.zone
    } else {
        Zone::new(e.zone.id)
    };
    e.proto = match (e.proto, e.orig.proto) {
        (p @ ProtoInfo::Tcp { .. }, proto::TCP)
        | (p @ ProtoInfo::Sctp { .. }, proto::SCTP)
        | (p @ ProtoInfo::Dccp { .. }, proto::DCCP) => p,
        _ => ProtoInfo::None,
    };
    e
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        for m in MsgIter::new(&bytes).flatten() {
            if let Ok(c) = parse_ct(&m) {
                let _ = c.entry();
                let _ = c.key();
            }
            let _ = parse_error(&m);
        }
        // Also as a bare attribute area behind a valid header.
        let mut b = Vec::new();
        b.extend_from_slice(&((bytes.len() + 20) as u32).to_ne_bytes());
        b.extend_from_slice(&ct_msg_type(IPCTNL_MSG_CT_NEW).to_ne_bytes());
        b.extend_from_slice(&[0u8; 10]);
        b.extend_from_slice(&[2, 0, 0, 0]);
        b.extend_from_slice(&bytes);
        for m in MsgIter::new(&b).flatten() {
            if let Ok(c) = parse_ct(&m) {
                let _ = c.entry();
            }
        }
    }

    #[test]
    fn create_round_trips(e in arb_entry()) {
        let e = representable(e);
        let b = encode_one(|w| encode_create(w, 7, &e, &EncodeOptions::default()));
        let m = decode_one(&b);
        prop_assert_eq!(m.entry().unwrap(), e);
        prop_assert!(b.len() <= encode::MAX_MSG_LEN);
    }

    #[test]
    fn delete_round_trips(e in arb_entry()) {
        let e = representable(e);
        let key = e.key();
        let m = decode_one(&encode_one(|w| encode_delete(w, 7, &key)));
        let mut want = key;
        if want.zone.dir == Zone::DIR_REPL {
            // Looked up through the original direction, where a reply-only zone is
            // the default zone.
            want.zone = Zone::DEFAULT;
        }
        prop_assert_eq!(m.key().unwrap(), want);
    }
}

// ---- against the kernel ------------------------------------------------------------------

use testkit::NetNs;

macro_rules! require_root {
    () => {
        if !testkit::is_root() {
            eprintln!("skipping: needs root for network namespaces");
            return;
        }
    };
}

fn upsert(entry: Entry, new: bool) -> Change {
    Change::Upsert { entry, new }
}

/// conntrack -L lines (normalised: no timeout/use/id).
fn ct_lines(ns: &NetNs) -> Vec<String> {
    testkit::conntrack_list(ns)
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect()
}

/// The fields the kernel keeps as installed (its own status bits and the countdown
/// removed), for comparing a dump with what was installed.
fn comparable(mut e: Entry) -> Entry {
    e.status &= status::SEEN_REPLY | status::ASSURED | status::SRC_NAT | status::DST_NAT;
    e.timeout = 0;
    e
}

fn installed(ns: &NetNs, changes: Vec<Change>) -> (InstallReport, Vec<Entry>) {
    ns.enter(move || {
        let mut inst = Installer::new().unwrap();
        let rep = inst.install(&changes);
        (rep, dump(None).unwrap())
    })
    .unwrap()
}

#[test]
fn installs_nat_icmp_v6_mark_zone() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let mut marked = udp("10.1.1.1", 1, "10.1.1.2", 2);
    marked.mark = 0x42;
    marked.zone = Zone::new(7);
    let v6 = udp("2001:db8::1", 1234, "2001:db8::2", 53);
    let entries = [tcp_snat(), udp_dnat(), icmp_echo(), v6, marked];
    let (rep, dumped) = installed(&ns, entries.iter().map(|e| upsert(*e, true)).collect());
    assert_eq!(rep.created, 5, "{rep:?}");
    assert_eq!(rep.errors(), 0, "{rep:?}");
    assert_eq!(rep.batches, 1);

    let lines = ct_lines(&ns);
    let want = [
        "ipv4 2 icmp 1 src=10.0.0.5 dst=192.0.2.9 type=8 code=0 id=77 src=192.0.2.9 dst=10.0.0.5 type=0 code=0 id=77 mark=0",
        "ipv4 2 tcp 6 ESTABLISHED src=10.0.0.5 dst=192.0.2.9 sport=40000 dport=80 src=192.0.2.9 dst=198.51.100.1 sport=80 dport=61000 [ASSURED] mark=0",
        "ipv4 2 udp 17 src=10.1.1.1 dst=10.1.1.2 sport=1 dport=2 [UNREPLIED] src=10.1.1.2 dst=10.1.1.1 sport=2 dport=1 mark=66 zone=7",
        "ipv4 2 udp 17 src=192.0.2.9 dst=198.51.100.1 sport=5000 dport=53 src=10.0.0.53 dst=192.0.2.9 sport=5353 dport=5000 mark=0",
        "ipv6 10 udp 17 src=2001:db8::1 dst=2001:db8::2 sport=1234 dport=53 [UNREPLIED] src=2001:db8::2 dst=2001:db8::1 sport=53 dport=1234 mark=0",
    ];
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(lines, want);

    // The NAT bindings are real: conntrack's --src-nat / --dst-nat list entries whose
    // NAT was set up by the kernel (IPS_*_NAT_DONE) with a translated reply; the dump
    // below checks IPS_SRC_NAT, which only nf_nat_setup_info() can set.
    let snat = ns.exec("conntrack", ["-L", "--src-nat"]).unwrap();
    let snat = String::from_utf8_lossy(&snat.stdout);
    assert_eq!(snat.lines().count(), 1, "{snat}");
    assert!(
        snat.contains("dst=198.51.100.1 sport=80 dport=61000"),
        "{snat}"
    );
    let dnat = ns.exec("conntrack", ["-L", "--dst-nat"]).unwrap();
    let dnat = String::from_utf8_lossy(&dnat.stdout);
    assert_eq!(dnat.lines().count(), 1, "{dnat}");
    assert!(dnat.contains("src=10.0.0.53"), "{dnat}");

    // Our own dump sees the same, field by field.
    assert_eq!(dumped.len(), 5);
    for e in &entries {
        let d = dumped
            .iter()
            .find(|d| d.key() == e.key())
            .unwrap_or_else(|| panic!("{e:?} not dumped"));
        assert_eq!(comparable(*d), comparable(*e));
        assert!(
            d.timeout <= e.timeout && d.timeout + 5 >= e.timeout,
            "{d:?}"
        );
        assert_eq!(d.status & status::CONFIRMED, status::CONFIRMED);
    }
    let snat_dumped = dumped.iter().find(|d| d.key() == tcp_snat().key()).unwrap();
    assert_eq!(
        snat_dumped.status & (status::SRC_NAT | status::SRC_NAT_DONE),
        status::SRC_NAT | status::SRC_NAT_DONE
    );
}

/// A translated reply tuple alone gives no NAT binding: this is the failure the NAT
/// attributes fix (kept as a regression check of our understanding of the kernel).
#[test]
fn reply_tuple_alone_is_not_a_nat_binding() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let e = tcp_snat();
    let dumped = ns
        .enter(move || {
            let sock = crate::kernel::netlink_socket::NlSocket::netfilter(false).unwrap();
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf);
            // Hand-made create: translated reply, no CTA_NAT_SRC.
            let m = w.begin_msg(
                ct_msg_type(IPCTNL_MSG_CT_NEW),
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
                1,
                2,
                0,
                0,
            );
            let full = encode_one(|w| encode_update(w, 0, &e, true, &EncodeOptions::default()));
            // Reuse the update's attributes (orig tuple, status, timeout...) and add the
            // translated reply tuple.
            let attrs = &full[NLMSG_HDRLEN + NFGENMSG_LEN..];
            let tmp = encode_one(|tw| {
                let n = tw.begin_nest(CTA_TUPLE_REPLY);
                let ipn = tw.begin_nest(CTA_TUPLE_IP);
                tw.put(CTA_IP_V4_SRC, &e.reply.src[..4]);
                tw.put(CTA_IP_V4_DST, &e.reply.dst[..4]);
                tw.end_nest(ipn);
                let pn = tw.begin_nest(CTA_TUPLE_PROTO);
                tw.put_u8(CTA_PROTO_NUM, proto::TCP);
                tw.put(CTA_PROTO_SRC_PORT, &e.reply.src_u);
                tw.put(CTA_PROTO_DST_PORT, &e.reply.dst_u);
                tw.end_nest(pn);
                tw.end_nest(n);
            });
            buf.extend_from_slice(attrs);
            buf.extend_from_slice(&tmp);
            let mut w = Writer::new(&mut buf);
            w.end_msg(m);
            sock.send(&buf).unwrap();
            let mut r = vec![0u8; 4096];
            let n = sock.recv(&mut r, false).unwrap();
            let m = MsgIter::new(&r[..n]).next().unwrap().unwrap();
            assert_eq!(parse_error(&m), Ok(0));
            dump(None).unwrap()
        })
        .unwrap();
    assert_eq!(dumped.len(), 1);
    assert_eq!(
        dumped[0].reply, e.reply,
        "the translated reply tuple is kept"
    );
    assert_eq!(
        dumped[0].status & status::SRC_NAT,
        0,
        "but there is no SNAT binding"
    );
    let snat = ns.exec("conntrack", ["-L", "--src-nat"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&snat.stdout).lines().count(), 0);
}

#[test]
fn upsert_semantics() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let a = udp("10.2.0.1", 1000, "10.2.0.2", 53);
    let b = udp("10.2.0.3", 1000, "10.2.0.4", 53);
    let mut syn = tcp_snat();
    syn.orig = Tuple::new(proto::TCP, ip("10.2.0.5"), 40001, ip("10.2.0.6"), 443);
    syn.reply = syn.orig.swapped();
    syn.status = status::SEEN_REPLY | status::CONFIRMED;
    syn.proto = ProtoInfo::Tcp {
        state: TCP_CONNTRACK_SYN_RECV,
        wscale: [0, 0],
        flags: [0, 0],
    };
    syn.timeout = 60;
    let mut est = syn;
    est.status |= status::ASSURED;
    est.mark = 5;
    est.timeout = 3000;
    est.proto = ProtoInfo::Tcp {
        state: TCP_CONNTRACK_ESTABLISHED,
        wscale: [0, 0],
        flags: [0, 0],
    };
    // An update that would clear ASSURED (the kernel refuses): applied without status.
    let mut unassured = est;
    unassured.status = status::SEEN_REPLY | status::CONFIRMED;
    unassured.mark = 6;

    let reports = ns
        .enter(move || {
            let mut inst = Installer::new().unwrap();
            let mut out = vec![
                // 1: create; 2: same again = update; 3: update of a missing entry = create.
                inst.install(&[upsert(a, true)]),
                inst.install(&[upsert(a, true)]),
                inst.install(&[upsert(b, false)]),
                // 4: SYN_RECV, then ESTABLISHED + ASSURED + mark as an update.
                inst.install(&[upsert(syn, true)]),
                inst.install(&[upsert(est, false)]),
            ];
            let after_est = dump(None).unwrap();
            // 5: clearing ASSURED: EBUSY, retried without status.
            out.push(inst.install(&[upsert(unassured, false)]));
            let after_unassured = dump(None).unwrap();
            // 6: delete, delete again.
            out.push(inst.install(&[Change::Delete(a.key())]));
            out.push(inst.install(&[Change::Delete(a.key())]));
            // 7: an update fallback superseded by a later delete of the same key.
            let c = udp("10.2.0.7", 1, "10.2.0.8", 2);
            out.push(inst.install(&[upsert(c, false), Change::Delete(c.key())]));
            let totals = *inst.totals();
            (out, after_est, after_unassured, totals, dump(None).unwrap())
        })
        .unwrap();
    let (r, after_est, after_unassured, totals, end) = reports;
    assert_eq!((r[0].created, r[0].errors()), (1, 0), "{:?}", r[0]);
    assert_eq!(
        (r[1].updated, r[1].created, r[1].errors()),
        (1, 0, 0),
        "{:?}",
        r[1]
    );
    assert_eq!(r[1].messages, 2, "create, then update");
    assert_eq!((r[2].created, r[2].errors()), (1, 0), "{:?}", r[2]);
    assert_eq!(
        (r[3].created, r[4].updated, r[4].errors()),
        (1, 1, 0),
        "{:?}",
        r[4]
    );
    let d = after_est.iter().find(|d| d.key() == est.key()).unwrap();
    assert_eq!(comparable(*d), comparable(est));
    assert!(d.timeout > 2900);
    assert_eq!(
        (r[5].updated, r[5].errors(), r[5].messages),
        (1, 0, 2),
        "{:?}",
        r[5]
    );
    let d = after_unassured
        .iter()
        .find(|d| d.key() == est.key())
        .unwrap();
    assert_eq!(d.mark, 6, "the rest of the update was applied");
    assert_ne!(d.status & status::ASSURED, 0, "ASSURED stays");
    assert_eq!((r[6].deleted, r[6].errors()), (1, 0));
    assert_eq!((r[7].delete_not_found, r[7].errors()), (1, 0));
    assert_eq!(
        (
            r[8].superseded,
            r[8].delete_not_found,
            r[8].created,
            r[8].errors()
        ),
        (1, 1, 0, 0),
        "{:?}",
        r[8]
    );
    assert_eq!(totals.created, 3);
    assert_eq!(totals.errors(), 0);
    let mut keys: Vec<Key> = end.iter().map(|e| e.key()).collect();
    keys.sort();
    let mut want = vec![b.key(), est.key()];
    want.sort();
    assert_eq!(keys, want);
    let lines = ct_lines(&ns);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ESTABLISHED src=10.2.0.5") && l.contains("[ASSURED] mark=6")),
        "{lines:?}"
    );
}

#[test]
fn sctp_and_directional_zone() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let mut sctp = udp("10.3.0.1", 5000, "10.3.0.2", 38412);
    sctp.orig.proto = proto::SCTP;
    sctp.reply.proto = proto::SCTP;
    sctp.status |= status::SEEN_REPLY | status::ASSURED;
    sctp.proto = ProtoInfo::Sctp {
        state: 3, // ESTABLISHED
        vtag: [0x1122_3344, 0x5566_7788],
    };
    let mut zo = udp("10.3.0.3", 1, "10.3.0.4", 2);
    zo.zone = Zone {
        id: 11,
        dir: Zone::DIR_ORIG,
    };
    let mut zr = udp("10.3.0.5", 1, "10.3.0.6", 2);
    zr.zone = Zone {
        id: 12,
        dir: Zone::DIR_REPL,
    };
    let (rep, dumped) = installed(
        &ns,
        vec![upsert(sctp, true), upsert(zo, true), upsert(zr, true)],
    );
    assert_eq!((rep.created, rep.errors()), (3, 0), "{rep:?}");
    for e in [sctp, zo, zr] {
        let d = dumped
            .iter()
            .find(|d| d.key() == e.key())
            .unwrap_or_else(|| panic!("{e:?} not in {dumped:?}"));
        assert_eq!(comparable(*d), comparable(e));
    }
    // Directional zones: update and delete find them.
    let (rep, dumped) = installed(
        &ns,
        vec![
            upsert(Entry { mark: 9, ..zo }, false),
            upsert(Entry { mark: 9, ..zr }, false),
            Change::Delete(sctp.key()),
        ],
    );
    assert_eq!(
        (rep.updated, rep.deleted, rep.errors()),
        (2, 1, 0),
        "{rep:?}"
    );
    assert!(
        dumped.iter().all(|d| d.mark == 9 && d.key() != sctp.key()),
        "{dumped:?}"
    );
    let (rep, dumped) = installed(
        &ns,
        vec![Change::Delete(zo.key()), Change::Delete(zr.key())],
    );
    assert_eq!((rep.deleted, rep.errors()), (2, 0), "{rep:?}");
    assert!(dumped.is_empty());
}

/// Labels need the namespace to have the label extension in use (a `ct label` rule):
/// without it the kernel creates the entry silently without labels and refuses label
/// updates with ENOSPC (counted as `labels_unsupported`, the rest of the update applies).
#[test]
fn labels_need_a_label_rule() {
    require_root!();
    let labels = {
        let mut l = [0u8; 16];
        l[15] = 0b1010_0000; // bits 5 and 7 (the kernel stores little-endian longs)
        l[0] = 1;
        l
    };
    let mut e = udp("10.4.0.1", 1, "10.4.0.2", 2);
    e.labels = Some(labels);

    let plain = NetNs::new("ct").unwrap();
    let (rep, dumped) = installed(&plain, vec![upsert(e, true)]);
    assert_eq!((rep.created, rep.errors()), (1, 0), "{rep:?}");
    assert_eq!(
        dumped[0].labels, None,
        "no label extension in this namespace"
    );
    let (rep, _) = installed(&plain, vec![upsert(Entry { mark: 3, ..e }, false)]);
    assert_eq!(
        (rep.updated, rep.labels_unsupported, rep.errors()),
        (1, 1, 0),
        "{rep:?}"
    );

    let ns = NetNs::new("ct").unwrap();
    ns.nft(
        "table inet lbl {\n chain c { type filter hook prerouting priority 0; ct label set 127; }\n}\n",
    )
    .unwrap();
    let (rep, dumped) = installed(&ns, vec![upsert(e, true)]);
    assert_eq!((rep.created, rep.errors()), (1, 0), "{rep:?}");
    assert_eq!(dumped[0].labels, Some(labels));
    let mut other = labels;
    other[3] = 0x80;
    let (rep, dumped) = installed(
        &ns,
        vec![upsert(
            Entry {
                labels: Some(other),
                ..e
            },
            false,
        )],
    );
    assert_eq!(
        (rep.updated, rep.labels_unsupported, rep.errors()),
        (1, 0, 0)
    );
    assert_eq!(dumped[0].labels, Some(other));
}

fn wait_destroyed(l: &mut DestroyListener, key: &Key) -> Destroyed {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match l.recv().unwrap() {
            Recv::Destroyed(d) if d.key == *key => return d,
            Recv::Destroyed(_) => {}
            Recv::Overrun => panic!("overrun"),
            Recv::Empty => {
                assert!(Instant::now() < deadline, "no destroy event for {key:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn destroy_listener_reports_key_and_origin() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let (mut inst, mut listener) = ns
        .enter(|| (Installer::new().unwrap(), DestroyListener::new().unwrap()))
        .unwrap();
    assert!(listener.rcvbuf().unwrap() >= 32 << 20);
    assert_eq!(listener.recv().unwrap(), Recv::Empty);
    let mut by_cli = udp("10.5.0.1", 1111, "10.5.0.2", 53);
    by_cli.zone = Zone::new(4);
    by_cli.mark = 12;
    let by_us = tcp_snat();
    let mut by_timeout = udp("10.5.0.3", 1, "10.5.0.4", 2);
    by_timeout.timeout = 1;
    let rep = inst.install(&[
        upsert(by_cli, true),
        upsert(by_us, true),
        upsert(by_timeout, true),
    ]);
    assert_eq!(rep.created, 3, "{rep:?}");

    // Another process deletes: the event carries that process's socket, not ours.
    ns.exec(
        "conntrack",
        [
            "-D", "-p", "udp", "-s", "10.5.0.1", "--sport", "1111", "-w", "4",
        ],
    )
    .unwrap();
    let d = wait_destroyed(&mut listener, &by_cli.key());
    assert_ne!(d.portid, inst.portid());
    let full = d.entry.expect("destroy events carry the reply tuple");
    assert_eq!(
        (full.reply, full.mark, full.zone),
        (by_cli.reply, 12, Zone::new(4))
    );
    eprintln!("conntrack -D event nlmsg_pid = {}", d.portid);

    // Our own delete carries our port id.
    let rep = inst.install(&[Change::Delete(by_us.key())]);
    assert_eq!(rep.deleted, 1);
    let d = wait_destroyed(&mut listener, &by_us.key());
    assert_eq!(d.portid, inst.portid());
    assert_eq!(
        d.entry.unwrap().reply,
        by_us.reply,
        "NAT reply tuple reported"
    );

    // Expiry: the kernel itself (here reaped by a dump walking the table) → port id 0.
    std::thread::sleep(Duration::from_millis(2100));
    let _ = ns.enter(|| dump(None)).unwrap();
    let d = wait_destroyed(&mut listener, &by_timeout.key());
    assert_eq!(d.portid, 0);
    assert_eq!(listener.stats().overruns, 0);
}

#[test]
fn listener_reports_overrun() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let (mut inst, mut listener) = ns
        .enter(|| {
            (
                Installer::new().unwrap(),
                DestroyListener::with_config(ListenerConfig {
                    rcvbuf: 4096,
                    reliable: false,
                })
                .unwrap(),
            )
        })
        .unwrap();
    let changes: Vec<Change> = (0..2000u16)
        .map(|i| upsert(udp("10.6.0.1", 1000 + i, "10.6.0.2", 53), true))
        .collect();
    assert_eq!(inst.install(&changes).created, 2000);
    ns.enter(|| flush(None).unwrap()).unwrap();
    let (mut events, mut overrun) = (0, false);
    loop {
        match listener.recv().unwrap() {
            Recv::Destroyed(_) => events += 1,
            Recv::Overrun => overrun = true,
            Recv::Empty => break,
        }
    }
    assert!(overrun, "a 4 KiB buffer cannot hold 2000 events");
    assert!(events < 2000);
    assert_eq!(listener.stats().overruns, 1);
}

/// Failure replies beyond the receive buffer are lost; the installer counts that and
/// shrinks its batches.
#[test]
fn lost_replies_are_counted() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let (rep, limit) = ns
        .enter(|| {
            let mut inst = Installer::with_config(InstallerConfig {
                rcvbuf: 4096,
                ..InstallerConfig::default()
            })
            .unwrap();
            let before = inst.batch_limit().1;
            // Deletes of absent entries: every request fails.
            let changes: Vec<Change> = (0..1000u16)
                .map(|i| Change::Delete(udp("10.7.0.1", i, "10.7.0.2", 1).key()))
                .collect();
            let rep = inst.install(&changes);
            (rep, (before, inst.batch_limit().1))
        })
        .unwrap();
    assert!(rep.replies_lost > 0, "{rep:?}");
    assert!(rep.delete_not_found < 1000);
    assert_eq!(limit, (64, 64));
}

#[test]
fn flush_by_family() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let counts = ns
        .enter(|| {
            let mut inst = Installer::new().unwrap();
            inst.install(&[
                upsert(udp("10.8.0.1", 1, "10.8.0.2", 2), true),
                upsert(udp("2001:db8::8", 1, "2001:db8::9", 2), true),
            ]);
            let both = dump(None).unwrap().len();
            let v6 = dump(Some(Family::V6)).unwrap().len();
            flush(Some(Family::V4)).unwrap();
            let after_v4 = dump(None).unwrap();
            flush(None).unwrap();
            (both, v6, after_v4, dump(None).unwrap().len())
        })
        .unwrap();
    assert_eq!((counts.0, counts.1), (2, 1));
    assert_eq!(counts.2.len(), 1);
    assert_eq!(counts.2[0].orig.family, Family::V6);
    assert_eq!(counts.3, 0);
}

/// 100k UDP entries in one `install` call; prints the rate (run with --release for a
/// meaningful number). Also measures the resend path (all EEXIST → update).
#[test]
fn install_100k_rate() {
    require_root!();
    const N: u32 = 100_000;
    let ns = NetNs::new("ct").unwrap();
    let changes: Vec<Change> = (0..N)
        .map(|i| {
            let mut e = udp("10.9.0.1", 0, "10.9.0.2", 0);
            e.orig.src[2] = (i >> 16) as u8;
            e.orig.src_u = ((i & 0xffff) as u16).to_be_bytes();
            e.orig.dst_u = 53u16.to_be_bytes();
            e.reply = e.orig.swapped();
            e.status |= status::SEEN_REPLY;
            e.timeout = 600;
            upsert(e, true)
        })
        .collect();
    let (first, second, limits, dump_t, dumped) = ns
        .enter(move || {
            let mut inst = Installer::new().unwrap();
            let t = Instant::now();
            let r1 = inst.install(&changes);
            let first = (r1, t.elapsed());
            let t = Instant::now();
            let r2 = inst.install(&changes);
            let second = (r2, t.elapsed());
            let t = Instant::now();
            let n = dump(Some(Family::V4)).unwrap().len();
            (first, second, inst.batch_limit(), t.elapsed(), n)
        })
        .unwrap();
    let mode = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let rate = |d: Duration| N as f64 / d.as_secs_f64();
    eprintln!(
        "[{mode}] install {N} new entries: {:?} = {:.0} entries/s in {} batches (limit {:?} bytes/msgs)",
        first.1,
        rate(first.1),
        first.0.batches,
        limits
    );
    eprintln!(
        "[{mode}] re-install {N} existing (EEXIST -> update): {:?} = {:.0} entries/s, {} messages",
        second.1,
        rate(second.1),
        second.0.messages
    );
    eprintln!("[{mode}] dump {dumped} entries: {dump_t:?}");
    assert_eq!(
        (first.0.created, first.0.errors()),
        (N as u64, 0),
        "{:?}",
        first.0
    );
    assert_eq!(
        (second.0.updated, second.0.errors()),
        (N as u64, 0),
        "{:?}",
        second.0
    );
    assert_eq!(first.0.replies_lost + second.0.replies_lost, 0);
    assert_eq!(dumped, N as usize);
    assert_eq!(testkit::conntrack_count(&ns).unwrap(), N as usize);
}

/// SNAT and DNAT on one entry, IPv6 SNAT, ICMP id mapping, and status bits the kernel
/// must not see (EXPECTED, DYING, NAT_DONE, TEMPLATE, OFFLOAD...) stripped.
#[test]
fn nat_combinations_and_status_bits() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    // Client 10.0.0.5 -> VIP 198.51.100.1:80, DNAT to 10.0.0.80:8080, SNAT to 10.0.0.1:61001.
    let both = Entry {
        orig: Tuple::new(proto::TCP, ip("192.0.2.5"), 40000, ip("198.51.100.1"), 80),
        reply: Tuple::new(proto::TCP, ip("10.0.0.80"), 8080, ip("10.0.0.1"), 61001),
        status: status::SRC_NAT
            | status::DST_NAT
            | status::SEEN_REPLY
            | status::ASSURED
            | status::CONFIRMED
            // Kernel-internal bits a capture may carry along:
            | status::SRC_NAT_DONE
            | status::DST_NAT_DONE
            | status::EXPECTED
            | status::DYING
            | status::TEMPLATE
            | status::SEQ_ADJUST
            | (1 << 12)
            | (1 << 14)
            | (1 << 15),
        ..tcp_snat()
    };
    let v6 = Entry {
        orig: Tuple::new(proto::UDP, ip("fd00::5"), 5000, ip("2001:db8::53"), 53),
        reply: Tuple::new(proto::UDP, ip("2001:db8::53"), 53, ip("2001:db8::1"), 40001),
        status: status::SRC_NAT | status::SEEN_REPLY | status::CONFIRMED,
        ..udp("fd00::5", 5000, "2001:db8::53", 53)
    };
    let mut icmp = icmp_echo();
    icmp.status |= status::SRC_NAT;
    icmp.reply.dst = crate::conntrack::addr_bytes(ip("198.51.100.1"));
    icmp.reply.src_u = 1234u16.to_be_bytes();
    let (rep, dumped) = installed(
        &ns,
        vec![upsert(both, true), upsert(v6, true), upsert(icmp, true)],
    );
    assert_eq!((rep.created, rep.errors()), (3, 0), "{rep:?} {:?}", dumped);
    for e in [both, v6, icmp] {
        let d = dumped.iter().find(|d| d.key() == e.key()).unwrap();
        assert_eq!(d.reply, e.reply, "kernel recomputed the translated reply");
        assert_eq!(
            d.status & (status::SRC_NAT | status::DST_NAT),
            e.status & (status::SRC_NAT | status::DST_NAT),
            "NAT bindings set by the kernel"
        );
        assert_eq!(
            d.status & (status::EXPECTED | status::DYING | status::TEMPLATE),
            0
        );
    }
    let lines = ct_lines(&ns);
    assert!(
        lines.iter().any(|l| l.contains(
            "src=192.0.2.5 dst=198.51.100.1 sport=40000 dport=80 src=10.0.0.80 dst=10.0.0.1 sport=8080 dport=61001 [ASSURED]"
        )),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("src=2001:db8::53 dst=2001:db8::1 sport=53 dport=40001")),
        "{lines:?}"
    );
    let count = |args: &[&str]| {
        let o = ns.exec("conntrack", args).unwrap();
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    // With a filter, conntrack lists both families.
    assert_eq!(count(&["-L", "--src-nat"]), 3, "TCP, ICMP and IPv6 UDP");
    // conntrack's --dst-nat is a client-side heuristic (DST_NAT_DONE and reply source
    // differs from original destination, address or "port"); for ICMP it compares the
    // id with type/code and lists the ICMP entry too. The kernel's IPS_DST_NAT is
    // checked through the dump above.
    assert_eq!(count(&["-L", "-p", "tcp", "--dst-nat"]), 1);
    assert_eq!(count(&["-L", "-f", "ipv6", "--src-nat"]), 1);
}

/// DCCP: installs either way; kernels built without DCCP conntrack (6.18 here) track it
/// with the generic tracker, which keeps neither ports nor state.
#[test]
fn dccp_entry_installs() {
    require_root!();
    let ns = NetNs::new("ct").unwrap();
    let mut e = udp("10.10.0.1", 4000, "10.10.0.2", 5000);
    e.orig.proto = proto::DCCP;
    e.reply.proto = proto::DCCP;
    e.proto = ProtoInfo::Dccp { state: 4 };
    let (rep, dumped) = installed(&ns, vec![upsert(e, true)]);
    assert_eq!((rep.created, rep.errors()), (1, 0), "{rep:?}");
    assert_eq!(dumped.len(), 1);
    let d = dumped[0];
    if d.orig == e.orig {
        assert_eq!(d.proto, e.proto);
        eprintln!("DCCP tracked with ports and state");
    } else {
        eprintln!("DCCP tracked generically: {:?} / {:?}", d.orig, d.proto);
    }
}
