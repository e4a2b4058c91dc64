//! Shared pieces of the agent integration tests: start `hasync` in a namespace, read its
//! metrics, generate traffic, compare conntrack tables.
#![allow(dead_code)]

pub mod ha;

use std::{
    fs,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use testkit::{
    CtLine, NetNs, ProcessGuard, conntrack_list,
    lab::{Firewall, Lab, SYNC_A, SYNC_B},
    wait_for,
};

/// A running agent; killed on drop. Its log is kept in a file and printed on failure.
pub struct Agent {
    pub name: String,
    pub log: PathBuf,
    pub config: PathBuf,
    process: ProcessGuard,
}

/// The node config used by the tests (multicast on sync0, metrics on loopback).
pub fn node_config(mode: &str, peer: &str, secret: &str, extra_sync: &str) -> String {
    format!(
        r#"replication {{
  mode       = "{mode}"
  peer_addr  = "{peer}"
  secret_key = "{secret}"
  ha {{
    enabled = true
    conntrack_sync {{
      enabled         = true
      interface       = "sync0"
      multicast_group = "225.0.0.50"
      port            = 3780
{extra_sync}
    }}
  }}
}}
agent {{
  metrics_addr   = "127.0.0.1:9724"
  control_socket = "{socket}"
  log_level      = "debug"
}}
"#,
        // The control socket is a file: unique per agent, whatever its namespace.
        socket = std::env::temp_dir()
            .join(testkit::unique_name("hsctl"))
            .join("hasync.sock")
            .display()
    )
}

/// fw-a as primary and fw-b as replica with the default test config and these
/// secrets (multicast on sync0), both ready.
pub fn start_pair(lab: &Lab, secret_a: &str, secret_b: &str) -> (Agent, Agent) {
    let a = Agent::start(
        &lab.fw_a.ns,
        "fw-a",
        &node_config("primary", SYNC_B, secret_a, ""),
    );
    let b = Agent::start(
        &lab.fw_b.ns,
        "fw-b",
        &node_config("replica", SYNC_A, secret_b, ""),
    );
    (a, b)
}

impl Agent {
    /// Starts `hasync run` in `ns` and waits until it reports ready.
    pub fn start(ns: &NetNs, name: &str, config: &str) -> Agent {
        let dir = std::env::temp_dir().join(testkit::unique_name("hsagent"));
        fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join(format!("{name}.hcl"));
        fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_hasync"));
        cmd.args(["run", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        let process = ProcessGuard::spawn(cmd, name).unwrap();
        let mut agent = Agent {
            name: name.into(),
            log,
            config: config_path,
            process,
        };
        let ready = wait_for(Duration::from_secs(30), "agent ready", || {
            let text = fs::read_to_string(&agent.log).unwrap_or_default();
            if text.contains("hasync ready") {
                Some(true)
            } else if !agent.process.is_running() {
                Some(false)
            } else {
                None
            }
        });
        if !matches!(ready, Ok(true)) {
            panic!("{name} did not start:\n{}", agent.log_text());
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Sends `sig` (e.g. SIGSTOP / SIGCONT to freeze the agent).
    pub fn signal(&self, sig: i32) {
        self.process.signal(sig);
    }

    /// SIGKILL: the agent dies without cleaning anything up (a crash).
    pub fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
        let _ = self.process.wait_timeout(Duration::from_secs(5));
    }

    /// Log lines worth showing when a test fails.
    fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> String {
        self.process.signal(libc::SIGTERM);
        let status = self.process.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.name,
            self.log_text()
        );
        self.log_text()
    }
}

impl Drop for Agent {
    /// A failing test shows what each of its agents logged last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of {} ----\n{}",
                self.name,
                self.log_tail(40)
            );
        }
    }
}

