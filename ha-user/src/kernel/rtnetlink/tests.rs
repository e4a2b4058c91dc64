//! Codec unit tests, property tests, and tests against the real kernel in throwaway
//! network namespaces (root only; skipped otherwise).

use std::time::{Duration, Instant};

use ipnet::IpNet;
use proptest::prelude::*;
use testkit::NetNs;

use super::{
    addr::decode_addr,
    link::decode_link,
    monitor::{decode_datagram, decode_event},
    nla::{Msg, MsgIter, Writer},
    *,
};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn root() -> bool {
    if !testkit::is_root() {
        eprintln!("skipping: needs root for network namespaces");
        return false;
    }
    true
}

/// A namespace with an up interface `d0` (a veth whose peer `d0p` is up too: this
/// kernel has no dummy driver).
fn ns_with_link() -> NetNs {
    let ns = NetNs::new("rtn").unwrap();
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"])
        .unwrap();
    ns.ip(&["link", "set", "d0p", "up"]).unwrap();
    ns.ip(&["link", "set", "d0", "up"]).unwrap();
    ns
}

fn out(ns: &NetNs, args: &[&str]) -> String {
    String::from_utf8_lossy(&ns.ip(args).unwrap().stdout).into_owned()
}

// ---- codec ---------------------------------------------------------------------------

/// An RTM_NEWADDR message as the kernel would send it.
fn newaddr_msg(family: u8, prefix: u8, index: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    let start = msg::header(&mut b, RTM_NEWADDR, 0, 9);
    msg::ifaddrmsg(&mut b, family, prefix, 0, index);
    let mut w = Writer::new(&mut b);
    for (ty, d) in attrs {
        w.put(*ty, d);
    }
    msg::finish(&mut b, start);
    b
}

fn first(buf: &[u8]) -> Msg<'_> {
    MsgIter::new(buf).next().unwrap().unwrap()
}

#[test]
fn decodes_addresses() {
    let b = newaddr_msg(
        libc::AF_INET as u8,
        24,
        7,
        &[
            (IFA_ADDRESS, &[10, 0, 0, 1]),
            (IFA_LOCAL, &[10, 0, 0, 1]),
            (IFA_BROADCAST, &[10, 0, 0, 255]),
            (IFA_LABEL, b"eth0:vip\0"),
            (IFA_FLAGS, &IFA_F_PERMANENT.to_ne_bytes()),
        ],
    );
    let a = decode_addr(first(&b).payload).unwrap();
    assert_eq!(a.index, 7);
    assert_eq!(a.addr, net("10.0.0.1/24"));
    assert_eq!(a.label.as_deref(), Some("eth0:vip"));
    assert_eq!(a.broadcast, Some("10.0.0.255".parse().unwrap()));
    assert_eq!(a.flags, IFA_F_PERMANENT);

    let v6: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
    let b = newaddr_msg(libc::AF_INET6 as u8, 64, 3, &[(IFA_ADDRESS, &v6.octets())]);
    let a = decode_addr(first(&b).payload).unwrap();
    assert_eq!(a.addr, net("fd00::1/64"));

    // Wrong address length, bad prefix, missing address, unknown family.
    let b = newaddr_msg(libc::AF_INET as u8, 24, 7, &[(IFA_LOCAL, &[10, 0, 0])]);
    assert!(decode_addr(first(&b).payload).is_err());
    let b = newaddr_msg(libc::AF_INET as u8, 33, 7, &[(IFA_LOCAL, &[10, 0, 0, 1])]);
    assert!(decode_addr(first(&b).payload).is_err());
    let b = newaddr_msg(libc::AF_INET as u8, 24, 7, &[]);
    assert!(decode_addr(first(&b).payload).is_err());
    let b = newaddr_msg(99, 24, 7, &[(IFA_LOCAL, &[10, 0, 0, 1])]);
    assert!(decode_addr(first(&b).payload).is_err());
}

