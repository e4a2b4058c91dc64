//! `cargo xtask lab`: the two-node demo in network namespaces.
//!
//! Builds the topology (client, fw-a, fw-b, server, LAN/WAN bridges, sync link),
//! starts hasync on both firewalls with HA on (fw-a preferred; the gateway VIPs are
//! moved by hasync, not configured by hand), drives traffic from the client through
//! the VIPs and shows both nodes live: role, table size, events per second, what was
//! sent, received and installed. `--failover` kills fw-a (agent SIGKILL, links down)
//! halfway and shows fw-b's takeover timeline and whether a long-running TCP transfer
//! survived. At the end, or on Ctrl-C, everything it made is removed.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use testkit::{
    NetNs, ProcessGuard,
    lab::{CLIENT_IP, Firewall, Lab, LabOptions, SERVER_IP, SYNC_A, SYNC_B},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Clone)]
pub struct LabArgs {
    /// Seconds to run; 0 = until Ctrl-C.
    pub duration: u64,
    /// New UDP flows per second from the client.
    pub rate: u64,
    pub binary: PathBuf,
    /// Kill fw-a halfway (or after 10 s when running until Ctrl-C).
    pub failover: bool,
    /// Namespace name prefix (at most 4 characters).
    pub prefix: String,
    /// No live view (tests).
    pub quiet: bool,
    /// conntrackd + keepalived instead of hasync (failover runs only: the bench's
    /// comparison).
    pub incumbent: bool,
}

mod incumbent;

/// The agent configuration of one lab node (what an operator would write).
pub fn node_config(mode: &str, peer: &str, priority: u8, socket: &Path) -> String {
    format!(
        r#"# hasync lab node ({mode})
replication {{
  mode       = "{mode}"
  peer_addr  = "{peer}"
  secret_key = "lab-secret-please-change"
  ha {{
    enabled            = true
    priority           = {priority}
    heartbeat_interval = 0.1
    failure_threshold  = 3
    failback_mode      = "manual"
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
      enabled         = true
      interface       = "sync0"
      multicast_group = "225.0.0.50"
      port            = 3780
    }}
  }}
}}
agent {{
  metrics_addr   = "127.0.0.1:9724"
  control_socket = "{}"
}}
"#,
        socket.display()
    )
}

struct Node<'a> {
    name: &'static str,
    fw: &'a Firewall,
    agent: Option<ProcessGuard>,
    log: PathBuf,
    socket: PathBuf,
    prev: Snapshot,
}

#[derive(Default, Clone, Copy)]
struct Snapshot {
    captured: f64,
    sent: f64,
    received: f64,
    installed: f64,
}

/// What a `--failover` run measured (the bench reports it).
#[derive(Clone, Debug)]
pub struct FailoverOutcome {
    /// fw-b reported the primary role after the kill.
    pub took_over: bool,
    /// The long transfer ended with every byte and no reset.
    pub survived: bool,
    /// Longest pause in the transfer from the kill on: the failover gap.
    pub longest_pause: Duration,
    /// fw-b's own measure of its takeover procedure (status `last_takeover_ms`).
    pub takeover_ms: Option<f64>,
    /// From the kill until fw-b holds the LAN VIP (detection + transition).
    pub vip_moved_after: Option<Duration>,
    pub summary: String,
}

/// Runs the lab demo; fails if fw-b did not converge or (with `--failover`) did not
/// take over or the transfer broke.
pub fn run(args: LabArgs) -> Result<()> {
    run_measured(args).map(drop)
}

/// [`run`], returning what the failover run measured (`None` without `--failover`).
pub fn run_measured(args: LabArgs) -> Result<Option<FailoverOutcome>> {
    let (verdict, outcome) = run_inner(args)?;
    verdict.map(|()| outcome)
}

/// [`run`] for the bench: a broken transfer is a measurement, not an error.
pub fn run_failover(mut args: LabArgs) -> Result<FailoverOutcome> {
    args.failover = true;
    if args.incumbent {
        return incumbent::failover(&args);
    }
    run_inner(args)?
        .1
        .ok_or_else(|| anyhow::anyhow!("the failover run measured nothing"))
}

