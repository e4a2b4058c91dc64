//! Failover in the lab topology: fw-a is primary and carries a TCP transfer from the
//! client to the server through the gateway VIPs (strict stateful policy, SNAT to the
//! WAN VIP, `nf_conntrack_tcp_loose=0`). fw-a's agent is killed and its links go down;
//! fw-b must take the VIPs and the transfer must carry on without a reset. Without
//! state sync (the control case) the same transfer must break.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use support::Agent;
use testkit::lab::{CLIENT_IP, Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B};

const SECRET: &str = "lab-secret-please-change";

fn ha_config(
    mode: &str,
    peer: &str,
    priority: u8,
    sync: bool,
    socket: &str,
    extra_ha: &str,
) -> String {
    format!(
        r#"replication {{
  mode       = "{mode}"
  peer_addr  = "{peer}"
  secret_key = "{SECRET}"
  ha {{
    enabled            = true
    priority           = {priority}
    heartbeat_interval = 0.1
    failure_threshold  = 3
    failback_mode      = "manual"
    garp_count         = 3
    garp_interval      = 0.1
{extra_ha}
    virtual_ip {{
      address   = "192.168.10.1/24"
      interface = "lan0"
      label     = "lan0:gw"
    }}
    virtual_ip {{
      address   = "203.0.113.1/24"
      interface = "wan0"
    }}
    virtual_ip {{
      address   = "fd00:10::1/64"
      interface = "lan0"
    }}
    virtual_ip {{
      address   = "fd00:20::1/64"
      interface = "wan0"
    }}
    conntrack_sync {{
      enabled         = {sync}
      interface       = "sync0"
      multicast_group = "225.0.0.50"
    }}
  }}
}}
agent {{
  metrics_addr   = "127.0.0.1:9724"
  control_socket = "{socket}"
  log_level      = "debug"
}}
"#
    )
}

pub struct Pair {
    pub lab: Lab,
    pub a: Agent,
    pub b: Agent,
    pub sock_a: String,
    pub sock_b: String,
}

/// The lab without static VIPs, both agents started, fw-a primary with the VIPs.
pub fn ha_pair(prefix: &str, sync: bool, extra_ha: &str) -> Pair {
    let lab = Lab::new(&LabOptions {
        prefix: prefix.into(),
        vips_on_a: false,
        ..Default::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(testkit::unique_name("hsctl"));
    let sock_a = dir.join("a.sock").display().to_string();
    let sock_b = dir.join("b.sock").display().to_string();
    let a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &ha_config("primary", SYNC_B, 50, sync, &sock_a, extra_ha),
    );
    let b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &ha_config("replica", SYNC_A, 100, sync, &sock_b, extra_ha),
    );
    wait_role(&sock_a, "primary", Duration::from_secs(10));
    wait_role(&sock_b, "backup", Duration::from_secs(10));
    Pair {
        lab,
        a,
        b,
        sock_a,
        sock_b,
    }
}

pub fn status(sock: &str) -> serde_json::Value {
    use hasync::control::{Request, Response, client};
    match client::call(std::path::Path::new(sock), &Request::Status) {
        Ok(Response::Status(v)) => *v,
        other => panic!("status from {sock}: {other:?}"),
    }
}

pub fn role(sock: &str) -> String {
    status(sock)
        .pointer("/ha/role")
        .and_then(|r| r.as_str())
        .unwrap_or("?")
        .to_string()
}

