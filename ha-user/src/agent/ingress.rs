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

use super::{
    consistency::{self, Action, Consistency},
    expectations::Inbound,
    replica::ReplicaSet,
    resync::{EgressCmd, SyncState},
    timer::Timer,
};
use crate::{
    conntrack::{Change, ExpectChange},
    kernel::ctnetlink::{ExpectInstaller, Installer},
    metrics::{Board, Sample},
    sync::{BucketSet, NackRequest, Payload, PeerEvent, Receiver},
};

const RX: Token = Token(0);
const TICK: Token = Token(1);
pub const WAKE: Token = Token(2);
const NACK: Token = Token(3);

/// Changes gathered before installing even if more datagrams are waiting.
const INSTALL_BATCH: usize = 8192;
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

pub struct Ingress {
    pub socket: UdpSocket,
    pub receiver: Receiver,
    pub installer: Installer,
    /// Installs the peer's expectations (`expect_sync`; `None` when off: received
    /// expectation records are counted and dropped).
    pub expect_installer: Option<ExpectInstaller>,
    pub replica: Arc<ReplicaSet>,
    pub board: Board,
    pub stop: Arc<AtomicBool>,
    /// Our node id (resync requests and answers are addressed by it).
    pub node: u32,
    pub sync_state: Arc<SyncState>,
    /// Resync requests from the peer go to the egress thread.
    pub egress: std::sync::mpsc::Sender<EgressCmd>,
    pub egress_waker: Arc<Waker>,
    /// Commit barriers from the HA driver (arrive with a wake-up).
    pub cmds: std::sync::mpsc::Receiver<IngressCmd>,
    /// For helper threads to hand results back (with `waker`).
    pub cmd_tx: std::sync::mpsc::Sender<IngressCmd>,
    pub waker: Arc<Waker>,
    /// Keys the table digests (derived from the sync secret).
    pub digest_key: crate::sync::DigestKey,
}

/// Requests for the ingress thread.
#[derive(Debug)]
pub enum IngressCmd {
    /// Install everything received so far, then answer with the number of changes.
    Barrier(tokio::sync::oneshot::Sender<u64>),
    /// The consistency check's table comparison finished.
    Compared(consistency::Compared),
    /// Part of the peer's table from the TLS channel: installed like replicated
    /// upserts, then acknowledged (the channel reads the next batch meanwhile).
    ChannelBatch {
        entries: Vec<crate::conntrack::Entry>,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// The channel delivered the whole table of node `from` for `request_id`: complete
    /// the sync as a UDP RESYNC_DONE would. The reply says whether it counted.
    ChannelDone {
        request_id: u32,
        records: u64,
        from: u32,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// The takeover's first step: "every sync datagram already received is in the kernel".
#[derive(Clone)]
pub struct Barrier {
    pub tx: std::sync::mpsc::Sender<IngressCmd>,
    pub waker: Arc<Waker>,
}

impl Barrier {
    /// Resolves once the ingress thread has drained its socket into the kernel.
    pub async fn commit(&self, timeout: Duration) -> Result<u64, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(IngressCmd::Barrier(reply))
            .map_err(|_| "the ingress thread is gone".to_string())?;
        let _ = self.waker.wake();
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(_)) => Err("the ingress thread dropped the barrier".into()),
            Err(_) => Err(format!("not confirmed within {timeout:?}")),
        }
    }
}

struct Loop {
    i: Ingress,
    buf: Vec<u8>,
    changes: Vec<Change>,
    /// Expectation changes of the batch, installed after `changes`.
    expects: Vec<ExpectChange>,
    inbound: Inbound,
    tick: Timer,
    /// Fires when the receiver's gap tracker has a NACK or a give-up due.
    nack_timer: Timer,
    /// A RESYNC_DONE waiting for earlier gaps to be repaired: (message, peer, its seq).
    pending_done: Option<(crate::sync::wire::ResyncDone, u32, u64)>,
    recv_errors: u64,
    consistency: Consistency,
    /// The peer whose RESYNC_DONE is pending.
    resync_from: u32,
}

