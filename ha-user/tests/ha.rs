//! HA scenarios in the lab: failback (auto after the delay, manual by the operator),
//! split brain, demotion when the sync link fails, a rejoining node that must finish
//! its bulk sync first, and bad configurations refused with clear messages.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::{
    forwarded,
    ha::{HaSpec, role, status, wait_role},
    metric, metrics, udp_flows, wait_metric,
};
use testkit::lab::{CLIENT_IP, SERVER_IP};

/// Runs `hasync <cmd> --socket <sock>` and returns its stdout.
fn cli(cmd: &str, sock: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hasync"))
        .args([cmd, "--socket", sock])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hasync {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_vip(fw: &testkit::lab::Firewall) -> bool {
    fw.ns
        .sh("ip -o addr show dev lan0")
        .unwrap_or_default()
        .contains("192.168.10.1/24")
}

#[test]
fn auto_failback_after_the_delay() {
    let mut pair = HaSpec {
        failback: "auto",
        failback_delay: 2.0,
        ..HaSpec::new("fbk")
    }
    .start();
    // A clean stop hands over at once.
    let log = pair.a.take().unwrap().stop();
    assert!(log.contains("releasing the virtual addresses"), "{log}");
    wait_role(&pair.sock_b, "primary", Duration::from_secs(3));
    assert!(!has_vip(&pair.lab.fw_a) && has_vip(&pair.lab.fw_b));
    // A comes back: preferred, but only after failback_delay of healthy contact.
    let back = Instant::now();
    pair.restart(0);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(role(&pair.sock_a), "backup", "no failback before the delay");
    assert_eq!(role(&pair.sock_b), "primary");
    wait_role(&pair.sock_a, "primary", Duration::from_secs(6));
    let after = back.elapsed();
    assert!(after >= Duration::from_secs(2), "failback after {after:?}");
    wait_role(&pair.sock_b, "backup", Duration::from_secs(2));
    assert_eq!(
        status(&pair.sock_a)
            .pointer("/ha/reason")
            .and_then(|r| r.as_str()),
        Some("failback")
    );
    assert!(
        has_vip(&pair.lab.fw_a) && !has_vip(&pair.lab.fw_b),
        "VIPs moved back"
    );
}

#[test]
fn manual_failback_waits_for_the_operator() {
    let mut pair = HaSpec::new("man").start();
    drop(pair.a.take().unwrap().stop());
    wait_role(&pair.sock_b, "primary", Duration::from_secs(3));
    pair.restart(0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        role(&pair.sock_a),
        "backup",
        "manual mode never fails back by itself"
    );
    assert_eq!(role(&pair.sock_b), "primary");
    // The operator moves the role back.
    let said = cli("promote", &pair.sock_a);
    assert!(said.contains("promotion requested"), "{said}");
    wait_role(&pair.sock_a, "primary", Duration::from_secs(3));
    wait_role(&pair.sock_b, "backup", Duration::from_secs(3));
    // Maintenance: A gives the role up and keeps it given up.
    cli("demote", &pair.sock_a);
    wait_role(&pair.sock_b, "primary", Duration::from_secs(3));
    assert_eq!(role(&pair.sock_a), "backup");
    assert_eq!(
        status(&pair.sock_a)
            .pointer("/ha/maintenance")
            .and_then(|m| m.as_bool()),
        Some(true)
    );
    let shown = cli("status", &pair.sock_a);
    assert!(shown.contains("MAINTENANCE"), "{shown}");
    cli("resume", &pair.sock_a);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        role(&pair.sock_a),
        "backup",
        "manual mode: resume does not move the role"
    );
}

#[test]
fn split_brain_is_detected_resolved_and_counted() {
    let pair = HaSpec::new("spl").start();
    let block = "table inet hb {\n chain in {\n type filter hook input priority -10\n udp dport 9002 drop\n }\n}\n";
    pair.lab.fw_a.ns.nft(block).unwrap();
    pair.lab.fw_b.ns.nft(block).unwrap();
    // Each side loses the other: B takes over while A stays primary.
    wait_role(&pair.sock_b, "primary", Duration::from_secs(3));
    assert_eq!(role(&pair.sock_a), "primary", "both primary: split brain");
    for fw in pair.lab.firewalls() {
        fw.ns
            .exec("nft", ["delete", "table", "inet", "hb"])
            .unwrap();
    }
    // Contact returns: the better node (A, priority 50) keeps the role.
    wait_role(&pair.sock_b, "backup", Duration::from_secs(3));
    assert_eq!(role(&pair.sock_a), "primary");
    let counted = |ns| metric(&metrics(ns), "ha_split_brains_total", "");
    std::thread::sleep(Duration::from_millis(300));
    let total = counted(&pair.lab.fw_a.ns) + counted(&pair.lab.fw_b.ns);
    assert!(total >= 1.0, "split brain counted ({total})");
    let logs = format!(
        "{}{}",
        pair.a.as_ref().unwrap().log_text(),
        pair.b.as_ref().unwrap().log_text()
    );
    assert!(logs.contains("split brain"), "logged loudly");
    assert!(has_vip(&pair.lab.fw_a) && !has_vip(&pair.lab.fw_b));
}

#[test]
fn sync_link_down_demotes_the_primary() {
    // Heartbeats over the LAN, sync over a bridged sync link that can fail on one side.
    let mut spec = HaSpec::new("dem");
    spec.peers = ["192.168.10.3", "192.168.10.2"];
    spec.lab.sync_via_bridge = true;
    let pair = spec.start();
    // B must hold A's table first: an unsynced backup rightly stays backup (on a
    // loaded machine its first bulk sync can outlast the election).
    testkit::wait_for(Duration::from_secs(10), "B synced", || {
        status(&pair.sock_b)
            .pointer("/ha/synced")
            .and_then(|s| s.as_bool())
            .filter(|s| *s)
    })
    .unwrap();
    pair.lab
        .fw_a
        .ns
        .ip(&["link", "set", "sync0", "down"])
        .unwrap();
    wait_role(&pair.sock_b, "primary", Duration::from_secs(3));
    wait_role(&pair.sock_a, "backup", Duration::from_secs(3));
    let st = status(&pair.sock_a);
    assert_eq!(
        st.pointer("/ha/reason").and_then(|r| r.as_str()),
        Some("peer_healthier"),
        "{st:#}"
    );
    let demoted = st
        .pointer("/ha/demoted_for")
        .map(|d| d.to_string())
        .unwrap_or_default();
    assert!(demoted.contains("sync"), "{demoted}");
}

#[test]
fn rejoining_node_takes_over_only_after_its_bulk_sync() {
    let mut spec = HaSpec {
        failback: "auto",
        failback_delay: 0.0,
        ..HaSpec::new("rej")
    };
    spec.extra_ha[0] = "    down_interfaces_before_sync = [\"lan0\", \"wan0\"]".into();
    let mut pair = spec.start();
    drop(pair.a.take().unwrap().stop());
    wait_role(&pair.sock_b, "primary", Duration::from_secs(3));
    // Traffic through B while A is away.
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    for sport in 40000..40006u16 {
        udp_flows(
            &pair.lab.client,
            SocketAddr::new(client, sport),
            SERVER_IP.parse().unwrap(),
            20000..25000,
        );
    }
    let on_b = forwarded(&pair.lab.fw_b).len();
    assert!(on_b >= 30_000, "{on_b}");
    pair.restart(0);
    // A holds its data ports down until it has B's table, and does not take over before.
    let link_down = pair.lab.fw_a.ns.sh("ip -o link show lan0").unwrap();
    let st = status(&pair.sock_a);
    assert!(
        link_down.contains("state DOWN")
            || st.pointer("/ha/synced").and_then(|s| s.as_bool()) == Some(true),
        "lan0 held down while unsynced: {link_down}"
    );
    testkit::wait_for(Duration::from_secs(20), "A primary", || {
        (role(&pair.sock_a) == "primary").then_some(())
    })
    .unwrap();
    let on_a = forwarded(&pair.lab.fw_a).len();
    // The counter is published between batches; the role can be ahead of it.
    wait_metric(
        &pair.lab.fw_a.ns,
        "full_syncs_total",
        "",
        1.0,
        Duration::from_secs(10),
    );
    assert!(
        on_a >= on_b,
        "A had B's table when it took over: {on_a} of {on_b}"
    );
    assert!(
        pair.lab
            .fw_a
            .ns
            .sh("ip -o link show lan0")
            .unwrap()
            .contains("state UP"),
        "interfaces released"
    );
    wait_role(&pair.sock_b, "backup", Duration::from_secs(3));
    // The order, from A's log: held down -> B's table installed -> up -> PRIMARY.
    let log = pair.a.as_ref().unwrap().log_text();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in A's log:\n{log}"))
    };
    let held = at("held down until the connection table is synced");
    let synced = at("resync: the peer's table is installed");
    let up = at("table synced: interface up");
    let primary = at("becoming PRIMARY");
    assert!(
        held < synced && synced < up && up < primary,
        "order: held {held}, synced {synced}, up {up}, primary {primary}"
    );
}

