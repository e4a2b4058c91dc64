//! The UDP new-flow generator: one new flow per packet, sent with `sendmmsg` from the
//! client namespace through fw-a, paced to a rate or flat out, with optional latency
//! probes (single packets on their own source port, send time stamped just before the
//! `sendto`).

use std::{
    mem,
    net::UdpSocket,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use indicatif::ProgressBar;
use testkit::NetNs;

use crate::{
    sys::{self, mono_ns},
    topo::{FlowId, client_ip, server_ip, within},
};

/// Source port of the latency probes; their destination port numbers them.
pub const PROBE_SPORT: u16 = 9999;
/// Generator flows use source ports from here, 60,000 destination ports each.
const SPORT_BASE: u32 = 10_000;
const DPORT_BASE: u32 = 1024;
const DPORTS: u64 = 60_000;
/// Probes per run (one destination port each).
pub const MAX_PROBES: u64 = DPORTS;
const BATCH: usize = 64;

/// The `i`-th flow of the generator (unique over 3 billion flows).
pub fn flow_id(i: u64) -> FlowId {
    (
        (SPORT_BASE + (i / DPORTS) as u32) as u16,
        (DPORT_BASE as u64 + i % DPORTS) as u16,
    )
}

pub fn probe_dport(k: u64) -> u16 {
    (DPORT_BASE as u64 + k) as u16
}

#[derive(Clone, Debug)]
pub struct UdpPlan {
    /// Index of the first flow (runs in one lab continue where the last one ended).
    pub first_flow: u64,
    /// Flows per second; `None`: as fast as the machine goes.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Stop after this many flows (probes included).
    pub max_flows: Option<u64>,
    /// Every `probe_every`-th flow is a probe (0: none).
    pub probe_every: u64,
    /// Number of the first probe (probes of earlier runs in the same lab still have
    /// their entries: a probe must be a new flow).
    pub first_probe: u64,
}

#[derive(Clone, Debug, Default)]
pub struct UdpResult {
    /// Flows sent (probes included).
    pub sent: u64,
    pub elapsed: Duration,
    pub send_errors: u64,
    /// (probe destination port, CLOCK_MONOTONIC ns just before its `sendto`).
    pub probes: Vec<(u16, u64)>,
    /// Index of the next unused flow.
    pub next_flow: u64,
    /// Number of the next unused probe.
    pub next_probe: u64,
}

impl UdpResult {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Batch {
    addrs: Vec<libc::sockaddr_in>,
    hdrs: Vec<libc::mmsghdr>,
    iov: Box<libc::iovec>,
    _payload: Box<[u8; 16]>,
}

impl Batch {
    fn new() -> Batch {
        let mut payload = Box::new(*b"hasync-bench-gen");
        let iov = Box::new(libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        });
        // SAFETY: sockaddr_in is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(server_ip()).to_be();
        let addrs = vec![addr; BATCH];
        // SAFETY: mmsghdr is plain old data.
        let hdrs = vec![unsafe { mem::zeroed::<libc::mmsghdr>() }; BATCH];
        Batch {
            addrs,
            hdrs,
            iov,
            _payload: payload,
        }
    }

    /// Sends flows `dports` on `sock` in one `sendmmsg`; returns how many went out.
    fn send(&mut self, sock: &UdpSocket, dports: impl Iterator<Item = u16>) -> usize {
        let mut n = 0;
        for (j, d) in dports.take(BATCH).enumerate() {
            self.addrs[j].sin_port = d.to_be();
            let h = &mut self.hdrs[j].msg_hdr;
            h.msg_name = (&mut self.addrs[j] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut *self.iov;
            h.msg_iovlen = 1;
            n = j + 1;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: hdrs[done..n] point at live addresses and the payload.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as u32,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            done += r as usize;
        }
        done
    }
}

/// Runs the generator on a thread in `ns` (the client).
pub fn run_udp(ns: &NetNs, plan: &UdpPlan, pb: Option<&ProgressBar>) -> Result<UdpResult> {
    within(ns, || generate(plan, pb))?
}

fn set_timerslack_1ns() {
    // SAFETY: affects only the calling thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
}

fn generate(plan: &UdpPlan, pb: Option<&ProgressBar>) -> Result<UdpResult> {
    set_timerslack_1ns();
    let mut socks: Vec<Option<UdpSocket>> = Vec::new();
    let probe_sock = UdpSocket::bind((client_ip(), PROBE_SPORT))?;
    let mut batch = Batch::new();
    let mut res = UdpResult {
        next_flow: plan.first_flow,
        ..Default::default()
    };
    if plan.probe_every > 0 {
        let expect = plan
            .rate
            .map(|r| r * plan.duration.as_secs_f64() / plan.probe_every as f64)
            .unwrap_or(0.0);
        res.probes
            .reserve((expect as usize).min(MAX_PROBES as usize));
    }
    let max = plan.max_flows.unwrap_or(u64::MAX);
    // Pace in quanta of ~100 µs of traffic, at least one flow.
    let quantum = plan
        .rate
        .map(|r| ((r * 100e-6) as u64).clamp(1, BATCH as u64))
        .unwrap_or(BATCH as u64);
    let start = Instant::now();
    let start_ns = mono_ns();
    let end_ns = start_ns + plan.duration.as_nanos() as u64;
    let mut next_report = start_ns;
    let mut next_probe = if plan.probe_every > 0 {
        plan.probe_every / 2
    } else {
        u64::MAX
    };
    let mut probes_sent = plan.first_probe;
    loop {
        let now = mono_ns();
        if now >= end_ns || res.sent >= max {
            break;
        }
        if now >= next_report {
            if let Some(pb) = pb {
                pb.set_position(res.sent);
            }
            if sys::interrupted() {
                bail!("interrupted");
            }
            next_report = now + 50_000_000;
        }
        let mut want = match plan.rate {
            Some(r) => {
                let due = ((now - start_ns) as f64 * r / 1e9) as u64 + 1;
                if due <= res.sent {
                    // Sleep until a quantum is due.
                    let at = start_ns + (((res.sent + quantum) as f64) * 1e9 / r) as u64;
                    let at = at.min(end_ns);
                    if at > now {
                        std::thread::sleep(Duration::from_nanos(at - now));
                    }
                    continue;
                }
                (due - res.sent).min(BATCH as u64)
            }
            None => BATCH as u64,
        };
        want = want.min(max - res.sent);
        if res.sent == next_probe && probes_sent < MAX_PROBES {
            let dport = probe_dport(probes_sent);
            let t = mono_ns();
            match probe_sock.send_to(b"probe", (server_ip(), dport)) {
                Ok(_) => res.probes.push((dport, t)),
                Err(_) => res.send_errors += 1,
            }
            probes_sent += 1;
            res.sent += 1;
            next_probe += plan.probe_every;
            continue;
        }
        if next_probe > res.sent {
            want = want.min(next_probe - res.sent);
        }
        // Flows of one batch share a source port (one socket).
        let i = res.next_flow;
        let block = (i / DPORTS) as usize;
        let left_in_block = DPORTS - i % DPORTS;
        want = want.min(left_in_block);
        if socks.len() <= block {
            socks.resize_with(block + 1, || None);
        }
        if socks[block].is_none() {
            let (sport, _) = flow_id(i);
            let s = UdpSocket::bind((client_ip(), sport))?;
            socks[block] = Some(s);
        }
        let sock = socks[block].as_ref().expect("just set");
        let sent = batch.send(sock, (0..want).map(|k| flow_id(i + k).1));
        if sent == 0 {
            res.send_errors += 1;
            // The device queue is full: let it drain.
            std::thread::yield_now();
            continue;
        }
        res.sent += sent as u64;
        res.next_flow += sent as u64;
    }
    res.elapsed = start.elapsed();
    res.next_probe = probes_sent;
    if let Some(pb) = pb {
        pb.set_position(res.sent);
    }
    Ok(res)
}
