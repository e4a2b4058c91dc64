//! The agent: wires the data path together and runs it.
//!
//! ```text
//! egress thread:  capture (ring buffer + destroy events) -> sync::Sender -> UDP
//! ingress thread: UDP -> sync::Receiver -> kernel::ctnetlink::Installer
//! tokio runtime:  signals, metrics endpoint (control, heartbeat: later)
//! ```
//! The two data-path threads each own their state and block in epoll; the runtime
//! only starts and stops them.

pub mod egress;
pub mod ingress;
pub mod replica;
pub mod resync;
pub mod settings;
pub mod timer;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use mio::{Poll, Waker};
use tokio::sync::mpsc;

use crate::{
    capture::{Capture, CaptureError},
    config::schema::Config,
    kernel::ctnetlink::{CtnlError, DestroyListener, Installer},
    metrics::{self, Board},
    sync::{
        self, KeyError, KeyRing, Receiver, ReceiverConfig, Sender, SenderConfig, SyncKey,
        transport::TransportError,
    },
};
use replica::ReplicaSet;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("starting capture: {0}")]
    Capture(#[from] CaptureError),
    #[error("sync transport: {0}")]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Ctnetlink(#[from] CtnlError),
    #[error("secret_key: {0}")]
    Key(#[from] KeyError),
    #[error("sync sender: {0}")]
    Sender(#[from] sync::ConfigError),
    #[error("conntrack sync needs `secret_key`: every datagram is authenticated")]
    NoSecret,
    #[error("{op}: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("the {thread} thread stopped: {reason}")]
    Thread {
        thread: &'static str,
        reason: String,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> AgentError {
    move |source| AgentError::Io { op, source }
}

/// A data-path thread, its waker, and where it reports its end.
struct Worker {
    name: &'static str,
    waker: Arc<Waker>,
    handle: JoinHandle<()>,
}

/// Asks the peer for its full table until one arrives intact (a node that starts or
/// rejoins has nothing, or a stale copy).
async fn request_resync(
    state: Arc<resync::SyncState>,
    egress: std::sync::mpsc::Sender<resync::EgressCmd>,
    waker: Arc<Waker>,
) {
    let mut request_id = 0u32;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        if state.is_complete() {
            return;
        }
        let pending = state.pending_request.load(Ordering::Relaxed);
        if pending == 0 {
            request_id = request_id.wrapping_add(1).max(1);
            state.requested(request_id, state.lost_now.load(Ordering::Relaxed));
        } else if state.overdue() {
            // Same id: a peer still serving it carries on instead of starting over.
            request_id = pending;
            state.retried();
        } else {
            continue;
        }
        {
            if egress
                .send(resync::EgressCmd::Request { request_id })
                .is_err()
            {
                return;
            }
            let _ = waker.wake();
        }
    }
}

/// Runs the agent until SIGINT/SIGTERM or a data-path failure.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    let board = Board::default();
    for setting in settings::not_yet_supported(&cfg) {
        tracing::warn!(
            setting,
            "configured but not implemented in this version: ignored"
        );
    }
    if let Some(addr) = cfg.agent.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io_err("binding the metrics address"))?;
        tracing::info!(%addr, "metrics endpoint listening");
        tokio::spawn(metrics::http::run(listener, board.clone()));
    }
    let sync_cfg = &cfg.replication.ha.conntrack_sync;
    if !sync_cfg.enabled {
        tracing::warn!("conntrack_sync is disabled: nothing to replicate; waiting for a signal");
        wait_for_signal().await;
        return Ok(());
    }
    let secret = cfg
        .replication
        .secret_key
        .as_ref()
        .ok_or(AgentError::NoSecret)?;
    let node = settings::node_id(&cfg);
    let epoch = sync::sender::random_epoch().map_err(|e| AgentError::Io {
        op: "drawing a random epoch",
        source: io::Error::other(e.to_string()),
    })?;

    let transport = settings::transport(&cfg);
    let dest = transport.destination()?;
    let tx = transport.open_sender()?;
    let rx = transport.open_receiver()?;
    let installer = Installer::new()?;
    let installer_portid = installer.portid();
    let destroy = DestroyListener::new()?;
    let capture = Capture::start(&settings::capture(sync_cfg)?)?;
    if !capture.missing_fields.is_empty() {
        tracing::info!(fields = ?capture.missing_fields, "kernel lacks optional conntrack fields; not replicated");
    }
    let sender_cfg = SenderConfig {
        max_datagram: sync_cfg.max_datagram_size as usize,
        ..SenderConfig::new(node, epoch)
    };
    let sender = Sender::new(
        sender_cfg,
        SyncKey::derive(secret.as_bytes())?,
        Instant::now(),
    )?;
    let receiver = Receiver::new(
        ReceiverConfig::new(node),
        KeyRing::from_secrets(secret.as_bytes(), None)?,
    );
    let replica = Arc::new(ReplicaSet::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(&'static str, Result<(), String>)>();

    let egress_poll = Poll::new().map_err(io_err("creating the egress poll"))?;
    let egress_waker =
        Arc::new(egress::waker(&egress_poll).map_err(io_err("creating the egress waker"))?);
    let (egress_tx, egress_rx) = std::sync::mpsc::channel();
    let sync_state = Arc::new(resync::SyncState::default());
    let sync_peers: Vec<std::net::IpAddr> = cfg.replication.peer_addr.into_iter().collect();
    let egress = egress::Egress {
        capture,
        destroy,
        sender,
        socket: tx,
        dest,
        installer_portid,
        replica: replica.clone(),
        board: board.clone(),
        stop: stop.clone(),
        drain_interval: (sync_cfg.wakeup_min_gap * 2).max(std::time::Duration::from_micros(100)),
        cmds: egress_rx,
        cmd_tx: egress_tx.clone(),
        waker: egress_waker.clone(),
        sync_state: sync_state.clone(),
        sync_peers,
    };
    let ingress_poll = Poll::new().map_err(io_err("creating the ingress poll"))?;
    let ingress_waker =
        ingress::waker(&ingress_poll).map_err(io_err("creating the ingress waker"))?;
    let ingress = ingress::Ingress {
        socket: rx,
        receiver,
        installer,
        replica,
        board: board.clone(),
        stop: stop.clone(),
        node,
        sync_state: sync_state.clone(),
        egress: egress_tx.clone(),
        egress_waker: egress_waker.clone(),
    };

    let workers = vec![
        spawn("egress", egress_waker.clone(), done_tx.clone(), move || {
            egress.run(egress_poll)
        })?,
        spawn("ingress", Arc::new(ingress_waker), done_tx, move || {
            ingress.run(ingress_poll)
        })?,
    ];
    tokio::spawn(request_resync(sync_state.clone(), egress_tx, egress_waker));
    tracing::info!(
        node,
        epoch,
        %dest,
        interface = sync_cfg.interface.as_deref().unwrap_or("-"),
        mode = cfg.replication.mode.as_str(),
        "hasync ready: capturing and replicating conntrack state"
    );

    let outcome = tokio::select! {
        _ = wait_for_signal() => Ok(()),
        Some((thread, result)) = done_rx.recv() => match result {
            Ok(()) => Err(AgentError::Thread { thread, reason: "exited unexpectedly".into() }),
            Err(reason) => Err(AgentError::Thread { thread, reason }),
        },
    };
    stop.store(true, Ordering::Relaxed);
    for w in &workers {
        let _ = w.waker.wake();
    }
    for w in workers {
        let name = w.name;
        let joined = tokio::task::spawn_blocking(move || w.handle.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!(thread = name, "data-path thread panicked");
        }
    }
    tracing::info!("hasync stopped");
    outcome
}

fn spawn(
    name: &'static str,
    waker: Arc<Waker>,
    done: mpsc::UnboundedSender<(&'static str, Result<(), String>)>,
    body: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> Result<Worker, AgentError> {
    let handle = std::thread::Builder::new()
        .name(format!("hasync-{name}"))
        .spawn(move || {
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
    }
}
