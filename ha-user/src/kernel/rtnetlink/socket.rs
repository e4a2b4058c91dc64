//! A `NETLINK_ROUTE` socket over plain libc.
//!
//! Minimal copy of `kernel::ctnetlink::socket::NlSocket`, whose `open` hard-codes
//! `NETLINK_NETFILTER`. Once that takes the protocol as a parameter, this file can go.
//! The socket belongs to the network namespace of the thread that opens it.

use std::{
    io, mem,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use super::consts::{NETLINK_ADD_MEMBERSHIP, NETLINK_ROUTE, SOL_NETLINK};

#[derive(Debug)]
pub struct RouteSocket {
    fd: OwnedFd,
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

impl RouteSocket {
    /// Opens and binds (kernel-chosen port id). `nonblocking` for event subscriptions.
    pub fn open(nonblocking: bool) -> io::Result<RouteSocket> {
        let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        if nonblocking {
            ty |= libc::SOCK_NONBLOCK;
        }
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = cvt(unsafe { libc::socket(libc::AF_NETLINK, ty, NETLINK_ROUTE) })?;
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
        Ok(RouteSocket { fd })
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

    pub fn add_membership(&self, group: u32) -> io::Result<()> {
        self.set_int_opt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group as i32)
    }

    /// Sends one datagram to the kernel, which processes it before this returns.
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

    /// Receives one datagram from the kernel (port id 0; others are dropped). Returns its
    /// full length, larger than `buf.len()` if it was truncated (MSG_TRUNC).
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

impl AsRawFd for RouteSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for RouteSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
