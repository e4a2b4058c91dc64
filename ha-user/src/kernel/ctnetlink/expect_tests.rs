//! Expectation codec tests: round trips, a message laid out the way the kernel sends
//! it, and decoders fed garbage. (Tests against the kernel: `tests/expect.rs`.)

use std::net::IpAddr;

use proptest::prelude::*;

use crate::conntrack::{
    Entry, ExpectChange, ExpectFnName, ExpectMask, ExpectNat, Expectation, Family, HelperName,
    ProtoInfo, Tuple, Zone, expect::strategies, proto, status,
};

use super::{
    consts::*,
    decode::parse_ct,
    encode::EncodeOptions,
    expect::*,
    nla::{MsgIter, Writer},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Passive FTP through SNAT, as fw-a's kernel reports it.
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
        expectfn: ExpectFnName::new("nat-follow-master"),
        nat: Some(ExpectNat {
            dir: 0,
            src: [0; 16],
            src_u: 50000u16.to_be_bytes(),
        }),
    }
}

fn one(buf: &[u8]) -> super::nla::Msg<'_> {
    let msgs: Vec<_> = MsgIter::new(buf).collect();
    assert_eq!(msgs.len(), 1, "exactly one message");
    *msgs[0].as_ref().unwrap()
}

fn encode(f: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    let mut buf = Vec::new();
    f(&mut Writer::new(&mut buf));
    buf
}

const ALWAYS: ExpectEncodeOptions = ExpectEncodeOptions {
    helper_name: HelperNamePolicy::Always,
};

/// What survives a trip through ctnetlink: the zone attribute has no direction (and a
/// zone without the original direction is not sent); protocols without tuple
/// attributes carry no unions.
fn netlink_view(mut e: Expectation) -> Expectation {
    e.zone = if e.zone.id != 0 && e.zone.dir & Zone::DIR_ORIG != 0 {
        Zone::new(e.zone.id)
    } else {
        Zone::DEFAULT
    };
    let unions = |p: u8| proto::has_ports(p) || p == proto::GRE || proto::is_icmp(p);
    if !unions(e.master.proto) {
        e.master.src_u = [0; 2];
        e.master.dst_u = [0; 2];
        if let Some(n) = &mut e.nat {
            n.src_u = [0; 2];
        }
    }
    if !unions(e.tuple.proto) {
        e.tuple.src_u = [0; 2];
        e.tuple.dst_u = [0; 2];
        e.mask.src_u = [0; 2];
    }
    e
}

#[test]
fn create_round_trips_and_carries_every_attribute() {
    let e = ftp();
    let buf = encode(|w| encode_expect_create(w, 7, &e, &ALWAYS));
    let m = one(&buf);
    assert_eq!(m.ty, (2 << 8) | IPCTNL_MSG_EXP_NEW);
    assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL);
    assert_eq!(m.seq, 7);
    let p = parse_expect(&m).unwrap();
    assert_eq!(p.family, Family::V4);
    assert_eq!(p.timeout, Some(300));
    assert_eq!(p.expectation().unwrap(), e);
    assert_eq!(parse_expect_change(&m).unwrap(), ExpectChange::Upsert(e));
}

#[test]
fn helper_name_policy() {
    let mut e = ftp();
    let sent = |e: &Expectation, policy| {
        let opts = ExpectEncodeOptions {
            helper_name: policy,
        };
        let buf = encode(|w| encode_expect_create(w, 1, e, &opts));
        parse_expect(&one(&buf)).unwrap().helper
    };
    assert_eq!(sent(&e, HelperNamePolicy::Always), e.helper);
    assert_eq!(sent(&e, HelperNamePolicy::WhenClassSet), None);
    assert_eq!(sent(&e, HelperNamePolicy::Never), None);
    e.class = 1;
    assert_eq!(sent(&e, HelperNamePolicy::WhenClassSet), e.helper);
    assert_eq!(HelperNamePolicy::default(), HelperNamePolicy::WhenClassSet);
}

#[test]
fn timeout_update_and_delete() {
    let mut e = ftp();
    e.zone = Zone::new(9);
    let buf = encode(|w| encode_expect_set_timeout(w, 3, &e));
    let m = one(&buf);
    assert_eq!(m.flags, NLM_F_REQUEST, "no create flags: an update");
    let p = parse_expect(&m).unwrap();
    assert_eq!(p.timeout, Some(300));
    assert_eq!(p.helper, None);
    assert_eq!(p.nat, None);
    assert_eq!(p.zone, Zone::new(9));
    let mut want = e;
    (want.helper, want.expectfn, want.nat) = (None, None, None);
    assert_eq!(p.expectation().unwrap(), want);

    let buf = encode(|w| encode_expect_delete(w, 4, &e.key()));
    let m = one(&buf);
    assert_eq!(m.ty, (2 << 8) | IPCTNL_MSG_EXP_DELETE);
    assert_eq!(
        parse_expect_change(&m).unwrap(),
        ExpectChange::Delete(e.key())
    );
    // A delete has no master/mask: not an expectation.
    assert!(parse_expect(&m).unwrap().expectation().is_err());
}