#[test]
fn decodes_links() {
    let mut b = Vec::new();
    let start = msg::header(&mut b, RTM_NEWLINK, 0, 1);
    msg::ifinfomsg(&mut b, 4, IFF_UP | IFF_LOWER_UP, 0);
    let mut w = Writer::new(&mut b);
    w.put(IFLA_IFNAME, b"vm0\0");
    w.put(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]);
    w.put(IFLA_MTU, &1500u32.to_ne_bytes());
    w.put(IFLA_LINK, &2u32.to_ne_bytes());
    w.put(IFLA_OPERSTATE, &[6]);
    w.put(IFLA_CARRIER, &[1]);
    let n = w.begin_nest(IFLA_LINKINFO);
    w.put(IFLA_INFO_KIND, b"macvlan");
    w.end_nest(n);
    msg::finish(&mut b, start);
    let l = decode_link(first(&b).payload).unwrap();
    assert_eq!(
        l,
        LinkInfo {
            index: 4,
            name: "vm0".into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            mtu: 1500,
            oper_state: OperState::Up,
            admin_up: true,
            carrier: true,
            kind: Some("macvlan".into()),
            link: Some(2),
            master: None,
            flags: IFF_UP | IFF_LOWER_UP,
        }
    );
    assert!(l.is_usable());
    assert!(matches!(
        decode_event(&first(&b)),
        Ok(Some(RtEvent::Link(_)))
    ));
    // Missing name; truncated header.
    assert!(decode_link(&b[NLMSG_HDRLEN..NLMSG_HDRLEN + IFINFOMSG_LEN]).is_err());
    assert!(decode_link(&b[NLMSG_HDRLEN..NLMSG_HDRLEN + 8]).is_err());
}

#[test]
fn parses_errors_with_extended_ack() {
    // errno, capped original header, NLMSGERR_ATTR_MSG.
    let mut b = Vec::new();
    let start = msg::header(&mut b, NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 5);
    b.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
    msg::header(&mut b, RTM_NEWADDR, 0, 5);
    Writer::new(&mut b).put(NLMSGERR_ATTR_MSG, b"Address already assigned\0");
    msg::finish(&mut b, start);
    let (errno, text) = msg::parse_error(&first(&b)).unwrap();
    assert_eq!(errno, libc::EEXIST);
    assert_eq!(text.as_deref(), Some("Address already assigned"));

    let e = RtnlError::kernel(
        &Ctx::new(
            "add address",
            Some(Iface::Name("eth1")),
            Some(net("10.0.0.1/24")),
        ),
        errno,
        text,
    );
    assert_eq!(
        e.to_string(),
        "rtnetlink add address 10.0.0.1/24 dev eth1: kernel answered: File exists (os error 17) (Address already assigned)"
    );
    assert_eq!(e.errno(), Some(libc::EEXIST));
    // A plain ACK; a truncated error.
    let mut b = Vec::new();
    let start = msg::header(&mut b, NLMSG_ERROR, 0, 5);
    b.extend_from_slice(&0i32.to_ne_bytes());
    msg::finish(&mut b, start);
    assert_eq!(msg::parse_error(&first(&b)).unwrap(), (0, None));
    let m = Msg {
        ty: NLMSG_ERROR,
        flags: 0,
        seq: 0,
        pid: 0,
        payload: &[1, 2],
    };
    assert!(msg::parse_error(&m).is_err());
}

proptest! {
    #[test]
    fn decoders_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        flags in any::<u16>(),
    ) {
        let _ = decode_link(&bytes);
        let _ = decode_addr(&bytes);
        let mut events = Vec::new();
        decode_datagram(&bytes, &mut events);
        for ty in [RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, NLMSG_ERROR] {
            let m = Msg { ty, flags, seq: 0, pid: 0, payload: &bytes };
            let _ = decode_event(&m);
            let _ = msg::parse_error(&m);
            let _ = msg::parse_done(&m);
        }
    }

    /// Valid headers followed by garbage attributes, and truncations of valid messages.
    #[test]
    fn garbage_attributes_and_truncation_never_panic(
        attrs in proptest::collection::vec(any::<u8>(), 0..300),
        cut in any::<usize>(),
        family in prop_oneof![Just(libc::AF_INET as u8), Just(libc::AF_INET6 as u8), any::<u8>()],
    ) {
        for fixed in [IFINFOMSG_LEN, IFADDRMSG_LEN] {
            let mut p = vec![family; fixed];
            p.extend_from_slice(&attrs);
            let _ = decode_link(&p);
            let _ = decode_addr(&p);
        }
        let b = newaddr_msg(family, 24, 1, &[(IFA_LOCAL, &[1, 2, 3, 4]), (IFA_LABEL, &attrs)]);
        let b = &b[..cut % (b.len() + 1)];
        let mut events = Vec::new();
        decode_datagram(b, &mut events);
    }
}

