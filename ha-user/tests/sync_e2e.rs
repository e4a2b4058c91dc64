//! The foundation end to end: connections tracked by fw-a's kernel appear in fw-b's
//! kernel table (same tuples, NAT, mark, zone, TCP state), deletions follow, and a peer
//! with the wrong key installs nothing.

mod support;

use std::{net::SocketAddr, time::Duration};

use support::{
    Agent, forwarded, metric, metrics, node_config, start_pair, tcp_connections, tcp_server,
    udp_flows, wait_metric, wait_tables_equal,
};
use testkit::lab::{CLIENT_IP, CLIENT_IP6, Lab, LabOptions, SERVER_IP, SERVER_IP6, SYNC_A, SYNC_B};

const SECRET: &str = "lab-secret-please-change";

/// Marks (ct mark 0x42 for UDP 5000-5099) and a zone (7, UDP 6000-6099, both ways).
const TAGGING: &str = "table inet tag {
  chain raw {
    type filter hook prerouting priority -300;
    udp dport 6000-6099 ct zone set 7
    udp sport 6000-6099 ct zone set 7
  }
  chain out {
    type filter hook output priority -300;
    udp dport 6000-6099 ct zone set 7
  }
  chain setmark {
    type filter hook forward priority 10;
    udp dport 5000-5099 ct mark set 0x42
  }
}
";

fn lab(prefix: &str) -> Lab {
    let lab = Lab::new(&LabOptions {
        prefix: prefix.into(),
        extra_nft: TAGGING.into(),
        ..Default::default()
    })
    .unwrap();
    // The server silently drops the UDP flood (no ICMP errors), answers UDP 7000.
    lab.server
        .nft("table inet srv {\n chain in {\n type filter hook input priority 0\n udp dport 5000-40000 udp dport != 7000 drop\n }\n}\n")
        .unwrap();
    lab
}