fn run_inner(args: LabArgs) -> Result<(Result<()>, Option<FailoverOutcome>)> {
    if !args.quiet {
        // Ctrl-C ends the demo and still cleans up. SAFETY: the handler only stores
        // to an atomic.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
    }
    let say = |what: &str| {
        if !args.quiet {
            println!("==> {what}");
        }
    };
    let dir = std::env::temp_dir().join(testkit::unique_name("hslab"));
    fs::create_dir_all(&dir)?;
    say("creating the topology: client, fw-a, fw-b, server, LAN/WAN bridges, sync link");
    let lab = Lab::new(&LabOptions {
        prefix: args.prefix.clone(),
        vips_on_a: false,
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)?;
    say("starting hasync on fw-a (priority 50) and fw-b (priority 100)");
    let mut nodes = vec![
        start(&lab.fw_a, "fw-a", "primary", SYNC_B, 50, &args.binary, &dir)?,
        start(
            &lab.fw_b,
            "fw-b",
            "replica",
            SYNC_A,
            100,
            &args.binary,
            &dir,
        )?,
    ];
    wait_role(
        &args.binary,
        &nodes[0].socket,
        "primary",
        Duration::from_secs(10),
    )?;
    wait_role(
        &args.binary,
        &nodes[1].socket,
        "backup",
        Duration::from_secs(10),
    )?;
    if !args.quiet {
        println!(
            "    fw-a is PRIMARY and holds the gateway VIPs; configs, logs, sockets: {}",
            dir.display()
        );
    }
    say(&format!(
        "driving traffic through the VIPs: {} new UDP flows/s, a TCP connection every 10 ms, one long TCP transfer",
        args.rate
    ));
    let traffic = Traffic::start(&lab, args.rate)?;

    let started = Instant::now();
    let kill_at = match (args.failover, args.duration) {
        (false, _) => None,
        (true, 0) => Some(Duration::from_secs(10)),
        (true, d) => Some(Duration::from_secs(d) / 2),
    };
    let mut killed: Option<Instant> = None;
    let mut vip_watch = None;
    let mut lines = 0;
    while !STOP.load(Ordering::Relaxed)
        && (args.duration == 0 || started.elapsed() < Duration::from_secs(args.duration))
    {
        thread::sleep(Duration::from_millis(500));
        if let Some(at) = kill_at
            && killed.is_none()
            && started.elapsed() >= at
        {
            let at = kill(&lab.fw_a, &mut nodes[0])?;
            vip_watch = Some(watch_vip(&lab.fw_b, at));
            killed = Some(at);
            if !args.quiet {
                println!("\n==> killed fw-a: agent SIGKILLed, lan0/wan0/sync0 down");
                lines = 0;
            }
        }
        if !args.quiet {
            if lines > 0 {
                print!("\x1b[{lines}A");
            }
            lines = render(&args.binary, &mut nodes, started.elapsed(), &traffic)?;
        }
    }
    traffic.stop();
    if !args.quiet {
        println!();
    }
    let mut verdict = Ok(());
    let mut outcome = None;
    if let Some(killed) = killed {
        say("fw-b after the takeover (`hasync status`):");
        let status = hasync(&args.binary, &["status", "--socket"], &nodes[1].socket)?;
        if !args.quiet {
            for line in status.lines() {
                println!("    {line}");
            }
        }
        let (stream, survived, longest_pause) = traffic.stream_report(killed);
        if !args.quiet {
            println!("    long-running transfer: {stream}");
        }
        let took_over = status.contains("role:     PRIMARY");
        let takeover_ms = hasync(
            &args.binary,
            &["status", "--json", "--socket"],
            &nodes[1].socket,
        )
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.pointer("/ha/last_takeover_ms")?.as_f64());
        outcome = Some(FailoverOutcome {
            took_over,
            survived,
            longest_pause,
            takeover_ms,
            vip_moved_after: vip_watch.and_then(|w: thread::JoinHandle<_>| w.join().ok().flatten()),
            summary: stream.clone(),
        });
        if !took_over {
            verdict = Err(anyhow::anyhow!("fw-b did not take over"));
        } else if !survived {
            verdict = Err(anyhow::anyhow!("the transfer did not survive the failover"));
        }
    } else {
        say("traffic stopped; waiting for fw-b to converge");
        match converge(&lab, Duration::from_secs(20)) {
            Ok(n) if !args.quiet => {
                println!(
                    "    fw-a and fw-b hold the same {n} forwarded connections (tuples, NAT, state, mark, zone)"
                )
            }
            Ok(_) => {}
            Err(e) => verdict = Err(e.context(diagnosis(&nodes))),
        }
    }
    for n in &nodes {
        let log = fs::read_to_string(&n.log).unwrap_or_default();
        let errors = log.lines().filter(|l| l.contains("ERROR")).count();
        if errors > 0 && !args.quiet {
            println!(
                "    {} logged {errors} error(s); see {}",
                n.name,
                n.log.display()
            );
        }
    }
    say("cleaning up: stopping agents, removing namespaces");
    drop(nodes);
    drop(lab);
    Ok((verdict, outcome))
}