// ---- kernel --------------------------------------------------------------------------

#[test]
fn addresses_add_del_idempotent_with_label() {
    if !root() {
        return;
    }
    let ns = ns_with_link();
    let v4 = net("10.9.0.1/24");
    let v4_31 = net("10.9.1.0/31");
    let v6 = net("fd00:9::1/64");
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let idx = rt.link_index("d0").unwrap();
        assert_eq!(
            rt.add_address("d0", v4, Some("d0:vip")).unwrap(),
            AddOutcome::Added
        );
        assert_eq!(
            rt.add_address(idx, v4, Some("d0:vip")).unwrap(),
            AddOutcome::AlreadyPresent
        );
        assert_eq!(
            rt.add_address("d0", v4_31, None).unwrap(),
            AddOutcome::Added
        );
        assert_eq!(rt.add_address("d0", v6, None).unwrap(), AddOutcome::Added);
        assert_eq!(
            rt.add_address("d0", v6, None).unwrap(),
            AddOutcome::AlreadyPresent
        );

        let list = rt.list_addresses(idx).unwrap();
        let a = list.iter().find(|a| a.addr == v4).unwrap();
        assert_eq!(a.label.as_deref(), Some("d0:vip"));
        assert_eq!(a.broadcast, Some("10.9.0.255".parse().unwrap()));
        let a = list.iter().find(|a| a.addr == v4_31).unwrap();
        assert_eq!(a.broadcast, None);
        assert_eq!(a.label.as_deref(), Some("d0"));
        let a = list.iter().find(|a| a.addr == v6).unwrap();
        assert!(!a.is_tentative(), "NODAD: usable at once");
        assert!(a.flags & IFA_F_NODAD != 0);
        assert!(list.iter().all(|a| a.index == idx));
    })
    .unwrap();

    let shown = out(&ns, &["-o", "addr", "show", "dev", "d0"]);
    assert!(
        shown.contains("inet 10.9.0.1/24 brd 10.9.0.255 scope global d0:vip"),
        "{shown}"
    );
    assert!(
        shown.contains("inet 10.9.1.0/31 scope global d0"),
        "{shown}"
    );
    assert!(
        shown.contains("inet6 fd00:9::1/64 scope global nodad"),
        "{shown}"
    );
    let vip6 = shown.lines().find(|l| l.contains("fd00:9::1/64")).unwrap();
    assert!(!vip6.contains("tentative"), "{vip6}");

    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        for a in [v4, v4_31, v6] {
            assert_eq!(rt.del_address("d0", a).unwrap(), DelOutcome::Removed, "{a}");
            assert_eq!(
                rt.del_address("d0", a).unwrap(),
                DelOutcome::NotPresent,
                "{a}"
            );
        }
        // A different prefix length is a different address (IPv4).
        rt.add_address("d0", v4, None).unwrap();
        assert_eq!(
            rt.del_address("d0", net("10.9.0.1/16")).unwrap(),
            DelOutcome::NotPresent
        );
        rt.del_address("d0", v4).unwrap();
        let left = rt.list_addresses("d0").unwrap();
        assert!(
            left.iter().all(|a| ![v4, v4_31, v6].contains(&a.addr)),
            "{left:?}"
        );
    })
    .unwrap();
    let shown = out(&ns, &["-o", "addr", "show", "dev", "d0"]);
    assert!(
        !shown.contains("10.9.") && !shown.contains("fd00:9::"),
        "{shown}"
    );
}

