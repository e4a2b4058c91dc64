//! The typed configuration, its defaults, and the attribute reference table.
//!
//! [`REFERENCE`] is the single source of truth for attribute names, types, defaults and
//! descriptions: the parser takes the set of known attributes of each block from it (so
//! "unknown attribute" and "did you mean" come from the same list), [`super::reference`]
//! renders it as Markdown for the README, and tests check that the defaults it states are
//! the ones [`Default`] produces and that every attribute it lists is implemented.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// Port a replica dials when `primary_addr` has none (the seed's `listen_addr = ":9000"`).
pub const DEFAULT_REPLICATION_PORT: u16 = 9000;
/// Port `metrics_addr` uses when it has none.
pub const DEFAULT_METRICS_PORT: u16 = 9724;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `replication { ... }`: roles, peer, authentication, HA and conntrack sync.
    pub replication: Replication,
    /// `agent { ... }`: process-level settings (metrics, control socket, logging).
    pub agent: Agent,
}

/// The configured role of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Starts as the active node.
    Primary,
    /// Starts as the standby node.
    Replica,
    /// No HA and no replication.
    #[default]
    Standalone,
}

impl Mode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Primary => "primary",
            Mode::Replica => "replica",
            Mode::Standalone => "standalone",
        }
    }
}

/// The pre-shared key. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key (the parser enforces the minimum length; this does not).
    pub fn new(key: impl Into<String>) -> Self {
        SecretKey(key.into())
    }
    /// The key text.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The key bytes, for HMAC.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// `replication { ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replication {
    pub mode: Mode,
    /// TCP/TLS replication channel listener; `None` = no channel. ":9000" = 0.0.0.0:9000.
    pub listen_addr: Option<SocketAddr>,
    /// Where a replica dials the channel (port defaults to 9000).
    pub primary_addr: Option<SocketAddr>,
    /// The peer's IP: heartbeats and unicast sync go there.
    pub peer_addr: Option<IpAddr>,
    pub secret_key: Option<SecretKey>,
    /// During a key rotation: also accepted (never used to sign).
    pub previous_secret_key: Option<SecretKey>,
    /// Encrypt sync datagrams' payload (a key derived from `secret_key`).
    pub encrypt_sync: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_mutual: bool,
    /// `None`: derived at runtime.
    pub node_id: Option<NonZeroU32>,
    pub ha: Ha,
}

/// What happens when the preferred node comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailbackMode {
    /// Take the active role back after `failback_delay`.
    #[default]
    Auto,
    /// Stay standby until an operator moves the role.
    Manual,
}

impl FailbackMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailbackMode::Auto => "auto",
            FailbackMode::Manual => "manual",
        }
    }
}

/// `replication.ha { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ha {
    pub enabled: bool,
    /// Lower wins.
    pub priority: u8,
    pub heartbeat_interval: Duration,
    pub failure_threshold: u32,
    pub failback_mode: FailbackMode,
    pub failback_delay: Duration,
    pub heartbeat_port: u16,
    pub virtual_ips: Vec<VirtualIp>,
    pub virtual_macs: Vec<VirtualMac>,
    pub monitor_interfaces: Vec<String>,
    pub down_interfaces_before_sync: Vec<String>,
    pub garp_count: u32,
    pub garp_interval: Duration,
    pub notify_command: Option<PathBuf>,
    pub conntrack_sync: ConntrackSync,
}

impl Default for Ha {
    fn default() -> Self {
        Ha {
            enabled: false,
            // Middle of 0..=255 so either node can be made preferred without touching
            // the other one (lower wins).
            priority: 100,
            heartbeat_interval: Duration::from_secs(1),
            failure_threshold: 3,
            failback_mode: FailbackMode::Auto,
            failback_delay: Duration::from_secs(60),
            heartbeat_port: 9002,
            virtual_ips: Vec::new(),
            virtual_macs: Vec::new(),
            monitor_interfaces: Vec::new(),
            down_interfaces_before_sync: Vec::new(),
            // keepalived's default is 5 at 0 s gap; 3 spaced 200 ms apart survive a switch
            // that drops the first frames while it relearns the MAC.
            garp_count: 3,
            garp_interval: Duration::from_millis(200),
            notify_command: None,
            conntrack_sync: ConntrackSync::default(),
        }
    }
}