#[test]
fn peer_table_equals_primary_table() {
    let lab = lab("e2e");
    let (a, b) = start_pair(&lab, SECRET, SECRET);
    let server: SocketAddr = format!("{SERVER_IP}:8080").parse().unwrap();
    let srv = tcp_server(&lab.server, server, 1000);
    // An echo for UDP 7000 so some flows see replies (SEEN_REPLY / ASSURED updates).
    let echo = lab
        .server
        .enter(|| std::net::UdpSocket::bind(format!("{SERVER_IP}:7000")).unwrap())
        .unwrap();
    let echo_thread = std::thread::spawn(move || {
        echo.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });

    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    let server_ip: std::net::IpAddr = SERVER_IP.parse().unwrap();
    // 10,000 UDP flows (two source ports x 5,000 destination ports).
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40000),
        server_ip,
        20000..25000,
    );
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40001),
        server_ip,
        20000..25000,
    );
    // Marked and zoned flows.
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40002),
        server_ip,
        5000..5100,
    );
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40003),
        server_ip,
        6000..6100,
    );
    // Flows with replies.
    for sport in 41000..41100u16 {
        udp_flows(
            &lab.client,
            SocketAddr::new(client, sport),
            server_ip,
            7000..7001,
        );
    }
    // IPv6 (routed, no NAT).
    udp_flows(
        &lab.client,
        SocketAddr::new(CLIENT_IP6.parse().unwrap(), 40000),
        SERVER_IP6.parse().unwrap(),
        20000..20200,
    );
    // 1,000 TCP connections, every tenth reset.
    tcp_connections(&lab.client, server, 1000, 10);
    srv.join().unwrap();

    let total = 10_000 + 100 + 100 + 100 + 200 + 1000;
    let table = wait_tables_equal(&lab.fw_a, &lab.fw_b, total, Duration::from_secs(60));
    // Timeouts travel too: B's copy lives 1.5x what A had left at its last event (so
    // it never expires before A's entry), give or take the seconds this check takes.
    let (ta, tb) = (forwarded(&lab.fw_a), forwarded(&lab.fw_b));
    for (x, y) in ta.iter().zip(&tb) {
        // Upper bound: 1.5x what A had left when it last told B (a few seconds ago).
        let (lo, hi) = (x.timeout.saturating_sub(3), (x.timeout + 5) * 3 / 2 + 5);
        assert!(
            (lo..=hi).contains(&y.timeout),
            "timeouts {} vs {}: {}",
            x.timeout,
            y.timeout,
            x.line
        );
    }
    // What the comparison covered.
    let count = |needle: &str| table.iter().filter(|l| l.line.contains(needle)).count();
    assert!(count("mark=66") >= 100, "marked entries replicated");
    assert!(count("zone=7") >= 100, "zoned entries replicated");
    assert!(
        count("TIME_WAIT") + count("CLOSE ") >= 1000,
        "closed TCP states replicated"
    );
    assert!(count("ipv6") >= 200, "IPv6 entries replicated");
    assert!(count("[ASSURED]") >= 100, "assured entries replicated");
    // NAT: replies go to the WAN VIP on both nodes (the binding is real: see the
    // failover tests; here the tuples must agree).
    assert!(
        count("dst=203.0.113.1 ") >= 10_000,
        "SNAT reply tuples replicated"
    );
    echo_thread.join().unwrap();

    // Deletions: remove entries on A by hand; they disappear on B.
    lab.fw_a
        .ns
        .exec("conntrack", ["-D", "-p", "udp", "--orig-port-src", "40000"])
        .unwrap();
    wait_tables_equal(
        &lab.fw_a,
        &lab.fw_b,
        total - 5_000 - 200,
        Duration::from_secs(30),
    );
    // (Metrics are published every 250 ms: wait for them.)
    wait_metric(
        &lab.fw_b.ns,
        "installs_total",
        "result=\"deleted\"",
        5_200.0,
        Duration::from_secs(5),
    );
    wait_metric(
        &lab.fw_a.ns,
        "deletes_total",
        "action=\"sent\"",
        5_200.0,
        Duration::from_secs(5),
    );
    let ma = metrics(&lab.fw_a.ns);
    assert_eq!(metric(&ma, "ringbuf_drops_total", ""), 0.0, "{ma}");
    let mb = metrics(&lab.fw_b.ns);
    // No echo: B never sent A's entries back (A would have updated or deleted them).
    // B may report flows of its own, e.g. IPv6 neighbour discovery on its LAN port.
    assert_eq!(metric(&mb, "deletes_total", "action=\"sent\""), 0.0, "{mb}");
    assert_eq!(
        metric(&ma, "installs_total", "result=\"updated\""),
        0.0,
        "{ma}"
    );
    assert_eq!(
        metric(&ma, "installs_total", "result=\"deleted\""),
        0.0,
        "{ma}"
    );
    let log_b = b.stop();
    assert!(!log_b.contains("ERROR"), "{log_b}");
    let log_a = a.stop();
    assert!(!log_a.contains("ERROR"), "{log_a}");
}

#[test]
fn wrong_key_installs_nothing_and_counts_rejects() {
    let lab = lab("wkey");
    let (a, b) = start_pair(&lab, SECRET, "a-different-secret");
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40000),
        SERVER_IP.parse().unwrap(),
        20000..20500,
    );
    // A captured and sent them...
    wait_metric(
        &lab.fw_a.ns,
        "sync_sent_records_total",
        "",
        500.0,
        Duration::from_secs(20),
    );
    // ...B rejected every datagram as forged.
    let rejected = wait_metric(
        &lab.fw_b.ns,
        "sync_rejected_total",
        "reason=\"auth_failed\"",
        1.0,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mb = metrics(&lab.fw_b.ns);
    assert_eq!(metric(&mb, "sync_received_records_total", ""), 0.0, "{mb}");
    assert_eq!(
        metric(&mb, "installs_total", "result=\"created\""),
        0.0,
        "{mb}"
    );
    assert!(forwarded(&lab.fw_b).is_empty(), "B installed nothing");
    assert!(rejected >= 1.0);
    assert!(
        b.log_text().contains("auth"),
        "the rejection is logged:\n{}",
        b.log_text()
    );
    drop(a);
}

