//! The TCP connection generator: full handshakes from the client through fw-a to the
//! server, as many in flight as `concurrency`, each closed with RST (SO_LINGER 0) once
//! connected so no TIME_WAIT state limits the rate. The server accepts and closes.
//! Every connection has its own 4-tuple (source ports 1024–65535 x 16 server ports).

use std::{
    mem,
    net::SocketAddrV4,
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use indicatif::ProgressBar;
use testkit::NetNs;

use crate::{
    sys,
    topo::{client_ip, server_ip, within},
};

const SERVER_PORT: u16 = 8000;
const SERVER_PORTS: u16 = 16;
const SPORTS: u64 = 65536 - 1024;

fn cvt(r: libc::c_int, what: &str) -> Result<libc::c_int> {
    if r < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data.
    let mut s: libc::sockaddr_in = unsafe { mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn setopt(fd: RawFd, level: i32, name: i32, v: &impl Sized) -> libc::c_int {
    // SAFETY: v is a valid value of its type for the call.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v as *const _ as *const libc::c_void,
            mem::size_of_val(v) as libc::socklen_t,
        )
    }
}

fn linger0(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &l);
}

/// Accepts and closes everything on the server's ports, until dropped.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(ns: &NetNs) -> Result<TcpServer> {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let handle = std::thread::spawn(move || {
            let r = (|| -> Result<Vec<RawFd>> {
                testkit::enter_netns(&path).map_err(|e| anyhow!("{e}"))?;
                let mut fds = Vec::new();
                for p in 0..SERVER_PORTS {
                    // SAFETY: plain syscalls on fds this thread owns.
                    let fd = cvt(
                        unsafe {
                            libc::socket(
                                libc::AF_INET,
                                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                                0,
                            )
                        },
                        "socket",
                    )?;
                    setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32);
                    let a = sockaddr(SocketAddrV4::new(server_ip(), SERVER_PORT + p));
                    // SAFETY: a is a valid sockaddr_in.
                    cvt(
                        unsafe {
                            libc::bind(
                                fd,
                                (&a as *const libc::sockaddr_in).cast(),
                                mem::size_of::<libc::sockaddr_in>() as u32,
                            )
                        },
                        "bind",
                    )?;
                    // SAFETY: fd is a bound socket.
                    cvt(unsafe { libc::listen(fd, 65535) }, "listen")?;
                    fds.push(fd);
                }
                Ok(fds)
            })();
            let fds = match r {
                Ok(f) => {
                    let _ = tx.send(Ok(()));
                    f
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            // SAFETY: epoll fd owned by this thread.
            let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            for &fd in &fds {
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: fd as u64,
                };
                // SAFETY: ev is valid for the call.
                unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
            }
            let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: evs is writable for its length.
                let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, 50) };
                for ev in evs.iter().take(n.max(0) as usize) {
                    let lfd = ev.u64 as RawFd;
                    loop {
                        // SAFETY: accept on our listening socket.
                        let c = unsafe {
                            libc::accept4(
                                lfd,
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                libc::SOCK_CLOEXEC,
                            )
                        };
                        if c < 0 {
                            break;
                        }
                        // SAFETY: c is ours.
                        unsafe { libc::close(c) };
                    }
                }
            }
            for fd in fds {
                // SAFETY: ours.
                unsafe { libc::close(fd) };
            }
            // SAFETY: ours.
            unsafe { libc::close(ep) };
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("tcp server: {e}"),
            Err(_) => bail!("tcp server did not start"),
        }
        Ok(TcpServer {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct TcpResult {
    pub completed: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl TcpResult {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens connections flat out for `duration` with `concurrency` in flight.
pub fn run_tcp(
    client: &NetNs,
    duration: Duration,
    concurrency: usize,
    pb: Option<&ProgressBar>,
) -> Result<TcpResult> {
    within(client, || generate(duration, concurrency, pb))?
}

fn open_one(k: u64, ep: RawFd) -> Result<RawFd, i32> {
    let sport = (1024 + k % SPORTS) as u16;
    let dport = SERVER_PORT + ((k / SPORTS) % SERVER_PORTS as u64) as u16;
    // SAFETY: plain syscalls on an fd we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(*libc::__errno_location());
        }
        setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32);
        linger0(fd);
        let local = sockaddr(SocketAddrV4::new(client_ip(), sport));
        if libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as u32,
        ) < 0
        {
            let e = *libc::__errno_location();
            libc::close(fd);
            return Err(e);
        }
        let remote = sockaddr(SocketAddrV4::new(server_ip(), dport));
        let r = libc::connect(
            fd,
            (&remote as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if r < 0 && *libc::__errno_location() != libc::EINPROGRESS {
            let e = *libc::__errno_location();
            libc::close(fd);
            return Err(e);
        }
        let mut ev = libc::epoll_event {
            events: libc::EPOLLOUT as u32,
            u64: fd as u64,
        };
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
        Ok(fd)
    }
}

fn generate(duration: Duration, concurrency: usize, pb: Option<&ProgressBar>) -> Result<TcpResult> {
    // SAFETY: epoll fd owned here, closed at the end.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let mut res = TcpResult::default();
    let mut k = 0u64;
    let mut opened: Vec<Option<Instant>> = Vec::new();
    let mut inflight = 0usize;
    let start = Instant::now();
    let end = start + duration;
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut next_report = start;
    let mut last_sweep = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_report {
            if let Some(pb) = pb {
                pb.set_position(res.completed);
            }
            sys::check()?;
            next_report = now + Duration::from_millis(50);
        }
        while inflight < concurrency {
            match open_one(k, ep) {
                Ok(fd) => {
                    let i = fd as usize;
                    if opened.len() <= i {
                        opened.resize(i + 1, None);
                    }
                    opened[i] = Some(now);
                    inflight += 1;
                }
                Err(_) => res.failed += 1,
            }
            k += 1;
        }
        // SAFETY: evs is writable for its length.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, 10) };
        for ev in evs.iter().take(n.max(0) as usize) {
            let fd = ev.u64 as RawFd;
            let mut err: libc::c_int = 0;
            let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: err/len are valid; fd is ours.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                );
                libc::close(fd);
            }
            // ECONNRESET: the server accepted (so the handshake completed) and its
            // close overtook our check.
            if err == 0 || err == libc::ECONNRESET {
                res.completed += 1;
            } else {
                res.failed += 1;
            }
            if let Some(slot) = opened.get_mut(fd as usize) {
                *slot = None;
            }
            inflight -= 1;
        }
        // Connections whose SYN was dropped would wait for a retransmission: give up
        // on them after a second.
        if now.duration_since(last_sweep) > Duration::from_millis(200) {
            last_sweep = now;
            for (fd, slot) in opened.iter_mut().enumerate() {
                if let Some(t) = *slot
                    && now.duration_since(t) > Duration::from_secs(1)
                {
                    // SAFETY: fd is ours.
                    unsafe { libc::close(fd as RawFd) };
                    *slot = None;
                    inflight -= 1;
                    res.failed += 1;
                }
            }
        }
    }
    res.elapsed = start.elapsed();
    for (fd, slot) in opened.iter().enumerate() {
        if slot.is_some() {
            // SAFETY: fd is ours.
            unsafe { libc::close(fd as RawFd) };
        }
    }
    // SAFETY: ours.
    unsafe { libc::close(ep) };
    if let Some(pb) = pb {
        pb.set_position(res.completed);
    }
    Ok(res)
}
