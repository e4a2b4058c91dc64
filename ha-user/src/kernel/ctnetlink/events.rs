//! Conntrack destroy events (`NFNLGRP_CONNTRACK_DESTROY`): the deletions the agent
//! replicates to its peer (timeouts, `conntrack -D`, flushes, RSTs...).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use crate::conntrack::{Entry, Key};

use super::{
    CtnlError,
    consts::{IPCTNL_MSG_CT_DELETE, NFNLGRP_CONNTRACK_DESTROY},
    decode::{is_ct_msg, parse_ct},
    event_socket::{EventSocket, Names, Next},
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
    events: EventSocket,
}

impl DestroyListener {
    /// Subscribes in the calling thread's network namespace with the default settings.
    pub fn new() -> Result<DestroyListener, CtnlError> {
        DestroyListener::with_config(ListenerConfig::default())
    }

    /// Like [`new`](DestroyListener::new), with an explicit buffer size / reliability.
    pub fn with_config(cfg: ListenerConfig) -> Result<DestroyListener, CtnlError> {
        let events = EventSocket::open(
            cfg,
            &[(NFNLGRP_CONNTRACK_DESTROY, "join NFNLGRP_CONNTRACK_DESTROY")],
            Names {
                open: "open listener socket",
                receive: "receive destroy events",
                event: "destroy event",
                lost: "conntrack destroy events lost (receive buffer overrun)",
                malformed: "malformed conntrack destroy event",
            },
        )?;
        Ok(DestroyListener { events })
    }

    /// This socket's own port id (diagnostics; events carry the *causing* socket's).
    pub fn portid(&self) -> u32 {
        self.events.portid()
    }

    /// Effective receive buffer size (as the kernel reports it).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        self.events.rcvbuf()
    }

    /// Counters since the listener was opened, for metrics.
    pub fn stats(&self) -> &ListenerStats {
        &self.events.stats
    }

    /// Returns the next destroyed entry, [`Recv::Overrun`] after lost events, or
    /// [`Recv::Empty`]. A malformed message is returned as an error (and counted); the
    /// next call continues after it.
    pub fn recv(&mut self) -> Result<Recv, CtnlError> {
        let next = self.events.next_event(|msg| {
            is_ct_msg(msg, IPCTNL_MSG_CT_DELETE).then(|| {
                let parsed = parse_ct(msg)?;
                Ok(Destroyed {
                    key: parsed.key()?,
                    entry: parsed.entry().ok(),
                    portid: msg.pid,
                })
            })
        })?;
        Ok(match next {
            Next::Empty => Recv::Empty,
            Next::Overrun => Recv::Overrun,
            Next::Message(destroyed) => Recv::Destroyed(destroyed),
        })
    }
}

impl AsRawFd for DestroyListener {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}

impl AsFd for DestroyListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}
