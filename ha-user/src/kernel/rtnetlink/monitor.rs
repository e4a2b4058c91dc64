//! Link (and address) change notifications for `monitor_interfaces`.
//!
//! A non-blocking socket subscribed to rtnetlink multicast groups. Register
//! [`LinkMonitor`]'s fd with epoll or tokio's `AsyncFd`, then call [`LinkMonitor::read`]
//! when it is readable. Lost notifications (receive buffer overflow) are reported as
//! [`RtEvent::Overrun`]: re-read the state with [`Rtnl::list_links`](super::Rtnl).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use super::{
    AddrInfo, Ctx, LinkInfo, RtnlError,
    addr::decode_addr,
    consts::*,
    link::decode_link,
    nla::{DecodeError, Msg, MsgIter},
};
use crate::kernel::netlink_socket::NlSocket;

/// Which notifications to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Groups {
    pub link: bool,
    pub ipv4_addr: bool,
    pub ipv6_addr: bool,
}

impl Groups {
    pub const LINK: Groups = Groups {
        link: true,
        ipv4_addr: false,
        ipv6_addr: false,
    };
    pub const ALL: Groups = Groups {
        link: true,
        ipv4_addr: true,
        ipv6_addr: true,
    };
}

/// One change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtEvent {
    /// RTM_NEWLINK: a link appeared or changed (state, carrier, MAC, name, ...).
    Link(LinkInfo),
    /// RTM_DELLINK: the link is gone; its last state.
    LinkRemoved(LinkInfo),
    AddrAdded(AddrInfo),
    AddrRemoved(AddrInfo),
    /// Notifications were lost (ENOBUFS); state must be re-read.
    Overrun,
}

/// Decodes one notification; `Ok(None)` for message types we do not follow.
pub(super) fn decode_event(m: &Msg<'_>) -> Result<Option<RtEvent>, DecodeError> {
    Ok(Some(match m.ty {
        RTM_NEWLINK => RtEvent::Link(decode_link(m.payload)?),
        RTM_DELLINK => RtEvent::LinkRemoved(decode_link(m.payload)?),
        RTM_NEWADDR => RtEvent::AddrAdded(decode_addr(m.payload)?),
        RTM_DELADDR => RtEvent::AddrRemoved(decode_addr(m.payload)?),
        _ => return Ok(None),
    }))
}

/// Decodes every notification of a datagram into `out`; returns how many could not be
/// decoded (each is logged).
pub(super) fn decode_datagram(buf: &[u8], out: &mut Vec<RtEvent>) -> usize {
    let mut bad = 0;
    for m in MsgIter::new(buf) {
        match m.and_then(|m| decode_event(&m)) {
            Ok(Some(e)) => out.push(e),
            Ok(None) => {}
            Err(e) => {
                bad += 1;
                tracing::warn!(error = %e, "rtnetlink: skipping a malformed notification");
            }
        }
    }
    bad
}

/// Large enough for one notification datagram (a link message is well below 4 KiB,
/// but a notification skb may be up to a page or so; allow for big pages).
const RECV_BUF: usize = 64 * 1024;
/// Room for bursts (a bridge with many ports going down at once).
const RCVBUF_BYTES: i32 = 1 << 20;

/// A subscription to rtnetlink change notifications in the opening thread's namespace.
pub struct LinkMonitor {
    sock: NlSocket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    pub fn open(groups: Groups) -> Result<LinkMonitor, RtnlError> {
        let ctx = Ctx::new("subscribe to link changes", None, None);
        let io = |source| RtnlError::Io {
            ctx: ctx.clone(),
            source,
        };
        let sock = NlSocket::route(true).map_err(io)?;
        // Best effort: the cap is net.core.rmem_max; overruns are reported anyway.
        let _ = sock.set_int_opt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES);
        for (on, group) in [
            (groups.link, RTNLGRP_LINK),
            (groups.ipv4_addr, RTNLGRP_IPV4_IFADDR),
            (groups.ipv6_addr, RTNLGRP_IPV6_IFADDR),
        ] {
            if on {
                sock.add_membership(group).map_err(io)?;
            }
        }
        Ok(LinkMonitor {
            sock,
            buf: vec![0u8; RECV_BUF],
        })
    }

    /// Appends every notification that is ready to `out` without blocking; returns how
    /// many were appended (0: nothing pending, wait for readability again).
    pub fn read(&mut self, out: &mut Vec<RtEvent>) -> Result<usize, RtnlError> {
        let before = out.len();
        loop {
            match self.sock.recv(&mut self.buf, true) {
                Ok(n) if n > self.buf.len() => {
                    // A truncated datagram lost notifications just like an overrun.
                    out.push(RtEvent::Overrun);
                }
                Ok(n) => {
                    decode_datagram(&self.buf[..n], out);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => out.push(RtEvent::Overrun),
                Err(source) => {
                    return Err(RtnlError::Io {
                        ctx: Ctx::new("read link changes", None, None),
                        source,
                    });
                }
            }
        }
        Ok(out.len() - before)
    }
}

impl AsRawFd for LinkMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
