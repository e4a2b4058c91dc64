//! The TLS replication channel inside the agent.
//!
//! Server (`listen_addr`): serves the entries this node owns, exactly what the UDP
//! bulk resync serves, to an authenticated peer. Client (`primary_addr`): the node's
//! bulk resync goes over the channel first; its batches are installed by the ingress
//! thread (which owns the installer, so entries are marked as the peer's and get the
//! replica lifetime), and any failure falls back to the UDP resync request, so a
//! refused certificate or an unreachable listener costs time, never entries.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use super::{
    AgentError,
    ingress::{Barrier, IngressCmd},
    replica::ReplicaSet,
    resync,
};
use crate::{
    channel::{
        ChannelClient, ChannelError, ChannelOptions, ChannelServer, ChannelStats, ClientTls,
        PeerInfo, TlsFiles, client_config, server_config,
    },
    config::schema::Config,
    metrics::{Board, Sample},
};

/// After a failed attempt, retries of the same request skip the channel for this long
/// (the UDP request is already out; a dead listener should not delay it each time).
const RETRY_CHANNEL_AFTER: Duration = Duration::from_secs(30);
/// The same failure is logged as a warning at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why a resync over the channel did not complete.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("the ingress thread is gone")]
    IngressGone,
    #[error("the table arrived but was not accepted: {0}")]
    NotAccepted(String),
}

/// The channel's configuration and what it reports (metrics, `hasync status`).
pub struct ChannelLink {
    opts: ChannelOptions,
    node: u32,
    server_tls: Option<Arc<rustls::ServerConfig>>,
    listen: Option<SocketAddr>,
    client: Option<(SocketAddr, ClientTls)>,
    mutual: bool,
    fallbacks: AtomicU64,
    installed: AtomicU64,
    report: Mutex<Report>,
}

#[derive(Default)]
struct Report {
    listening: Option<SocketAddr>,
    last_resync: Option<LastResync>,
    last_error: Option<(String, u64)>,
    last_failure: Option<Instant>,
    warned: Option<(String, Instant)>,
}

