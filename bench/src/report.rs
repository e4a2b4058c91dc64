//! The report: one markdown table per measurement (hasync, conntrackd default and
//! tuned, ratios), the goals hasync must meet, method notes, the run log, and the
//! latency-vs-rate SVG.

use std::fmt::Write as _;

use crate::{
    agents::System,
    measure::{
        ceiling::{CPU_RATE, CeilingResult, Step},
        install::InstallResult,
        krate,
        latency::{LatencyResult, Point},
        overhead::OverheadResult,
        resources::ResourcesResult,
    },
    stats::Summary,
    svg::{self, Series},
};

#[derive(Default)]
pub struct Results {
    pub overhead: Option<OverheadResult>,
    pub ceiling: Option<CeilingResult>,
    pub latency: Option<LatencyResult>,
    pub resources: Option<ResourcesResult>,
    pub install: Option<InstallResult>,
    pub failover: Option<crate::measure::failover::FailoverResult>,
    pub auth: Option<crate::measure::auth::AuthResult>,
    pub outage: Option<crate::measure::outage::OutageResult>,
}

pub struct Meta {
    pub date: String,
    pub quick: bool,
    pub minutes: f64,
    pub machine: String,
    pub versions: String,
    pub host_tuning: String,
    pub svg_name: String,
    pub log: Vec<String>,
    /// Busy % of the machine from other work at trial starts.
    pub background: Summary,
    pub quiet_wait_s: f64,
}

const S_H: System = System::Hasync;
const S_D: System = System::CtdDefault;
const S_T: System = System::CtdTuned;

/// "median (min–max)" with `dec` decimals, scaled by `k`; "—" when empty.
fn cell(s: Option<&Summary>, k: f64, dec: usize) -> String {
    match s {
        Some(s) if !s.is_empty() => {
            let (lo, med, hi) = (s.min() * k, s.median() * k, s.max() * k);
            if s.values.len() == 1 || (hi - lo).abs() < 10f64.powi(-(dec as i32)) {
                format!("{med:.dec$}")
            } else {
                format!("{med:.dec$} ({lo:.dec$}–{hi:.dec$})")
            }
        }
        _ => "—".into(),
    }
}

fn ratio(a: Option<&Summary>, b: Option<&Summary>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() && b.median() != 0.0 => {
            format!("{:.2}", a.median() / b.median())
        }
        _ => "—".into(),
    }
}

fn summary_of(values: impl IntoIterator<Item = f64>) -> Summary {
    let mut s = Summary::default();
    for v in values {
        s.push(v);
    }
    s
}

struct Table {
    out: String,
}

impl Table {
    fn new(cols: &[&str]) -> Table {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", cols.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            cols.iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        Table { out }
    }

    fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.out, "| {} |", cells.join(" | "));
    }
}

const SYNC_COLS: [&str; 6] = [
    "",
    "hasync",
    "conntrackd (default)",
    "conntrackd (tuned)",
    "hasync ÷ ctd default",
    "hasync ÷ ctd tuned",
];

/// A row with hasync / ctd default / ctd tuned summaries and both ratios.
fn sync_row(
    t: &mut Table,
    label: &str,
    h: Option<&Summary>,
    d: Option<&Summary>,
    tu: Option<&Summary>,
    k: f64,
    dec: usize,
) {
    t.row(&[
        label.to_string(),
        cell(h, k, dec),
        cell(d, k, dec),
        cell(tu, k, dec),
        ratio(h, d),
        ratio(h, tu),
    ]);
}

fn first_failure_text(steps: &[&Step], top: &[&Step], overload: Option<&Step>) -> String {
    let signals = |s: &Step| {
        let sig: Vec<&str> = s
            .signals
            .iter()
            .map(|x| x.as_str())
            .filter(|x| !x.contains("sync_send_blocked"))
            .take(6)
            .collect();
        if sig.is_empty() {
            "no loss counter moved".to_string()
        } else {
            sig.join("; ")
        }
    };
    let Some(s) = steps.first() else {
        let best = top.iter().map(|s| s.achieved).fold(0.0, f64::max);
        let mut text = format!(
            "nothing lost in the climb; fw-a created at most {} with it running (the primary's limit)",
            krate(best)
        );
        if let Some(o) = overload {
            if o.lossless() {
                text.push_str("; nothing lost flat out either");
            } else {
                let _ = write!(
                    text,
                    "; flat out ({}): {} of {} missing; {}",
                    krate(o.achieved),
                    o.missing,
                    o.flows,
                    signals(o)
                );
            }
        }
        return text;
    };
    let rate = s.target.map(krate).unwrap_or_else(|| "flat out".into());
    format!(
        "at {rate} (fw-a {}): {} of {} entries missing; {}",
        krate(s.achieved),
        s.missing.max(s.exact_missing.unwrap_or(0)),
        s.flows,
        signals(s)
    )
}