fn nla(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn nest(out: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    nla(out, ty | NLA_F_NESTED, &inner);
}

fn v4_tuple(out: &mut Vec<u8>, ty: u16, src: [u8; 4], dst: [u8; 4], p: u8, sp: u16, dp: u16) {
    nest(out, ty, |t| {
        nest(t, CTA_TUPLE_IP, |i| {
            nla(i, CTA_IP_V4_SRC, &src);
            nla(i, CTA_IP_V4_DST, &dst);
        });
        nest(t, CTA_TUPLE_PROTO, |pr| {
            nla(pr, CTA_PROTO_NUM, &[p]);
            nla(pr, CTA_PROTO_SRC_PORT, &sp.to_be_bytes());
            nla(pr, CTA_PROTO_DST_PORT, &dp.to_be_bytes());
        });
    });
}

/// The FTP expectation laid out like `ctnetlink_exp_fill_info()` does: attribute order,
/// the mask's all-ones destination, NUL-terminated strings, CTA_EXPECT_ID, a NAT tuple
/// with a zero destination.
fn kernel_event(pid: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    v4_tuple(
        &mut attrs,
        CTA_EXPECT_TUPLE,
        [192, 168, 10, 10],
        [203, 0, 113, 100],
        6,
        0,
        50000,
    );
    v4_tuple(
        &mut attrs,
        CTA_EXPECT_MASK,
        [255; 4],
        [255; 4],
        6,
        0,
        0xffff,
    );
    v4_tuple(
        &mut attrs,
        CTA_EXPECT_MASTER,
        [192, 168, 10, 10],
        [203, 0, 113, 100],
        6,
        40000,
        21,
    );
    nest(&mut attrs, CTA_EXPECT_NAT, |n| {
        nla(n, CTA_EXPECT_NAT_DIR, &0u32.to_be_bytes());
        v4_tuple(n, CTA_EXPECT_NAT_TUPLE, [0; 4], [0; 4], 6, 50000, 0);
    });
    nla(&mut attrs, CTA_EXPECT_TIMEOUT, &300u32.to_be_bytes());
    nla(&mut attrs, CTA_EXPECT_ID, &0xdead_beefu32.to_be_bytes());
    nla(&mut attrs, CTA_EXPECT_FLAGS, &0u32.to_be_bytes());
    nla(&mut attrs, CTA_EXPECT_CLASS, &0u32.to_be_bytes());
    nla(&mut attrs, CTA_EXPECT_HELP_NAME, b"ftp\0");
    nla(&mut attrs, CTA_EXPECT_FN, b"nat-follow-master\0");
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((2u16 << 8) | IPCTNL_MSG_EXP_NEW).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_CREATE | NLM_F_EXCL).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&pid.to_ne_bytes());
    msg.extend_from_slice(&[2, 0, 0, 0]);
    msg.extend_from_slice(&attrs);
    msg
}

#[test]
fn decodes_a_kernel_event() {
    let buf = kernel_event(1234);
    let m = one(&buf);
    assert_eq!(m.pid, 1234);
    let p = parse_expect(&m).unwrap();
    assert_eq!(p.id, Some(0xdead_beef));
    assert_eq!(p.expectation().unwrap(), ftp());
    // Re-encoding what the kernel reported gives a request the decoder reads back the
    // same (what the backup's kernel will be asked for).
    let again = encode(|w| encode_expect_create(w, 1, &ftp(), &ALWAYS));
    assert_eq!(
        parse_expect(&one(&again)).unwrap().expectation().unwrap(),
        ftp()
    );
}

