//! Measurement 5, backup install rate of hasync's installer, by library use: N replicated new
//! flows (UDP, source-NATed like the lab's) installed with one
//! `hasync::kernel::ctnetlink::Installer::install` call into a fresh namespace with
//! the firewall's ruleset; timed around the call, then the table is counted.

use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use hasync::{
    conntrack::{Change, Entry, ProtoInfo, Tuple, Zone, proto, status},
    kernel::ctnetlink::Installer,
};
use testkit::NetNs;

use super::Ctx;
use crate::{
    stats::Summary,
    topo::{UDP_TIMEOUT_S, client_ip, server_ip, within},
};

#[derive(Clone, Debug, Default)]
pub struct InstallSize {
    pub entries: u64,
    pub secs: Summary,
    pub errors: u64,
}

#[derive(Clone, Debug, Default)]
pub struct InstallResult {
    pub reps: usize,
    pub sizes: Vec<InstallSize>,
}

pub fn sizes(quick: bool) -> Vec<u64> {
    if quick {
        vec![100_000]
    } else {
        vec![100_000, 1_000_000]
    }
}

pub fn steps(quick: bool) -> u64 {
    sizes(quick).len() as u64
}

/// The `i`-th replicated flow: client:sport -> server:dport, SNAT to the WAN VIP.
fn entry(i: u64) -> Entry {
    let sport = 10_000 + (i / 60_000) as u16;
    let dport = 1024 + (i % 60_000) as u16;
    let vip: std::net::Ipv4Addr = testkit::lab::WAN_VIP.parse().expect("constant");
    let orig = Tuple::new(
        proto::UDP,
        client_ip().into(),
        sport,
        server_ip().into(),
        dport,
    );
    let reply = Tuple::new(proto::UDP, server_ip().into(), dport, vip.into(), sport);
    Entry {
        orig,
        reply,
        status: status::CONFIRMED | status::SRC_NAT | status::SRC_NAT_DONE | status::DST_NAT_DONE,
        timeout: UDP_TIMEOUT_S,
        mark: 0,
        zone: Zone::DEFAULT,
        proto: ProtoInfo::None,
        labels: None,
    }
}

pub fn run(ctx: &mut Ctx) -> Result<InstallResult> {
    let reps = 3;
    let mut res = InstallResult {
        reps,
        ..Default::default()
    };
    for n in sizes(ctx.quick) {
        ctx.step(format!("install rate: {n} entries"));
        let changes: Vec<Change> = (0..n)
            .map(|i| Change::Upsert {
                entry: entry(i),
                new: true,
            })
            .collect();
        let mut size = InstallSize {
            entries: n,
            ..Default::default()
        };
        for rep in 0..reps {
            super::wait_quiet(std::time::Duration::from_millis(1500))?;
            let ns = NetNs::new("bni").map_err(|e| anyhow!("{e}"))?;
            ns.nft(&testkit::lab::firewall_nft())
                .map_err(|e| anyhow!("{e}"))?;
            ns.sysctl(
                "net.netfilter.nf_conntrack_udp_timeout",
                &UDP_TIMEOUT_S.to_string(),
            )
            .map_err(|e| anyhow!("{e}"))?;
            let (secs, report, count) = within(&ns, || -> Result<(f64, u64, u64)> {
                let mut inst = Installer::new().map_err(|e| anyhow!("{e}"))?;
                let t0 = Instant::now();
                let rep = inst.install(&changes);
                let secs = t0.elapsed().as_secs_f64();
                let count: u64 =
                    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")?
                        .trim()
                        .parse()?;
                Ok((secs, rep.errors() + rep.replies_lost, count))
            })??;
            if count < n {
                bail!("installed {n} entries but the table holds {count}");
            }
            size.secs.push(secs);
            size.errors += report;
            ctx.say(format!(
                "  hasync Installer: {n} entries in {:.0} ms ({:.0}k/s), {report} errors (rep {})",
                secs * 1000.0,
                n as f64 / secs / 1000.0,
                rep + 1
            ));
            drop(ns);
        }
        res.sizes.push(size);
        ctx.step_done();
    }
    Ok(res)
}
