//! `bench`: hasync against conntrackd, side by side on the same namespace topology.
//! Run it through `cargo xtask bench [--quick]`, which builds hasync first.
//!
//! Writes `bench/results/<date>.md` (`<date>-quick.md` with `--quick`) with a table per
//! measurement and an SVG plot of latency vs offered rate next to it, and prints the
//! tables.

mod agents;
mod ctd;
mod flowgen;
mod latency;
mod measure;
mod report;
mod stats;
mod svg;
mod sys;
mod tcpgen;
mod topo;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};

use measure::{Ctx, auth, ceiling, failover, install, latency as lat, outage, overhead, resources};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Overhead,
    Ceiling,
    Latency,
    Resources,
    Install,
    Failover,
    Auth,
    Outage,
}

#[derive(Parser)]
#[command(name = "bench", about = "hasync vs conntrackd benchmark (run as root)")]
struct Cli {
    /// CI-sized run (under 5 minutes): fewer repetitions, shorter steps.
    #[arg(long)]
    quick: bool,
    /// The hasync binary to run.
    #[arg(long, env = "HASYNC_BIN", default_value = "target/release/hasync")]
    hasync_bin: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Run only these measurements (comma-separated). Latency and memory use the
    /// ceilings of this run, or assume 100k/s without `ceiling`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Seconds each trial waits for the machine to be quiet (other work below 15%)
    /// before starting anyway [default: 1.5 with --quick, 10 otherwise].
    #[arg(long)]
    quiet_wait: Option<f64>,
    /// Development aid: measure only these systems (short names: none, hasync,
    /// ctd-default, ctd-tuned, ctd-direct; comma-separated). The report then shows only
    /// them.
    #[arg(long, hide = true, value_delimiter = ',')]
    systems: Vec<String>,
    /// Development aid: the lossless ceiling (flows/s) latency and memory assume when
    /// `ceiling` is not measured in this run [default: 100000].
    #[arg(long, hide = true)]
    ceiling: Option<f64>,
    /// Development aid (for profiling): start this system (none, hasync, ctd-default,
    /// ctd-tuned, ctd-direct) in a lab, offer `--dev-rate` flows/s (0: flat out) for
    /// `--dev-secs`, print what happened, clean up.
    #[arg(long, hide = true)]
    dev_system: Option<String>,
    #[arg(long, hide = true, default_value_t = 0.0)]
    dev_rate: f64,
    #[arg(long, hide = true, default_value_t = 5.0)]
    dev_secs: f64,
}

