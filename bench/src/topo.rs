//! The bench topology: testkit's two-firewall lab (client — LAN — fw-a/fw-b — WAN —
//! server, sync link on `sync0`) plus what the measurements need, and readers of each
//! namespace's kernel state.

use std::{collections::HashSet, fs, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use hasync::conntrack::{Family, proto};
use testkit::{
    NetNs,
    lab::{CLIENT_IP, Lab, LabOptions, SERVER_IP},
};

/// Timeout of unreplied UDP entries on the firewalls: long enough that nothing expires
/// while a measurement compares tables.
pub const UDP_TIMEOUT_S: u32 = 900;

pub fn client_ip() -> Ipv4Addr {
    CLIENT_IP.parse().expect("constant")
}

pub fn server_ip() -> Ipv4Addr {
    SERVER_IP.parse().expect("constant")
}

fn err(e: testkit::Error) -> anyhow::Error {
    anyhow!("{e}")
}

/// One fresh lab; every namespace (and every process in it) goes away on drop, the
/// six namespaces in parallel (each deletion waits for `ip netns pids`).
pub struct BenchLab {
    lab: Option<Lab>,
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let Some(lab) = self.lab.take() else { return };
        let Lab {
            client,
            server,
            fw_a,
            fw_b,
            lan,
            wan,
            sync,
        } = lab;
        std::thread::scope(|s| {
            for ns in [client, server, fw_a.ns, fw_b.ns, lan, wan]
                .into_iter()
                .chain(sync)
            {
                s.spawn(move || drop(ns));
            }
        });
    }
}

impl BenchLab {
    pub fn new() -> Result<BenchLab> {
        let lab = Lab::new(&LabOptions {
            prefix: "bn".into(),
            ..Default::default()
        })
        .map_err(err)
        .context("building the lab")?;
        // The server drops UDP at ingress: no ICMP errors, no socket lookups, no
        // conntrack there. TCP reaches its listeners.
        lab.server
            .nft(
                "table netdev bench {\n chain in {\n type filter hook ingress device eth0 priority 0; policy accept;\n meta l4proto udp drop\n }\n}\n",
            )
            .map_err(err)?;
        lab.server
            .sysctl("net.core.somaxconn", "65535")
            .map_err(err)?;
        lab.server
            .sysctl("net.ipv4.tcp_max_syn_backlog", "65535")
            .map_err(err)?;
        for fw in lab.firewalls() {
            fw.ns
                .sysctl(
                    "net.netfilter.nf_conntrack_udp_timeout",
                    &UDP_TIMEOUT_S.to_string(),
                )
                .map_err(err)?;
        }
        lab.client
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")
            .map_err(err)?;
        let b = BenchLab { lab: Some(lab) };
        b.warm_up()?;
        Ok(b)
    }

    /// Resolves neighbours along the path so the first measured packets are not queued
    /// behind ARP.
    fn warm_up(&self) -> Result<()> {
        self.client()
            .enter(|| -> Result<()> {
                let s = std::net::UdpSocket::bind((client_ip(), WARM_UP_SPORT))?;
                for _ in 0..3 {
                    s.send_to(b"warm", (server_ip(), 9))?;
                    std::thread::sleep(Duration::from_millis(30));
                }
                Ok(())
            })
            .map_err(err)??;
        Ok(())
    }

    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("present until dropped")
    }

    pub fn a(&self) -> &NetNs {
        &self.lab().fw_a.ns
    }

    pub fn b(&self) -> &NetNs {
        &self.lab().fw_b.ns
    }

    pub fn client(&self) -> &NetNs {
        &self.lab().client
    }

    pub fn server(&self) -> &NetNs {
        &self.lab().server
    }
}

/// Runs `f` on a thread inside `ns`.
pub fn within<R: Send>(ns: &NetNs, f: impl FnOnce() -> R + Send) -> Result<R> {
    ns.enter(f).map_err(err)
}

/// `nf_conntrack_count` of the namespace.
pub fn ct_count(ns: &NetNs) -> Result<u64> {
    within(ns, || {
        fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            .context("nf_conntrack_count")?
            .trim()
            .parse::<u64>()
            .context("parsing nf_conntrack_count")
    })?
}

/// Source port of the warm-up packets (not a generator flow).
const WARM_UP_SPORT: u16 = 9000;

/// A UDP flow of the generator, as (source port, destination port).
pub type FlowId = (u16, u16);

