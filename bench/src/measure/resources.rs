//! Measurements 4 (resident memory per 100,000 / 1,000,000 replicated entries) and 5 (bulk resync
//! and commit). The primary's table is filled with N new flows at half the system's
//! ceiling (at most 100k/s) and the backup catches up; then VmRSS of both agents.
//! conntrackd: `-f external` + `-n` on the backup (resync: the primary sends its
//! whole cache again) timed until the external cache is full again, then `-c`
//! (commit into the backup's kernel) timed until fw-b's table holds the entries.
//! hasync: the backup agent is killed, fw-b's table emptied and a fresh backup agent
//! started; it asks the primary for everything (bulk resync), timed from its "ready"
//! until fw-b's table holds the entries (its kernel, not a cache).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{Ctx, SYNC_SYSTEMS, Trial, ceiling::CeilingResult, krate, wait_quiet};
use crate::{
    agents::{Counters, System, metrics},
    ctd,
    flowgen::{self, UdpPlan},
    stats::Summary,
    sys,
    topo::{self, NetCounters},
};

/// How long a bulk resync may take before it counts as not finishing.
const RESYNC_TIMEOUT_S: u64 = 120;

#[derive(Clone, Debug, Default)]
pub struct SizeResult {
    pub entries: u64,
    pub fill_rate: f64,
    /// Entries the backup lacked after the fill (should be 0).
    pub fill_missing: u64,
    /// VmRSS, MiB: idle (empty tables) and with the entries.
    pub rss_a_idle: Summary,
    pub rss_b_idle: Summary,
    pub rss_a: Summary,
    pub rss_b: Summary,
    /// conntrackd: seconds for `-n` to refill the external cache; hasync: seconds for
    /// a fresh backup's bulk resync to fill its kernel table.
    pub resync_s: Summary,
    /// Bulk resyncs that did not finish, with what was seen.
    pub resync_failed: Vec<String>,
    /// Bulk resyncs that finished only after restarts.
    pub resync_notes: Vec<String>,
    /// conntrackd: seconds from `-c` until fw-b's table holds the entries, and until
    /// the command returned.
    pub commit_s: Summary,
    pub commit_cmd_s: Summary,
}

#[derive(Clone, Debug, Default)]
pub struct ResourcesResult {
    pub reps: usize,
    pub systems: HashMap<System, Vec<SizeResult>>,
}

pub fn sizes(quick: bool) -> Vec<u64> {
    if quick {
        vec![100_000]
    } else {
        vec![100_000, 1_000_000]
    }
}

