//! Cross-field checks on a parsed [`Config`], and the filesystem checks of
//! [`super::validate_files`].
//!
//! Each error points at the attribute that is most likely wrong or that creates the
//! requirement (`enabled = true` for a missing `secret_key`); when that attribute is absent
//! (a default), at the nearest enclosing block in the file. A check whose inputs include an
//! attribute the parser already rejected is skipped, so one typo gives one error.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::conv::PORT_PROTOCOLS;
use super::error::{Diag, Locations};
use super::schema::{Config, Mode};

const H: &str = "replication.ha";
const CS: &str = "replication.ha.conntrack_sync";

struct V<'a, 's> {
    locs: &'a Locations,
    d: &'a mut Diag<'s>,
}

impl V<'_, '_> {
    fn err(&mut self, path: &str, message: String, hint: Option<String>) {
        let span = self.locs.find(path);
        self.d.error(span, message, hint);
    }
    /// True when any of `paths` (relative to nothing: full paths) was rejected by the parser.
    fn bad(&self, paths: &[&str]) -> bool {
        paths.iter().any(|p| self.locs.is_bad(p))
    }
    /// Whether `path` is written in the file (vs. defaulted).
    fn written(&self, path: &str) -> bool {
        self.locs.has(path)
    }
}

fn p(block: &str, attr: &str) -> String {
    format!("{block}.{attr}")
}

/// Runs every cross-field check, pushing errors into `d`.
pub(crate) fn check(c: &Config, locs: &Locations, d: &mut Diag) {
    let mut v = V { locs, d };
    roles(c, &mut v);
    authentication(c, &mut v);
    tls(c, &mut v);
    peer(c, &mut v);
    timing(c, &mut v);
    virtual_addrs(c, &mut v);
    sync(c, &mut v);
    filters(c, &mut v);
    agent(c, &mut v);
}

fn roles(c: &Config, v: &mut V) {
    let r = &c.replication;
    let mode = r.mode;
    if v.bad(&["replication.mode"]) {
        return;
    }
    if mode == Mode::Standalone {
        for (path, what) in [
            (p(H, "enabled"), r.ha.enabled),
            (p(CS, "enabled"), r.ha.conntrack_sync.enabled),
        ] {
            if what {
                v.err(
                    &path,
                    format!(
                        "`{}` = true needs `mode` = \"primary\" or \"replica\", but mode is \"standalone\"",
                        path.trim_start_matches("replication.")
                    ),
                    Some("standalone means no HA and no replication; set `mode` in block `replication`".into()),
                );
            }
        }
        if r.listen_addr.is_some() {
            v.err(
                "replication.listen_addr",
                "`listen_addr` has no effect in mode \"standalone\"".into(),
                Some("set `mode` = \"primary\" or \"replica\", or remove it".into()),
            );
        }
    }
    if r.primary_addr.is_some() && mode != Mode::Replica {
        v.err(
            "replication.primary_addr",
            format!(
                "`primary_addr` is only used in mode \"replica\", but mode is \"{}\"",
                mode.as_str()
            ),
            Some("the primary listens on `listen_addr`; remove `primary_addr` here".into()),
        );
    }
}

fn authentication(c: &Config, v: &mut V) {
    let r = &c.replication;
    if r.secret_key.is_some() || v.bad(&["replication.secret_key"]) {
        return;
    }
    let reason = if r.ha.enabled {
        Some((p(H, "enabled"), "HA is enabled"))
    } else if r.ha.conntrack_sync.enabled {
        Some((p(CS, "enabled"), "conntrack sync is enabled"))
    } else {
        None
    };
    if let Some((path, why)) = reason {
        v.err(
            &path,
            format!(
                "`secret_key` is required because {why}: heartbeats and sync messages are always authenticated"
            ),
            Some("set `secret_key` in block `replication`: at least 8 characters, the same on both nodes".into()),
        );
    }
}

