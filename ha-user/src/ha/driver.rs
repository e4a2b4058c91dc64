//! The HA driver: the I/O around the election core.
//!
//! One tokio task owns the heartbeat socket, the election, the link monitor and the
//! [`Takeover`]. Each turn it feeds what happened (a heartbeat, a timer, a link change,
//! the bulk sync finishing, an operator command) into the election, sends what it asks
//! to send, and carries out its actions in order — a role change runs to completion
//! before the next input is looked at, so a takeover and a release never interleave.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    net::UdpSocket,
    sync::{mpsc, oneshot, watch},
};

use super::{
    Action, Election, HeartbeatReceiver, Input, Reason, Role, Status,
    heartbeat::encode,
    takeover::{Owned, Takeover, Timeline},
};
use crate::{
    agent::{ingress::Barrier, replica::ReplicaSet, resync::SyncState},
    kernel::rtnetlink::{Groups, Iface, LinkMonitor, RtEvent, Rtnl},
    metrics::{Board, Sample},
    sync::SyncKey,
};

/// Operator requests and status queries, from the control socket.
#[derive(Debug)]
pub enum Command {
    Promote,
    Demote,
    Resume,
    Status(oneshot::Sender<HaReport>),
    /// The agent is stopping: give the addresses back (a clean stop hands over at
    /// once instead of after the dead interval), then answer.
    Shutdown(oneshot::Sender<()>),
}

/// What `hasync status` shows of HA.
#[derive(Debug, Clone, Serialize)]
pub struct HaReport {
    pub node_id: u32,
    pub role: &'static str,
    pub reason: &'static str,
    pub role_for_s: f64,
    pub priority: u8,
    pub demoted_for: Vec<&'static str>,
    pub synced: bool,
    pub maintenance: bool,
    pub promoted: bool,
    pub split_brain: bool,
    pub failback_in_s: Option<f64>,
    pub peer: Option<PeerReport>,
    pub transitions: u64,
    pub split_brains: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    pub heartbeats_rejected: u64,
    pub last_takeover_ms: Option<f64>,
    pub history: Vec<Transition>,
    pub timeline: Timeline,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub node_id: u32,
    pub role: &'static str,
    pub priority: u8,
    pub alive: bool,
    pub hears_us: bool,
    pub last_heard_ms: f64,
    pub demoted_for: Vec<&'static str>,
}

/// A role change, for the status history.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub at_unix_ms: u64,
    pub role: &'static str,
    pub reason: &'static str,
}

/// Everything the driver needs, resolved from the configuration.
pub struct DriverConfig {
    pub peer: SocketAddr,
    pub listen_port: u16,
    pub send_key: SyncKey,
    pub owned: Owned,
    pub monitor_interfaces: Vec<String>,
    pub sync_interface: Option<String>,
    pub down_before_sync: Vec<String>,
    pub notify_command: Option<PathBuf>,
}

/// The rest of the agent, as the driver sees it.
pub struct Links {
    /// Installs every received sync datagram, then answers (the takeover's commit).
    pub commit: Option<Barrier>,
    /// The bulk-sync state: its completion feeds the election, and becoming primary
    /// completes it (the primary's table is the reference).
    pub sync: Option<Arc<SyncState>>,
    pub replica: Option<Arc<ReplicaSet>>,
    pub board: Board,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("heartbeat socket on port {port}: {source}")]
    Socket { port: u16, source: std::io::Error },
    #[error("link monitor: {0}")]
    Monitor(String),
}

pub struct Driver {
    cfg: DriverConfig,
    election: Election,
    receiver: HeartbeatReceiver,
    takeover: Takeover,
    links: Links,
    history: Vec<Transition>,
    last_takeover: Option<Duration>,
    health: (bool, bool),
}

