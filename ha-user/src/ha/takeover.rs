//! The ordered takeover, and its reverse.
//!
//! keepalived and conntrackd run in separate processes, so the VIP can move and the
//! gratuitous ARP go out before the connection state is in the kernel, and the first
//! packets of every established connection meet an empty table. Here one agent does
//! it in order, and times each step:
//!
//! 1. commit: every sync datagram already received is installed in the kernel;
//! 2. add each virtual IP (rtnetlink, with its label);
//! 3. announce them: gratuitous ARP / unsolicited NA, the first round at once, the
//!    rest (`garp_count`, `garp_interval`) in the background;
//! 4. move each virtual MAC (and renew DHCP where asked).
//!
//! Giving up the role undoes it in reverse: stop announcing, restore MACs, remove the
//! addresses. Every step is recorded in the [`Timeline`] shown by `hasync status`.

use std::{
    collections::VecDeque,
    future::Future,
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    config::{VirtualIp, VirtualMac},
    kernel::{
        announce::{AnnounceOptions, Announcer, renew_dhcp},
        rtnetlink::{Iface, Rtnl},
    },
};

/// Steps kept in the timeline.
const TIMELINE_LEN: usize = 64;

/// One timed step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// "commit", "add-vip", "announce", "move-vmac", "dhcp-renew", "restore-vmac", "del-vip", ...
    pub step: &'static str,
    pub target: String,
    pub took_us: u64,
    pub ok: bool,
    pub detail: String,
}

/// The recent steps, newest last.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Timeline {
    pub steps: VecDeque<Step>,
}

impl Timeline {
    fn record(
        &mut self,
        step: &'static str,
        target: impl Into<String>,
        started: Instant,
        result: Result<String, String>,
    ) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        let target = target.into();
        let took = started.elapsed();
        if ok {
            tracing::info!(step, %target, took_us = took.as_micros() as u64, detail, "takeover step");
        } else {
            tracing::error!(step, %target, took_us = took.as_micros() as u64, error = detail, "takeover step failed");
        }
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.steps.push_back(Step {
            at_ms,
            step,
            target,
            took_us: took.as_micros() as u64,
            ok,
            detail,
        });
        while self.steps.len() > TIMELINE_LEN {
            self.steps.pop_front();
        }
    }
}

/// What the node owns while primary.
#[derive(Debug, Clone)]
pub struct Owned {
    pub vips: Vec<VirtualIp>,
    pub vmacs: Vec<VirtualMac>,
    pub garp_count: u32,
    pub garp_interval: Duration,
}

/// The result of one acquire or release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: Duration,
    pub failed_steps: usize,
}

/// Executes takeovers and releases; owns the announcement task.
pub struct Takeover {
    owned: Owned,
    timeline: Timeline,
    /// Original MACs of interfaces whose MAC we replaced, to restore on release.
    saved_macs: Vec<(String, [u8; 6])>,
    announcing: Option<tokio::task::JoinHandle<()>>,
}