/// `virtual_ip { ... }` (repeatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualIp {
    /// Address with prefix length, as added to the interface.
    pub address: IpNet,
    pub interface: String,
    pub label: Option<String>,
}

/// `virtual_mac { ... }` (repeatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualMac {
    /// `None`: a locally administered MAC is derived at runtime.
    pub address: Option<[u8; 6]>,
    pub interface: String,
    pub dhcp: bool,
}

/// `replication.ha.conntrack_sync { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackSync {
    pub enabled: bool,
    /// `None`: the interface of the route to `peer_addr`.
    pub interface: Option<String>,
    /// `None` (`multicast_group = ""`): unicast to `peer_addr`.
    pub multicast_group: Option<Ipv4Addr>,
    pub port: u16,
    pub expect_sync: bool,
    /// This node's address on the sync link, with prefix (seed 001 "Current IP").
    pub local_addr: Option<IpNet>,
    pub send_buffer_size: u32,
    pub receive_buffer_size: u32,
    pub max_datagram_size: u16,
    pub ring_buffer_size: u32,
    pub dedup_table_size: u32,
    /// From `wakeup_min_gap_us`.
    pub wakeup_min_gap: Duration,
    /// SCHED_FIFO priority of the data-path threads; 0 = normal scheduling.
    pub realtime_priority: u8,
    /// From `sync_delay_ms`; zero = sync at once.
    pub sync_delay: Duration,
    /// From `consistency_check_s`: how often each node sends the digest of the entries
    /// it owns so the peer repairs what differs; zero = only after losses.
    pub consistency_check: Duration,
    /// Include filters are OR-ed; an exclude filter that matches always wins.
    pub filters: Vec<SyncFilter>,
}

impl Default for ConntrackSync {
    fn default() -> Self {
        ConntrackSync {
            enabled: false,
            interface: None,
            multicast_group: Some(Ipv4Addr::new(225, 0, 0, 50)),
            port: 3780,
            expect_sync: false,
            local_addr: None,
            // Seed 001's 64 KiB holds ~8 ms of sync traffic at 200k events/s x ~40 bytes;
            // a 100 ms scheduling hiccup needs ~1 MB, hence 16 MiB receive / 4 MiB send
            // (the sender drains its own socket, the receiver is the one that stalls).
            send_buffer_size: 4 << 20,
            receive_buffer_size: 16 << 20,
            // 1500-byte Ethernet MTU - 20 (IPv4) - 8 (UDP): no fragmentation.
            max_datagram_size: 1472,
            // 16 MiB of ~64-byte records = ~250k events of slack before the eBPF side
            // drops, i.e. > 1 s at 200k events/s.
            ring_buffer_size: 16 << 20,
            dedup_table_size: 262_144,
            // Waking the reader per event costs more than the event; 50 us batches
            // ~10 events at 200k/s while adding latency far below one heartbeat.
            wakeup_min_gap: Duration::from_micros(100),
            realtime_priority: 0,
            sync_delay: Duration::ZERO,
            // conntrackd's periodic resync is off by default; a digest of 256 hashes
            // every minute costs ~2 KB and bounds how long a lost deletion survives.
            consistency_check: Duration::from_secs(60),
            filters: Vec::new(),
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

/// `filter { ... }` inside `conntrack_sync` (repeatable). All set criteria must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncFilter {
    pub src_interface: Option<String>,
    pub dst_interface: Option<String>,
    pub src_addr: Option<IpNet>,
    pub dst_addr: Option<IpNet>,
    /// IP protocol number.
    pub protocol: Option<u8>,
    pub src_ports: Option<PortRange>,
    pub dst_ports: Option<PortRange>,
    /// True: matching connections are not synchronised.
    pub exclude: bool,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The configuration spelling, also a valid `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `agent { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Prometheus listener; `None` = disabled.
    pub metrics_addr: Option<SocketAddr>,
    pub control_socket: PathBuf,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            // Loopback: metrics reveal topology and traffic; expose them on purpose.
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))),
            control_socket: PathBuf::from("/run/hasync/hasync.sock"),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
        }
    }
}

