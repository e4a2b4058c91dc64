//! Channel counters (shared by every connection task, exported as metrics) and the
//! rate limiter for the channel's warning lines.

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crate::{metrics::Sample, sync::ratelimit::RateLimiter};

use super::{
    frame::{FrameError, FrameErrorKind},
    tls::Refusal,
};

/// Log keys: one per refusal reason, one per frame error kind, then the others.
const LOG_KEYS: usize = Refusal::COUNT + FrameErrorKind::COUNT + 3;
const LOG_TIMEOUT: usize = Refusal::COUNT + FrameErrorKind::COUNT;
const LOG_BUSY: usize = LOG_TIMEOUT + 1;
const LOG_ACCEPT: usize = LOG_TIMEOUT + 2;

/// Counters of one channel endpoint (server, client, or both sharing one).
#[derive(Debug)]
pub struct ChannelStats {
    connections: AtomicU64,
    over_limit: AtomicU64,
    handshakes: AtomicU64,
    refused: [AtomicU64; Refusal::COUNT],
    frame_errors: [AtomicU64; FrameErrorKind::COUNT],
    timeouts: AtomicU64,
    active: AtomicU64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    resyncs_served: AtomicU64,
    resync_failures: AtomicU64,
    entries_sent: AtomicU64,
    entries_skipped: AtomicU64,
    resyncs_received: AtomicU64,
    entries_received: AtomicU64,
    log: Mutex<RateLimiter<LOG_KEYS>>,
}

/// A snapshot of [`ChannelStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelCounters {
    /// TCP connections accepted by the server.
    pub connections: u64,
    /// Connections closed at once: too many handshakes in progress (in all, or from
    /// that address) or too many authenticated connections open.
    pub over_limit: u64,
    /// TLS handshakes completed (peer authenticated when `tls_mutual`).
    pub handshakes: u64,
    /// Handshakes refused, by [`Refusal`] (index with `as usize`).
    pub refused: [u64; Refusal::COUNT],
    /// Frames refused, by [`FrameErrorKind`].
    pub frame_errors: [u64; FrameErrorKind::COUNT],
    /// Connections closed because the peer was idle or too slow.
    pub timeouts: u64,
    /// Authenticated connections open now.
    pub active: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Bulk resyncs streamed to a peer to the end.
    pub resyncs_served: u64,
    /// Bulk resyncs that failed on either side (dump error, peer gone, bad data).
    pub resync_failures: u64,
    pub entries_sent: u64,
    /// Entries the record codec refused (not sent).
    pub entries_skipped: u64,
    /// Bulk resyncs received to the end (client).
    pub resyncs_received: u64,
    pub entries_received: u64,
}

impl ChannelCounters {
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize]
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }

    pub fn frame_errors(&self, k: FrameErrorKind) -> u64 {
        self.frame_errors[k as usize]
    }

    pub fn frame_errors_total(&self) -> u64 {
        self.frame_errors.iter().sum()
    }
}

impl Default for ChannelStats {
    fn default() -> Self {
        ChannelStats::new(Duration::from_secs(1))
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Relaxed);
}

impl ChannelStats {
    /// Counters with warnings limited to one line per reason per `log_interval`.
    pub fn new(log_interval: Duration) -> ChannelStats {
        ChannelStats {
            connections: AtomicU64::new(0),
            over_limit: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            frame_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            timeouts: AtomicU64::new(0),
            active: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            resyncs_served: AtomicU64::new(0),
            resync_failures: AtomicU64::new(0),
            entries_sent: AtomicU64::new(0),
            entries_skipped: AtomicU64::new(0),
            resyncs_received: AtomicU64::new(0),
            entries_received: AtomicU64::new(0),
            log: Mutex::new(RateLimiter::new(log_interval)),
        }
    }

