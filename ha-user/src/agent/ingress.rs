//! Ingress: the peer's conntrack changes into this node's kernel table.
//!
//! One thread: read every datagram the socket holds, let the I/O-free [`Receiver`]
//! authenticate and decode it (rejections are counted there), then install all the
//! changes gathered in one ctnetlink batch. Nothing from an unauthenticated datagram
//! ever reaches the installer.

use std::{
    io,
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, Waker, unix::SourceFd};

use super::{replica::ReplicaSet, timer::Timer};
use crate::{
    conntrack::Change,
    kernel::ctnetlink::Installer,
    metrics::{Board, Sample},
    sync::{Payload, PeerEvent, Receiver},
};

const RX: Token = Token(0);
const TICK: Token = Token(1);
pub const WAKE: Token = Token(2);

/// Changes gathered before installing even if more datagrams are waiting.
const INSTALL_BATCH: usize = 8192;
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

pub struct Ingress {
    pub socket: UdpSocket,
    pub receiver: Receiver,
    pub installer: Installer,
    pub replica: Arc<ReplicaSet>,
    pub board: Board,
    pub stop: Arc<AtomicBool>,
}

struct Loop {
    i: Ingress,
    buf: Vec<u8>,
    changes: Vec<Change>,
    tick: Timer,
    recv_errors: u64,
}

impl Ingress {
    pub fn run(self, mut poll: Poll) -> io::Result<()> {
        let mut l = Loop {
            i: self,
            buf: vec![0u8; 65536],
            changes: Vec::with_capacity(INSTALL_BATCH),
            tick: Timer::new()?,
            recv_errors: 0,
        };
        poll.registry().register(
            &mut SourceFd(&l.i.socket.as_raw_fd()),
            RX,
            Interest::READABLE,
        )?;
        poll.registry()
            .register(&mut SourceFd(&l.tick.as_raw_fd()), TICK, Interest::READABLE)?;
        l.tick.arm(PUBLISH_EVERY)?;
        let mut events = Events::with_capacity(8);
        while !l.i.stop.load(Ordering::Relaxed) {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    RX => l.receive(),
                    TICK => {
                        l.tick.ack();
                        l.publish();
                        l.tick.arm(PUBLISH_EVERY)?;
                    }
                    _ => {}
                }
            }
        }
        l.publish();
        Ok(())
    }
}

impl Loop {
    /// Reads until the socket is empty, installing in batches.
    fn receive(&mut self) {
        loop {
            match self.i.socket.recv_from(&mut self.buf) {
                Ok((n, src)) => {
                    let now = Instant::now();
                    if let Ok(got) =
                        self.i
                            .receiver
                            .handle(now, src, &self.buf[..n], &mut self.changes)
                    {
                        match got.peer_event {
                            PeerEvent::NewPeer => {
                                tracing::info!(node = got.node, %src, "sync: first datagram from peer")
                            }
                            PeerEvent::Restarted { old_epoch } => tracing::info!(
                                node = got.node,
                                old_epoch,
                                epoch = got.epoch,
                                "sync: peer restarted"
                            ),
                            PeerEvent::None => {}
                        }
                        if got.lost > 0 {
                            tracing::debug!(
                                node = got.node,
                                lost = got.lost,
                                "sync: datagrams missing"
                            );
                        }
                        if let Payload::Alive(_) = got.payload {
                            // Nothing to install; the receiver updated the peer's state.
                        }
                    }
                    if self.changes.len() >= INSTALL_BATCH {
                        self.install();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.recv_errors += 1;
                    tracing::warn!(error = %e, "receiving sync datagrams");
                    break;
                }
            }
        }
        self.install();
    }

    fn install(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        self.i.installer.install(&self.changes);
        for change in &self.changes {
            match change {
                Change::Upsert { entry, .. } => self.i.replica.insert(&entry.key()),
                Change::Delete(key) => {
                    self.i.replica.remove(key);
                }
            }
        }
        self.changes.clear();
    }

    fn publish(&self) {
        let rx = self.i.receiver.stats();
        let t = self.i.installer.totals();
        let rejected = "Sync datagrams rejected, by reason";
        let installs = "Replicated changes applied to the kernel table, by result";
        let mut samples = vec![
            Sample::counter(
                "sync_received_datagrams",
                "Sync datagrams accepted",
                rx.datagrams,
            ),
            Sample::counter(
                "sync_received_records",
                "Changes received from peers",
                rx.records,
            ),
            Sample::counter(
                "sync_lost_datagrams",
                "Sync datagrams presumed lost (sequence gaps)",
                rx.lost,
            ),
            Sample::counter(
                "sync_recovered_datagrams",
                "Missing datagrams that arrived late",
                rx.recovered,
            ),
            Sample::counter(
                "sync_peer_restarts",
                "Peers that came back with a new epoch",
                rx.epoch_changes,
            ),
            Sample::counter(
                "sync_receive_errors",
                "Errors reading the sync socket",
                self.recv_errors,
            ),
            Sample::counter("installs", installs, t.created).label("result", "created"),
            Sample::counter("installs", installs, t.updated).label("result", "updated"),
            Sample::counter("installs", installs, t.deleted).label("result", "deleted"),
            Sample::counter("installs", installs, t.delete_not_found)
                .label("result", "delete_not_found"),
            Sample::counter(
                "install_labels_unsupported",
                "Updates applied without labels (labels not in use here)",
                t.labels_unsupported,
            ),
            Sample::counter("install_batches", "ctnetlink batches sent", t.batches),
            Sample::counter(
                "install_replies_lost",
                "ctnetlink error replies lost (ENOBUFS)",
                t.replies_lost,
            ),
            Sample::gauge(
                "replica_entries",
                "Entries held here on behalf of the peer",
                self.i.replica.len() as f64,
            ),
        ];
        for (errno, n) in t.errors_by_name() {
            samples.push(
                Sample::counter(
                    "install_errors",
                    "Replicated changes the kernel refused, by errno",
                    n,
                )
                .label("errno", errno),
            );
        }
        for kind in crate::sync::RejectKind::ALL {
            samples.push(
                Sample::counter("sync_rejected", rejected, rx.rejects.get(kind))
                    .label("reason", kind.as_str()),
            );
        }
        let now = Instant::now();
        for p in self.i.receiver.peers() {
            let node = p.node().to_string();
            samples.push(
                Sample::gauge(
                    "sync_peer_last_heard_seconds",
                    "Seconds since the peer's last datagram",
                    (now - p.last_heard()).as_secs_f64(),
                )
                .label("peer", node),
            );
        }
        self.i.board.publish("ingress", samples);
    }
}

pub fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKE)
}