fn start<'a>(
    fw: &'a Firewall,
    name: &'static str,
    mode: &str,
    peer: &str,
    priority: u8,
    binary: &Path,
    dir: &Path,
) -> Result<Node<'a>> {
    let socket = dir.join(format!("{name}.sock"));
    let config_path = dir.join(format!("{name}.hcl"));
    fs::write(&config_path, node_config(mode, peer, priority, &socket))?;
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
        agent: Some(agent),
        log,
        socket,
        prev: Snapshot::default(),
    })
}

/// Times how long after `since` fw-b holds the LAN VIP (up to 10 s).
fn watch_vip(fw: &Firewall, since: Instant) -> thread::JoinHandle<Option<Duration>> {
    let ns = fw.ns.name().to_string();
    thread::spawn(move || {
        while since.elapsed() < Duration::from_secs(10) {
            let held = Command::new("ip")
                .args(["-n", &ns, "-4", "addr", "show", "dev", "lan0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("192.168.10.1/24"));
            if held {
                return Some(since.elapsed());
            }
            thread::sleep(Duration::from_millis(5));
        }
        None
    })
}

/// fw-a dies: its agent is killed and its links go down.
fn kill(fw: &Firewall, node: &mut Node) -> Result<Instant> {
    let at = Instant::now();
    if let Some(mut agent) = node.agent.take() {
        agent.signal(libc::SIGKILL);
        let _ = agent.wait_timeout(Duration::from_secs(5));
    }
    for link in ["lan0", "wan0", "sync0"] {
        fw.ns
            .ip(&["link", "set", link, "down"])
            .map_err(anyhow::Error::msg)?;
    }
    Ok(at)
}

fn hasync(binary: &Path, args: &[&str], socket: &Path) -> Result<String> {
    let out = Command::new(binary).args(args).arg(socket).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn role(binary: &Path, socket: &Path) -> String {
    let Ok(out) = Command::new(binary)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
    else {
        return "down".into();
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["ha"]["role"].as_str().map(str::to_string))
        .unwrap_or_else(|| "down".into())
}

fn wait_role(binary: &Path, socket: &Path, want: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while role(binary, socket) != want {
        if Instant::now() > deadline {
            bail!("{} did not become {want}", socket.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The client's traffic: new UDP flows at `rate`/s, a TCP connection every 10 ms, and
/// one long TCP transfer (1 KiB every 5 ms) whose reads the server timestamps.
struct Traffic {
    stop: Arc<AtomicBool>,
    flows: Arc<AtomicU64>,
    tcp: Arc<AtomicU64>,
    stream_sent: Arc<AtomicU64>,
    stream_reads: Arc<Mutex<Vec<(Instant, usize)>>>,
    stream_error: Arc<Mutex<Option<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab, rate: u64) -> Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let flows = Arc::new(AtomicU64::new(0));
        let tcp = Arc::new(AtomicU64::new(0));
        let stream_sent = Arc::new(AtomicU64::new(0));
        let stream_reads = Arc::new(Mutex::new(Vec::new()));
        let stream_error = Arc::new(Mutex::new(None));
        let short = lab
            .server
            .enter(|| TcpListener::bind(format!("{SERVER_IP}:8080")))
            .map_err(anyhow::Error::msg)??;
        short.set_nonblocking(true)?;
        let long = lab
            .server
            .enter(|| TcpListener::bind(format!("{SERVER_IP}:9000")))
            .map_err(anyhow::Error::msg)??;
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
                    match short.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            // A connection cut by the failover must not hang this thread.
                            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
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
            let (stop, tcp, path) = (stop.clone(), tcp.clone(), client_path.clone());
            threads.push(thread::spawn(move || {
                if testkit::enter_netns(&path).is_err() {
                    return;
                }
                let Ok(dst) = format!("{SERVER_IP}:8080").parse::<SocketAddr>() else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut c) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                        // A connection cut by the failover must not hang this thread.
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let _ = c.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = c.write_all(b"ping");
                        let mut buf = [0u8; 4];
                        let _ = c.read(&mut buf);
                        tcp.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        {
            let (reads, err, stop) = (stream_reads.clone(), stream_error.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                // Non-blocking accept: the client may never connect.
                let _ = long.set_nonblocking(true);
                let mut s = loop {
                    match long.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if !stop.load(Ordering::Relaxed) => {
                            thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => return,
                    }
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 4096];
                // After the stop, the client's FIN normally ends the stream; a broken
                // one (no FIN will come) is given 5 s.
                let mut idle_after_stop = 0;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => reads
                            .lock()
                            .map(|mut r| r.push((Instant::now(), n)))
                            .unwrap_or(()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if stop.load(Ordering::Relaxed) {
                                idle_after_stop += 1;
                                if idle_after_stop >= 10 {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = err.lock() {
                                *slot = Some(e.to_string());
                            }
                            return;
                        }
                    }
                }
            }));
        }
        {
            let (stop, sent, err) = (stop.clone(), stream_sent.clone(), stream_error.clone());
            threads.push(thread::spawn(move || {
                if testkit::enter_netns(&client_path).is_err() {
                    return;
                }
                let Ok(dst) = format!("{SERVER_IP}:9000").parse::<SocketAddr>() else {
                    return;
                };
                let Ok(mut c) = TcpStream::connect_timeout(&dst, Duration::from_secs(5)) else {
                    return;
                };
                let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                let chunk = [7u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = c.write_all(&chunk) {
                        if let Ok(mut slot) = err.lock() {
                            *slot = Some(e.to_string());
                        }
                        return;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(5));
                }
                let _ = c.shutdown(std::net::Shutdown::Write);
            }));
        }
        Ok(Traffic {
            stop,
            flows,
            tcp,
            stream_sent,
            stream_reads,
            stream_error,
            threads,
        })
    }

    /// What happened to the long transfer since `since`.
    fn stream_report(&self, since: Instant) -> (String, bool, Duration) {
        // Let the last bytes arrive.
        thread::sleep(Duration::from_millis(500));
        let sent = self.stream_sent.load(Ordering::Relaxed);
        let reads = self
            .stream_reads
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let received: u64 = reads.iter().map(|(_, n)| *n as u64).sum();
        let mut points = vec![since];
        points.extend(reads.iter().map(|(t, _)| *t).filter(|t| *t >= since));
        let gap = points
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let error = self.stream_error.lock().ok().and_then(|e| e.clone());
        let text = match error {
            Some(e) => format!("BROKEN ({e}); {received} of {sent} bytes arrived"),
            None if received < sent => format!("BROKEN: {received} of {sent} bytes arrived"),
            None => format!(
                "survived: {received} bytes, longest pause after the kill {} ms, no reset",
                gap.as_millis()
            ),
        };
        let survived = !text.starts_with("BROKEN");
        (text, survived, gap)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn render(
    binary: &Path,
    nodes: &mut [Node],
    elapsed: Duration,
    traffic: &Traffic,
) -> Result<usize> {
    let mut out = String::new();
    out.push_str(&format!(
        "\x1b[2K  t={:>5.1}s  client: {} UDP flows, {} TCP connections, long transfer {} KiB\n",
        elapsed.as_secs_f64(),
        traffic.flows.load(Ordering::Relaxed),
        traffic.tcp.load(Ordering::Relaxed),
        traffic.stream_sent.load(Ordering::Relaxed) / 1024
    ));
    out.push_str(&format!(
        "\x1b[2K  {:<5} {:<8} {:>8} {:>11} {:>9} {:>11} {:>11}\n",
        "node", "role", "entries", "captured/s", "sent/s", "received/s", "installed/s"
    ));
    for n in nodes.iter_mut() {
        let up = n.agent.is_some();
        let text = if up { scrape(&n.fw.ns) } else { String::new() };
        let now = Snapshot {
            captured: value(&text, "hasync_capture_events_total"),
            sent: value(&text, "hasync_sync_sent_records_total"),
            received: value(&text, "hasync_sync_received_records_total"),
            installed: ["created", "updated", "deleted"]
                .iter()
                .map(|r| value(&text, &format!("hasync_installs_total{{result=\"{r}\"}}")))
                .sum(),
        };
        let role = if up {
            role(binary, &n.socket)
        } else {
            "dead".into()
        };
        let entries = if up {
            testkit::conntrack_count(&n.fw.ns).unwrap_or(0).to_string()
        } else {
            "-".into()
        };
        let rate = |a: f64, b: f64| {
            if up {
                format!("{:.0}", (a - b).max(0.0) * 2.0)
            } else {
                "-".into()
            }
        };
        out.push_str(&format!(
            "\x1b[2K  {:<5} {:<8} {:>8} {:>11} {:>9} {:>11} {:>11}\n",
            n.name,
            role.to_uppercase(),
            entries,
            rate(now.captured, n.prev.captured),
            rate(now.sent, n.prev.sent),
            rate(now.received, n.prev.received),
            rate(now.installed, n.prev.installed)
        ));
        n.prev = now;
    }
    print!("{out}");
    std::io::stdout().flush()?;
    Ok(2 + nodes.len())
}

/// What the agents said and counted, for a run that did not converge: their
/// warnings and errors and their sync counters.
fn diagnosis(nodes: &[Node]) -> String {
    let mut out = String::from("the agents' warnings and sync counters:");
    for n in nodes {
        let log = fs::read_to_string(&n.log).unwrap_or_default();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        out.push_str(&format!(
            "\n  {} ({} warnings/errors):",
            n.name,
            warnings.len()
        ));
        for l in warnings.iter().take(15) {
            out.push_str(&format!("\n    {l}"));
        }
        let metrics = if n.agent.is_some() {
            scrape(&n.fw.ns)
        } else {
            String::new()
        };
        for l in metrics.lines().filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("hasync_sync_")
                    || l.starts_with("hasync_installs_total")
                    || l.starts_with("hasync_capture_")
                    || l.starts_with("hasync_program_")
                    || l.starts_with("hasync_ringbuf_")
                    || l.starts_with("hasync_deletes")
                    || l.starts_with("hasync_consistency")
                    || l.starts_with("hasync_ha_role"))
        }) {
            out.push_str(&format!("\n    {l}"));
        }
    }
    out
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
                "{} entries only on fw-a, {} only on fw-b; e.g. on fw-a:{}\n    on fw-b:{}\n    fw-a's entries that differ, by kind:{}",
                only_a.len(),
                only_b.len(),
                show(&only_a),
                show(&only_b),
                kinds(&only_a, &b)
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Counts fw-a's differing entries by protocol, state and whether fw-b holds the
/// connection at all (in another state) or not.
fn kinds(only_a: &[&testkit::CtLine], b: &[testkit::CtLine]) -> String {
    // The original direction's tuple, e.g. "src=.. dst=.. sport=.. dport=..".
    let tuple = |l: &str| -> String {
        l.split_whitespace()
            .filter(|w| {
                ["src=", "dst=", "sport=", "dport="]
                    .iter()
                    .any(|p| w.starts_with(p))
            })
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let b_tuples: std::collections::HashSet<String> = b.iter().map(|l| tuple(&l.line)).collect();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for l in only_a {
        let words: Vec<&str> = l.line.split_whitespace().collect();
        let proto = words.get(2).copied().unwrap_or("?");
        let state = words
            .get(4)
            .filter(|w| !w.contains('='))
            .copied()
            .unwrap_or("-");
        let on_b = if b_tuples.contains(&tuple(&l.line)) {
            "differs on fw-b"
        } else {
            "missing on fw-b"
        };
        *counts
            .entry(format!("{proto} {state}: {on_b}"))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("\n      {n:>6} {k}"))
        .collect()
}

fn forwarded(ns: &NetNs) -> Result<Vec<testkit::CtLine>> {
    Ok(testkit::conntrack_list(ns)
        .map_err(anyhow::Error::msg)?
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