fn main() {
    sys::install_interrupt_handler();
    if let Err(e) = run() {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // SAFETY: trivial syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark builds network namespaces and loads eBPF: run it as root");
    }
    if !cli.hasync_bin.exists() {
        bail!(
            "no hasync binary at {} (build it: cargo build --release -p ha-user, or pass --hasync-bin)",
            cli.hasync_bin.display()
        );
    }
    let hasync_bin = std::fs::canonicalize(&cli.hasync_bin)?;
    ensure_installed("conntrackd")?;
    if let Some(name) = &cli.dev_system {
        return dev_run(name, cli.dev_rate, cli.dev_secs, hasync_bin);
    }
    let want = |p: Part| cli.only.is_empty() || cli.only.contains(&p);
    if want(Part::Failover) {
        // Up front, not half an hour into the run.
        ensure_installed("keepalived")?;
    }

    // Room for the largest tables (fw-a + fw-b + a lab still being torn down).
    let host = sys::HostConntrack::ensure(4 << 20)?;
    let opts = agents::AgentOpts {
        hasync_bin,
        max_entries: if cli.quick { 1 << 20 } else { 2 << 20 },
    };
    let q = cli.quick;
    let total = [
        (Part::Overhead, overhead::steps(q)),
        (Part::Ceiling, ceiling::steps(q)),
        (Part::Latency, lat::steps(q)),
        (Part::Resources, resources::steps(q)),
        (Part::Install, install::steps(q)),
        (Part::Failover, failover::steps(q)),
        (Part::Auth, auth::steps(q)),
        (Part::Outage, outage::steps(q)),
    ]
    .iter()
    .filter(|(p, _)| want(*p))
    .map(|(_, n)| n)
    .sum();
    let mut ctx = Ctx::new(q, opts, total);
    if !cli.systems.is_empty() {
        let mut only = Vec::new();
        for name in &cli.systems {
            only.push(
                agents::System::from_short(name)
                    .with_context(|| format!("--systems: unknown system {name}"))?,
            );
        }
        ctx.only = Some(only);
    }
    ctx.quiet_wait = Duration::from_secs_f64(cli.quiet_wait.unwrap_or(if q { 1.5 } else { 10.0 }));
    let started = Instant::now();
    ctx.say(format!(
        "hasync bench ({}), {}",
        if q { "quick" } else { "full" },
        host.describe()
    ));
    let mut results = report::Results::default();
    // A measurement that fails is reported and the run goes on: the others' results
    // (tens of minutes of work) still make the report.
    let mut failed: Vec<String> = Vec::new();
    let mut part = |ctx: &mut Ctx, name: &str, r: Result<()>| {
        if let Err(e) = r {
            ctx.say(format!("measurement {name} FAILED: {e:#}"));
            failed.push(name.to_string());
        }
    };
    if want(Part::Overhead) {
        let r = overhead::run(&mut ctx).map(|v| results.overhead = Some(v));
        part(&mut ctx, "overhead", r);
    }
    if want(Part::Ceiling) {
        let r = ceiling::run(&mut ctx).map(|v| results.ceiling = Some(v));
        part(&mut ctx, "ceiling", r);
    }
    let ceilings = results.ceiling.clone().unwrap_or_else(|| {
        let mut c = ceiling::CeilingResult::default();
        for s in measure::SYNC_SYSTEMS {
            let assumed = cli.ceiling.unwrap_or(100_000.0);
            c.systems.entry(s).or_default().ceiling.push(assumed);
        }
        c
    });
    if want(Part::Latency) {
        let r = lat::run(&mut ctx, &ceilings).map(|v| results.latency = Some(v));
        part(&mut ctx, "latency", r);
    }
    if want(Part::Resources) {
        let r = resources::run(&mut ctx, &ceilings).map(|v| results.resources = Some(v));
        part(&mut ctx, "resources", r);
    }
    if want(Part::Install) {
        let r = install::run(&mut ctx).map(|v| results.install = Some(v));
        part(&mut ctx, "install", r);
    }
    if want(Part::Failover) {
        let r = failover::run(&mut ctx).map(|v| results.failover = Some(v));
        part(&mut ctx, "failover", r);
    }
    if want(Part::Auth) {
        let r = auth::run(&mut ctx, results.ceiling.as_ref()).map(|v| results.auth = Some(v));
        part(&mut ctx, "auth", r);
    }
    if want(Part::Outage) {
        let r = outage::run(&mut ctx).map(|v| results.outage = Some(v));
        part(&mut ctx, "outage", r);
    }
    ctx.overall.finish_and_clear();

    let date = today();
    let stem = if q {
        format!("{date}-quick")
    } else {
        date.clone()
    };
    let meta = report::Meta {
        date,
        quick: q,
        minutes: started.elapsed().as_secs_f64() / 60.0,
        machine: machine(),
        versions: versions(&ctx.opts.hasync_bin),
        host_tuning: host.describe(),
        svg_name: format!("{stem}-latency.svg"),
        log: ctx.log.clone(),
        background: ctx.background.clone(),
        quiet_wait_s: ctx.quiet_wait.as_secs_f64(),
    };
    let (md, svg) = report::markdown(&results, &meta);
    std::fs::create_dir_all(&cli.out_dir)?;
    let md_path = cli.out_dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, &md)?;
    if let Some(svg) = svg {
        std::fs::write(cli.out_dir.join(&meta.svg_name), svg)?;
    }
    // The tables (without the run log) on stdout.
    let shown = md.split("<details>").next().unwrap_or(&md);
    println!("{shown}");
    println!("report: {}", md_path.display());
    drop(host);
    if !failed.is_empty() {
        bail!(
            "these measurements failed (see the run log in the report): {}",
            failed.join(", ")
        );
    }
    Ok(())
}

