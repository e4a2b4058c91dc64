//! The consistency check: each node's digest of the entries it owns lets the peer find
//! and repair what its copy lacks or keeps too long, whatever caused the difference
//! (entries removed by hand, deletions the owner's agent never saw while it was down,
//! events the capture ring buffer dropped).

mod support;

use std::{net::SocketAddr, time::Duration};

use hasync::{conntrack::Change, kernel::ctnetlink};
use support::{Agent, forwarded, node_config, udp_flows, wait_metric, wait_tables_equal};
use testkit::lab::{CLIENT_IP, Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B};

const SECRET: &str = "lab-secret-please-change";

fn lab(prefix: &str) -> Lab {
    let lab = Lab::new(&LabOptions {
        prefix: prefix.into(),
        ..Default::default()
    })
    .unwrap();
    // The server drops the flows silently (no ICMP errors that would end them).
    lab.server
        .nft("table inet srv {\n chain in {\n type filter hook input priority 0\n udp dport 10000-20000 drop\n }\n}\n")
        .unwrap();
    lab
}

fn start_a(lab: &Lab, extra: &str) -> Agent {
    Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, SECRET, extra),
    )
}

fn start_b(lab: &Lab, extra: &str) -> Agent {
    Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, SECRET, extra),
    )
}

/// Sync without HA: each node owns what flows through it and roles never move. With HA,
/// a restarted owner can find its peer elected primary (owning every entry) before it
/// rejoins, which is a different scenario.
fn without_ha(config: String) -> String {
    let ha_on = "  ha {\n    enabled = true\n";
    assert!(config.contains(ha_on), "{config}");
    config.replace(ha_on, "  ha {\n    enabled = false\n")
}

fn flows(lab: &Lab, ports: std::ops::Range<u16>) {
    let src: SocketAddr = format!("{CLIENT_IP}:40000").parse().unwrap();
    udp_flows(&lab.client, src, SERVER_IP.parse().unwrap(), ports);
}

/// Deletes the forwarded entries to `ports` from `fw`'s kernel table, as an operator's
/// `conntrack -D` would.
fn delete_on(fw: &testkit::lab::Firewall, ports: std::ops::Range<u16>) -> usize {
    fw.ns
        .enter(|| {
            let gone: Vec<Change> = ctnetlink::dump(None)
                .unwrap()
                .into_iter()
                .filter(|e| ports.contains(&e.orig.dport()) && e.orig.sport() == 40000)
                .map(|e| Change::Delete(e.key()))
                .collect();
            let report = ctnetlink::Installer::new().unwrap().install(&gone);
            assert_eq!(report.deleted as usize, gone.len(), "{report:?}");
            gone.len()
        })
        .unwrap()
}

/// Entries removed from the replica's table (not deleted at the owner) come back with
/// the next periodic digest.
#[test]
fn periodic_digest_restores_entries_missing_on_the_peer() {
    let lab = lab("cmis");
    let check = "      consistency_check_s = 2";
    let a = start_a(&lab, check);
    let b = start_b(&lab, check);
    flows(&lab, 10000..10400);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 400, Duration::from_secs(20));
    // 50 deleted on B (a digest every 2 s may already be repairing them, so B's count
    // is not checked here).
    assert_eq!(delete_on(&lab.fw_b, 10000..10050), 50);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 400, Duration::from_secs(20));
    // Metrics are published periodically: wait for the repair to show.
    wait_metric(
        &lab.fw_b.ns,
        "consistency_checks_total",
        "outcome=\"repaired\"",
        1.0,
        Duration::from_secs(5),
    );
    wait_metric(
        &lab.fw_a.ns,
        "consistency_repairs_served_total",
        "",
        1.0,
        Duration::from_secs(5),
    );
    // Only the differing buckets travel, not the table: far fewer than 400 re-sent.
    let log = a.log_text();
    assert!(log.contains("consistency: repair sent"), "{log}");
    drop(b);
}

/// Connections that ended while the owner's agent was down (an upgrade, a crash) were
/// never reported: the restarted owner's digest makes the peer delete them.
#[test]
fn deletions_missed_while_the_owner_was_down_are_repaired() {
    let lab = lab("cstl");
    let a_config = without_ha(node_config(
        "primary",
        SYNC_B,
        SECRET,
        "      consistency_check_s = 2",
    ));
    let mut a = Agent::start(&lab.fw_a.ns, "fw-a", &a_config);
    let b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &without_ha(node_config(
            "replica",
            SYNC_A,
            SECRET,
            "      consistency_check_s = 0",
        )),
    );
    flows(&lab, 10000..10300);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 300, Duration::from_secs(20));
    a.kill();
    assert_eq!(delete_on(&lab.fw_a, 10000..10100), 100);
    assert_eq!(forwarded(&lab.fw_b).len(), 300, "B still holds them");
    let _a = Agent::start(&lab.fw_a.ns, "fw-a", &a_config);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 200, Duration::from_secs(20));
    assert_eq!(forwarded(&lab.fw_b).len(), 200);
    let stale = wait_metric(
        &lab.fw_b.ns,
        "consistency_stale_deleted_total",
        "",
        100.0,
        Duration::from_secs(5),
    );
    assert_eq!(stale, 100.0);
    drop(b);
}

/// Events the capture ring buffer dropped (the agent was frozen) leave no sequence
/// gap to NACK; the drop counter triggers a digest at once, with no periodic check.
#[test]
fn ring_buffer_losses_trigger_a_repair() {
    let lab = lab("cring");
    let tiny = "      consistency_check_s = 0\n      ring_buffer_size = 4096";
    let a = start_a(&lab, tiny);
    let _b = start_b(&lab, "      consistency_check_s = 0");
    flows(&lab, 10000..10010);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 10, Duration::from_secs(20));
    a.signal(libc::SIGSTOP);
    flows(&lab, 10010..10500);
    a.signal(libc::SIGCONT);
    let dropped = wait_metric(
        &lab.fw_a.ns,
        "ringbuf_drops_total",
        "",
        1.0,
        Duration::from_secs(5),
    );
    assert!(dropped > 0.0);
    wait_tables_equal(&lab.fw_a, &lab.fw_b, 500, Duration::from_secs(20));
    wait_metric(
        &lab.fw_a.ns,
        "consistency_digests_sent_total",
        "",
        1.0,
        Duration::from_secs(5),
    );
    let log = a.log_text();
    assert!(log.contains("events were lost before the wire"), "{log}");
}
