//! Expectation replication against the real kernel (root only; skipped otherwise).
//!
//! * `ftp_expectation_replicates_to_b`: passive FTP from the client through fw-a (FTP
//!   helper attached by an nft rule, SNAT by the lab policy) creates an expectation on
//!   fw-a; it is captured with `ExpectListener`, carried through the wire record,
//!   installed on fw-b next to the replicated master, and `conntrack -L expect` shows
//!   the same expectation on both. The data connection then consumes it on fw-a, and
//!   the delete replicates too.
//! * `installer_against_the_kernel`: IPv4/IPv6, zone, class (SIP audio), flags and
//!   timeout round-trip through the kernel; EEXIST, ENOENT, unknown helpers.
//! * `agents_replicate_expectations`: the same FTP exchange with agents on both
//!   firewalls (`expect_sync = true`): the expectation appears on fw-b and goes away
//!   there when the data connection consumes it on fw-a; the metrics count both.
//! * `agents_without_expect_sync_do_not`: with `expect_sync = false` on fw-a, the
//!   master replicates but the expectation never reaches fw-b.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use hasync::{
    conntrack::{
        Change, Entry, ExpectChange, ExpectKey, ExpectMask, Expectation, Family, HelperName,
        ProtoInfo, Tuple, Zone, expect_flags, proto, status,
    },
    kernel::ctnetlink::{
        ExpectInstaller, ExpectInstallerConfig, ExpectListener, ExpectOp, ExpectRecv, Installer,
        MasterHelper, dump, dump_expectations,
    },
    sync::wire::expect as wire,
};
use support::{Agent, metric, metrics, node_config, wait_metric};
use testkit::{
    NetNs,
    lab::{CLIENT_IP, Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B},
    wait_for,
};

