//! Test support for hasync's privileged tests.
//!
//! Every namespace gets a unique name (process id + counter) so tests run in parallel,
//! and is deleted by its guard's `Drop`, also while a test panics. Processes started in
//! a namespace are killed by their guard and, as a last resort, by the namespace guard.
//! Traffic only ever flows between these namespaces.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

mod conntrack_cli;
pub mod lab;

pub use conntrack_cli::{CtLine, conntrack_count, conntrack_list};

pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, with the command that failed and what it printed.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error(e.to_string())
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid><n>` (fits IFNAMSIZ
/// when the prefix is at most 4 characters).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0x10000)
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("{program}: {e}")))?;
    if !out.status.success() {
        return Err(Error(format!(
            "`{program} {}` failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix><unique>` with `lo` up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        let name = unique_name(prefix);
        run("ip", ["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `setns` or `--netns` arguments.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", full)
    }

    /// Runs a program inside the namespace.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<std::ffi::OsString> = vec![
            "netns".into(),
            "exec".into(),
            self.name.clone().into(),
            program.into(),
        ];
        full.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        run("ip", full)
    }

    /// Runs a shell script inside the namespace and returns its stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.exec("sh", ["-c", script])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that will run inside the namespace (add args, then spawn it with
    /// [`ProcessGuard::spawn`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens live here.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        thread::scope(|s| {
            s.spawn(move || -> Result<R> {
                enter_netns(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error("thread in namespace panicked".into()))?
        })
    }

    /// Makes conntrack track this namespace (it only does once a rule uses it) and
    /// accepts everything.
    pub fn enable_conntrack(&self) -> Result<()> {
        self.nft(
            "table inet testkit {\n\
               chain pre {\n type filter hook prerouting priority 0\n ct state new counter accept\n }\n\
               chain out {\n type filter hook output priority 0\n ct state new counter accept\n }\n\
             }\n",
        )
    }

    /// Loads an nft ruleset (script text) in the namespace.
    pub fn nft(&self, script: &str) -> Result<()> {
        let path = std::env::temp_dir().join(format!("{}.nft", unique_name("nft")));
        std::fs::write(&path, script)?;
        let res = self.exec("nft", [OsStr::new("-f"), path.as_os_str()]);
        let _ = std::fs::remove_file(&path);
        res.map(|_| ())
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", ["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Process ids running in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run("ip", ["netns", "pids", &self.name])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: plain syscall on a pid that lives in our test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = run("ip", ["netns", "del", &self.name]) {
            eprintln!("testkit: could not delete namespace {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter_netns(path: &std::path::Path) -> Result<()> {
    let f = File::open(path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
    // SAFETY: valid fd; only the calling thread changes namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error(format!(
            "setns({}): {}",
            path.display(),
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Creates a veth pair with one end in each namespace, addresses them (CIDR strings,
/// any number) and brings both ends up.
pub fn veth(
    a: &NetNs,
    a_if: &str,
    a_addrs: &[&str],
    b: &NetNs,
    b_if: &str,
    b_addrs: &[&str],
) -> Result<()> {
    run(
        "ip",
        [
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", ifname];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args)?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ProcessGuard {
    child: Option<Child>,
    what: String,
}

impl ProcessGuard {
    pub fn spawn(mut cmd: Command, what: &str) -> Result<ProcessGuard> {
        let child = cmd
            .spawn()
            .map_err(|e| Error(format!("spawning {what}: {e}")))?;
        Ok(ProcessGuard {
            child: Some(child),
            what: what.to_string(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its output if captured.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = self.child.as_mut() else {
                return Err(Error(format!("{} already reaped", self.what)));
            };
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error(format!(
                    "{} did not exit within {timeout:?}",
                    self.what
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes the child (for reading captured pipes); the caller now owns cleanup.
    pub fn take(mut self) -> Child {
        self.child.take().expect("child present until taken")
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the tests run with the privileges namespace tests need.
pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}
