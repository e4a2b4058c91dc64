//! The channel's server side (the primary): accept, authenticate, serve bulk resyncs.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    ChannelError, ChannelOptions, PeerInfo, TableSource,
    frame::{FrameError, VERSION},
    io::{Framed, ReadError},
    message::{self, ErrorCode, Hello, Message},
    stats::ChannelStats,
    tls::{self, Refusal},
};

/// How long a closing connection may take to deliver its ERROR and close_notify.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The primary's end of the channel: a bound listener, ready to [`run`](Self::run).
pub struct ChannelServer {
    listener: TcpListener,
    local: SocketAddr,
    acceptor: TlsAcceptor,
    node: u32,
    opts: ChannelOptions,
}

impl ChannelServer {
    /// Binds `addr`. `tls` from [`super::server_config`]; `node` is announced in HELLO.
    pub async fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        node: u32,
        opts: ChannelOptions,
    ) -> Result<ChannelServer, ChannelError> {
        let bind_err = |source| ChannelError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        tracing::info!(%local, "replication channel listening");
        Ok(ChannelServer {
            listener,
            local,
            acceptor: TlsAcceptor::from(tls),
            node,
            opts,
        })
    }

    /// The bound address (the port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> Arc<ChannelStats> {
        self.opts.stats.clone()
    }

    /// Accepts connections until the task is dropped or aborted (which also ends every
    /// connection it started). Each connection runs in its own task; accept errors
    /// (EMFILE, ...) are logged and retried.
    pub async fn run<T: TableSource>(self, source: Arc<T>) {
        let ctx = Arc::new(Ctx {
            acceptor: self.acceptor,
            node: self.node,
            dumps: Semaphore::new(self.opts.max_concurrent_resyncs.max(1)),
            slots: Arc::new(Semaphore::new(self.opts.max_connections.max(1))),
            pending: Arc::new(Pending::new(
                self.opts.max_handshakes.max(1),
                self.opts.max_handshakes_per_ip.max(1),
            )),
            opts: self.opts,
            source,
        });
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        ctx.opts.stats.connection();
                        let ticket = match ctx.pending.enter(peer.ip()) {
                            Ok(t) => t,
                            Err((what, max)) => {
                                ctx.opts.stats.over_limit(peer, what, max);
                                drop(tcp);
                                continue;
                            }
                        };
                        let ctx = ctx.clone();
                        tasks.spawn(async move { serve(&ctx, tcp, peer, ticket).await });
                    }
                    Err(e) => {
                        ctx.opts.stats.accept_failed(&e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
}

/// Handshakes in progress, in all and per source address.
struct Pending {
    max: usize,
    per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One handshake in progress; leaves [`Pending`] when dropped.
struct Ticket {
    pending: Arc<Pending>,
    ip: IpAddr,
}

impl Pending {
    fn new(max: usize, per_ip: usize) -> Pending {
        Pending {
            max,
            per_ip,
            state: Mutex::new((0, HashMap::new())),
        }
    }

    /// A ticket, or which limit is reached and its value.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, (&'static str, usize)> {
        let all = ("handshakes in progress", self.max);
        let mut g = self.state.lock().map_err(|_| all)?;
        let (total, by_ip) = &mut *g;
        if *total >= self.max {
            return Err(all);
        }
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(("handshakes in progress from one address", self.per_ip));
        }
        *n += 1;
        *total += 1;
        Ok(Ticket {
            pending: self.clone(),
            ip,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut g) = self.pending.state.lock() {
            let (total, by_ip) = &mut *g;
            *total = total.saturating_sub(1);
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
    }
}

struct Ctx<T> {
    acceptor: TlsAcceptor,
    node: u32,
    opts: ChannelOptions,
    dumps: Semaphore,
    /// Authenticated connections.
    slots: Arc<Semaphore>,
    pending: Arc<Pending>,
    source: Arc<T>,
}

/// Keeps the `active` gauge right however the connection ends.
struct Active<'a>(&'a ChannelStats);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.closed();
    }
}

pub(crate) fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka);
}