/// A block of the schema.
#[derive(Debug, Clone, Copy)]
pub struct BlockDoc {
    /// Dotted path from the top level, e.g. `replication.ha.virtual_ip`.
    pub path: &'static str,
    /// May appear more than once.
    pub repeatable: bool,
    pub description: &'static str,
}

/// An attribute of the schema.
#[derive(Debug, Clone, Copy)]
pub struct AttrDoc {
    /// Path of the enclosing block.
    pub block: &'static str,
    pub name: &'static str,
    /// Human type, e.g. "number (seconds)".
    pub ty: &'static str,
    /// The default as an HCL literal; `None` when unset by default.
    pub default: Option<&'static str>,
    /// `true` when the attribute must be present.
    pub required: bool,
    /// A valid HCL literal for this attribute (used by tests to build a full config).
    pub example: &'static str,
    pub description: &'static str,
}

/// Every block, parents before children.
pub static BLOCKS: &[BlockDoc] = &[
    BlockDoc {
        path: "replication",
        repeatable: false,
        description: "Roles, peer, authentication and the replication channel.",
    },
    BlockDoc {
        path: "replication.ha",
        repeatable: false,
        description: "High availability: heartbeats, failover, virtual addresses.",
    },
    BlockDoc {
        path: "replication.ha.virtual_ip",
        repeatable: true,
        description: "A virtual IP moved to the active node (LAN-side gateway address).",
    },
    BlockDoc {
        path: "replication.ha.virtual_mac",
        repeatable: true,
        description: "A virtual MAC moved to the active node (DHCP-assigned WAN interfaces).",
    },
    BlockDoc {
        path: "replication.ha.conntrack_sync",
        repeatable: false,
        description: "Connection-state replication to the peer.",
    },
    BlockDoc {
        path: "replication.ha.conntrack_sync.filter",
        repeatable: true,
        description: "Selects connections to synchronise. Without include filters everything \
                      is synchronised; with some, a connection must match at least one. A \
                      matching `exclude = true` filter always wins. Within one filter all set \
                      criteria must match.",
    },
    BlockDoc {
        path: "agent",
        repeatable: false,
        description: "Process settings: metrics, control socket, logging.",
    },
];

const R: &str = "replication";
const H: &str = "replication.ha";
const VIP: &str = "replication.ha.virtual_ip";
const VMAC: &str = "replication.ha.virtual_mac";
const CS: &str = "replication.ha.conntrack_sync";
const F: &str = "replication.ha.conntrack_sync.filter";
const A: &str = "agent";

macro_rules! attr {
    ($block:expr, $name:literal, $ty:literal, $default:expr, $required:literal, $example:literal, $desc:literal) => {
        AttrDoc {
            block: $block,
            name: $name,
            ty: $ty,
            default: $default,
            required: $required,
            example: $example,
            description: $desc,
        }
    };
}

