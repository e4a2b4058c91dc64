//! Where a probe flow shows up on the backup, time-stamped on CLOCK_MONOTONIC (shared
//! by all namespaces), by two observers running in fw-b's namespace:
//!
//! * [`KernelWatch`]: a ctnetlink listener on `NFNLGRP_CONNTRACK_NEW`: the probe entry
//!   is now in the backup's kernel table. A classic-BPF socket filter lets only probe
//!   events (UDP from the client, source port [`PROBE_SPORT`]) reach user space, so
//!   the observer costs nothing per background flow beyond the event the kernel builds.
//! * [`WireWatch`]: a packet socket on `sync0`: the first sync datagram that carries
//!   the probe reached the backup (hasync datagrams are verified and decoded with
//!   hasync's own receiver; conntrackd messages are parsed from its wire format).
//!
//! Both threads run SCHED_FIFO so their time stamps are taken on receipt, not when a
//! busy CPU gets around to them.

use std::{
    collections::HashMap,
    io, mem,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use hasync::{
    conntrack::{Change, proto},
    kernel::ctnetlink::{
        consts::NFNLGRP_CONNTRACK_NEW,
        decode::{is_ct_msg, parse_ct},
        nla::MsgIter,
    },
    kernel::netlink_socket::NlSocket,
    sync::{KeyRing, Receiver, ReceiverConfig},
};
use testkit::NetNs;

use crate::{agents::SECRET, ctd, flowgen::PROBE_SPORT, sys::mono_ns, topo::client_ip};

/// First time each probe (by destination port) was seen, CLOCK_MONOTONIC ns.
pub type Seen = HashMap<u16, u64>;

/// Observer statistics besides the probes.
#[derive(Clone, Debug, Default)]
pub struct WatchStats {
    /// ENOBUFS on the listener: probe events may have been lost.
    pub overruns: u64,
    pub messages: u64,
}

struct Watch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(Seen, WatchStats)>>>,
}

impl Watch {
    fn spawn(
        ns: &NetNs,
        name: &str,
        body: impl FnOnce(&AtomicBool, &mut Seen, &mut WatchStats) -> Result<()> + Send + 'static,
    ) -> Result<Watch> {
        let stop = Arc::new(AtomicBool::new(false));
        let path = ns.path();
        let s = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let handle = std::thread::Builder::new().name(name.into()).spawn(
            move || -> Result<(Seen, WatchStats)> {
                let mut seen = Seen::new();
                let mut stats = WatchStats::default();
                if let Err(e) = testkit::enter_netns(&path) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    bail!("{e}");
                }
                set_fifo();
                body_with_ready(body, &s, &mut seen, &mut stats, ready_tx)?;
                Ok((seen, stats))
            },
        )?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{name}: {e}"),
            Err(_) => bail!("{name} did not start"),
        }
        Ok(Watch {
            stop,
            handle: Some(handle),
        })
    }

    fn finish(mut self) -> Result<(Seen, WatchStats)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow!("observer thread panicked"))?
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs an observer body. The body calls [`mark_ready`] once its socket is open, which
/// releases [`Watch::spawn`]; if it fails before that, the error is reported instead.
fn body_with_ready(
    body: impl FnOnce(&AtomicBool, &mut Seen, &mut WatchStats) -> Result<()>,
    stop: &AtomicBool,
    seen: &mut Seen,
    stats: &mut WatchStats,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<()> {
    READY.with(|r| *r.borrow_mut() = Some(ready));
    let res = body(stop, seen, stats);
    READY.with(|r| {
        if let Some(tx) = r.borrow_mut().take() {
            let _ = tx.send(match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("{e:#}")),
            });
        }
    });
    res
}

thread_local! {
    static READY: std::cell::RefCell<Option<std::sync::mpsc::Sender<Result<(), String>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Called by an observer body once its socket is open.
fn mark_ready() {
    READY.with(|r| {
        if let Some(tx) = r.borrow_mut().take() {
            let _ = tx.send(Ok(()));
        }
    });
}

fn set_fifo() {
    let p = libc::sched_param { sched_priority: 50 };
    // SAFETY: changes only the calling thread's policy (pid 0 = this thread).
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) };
}

