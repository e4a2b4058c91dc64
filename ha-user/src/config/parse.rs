//! HCL AST (hcl-edit, with spans) -> typed [`Config`], driven by the schema table.
//!
//! Each block is opened with [`Cx::open`], which sorts its body into known attributes and
//! known child blocks (reporting unknown, misplaced and duplicate ones), then the block's
//! walker takes every attribute by name through a converter from [`conv`]. A converter
//! failure becomes an error at the value's span and marks the attribute bad, so the
//! cross-field checks in `validate` stay quiet about it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::Range;

use hcl_edit::Span as _;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Attribute, Block, Body, Structure};

use super::conv;
use super::error::{Diag, Locations, Problem, suggest};
use super::schema::{
    self, Agent, Config, ConntrackSync, DEFAULT_METRICS_PORT, DEFAULT_REPLICATION_PORT,
    FailbackMode, Ha, LogFormat, LogLevel, Mode, Replication, SecretKey, SyncFilter, VirtualIp,
    VirtualMac,
};

/// Names used by the systems hasync replaces, mapped to ours (hint only).
const ALIASES: &[(&str, &str)] = &[
    ("srcintf", "src_interface"),
    ("dstintf", "dst_interface"),
    ("srcaddr", "src_addr"),
    ("dstaddr", "dst_addr"),
    ("srcaddr6", "src_addr"),
    ("dstaddr6", "dst_addr"),
    ("src_port_range", "src_ports"),
    ("dst_port_range", "dst_ports"),
    ("peerip", "peer_addr"),
    ("hb_interval", "heartbeat_interval"),
    ("hb_lost_threshold", "failure_threshold"),
    ("down_intfs_before_sess_sync", "down_interfaces_before_sync"),
    ("preempt", "failback_mode"),
    ("session_sync_filter", "filter"),
];

/// Parser state: errors and source locations.
pub(crate) struct Cx<'s> {
    pub diag: Diag<'s>,
    pub locs: Locations,
    /// Duplicate attribute keys the parser front end renamed: key offset -> real name.
    pub renamed: HashMap<usize, String>,
}

/// The known content of one block instance.
struct Fields<'a> {
    /// Schema path (`replication.ha.virtual_ip`).
    schema: &'static str,
    /// Instance path (`replication.ha.virtual_ip[1]`).
    path: String,
    header: Option<Range<usize>>,
    attrs: Vec<(&'a Attribute, bool)>,
    blocks: Vec<&'a Block>,
}

fn join(parent: &str, leaf: &str) -> String {
    if parent.is_empty() {
        leaf.to_string()
    } else {
        format!("{parent}.{leaf}")
    }
}

fn where_(schema_path: &str) -> String {
    if schema_path.is_empty() {
        "at top level".to_string()
    } else {
        format!("in block `{}`", schema::leaf(schema_path))
    }
}

impl<'s> Cx<'s> {
    pub fn new(file: &'s str, src: &'s str) -> Self {
        Cx {
            diag: Diag::new(file, src),
            locs: Locations::default(),
            renamed: HashMap::new(),
        }
    }

    fn open<'a>(
        &mut self,
        body: &'a Body,
        schema_path: &'static str,
        path: String,
        header: Option<Range<usize>>,
    ) -> Fields<'a> {
        self.locs.set(path.clone(), header.clone());
        let attr_names: Vec<&'static str> = schema::attrs_of(schema_path).map(|a| a.name).collect();
        let block_names: Vec<&'static str> = schema::children_of(schema_path)
            .map(|b| schema::leaf(b.path))
            .collect();
        let mut fields = Fields {
            schema: schema_path,
            path,
            header,
            attrs: Vec::new(),
            blocks: Vec::new(),
        };
        let mut first: HashMap<&str, Option<Range<usize>>> = HashMap::new();
        for s in body.iter() {
            match s {
                Structure::Attribute(a) => {
                    let renamed = a.key.span().and_then(|s| self.renamed.get(&s.start));
                    let name = renamed.map_or(a.key.as_str(), String::as_str);
                    if attr_names.contains(&name) {
                        if let Some(prev) = first.get(name) {
                            let hint =
                                format!("first set at {}; remove one", self.diag.pos_str(prev));
                            self.diag.error(
                                a.key.span(),
                                format!("duplicate attribute `{name}` {}", where_(schema_path)),
                                Some(hint),
                            );
                            self.locs.mark_bad(join(&fields.path, name));
                        } else {
                            first.insert(name, a.key.span());
                            fields.attrs.push((a, false));
                        }
                    } else if block_names.contains(&name) {
                        self.diag.error(
                            a.key.span(),
                            format!("`{name}` is a block, not an attribute"),
                            Some(format!("write `{name} {{ ... }}` without `=`")),
                        );
                    } else {
                        let hint = unknown_hint(name, &attr_names, schema_path, false);
                        self.diag.error(
                            a.key.span(),
                            format!("unknown attribute `{name}` {}", where_(schema_path)),
                            hint,
                        );
                    }
                }
                Structure::Block(b) => {
                    let name = b.ident.as_str();
                    if block_names.contains(&name) {
                        if let Some(label) = b.labels.first() {
                            self.diag.error(
                                label.span(),
                                format!("block `{name}` takes no labels"),
                                Some(format!("write `{name} {{ ... }}`")),
                            );
                        }
                        fields.blocks.push(b);
                    } else if attr_names.contains(&name) {
                        self.diag.error(
                            b.ident.span(),
                            format!("`{name}` is an attribute, not a block"),
                            Some(format!("write `{name} = ...`")),
                        );
                    } else {
                        let hint = unknown_hint(name, &block_names, schema_path, true);
                        self.diag.error(
                            b.ident.span(),
                            format!("unknown block `{name}` {}", where_(schema_path)),
                            hint,
                        );
                    }
                }
            }
        }
        fields
    }
}