impl Ingress {
    pub fn run(self, mut poll: Poll) -> io::Result<()> {
        let mut l = Loop {
            consistency: Consistency::new(self.digest_key, self.node),
            resync_from: 0,
            i: self,
            buf: vec![0u8; 65536],
            changes: Vec::with_capacity(INSTALL_BATCH),
            expects: Vec::new(),
            inbound: Inbound::default(),
            tick: Timer::new()?,
            nack_timer: Timer::new()?,
            pending_done: None,
            recv_errors: 0,
        };
        poll.registry().register(
            &mut SourceFd(&l.nack_timer.as_raw_fd()),
            NACK,
            Interest::READABLE,
        )?;
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
                        // Expectations waiting for their master.
                        l.install_expects();
                        l.publish();
                        l.tick.arm(PUBLISH_EVERY)?;
                    }
                    NACK => {
                        l.nack_timer.ack();
                        l.recover();
                    }
                    WAKE => l.on_commands(),
                    _ => {}
                }
            }
        }
        l.publish();
        Ok(())
    }
}

impl Loop {
    /// Reads until the socket is empty, installing in batches; then asks for what is
    /// missing and notices what can no longer be repaired.
    fn receive(&mut self) {
        loop {
            match self.i.socket.recv_from(&mut self.buf) {
                Ok((n, src)) => {
                    let now = Instant::now();
                    let before = self.changes.len();
                    if let Ok(got) = self.i.receiver.handle_with_expects(
                        now,
                        src,
                        &mut self.buf[..n],
                        &mut self.changes,
                        &mut self.expects,
                    ) {
                        match got.peer_event {
                            PeerEvent::NewPeer => {
                                tracing::info!(node = got.node, %src, "sync: first datagram from peer");
                                to_egress(&self.i, EgressCmd::Hello);
                            }
                            PeerEvent::Restarted { old_epoch } => {
                                tracing::info!(
                                    node = got.node,
                                    old_epoch,
                                    epoch = got.epoch,
                                    "sync: peer restarted"
                                );
                                to_egress(&self.i, EgressCmd::Hello);
                            }
                            PeerEvent::None => {}
                        }
                        match got.payload {
                            Payload::ResyncRequest(r)
                                if r.target == 0 || r.target == self.i.node =>
                            {
                                to_egress(
                                    &self.i,
                                    EgressCmd::Serve {
                                        requester: got.node,
                                        request_id: r.request_id,
                                    },
                                );
                            }
                            Payload::ResyncDone(d) if d.requester == self.i.node => {
                                // Complete only once nothing before it is missing.
                                self.pending_done = Some((d, got.node, got.seq));
                                self.resync_from = got.node;
                            }
                            Payload::Nack(nack) if nack.node == self.i.node => {
                                let req = NackRequest::from_wire(&nack);
                                to_egress(
                                    &self.i,
                                    EgressCmd::ServeNack {
                                        from: got.node,
                                        req,
                                    },
                                );
                            }
                            Payload::DigestRequest(r)
                                if r.target == 0 || r.target == self.i.node =>
                            {
                                to_egress(&self.i, EgressCmd::SendDigest);
                            }
                            Payload::RepairRequest(r) if r.target == self.i.node => {
                                if let Some(set) = BucketSet::from_bitmap(r.buckets, r.bitmap()) {
                                    to_egress(
                                        &self.i,
                                        EgressCmd::ServeRepair {
                                            requester: got.node,
                                            request_id: r.request_id,
                                            set,
                                        },
                                    );
                                }
                            }
                            Payload::Hello { .. } => {
                                let ok = self.i.receiver.peers_decode_expectations();
                                self.i
                                    .sync_state
                                    .peers_decode_expect
                                    .store(ok, Ordering::Relaxed);
                            }
                            // ALIVE and the rest only update the receiver's view.
                            _ => {}
                        }
                        let (key, replica, tx, waker) = (
                            self.i.digest_key,
                            self.i.replica.clone(),
                            self.i.cmd_tx.clone(),
                            self.i.waker.clone(),
                        );
                        let node = got.node;
                        self.consistency.on_datagram(
                            &got,
                            &self.changes[before..],
                            &self.i.receiver,
                            self.i.replica.unsettled(),
                            |theirs| {
                                let spawned = std::thread::Builder::new()
                                    .name("hasync-compare".into())
                                    .spawn(move || {
                                        super::datapath::normal_scheduling();
                                        consistency::compare(node, theirs, key, replica, tx, waker)
                                    });
                                if let Err(e) = spawned {
                                    tracing::warn!(error = %e, "consistency: cannot start the compare thread");
                                }
                            },
                        );
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
        self.recover();
    }

    /// Loss recovery after each batch (and on the NACK timer): NACK the gaps that are
    /// due, and turn what can no longer be repaired into a resync.
    fn recover(&mut self) {
        let now = Instant::now();
        while let Some(req) = self.i.receiver.poll_nack(now) {
            to_egress(&self.i, EgressCmd::SendNack(req));
        }
        while let Some(r) = self.i.receiver.poll_resync() {
            tracing::warn!(
                node = r.node,
                seqs = r.seqs,
                reason = r.reason.as_str(),
                "sync: datagrams lost beyond repair; resynchronising the table"
            );
            self.i.sync_state.mark_incomplete();
        }
        if let Some((done, node, seq)) = self.pending_done
            && !self
                .i
                .receiver
                .peer(node)
                .is_some_and(|p| p.has_missing_before(seq))
        {
            self.pending_done = None;
            self.finish_resync(done);
        }
        let action = self
            .consistency
            .poll(now, &self.i.receiver, &self.i.replica);
        self.act(action);
        self.i
            .sync_state
            .given_up_now
            .store(self.i.receiver.stats().given_up, Ordering::Relaxed);
        let _ = match self.i.receiver.poll_timeout() {
            Some(at) => self.nack_timer.arm_at(at),
            None => self.nack_timer.disarm(),
        };
    }

    fn on_commands(&mut self) {
        while let Ok(cmd) = self.i.cmds.try_recv() {
            match cmd {
                IngressCmd::Barrier(reply) => {
                    let before = self.installed();
                    self.receive();
                    let _ = reply.send(self.installed() - before);
                }
                IngressCmd::Compared(c) => {
                    let action = self
                        .consistency
                        .on_compared(Instant::now(), c, &self.i.receiver);
                    self.act(action);
                }
                IngressCmd::ChannelBatch { entries, done } => {
                    // Whatever the socket delivered first goes in first.
                    self.install();
                    self.changes.extend(
                        entries
                            .into_iter()
                            .map(|entry| Change::Upsert { entry, new: true }),
                    );
                    self.install();
                    let _ = done.send(());
                }
                IngressCmd::ChannelDone {
                    request_id,
                    records,
                    from,
                    reply,
                } => {
                    let _ = reply.send(self.complete_resync(request_id, records, from, "tls"));
                }
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::None => {}
            Action::Request(cmd) => to_egress(&self.i, cmd),
            Action::Delete(stale) => {
                // Our own installer's deletions are not reported back to the peer.
                self.i.installer.install(&stale);
                for c in &stale {
                    if let Change::Delete(k) = c {
                        self.i.replica.remove(k);
                    }
                }
            }
        }
    }

    /// Changes applied so far (created, updated, deleted).
    fn installed(&self) -> u64 {
        let t = self.i.installer.totals();
        t.created + t.updated + t.deleted + t.delete_not_found
    }

    /// The peer finished sending its table over UDP.
    fn finish_resync(&mut self, done: crate::sync::wire::ResyncDone) {
        let _ = self.complete_resync(done.request_id, done.records, self.resync_from, "udp");
    }

    /// The peer's table for `request_id` is installed (over UDP or the TLS channel):
    /// complete if nothing was given up on the way (gaps repaired by NACK are fine),
    /// else ask again.
    fn complete_resync(
        &mut self,
        request_id: u32,
        records: u64,
        from: u32,
        via: &'static str,
    ) -> Result<(), String> {
        let state = &self.i.sync_state;
        if state.pending_request.load(Ordering::Relaxed) != request_id {
            return Err(format!("request {request_id} is no longer the one pending")); // an answer to an older request
        }
        if self.i.receiver.stats().given_up > state.given_up_at_request.load(Ordering::Relaxed) {
            tracing::warn!(
                request_id,
                via,
                "resync: datagrams were lost beyond repair during the transfer; asking again"
            );
            state.mark_incomplete();
            return Err("sync datagrams were lost beyond repair during the transfer".into());
        }
        tracing::info!(
            entries = records,
            via,
            "resync: the peer's table is installed"
        );
        state.completed(records);
        let claimed = self.i.replica.settle();
        if claimed > 0 {
            tracing::info!(
                claimed,
                "startup: entries found at start that the peer did not re-send are ours"
            );
        }
        // A bulk resync adds and updates but cannot remove: entries whose deletion
        // was lost are still here. The peer's digest finds them.
        to_egress(&self.i, EgressCmd::RequestDigest { target: from });
        Ok(())
    }

    fn install(&mut self) {
        self.install_changes();
        // After the conntrack changes: an expectation needs its master.
        self.install_expects();
    }

    fn install_expects(&mut self) {
        match self.i.expect_installer.as_mut() {
            Some(inst) => self
                .inbound
                .install(Instant::now(), inst, &mut self.expects),
            None => {
                self.inbound.stats.ignored += self.expects.len() as u64;
                self.expects.clear();
            }
        }
    }

    fn install_changes(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        for change in &mut self.changes {
            if let Change::Upsert { entry, .. } = change {
                entry.timeout = replica_lifetime(entry.timeout);
            }
        }
        let installer = &mut self.i.installer;
        self.i
            .replica
            .apply(&self.changes, |c| installer.install(c));
        self.changes.clear();
    }

    fn publish(&self) {
        let rx = self.i.receiver.stats();
        let t = self.i.installer.totals();
        let sync = &self.i.sync_state;
        let rejected = "Sync datagrams rejected, by reason";
        let installs = "Replicated changes applied to the kernel table, by result";
        let mut samples = vec![
            Sample::counter(
                "sync_received_datagrams",
                "Sync datagrams accepted",
                rx.datagrams,
            ),
            Sample::counter(
                "sync_received_encrypted_datagrams",
                "Of the accepted sync datagrams, those that arrived encrypted",
                rx.encrypted,
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
                "sync_stale_changes_dropped",
                "Changes in late (gap-filling) datagrams skipped: a later datagram had changed the entry",
                rx.stale_dropped,
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
            Sample::counter(
                "full_syncs",
                "Complete tables received from the peer (bulk resync)",
                sync.full_syncs.load(Ordering::Relaxed),
            ),
            Sample::gauge(
                "last_full_sync_timestamp_seconds",
                "Unix time of the last complete bulk resync",
                sync.last_full_sync.load(Ordering::Relaxed) as f64,
            ),
            Sample::gauge(
                "in_sync",
                "1 once the peer's full table has been installed",
                f64::from(u8::from(sync.is_complete())),
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
        samples.extend([
            Sample::counter(
                "sync_nacks_sent_for_gaps",
                "NACKs asking the peer to retransmit",
                rx.nacks,
            ),
            Sample::counter(
                "sync_repaired_datagrams",
                "Missing datagrams recovered by NACK",
                rx.repaired,
            ),
            Sample::counter(
                "sync_given_up_datagrams",
                "Datagrams lost beyond repair (a resync follows)",
                rx.given_up,
            ),
            Sample::counter(
                "sync_incompatible_peers",
                "Peers refused for incompatible protocol versions",
                rx.incompatible_peers,
            ),
        ]);
        let cs = &self.consistency.stats;
        let checks = "Digests of the peer's table compared with our copy, by outcome";
        samples.extend([
            Sample::counter("consistency_checks", checks, cs.consistent)
                .label("outcome", "consistent"),
            Sample::counter("consistency_checks", checks, cs.inconsistent)
                .label("outcome", "repaired"),
            Sample::counter("consistency_checks", checks, cs.skipped).label("outcome", "skipped"),
            Sample::counter(
                "consistency_buckets_repaired",
                "Digest buckets re-sent by the peer after a difference",
                cs.buckets_repaired,
            ),
            Sample::counter(
                "consistency_stale_deleted",
                "Entries deleted here because the peer no longer had them",
                cs.stale_deleted,
            ),
            Sample::counter(
                "consistency_repairs_abandoned",
                "Repairs given up (stream broken or timed out)",
                cs.repairs_abandoned,
            ),
            Sample::gauge(
                "consistency_last_ok_timestamp_seconds",
                "Unix time our copy was last found or made consistent",
                self.consistency.last_consistent as f64,
            ),
        ]);
        samples.push(Sample::counter(
            "sync_received_expect_records",
            "Expectation changes received from peers",
            rx.expect_records,
        ));
        let xs = &self.inbound.stats;
        samples.push(Sample::counter(
            "expect_ignored",
            "Expectation changes received while expect_sync is off here",
            xs.ignored,
        ));
        if let Some(inst) = &self.i.expect_installer {
            let t = inst.totals();
            let help = "Replicated expectation changes applied to the kernel, by result";
            samples.extend([
                Sample::counter("expect_installs", help, t.created).label("result", "created"),
                Sample::counter("expect_installs", help, t.existed).label("result", "existed"),
                Sample::counter("expect_installs", help, t.deleted).label("result", "deleted"),
                Sample::counter("expect_installs", help, t.delete_not_found)
                    .label("result", "delete_not_found"),
                Sample::counter(
                    "expect_masters_repaired",
                    "Masters re-created with their helper so an expectation could attach",
                    t.masters_repaired,
                ),
                Sample::counter(
                    "expect_install_retries",
                    "Expectation creates retried because the master was not there yet",
                    xs.retries,
                ),
                Sample::gauge(
                    "expect_install_pending",
                    "Expectation creates waiting for their master",
                    self.inbound.pending() as f64,
                ),
            ]);
            let failed = "Replicated expectation changes finally not applied, by reason";
            samples.push(
                Sample::counter(
                    "expect_install_failures",
                    failed,
                    xs.failed.get("ENOENT").copied().unwrap_or(0),
                )
                .label("reason", "ENOENT"),
            );
            for (reason, n) in xs.failed.iter().filter(|(r, _)| **r != "ENOENT") {
                samples.push(
                    Sample::counter("expect_install_failures", failed, *n).label("reason", *reason),
                );
            }
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
            let behind = p.sync(now);
            samples.push(
                Sample::gauge(
                    "sync_behind_datagrams",
                    "Datagrams from the peer still missing (being recovered)",
                    behind.outstanding as f64,
                )
                .label("peer", node.clone()),
            );
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

/// How long the peer's entry lives here, given the seconds it had left at the owner.
///
/// The owner refreshes us only when its timeout has grown by more than half of what
/// it last told us, so its entry can outlive that figure by up to half of it. Our copy
/// gets the same margin and therefore never expires before the owner's entry; when
/// the connection really ends, the owner's deletion removes it.
pub fn replica_lifetime(timeout: u32) -> u32 {
    timeout.saturating_add(timeout.div_ceil(2))
}

/// Hands a command to the egress thread and wakes it.
fn to_egress(i: &Ingress, cmd: EgressCmd) {
    if i.egress.send(cmd).is_ok() {
        let _ = i.egress_waker.wake();
    }
}

pub fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKE)
}

#[cfg(test)]
mod tests {
    use super::replica_lifetime;

    #[test]
    fn replicas_outlive_the_owner_by_the_refresh_margin() {
        assert_eq!(replica_lifetime(120), 180);
        assert_eq!(replica_lifetime(1), 2);
        assert_eq!(replica_lifetime(u32::MAX), u32::MAX);
    }
}