#[test]
fn bad_ha_configuration_is_refused_clearly() {
    let dir = std::env::temp_dir().join(testkit::unique_name("hsbad"));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hasync"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = |ha: &str| {
        format!(
            "replication {{\n  mode = \"primary\"\n  peer_addr = \"10.250.0.2\"\n  secret_key = \"0123456789\"\n  ha {{\n    enabled = true\n{ha}\n  }}\n}}\n"
        )
    };
    let e = check(
        "cidr.hcl",
        &base(
            "    virtual_ip {\n      address = \"192.168.1.1\"\n      interface = \"eth1\"\n    }",
        ),
    );
    assert!(
        e.contains("cidr.hcl:8:17") && e.contains("is not a CIDR"),
        "{e}"
    );
    let e = check("prio.hcl", &base("    priority = 300"));
    assert!(
        e.contains("prio.hcl:7:16") && e.contains("between 0 and 255"),
        "{e}"
    );
    // An interface that does not exist is only known on the node: `run` refuses to start.
    let ns = testkit::NetNs::new("bad").unwrap();
    let path = dir.join("iface.hcl");
    std::fs::write(
        &path,
        base("    virtual_ip {\n      address = \"192.168.1.1/24\"\n      interface = \"eth9\"\n    }")
            + &format!("agent {{\n  control_socket = \"{}\"\n  metrics_addr = \"\"\n}}\n", dir.join("s.sock").display()),
    )
    .unwrap();
    let out = ns
        .command(env!("CARGO_BIN_EXE_hasync"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("virtual_ip 192.168.1.1/24: interface `eth9` does not exist on this node"),
        "{err}"
    );
}