fn set_rcvtimeo(fd: RawFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A classic BPF program (`struct sock_filter` list).
fn attach_filter(fd: RawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

const LD_W: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const LD_H: u32 = libc::BPF_LD | libc::BPF_H | libc::BPF_ABS;
const LD_B: u32 = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// Kernel conntrack event of an IPv4 entry: nlmsghdr (16) + nfgenmsg (4) + ORIG nest
/// (4) + IP nest (4) + V4_SRC (4+4, value at 32) + V4_DST (8) + PROTO nest (4) +
/// PROTO_NUM (4+1+3, value at 52) + SRC_PORT (attr header at 56, value at 60). The
/// filter checks the attribute headers it relies on, so another layout is dropped
/// rather than misread (user space re-checks everything it receives anyway).
fn probe_event_filter() -> Vec<libc::sock_filter> {
    let src = u32::from(client_ip());
    // nla_len = 8 / nla_type = CTA_IP_V4_SRC (1), little-endian in memory, read
    // big-endian by BPF: 0x0800_0100.
    let v4_src_hdr = 0x0800_0100u32;
    // nla_len = 6 / nla_type = CTA_PROTO_SRC_PORT (2): 0x0600_0200.
    let sport_hdr = 0x0600_0200u32;
    vec![
        stmt(LD_W, 28),
        jeq(v4_src_hdr, 0, 9),
        stmt(LD_W, 32),
        jeq(src, 0, 7),
        stmt(LD_B, 52),
        jeq(proto::UDP as u32, 0, 5),
        stmt(LD_W, 56),
        jeq(sport_hdr, 0, 3),
        stmt(LD_H, 60),
        jeq(PROBE_SPORT as u32, 0, 1),
        stmt(RET, 0xffff_ffff),
        stmt(RET, 0),
    ]
}

/// Probe entries appearing in the backup's kernel table.
pub struct KernelWatch(Watch);

impl KernelWatch {
    pub fn start(ns: &NetNs) -> Result<KernelWatch> {
        Ok(KernelWatch(Watch::spawn(
            ns,
            "ct-new-watch",
            |stop, seen, stats| {
                let sock = NlSocket::netfilter(false).context("netlink socket")?;
                sock.set_rcvbuf(16 << 20).context("SO_RCVBUF")?;
                attach_filter(sock.as_raw_fd(), &probe_event_filter())
                    .context("SO_ATTACH_FILTER")?;
                sock.add_membership(NFNLGRP_CONNTRACK_NEW)
                    .context("join NFNLGRP_CONNTRACK_NEW")?;
                set_rcvtimeo(sock.as_raw_fd(), Duration::from_millis(50))?;
                mark_ready();
                let mut buf = vec![0u8; 256 << 10];
                let client = client_ip().octets();
                while !stop.load(Ordering::Relaxed) {
                    let n = match sock.recv(&mut buf, false) {
                        Ok(n) => n.min(buf.len()),
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            stats.overruns += 1;
                            continue;
                        }
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::TimedOut =>
                        {
                            continue;
                        }
                        Err(e) => return Err(e).context("receiving conntrack events"),
                    };
                    let t = mono_ns();
                    for m in MsgIter::new(&buf[..n]) {
                        let Ok(m) = m else { break };
                        stats.messages += 1;
                        if !is_ct_msg(&m, 0) {
                            continue;
                        }
                        let Ok(ct) = parse_ct(&m) else { continue };
                        let Some(o) = ct.orig else { continue };
                        if o.proto == proto::UDP && o.src[..4] == client && o.sport() == PROBE_SPORT
                        {
                            seen.entry(o.dport()).or_insert(t);
                        }
                    }
                }
                Ok(())
            },
        )?))
    }

    pub fn finish(self) -> Result<(Seen, WatchStats)> {
        self.0.finish()
    }
}

/// Which sync protocol the wire observer decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Hasync,
    Conntrackd,
}

/// First sync datagram carrying each probe, on the backup's `sync0`.
pub struct WireWatch(Watch);

const ETH_P_ALL: u16 = 0x0003;

fn udp_dport_filter(port: u16) -> Vec<libc::sock_filter> {
    // Ethernet + IPv4 without options + UDP to `port`.
    vec![
        stmt(LD_H, 12),
        jeq(0x0800, 0, 5),
        stmt(LD_B, 23),
        jeq(libc::IPPROTO_UDP as u32, 0, 3),
        stmt(LD_H, 36),
        jeq(port as u32, 0, 1),
        stmt(RET, 0xffff_ffff),
        stmt(RET, 0),
    ]
}

fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (ETH_P_ALL).to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd was just returned by socket().
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let idx = {
        let c = std::ffi::CString::new(ifname)?;
        // SAFETY: c is a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    };
    if idx == 0 {
        bail!("no interface {ifname}");
    }
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = idx as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error()).context("bind AF_PACKET");
    }
    let size: libc::c_int = 16 << 20;
    // SAFETY: size is a valid c_int for the call.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

