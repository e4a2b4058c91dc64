//! conntrackd (conntrack-tools 1.4.7): configuration, control commands and statistics.
//!
//! FTFW over multicast on `sync0`, its recommended setup (the shipped
//! `examples/sync/ftfw/conntrackd.conf`), on 225.0.0.51:3781 so it could coexist with
//! hasync (225.0.0.50:3780). Two variants:
//! * **default**: the example's values (2 MiB netlink buffer growing to 8 MiB, 1.2 MB
//!   socket buffers, resend queue 131,072) and conntrackd's default scheduler
//!   (SCHED_RR, priority 99);
//! * **tuned**: 16 MiB netlink and socket buffers, resend queue 1,000,000, normal
//!   scheduling (`chrt -o` after start).
//!
//! Deviations from the example, in both: UDP and ICMP are replicated too (the example
//! accepts only TCP/SCTP/DCCP; the bench flows are UDP), `HashSize`/`HashLimit` hold
//! the largest table a run builds, and only loopback and the sync link are ignored.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use testkit::lab::{SYNC_A, SYNC_B};

pub const MCAST_GROUP: &str = "225.0.0.51";
pub const MCAST_PORT: u16 = 3781;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtdVariant {
    pub tuned: bool,
    /// `DisableExternalCache yes`: the backup injects into its kernel at once.
    pub direct: bool,
}

/// Paths of one conntrackd instance.
#[derive(Clone, Debug)]
pub struct CtdFiles {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub lock: PathBuf,
    pub log: PathBuf,
}

impl CtdFiles {
    pub fn new(dir: &Path, node: &str) -> CtdFiles {
        CtdFiles {
            config: dir.join(format!("conntrackd-{node}.conf")),
            socket: dir.join(format!("conntrackd-{node}.ctl")),
            lock: dir.join(format!("conntrackd-{node}.lock")),
            log: dir.join(format!("conntrackd-{node}.log")),
        }
    }
}

/// The configuration file of node `a` or `b`.
pub fn config(v: CtdVariant, node: &str, files: &CtdFiles, max_entries: u64) -> String {
    let own_ip = if node == "a" { SYNC_A } else { SYNC_B };
    let (nl_buf, nl_max, sock_buf, resend) = if v.tuned {
        (16 << 20, 16 << 20, 16 << 20, 1_000_000)
    } else {
        (2_097_152, 8_388_608, 1_249_280, 131_072)
    };
    let hash_limit = (max_entries * 2).max(131_072);
    let hash_size = (max_entries / 4).clamp(32_768, 1 << 20);
    let external = if v.direct {
        "\t\tDisableExternalCache yes\n"
    } else {
        ""
    };
    format!(
        "Sync {{
\tMode FTFW {{
\t\tResendQueueSize {resend}
{external}\t}}
\tMulticast {{
\t\tIPv4_address {MCAST_GROUP}
\t\tGroup {MCAST_PORT}
\t\tIPv4_interface {own_ip}
\t\tInterface sync0
\t\tSndSocketBuffer {sock_buf}
\t\tRcvSocketBuffer {sock_buf}
\t\tChecksum on
\t}}
}}
General {{
\tSystemd no
\tHashSize {hash_size}
\tHashLimit {hash_limit}
\tLogFile {log}
\tLockFile {lock}
\tUNIX {{
\t\tPath {socket}
\t}}
\tNetlinkBufferSize {nl_buf}
\tNetlinkBufferSizeMaxGrowth {nl_max}
\tFilter From Userspace {{
\t\tAddress Ignore {{
\t\t\tIPv4_address 127.0.0.1
\t\t\tIPv6_address ::1
\t\t\tIPv4_address {SYNC_A}
\t\t\tIPv4_address {SYNC_B}
\t\t}}
\t}}
}}
",
        log = files.log.display(),
        lock = files.lock.display(),
        socket = files.socket.display(),
    )
}

/// Runs `conntrackd -C <config> <args>` (a client command over the UNIX socket) and
/// returns its standard output.
pub fn ctl(files: &CtdFiles, args: &[&str]) -> Result<String> {
    let out = Command::new("conntrackd")
        .arg("-C")
        .arg(&files.config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running conntrackd")?;
    if !out.status.success() {
        bail!(
            "conntrackd {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every counter of a `conntrackd -s ...` report as (`section/label`, value). Handles
/// the three layouts it prints: `label:  n`, several `label: n` pairs on one line, and
/// `n label   n label` (traffic counters).
pub fn parse_stats(text: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if !indented && t.ends_with(':') {
            section = t.trim_end_matches(':').to_string();
            continue;
        }
        if t.contains(':') {
            // label1: n1 label2: n2 ...
            let parts: Vec<&str> = t.split(':').collect();
            let mut label = parts[0].trim().to_string();
            for p in &parts[1..] {
                let p = p.trim();
                let (num, rest) = p.split_once(char::is_whitespace).unwrap_or((p, ""));
                if let Ok(v) = num.parse::<u64>() {
                    out.push((format!("{section}/{label}"), v));
                }
                label = rest.trim().to_string();
            }
        } else {
            // n label words n label words ...
            let mut num: Option<u64> = None;
            let mut words: Vec<&str> = Vec::new();
            for tok in t.split_whitespace() {
                if let Ok(v) = tok.parse::<u64>() {
                    if let Some(n) = num.take() {
                        out.push((format!("{section}/{}", words.join(" ")), n));
                    }
                    num = Some(v);
                    words.clear();
                } else {
                    words.push(tok);
                }
            }
            if let Some(n) = num {
                out.push((format!("{section}/{}", words.join(" ")), n));
            }
        }
    }
    out
}

/// The value of the first stat whose label contains every one of `needles`.
pub fn stat(stats: &[(String, u64)], needles: &[&str]) -> Option<u64> {
    stats
        .iter()
        .find(|(k, _)| needles.iter().all(|n| k.contains(n)))
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_layouts() {
        let text = "cache external:\ncurrent active connections:\t           7\n\
                    connections created:\t\t       32129\tfailed:\t           3\n\n\
                    multicast traffic (active device=sync0):\n                   8 Bytes sent                    0 Bytes recv\n\
                    netlink stats:\n\tnetlink overrun:\t\t           2\n";
        let s = parse_stats(text);
        assert_eq!(
            stat(&s, &["external", "current active connections"]),
            Some(7)
        );
        assert_eq!(stat(&s, &["external", "connections created"]), Some(32129));
        assert_eq!(stat(&s, &["external", "/failed"]), Some(3));
        assert_eq!(stat(&s, &["multicast", "Bytes sent"]), Some(8));
        assert_eq!(stat(&s, &["netlink overrun"]), Some(2));
    }
}
