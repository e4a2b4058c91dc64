//! Measurement 7, authentication overhead: what the HMAC-SHA-256 tag costs per
//! datagram (signing on the primary, verifying on the backup), timed in-process with
//! hasync's own `SyncKey` over datagrams of the sizes the ceiling run saw, and turned
//! into CPU ms per 1,000 events with the events per datagram measured there. hasync
//! has no unauthenticated mode (a node never installs unauthenticated state), so
//! "without" is this cost subtracted: the agents' CPU in section 4 includes it.
//! With `encrypt_sync` the AEAD (AES-256-GCM-SIV) replaces the HMAC: its seal (encrypt
//! in place + tag) and open (copy of the datagram + decrypt in place) are timed the
//! same way.

use std::{hint::black_box, time::Instant};

use anyhow::Result;
use hasync::sync::auth::SyncKey;

use super::{
    Ctx,
    ceiling::{CPU_RATE, CeilingResult},
};
use crate::agents::System;
use crate::stats::Summary;

/// (events per datagram, bytes per datagram): 20k/s and the ceiling in the 2026-11-22
/// run (2.9 events of 51 B; 11.4 events of 39 B, plus the 32-byte header and tag).
pub const SHAPES: [(f64, usize); 2] = [(2.9, HEADER_BYTES + 148), (11.4, HEADER_BYTES + 445)];
/// Header and tag of a sync datagram.
const HEADER_BYTES: usize = 32;

#[derive(Clone, Debug, Default)]
pub struct AuthShape {
    pub events_per_datagram: f64,
    pub bytes: usize,
    /// ns to sign one datagram, and to verify one.
    pub sign_ns: Summary,
    pub verify_ns: Summary,
    /// ns to encrypt one datagram (`encrypt_sync`), and to decrypt one.
    pub seal_ns: Summary,
    pub open_ns: Summary,
}

#[derive(Clone, Debug, Default)]
pub struct AuthResult {
    pub shapes: Vec<AuthShape>,
}

pub fn steps(_quick: bool) -> u64 {
    1
}

/// The datagrams hasync sent in this run's ceiling climb (first repetition): at 20k/s
/// and at the last lossless step, as (events per datagram, bytes). `SHAPES` (from an
/// earlier run) when the climb did not run.
pub fn shapes_of(ceiling: Option<&CeilingResult>) -> Vec<(f64, usize)> {
    let steps = ceiling
        .and_then(|c| c.systems.get(&System::Hasync))
        .and_then(|s| s.runs.first());
    let Some(steps) = steps else {
        return SHAPES.to_vec();
    };
    let at_20k = steps.iter().find(|s| s.target == Some(CPU_RATE));
    let at_top = steps.iter().rev().find(|s| s.lossless());
    let measured: Vec<(f64, usize)> = [at_20k, at_top]
        .into_iter()
        .flatten()
        .filter(|s| s.flows_per_datagram > 0.0)
        .map(|s| {
            let bytes = (s.wire_bytes_per_flow * s.flows_per_datagram).round() as usize;
            (s.flows_per_datagram, bytes.max(HEADER_BYTES + 1))
        })
        .collect();
    if measured.len() == 2 {
        measured
    } else {
        SHAPES.to_vec()
    }
}

pub fn run(ctx: &mut Ctx, ceiling: Option<&CeilingResult>) -> Result<AuthResult> {
    ctx.step("authentication cost per datagram");
    let key = SyncKey::derive(b"bench-secret-0123456789")?;
    let reps = ctx.reps(3, 5);
    let n = if ctx.quick { 200_000 } else { 1_000_000 };
    let mut out = AuthResult::default();
    for (events, bytes) in shapes_of(ceiling) {
        let mut shape = AuthShape {
            events_per_datagram: events,
            bytes,
            ..Default::default()
        };
        let msg = vec![0x5au8; bytes];
        for _ in 0..reps {
            let t = Instant::now();
            let mut tag = [0u8; 16];
            for i in 0..n {
                let mut m = black_box(&msg[..]);
                if i % 2 == 1 {
                    m = &m[..bytes - 1];
                }
                tag = key.tag(m);
            }
            shape.sign_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
            let t = Instant::now();
            let mut ok = 0usize;
            for _ in 0..n {
                ok += key.verify(black_box(&msg), &tag) as usize;
            }
            black_box(ok);
            shape
                .verify_ns
                .push(t.elapsed().as_nanos() as f64 / n as f64);

            // Encryption: header (32 B) as associated data, the rest as payload.
            let nonce = [7u8; 12];
            let mut buf = msg.clone();
            let t = Instant::now();
            for i in 0..n {
                let (h, p) = buf.split_at_mut(32);
                nonce_bump(h, i);
                tag = key.seal(&nonce, black_box(h), black_box(p));
            }
            shape.seal_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
            let sealed = buf.clone();
            let t = Instant::now();
            let mut ok = 0usize;
            for _ in 0..n {
                buf.copy_from_slice(black_box(&sealed));
                let (h, p) = buf.split_at_mut(32);
                ok += key.open(&nonce, h, p, &tag) as usize;
            }
            if ok != n {
                anyhow::bail!("{} of {n} sealed datagrams did not open", n - ok);
            }
            shape.open_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
        ctx.say(format!(
            "auth          {bytes} B datagram: sign {:.0} ns, verify {:.0} ns; encrypt {:.0} ns, decrypt {:.0} ns",
            shape.sign_ns.median(),
            shape.verify_ns.median(),
            shape.seal_ns.median(),
            shape.open_ns.median()
        ));
        out.shapes.push(shape);
    }
    ctx.step_done();
    Ok(out)
}

/// Changes the header a little per datagram, as sequence numbers do.
fn nonce_bump(header: &mut [u8], i: usize) {
    header[16..24].copy_from_slice(&(i as u64).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::ceiling::{Step, SystemCeiling};

    fn step(target: Option<f64>, per_flow: f64, per_datagram: f64, missing: u64) -> Step {
        Step {
            target,
            missing,
            wire_bytes_per_flow: per_flow,
            flows_per_datagram: per_datagram,
            ..Default::default()
        }
    }

    #[test]
    fn shapes_come_from_the_climb_at_20k_and_at_the_last_lossless_step() {
        assert_eq!(shapes_of(None), SHAPES.to_vec());
        let mut c = CeilingResult::default();
        c.systems.insert(
            System::Hasync,
            SystemCeiling {
                runs: vec![vec![
                    step(Some(CPU_RATE), 48.0, 3.6, 0),
                    step(Some(100_000.0), 37.0, 26.8, 0),
                    step(None, 37.0, 30.0, 5),
                ]],
                ..Default::default()
            },
        );
        assert_eq!(shapes_of(Some(&c)), vec![(3.6, 173), (26.8, 992)]);
    }
}