/// Key rotation: B already has the new `secret_key` and keeps the old one as
/// `previous_secret_key`; A still signs with the old one. B accepts A's datagrams
/// and installs them; no datagram is refused.
#[test]
fn previous_secret_key_is_accepted_during_a_rotation() {
    let lab = lab("rot");
    let _a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, SECRET, ""),
    );
    let rotated = node_config("replica", SYNC_A, "the-new-secret-key", "").replace(
        "  secret_key = \"the-new-secret-key\"\n",
        &format!("  secret_key = \"the-new-secret-key\"\n  previous_secret_key = \"{SECRET}\"\n"),
    );
    assert!(rotated.contains("previous_secret_key"), "{rotated}");
    let _b = Agent::start(&lab.fw_b.ns, "fw-b", &rotated);
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40000),
        SERVER_IP.parse().unwrap(),
        20000..20300,
    );
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 300, Duration::from_secs(20));
    let mb = metrics(&lab.fw_b.ns);
    assert_eq!(
        metric(&mb, "sync_rejected_total", "reason=\"auth_failed\""),
        0.0,
        "{mb}"
    );
}

/// The peer's copy of a live entry must not expire while the owner keeps it alive:
/// the program refreshes the peer whenever the owner's timeout has grown by more than
/// half of what the peer was told. Once traffic stops, the entry leaves both nodes and
/// the peer's own expiry is never reported back to the owner.
#[test]
fn refreshed_while_alive_and_gone_after() {
    let lab = lab("rfsh");
    for fw in lab.firewalls() {
        fw.ns
            .sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "6")
            .unwrap();
        fw.ns
            .sysctl("net.netfilter.nf_conntrack_udp_timeout", "4")
            .unwrap();
    }
    let (_a, _b) = start_pair(&lab, SECRET, SECRET);
    let echo = lab
        .server
        .enter(|| std::net::UdpSocket::bind(format!("{SERVER_IP}:7000")).unwrap())
        .unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let client = lab
        .client
        .enter(|| std::net::UdpSocket::bind(format!("{CLIENT_IP}:41234")).unwrap())
        .unwrap();
    let started = std::time::Instant::now();
    let on_b = |lab: &Lab| {
        forwarded(&lab.fw_b)
            .iter()
            .any(|l| l.line.contains("sport=41234"))
    };
    // 15 s of one packet per second: three times the stream timeout.
    while started.elapsed() < Duration::from_secs(15) {
        client.send_to(b"ping", (SERVER_IP, 7000)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        if started.elapsed() > Duration::from_secs(2) {
            assert!(
                on_b(&lab),
                "B lost the live entry after {:?}",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ma = metrics(&lab.fw_a.ns);
    assert!(
        metric(&ma, "program_events_total", "kind=\"refresh\"") >= 2.0,
        "{ma}"
    );
    // Traffic stops: gone from B within the stream timeout (plus slack).
    testkit::wait_for(Duration::from_secs(15), "entry to leave B", || {
        (!on_b(&lab)).then_some(())
    })
    .unwrap();
    echo_thread.join().unwrap();
}

/// When the peer's copy of a live entry expires first (here forced with
/// `conntrack -U -t 1` on B), B must not report the expiry: the owner still uses it.
#[test]
fn replica_expiry_is_not_reported_back() {
    let lab = lab("rexp");
    let (_a, _b) = start_pair(&lab, SECRET, SECRET);
    let client = lab
        .client
        .enter(|| std::net::UdpSocket::bind(format!("{CLIENT_IP}:41235")).unwrap())
        .unwrap();
    let send = || client.send_to(b"ping", (SERVER_IP, 7000)).unwrap();
    let has =
        |fw: &testkit::lab::Firewall| forwarded(fw).iter().any(|l| l.line.contains("sport=41235"));
    send();
    testkit::wait_for(Duration::from_secs(10), "entry on B", || {
        has(&lab.fw_b).then_some(())
    })
    .unwrap();
    // Shorten B's copy to 1 s (conntrack -U would resend the NAT binding, which the
    // kernel refuses on updates; our installer leaves it out).
    lab.fw_b
        .ns
        .enter(|| {
            use hasync::{conntrack::Change, kernel::ctnetlink};
            let mut entry = ctnetlink::dump(None)
                .unwrap()
                .into_iter()
                .find(|e| e.orig.sport() == 41235)
                .expect("B holds the entry");
            entry.timeout = 1;
            let report = ctnetlink::Installer::new()
                .unwrap()
                .install(&[Change::Upsert { entry, new: false }]);
            assert_eq!(report.updated, 1, "{report:?}");
        })
        .unwrap();
    testkit::wait_for(Duration::from_secs(10), "B's copy to expire", || {
        (!has(&lab.fw_b)).then_some(())
    })
    .unwrap();
    wait_metric(
        &lab.fw_b.ns,
        "deletes_total",
        "action=\"replica_expired\"",
        1.0,
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(has(&lab.fw_a), "A's live entry survived B's expiry");
    let ma = metrics(&lab.fw_a.ns);
    assert_eq!(
        metric(&ma, "installs_total", "result=\"deleted\""),
        0.0,
        "{ma}"
    );
}

#[test]
fn unicast_sync_when_no_multicast_group() {
    let lab = lab("uni");
    let unicast = "      multicast_group = \"\"";
    let cfg = |mode: &str, peer: &str| {
        node_config(mode, peer, SECRET, "")
            .replace("      multicast_group = \"225.0.0.50\"", unicast)
    };
    let _a = Agent::start(&lab.fw_a.ns, "fw-a", &cfg("primary", SYNC_B));
    let _b = Agent::start(&lab.fw_b.ns, "fw-b", &cfg("replica", SYNC_A));
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40000),
        SERVER_IP.parse().unwrap(),
        20000..21000,
    );
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 1000, Duration::from_secs(20));
}

/// A node that starts after its peer already holds connections gets the whole table
/// (bulk resync), and reports itself in sync.
#[test]
fn late_joiner_receives_the_full_table() {
    let lab = lab("late");
    let a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, SECRET, ""),
    );
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    for sport in 40000..40020u16 {
        udp_flows(
            &lab.client,
            SocketAddr::new(client, sport),
            SERVER_IP.parse().unwrap(),
            20000..25000,
        );
    }
    // Wait until A has captured everything, then start B.
    wait_metric(
        &lab.fw_a.ns,
        "capture_events_total",
        "",
        100_000.0,
        Duration::from_secs(20),
    );
    assert!(forwarded(&lab.fw_b).is_empty());
    let _b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, SECRET, ""),
    );
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 100_000, Duration::from_secs(60));
    wait_metric(&lab.fw_b.ns, "in_sync", "", 1.0, Duration::from_secs(10));
    let mb = metrics(&lab.fw_b.ns);
    assert!(metric(&mb, "full_syncs_total", "") >= 1.0, "{mb}");
    assert!(
        metric(&mb, "last_full_sync_timestamp_seconds", "") > 0.0,
        "{mb}"
    );
    assert!(
        a.log_text().contains("resync: table sent"),
        "{}",
        a.log_text()
    );
}

