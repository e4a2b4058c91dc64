//! HA test helpers: a primary/backup pair in the lab, status over the control socket,
//! a long-running TCP transfer through the VIPs.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use testkit::lab::{Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B};

use super::Agent;

pub const SECRET: &str = "lab-secret-please-change";

/// How to run the pair.
#[derive(Clone)]
pub struct HaSpec {
    pub prefix: &'static str,
    pub sync: bool,
    /// fw-a, fw-b (lower wins).
    pub priorities: [u8; 2],
    pub failback: &'static str,
    pub failback_delay: f64,
    /// Where each node sends heartbeats: fw-b's and fw-a's address (sync link by default).
    pub peers: [&'static str; 2],
    /// Extra lines inside `ha { }` for fw-a and fw-b.
    pub extra_ha: [String; 2],
    pub lab: LabOptions,
    /// Wait for fw-a primary and fw-b backup before returning.
    pub settle: bool,
}

impl HaSpec {
    pub fn new(prefix: &'static str) -> HaSpec {
        HaSpec {
            prefix,
            sync: true,
            priorities: [50, 100],
            failback: "manual",
            failback_delay: 60.0,
            peers: [SYNC_B, SYNC_A],
            extra_ha: [String::new(), String::new()],
            lab: LabOptions {
                prefix: prefix.into(),
                vips_on_a: false,
                ..Default::default()
            },
            settle: true,
        }
    }

    /// The configuration of node `i` (0 = fw-a).
    pub fn config(&self, i: usize, socket: &str) -> String {
        let mode = if i == 0 { "primary" } else { "replica" };
        let (peer, priority, sync, extra) = (
            self.peers[i],
            self.priorities[i],
            self.sync,
            &self.extra_ha[i],
        );
        let (failback, delay) = (self.failback, self.failback_delay);
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
    failback_mode      = "{failback}"
    failback_delay     = {delay}
    garp_count         = 3
    garp_interval      = 0.1
{extra}
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

    pub fn start(self) -> Pair {
        let lab = Lab::new(&self.lab).unwrap();
        let dir = std::env::temp_dir().join(testkit::unique_name("hsctl"));
        let sock_a = dir.join("a.sock").display().to_string();
        let sock_b = dir.join("b.sock").display().to_string();
        let a = Agent::start(&lab.fw_a.ns, "fw-a", &self.config(0, &sock_a));
        let b = Agent::start(&lab.fw_b.ns, "fw-b", &self.config(1, &sock_b));
        if self.settle {
            wait_role(&sock_a, "primary", Duration::from_secs(10));
            wait_role(&sock_b, "backup", Duration::from_secs(10));
        }
        Pair {
            lab,
            a: Some(a),
            b: Some(b),
            sock_a,
            sock_b,
            spec: self,
        }
    }
}

pub struct Pair {
    pub lab: Lab,
    pub a: Option<Agent>,
    pub b: Option<Agent>,
    pub sock_a: String,
    pub sock_b: String,
    pub spec: HaSpec,
}

impl Pair {
    /// Starts node `i` again (after a kill or stop), with its configuration.
    pub fn restart(&mut self, i: usize) {
        let (ns, name, sock) = if i == 0 {
            (&self.lab.fw_a.ns, "fw-a", self.sock_a.clone())
        } else {
            (&self.lab.fw_b.ns, "fw-b", self.sock_b.clone())
        };
        let agent = Agent::start(ns, name, &self.spec.config(i, &sock));
        if i == 0 {
            self.a = Some(agent)
        } else {
            self.b = Some(agent)
        }
    }

    pub fn agent(&mut self, i: usize) -> &mut Agent {
        let a = if i == 0 {
            self.a.as_mut()
        } else {
            self.b.as_mut()
        };
        a.expect("agent running")
    }

    pub fn sock(&self, i: usize) -> &str {
        if i == 0 { &self.sock_a } else { &self.sock_b }
    }
}

/// The lab without static VIPs, both agents started, fw-a primary with the VIPs.
pub fn ha_pair(prefix: &'static str, sync: bool) -> Pair {
    HaSpec {
        sync,
        ..HaSpec::new(prefix)
    }
    .start()
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

    /// Waits until the client finished writing (or failed) and the server drained.
    pub fn wait_done(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let done = self.client_error.lock().unwrap().is_some()
                || self.server_error.lock().unwrap().is_some()
                || (self.received() == *self.sent.lock().unwrap()
                    && self.threads.iter().all(|h| h.is_finished()));
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
