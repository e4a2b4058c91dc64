//! Frames over a byte stream: bounded reads and writes, each under a deadline.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    ChannelError,
    frame::{self, Frame, FrameError, HEADER_LEN},
    message::Message,
    stats::ChannelStats,
    tls,
};

/// Why no message was read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    Timeout,
    Frame(FrameError),
    Io(io::Error),
}

impl ReadError {
    /// The error a caller reports, counting frame errors (and logging them, limited).
    pub(crate) fn into_channel(
        self,
        peer: SocketAddr,
        stats: &ChannelStats,
        op: &'static str,
        after: Duration,
    ) -> ChannelError {
        match self {
            ReadError::Closed => ChannelError::Closed { peer, during: op },
            ReadError::Timeout => {
                stats.timeout(peer, op);
                ChannelError::Timeout { peer, op, after }
            }
            ReadError::Frame(e) => {
                stats.frame_error(peer, &e);
                ChannelError::Frame { peer, source: e }
            }
            ReadError::Io(e) if tls::rustls_error(&e).is_some() => {
                let reason = tls::classify(&e);
                stats.refused(peer, reason, &e);
                ChannelError::Handshake {
                    peer,
                    reason,
                    detail: e.to_string(),
                }
            }
            ReadError::Io(source) => ChannelError::Io { peer, op, source },
        }
    }
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
async fn read_full<S: AsyncRead + Unpin>(io: &mut S, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match io.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            // A peer that closes without TLS close_notify: the end of the stream.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub(crate) struct Framed<S> {
    io: S,
    peer: SocketAddr,
    stats: Arc<ChannelStats>,
    payload: Vec<u8>,
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub(crate) fn new(io: S, peer: SocketAddr, stats: Arc<ChannelStats>) -> Framed<S> {
        Framed {
            io,
            peer,
            stats,
            payload: Vec::new(),
            out: Vec::new(),
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    /// The next message, within `limit`.
    pub(crate) async fn read(&mut self, limit: Duration) -> Result<Message, ReadError> {
        self.read_after(limit, limit).await
    }

    /// The next message: its first byte within `idle`, the rest of it within `limit`
    /// (so a peer cannot hold the connection by trickling a frame).
    pub(crate) async fn read_after(
        &mut self,
        idle: Duration,
        limit: Duration,
    ) -> Result<Message, ReadError> {
        let mut h = [0u8; HEADER_LEN];
        let first = match tokio::time::timeout(idle, self.io.read(&mut h[..1])).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Err(_) => return Err(ReadError::Timeout),
        };
        if first == 0 {
            return Err(ReadError::Closed);
        }
        match tokio::time::timeout(limit, self.read_rest(h)).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Reads the rest of the frame whose first byte is `h[0]`.
    async fn read_rest(&mut self, mut h: [u8; HEADER_LEN]) -> Result<Message, ReadError> {
        // Garbage is refused at its first byte.
        frame::parse_header(&h[..1]).map_err(ReadError::Frame)?;
        let n = 1 + read_full(&mut self.io, &mut h[1..])
            .await
            .map_err(ReadError::Io)?;
        let header = match frame::parse_header(&h[..n]).map_err(ReadError::Frame)? {
            Some(h) => h,
            None => {
                return Err(ReadError::Frame(FrameError::Truncated {
                    have: n,
                    need: HEADER_LEN,
                }));
            }
        };
        // `len` is at most MAX_PAYLOAD: checked by parse_header.
        self.payload.clear();
        self.payload.resize(header.len, 0);
        let m = read_full(&mut self.io, &mut self.payload)
            .await
            .map_err(ReadError::Io)?;
        if m < header.len {
            return Err(ReadError::Frame(FrameError::Truncated {
                have: HEADER_LEN + m,
                need: HEADER_LEN + header.len,
            }));
        }
        let msg = Message::decode(&Frame {
            kind: header.kind,
            payload: &self.payload,
        })
        .map_err(ReadError::Frame)?;
        self.stats.received(HEADER_LEN + header.len);
        Ok(msg)
    }

    /// Writes one message, within `limit`.
    pub(crate) async fn write(
        &mut self,
        m: &Message,
        limit: Duration,
        op: &'static str,
    ) -> Result<(), ChannelError> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let r = match m.encode(&mut out) {
            Ok(()) => self.write_raw(&out, limit, op).await,
            Err(source) => Err(ChannelError::Frame {
                peer: self.peer,
                source,
            }),
        };
        self.out = out;
        r
    }

    /// Writes already framed bytes, within `limit`.
    pub(crate) async fn write_raw(
        &mut self,
        bytes: &[u8],
        limit: Duration,
        op: &'static str,
    ) -> Result<(), ChannelError> {
        let io = &mut self.io;
        let w = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        match tokio::time::timeout(limit, w).await {
            Ok(Ok(())) => {
                self.stats.sent(bytes.len());
                Ok(())
            }
            Ok(Err(source)) => Err(ChannelError::Io {
                peer: self.peer,
                op,
                source,
            }),
            Err(_) => {
                self.stats.timeout(self.peer, op);
                Err(ChannelError::Timeout {
                    peer: self.peer,
                    op,
                    after: limit,
                })
            }
        }
    }

    /// Best effort: an ERROR for the peer, then TLS close_notify, within `limit`.
    pub(crate) async fn close_with(&mut self, error: Option<Message>, limit: Duration) {
        let io = &mut self.io;
        let mut out = Vec::new();
        if let Some(m) = error {
            let _ = m.encode(&mut out);
        }
        let _ = tokio::time::timeout(limit, async {
            if !out.is_empty() {
                io.write_all(&out).await?;
            }
            io.shutdown().await
        })
        .await;
    }
}
