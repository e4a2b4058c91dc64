//! Sync under faults: a lossy, reordering, duplicating sync link; a peer restarted in
//! the middle of traffic; hostile datagrams at the sync port.
//!
//! This kernel has no `sch_netem`, so the faulty link is a relay in B's namespace:
//! nftables redirects A's sync datagrams to it, and it drops 10 %, duplicates 5 % and
//! holds back 20 % behind later ones before handing them to B's agent.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hasync::{
    conntrack::{Change, Entry, ProtoInfo, Tuple, Zone, proto, status},
    sync::{Sender, SenderConfig, SyncKey},
};
use support::{
    Agent, forwarded, metric, metrics, node_config, start_pair, udp_flows, wait_metric,
    wait_tables_equal,
};
use testkit::lab::{CLIENT_IP, Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B};

const SECRET: &str = "lab-secret-please-change";
const RELAY_PORT: u16 = 3790;

fn lab(prefix: &str) -> Lab {
    let lab = Lab::new(&LabOptions {
        prefix: prefix.into(),
        ..Default::default()
    })
    .unwrap();
    // Unreplied UDP entries live 30 s by default: on a loaded CI machine that is shorter
    // than a slow convergence, and an expired entry would hide the difference.
    for fw in [&lab.fw_a, &lab.fw_b] {
        fw.ns
            .sysctl("net.netfilter.nf_conntrack_udp_timeout", "600")
            .unwrap();
    }
    // The server drops the flows silently (no ICMP errors that would end them).
    lab.server
        .nft("table inet srv {\n chain in {\n type filter hook input priority 0\n udp dport 10000-30000 drop\n }\n}\n")
        .unwrap();
    lab
}

/// A unicast node config. B's sockets are not bound to sync0, so that the relay's
/// datagrams (over loopback) reach it.
fn unicast_config(mode: &str, peer: &str, interface: bool) -> String {
    let base = node_config(mode, peer, SECRET, "");
    let base = base.replace(
        "      multicast_group = \"225.0.0.50\"\n",
        "      multicast_group = \"\"\n",
    );
    if interface {
        base
    } else {
        base.replace("      interface       = \"sync0\"\n", "")
    }
}

/// What the faulty link did.
#[derive(Default)]
struct LinkStats {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

/// The faulty link: runs until dropped.
struct ChaosRelay {
    stop: Arc<AtomicBool>,
    stats: Arc<LinkStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChaosRelay {
    fn start(lab: &Lab) -> ChaosRelay {
        lab.fw_b
            .ns
            .nft(&format!(
                "table ip chaos {{\n chain pre {{\n type nat hook prerouting priority -100;\n iifname \"sync0\" udp dport 3780 redirect to :{RELAY_PORT}\n }}\n}}\n"
            ))
            .unwrap();
        let (rx, tx) = lab
            .fw_b
            .ns
            .enter(|| {
                let rx = UdpSocket::bind(("0.0.0.0", RELAY_PORT)).unwrap();
                rx.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                (rx, UdpSocket::bind("127.0.0.1:0").unwrap())
            })
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LinkStats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let dest: SocketAddr = "127.0.0.1:3780".parse().unwrap();
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % 100
            };
            let mut held: Vec<(Vec<u8>, u32)> = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let n = match rx.recv(&mut buf) {
                    Ok(n) => n,
                    Err(_) => {
                        // Idle: let held datagrams go (late, i.e. reordered).
                        for (d, _) in held.drain(..) {
                            let _ = tx.send_to(&d, dest);
                        }
                        continue;
                    }
                };
                let d = &buf[..n];
                match next() {
                    0..10 => {
                        st.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    10..15 => {
                        st.duplicated.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send_to(d, dest);
                        let _ = tx.send_to(d, dest);
                    }
                    15..35 => {
                        st.reordered.fetch_add(1, Ordering::Relaxed);
                        held.push((d.to_vec(), 1 + (next() % 3) as u32));
                    }
                    _ => {
                        let _ = tx.send_to(d, dest);
                    }
                }
                st.forwarded.fetch_add(1, Ordering::Relaxed);
                // Held datagrams leave after 1-3 later ones.
                held.retain_mut(|(d, left)| {
                    *left -= 1;
                    if *left == 0 {
                        let _ = tx.send_to(d, dest);
                        false
                    } else {
                        true
                    }
                });
            }
        });
        ChaosRelay {
            stop,
            stats,
            thread: Some(thread),
        }
    }
}

impl Drop for ChaosRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn flows(lab: &Lab, sports: std::ops::Range<u16>, ports: std::ops::Range<u16>) {
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    for sport in sports {
        udp_flows(
            &lab.client,
            SocketAddr::new(client, sport),
            SERVER_IP.parse().unwrap(),
            ports.clone(),
        );
    }
}

