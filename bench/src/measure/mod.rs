//! The measurements and what they share: the run context (mode, repetitions, progress
//! bars, log), a trial (fresh lab + agents), and waiting for the backup to catch up.

pub mod auth;
pub mod ceiling;
pub mod failover;
pub mod install;
pub mod latency;
pub mod outage;
pub mod overhead;
pub mod resources;

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::{
    agents::{AgentOpts, Pair, System},
    sys,
    topo::{self, BenchLab},
};

/// Systems compared in every measurement, in report order.
pub const SYNC_SYSTEMS: [System; 3] = [System::Hasync, System::CtdDefault, System::CtdTuned];

/// Run-wide settings, progress display and log.
pub struct Ctx {
    pub quick: bool,
    pub opts: AgentOpts,
    pub mp: MultiProgress,
    pub overall: ProgressBar,
    tty: bool,
    pub log: Vec<String>,
    /// Busy % of the machine (other work) when each trial started.
    pub background: crate::stats::Summary,
    /// How long a trial waits for the machine to be quiet before it starts anyway.
    pub quiet_wait: Duration,
    /// Measure only these systems (development aid); `None` = all.
    pub only: Option<Vec<System>>,
}

impl Ctx {
    pub fn new(quick: bool, opts: AgentOpts, total_steps: u64) -> Ctx {
        let mp = MultiProgress::new();
        let overall = mp.add(ProgressBar::new(total_steps));
        overall.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        Ctx {
            quick,
            opts,
            mp,
            overall,
            tty: std::io::stderr().is_terminal(),
            log: Vec::new(),
            background: Default::default(),
            quiet_wait: Duration::from_millis(1500),
            only: None,
        }
    }

    /// Whether `sys` is measured in this run (the no-agent baseline always is).
    pub fn wants(&self, sys: System) -> bool {
        sys == System::None || self.only.as_ref().is_none_or(|o| o.contains(&sys))
    }

    /// Repetitions of a measurement: `full` normally, `quick` with `--quick`.
    pub fn reps(&self, quick: usize, full: usize) -> usize {
        if self.quick { quick } else { full }
    }

    pub fn secs(&self, quick: f64, full: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { quick } else { full })
    }

    /// A line above the progress bars (and in the run log of the report).
    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        if self.tty {
            let _ = self.mp.println(&line);
        } else {
            eprintln!("{line}");
        }
        self.log.push(line);
    }

    /// Starts a step of the overall bar.
    pub fn step(&self, msg: impl Into<String>) {
        self.overall.set_message(msg.into());
    }

    pub fn step_done(&self) {
        self.overall.inc(1);
    }

    /// A bar for one generator run (`len` flows or connections).
    pub fn run_bar(&self, len: u64, what: &str) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(len.max(1)));
        pb.set_style(
            ProgressStyle::with_template(
                "  {msg:28} [{bar:30.green/white}] {human_pos}/{human_len} {per_sec}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    }

    /// A fresh lab with `system` started on both firewalls, once the machine is quiet.
    pub fn trial(&mut self, system: System) -> Result<Trial> {
        let busy = wait_quiet(self.quiet_wait)?;
        self.background.push(busy * 100.0);
        if busy > 0.3 {
            self.say(format!(
                "  note: the machine was {:.0}% busy with other work when this trial started",
                busy * 100.0
            ));
        }
        let lab = BenchLab::new()?;
        let pair = Pair::start(&lab, system, &self.opts)?;
        let mut t = Trial {
            lab,
            pair,
            system,
            a_base: 0,
            b_base: 0,
        };
        t.a_base = topo::ct_count(t.lab.a())?;
        t.b_base = t.backup_count()?;
        Ok(t)
    }
}

/// One lab with its agents. Drop order: agents first, then the namespaces.
pub struct Trial {
    pub pair: Option<Pair>,
    pub lab: BenchLab,
    pub system: System,
    /// Table sizes right after start (primary's kernel, backup's view).
    pub a_base: u64,
    pub b_base: u64,
}

impl Trial {
    /// Entries the backup holds for the primary: its kernel table (hasync, conntrackd
    /// without external cache) or conntrackd's external cache.
    pub fn backup_count(&self) -> Result<u64> {
        if let Some(p) = &self.pair
            && let Some(n) = p.backup_cache_entries()?
        {
            return Ok(n);
        }
        topo::ct_count(self.lab.b())
    }

    /// Generator flows on the primary the backup lacks now (by tuple when the backup's
    /// copy is in its kernel, else by count against conntrackd's external cache).
    pub fn missing_now(&self) -> Result<u64> {
        let fa = topo::bench_flows(self.lab.a())?;
        if self.backup_in_kernel() {
            let fb = topo::bench_flows(self.lab.b())?;
            return Ok(fa.difference(&fb).count() as u64);
        }
        let gained = self.backup_count()?.saturating_sub(self.b_base);
        Ok((fa.len() as u64).saturating_sub(gained))
    }

    /// Whether the backup's copy lives in its kernel table (else: conntrackd's cache).
    pub fn backup_in_kernel(&self) -> bool {
        matches!(self.system, System::Hasync | System::CtdDirect)
    }

    /// Waits until the backup gained `want` entries since `base`, or stopped gaining
    /// for `idle`, or `max` passed. Returns what it gained.
    pub fn settle(&self, base: u64, want: u64, idle: Duration, max: Duration) -> Result<u64> {
        let start = Instant::now();
        let mut last = self.backup_count()?.saturating_sub(base);
        let mut last_change = Instant::now();
        loop {
            if last >= want || start.elapsed() > max || last_change.elapsed() > idle {
                return Ok(last);
            }
            sys::sleep(Duration::from_millis(100))?;
            let now = self.backup_count()?.saturating_sub(base);
            if now != last {
                last = now;
                last_change = Instant::now();
            }
        }
    }
}

/// Waits (up to `max`) until the whole machine is below 15% busy over 200 ms, so a
/// trial does not start while the previous lab's namespaces are still being torn
/// down by the kernel. Returns the last busy fraction (0–1): what other work the
/// machine had when the trial started.
pub fn wait_quiet(max: Duration) -> Result<f64> {
    let end = Instant::now() + max;
    loop {
        let a = sys::host_cpu();
        sys::sleep(Duration::from_millis(200))?;
        let b = sys::host_cpu();
        let busy = (b.busy - a.busy) as f64 / (b.total - a.total).max(1) as f64;
        if busy < 0.15 || Instant::now() > end {
            return Ok(busy);
        }
    }
}

/// Formats a rate as "123.4k/s".
pub fn krate(r: f64) -> String {
    format!("{:.1}k/s", r / 1000.0)
}
