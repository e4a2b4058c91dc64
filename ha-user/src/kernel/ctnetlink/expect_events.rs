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
    CtnlError, ListenerConfig, ListenerStats,
    event_socket::{EventSocket, Names, Next},
    expect::{
        IPCTNL_MSG_EXP_DELETE, IPCTNL_MSG_EXP_NEW, NFNLGRP_CONNTRACK_EXP_DESTROY,
        NFNLGRP_CONNTRACK_EXP_NEW, is_exp_msg, parse_expect,
    },
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
    events: EventSocket,
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
        let events = EventSocket::open(
            cfg,
            &[
                (NFNLGRP_CONNTRACK_EXP_NEW, "join NFNLGRP_CONNTRACK_EXP_NEW"),
                (
                    NFNLGRP_CONNTRACK_EXP_DESTROY,
                    "join NFNLGRP_CONNTRACK_EXP_DESTROY",
                ),
            ],
            Names {
                open: "open expectation listener socket",
                receive: "receive expectation events",
                event: "expectation event",
                lost: "conntrack expectation events lost (receive buffer overrun)",
                malformed: "malformed conntrack expectation event",
            },
        )?;
        Ok(ExpectListener { events })
    }

    /// This socket's own port id (diagnostics; events carry the *causing* socket's).
    pub fn portid(&self) -> u32 {
        self.events.portid()
    }

    /// Effective receive buffer size (as the kernel reports it).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        self.events.rcvbuf()
    }

    /// Counters since the listener was opened (`events`: NEW and DESTROY events).
    pub fn stats(&self) -> &ListenerStats {
        &self.events.stats
    }

    /// Returns the next event, [`ExpectRecv::Overrun`] after lost events, or
    /// [`ExpectRecv::Empty`]. A malformed message is returned as an error (and counted);
    /// the next call continues after it.
    pub fn recv(&mut self) -> Result<ExpectRecv, CtnlError> {
        let next = self.events.next_event(|msg| {
            let op = if is_exp_msg(msg, IPCTNL_MSG_EXP_NEW) {
                IPCTNL_MSG_EXP_NEW
            } else if is_exp_msg(msg, IPCTNL_MSG_EXP_DELETE) {
                IPCTNL_MSG_EXP_DELETE
            } else {
                return None;
            };
            Some(parse_expect(msg).and_then(|p| {
                let id = p.id;
                Ok(ExpectEvent {
                    change: p.change(op)?,
                    portid: msg.pid,
                    id,
                })
            }))
        })?;
        Ok(match next {
            Next::Empty => ExpectRecv::Empty,
            Next::Overrun => ExpectRecv::Overrun,
            Next::Message(event) => ExpectRecv::Event(event),
        })
    }
}

impl AsRawFd for ExpectListener {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}

impl AsFd for ExpectListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}