async fn serve<T: TableSource>(ctx: &Ctx<T>, tcp: TcpStream, peer: SocketAddr, ticket: Ticket) {
    let stats = &ctx.opts.stats;
    tune(&tcp);
    let hs = ctx.opts.handshake_timeout;
    let accepted = tokio::time::timeout(hs, ctx.acceptor.accept(tcp)).await;
    drop(ticket);
    let tls = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats.refused(peer, tls::classify(&e), &e);
            return;
        }
        Err(_) => {
            stats.refused(
                peer,
                Refusal::Timeout,
                &format_args!("no handshake within {hs:?}"),
            );
            return;
        }
    };
    stats.handshake();
    let mut conn = Framed::new(tls, peer, stats.clone());
    let Ok(_slot) = ctx.slots.clone().try_acquire_owned() else {
        stats.over_limit(peer, "connections", ctx.opts.max_connections);
        let busy = Message::Error {
            code: ErrorCode::Busy as u16,
            text: format!(
                "too many connections (at most {})",
                ctx.opts.max_connections
            ),
        };
        conn.close_with(Some(busy), CLOSE_GRACE).await;
        return;
    };
    stats.opened();
    let _active = Active(stats);
    let subject = tls::peer_subject(conn.get_ref().get_ref().1.peer_certificates());
    let result = converse(ctx, &mut conn, peer, subject).await;
    let error = match result {
        Ok(()) => None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "replication channel: connection ended");
            error_for(&e)
        }
    };
    conn.close_with(error, CLOSE_GRACE).await;
}

/// The ERROR to send the peer before closing, for errors it caused.
fn error_for(e: &ChannelError) -> Option<Message> {
    let (code, text) = match e {
        ChannelError::Frame {
            source: FrameError::UnsupportedVersion(_),
            ..
        } => (ErrorCode::Version, e.to_string()),
        ChannelError::Frame { source, .. } => (ErrorCode::Protocol, source.to_string()),
        ChannelError::Remote { .. } | ChannelError::Closed { .. } | ChannelError::Io { .. } => {
            return None;
        }
        ChannelError::Timeout { op, .. } => (ErrorCode::Protocol, format!("{op} timed out")),
        _ => return None,
    };
    Some(Message::Error {
        code: code as u16,
        text,
    })
}

fn unexpected(
    peer: SocketAddr,
    stats: &ChannelStats,
    m: &Message,
    why: &'static str,
) -> ChannelError {
    let e = FrameError::Unexpected { got: m.name(), why };
    stats.frame_error(peer, &e);
    ChannelError::Frame { peer, source: e }
}

type Conn = Framed<TlsStream<TcpStream>>;

async fn converse<T: TableSource>(
    ctx: &Ctx<T>,
    conn: &mut Conn,
    peer: SocketAddr,
    subject: Option<String>,
) -> Result<(), ChannelError> {
    let stats = &ctx.opts.stats;
    let io_timeout = ctx.opts.io_timeout;
    let hello = match conn.read(io_timeout).await {
        Ok(Message::Hello(h)) => h,
        Ok(m) => {
            return Err(unexpected(
                peer,
                stats,
                &m,
                "the first message must be HELLO",
            ));
        }
        Err(e) => return Err(e.into_channel(peer, stats, "waiting for HELLO", io_timeout)),
    };
    let ours = Message::Hello(Hello {
        max_version: VERSION,
        node: ctx.node,
    });
    conn.write(&ours, io_timeout, "sending HELLO").await?;
    let info = PeerInfo {
        addr: peer,
        node: hello.node,
        subject,
    };
    if hello.node == ctx.node {
        tracing::warn!(%peer, node = hello.node, "replication channel: the peer uses this node's id");
    }
    tracing::info!(
        %peer,
        node = info.node,
        subject = info.subject.as_deref().unwrap_or("-"),
        "replication channel: peer connected"
    );
    loop {
        let idle = ctx.opts.idle_timeout;
        match conn.read_after(idle, io_timeout).await {
            Ok(Message::Ping(n)) => {
                conn.write(&Message::Pong(n), io_timeout, "sending PONG")
                    .await?
            }
            Ok(Message::ResyncRequest { request }) => {
                if let Err(e) = serve_resync(ctx, conn, &info, request).await {
                    stats.resync_failed();
                    tracing::warn!(%peer, node = info.node, error = %e, "replication channel: resync not served");
                    return Err(e);
                }
            }
            Ok(Message::Error { code, text }) => {
                tracing::info!(%peer, code, text, "replication channel: peer reported an error");
                return Err(ChannelError::Remote { peer, code, text });
            }
            Ok(m) => return Err(unexpected(peer, stats, &m, "not a request")),
            Err(ReadError::Closed) => {
                tracing::info!(%peer, node = info.node, "replication channel: peer disconnected");
                return Ok(());
            }
            Err(e) => return Err(e.into_channel(peer, stats, "idle connection", idle)),
        }
    }
}

