//! Process-wide plumbing: Ctrl-C, host conntrack limits, clocks, /proc readers.

use std::{
    fs,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// CLOCK_MONOTONIC seconds of the first signal (duplicates within a second, as sent by
/// `timeout` to its child and its group, count once).
static FIRST_SIGNAL_S: AtomicU64 = AtomicU64::new(0);
/// Host values to put back even on a forced exit (0: nothing changed).
static RESTORE_MAX: AtomicU64 = AtomicU64::new(0);
static RESTORE_HASHSIZE: AtomicU64 = AtomicU64::new(0);

/// Writes a decimal number to a file with raw syscalls (async-signal-safe).
fn write_number_raw(path: &std::ffi::CStr, v: u64) {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    let mut x = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    // SAFETY: open/write/close are async-signal-safe; buf outlives the calls.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
            libc::close(fd);
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    let now_s = mono_ns() / 1_000_000_000 + 1;
    let first = FIRST_SIGNAL_S.load(Ordering::SeqCst);
    if first == 0 {
        FIRST_SIGNAL_S.store(now_s, Ordering::SeqCst);
        INTERRUPTED.store(true, Ordering::SeqCst);
        return;
    }
    if now_s <= first + 1 {
        return;
    }
    // Second Ctrl-C: the user insists. Put the host limits back; namespaces stay.
    let hs = RESTORE_HASHSIZE.load(Ordering::SeqCst);
    if hs != 0 {
        write_number_raw(c"/sys/module/nf_conntrack/parameters/hashsize", hs);
    }
    let max = RESTORE_MAX.load(Ordering::SeqCst);
    if max != 0 {
        write_number_raw(c"/proc/sys/net/netfilter/nf_conntrack_max", max);
    }
    let msg =
        b"\nbench: interrupted twice, exiting without cleanup (see `ip netns list | grep ^bn`)\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(130);
    }
}

/// Turns SIGINT/SIGTERM into a flag every loop polls, so the measurement unwinds and
/// every guard (namespaces, processes, host settings) runs.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a handler that only touches an atomic (and exits on the second signal).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails once the user pressed Ctrl-C, so `?` unwinds to the guards.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in short slices, failing early on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    loop {
        check()?;
        let now = std::time::Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// CLOCK_MONOTONIC in nanoseconds; the same clock in every network namespace.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The host-wide conntrack limit (`nf_conntrack_max` is global: namespaces cannot
/// raise it) and hash size, raised for the run and restored on drop.
pub struct HostConntrack {
    old_max: u64,
    old_hashsize: u64,
    changed: bool,
}

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const HASHSIZE_PATH: &str = "/sys/module/nf_conntrack/parameters/hashsize";

fn read_u64(path: &str) -> Result<u64> {
    fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {path}"))
}

impl HostConntrack {
    /// Makes room for `entries` (all namespaces together) if the host allows fewer.
    pub fn ensure(entries: u64) -> Result<HostConntrack> {
        let old_max = read_u64(MAX_PATH)?;
        let old_hashsize = read_u64(HASHSIZE_PATH).unwrap_or(0);
        let mut g = HostConntrack {
            old_max,
            old_hashsize,
            changed: false,
        };
        if old_max < entries {
            g.changed = true;
            RESTORE_MAX.store(old_max, Ordering::SeqCst);
            fs::write(MAX_PATH, entries.to_string()).context("raising nf_conntrack_max")?;
            // One bucket per allowed entry: the kernel's own default ratio ("a max.
            // factor of one by default to keep the average hash chain length at 2
            // entries", nf_conntrack_core.c). The hash table is shared by every
            // namespace, so the backup's table (on its own machine in real life)
            // lengthens the primary's chains here; a smaller table would turn that lab
            // artifact into most of the primary's cost for anything that installs on
            // the backup.
            let buckets = entries.next_power_of_two();
            if old_hashsize != 0 && old_hashsize < buckets {
                RESTORE_HASHSIZE.store(old_hashsize, Ordering::SeqCst);
                fs::write(HASHSIZE_PATH, buckets.to_string())
                    .context("raising nf_conntrack hashsize")?;
            } else {
                g.old_hashsize = 0;
            }
        }
        Ok(g)
    }

    pub fn describe(&self) -> String {
        format!(
            "nf_conntrack_max {} (host value {}), hashsize {}",
            read_u64(MAX_PATH).unwrap_or(0),
            self.old_max,
            read_u64(HASHSIZE_PATH).unwrap_or(0)
        )
    }
}

impl Drop for HostConntrack {
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        if self.old_hashsize != 0 {
            let _ = fs::write(HASHSIZE_PATH, self.old_hashsize.to_string());
        }
        let _ = fs::write(MAX_PATH, self.old_max.to_string());
        RESTORE_MAX.store(0, Ordering::SeqCst);
        RESTORE_HASHSIZE.store(0, Ordering::SeqCst);
    }
}

/// CPU time of a process (all its threads, dead ones included), from
/// `/proc/<pid>/stat` (utime + stime, clock ticks) and, finer, the sum of
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    pub ticks: u64,
    pub sched_ns: u64,
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf is always safe to call.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

pub fn cpu_sample(pid: u32) -> Result<CpuSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut sched_ns = 0;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
                sched_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(CpuSample {
        ticks: utime + stime,
        sched_ns,
    })
}

impl CpuSample {
    /// Milliseconds between two samples, by ticks and by schedstat.
    pub fn ms_since(&self, before: &CpuSample) -> (f64, f64) {
        let hz = clock_ticks_per_sec() as f64;
        (
            self.ticks.saturating_sub(before.ticks) as f64 * 1000.0 / hz,
            self.sched_ns.saturating_sub(before.sched_ns) as f64 / 1e6,
        )
    }
}

/// VmRSS of a process, bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for l in status.lines() {
        if let Some(v) = l.strip_prefix("VmRSS:") {
            let kb: u64 = v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .context("VmRSS")?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmRSS for pid {pid}")
}

/// Busy and total jiffies of the whole machine (`/proc/stat`, first line).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpu {
    pub busy: u64,
    pub total: u64,
}

pub fn host_cpu() -> HostCpu {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else {
        return HostCpu::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    HostCpu {
        busy: total.saturating_sub(idle),
        total,
    }
}

impl HostCpu {
    /// Busy CPU milliseconds (all cores) since `before`.
    pub fn busy_ms_since(&self, before: &HostCpu) -> f64 {
        self.busy.saturating_sub(before.busy) as f64 * 1000.0 / clock_ticks_per_sec() as f64
    }
}