impl WireWatch {
    pub fn start(ns: &NetNs, wire: Wire) -> Result<WireWatch> {
        let port = match wire {
            Wire::Hasync => 3780,
            Wire::Conntrackd => ctd::MCAST_PORT,
        };
        Ok(WireWatch(Watch::spawn(
            ns,
            "sync-wire-watch",
            move |stop, seen, stats| {
                let fd = packet_socket("sync0")?;
                attach_filter(fd.as_raw_fd(), &udp_dport_filter(port))?;
                set_rcvtimeo(fd.as_raw_fd(), Duration::from_millis(50))?;
                mark_ready();
                let mut rx = Receiver::new(
                    ReceiverConfig::new(0x00be_0001),
                    KeyRing::from_secrets(SECRET.as_bytes(), None).map_err(|e| anyhow!("{e}"))?,
                );
                let mut changes: Vec<Change> = Vec::new();
                let mut buf = vec![0u8; 65536];
                let client = client_ip().octets();
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: buf is writable for its length.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if n < 0 {
                        continue;
                    }
                    let t = mono_ns();
                    let n = n as usize;
                    stats.messages += 1;
                    if n < 42 {
                        continue;
                    }
                    let src = IpAddr::from([buf[26], buf[27], buf[28], buf[29]]);
                    let sport = u16::from_be_bytes([buf[34], buf[35]]);
                    let payload = &buf[42..n];
                    match wire {
                        Wire::Hasync => {
                            changes.clear();
                            let _ = rx.handle(
                                Instant::now(),
                                SocketAddr::new(src, sport),
                                payload,
                                &mut changes,
                            );
                            for c in &changes {
                                if let Change::Upsert { entry, .. } = c {
                                    let o = entry.orig;
                                    if o.proto == proto::UDP
                                        && o.src[..4] == client
                                        && o.sport() == PROBE_SPORT
                                    {
                                        seen.entry(o.dport()).or_insert(t);
                                    }
                                }
                            }
                        }
                        Wire::Conntrackd => {
                            for (s, d) in ctd_wire_ports(payload, client) {
                                if s == PROBE_SPORT {
                                    seen.entry(d).or_insert(t);
                                }
                            }
                        }
                    }
                }
                Ok(())
            },
        )?))
    }

    pub fn finish(self) -> Result<(Seen, WatchStats)> {
        self.0.finish()
    }
}

/// (sport, dport) of every conntrack state message from `client` in a conntrackd sync
/// datagram: `struct nethdr` (type:4 version:4, flags, be16 len, be32 seq) followed by
/// `struct netattr` (be16 len, be16 type) attributes; NTA_IPV4 = 0 (src, dst),
/// NTA_PORT = 3 (sport, dport, network order). Several messages share a datagram.
pub fn ctd_wire_ports(mut p: &[u8], client: [u8; 4]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    while p.len() >= 8 {
        let ty = p[0] & 0x0f;
        let flags = p[1];
        let len = u16::from_be_bytes([p[2], p[3]]) as usize;
        if len < 8 || len > p.len() {
            break;
        }
        // Data (not control) messages about conntrack entries: NEW, UPD, DEL.
        const HELLO: u8 = 1 << 5 | 1 << 6;
        if ty <= 2 && flags & !HELLO == 0 {
            let mut a = &p[8..len];
            let mut src = None;
            let mut ports = None;
            while a.len() >= 4 {
                let alen = u16::from_be_bytes([a[0], a[1]]) as usize;
                let aty = u16::from_be_bytes([a[2], a[3]]);
                if alen < 4 || alen > a.len() {
                    break;
                }
                let data = &a[4..alen];
                match aty {
                    0 if data.len() >= 8 => src = Some([data[0], data[1], data[2], data[3]]),
                    3 if data.len() >= 4 => {
                        ports = Some((
                            u16::from_be_bytes([data[0], data[1]]),
                            u16::from_be_bytes([data[2], data[3]]),
                        ))
                    }
                    _ => {}
                }
                let step = (alen + 3) & !3;
                a = &a[step.min(a.len())..];
            }
            if let (Some(s), Some(pp)) = (src, ports)
                && s == client
            {
                out.push(pp);
            }
        }
        let step = (len + 3) & !3;
        p = &p[step.min(p.len())..];
    }
    out
}

/// Latency percentiles of the probes seen, in milliseconds, and how many were missed.
#[derive(Clone, Debug, Default)]
pub struct LatencyResult {
    pub sent: usize,
    pub seen: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn summarize(sent: &[(u16, u64)], seen: &Seen) -> LatencyResult {
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(d, t)| seen.get(d).map(|s| s.saturating_sub(*t) as f64 / 1e6))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    LatencyResult {
        sent: sent.len(),
        seen: lat.len(),
        p50_ms: crate::stats::percentile(&lat, 50.0),
        p99_ms: crate::stats::percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conntrackd_messages() {
        // One NEW message: nethdr + IPV4 + L4PROTO + PORT, then an ACK control message.
        let mut m = vec![0x10, 0, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(&[0, 12, 0, 0, 192, 168, 10, 10, 203, 0, 113, 100]);
        m.extend_from_slice(&[0, 5, 0, 2, 17, 0, 0, 0]);
        m.extend_from_slice(&[0, 8, 0, 3, 0x27, 0x0f, 0x04, 0x00]);
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&[0x1a, 1 << 3, 0, 16, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        let got = ctd_wire_ports(&m, [192, 168, 10, 10]);
        assert_eq!(got, vec![(9999, 1024)]);
        assert!(ctd_wire_ports(&m, [10, 0, 0, 1]).is_empty());
    }
}