/// "did you mean", else "belongs in block", else the list of valid names.
fn unknown_hint(name: &str, known: &[&'static str], here: &str, is_block: bool) -> Option<String> {
    if let Some(&(_, to)) = ALIASES.iter().find(|(from, _)| *from == name)
        && known.contains(&to)
    {
        return Some(format!("did you mean `{to}`?"));
    }
    if let Some(s) = suggest(name, known.iter().copied()) {
        return Some(format!("did you mean `{s}`?"));
    }
    let elsewhere = if is_block {
        schema::BLOCKS
            .iter()
            .find(|b| schema::leaf(b.path) == name && schema::parent(b.path) != here)
            .map(|b| schema::parent(b.path))
    } else {
        schema::REFERENCE
            .iter()
            .find(|a| a.name == name && a.block != here)
            .map(|a| a.block)
    };
    if let Some(parent) = elsewhere {
        return Some(if parent.is_empty() {
            format!("`{name}` belongs at top level")
        } else {
            format!("`{name}` belongs in block `{}`", schema::leaf(parent))
        });
    }
    if known.is_empty() {
        None
    } else {
        let kind = if is_block { "blocks" } else { "attributes" };
        Some(format!("valid {kind}: {}", known.join(", ")))
    }
}

impl<'a> Fields<'a> {
    /// The attribute's value, `None` when absent or `null`. Records its location.
    fn take(&mut self, cx: &mut Cx, name: &str) -> Option<&'a Expression> {
        let (attr, taken) = self
            .attrs
            .iter_mut()
            .find(|(a, _)| a.key.as_str() == name)?;
        *taken = true;
        let attr: &'a Attribute = attr;
        cx.locs.set(join(&self.path, name), attr.value.span());
        if attr.value.is_null() {
            None
        } else {
            Some(&attr.value)
        }
    }

    /// Converts attribute `name` with `conv`; on failure reports it and returns `None`.
    fn get<T>(
        &mut self,
        cx: &mut Cx,
        name: &'static str,
        conv: impl FnOnce(&'static str, &Expression) -> Result<T, Problem>,
    ) -> Option<T> {
        let e = self.take(cx, name)?;
        match conv(name, e) {
            Ok(v) => Some(v),
            Err(p) => {
                cx.diag.problem(e.span(), p);
                cx.locs.mark_bad(join(&self.path, name));
                None
            }
        }
    }

    /// Reports a required attribute that is absent (not one that was present but bad).
    fn require<T>(&self, cx: &mut Cx, name: &str, v: Option<T>) -> Option<T> {
        if v.is_none() && !cx.locs.is_bad(&join(&self.path, name)) {
            let example = schema::attrs_of(self.schema)
                .find(|a| a.name == name)
                .map(|a| format!("e.g. {name} = {}", a.example));
            cx.diag.error(
                self.header.clone(),
                format!(
                    "block `{}` is missing required attribute `{name}`",
                    schema::leaf(self.schema)
                ),
                example,
            );
        }
        v
    }

    /// All instances of a repeatable child block.
    fn blocks(&self, name: &str) -> Vec<&'a Block> {
        self.blocks
            .iter()
            .copied()
            .filter(|b| b.ident.as_str() == name)
            .collect()
    }

    /// The one instance of a non-repeatable child block; later ones are errors.
    fn single(&self, cx: &mut Cx, name: &str) -> Option<&'a Block> {
        let all = self.blocks(name);
        let first = *all.first()?;
        for dup in &all[1..] {
            let hint = format!(
                "first at {}; merge them",
                cx.diag.pos_str(&first.ident.span())
            );
            cx.diag.error(
                dup.ident.span(),
                format!("duplicate block `{name}` {}", where_(self.schema)),
                Some(hint),
            );
        }
        Some(first)
    }

    /// Every documented attribute must have been taken by the walker.
    fn finish(self, cx: &mut Cx) {
        for (a, taken) in self.attrs {
            if !taken {
                cx.diag.error(
                    a.key.span(),
                    format!(
                        "internal error: attribute `{}` is documented but not implemented",
                        a.key.as_str()
                    ),
                    None,
                );
            }
        }
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn child_path(schema_path: &'static str, leaf: &str) -> &'static str {
    schema::BLOCKS
        .iter()
        .map(|b| b.path)
        .find(|p| schema::parent(p) == schema_path && schema::leaf(p) == leaf)
        .unwrap_or("")
}

/// Walks the whole file.
pub(crate) fn walk(cx: &mut Cx, body: &Body) -> Config {
    let f = cx.open(body, "", String::new(), None);
    let mut c = Config::default();
    if let Some(b) = f.single(cx, "replication") {
        c.replication = replication(cx, b);
    }
    if let Some(b) = f.single(cx, "agent") {
        c.agent = agent(cx, b);
    }
    f.finish(cx);
    c
}

fn open_block<'a>(
    cx: &mut Cx,
    b: &'a Block,
    schema_path: &'static str,
    path: String,
) -> Fields<'a> {
    cx.open(&b.body, schema_path, path, b.ident.span())
}

