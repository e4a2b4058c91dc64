//! Starts and stops the replication data path: the egress and ingress threads, and
//! the task that asks the peer for its table.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mio::{Poll, Waker};
use tokio::sync::mpsc;

use super::{
    AgentError,
    channel_link::ChannelLink,
    egress,
    ingress::{self, Barrier},
    io_err,
    replica::ReplicaSet,
    resync::{self, EgressCmd, SyncState},
    settings,
};
use crate::{
    capture::Capture,
    config::schema::Config,
    kernel::ctnetlink::{DestroyListener, ExpectInstaller, ExpectListener, Installer},
    metrics::Board,
    sync::{DigestKey, KeyRing, Receiver, ReceiverConfig, Sender, SenderConfig, SyncKey},
};

/// Lets the control socket ask the peer for its table on demand.
#[derive(Clone)]
pub struct ResyncHandle {
    pub state: Arc<SyncState>,
    egress: std::sync::mpsc::Sender<EgressCmd>,
    waker: Arc<Waker>,
    /// With a TLS channel the request task runs it (channel first, then UDP).
    channel: Option<mpsc::UnboundedSender<u32>>,
}

impl ResyncHandle {
    /// Sends a new resync request; the answer updates `last_full_sync`.
    pub fn request(&self) -> Result<u32, String> {
        let id = self.state.new_request_id();
        if let Some(tx) = &self.channel {
            tx.send(id)
                .map_err(|_| "the resync task is gone".to_string())?;
            return Ok(id);
        }
        self.state
            .requested(id, self.state.given_up_now.load(Ordering::Relaxed));
        self.egress
            .send(EgressCmd::Request { request_id: id })
            .map_err(|_| "the egress thread is gone".to_string())?;
        let _ = self.waker.wake();
        Ok(id)
    }
}