/// 50,000 new flows through a link that loses, duplicates and reorders: B ends with
/// exactly A's table, and the metrics show the gaps it recovered.
#[test]
fn lossy_reordering_duplicating_link_converges() {
    let lab = lab("chao");
    let relay = ChaosRelay::start(&lab);
    let _a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &unicast_config("primary", SYNC_B, true),
    );
    let _b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &unicast_config("replica", SYNC_A, false),
    );
    flows(&lab, 40000..40010, 10000..15000);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 50_000, Duration::from_secs(90));
    let s = &relay.stats;
    let (dropped, duplicated, reordered) = (
        s.dropped.load(Ordering::Relaxed),
        s.duplicated.load(Ordering::Relaxed),
        s.reordered.load(Ordering::Relaxed),
    );
    assert!(
        dropped > 10 && duplicated > 5 && reordered > 10,
        "the link was not faulty enough: {dropped} dropped, {duplicated} duplicated, {reordered} reordered"
    );
    let mb = metrics(&lab.fw_b.ns);
    assert!(metric(&mb, "sync_lost_datagrams_total", "") > 0.0, "{mb}");
    assert!(
        metric(&mb, "sync_repaired_datagrams_total", "") > 0.0,
        "{mb}"
    );
    assert!(
        metric(&mb, "sync_rejected_total", "reason=\"replayed\"") > 0.0,
        "duplicates are counted as replays: {mb}"
    );
    let ma = metrics(&lab.fw_a.ns);
    assert!(metric(&ma, "sync_retransmits_total", "") > 0.0, "{ma}");
}

/// B's end of the sync link goes down while A creates 40,000 flows, then comes back:
/// B ends with A's table through NACKs and retransmission alone, without asking for
/// the full table again (the sender keeps, and the receiver tracks, enough datagrams
/// for a short link flap).
#[test]
fn sync_link_outage_is_repaired_by_retransmission() {
    let lab = lab("outg");
    let (_a, _b) = start_pair(&lab, SECRET, SECRET);
    flows(&lab, 40000..40001, 10000..12000);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 2000, Duration::from_secs(30));
    let syncs_before = wait_metric(
        &lab.fw_b.ns,
        "full_syncs_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    lab.fw_b.ns.ip(&["link", "set", "sync0", "down"]).unwrap();
    // ~1 s of a light stream (groups of 8 flows 150 us apart): many small datagrams,
    // as adaptive batching sends them at moderate rates.
    for sport in 40001..40021 {
        for first in (10000..12000).step_by(8) {
            flows(&lab, sport..sport + 1, first..first + 8);
            std::thread::sleep(Duration::from_micros(150));
        }
    }
    lab.fw_b.ns.ip(&["link", "set", "sync0", "up"]).unwrap();
    // A new flow after the outage shows B the gap at once (an ALIVE would within 1 s).
    flows(&lab, 40021..40022, 10000..10001);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 42_001, Duration::from_secs(60));
    // Every lost datagram retransmitted (the last may be an ALIVE with no entries).
    let mb = testkit::wait_for(Duration::from_secs(10), "B repaired every gap", || {
        let mb = metrics(&lab.fw_b.ns);
        let lost = metric(&mb, "sync_lost_datagrams_total", "");
        (metric(&mb, "sync_repaired_datagrams_total", "") == lost).then_some(mb)
    })
    .unwrap_or_else(|e| panic!("{e}; metrics:\n{}", metrics(&lab.fw_b.ns)));
    let lost = metric(&mb, "sync_lost_datagrams_total", "");
    println!("outage: {lost} datagrams lost and repaired");
    assert!(lost > 100.0, "the outage lost little: {mb}");
    assert_eq!(
        metric(&mb, "full_syncs_total", ""),
        syncs_before,
        "no bulk resync was needed: {mb}"
    );
}

