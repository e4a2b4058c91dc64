//! Fuzzes the heartbeat decoder, the HeartbeatReceiver and, behind it, the Election.
//!
//! The input is a sequence of chunks, all fed to one receiver and one election so epochs,
//! replay windows and election state carry over. Each chunk is `ctl u8, len u8, body`:
//! - `ctl` bit 0 clear: `body` is a raw datagram (parsed without a key, then handed to
//!   the receiver, where almost everything fails early or at authentication);
//! - `ctl` bit 0 set: `body` (at least 15 bytes) chooses header fields, which are laid
//!   out, signed with the receiver's key and handed over, so arbitrary authenticated
//!   heartbeats (bad fields, own node id, epoch changes, echoes of us, replays) reach
//!   the epoch, replay and election logic;
//! - bits 1..=3 advance the clock (0..=7 x 50 ms), bits 4..=7 pick a local input.
//!
//! Checked beyond "no panic": anything that parses re-encodes to the same bytes; every
//! heartbeat the election emits round-trips; a FAULT / maintenance node is never
//! primary; `poll_timeout` is in the future after `handle_timeout`.

#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hasync::ha::heartbeat::{self, HEADER_LEN, HEARTBEAT_LEN};
use hasync::ha::{
    Demotion, Election, ElectionConfig, HeartbeatReceiver, Input, ReceiverConfig, Role,
    heartbeat_key,
};
use hasync::sync::{KeyRing, SyncKey};
use libfuzzer_sys::fuzz_target;

const ME: u32 = 3;
const MY_EPOCH: u32 = 0x77;

static KEY: LazyLock<SyncKey> =
    LazyLock::new(|| heartbeat_key(b"fuzz secret").unwrap_or_else(|_| unreachable!()));
static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Parsed input re-encodes to the same header (the key id comes from the key).
fn raw(bytes: &[u8]) {
    if let Ok(u) = heartbeat::parse(bytes) {
        let again = heartbeat::encode(&u.heartbeat, &KEY);
        let mut want = [0u8; HEADER_LEN];
        want.copy_from_slice(&bytes[..HEADER_LEN]);
        want[7] = KEY.id();
        assert_eq!(again[..HEADER_LEN], want, "canonical encoding");
    }
}

/// A signed datagram whose fields come from `b`; small id spaces so collisions with
/// our node, our epoch and earlier epochs are frequent.
fn signed(b: &[u8]) -> Option<[u8; HEARTBEAT_LEN]> {
    let b: &[u8; 15] = b.get(..15)?.try_into().ok()?;
    let sane = |v: u8, mask: u8| if v < 0xf0 { v & mask } else { v };
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(b"HAHB");
    h[4] = 1;
    h[5] = if b[0] < 0xf0 { 1 + b[0] % 3 } else { b[0] };
    h[6] = b[1];
    h[7] = KEY.id();
    h[8..12].copy_from_slice(&(1 + u32::from(b[4] % 4)).to_be_bytes());
    h[12..16].copy_from_slice(&(1 + u32::from(b[5] % 4)).to_be_bytes());
    h[16..24].copy_from_slice(&u64::from(u16::from_le_bytes([b[6], b[7]])).to_be_bytes());
    h[24] = sane(b[2], 0x0f);
    h[25] = sane(b[3], 0x0f);
    if b[14] >= 0xf0 {
        h[26] = 1;
    }
    let ms = u32::from(u16::from_le_bytes([b[8], b[9]]));
    h[28..32].copy_from_slice(&ms.saturating_mul(1000).to_be_bytes());
    h[32..36].copy_from_slice(&u32::from(b[13] % 4).to_be_bytes());
    let echo_seq = u64::from(u16::from_le_bytes([b[11], b[12]]));
    let (pn, pe, ps) = match b[10] % 4 {
        0 => (0, 0, 0),
        1 => (ME, MY_EPOCH, echo_seq),
        2 => (ME, MY_EPOCH + 1, echo_seq),
        _ => (1, 1, echo_seq),
    };
    h[36..40].copy_from_slice(&pn.to_be_bytes());
    h[40..44].copy_from_slice(&pe.to_be_bytes());
    h[44..52].copy_from_slice(&ps.to_be_bytes());
    let mut out = [0u8; HEARTBEAT_LEN];
    out[..HEADER_LEN].copy_from_slice(&h);
    out[HEADER_LEN..].copy_from_slice(&KEY.tag(&h));
    Some(out)
}

fn local(sel: u8) -> Option<Input> {
    let health = |sync_link_up, monitored_up| Input::LocalHealth {
        sync_link_up,
        monitored_up,
    };
    Some(match sel {
        8 => Input::SyncComplete,
        9 => Input::SyncLost,
        10 => Input::Promote,
        11 => Input::Demote,
        12 => Input::ClearOperator,
        13 => health(false, true),
        14 => health(true, true),
        15 => health(true, false),
        _ => return None,
    })
}

fn drain(e: &mut Election, now: Instant) {
    while let Some(hb) = e.poll_transmit(now) {
        let bytes = heartbeat::encode(&hb, &KEY);
        let back = heartbeat::decode(&bytes, &KeyRing::new(KEY.clone(), None));
        assert_eq!(back, Ok(hb), "emitted heartbeats round-trip");
    }
    while e.poll_action().is_some() {}
    let st = e.status();
    if st.role == Role::Primary {
        assert!(!st.demotion.intersects(Demotion::INELIGIBLE), "{st:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let t0 = *T0;
    let mut cfg = ElectionConfig::new(ME, MY_EPOCH);
    cfg.interval = Duration::from_millis(100);
    cfg.failback_delay = Duration::from_millis(500);
    cfg.require_sync = true;
    let dead = cfg.dead_interval();
    let Ok(mut e) = Election::new(cfg, t0) else {
        return;
    };
    let mut rx = HeartbeatReceiver::new(
        ReceiverConfig::new(ME, MY_EPOCH, dead),
        KeyRing::new(KEY.clone(), None),
    );
    let src: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 9002));
    let mut now = t0;
    drain(&mut e, now);
    let mut rest = data;
    let mut fed = 0u64;
    while let Some((&ctl, tail)) = rest.split_first() {
        let Some((&len, tail)) = tail.split_first() else {
            break;
        };
        let len = usize::from(len).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_millis(50 * u64::from((ctl >> 1) & 7));
        // Timers first, as a driver would.
        while e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
            drain(&mut e, now);
            assert!(
                e.poll_timeout().is_none_or(|t| t > now),
                "timer in the past"
            );
        }
        let datagram: Vec<u8> = if ctl & 1 == 0 {
            raw(body);
            body.to_vec()
        } else {
            match signed(body) {
                Some(d) => d.to_vec(),
                None => continue,
            }
        };
        fed += 1;
        if let Ok(hb) = rx.handle(now, src, &datagram) {
            assert_ne!(hb.node, ME);
            e.handle(now, Input::Heartbeat(hb));
            drain(&mut e, now);
        }
        if let Some(input) = local(ctl >> 4) {
            e.handle(now, input);
            drain(&mut e, now);
        }
    }
    let s = rx.stats();
    assert_eq!(
        s.accepted + s.rejects.total(),
        fed,
        "every datagram accounted for"
    );
});