impl Driver {
    pub fn new(
        cfg: DriverConfig,
        election: Election,
        receiver: HeartbeatReceiver,
        links: Links,
    ) -> Driver {
        let takeover = Takeover::new(cfg.owned.clone());
        Driver {
            cfg,
            election,
            receiver,
            takeover,
            links,
            history: Vec::new(),
            last_takeover: None,
            health: (true, true),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), DriverError> {
        let port = self.cfg.listen_port;
        let bind: SocketAddr = if self.cfg.peer.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            ([0, 0, 0, 0], port).into()
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|source| DriverError::Socket { port, source })?;
        let monitor =
            LinkMonitor::open(Groups::LINK).map_err(|e| DriverError::Monitor(e.to_string()))?;
        // SAFETY: the fd stays open (owned by the monitor inside the AsyncFd) for as long as
        // it is registered.
        let mut monitor = unsafe { AsyncFd::register(MonitorFd(monitor)) }
            .map_err(|e| DriverError::Monitor(e.to_string()))?;
        self.hold_interfaces_down();
        self.check_health(Instant::now());
        let mut sync_rx = self.links.sync.as_ref().map(|s| s.subscribe());
        // Already complete before we subscribed (a fast bulk sync): say so now.
        if self.links.sync.as_ref().is_some_and(|s| s.is_complete()) {
            self.election.handle(Instant::now(), Input::SyncComplete);
        }
        let mut buf = [0u8; 2048];
        let mut events = Vec::new();
        loop {
            self.flush(&socket).await;
            let deadline = self
                .election
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                got = socket.recv_from(&mut buf) => match got {
                    Ok((n, src)) => {
                        let now = Instant::now();
                        if let Ok(hb) = self.receiver.handle(now, src, &buf[..n]) {
                            self.election.handle(now, Input::Heartbeat(hb));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat socket"),
                },
                _ = sleep_until(deadline) => self.election.handle_timeout(Instant::now()),
                ready = monitor.readable_mut() => {
                    if let Ok(mut guard) = ready {
                        events.clear();
                        let _ = guard.get_inner_mut().0.read(&mut events);
                        guard.clear_ready();
                        if events.iter().any(|e| matches!(e, RtEvent::Link(_) | RtEvent::LinkRemoved(_) | RtEvent::Overrun)) {
                            self.check_health(Instant::now());
                        }
                    }
                }
                complete = wait_sync(&mut sync_rx) => {
                    let input = if complete { Input::SyncComplete } else { Input::SyncLost };
                    self.election.handle(Instant::now(), input);
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Promote) => self.election.handle(Instant::now(), Input::Promote),
                    Some(Command::Demote) => self.election.handle(Instant::now(), Input::Demote),
                    Some(Command::Resume) => self.election.handle(Instant::now(), Input::ClearOperator),
                    Some(Command::Status(reply)) => { let _ = reply.send(self.report()); }
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown(&socket).await;
                        let _ = reply.send(());
                        return Ok(());
                    }
                    None => return Ok(()),
                },
            }
        }
    }

    /// Sends due heartbeats and carries out the election's actions, in order.
    async fn flush(&mut self, socket: &UdpSocket) {
        loop {
            let now = Instant::now();
            while let Some(hb) = self.election.poll_transmit(now) {
                let bytes = encode(&hb, &self.cfg.send_key);
                if let Err(e) = socket.send_to(&bytes, self.cfg.peer).await {
                    tracing::debug!(error = %e, peer = %self.cfg.peer, "sending a heartbeat");
                }
            }
            let Some(action) = self.election.poll_action() else {
                break;
            };
            self.act(action, socket).await;
        }
        self.publish();
    }

    /// Runs the takeover while heartbeats keep going out: a slow step (the commit
    /// waits for the ingress thread) must not make the peer think we died.
    async fn acquire(&mut self, socket: &UdpSocket) -> super::takeover::Summary {
        let commit = self.links.commit.clone();
        // Well inside the dead interval, whatever the configuration.
        let cap = (self.election.config().interval * self.election.config().threshold / 2)
            .clamp(Duration::from_millis(20), Duration::from_millis(500));
        let acquire = self.takeover.acquire(async move {
            match commit {
                Some(b) => b.commit(cap).await,
                None => Ok(0),
            }
        });
        tokio::pin!(acquire);
        let election = &mut self.election;
        let (key, peer) = (&self.cfg.send_key, self.cfg.peer);
        loop {
            let next = election.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                summary = &mut acquire => return summary,
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    election.handle_timeout(now);
                    while let Some(hb) = election.poll_transmit(now) {
                        let _ = socket.send_to(&encode(&hb, key), peer).await;
                    }
                }
            }
        }
    }

    async fn act(&mut self, action: Action, socket: &UdpSocket) {
        match action {
            Action::BecomePrimary { reason } => {
                tracing::info!(%reason, "becoming PRIMARY: taking the addresses over");
                self.record(Role::Primary, reason);
                // Everything in our table is ours to serve (and to send on a resync).
                if let Some(replica) = &self.links.replica {
                    replica.clear();
                }
                if let Some(sync) = &self.links.sync {
                    sync.mark_complete();
                }
                let summary = self.acquire(socket).await;
                self.last_takeover = Some(summary.total);
                self.notify(Role::Primary, reason);
            }
            Action::BecomeBackup {
                reason: Reason::Startup,
            } => {
                // A previous run may have been killed while primary.
                self.takeover.clear_leftovers();
            }
            Action::BecomeBackup { reason } => {
                tracing::info!(%reason, "becoming BACKUP: releasing the addresses");
                self.record(Role::Backup, reason);
                self.takeover.release();
                self.notify(Role::Backup, reason);
            }
            Action::EnterFault { reason } => {
                tracing::error!(%reason, "entering FAULT");
                self.record(Role::Fault, reason);
                self.takeover.release();
                self.notify(Role::Fault, reason);
            }
            Action::SplitBrain { peer, resolution } => {
                tracing::error!(peer, ?resolution, "split brain: both nodes were PRIMARY");
            }
            Action::InterfacesMayGoUp => self.release_held_interfaces(),
            Action::PeerUp {
                node,
                epoch,
                restarted,
            } => {
                tracing::info!(node, epoch, restarted, "peer is up");
            }
            Action::PeerDown { node } => tracing::warn!(node, "peer is down (no heartbeat)"),
        }
    }

    /// Stepping down for good: release the addresses and tell the peer at once (it
    /// takes over on our heartbeat instead of waiting for the dead interval).
    async fn shutdown(&mut self, socket: &UdpSocket) {
        if self.election.role() != Role::Primary {
            return; // a backup holds nothing; the peer notices the silence
        }
        self.election.handle(Instant::now(), Input::Demote);
        while let Some(hb) = self.election.poll_transmit(Instant::now()) {
            let _ = socket
                .send_to(&encode(&hb, &self.cfg.send_key), self.cfg.peer)
                .await;
        }
        tracing::warn!("stopping: releasing the virtual addresses");
        self.takeover.release();
    }

    fn record(&mut self, role: Role, reason: Reason) {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.history.push(Transition {
            at_unix_ms,
            role: role.as_str(),
            reason: reason.as_str(),
        });
        if self.history.len() > 32 {
            self.history.remove(0);
        }
    }

    /// Recomputes local health from the interfaces and feeds it on change.
    fn check_health(&mut self, now: Instant) {
        let Ok(mut rt) = Rtnl::open() else { return };
        let mut up = |name: &str| rt.link_info(Iface::from(name)).is_ok_and(|l| l.is_usable());
        let monitored_up = self.cfg.monitor_interfaces.iter().all(|i| up(i));
        let sync_link_up = self.cfg.sync_interface.as_deref().is_none_or(up);
        if (sync_link_up, monitored_up) != self.health {
            tracing::warn!(sync_link_up, monitored_up, "local health changed");
        }
        self.health = (sync_link_up, monitored_up);
        self.election.handle(
            now,
            Input::LocalHealth {
                sync_link_up,
                monitored_up,
            },
        );
    }

    /// FGSP `down_intfs_before_sess_sync`: these stay down until our table is synced.
    fn hold_interfaces_down(&self) {
        if self.cfg.down_before_sync.is_empty() {
            return;
        }
        let Ok(mut rt) = Rtnl::open() else { return };
        for name in &self.cfg.down_before_sync {
            match rt.set_link_up(Iface::from(name), false) {
                Ok(()) => {
                    tracing::info!(interface = %name, "held down until the connection table is synced")
                }
                Err(e) => {
                    tracing::warn!(interface = %name, error = %e, "cannot hold interface down")
                }
            }
        }
    }

    fn release_held_interfaces(&self) {
        if self.cfg.down_before_sync.is_empty() {
            return;
        }
        let Ok(mut rt) = Rtnl::open() else { return };
        for name in &self.cfg.down_before_sync {
            match rt.set_link_up(Iface::from(name), true) {
                Ok(()) => tracing::info!(interface = %name, "table synced: interface up"),
                Err(e) => {
                    tracing::warn!(interface = %name, error = %e, "cannot bring interface up")
                }
            }
        }
    }

    /// Runs `notify_command <role> <reason>` without waiting for it.
    fn notify(&self, role: Role, reason: Reason) {
        let Some(cmd) = self.cfg.notify_command.clone() else {
            return;
        };
        let mut child = tokio::process::Command::new(&cmd);
        child
            .arg(role.as_str())
            .arg(reason.as_str())
            .env("HASYNC_ROLE", role.as_str())
            .env("HASYNC_REASON", reason.as_str())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        match child.spawn() {
            Ok(mut c) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(60), c.wait()).await {
                        Ok(Ok(status)) if status.success() => {}
                        Ok(Ok(status)) => {
                            tracing::warn!(command = %cmd.display(), %status, "notify command failed")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(command = %cmd.display(), error = %e, "notify command")
                        }
                        Err(_) => {
                            tracing::warn!(command = %cmd.display(), "notify command still running after 60 s")
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(command = %cmd.display(), error = %e, "cannot run notify command")
            }
        }
    }

    fn report(&self) -> HaReport {
        let s: Status = self.election.status();
        let now = Instant::now();
        let rejected = self.receiver.stats().rejects.total();
        HaReport {
            node_id: s.node_id,
            role: s.role.as_str(),
            reason: s.reason.as_str(),
            role_for_s: now.duration_since(s.role_since).as_secs_f64(),
            priority: s.priority,
            demoted_for: s.demotion.names().collect(),
            synced: s.synced,
            maintenance: s.maintenance,
            promoted: s.promoted,
            split_brain: s.split_brain,
            failback_in_s: s
                .failback_at
                .map(|t| t.saturating_duration_since(now).as_secs_f64()),
            peer: s.peer.map(|p| PeerReport {
                node_id: p.node,
                role: p.role.as_str(),
                priority: p.priority,
                alive: p.alive,
                hears_us: p.hears_us,
                last_heard_ms: now.duration_since(p.last_heard).as_secs_f64() * 1000.0,
                demoted_for: p.demotion.names().collect(),
            }),
            transitions: s.stats.transitions,
            split_brains: s.stats.split_brains,
            heartbeats_sent: s.stats.heartbeats_sent,
            heartbeats_received: s.stats.heartbeats_received,
            heartbeats_rejected: rejected,
            last_takeover_ms: self.last_takeover.map(|d| d.as_secs_f64() * 1000.0),
            history: self.history.clone(),
            timeline: self.takeover.timeline().clone(),
        }
    }

    fn publish(&self) {
        let s = self.election.status();
        let role_help = "1 for the current HA role";
        let mut samples = vec![
            Sample::gauge(
                "ha_role",
                role_help,
                f64::from(u8::from(s.role == Role::Primary)),
            )
            .label("role", "primary"),
            Sample::gauge(
                "ha_role",
                role_help,
                f64::from(u8::from(s.role == Role::Backup)),
            )
            .label("role", "backup"),
            Sample::gauge(
                "ha_role",
                role_help,
                f64::from(u8::from(s.role == Role::Fault)),
            )
            .label("role", "fault"),
            Sample::counter("ha_transitions", "HA role changes", s.stats.transitions),
            Sample::counter(
                "ha_split_brains",
                "Split-brain episodes detected (both nodes primary)",
                s.stats.split_brains,
            ),
            Sample::counter(
                "ha_heartbeats_sent",
                "Heartbeats sent",
                s.stats.heartbeats_sent,
            ),
            Sample::counter(
                "ha_heartbeats_received",
                "Heartbeats accepted",
                s.stats.heartbeats_received,
            ),
            Sample::gauge(
                "ha_peer_alive",
                "1 while the peer's heartbeats arrive",
                f64::from(u8::from(s.peer.is_some_and(|p| p.alive))),
            ),
            Sample::counter(
                "ha_peer_losses",
                "Times the peer was declared dead",
                s.stats.peer_losses,
            ),
        ];
        for (kind, n) in self.receiver.stats().rejects.iter() {
            samples.push(
                Sample::counter(
                    "ha_heartbeats_rejected",
                    "Heartbeats rejected, by reason",
                    n,
                )
                .label("reason", kind.as_str()),
            );
        }
        if let Some(t) = self.last_takeover {
            samples.push(Sample::gauge(
                "ha_last_takeover_seconds",
                "Duration of the last takeover (commit + addresses + first announcement)",
                t.as_secs_f64(),
            ));
        }
        self.links.board.publish("ha", samples);
    }
}

/// `AsRawFd` for the link monitor, so tokio can poll it.
struct MonitorFd(LinkMonitor);

impl AsRawFd for MonitorFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The next change of the sync state: `true` when the peer's table is complete,
/// `false` when it became incomplete; never if there is no sync.
async fn wait_sync(rx: &mut Option<watch::Receiver<bool>>) -> bool {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    match r.changed().await {
        Ok(()) => *r.borrow_and_update(),
        Err(_) => {
            *rx = None;
            std::future::pending().await
        }
    }
}
