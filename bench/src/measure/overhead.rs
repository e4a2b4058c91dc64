//! Measurement 1, overhead: new connections per second the primary's kernel sustains with no sync
//! agent, with hasync, with conntrackd. UDP: the generator flat out (one new flow per
//! packet), rate = entries fw-a's table gained / sending time. TCP: handshakes flat
//! out, rate = connections completed at the client / time. Every repetition of every
//! system runs in a fresh lab; systems alternate within a repetition so drift of the
//! machine hits them alike.

use std::collections::HashMap;

use anyhow::Result;

use super::{Ctx, krate};
use crate::{
    agents::System,
    flowgen::{self, UdpPlan},
    stats::Summary,
    tcpgen, topo,
};

pub const SYSTEMS: [System; 4] = [
    System::None,
    System::Hasync,
    System::CtdDefault,
    System::CtdTuned,
];

/// TCP connections kept in flight by the generator.
pub const TCP_CONCURRENCY: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct OverheadResult {
    pub reps: usize,
    pub secs: f64,
    /// New UDP flows/s created in fw-a's table.
    pub udp: HashMap<System, Summary>,
    /// TCP connections/s completed through fw-a.
    pub tcp: HashMap<System, Summary>,
}

pub fn steps(quick: bool) -> u64 {
    let reps = if quick { 2 } else { 3 };
    (reps * SYSTEMS.len() * 2) as u64
}

pub fn run(ctx: &mut Ctx) -> Result<OverheadResult> {
    let reps = ctx.reps(2, 3);
    let d = ctx.secs(1.0, 3.0);
    let mut res = OverheadResult {
        reps,
        secs: d.as_secs_f64(),
        ..Default::default()
    };
    for rep in 0..reps {
        for sys in SYSTEMS {
            if !ctx.wants(sys) {
                continue;
            }
            ctx.step(format!(
                "overhead UDP {} (rep {}/{reps})",
                sys.name(),
                rep + 1
            ));
            let t = ctx.trial(sys)?;
            let a0 = topo::ct_count(t.lab.a())?;
            let pb = ctx.run_bar(0, &format!("UDP flat out, {}", sys.short()));
            pb.set_length((300_000.0 * d.as_secs_f64()) as u64);
            let r = flowgen::run_udp(
                t.lab.client(),
                &UdpPlan {
                    first_flow: 0,
                    rate: None,
                    duration: d,
                    max_flows: None,
                    probe_every: 0,
                    first_probe: 0,
                },
                Some(&pb),
            )?;
            pb.finish_and_clear();
            let a1 = topo::ct_count(t.lab.a())?;
            let rate = (a1 - a0) as f64 / r.elapsed.as_secs_f64();
            res.udp.entry(sys).or_default().push(rate);
            ctx.say(format!(
                "overhead UDP  {:22} rep {}: fw-a created {} ({} offered)",
                sys.name(),
                rep + 1,
                krate(rate),
                krate(r.rate())
            ));
            drop(t);
            ctx.step_done();

            ctx.step(format!(
                "overhead TCP {} (rep {}/{reps})",
                sys.name(),
                rep + 1
            ));
            let t = ctx.trial(sys)?;
            let server = tcpgen::TcpServer::start(t.lab.server())?;
            let pb = ctx.run_bar(
                (60_000.0 * d.as_secs_f64()) as u64,
                &format!("TCP flat out, {}", sys.short()),
            );
            let r = tcpgen::run_tcp(t.lab.client(), d, TCP_CONCURRENCY, Some(&pb))?;
            pb.finish_and_clear();
            drop(server);
            res.tcp.entry(sys).or_default().push(r.rate());
            ctx.say(format!(
                "overhead TCP  {:22} rep {}: {} connections ({} failed)",
                sys.name(),
                rep + 1,
                krate(r.rate()),
                r.failed
            ));
            drop(t);
            ctx.step_done();
        }
    }
    Ok(res)
}