    pub fn snapshot(&self) -> ChannelCounters {
        ChannelCounters {
            connections: get(&self.connections),
            over_limit: get(&self.over_limit),
            handshakes: get(&self.handshakes),
            refused: std::array::from_fn(|i| get(&self.refused[i])),
            frame_errors: std::array::from_fn(|i| get(&self.frame_errors[i])),
            timeouts: get(&self.timeouts),
            active: get(&self.active),
            frames_sent: get(&self.frames_sent),
            bytes_sent: get(&self.bytes_sent),
            frames_received: get(&self.frames_received),
            bytes_received: get(&self.bytes_received),
            resyncs_served: get(&self.resyncs_served),
            resync_failures: get(&self.resync_failures),
            entries_sent: get(&self.entries_sent),
            entries_skipped: get(&self.entries_skipped),
            resyncs_received: get(&self.resyncs_received),
            entries_received: get(&self.entries_received),
        }
    }

    /// The counters as metric samples (`hasync_channel_*`), for
    /// `Board::publish("channel", stats.samples())`.
    pub fn samples(&self) -> Vec<Sample> {
        let c = self.snapshot();
        let mut out = vec![
            Sample::counter(
                "channel_connections",
                "TCP connections accepted on the replication channel",
                c.connections,
            ),
            Sample::counter(
                "channel_over_limit",
                "Replication channel connections closed because too many were open or handshaking",
                c.over_limit,
            ),
            Sample::counter(
                "channel_handshakes",
                "Replication channel TLS handshakes completed",
                c.handshakes,
            ),
            Sample::counter(
                "channel_timeouts",
                "Replication channel connections closed for idleness or slowness",
                c.timeouts,
            ),
            Sample::gauge(
                "channel_active",
                "Authenticated replication channel connections open",
                c.active as f64,
            ),
            Sample::counter(
                "channel_frames_sent",
                "Replication channel frames sent",
                c.frames_sent,
            ),
            Sample::counter(
                "channel_bytes_sent",
                "Replication channel payload bytes sent",
                c.bytes_sent,
            ),
            Sample::counter(
                "channel_frames_received",
                "Replication channel frames received and accepted",
                c.frames_received,
            ),
            Sample::counter(
                "channel_bytes_received",
                "Replication channel bytes received in accepted frames",
                c.bytes_received,
            ),
            Sample::counter(
                "channel_resyncs_served",
                "Bulk resyncs streamed to a peer over the channel",
                c.resyncs_served,
            ),
            Sample::counter(
                "channel_resync_failures",
                "Bulk resyncs over the channel that failed",
                c.resync_failures,
            ),
            Sample::counter(
                "channel_entries_sent",
                "Entries sent in channel bulk resyncs",
                c.entries_sent,
            ),
            Sample::counter(
                "channel_entries_skipped",
                "Entries not sent in channel bulk resyncs (refused by the encoder)",
                c.entries_skipped,
            ),
            Sample::counter(
                "channel_resyncs_received",
                "Bulk resyncs received over the channel",
                c.resyncs_received,
            ),
            Sample::counter(
                "channel_entries_received",
                "Entries received in channel bulk resyncs",
                c.entries_received,
            ),
        ];
        for r in Refusal::ALL {
            out.push(
                Sample::counter(
                    "channel_refused",
                    "Replication channel TLS handshakes refused, by reason",
                    c.refused(r),
                )
                .label("reason", r.as_str()),
            );
        }
        for k in FrameErrorKind::ALL {
            out.push(
                Sample::counter(
                    "channel_frame_errors",
                    "Replication channel frames refused, by reason",
                    c.frame_errors(k),
                )
                .label("kind", k.as_str()),
            );
        }
        out
    }

    /// `Some(suppressed)` when a line for `key` may be logged now.
    fn may_log(&self, key: usize) -> Option<u64> {
        let mut l = self.log.lock().ok()?;
        l.check(key, Instant::now())
    }

    pub(crate) fn connection(&self) {
        bump(&self.connections, 1);
    }

