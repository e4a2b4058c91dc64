//! The channel's client side (the replica): connect, authenticate, pull the table.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{
    ChannelError, ChannelOptions,
    frame::{FrameError, VERSION},
    io::Framed,
    message::{Hello, Message},
    server::tune,
    tls::{self, ClientTls, Refusal},
};
use crate::conntrack::Entry;

/// An authenticated connection to the primary's channel.
pub struct ChannelClient {
    conn: Framed<TlsStream<TcpStream>>,
    peer: SocketAddr,
    remote: Hello,
    subject: Option<String>,
    opts: ChannelOptions,
    next_request: u32,
    /// A request was abandoned mid-stream or failed: the stream position is unknown.
    broken: bool,
}

/// How a completed resync went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncSummary {
    /// Entries received (equal to what the primary announced in RESYNC_DONE).
    pub entries: u64,
    /// ENTRIES frames received.
    pub batches: u64,
    pub elapsed: Duration,
}

impl ChannelClient {
    /// Connects to `addr`, completes TLS (verifying the server's certificate against the
    /// CA and the dialled IP, or [`ClientTls::server_name`]) and exchanges HELLO, so a
    /// primary that refuses this node's certificate is reported here, as
    /// [`ChannelError::Handshake`] with [`Refusal::PeerRefused`].
    pub async fn connect(
        addr: SocketAddr,
        tls: &ClientTls,
        node: u32,
        opts: ChannelOptions,
    ) -> Result<ChannelClient, ChannelError> {
        let stats = opts.stats.clone();
        let hs = opts.handshake_timeout;
        let tcp = match tokio::time::timeout(hs, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => return Err(ChannelError::Connect { addr, source }),
            Err(_) => {
                return Err(ChannelError::Timeout {
                    peer: addr,
                    op: "connecting",
                    after: hs,
                });
            }
        };
        tune(&tcp);
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let connector = TlsConnector::from(tls.config.clone());
        let stream = match tokio::time::timeout(hs, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = tls::classify(&e);
                stats.refused(addr, reason, &e);
                return Err(ChannelError::Handshake {
                    peer: addr,
                    reason,
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                stats.refused(addr, Refusal::Timeout, &"no handshake in time");
                return Err(ChannelError::Handshake {
                    peer: addr,
                    reason: Refusal::Timeout,
                    detail: format!("no handshake within {hs:?}"),
                });
            }
        };
        let subject = tls::peer_subject(stream.get_ref().1.peer_certificates());
        let mut conn = Framed::new(stream, addr, stats.clone());
        let hello = Message::Hello(Hello {
            max_version: VERSION,
            node,
        });
        // TLS 1.3: the server checks our certificate after our side of the handshake is
        // done, so its refusal arrives as an alert on this first exchange.
        let io_timeout = opts.io_timeout;
        conn.write(&hello, io_timeout, "sending HELLO").await?;
        let remote = match conn.read(io_timeout).await {
            Ok(Message::Hello(h)) => h,
            Ok(Message::Error { code, text }) => {
                return Err(ChannelError::Remote {
                    peer: addr,
                    code,
                    text,
                });
            }
            Ok(m) => {
                let e = FrameError::Unexpected {
                    got: m.name(),
                    why: "the first message must be HELLO",
                };
                stats.frame_error(addr, &e);
                return Err(ChannelError::Frame {
                    peer: addr,
                    source: e,
                });
            }
            Err(e) => return Err(e.into_channel(addr, &stats, "waiting for HELLO", io_timeout)),
        };
        stats.handshake();
        tracing::info!(
            peer = %addr,
            node = remote.node,
            subject = subject.as_deref().unwrap_or("-"),
            "replication channel: connected to the primary"
        );
        Ok(ChannelClient {
            conn,
            peer: addr,
            remote,
            subject,
            opts,
            next_request: 1,
            broken: false,
        })
    }

    /// The primary's node id (from its HELLO).
    pub fn remote_node(&self) -> u32 {
        self.remote.node
    }

    /// The primary's certificate subject (`CN=node-a`).
    pub fn remote_subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the connection is still usable (no failed or abandoned request).
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    fn check(&self) -> Result<(), ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken { peer: self.peer });
        }
        Ok(())
    }

    /// A keepalive round trip; its duration.
    pub async fn ping(&mut self) -> Result<Duration, ChannelError> {
        self.check()?;
        let started = Instant::now();
        let nonce = u64::from(self.next_request) << 32 | 0x5049_4e47;
        self.next_request = self.next_request.wrapping_add(1);
        let t = self.opts.io_timeout;
        self.broken = true;
        self.conn
            .write(&Message::Ping(nonce), t, "sending PING")
            .await?;
        match self.conn.read(t).await {
            Ok(Message::Pong(n)) if n == nonce => {
                self.broken = false;
                Ok(started.elapsed())
            }
            Ok(m) => Err(self.unexpected(&m, "expected PONG")),
            Err(e) => Err(e.into_channel(self.peer, &self.opts.stats, "waiting for PONG", t)),
        }
    }

    fn unexpected(&self, m: &Message, why: &'static str) -> ChannelError {
        if let Message::Error { code, text } = m {
            return ChannelError::Remote {
                peer: self.peer,
                code: *code,
                text: text.clone(),
            };
        }
        let e = FrameError::Unexpected { got: m.name(), why };
        self.opts.stats.frame_error(self.peer, &e);
        ChannelError::Frame {
            peer: self.peer,
            source: e,
        }
    }

    /// Asks for the primary's whole table. Read the batches with
    /// [`Resync::next_batch`] until it returns `None`. Dropping the [`Resync`] before
    /// that leaves the connection unusable (reconnect).
    pub async fn resync(&mut self) -> Result<Resync<'_>, ChannelError> {
        self.check()?;
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        let t = self.opts.io_timeout;
        self.broken = true;
        self.conn
            .write(
                &Message::ResyncRequest { request },
                t,
                "sending RESYNC_REQUEST",
            )
            .await?;
        Ok(Resync {
            client: self,
            request,
            received: 0,
            batches: 0,
            total: None,
            started: Instant::now(),
        })
    }

    /// A whole resync, calling `batch` for every batch as it arrives (install it there;
    /// TCP holds the primary back while `batch` runs).
    pub async fn resync_with(
        &mut self,
        mut batch: impl FnMut(Vec<Entry>),
    ) -> Result<ResyncSummary, ChannelError> {
        let mut r = self.resync().await?;
        while let Some(entries) = r.next_batch().await? {
            batch(entries);
        }
        Ok(r.summary())
    }

    /// Closes the connection (TLS close_notify).
    pub async fn close(mut self) {
        self.conn.close_with(None, Duration::from_secs(2)).await;
    }
}

