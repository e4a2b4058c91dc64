//! Measurement 3, convergence latency: while the generator offers background flows at a rate,
//! about 1,000 probe flows per second are sent singly from the client, each stamped
//! (CLOCK_MONOTONIC) just before its `sendto`. Observers in fw-b's namespace stamp the
//! probe's arrival: in the backup's kernel table (ctnetlink NEW event: hasync, and
//! conntrackd without external cache), and as the first sync datagram carrying it on
//! the backup's `sync0` (every system; for conntrackd with its external cache this is
//! as far as an entry gets before a commit). Reported: p50 / p99 of (seen − sent).

use std::{collections::HashMap, time::Duration};

use anyhow::Result;

use super::{Ctx, Trial, ceiling::CeilingResult, krate};
use crate::{
    agents::System,
    flowgen::{self, MAX_PROBES, UdpPlan},
    latency::{KernelWatch, Wire, WireWatch, summarize},
    stats::Summary,
    sys,
};

pub const SYSTEMS: [System; 4] = [
    System::Hasync,
    System::CtdDefault,
    System::CtdTuned,
    System::CtdDirect,
];

/// Probes per second.
const PROBE_RATE: f64 = 1000.0;

#[derive(Clone, Debug, Default)]
pub struct Point {
    pub target: f64,
    /// Whether this rate is "80% of the ceiling".
    pub at_80pct: bool,
    pub achieved: Summary,
    pub kernel_p50: Summary,
    pub kernel_p99: Summary,
    pub wire_p50: Summary,
    pub wire_p99: Summary,
    pub probes: u64,
    pub kernel_missing: u64,
    pub wire_missing: u64,
}

#[derive(Clone, Debug, Default)]
pub struct LatencyResult {
    pub reps: usize,
    pub secs: f64,
    pub points: HashMap<System, Vec<Point>>,
    /// The ceiling each system's 80% point was taken from.
    pub ceilings: HashMap<System, f64>,
}

impl LatencyResult {
    pub fn point(&self, s: System, pred: impl Fn(&Point) -> bool) -> Option<&Point> {
        self.points.get(&s)?.iter().find(|p| pred(p))
    }
}

fn has_kernel_view(s: System) -> bool {
    matches!(s, System::Hasync | System::CtdDirect)
}

