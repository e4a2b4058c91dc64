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

use super::Ctx;
use crate::stats::Summary;

/// (events per datagram, bytes per datagram): 20k/s and the ceiling in the 2026-11-22
/// run (2.9 events of 51 B; 11.4 events of 39 B, plus the 32-byte header and tag).
pub const SHAPES: [(f64, usize); 2] = [(2.9, 32 + 148), (11.4, 32 + 445)];

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

pub fn run(ctx: &mut Ctx) -> Result<AuthResult> {
    ctx.step("authentication cost per datagram");
    let key = SyncKey::derive(b"bench-secret-0123456789")?;
    let reps = ctx.reps(3, 5);
    let n = if ctx.quick { 200_000 } else { 1_000_000 };
    let mut out = AuthResult::default();
    for (events, bytes) in SHAPES {
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
