//! The TLS replication channel in the agent: a replica with `primary_addr` takes the
//! primary's table over mutual TLS instead of the UDP bulk resync, and a replica whose
//! certificate the primary refuses still converges through the UDP fallback.
//!
//! Needs root: namespaces, conntrack, the eBPF program.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use hasync::cli::cert::{self, IssueOptions};
use support::{Agent, metric, metrics, node_config, udp_flows, wait_metric, wait_tables_equal};
use testkit::lab::{CLIENT_IP, Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B};

const SECRET: &str = "lab-secret-please-change";
const CHANNEL: &str = "10.250.0.1:9000";

fn lab(prefix: &str) -> Lab {
    let lab = Lab::new(&LabOptions {
        prefix: prefix.into(),
        ..Default::default()
    })
    .unwrap();
    // Unreplied UDP entries live 30 s by default: longer here so none expires while
    // the tables are compared on a slow machine.
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

/// The cluster CA with both nodes' certificates, and a rogue CA with an impostor for
/// B's address; removed on drop.
struct Pki(PathBuf);

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(testkit::unique_name("hspki"));
        cert::init(&dir.join("ca"), "cluster CA", 30).unwrap();
        cert::init(&dir.join("rogue"), "rogue CA", 30).unwrap();
        for (ca, name, ip) in [
            ("ca", "node-a", SYNC_A),
            ("ca", "node-b", SYNC_B),
            ("rogue", "impostor", SYNC_B),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut o = IssueOptions::new(dir.join(ca), name, &[ip]);
            o.days = 10;
            cert::issue(&o).unwrap();
        }
        Pki(dir)
    }

    /// `tls_*` lines presenting `name` (issued by `issuer`), trusting the cluster CA.
    fn lines(&self, issuer: &str, name: &str) -> String {
        let d = self.0.join(issuer);
        format!(
            "  tls_cert   = \"{}\"\n  tls_key    = \"{}\"\n  tls_ca     = \"{}\"\n  tls_mutual = true\n",
            d.join(format!("{name}.pem")).display(),
            d.join(format!("{name}-key.pem")).display(),
            self.0.join("ca").join("ca.pem").display(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test node config plus channel settings in block `replication`.
fn config(mode: &str, peer: &str, channel: &str) -> String {
    let base = node_config(mode, peer, SECRET, "");
    let anchor = format!("  secret_key = \"{SECRET}\"\n");
    assert!(base.contains(&anchor));
    base.replacen(&anchor, &format!("{anchor}{channel}"), 1)
}

fn primary(pki: &Pki) -> String {
    let channel = format!(
        "  listen_addr = \"{CHANNEL}\"\n{}",
        pki.lines("ca", "node-a")
    );
    config("primary", SYNC_B, &channel)
}

fn replica(pki: &Pki, issuer: &str, name: &str) -> String {
    let channel = format!(
        "  primary_addr = \"{CHANNEL}\"\n{}",
        pki.lines(issuer, name)
    );
    config("replica", SYNC_A, &channel)
}

/// 4 x 5,000 forwarded UDP flows through A.
fn flows(lab: &Lab) {
    let client: IpAddr = CLIENT_IP.parse().unwrap();
    for sport in 40000..40004 {
        udp_flows(
            &lab.client,
            SocketAddr::new(client, sport),
            SERVER_IP.parse().unwrap(),
            10000..15000,
        );
    }
}

fn control_socket(agent: &Agent) -> String {
    let text = std::fs::read_to_string(&agent.config).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("control_socket = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap()
}

fn status(agent: &Agent, json: bool) -> String {
    let sock = control_socket(agent);
    let mut args = vec!["status", "--socket", sock.as_str()];
    if json {
        args.insert(1, "--json");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hasync"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A holds 20,000 forwarded entries when B starts: B's bulk resync comes over mutual
/// TLS (no UDP resync request), B ends with A's table, and both report it.
#[test]
fn replica_takes_the_table_over_tls() {
    let lab = lab("tlsa");
    let pki = Pki::new();
    let a = Agent::start(&lab.fw_a.ns, "fw-a", &primary(&pki));
    flows(&lab);
    testkit::wait_for(Duration::from_secs(30), "A holds the flows", || {
        (support::forwarded(&lab.fw_a).len() >= 20_000).then_some(())
    })
    .unwrap();

    let b = Agent::start(&lab.fw_b.ns, "fw-b", &replica(&pki, "ca", "node-b"));
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 20_000, Duration::from_secs(60));
    wait_metric(
        &lab.fw_b.ns,
        "channel_resyncs_installed_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    // Published by the ingress thread, independently of the channel's counters.
    wait_metric(
        &lab.fw_b.ns,
        "full_syncs_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    let mb = metrics(&lab.fw_b.ns);
    assert!(
        metric(&mb, "channel_entries_received_total", "") >= 20_000.0,
        "{mb}"
    );
    assert_eq!(
        metric(&mb, "channel_resync_fallbacks_total", ""),
        0.0,
        "{mb}"
    );
    // A counts the resync once its RESYNC_DONE is written, which can be after B
    // has installed the table: wait for it rather than read it once.
    wait_metric(
        &lab.fw_a.ns,
        "channel_resyncs_served_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    let ma = metrics(&lab.fw_a.ns);
    assert!(metric(&ma, "channel_handshakes_total", "") >= 1.0, "{ma}");
    // A asked for B's table at its own start (it could have been a restart): B owns
    // nothing, and must not serve the entries it is installing from A as its own.
    assert_eq!(
        metric(&ma, "consistency_stale_deleted_total", ""),
        0.0,
        "the primary deleted its own entries as stale:\n{ma}"
    );

    // Not over UDP: B never asked, A never streamed its table on the sync link.
    let (log_a, log_b) = (a.log_text(), b.log_text());
    assert!(
        !log_b.contains("resync: asking the peer for its table"),
        "B sent a UDP resync request:\n{log_b}"
    );
    assert!(
        !log_a.contains("resync: table sent"),
        "A served a UDP resync:\n{log_a}"
    );

    let v: serde_json::Value = serde_json::from_str(&status(&b, true)).unwrap();
    assert_eq!(
        v.pointer("/channel/last_resync/via")
            .and_then(|x| x.as_str()),
        Some("tls"),
        "{v:#}"
    );
    assert!(
        v.pointer("/channel/last_resync/entries")
            .and_then(|x| x.as_u64())
            .is_some_and(|n| n >= 20_000),
        "{v:#}"
    );
    assert_eq!(
        v.pointer("/sync/in_sync").and_then(|x| x.as_bool()),
        Some(true)
    );
    let text = status(&b, false);
    assert!(
        text.contains(&format!("channel:  last resync over TLS from {CHANNEL}")),
        "{text}"
    );
    let text = status(&a, false);
    assert!(
        text.contains(&format!("channel:  listening on {CHANNEL} (tls, mutual)")),
        "{text}"
    );
}

/// B presents a certificate from another CA: A refuses it (counted, reason logged),
/// B says why and converges anyway through the UDP resync.
#[test]
fn refused_certificate_falls_back_to_udp() {
    let lab = lab("tlsb");
    let pki = Pki::new();
    let a = Agent::start(&lab.fw_a.ns, "fw-a", &primary(&pki));
    flows(&lab);
    testkit::wait_for(Duration::from_secs(30), "A holds the flows", || {
        (support::forwarded(&lab.fw_a).len() >= 20_000).then_some(())
    })
    .unwrap();

    let b = Agent::start(&lab.fw_b.ns, "fw-b", &replica(&pki, "rogue", "impostor"));
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 20_000, Duration::from_secs(60));
    wait_metric(
        &lab.fw_a.ns,
        "channel_refused_total",
        "reason=\"unknown_ca\"",
        1.0,
        Duration::from_secs(10),
    );
    let mb = wait_metric(
        &lab.fw_b.ns,
        "channel_resync_fallbacks_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    assert!(mb >= 1.0);
    // The ingress thread publishes its counters between batches: right after a bulk
    // resync they may lag the table by one publish.
    wait_metric(
        &lab.fw_b.ns,
        "full_syncs_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    let mb = metrics(&lab.fw_b.ns);
    assert_eq!(
        metric(&mb, "channel_resyncs_installed_total", ""),
        0.0,
        "{mb}"
    );
    let ma = metrics(&lab.fw_a.ns);
    assert_eq!(metric(&ma, "channel_resyncs_served_total", ""), 0.0, "{ma}");

    let log_a = a.log_text();
    assert!(
        log_a.contains("TLS handshake refused: certificate not signed by the configured CA"),
        "A does not name the reason:\n{log_a}"
    );
    let log_b = b.log_text();
    assert!(
        log_b
            .contains("resync over the TLS channel failed; falling back to the UDP resync request")
            && log_b.contains(CHANNEL),
        "B does not say why:\n{log_b}"
    );
    let v: serde_json::Value = serde_json::from_str(&status(&b, true)).unwrap();
    assert!(
        v.pointer("/channel/last_error/message")
            .and_then(|x| x.as_str())
            .is_some_and(|m| !m.is_empty()),
        "{v:#}"
    );
    assert!(
        v.pointer("/channel/last_resync")
            .is_some_and(|x| x.is_null())
    );
    let text = status(&b, false);
    assert!(text.contains("fallback(s) to UDP"), "{text}");
}