fn tls(c: &Config, v: &mut V) {
    let r = &c.replication;
    let tls_paths = [
        "replication.tls_cert",
        "replication.tls_key",
        "replication.tls_ca",
    ];
    if v.bad(&tls_paths) || v.bad(&["replication.tls_mutual", "replication.mode"]) {
        return;
    }
    match (&r.tls_cert, &r.tls_key) {
        (Some(_), None) => v.err(
            "replication.tls_cert",
            "`tls_cert` is set but `tls_key` is not".into(),
            Some("set both or neither".into()),
        ),
        (None, Some(_)) => v.err(
            "replication.tls_key",
            "`tls_key` is set but `tls_cert` is not".into(),
            Some("set both or neither".into()),
        ),
        _ => {}
    }
    if r.tls_mutual {
        if r.tls_ca.is_none() {
            v.err(
                "replication.tls_mutual",
                "`tls_mutual` = true requires `tls_ca` to verify the peer's certificate".into(),
                None,
            );
        }
        if r.tls_cert.is_none() && r.tls_key.is_none() {
            v.err(
                "replication.tls_mutual",
                "`tls_mutual` = true requires `tls_cert` and `tls_key`: both nodes present a certificate".into(),
                None,
            );
        }
    }
    let any_tls = r.tls_cert.is_some() || r.tls_key.is_some() || r.tls_ca.is_some() || r.tls_mutual;
    if !any_tls || v.bad(&["replication.listen_addr", "replication.primary_addr"]) {
        return;
    }
    let first_tls = tls_paths
        .iter()
        .copied()
        .chain(["replication.tls_mutual"])
        .find(|p| v.written(p))
        .unwrap_or("replication");
    match r.mode {
        Mode::Primary if r.listen_addr.is_none() => v.err(
            first_tls,
            "TLS is configured but there is no replication channel: the primary needs `listen_addr`".into(),
            Some("e.g. listen_addr = \":9000\"".into()),
        ),
        Mode::Primary if r.tls_cert.is_none() && r.tls_key.is_none() => v.err(
            first_tls,
            "the primary serves the TLS channel and needs `tls_cert` and `tls_key`".into(),
            None,
        ),
        Mode::Replica if r.primary_addr.is_none() => v.err(
            "replication.mode",
            "mode \"replica\" with TLS configured needs `primary_addr`, the channel address to dial".into(),
            Some("e.g. primary_addr = \"10.250.0.1:9000\"".into()),
        ),
        Mode::Standalone => v.err(
            first_tls,
            "TLS settings have no effect in mode \"standalone\"".into(),
            None,
        ),
        _ => {}
    }
}

fn peer(c: &Config, v: &mut V) {
    let r = &c.replication;
    let s = &r.ha.conntrack_sync;
    if v.bad(&["replication.peer_addr"]) {
        return;
    }
    if r.peer_addr.is_none() {
        if r.ha.enabled && r.mode != Mode::Standalone {
            v.err(
                &p(H, "enabled"),
                "`peer_addr` is required when HA is enabled: heartbeats are sent to the peer"
                    .into(),
                Some(
                    "set `peer_addr` in block `replication`, e.g. peer_addr = \"10.250.0.2\""
                        .into(),
                ),
            );
        } else if s.enabled
            && s.multicast_group.is_none()
            && r.mode != Mode::Standalone
            && !v.bad(&[&p(CS, "multicast_group")])
        {
            v.err(
                &p(CS, "multicast_group"),
                "unicast sync (`multicast_group` = \"\") needs `peer_addr` in block `replication`"
                    .into(),
                None,
            );
        }
    }
    if let Some(peer) = r.peer_addr
        && (peer.is_unspecified() || peer.is_multicast())
    {
        v.err(
            "replication.peer_addr",
            format!("`peer_addr` {peer} is not a unicast address"),
            Some("peer_addr is the other node's IP on the sync/heartbeat link".into()),
        );
    }
    if let (Some(peer), Some(local)) = (r.peer_addr, s.local_addr) {
        if v.bad(&[&p(CS, "local_addr")]) {
            return;
        }
        if local.addr() == peer {
            v.err(
                "replication.peer_addr",
                format!("`peer_addr` {peer} is this node's own `local_addr`"),
                Some("peer_addr is the other node's address".into()),
            );
        } else if !local.contains(&peer) {
            v.err(
                "replication.peer_addr",
                format!(
                    "`peer_addr` {peer} is not in the sync subnet {} of `local_addr` {local}",
                    local.trunc()
                ),
                Some("both nodes' sync addresses must be on one subnet".into()),
            );
        }
    }
}

fn timing(c: &Config, v: &mut V) {
    let h = &c.replication.ha;
    if !h.enabled || v.bad(&[&p(H, "heartbeat_interval"), &p(H, "failure_threshold")]) {
        return;
    }
    let detect = h.heartbeat_interval.saturating_mul(h.failure_threshold);
    let (lo, hi) = (Duration::from_millis(300), Duration::from_secs(300));
    let path = if v.written(&p(H, "failure_threshold")) {
        p(H, "failure_threshold")
    } else {
        p(H, "heartbeat_interval")
    };
    if detect < lo {
        v.err(
            &path,
            format!(
                "failure detection time `heartbeat_interval` x `failure_threshold` = {} s is below 0.3 s",
                detect.as_secs_f64()
            ),
            Some("one delayed heartbeat would cause a failover; raise failure_threshold".into()),
        );
    } else if detect > hi {
        v.err(
            &path,
            format!(
                "failure detection time `heartbeat_interval` x `failure_threshold` = {} s exceeds 300 s",
                detect.as_secs_f64()
            ),
            Some("a dead peer would go unnoticed that long".into()),
        );
    }
}

