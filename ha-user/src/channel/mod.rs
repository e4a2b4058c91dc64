//! The replication channel: TCP + TLS between the nodes, for bulk resync and control.
//!
//! ```text
//! replica (ChannelClient)                       primary (ChannelServer)
//!   TCP connect primary_addr  ───────────────▶  accept on listen_addr
//!   TLS 1.3 (verify the primary's cert;  ◀────▶ TLS 1.3 (present tls_cert; with
//!            present ours)                          tls_mutual require ours)
//!   HELLO(node)               ───────────────▶
//!                             ◀───────────────  HELLO(node)
//!   RESYNC_REQUEST(id)        ───────────────▶  TableSource::table() (ctnetlink dump)
//!                             ◀───────────────  ENTRIES(id, batch) …  (≤ batch_bytes)
//!                             ◀───────────────  RESYNC_DONE(id, total)
//!   PING(n) / PONG(n)         ◀──────────────▶  keepalive
//! ```
//!
//! Why a TCP channel for the bulk resync, next to the UDP sync stream: a resync moves
//! the whole table (hundreds of thousands of entries) at once. Over UDP that needs
//! pacing (so the receiver's socket buffer does not overflow) and NACK-driven repair
//! (so a lost datagram does not leave a hole); over TCP the transfer is lossless and
//! flow-controlled by the kernel: the primary writes as fast as the replica reads and
//! installs, and a completed RESYNC_DONE with a matching count means the replica has
//! every entry. TLS adds what the pre-shared key of the UDP path cannot: each node
//! proves its identity with a certificate from the cluster's own CA
//! (`hasync cert init|issue`), so a host that learnt the secret key still cannot
//! pose as a node or pull the table.
//!
//! Robustness: every frame is bounded ([`frame::MAX_PAYLOAD`]) and checked before its
//! payload is read; a bad frame, an unexpected message, an idle or slow peer closes
//! that connection only, counted in [`ChannelStats`] and logged with a rate limit.
//! Handshakes run in their own tasks under a timeout and the number of open
//! connections is capped, so nothing a peer sends can block the accept loop or the
//! agent.

pub mod client;
pub mod frame;
mod io;
pub mod message;
pub mod server;
pub mod stats;
pub mod tls;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

pub use client::{ChannelClient, Resync, ResyncSummary};
pub use frame::{FrameError, FrameErrorKind};
pub use server::ChannelServer;
pub use stats::{ChannelCounters, ChannelStats};
pub use tls::{ClientTls, Refusal, TlsError, TlsFiles, client_config, server_config};

use crate::conntrack::Entry;

/// Timeouts and limits of the channel, plus the counters it updates.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// TCP connect plus TLS handshake.
    pub handshake_timeout: Duration,
    /// Reading or writing one frame once it is due.
    pub io_timeout: Duration,
    /// The server closes connections that send no request for this long.
    pub idle_timeout: Duration,
    /// How long the table may take to produce (the server) or to start arriving
    /// (the client, on top of `io_timeout`).
    pub dump_timeout: Duration,
    /// Authenticated connections the server keeps open at once; more are told
    /// ERROR (busy) and closed.
    pub max_connections: usize,
    /// TLS handshakes in progress at once; connections beyond are closed on accept.
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one IP address at once (so one host cannot
    /// take every handshake slot).
    pub max_handshakes_per_ip: usize,
    /// Table dumps the server runs at once; further requests wait.
    pub max_concurrent_resyncs: usize,
    /// ENTRIES payload size the server aims for.
    pub batch_bytes: usize,
    /// Shared counters (clone the options to share them between endpoints).
    pub stats: Arc<ChannelStats>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            handshake_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            dump_timeout: Duration::from_secs(120),
            max_connections: 16,
            max_handshakes: 64,
            max_handshakes_per_ip: 4,
            max_concurrent_resyncs: 2,
            batch_bytes: 256 * 1024,
            stats: Arc::new(ChannelStats::default()),
        }
    }
}

/// The authenticated peer of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// From its HELLO.
    pub node: u32,
    /// Subject of its certificate (`CN=node-b`), when it presented one.
    pub subject: Option<String>,
}

/// What the server streams when a peer asks for a bulk resync.
///
/// Implemented for any `Fn(PeerInfo) -> impl Future<Output = Result<Vec<Entry>,
/// String>>`. A blocking dump (ctnetlink) belongs in `tokio::task::spawn_blocking`.
pub trait TableSource: Send + Sync + 'static {
    /// This node's whole table. An error is sent to the peer as ERROR (unavailable)
    /// and logged.
    fn table(&self, peer: PeerInfo) -> impl Future<Output = Result<Vec<Entry>, String>> + Send;
}

impl<F, Fut> TableSource for F
where
    F: Fn(PeerInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Entry>, String>> + Send,
{
    fn table(&self, peer: PeerInfo) -> impl Future<Output = Result<Vec<Entry>, String>> + Send {
        self(peer)
    }
}

/// Why a channel operation failed. Each names the peer and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("binding the replication channel to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to the replication channel at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("replication channel TLS with {peer}: {}: {detail}", reason.describe())]
    Handshake {
        peer: SocketAddr,
        reason: Refusal,
        detail: String,
    },
    #[error("replication channel {peer}: {op} timed out after {after:?}")]
    Timeout {
        peer: SocketAddr,
        op: &'static str,
        after: Duration,
    },
    #[error("replication channel {peer}: {source}")]
    Frame {
        peer: SocketAddr,
        source: FrameError,
    },
    #[error("replication channel {peer}: {op}: {source}")]
    Io {
        peer: SocketAddr,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("replication channel {peer}: connection closed {during}")]
    Closed {
        peer: SocketAddr,
        during: &'static str,
    },
    #[error("replication channel {peer} reported error {code}: {text}")]
    Remote {
        peer: SocketAddr,
        code: u16,
        text: String,
    },
    #[error(
        "replication channel {peer}: resync {request} announced {total} entries but {received} arrived"
    )]
    CountMismatch {
        peer: SocketAddr,
        request: u32,
        total: u64,
        received: u64,
    },
    #[error("replication channel {peer}: the connection failed earlier; reconnect")]
    Broken { peer: SocketAddr },
}