/// The agent's Prometheus text (GET /metrics on 127.0.0.1:9724 inside `ns`).
pub fn metrics(ns: &NetNs) -> String {
    ns.enter(|| {
        let mut s = TcpStream::connect("127.0.0.1:9724").ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .unwrap()
    .unwrap_or_default()
}

/// The value of `hasync_<name>` (counters: pass the name with `_total`), with labels
/// written as in the exposition (`reason="auth_failed"`), or 0.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let want = if labels.is_empty() {
        format!("hasync_{name} ")
    } else {
        format!("hasync_{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the metric reaches at least `min`.
pub fn wait_metric(ns: &NetNs, name: &str, labels: &str, min: f64, timeout: Duration) -> f64 {
    wait_for(timeout, &format!("{name}{{{labels}}} >= {min}"), || {
        let v = metric(&metrics(ns), name, labels);
        (v >= min).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}; metrics:\n{}", metrics(ns)))
}

/// Entries of a firewall's table that belong to forwarded traffic (the node's own
/// loopback and sync-link flows are local to it).
pub fn forwarded(fw: &Firewall) -> Vec<CtLine> {
    conntrack_list(&fw.ns)
        .unwrap()
        .into_iter()
        .filter(|l| {
            !["127.0.0.1", "::1", "10.250.0.", "225.0.0.50"]
                .iter()
                .any(|a| l.line.contains(&format!("src={a}")))
        })
        .collect()
}

/// The agent's metrics about replication, for failure messages.
fn sync_metrics(ns: &NetNs) -> String {
    metrics(ns)
        .lines()
        .filter(|l| {
            l.starts_with("hasync_")
                && ["sync", "resync", "consistency", "install", "event", "ring"]
                    .iter()
                    .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `b`'s forwarded entries equal `a`'s (and there are `min` of them), or
/// panics with the difference.
pub fn wait_tables_equal(a: &Firewall, b: &Firewall, min: usize, timeout: Duration) -> Vec<CtLine> {
    let deadline = Instant::now() + timeout;
    // Entries may expire before the deadline (UDP: 30 s unreplied); show what differed
    // while they were all still there.
    let mut early = Some(Instant::now() + Duration::from_secs(10));
    loop {
        let (ta, tb) = (forwarded(a), forwarded(b));
        if ta.len() >= min && ta == tb {
            return ta;
        }
        if early.is_some_and(|t| Instant::now() > t) {
            early = None;
            let only_a: Vec<_> = ta.iter().filter(|l| !tb.contains(l)).take(10).collect();
            let only_b: Vec<_> = tb.iter().filter(|l| !ta.contains(l)).take(10).collect();
            eprintln!(
                "tables still differ after 10 s: a has {}, b has {}\nonly on a: {only_a:#?}\nonly on b: {only_b:#?}",
                ta.len(),
                tb.len()
            );
        }
        if Instant::now() > deadline {
            let only_a: Vec<_> = ta.iter().filter(|l| !tb.contains(l)).take(10).collect();
            let only_b: Vec<_> = tb.iter().filter(|l| !ta.contains(l)).take(10).collect();
            panic!(
                "tables differ after {timeout:?}: a has {}, b has {}\nonly on a: {only_a:#?}\nonly on b: {only_b:#?}\n\
                 metrics of a:\n{}\nmetrics of b:\n{}",
                ta.len(),
                tb.len(),
                sync_metrics(&a.ns),
                sync_metrics(&b.ns)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends one datagram to each port from `src` (bound in `ns`).
pub fn udp_flows(ns: &NetNs, src: SocketAddr, dst: std::net::IpAddr, ports: std::ops::Range<u16>) {
    ns.enter(|| {
        let s = UdpSocket::bind(src).unwrap();
        for p in ports {
            s.send_to(b"x", (dst, p)).unwrap();
        }
    })
    .unwrap();
}

/// A TCP echo server in `ns` accepting `n` connections, in the background.
pub fn tcp_server(ns: &NetNs, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<()> {
    let listener = ns.enter(|| TcpListener::bind(addr).unwrap()).unwrap();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"pong");
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read(&mut buf);
        }
    })
}

/// `n` TCP connections from `ns` to `dst`; every `rst_every`-th one ends with RST
/// (SO_LINGER 0), the others with FIN.
pub fn tcp_connections(ns: &NetNs, dst: SocketAddr, n: usize, rst_every: usize) {
    ns.enter(|| {
        for i in 0..n {
            let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            if rst_every > 0 && i % rst_every == 0 {
                let sock = socket2::SockRef::from(&c);
                sock.set_linger(Some(Duration::ZERO)).unwrap();
                drop(c);
            } else {
                c.shutdown(Shutdown::Both).unwrap();
            }
        }
    })
    .unwrap();
}

/// Captures the IPv4 UDP datagrams on one interface of a namespace (an AF_PACKET
/// socket, like tcpdump): what actually crossed the link, in both directions.
pub struct LinkCapture {
    fd: std::os::fd::OwnedFd,
}

/// One captured UDP datagram.
pub struct Captured {
    pub src: std::net::Ipv4Addr,
    pub dport: u16,
    pub payload: Vec<u8>,
}

impl LinkCapture {
    pub fn open(ns: &NetNs, ifname: &str) -> LinkCapture {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(ifname).unwrap();
        ns.enter(|| {
            let proto = (libc::ETH_P_IP as u16).to_be();
            // SAFETY: plain syscalls; the fd is owned right away, `addr` and `buf`
            // outlive the calls that read them.
            unsafe {
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                );
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
                let ifindex = libc::if_nametoindex(name.as_ptr());
                assert!(ifindex > 0, "no interface {ifname}");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = ifindex as i32;
                let rc = libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                let size: libc::c_int = 16 << 20;
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &size as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                );
                LinkCapture { fd }
            }
        })
        .unwrap()
    }

    /// The UDP datagrams captured since the last call.
    pub fn udp(&self) -> Vec<Captured> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n <= 0 {
                break;
            }
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < ihl + 8 || p[9] != 17 {
                continue;
            }
            out.push(Captured {
                src: std::net::Ipv4Addr::new(p[12], p[13], p[14], p[15]),
                dport: u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]),
                payload: p[ihl + 8..].to_vec(),
            });
        }
        out
    }
}