/// The running data path.
pub struct DataPath {
    pub sync_state: Arc<SyncState>,
    pub replica: Arc<ReplicaSet>,
    pub barrier: Barrier,
    /// A thread reports here when it ends (with its error, if any).
    pub done: mpsc::UnboundedReceiver<(&'static str, Result<(), String>)>,
    pub destination: std::net::SocketAddr,
    pub resync: ResyncHandle,
    /// What the owned-entries filter needs (the TLS channel serves the same table).
    pub sync_peers: Vec<IpAddr>,
    pub filters: Vec<ha_common::FilterRule>,
    stop: Arc<AtomicBool>,
    workers: Vec<Worker>,
}

struct Worker {
    name: &'static str,
    waker: Arc<Waker>,
    handle: JoinHandle<()>,
}

impl DataPath {
    /// Opens the sockets, attaches capture and starts the threads.
    pub fn start(
        cfg: &Config,
        node: u32,
        epoch: u32,
        secret: &[u8],
        board: &Board,
        channel: Option<Arc<ChannelLink>>,
    ) -> Result<DataPath, AgentError> {
        let sync_cfg = &cfg.replication.ha.conntrack_sync;
        let transport = settings::transport(cfg);
        let destination = transport.destination()?;
        let tx = transport.open_sender()?;
        let rx = transport.open_receiver()?;
        let installer = Installer::new()?;
        let installer_portid = installer.portid();
        let destroy = DestroyListener::new()?;
        // Expectation sync: events out, installs in (both in this namespace).
        let (expect, expect_installer) = if sync_cfg.expect_sync {
            (Some(ExpectListener::new()?), Some(ExpectInstaller::new()?))
        } else {
            (None, None)
        };
        let expect_installer_portid = expect_installer
            .as_ref()
            .map(ExpectInstaller::portid)
            .unwrap_or(0);
        let capture_cfg = settings::capture(sync_cfg)?;
        let filters = capture_cfg.filters.clone();
        let capture = Capture::start(&capture_cfg)?;
        if !capture.missing_fields.is_empty() {
            tracing::info!(fields = ?capture.missing_fields, "kernel lacks optional conntrack fields; not replicated");
        }
        let sender_cfg = SenderConfig {
            max_datagram: sync_cfg.max_datagram_size as usize,
            encrypt: cfg.replication.encrypt_sync,
            ..SenderConfig::new(node, epoch)
        };
        let sender = Sender::new(sender_cfg, SyncKey::derive(secret)?, Instant::now())?;
        let receiver = {
            // NACK ranges must fit in one of our datagrams.
            let mut rc = ReceiverConfig::new(node);
            rc.nack.max_ranges = crate::sync::max_nack_ranges(sync_cfg.max_datagram_size as usize);
            let previous = cfg.replication.previous_secret_key.as_ref();
            Receiver::new(
                rc,
                KeyRing::from_secrets(secret, previous.map(|k| k.as_bytes()))?,
            )
        };

        let sync_peers: Vec<IpAddr> = cfg.replication.peer_addr.into_iter().collect();
        let replica = Arc::new(ReplicaSet::new());
        hold_entries_found_at_start(&replica, &sync_peers);
        let sync_state = Arc::new(SyncState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::unbounded_channel();

        let egress_poll = Poll::new().map_err(io_err("creating the egress poll"))?;
        let egress_waker =
            Arc::new(egress::waker(&egress_poll).map_err(io_err("creating the egress waker"))?);
        let (egress_tx, egress_rx) = std::sync::mpsc::channel();
        let ingress_poll = Poll::new().map_err(io_err("creating the ingress poll"))?;
        let ingress_waker =
            Arc::new(ingress::waker(&ingress_poll).map_err(io_err("creating the ingress waker"))?);
        let (ingress_tx, ingress_rx) = std::sync::mpsc::channel();
        let barrier = Barrier {
            tx: ingress_tx,
            waker: ingress_waker.clone(),
        };

        let egress = egress::Egress {
            capture,
            destroy,
            sender,
            socket: tx,
            dest: destination,
            installer_portid,
            expect,
            expect_installer_portid,
            replica: replica.clone(),
            board: board.clone(),
            stop: stop.clone(),
            drain_interval: settings::drain_interval(sync_cfg),
            cmds: egress_rx,
            cmd_tx: egress_tx.clone(),
            waker: egress_waker.clone(),
            sync_state: sync_state.clone(),
            sync_peers: sync_peers.clone(),
            filters: filters.clone(),
            delay: (!sync_cfg.sync_delay.is_zero())
                .then(|| super::delay::DelayQueue::new(sync_cfg.sync_delay)),
            digest_key: DigestKey::derive(secret)?,
            consistency_check: sync_cfg.consistency_check,
        };
        let ingress = ingress::Ingress {
            socket: rx,
            receiver,
            installer,
            expect_installer,
            replica: replica.clone(),
            board: board.clone(),
            stop: stop.clone(),
            node,
            sync_state: sync_state.clone(),
            egress: egress_tx.clone(),
            egress_waker: egress_waker.clone(),
            cmds: ingress_rx,
            cmd_tx: barrier.tx.clone(),
            waker: ingress_waker.clone(),
            digest_key: DigestKey::derive(secret)?,
        };
        let rt = sync_cfg.realtime_priority;
        let workers = vec![
            spawn(
                "egress",
                rt,
                egress_waker.clone(),
                done_tx.clone(),
                move || egress.run(egress_poll),
            )?,
            spawn("ingress", rt, ingress_waker, done_tx, move || {
                ingress.run(ingress_poll)
            })?,
        ];
        let channel = channel.filter(|c| c.is_client());
        let (manual_tx, manual) = mpsc::unbounded_channel();
        let resync = ResyncHandle {
            state: sync_state.clone(),
            egress: egress_tx.clone(),
            waker: egress_waker.clone(),
            channel: channel.is_some().then_some(manual_tx),
        };
        tokio::spawn(request_resync(
            sync_state.clone(),
            egress_tx,
            egress_waker,
            channel.map(|c| (c, barrier.clone())),
            manual,
        ));
        Ok(DataPath {
            resync,
            sync_peers,
            filters,
            sync_state,
            replica,
            barrier,
            done,
            destination,
            stop,
            workers,
        })
    }

    /// Stops the threads and waits for them (the program detaches when capture drops).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.workers {
            let _ = w.waker.wake();
        }
        for w in self.workers {
            let name = w.name;
            let joined = tokio::task::spawn_blocking(move || w.handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(thread = name, "data-path thread panicked");
            }
        }
    }
}

fn spawn(
    name: &'static str,
    realtime_priority: u8,
    waker: Arc<Waker>,
    done: mpsc::UnboundedSender<(&'static str, Result<(), String>)>,
    body: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<Worker, AgentError> {
    let handle = std::thread::Builder::new()
        .name(format!("hasync-{name}"))
        .spawn(move || {
            if realtime_priority > 0 {
                set_realtime(name, realtime_priority);
            }
            let result = body().map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(thread = name, error = %e, "data-path thread failed");
            }
            let _ = done.send((name, result));
        })
        .map_err(io_err("spawning a data-path thread"))?;
    Ok(Worker {
        name,
        waker,
        handle,
    })
}

/// Puts the calling thread on SCHED_FIFO at `priority` (`realtime_priority`). A
/// refusal (no CAP_SYS_NICE, an RT budget of zero in a cgroup) is logged and the thread
/// runs with normal scheduling: slower under load, but it runs.
fn set_realtime(thread: &'static str, priority: u8) {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(thread, priority, error = %e, "realtime_priority: could not switch to SCHED_FIFO; running with normal scheduling");
    } else {
        tracing::info!(thread, priority, "data-path thread runs SCHED_FIFO");
    }
}

