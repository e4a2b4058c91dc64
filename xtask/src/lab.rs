//! `cargo xtask lab`: the two-node demo in network namespaces.
//!
//! Builds the agent, creates the lab topology (client, fw-a, fw-b, server, LAN/WAN
//! bridges, sync link, VIPs on fw-a), starts hasync on both firewalls, drives traffic
//! from the client through fw-a and shows both nodes live: connection-table sizes,
//! events per second, what was sent, received and installed. At the end (or on
//! Ctrl-C) it compares the two tables and removes every namespace and process it made.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testkit::{
    NetNs, ProcessGuard,
    lab::{CLIENT_IP, Firewall, Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub struct LabArgs {
    /// Seconds to run; 0 = until Ctrl-C.
    pub duration: u64,
    /// New UDP flows per second from the client.
    pub rate: u64,
    pub binary: PathBuf,
}

/// The agent configuration of one lab node (what an operator would write).
pub fn node_config(mode: &str, peer: &str) -> String {
    format!(
        r#"# hasync lab node ({mode})
replication {{
  mode       = "{mode}"
  peer_addr  = "{peer}"
  secret_key = "lab-secret-please-change"
  ha {{
    enabled = true
    conntrack_sync {{
      enabled         = true
      interface       = "sync0"
      multicast_group = "225.0.0.50"
      port            = 3780
    }}
  }}
}}
agent {{
  metrics_addr = "127.0.0.1:9724"
}}
"#
    )
}

struct Node<'a> {
    name: &'static str,
    fw: &'a Firewall,
    _agent: ProcessGuard,
    log: PathBuf,
    prev: Snapshot,
}

#[derive(Default, Clone, Copy)]
struct Snapshot {
    captured: f64,
    sent: f64,
    received: f64,
    installed: f64,
    rejected: f64,
    drops: f64,
}

pub fn run(args: LabArgs) -> Result<()> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let dir = std::env::temp_dir().join(testkit::unique_name("hslab"));
    fs::create_dir_all(&dir)?;
    step("creating the topology: client, fw-a, fw-b, server, LAN/WAN bridges, sync link");
    let lab = Lab::new(&LabOptions {
        prefix: "lab".into(),
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)?;
    step("starting hasync on fw-a (primary) and fw-b (replica)");
    let mut nodes = vec![
        start(
            &lab.fw_a,
            "fw-a",
            &node_config("primary", SYNC_B),
            &args.binary,
            &dir,
        )?,
        start(
            &lab.fw_b,
            "fw-b",
            &node_config("replica", SYNC_A),
            &args.binary,
            &dir,
        )?,
    ];
    println!("    configs and logs: {}", dir.display());
    step(&format!(
        "driving traffic from the client through fw-a: {} new UDP flows/s + TCP connections",
        args.rate
    ));
    let traffic = Traffic::start(&lab, args.rate)?;

    let started = Instant::now();
    let mut lines = 0;
    while !STOP.load(Ordering::Relaxed)
        && (args.duration == 0 || started.elapsed() < Duration::from_secs(args.duration))
    {
        thread::sleep(Duration::from_secs(1));
        if lines > 0 {
            print!("\x1b[{lines}A");
        }
        lines = render(&mut nodes, started.elapsed(), &traffic)?;
    }
    traffic.stop();
    println!();
    step("traffic stopped; waiting for fw-b to converge");
    let verdict = converge(&lab, Duration::from_secs(20));
    match &verdict {
        Ok(n) => println!(
            "    fw-a and fw-b hold the same {n} forwarded connections (tuples, NAT, state, mark, zone)"
        ),
        Err(e) => println!("    tables differ: {e}"),
    }
    for n in &nodes {
        let log = fs::read_to_string(&n.log).unwrap_or_default();
        let errors = log.lines().filter(|l| l.contains("ERROR")).count();
        if errors > 0 {
            println!(
                "    {} logged {errors} error(s); see {}",
                n.name,
                n.log.display()
            );
        }
    }
    step("cleaning up: stopping agents, removing namespaces");
    drop(nodes);
    drop(lab);
    verdict.map(|_| ())
}

fn step(what: &str) {
    println!("==> {what}");
}