/// A sync filter excluding a port range: those flows never reach B (they are dropped
/// in the kernel program, and so are their deletions); the others do.
#[test]
fn filtered_flows_never_reach_the_peer() {
    let lab = lab("flt");
    let filter = "      filter {\n        protocol  = \"udp\"\n        dst_ports = \"30000-30999\"\n        exclude   = true\n      }";
    let _a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, SECRET, filter),
    );
    let _b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, SECRET, filter),
    );
    // B's startup resync done first: the flows below reach it only as live events.
    wait_metric(&lab.fw_b.ns, "in_sync", "", 1.0, Duration::from_secs(10));
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40000),
        SERVER_IP.parse().unwrap(),
        29500..31500,
    );
    // Everything outside the excluded range arrives...
    wait_metric(
        &lab.fw_b.ns,
        "installs_total",
        "result=\"created\"",
        1000.0,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    let on_b = forwarded(&lab.fw_b);
    let excluded = |l: &&testkit::CtLine| {
        l.line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("dport="))
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| (30000..=30999).contains(&p))
    };
    assert_eq!(on_b.len(), 1000, "only the flows outside the range");
    assert!(!on_b.iter().any(|l| excluded(&l)), "no excluded flow on B");
    // ...they were dropped in the kernel, before any userspace work.
    let ma = metrics(&lab.fw_a.ns);
    assert!(metric(&ma, "program_filtered_total", "") >= 1000.0, "{ma}");
    // Live records are exactly the captured events (a resync B asked for again under
    // load may re-send the table on top; those are counted apart).
    assert_eq!(
        metric(&ma, "sync_sent_records_total", "")
            - metric(&ma, "sync_resync_records_sent_total", ""),
        metric(&ma, "capture_events_total", ""),
        "{ma}"
    );
    assert!(metric(&ma, "capture_events_total", "") < 1100.0, "{ma}");
    // Deleting everything on A: only the synced flows' deletions go out.
    lab.fw_a
        .ns
        .exec("conntrack", ["-D", "-p", "udp", "--orig-port-src", "40000"])
        .unwrap();
    wait_metric(
        &lab.fw_a.ns,
        "deletes_total",
        "action=\"filtered\"",
        1000.0,
        Duration::from_secs(10),
    );
    wait_metric(
        &lab.fw_a.ns,
        "deletes_total",
        "action=\"sent\"",
        1000.0,
        Duration::from_secs(10),
    );
}

