//! Measurements 2 (lossless ceiling) and 4 (CPU per 1,000 events): the offered new-flow rate is
//! raised step by step; after each step the bench waits until the backup stops
//! gaining entries and compares: entries fw-a's table gained vs entries the backup
//! gained (hasync: its kernel table, also compared tuple by tuple; conntrackd: its
//! external cache). The first step that loses entries ends the climb; the counters
//! that grew in it say what failed first. The ceiling is the highest rate fw-a
//! actually created entries at without a loss. The last step is the generator flat
//! out (the kernel's own ceiling with the agent running).
//!
//! Every step runs in a fresh lab with freshly started agents.

use std::{collections::HashMap, time::Duration};

use anyhow::Result;

use super::{Ctx, SYNC_SYSTEMS, Trial, krate};
use crate::{
    agents::{Counters, LOSS_COUNTERS, System},
    flowgen::{self, UdpPlan},
    stats::Summary,
    sys,
    topo::{self, NetCounters},
};

/// Reference rate for CPU comparisons.
pub const CPU_RATE: f64 = 20_000.0;

#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Offered flows/s (`None`: flat out).
    pub target: Option<f64>,
    /// Entries/s fw-a's table gained.
    pub achieved: f64,
    pub flows: u64,
    pub backup: u64,
    pub missing: u64,
    /// Backup in the kernel (hasync): generator flows in fw-a's table but not in fw-b's,
    /// by tuple (then also `missing`).
    pub exact_missing: Option<u64>,
    /// Agent CPU, ms per 1,000 new flows: (A, B) from utime+stime, and from schedstat.
    pub cpu_stat: (f64, f64),
    pub cpu_sched: (f64, f64),
    /// Busy CPU of the whole machine (both cores), ms per 1,000 new flows.
    pub host_ms_per_k: f64,
    /// Counters that grew during the step (loss or back-pressure).
    pub signals: Vec<String>,
    /// Seconds from the end of sending until the backup had everything (or gave up).
    pub catch_up_s: f64,
    /// Sync payload bytes the primary sent per new flow, and new flows per datagram.
    pub wire_bytes_per_flow: f64,
    pub flows_per_datagram: f64,
}

impl Step {
    pub fn lossless(&self) -> bool {
        self.missing == 0 && self.exact_missing.unwrap_or(0) == 0
    }
}

#[derive(Clone, Debug, Default)]
pub struct SystemCeiling {
    /// Highest lossless achieved rate per repetition.
    pub ceiling: Summary,
    pub runs: Vec<Vec<Step>>,
    /// The overload step (flat out, longer), first repetition.
    pub overload: Option<Step>,
    /// Missing entries right after the overload step and after waiting longer
    /// (`wait_s`; 0 when not waited).
    pub after_overload: Option<(u64, u64, f64)>,
}

#[derive(Clone, Debug, Default)]
pub struct CeilingResult {
    pub reps: usize,
    pub step_secs: f64,
    pub systems: HashMap<System, SystemCeiling>,
    /// Whole-machine CPU per 1,000 flows at [`CPU_RATE`] without an agent.
    pub baseline_host_ms_per_k: Summary,
}

impl CeilingResult {
    /// Median ceiling of `s` (0 when it never was lossless).
    pub fn ceiling(&self, s: System) -> f64 {
        self.systems
            .get(&s)
            .map(|c| c.ceiling.median())
            .filter(|v| v.is_finite())
            .unwrap_or(0.0)
    }

    /// The overload step of `s`, if run.
    pub fn overload(&self, s: System) -> Option<&Step> {
        self.systems.get(&s)?.overload.as_ref()
    }