    pub(crate) fn over_limit(&self, peer: SocketAddr, what: &'static str, max: usize) {
        bump(&self.over_limit, 1);
        if let Some(suppressed) = self.may_log(LOG_BUSY) {
            tracing::warn!(%peer, max, suppressed, "replication channel: too many {what}; connection closed");
        }
    }

    pub(crate) fn accept_failed(&self, e: &std::io::Error) {
        if let Some(suppressed) = self.may_log(LOG_ACCEPT) {
            tracing::warn!(error = %e, suppressed, "replication channel: accept failed");
        }
    }

    pub(crate) fn handshake(&self) {
        bump(&self.handshakes, 1);
    }

    /// Counts and logs (rate-limited) a refused handshake.
    pub(crate) fn refused(
        &self,
        peer: SocketAddr,
        reason: Refusal,
        detail: &dyn std::fmt::Display,
    ) {
        bump(&self.refused[reason as usize], 1);
        if let Some(suppressed) = self.may_log(reason as usize) {
            tracing::warn!(
                %peer,
                reason = reason.as_str(),
                detail = %detail,
                suppressed,
                "replication channel: TLS handshake refused: {}",
                reason.describe()
            );
        }
    }

    /// Counts and logs (rate-limited) a refused frame.
    pub(crate) fn frame_error(&self, peer: SocketAddr, e: &FrameError) {
        let k = e.kind();
        bump(&self.frame_errors[k as usize], 1);
        if let Some(suppressed) = self.may_log(Refusal::COUNT + k as usize) {
            tracing::warn!(
                %peer,
                kind = k.as_str(),
                suppressed,
                "replication channel: {e}; closing the connection"
            );
        }
    }

    pub(crate) fn timeout(&self, peer: SocketAddr, what: &'static str) {
        bump(&self.timeouts, 1);
        if let Some(suppressed) = self.may_log(LOG_TIMEOUT) {
            tracing::warn!(%peer, suppressed, "replication channel: {what}; closing the connection");
        }
    }

    pub(crate) fn opened(&self) {
        bump(&self.active, 1);
    }

    pub(crate) fn closed(&self) {
        let _ = self
            .active
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }

    pub(crate) fn sent(&self, bytes: usize) {
        bump(&self.frames_sent, 1);
        bump(&self.bytes_sent, bytes as u64);
    }

    pub(crate) fn received(&self, bytes: usize) {
        bump(&self.frames_received, 1);
        bump(&self.bytes_received, bytes as u64);
    }

    pub(crate) fn served(&self, entries: u64, skipped: u64) {
        bump(&self.resyncs_served, 1);
        bump(&self.entries_sent, entries);
        bump(&self.entries_skipped, skipped);
    }

    pub(crate) fn resync_failed(&self) {
        bump(&self.resync_failures, 1);
    }

    pub(crate) fn entries_received(&self, n: usize) {
        bump(&self.entries_received, n as u64);
    }

    pub(crate) fn resync_received(&self) {
        bump(&self.resyncs_received, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_samples() {
        let s = ChannelStats::default();
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        s.refused(peer, Refusal::NoClientCert, &"x");
        s.refused(peer, Refusal::NoClientCert, &"x");
        s.frame_error(peer, &FrameError::BadMagic);
        s.opened();
        s.closed();
        s.closed();
        let c = s.snapshot();
        assert_eq!(c.refused(Refusal::NoClientCert), 2);
        assert_eq!(c.refused_total(), 2);
        assert_eq!(c.frame_errors(FrameErrorKind::BadMagic), 1);
        assert_eq!(c.active, 0, "never below zero");
        let board = crate::metrics::Board::default();
        board.publish("channel", s.samples());
        assert_eq!(
            board.value("channel_refused", &[("reason", "no_client_cert")]),
            Some(2.0)
        );
        let text = board.render().unwrap();
        assert!(
            text.contains("hasync_channel_frame_errors_total{kind=\"bad_magic\"} 1"),
            "{text}"
        );
    }
}
