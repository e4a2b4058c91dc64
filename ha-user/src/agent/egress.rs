//! Egress: this node's conntrack changes to the peer.
//!
//! One thread, one epoll loop over the ring buffer (new entries and state changes),
//! the ctnetlink destroy events (deletions), a drain timer and a tick timer. Changes go
//! straight into the I/O-free [`Sender`], whose sealed datagrams go out on the sync
//! socket. No channel between capture and send: one event costs a ring-buffer read,
//! a record encode, and its share of one HMAC and one `sendto`.
//!
//! Batching adapts to load: after a drain that found events, the drain timer is armed
//! for the drain interval (`wakeup_min_gap_us`), and the capture program, told so
//! through a shared word, lets records wait for it instead of waking the thread; a
//! drain that finds nothing lets the loop sleep until the program wakes it, so an idle
//! node sends the first event of a burst at once.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, Waker, unix::SourceFd};

use super::{
    expectations::{Outbound, master_replicable},
    live_since_dump::LiveSinceDump,
    replica::ReplicaSet,
    resync::{self, EgressCmd, OwnedJob, Serving, SyncState},
    reused::RecentlyCreated,
    timer::Timer,
};
use crate::{
    capture::Capture,
    conntrack::{Change, Entry, ExpectChange, Key},
    kernel::ctnetlink::{self, DestroyListener, ExpectListener, ExpectRecv, Recv},
    metrics::{Board, Sample},
    sync::{
        DEFAULT_BUCKETS, Digest, DigestKey, Sender, bucket_of, transport,
        wire::{Control, ResyncDone, ResyncRequest},
    },
};

const RING: Token = Token(0);
const DESTROY: Token = Token(1);
const DRAIN: Token = Token(2);
const TICK: Token = Token(3);
pub const WAKE: Token = Token(4);
const RESYNC: Token = Token(5);
const DELAY: Token = Token(6);
const EXPECT: Token = Token(7);

/// How long a served table's expectations wait for the requester's HELLO (its
/// features) before they are dropped as not decodable.
const HELLO_WAIT: Duration = Duration::from_secs(1);
/// Events read per drain round before the loop looks at its other sources.
const DRAIN_BATCH: usize = 8192;
/// From this many events read in one wake-up on, the stream counts as busy: what
/// comes in while the thread works waits for the drain timer (in one datagram with
/// the next events) instead of going out alone just before it sleeps.
const BUSY_WAKE_EVENTS: usize = 4;
const TICK_EVERY: Duration = Duration::from_millis(100);
/// How long entries found at start wait for the first bulk sync to say whose they are.
const SETTLE_WITHIN: Duration = Duration::from_secs(20);
/// At most one loss-triggered digest in this period.
const LOSS_DIGEST_HOLD_OFF: Duration = Duration::from_secs(2);
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Counters of the egress loop itself (the capture program, sender and listener keep
/// their own).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    captured: u64,
    deletes_sent: u64,
    /// Destroy events caused by our own installer (peer's deletions applied here).
    deletes_own: u64,
    /// Replicated entries that expired here: the peer owns them, not reported back.
    deletes_replica: u64,
    /// Deletions of entries a sync filter kept off the wire.
    deletes_filtered: u64,
    /// Destroyed entries whose key was in the table again (a reopened connection):
    /// the deletion went out followed by the successor.
    deletes_superseded: u64,
    digests_sent: u64,
    repairs_served: u64,
    /// Entries re-sent in bulk resyncs and bucket repairs (not live changes).
    resync_records: u64,
    destroy_overruns: u64,
    send_errors: u64,
    send_blocked: u64,
    /// `sendmmsg` calls.
    send_calls: u64,
    drain_rounds: u64,
}

pub struct Egress {
    pub capture: Capture,
    pub destroy: DestroyListener,
    pub sender: Sender,
    pub socket: UdpSocket,
    pub dest: SocketAddr,
    pub installer_portid: u32,
    /// Expectation events (`expect_sync`; `None` when off).
    pub expect: Option<ExpectListener>,
    /// The expectation installer's port id: its expectation events are echoes of the
    /// peer's, and its master repairs (delete + re-create) are not the peer's deletes.
    pub expect_installer_portid: u32,
    pub replica: Arc<ReplicaSet>,
    pub board: Board,
    pub stop: Arc<AtomicBool>,
    /// How long to wait for more events after a busy drain (`wakeup_min_gap_us`).
    pub drain_interval: Duration,
    /// Commands from the rest of the agent (resync); arrive with a wake-up.
    pub cmds: std::sync::mpsc::Receiver<EgressCmd>,
    /// For the dump thread to hand its result back.
    pub cmd_tx: std::sync::mpsc::Sender<EgressCmd>,
    pub waker: Arc<Waker>,
    pub sync_state: Arc<SyncState>,
    /// The peer's addresses: its flows with us are not replicated in a resync.
    pub sync_peers: Vec<std::net::IpAddr>,
    /// The sync filters (the program applies them to captured events; deletions are
    /// filtered here).
    pub filters: Vec<ha_common::FilterRule>,
    /// `sync_delay`: new entries wait this long; the short-lived are never sent.
    pub delay: Option<super::delay::DelayQueue>,
    /// Keys the table digests (derived from the sync secret).
    pub digest_key: DigestKey,
    /// Period of the unprompted digest; zero = only after losses.
    pub consistency_check: Duration,
}

