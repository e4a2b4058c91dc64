//! The systems under test, started on fw-a (primary) and fw-b (backup) of a lab:
//! nothing, hasync, or conntrackd (default / tuned / direct-injection). CPU and memory
//! sampling, counters that tell what was lost, stop.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use testkit::{
    NetNs, ProcessGuard,
    lab::{SYNC_A, SYNC_B},
};

use crate::{
    ctd::{self, CtdFiles, CtdVariant},
    sys::{self, CpuSample},
    topo::{BenchLab, within},
};

/// What runs on the firewalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum System {
    /// No sync agent: the kernel's own rate.
    None,
    Hasync,
    /// conntrackd, the example FTFW configuration, SCHED_RR 99.
    CtdDefault,
    /// conntrackd with 16 MiB buffers, 1M resend queue, normal scheduling.
    CtdTuned,
    /// Tuned conntrackd with `DisableExternalCache yes` (backup injects at once).
    CtdDirect,
}

impl System {
    pub const ALL: [System; 5] = [
        System::None,
        System::Hasync,
        System::CtdDefault,
        System::CtdTuned,
        System::CtdDirect,
    ];

    /// The system whose [`System::short`] name is `name`.
    pub fn from_short(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.short() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            System::None => "no agent",
            System::Hasync => "hasync",
            System::CtdDefault => "conntrackd (default)",
            System::CtdTuned => "conntrackd (tuned)",
            System::CtdDirect => "conntrackd (tuned, no ext. cache)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            System::None => "none",
            System::Hasync => "hasync",
            System::CtdDefault => "ctd-default",
            System::CtdTuned => "ctd-tuned",
            System::CtdDirect => "ctd-direct",
        }
    }

    fn ctd(self) -> Option<CtdVariant> {
        match self {
            System::CtdDefault => Some(CtdVariant {
                tuned: false,
                direct: false,
            }),
            System::CtdTuned => Some(CtdVariant {
                tuned: true,
                direct: false,
            }),
            System::CtdDirect => Some(CtdVariant {
                tuned: true,
                direct: true,
            }),
            _ => None,
        }
    }

    pub fn is_ctd(self) -> bool {
        self.ctd().is_some()
    }
}

pub const SECRET: &str = "bench-secret-0123456789";

/// Settings shared by every start.
#[derive(Clone, Debug)]
pub struct AgentOpts {
    pub hasync_bin: PathBuf,
    /// Largest table a run builds (sizes conntrackd's hash).
    pub max_entries: u64,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

static DIRS: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("hasync-bench-{}-{tag}-{n}", std::process::id()));
        fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One running agent process.
pub struct Node {
    pub pid: u32,
    pub log: PathBuf,
    pub ctd: Option<CtdFiles>,
    proc: ProcessGuard,
}

impl Node {
    pub fn cpu(&self) -> Result<CpuSample> {
        sys::cpu_sample(self.pid)
    }

    pub fn rss(&self) -> Result<u64> {
        sys::rss_bytes(self.pid)
    }

    pub fn log_tail(&self) -> String {
        let t = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        self.proc.is_running()
    }

    fn kill(&mut self) {
        self.proc.signal(libc::SIGKILL);
        let _ = self.proc.wait_timeout(Duration::from_secs(10));
    }

    /// Whether the agent logged that it is ready.
    pub fn ready(&self) -> bool {
        fs::read_to_string(&self.log)
            .map(|t| t.contains("hasync ready"))
            .unwrap_or(false)
    }
}

/// Both agents of a lab. Dropping it kills them (and the lab's namespaces would too).
pub struct Pair {
    pub system: System,
    pub a: Node,
    pub b: Node,
    dir: TempDir,
}

/// hasync's node configuration: conntrack sync on `sync0` with default settings. The
/// HA engine (heartbeats, election, takeover) stays off: these measurements compare
/// state sync with conntrackd's, which runs without keepalived here.
fn hasync_config(mode: &str, peer: &str, control_socket: &Path) -> String {
    // Development aid: extra `conntrack_sync` settings to compare (e.g.
    // `HASYNC_BENCH_SYNC_EXTRA='wakeup_min_gap_us = 200'`); reported in the run log.
    let extra = std::env::var("HASYNC_BENCH_SYNC_EXTRA").unwrap_or_default();
    format!(
        r#"replication {{
  mode       = "{mode}"
  peer_addr  = "{peer}"
  secret_key = "{SECRET}"
  ha {{
    enabled = false
    conntrack_sync {{
      enabled         = true
      interface       = "sync0"
      multicast_group = "225.0.0.50"
      port            = 3780
      {extra}
    }}
  }}
}}
agent {{
  metrics_addr   = "127.0.0.1:9724"
  control_socket = "{}"
  log_level      = "info"
}}
"#,
        control_socket.display()
    )
}

fn spawn(ns: &NetNs, program: &Path, args: &[&str], log: &Path, what: &str) -> Result<Node> {
    let mut cmd = ns.command(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(log.with_extension("out"))?)
        .stderr(fs::File::create(log)?);
    let proc = ProcessGuard::spawn(cmd, what).map_err(|e| anyhow!("{e}"))?;
    Ok(Node {
        pid: proc.id(),
        log: log.to_path_buf(),
        ctd: None,
        proc,
    })
}