pub fn steps(quick: bool) -> u64 {
    let reps = if quick { 1 } else { 3 };
    (reps * SYNC_SYSTEMS.len() * sizes(quick).len()) as u64
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(ctx: &mut Ctx, ceilings: &CeilingResult) -> Result<ResourcesResult> {
    let reps = ctx.reps(1, 3);
    let mut res = ResourcesResult {
        reps,
        ..Default::default()
    };
    for (si, n) in sizes(ctx.quick).into_iter().enumerate() {
        for rep in 0..reps {
            for sys in SYNC_SYSTEMS {
                if !ctx.wants(sys) {
                    continue;
                }
                ctx.step(format!(
                    "memory/resync: {} with {n} entries (rep {}/{reps})",
                    sys.name(),
                    rep + 1
                ));
                let rate = (ceilings.ceiling(sys) * 0.5).clamp(10_000.0, 100_000.0);
                let list = res.systems.entry(sys).or_default();
                if list.len() <= si {
                    list.push(SizeResult {
                        entries: n,
                        fill_rate: rate,
                        ..Default::default()
                    });
                }
                let mut t = ctx.trial(sys)?;
                let r = one(ctx, &mut t, n, rate)?;
                let slot = &mut res.systems.get_mut(&sys).expect("inserted")[si];
                slot.fill_missing += r.fill_missing;
                slot.rss_a_idle.push(r.rss_idle.0);
                slot.rss_b_idle.push(r.rss_idle.1);
                slot.rss_a.push(r.rss.0);
                slot.rss_b.push(r.rss.1);
                if let Some(f) = r.resync_failed {
                    slot.resync_failed.push(f);
                }
                if let Some(n) = r.resync_note {
                    slot.resync_notes.push(n);
                }
                if let Some(v) = r.resync_s {
                    slot.resync_s.push(v);
                }
                if let Some((v, c)) = r.commit_s {
                    slot.commit_s.push(v);
                    slot.commit_cmd_s.push(c);
                }
                drop(t);
                ctx.step_done();
            }
        }
    }
    Ok(res)
}

struct One {
    fill_missing: u64,
    rss_idle: (f64, f64),
    rss: (f64, f64),
    resync_s: Option<f64>,
    resync_failed: Option<String>,
    resync_note: Option<String>,
    commit_s: Option<(f64, f64)>,
}

fn one(ctx: &mut Ctx, t: &mut Trial, n: u64, rate: f64) -> Result<One> {
    let pair = t.pair.as_ref().expect("an agent runs");
    let idle = pair.rss()?;
    let a0 = topo::ct_count(t.lab.a())?;
    let b0 = t.backup_count()?;
    let pb = ctx.run_bar(n, &format!("{} fill @ {}", t.system.short(), krate(rate)));
    let r = flowgen::run_udp(
        t.lab.client(),
        &UdpPlan {
            first_flow: 0,
            rate: Some(rate),
            duration: Duration::from_secs_f64(n as f64 / rate * 2.0 + 5.0),
            max_flows: Some(n),
            probe_every: 0,
            first_probe: 0,
        },
        Some(&pb),
    )?;
    pb.finish_and_clear();
    let flows = topo::ct_count(t.lab.a())?.saturating_sub(a0);
    let got = t.settle(b0, flows, Duration::from_secs(3), Duration::from_secs(120))?;
    let pair = t.pair.as_ref().expect("an agent runs");
    let rss = pair.rss()?;
    let mut out = One {
        fill_missing: flows.saturating_sub(got),
        rss_idle: (idle.0 as f64 / MIB, idle.1 as f64 / MIB),
        rss: (rss.0 as f64 / MIB, rss.1 as f64 / MIB),
        resync_s: None,
        resync_failed: None,
        resync_note: None,
        commit_s: None,
    };
    ctx.say(format!(
        "  {:12} {n} entries (sent {} at {}): backup +{got}, RSS A {:.1} MiB B {:.1} MiB (idle {:.1} / {:.1})",
        t.system.short(),
        r.sent,
        krate(r.rate()),
        out.rss.0,
        out.rss.1,
        out.rss_idle.0,
        out.rss_idle.1
    ));
    if t.system == System::Hasync {
        // Bulk resync: a fresh backup agent with an empty table asks the primary for
        // everything; timed from its "ready" until fw-b's table holds the entries.
        wait_quiet(Duration::from_millis(1500))?;
        let want = topo::bench_flows(t.lab.a())?.len() as u64;
        let opts = ctx.opts.clone();
        t.pair
            .as_mut()
            .expect("an agent runs")
            .respawn_backup(&t.lab, &opts)?;
        let spawned = Instant::now();
        let k0 = topo::ct_count(t.lab.b())?;
        let net0 = NetCounters::read(t.lab.b())?;
        let mut ready: Option<Instant> = None;
        let end = spawned + Duration::from_secs(RESYNC_TIMEOUT_S);
        let done = loop {
            let pair = t.pair.as_ref().expect("an agent runs");
            if ready.is_none() && pair.b.ready() {
                ready = Some(Instant::now());
            }
            let k = topo::ct_count(t.lab.b())?.saturating_sub(k0);
            if k >= want {
                break Some(Instant::now());
            }
            if Instant::now() > end {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
            sys::check()?;
        };
        let have = topo::bench_flows(t.lab.b())?.len() as u64;
        let restarts = |t: &Trial| {
            let pair = t.pair.as_ref().expect("an agent runs");
            std::fs::read_to_string(&pair.b.log)
                .unwrap_or_default()
                .matches("asking again")
                .count()
        };
        match (ready, done) {
            (Some(r), Some(d)) if have >= want => {
                let secs = d.duration_since(r).as_secs_f64();
                out.resync_s = Some(secs);
                let n = restarts(t);
                if n > 0 {
                    let drops = NetCounters::read(t.lab.b())?.growth(&net0);
                    out.resync_note = Some(format!(
                        "the backup restarted the transfer {n} times (\"datagrams were lost during the \
                         transfer\"; fw-b: {}) before its table held everything",
                        if drops.is_empty() {
                            "no drop counter moved".to_string()
                        } else {
                            drops.join(", ")
                        }
                    ));
                }
                ctx.say(format!(
                    "  {:12} bulk resync of {want} entries: {:.0} ms from the new backup's ready \
                     (start-up {:.0} ms) to fw-b's table holding them{}",
                    t.system.short(),
                    secs * 1000.0,
                    r.duration_since(spawned).as_secs_f64() * 1000.0,
                    out.resync_note
                        .as_ref()
                        .map(|n| format!("; {n}"))
                        .unwrap_or_default()
                ));
            }
            _ => {
                let pair = t.pair.as_ref().expect("an agent runs");
                let log = std::fs::read_to_string(&pair.b.log).unwrap_or_default();
                let restarts = log.matches("asking again").count();
                let drops = NetCounters::read(t.lab.b())?.growth(&net0);
                let m = metrics(t.lab.b());
                let text = format!(
                    "did not finish in {RESYNC_TIMEOUT_S} s: fw-b held {have} of {want}; the backup restarted \
                     the transfer {restarts} times (\"datagrams were lost during the transfer\"); \
                     fw-b: {}; installs created {} updated {}",
                    if drops.is_empty() {
                        "no drop counter moved".to_string()
                    } else {
                        drops.join(", ")
                    },
                    Counters::get(&m, "installs_total{result=\"created\"}"),
                    Counters::get(&m, "installs_total{result=\"updated\"}"),
                );
                ctx.say(format!(
                    "  warning: hasync bulk resync of {want} entries {text}"
                ));
                out.resync_failed = Some(text);
            }
        }
    }
    let pair = t.pair.as_ref().expect("an agent runs");
    if let Some(files) = pair.b.ctd.clone() {
        wait_quiet(Duration::from_millis(1500))?;
        // Resync: empty the backup's external cache, ask the primary for everything.
        let full = t.backup_count()?;
        ctd::ctl(&files, &["-f", "external"])?;
        let end = Instant::now() + Duration::from_secs(30);
        while t.backup_count()? > full / 100 {
            if Instant::now() > end {
                bail!("conntrackd -f external did not empty the external cache");
            }
            sys::sleep(Duration::from_millis(20))?;
        }
        let start = Instant::now();
        ctd::ctl(&files, &["-n"])?;
        let end = start + Duration::from_secs(120);
        while t.backup_count()? < full {
            if Instant::now() > end {
                bail!("conntrackd -n: the external cache did not refill within 120 s");
            }
            std::thread::sleep(Duration::from_millis(5));
            sys::check()?;
        }
        let resync = start.elapsed().as_secs_f64();
        out.resync_s = Some(resync);
        // Commit: external cache into fw-b's kernel table.
        wait_quiet(Duration::from_millis(1500))?;
        let k0 = topo::ct_count(t.lab.b())?;
        let want = t.backup_count()?;
        let start = Instant::now();
        ctd::ctl(&files, &["-c"])?;
        let cmd = start.elapsed().as_secs_f64();
        let end = start + Duration::from_secs(300);
        let mut last = 0;
        let mut last_change = Instant::now();
        loop {
            let k = topo::ct_count(t.lab.b())?.saturating_sub(k0);
            if k >= want {
                break;
            }
            if k != last {
                last = k;
                last_change = Instant::now();
            }
            if Instant::now() > end || last_change.elapsed() > Duration::from_secs(5) {
                ctx.say(format!(
                    "  warning: commit stopped at {k} of {want} entries in fw-b's kernel"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            sys::check()?;
        }
        let commit = start.elapsed().as_secs_f64();
        out.commit_s = Some((commit, cmd));
        ctx.say(format!(
            "  {:12} resync (-n) {:.0} ms, commit (-c) {:.0} ms (command returned after {:.0} ms)",
            t.system.short(),
            resync * 1000.0,
            commit * 1000.0,
            cmd * 1000.0
        ));
    }
    Ok(out)
}