#[test]
fn bad_interface_and_arguments_are_clear_errors() {
    if !root() {
        return;
    }
    let ns = ns_with_link();
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let e = rt
            .add_address("nosuch0", net("10.9.0.1/24"), None)
            .unwrap_err();
        assert!(matches!(e, RtnlError::NoSuchInterface { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "rtnetlink add address 10.9.0.1/24 dev nosuch0: no such interface"
        );
        let e = rt.del_address("nosuch0", net("fd00::1/64")).unwrap_err();
        assert!(matches!(e, RtnlError::NoSuchInterface { .. }), "{e:?}");
        let e = rt
            .add_address(9999u32, net("10.9.0.1/24"), None)
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
        assert!(e.to_string().contains("dev ifindex 9999"), "{e}");
        let e = rt.link_index("nosuch0").unwrap_err();
        assert!(matches!(e, RtnlError::NoSuchInterface { .. }), "{e:?}");
        let e = rt.list_addresses(9999u32).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
        let e = rt.link_index("much-too-long-name0").unwrap_err();
        assert!(matches!(e, RtnlError::Invalid { .. }), "{e:?}");
        let e = rt
            .add_address("d0", net("10.9.0.1/24"), Some("label-that-is-too-long"))
            .unwrap_err();
        assert!(matches!(e, RtnlError::Invalid { .. }), "{e:?}");
        let e = rt.set_link_mac("d0", [1, 0, 0, 0, 0, 1]).unwrap_err();
        assert!(e.to_string().contains("not a unicast MAC"), "{e}");
        assert!(!rt.delete_link("nosuch0").unwrap());
        // The socket is still usable after errors.
        assert!(rt.link_index("d0").unwrap() > 0);
    })
    .unwrap();
}

#[test]
fn link_up_down_and_mac() {
    if !root() {
        return;
    }
    let ns = ns_with_link();
    let mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let idx = rt.link_index("d0").unwrap();
        let l = rt.link_info(idx).unwrap();
        assert_eq!((l.name.as_str(), l.mtu, l.admin_up), ("d0", 1500, true));
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert!(rt.list_links().unwrap().iter().any(|l| l.index == idx));

        rt.set_link_up("d0", false).unwrap();
        let l = rt.link_info("d0").unwrap();
        assert!(!l.admin_up && !l.is_usable(), "{l:?}");
        rt.set_link_mac(idx, mac).unwrap();
        assert_eq!(rt.link_info(idx).unwrap().mac, Some(mac));
    })
    .unwrap();
    let shown = out(&ns, &["-o", "link", "show", "d0"]);
    assert!(shown.contains("link/ether 02:aa:bb:cc:dd:01"), "{shown}");
    assert!(!shown.contains(",UP"), "{shown}");
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        rt.set_link_up("d0", true).unwrap();
        // MAC change while up (veth supports live address change).
        rt.set_link_mac("d0", [0x02, 0, 0, 0, 0, 2]).unwrap();
        let l = rt.link_info("d0").unwrap();
        assert!(l.admin_up);
        assert_eq!(l.mac, Some([0x02, 0, 0, 0, 0, 2]));
    })
    .unwrap();
    assert!(out(&ns, &["-o", "link", "show", "d0"]).contains("<BROADCAST,MULTICAST,UP,LOWER_UP>"));
}