fn wait_until(
    timeout: Duration,
    what: &str,
    node: &mut Node,
    mut ok: impl FnMut(&Node) -> bool,
) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        sys::check()?;
        if ok(node) {
            return Ok(());
        }
        if !node.alive() {
            bail!("{what} exited during start-up:\n{}", node.log_tail());
        }
        if Instant::now() > end {
            bail!("{what} not ready after {timeout:?}:\n{}", node.log_tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Pair {
    /// Starts `system` on both firewalls; `None` for [`System::None`].
    pub fn start(lab: &BenchLab, system: System, opts: &AgentOpts) -> Result<Option<Pair>> {
        let dir = TempDir::new(system.short())?;
        let (a, b) = match system {
            System::None => return Ok(None),
            System::Hasync => {
                // Both at once, so each one's start-up resync request finds the other
                // listening; then wait until both hold the other's table (else the
                // retry 3 s later dumps a table in the middle of a measurement).
                let mut a = spawn_hasync(lab.a(), &dir.0, "a", "primary", SYNC_B, opts)?;
                let mut b = spawn_hasync(lab.b(), &dir.0, "b", "replica", SYNC_A, opts)?;
                for n in [&mut a, &mut b] {
                    wait_until(Duration::from_secs(30), "hasync", n, |n| n.ready())?;
                }
                wait_both(lab, Duration::from_secs(8), "in sync", |m| {
                    Counters::get(m, "in_sync") >= 1.0
                })?;
                // Then let the digest check that follows a bulk resync finish on both:
                // each one dumps a table, and a ctnetlink dump holds the kernel's
                // host-wide ctnetlink lock while it walks every empty hash bucket
                // (~150 ms with 4M buckets), stalling every install meanwhile. A
                // trial measures the steady state, not this start-up work.
                wait_both(
                    lab,
                    Duration::from_secs(5),
                    "done with the start-up consistency check",
                    |m| consistency_checks(m) >= 1.0,
                )?;
                (a, b)
            }
            s => {
                let v = s.ctd().expect("conntrackd variant");
                (
                    start_ctd(lab.a(), &dir.0, "a", v, opts)?,
                    start_ctd(lab.b(), &dir.0, "b", v, opts)?,
                )
            }
        };
        let pair = Pair { system, a, b, dir };
        if system.is_ctd() {
            // Let the two FTFW peers say hello before traffic starts.
            sys::sleep(Duration::from_millis(300))?;
        }
        Ok(Some(pair))
    }

    /// hasync: kills the backup agent, empties fw-b's table, and starts a fresh backup
    /// agent, which asks the primary for its whole table (bulk resync). Returns when
    /// the new process is spawned; poll [`Node::ready`] and the table.
    pub fn respawn_backup(&mut self, lab: &BenchLab, opts: &AgentOpts) -> Result<()> {
        if self.system != System::Hasync {
            bail!("respawn_backup is for hasync");
        }
        self.b.kill();
        within(lab.b(), || hasync::kernel::ctnetlink::flush(None))?
            .map_err(|e| anyhow!("flushing fw-b: {e}"))?;
        let cfg = self.dir.0.join("hasync-b.hcl");
        let log = self.dir.0.join("hasync-b-respawn.log");
        let cfg_s = cfg.to_string_lossy().into_owned();
        self.b = spawn(
            lab.b(),
            &opts.hasync_bin,
            &["run", "--config", &cfg_s],
            &log,
            "hasync on fw-b (respawned)",
        )?;
        Ok(())
    }

    pub fn cpu(&self) -> Result<(CpuSample, CpuSample)> {
        Ok((self.a.cpu()?, self.b.cpu()?))
    }

    pub fn rss(&self) -> Result<(u64, u64)> {
        Ok((self.a.rss()?, self.b.rss()?))
    }

    /// Counters of the agents themselves, as (name, value) per node.
    pub fn counters(&self, lab: &BenchLab) -> Counters {
        match self.system {
            System::Hasync => Counters {
                a: metrics(lab.a()),
                b: metrics(lab.b()),
            },
            _ => Counters {
                a: ctd_counters(self.a.ctd.as_ref()),
                b: ctd_counters(self.b.ctd.as_ref()),
            },
        }
    }

    /// Entries the backup holds for the generator's flows outside its kernel
    /// (conntrackd's external cache), if the system has such a cache.
    pub fn backup_cache_entries(&self) -> Result<Option<u64>> {
        match (self.system, &self.b.ctd) {
            (System::CtdDefault | System::CtdTuned, Some(f)) => {
                let s = ctd::parse_stats(&ctd::ctl(f, &["-s"])?);
                Ok(ctd::stat(&s, &["external", "current active connections"]))
            }
            _ => Ok(None),
        }
    }
}

fn spawn_hasync(
    ns: &NetNs,
    dir: &Path,
    node: &str,
    mode: &str,
    peer: &str,
    opts: &AgentOpts,
) -> Result<Node> {
    let cfg = dir.join(format!("hasync-{node}.hcl"));
    fs::write(
        &cfg,
        hasync_config(
            mode,
            peer,
            &dir.join(format!("ctl-{node}")).join("hasync.sock"),
        ),
    )?;
    let log = dir.join(format!("hasync-{node}.log"));
    let cfg_s = cfg.to_string_lossy().into_owned();
    spawn(
        ns,
        &opts.hasync_bin,
        &["run", "--config", &cfg_s],
        &log,
        &format!("hasync on fw-{node}"),
    )
}

fn start_ctd(ns: &NetNs, dir: &Path, node: &str, v: CtdVariant, opts: &AgentOpts) -> Result<Node> {
    let files = CtdFiles::new(dir, node);
    fs::write(
        &files.config,
        ctd::config(v, node, &files, opts.max_entries),
    )?;
    let cfg_s = files.config.to_string_lossy().into_owned();
    let mut n = spawn(
        ns,
        Path::new("conntrackd"),
        &["-C", &cfg_s],
        &files.log.with_extension("stderr"),
        &format!("conntrackd on fw-{node}"),
    )?;
    n.ctd = Some(files.clone());
    wait_until(
        Duration::from_secs(20),
        &format!("conntrackd on fw-{node}"),
        &mut n,
        |_| ctd::ctl(&files, &["-s", "runtime"]).is_ok(),
    )?;
    if v.tuned {
        // conntrackd sets SCHED_RR 99 itself at start; put it back to normal.
        let out = Command::new("chrt")
            .args(["-a", "-o", "-p", "0", &n.pid.to_string()])
            .output()
            .context("chrt")?;
        if !out.status.success() {
            bail!("chrt -o: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(n)
}

/// Agent counters of both nodes.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub a: Vec<(String, f64)>,
    pub b: Vec<(String, f64)>,
}

impl Counters {
    pub fn get(list: &[(String, f64)], name: &str) -> f64 {
        list.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    }

    /// Loss-relevant counters that grew since `before`, as "node: name +n".
    pub fn growth(&self, before: &Counters, interesting: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for (node, now, then) in [("A", &self.a, &before.a), ("B", &self.b, &before.b)] {
            for (k, v) in now {
                if !interesting.iter().any(|i| k.contains(i)) {
                    continue;
                }
                let d = v - Counters::get(then, k);
                if d > 0.0 {
                    out.push(format!("{node}: {k} +{d}"));
                }
            }
        }
        out
    }
}

/// Counter names that mean something was lost (hasync metrics and conntrackd stats).
pub const LOSS_COUNTERS: &[&str] = &[
    "ringbuf_drops",
    "program_read_errors",
    "capture_bad_events",
    "sync_send_errors",
    "sync_send_blocked",
    "sync_sender_overruns",
    "sync_lost_datagrams",
    "sync_rejected",
    "install_errors",
    "install_replies_lost",
    "destroy_overruns",
    "netlink overrun",
    "catch event failed",
    "lost",
    "Malformed",
    "queue full",
    "failed",
];

/// Polls both hasync agents' metrics until `ok` holds for both; after `timeout` says
/// so and goes on (a trial still runs, with a note in the log).
fn wait_both(
    lab: &BenchLab,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&[(String, f64)]) -> bool,
) -> Result<()> {
    let end = Instant::now() + timeout;
    while [lab.a(), lab.b()].iter().any(|ns| !ok(&metrics(ns))) {
        if Instant::now() > end {
            eprintln!("bench: hasync agents not {what} {timeout:?} after start; going on");
            break;
        }
        sys::sleep(Duration::from_millis(50))?;
    }
    Ok(())
}

/// Consistency checks (digest comparisons) a node finished, whatever the outcome.
fn consistency_checks(list: &[(String, f64)]) -> f64 {
    list.iter()
        .filter(|(k, _)| k.starts_with("consistency_checks_total"))
        .map(|(_, v)| *v)
        .sum()
}

/// hasync's Prometheus metrics in `ns`, counters and gauges as (name{labels}, value).
pub fn metrics(ns: &NetNs) -> Vec<(String, f64)> {
    let text = within(ns, || {
        let mut s = TcpStream::connect("127.0.0.1:9724").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()
    .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("hasync_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim_start_matches("hasync_").to_string(), v.parse().ok()?))
        })
        .collect()
}

fn ctd_counters(files: Option<&CtdFiles>) -> Vec<(String, f64)> {
    let Some(f) = files else { return Vec::new() };
    let mut out = Vec::new();
    for what in [
        None,
        Some("runtime"),
        Some("network"),
        Some("queue"),
        Some("cache"),
    ] {
        let args: Vec<&str> = match what {
            None => vec!["-s"],
            Some(w) => vec!["-s", w],
        };
        if let Ok(text) = ctd::ctl(f, &args) {
            for (k, v) in ctd::parse_stats(&text) {
                if !out.iter().any(|(x, _): &(String, f64)| x == &k) {
                    out.push((k, v as f64));
                }
            }
        }
    }
    out
}