fn virtual_addrs(c: &Config, v: &mut V) {
    let h = &c.replication.ha;
    for (i, vip) in h.virtual_ips.iter().enumerate() {
        let item = v.locs.item("replication.ha.virtual_ip", i);
        let addr = vip.address.addr();
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
            v.err(
                &p(&item, "address"),
                format!(
                    "`address` {addr} cannot be a virtual IP (unspecified, loopback or multicast)"
                ),
                None,
            );
        }
        if h.virtual_ips[..i].iter().any(|o| o.address.addr() == addr) {
            v.err(
                &p(&item, "address"),
                format!("virtual IP {addr} is configured twice"),
                None,
            );
        }
        if Some(addr) == c.replication.peer_addr {
            v.err(
                &p(&item, "address"),
                format!("virtual IP {addr} is also `peer_addr`"),
                Some("a virtual IP moves between nodes; the peer address must be fixed".into()),
            );
        }
        if let Some(label) = &vip.label
            && !v.bad(&[&p(&item, "label")])
            && (!label.starts_with(vip.interface.as_str()) || label.len() > 15)
        {
            v.err(
                &p(&item, "label"),
                format!(
                    "`label` {label:?} must start with the interface name {:?} and have at most 15 characters",
                    vip.interface
                ),
                Some(format!("e.g. label = \"{}:vip\"", vip.interface)),
            );
        }
    }
    for (i, vmac) in h.virtual_macs.iter().enumerate() {
        let item = v.locs.item("replication.ha.virtual_mac", i);
        if h.virtual_macs[..i]
            .iter()
            .any(|o| o.interface == vmac.interface)
        {
            v.err(
                &p(&item, "interface"),
                format!(
                    "interface {:?} has more than one virtual_mac",
                    vmac.interface
                ),
                None,
            );
        }
    }
}

fn sync(c: &Config, v: &mut V) {
    let r = &c.replication;
    let h = &r.ha;
    let s = &h.conntrack_sync;
    if !h.down_interfaces_before_sync.is_empty() && !s.enabled && !v.bad(&[&p(CS, "enabled")]) {
        v.err(
            &p(H, "down_interfaces_before_sync"),
            "`down_interfaces_before_sync` waits for the initial session sync, but conntrack_sync is not enabled".into(),
            Some("set `enabled = true` in block `conntrack_sync`, or remove this list".into()),
        );
    }
    if !s.enabled {
        return;
    }
    if h.enabled && s.port == h.heartbeat_port && !v.bad(&[&p(CS, "port"), &p(H, "heartbeat_port")])
    {
        v.err(
            &p(CS, "port"),
            format!("`port` {} is also the HA `heartbeat_port`", s.port),
            Some("sync and heartbeats need different UDP ports".into()),
        );
    }
    if s.multicast_group.is_some()
        && s.interface.is_none()
        && r.peer_addr.is_none()
        && !v.bad(&[&p(CS, "interface"), "replication.peer_addr"])
    {
        v.err(
            &p(CS, "multicast_group"),
            "multicast sync needs `interface` to join the group on (or `peer_addr` to find it by route)".into(),
            Some("e.g. interface = \"sync0\"".into()),
        );
    }
    if u64::from(s.send_buffer_size) < u64::from(s.max_datagram_size)
        && !v.bad(&[&p(CS, "send_buffer_size"), &p(CS, "max_datagram_size")])
    {
        v.err(
            &p(CS, "send_buffer_size"),
            format!(
                "`send_buffer_size` {} is smaller than `max_datagram_size` {}",
                s.send_buffer_size, s.max_datagram_size
            ),
            None,
        );
    }
    if let (Some(local), Some(_)) = (s.local_addr, s.multicast_group)
        && local.addr().is_ipv6()
        && !v.bad(&[&p(CS, "local_addr")])
    {
        v.err(
            &p(CS, "local_addr"),
            format!("`local_addr` {local} is IPv6 but the multicast group is IPv4"),
            Some("use multicast_group = \"\" (unicast) on an IPv6 sync link".into()),
        );
    }
}

