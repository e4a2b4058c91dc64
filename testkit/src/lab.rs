//! The two-firewall topology used by the integration tests, `cargo xtask lab` and the
//! benchmark:
//!
//! ```text
//!  client ── LAN bridge ──┬── fw-a ──┬── WAN bridge ── server
//!  .10          (lan ns)  └── fw-b ──┘    (wan ns)     .100
//!                            └─sync0─┘ 10.250.0.1 / .2
//! ```
//!
//! LAN 192.168.10.0/24 + fd00:10::/64 (gateway VIP .1 / ::1), WAN 203.0.113.0/24 +
//! fd00:20::/64 (VIP .1 / ::1), fw-a .2, fw-b .3. The firewalls forward with a strict
//! stateful policy (established/related accepted, new only from the LAN side and for
//! TCP only with SYN, invalid dropped, `nf_conntrack_tcp_loose=0`) and source-NAT IPv4
//! towards the server to the WAN VIP. All namespaces go away with the [`Lab`].

use crate::{NetNs, Result, veth};

pub const LAN_VIP: &str = "192.168.10.1";
pub const WAN_VIP: &str = "203.0.113.1";
pub const LAN_VIP6: &str = "fd00:10::1";
pub const WAN_VIP6: &str = "fd00:20::1";
pub const CLIENT_IP: &str = "192.168.10.10";
pub const CLIENT_IP6: &str = "fd00:10::10";
pub const SERVER_IP: &str = "203.0.113.100";
pub const SERVER_IP6: &str = "fd00:20::100";
pub const SYNC_A: &str = "10.250.0.1";
pub const SYNC_B: &str = "10.250.0.2";

/// One firewall node.
pub struct Firewall {
    pub ns: NetNs,
    /// "a" or "b".
    pub id: &'static str,
    pub sync_ip: &'static str,
    pub lan_ip: &'static str,
    pub wan_ip: &'static str,
}

/// The whole topology. Dropping it removes every namespace (and the processes in them).
pub struct Lab {
    pub client: NetNs,
    pub server: NetNs,
    pub fw_a: Firewall,
    pub fw_b: Firewall,
    pub lan: NetNs,
    pub wan: NetNs,
    /// The sync bridge, with [`LabOptions::sync_via_bridge`].
    pub sync: Option<NetNs>,
}

/// How to build the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Namespace name prefix (at most 4 characters).
    pub prefix: String,
    /// Put the VIPs on fw-a statically (until the HA engine moves them itself).
    pub vips_on_a: bool,
    /// Extra nft script loaded on both firewalls after the base policy.
    pub extra_nft: String,
    /// Run the sync link through a bridge instead of a direct veth, so one firewall's
    /// sync port can fail while the other keeps its carrier.
    pub sync_via_bridge: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: "lab".into(),
            vips_on_a: true,
            extra_nft: String::new(),
            sync_via_bridge: false,
        }
    }
}

/// The firewall policy. `ct state` makes conntrack track the namespace.
pub fn firewall_nft() -> String {
    format!(
        "table inet fw {{\n\
          chain forward {{\n\
            type filter hook forward priority 0; policy drop;\n\
            ct state established,related accept\n\
            ct state invalid drop\n\
            iifname \"lan0\" oifname \"wan0\" tcp flags & (syn | ack) == syn ct state new accept\n\
            iifname \"lan0\" oifname \"wan0\" meta l4proto {{ udp, icmp, ipv6-icmp, sctp }} ct state new accept\n\
          }}\n\
          chain input {{\n\
            type filter hook input priority 0; policy accept;\n\
            ct state invalid drop\n\
          }}\n\
        }}\n\
        table ip nat {{\n\
          chain postrouting {{\n\
            type nat hook postrouting priority 100;\n\
            oifname \"wan0\" snat to {WAN_VIP}\n\
          }}\n\
        }}\n"
    )
}