/// B's agent is killed while A creates flows and started again: it asks for the full
/// table and ends equal to A.
#[test]
fn peer_restarted_mid_traffic_converges() {
    let lab = lab("rstb");
    let (_a, mut b) = start_pair(&lab, SECRET, SECRET);
    let started = Instant::now();
    let mut restarted = None;
    let mut sport = 40000u16;
    // 2,000 flows every 100 ms for 4 s; B is down from 1 s to 2 s.
    while started.elapsed() < Duration::from_secs(4) {
        flows(&lab, sport..sport + 1, 10000..12000);
        sport += 1;
        if started.elapsed() > Duration::from_secs(1) && b.is_running() && restarted.is_none() {
            b.kill();
            restarted = Some(Instant::now());
        }
        if let Some(at) = restarted
            && at.elapsed() > Duration::from_secs(1)
            && !b.is_running()
        {
            b = Agent::start(
                &lab.fw_b.ns,
                "fw-b",
                &node_config("replica", SYNC_A, SECRET, ""),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.is_running(), "B was restarted");
    let n = usize::from(sport - 40000) * 2000;
    wait_tables_equal(&lab.fw_a, &lab.fw_b, n, Duration::from_secs(60));
    wait_metric(
        &lab.fw_b.ns,
        "full_syncs_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    // A in turn took B's table and compared B's digest with what it holds for B. The
    // restarted B must not have offered A's own entries as its own: A would have held
    // them for B and deleted them as stale (a regression seen on CI).
    testkit::wait_for(Duration::from_secs(30), "A compared B's digest", || {
        let ma = metrics(&lab.fw_a.ns);
        (metric(&ma, "consistency_checks_total", "outcome=\"consistent\"")
            + metric(&ma, "consistency_checks_total", "outcome=\"repaired\"")
            >= 1.0)
            .then_some(())
    })
    .unwrap();
    wait_tables_equal(&lab.fw_a, &lab.fw_b, n, Duration::from_secs(30));
    let ma = metrics(&lab.fw_a.ns);
    assert_eq!(
        metric(&ma, "consistency_stale_deleted_total", ""),
        0.0,
        "A deleted entries it owns: {ma}"
    );
}

/// A plain entry from 192.0.2.1:`sport` (not a lab address, so it cannot collide).
fn entry(sport: u16) -> Entry {
    let orig = Tuple::new(
        proto::UDP,
        "192.0.2.1".parse().unwrap(),
        sport,
        "198.51.100.1".parse().unwrap(),
        53,
    );
    Entry {
        orig,
        reply: orig.swapped(),
        status: status::CONFIRMED | status::SEEN_REPLY,
        timeout: 120,
        mark: 0,
        zone: Zone::DEFAULT,
        proto: ProtoInfo::None,
        labels: None,
    }
}

/// One sealed DATA datagram carrying `e`, as node 77 would send it with `secret`.
fn datagram(secret: &str, e: Entry, epoch: u32) -> Vec<u8> {
    let mut s = Sender::new(
        SenderConfig::new(77, epoch),
        SyncKey::derive(secret.as_bytes()).unwrap(),
        Instant::now(),
    )
    .unwrap();
    s.push(&Change::Upsert {
        entry: e,
        new: true,
    })
    .unwrap();
    s.flush();
    let out: Vec<Vec<u8>> = s.ready().map(<[u8]>::to_vec).collect();
    assert_eq!(out.len(), 1);
    out.into_iter().next().unwrap()
}

fn on_b(lab: &Lab, sport: u16) -> bool {
    testkit::conntrack_list(&lab.fw_b.ns)
        .unwrap()
        .iter()
        .any(|l| l.line.contains("src=192.0.2.1 ") && l.line.contains(&format!("sport={sport} ")))
}

/// Datagrams an attacker on the sync link could send: none is installed, each is
/// counted under its reason, the agent keeps running, and a genuine one still works.
#[test]
fn hostile_datagrams_install_nothing_and_are_counted() {
    let lab = lab("host");
    let mut b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, SECRET, ""),
    );
    let sock = lab
        .fw_a
        .ns
        .enter(|| UdpSocket::bind((SYNC_A, 0)).unwrap())
        .unwrap();
    let send = |d: &[u8]| {
        sock.send_to(d, "225.0.0.50:3780").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    };
    socket2::SockRef::from(&sock)
        .set_multicast_if_v4(&SYNC_A.parse().unwrap())
        .unwrap();

    let genuine = datagram(SECRET, entry(1001), 9);
    let wrong_key = datagram("someone-elses-secret", entry(1002), 9);
    let mut wrong_version = datagram(SECRET, entry(1003), 10);
    wrong_version[4] = 99;
    let truncated = &datagram(SECRET, entry(1004), 11)[..40];
    let mut tampered = datagram(SECRET, entry(1005), 12);
    let last = tampered.len() - 20;
    tampered[last] ^= 0x01; // a payload byte: the tag no longer matches
    let garbage: Vec<u8> = (0..600u32).map(|i| (i * 7 + 3) as u8).collect();

    for d in [
        &wrong_key[..],
        &wrong_version,
        truncated,
        &tampered,
        &garbage,
    ] {
        send(d);
    }
    send(&genuine);
    testkit::wait_for(Duration::from_secs(5), "the genuine entry on B", || {
        on_b(&lab, 1001).then_some(())
    })
    .unwrap();
    send(&genuine); // replayed
    std::thread::sleep(Duration::from_millis(300));
    for sport in [1002, 1003, 1004, 1005] {
        assert!(!on_b(&lab, sport), "entry {sport} must not be installed");
    }
    let mb = metrics(&lab.fw_b.ns);
    for reason in [
        "auth_failed",
        "unsupported_version",
        "truncated",
        "bad_magic",
        "replayed",
    ] {
        assert!(
            metric(&mb, "sync_rejected_total", &format!("reason=\"{reason}\"")) >= 1.0,
            "{reason} not counted:\n{mb}"
        );
    }
    assert!(
        metric(&mb, "sync_rejected_total", "reason=\"auth_failed\"") >= 2.0,
        "wrong key and tampered payload: {mb}"
    );
    assert!(b.is_running(), "{}", b.log_text());
    assert_eq!(forwarded(&lab.fw_b).len(), 1, "only the genuine entry");
}