struct Loop {
    e: Egress,
    drain_timer: Timer,
    tick_timer: Timer,
    resync_timer: Timer,
    /// A dump of owned entries (digest or repair) is running.
    dumping_owned: bool,
    /// When the next periodic digest goes out.
    next_digest: Instant,
    /// Program drop counters last seen: growth triggers a digest (targeted resync).
    last_losses: u64,
    last_digest_sent: Option<Instant>,
    /// Fires when the oldest delayed entry is due.
    delay_timer: Timer,
    serving: Option<Serving>,
    dumping: bool,
    changes: Vec<(Change, u64)>,
    /// Events read since the thread last went to sleep.
    read_since_sleep: usize,
    stats: Stats,
    next_publish: Instant,
    last_send_error: Option<Instant>,
    dest_addr: socket2::SockAddr,
    /// Reused buffer for delayed changes that came due.
    due: Vec<Change>,
    /// Requests for our table that wait until we know which entries are ours.
    deferred: Vec<EgressCmd>,
    /// When waiting for the first bulk sync stops and what was found at start is ours.
    settle_by: Instant,
    /// Expectations sent (so their ends follow) and what was done with their events.
    expects: Outbound,
    expect_events: Vec<ctnetlink::ExpectEvent>,
    /// New entries just sent, to order a late destroy of the same key after them.
    recently_created: RecentlyCreated,
    /// While a table dump for a resync or repair is taken and served: the keys live
    /// events changed meanwhile. Their dumped state is older than what already went
    /// out, and sent after it would put the older state back on the peer.
    /// Keys live events changed while a dump is taken or served.
    live_since_dump: LiveSinceDump,
}

