//! What every ctnetlink event subscription shares (conntrack destroy events,
//! expectation events): a non-blocking multicast socket that reports lost events
//! instead of hiding them, one datagram read at a time and handed out message by
//! message, counters, and rate-limited warnings. The listeners only decide which
//! messages they want and how to parse them.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use crate::kernel::netlink_socket::NlSocket;

use super::{
    CtnlError, ListenerConfig, ListenerStats, RateLimit,
    consts::{NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS, NLMSG_HDRLEN},
    nla::{DecodeError, Msg, MsgIter, align4},
};

/// How a subscription names itself in errors and logs (all static: they end up in
/// [`CtnlError`] fields).
pub(super) struct Names {
    /// e.g. "open destroy listener socket".
    pub open: &'static str,
    /// e.g. "receive destroy events".
    pub receive: &'static str,
    /// e.g. "destroy event" (the [`CtnlError::Decode`] operation).
    pub event: &'static str,
    /// e.g. "conntrack destroy events lost (receive buffer overrun)".
    pub lost: &'static str,
    /// e.g. "malformed conntrack destroy event".
    pub malformed: &'static str,
}

/// What [`EventSocket::next`] found.
pub(super) enum Next<R> {
    /// A message, as the caller's closure saw it.
    Message(R),
    /// The receive buffer overflowed (ENOBUFS): events were lost.
    Overrun,
    /// Nothing queued.
    Empty,
}

pub(super) struct EventSocket {
    sock: NlSocket,
    buf: Vec<u8>,
    /// Unread part of the last datagram: `buf[off..len]`.
    off: usize,
    len: usize,
    pub stats: ListenerStats,
    log: RateLimit,
    names: Names,
}

impl EventSocket {
    /// Opens the socket in the calling thread's namespace and joins `groups`
    /// (`(group, "join NFNLGRP_...")`).
    pub fn open(
        cfg: ListenerConfig,
        groups: &[(u32, &'static str)],
        names: Names,
    ) -> Result<EventSocket, CtnlError> {
        let io = |op| move |source| CtnlError::Io { op, source };
        let sock = NlSocket::netfilter(true).map_err(io(names.open))?;
        sock.set_rcvbuf(cfg.rcvbuf).map_err(io("set SO_RCVBUF"))?;
        // Losing events must be visible (ENOBUFS), never silent.
        sock.set_netlink_flag(NETLINK_NO_ENOBUFS, false)
            .map_err(io("set NETLINK_NO_ENOBUFS"))?;
        if cfg.reliable {
            sock.set_netlink_flag(NETLINK_BROADCAST_ERROR, true)
                .map_err(io("set NETLINK_BROADCAST_ERROR"))?;
        }
        for &(group, join) in groups {
            sock.add_membership(group).map_err(io(join))?;
        }
        Ok(EventSocket {
            sock,
            buf: vec![0u8; 64 << 10],
            off: 0,
            len: 0,
            stats: ListenerStats::default(),
            log: RateLimit::new(),
            names,
        })
    }

    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    pub fn rcvbuf(&self) -> io::Result<usize> {
        self.sock.rcvbuf()
    }

    /// The next message, passed through `look` (which copies out what it needs: the
    /// message borrows the receive buffer), or what the socket says instead. A message
    /// whose header cannot be trusted ends its datagram and is returned as an error.
    pub fn next<R>(&mut self, mut look: impl FnMut(&Msg<'_>) -> R) -> Result<Next<R>, CtnlError> {
        loop {
            if self.off < self.len {
                let found = MsgIter::new(&self.buf[self.off..self.len])
                    .next()
                    .map(|m| m.map(|msg| (align4(NLMSG_HDRLEN + msg.payload.len()), look(&msg))));
                match found {
                    None => self.off = self.len,
                    Some(Err(e)) => {
                        self.off = self.len;
                        return Err(self.malformed(e));
                    }
                    Some(Ok((step, seen))) => {
                        self.off += step;
                        return Ok(Next::Message(seen));
                    }
                }
                continue;
            }
            match self.sock.recv(&mut self.buf, true) {
                Ok(n) if n > self.buf.len() => {
                    self.off = 0;
                    self.len = 0;
                    return Err(self.malformed(DecodeError::Truncated {
                        what: "datagram",
                        need: n,
                        have: self.buf.len(),
                    }));
                }
                Ok(n) => {
                    self.off = 0;
                    self.len = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Next::Empty),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.overruns += 1;
                    if let Some(suppressed) = self.log.allow() {
                        tracing::warn!(
                            overruns = self.stats.overruns,
                            suppressed,
                            "{}",
                            self.names.lost
                        );
                    }
                    return Ok(Next::Overrun);
                }
                Err(source) => {
                    return Err(CtnlError::Io {
                        op: self.names.receive,
                        source,
                    });
                }
            }
        }
    }

    /// The next event `parse` recognises. Messages it answers `None` for are skipped
    /// (counted as ignored); one it cannot decode is counted, logged and returned as
    /// an error, and the next call continues after it.
    pub fn next_event<T>(
        &mut self,
        mut parse: impl FnMut(&Msg<'_>) -> Option<Result<T, DecodeError>>,
    ) -> Result<Next<T>, CtnlError> {
        loop {
            return match self.next(&mut parse)? {
                Next::Empty => Ok(Next::Empty),
                Next::Overrun => Ok(Next::Overrun),
                Next::Message(None) => {
                    self.stats.ignored += 1;
                    continue;
                }
                Next::Message(Some(Err(e))) => Err(self.malformed(e)),
                Next::Message(Some(Ok(event))) => {
                    self.stats.events += 1;
                    Ok(Next::Message(event))
                }
            };
        }
    }

    /// Counts (and logs, rate-limited) a message that could not be decoded.
    pub fn malformed(&mut self, e: DecodeError) -> CtnlError {
        self.stats.malformed += 1;
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(error = %e, suppressed, "{}", self.names.malformed);
        }
        CtnlError::Decode {
            op: self.names.event,
            source: e,
        }
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for EventSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