pub fn markdown(r: &Results, m: &Meta) -> (String, Option<String>) {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# hasync vs conntrackd — {}{}\n",
        m.date,
        if m.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "{} · {} · {} · run took {:.1} min{}\n",
        m.machine,
        m.versions,
        m.host_tuning,
        m.minutes,
        if m.quick {
            " · **`--quick`: fewer repetitions and shorter runs than the full benchmark (see each section)**"
        } else {
            ""
        }
    );
    md.push_str(
        "Cells: median (min–max) over the repetitions given per section. Ratios divide the medians \
         (hasync ÷ conntrackd). Both systems run one at a time in the same run on the same namespace \
         topology (client — LAN bridge — fw-a/fw-b — WAN bridge — server, sync link `sync0`), each \
         trial in fresh namespaces. **conntrackd (default)**: the shipped FTFW example (2 MiB netlink \
         buffer growing to 8 MiB, 1.2 MB socket buffers, resend queue 131,072, SCHED_RR 99). \
         **conntrackd (tuned)**: 16 MiB netlink and socket buffers, resend queue 1,000,000, normal \
         scheduling (`chrt -o` after start). **hasync**: default settings.\n\n",
    );

    goals(&mut md, r);

    // 1. Overhead
    if let Some(o) = &r.overhead {
        let _ = writeln!(
            md,
            "## 1. Overhead: new connections/s the primary sustains\n\n{} repetitions × {:.0} s flat out. \
             UDP: one new flow per packet (sendmmsg) from the client through fw-a; rate = entries fw-a's \
             table gained per second. TCP: {} handshakes in flight, each closed with RST once \
             established; rate = connections completed per second.\n",
            o.reps,
            o.secs,
            crate::measure::overhead::TCP_CONCURRENCY
        );
        let mut t = Table::new(&[
            "",
            "no agent",
            "hasync",
            "conntrackd (default)",
            "conntrackd (tuned)",
            "hasync ÷ ctd default",
            "hasync ÷ ctd tuned",
        ]);
        for (label, map) in [("UDP new flows/s", &o.udp), ("TCP connections/s", &o.tcp)] {
            let n = map.get(&System::None);
            let (h, d, tu) = (map.get(&S_H), map.get(&S_D), map.get(&S_T));
            t.row(&[
                label.into(),
                cell(n, 1.0, 0),
                cell(h, 1.0, 0),
                cell(d, 1.0, 0),
                cell(tu, 1.0, 0),
                ratio(h, d),
                ratio(h, tu),
            ]);
            let pct = |s: Option<&Summary>| match (s, n) {
                (Some(s), Some(n)) if !s.is_empty() && !n.is_empty() => {
                    format!("{:.0}%", s.median() / n.median() * 100.0)
                }
                _ => "—".into(),
            };
            t.row(&[
                format!("{label}: % of no agent"),
                "100%".into(),
                pct(h),
                pct(d),
                pct(tu),
                String::new(),
                String::new(),
            ]);
        }
        md.push_str(&t.out);
        md.push('\n');
    }

    // 2. Ceiling
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            md,
            "## 2. Lossless ceiling\n\n{} repetition(s); the offered rate rises in steps of {:.0} s \
             (last step: generator flat out); after each step the bench waits until the backup stops \
             gaining entries and compares (hasync: fw-b's kernel table, also tuple by tuple; conntrackd: \
             its external cache). Ceiling = highest rate fw-a created entries at with nothing missing.{}\n",
            c.reps,
            c.step_secs,
            if m.quick {
                " Quick mode: coarse steps, no bisection, no after-overload wait."
            } else {
                " The gap between the last lossless and first lossy step is bisected twice."
            }
        );
        let mut t = Table::new(&SYNC_COLS);
        let get = |s| c.systems.get(&s).map(|x| &x.ceiling);
        sync_row(
            &mut t,
            "lossless ceiling (new flows/s)",
            get(S_H),
            get(S_D),
            get(S_T),
            1.0,
            0,
        );
        if let Some(o) = &r.overhead
            && let Some(n) = o.udp.get(&System::None)
            && !n.is_empty()
        {
            let pct = |s: System| {
                get(s)
                    .filter(|x| !x.is_empty())
                    .map(|x| format!("{:.0}%", x.median() / n.median() * 100.0))
                    .unwrap_or_else(|| "—".into())
            };
            t.row(&[
                "ceiling as % of the no-agent UDP rate".into(),
                pct(S_H),
                pct(S_D),
                pct(S_T),
                String::new(),
                String::new(),
            ]);
        }
        t.row(&[
            "what fails first".into(),
            first_failure_text(&c.first_losses(S_H), &c.top_steps(S_H), c.overload(S_H)),
            first_failure_text(&c.first_losses(S_D), &c.top_steps(S_D), c.overload(S_D)),
            first_failure_text(&c.first_losses(S_T), &c.top_steps(S_T), c.overload(S_T)),
            String::new(),
            String::new(),
        ]);
        let after = |s: System| {
            let x = c.systems.get(&s);
            match (
                x.and_then(|x| x.overload.as_ref()),
                x.and_then(|x| x.after_overload),
            ) {
                (Some(o), Some((b, a, w))) => {
                    let mut text = format!(
                        "flat out {:.0} s at {}: {b} of {} missing",
                        o.flows as f64 / o.achieved.max(1.0),
                        krate(o.achieved),
                        o.flows
                    );
                    if w > 0.0 {
                        let _ = write!(text, ", {a} still missing {w:.0} s later");
                    } else if b > 0 {
                        text.push_str(" (not re-checked later in --quick)");
                    }
                    let sig: Vec<&str> = o
                        .signals
                        .iter()
                        .map(|x| x.as_str())
                        .filter(|x| !x.contains("sync_send_blocked"))
                        .take(5)
                        .collect();
                    if !sig.is_empty() {
                        let _ = write!(text, "; {}", sig.join("; "));
                    }
                    text
                }
                _ => "not measured".into(),
            }
        };
        t.row(&[
            "divergence after overload".into(),
            after(S_H),
            after(S_D),
            after(S_T),
            String::new(),
            String::new(),
        ]);
        md.push_str(&t.out);
        md.push_str("\nSteps of the first repetition:\n\n");
        let mut t = Table::new(&[
            "system",
            "offered",
            "fw-a created/s",
            "entries",
            "missing",
            "backup caught up after",
            "CPU ms/1k A / B",
            "sync bytes per flow, flows per datagram",
            "counters that moved",
        ]);
        for s in [S_H, S_D, S_T] {
            if let Some(run) = c.systems.get(&s).and_then(|x| x.runs.first()) {
                for st in run {
                    t.row(&[
                        s.name().into(),
                        st.target.map(krate).unwrap_or_else(|| "flat out".into()),
                        krate(st.achieved),
                        st.flows.to_string(),
                        match st.exact_missing {
                            Some(e) => format!("{} (by tuple: {e})", st.missing),
                            None => st.missing.to_string(),
                        },
                        if st.catch_up_s < 0.05 {
                            "at once".to_string()
                        } else {
                            format!("{:.1} s", st.catch_up_s)
                        },
                        format!("{:.2} / {:.2}", st.cpu_sched.0, st.cpu_sched.1),
                        format!(
                            "{:.0} B, {:.1}",
                            st.wire_bytes_per_flow, st.flows_per_datagram
                        ),
                        if st.signals.is_empty() {
                            "—".into()
                        } else {
                            st.signals.join("; ")
                        },
                    ]);
                }
            }
        }
        md.push_str(&t.out);
        md.push('\n');
    }

    // 3. Latency
    let mut svg_out = None;
    if let Some(l) = &r.latency {
        let _ = writeln!(
            md,
            "## 3. Convergence latency (creation on the primary → present on the backup)\n\n\
             {} repetition(s) × {:.1} s per rate; ~1,000 probe flows/s among the background flows, each \
             stamped (CLOCK_MONOTONIC) just before its `sendto` in the client namespace. **kernel**: a \
             ctnetlink NEW-event listener in fw-b's namespace (BPF-filtered to the probes) stamps the \
             entry's arrival in the backup's kernel table. **wire**: a packet socket on fw-b's `sync0` \
             stamps the first sync datagram carrying the probe (hasync datagrams verified and decoded \
             with hasync's receiver). conntrackd with its external cache puts nothing into the \
             backup's kernel until a commit (`-c`, see section 5), so its latency is the wire/cache \
             arrival; \"conntrackd (tuned, no ext. cache)\" (`DisableExternalCache yes`) injects at \
             once and is measured in the kernel. 80% points use each system's own median ceiling.\n",
            l.reps, l.secs
        );
        let mut t = Table::new(&[
            "",
            "hasync (kernel)",
            "hasync (wire)",
            "conntrackd default (wire ≈ cache)",
            "conntrackd tuned (wire ≈ cache)",
            "conntrackd no ext. cache (kernel)",
            "hasync kernel ÷ ctd default wire",
            "hasync kernel ÷ ctd tuned wire",
        ]);
        let at = |s: System, p80: bool| -> Option<&Point> {
            if p80 {
                l.point(s, |p| p.at_80pct)
            } else {
                l.point(s, |p| p.target == 20_000.0)
            }
        };
        for p80 in [false, true] {
            for (q, pick_k, pick_w) in [
                (
                    "p50",
                    (|p: &Point| &p.kernel_p50) as fn(&Point) -> &Summary,
                    (|p: &Point| &p.wire_p50) as fn(&Point) -> &Summary,
                ),
                ("p99", |p: &Point| &p.kernel_p99, |p: &Point| &p.wire_p99),
            ] {
                let label = if p80 {
                    let rates: Vec<String> = [S_H, S_D, S_T, System::CtdDirect]
                        .iter()
                        .filter_map(|s| at(*s, true).map(|p| krate(p.target)))
                        .collect();
                    format!("{q} ms at 80% of ceiling ({})", rates.join(" / "))
                } else {
                    format!("{q} ms at 20k/s")
                };
                let hk = at(S_H, p80).map(pick_k);
                let hw = at(S_H, p80).map(pick_w);
                let dw = at(S_D, p80).map(pick_w);
                let tw = at(S_T, p80).map(pick_w);
                let xk = at(System::CtdDirect, p80).map(pick_k);
                t.row(&[
                    label,
                    cell(hk, 1.0, 3),
                    cell(hw, 1.0, 3),
                    cell(dw, 1.0, 3),
                    cell(tw, 1.0, 3),
                    cell(xk, 1.0, 3),
                    ratio(hk, dw),
                    ratio(hk, tw),
                ]);
            }
        }
        let missing = |s: System, kernel: bool| {
            l.points
                .get(&s)
                .map(|ps| {
                    let (miss, total): (u64, u64) = ps.iter().fold((0, 0), |(m, t), p| {
                        (
                            m + if kernel {
                                p.kernel_missing
                            } else {
                                p.wire_missing
                            },
                            t + p.probes,
                        )
                    });
                    format!("{miss} of {total}")
                })
                .unwrap_or_else(|| "—".into())
        };
        t.row(&[
            "probes never seen (all rates)".into(),
            missing(S_H, true),
            missing(S_H, false),
            missing(S_D, false),
            missing(S_T, false),
            missing(System::CtdDirect, true),
            String::new(),
            String::new(),
        ]);
        md.push_str(&t.out);
        let _ = writeln!(md, "\n![latency vs offered rate]({})\n", m.svg_name);
        md.push_str("All rates (median p50 / p99 in ms):\n\n");
        let mut t = Table::new(&[
            "system",
            "view",
            "offered",
            "fw-a created/s",
            "p50 ms",
            "p99 ms",
        ]);
        for s in [S_H, S_D, S_T, System::CtdDirect] {
            for p in l.points.get(&s).into_iter().flatten() {
                let views: &[(&str, &Summary, &Summary)] = if matches!(s, S_H | System::CtdDirect) {
                    &[
                        ("kernel", &p.kernel_p50, &p.kernel_p99),
                        ("wire", &p.wire_p50, &p.wire_p99),
                    ]
                } else {
                    &[("wire", &p.wire_p50, &p.wire_p99)]
                };
                for (v, a, b) in views {
                    t.row(&[
                        s.name().into(),
                        v.to_string(),
                        format!(
                            "{}{}",
                            krate(p.target),
                            if p.at_80pct { " (80%)" } else { "" }
                        ),
                        cell(Some(&p.achieved), 1.0, 0),
                        cell(Some(a), 1.0, 3),
                        cell(Some(b), 1.0, 3),
                    ]);
                }
            }
        }
        md.push_str(&t.out);
        md.push('\n');
        svg_out = Some(latency_svg(l));
    }

    // 4. CPU and memory
    if r.ceiling.is_some() || r.resources.is_some() {
        md.push_str("## 4. CPU and memory\n\n");
        md.push_str(
            "CPU: utime+stime of the agent process (`/proc/<pid>/stat`, all threads) over a step, \
             from the start of sending until the backup caught up, ÷ new flows created on fw-a × 1,000; \
             in brackets the same from `/proc/<pid>/task/*/schedstat` (ns resolution). Work done in \
             softirq context is charged to whatever thread the CPU was running at the time (this \
             kernel has no separate IRQ time accounting): the eBPF program and conntrack event \
             delivery run with the forwarded packets, mostly in the generator's time, while the \
             peer's receipt of a sync datagram runs in the sending agent's (a profile of hasync's \
             sender at 20k/s: 29% of its samples were softirq, nearly all of it the datagram's \
             receipt on the backup). The whole-machine row (busy time of both cores ÷ flows, minus \
             the same without an agent) includes all of it, along with the generator's share that a \
             slower machine spends; it is only meaningful when nothing else ran on the machine (see \
             the method notes).\n\n",
        );
        let mut t = Table::new(&SYNC_COLS);
        if let Some(c) = &r.ceiling {
            let cpu = |s: System, b: bool, sched: bool, top: bool| -> Summary {
                let steps = if top {
                    c.top_steps(s)
                } else {
                    c.steps_at(s, CPU_RATE)
                };
                summary_of(steps.iter().map(|st| {
                    let v = if sched { st.cpu_sched } else { st.cpu_stat };
                    if b { v.1 } else { v.0 }
                }))
            };
            for (label, b, top) in [
                (
                    format!("CPU ms per 1,000 events, primary, at {}", krate(CPU_RATE)),
                    false,
                    false,
                ),
                (
                    format!("CPU ms per 1,000 events, backup, at {}", krate(CPU_RATE)),
                    true,
                    false,
                ),
                (
                    "CPU ms per 1,000 events, primary, at its ceiling".to_string(),
                    false,
                    true,
                ),
                (
                    "CPU ms per 1,000 events, backup, at its ceiling".to_string(),
                    true,
                    true,
                ),
            ] {
                let (h, d, tu) = (
                    cpu(S_H, b, false, top),
                    cpu(S_D, b, false, top),
                    cpu(S_T, b, false, top),
                );
                let (hs, ds, ts) = (
                    cpu(S_H, b, true, top),
                    cpu(S_D, b, true, top),
                    cpu(S_T, b, true, top),
                );
                t.row(&[
                    label,
                    format!("{} [{}]", cell(Some(&h), 1.0, 2), cell(Some(&hs), 1.0, 2)),
                    format!("{} [{}]", cell(Some(&d), 1.0, 2), cell(Some(&ds), 1.0, 2)),
                    format!("{} [{}]", cell(Some(&tu), 1.0, 2), cell(Some(&ts), 1.0, 2)),
                    ratio(Some(&hs), Some(&ds)),
                    ratio(Some(&hs), Some(&ts)),
                ]);
            }
            let base = c.baseline_host_ms_per_k.median();
            let host = |s: System| {
                summary_of(
                    c.steps_at(s, CPU_RATE)
                        .iter()
                        .map(|st| st.host_ms_per_k - base),
                )
            };
            let (h, d, tu) = (host(S_H), host(S_D), host(S_T));
            sync_row(
                &mut t,
                &format!(
                    "whole machine: extra CPU ms per 1,000 new flows at {} (no agent: {:.2})",
                    krate(CPU_RATE),
                    base
                ),
                Some(&h),
                Some(&d),
                Some(&tu),
                1.0,
                2,
            );
        }
        if let Some(rs) = &r.resources {
            for size in crate::measure::resources::sizes(m.quick) {
                let get = |s: System, b: bool, idle: bool| {
                    rs.systems
                        .get(&s)
                        .and_then(|v| v.iter().find(|x| x.entries == size))
                        .map(|x| match (b, idle) {
                            (false, false) => &x.rss_a,
                            (true, false) => &x.rss_b,
                            (false, true) => &x.rss_a_idle,
                            (true, true) => &x.rss_b_idle,
                        })
                };
                for (node, b) in [("primary", false), ("backup", true)] {
                    sync_row(
                        &mut t,
                        &format!("VmRSS MiB, {node}, {size} entries"),
                        get(S_H, b, false),
                        get(S_D, b, false),
                        get(S_T, b, false),
                        1.0,
                        1,
                    );
                }
                if size == 100_000 {
                    for (node, b) in [("primary", false), ("backup", true)] {
                        sync_row(
                            &mut t,
                            &format!("VmRSS MiB, {node}, idle (empty tables)"),
                            get(S_H, b, true),
                            get(S_D, b, true),
                            get(S_T, b, true),
                            1.0,
                            1,
                        );
                    }
                }
            }
            let fill: Vec<String> = [S_H, S_D, S_T]
                .iter()
                .filter_map(|s| {
                    rs.systems
                        .get(s)
                        .and_then(|v| v.first())
                        .map(|x| format!("{} {}", s.name(), krate(x.fill_rate)))
                })
                .collect();
            let _ = writeln!(
                md,
                "Memory: {} repetition(s) per size; tables filled at half each system's ceiling ({}).\n",
                rs.reps,
                fill.join(", ")
            );
        }
        md.push_str(&t.out);
        md.push('\n');
    }

    // 5. Install and resync
    if r.install.is_some() || r.resources.is_some() {
        md.push_str("## 5. Backup install rate and bulk resync\n\n");
        md.push_str(
            "hasync: `hasync::kernel::ctnetlink::Installer::install` of N new replicated flows (UDP, \
             SNAT) in one call, into a fresh namespace with the firewall ruleset (library use). \
             conntrackd: `conntrackd -c` on the backup, from the call until fw-b's table holds the \
             entries (commit of the external cache into the kernel); resync: `-f external` then `-n` on \
             the backup, until its external cache is full again (polled every ~5 ms through `conntrackd \
             -s`, so ±10 ms). hasync bulk resync: the backup agent is killed, fw-b's table flushed, a \
             fresh backup agent started; timed from its \"ready\" log line until fw-b's kernel table \
             holds the primary's entries (polled every 5 ms).\n\n",
        );
        let mut t = Table::new(&SYNC_COLS);
        let mut sizes: Vec<u64> = Vec::new();
        if let Some(i) = &r.install {
            sizes.extend(i.sizes.iter().map(|s| s.entries));
        }
        if let Some(rs) = &r.resources {
            for v in rs.systems.values() {
                sizes.extend(v.iter().map(|x| x.entries));
            }
        }
        sizes.sort();
        sizes.dedup();
        for n in sizes {
            let hs = r
                .install
                .as_ref()
                .and_then(|i| i.sizes.iter().find(|s| s.entries == n))
                .map(|s| &s.secs);
            let ctd = |s: System, commit: bool| {
                r.resources
                    .as_ref()
                    .and_then(|rs| rs.systems.get(&s))
                    .and_then(|v| v.iter().find(|x| x.entries == n))
                    .map(|x| if commit { &x.commit_s } else { &x.resync_s })
            };
            sync_row(
                &mut t,
                &format!("install {n} entries into a kernel, s (hasync: Installer; ctd: commit)"),
                hs,
                ctd(S_D, true),
                ctd(S_T, true),
                1.0,
                3,
            );
            let rate =
                |s: Option<&Summary>| s.map(|s| summary_of(s.values.iter().map(|v| n as f64 / v)));
            let (hr, dr, tr) = (rate(hs), rate(ctd(S_D, true)), rate(ctd(S_T, true)));
            sync_row(
                &mut t,
                &format!("install rate, entries/s ({n})"),
                hr.as_ref(),
                dr.as_ref(),
                tr.as_ref(),
                1.0,
                0,
            );
            let hsize = r
                .resources
                .as_ref()
                .and_then(|rs| rs.systems.get(&S_H))
                .and_then(|v| v.iter().find(|x| x.entries == n));
            let hr = hsize.map(|x| &x.resync_s).filter(|s| !s.is_empty());
            let hcell = match hsize {
                Some(x) if !x.resync_failed.is_empty() => format!(
                    "**{} of {} runs did not finish**{}: {}",
                    x.resync_failed.len(),
                    x.resync_failed.len() + x.resync_s.values.len(),
                    hr.map(|s| format!(" (the others: {})", cell(Some(s), 1.0, 3)))
                        .unwrap_or_default(),
                    x.resync_failed[0]
                ),
                Some(x) if !x.resync_notes.is_empty() => format!(
                    "{} — in {} of {} runs {}",
                    hr.map(|s| cell(Some(s), 1.0, 3)).unwrap_or_default(),
                    x.resync_notes.len(),
                    x.resync_s.values.len(),
                    x.resync_notes[0]
                ),
                _ => hr
                    .map(|s| cell(Some(s), 1.0, 3))
                    .unwrap_or_else(|| "n/a (not measured)".into()),
            };
            t.row(&[
                format!(
                    "bulk resync of {n} entries, s (hasync: into fw-b's kernel; ctd: into its cache)"
                ),
                hcell,
                cell(ctd(S_D, false), 1.0, 3),
                cell(ctd(S_T, false), 1.0, 3),
                ratio(hr, ctd(S_D, false)),
                ratio(hr, ctd(S_T, false)),
            ]);
        }
        md.push_str(&t.out);
        if let Some(i) = &r.install {
            let _ = writeln!(
                md,
                "\nhasync installer: {} repetitions per size, {} errors.",
                i.reps,
                i.sizes.iter().map(|s| s.errors).sum::<u64>()
            );
        }
        md.push('\n');
    }

    // 6. Failover
    md.push_str("## 6. Failover gap\n\n");
    match &r.failover {
        Some(f) => {
            let (h, k) = (&f.hasync, &f.incumbent);
            md.push_str(&format!(
                "{} repetition(s) of the lab's `--failover` run per system. fw-a holds the gateway VIPs and \
                 carries a long TCP transfer (strict stateful policy, SNAT, `nf_conntrack_tcp_loose=0`) plus \
                 2,000 new UDP flows/s; halfway fw-a's daemons are SIGKILLed and its links go down. \
                 **hasync**: HA on both firewalls, heartbeat 0.1 s, 3 missed = dead. **conntrackd + \
                 keepalived**: conntrackd as in the default column, keepalived VRRPv3 on LAN and WAN in one \
                 sync group, advertisements every 0.1 s, conntrackd's `primary-backup.sh` actions as notify \
                 scripts (commit, flush, resync, bulk send). Gap = longest pause in the transfer from the \
                 kill on (only runs where it survived). The transfer survived (every byte, no reset): \
                 hasync {} of {}, conntrackd + keepalived {} of {}.\n\n",
                h.reps, h.survived, h.reps, k.survived, k.reps
            ));
            let mut t = Table::new(&SYNC_COLS);
            t.row(&[
                "failover gap, ms (kill → transfer flowing through fw-b)".into(),
                cell(Some(&h.gap_ms), 1.0, 0),
                format!(
                    "{} (conntrackd + keepalived)",
                    cell(Some(&k.gap_ms), 1.0, 0)
                ),
                "—".into(),
                ratio(Some(&h.gap_ms), Some(&k.gap_ms)),
                String::new(),
            ]);
            t.row(&[
                "kill → fw-b holds the LAN VIP, ms".into(),
                cell(Some(&h.vip_ms), 1.0, 0),
                format!("{} (keepalived)", cell(Some(&k.vip_ms), 1.0, 0)),
                "—".into(),
                ratio(Some(&h.vip_ms), Some(&k.vip_ms)),
                String::new(),
            ]);
            t.row(&[
                "fw-b's takeover procedure, ms (hasync: commit, VIPs, gratuitous ARP / NA, timed by the agent)".into(),
                cell(Some(&h.takeover_ms), 1.0, 2),
                "—".into(),
                "—".into(),
                String::new(),
                String::new(),
            ]);
            md.push_str(&t.out);
        }
        None => md.push_str("Not run (`--only` excluded it).\n"),
    }
    md.push('\n');

    if let Some(a) = &r.auth {
        md.push_str(
            "## 7. Authentication and encryption overhead\n\n\
             Every sync datagram carries an HMAC-SHA-256 tag (truncated to 16 bytes) over header and \
             payload: the primary signs, the backup verifies. With `encrypt_sync = true` an \
             AES-256-GCM-SIV tag replaces it and the payload is encrypted: the primary encrypts, the \
             backup decrypts in place (timed with a copy of the datagram). Timed in-process with \
             hasync's `SyncKey` (median of the repetitions, ns per datagram), then per 1,000 events \
             with the events per datagram hasync sent in section 2's first repetition at 20k/s and \
             at its last lossless step (without section 2 in the run: 2.9 and 11.4 from an earlier \
             run). hasync has no unauthenticated mode; the CPU figures of section 4 include the \
             HMAC (the bench runs without encryption), so \"without\" is those figures minus it. \
             conntrackd's sync traffic is neither authenticated (only a checksum) nor encrypted.\n\n\
             | datagram | events per datagram | sign ns | verify ns | HMAC CPU ms per 1,000 events, primary / backup | encrypt ns | decrypt ns | encryption CPU ms per 1,000 events, primary / backup |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in &a.shapes {
            let per_k = |ns: f64| ns * 1000.0 / s.events_per_datagram / 1e6;
            let _ = writeln!(
                md,
                "| {} B | {:.1} | {} | {} | {:.3} / {:.3} | {} | {} | {:.3} / {:.3} |",
                s.bytes,
                s.events_per_datagram,
                cell(Some(&s.sign_ns), 1.0, 0),
                cell(Some(&s.verify_ns), 1.0, 0),
                per_k(s.sign_ns.median()),
                per_k(s.verify_ns.median()),
                cell(Some(&s.seal_ns), 1.0, 0),
                cell(Some(&s.open_ns), 1.0, 0),
                per_k(s.seal_ns.median()),
                per_k(s.open_ns.median())
            );
        }
        md.push('\n');
    }

    if let Some(o) = &r.outage {
        md.push_str(
            "## 8. Recovery after a 1-second sync-link outage\n\n\
             50,000 new UDP flows/s for 3 s through fw-a; from 1 s to 2 s fw-b's end of the sync link \
             is down. Recovery = from the link coming back until the backup holds every flow fw-a \
             created (hasync: fw-b's kernel, by tuple; conntrackd: its external cache, by count), \
             while the last second of traffic still comes in, so it cannot be below ~1 s; the row \
             after it counts from the last flow sent (0: the backup had every flow by then). The \
             backup's count is sampled every 20 ms from before the link comes back. Given up 60 s \
             after the link came back.\n\n",
        );
        let get = |sys: System| o.systems.iter().find(|(s, _)| *s == sys).map(|(_, v)| v);
        let (h, d, t) = (get(S_H), get(S_D), get(S_T));
        let mut tb = Table::new(&SYNC_COLS);
        tb.row(&[
            "recovery after the link is back, s".into(),
            cell(h.map(|v| &v.recovery_s), 1.0, 2),
            cell(d.map(|v| &v.recovery_s), 1.0, 2),
            cell(t.map(|v| &v.recovery_s), 1.0, 2),
            ratio(h.map(|v| &v.recovery_s), d.map(|v| &v.recovery_s)),
            ratio(h.map(|v| &v.recovery_s), t.map(|v| &v.recovery_s)),
        ]);
        tb.row(&[
            "… of which after the last flow was sent, s".into(),
            cell(h.map(|v| &v.after_traffic_s), 1.0, 2),
            cell(d.map(|v| &v.after_traffic_s), 1.0, 2),
            cell(t.map(|v| &v.after_traffic_s), 1.0, 2),
            ratio(h.map(|v| &v.after_traffic_s), d.map(|v| &v.after_traffic_s)),
            ratio(h.map(|v| &v.after_traffic_s), t.map(|v| &v.after_traffic_s)),
        ]);
        let recovered = |v: Option<&crate::measure::outage::SystemOutage>| {
            v.map_or("—".into(), |v| {
                format!(
                    "{} of {} (missing: {:?})",
                    v.missing.iter().filter(|m| **m == 0).count(),
                    v.reps,
                    v.missing
                )
            })
        };
        tb.row(&[
            "runs that recovered every entry".into(),
            recovered(h),
            recovered(d),
            recovered(t),
            String::new(),
            String::new(),
        ]);
        md.push_str(&tb.out);
        md.push('\n');
    }

    md.push_str(
        "## Method notes\n\n\
         * Each trial builds fresh namespaces (testkit `Lab`), starts the system on fw-a (primary) and \
         fw-b (backup), and removes everything afterwards; a trial starts only once the machine is \
         below 15% busy. The generator, the kernels of all namespaces, the agents and the observers \
         share the same 2 cores: that is the point of measuring both systems in one run.\n\
         * Both firewalls share the machine: the primary's rate with an agent (section 1) also \
         pays for the backup's install work, and a datagram sent on the veth sync link is received \
         (softirq) in the sending thread's context, so the sender's CPU includes the receiver's \
         network stack. Both apply to hasync and conntrackd alike.\n\
         * hasync trials start once both agents are in sync and have finished the digest check that \
         follows their start-up resync. Each digest dumps a table, and the first part of a ctnetlink \
         dump runs under the kernel's host-wide ctnetlink lock while it walks the hash buckets: with \
         a hash of millions of buckets and an almost empty table, every install on the host (any \
         namespace, any agent) waits ~150 ms (4M buckets). Trials that started during that check showed it as \
         their p99.\n\
         * Unreplied-UDP timeout on the firewalls: 900 s, so nothing expires while tables are compared.\n\
         * conntrackd deviations from the FTFW example, in both variants: UDP/ICMP are replicated (the \
         example accepts only TCP/SCTP/DCCP), `HashSize`/`HashLimit` hold the largest table of the run, \
         only loopback and the sync addresses are ignored, multicast group 225.0.0.51:3781.\n\
         * The latency observers run SCHED_FIFO (priority 50) so stamps are taken on receipt; the NEW \
         listener makes fw-b's kernel build a NEW event per installed entry (only in latency runs).\n\
         * Other work on the machine during the run (other builds, tests) cannot be excluded; it \
         affects both systems alike only on average.\n",
    );
    if !m.background.is_empty() {
        let _ = writeln!(
            md,
            "* Machine busy with other work when trials started (after waiting up to {:.1} s for \
             quiet): median {:.0}%, max {:.0}% over {} trials{}.\n",
            m.quiet_wait_s,
            m.background.median(),
            m.background.max(),
            m.background.values.len(),
            if m.background.max() > 30.0 {
                " — the run was disturbed; compare ratios rather than absolute numbers"
            } else {
                ""
            }
        );
    } else {
        md.push('\n');
    }
    md.push_str("<details><summary>Run log</summary>\n\n```text\n");
    for l in &m.log {
        md.push_str(l);
        md.push('\n');
    }
    md.push_str("```\n\n</details>\n");
    (md, svg_out)
}