impl Egress {
    /// Runs until `stop` is set and the waker fires. `poll` must own `waker`'s registry.
    pub fn run(self, mut poll: Poll) -> io::Result<()> {
        let mut l = Loop {
            dest_addr: socket2::SockAddr::from(self.dest),
            due: Vec::new(),
            drain_timer: Timer::new()?,
            tick_timer: Timer::new()?,
            resync_timer: Timer::new()?,
            dumping_owned: false,
            next_digest: Instant::now() + self.consistency_check,
            last_losses: 0,
            last_digest_sent: None,
            delay_timer: Timer::new()?,
            serving: None,
            dumping: false,
            changes: Vec::with_capacity(DRAIN_BATCH),
            read_since_sleep: 0,
            stats: Stats::default(),
            next_publish: Instant::now(),
            last_send_error: None,
            deferred: Vec::new(),
            settle_by: Instant::now() + SETTLE_WITHIN,
            expects: Outbound::default(),
            expect_events: Vec::new(),
            recently_created: RecentlyCreated::new(Instant::now()),
            live_since_dump: LiveSinceDump::default(),
            e: self,
        };
        let sources = [
            (l.e.capture.as_raw_fd(), RING),
            (l.e.destroy.as_raw_fd(), DESTROY),
            (l.drain_timer.as_raw_fd(), DRAIN),
            (l.tick_timer.as_raw_fd(), TICK),
            (l.resync_timer.as_raw_fd(), RESYNC),
            (l.delay_timer.as_raw_fd(), DELAY),
        ];
        for (fd, token) in sources {
            poll.registry()
                .register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        }
        if let Some(x) = &l.e.expect {
            poll.registry()
                .register(&mut SourceFd(&x.as_raw_fd()), EXPECT, Interest::READABLE)?;
        }
        l.tick_timer.arm(TICK_EVERY)?;
        // Entries queued before we started listening.
        let _ = l.drain_capture();
        let mut events = Events::with_capacity(16);
        while !l.e.stop.load(Ordering::Relaxed) {
            l.before_sleep();
            let waited = poll.poll(&mut events, None);
            l.e.capture.reader_awake();
            if let Err(e) = waited {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    RING => {
                        let _ = l.drain_capture();
                    }
                    DRAIN => {
                        l.drain_timer.ack();
                        let _ = l.drain_capture();
                    }
                    DESTROY => l.on_destroy(),
                    EXPECT => l.on_expect(),
                    TICK => {
                        l.tick_timer.ack();
                        l.on_tick();
                        l.tick_timer.arm(TICK_EVERY)?;
                    }
                    WAKE => l.on_commands(),
                    RESYNC => {
                        l.resync_timer.ack();
                        l.serve_chunk();
                    }
                    DELAY => {
                        l.delay_timer.ack();
                        l.release_delayed();
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
    /// Tells the capture program how this thread sleeps: until its drain timer, or
    /// until woken. Records committed after the publish are covered by it (they wake
    /// us, or wait for that timer). Records that came in before it, while we worked,
    /// did not wake us: with no timer armed they would wait for the next wake-up, so
    /// the ring is read once more (and a timer that read armed is published). With the
    /// timer armed they wait for it too when the stream is busy: it collects them with
    /// the next ones into one datagram instead of two, which halves the sends under
    /// load. In a light stream they go out now, for latency. Not a loop: under a
    /// steady stream every look finds something, and the loop's other sources
    /// (deletions, ticks, commands) would starve.
    fn before_sleep(&mut self) {
        let deadline = self.drain_timer.deadline();
        self.e.capture.reader_sleeps(deadline);
        let busy = self.read_since_sleep >= BUSY_WAKE_EVENTS;
        if (deadline.is_none() || !busy) && self.drain_capture() > 0 {
            self.e.capture.reader_sleeps(self.drain_timer.deadline());
        }
        self.read_since_sleep = 0;
    }

    /// Reads the ring buffer dry (bounded per round), encodes, sends; returns how many
    /// events it read.
    fn drain_capture(&mut self) -> usize {
        self.stats.drain_rounds += 1;
        let mut total = 0;
        loop {
            let changes = &mut self.changes;
            let n = self
                .e
                .capture
                .drain(DRAIN_BATCH, |c, ts| changes.push((c, ts)));
            total += n;
            let now = Instant::now();
            for (change, _ts) in self.changes.drain(..) {
                self.live_since_dump.note(&change);
                if let Change::Upsert { entry, new } = &change {
                    if !self.e.replica.is_empty() {
                        // Traffic for this entry flows here now: it is ours.
                        self.e.replica.remove(&entry.key());
                    }
                    if *new {
                        self.recently_created.created(entry, now);
                    }
                }
                let change = match self.e.delay.as_mut() {
                    Some(q) => match q.offer(now, change) {
                        Some(c) => c,
                        None => continue,
                    },
                    None => change,
                };
                let _ = self.e.sender.push(&change);
            }
            self.send_ready();
            if n < DRAIN_BATCH {
                break;
            }
        }
        self.stats.captured += total as u64;
        self.read_since_sleep += total;
        self.arm_delay();
        self.e.sender.flush();
        self.send_ready();
        if total > 0 {
            // Busy: look again shortly; until then the program lets records wait
            // instead of waking us (a deadline already within the last half of that
            // interval is kept).
            let _ = self
                .drain_timer
                .arm_about(self.e.drain_interval, self.e.drain_interval / 2);
        }
        total
    }

    fn on_commands(&mut self) {
        while let Ok(cmd) = self.e.cmds.try_recv() {
            // Until the first bulk sync tells which of the entries found at start are
            // ours, what we own is unknown: a digest sent now would make the peer
            // delete those entries. A table is still served (without them: a resync
            // only adds), else two nodes that both restart would wait for each other.
            if self.e.replica.unsettled()
                && matches!(cmd, EgressCmd::SendDigest | EgressCmd::ServeRepair { .. })
            {
                self.defer(cmd);
                continue;
            }
            match cmd {
                EgressCmd::SendNack(req) => {
                    // In our own authenticated, sequenced stream: a lost NACK is itself
                    // recovered.
                    self.e.sender.queue(req.control());
                    self.send_ready();
                }
                EgressCmd::ServeNack { from, req } => {
                    let out = self.e.sender.handle_nack(Instant::now(), from, &req);
                    if out.unserviceable > 0 {
                        tracing::debug!(
                            from,
                            unserviceable = out.unserviceable,
                            "sync: NACK for datagrams no longer kept"
                        );
                    }
                    self.send_ready();
                }
                EgressCmd::Hello => {
                    self.e.sender.queue_hello();
                    self.send_ready();
                }
                EgressCmd::SendDigest => self.dump_owned(OwnedJob::Digest),
                EgressCmd::RequestDigest { target } => {
                    self.e
                        .sender
                        .queue(Control::DigestRequest(crate::sync::wire::DigestRequest {
                            target,
                            request_id: 0,
                            buckets: crate::sync::DEFAULT_BUCKETS,
                        }));
                    self.send_ready();
                }
                EgressCmd::ServeRepair {
                    requester,
                    request_id,
                    set,
                } => {
                    tracing::info!(
                        requester,
                        buckets = set.len(),
                        "consistency: the peer asks for buckets of our table"
                    );
                    self.dump_owned(OwnedJob::Repair {
                        requester,
                        request_id,
                        set,
                    });
                }
                EgressCmd::SendRepairRequest {
                    target,
                    request_id,
                    set,
                } => {
                    self.e.sender.queue(Control::RepairRequest {
                        target,
                        request_id,
                        set: &set,
                    });
                    self.send_ready();
                }
                EgressCmd::Owned { job, entries } => self.on_owned(job, entries),
                EgressCmd::Request { request_id } => {
                    tracing::info!(request_id, "resync: asking the peer for its table");
                    // Our features first: the peer serving the request then knows
                    // at once whether we decode expectations (else it waits for
                    // them, up to HELLO_WAIT).
                    self.e.sender.queue_hello();
                    self.e.sender.queue(Control::ResyncRequest(ResyncRequest {
                        target: 0,
                        request_id,
                    }));
                    self.send_ready();
                }
                EgressCmd::Serve {
                    requester,
                    request_id,
                } => self.start_dump(requester, request_id),
                EgressCmd::Dumped {
                    requester,
                    request_id,
                    entries,
                    expects,
                } => match entries {
                    Ok(entries) => {
                        tracing::info!(
                            requester,
                            request_id,
                            entries = entries.len(),
                            expectations = expects.len(),
                            "resync: sending our table"
                        );
                        self.serving = Some(Serving {
                            requester,
                            request_id,
                            entries,
                            next: 0,
                            started: Instant::now(),
                            repair: None,
                            expects,
                        });
                        self.dumping = false;
                        self.serve_chunk();
                    }
                    Err(e) => {
                        self.dumping = false;
                        self.end_dump_window();
                        tracing::warn!(requester, error = %e, "resync: dumping the conntrack table failed");
                    }
                },
            }
        }
    }

    /// Dumps the kernel table on a helper thread; the loop keeps sending live events.
    fn start_dump(&mut self, requester: u32, request_id: u32) {
        // A repeated request (the requester's retry) for the table being dumped or
        // served continues it.
        let same = |s: &Serving| s.requester == requester && s.request_id == request_id;
        if self.dumping || self.serving.as_ref().is_some_and(same) {
            return;
        }
        self.serving = None;
        self.dumping = true;
        self.live_since_dump.open();
        // Expectations are dumped whenever expectation sync is on; whether the peer
        // decodes them is decided when they are sent. Deciding it here lost them: a
        // late joiner's request can reach this thread before the ingress thread has
        // published the features of its first datagram (seen in CI).
        let with_expects = self.e.expect.is_some();
        let spawned = self.dump_in_background(move |entries| {
            let expects = match (&entries, with_expects) {
                (Ok(owned), true) => match ctnetlink::dump_expectations(None) {
                    Ok(all) => resync::owned_expectations(all, owned),
                    Err(e) => {
                        tracing::warn!(error = %e, "resync: dumping the expectations failed");
                        Vec::new()
                    }
                },
                _ => Vec::new(),
            };
            EgressCmd::Dumped {
                requester,
                request_id,
                entries,
                expects,
            }
        });
        if let Err(e) = spawned {
            self.dumping = false;
            self.end_dump_window();
            tracing::warn!(error = %e, "resync: cannot start the dump thread");
        }
    }

    /// Dumps the kernel table on a helper thread (live events keep flowing meanwhile)
    /// and hands what this node owns back as the command `done` makes of it.
    fn dump_in_background(
        &self,
        done: impl FnOnce(Result<Vec<Entry>, String>) -> EgressCmd + Send + 'static,
    ) -> io::Result<()> {
        let (tx, waker) = (self.e.cmd_tx.clone(), self.e.waker.clone());
        let (peers, replica, filters) = (
            self.e.sync_peers.clone(),
            self.e.replica.clone(),
            self.e.filters.clone(),
        );
        std::thread::Builder::new()
            .name("hasync-dump".into())
            .spawn(move || {
                super::datapath::normal_scheduling();
                // Only what this node owns: the peer's own entries are not sent back.
                let entries = ctnetlink::dump(None)
                    .map(|all| resync::owned(all, &peers, &replica, &filters))
                    .map_err(|e| e.to_string());
                let _ = tx.send(done(entries));
                let _ = waker.wake();
            })
            .map(drop)
    }

    /// Sends one paced chunk of the table being served, then RESYNC_DONE at the end.
    fn serve_chunk(&mut self) {
        let peers_decode_expect = self.peers_decode_expect();
        let Some(serving) = self.serving.as_mut() else {
            return;
        };
        for change in serving.chunk() {
            if self.live_since_dump.superseded(&change) {
                continue; // a live event already sent a newer state
            }
            let _ = self.e.sender.push(&change);
            self.stats.resync_records += 1;
        }
        if serving.done() && !serving.expects.is_empty() && !peers_decode_expect {
            if serving.started.elapsed() < HELLO_WAIT {
                // The requester's HELLO, which says whether it decodes expectations,
                // can arrive after its request: wait for it a little.
                self.e.sender.flush();
                let _ = self.resync_timer.arm(resync::PACE);
                self.send_ready();
                return;
            }
            let dropped = std::mem::take(&mut serving.expects).len();
            self.expects.stats.peer_unsupported += dropped as u64;
        }
        if serving.done() && !serving.expects.is_empty() {
            // After every master; a handful per table, so all at once.
            let now = Instant::now();
            for x in std::mem::take(&mut serving.expects) {
                if master_replicable(&x, &self.e.sync_peers, &self.e.filters)
                    && self.e.sender.push_expect(&ExpectChange::Upsert(x)).is_ok()
                {
                    self.expects.remember(now, &x);
                    self.expects.stats.resync_sent += 1;
                }
            }
        }
        if serving.done()
            && let Some(set) = serving.repair.take()
        {
            let (requester, request_id, records) = (
                serving.requester,
                serving.request_id,
                serving.entries.len() as u64,
            );
            tracing::info!(
                requester,
                entries = records,
                buckets = set.len(),
                "consistency: repair sent"
            );
            self.e.sender.queue(Control::RepairDone {
                requester,
                request_id,
                records,
                set: &set,
            });
            self.serving = None;
            self.end_dump_window();
        } else if serving.done() {
            let done = ResyncDone {
                requester: serving.requester,
                request_id: serving.request_id,
                records: serving.entries.len() as u64,
            };
            tracing::info!(
                requester = done.requester,
                entries = done.records,
                took_ms = serving.started.elapsed().as_millis() as u64,
                "resync: table sent"
            );
            self.e.sync_state.served.fetch_add(1, Ordering::Relaxed);
            self.e.sender.queue(Control::ResyncDone(done));
            self.serving = None;
            self.end_dump_window();
        } else {
            self.e.sender.flush();
            let _ = self.resync_timer.arm(resync::PACE);
        }
        self.send_ready();
    }

    /// Dumps the entries this node owns on a helper thread, for a digest or a repair.
    fn dump_owned(&mut self, job: OwnedJob) {
        if self.dumping_owned {
            return; // the dump in progress will do; the next check catches up
        }
        self.dumping_owned = true;
        if matches!(job, OwnedJob::Repair { .. }) {
            self.live_since_dump.open();
        }
        let spawned = self.dump_in_background(move |entries| EgressCmd::Owned { job, entries });
        if let Err(e) = spawned {
            self.dumping_owned = false;
            self.end_dump_window();
            tracing::warn!(error = %e, "consistency: cannot start the dump thread");
        }
    }

    fn on_owned(&mut self, job: OwnedJob, entries: Result<Vec<Entry>, String>) {
        self.dumping_owned = false;
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "consistency: dumping the conntrack table failed");
                self.end_dump_window();
                return;
            }
        };
        match job {
            OwnedJob::Digest => {
                self.end_dump_window();
                let Ok(digest) =
                    Digest::compute(&self.e.digest_key, entries.iter(), DEFAULT_BUCKETS)
                else {
                    return;
                };
                for chunk in digest.chunks(0, self.e.sender.max_datagram()) {
                    self.e.sender.queue(chunk);
                }
                self.stats.digests_sent += 1;
                tracing::debug!(
                    entries = entries.len(),
                    "consistency: digest of our table sent"
                );
                self.send_ready();
            }
            OwnedJob::Repair {
                requester,
                request_id,
                set,
            } => {
                let wanted: Vec<Entry> = entries
                    .into_iter()
                    .filter(|e| {
                        set.contains(bucket_of(&self.e.digest_key, &e.key(), set.buckets()))
                    })
                    .collect();
                self.stats.repairs_served += 1;
                self.serving = Some(Serving {
                    requester,
                    request_id,
                    entries: wanted,
                    next: 0,
                    started: Instant::now(),
                    repair: Some(set),
                    expects: Vec::new(),
                });
                self.serve_chunk();
            }
        }
    }

    /// Sends the delayed entries that are due and re-arms the timer.
    fn release_delayed(&mut self) {
        let Some(q) = self.e.delay.as_mut() else {
            return;
        };
        q.due(Instant::now(), &mut self.due);
        for change in self.due.drain(..) {
            let _ = self.e.sender.push(&change);
        }
        self.e.sender.flush();
        self.send_ready();
        self.arm_delay();
    }

    fn arm_delay(&mut self) {
        if let Some(at) = self.e.delay.as_ref().and_then(|q| q.next_due()) {
            let _ = self
                .delay_timer
                .arm(at.saturating_duration_since(Instant::now()));
        }
    }

    fn on_destroy(&mut self) {
        // The entry's creation may still sit in the ring buffer: send it first.
        let _ = self.drain_capture();
        loop {
            match self.e.destroy.recv() {
                Ok(Recv::Destroyed(d)) => {
                    if d.portid != 0
                        && (d.portid == self.e.installer_portid
                            || d.portid == self.e.expect_installer_portid)
                    {
                        self.stats.deletes_own += 1;
                    } else if self.e.replica.remove(&d.key) {
                        self.stats.deletes_replica += 1;
                    } else if !crate::capture::filter::keep_destroyed(&self.e.filters, &d.key) {
                        self.stats.deletes_filtered += 1;
                    } else {
                        let delete = Change::Delete(d.key);
                        let pass = match self.e.delay.as_mut() {
                            Some(q) => q.offer(Instant::now(), delete).is_some(),
                            None => true,
                        };
                        if pass {
                            self.stats.deletes_sent += 1;
                            self.live_since_dump.note(&delete);
                            let _ = self.e.sender.push(&delete);
                            // A reopened connection: the peer already has the successor
                            // (sent before this destroy event was read), which the delete
                            // just removed. Send it again.
                            if let Some(successor) = self.successor(&d.key) {
                                self.stats.deletes_superseded += 1;
                                let _ = self.e.sender.push(&Change::Upsert {
                                    entry: successor,
                                    new: true,
                                });
                            }
                        }
                    }
                }
                Ok(Recv::Overrun) => {
                    self.stats.destroy_overruns += 1;
                    tracing::warn!(
                        "destroy events were lost (netlink receive buffer overrun): the peer may keep \
                         entries this node already deleted until they time out"
                    );
                }
                Ok(Recv::Empty) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading destroy events");
                    break;
                }
            }
        }
        self.e.sender.flush();
        self.send_ready();
    }