/// The generator's UDP flows (probes included) present in the namespace's kernel table,
/// from a ctnetlink dump: UDP from the client's address and a generator source port.
pub fn bench_flows(ns: &NetNs) -> Result<HashSet<FlowId>> {
    within(ns, || -> Result<HashSet<FlowId>> {
        let mut entries = Vec::new();
        hasync::kernel::ctnetlink::dump_into(Some(Family::V4), &mut entries)
            .map_err(|e| anyhow!("{e}"))?;
        let c = client_ip().octets();
        Ok(entries
            .iter()
            .filter(|e| {
                e.orig.proto == proto::UDP
                    && e.orig.src[..4] == c
                    && e.orig.sport() >= crate::flowgen::PROBE_SPORT
            })
            .map(|e| (e.orig.sport(), e.orig.dport()))
            .collect())
    })?
}

/// Counters of a namespace's network stack that tell where packets or events were lost.
#[derive(Clone, Debug, Default)]
pub struct NetCounters {
    /// `/proc/net/snmp` Udp: RcvbufErrors, SndbufErrors, InErrors.
    pub udp_rcvbuf_errors: u64,
    pub udp_sndbuf_errors: u64,
    pub udp_in_errors: u64,
    /// `/proc/net/stat/nf_conntrack` summed over CPUs: drop, early_drop, insert_failed.
    pub ct_drop: u64,
    pub ct_early_drop: u64,
    pub ct_insert_failed: u64,
    /// `/proc/net/softnet_stat` is host-wide; dropped packets of the backlog.
    pub softnet_dropped: u64,
}

impl NetCounters {
    pub fn read(ns: &NetNs) -> Result<NetCounters> {
        within(ns, || {
            let mut c = NetCounters::default();
            // /proc/self/net follows the main thread's namespace; thread-self follows ours.
            if let Ok(s) = fs::read_to_string("/proc/thread-self/net/snmp") {
                let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("Udp:")).collect();
                if lines.len() >= 2 {
                    let names: Vec<&str> = lines[0].split_whitespace().collect();
                    let vals: Vec<&str> = lines[1].split_whitespace().collect();
                    for (n, v) in names.iter().zip(vals.iter()) {
                        let v: u64 = v.parse().unwrap_or(0);
                        match *n {
                            "RcvbufErrors" => c.udp_rcvbuf_errors = v,
                            "SndbufErrors" => c.udp_sndbuf_errors = v,
                            "InErrors" => c.udp_in_errors = v,
                            _ => {}
                        }
                    }
                }
            }
            if let Ok(s) = fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack") {
                let mut lines = s.lines();
                let names: Vec<&str> = lines
                    .next()
                    .map(|l| l.split_whitespace().collect())
                    .unwrap_or_default();
                for l in lines {
                    for (n, v) in names.iter().zip(l.split_whitespace()) {
                        let v = u64::from_str_radix(v, 16).unwrap_or(0);
                        match *n {
                            "drop" => c.ct_drop += v,
                            "early_drop" => c.ct_early_drop += v,
                            "insert_failed" => c.ct_insert_failed += v,
                            _ => {}
                        }
                    }
                }
            }
            if let Ok(s) = fs::read_to_string("/proc/net/softnet_stat") {
                for l in s.lines() {
                    if let Some(v) = l.split_whitespace().nth(1) {
                        c.softnet_dropped += u64::from_str_radix(v, 16).unwrap_or(0);
                    }
                }
            }
            c
        })
    }

    /// What grew since `before`, as "name +n" items.
    pub fn growth(&self, before: &NetCounters) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |name: &str, a: u64, b: u64| {
            if a > b {
                out.push(format!("{name} +{}", a - b));
            }
        };
        add(
            "UDP RcvbufErrors",
            self.udp_rcvbuf_errors,
            before.udp_rcvbuf_errors,
        );
        add(
            "UDP SndbufErrors",
            self.udp_sndbuf_errors,
            before.udp_sndbuf_errors,
        );
        add("UDP InErrors", self.udp_in_errors, before.udp_in_errors);
        add("conntrack drop", self.ct_drop, before.ct_drop);
        add(
            "conntrack early_drop",
            self.ct_early_drop,
            before.ct_early_drop,
        );
        add(
            "conntrack insert_failed",
            self.ct_insert_failed,
            before.ct_insert_failed,
        );
        add(
            "softnet backlog drops (host)",
            self.softnet_dropped,
            before.softnet_dropped,
        );
        out
    }
}
