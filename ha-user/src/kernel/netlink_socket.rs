//! A netlink socket over plain libc, for ctnetlink (`NETLINK_NETFILTER`) and
//! rtnetlink (`NETLINK_ROUTE`) alike: open/bind, buffer sizes, multicast groups, send
//! to the kernel, receive datagrams that came from the kernel.
//!
//! The socket belongs to the network namespace of the thread that opens it.

use std::{
    io, mem,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use libc::SOL_NETLINK;

/// An open, bound netlink socket.
#[derive(Debug)]
pub struct NlSocket {
    fd: OwnedFd,
    portid: u32,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_nl = unsafe { mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a
}

impl NlSocket {
    /// A `NETLINK_NETFILTER` socket (ctnetlink); see [`open`](NlSocket::open).
    pub fn netfilter(nonblocking: bool) -> io::Result<NlSocket> {
        NlSocket::open(libc::NETLINK_NETFILTER, nonblocking)
    }

    /// A `NETLINK_ROUTE` socket (rtnetlink); see [`open`](NlSocket::open).
    pub fn route(nonblocking: bool) -> io::Result<NlSocket> {
        NlSocket::open(libc::NETLINK_ROUTE, nonblocking)
    }

    /// Opens and binds a socket of `protocol`; the kernel picks the port id.
    /// `nonblocking` sets O_NONBLOCK (event listeners); request sockets stay blocking
    /// and use MSG_DONTWAIT where they must not wait.
    pub fn open(protocol: libc::c_int, nonblocking: bool) -> io::Result<NlSocket> {
        let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        if nonblocking {
            ty |= libc::SOCK_NONBLOCK;
        }
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = cvt(unsafe { libc::socket(libc::AF_NETLINK, ty, protocol) })?;
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = kernel_addr();
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        let mut bound = kernel_addr();
        let mut len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: bound/len describe a writable sockaddr_nl.
        cvt(unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                &mut bound as *mut libc::sockaddr_nl as *mut libc::sockaddr,
                &mut len,
            )
        })?;
        Ok(NlSocket {
            fd,
            portid: bound.nl_pid,
        })
    }

    /// The port id the kernel assigned; ctnetlink events caused by this socket's
    /// requests carry it in `nlmsg_pid`.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    pub fn set_int_opt(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: value is a valid c_int for the duration of the call.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                mem::size_of::<i32>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    /// Bounds every blocking receive, so a lost reply cannot hang the caller.
    pub fn set_recv_timeout(&self, t: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval for the duration of the call.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    pub fn get_int_opt(&self, level: i32, name: i32) -> io::Result<i32> {
        let mut value: i32 = 0;
        let mut len = mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: value/len describe a writable c_int.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &mut value as *mut i32 as *mut libc::c_void,
                &mut len,
            )
        })?;
        Ok(value)
    }

    /// Sets a buffer size with the `*FORCE` option (CAP_NET_ADMIN, ignores
    /// `net.core.[rw]mem_max`), falling back to the capped option. Returns the size the
    /// kernel reports afterwards (twice the request: it accounts for skb overhead).
    fn set_buf(&self, force: i32, plain: i32, bytes: usize) -> io::Result<usize> {
        let v = i32::try_from(bytes).unwrap_or(i32::MAX / 2);
        if self.set_int_opt(libc::SOL_SOCKET, force, v).is_err() {
            self.set_int_opt(libc::SOL_SOCKET, plain, v)?;
        }
        Ok(self.get_int_opt(libc::SOL_SOCKET, plain)?.max(0) as usize)
    }

    pub fn set_sndbuf(&self, bytes: usize) -> io::Result<usize> {
        self.set_buf(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
    }

    pub fn set_rcvbuf(&self, bytes: usize) -> io::Result<usize> {
        self.set_buf(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
    }

    pub fn rcvbuf(&self) -> io::Result<usize> {
        Ok(self.get_int_opt(libc::SOL_SOCKET, libc::SO_RCVBUF)?.max(0) as usize)
    }

    /// Sets an `SOL_NETLINK` boolean option.
    pub fn set_netlink_flag(&self, name: i32, on: bool) -> io::Result<()> {
        self.set_int_opt(SOL_NETLINK, name, on as i32)
    }

    pub fn add_membership(&self, group: u32) -> io::Result<()> {
        self.set_int_opt(SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, group as i32)
    }

    /// Sends one datagram (any number of messages) to the kernel. The kernel processes
    /// every message before this returns.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let addr = kernel_addr();
        loop {
            // SAFETY: buf and addr are valid for the given lengths.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr() as *const libc::c_void,
                    buf.len(),
                    0,
                    &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one datagram from the kernel into `buf`. Returns its full length, which
    /// exceeds `buf.len()` if it was truncated (MSG_TRUNC). Datagrams from other senders
    /// than the kernel (port id 0) are dropped. ENOBUFS (messages lost because the
    /// receive buffer overflowed) and EAGAIN come back as errors.
    pub fn recv(&self, buf: &mut [u8], dontwait: bool) -> io::Result<usize> {
        let mut flags = libc::MSG_TRUNC;
        if dontwait {
            flags |= libc::MSG_DONTWAIT;
        }
        loop {
            let mut from = kernel_addr();
            let mut len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: buf, from and len are valid and writable for the given lengths.
            let r = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    flags,
                    &mut from as *mut libc::sockaddr_nl as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if from.nl_pid != 0 {
                continue;
            }
            return Ok(r as usize);
        }
    }
}

impl AsRawFd for NlSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for NlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