#[test]
fn macvlan_create_delete_idempotent() {
    if !root() {
        return;
    }
    let ns = ns_with_link();
    let vmac = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let parent = rt.link_index("d0").unwrap();
        let idx = rt
            .create_macvlan("d0", "vm0", vmac, MacvlanMode::Bridge)
            .unwrap();
        let l = rt.link_info(idx).unwrap();
        assert_eq!(l.kind.as_deref(), Some("macvlan"));
        assert_eq!((l.link, l.mac), (Some(parent), Some(vmac)));
        // Again: the same link, MAC corrected if it changed.
        let other = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x08];
        let again = rt
            .create_macvlan(parent, "vm0", other, MacvlanMode::Bridge)
            .unwrap();
        assert_eq!(again, idx);
        assert_eq!(rt.link_info(idx).unwrap().mac, Some(other));
        // A non-macvlan link of that name is an error.
        let e = rt
            .create_macvlan("d0", "d0", vmac, MacvlanMode::Bridge)
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        rt.set_link_up(idx, true).unwrap();
    })
    .unwrap();
    let shown = out(&ns, &["-d", "-o", "link", "show", "vm0"]);
    assert!(shown.contains("macvlan mode bridge"), "{shown}");
    assert!(shown.contains("00:00:5e:00:01:08"), "{shown}");
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        assert!(rt.delete_link("vm0").unwrap());
        assert!(!rt.delete_link("vm0").unwrap());
        assert!(matches!(
            rt.link_index("vm0"),
            Err(RtnlError::NoSuchInterface { .. })
        ));
    })
    .unwrap();
}

/// Waits for readability of the monitor's fd and returns the first event `pred` accepts.
fn wait_event(
    mon: &mut LinkMonitor,
    timeout: Duration,
    mut pred: impl FnMut(&RtEvent) -> bool,
) -> Option<RtEvent> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: mon.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        events.clear();
        mon.read(&mut events).unwrap();
        if let Some(e) = events.drain(..).find(|e| pred(e)) {
            return Some(e);
        }
    }
    None
}

#[test]
fn link_notifications_for_carrier_loss_and_admin_down() {
    if !root() {
        return;
    }
    let a = NetNs::new("rtm").unwrap();
    let b = NetNs::new("rtm").unwrap();
    testkit::veth(&a, "eth0", &[], &b, "eth0", &[]).unwrap();
    ns_wait_carrier(&a);
    a.enter(|| {
        let mut mon = LinkMonitor::open(Groups::ALL).unwrap();
        let mut rt = Rtnl::open().unwrap();
        let idx = rt.link_index("eth0").unwrap();
        assert!(rt.link_info(idx).unwrap().is_usable());

        // The peer goes down: our end loses carrier but stays admin up.
        b.ip(&["link", "set", "eth0", "down"]).unwrap();
        let e = wait_event(
            &mut mon,
            Duration::from_secs(5),
            |e| matches!(e, RtEvent::Link(l) if l.index == idx && !l.carrier),
        )
        .expect("carrier loss notification");
        let RtEvent::Link(l) = e else { unreachable!() };
        assert!(l.admin_up && !l.is_usable(), "{l:?}");
        // DOWN rather than LOWERLAYERDOWN here: both veth ends have ifindex 2 in their
        // namespaces, and the kernel compares ifindex with iflink to choose.
        assert!(
            matches!(l.oper_state, OperState::Down | OperState::LowerLayerDown),
            "{l:?}"
        );

        b.ip(&["link", "set", "eth0", "up"]).unwrap();
        wait_event(
            &mut mon,
            Duration::from_secs(5),
            |e| matches!(e, RtEvent::Link(l) if l.index == idx && l.is_usable()),
        )
        .expect("carrier back notification");

        // Set down administratively.
        rt.set_link_up(idx, false).unwrap();
        wait_event(
            &mut mon,
            Duration::from_secs(5),
            |e| matches!(e, RtEvent::Link(l) if l.index == idx && !l.admin_up),
        )
        .expect("admin down notification");

        // Address notifications with Groups::ALL.
        rt.add_address(idx, net("10.9.2.1/24"), None).unwrap();
        wait_event(
            &mut mon,
            Duration::from_secs(5),
            |e| matches!(e, RtEvent::AddrAdded(a) if a.addr == net("10.9.2.1/24")),
        )
        .expect("address notification");
    })
    .unwrap();
}

fn ns_wait_carrier(ns: &NetNs) {
    testkit::wait_for(Duration::from_secs(5), "veth carrier", || {
        out(ns, &["-o", "link", "show", "eth0"])
            .contains("LOWER_UP")
            .then_some(())
    })
    .unwrap();
}