macro_rules! require_root {
    () => {
        if !testkit::is_root() {
            eprintln!("skipping: needs root for network namespaces");
            return;
        }
    };
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The FTP helper for control connections (nft 1.0.6 syntax), loaded on both firewalls.
const FTP_HELPER_NFT: &str = "table inet ftph {\n\
    ct helper ftp-standard {\n type \"ftp\" protocol tcp\n l3proto inet\n }\n\
    chain pre {\n type filter hook prerouting priority filter; policy accept;\n\
      tcp dport 21 ct helper set \"ftp-standard\"\n }\n\
  }\n";

const DATA_PORT: u16 = 50021;

/// `conntrack -L expect` lines of a namespace as (timeout, rest of the line), sorted.
fn expect_lines(ns: &NetNs) -> Vec<(u32, String)> {
    let out = ns.exec("conntrack", ["-L", "expect"]).unwrap();
    let mut v: Vec<(u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (t, rest) = l.trim().split_once(' ')?;
            Some((t.parse().ok()?, rest.to_string()))
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

fn next_event(l: &mut ExpectListener, what: &str) -> hasync::kernel::ctnetlink::ExpectEvent {
    wait_for(Duration::from_secs(10), what, || match l.recv() {
        Ok(ExpectRecv::Event(e)) => Some(e),
        Ok(ExpectRecv::Empty) => None,
        Ok(ExpectRecv::Overrun) => panic!("expectation events lost"),
        Err(e) => panic!("{what}: {e}"),
    })
    .unwrap()
}

/// Through the sync wire record and back.
fn over_the_wire(c: &ExpectChange) -> ExpectChange {
    let mut buf = [0u8; wire::MAX_EXPECT_RECORD_LEN];
    let n = wire::encode(c, &mut buf).unwrap();
    let (d, m) = wire::decode(&buf[..n]).unwrap();
    assert_eq!(m, n);
    assert_eq!(&d, c);
    d
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s
}

/// A fake FTP server: greets, answers PASV with the data port, serves one data
/// connection, and holds the control connection until the client closes it.
fn ftp_server(ctl: TcpListener, data: TcpListener) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let Ok((mut c, _)) = ctl.accept() else { return };
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        c.write_all(b"220 hasync test\r\n").unwrap();
        if !read_line(&mut r).starts_with("PASV") {
            return;
        }
        let [hi, lo] = DATA_PORT.to_be_bytes();
        let reply = format!("227 Entering Passive Mode (203,0,113,100,{hi},{lo})\r\n");
        c.write_all(reply.as_bytes()).unwrap();
        data.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match data.accept() {
                Ok((mut d, _)) => {
                    let _ = d.write_all(b"hello");
                    break;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    })
}

#[test]
fn ftp_expectation_replicates_to_b() {
    require_root!();
    let lab = Lab::new(&LabOptions {
        prefix: "exp".into(),
        extra_nft: FTP_HELPER_NFT.into(),
        ..LabOptions::default()
    })
    .unwrap();
    let (fw_a, fw_b) = (&lab.fw_a.ns, &lab.fw_b.ns);
    let mut listen_a = fw_a.enter(ExpectListener::new).unwrap().unwrap();
    let mut listen_b = fw_b.enter(ExpectListener::new).unwrap().unwrap();

    // ---- FTP control connection through fw-a: PASV → 227 → expectation on fw-a ----
    let (ctl, data) = lab
        .server
        .enter(|| {
            (
                TcpListener::bind("0.0.0.0:21").unwrap(),
                TcpListener::bind(("0.0.0.0", DATA_PORT)).unwrap(),
            )
        })
        .unwrap();
    let server = ftp_server(ctl, data);
    let server_addr = SocketAddr::new(ip(SERVER_IP), 21);
    let mut client = lab
        .client
        .enter(move || TcpStream::connect_timeout(&server_addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(client.try_clone().unwrap());
    assert!(read_line(&mut r).starts_with("220"));
    client.write_all(b"PASV\r\n").unwrap();
    let pasv = read_line(&mut r);
    assert!(pasv.starts_with("227"), "{pasv}");

    let ev = next_event(&mut listen_a, "the expectation on fw-a");
    assert_eq!(ev.portid, 0, "created by the kernel's FTP helper");
    let ExpectChange::Upsert(exp) = ev.change else {
        panic!("expected a new expectation, got {ev:?}");
    };
    assert_eq!(exp.helper, HelperName::new("ftp"));
    assert_eq!(exp.tuple.dport(), DATA_PORT);
    assert_eq!(exp.tuple.src_ip(), ip(CLIENT_IP));
    assert_eq!(exp.tuple.dst_ip(), ip(SERVER_IP));
    assert_eq!(exp.tuple.proto, proto::TCP);
    assert_eq!(exp.mask, ExpectMask::any_port(Family::V4));
    assert_eq!(
        (exp.master.src_ip(), exp.master.dport()),
        (ip(CLIENT_IP), 21)
    );
    // The master is source-NATed: nf_nat_ftp saved the announced port and asks the
    // data connection to follow the master's NAT.
    let nat = exp.nat.expect("NAT info from nf_nat_ftp");
    assert_eq!(u16::from_be_bytes(nat.src_u), DATA_PORT);
    assert_eq!(
        exp.expectfn.map(|f| f.to_string()).as_deref(),
        Some("nat-follow-master")
    );
    assert!(exp.timeout > 290 && exp.timeout <= 300, "{}", exp.timeout);
    let lines_a = expect_lines(fw_a);
    assert_eq!(lines_a.len(), 1, "{lines_a:?}");
    assert!(lines_a[0].1.contains("helper=ftp"), "{lines_a:?}");
    assert!(
        lines_a[0].1.contains(&format!("dport={DATA_PORT}")),
        "{lines_a:?}"
    );
    // A dump reports the same expectation as the event.
    let dumped = fw_a.enter(|| dump_expectations(None).unwrap()).unwrap();
    assert_eq!(dumped.len(), 1);
    assert_eq!(
        Expectation {
            timeout: exp.timeout,
            ..dumped[0]
        },
        exp
    );

    // ---- to fw-b: the master first (as conntrack replication does), then the expectation
    let change = over_the_wire(&ev.change);
    let master: Entry = fw_a
        .enter(|| dump(None).unwrap())
        .unwrap()
        .into_iter()
        .find(|e| e.orig == exp.master)
        .expect("master in fw-a's table");
    let rep = fw_b
        .enter(move || {
            Installer::new().unwrap().install(&[Change::Upsert {
                entry: master,
                new: true,
            }])
        })
        .unwrap();
    assert_eq!((rep.created, rep.errors()), (1, 0), "{rep:?}");

    // Without the master repair, the kernel refuses: the replicated master has no
    // helper extension.
    let mut plain = fw_b
        .enter(|| {
            ExpectInstaller::with_config(ExpectInstallerConfig {
                repair_master_helper: false,
                ..ExpectInstallerConfig::default()
            })
            .unwrap()
        })
        .unwrap();
    let rep = plain.install(&[change]);
    assert_eq!(
        (rep.created, rep.errors.get(libc::EOPNOTSUPP)),
        (0, 1),
        "{rep:?}"
    );
    assert_eq!(plain.failures()[0].op, ExpectOp::Create);
    assert!(expect_lines(fw_b).is_empty());

    let t0 = Instant::now();
    let mut inst = fw_b.enter(|| ExpectInstaller::new().unwrap()).unwrap();
    let rep = inst.install(&[change]);
    assert_eq!(
        (
            rep.created,
            rep.masters_repaired,
            rep.timeout_not_set,
            rep.errors()
        ),
        (1, 1, 0, 0),
        "{rep:?} {:?}",
        inst.failures()
    );
    // Our own install comes back as an event with our port id: the agent skips it.
    let echo = next_event(&mut listen_b, "the echo of the install on fw-b");
    assert_eq!(echo.portid, inst.portid());
    assert!(matches!(echo.change, ExpectChange::Upsert(e) if e.tuple == exp.tuple));

    // The same expectation on both firewalls: tuple, mask, master, class, helper; the
    // timeout within a couple of seconds (one second of countdown passes per second
    // on both).
    let lines_a = expect_lines(fw_a);
    let lines_b = expect_lines(fw_b);
    eprintln!("fw-a: {lines_a:?}\nfw-b: {lines_b:?}");
    assert_eq!(lines_b.len(), 1, "{lines_b:?}");
    assert_eq!(lines_a[0].1, lines_b[0].1, "{lines_a:?} vs {lines_b:?}");
    let drift = lines_a[0].0.abs_diff(lines_b[0].0);
    assert!(
        drift <= 2 + t0.elapsed().as_secs() as u32,
        "{lines_a:?} vs {lines_b:?}"
    );
    let on_b = fw_b.enter(|| dump_expectations(None).unwrap()).unwrap();
    assert_eq!(on_b.len(), 1);
    assert_eq!(
        Expectation {
            timeout: exp.timeout,
            ..on_b[0]
        },
        exp
    );
    // The re-created master carries the helper (and its SNAT binding).
    let ct_b = fw_b
        .exec("conntrack", ["-L", "-p", "tcp", "--dport", "21"])
        .unwrap();
    let ct_b = String::from_utf8_lossy(&ct_b.stdout).into_owned();
    assert!(ct_b.contains("helper=ftp"), "{ct_b}");
    assert!(ct_b.contains("dst=203.0.113.1 "), "SNAT kept: {ct_b}");

    // ---- the data connection consumes the expectation on fw-a; the delete replicates
    let data_addr = SocketAddr::new(ip(SERVER_IP), DATA_PORT);
    let mut d = lab
        .client
        .enter(move || TcpStream::connect_timeout(&data_addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 5];
    d.read_exact(&mut hello).unwrap();
    assert_eq!(
        &hello, b"hello",
        "the data connection went through fw-a as RELATED"
    );
    let gone = next_event(&mut listen_a, "the expectation's end on fw-a");
    let ExpectChange::Delete(key) = gone.change else {
        panic!("expected a delete, got {gone:?}");
    };
    assert_eq!(
        key,
        ExpectKey {
            tuple: exp.tuple,
            zone: Zone::DEFAULT
        }
    );
    assert!(expect_lines(fw_a).is_empty());
    let rep = inst.install(&[over_the_wire(&gone.change)]);
    assert_eq!((rep.deleted, rep.errors()), (1, 0), "{rep:?}");
    assert!(expect_lines(fw_b).is_empty());
    let echo = next_event(&mut listen_b, "the echo of the delete on fw-b");
    assert_eq!(echo.portid, inst.portid());
    assert_eq!(echo.change, ExpectChange::Delete(key));
    // Deleting again is not an error.
    let rep = inst.install(&[gone.change]);
    assert_eq!((rep.delete_not_found, rep.errors()), (1, 0));

    drop(d);
    drop(r);
    drop(client);
    let _ = server.join();
}

fn master(p: u8, src: &str, sport: u16, dst: &str, dport: u16, zone: Zone) -> Entry {
    let orig = Tuple::new(p, ip(src), sport, ip(dst), dport);
    Entry {
        orig,
        reply: orig.swapped(),
        status: status::SEEN_REPLY | status::ASSURED | status::CONFIRMED,
        timeout: 600,
        mark: 0,
        zone,
        proto: if p == proto::TCP {
            ProtoInfo::Tcp {
                state: 3,
                wscale: [7, 7],
                flags: [0, 0],
            }
        } else {
            ProtoInfo::None
        },
        labels: None,
    }
}

fn expectation(m: &Entry, dport: u16, helper: &str, timeout: u32) -> Expectation {
    let mut tuple = m.orig;
    tuple.src_u = [0; 2];
    tuple.dst_u = dport.to_be_bytes();
    Expectation {
        master: m.orig,
        tuple,
        mask: ExpectMask::any_port(m.orig.family),
        zone: m.zone,
        timeout,
        flags: 0,
        class: 0,
        helper: HelperName::new(helper),
        expectfn: None,
        nat: None,
    }
}

#[test]
fn installer_against_the_kernel() {
    require_root!();
    let ns = NetNs::new("exk").unwrap();
    ns.enable_conntrack().unwrap();
    let ftp4 = master(proto::TCP, "10.0.0.1", 40000, "10.0.0.2", 21, Zone::DEFAULT);
    let ftp6 = master(
        proto::TCP,
        "2001:db8::1",
        40001,
        "2001:db8::2",
        21,
        Zone::DEFAULT,
    );
    let sip = master(
        proto::UDP,
        "10.0.0.1",
        5060,
        "10.0.0.3",
        5060,
        Zone::DEFAULT,
    );
    let zoned = master(proto::TCP, "10.0.0.1", 40002, "10.0.0.2", 21, Zone::new(5));
    let helperless = master(
        proto::TCP,
        "10.0.0.1",
        40003,
        "10.0.0.2",
        2121,
        Zone::DEFAULT,
    );
    let masters = [ftp4, ftp6, sip, zoned, helperless];
    let rep = ns
        .enter(move || {
            let changes: Vec<Change> = masters
                .iter()
                .map(|&entry| Change::Upsert { entry, new: true })
                .collect();
            Installer::new().unwrap().install(&changes)
        })
        .unwrap();
    assert_eq!((rep.created, rep.errors()), (5, 0), "{rep:?}");

    let mut e_ftp4 = expectation(&ftp4, 50000, "ftp", 77);
    e_ftp4.flags = expect_flags::PERMANENT;
    let e_ftp6 = expectation(&ftp6, 50001, "ftp", 120);
    // SIP RTP and RTCP audio: class 1 (the SIP helper allows several per master),
    // both for the same helper-less master in one batch.
    let mut e_sip = expectation(&sip, 16384, "sip", 60);
    e_sip.class = 1;
    let e_rtcp = expectation(&sip, 16385, "sip", 60);
    let e_rtcp = Expectation { class: 1, ..e_rtcp };
    let e_zoned = expectation(&zoned, 50002, "ftp", 90);
    let orphan = expectation(
        &master(proto::TCP, "10.0.0.9", 1, "10.0.0.2", 21, Zone::DEFAULT),
        50003,
        "ftp",
        30,
    );
    let unknown = expectation(&helperless, 50004, "nosuchhelper", 30);
    let changes =
        [e_ftp4, e_ftp6, e_sip, e_rtcp, e_zoned, orphan, unknown].map(ExpectChange::Upsert);

    let mut inst = ns.enter(|| ExpectInstaller::new().unwrap()).unwrap();
    let rep = inst.install(&changes);
    assert_eq!(
        (rep.created, rep.masters_repaired, rep.timeout_not_set),
        (5, 4, 0),
        "{rep:?} {:?}",
        inst.failures()
    );
    // No master: ENOENT. Unknown helper: the master could not be given it and is back
    // as it was.
    assert_eq!(
        (
            rep.errors.get(libc::ENOENT),
            rep.errors.get(libc::EOPNOTSUPP),
            rep.errors()
        ),
        (1, 1, 2)
    );
    let mut f = inst.failures().to_vec();
    f.sort_by_key(|f| f.index);
    assert_eq!(
        (f[0].index, f[0].op, f[0].errno),
        (5, ExpectOp::Create, libc::ENOENT)
    );
    assert_eq!(
        (f[1].index, f[1].op, f[1].errno),
        (6, ExpectOp::RepairMaster, libc::EOPNOTSUPP)
    );
    let ct = ns
        .exec("conntrack", ["-L", "-p", "tcp", "--dport", "2121"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ct.stdout).contains("sport=40003"),
        "the master without a known helper is still there"
    );

    // What the kernel holds: everything but the zone (never reported) as sent; the
    // timeouts as sent, not the helpers' policies (FTP 300 s, SIP audio 180 s).
    let mut got = ns.enter(|| dump_expectations(None).unwrap()).unwrap();
    got.sort_by_key(|e| e.tuple);
    let mut want = vec![e_ftp4, e_ftp6, e_sip, e_rtcp, e_zoned];
    for w in &mut want {
        w.zone = Zone::DEFAULT;
    }
    want.sort_by_key(|e| e.tuple);
    assert_eq!(got.len(), 5, "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g.timeout <= w.timeout && g.timeout + 3 >= w.timeout,
            "{g:?} vs {w:?}"
        );
        assert_eq!(
            Expectation {
                timeout: w.timeout,
                ..*g
            },
            *w
        );
    }

    // Again: all present (EEXIST is fine), timeouts refreshed, nothing to repair.
    let again = [e_ftp4, e_ftp6, e_sip, e_rtcp, e_zoned].map(ExpectChange::Upsert);
    let rep = inst.install(&again);
    assert_eq!(
        (rep.existed, rep.masters_repaired, rep.errors()),
        (5, 0, 0),
        "{rep:?}"
    );
    // A class beyond what the master's helper has: EINVAL.
    let mut bad_class = expectation(&sip, 16390, "sip", 60);
    bad_class.class = 9;
    let rep = inst.install(&[ExpectChange::Upsert(bad_class)]);
    assert_eq!(
        (rep.created, rep.errors.get(libc::EINVAL)),
        (0, 1),
        "{rep:?}"
    );

    // Deletes, one in zone 5; then again: not found, not an error.
    let deletes = [e_ftp4, e_ftp6, e_sip, e_rtcp, e_zoned].map(|e| ExpectChange::Delete(e.key()));
    let rep = inst.install(&deletes);
    assert_eq!(
        (rep.deleted, rep.errors()),
        (5, 0),
        "{rep:?} {:?}",
        inst.failures()
    );
    assert!(
        ns.enter(|| dump_expectations(None).unwrap())
            .unwrap()
            .is_empty()
    );
    let rep = inst.install(&deletes);
    assert_eq!((rep.delete_not_found, rep.errors()), (5, 0));

    // An upsert and a delete of the same expectation in one call: the delete wins.
    let rep = inst.install(&[
        ExpectChange::Upsert(e_ftp4),
        ExpectChange::Delete(e_ftp4.key()),
    ]);
    assert_eq!((rep.created, rep.deleted, rep.errors()), (1, 1, 0));
    assert!(
        ns.enter(|| dump_expectations(None).unwrap())
            .unwrap()
            .is_empty()
    );
    assert!(
        ns.enter(hasync::kernel::ctnetlink::flush_expectations)
            .unwrap()
            .is_ok()
    );
    // Attaching a helper to a master directly.
    let tftp = master(proto::UDP, "10.0.0.1", 3000, "10.0.0.2", 69, Zone::DEFAULT);
    let rep = ns
        .enter(move || {
            Installer::new().unwrap().install(&[Change::Upsert {
                entry: tftp,
                new: true,
            }])
        })
        .unwrap();
    assert_eq!(rep.created, 1);
    let name = HelperName::new("tftp").unwrap();
    assert_eq!(
        inst.ensure_master_helper(&tftp.orig, tftp.zone, &name),
        Ok(MasterHelper::Recreated)
    );
    assert_eq!(
        inst.ensure_master_helper(&tftp.orig, tftp.zone, &HelperName::new("ftp").unwrap()),
        Ok(MasterHelper::Present(name))
    );
    let ct = ns
        .exec("conntrack", ["-L", "-p", "udp", "--dport", "69"])
        .unwrap();
    let ct = String::from_utf8_lossy(&ct.stdout).into_owned();
    assert!(
        ct.contains("helper=tftp") && ct.contains("sport=3000"),
        "{ct}"
    );
    let missing = Tuple::new(proto::UDP, ip("10.0.0.7"), 1, ip("10.0.0.2"), 69);
    assert_eq!(
        inst.ensure_master_helper(&missing, Zone::DEFAULT, &name),
        Err(libc::ENOENT)
    );
}

const SECRET: &str = "expectation-sync-test-secret";

/// An FTP control connection from the client through fw-a, after PASV (so fw-a's
/// helper created the expectation). Returns what the data connection and cleanup need.
struct Ftp {
    client: TcpStream,
    reader: BufReader<TcpStream>,
    server: thread::JoinHandle<()>,
}

fn ftp_pasv(lab: &Lab) -> Ftp {
    let (ctl, data) = lab
        .server
        .enter(|| {
            (
                TcpListener::bind("0.0.0.0:21").unwrap(),
                TcpListener::bind(("0.0.0.0", DATA_PORT)).unwrap(),
            )
        })
        .unwrap();
    let server = ftp_server(ctl, data);
    let server_addr = SocketAddr::new(ip(SERVER_IP), 21);
    let client = lab
        .client
        .enter(move || TcpStream::connect_timeout(&server_addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    assert!(read_line(&mut reader).starts_with("220"));
    (&client).write_all(b"PASV\r\n").unwrap();
    let pasv = read_line(&mut reader);
    assert!(pasv.starts_with("227"), "{pasv}");
    Ftp {
        client,
        reader,
        server,
    }
}

impl Ftp {
    /// Opens the data connection (it consumes the expectation on fw-a) and closes all.
    fn data_and_close(self, lab: &Lab) {
        let data_addr = SocketAddr::new(ip(SERVER_IP), DATA_PORT);
        let mut d = lab
            .client
            .enter(move || TcpStream::connect_timeout(&data_addr, Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = [0u8; 5];
        d.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello");
        drop(d);
        drop(self.reader);
        drop(self.client);
        let _ = self.server.join();
    }
}

fn agents(lab: &Lab, expect_a: bool, expect_b: bool) -> (Agent, Agent) {
    let extra = |on: bool| format!("      expect_sync = {on}\n");
    let a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, SECRET, &extra(expect_a)),
    );
    let b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, SECRET, &extra(expect_b)),
    );
    wait_metric(&lab.fw_b.ns, "in_sync", "", 1.0, Duration::from_secs(15));
    (a, b)
}

fn ftp_lab(prefix: &str) -> Lab {
    Lab::new(&LabOptions {
        prefix: prefix.into(),
        extra_nft: FTP_HELPER_NFT.into(),
        ..LabOptions::default()
    })
    .unwrap()
}

#[test]
fn agents_replicate_expectations() {
    require_root!();
    let lab = ftp_lab("exa");
    let (fw_a, fw_b) = (&lab.fw_a.ns, &lab.fw_b.ns);
    let (a, b) = agents(&lab, true, true);

    let ftp = ftp_pasv(&lab);
    let lines_a = wait_for(Duration::from_secs(5), "the expectation on fw-a", || {
        let l = expect_lines(fw_a);
        (!l.is_empty()).then_some(l)
    })
    .unwrap();
    assert_eq!(lines_a.len(), 1, "{lines_a:?}");
    // On fw-b: the same expectation (tuple, mask, master, helper, NAT), as the kernel
    // shows it; the timeout within a few seconds of fw-a's.
    let lines_b = wait_for(Duration::from_secs(10), "the expectation on fw-b", || {
        let l = expect_lines(fw_b);
        (!l.is_empty()).then_some(l)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nfw-a metrics:\n{}\nfw-b metrics:\n{}\nfw-b log:\n{}",
            metrics(fw_a),
            metrics(fw_b),
            b.log_text()
        )
    });
    assert_eq!(lines_b.len(), 1, "{lines_b:?}");
    assert_eq!(lines_a[0].1, lines_b[0].1, "{lines_a:?} vs {lines_b:?}");
    assert!(
        lines_a[0].0.abs_diff(lines_b[0].0) <= 3,
        "{lines_a:?} vs {lines_b:?}"
    );
    let on_a = fw_a.enter(|| dump_expectations(None).unwrap()).unwrap();
    let on_b = fw_b.enter(|| dump_expectations(None).unwrap()).unwrap();
    assert_eq!((on_a.len(), on_b.len()), (1, 1), "{on_a:?} {on_b:?}");
    let (xa, xb) = (on_a[0], on_b[0]);
    assert_eq!(
        (xa.tuple, xa.mask, xa.master, xa.helper, xa.class, xa.flags),
        (xb.tuple, xb.mask, xb.master, xb.helper, xb.class, xb.flags)
    );
    assert_eq!((xa.nat, xa.expectfn), (xb.nat, xb.expectfn));
    assert_eq!(xa.tuple.dport(), DATA_PORT);

    // Counted on both sides; fw-b saw the echo of its own install and sent nothing.
    let labels = |k: &str, v: &str| format!("{k}=\"{v}\"");
    let t = Duration::from_secs(5);
    wait_metric(
        fw_a,
        "expect_events_total",
        &labels("action", "sent_new"),
        1.0,
        t,
    );
    wait_metric(fw_a, "sync_sent_expect_records_total", "", 1.0, t);
    wait_metric(fw_b, "sync_received_expect_records_total", "", 1.0, t);
    wait_metric(
        fw_b,
        "expect_installs_total",
        &labels("result", "created"),
        1.0,
        t,
    );
    wait_metric(
        fw_b,
        "expect_events_total",
        &labels("action", "own_install"),
        1.0,
        t,
    );
    let mb = metrics(fw_b);
    assert_eq!(
        metric(&mb, "expect_events_total", &labels("action", "sent_new")),
        0.0,
        "{mb}"
    );
    assert_eq!(
        metric(
            &mb,
            "expect_install_failures_total",
            &labels("reason", "ENOENT")
        ),
        0.0,
        "{mb}"
    );

    // The data connection consumes it on fw-a: gone on fw-b too.
    ftp.data_and_close(&lab);
    assert!(expect_lines(fw_a).is_empty());
    wait_for(
        Duration::from_secs(10),
        "the expectation gone from fw-b",
        || expect_lines(fw_b).is_empty().then_some(()),
    )
    .unwrap();
    wait_metric(
        fw_a,
        "expect_events_total",
        &labels("action", "sent_delete"),
        1.0,
        t,
    );
    wait_metric(
        fw_b,
        "expect_installs_total",
        &labels("result", "deleted"),
        1.0,
        t,
    );
    let ma = metrics(fw_a);
    assert_eq!(
        metric(&ma, "sync_rejected_total", &labels("reason", "malformed")),
        0.0,
        "{ma}"
    );
    // Nothing came back from fw-b.
    assert_eq!(
        metric(&ma, "sync_received_expect_records_total", ""),
        0.0,
        "{ma}"
    );

    let log_b = b.stop();
    assert!(!log_b.contains("ERROR"), "{log_b}");
    let log_a = a.stop();
    assert!(!log_a.contains("ERROR"), "{log_a}");
}

#[test]
fn agents_without_expect_sync_do_not() {
    require_root!();
    let lab = ftp_lab("exn");
    let (fw_a, fw_b) = (&lab.fw_a.ns, &lab.fw_b.ns);
    // fw-b could install them; fw-a does not send them.
    let (a, b) = agents(&lab, false, true);
    let ftp = ftp_pasv(&lab);
    wait_for(Duration::from_secs(5), "the expectation on fw-a", || {
        (!expect_lines(fw_a).is_empty()).then_some(())
    })
    .unwrap();
    // The master replicates...
    wait_for(Duration::from_secs(10), "the FTP master on fw-b", || {
        let out = fw_b
            .exec("conntrack", ["-L", "-p", "tcp", "--dport", "21"])
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("dport=21")
            .then_some(())
    })
    .unwrap();
    // ...the expectation does not (give it the time the positive test needs).
    thread::sleep(Duration::from_secs(2));
    assert!(expect_lines(fw_b).is_empty(), "{:?}", expect_lines(fw_b));
    let mb = metrics(fw_b);
    assert_eq!(
        metric(&mb, "sync_received_expect_records_total", ""),
        0.0,
        "{mb}"
    );
    ftp.data_and_close(&lab);
    drop(b);
    drop(a);
}

#[test]
fn late_joiner_receives_expectations_in_the_bulk_resync() {
    require_root!();
    let lab = ftp_lab("exl");
    let (fw_a, fw_b) = (&lab.fw_a.ns, &lab.fw_b.ns);
    let extra = "      expect_sync = true\n";
    let a = Agent::start(fw_a, "fw-a", &node_config("primary", SYNC_B, SECRET, extra));
    let ftp = ftp_pasv(&lab);
    let lines_a = wait_for(Duration::from_secs(5), "the expectation on fw-a", || {
        let l = expect_lines(fw_a);
        (!l.is_empty()).then_some(l)
    })
    .unwrap();
    // fw-b starts after the expectation exists: only the bulk resync can bring it.
    let b = Agent::start(fw_b, "fw-b", &node_config("replica", SYNC_A, SECRET, extra));
    wait_metric(fw_b, "in_sync", "", 1.0, Duration::from_secs(15));
    let lines_b = wait_for(Duration::from_secs(10), "the expectation on fw-b", || {
        let l = expect_lines(fw_b);
        (!l.is_empty()).then_some(l)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nfw-a metrics:\n{}\nfw-a log:\n{}",
            metrics(fw_a),
            a.log_text()
        )
    });
    assert_eq!(lines_a[0].1, lines_b[0].1, "{lines_a:?} vs {lines_b:?}");
    wait_metric(
        fw_a,
        "expect_resync_sent_total",
        "",
        1.0,
        Duration::from_secs(5),
    );
    // Its end follows like a live one's.
    ftp.data_and_close(&lab);
    wait_for(
        Duration::from_secs(10),
        "the expectation gone from fw-b",
        || expect_lines(fw_b).is_empty().then_some(()),
    )
    .unwrap();
    drop(b);
    drop(a);
}
