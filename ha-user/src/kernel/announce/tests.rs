//! Packet layout tests, and real neighbour-cache updates across a bridge:
//!
//! ```text
//!   A (old owner) ─┐
//!   B (new owner) ─┼─ br0 (bridge ns)
//!   C (neighbour) ─┘
//! ```
//!
//! C resolves the VIP to A's MAC, A drops the VIP, B adds it and announces; C's
//! neighbour entry must then name B's MAC. Root only; skipped otherwise.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use testkit::NetNs;

use super::*;
use crate::kernel::rtnetlink::{AddOutcome, Rtnl};

#[test]
fn arp_frames() {
    let mac = [2, 0, 0, 0, 0, 0xb];
    let ip: Ipv4Addr = "192.168.77.1".parse().unwrap();
    let f = arp::frame(ArpForm::Request, mac, ip);
    #[rustfmt::skip]
    let want: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0xb, 0x08, 0x06, // Ethernet
        0, 1, 0x08, 0, 6, 4, 0, 1,                                         // ARP request
        2, 0, 0, 0, 0, 0xb, 192, 168, 77, 1,                               // sender
        0, 0, 0, 0, 0, 0, 192, 168, 77, 1,                                 // target
    ];
    assert_eq!(f, want);
    let r = arp::frame(ArpForm::Reply, mac, ip);
    assert_eq!(&r[20..22], &[0, 2]);
    assert_eq!(&r[32..38], &mac, "reply: target MAC = sender MAC");
}

#[test]
fn neighbour_advert_layout() {
    let ip: Ipv6Addr = "fd00:77::1".parse().unwrap();
    let m = ndisc::advert(ip, [2, 0, 0, 0, 0, 0xb], false);
    assert_eq!(&m[..8], &[136, 0, 0, 0, 0x20, 0, 0, 0], "Override only");
    assert_eq!(&m[8..24], &ip.octets());
    assert_eq!(&m[24..], &[2, 1, 2, 0, 0, 0, 0, 0xb]);
    assert_eq!(
        ndisc::advert(ip, [0; 6], true)[4],
        0xa0,
        "Router + Override"
    );
}

