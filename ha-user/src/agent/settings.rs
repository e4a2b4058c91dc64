//! Runtime settings derived from the configuration (node id, sockets, capture knobs).

use std::{
    collections::hash_map::DefaultHasher,
    ffi::CStr,
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr},
    num::NonZeroU32,
    time::Duration,
};

use crate::{
    capture::CaptureConfig,
    config::schema::{Config, ConntrackSync},
    sync::transport::{TransportConfig, TransportError, ifindex},
};

/// This node's id on the wire: configured, else the sync interface's IPv4 address
/// (unique on the sync link), else a hash of the host name.
pub fn node_id(cfg: &Config) -> u32 {
    if let Some(id) = cfg.replication.node_id {
        return id.get();
    }
    let sync = &cfg.replication.ha.conntrack_sync;
    if let Some(net) = sync.local_addr
        && let IpAddr::V4(v4) = net.addr()
    {
        return nonzero(u32::from(v4));
    }
    if let Some(v4) = sync.interface.as_deref().and_then(interface_ipv4) {
        return nonzero(u32::from(v4));
    }
    let mut h = DefaultHasher::new();
    hostname().hash(&mut h);
    nonzero(h.finish() as u32)
}

fn nonzero(v: u32) -> u32 {
    NonZeroU32::new(v).map(NonZeroU32::get).unwrap_or(1)
}

pub fn transport(cfg: &Config) -> TransportConfig {
    let sync = &cfg.replication.ha.conntrack_sync;
    TransportConfig {
        interface: sync.interface.clone(),
        group: sync.multicast_group,
        port: sync.port,
        peer: cfg.replication.peer_addr,
        send_buffer: sync.send_buffer_size as usize,
        receive_buffer: sync.receive_buffer_size as usize,
    }
}

/// Capture settings; the sync interface's own traffic is never replicated.
pub fn capture(sync: &ConntrackSync) -> Result<CaptureConfig, TransportError> {
    let sync_ifindex = match sync.interface.as_deref() {
        Some(name) => ifindex(name)?,
        None => 0,
    };
    let ignore_ifindex = [crate::capture::LOOPBACK_IFINDEX, sync_ifindex, 0];
    let filters = sync
        .filters
        .iter()
        .map(filter_rule)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CaptureConfig {
        ring_buffer_size: sync.ring_buffer_size,
        dedup_table_size: sync.dedup_table_size,
        max_wait: drain_interval(sync),
        ignore_ifindex,
        filters,
        ..CaptureConfig::default()
    })
}

/// A configured `filter { }` as the program evaluates it.
pub fn filter_rule(
    f: &crate::config::schema::SyncFilter,
) -> Result<ha_common::FilterRule, TransportError> {
    use ha_common::filter;
    let mut r = ha_common::FilterRule {
        exclude: u32::from(f.exclude),
        ..Default::default()
    };
    if let Some(name) = &f.src_interface {
        r.set |= filter::SRC_IF;
        r.src_ifindex = ifindex(name)?;
    }
    if let Some(name) = &f.dst_interface {
        r.set |= filter::DST_IF;
        r.dst_ifindex = ifindex(name)?;
    }
    for (net, bit) in [
        (f.src_addr, filter::SRC_ADDR),
        (f.dst_addr, filter::DST_ADDR),
    ] {
        let Some(net) = net else { continue };
        let (family, addr, mask) = match net {
            ipnet::IpNet::V4(n) => (
                2u16,
                crate::conntrack::addr_bytes(n.network().into()),
                crate::conntrack::addr_bytes(n.netmask().into()),
            ),
            ipnet::IpNet::V6(n) => (
                10u16,
                crate::conntrack::addr_bytes(n.network().into()),
                crate::conntrack::addr_bytes(n.netmask().into()),
            ),
        };
        r.set |= bit;
        r.family = family;
        if bit == filter::SRC_ADDR {
            (r.src_addr, r.src_mask) = (addr, mask);
        } else {
            (r.dst_addr, r.dst_mask) = (addr, mask);
        }
    }
    if let Some(p) = f.protocol {
        r.set |= filter::PROTO;
        r.proto = p;
    }
    if let Some(p) = f.src_ports {
        r.set |= filter::SRC_PORTS;
        r.sport = [p.start, p.end];
    }
    if let Some(p) = f.dst_ports {
        r.set |= filter::DST_PORTS;
        r.dport = [p.start, p.end];
    }
    Ok(r)
}