    /// Forgets the keys changed since a dump once no dump is taken or served.
    fn end_dump_window(&mut self) {
        if self.serving.is_none() && !self.dumping && !self.dumping_owned {
            self.live_since_dump.close();
        }
    }

    /// The entry now holding a destroyed key, when its creation already went to the
    /// peer (see [`super::reused`]). Asks the kernel only for such keys.
    fn successor(&mut self, key: &Key) -> Option<Entry> {
        if !self.recently_created.contains(key, Instant::now()) {
            return None;
        }
        match ctnetlink::lookup(key) {
            Ok(found) => found,
            Err(e) => {
                // The deletion stands; a digest repairs the peer if it was wrong.
                tracing::warn!(error = %e, "looking up a reopened connection");
                None
            }
        }
    }

    fn peers_decode_expect(&self) -> bool {
        self.e
            .sync_state
            .peers_decode_expect
            .load(Ordering::Relaxed)
    }

    /// Expectation events: the helper's new expectations and their ends go to the peer.
    fn on_expect(&mut self) {
        // The master's creation may still sit in the ring buffer: it goes first.
        let _ = self.drain_capture();
        let Some(listener) = self.e.expect.as_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut self.expect_events);
        loop {
            match listener.recv() {
                Ok(ExpectRecv::Event(ev)) => events.push(ev),
                Ok(ExpectRecv::Overrun) => {
                    self.expects.stats.overruns += 1;
                    tracing::warn!(
                        "expectation events were lost (netlink receive buffer overrun): the peer \
                         misses them until the next bulk resync"
                    );
                }
                Ok(ExpectRecv::Empty) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading expectation events");
                    break;
                }
            }
        }
        let (now, ok) = (Instant::now(), self.peers_decode_expect());
        for ev in events.drain(..) {
            let send = self.expects.on_event(
                now,
                &ev,
                self.e.expect_installer_portid,
                ok,
                &self.e.sync_peers,
                &self.e.filters,
            );
            if let Some(change) = send {
                tracing::debug!(?change, "expectation sync: sending");
                let _ = self.e.sender.push_expect(&change);
            }
        }
        self.expect_events = events;
        self.e.sender.flush();
        self.send_ready();
    }

    fn on_tick(&mut self) {
        // Defence in depth: should a wake-up ever be missed (the program wakes the
        // reader sparingly, see ha-ebpf's `wake_flags`), events wait at most one tick.
        let _ = self.drain_capture();
        let now = Instant::now();
        self.settle(now);
        self.expects.prune(now);
        if !self.e.consistency_check.is_zero()
            && now >= self.next_digest
            && !self.e.replica.unsettled()
        {
            self.next_digest = now + self.e.consistency_check;
            self.dump_owned(OwnedJob::Digest);
        }
        if self.e.sender.handle_timeout(now) {
            self.send_ready();
        }
        if self.e.sender.ready_len() > 0 {
            self.send_ready();
        }
        if now >= self.next_publish {
            self.digest_after_loss(now);
            self.publish();
            self.next_publish = now + PUBLISH_EVERY;
        }
    }

    /// Keeps a digest or repair request for later; one periodic digest is enough.
    fn defer(&mut self, cmd: EgressCmd) {
        let repeated = matches!(cmd, EgressCmd::SendDigest)
            && self
                .deferred
                .iter()
                .any(|c| matches!(c, EgressCmd::SendDigest));
        if !repeated {
            tracing::info!(?cmd, "sync: request deferred until our first bulk sync");
            self.deferred.push(cmd);
        }
    }

    /// Once the entries found at start are settled (by the first bulk sync, or after
    /// [`SETTLE_WITHIN`] without one: no peer answered, so they are ours), serves the
    /// requests that waited.
    fn settle(&mut self, now: Instant) {
        if self.e.replica.unsettled() && now >= self.settle_by {
            let claimed = self.e.replica.settle();
            tracing::warn!(
                claimed,
                "startup: no bulk sync from the peer in time; the entries found at start count as ours"
            );
        }
        if !self.e.replica.unsettled() && !self.deferred.is_empty() {
            for cmd in self.deferred.drain(..) {
                let _ = self.e.cmd_tx.send(cmd);
            }
            let _ = self.e.waker.wake();
        }
    }

    /// Events lost before they reached the wire (ring buffer full, destroy socket
    /// overrun) leave the peer's copy wrong with no gap to NACK: a digest finds it.
    fn digest_after_loss(&mut self, now: Instant) {
        let ringbuf = self
            .e
            .capture
            .counters()
            .map(|c| c.ringbuf_full)
            .unwrap_or(0);
        let losses = ringbuf + self.stats.destroy_overruns;
        if losses <= self.last_losses {
            return;
        }
        if self
            .last_digest_sent
            .is_some_and(|t| now.duration_since(t) < LOSS_DIGEST_HOLD_OFF)
        {
            return; // counted again on a later tick
        }
        tracing::info!(
            lost = losses - self.last_losses,
            "consistency: events were lost before the wire; sending a digest so the peer repairs"
        );
        self.last_losses = losses;
        self.last_digest_sent = Some(now);
        self.dump_owned(OwnedJob::Digest);
    }

    /// Hands every sealed datagram to the kernel. On a full socket buffer the rest stays
    /// queued in the sender and goes out on the next drain or tick.
    fn send_ready(&mut self) {
        while self.e.sender.ready_len() > 0 {
            let batch: Vec<&[u8]> = self.e.sender.ready().take(transport::SEND_BATCH).collect();
            let wanted = batch.len();
            let result = transport::send_batch(&self.e.socket, &self.dest_addr, &batch);
            drop(batch);
            let sent = match result {
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    // The rest stays queued in the sender and goes on the next turn.
                    self.stats.send_blocked += 1;
                    let _ = self.drain_timer.arm(Duration::from_millis(1));
                    return;
                }
                Err(e) => {
                    // The first datagram is dropped: the receiver sees the gap.
                    self.stats.send_errors += 1;
                    let now = Instant::now();
                    if self
                        .last_send_error
                        .is_none_or(|t| now - t > Duration::from_secs(1))
                    {
                        self.last_send_error = Some(now);
                        tracing::warn!(error = %e, dest = %self.e.dest, "sending a sync datagram");
                    }
                    1
                }
            };
            self.stats.send_calls += 1;
            let partial = sent < wanted;
            self.e.sender.mark_sent(sent);
            if partial {
                self.stats.send_blocked += 1;
                let _ = self.drain_timer.arm(Duration::from_millis(1));
                return;
            }
        }
    }

    fn publish(&self) {
        let s = &self.stats;
        let tx = self.e.sender.stats();
        let mut samples = vec![
            Sample::counter(
                "capture_events",
                "Conntrack changes read from the ring buffer",
                s.captured,
            ),
            Sample::counter(
                "capture_bad_events",
                "Ring-buffer records that could not be decoded",
                self.e.capture.bad_events,
            ),
            Sample::counter(
                "deletes",
                "Destroy events by what was done with them",
                s.deletes_sent,
            )
            .label("action", "sent"),
            Sample::counter(
                "deletes",
                "Destroy events by what was done with them",
                s.deletes_own,
            )
            .label("action", "own_install"),
            Sample::counter(
                "deletes",
                "Destroy events by what was done with them",
                s.deletes_replica,
            )
            .label("action", "replica_expired"),
            Sample::counter(
                "deletes",
                "Destroy events by what was done with them",
                s.deletes_filtered,
            )
            .label("action", "filtered"),
            Sample::counter(
                "deletes",
                "Destroy events by what was done with them",
                s.deletes_superseded,
            )
            .label("action", "superseded"),
            Sample::counter(
                "destroy_overruns",
                "Destroy-event socket overruns (events lost)",
                s.destroy_overruns,
            ),
            Sample::counter("sync_sent_datagrams", "Sync datagrams sealed", tx.datagrams),
            Sample::gauge(
                "sync_encrypting",
                "1 if this node encrypts its sync datagrams (encrypt_sync)",
                f64::from(u8::from(self.e.sender.encrypts())),
            ),
            Sample::counter(
                "sync_sent_records",
                "Changes encoded into sync datagrams",
                tx.records,
            ),
            Sample::counter("sync_sent_bytes", "Bytes of sync datagrams", tx.bytes),
            Sample::counter(
                "sync_send_errors",
                "Sync datagrams the kernel refused",
                s.send_errors,
            ),
            Sample::counter(
                "sync_send_calls",
                "sendmmsg calls for sync datagrams",
                s.send_calls,
            ),
            Sample::counter(
                "sync_send_blocked",
                "Times the sync socket buffer was full",
                s.send_blocked,
            ),
            Sample::counter(
                "sync_sender_overruns",
                "Sealed datagrams overwritten before they were sent",
                tx.overruns,
            ),
            Sample::counter(
                "sync_encode_errors",
                "Changes the encoder refused",
                tx.encode_errors,
            ),
            Sample::counter(
                "sync_nacks_received",
                "NACKs from the peer asking for our datagrams",
                tx.nacks_received,
            ),
            Sample::counter(
                "sync_retransmits",
                "Datagrams sent again after a NACK",
                tx.retransmits,
            ),
            Sample::counter(
                "sync_resend_unserviceable",
                "Sequences a NACK asked for that were no longer kept (the peer resyncs)",
                tx.resend_unserviceable,
            ),
            Sample::counter("sync_nacks_sent", "NACKs this node sent", tx.nacks_sent),
            Sample::counter(
                "consistency_digests_sent",
                "Digests of our table sent to the peer",
                s.digests_sent,
            ),
            Sample::counter(
                "consistency_repairs_served",
                "Bucket repairs the peer asked of us",
                s.repairs_served,
            ),
            Sample::counter(
                "sync_resync_records_sent",
                "Entries re-sent to the peer in bulk resyncs and bucket repairs (part of sync_sent_records)",
                s.resync_records,
            ),
            Sample::counter(
                "capture_drain_rounds",
                "Ring-buffer drain rounds",
                s.drain_rounds,
            ),
        ];
        match self.e.capture.counters() {
            Ok(c) => {
                let help = "Events the eBPF program emitted, by kind";
                samples.extend([
                    Sample::counter("program_events", help, c.new).label("kind", "new"),
                    Sample::counter("program_events", help, c.update).label("kind", "update"),
                    Sample::counter("program_events", help, c.refresh).label("kind", "refresh"),
                    Sample::counter(
                        "ringbuf_drops",
                        "Events lost because the ring buffer was full",
                        c.ringbuf_full,
                    ),
                    Sample::counter(
                        "program_read_errors",
                        "Kernel reads that failed in the program",
                        c.read_error,
                    ),
                    Sample::counter(
                        "program_wakeups",
                        "Reader wake-ups the program forced",
                        c.wakeups,
                    ),
                    Sample::counter("program_calls", "Netfilter hook invocations", c.calls),
                    Sample::counter(
                        "program_filtered",
                        "Events the program filtered out",
                        c.filtered,
                    ),
                ]);
            }
            Err(e) => tracing::debug!(error = %e, "reading program counters"),
        }
        if let Some(q) = &self.e.delay {
            samples.push(Sample::counter(
                "sync_delay_cancelled",
                "New connections that ended within sync_delay and were never sent",
                q.cancelled,
            ));
            samples.push(Sample::gauge(
                "sync_delay_held",
                "New connections waiting for sync_delay",
                q.len() as f64,
            ));
        }
        if self.e.expect.is_some() {
            let x = &self.expects.stats;
            let help = "Expectation events by what was done with them";
            samples.extend([
                Sample::counter("expect_events", help, x.sent_new).label("action", "sent_new"),
                Sample::counter("expect_events", help, x.sent_delete)
                    .label("action", "sent_delete"),
                Sample::counter("expect_events", help, x.own_install)
                    .label("action", "own_install"),
                Sample::counter("expect_events", help, x.filtered).label("action", "filtered"),
                Sample::counter("expect_events", help, x.not_ours).label("action", "not_ours"),
                Sample::counter("expect_events", help, x.peer_unsupported)
                    .label("action", "peer_unsupported"),
                Sample::counter(
                    "expect_resync_sent",
                    "Expectations sent in bulk resyncs",
                    x.resync_sent,
                ),
                Sample::counter(
                    "expect_event_overruns",
                    "Expectation-event socket overruns (events lost)",
                    x.overruns,
                ),
                Sample::counter(
                    "sync_sent_expect_records",
                    "Expectation changes encoded into sync datagrams",
                    tx.expect_records,
                ),
                Sample::gauge(
                    "expect_owned",
                    "Expectations sent to the peer and not ended yet",
                    self.expects.owned() as f64,
                ),
            ]);
        }
        let ls = self.e.destroy.stats();
        samples.push(Sample::counter(
            "destroy_events",
            "Destroy events read from ctnetlink",
            ls.events,
        ));
        self.e.board.publish("egress", samples);
    }
}

/// A waker for the egress loop's poll.
pub fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKE)
}