struct LastResync {
    from: SocketAddr,
    entries: u64,
    ms: u64,
    unix: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ChannelLink {
    /// The channel this configuration asks for, with its TLS files loaded (a file that
    /// does not load stops the agent: TLS was asked for). `None` when there is none.
    pub fn from_config(cfg: &Config, node: u32) -> Result<Option<Arc<ChannelLink>>, AgentError> {
        let r = &cfg.replication;
        if r.listen_addr.is_none() && r.primary_addr.is_none() {
            return Ok(None);
        }
        if !r.ha.conntrack_sync.enabled {
            tracing::warn!(
                "listen_addr / primary_addr ignored: the replication channel carries bulk resyncs of conntrack sync, which is disabled"
            );
            return Ok(None);
        }
        let Some(files) = TlsFiles::from_replication(r) else {
            tracing::warn!(
                "listen_addr / primary_addr ignored: the replication channel is TLS only (set tls_cert, tls_key, tls_ca); bulk resyncs use UDP"
            );
            return Ok(None);
        };
        let server_tls = match r.listen_addr {
            Some(_) if files.cert.is_some() => {
                Some(server_config(&files).map_err(ChannelError::from)?)
            }
            Some(addr) => {
                tracing::warn!(%addr, "listen_addr ignored: serving the channel needs tls_cert and tls_key");
                None
            }
            None => None,
        };
        let client = match r.primary_addr {
            Some(addr) if files.ca.is_some() => {
                Some((addr, client_config(&files).map_err(ChannelError::from)?))
            }
            Some(addr) => {
                tracing::warn!(primary_addr = %addr, "primary_addr ignored: verifying the primary needs tls_ca; bulk resyncs use UDP");
                None
            }
            None => None,
        };
        if server_tls.is_none() && client.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(ChannelLink {
            opts: ChannelOptions::default(),
            node,
            listen: r.listen_addr.filter(|_| server_tls.is_some()),
            server_tls,
            client,
            mutual: files.mutual,
            fallbacks: AtomicU64::new(0),
            installed: AtomicU64::new(0),
            report: Mutex::new(Report::default()),
        })))
    }

    /// Whether bulk resyncs go over the channel.
    pub fn is_client(&self) -> bool {
        self.client.is_some()
    }

    /// Binds `listen_addr` (errors stop the agent, like any listener) and serves the
    /// entries this node owns until the returned task is aborted.
    pub async fn serve(
        self: &Arc<Self>,
        replica: Arc<ReplicaSet>,
        sync_peers: Vec<IpAddr>,
        filters: Vec<ha_common::FilterRule>,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, AgentError> {
        let (Some(addr), Some(tls)) = (self.listen, self.server_tls.clone()) else {
            return Ok(None);
        };
        let server = ChannelServer::bind(addr, tls, self.node, self.opts.clone()).await?;
        if let Ok(mut r) = self.report.lock() {
            r.listening = Some(server.local_addr());
        }
        let source = Arc::new(move |peer: PeerInfo| {
            let (replica, sync_peers, filters) =
                (replica.clone(), sync_peers.clone(), filters.clone());
            async move { owned_table(peer, replica, sync_peers, filters).await }
        });
        Ok(Some(tokio::spawn(server.run(source))))
    }

    /// One bulk resync over the channel as request `request_id`: every batch installed
    /// by the ingress thread, then the sync marked complete there. The caller falls
    /// back to UDP on error (see [`Self::failed`]).
    pub async fn resync(
        &self,
        request_id: u32,
        ingress: &Barrier,
    ) -> Result<(u64, Duration), LinkError> {
        let Some((addr, tls)) = &self.client else {
            return Err(LinkError::NotAccepted("no primary_addr".into()));
        };
        let started = Instant::now();
        let mut client = ChannelClient::connect(*addr, tls, self.node, self.opts.clone()).await?;
        let from = client.remote_node();
        let mut r = client.resync().await?;
        // One batch installing while the next is read: bounded memory, both sides busy.
        let mut pending: Option<tokio::sync::oneshot::Receiver<()>> = None;
        while let Some(entries) = r.next_batch().await? {
            if let Some(ack) = pending.take() {
                ack.await.map_err(|_| LinkError::IngressGone)?;
            }
            let (done, ack) = tokio::sync::oneshot::channel();
            send(ingress, IngressCmd::ChannelBatch { entries, done })?;
            pending = Some(ack);
        }
        if let Some(ack) = pending.take() {
            ack.await.map_err(|_| LinkError::IngressGone)?;
        }
        let records = r.received();
        let (reply, answer) = tokio::sync::oneshot::channel();
        send(
            ingress,
            IngressCmd::ChannelDone {
                request_id,
                records,
                from,
                reply,
            },
        )?;
        answer
            .await
            .map_err(|_| LinkError::IngressGone)?
            .map_err(LinkError::NotAccepted)?;
        client.close().await;
        let elapsed = started.elapsed();
        self.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            primary_addr = %addr,
            entries = records,
            ms = elapsed.as_millis() as u64,
            "resync: the primary's table arrived over the TLS channel and is installed"
        );
        if let Ok(mut rep) = self.report.lock() {
            rep.last_resync = Some(LastResync {
                from: *addr,
                entries: records,
                ms: elapsed.as_millis() as u64,
                unix: unix_now(),
            });
            rep.last_failure = None;
        }
        Ok((records, elapsed))
    }

    /// Records a failed channel resync (the caller falls back to UDP): counted, shown
    /// in status, logged as a warning (a repeated identical failure at most once a
    /// minute).
    pub fn failed(&self, e: &LinkError) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let addr = self.client.as_ref().map(|(a, _)| a.to_string());
        let addr = addr.as_deref().unwrap_or("-");
        let text = e.to_string();
        let now = Instant::now();
        let mut warn = true;
        if let Ok(mut rep) = self.report.lock() {
            warn = !rep
                .warned
                .as_ref()
                .is_some_and(|(t, at)| *t == text && now.duration_since(*at) < WARN_EVERY);
            if warn {
                rep.warned = Some((text.clone(), now));
            }
            rep.last_error = Some((text.clone(), unix_now()));
            rep.last_failure = Some(now);
        }
        if warn {
            tracing::warn!(
                primary_addr = addr,
                reason = %text,
                "resync over the TLS channel failed; falling back to the UDP resync request"
            );
        } else {
            tracing::debug!(primary_addr = addr, reason = %text, "resync over the TLS channel failed again; UDP fallback");
        }
    }

    /// Whether a retry of an outstanding request should try the channel again.
    pub fn retry_channel(&self) -> bool {
        self.report
            .lock()
            .ok()
            .and_then(|r| r.last_failure)
            .is_none_or(|at| at.elapsed() >= RETRY_CHANNEL_AFTER)
    }

    /// The channel's counters on the metrics board, every second.
    pub async fn publish(self: Arc<Self>, board: Board) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            board.publish("channel", self.samples());
        }
    }

    fn samples(&self) -> Vec<Sample> {
        let mut s = self.opts.stats.samples();
        s.push(Sample::counter(
            "channel_resync_fallbacks",
            "Bulk resyncs over the channel that failed and fell back to the UDP request",
            self.fallbacks.load(Ordering::Relaxed),
        ));
        s.push(Sample::counter(
            "channel_resyncs_installed",
            "Bulk resyncs received over the channel and installed (the table counted as in sync)",
            self.installed.load(Ordering::Relaxed),
        ));
        s
    }

    pub fn stats(&self) -> &ChannelStats {
        &self.opts.stats
    }

    /// The `channel` object of `hasync status`.
    pub fn status(&self) -> serde_json::Value {
        let c = self.opts.stats.snapshot();
        let Ok(rep) = self.report.lock() else {
            return serde_json::Value::Null;
        };
        json!({
            "listening": rep.listening.map(|a| a.to_string()),
            "mutual": self.mutual,
            "primary_addr": self.client.as_ref().map(|(a, _)| a.to_string()),
            "connections": c.connections,
            "refused": c.refused_total(),
            "resyncs_served": c.resyncs_served,
            "resyncs_installed": self.installed.load(Ordering::Relaxed),
            "fallbacks": self.fallbacks.load(Ordering::Relaxed),
            "bytes_sent": c.bytes_sent,
            "bytes_received": c.bytes_received,
            "last_resync": rep.last_resync.as_ref().map(|l| json!({
                "via": "tls",
                "from": l.from.to_string(),
                "entries": l.entries,
                "ms": l.ms,
                "unix": l.unix,
            })),
            "last_error": rep.last_error.as_ref().map(|(m, t)| json!({ "message": m, "unix": t })),
        })
    }
}