    /// Steps at (about) `rate` over all repetitions.
    pub fn steps_at(&self, s: System, rate: f64) -> Vec<&Step> {
        self.systems
            .get(&s)
            .map(|c| {
                c.runs
                    .iter()
                    .flatten()
                    .filter(|st| st.target == Some(rate))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The highest lossless step of each repetition.
    pub fn top_steps(&self, s: System) -> Vec<&Step> {
        self.systems
            .get(&s)
            .map(|c| {
                c.runs
                    .iter()
                    .filter_map(|run| {
                        run.iter()
                            .filter(|st| st.lossless())
                            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first lossy step of each repetition.
    pub fn first_losses(&self, s: System) -> Vec<&Step> {
        self.systems
            .get(&s)
            .map(|c| {
                c.runs
                    .iter()
                    .filter_map(|run| run.iter().find(|st| !st.lossless()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn rates(quick: bool) -> Vec<f64> {
    let k: &[f64] = if quick {
        &[20.0, 80.0, 160.0]
    } else {
        &[20.0, 40.0, 60.0, 80.0, 100.0, 130.0, 160.0, 200.0, 250.0]
    };
    k.iter().map(|r| r * 1000.0).collect()
}

pub fn steps(quick: bool) -> u64 {
    let reps = if quick { 1 } else { 3 };
    (reps * (SYNC_SYSTEMS.len() + 1)) as u64
}

pub fn run(ctx: &mut Ctx) -> Result<CeilingResult> {
    let reps = ctx.reps(1, 3);
    let d = ctx.secs(2.0, 5.0);
    let mut res = CeilingResult {
        reps,
        step_secs: d.as_secs_f64(),
        ..Default::default()
    };
    for rep in 0..reps {
        // Whole-machine CPU without an agent, for the CPU comparison.
        ctx.step(format!(
            "ceiling: no-agent baseline (rep {}/{reps})",
            rep + 1
        ));
        let (st, t) = step(ctx, System::None, Some(CPU_RATE), d)?;
        drop(t);
        res.baseline_host_ms_per_k.push(st.host_ms_per_k);
        ctx.step_done();

        for sys in SYNC_SYSTEMS {
            if !ctx.wants(sys) {
                continue;
            }
            ctx.step(format!("ceiling: {} (rep {}/{reps})", sys.name(), rep + 1));
            let mut run: Vec<Step> = Vec::new();
            let mut lo: Option<f64> = None;
            let mut hi: Option<f64> = None;
            for r in rates(ctx.quick) {
                let (st, t) = step(ctx, sys, Some(r), d)?;
                let ok = st.lossless();
                let sat = st.achieved < 0.93 * r;
                run.push(st);
                drop(t);
                if !ok {
                    hi = Some(r);
                    break;
                }
                lo = Some(r);
                if sat {
                    break;
                }
            }
            // Flat out last (also after a saturated step: it shows the primary's limit).
            if hi.is_none() {
                let (st, t) = step(ctx, sys, None, d)?;
                drop(t);
                if !st.lossless() {
                    hi = Some(st.achieved);
                }
                run.push(st);
            }
            // Overload: flat out for longer than any buffer holds, once per system.
            // Whatever is missing is counted again 40 s later (full mode): conntrackd
            // resyncs with its kernel 30 s after a netlink overrun.
            if rep == 0 {
                let od = ctx.secs(4.0, 15.0);
                ctx.step(format!(
                    "ceiling: {} overload, flat out for {:.0} s",
                    sys.name(),
                    od.as_secs_f64()
                ));
                let (st, t) = step(ctx, sys, None, od)?;
                let before = st.missing;
                let entry = res.systems.entry(sys).or_default();
                if before > 0 && !ctx.quick {
                    let wait = 40.0;
                    ctx.step(format!(
                        "ceiling: {} after overload, waiting {wait:.0} s",
                        sys.name()
                    ));
                    sys::sleep(Duration::from_secs_f64(wait))?;
                    let now = t.missing_now()?;
                    entry.after_overload = Some((before, now, wait));
                    ctx.say(format!(
                        "  after overload: {before} missing, {wait:.0} s later {now}"
                    ));
                } else {
                    entry.after_overload = Some((before, before, 0.0));
                }
                entry.overload = Some(st);
                drop(t);
            }
            // Full mode: narrow the gap between the last lossless and the first lossy
            // offered rate.
            if !ctx.quick
                && let (Some(mut l), Some(mut h)) = (lo, hi)
            {
                for _ in 0..2 {
                    let mid = ((l + h) / 2.0 / 1000.0).round() * 1000.0;
                    if mid <= l || mid >= h {
                        break;
                    }
                    let (st, t) = step(ctx, sys, Some(mid), d)?;
                    drop(t);
                    if st.lossless() {
                        l = mid;
                    } else {
                        h = mid;
                    }
                    run.push(st);
                }
            }
            let entry = res.systems.entry(sys).or_default();
            let ceiling = run
                .iter()
                .chain(entry.overload.iter().filter(|_| rep == 0))
                .filter(|s| s.lossless())
                .map(|s| s.achieved)
                .fold(0.0, f64::max);
            entry.ceiling.push(ceiling);
            entry.runs.push(run);
            ctx.say(format!(
                "ceiling {:22} rep {}: {}",
                sys.name(),
                rep + 1,
                krate(ceiling)
            ));
            ctx.step_done();
        }
    }
    Ok(res)
}

/// Sends at `rate` for `d` in a fresh lab and checks the backup.
fn step(ctx: &mut Ctx, system: System, rate: Option<f64>, d: Duration) -> Result<(Step, Trial)> {
    let t = ctx.trial(system)?;
    let label = rate.map(krate).unwrap_or_else(|| "flat out".into());
    let b0 = t.backup_count()?;
    // Counters first: reading them costs the agents a little CPU.
    let ctr0 = t.pair.as_ref().map(|p| p.counters(&t.lab));
    let cpu0 = t.pair.as_ref().map(|p| p.cpu()).transpose()?;
    let net_a0 = NetCounters::read(t.lab.a())?;
    let net_b0 = NetCounters::read(t.lab.b())?;
    let host0 = sys::host_cpu();
    let len = (rate.unwrap_or(300_000.0) * d.as_secs_f64()) as u64;
    let pb = ctx.run_bar(len, &format!("{} @ {label}", t.system.short()));
    let r = flowgen::run_udp(
        t.lab.client(),
        &UdpPlan {
            first_flow: 0,
            rate,
            duration: d,
            max_flows: None,
            probe_every: 0,
            first_probe: 0,
        },
        Some(&pb),
    )?;
    pb.finish_and_clear();
    // The generator's flows fw-a created, by tuple.
    let fa = topo::bench_flows(t.lab.a())?;
    let flows = fa.len() as u64;
    let sent_at = std::time::Instant::now();
    let idle = ctx.secs(1.5, 3.0);
    let backup = if t.pair.is_some() {
        t.settle(b0, flows, idle, Duration::from_secs(60))?
    } else {
        0
    };
    let catch_up_s = if backup >= flows {
        sent_at.elapsed().as_secs_f64()
    } else {
        (sent_at.elapsed().as_secs_f64() - idle.as_secs_f64()).max(0.0)
    };
    let host1 = sys::host_cpu();
    let mut st = Step {
        target: rate,
        achieved: flows as f64 / r.elapsed.as_secs_f64(),
        flows,
        backup,
        missing: if t.pair.is_some() {
            flows.saturating_sub(backup)
        } else {
            0
        },
        catch_up_s,
        host_ms_per_k: host1.busy_ms_since(&host0) / (flows.max(1) as f64 / 1000.0),
        ..Default::default()
    };
    if let (Some(p), Some(c0)) = (&t.pair, cpu0) {
        let c1 = p.cpu()?;
        let k = flows.max(1) as f64 / 1000.0;
        let (sa, na) = c1.0.ms_since(&c0.0);
        let (sb, nb) = c1.1.ms_since(&c0.1);
        st.cpu_stat = (sa / k, sb / k);
        st.cpu_sched = (na / k, nb / k);
        if let Some(c0) = ctr0 {
            let c1 = p.counters(&t.lab);
            st.signals = c1.growth(&c0, LOSS_COUNTERS);
            // Sync traffic the primary sent for these flows.
            let d = |name: &str| Counters::get(&c1.a, name) - Counters::get(&c0.a, name);
            let (bytes, dgrams) = if t.system == System::Hasync {
                (d("sync_sent_bytes_total"), d("sync_sent_datagrams_total"))
            } else {
                let find = |list: &[(String, f64)], what: &str| {
                    list.iter()
                        .find(|(k, _)| k.starts_with("multicast traffic") && k.ends_with(what))
                        .map(|(_, v)| *v)
                        .unwrap_or(0.0)
                };
                (
                    find(&c1.a, "Bytes sent") - find(&c0.a, "Bytes sent"),
                    find(&c1.a, "Pckts sent") - find(&c0.a, "Pckts sent"),
                )
            };
            if flows > 0 && dgrams > 0.0 {
                st.wire_bytes_per_flow = bytes / flows as f64;
                st.flows_per_datagram = flows as f64 / dgrams;
            }
        }
        if t.backup_in_kernel() {
            let fb = topo::bench_flows(t.lab.b())?;
            let m = fa.difference(&fb).count() as u64;
            st.exact_missing = Some(m);
            st.missing = m;
        }
    }
    for (node, ns, before) in [("A", t.lab.a(), &net_a0), ("B", t.lab.b(), &net_b0)] {
        for g in NetCounters::read(ns)?.growth(before) {
            st.signals.push(format!("{node}: {g}"));
        }
    }
    ctx.say(format!(
        "  {:12} {:>9}: A {} ({} flows), backup +{} missing {}{} | CPU ms/1k A {:.2} B {:.2} | {:.0} B/flow, {:.1} flows/datagram | {}",
        t.system.short(),
        label,
        krate(st.achieved),
        st.flows,
        st.backup,
        st.missing,
        st.exact_missing
            .map(|m| format!(" (by tuple {m})"))
            .unwrap_or_default(),
        st.cpu_sched.0,
        st.cpu_sched.1,
        st.wire_bytes_per_flow,
        st.flows_per_datagram,
        if st.signals.is_empty() {
            "no loss counters moved".to_string()
        } else {
            st.signals.join(", ")
        }
    ));
    Ok((st, t))
}
