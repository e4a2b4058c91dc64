//! Measurement 6, failover gap: the lab's `--failover` run (xtask's lab library): both
//! firewalls run hasync with HA, fw-a holds the gateway VIPs and carries a long TCP
//! transfer (client → server through the VIPs, strict stateful policy, SNAT), fw-a is
//! SIGKILLed and its links go down halfway. The gap is the longest pause in the
//! transfer from the kill on; the run also records whether every byte arrived with
//! no reset.

use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::stats::Summary;

#[derive(Clone, Debug, Default)]
pub struct FailoverResult {
    /// Longest pause in the transfer after the kill, ms.
    pub gap_ms: Summary,
    /// fw-b's own takeover procedure (commit, VIPs, announcements), ms.
    pub takeover_ms: Summary,
    pub reps: usize,
    pub survived: usize,
}

pub fn steps(quick: bool) -> u64 {
    if quick { 1 } else { 3 }
}

pub fn run(ctx: &mut Ctx) -> Result<FailoverResult> {
    let mut r = FailoverResult::default();
    for rep in 0..steps(ctx.quick) as usize {
        ctx.step(format!("failover hasync rep {}", rep + 1));
        super::wait_quiet(ctx.quiet_wait)?;
        let out = xtask::lab::run_failover(xtask::lab::LabArgs {
            duration: 8,
            rate: 2000,
            binary: ctx.opts.hasync_bin.clone(),
            failover: true,
            prefix: "bfo".into(),
            quiet: true,
        })?;
        r.reps += 1;
        if out.took_over && out.survived {
            r.survived += 1;
            r.gap_ms.push(out.longest_pause.as_secs_f64() * 1e3);
        }
        if let Some(t) = out.takeover_ms {
            r.takeover_ms.push(t);
        }
        ctx.say(format!(
            "failover      hasync                rep {}: {} (takeover {:?} ms)",
            rep + 1,
            out.summary,
            out.takeover_ms
        ));
        ctx.step_done();
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(r)
}