pub fn wait_role(sock: &str, want: &str, timeout: Duration) {
    testkit::wait_for(timeout, &format!("{sock} to be {want}"), || {
        (role(sock) == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; status: {:#}", status(sock)));
}

/// A one-way TCP stream client -> server through fw: 1 KiB every 5 ms. Records the
/// time of every read on the server.
pub struct Transfer {
    pub reads: Arc<Mutex<Vec<(Instant, usize)>>>,
    pub client_error: Arc<Mutex<Option<String>>>,
    pub server_error: Arc<Mutex<Option<String>>>,
    pub sent: Arc<Mutex<usize>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Transfer {
    pub fn start(lab: &Lab, duration: Duration) -> Transfer {
        let listener = lab
            .server
            .enter(|| TcpListener::bind(format!("{SERVER_IP}:9000")).unwrap())
            .unwrap();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let server_error = Arc::new(Mutex::new(None));
        let client_error = Arc::new(Mutex::new(None));
        let sent = Arc::new(Mutex::new(0usize));
        let (r, se) = (reads.clone(), server_error.clone());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(duration + Duration::from_secs(30)))
                .unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => r.lock().unwrap().push((Instant::now(), n)),
                    Err(e) => {
                        *se.lock().unwrap() = Some(e.to_string());
                        return;
                    }
                }
            }
        });
        let client_path = lab.client.path();
        let (ce, st) = (client_error.clone(), sent.clone());
        let client = std::thread::spawn(move || {
            testkit::enter_netns(&client_path).unwrap();
            let dst: SocketAddr = format!("{SERVER_IP}:9000").parse().unwrap();
            let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let chunk = [7u8; 1024];
            let end = Instant::now() + duration;
            while Instant::now() < end {
                if let Err(e) = c.write_all(&chunk) {
                    *ce.lock().unwrap() = Some(e.to_string());
                    return;
                }
                *st.lock().unwrap() += chunk.len();
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.shutdown(std::net::Shutdown::Write);
        });
        Transfer {
            reads,
            client_error,
            server_error,
            sent,
            threads: vec![server, client],
        }
    }

    pub fn received(&self) -> usize {
        self.reads.lock().unwrap().iter().map(|(_, n)| n).sum()
    }

    /// The longest pause in the stream between `after` and `until` (including the
    /// silence before the first and after the last read in that window).
    pub fn max_gap(&self, after: Instant, until: Instant) -> Duration {
        let reads = self.reads.lock().unwrap();
        let mut points = vec![after];
        points.extend(
            reads
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| *t >= after && *t <= until),
        );
        points.push(until);
        points
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default()
    }

    /// When the last byte arrived.
    pub fn last_read(&self) -> Option<Instant> {
        self.reads.lock().unwrap().last().map(|(t, _)| *t)
    }

    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Kills fw-a the hard way: SIGKILL to the agent, every link down.
fn kill_a(pair: &mut Pair) -> Instant {
    let killed = Instant::now();
    pair.a.kill();
    for link in ["lan0", "wan0", "sync0"] {
        pair.lab.fw_a.ns.ip(&["link", "set", link, "down"]).unwrap();
    }
    killed
}

#[test]
fn established_transfer_survives_failover() {
    let mut pair = ha_pair("fo", true, "");
    let transfer = Transfer::start(&pair.lab, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(transfer.received() > 0, "transfer running through fw-a");
    let killed = kill_a(&mut pair);
    wait_role(&pair.sock_b, "primary", Duration::from_secs(5));
    let took_over = killed.elapsed();
    transfer_threads_done(&transfer, Duration::from_secs(20));
    let gap = transfer.max_gap(killed, transfer.last_read().unwrap_or(killed));
    let (sent, received) = (*transfer.sent.lock().unwrap(), transfer.received());
    let client_error = transfer.client_error.lock().unwrap().clone();
    let server_error = transfer.server_error.lock().unwrap().clone();
    let st = status(&pair.sock_b);
    eprintln!(
        "failover: fw-b primary {took_over:?} after the kill; longest pause in the transfer {gap:?}; \
         last takeover {:?} ms; sent {sent}, received {received}",
        st.pointer("/ha/last_takeover_ms")
    );
    assert_eq!(client_error, None, "client saw no error");
    assert_eq!(server_error, None, "server saw no reset");
    assert_eq!(received, sent, "every byte arrived");
    assert!(
        gap < Duration::from_secs(3),
        "transfer resumed quickly: {gap:?}"
    );
    // The takeover is visible in fw-b's status: the steps in order.
    let steps: Vec<String> = st
        .pointer("/ha/timeline/steps")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("step")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        steps.first().map(String::as_str),
        Some("commit"),
        "{steps:?}"
    );
    assert!(
        steps.iter().position(|s| s == "add-vip") < steps.iter().position(|s| s == "announce"),
        "{steps:?}"
    );
    assert_eq!(
        st.pointer("/ha/reason").and_then(|r| r.as_str()),
        Some("peer_dead")
    );
    transfer.join();
}

#[test]
fn without_state_sync_the_transfer_breaks() {
    let mut pair = ha_pair("nofo", false, "");
    let transfer = Transfer::start(&pair.lab, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(transfer.received() > 0, "transfer running through fw-a");
    let killed = kill_a(&mut pair);
    wait_role(&pair.sock_b, "primary", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(5));
    // fw-b holds the VIPs but not the connection: its strict policy drops the stream.
    let gap = transfer.max_gap(killed, Instant::now());
    assert!(
        gap >= Duration::from_secs(4),
        "the stream should have stalled, longest pause {gap:?}"
    );
    assert!(
        transfer.received() < *transfer.sent.lock().unwrap(),
        "bytes were lost"
    );
    drop(pair);
    transfer.join();
}

/// Waits until the client finished writing (or failed) and the server drained.
fn transfer_threads_done(t: &Transfer, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let done = t.client_error.lock().unwrap().is_some()
            || t.server_error.lock().unwrap().is_some()
            || (t.received() == *t.sent.lock().unwrap()
                && t.threads.iter().all(|h| h.is_finished()));
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