/// Every attribute, grouped by block in [`BLOCKS`] order.
#[rustfmt::skip]
pub static REFERENCE: &[AttrDoc] = &[
    attr!(R, "mode", "string", Some("\"standalone\""), false, "\"replica\"",
        "\"primary\", \"replica\" or \"standalone\" (no HA, no replication)."),
    attr!(R, "listen_addr", "string", None, false, "\":9000\"",
        "TCP/TLS replication channel listener, \"ip:port\" or \":port\" (= 0.0.0.0; write \"[::]:port\" for IPv6). Unset or \"\" = no channel."),
    attr!(R, "primary_addr", "string", None, false, "\"10.250.0.1:9000\"",
        "Replica mode only: the primary's channel address, \"ip[:port]\" (port 9000 by default). Required in replica mode when TLS is configured. No host names: failover must not depend on DNS."),
    attr!(R, "peer_addr", "string", None, false, "\"10.250.0.1\"",
        "The peer's IP (v4 or v6): heartbeats and unicast sync go there. Required when `ha.enabled`, or for unicast sync."),
    attr!(R, "secret_key", "string", None, false, "\"lab-secret-please-change\"",
        "Pre-shared key authenticating heartbeats and sync messages; at least 8 characters, identical on both nodes. Required when HA or sync is enabled."),
    attr!(R, "previous_secret_key", "string", None, false, "\"old-lab-secret\"",
        "Key rotation: messages signed with this older key are still accepted (this node signs with `secret_key` only). Set the new `secret_key` plus the old one here on each node in turn, then remove this."),
    attr!(R, "encrypt_sync", "bool", Some("false"), false, "true",
        "Encrypt the payload of every sync datagram (AES-256-GCM-SIV, key derived from `secret_key`, header authenticated) so the connection table is not readable on the sync link. Datagrams are authenticated either way, and both forms are accepted from the peer, so it can be turned on one node at a time."),
    attr!(R, "tls_cert", "string (path)", None, false, "\"/etc/hasync/tls/node.pem\"",
        "PEM certificate for the replication channel; needs `tls_key`."),
    attr!(R, "tls_key", "string (path)", None, false, "\"/etc/hasync/tls/node.key\"",
        "PEM private key for `tls_cert`."),
    attr!(R, "tls_ca", "string (path)", None, false, "\"/etc/hasync/tls/ca.pem\"",
        "PEM CA bundle used to verify the peer's certificate."),
    attr!(R, "tls_mutual", "bool", Some("false"), false, "true",
        "Require and verify a client certificate (needs `tls_ca`, `tls_cert`, `tls_key`)."),
    attr!(R, "node_id", "number", None, false, "2",
        "Node identifier (1..4294967295) in sync messages; unset = derived at runtime."),

    attr!(H, "enabled", "bool", Some("false"), false, "true",
        "Enables heartbeats and failover (needs mode \"primary\" or \"replica\")."),
    attr!(H, "priority", "number", Some("100"), false, "50",
        "0..255, lower wins. The default sits mid-range so either node can be preferred."),
    attr!(H, "heartbeat_interval", "number (seconds)", Some("1"), false, "0.5",
        "Seconds between heartbeats, fractions allowed; > 0 and <= 60."),
    attr!(H, "failure_threshold", "number", Some("3"), false, "4",
        "Missed heartbeats before the peer is declared dead (1..100). interval x threshold must lie between 0.3 s and 300 s."),
    attr!(H, "failback_mode", "string", Some("\"auto\""), false, "\"manual\"",
        "\"auto\": the preferred node takes the active role back after `failback_delay`; \"manual\": it stays standby."),
    attr!(H, "failback_delay", "number (seconds)", Some("60"), false, "120",
        "Seconds to wait before an automatic failback (0..86400)."),
    attr!(H, "heartbeat_port", "number", Some("9002"), false, "9003",
        "UDP port for heartbeats (1..65535)."),
    attr!(H, "monitor_interfaces", "list of strings", Some("[]"), false, "[\"eth0\", \"eth1\"]",
        "Interfaces whose link loss demotes this node (CARP-style)."),
    attr!(H, "down_interfaces_before_sync", "list of strings", Some("[]"), false, "[\"eth1\"]",
        "Interfaces held down on a newly started node until the initial session sync completes (FGSP `down_intfs_before_sess_sync`). Needs conntrack_sync."),
    attr!(H, "garp_count", "number", Some("3"), false, "5",
        "Gratuitous ARPs / unsolicited NAs sent per virtual IP after takeover (0..100, 0 = none)."),
    attr!(H, "garp_interval", "number (seconds)", Some("0.2"), false, "0.1",
        "Seconds between gratuitous ARPs; > 0 and <= 10."),
    attr!(H, "notify_command", "string (path)", None, false, "\"/usr/local/bin/on-role-change\"",
        "Absolute path of a program run on every role change."),

    attr!(VIP, "address", "string (CIDR)", None, true, "\"192.168.1.1/24\"",
        "Virtual IP with prefix length, e.g. \"192.168.1.1/24\"."),
    attr!(VIP, "interface", "string", None, true, "\"eth1\"",
        "Interface the address is added to."),
    attr!(VIP, "label", "string", None, false, "\"eth1:vip\"",
        "Address label; must start with the interface name, at most 15 characters."),

    attr!(VMAC, "address", "string (MAC)", None, false, "\"02:00:5e:00:00:01\"",
        "Unicast MAC \"xx:xx:xx:xx:xx:xx\"; unset = a locally administered MAC derived at runtime."),
    attr!(VMAC, "interface", "string", None, true, "\"eth0\"",
        "Interface the MAC is applied to."),
    attr!(VMAC, "dhcp", "bool", Some("false"), false, "true",
        "The interface uses DHCP: the new active node renews the lease after takeover."),

    attr!(CS, "enabled", "bool", Some("false"), false, "true",
        "Enables connection-state replication (needs mode \"primary\" or \"replica\")."),
    attr!(CS, "interface", "string", None, false, "\"sync0\"",
        "Sync interface; unset = the interface of the route to `peer_addr`."),
    attr!(CS, "multicast_group", "string", Some("\"225.0.0.50\""), false, "\"225.0.0.51\"",
        "IPv4 multicast group; \"\" = unicast to `peer_addr`."),
    attr!(CS, "port", "number", Some("3780"), false, "3781",
        "UDP port for sync traffic (1..65535)."),
    attr!(CS, "expect_sync", "bool", Some("false"), false, "true",
        "Also replicate expectations (FTP, SIP and other ALG helpers)."),
    attr!(CS, "local_addr", "string (CIDR)", None, false, "\"10.250.0.2/24\"",
        "This node's address on the sync link with prefix; `peer_addr` must be in that subnet."),
    attr!(CS, "send_buffer_size", "number (bytes)", Some("4194304"), false, "8388608",
        "Socket send buffer (4096..1073741824)."),
    attr!(CS, "receive_buffer_size", "number (bytes)", Some("16777216"), false, "33554432",
        "Socket receive buffer (4096..1073741824)."),
    attr!(CS, "max_datagram_size", "number (bytes)", Some("1472"), false, "8972",
        "Largest sync datagram payload (512..65507); 1472 fits a 1500-byte MTU."),
    attr!(CS, "ring_buffer_size", "number (bytes)", Some("16777216"), false, "33554432",
        "eBPF ring buffer size: a power of two, 4096..1073741824."),
    attr!(CS, "dedup_table_size", "number", Some("262144"), false, "524288",
        "Entries of the eBPF de-duplication LRU table (1024..16777216)."),
    attr!(CS, "wakeup_min_gap_us", "number (microseconds)", Some("100"), false, "200",
        "Minimum gap between reader wake-ups: under load the agent reads captured changes this often, an idle agent at once (0..1000000; below 10 counts as 10)."),
    attr!(CS, "realtime_priority", "number", Some("0"), false, "10",
        "SCHED_FIFO priority (1..99) of the two data-path threads (capture and send, receive and install); 0 = normal scheduling. Cuts latency tails when the CPUs are busy, at the expense of the traffic those CPUs carry (conntrackd's `Scheduler`)."),
    attr!(CS, "sync_delay_ms", "number (milliseconds)", Some("0"), false, "5000",
        "Only sync connections older than this (FortiGate session-pickup-delay); 0 = off, max 3600000."),
    attr!(CS, "consistency_check_s", "number (seconds)", Some("60"), false, "30",
        "Period of the table digest each node sends so the peer repairs entries that differ (lost deletions included); 0 = only after losses, max 86400."),

    attr!(F, "src_interface", "string", None, false, "\"eth1\"",
        "Ingress interface."),
    attr!(F, "dst_interface", "string", None, false, "\"eth0\"",
        "Egress interface."),
    attr!(F, "src_addr", "string (CIDR or IP)", None, false, "\"10.1.0.0/16\"",
        "Source network (IPv4 or IPv6); a bare IP means one host."),
    attr!(F, "dst_addr", "string (CIDR or IP)", None, false, "\"0.0.0.0/0\"",
        "Destination network (IPv4 or IPv6); a bare IP means one host."),
    attr!(F, "protocol", "string or number", None, false, "\"tcp\"",
        "\"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"sctp\", \"dccp\", \"udplite\", \"gre\", \"esp\", \"ah\" or a number 0..255."),
    attr!(F, "src_ports", "string or number", None, false, "\"1024-65535\"",
        "Source port or range \"low-high\" (tcp, udp, sctp, dccp, udplite)."),
    attr!(F, "dst_ports", "string or number", None, false, "\"443\"",
        "Destination port or range \"low-high\"."),
    attr!(F, "exclude", "bool", Some("false"), false, "false",
        "true: connections matching this filter are never synchronised."),

    attr!(A, "metrics_addr", "string", Some("\"127.0.0.1:9724\""), false, "\"127.0.0.1:9725\"",
        "Prometheus listener \"ip[:port]\" (port 9724 by default); \"\" disables."),
    attr!(A, "control_socket", "string (path)", Some("\"/run/hasync/hasync.sock\""), false, "\"/run/hasync/ctl.sock\"",
        "Unix control socket; absolute path, at most 107 bytes."),
    attr!(A, "log_level", "string", Some("\"info\""), false, "\"debug\"",
        "\"trace\", \"debug\", \"info\", \"warn\" or \"error\"."),
    attr!(A, "log_format", "string", Some("\"text\""), false, "\"json\"",
        "\"text\" or \"json\"."),
];