fn dev_run(name: &str, rate: f64, secs: f64, hasync_bin: PathBuf) -> Result<()> {
    let system =
        agents::System::from_short(name).with_context(|| format!("unknown system {name}"))?;
    let _host = sys::HostConntrack::ensure(4 << 20)?;
    let opts = agents::AgentOpts {
        hasync_bin,
        max_entries: 2 << 20,
    };
    let mut ctx = Ctx::new(true, opts, 1);
    let t = ctx.trial(system)?;
    let c0 = t.pair.as_ref().map(|p| p.cpu()).transpose()?;
    let r = flowgen::run_udp(
        t.lab.client(),
        &flowgen::UdpPlan {
            first_flow: 0,
            rate: (rate > 0.0).then_some(rate),
            duration: Duration::from_secs_f64(secs),
            max_flows: None,
            probe_every: 0,
            first_probe: 0,
        },
        None,
    )?;
    let a = topo::ct_count(t.lab.a())?.saturating_sub(t.a_base);
    std::thread::sleep(Duration::from_secs(2));
    let b = t.backup_count()?.saturating_sub(t.b_base);
    println!(
        "{}: sent {} ({:.0}/s), fw-a +{a} ({:.0}/s), backup +{b}",
        system.name(),
        r.sent,
        r.rate(),
        a as f64 / r.elapsed.as_secs_f64()
    );
    if let (Some(p), Some(c0)) = (&t.pair, c0) {
        let c1 = p.cpu()?;
        println!(
            "agent CPU ms (stat, schedstat): A {:?} B {:?}",
            c1.0.ms_since(&c0.0),
            c1.1.ms_since(&c0.1)
        );
        if system == agents::System::Hasync {
            let m = agents::metrics(t.lab.a());
            let get = |k: &str| m.iter().find(|(n, _)| n == k).map_or(0.0, |(_, v)| *v);
            let dgrams = get("sync_sent_datagrams_total");
            println!(
                "A sent {dgrams} datagrams ({:.1} flows each), {} drain rounds",
                a as f64 / dgrams.max(1.0),
                get("capture_drain_rounds_total")
            );
        }
        for (node, n) in [("A", &p.a), ("B", &p.b)] {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            for l in log
                .lines()
                .filter(|l| l.contains("resync") || l.contains("WARN"))
            {
                println!("{node}: {l}");
            }
        }
    }
    Ok(())
}

/// A program from the Debian package of the same name (conntrackd, keepalived);
/// installed when missing.
fn ensure_installed(prog: &str) -> Result<()> {
    if which(prog) {
        return Ok(());
    }
    eprintln!("bench: {prog} is missing; installing it (apt-get install -y {prog})");
    let st = Command::new("apt-get")
        .args(["install", "-y", prog])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !st.success() || !which(prog) {
        bail!("could not install {prog} (apt-get install -y {prog})");
    }
    Ok(())
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(prog).is_file()
}

fn cmd_out(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", cmd_out("uname", &["-r"]))
}

fn versions(hasync_bin: &Path) -> String {
    let ctd = cmd_out("dpkg-query", &["-W", "-f=${Version}", "conntrackd"]);
    let rev = cmd_out("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !cmd_out(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "ha-user",
            "ha-common",
            "ha-ebpf",
        ],
    )
    .is_empty();
    let hv = cmd_out(&hasync_bin.to_string_lossy(), &["--version"]);
    format!(
        "{hv} (git {rev}{}), conntrackd {ctd}",
        if dirty {
            ", with uncommitted changes"
        } else {
            ""
        }
    )
}

/// Today's date (UTC), YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }
}
