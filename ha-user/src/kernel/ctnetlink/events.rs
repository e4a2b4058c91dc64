//! Conntrack destroy events (`NFNLGRP_CONNTRACK_DESTROY`): the deletions the agent
//! replicates to its peer (timeouts, `conntrack -D`, flushes, RSTs...).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use crate::conntrack::{Entry, Key};

use super::{
    CtnlError, RateLimit,
    consts::{
        IPCTNL_MSG_CT_DELETE, NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS,
        NFNLGRP_CONNTRACK_DESTROY, NLMSG_HDRLEN,
    },
    decode::{is_ct_msg, parse_ct},
    nla::{DecodeError, MsgIter, align4},
    socket::NlSocket,
};

/// Socket settings for a [`DestroyListener`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Requested SO_RCVBUF (set with SO_RCVBUFFORCE): events queue here between reads;
    /// a burst larger than this is lost (reported as [`Recv::Overrun`]).
    pub rcvbuf: usize,
    /// Sets NETLINK_BROADCAST_ERROR: when this socket cannot take an event, the kernel
    /// keeps the entry on its dying list and redelivers the event later instead of
    /// dropping it (conntrackd's "reliable events"). Redelivered events carry port id 0.
    /// Costs kernel memory under overload; off by default.
    pub reliable: bool,
}

impl Default for ListenerConfig {
    fn default() -> ListenerConfig {
        ListenerConfig {
            rcvbuf: 32 << 20,
            reliable: false,
        }
    }
}

/// One destroyed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destroyed {
    pub key: Key,
    /// The entry as the kernel reported it on destruction (status, mark; timeout and TCP
    /// details are mostly absent from destroy events). `None` if the event had no reply
    /// tuple.
    pub entry: Option<Entry>,
    /// `nlmsg_pid`: the port id of the netlink socket whose request destroyed the entry
    /// (compare with [`Installer::portid`](super::Installer::portid) to skip echoes of
    /// our own deletes), 0 when the kernel destroyed it itself (timeout, RST, GC).
    pub portid: u32,
}

/// The result of one [`DestroyListener::recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// An entry left the table.
    Destroyed(Destroyed),
    /// The receive buffer overflowed (ENOBUFS) and destroy events were lost: the
    /// agent's view of the table is stale and needs a resync.
    Overrun,
    /// Nothing queued (the socket is non-blocking; wait for readability).
    Empty,
}

/// Counters of a [`DestroyListener`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Destroy events returned.
    pub events: u64,
    /// ENOBUFS reports: each means one or more events were lost.
    pub overruns: u64,
    /// Messages that could not be decoded (returned as errors).
    pub malformed: u64,
    /// Messages that were not destroy events (ignored).
    pub ignored: u64,
}

/// A non-blocking subscription to destroy events of the namespace it was opened in.
/// Register its fd with epoll (or wrap it in tokio's `AsyncFd`) and call
/// [`recv`](DestroyListener::recv) until it returns [`Recv::Empty`].
pub struct DestroyListener {
    sock: NlSocket,
    buf: Vec<u8>,
    /// Unread part of the last datagram: `buf[off..len]`.
    off: usize,
    len: usize,
    stats: ListenerStats,
    log: RateLimit,
}

impl DestroyListener {
    /// Subscribes in the calling thread's network namespace with the default settings.
    pub fn new() -> Result<DestroyListener, CtnlError> {
        DestroyListener::with_config(ListenerConfig::default())
    }

    /// Like [`new`](DestroyListener::new), with an explicit buffer size / reliability.
    pub fn with_config(cfg: ListenerConfig) -> Result<DestroyListener, CtnlError> {
        let io = |op| move |source| CtnlError::Io { op, source };
        let sock = NlSocket::open(true).map_err(io("open listener socket"))?;
        sock.set_rcvbuf(cfg.rcvbuf).map_err(io("set SO_RCVBUF"))?;
        // Losing events must be visible (ENOBUFS), never silent.
        sock.set_netlink_flag(NETLINK_NO_ENOBUFS, false)
            .map_err(io("set NETLINK_NO_ENOBUFS"))?;
        if cfg.reliable {
            sock.set_netlink_flag(NETLINK_BROADCAST_ERROR, true)
                .map_err(io("set NETLINK_BROADCAST_ERROR"))?;
        }
        sock.add_membership(NFNLGRP_CONNTRACK_DESTROY)
            .map_err(io("join NFNLGRP_CONNTRACK_DESTROY"))?;
        Ok(DestroyListener {
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

    /// Counters since the listener was opened, for metrics.
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// Returns the next destroyed entry, [`Recv::Overrun`] after lost events, or
    /// [`Recv::Empty`]. A malformed message is returned as an error (and counted); the
    /// next call continues after it.
    pub fn recv(&mut self) -> Result<Recv, CtnlError> {
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
                if !is_ct_msg(&msg, IPCTNL_MSG_CT_DELETE) {
                    self.stats.ignored += 1;
                    continue;
                }
                let portid = msg.pid;
                let parsed = match parse_ct(&msg) {
                    Ok(p) => p,
                    Err(e) => return Err(self.malformed(e)),
                };
                let key = match parsed.key() {
                    Ok(k) => k,
                    Err(e) => return Err(self.malformed(e)),
                };
                self.stats.events += 1;
                return Ok(Recv::Destroyed(Destroyed {
                    key,
                    entry: parsed.entry().ok(),
                    portid,
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.overruns += 1;
                    if let Some(suppressed) = self.log.allow() {
                        tracing::warn!(
                            overruns = self.stats.overruns,
                            suppressed,
                            "conntrack destroy events lost (receive buffer overrun)"
                        );
                    }
                    return Ok(Recv::Overrun);
                }
                Err(source) => {
                    return Err(CtnlError::Io {
                        op: "receive destroy events",
                        source,
                    });
                }
            }
        }
    }

    fn malformed(&mut self, e: DecodeError) -> CtnlError {
        self.stats.malformed += 1;
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(error = %e, suppressed, "malformed conntrack destroy event");
        }
        CtnlError::Decode {
            op: "destroy event",
            source: e,
        }
    }
}

impl AsRawFd for DestroyListener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for DestroyListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