async fn serve_resync<T: TableSource>(
    ctx: &Ctx<T>,
    conn: &mut Conn,
    peer: &PeerInfo,
    request: u32,
) -> Result<(), ChannelError> {
    let started = Instant::now();
    let opts = &ctx.opts;
    let dump = async {
        let _permit = ctx.dumps.acquire().await;
        ctx.source.table(peer.clone()).await
    };
    let table = match tokio::time::timeout(opts.dump_timeout, dump).await {
        Ok(Ok(t)) => t,
        Ok(Err(reason)) => {
            let text = format!("the table could not be dumped: {reason}");
            return refuse(conn, peer.addr, text).await;
        }
        Err(_) => {
            let text = format!("the table dump took longer than {:?}", opts.dump_timeout);
            return refuse(conn, peer.addr, text).await;
        }
    };
    let dumped = started.elapsed();
    let mut rest = &table[..];
    let mut out = Vec::with_capacity(opts.batch_bytes + 64);
    let (mut sent, mut skipped) = (0u64, 0u64);
    while !rest.is_empty() {
        out.clear();
        let packed = message::encode_entries(request, rest, opts.batch_bytes, &mut out).map_err(
            |source| ChannelError::Frame {
                peer: peer.addr,
                source,
            },
        )?;
        rest = &rest[packed.used..];
        sent += (packed.used - packed.skipped) as u64;
        skipped += packed.skipped as u64;
        if !out.is_empty() {
            conn.write_raw(&out, opts.io_timeout, "streaming the table")
                .await?;
        }
    }
    let done = Message::ResyncDone {
        request,
        total: sent,
    };
    conn.write(&done, opts.io_timeout, "sending RESYNC_DONE")
        .await?;
    opts.stats.served(sent, skipped);
    if skipped > 0 {
        tracing::warn!(peer = %peer.addr, skipped, "replication channel: entries the encoder refused were not sent");
    }
    tracing::info!(
        peer = %peer.addr,
        node = peer.node,
        request,
        entries = sent,
        dump_ms = dumped.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "replication channel: resync served"
    );
    Ok(())
}

/// Tells the peer its resync cannot be served (the connection is then closed).
async fn refuse(conn: &mut Conn, peer: SocketAddr, text: String) -> Result<(), ChannelError> {
    let m = Message::Error {
        code: ErrorCode::Unavailable as u16,
        text: text.clone(),
    };
    conn.write(&m, Duration::from_secs(5), "sending ERROR")
        .await?;
    Err(ChannelError::Remote {
        peer,
        code: ErrorCode::Unavailable as u16,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_limits_in_all_and_per_address() {
        let p = Arc::new(Pending::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t1 = p.enter(a).unwrap();
        let t2 = p.enter(a).unwrap();
        assert_eq!(p.enter(a).err().map(|e| e.1), Some(2), "per address");
        let t3 = p.enter(b).unwrap();
        assert_eq!(p.enter(b).err().map(|e| e.1), Some(3), "in all");
        drop(t1);
        let t4 = p.enter(b).unwrap();
        drop((t2, t3, t4));
        let g = p.state.lock().unwrap();
        assert_eq!((g.0, g.1.len()), (0, 0), "nothing left behind");
    }
}