/// The attributes of one block.
pub(crate) fn attrs_of(block: &str) -> impl Iterator<Item = &'static AttrDoc> + '_ {
    REFERENCE.iter().filter(move |a| a.block == block)
}

/// The direct child blocks of one block (`""` = top level).
pub(crate) fn children_of(block: &str) -> impl Iterator<Item = &'static BlockDoc> + '_ {
    BLOCKS.iter().filter(move |b| parent(b.path) == block)
}

pub(crate) fn parent(path: &str) -> &str {
    path.rfind('.').map_or("", |i| &path[..i])
}

/// Last path component: `replication.ha` -> `ha`.
pub(crate) fn leaf(path: &str) -> &str {
    path.rfind('.').map_or(path, |i| &path[i + 1..])
}

/// Renders [`BLOCKS`] and [`REFERENCE`] as Markdown (level-3 headings: it is embedded
/// in the README under "Configuration reference").
pub(crate) fn render_reference() -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for b in BLOCKS {
        let _ = write!(
            s,
            "\n### `{}`{}\n\n{}\n\n| Attribute | Type | Default | Description |\n|---|---|---|---|\n",
            b.path,
            if b.repeatable { " (repeatable)" } else { "" },
            b.description
        );
        for a in attrs_of(b.path) {
            let default = match (a.required, a.default) {
                (true, _) => "required".to_string(),
                (false, Some(d)) => format!("`{d}`"),
                (false, None) => "unset".to_string(),
            };
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} |",
                a.name,
                a.ty,
                default,
                a.description.replace('|', "\\|")
            );
        }
    }
    s
}