/// Back to normal scheduling for a helper thread a data-path thread starts (a table
/// dump, a digest comparison): threads inherit SCHED_FIFO, and bulk work at realtime
/// priority would starve the traffic `realtime_priority` only meant to cut in line.
pub(super) fn normal_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread with a valid parameter; a failure
    // leaves the inherited policy, which only matters with `realtime_priority`.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

/// Losses beyond repair are reported gap by gap, within a few ms of each other: one
/// request covers them all.
const LOSS_COALESCE: Duration = Duration::from_millis(25);

/// Asks the peer for its full table until one arrives intact (a node that starts or
/// rejoins has nothing, or a stale copy; a table that lost updates beyond repair).
/// With a TLS channel (`primary_addr`) each new request, and `hasync resync`, goes
/// over the channel first; if that fails, the same request goes out over UDP.
async fn request_resync(
    state: Arc<SyncState>,
    egress: std::sync::mpsc::Sender<EgressCmd>,
    waker: Arc<Waker>,
    channel: Option<(Arc<ChannelLink>, Barrier)>,
    mut manual: mpsc::UnboundedReceiver<u32>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut completeness = state.subscribe();
    // Runs for the agent's life: a table found incomplete later (datagrams lost
    // beyond repair) is asked for again.
    loop {
        let asked = tokio::select! {
            _ = tick.tick() => None,
            Some(id) = manual.recv() => Some(id),
            // Found incomplete: ask at once, not at the next tick (up to 0.5 s later),
            // once the rest of the same loss has had a moment to be found too.
            Ok(()) = completeness.changed() => {
                if !*completeness.borrow() {
                    tokio::time::sleep(LOSS_COALESCE).await;
                }
                completeness.borrow_and_update();
                None
            }
        };
        let pending = state.pending_request.load(Ordering::Relaxed);
        let (request_id, fresh) = if let Some(id) = asked {
            state.requested(id, state.given_up_now.load(Ordering::Relaxed));
            (id, true)
        } else if state.is_complete() {
            continue;
        } else if pending == 0 {
            let id = state.new_request_id();
            state.requested(id, state.given_up_now.load(Ordering::Relaxed));
            (id, true)
        } else if state.overdue() {
            // Same id: a peer still serving it carries on instead of starting over.
            state.retried();
            (pending, false)
        } else {
            continue;
        };
        if let Some((link, ingress)) = &channel
            && (fresh || link.retry_channel())
        {
            match link.resync(request_id, ingress).await {
                Ok(_) => continue,
                Err(e) => {
                    link.failed(&e);
                    if state.pending_request.load(Ordering::Relaxed) != request_id {
                        continue; // found incomplete meanwhile: a new request follows
                    }
                    // The UDP request gets its own full wait for an answer.
                    state.retried();
                }
            }
        }
        if egress
            .send(resync::EgressCmd::Request { request_id })
            .is_err()
        {
            return;
        }
        let _ = waker.wake();
    }
}

/// Entries already in the kernel when the agent starts may be the peer's (we were its
/// backup and restarted) or ours: hold them until the first bulk sync tells which.
fn hold_entries_found_at_start(replica: &ReplicaSet, sync_peers: &[IpAddr]) {
    match crate::kernel::ctnetlink::dump(None) {
        Ok(all) => {
            let keys = all
                .iter()
                .filter(|e| super::resync::replicable(e, sync_peers))
                .map(|e| e.key());
            let n = replica.hold_unclaimed(keys);
            if n > 0 {
                tracing::info!(
                    entries = n,
                    "startup: entries already in the kernel are held until the first bulk sync tells whose they are"
                );
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "startup: cannot dump the conntrack table; entries already there count as ours"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Virtual time: the request task's 0.5 s tick would ask 0.4 s after this loss.
    #[tokio::test(start_paused = true)]
    async fn a_table_found_incomplete_is_asked_for_at_once() {
        let state = Arc::new(SyncState::default());
        state.completed(0);
        let (tx, rx) = std::sync::mpsc::channel();
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (_manual, manual_rx) = mpsc::unbounded_channel();
        tokio::spawn(request_resync(state.clone(), tx, waker, None, manual_rx));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(rx.try_recv().is_err(), "complete: nothing to ask for");

        let lost_at = tokio::time::Instant::now();
        state.mark_incomplete();
        // More of the same loss found a moment later: still one request.
        tokio::time::sleep(Duration::from_millis(5)).await;
        state.mark_incomplete();
        let asked = loop {
            if let Ok(cmd) = rx.try_recv() {
                break cmd;
            }
            assert!(
                lost_at.elapsed() < Duration::from_millis(100),
                "no request within 100 ms of the loss"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(matches!(asked, EgressCmd::Request { .. }), "{asked:?}");
        assert!(lost_at.elapsed() >= LOSS_COALESCE);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "one request for one loss");
    }
}