/// A bulk resync in progress.
pub struct Resync<'a> {
    client: &'a mut ChannelClient,
    request: u32,
    received: u64,
    batches: u64,
    total: Option<u64>,
    started: Instant,
}

impl Resync<'_> {
    /// The next batch of entries, or `None` once RESYNC_DONE arrived and its count
    /// matched. Any error ends the resync and the connection's usefulness.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Entry>>, ChannelError> {
        if self.total.is_some() {
            return Ok(None);
        }
        let r = self.next_inner().await;
        if r.is_err() {
            self.client.opts.stats.resync_failed();
        }
        r
    }

    async fn next_inner(&mut self) -> Result<Option<Vec<Entry>>, ChannelError> {
        let c = &mut *self.client;
        let opts = &c.opts;
        // The first batch waits for the primary's dump.
        let limit = if self.batches == 0 {
            opts.dump_timeout + opts.io_timeout
        } else {
            opts.io_timeout
        };
        let peer = c.peer;
        match c.conn.read(limit).await {
            Ok(Message::Entries { request, entries }) if request == self.request => {
                self.received += entries.len() as u64;
                self.batches += 1;
                opts.stats.entries_received(entries.len());
                Ok(Some(entries))
            }
            Ok(Message::ResyncDone { request, total }) if request == self.request => {
                if total != self.received {
                    return Err(ChannelError::CountMismatch {
                        peer,
                        request,
                        total,
                        received: self.received,
                    });
                }
                self.total = Some(total);
                c.broken = false;
                opts.stats.resync_received();
                tracing::info!(
                    %peer,
                    entries = total,
                    batches = self.batches,
                    ms = self.started.elapsed().as_millis() as u64,
                    "replication channel: resync received"
                );
                Ok(None)
            }
            Ok(m) => Err(c.unexpected(&m, "not part of the requested resync")),
            Err(e) => Err(e.into_channel(peer, &opts.stats, "receiving the table", limit)),
        }
    }

    /// Entries received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The primary's count, once RESYNC_DONE arrived.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub fn summary(&self) -> ResyncSummary {
        ResyncSummary {
            entries: self.received,
            batches: self.batches,
            elapsed: self.started.elapsed(),
        }
    }
}
