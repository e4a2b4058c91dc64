//! The agent: wires the data path, the HA driver and the control socket, and runs them.
//!
//! ```text
//! egress thread:  capture (ring buffer + destroy events) -> sync::Sender -> UDP
//! ingress thread: UDP -> sync::Receiver -> kernel::ctnetlink::Installer
//! tokio runtime:  HA driver (heartbeats, election, takeover), control socket,
//!                 metrics endpoint, signals, TLS replication channel (bulk resync)
//! ```
//! The two data-path threads each own their state and block in epoll.

pub mod channel_link;
pub mod consistency;
pub mod control;
pub mod datapath;
pub mod delay;
pub mod egress;
pub mod expectations;
pub mod ingress;
pub mod live_since_dump;
pub mod replica;
pub mod resync;
pub mod reused;
pub mod settings;
pub mod systemd;
pub mod timer;

use std::{io, net::SocketAddr, sync::Arc, time::Instant};

use tokio::sync::mpsc;

use crate::{
    capture::CaptureError,
    config::schema::Config,
    control::server::{ControlError, Server},
    ha::{
        self, Election, ElectionConfig, HeartbeatReceiver,
        driver::{Driver, DriverConfig, Links},
        takeover::Owned,
    },
    kernel::ctnetlink::CtnlError,
    metrics::{self, Board},
    sync::{self, KeyError, transport::TransportError},
};
use datapath::DataPath;

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
    #[error("HA: {0}")]
    Election(#[from] ha::ConfigError),
    #[error("HA driver: {0}")]
    Driver(#[from] ha::driver::DriverError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelError),
    #[error("HA and sync need `secret_key`: every heartbeat and datagram is authenticated")]
    NoSecret,
    #[error("HA needs `peer_addr`")]
    NoPeer,
    #[error("{what}: interface `{interface}` does not exist on this node")]
    MissingInterface { what: String, interface: String },
    #[error("{op}: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("the {thread} thread stopped: {reason}")]
    Thread {
        thread: &'static str,
        reason: String,
    },
}

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> AgentError {
    move |source| AgentError::Io { op, source }
}

/// Applies a new tracing filter (e.g. "debug").
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the agent needs from its caller besides the configuration.
#[derive(Default)]
pub struct RunOptions {
    /// The configuration file, re-read on SIGHUP.
    pub config_path: Option<std::path::PathBuf>,
    /// Applies a new log level (a tracing filter); what SIGHUP can change live.
    pub set_log_level: Option<SetLogLevel>,
}

/// Runs the agent until SIGINT/SIGTERM or a fatal failure.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), AgentError> {
    let started = Instant::now();
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
    let ha_cfg = &cfg.replication.ha;
    let sync_cfg = &ha_cfg.conntrack_sync;
    let node = settings::node_id(&cfg);
    let epoch = sync::sender::random_epoch().map_err(|e| AgentError::Io {
        op: "drawing a random epoch",
        source: io::Error::other(e.to_string()),
    })?;
    let secret = cfg
        .replication
        .secret_key
        .as_ref()
        .map(|s| s.as_bytes().to_vec());
    if (ha_cfg.enabled || sync_cfg.enabled) && secret.is_none() {
        return Err(AgentError::NoSecret);
    }
    let secret = secret.unwrap_or_default();

    settings::check_interfaces(&cfg)?;
    let channel = channel_link::ChannelLink::from_config(&cfg, node)?;
    let mut data = if sync_cfg.enabled {
        Some(DataPath::start(
            &cfg,
            node,
            epoch,
            &secret,
            &board,
            channel.clone(),
        )?)
    } else {
        None
    };
    // Listening before "ready": a peer starting next finds the channel up.
    let mut channel_tasks = Vec::new();
    if let (Some(link), Some(d)) = (&channel, &data) {
        let served = link
            .serve(d.replica.clone(), d.sync_peers.clone(), d.filters.clone())
            .await?;
        channel_tasks.extend(served);
        channel_tasks.push(tokio::spawn(link.clone().publish(board.clone())));
    }

    let (ha_tx, ha_task) = if ha_cfg.enabled {
        let (tx, rx) = mpsc::channel(16);
        let driver = ha_driver(&cfg, node, epoch, &secret, data.as_ref(), &board)?;
        (Some(tx), Some(tokio::spawn(driver.run(rx))))
    } else {
        (None, None)
    };

    let ha_stop = ha_tx.clone();
    let server = Server::bind(&cfg.agent.control_socket).await?;
    let handler = control::ControlHandler {
        node,
        mode: cfg.replication.mode.as_str(),
        started,
        ha: ha_tx,
        sync: data.as_ref().map(|d| (d.resync.clone(), d.replica.clone())),
        channel: channel.clone(),
        board: board.clone(),
    };
    let control = tokio::spawn(server.run(Arc::new(handler)));

    tracing::info!(
        node,
        epoch,
        mode = cfg.replication.mode.as_str(),
        sync = sync_cfg.enabled,
        ha = ha_cfg.enabled,
        dest = %data.as_ref().map(|d| d.destination.to_string()).unwrap_or_else(|| "-".into()),
        control = %cfg.agent.control_socket.display(),
        "hasync ready"
    );
    tokio::spawn(notify_ready(data.as_ref().map(|d| d.sync_state.clone())));

    let outcome = wait(&mut data, ha_task, &cfg, &opts).await;
    control.abort();
    for t in channel_tasks {
        t.abort();
    }
    if let Some(tx) = ha_stop {
        let (reply, done) = tokio::sync::oneshot::channel();
        if tx.send(ha::driver::Command::Shutdown(reply)).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), done).await;
        }
    }
    if let Some(d) = data {
        d.stop().await;
    }
    tracing::info!("hasync stopped");
    outcome
}