fn replication(cx: &mut Cx, b: &Block) -> Replication {
    let mut f = open_block(cx, b, "replication", "replication".into());
    let mut r = Replication::default();
    set(
        &mut r.mode,
        f.get(cx, "mode", |n, e| conv::one_of(n, e, MODES, MODE_ALIASES)),
    );
    r.listen_addr = f
        .get(cx, "listen_addr", |n, e| {
            conv::socket(n, e, DEFAULT_REPLICATION_PORT)
        })
        .flatten();
    r.primary_addr = f
        .get(cx, "primary_addr", |n, e| {
            conv::socket(n, e, DEFAULT_REPLICATION_PORT)
        })
        .flatten();
    r.peer_addr = f.get(cx, "peer_addr", conv::ip);
    r.secret_key = f.get(cx, "secret_key", conv::secret).map(SecretKey::new);
    r.previous_secret_key = f
        .get(cx, "previous_secret_key", conv::secret)
        .map(SecretKey::new);
    set(
        &mut r.encrypt_sync,
        f.get(cx, "encrypt_sync", conv::boolean),
    );
    r.tls_cert = f.get(cx, "tls_cert", conv::abs_path);
    r.tls_key = f.get(cx, "tls_key", conv::abs_path);
    r.tls_ca = f.get(cx, "tls_ca", conv::abs_path);
    set(&mut r.tls_mutual, f.get(cx, "tls_mutual", conv::boolean));
    r.node_id = f
        .get(cx, "node_id", |n, e| {
            conv::uint(n, e, 1, u64::from(u32::MAX))
        })
        .and_then(|v| u32::try_from(v).ok())
        .and_then(NonZeroU32::new);
    if let Some(hb) = f.single(cx, "ha") {
        r.ha = ha(cx, hb);
    }
    f.finish(cx);
    r
}

const MODES: &[(&str, Mode)] = &[
    ("primary", Mode::Primary),
    ("replica", Mode::Replica),
    ("standalone", Mode::Standalone),
];
const MODE_ALIASES: &[(&str, &str)] = &[
    ("master", "primary"),
    ("active", "primary"),
    ("slave", "replica"),
    ("backup", "replica"),
    ("secondary", "replica"),
    ("standby", "replica"),
    ("passive", "replica"),
    ("none", "standalone"),
];