impl Lab {
    pub fn new(opts: &LabOptions) -> Result<Lab> {
        let p = &opts.prefix;
        let lan = NetNs::new(&format!("{p}l"))?;
        let wan = NetNs::new(&format!("{p}w"))?;
        for ns in [&lan, &wan] {
            ns.ip(&["link", "add", "br0", "type", "bridge"])?;
            ns.ip(&["link", "set", "br0", "up"])?;
        }
        let client = NetNs::new(&format!("{p}c"))?;
        let server = NetNs::new(&format!("{p}s"))?;
        let fw_a = Firewall {
            ns: NetNs::new(&format!("{p}a"))?,
            id: "a",
            sync_ip: SYNC_A,
            lan_ip: "192.168.10.2",
            wan_ip: "203.0.113.2",
        };
        let fw_b = Firewall {
            ns: NetNs::new(&format!("{p}b"))?,
            id: "b",
            sync_ip: SYNC_B,
            lan_ip: "192.168.10.3",
            wan_ip: "203.0.113.3",
        };
        let sync = if opts.sync_via_bridge {
            let ns = NetNs::new(&format!("{p}y"))?;
            ns.ip(&["link", "add", "br0", "type", "bridge"])?;
            ns.ip(&["link", "set", "br0", "up"])?;
            Some(ns)
        } else {
            None
        };
        let lab = Lab {
            client,
            server,
            fw_a,
            fw_b,
            lan,
            wan,
            sync,
        };
        lab.wire(opts)?;
        Ok(lab)
    }

    fn wire(&self, opts: &LabOptions) -> Result<()> {
        attach(
            &self.lan,
            "c",
            &self.client,
            "eth0",
            &[&format!("{CLIENT_IP}/24"), &format!("{CLIENT_IP6}/64")],
        )?;
        attach(
            &self.wan,
            "s",
            &self.server,
            "eth0",
            &[&format!("{SERVER_IP}/24"), &format!("{SERVER_IP6}/64")],
        )?;
        for fw in [&self.fw_a, &self.fw_b] {
            let n = fw.id.as_bytes()[0] - b'a' + 2;
            attach(
                &self.lan,
                fw.id,
                &fw.ns,
                "lan0",
                &[&format!("{}/24", fw.lan_ip), &format!("fd00:10::{n}/64")],
            )?;
            attach(
                &self.wan,
                fw.id,
                &fw.ns,
                "wan0",
                &[&format!("{}/24", fw.wan_ip), &format!("fd00:20::{n}/64")],
            )?;
            fw.ns.sysctl("net.ipv4.ip_forward", "1")?;
            fw.ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            fw.ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
            fw.ns
                .sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "0")?;
            fw.ns.nft(&firewall_nft())?;
            if !opts.extra_nft.is_empty() {
                fw.ns.nft(&opts.extra_nft)?;
            }
        }
        match &self.sync {
            Some(bridge) => {
                attach(
                    bridge,
                    "a",
                    &self.fw_a.ns,
                    "sync0",
                    &[&format!("{SYNC_A}/24")],
                )?;
                attach(
                    bridge,
                    "b",
                    &self.fw_b.ns,
                    "sync0",
                    &[&format!("{SYNC_B}/24")],
                )?;
            }
            None => veth(
                &self.fw_a.ns,
                "sync0",
                &[&format!("{SYNC_A}/24")],
                &self.fw_b.ns,
                "sync0",
                &[&format!("{SYNC_B}/24")],
            )?,
        }
        self.client
            .ip(&["route", "add", "default", "via", LAN_VIP])?;
        self.client
            .ip(&["-6", "route", "add", "default", "via", LAN_VIP6])?;
        self.server
            .ip(&["-6", "route", "add", "fd00:10::/64", "via", WAN_VIP6])?;
        if opts.vips_on_a {
            self.add_vips(&self.fw_a)?;
        }
        Ok(())
    }

    /// Puts the gateway VIPs on `fw` (what the HA engine does on takeover).
    pub fn add_vips(&self, fw: &Firewall) -> Result<()> {
        fw.ns
            .ip(&["addr", "add", &format!("{LAN_VIP}/24"), "dev", "lan0"])?;
        fw.ns
            .ip(&["addr", "add", &format!("{WAN_VIP}/24"), "dev", "wan0"])?;
        fw.ns.ip(&[
            "addr",
            "add",
            &format!("{LAN_VIP6}/64"),
            "dev",
            "lan0",
            "nodad",
        ])?;
        fw.ns.ip(&[
            "addr",
            "add",
            &format!("{WAN_VIP6}/64"),
            "dev",
            "wan0",
            "nodad",
        ])?;
        Ok(())
    }

    pub fn firewalls(&self) -> [&Firewall; 2] {
        [&self.fw_a, &self.fw_b]
    }
}

/// A veth from a bridge namespace (port `port`, enslaved to br0) to `host`'s `ifname`.
fn attach(bridge: &NetNs, port: &str, host: &NetNs, ifname: &str, addrs: &[&str]) -> Result<()> {
    // Short names like "a" parse as `ip link` keywords: prefix them.
    let port = format!("port-{port}");
    veth(bridge, &port, &[], host, ifname, addrs)?;
    bridge.ip(&["link", "set", &port, "master", "br0"])?;
    Ok(())
}