fn filters(c: &Config, v: &mut V) {
    for (i, f) in c.replication.ha.conntrack_sync.filters.iter().enumerate() {
        let item = v.locs.item("replication.ha.conntrack_sync.filter", i);
        let fields = [
            "src_interface",
            "dst_interface",
            "src_addr",
            "dst_addr",
            "protocol",
            "src_ports",
            "dst_ports",
        ];
        if fields.iter().any(|a| v.bad(&[&p(&item, a)])) {
            continue;
        }
        let empty = f.src_interface.is_none()
            && f.dst_interface.is_none()
            && f.src_addr.is_none()
            && f.dst_addr.is_none()
            && f.protocol.is_none()
            && f.src_ports.is_none()
            && f.dst_ports.is_none();
        if empty {
            v.err(
                &item,
                format!(
                    "this filter matches every connection{}",
                    if f.exclude {
                        " and would exclude all of them"
                    } else {
                        ""
                    }
                ),
                Some(format!("set at least one of: {}", fields.join(", "))),
            );
            continue;
        }
        if let (Some(src), Some(dst)) = (f.src_addr, f.dst_addr)
            && src.addr().is_ipv4() != dst.addr().is_ipv4()
        {
            v.err(
                &p(&item, "dst_addr"),
                format!("`dst_addr` {dst} and `src_addr` {src} are of different IP versions; the filter can never match"),
                Some("use two filters, one per IP version".into()),
            );
        }
        if let Some(proto) = f.protocol
            && !PORT_PROTOCOLS.contains(&proto)
        {
            for (name, set) in [("src_ports", f.src_ports), ("dst_ports", f.dst_ports)] {
                if set.is_some() {
                    v.err(
                        &p(&item, name),
                        format!("`{name}` needs a protocol with ports (tcp, udp, sctp, dccp, udplite), but `protocol` is {proto}"),
                        None,
                    );
                }
            }
        }
    }
}

fn agent(c: &Config, v: &mut V) {
    let (Some(metrics), Some(listen)) = (c.agent.metrics_addr, c.replication.listen_addr) else {
        return;
    };
    let overlap = metrics.ip() == listen.ip()
        || metrics.ip().is_unspecified()
        || listen.ip().is_unspecified();
    if metrics.port() == listen.port() && overlap {
        v.err(
            "agent.metrics_addr",
            format!("`metrics_addr` {metrics} uses the same TCP port as `listen_addr` {listen}"),
            None,
        );
    }
}

/// A file named by the configuration that cannot be used.
pub(crate) struct FileProblem {
    /// Path of the attribute naming it (`replication.tls_cert`).
    pub attr: &'static str,
    pub file: PathBuf,
    /// Why, without the path: "`tls_cert` file cannot be read: ...".
    pub reason: String,
}

impl FileProblem {
    /// The reason with the file's path, for errors positioned in the configuration.
    pub fn located_message(&self) -> String {
        let name = leaf(self.attr);
        let rest = self
            .reason
            .strip_prefix(&format!("`{name}` file "))
            .or_else(|| self.reason.strip_prefix(&format!("`{name}` ")))
            .unwrap_or(&self.reason);
        let kind = if self.reason.starts_with(&format!("`{name}` file ")) {
            " file"
        } else {
            ""
        };
        format!(
            "`{name}`{kind} {:?} {rest}",
            self.file.display().to_string()
        )
    }
}

/// Every file named by `c` that cannot be read (TLS material) or executed (`notify_command`).
pub(crate) fn files(c: &Config) -> Vec<FileProblem> {
    let r = &c.replication;
    let mut out = Vec::new();
    for (attr, file) in [
        ("replication.tls_cert", &r.tls_cert),
        ("replication.tls_key", &r.tls_key),
        ("replication.tls_ca", &r.tls_ca),
    ] {
        if let Some(file) = file
            && let Err(e) = readable(file)
        {
            out.push(FileProblem {
                attr,
                file: file.clone(),
                reason: format!("`{}` file cannot be read: {e}", leaf(attr)),
            });
        }
    }
    if let Some(cmd) = &r.ha.notify_command {
        let reason = match std::fs::metadata(cmd) {
            Err(e) => Some(format!("`notify_command` cannot be used: {e}")),
            Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
                Some("`notify_command` is not an executable file".to_string())
            }
            Ok(_) => None,
        };
        if let Some(reason) = reason {
            out.push(FileProblem {
                attr: "replication.ha.notify_command",
                file: cmd.clone(),
                reason,
            });
        }
    }
    out
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

fn readable(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::other("it is a directory"));
    }
    Ok(())
}