fn send(ingress: &Barrier, cmd: IngressCmd) -> Result<(), LinkError> {
    ingress.tx.send(cmd).map_err(|_| LinkError::IngressGone)?;
    let _ = ingress.waker.wake();
    Ok(())
}

/// What this node owns, as the UDP bulk resync serves it. Entries found at start that
/// are still unclaimed are left out (a resync only adds, so the peer loses nothing);
/// waiting for them to settle could wait for the peer, which may wait for us.
async fn owned_table(
    peer: PeerInfo,
    replica: Arc<ReplicaSet>,
    sync_peers: Vec<IpAddr>,
    filters: Vec<ha_common::FilterRule>,
) -> Result<Vec<crate::conntrack::Entry>, String> {
    let dumped = tokio::task::spawn_blocking(move || {
        crate::kernel::ctnetlink::dump(None)
            .map(|all| resync::owned(all, &sync_peers, &replica, &filters))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("the dump task failed: {e}"))?;
    if let Ok(entries) = &dumped {
        tracing::info!(
            peer = %peer.addr,
            node = peer.node,
            subject = peer.subject.as_deref().unwrap_or("-"),
            entries = entries.len(),
            "resync: serving our table over the TLS channel"
        );
    }
    dumped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        crate::config::parse(
            &format!(
                "replication {{\n mode = \"replica\"\n peer_addr = \"10.250.0.1\"\n secret_key = \"0123456789\"\n{extra}\
                 ha {{\n conntrack_sync {{\n enabled = true\n }}\n }}\n}}\n"
            ),
            "t.hcl",
        )
        .unwrap()
    }

    #[test]
    fn no_channel_without_addresses_or_tls() {
        assert!(ChannelLink::from_config(&cfg(""), 1).unwrap().is_none());
        // An address but no TLS: the channel is TLS only, bulk resyncs stay on UDP.
        let c = cfg(" primary_addr = \"10.250.0.1:9000\"\n");
        assert!(ChannelLink::from_config(&c, 1).unwrap().is_none());
        let mut off = c.clone();
        off.replication.ha.conntrack_sync.enabled = false;
        assert!(ChannelLink::from_config(&off, 1).unwrap().is_none());
    }

    #[test]
    fn unreadable_tls_files_stop_the_agent() {
        let c = cfg(" primary_addr = \"10.250.0.1:9000\"\n tls_ca = \"/nonexistent/ca.pem\"\n");
        let err = ChannelLink::from_config(&c, 1).err().expect("an error");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