fn rates(quick: bool, ceiling: f64) -> Vec<(f64, bool)> {
    let k: &[f64] = if quick {
        &[20.0]
    } else {
        &[10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 130.0, 160.0, 200.0]
    };
    let mut v: Vec<(f64, bool)> = k
        .iter()
        .map(|r| r * 1000.0)
        .filter(|r| *r == 20_000.0 || *r <= ceiling)
        .map(|r| (r, false))
        .collect();
    let c80 = (ceiling * 0.8 / 1000.0).round() * 1000.0;
    if c80 >= 1000.0 {
        v.retain(|(r, _)| (*r - c80).abs() > 1.0);
        v.push((c80, true));
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

pub fn steps(quick: bool) -> u64 {
    (if quick { 1 } else { 3 }) * SYSTEMS.len() as u64
}

pub fn run(ctx: &mut Ctx, ceilings: &CeilingResult) -> Result<LatencyResult> {
    let reps = ctx.reps(1, 3);
    let d = ctx.secs(1.5, 3.0);
    let mut res = LatencyResult {
        reps,
        secs: d.as_secs_f64(),
        ..Default::default()
    };
    for rep in 0..reps {
        for sys in SYSTEMS {
            if !ctx.wants(sys) {
                continue;
            }
            let ceiling = match sys {
                System::CtdDirect => ceilings.ceiling(System::CtdTuned),
                s => ceilings.ceiling(s),
            };
            res.ceilings.insert(sys, ceiling);
            ctx.step(format!("latency: {} (rep {}/{reps})", sys.name(), rep + 1));
            for (i, (rate, at80)) in rates(ctx.quick, ceiling).into_iter().enumerate() {
                let t = ctx.trial(sys)?;
                let p = point(ctx, &t, rate, d)?;
                drop(t);
                let points = res.points.entry(sys).or_default();
                if rep == 0 {
                    points.push(Point {
                        target: rate,
                        at_80pct: at80,
                        ..Default::default()
                    });
                }
                if let Some(slot) = points.get_mut(i) {
                    slot.achieved.push(p.achieved);
                    if let Some(k) = &p.kernel {
                        slot.kernel_p50.push(k.p50_ms);
                        slot.kernel_p99.push(k.p99_ms);
                        slot.kernel_missing += (k.sent - k.seen) as u64;
                    }
                    slot.wire_p50.push(p.wire.p50_ms);
                    slot.wire_p99.push(p.wire.p99_ms);
                    slot.wire_missing += (p.wire.sent - p.wire.seen) as u64;
                    slot.probes += p.wire.sent as u64;
                }
            }
            ctx.step_done();
        }
    }
    Ok(res)
}

struct Measured {
    achieved: f64,
    kernel: Option<crate::latency::LatencyResult>,
    wire: crate::latency::LatencyResult,
}

/// One rate in a fresh lab.
fn point(ctx: &mut Ctx, t: &Trial, rate: f64, d: Duration) -> Result<Measured> {
    let kw = if has_kernel_view(t.system) {
        Some(KernelWatch::start(t.lab.b())?)
    } else {
        None
    };
    let wire = if t.system == System::Hasync {
        Wire::Hasync
    } else {
        Wire::Conntrackd
    };
    let ww = WireWatch::start(t.lab.b(), wire)?;
    let probe_every = ((rate / PROBE_RATE).round() as u64).max(1);
    let pb = ctx.run_bar(
        (rate * d.as_secs_f64()) as u64,
        &format!("{} @ {} + probes", t.system.short(), krate(rate)),
    );
    if (rate * d.as_secs_f64()) as u64 / probe_every + 10 > MAX_PROBES {
        anyhow::bail!("too many probes for one run");
    }
    let a0 = crate::topo::ct_count(t.lab.a())?;
    let r = flowgen::run_udp(
        t.lab.client(),
        &UdpPlan {
            first_flow: 0,
            rate: Some(rate),
            duration: d,
            max_flows: None,
            probe_every,
            first_probe: 0,
        },
        Some(&pb),
    )?;
    pb.finish_and_clear();
    let a1 = crate::topo::ct_count(t.lab.a())?;
    // Give stragglers time to arrive.
    sys::sleep(Duration::from_millis(1500))?;
    let (wseen, wstats) = ww.finish()?;
    let wire_res = summarize(&r.probes, &wseen);
    let kernel = match kw {
        Some(k) => {
            let (kseen, kstats) = k.finish()?;
            if kstats.overruns > 0 {
                ctx.say(format!(
                    "  warning: the NEW-event observer overran {} times",
                    kstats.overruns
                ));
            }
            Some(summarize(&r.probes, &kseen))
        }
        None => None,
    };
    let _ = wstats;
    let achieved = (a1 - a0) as f64 / r.elapsed.as_secs_f64();
    ctx.say(format!(
        "  {:12} {:>9}: A {} | wire p50 {:.3} p99 {:.3} ms ({}/{} seen){}",
        t.system.short(),
        krate(rate),
        krate(achieved),
        wire_res.p50_ms,
        wire_res.p99_ms,
        wire_res.seen,
        wire_res.sent,
        kernel
            .as_ref()
            .map(|k| format!(
                " | kernel p50 {:.3} p99 {:.3} max {:.3} ms ({}/{} seen)",
                k.p50_ms, k.p99_ms, k.max_ms, k.seen, k.sent
            ))
            .unwrap_or_default()
    ));
    Ok(Measured {
        achieved,
        kernel,
        wire: wire_res,
    })
}