/// Tells systemd we are ready once the program is attached (done by now) and the
/// peer's table is installed (or this node is primary, or there is no sync), or after
/// a minute without it (the status line then says what we wait for).
async fn notify_ready(sync: Option<Arc<resync::SyncState>>) {
    let Some(sync) = sync else {
        systemd::notify("READY=1\nSTATUS=running (conntrack sync disabled)");
        return;
    };
    systemd::notify("STATUS=capture attached; waiting for the peer's table");
    let mut rx = sync.subscribe();
    let synced = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        rx.wait_for(|done| *done),
    )
    .await;
    match synced {
        Ok(Ok(_)) => systemd::notify("READY=1\nSTATUS=running; table in sync"),
        _ => systemd::notify("READY=1\nSTATUS=running; the peer's table has not arrived yet"),
    }
}

/// SIGHUP: re-read the configuration. The log level applies at once; anything else
/// that changed is reported as needing a restart (sockets, programs and the election
/// are not rebuilt under traffic).
fn reload(current: &Config, opts: &RunOptions) {
    let Some(path) = &opts.config_path else {
        return;
    };
    let new = match crate::config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            tracing::error!("SIGHUP: configuration not reloaded, it has errors:\n{errors}");
            return;
        }
    };
    if new.agent.log_level != current.agent.log_level
        && let Some(set) = &opts.set_log_level
    {
        match set(new.agent.log_level.as_str()) {
            Ok(()) => tracing::info!(
                level = new.agent.log_level.as_str(),
                "SIGHUP: log level changed"
            ),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot change the log level"),
        }
    }
    let mut restart = Vec::new();
    if new.replication != current.replication {
        restart.push("replication");
    }
    if new.agent.metrics_addr != current.agent.metrics_addr
        || new.agent.control_socket != current.agent.control_socket
        || new.agent.log_format != current.agent.log_format
    {
        restart.push("agent");
    }
    if restart.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded");
    } else {
        tracing::warn!(blocks = ?restart, "SIGHUP: these changes take effect after a restart");
    }
}

/// Until a signal (clean stop) or a component fails.
async fn wait(
    data: &mut Option<DataPath>,
    ha_task: Option<tokio::task::JoinHandle<Result<(), ha::driver::DriverError>>>,
    cfg: &Config,
    opts: &RunOptions,
) -> Result<(), AgentError> {
    let thread_end = async {
        match data.as_mut() {
            Some(d) => d.done.recv().await,
            None => std::future::pending().await,
        }
    };
    let ha_end = async {
        match ha_task {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    };
    let reloads = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => loop {
                hup.recv().await;
                reload(cfg, opts);
            },
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = wait_for_signal() => Ok(()),
        _ = reloads => Ok(()),
        Some((thread, result)) = thread_end => Err(AgentError::Thread {
            thread,
            reason: result.err().unwrap_or_else(|| "exited unexpectedly".into()),
        }),
        ended = ha_end => match ended {
            Ok(Ok(())) => Err(AgentError::Thread { thread: "ha", reason: "exited unexpectedly".into() }),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(AgentError::Thread { thread: "ha", reason: e.to_string() }),
        },
    }
}

fn ha_driver(
    cfg: &Config,
    node: u32,
    epoch: u32,
    secret: &[u8],
    data: Option<&DataPath>,
    board: &Board,
) -> Result<Driver, AgentError> {
    let ha_cfg = &cfg.replication.ha;
    let peer = cfg.replication.peer_addr.ok_or(AgentError::NoPeer)?;
    let econf = ElectionConfig::from_config(cfg, node, epoch)?;
    let silence = econf.dead_interval();
    let election = Election::new(econf, Instant::now())?;
    let receiver = HeartbeatReceiver::new(
        ha::ReceiverConfig::new(node, epoch, silence),
        ha::heartbeat_keys(
            secret,
            cfg.replication
                .previous_secret_key
                .as_ref()
                .map(|k| k.as_bytes()),
        )?,
    );
    let dcfg = DriverConfig {
        peer: SocketAddr::new(peer, ha_cfg.heartbeat_port),
        listen_port: ha_cfg.heartbeat_port,
        send_key: ha::heartbeat_key(secret)?,
        owned: Owned {
            vips: ha_cfg.virtual_ips.clone(),
            vmacs: ha_cfg.virtual_macs.clone(),
            garp_count: ha_cfg.garp_count,
            garp_interval: ha_cfg.garp_interval,
        },
        monitor_interfaces: ha_cfg.monitor_interfaces.clone(),
        sync_interface: if ha_cfg.conntrack_sync.enabled {
            ha_cfg.conntrack_sync.interface.clone()
        } else {
            None
        },
        down_before_sync: ha_cfg.down_interfaces_before_sync.clone(),
        notify_command: ha_cfg.notify_command.clone(),
    };
    let links = Links {
        commit: data.map(|d| d.barrier.clone()),
        sync: data.map(|d| d.sync_state.clone()),
        replica: data.map(|d| d.replica.clone()),
        board: board.clone(),
    };
    Ok(Driver::new(dcfg, election, receiver, links))
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