#[test]
fn dhcp_renew_runs_the_command_in_the_background() {
    let dir = std::env::temp_dir().join(testkit::unique_name("dhcp"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out");
    let cmd = vec![
        "sh".to_string(),
        "-c".into(),
        format!("echo \"$0\" > {}", file.display()),
        "{iface}".into(),
    ];
    let pid = renew_dhcp("eth9", Some(&cmd)).unwrap();
    assert!(pid.is_some());
    let got = testkit::wait_for(Duration::from_secs(5), "renew command output", || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .unwrap();
    assert_eq!(got.trim(), "eth9");
    let _ = std::fs::remove_dir_all(&dir);

    let e = renew_dhcp("eth9", Some(&["/nonexistent/dhcp-client".to_string()])).unwrap_err();
    assert!(
        e.to_string().contains("eth9") && e.to_string().contains("/nonexistent"),
        "{e}"
    );
    assert!(renew_dhcp("eth9", Some(&[])).is_err());
}

// ---- kernel --------------------------------------------------------------------------

struct Segment {
    _br: NetNs,
    a: NetNs,
    b: NetNs,
    c: NetNs,
}

/// A, B and C on one bridge, each with `eth0` and the given address.
fn segment(v6: bool) -> Segment {
    let br = NetNs::new("anb").unwrap();
    br.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    br.ip(&["link", "set", "br0", "up"]).unwrap();
    let mk = |host: u8| {
        let ns = NetNs::new("ann").unwrap();
        let addr = if v6 {
            format!("fd00:77::{host:x}/64")
        } else {
            format!("192.168.77.{host}/24")
        };
        let port = format!("port-{host}");
        testkit::veth(&br, &port, &[], &ns, "eth0", &[&addr]).unwrap();
        br.ip(&["link", "set", &port, "master", "br0"]).unwrap();
        ns
    };
    let (a, b, c) = (mk(2), mk(3), mk(10));
    Segment { _br: br, a, b, c }
}

fn mac_of(ns: &NetNs) -> String {
    let o = ns.ip(&["-o", "link", "show", "eth0"]).unwrap();
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string()
}

fn neigh(ns: &NetNs, ip: &str) -> String {
    let o = ns.ip(&["neigh", "show", ip, "dev", "eth0"]).unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// C learns `vip` -> A by pinging it; A gives it up; B takes it and announces with
/// `opts`. Returns C's neighbour entry for the VIP and for `unknown` (which C never
/// resolved) afterwards, and B's MAC.
fn takeover(v6: bool, opts: AnnounceOptions, b_forwarding: bool) -> (String, String, String) {
    let (vip, unknown, plen) = if v6 {
        ("fd00:77::1", "fd00:77::50", 64)
    } else {
        ("192.168.77.1", "192.168.77.50", 24)
    };
    let s = segment(v6);
    let (mac_a, mac_b) = (mac_of(&s.a), mac_of(&s.b));
    let cidr = format!("{vip}/{plen}");
    let mut add = vec!["addr", "add", &cidr, "dev", "eth0"];
    if v6 {
        add.push("nodad");
    }
    s.a.ip(&add).unwrap();
    let ping = if v6 { "-6" } else { "-4" };
    testkit::wait_for(Duration::from_secs(10), "C reaches the VIP on A", || {
        s.c.exec("ping", [ping, "-c1", "-W1", vip]).ok()
    })
    .unwrap();
    let before = neigh(&s.c, vip);
    assert!(
        before.contains(&mac_a),
        "C should map the VIP to A: {before}"
    );
    s.a.ip(&["addr", "del", &cidr, "dev", "eth0"]).unwrap();
    if b_forwarding {
        s.b.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    }

    let net: IpNet = cidr.parse().unwrap();
    let addrs: Vec<IpAddr> = vec![vip.parse().unwrap(), unknown.parse().unwrap()];
    let (index, mac) =
        s.b.enter(|| {
            let mut rt = Rtnl::open().unwrap();
            assert_eq!(
                rt.add_address("eth0", net, Some("eth0:vip")).unwrap(),
                AddOutcome::Added
            );
            let l = rt.link_info("eth0").unwrap();
            // `unknown` is not B's: announcing it anyway shows C ignores unknown
            // entries (arp_accept=0). For IPv6 it needs a usable source address.
            if v6 {
                rt.add_address(l.index, format!("{unknown}/64").parse().unwrap(), None)
                    .unwrap();
            }
            (l.index, l.mac.unwrap())
        })
        .unwrap();
    // Control: adding the address alone announces nothing; C still names A.
    std::thread::sleep(Duration::from_millis(300));
    let control = neigh(&s.c, vip);
    assert!(control.contains(&mac_a), "before announcing: {control}");
    s.b.enter(|| {
        let sent = Announcer::new(index, mac, opts.clone())
            .round(&addrs)
            .unwrap();
        let per_v4 = opts.arp_forms.len();
        assert_eq!(sent, if v6 { 2 } else { 2 * per_v4 });
    })
    .unwrap();
    let after = testkit::wait_for(Duration::from_secs(3), "C's entry to name B", || {
        let n = neigh(&s.c, vip);
        n.contains(&mac_b).then_some(n)
    })
    .unwrap_or_else(|e| panic!("{e}: C still has `{}`", neigh(&s.c, vip)));
    (after, neigh(&s.c, unknown), mac_b)
}

#[test]
fn gratuitous_arp_request_updates_existing_neighbour() {
    if !testkit::is_root() {
        eprintln!("skipping: needs root for network namespaces");
        return;
    }
    let (after, unknown, mac_b) = takeover(false, AnnounceOptions::default(), false);
    assert!(after.contains(&mac_b) && after.contains("STALE"), "{after}");
    assert_eq!(unknown, "", "arp_accept=0: no entry is created");
}

#[test]
fn gratuitous_arp_reply_form_updates_existing_neighbour() {
    if !testkit::is_root() {
        eprintln!("skipping: needs root for network namespaces");
        return;
    }
    let opts = AnnounceOptions {
        arp_forms: vec![ArpForm::Reply],
        ..AnnounceOptions::default()
    };
    let (after, unknown, mac_b) = takeover(false, opts, false);
    assert!(after.contains(&mac_b), "{after}");
    assert_eq!(unknown, "");
}

#[test]
fn unsolicited_na_updates_existing_neighbour() {
    if !testkit::is_root() {
        eprintln!("skipping: needs root for network namespaces");
        return;
    }
    let (after, unknown, mac_b) = takeover(true, AnnounceOptions::default(), false);
    assert!(after.contains(&mac_b) && after.contains("STALE"), "{after}");
    assert!(!after.contains("router"), "{after}");
    assert_eq!(unknown, "", "no entry is created for an unsolicited NA");
}

#[test]
fn unsolicited_na_from_a_router_keeps_the_router_flag() {
    if !testkit::is_root() {
        eprintln!("skipping: needs root for network namespaces");
        return;
    }
    let (after, _, mac_b) = takeover(true, AnnounceOptions::default(), true);
    assert!(
        after.contains(&mac_b) && after.contains("router"),
        "{after}"
    );
}

#[test]
fn announce_errors_name_interface_and_address() {
    if !testkit::is_root() {
        eprintln!("skipping: needs root for network namespaces");
        return;
    }
    let ns = NetNs::new("ane").unwrap();
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"])
        .unwrap();
    ns.enter(|| {
        let mut rt = Rtnl::open().unwrap();
        let idx = rt.link_index("d0").unwrap();
        // Link down: the kernel refuses to send.
        let e = announce(idx, &["10.1.1.1".parse().unwrap()], [2, 0, 0, 0, 0, 1]).unwrap_err();
        assert!(e.to_string().starts_with("announce 10.1.1.1 on d0:"), "{e}");
        // IPv6 source address not on the interface.
        rt.set_link_up(idx, true).unwrap();
        let e = announce(idx, &["fd00::99".parse().unwrap()], [2, 0, 0, 0, 0, 1]).unwrap_err();
        assert!(e.to_string().starts_with("announce fd00::99 on d0:"), "{e}");
        let e = announce(idx, &["ff02::1".parse().unwrap()], [2, 0, 0, 0, 0, 1]).unwrap_err();
        assert!(matches!(e, AnnounceError::Invalid { .. }), "{e}");
    })
    .unwrap();
}