fn goals(md: &mut String, r: &Results) {
    md.push_str("## Goals for hasync\n\nVerdicts compare the medians with the targets.\n\n");
    let mut t = Table::new(&["goal", "measured", "met?"]);
    let yes = |b: bool| if b { "yes" } else { "**no**" }.to_string();
    if let (Some(c), Some(o)) = (&r.ceiling, &r.overhead) {
        let none = o
            .udp
            .get(&System::None)
            .map(|s| s.median())
            .unwrap_or(f64::NAN);
        let with = o.udp.get(&S_H).map(|s| s.median()).unwrap_or(f64::NAN);
        let ceil = c.ceiling(S_H);
        // Every repetition climbed to the primary's own limit (flat out, or a step the
        // primary could not reach) without losing anything.
        let flat_ok = c
            .systems
            .get(&S_H)
            .map(|x| {
                !x.runs.is_empty()
                    && x.runs.iter().all(|run| {
                        run.iter().all(|st| st.lossless())
                            && run.last().is_some_and(|st| match st.target {
                                None => true,
                                Some(t) => st.achieved < 0.93 * t,
                            })
                    })
            })
            .unwrap_or(false);
        t.row(&[
            "lossless at the kernel's own new-connection ceiling, primary keeps ≥ 95% of its no-agent rate".into(),
            format!(
                "no agent {}, with hasync {} ({:.0}%); lossless ceiling {}{}",
                krate(none),
                krate(with),
                with / none * 100.0,
                krate(ceil),
                if flat_ok {
                    " (lossless up to the primary's limit)"
                } else {
                    " (entries lost below the primary's limit)"
                }
            ),
            yes(flat_ok && with >= 0.95 * none),
        ]);
    }
    if let Some(c) = &r.ceiling {
        let steps = c.steps_at(S_H, CPU_RATE);
        let a = summary_of(steps.iter().map(|s| s.cpu_sched.0));
        let top = summary_of(c.top_steps(S_H).iter().map(|s| s.cpu_sched.0));
        t.row(&[
            "≤ 1 ms CPU per 1,000 events on the primary".into(),
            format!(
                "{} ms at {}, {} ms at its ceiling",
                cell(Some(&a), 1.0, 2),
                krate(CPU_RATE),
                cell(Some(&top), 1.0, 2)
            ),
            yes(a.median() <= 1.0 && top.median() <= 1.0),
        ]);
    }
    if let Some(l) = &r.latency {
        let ceil = l.ceilings.get(&S_H).copied().unwrap_or(0.0);
        let pts: Vec<&Point> = l
            .points
            .get(&S_H)
            .map(|v| {
                v.iter()
                    .filter(|p| p.at_80pct || p.target <= 0.8 * ceil || p.target == 20_000.0)
                    .collect()
            })
            .unwrap_or_default();
        let worst50 = pts
            .iter()
            .map(|p| p.kernel_p50.median())
            .fold(0.0, f64::max);
        let worst99 = pts
            .iter()
            .map(|p| p.kernel_p99.median())
            .fold(0.0, f64::max);
        let missing: u64 = pts.iter().map(|p| p.kernel_missing).sum();
        t.row(&[
            "primary → backup kernel: p50 < 0.2 ms at every rate up to 80% of the ceiling".into(),
            format!("worst median p50 {worst50:.3} ms over {} rates", pts.len()),
            yes(!pts.is_empty() && worst50 < 0.2),
        ]);
        t.row(&[
            "… and p99 < 1 ms".into(),
            format!(
                "worst median p99 {worst99:.3} ms{}",
                if missing > 0 {
                    format!("; {missing} probes never arrived")
                } else {
                    String::new()
                }
            ),
            yes(!pts.is_empty() && worst99 < 1.0 && missing == 0),
        ]);
    }
    if let Some(c) = &r.ceiling {
        let h = c.systems.get(&S_H);
        let (text, ok) = match h.and_then(|x| x.after_overload) {
            Some((b, a, w)) if w > 0.0 => (
                format!("{b} entries missing after the overload step, {a} after {w:.0} s"),
                a == 0,
            ),
            Some((b, _, _)) => (
                format!("{b} entries missing after the overload step (flat out)"),
                b == 0,
            ),
            None => ("not measured".into(), false),
        };
        t.row(&["never a divergence after overload".into(), text, yes(ok)]);
    }
    if let Some(i) = &r.install
        && let Some(s) = i.sizes.iter().find(|s| s.entries == 100_000)
    {
        t.row(&[
            "100,000 entries installed into a kernel in < 0.2 s".into(),
            format!("{} s", cell(Some(&s.secs), 1.0, 3)),
            yes(s.secs.median() < 0.2),
        ]);
    }
    md.push_str(&t.out);
    md.push('\n');
}

fn latency_svg(l: &LatencyResult) -> String {
    let mut series = Vec::new();
    let sys: [(System, &'static str, bool); 4] = [
        (S_H, "#1f77b4", true),
        (S_D, "#d62728", false),
        (S_T, "#ff7f0e", false),
        (System::CtdDirect, "#2ca02c", true),
    ];
    for (s, color, kernel) in sys {
        let Some(points) = l.points.get(&s) else {
            continue;
        };
        let view = if kernel { "kernel" } else { "wire" };
        for (q, dashed) in [("p50", false), ("p99", true)] {
            series.push(Series {
                name: format!("{} {view} {q}", s.name()),
                color,
                dashed,
                points: points
                    .iter()
                    .map(|p| {
                        let v = match (kernel, q) {
                            (true, "p50") => p.kernel_p50.median(),
                            (true, _) => p.kernel_p99.median(),
                            (false, "p50") => p.wire_p50.median(),
                            (false, _) => p.wire_p99.median(),
                        };
                        (p.target, v)
                    })
                    .collect(),
            });
        }
    }
    svg::plot(
        "Convergence latency vs offered new-flow rate",
        "offered new flows per second (thousands)",
        "probe sent → seen on backup (ms, log)",
        &series,
    )
}