fn ha(cx: &mut Cx, b: &Block) -> Ha {
    const P: &str = "replication.ha";
    let mut f = open_block(cx, b, P, P.into());
    let mut h = Ha::default();
    set(&mut h.enabled, f.get(cx, "enabled", conv::boolean));
    set(
        &mut h.priority,
        f.get(cx, "priority", |n, e| conv::uint(n, e, 0, 255))
            .and_then(|v| u8::try_from(v).ok()),
    );
    set(
        &mut h.heartbeat_interval,
        f.get(cx, "heartbeat_interval", |n, e| {
            conv::seconds(n, e, false, 60.0)
        }),
    );
    set(
        &mut h.failure_threshold,
        f.get(cx, "failure_threshold", |n, e| conv::uint(n, e, 1, 100))
            .and_then(|v| u32::try_from(v).ok()),
    );
    set(
        &mut h.failback_mode,
        f.get(cx, "failback_mode", |n, e| {
            conv::one_of(
                n,
                e,
                &[
                    ("auto", FailbackMode::Auto),
                    ("manual", FailbackMode::Manual),
                ],
                &[("true", "auto"), ("false", "manual"), ("preempt", "auto")],
            )
        }),
    );
    set(
        &mut h.failback_delay,
        f.get(cx, "failback_delay", |n, e| {
            conv::seconds(n, e, true, 86_400.0)
        }),
    );
    set(
        &mut h.heartbeat_port,
        f.get(cx, "heartbeat_port", conv::port),
    );
    set(
        &mut h.monitor_interfaces,
        f.get(cx, "monitor_interfaces", conv::iface_list),
    );
    set(
        &mut h.down_interfaces_before_sync,
        f.get(cx, "down_interfaces_before_sync", conv::iface_list),
    );
    set(
        &mut h.garp_count,
        f.get(cx, "garp_count", |n, e| conv::uint(n, e, 0, 100))
            .and_then(|v| u32::try_from(v).ok()),
    );
    set(
        &mut h.garp_interval,
        f.get(cx, "garp_interval", |n, e| conv::seconds(n, e, false, 10.0)),
    );
    h.notify_command = f.get(cx, "notify_command", conv::abs_path);
    for (i, vb) in f.blocks("virtual_ip").into_iter().enumerate() {
        let path = format!("{P}.virtual_ip[{i}]");
        if let Some(v) = virtual_ip(cx, vb, path.clone()) {
            cx.locs.push_item(child_path(P, "virtual_ip"), path);
            h.virtual_ips.push(v);
        }
    }
    for (i, vb) in f.blocks("virtual_mac").into_iter().enumerate() {
        let path = format!("{P}.virtual_mac[{i}]");
        if let Some(v) = virtual_mac(cx, vb, path.clone()) {
            cx.locs.push_item(child_path(P, "virtual_mac"), path);
            h.virtual_macs.push(v);
        }
    }
    if let Some(cb) = f.single(cx, "conntrack_sync") {
        h.conntrack_sync = conntrack_sync(cx, cb);
    }
    f.finish(cx);
    h
}

fn virtual_ip(cx: &mut Cx, b: &Block, path: String) -> Option<VirtualIp> {
    let mut f = open_block(cx, b, "replication.ha.virtual_ip", path);
    let address = f.get(cx, "address", |n, e| {
        conv::cidr(n, e, "replication.ha.virtual_ip")
    });
    let interface = f.get(cx, "interface", conv::iface);
    let label = f.get(cx, "label", conv::string);
    let address = f.require(cx, "address", address);
    let interface = f.require(cx, "interface", interface);
    f.finish(cx);
    Some(VirtualIp {
        address: address?,
        interface: interface?,
        label,
    })
}

fn virtual_mac(cx: &mut Cx, b: &Block, path: String) -> Option<VirtualMac> {
    let mut f = open_block(cx, b, "replication.ha.virtual_mac", path);
    let address = f.get(cx, "address", conv::mac);
    let interface = f.get(cx, "interface", conv::iface);
    let dhcp = f.get(cx, "dhcp", conv::boolean).unwrap_or(false);
    let interface = f.require(cx, "interface", interface);
    f.finish(cx);
    Some(VirtualMac {
        address: address.flatten(),
        interface: interface?,
        dhcp,
    })
}