#[test]
fn malformed_kernel_messages_are_errors() {
    let good = kernel_event(0);
    assert!(parse_expect_change(&one(&good)).is_ok());
    // Every truncation of the datagram: an error or a message whose attribute run
    // ends early, never a panic.
    for cut in 0..good.len() {
        for m in MsgIter::new(&good[..cut]).flatten() {
            let _ = parse_expect_change(&m);
        }
    }
    let patched = |needle: &[u8], with: &[u8]| {
        let mut b = good.clone();
        let at = b
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("needle present");
        b[at..at + with.len()].copy_from_slice(with);
        b
    };
    // A helper name with a control character.
    let b = patched(b"ftp\0", b"f\x01p\0");
    assert!(parse_expect(&one(&b)).is_err());
    // NAT direction 7.
    let mut b = good.clone();
    let dir_attr = [8u8, 0, CTA_EXPECT_NAT_DIR as u8, 0, 0, 0, 0, 0];
    let at = b.windows(8).position(|w| w == dir_attr).unwrap();
    b[at + 7] = 7;
    assert!(parse_expect(&one(&b)).is_err());
    // IPv6 family with IPv4 addresses.
    let mut b = good.clone();
    b[16] = 10;
    assert!(parse_expect(&one(&b)).is_err());
    // Unknown family.
    b[16] = 7;
    assert!(parse_expect(&one(&b)).is_err());
    // An attribute length running past the message: the first attribute claims 0xffff.
    let mut b = good.clone();
    b[20..22].copy_from_slice(&0xffffu16.to_ne_bytes());
    assert!(parse_expect(&one(&b)).is_err());
    // A conntrack message is not an expectation change.
    let mut b = good.clone();
    b[4..6].copy_from_slice(&((1u16 << 8) | IPCTNL_MSG_EXP_NEW).to_ne_bytes());
    assert!(parse_expect_change(&one(&b)).is_err());
    // Empty attributes: no master/tuple/mask.
    let mut b = good[..20].to_vec();
    b[..4].copy_from_slice(&20u32.to_ne_bytes());
    assert!(parse_expect_change(&one(&b)).is_err());
}

#[test]
fn master_create_with_helper() {
    let orig = Tuple::new(proto::TCP, ip("10.0.0.5"), 40000, ip("192.0.2.9"), 21);
    let e = Entry {
        orig,
        reply: orig.swapped(),
        status: status::SEEN_REPLY | status::ASSURED | status::CONFIRMED,
        timeout: 100,
        mark: 0,
        zone: Zone::DEFAULT,
        proto: ProtoInfo::Tcp {
            state: TCP_CONNTRACK_ESTABLISHED,
            wscale: [7, 7],
            flags: [0, 0],
        },
        labels: None,
    };
    let h = HelperName::new("ftp").unwrap();
    let mut buf = Vec::new();
    encode_create_with_helper(&mut buf, 5, &e, Some(&h), &EncodeOptions::default(), true);
    let m = one(&buf);
    assert_eq!(m.flags & NLM_F_ACK, NLM_F_ACK);
    assert_eq!(m.flags & NLM_F_CREATE, NLM_F_CREATE);
    assert_eq!(parse_ct(&m).unwrap().entry().unwrap(), e);
    assert_eq!(parse_ct_helper(&m).unwrap(), Some(h));
    buf.clear();
    encode_create_with_helper(&mut buf, 5, &e, None, &EncodeOptions::default(), false);
    let m = one(&buf);
    assert_eq!(m.flags & NLM_F_ACK, 0);
    assert_eq!(parse_ct_helper(&m).unwrap(), None);

    let buf = encode(|w| encode_ct_get(w, 9, &orig, Zone::new(3)));
    let m = one(&buf);
    let c = parse_ct(&m).unwrap();
    assert_eq!(c.orig, Some(orig));
    assert_eq!(c.zone, Zone::new(3));
}

proptest! {
    #[test]
    fn prop_create_round_trip(e in strategies::expectation()) {
        let buf = encode(|w| encode_expect_create(w, 1, &e, &ALWAYS));
        prop_assert!(buf.len() <= MAX_EXP_MSG_LEN, "{} bytes", buf.len());
        let m = one(&buf);
        prop_assert_eq!(parse_expect(&m).unwrap().expectation().unwrap(), netlink_view(e));
        let buf = encode(|w| encode_expect_set_timeout(w, 2, &e));
        prop_assert!(buf.len() <= MAX_EXP_MSG_LEN);
        let buf = encode(|w| encode_expect_delete(w, 3, &e.key()));
        let got = parse_expect_change(&one(&buf)).unwrap();
        prop_assert_eq!(got.key().tuple, netlink_view(e).tuple);
    }

    #[test]
    fn prop_decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for m in MsgIter::new(&bytes).flatten() {
            let _ = parse_expect_change(&m);
            let _ = parse_ct_helper(&m);
        }
        // The same bytes as the attributes of an expectation message.
        let mut msg = Vec::new();
        msg.extend_from_slice(&((20 + bytes.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&((2u16 << 8) | IPCTNL_MSG_EXP_NEW).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[2, 0, 0, 0]);
        msg.extend_from_slice(&bytes);
        let m = one(&msg);
        let _ = parse_expect_change(&m);
    }

    #[test]
    fn prop_mutated_events_never_panic(
        e in strategies::expectation(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut buf = encode(|w| encode_expect_create(w, 1, &e, &ALWAYS));
        for (at, v) in flips {
            let n = buf.len();
            buf[at % n] ^= v;
        }
        let cut = cut % (buf.len() + 1);
        for m in MsgIter::new(&buf[..cut]).flatten() {
            let _ = parse_expect_change(&m);
        }
    }
}
