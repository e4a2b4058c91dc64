//! Measurement 8, recovery after a sync-link outage: 50,000 new UDP flows/s for 3 s
//! through the primary; from 1 s to 2 s the backup's sync link is down (its veth end,
//! so nothing gets through either way). Recovery time = from the link coming back
//! until the backup holds every flow the primary created (by tuple where the backup's
//! copy is in its kernel, else conntrackd's external cache by count). Live traffic
//! keeps coming for the last second, so the system must catch up while it continues.
//!
//! The backup's count is sampled every 20 ms from before the link comes back, on a
//! thread of its own: the bench learns how many flows to expect only after the
//! traffic, from a dump of fw-a's table (a few hundred ms with a hash of millions of
//! buckets), and that time is the bench's, not the system's.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{Ctx, SYNC_SYSTEMS};
use crate::{agents::System, flowgen, stats::Summary, topo};

pub const RATE: f64 = 50_000.0;

#[derive(Clone, Debug, Default)]
pub struct SystemOutage {
    /// Seconds from link up until nothing was missing (runs that recovered).
    pub recovery_s: Summary,
    /// Seconds from the last flow sent until nothing was missing (runs that recovered;
    /// zero when the backup had every flow by then).
    pub after_traffic_s: Summary,
    /// Entries still missing when the bench gave up (60 s after link up), per run.
    pub missing: Vec<u64>,
    pub reps: usize,
}

#[derive(Clone, Debug, Default)]
pub struct OutageResult {
    pub systems: Vec<(System, SystemOutage)>,
}

pub fn steps(quick: bool) -> u64 {
    SYNC_SYSTEMS.len() as u64 * if quick { 1 } else { 3 }
}

pub fn run(ctx: &mut Ctx) -> Result<OutageResult> {
    let mut out = OutageResult::default();
    let reps = ctx.reps(1, 3);
    for system in SYNC_SYSTEMS {
        if !ctx.wants(system) {
            continue;
        }
        let mut s = SystemOutage::default();
        for rep in 0..reps {
            ctx.step(format!("outage {} rep {}", system.name(), rep + 1));
            let t = ctx.trial(system)?;
            let b = t.lab.b().name().to_string();
            let samples: Mutex<Vec<(Instant, u64)>> = Mutex::default();
            let sampling = AtomicBool::new(true);
            let sampled = thread::scope(|scope| -> Result<_> {
                let link = scope.spawn(move || {
                    thread::sleep(Duration::from_secs(1));
                    let set = |state: &str| {
                        std::process::Command::new("ip")
                            .args(["-n", &b, "link", "set", "sync0", state])
                            .status()
                            .map(|st| st.success())
                            .unwrap_or(false)
                    };
                    let down = set("down");
                    thread::sleep(Duration::from_secs(1));
                    let up = set("up");
                    (down && up).then(Instant::now)
                });
                let sampler = scope.spawn(|| {
                    // Counting is cheap (a /proc read, or one stats query to
                    // conntrackd) and starts only shortly before the link is back.
                    thread::sleep(Duration::from_millis(1900));
                    while sampling.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        if let Ok(have) = t.backup_count()
                            && let Ok(mut v) = samples.lock()
                        {
                            v.push((at, have.saturating_sub(t.b_base)));
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                });
                let sent = flowgen::run_udp(
                    t.lab.client(),
                    &flowgen::UdpPlan {
                        first_flow: 0,
                        rate: Some(RATE),
                        duration: Duration::from_secs(3),
                        max_flows: None,
                        probe_every: 0,
                        first_probe: 0,
                    },
                    None,
                );
                let ended_at = Instant::now();
                let up_at = link
                    .join()
                    .map_err(|_| anyhow::anyhow!("link thread panicked"))?;
                // Expected: what fw-a created (only known now, after a dump).
                let want = sent.and_then(|_| topo::bench_flows(t.lab.a()));
                sampling.store(false, Ordering::Relaxed);
                let _ = sampler.join();
                let up_at = up_at
                    .ok_or_else(|| anyhow::anyhow!("could not take fw-b's sync0 down and up"))?;
                Ok((up_at, ended_at, want?.len() as u64))
            })?;
            let (up_at, ended_at, want) = sampled;
            // The first sample with every flow counted, confirmed by tuple now (a
            // kernel copy); else poll on until the count is there.
            let first_full = samples
                .into_inner()
                .unwrap_or_default()
                .into_iter()
                .find(|&(at, have)| at >= up_at && have >= want)
                .map(|(at, _)| at);
            let (missing, at) = match first_full {
                Some(at) if !t.backup_in_kernel() || t.missing_now()? == 0 => (0, at),
                _ => loop {
                    let have = t.backup_count()?.saturating_sub(t.b_base);
                    if have >= want {
                        let at = Instant::now();
                        // conntrackd's cache can only be counted; a kernel copy is
                        // checked tuple by tuple.
                        if !t.backup_in_kernel() || t.missing_now()? == 0 {
                            break (0, at);
                        }
                    }
                    if up_at.elapsed() > Duration::from_secs(60) {
                        break (t.missing_now()?, Instant::now());
                    }
                    thread::sleep(Duration::from_millis(20));
                },
            };
            let secs = at.saturating_duration_since(up_at).as_secs_f64();
            let after = at.saturating_duration_since(ended_at).as_secs_f64();
            s.reps += 1;
            let line = if missing == 0 {
                s.recovery_s.push(secs);
                s.after_traffic_s.push(after);
                format!(
                    "recovered {secs:.2} s after the link came back, {after:.2} s after the last flow"
                )
            } else {
                format!("{missing} entries still missing 60 s after the link came back")
            };
            s.missing.push(missing);
            ctx.say(format!(
                "outage        {:<22} rep {}: {line}",
                system.name(),
                rep + 1
            ));
            drop(t);
            ctx.step_done();
        }
        out.systems.push((system, s));
    }
    Ok(out)
}