/// `sync_delay_ms`: connections that end within the delay are never sent; the others
/// reach the peer once they are older than it.
#[test]
fn sync_delay_keeps_short_lived_connections_local() {
    let lab = lab("dly");
    let delay = "      sync_delay_ms = 800";
    let _a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, SECRET, delay),
    );
    let _b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, SECRET, delay),
    );
    // The delay applies to live events; a bulk resync sends every entry A owns.
    wait_metric(&lab.fw_b.ns, "in_sync", "", 1.0, Duration::from_secs(10));
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    // Short-lived: created and deleted well within the delay.
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40001),
        SERVER_IP.parse().unwrap(),
        21000..21100,
    );
    lab.fw_a
        .ns
        .exec("conntrack", ["-D", "-p", "udp", "--orig-port-src", "40001"])
        .unwrap();
    // Long-lived: stays.
    let sent = std::time::Instant::now();
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40002),
        SERVER_IP.parse().unwrap(),
        22000..22100,
    );
    std::thread::sleep(Duration::from_millis(400));
    let client_flows = |fw| {
        forwarded(fw)
            .into_iter()
            .filter(|l| l.line.contains(&format!("src={CLIENT_IP} ")))
            .count()
    };
    assert_eq!(client_flows(&lab.fw_b), 0, "nothing before the delay");
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 100, Duration::from_secs(10));
    assert!(sent.elapsed() >= Duration::from_millis(800));
    assert!(
        !forwarded(&lab.fw_b)
            .iter()
            .any(|l| l.line.contains("sport=40001")),
        "short-lived never sent"
    );
    let ma = metrics(&lab.fw_a.ns);
    assert!(
        metric(&ma, "sync_delay_cancelled_total", "") >= 100.0,
        "{ma}"
    );
    assert_eq!(
        metric(
            &metrics(&lab.fw_b.ns),
            "installs_total",
            "result=\"deleted\""
        ),
        0.0
    );
}

