//! The operator's commands against running agents: status (human and JSON), states,
//! peer-states, resync, flush; the control socket is root-only; a clear message when
//! no agent runs.

mod support;

use std::{net::SocketAddr, process::Command, time::Duration};

use support::{
    ha::{HaSpec, status},
    metric, metrics, udp_flows, wait_metric,
};
use testkit::lab::{CLIENT_IP, SERVER_IP};

fn hasync(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hasync"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_commands_on_a_running_pair() {
    let pair = HaSpec::new("ops").start();
    let (a, b) = (pair.sock_a.as_str(), pair.sock_b.as_str());
    let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    udp_flows(
        &pair.lab.client,
        SocketAddr::new(client, 40000),
        SERVER_IP.parse().unwrap(),
        20000..20300,
    );
    wait_metric(
        &pair.lab.fw_b.ns,
        "installs_total",
        "result=\"created\"",
        300.0,
        Duration::from_secs(10),
    );

    // status: human and JSON.
    let (ok, text, err) = hasync(&["status", "--socket", a]);
    assert!(ok, "{err}");
    assert!(text.contains("role:     PRIMARY"), "{text}");
    assert!(
        text.contains("timeline (newest last):") && text.contains("add-vip"),
        "{text}"
    );
    let (ok, json, _) = hasync(&["status", "--json", "--socket", b]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v.pointer("/ha/role").and_then(|r| r.as_str()),
        Some("backup"),
        "{v:#}"
    );
    assert_eq!(
        v.pointer("/ha/peer/role").and_then(|r| r.as_str()),
        Some("primary")
    );
    assert_eq!(
        v.pointer("/sync/in_sync").and_then(|r| r.as_bool()),
        Some(true)
    );
    assert!(
        v.pointer("/sync/received_records")
            .and_then(|r| r.as_u64())
            .unwrap_or(0)
            >= 300
    );

    // states on A: the flows, filtered by port; peer-states on B: the same flows.
    let (ok, text, err) = hasync(&["states", "--socket", a, "--proto", "udp", "--port", "20007"]);
    assert!(ok, "{err}");
    assert!(text.starts_with("1 of "), "{text}");
    assert!(text.contains("dport=20007"), "{text}");
    let (ok, json, _) = hasync(&["peer-states", "--json", "--socket", b, "--limit", "5"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["matching"].as_u64().unwrap() >= 300, "{v:#}");
    assert_eq!(v["entries"].as_array().unwrap().len(), 5);
    assert_eq!(v["truncated"], true);

    // resync on demand.
    let before = metric(&metrics(&pair.lab.fw_b.ns), "full_syncs_total", "");
    let (ok, text, _) = hasync(&["resync", "--socket", b]);
    assert!(ok && text.contains("resync requested"), "{text}");
    wait_metric(
        &pair.lab.fw_b.ns,
        "full_syncs_total",
        "",
        before + 1.0,
        Duration::from_secs(10),
    );

    // flush: B drops what it holds for A (and does not report it back as deletions).
    let (ok, text, err) = hasync(&["flush", "--socket", b]);
    assert!(ok, "{err}");
    assert!(
        text.starts_with("removed ") && !text.starts_with("removed 0 "),
        "{text}"
    );
    let (_, json, _) = hasync(&["peer-states", "--json", "--socket", b]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["matching"], 0, "{v:#}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric(
            &metrics(&pair.lab.fw_b.ns),
            "deletes_total",
            "action=\"sent\""
        ),
        0.0
    );
    assert!(status(a).pointer("/ha/role").is_some());
}

#[test]
fn control_socket_is_root_only() {
    let pair = HaSpec {
        sync: false,
        ..HaSpec::new("priv")
    }
    .start();
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            env!("CARGO_BIN_EXE_hasync"),
            "status",
            "--socket",
        ])
        .arg(&pair.sock_a)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("root-only"),
        "{err}"
    );
}

#[test]
fn a_clear_message_when_no_agent_runs() {
    let (ok, _, err) = hasync(&[
        "status",
        "--socket",
        "/run/hasync-test-nonexistent/hasync.sock",
    ]);
    assert!(!ok);
    assert!(err.contains("hasync is not running"), "{err}");
    let (ok, _, err) = hasync(&[
        "promote",
        "--socket",
        "/run/hasync-test-nonexistent/hasync.sock",
    ]);
    assert!(!ok && err.contains("hasync is not running"), "{err}");
}

/// Under systemd (`Type=notify`) the agent reports READY=1 once the peer's table is
/// in (here: no peer, so once it is primary); SIGHUP re-reads the configuration.
#[test]
fn systemd_readiness_and_sighup_reload() {
    use std::os::unix::net::UnixDatagram;
    let lab = testkit::lab::Lab::new(&testkit::lab::LabOptions {
        prefix: "sdn".into(),
        vips_on_a: false,
        ..Default::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(testkit::unique_name("hssd"));
    std::fs::create_dir_all(&dir).unwrap();
    let notify = UnixDatagram::bind(dir.join("notify")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let spec = HaSpec::new("sdn");
    let config = dir.join("a.hcl");
    std::fs::write(
        &config,
        spec.config(0, &dir.join("a.sock").display().to_string()),
    )
    .unwrap();
    let log = dir.join("a.log");
    let mut cmd = lab.fw_a.ns.command(env!("CARGO_BIN_EXE_hasync"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .stderr(std::fs::File::create(&log).unwrap());
    let agent = testkit::ProcessGuard::spawn(cmd, "fw-a").unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 512];
    while !got.contains("READY=1") {
        let n = notify
            .recv(&mut buf)
            .expect("a notification before the timeout");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    assert!(got.contains("STATUS=capture attached"), "{got}");
    assert!(
        got.contains("READY=1\nSTATUS=running; table in sync"),
        "{got}"
    );

    // SIGHUP: a broken file is refused (the agent keeps running), a valid change of
    // the log level applies.
    std::fs::write(&config, "replication {\n  mode = \"nonsense\"\n}\n").unwrap();
    agent.signal(libc::SIGHUP);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    testkit::wait_for(Duration::from_secs(5), "reload refused", || {
        read().contains("configuration not reloaded").then_some(())
    })
    .unwrap();
    std::fs::write(
        &config,
        spec.config(0, &dir.join("a.sock").display().to_string())
            .replace("\"debug\"", "\"info\""),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    testkit::wait_for(Duration::from_secs(5), "log level reloaded", || {
        read().contains("SIGHUP: log level changed").then_some(())
    })
    .unwrap();
}