fn conntrack_sync(cx: &mut Cx, b: &Block) -> ConntrackSync {
    const P: &str = "replication.ha.conntrack_sync";
    let mut f = open_block(cx, b, P, P.into());
    let mut s = ConntrackSync::default();
    set(&mut s.enabled, f.get(cx, "enabled", conv::boolean));
    s.interface = f.get(cx, "interface", conv::iface);
    set(
        &mut s.multicast_group,
        f.get(cx, "multicast_group", conv::multicast),
    );
    set(&mut s.port, f.get(cx, "port", conv::port));
    set(&mut s.expect_sync, f.get(cx, "expect_sync", conv::boolean));
    s.local_addr = f.get(cx, "local_addr", |n, e| conv::cidr(n, e, P));
    let bytes = |n, e: &Expression| conv::uint(n, e, 4096, 1 << 30);
    set(
        &mut s.send_buffer_size,
        f.get(cx, "send_buffer_size", bytes)
            .and_then(|v| u32::try_from(v).ok()),
    );
    set(
        &mut s.receive_buffer_size,
        f.get(cx, "receive_buffer_size", bytes)
            .and_then(|v| u32::try_from(v).ok()),
    );
    set(
        &mut s.max_datagram_size,
        f.get(cx, "max_datagram_size", |n, e| {
            conv::uint(n, e, 512, 65_507)
        })
        .and_then(|v| u16::try_from(v).ok()),
    );
    set(
        &mut s.ring_buffer_size,
        f.get(cx, "ring_buffer_size", |n, e| {
            conv::pow2(n, e, 4096, 1 << 30)
        })
        .and_then(|v| u32::try_from(v).ok()),
    );
    set(
        &mut s.dedup_table_size,
        f.get(cx, "dedup_table_size", |n, e| {
            conv::uint(n, e, 1024, 1 << 24)
        })
        .and_then(|v| u32::try_from(v).ok()),
    );
    set(
        &mut s.wakeup_min_gap,
        f.get(cx, "wakeup_min_gap_us", |n, e| {
            conv::uint(n, e, 0, 1_000_000)
        })
        .map(std::time::Duration::from_micros),
    );
    set(
        &mut s.realtime_priority,
        f.get(cx, "realtime_priority", |n, e| conv::uint(n, e, 0, 99))
            .and_then(|v| u8::try_from(v).ok()),
    );
    set(
        &mut s.sync_delay,
        f.get(cx, "sync_delay_ms", |n, e| conv::uint(n, e, 0, 3_600_000))
            .map(std::time::Duration::from_millis),
    );
    set(
        &mut s.consistency_check,
        f.get(cx, "consistency_check_s", |n, e| {
            conv::uint(n, e, 0, 86_400)
        })
        .map(std::time::Duration::from_secs),
    );
    for (i, fb) in f.blocks("filter").into_iter().enumerate() {
        let path = format!("{P}.filter[{i}]");
        let filter = sync_filter(cx, fb, path.clone());
        cx.locs.push_item(child_path(P, "filter"), path);
        s.filters.push(filter);
    }
    f.finish(cx);
    s
}

fn sync_filter(cx: &mut Cx, b: &Block, path: String) -> SyncFilter {
    let mut f = open_block(cx, b, "replication.ha.conntrack_sync.filter", path);
    let filter = SyncFilter {
        src_interface: f.get(cx, "src_interface", conv::iface),
        dst_interface: f.get(cx, "dst_interface", conv::iface),
        src_addr: f.get(cx, "src_addr", conv::net_or_host),
        dst_addr: f.get(cx, "dst_addr", conv::net_or_host),
        protocol: f.get(cx, "protocol", conv::protocol),
        src_ports: f.get(cx, "src_ports", conv::port_range),
        dst_ports: f.get(cx, "dst_ports", conv::port_range),
        exclude: f.get(cx, "exclude", conv::boolean).unwrap_or(false),
    };
    f.finish(cx);
    filter
}

fn agent(cx: &mut Cx, b: &Block) -> Agent {
    let mut f = open_block(cx, b, "agent", "agent".into());
    let mut a = Agent::default();
    set(
        &mut a.metrics_addr,
        f.get(cx, "metrics_addr", |n, e| {
            conv::socket(n, e, DEFAULT_METRICS_PORT)
        }),
    );
    set(
        &mut a.control_socket,
        f.get(cx, "control_socket", conv::socket_path),
    );
    set(
        &mut a.log_level,
        f.get(cx, "log_level", |n, e| {
            conv::one_of(
                n,
                e,
                &[
                    ("trace", LogLevel::Trace),
                    ("debug", LogLevel::Debug),
                    ("info", LogLevel::Info),
                    ("warn", LogLevel::Warn),
                    ("error", LogLevel::Error),
                ],
                &[("warning", "warn"), ("err", "error"), ("verbose", "debug")],
            )
        }),
    );
    set(
        &mut a.log_format,
        f.get(cx, "log_format", |n, e| {
            conv::one_of(
                n,
                e,
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                &[("plain", "text"), ("logfmt", "text")],
            )
        }),
    );
    f.finish(cx);
    a
}