/// A TCP connection from exactly `local`. The previous connection from that port was
/// just reset; under load the kernel can still refuse the 4-tuple for a moment
/// (EADDRNOTAVAIL), so that is retried briefly.
fn connect_from(local: SocketAddr, server: SocketAddr) -> std::net::TcpStream {
    for _ in 0..100 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&local.into()).unwrap();
        match s.connect_timeout(&server.into(), Duration::from_secs(5)) {
            Ok(()) => return s.into(),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect from {local}: {e}"),
        }
    }
    panic!("connect from {local}: the 4-tuple stayed busy for a second");
}

/// A SYN on a closed connection's key makes conntrack kill the old entry and create a
/// new one for the same packet. The new entry (ring buffer) and the old one's destroy
/// event (ctnetlink) travel separate channels; whichever the agent reads first, the
/// peer must end up holding the new connection, not lose it to the late deletion.
#[test]
fn reopened_connections_stay_on_the_peer() {
    use std::io::{Read, Write};
    let lab = lab("reo");
    let (_a, _b) = start_pair(&lab, SECRET, SECRET);
    let server: SocketAddr = format!("{SERVER_IP}:8081").parse().unwrap();
    let rounds = 300u16;
    let srv = tcp_server(&lab.server, server, rounds as usize * 2);
    lab.client
        .enter(|| {
            for i in 0..rounds {
                let local = SocketAddr::new(CLIENT_IP.parse().unwrap(), 45000 + i);
                // Twice from the same port: the second SYN reopens the first's key.
                for _ in 0..2 {
                    let mut c = connect_from(local, server);
                    c.write_all(b"ping").unwrap();
                    let mut buf = [0u8; 4];
                    c.read_exact(&mut buf).unwrap();
                    // RST: the port is free at once and the entry goes to CLOSE.
                    socket2::SockRef::from(&c)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                }
            }
        })
        .unwrap();
    srv.join().unwrap();
    // Before the CLOSE entries (10 s) expire.
    let table = wait_tables_equal(
        &lab.fw_a,
        &lab.fw_b,
        rounds as usize,
        Duration::from_secs(8),
    );
    let reopened = table
        .iter()
        .filter(|l| l.line.contains("dport=8081 ") && l.line.contains("CLOSE"))
        .count();
    assert_eq!(reopened, rounds as usize, "{table:#?}");
    // The late destroy events did happen (about half of them, here) and were handled.
    wait_metric(
        &lab.fw_a.ns,
        "deletes_total",
        "action=\"superseded\"",
        1.0,
        Duration::from_secs(5),
    );
}

