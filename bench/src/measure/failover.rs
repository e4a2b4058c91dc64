//! Measurement 6, failover gap: the lab's `--failover` run (xtask's lab library), once
//! with hasync (HA on both firewalls, heartbeat 0.1 s × 3) and once with conntrackd +
//! keepalived (VRRPv3 advertisements every 0.1 s, conntrackd's `primary-backup.sh` as
//! notify scripts). fw-a holds the gateway VIPs and carries a long TCP transfer
//! (client → server through the VIPs, strict stateful policy, SNAT) plus new UDP
//! flows; fw-a's agents are SIGKILLed and its links go down halfway. The gap is the
//! longest pause in the transfer from the kill on; the run also records whether every
//! byte arrived with no reset, and when fw-b held the LAN VIP.

use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::stats::Summary;

#[derive(Clone, Debug, Default)]
pub struct SystemFailover {
    /// Longest pause in the transfer after the kill, ms (runs where it survived).
    pub gap_ms: Summary,
    /// Kill → fw-b holds the LAN VIP, ms.
    pub vip_ms: Summary,
    /// fw-b's own takeover procedure (hasync only), ms.
    pub takeover_ms: Summary,
    pub reps: usize,
    pub survived: usize,
}

#[derive(Clone, Debug, Default)]
pub struct FailoverResult {
    pub hasync: SystemFailover,
    pub incumbent: SystemFailover,
}

pub fn steps(quick: bool) -> u64 {
    if quick { 2 } else { 6 }
}

pub fn run(ctx: &mut Ctx) -> Result<FailoverResult> {
    let mut r = FailoverResult::default();
    for rep in 0..(steps(ctx.quick) / 2) as usize {
        for incumbent in [false, true] {
            let name = if incumbent {
                "conntrackd+keepalived"
            } else {
                "hasync"
            };
            ctx.step(format!("failover {name} rep {}", rep + 1));
            super::wait_quiet(ctx.quiet_wait)?;
            let args = xtask::lab::LabArgs {
                duration: 8,
                rate: 2000,
                binary: ctx.opts.hasync_bin.clone(),
                failover: true,
                prefix: "bfo".into(),
                quiet: true,
                incumbent,
            };
            // An error means the trial never got to the failover (a lab or a daemon
            // that did not come up; outcomes are in `out`): one more try in a fresh
            // lab, said in the run log, before the measurement counts as failed.
            let out = match xtask::lab::run_failover(args.clone()) {
                Ok(out) => out,
                Err(e) => {
                    ctx.say(format!(
                        "failover      {name:<22} rep {}: set-up failed, trying once more in a fresh lab: {}",
                        rep + 1,
                        format!("{e:#}").lines().next().unwrap_or_default()
                    ));
                    super::wait_quiet(ctx.quiet_wait)?;
                    xtask::lab::run_failover(args)?
                }
            };
            let s = if incumbent {
                &mut r.incumbent
            } else {
                &mut r.hasync
            };
            s.reps += 1;
            if out.took_over && out.survived {
                s.survived += 1;
                s.gap_ms.push(out.longest_pause.as_secs_f64() * 1e3);
            }
            if let Some(t) = out.vip_moved_after {
                s.vip_ms.push(t.as_secs_f64() * 1e3);
            }
            if let Some(t) = out.takeover_ms {
                s.takeover_ms.push(t);
            }
            ctx.say(format!(
                "failover      {name:<22} rep {}: {}; VIP on fw-b after {:?}",
                rep + 1,
                out.summary,
                out.vip_moved_after
            ));
            ctx.step_done();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(r)
}
