//! Expectation events (`NFNLGRP_CONNTRACK_EXP_NEW` and `_EXP_DESTROY`): what the agent
//! replicates. The kernel sends no update events for expectations (there is nothing to
//! update but the timer); a destroy follows when the expectation is matched by its
//! connection (unless permanent), times out, is deleted, or goes with its master.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use crate::conntrack::ExpectChange;

use super::{
    CtnlError, ListenerConfig, ListenerStats, RateLimit,
    consts::{NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS, NLMSG_HDRLEN},
    expect::{
        IPCTNL_MSG_EXP_DELETE, IPCTNL_MSG_EXP_NEW, NFNLGRP_CONNTRACK_EXP_DESTROY,
        NFNLGRP_CONNTRACK_EXP_NEW, is_exp_msg, parse_expect,
    },
    nla::{DecodeError, MsgIter, align4},
    socket::NlSocket,
};

/// One expectation event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectEvent {
    /// `Upsert` for a new expectation (zone: default; the kernel does not report it),
    /// `Delete` when it went away.
    pub change: ExpectChange,
    /// `nlmsg_pid`: the port id of the socket whose request caused the event (compare
    /// with [`ExpectInstaller::portid`](super::ExpectInstaller::portid) to skip echoes of
    /// our own installs and deletes), 0 when the kernel acted itself (a helper created
    /// it, a connection matched it, its timer fired).
    pub portid: u32,
    /// CTA_EXPECT_ID (node-local handle; diagnostics only).
    pub id: Option<u32>,
}

/// The result of one [`ExpectListener::recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectRecv {
    Event(ExpectEvent),
    /// The receive buffer overflowed (ENOBUFS) and events were lost: resync the
    /// expectations ([`dump_expectations`](super::dump_expectations)).
    Overrun,
    /// Nothing queued (the socket is non-blocking; wait for readability).
    Empty,
}

/// A non-blocking subscription to the expectation events of the namespace it was opened
/// in. Register its fd with epoll (or tokio's `AsyncFd`) and call
/// [`recv`](ExpectListener::recv) until it returns [`ExpectRecv::Empty`].
pub struct ExpectListener {
    sock: NlSocket,
    buf: Vec<u8>,
    /// Unread part of the last datagram: `buf[off..len]`.
    off: usize,
    len: usize,
    stats: ListenerStats,
    log: RateLimit,
}

impl ExpectListener {
    /// Subscribes in the calling thread's network namespace. Expectations are rare
    /// compared with conntrack events: a 4 MiB buffer holds ~10k events.
    pub fn new() -> Result<ExpectListener, CtnlError> {
        ExpectListener::with_config(ListenerConfig {
            rcvbuf: 4 << 20,
            reliable: false,
        })
    }

    /// Like [`new`](ExpectListener::new), with an explicit buffer size / reliability
    /// (NETLINK_BROADCAST_ERROR: see [`ListenerConfig::reliable`]).
    pub fn with_config(cfg: ListenerConfig) -> Result<ExpectListener, CtnlError> {
        let io = |op| move |source| CtnlError::Io { op, source };
        let sock = NlSocket::open(true).map_err(io("open expectation listener socket"))?;
        sock.set_rcvbuf(cfg.rcvbuf).map_err(io("set SO_RCVBUF"))?;
        sock.set_netlink_flag(NETLINK_NO_ENOBUFS, false)
            .map_err(io("set NETLINK_NO_ENOBUFS"))?;
        if cfg.reliable {
            sock.set_netlink_flag(NETLINK_BROADCAST_ERROR, true)
                .map_err(io("set NETLINK_BROADCAST_ERROR"))?;
        }
        sock.add_membership(NFNLGRP_CONNTRACK_EXP_NEW)
            .map_err(io("join NFNLGRP_CONNTRACK_EXP_NEW"))?;
        sock.add_membership(NFNLGRP_CONNTRACK_EXP_DESTROY)
            .map_err(io("join NFNLGRP_CONNTRACK_EXP_DESTROY"))?;
        Ok(ExpectListener {
            sock,
            buf: vec![0u8; 64 << 10],
            off: 0,
            len: 0,
            stats: ListenerStats::default(),
            log: RateLimit::new(),
        })
    }

    /// This socket's own port id (diagnostics; events carry the *causing* socket's).
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Effective receive buffer size (as the kernel reports it).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        self.sock.rcvbuf()
    }

    /// Counters since the listener was opened (`events`: NEW and DESTROY events).
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// Returns the next event, [`ExpectRecv::Overrun`] after lost events, or
    /// [`ExpectRecv::Empty`]. A malformed message is returned as an error (and counted);
    /// the next call continues after it.
    pub fn recv(&mut self) -> Result<ExpectRecv, CtnlError> {
        loop {
            if self.off < self.len {
                let rest = &self.buf[self.off..self.len];
                let Some(next) = MsgIter::new(rest).next() else {
                    self.off = self.len;
                    continue;
                };
                let msg = match next {
                    Ok(m) => m,
                    Err(e) => {
                        // The header cannot be trusted: drop the rest of the datagram.
                        self.off = self.len;
                        return Err(self.malformed(e));
                    }
                };
                self.off += align4(NLMSG_HDRLEN + msg.payload.len());
                let op = if is_exp_msg(&msg, IPCTNL_MSG_EXP_NEW) {
                    IPCTNL_MSG_EXP_NEW
                } else if is_exp_msg(&msg, IPCTNL_MSG_EXP_DELETE) {
                    IPCTNL_MSG_EXP_DELETE
                } else {
                    self.stats.ignored += 1;
                    continue;
                };
                let parsed = parse_expect(&msg).and_then(|p| Ok((p.change(op)?, p.id)));
                let (change, id) = match parsed {
                    Ok(c) => c,
                    Err(e) => return Err(self.malformed(e)),
                };
                self.stats.events += 1;
                return Ok(ExpectRecv::Event(ExpectEvent {
                    change,
                    portid: msg.pid,
                    id,
                }));
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ExpectRecv::Empty),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.overruns += 1;
                    if let Some(suppressed) = self.log.allow() {
                        tracing::warn!(
                            overruns = self.stats.overruns,
                            suppressed,
                            "conntrack expectation events lost (receive buffer overrun)"
                        );
                    }
                    return Ok(ExpectRecv::Overrun);
                }
                Err(source) => {
                    return Err(CtnlError::Io {
                        op: "receive expectation events",
                        source,
                    });
                }
            }
        }
    }

    fn malformed(&mut self, e: DecodeError) -> CtnlError {
        self.stats.malformed += 1;
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(error = %e, suppressed, "malformed conntrack expectation event");
        }
        CtnlError::Decode {
            op: "expectation event",
            source: e,
        }
    }
}

impl AsRawFd for ExpectListener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for ExpectListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