/// `encrypt_sync = true` on both nodes: the table still converges, and on the sync link
/// every datagram fw-a sends is flagged encrypted and shows none of the replicated
/// flows' addresses, which decrypting it with the shared key does reveal (so the
/// capture did hold the replicated table).
#[test]
fn encrypted_sync_converges_and_hides_the_table_on_the_link() {
    use hasync::sync::{KeyRing, wire};
    let lab = lab("enc");
    let capture = support::LinkCapture::open(&lab.fw_b.ns, "sync0");
    let encrypted = |mode: &str, peer: &str| {
        let line = format!("  secret_key = \"{SECRET}\"\n");
        let cfg = node_config(mode, peer, SECRET, "")
            .replace(&line, &format!("{line}  encrypt_sync = true\n"));
        assert!(cfg.contains("encrypt_sync"), "{cfg}");
        cfg
    };
    let _a = Agent::start(&lab.fw_a.ns, "fw-a", &encrypted("primary", SYNC_B));
    let b_cfg = encrypted("replica", SYNC_A);
    let _b = Agent::start(&lab.fw_b.ns, "fw-b", &b_cfg);
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    udp_flows(
        &lab.client,
        SocketAddr::new(client, 40000),
        SERVER_IP.parse().unwrap(),
        21000..21300,
    );
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 300, Duration::from_secs(20));
    // Counters are published periodically.
    wait_metric(
        &lab.fw_b.ns,
        "sync_received_records_total",
        "",
        300.0,
        Duration::from_secs(5),
    );
    let mb = metrics(&lab.fw_b.ns);
    let received = metric(&mb, "sync_received_datagrams_total", "");
    assert!(received > 0.0, "{mb}");
    assert_eq!(
        metric(&mb, "sync_received_encrypted_datagrams_total", ""),
        received,
        "every datagram from fw-a arrived encrypted:\n{mb}"
    );

    // `hasync status` tells the operator both directions.
    let socket = b_cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("control_socket = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("the config names a control socket");
    let status = match hasync::control::client::call(
        std::path::Path::new(&socket),
        &hasync::control::Request::Status,
    ) {
        Ok(hasync::control::Response::Status(v)) => *v,
        other => panic!("status: {other:?}"),
    };
    assert_eq!(
        status.pointer("/sync/encrypting"),
        Some(&serde_json::json!(true)),
        "{status}"
    );
    assert!(
        status
            .pointer("/sync/received_encrypted")
            .and_then(|v| v.as_u64())
            > Some(0),
        "{status}"
    );

    let client_bytes = CLIENT_IP.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let contains = |hay: &[u8]| hay.windows(4).any(|w| w == client_bytes);
    let keys = KeyRing::from_secrets(SECRET.as_bytes(), None).unwrap();
    let from_a: Vec<_> = capture
        .udp()
        .into_iter()
        .filter(|c| c.src.to_string() == SYNC_A && c.dport == 3780)
        .collect();
    assert!(
        !from_a.is_empty(),
        "no sync datagram captured on fw-b's sync0"
    );
    let mut revealed = 0;
    for mut c in from_a {
        let dg = wire::Datagram::parse(&c.payload).expect("a sync datagram");
        assert!(dg.encrypted(), "datagram seq {} sent in clear", dg.seq());
        assert!(
            !contains(&c.payload),
            "a client address in clear on the link"
        );
        wire::open((&mut c.payload).into(), &keys).expect("opens with the shared key");
        revealed += usize::from(contains(&c.payload));
    }
    assert!(
        revealed > 0,
        "no captured datagram carried the replicated flows"
    );
}

/// `(thread name, scheduling policy, realtime priority)` of every thread of `pid`.
fn thread_scheduling(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesised name start with field 3 (state); field 40 is
        // rt_priority, field 41 the policy.
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        out.push((
            comm.trim().to_string(),
            rest[41 - 3].parse().unwrap(),
            rest[40 - 3].parse().unwrap(),
        ));
    }
    out
}

/// `realtime_priority` puts the two data-path threads, and only them, on SCHED_FIFO;
/// without it every thread keeps normal scheduling.
#[test]
fn realtime_priority_applies_to_the_data_path_threads() {
    let lab = lab("rtp");
    let a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, SECRET, "realtime_priority = 7"),
    );
    let b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, SECRET, ""),
    );
    const SCHED_FIFO: u32 = 1;
    let fifo_names = |threads: &[(String, u32, u32)]| {
        let mut names: Vec<String> = threads
            .iter()
            .filter(|t| t.1 == SCHED_FIFO)
            .map(|t| t.0.clone())
            .collect();
        names.sort();
        names
    };
    // Helper threads they start (the start-up table dump) switch back to normal
    // scheduling as their first step: allow for that moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut threads = thread_scheduling(a.pid());
    while fifo_names(&threads) != ["hasync-egress", "hasync-ingress"]
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        threads = thread_scheduling(a.pid());
    }
    assert_eq!(
        fifo_names(&threads),
        ["hasync-egress", "hasync-ingress"],
        "{threads:?}"
    );
    assert!(
        threads
            .iter()
            .filter(|t| t.1 == SCHED_FIFO)
            .all(|t| t.2 == 7),
        "{threads:?}"
    );
    assert!(
        a.log_text().contains("data-path thread runs SCHED_FIFO"),
        "{}",
        a.log_text()
    );
    let threads = thread_scheduling(b.pid());
    assert!(threads.iter().all(|t| t.1 == 0), "{threads:?}");
    assert!(
        threads.iter().any(|t| t.0 == "hasync-egress"),
        "{threads:?}"
    );
    drop((a, b));
}