impl Takeover {
    pub fn new(owned: Owned) -> Takeover {
        Takeover {
            owned,
            timeline: Timeline::default(),
            saved_macs: Vec::new(),
            announcing: None,
        }
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Takes the addresses over, in order. `commit` resolves once every received sync
    /// datagram is in the kernel (it reports how many changes it installed).
    pub async fn acquire<C>(&mut self, commit: C) -> Summary
    where
        C: Future<Output = Result<u64, String>>,
    {
        let t0 = Instant::now();
        let mut failed = 0;
        let started = Instant::now();
        let res = commit.await.map(|n| format!("{n} changes installed"));
        failed += usize::from(res.is_err());
        self.timeline.record("commit", "conntrack", started, res);

        let mut rt = match Rtnl::open() {
            Ok(rt) => rt,
            Err(e) => {
                self.timeline
                    .record("rtnetlink", "open", Instant::now(), Err(e.to_string()));
                return Summary {
                    total: t0.elapsed(),
                    failed_steps: failed + 1,
                };
            }
        };
        for vip in self.owned.vips.clone() {
            let started = Instant::now();
            let res = rt
                .add_address(
                    Iface::from(&vip.interface),
                    vip.address,
                    vip.label.as_deref(),
                )
                .map(|o| format!("{o:?}"))
                .map_err(|e| e.to_string());
            failed += usize::from(res.is_err());
            self.timeline.record(
                "add-vip",
                format!("{} dev {}", vip.address, vip.interface),
                started,
                res,
            );
        }

        // Announce on each interface with its (virtual or own) MAC: first round now.
        let mut announcers = Vec::new();
        for (ifname, addrs) in by_interface(&self.owned.vips) {
            let started = Instant::now();
            let mac = self
                .vmac_for(&ifname)
                .or_else(|| rt.link_info(Iface::from(&ifname)).ok().and_then(|l| l.mac));
            let index = rt.link_index(&ifname);
            let res = match (index, mac) {
                (Ok(index), Some(mac)) => {
                    let mut a = Announcer::new(index, mac, AnnounceOptions::default());
                    let r = a
                        .round(&addrs)
                        .map(|n| format!("round 1/{}: {n} announcements", self.owned.garp_count))
                        .map_err(|e| e.to_string());
                    announcers.push((a, addrs.clone()));
                    r
                }
                (Err(e), _) => Err(e.to_string()),
                (_, None) => Err(format!("{ifname} has no MAC address")),
            };
            failed += usize::from(res.is_err());
            self.timeline.record("announce", ifname, started, res);
        }
        self.start_announcing(announcers);

        for vmac in self.owned.vmacs.clone() {
            failed += self.move_vmac(&mut rt, &vmac);
        }
        let total = t0.elapsed();
        tracing::info!(
            took_ms = total.as_millis() as u64,
            failed,
            "takeover complete"
        );
        Summary {
            total,
            failed_steps: failed,
        }
    }

    /// Gives the addresses up, in reverse order.
    pub fn release(&mut self) -> Summary {
        let t0 = Instant::now();
        let mut failed = 0;
        if let Some(task) = self.announcing.take() {
            task.abort();
        }
        let mut rt = match Rtnl::open() {
            Ok(rt) => rt,
            Err(e) => {
                self.timeline
                    .record("rtnetlink", "open", Instant::now(), Err(e.to_string()));
                return Summary {
                    total: t0.elapsed(),
                    failed_steps: 1,
                };
            }
        };
        for (ifname, mac) in std::mem::take(&mut self.saved_macs).into_iter().rev() {
            let started = Instant::now();
            let res = rt
                .set_link_mac(Iface::from(&ifname), mac)
                .map(|_| fmt_mac(&mac))
                .map_err(|e| e.to_string());
            failed += usize::from(res.is_err());
            self.timeline.record("restore-vmac", ifname, started, res);
        }
        for vip in self.owned.vips.iter().rev() {
            let started = Instant::now();
            let res = rt
                .del_address(Iface::from(&vip.interface), vip.address)
                .map(|o| format!("{o:?}"))
                .map_err(|e| e.to_string());
            failed += usize::from(res.is_err());
            self.timeline.record(
                "del-vip",
                format!("{} dev {}", vip.address, vip.interface),
                started,
                res,
            );
        }
        Summary {
            total: t0.elapsed(),
            failed_steps: failed,
        }
    }

    /// Removes leftovers of a previous run (addresses a killed agent left behind).
    pub fn clear_leftovers(&mut self) {
        let Ok(mut rt) = Rtnl::open() else { return };
        for vip in &self.owned.vips {
            let _ = rt.del_address(Iface::from(&vip.interface), vip.address);
        }
    }

    fn vmac_for(&self, ifname: &str) -> Option<[u8; 6]> {
        self.owned
            .vmacs
            .iter()
            .find(|v| v.interface == ifname)
            .map(|v| v.address.unwrap_or_else(|| derived_mac(&v.interface)))
    }

    fn move_vmac(&mut self, rt: &mut Rtnl, vmac: &VirtualMac) -> usize {
        let started = Instant::now();
        let mac = vmac.address.unwrap_or_else(|| derived_mac(&vmac.interface));
        let res = rt
            .link_info(Iface::from(&vmac.interface))
            .map_err(|e| e.to_string())
            .and_then(|info| {
                if let Some(orig) = info.mac
                    && orig != mac
                    && !self.saved_macs.iter().any(|(n, _)| *n == vmac.interface)
                {
                    self.saved_macs.push((vmac.interface.clone(), orig));
                }
                rt.set_link_mac(Iface::from(&vmac.interface), mac)
                    .map(|_| fmt_mac(&mac))
                    .map_err(|e| e.to_string())
            });
        let mut failed = usize::from(res.is_err());
        self.timeline
            .record("move-vmac", vmac.interface.clone(), started, res);
        if vmac.dhcp {
            let started = Instant::now();
            let res = renew_dhcp(&vmac.interface, None)
                .map(|pid| {
                    pid.map_or("no DHCP client found".to_string(), |p| {
                        format!("client pid {p}")
                    })
                })
                .map_err(|e| e.to_string());
            failed += usize::from(res.is_err());
            self.timeline
                .record("dhcp-renew", vmac.interface.clone(), started, res);
        }
        failed
    }

    /// Sends the remaining announcement rounds in the background.
    fn start_announcing(&mut self, mut announcers: Vec<(Announcer, Vec<IpAddr>)>) {
        if let Some(task) = self.announcing.take() {
            task.abort();
        }
        let rounds = self.owned.garp_count.saturating_sub(1);
        if rounds == 0 || announcers.is_empty() {
            return;
        }
        let interval = self.owned.garp_interval;
        self.announcing = Some(tokio::spawn(async move {
            for round in 0..rounds {
                tokio::time::sleep(interval).await;
                for (a, addrs) in &mut announcers {
                    if let Err(e) = a.round(addrs) {
                        tracing::warn!(round = round + 2, error = %e, "announcement failed");
                    }
                }
            }
        }));
    }
}

/// Virtual IPs grouped by interface, in configuration order.
fn by_interface(vips: &[VirtualIp]) -> Vec<(String, Vec<IpAddr>)> {
    let mut out: Vec<(String, Vec<IpAddr>)> = Vec::new();
    for vip in vips {
        let ip = match vip.address {
            IpNet::V4(n) => IpAddr::V4(n.addr()),
            IpNet::V6(n) => IpAddr::V6(n.addr()),
        };
        match out.iter_mut().find(|(i, _)| *i == vip.interface) {
            Some((_, v)) => v.push(ip),
            None => out.push((vip.interface.clone(), vec![ip])),
        }
    }
    out
}

/// The MAC a `virtual_mac` without `address` gets: locally administered, unicast, and
/// the same on both nodes (derived from the interface name, which the two share).
pub fn derived_mac(interface: &str) -> [u8; 6] {
    // FNV-1a: stable across builds and architectures, unlike the std hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in interface.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    [0x02, 0x48, 0x53, a, b, c]
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{NetNs, veth};

    fn vip(addr: &str, interface: &str) -> VirtualIp {
        VirtualIp {
            address: addr.parse().unwrap(),
            interface: interface.into(),
            label: None,
        }
    }

    #[test]
    fn derived_macs_are_local_unicast_and_stable() {
        let m = derived_mac("wan0");
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(m, derived_mac("wan0"));
        assert_ne!(m, derived_mac("wan1"));
    }

    #[test]
    fn groups_addresses_by_interface() {
        let g = by_interface(&[
            vip("10.0.0.1/24", "lan0"),
            vip("fd00::1/64", "lan0"),
            vip("10.1.0.1/24", "wan0"),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].1.len(), 2);
    }

    /// Acquire adds the addresses and moves the MAC after the commit step; release
    /// undoes everything; each step is in the timeline.
    #[test]
    fn acquire_then_release_in_a_namespace() {
        let (a, b) = (NetNs::new("tka").unwrap(), NetNs::new("tkb").unwrap());
        veth(&a, "lan0", &["10.91.0.2/24"], &b, "p0", &["10.91.0.3/24"]).unwrap();
        let owned = Owned {
            vips: vec![
                VirtualIp {
                    address: "10.91.0.1/24".parse().unwrap(),
                    interface: "lan0".into(),
                    label: Some("lan0:vip".into()),
                },
                vip("fd91::1/64", "lan0"),
            ],
            vmacs: vec![VirtualMac {
                address: Some([0x02, 0, 0x5e, 0, 0, 1]),
                interface: "lan0".into(),
                dhcp: false,
            }],
            garp_count: 2,
            garp_interval: Duration::from_millis(10),
        };
        let original_mac = a.sh("cat /sys/class/net/lan0/address").unwrap();
        let timeline = a
            .enter(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut t = Takeover::new(owned);
                    let s = t.acquire(async { Ok(7) }).await;
                    assert_eq!(s.failed_steps, 0, "{:#?}", t.timeline());
                    let shown = std::process::Command::new("ip")
                        .args(["-o", "addr", "show", "dev", "lan0"])
                        .output()
                        .unwrap();
                    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
                    assert!(
                        shown.contains("10.91.0.1/24") && shown.contains("lan0:vip"),
                        "{shown}"
                    );
                    assert!(shown.contains("fd91::1/64"), "{shown}");
                    // (A thread that entered the namespace still sees the host's /sys.)
                    let mac = Rtnl::open()
                        .unwrap()
                        .link_info(Iface::from("lan0"))
                        .unwrap()
                        .mac;
                    assert_eq!(mac, Some([0x02, 0, 0x5e, 0, 0, 1]));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let r = t.release();
                    assert_eq!(r.failed_steps, 0, "{:#?}", t.timeline());
                    t.timeline().clone()
                })
            })
            .unwrap();
        let steps: Vec<&str> = timeline.steps.iter().map(|s| s.step).collect();
        assert_eq!(
            steps,
            [
                "commit",
                "add-vip",
                "add-vip",
                "announce",
                "move-vmac",
                "restore-vmac",
                "del-vip",
                "del-vip"
            ]
        );
        let shown = a.ip(&["-o", "addr", "show", "dev", "lan0"]).unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(
            !shown.contains("10.91.0.1/24") && !shown.contains("fd91::1"),
            "{shown}"
        );
        assert_eq!(
            a.sh("cat /sys/class/net/lan0/address").unwrap(),
            original_mac,
            "MAC restored"
        );
    }
}