/// Settings the configuration accepts but this version does not act on yet, so the
/// operator is told instead of silently ignored.
pub fn not_yet_supported(cfg: &Config) -> Vec<&'static str> {
    let r = &cfg.replication;
    let ha = &r.ha;
    // The failover settings only act when HA is on.
    let off = !ha.enabled;
    let checks = [
        (
            off && !ha.virtual_ips.is_empty(),
            "ha.virtual_ip (ha.enabled is false)",
        ),
        (
            off && !ha.virtual_macs.is_empty(),
            "ha.virtual_mac (ha.enabled is false)",
        ),
        (
            off && !ha.monitor_interfaces.is_empty(),
            "ha.monitor_interfaces (ha.enabled is false)",
        ),
        (
            off && !ha.down_interfaces_before_sync.is_empty(),
            "ha.down_interfaces_before_sync (ha.enabled is false)",
        ),
        (
            off && ha.notify_command.is_some(),
            "ha.notify_command (ha.enabled is false)",
        ),
    ];
    checks
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
}

/// Every interface the configuration names must exist here: a typo should stop the
/// agent at start, not surface as a failed takeover at 3 a.m.
pub fn check_interfaces(cfg: &Config) -> Result<(), super::AgentError> {
    let ha = &cfg.replication.ha;
    let mut named: Vec<(String, &str)> = Vec::new();
    if ha.enabled {
        for v in &ha.virtual_ips {
            named.push((format!("virtual_ip {}", v.address), &v.interface));
        }
        for v in &ha.virtual_macs {
            named.push(("virtual_mac".to_string(), &v.interface));
        }
        for i in &ha.monitor_interfaces {
            named.push(("monitor_interfaces".to_string(), i));
        }
        for i in &ha.down_interfaces_before_sync {
            named.push(("down_interfaces_before_sync".to_string(), i));
        }
    }
    if ha.conntrack_sync.enabled {
        if let Some(i) = &ha.conntrack_sync.interface {
            named.push(("conntrack_sync".to_string(), i));
        }
        for f in &ha.conntrack_sync.filters {
            for i in [&f.src_interface, &f.dst_interface].into_iter().flatten() {
                named.push(("conntrack_sync.filter".to_string(), i));
            }
        }
    }
    for (what, interface) in named {
        if ifindex(interface).is_err() {
            return Err(super::AgentError::MissingInterface {
                what,
                interface: interface.to_string(),
            });
        }
    }
    Ok(())
}

/// The first IPv4 address of `ifname`, if any.
pub fn interface_ipv4(ifname: &str) -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null, NUL-terminated name owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: non-null sockaddr owned by the list.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if name.to_bytes() == ifname.as_bytes() && family == libc::AF_INET {
            // SAFETY: AF_INET addresses are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How often the capture reader drains under load (`wakeup_min_gap_us`), and so how
/// long the program lets a record wait for that drain instead of waking the reader.
pub fn drain_interval(sync: &ConntrackSync) -> Duration {
    sync.wakeup_min_gap.max(Duration::from_micros(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_ipv4_address() {
        let ns = testkit::NetNs::new("set").unwrap();
        let addr = ns.enter(|| interface_ipv4("lo")).unwrap();
        assert_eq!(addr, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(ns.enter(|| interface_ipv4("nope0")).unwrap(), None);
    }

    #[test]
    fn unsupported_settings_are_named() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/tls-replication.hcl"
        ))
        .unwrap();
        let cfg = crate::config::parse(&text, "tls-replication.hcl").unwrap();
        let named = not_yet_supported(&cfg);
        // The replication channel is implemented (agent::channel_link).
        assert!(
            !named.iter().any(|s| s.starts_with("listen_addr")
                || s.starts_with("primary_addr")
                || s.starts_with("tls_")),
            "{named:?}"
        );
        let mut off = cfg.clone();
        off.replication.ha.enabled = false;
        assert!(
            not_yet_supported(&off).contains(&"ha.virtual_ip (ha.enabled is false)"),
            "settings that do nothing are still named"
        );
        // The example sets expect_sync = true: implemented, so not named.
        assert!(cfg.replication.ha.conntrack_sync.expect_sync);
        assert!(
            !named.iter().any(|s| s.contains("expect_sync")),
            "{named:?}"
        );
        let two_node = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/two-node-a.hcl"
        ))
        .unwrap();
        let cfg = crate::config::parse(&two_node, "two-node-a.hcl").unwrap();
        assert!(
            !not_yet_supported(&cfg).iter().any(|s| s.starts_with("ha.")),
            "HA settings are implemented"
        );
    }

    #[test]
    fn node_id_prefers_config_then_local_addr() {
        let mut cfg = crate::config::parse(
            "replication {\n mode = \"primary\"\n peer_addr = \"10.250.0.2\"\n secret_key = \"0123456789\"\n\
             ha {\n enabled = true\n conntrack_sync {\n enabled = true\n interface = \"sync0\"\n \
             local_addr = \"10.250.0.1/24\"\n }\n }\n}\n",
            "t.hcl",
        )
        .unwrap();
        assert_eq!(node_id(&cfg), u32::from(Ipv4Addr::new(10, 250, 0, 1)));
        cfg.replication.node_id = NonZeroU32::new(9);
        assert_eq!(node_id(&cfg), 9);
    }
}