fn start<'a>(
    fw: &'a Firewall,
    name: &'static str,
    config: &str,
    binary: &Path,
    dir: &Path,
) -> Result<Node<'a>> {
    let config_path = dir.join(format!("{name}.hcl"));
    fs::write(&config_path, config)?;
    let check = Command::new(binary)
        .args(["check-config", "--config"])
        .arg(&config_path)
        .output()?;
    if !check.status.success() {
        bail!(
            "{name}'s config is invalid:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let log = dir.join(format!("{name}.log"));
    let mut cmd = fw.ns.command(binary);
    cmd.args(["run", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?);
    let mut agent = ProcessGuard::spawn(cmd, name).map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("hasync ready") {
            break;
        }
        if !agent.is_running() || Instant::now() > deadline {
            bail!("{name} did not start:\n{text}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(Node {
        name,
        fw,
        _agent: agent,
        log,
        prev: Snapshot::default(),
    })
}

/// The client's traffic: new UDP flows at `rate`/s and a TCP connection every 10 ms.
struct Traffic {
    stop: Arc<AtomicBool>,
    flows: Arc<AtomicU64>,
    tcp: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab, rate: u64) -> Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let flows = Arc::new(AtomicU64::new(0));
        let tcp = Arc::new(AtomicU64::new(0));
        let listener = lab
            .server
            .enter(|| TcpListener::bind(format!("{SERVER_IP}:8080")))
            .map_err(anyhow::Error::msg)??;
        listener.set_nonblocking(true)?;
        let udp = lab
            .client
            .enter(|| UdpSocket::bind(format!("{CLIENT_IP}:0")))
            .map_err(anyhow::Error::msg)??;
        let client_path = lab.client.path();
        let mut threads = Vec::new();
        {
            let (stop, flows) = (stop.clone(), flows.clone());
            threads.push(thread::spawn(move || {
                let per_tick = (rate / 100).max(1);
                let mut port = 20000u16;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..per_tick {
                        let _ = udp.send_to(b"x", (SERVER_IP, port));
                        port = if port == 60000 { 20000 } else { port + 1 };
                        flows.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        {
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let mut buf = [0u8; 8];
                            let _ = s.read(&mut buf);
                            let _ = s.write_all(b"pong");
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        {
            let (stop, tcp) = (stop.clone(), tcp.clone());
            threads.push(thread::spawn(move || {
                if testkit::enter_netns(&client_path).is_err() {
                    return;
                }
                let dst: SocketAddr = format!("{SERVER_IP}:8080").parse().expect("valid address");
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut c) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                        let _ = c.write_all(b"ping");
                        let mut buf = [0u8; 4];
                        let _ = c.read(&mut buf);
                        tcp.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        Ok(Traffic {
            stop,
            flows,
            tcp,
            threads,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn render(nodes: &mut [Node], elapsed: Duration, traffic: &Traffic) -> Result<usize> {
    let mut out = String::new();
    out.push_str(&format!(
        "\x1b[2K  t={:>4}s  client sent {} UDP flows, {} TCP connections\n",
        elapsed.as_secs(),
        traffic.flows.load(Ordering::Relaxed),
        traffic.tcp.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "\x1b[2K  {:<5} {:>9} {:>11} {:>9} {:>11} {:>10} {:>9} {:>7}\n",
        "node", "entries", "captured/s", "sent/s", "received/s", "installed/s", "rejected", "drops"
    ));
    for n in nodes.iter_mut() {
        let text = scrape(&n.fw.ns);
        let now = Snapshot {
            captured: value(&text, "hasync_capture_events_total"),
            sent: value(&text, "hasync_sync_sent_records_total"),
            received: value(&text, "hasync_sync_received_records_total"),
            installed: ["created", "updated", "deleted"]
                .iter()
                .map(|r| value(&text, &format!("hasync_installs_total{{result=\"{r}\"}}")))
                .sum(),
            rejected: text
                .lines()
                .filter(|l| l.starts_with("hasync_sync_rejected_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
            drops: value(&text, "hasync_ringbuf_drops_total"),
        };
        let entries = testkit::conntrack_count(&n.fw.ns).unwrap_or(0);
        out.push_str(&format!(
            "\x1b[2K  {:<5} {:>9} {:>11.0} {:>9.0} {:>11.0} {:>10.0} {:>9.0} {:>7.0}\n",
            n.name,
            entries,
            now.captured - n.prev.captured,
            now.sent - n.prev.sent,
            now.received - n.prev.received,
            now.installed - n.prev.installed,
            now.rejected,
            now.drops
        ));
        n.prev = now;
    }
    print!("{out}");
    std::io::stdout().flush()?;
    Ok(2 + nodes.len())
}

/// Waits until fw-b holds exactly fw-a's forwarded connections.
fn converge(lab: &Lab, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let a = forwarded(&lab.fw_a.ns)?;
        let b = forwarded(&lab.fw_b.ns)?;
        if a == b {
            return Ok(a.len());
        }
        if Instant::now() > deadline {
            let only_a: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
            let only_b: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
            let show = |v: &[&testkit::CtLine]| {
                v.iter()
                    .take(3)
                    .map(|l| format!("\n      {}", l.line))
                    .collect::<String>()
            };
            bail!(
                "{} entries only on fw-a, {} only on fw-b; e.g. on fw-a:{}\n    on fw-b:{}",
                only_a.len(),
                only_b.len(),
                show(&only_a),
                show(&only_b)
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn forwarded(ns: &NetNs) -> Result<Vec<testkit::CtLine>> {
    Ok(testkit::conntrack_list(ns)
        .map_err(anyhow::Error::msg)
        .context("reading the conntrack table")?
        .into_iter()
        .filter(|l| l.line.contains(&format!("src={CLIENT_IP} ")))
        .collect())
}

fn scrape(ns: &NetNs) -> String {
    ns.enter(|| -> Option<String> {
        let mut s =
            TcpStream::connect_timeout(&"127.0.0.1:9724".parse().ok()?, Duration::from_secs(1))
                .ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

fn value(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
