//! Expectation sync (`expect_sync = true`): which expectation events egress sends, and
//! how ingress installs what the peer sent.
//!
//! Egress sends an expectation the kernel created here (a helper saw the FTP PASV
//! reply, SIP SDP...) and its end, never the echoes of our own installs (events with
//! the [`ExpectInstaller`]'s port id). A replicated expectation that ends here is not
//! reported back: only deletions of expectations this node sent go out, so egress
//! remembers what it sent (until its timeout). The kernel does not report an
//! expectation's zone, so they replicate in the default zone.
//!
//! Ingress installs after the conntrack changes of the same batch: the master must
//! exist first. A create that finds no master (ENOENT: the master is still held by
//! `sync_delay`, or in a later datagram) is retried on later batches and ticks, a
//! bounded number of times, then counted as failed.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    conntrack::{ExpectChange, ExpectKey, Expectation, Key},
    kernel::ctnetlink::{ExpectEvent, ExpectInstaller, errno_name},
};

/// Expectations remembered as sent at most (they are rare; a full map stops
/// remembering, and deletions of what it could not remember are not sent).
const MAX_OWNED: usize = 65536;
/// Creates retried at most this often...
pub const RETRY_EVERY: Duration = Duration::from_millis(100);
/// ...and this many times after the first attempt (≥ 2 s: a master delayed by
/// `sync_delay` or lost and NACKed arrives well within that).
pub const MAX_RETRIES: u32 = 20;
/// Creates waiting for their master at most.
const MAX_PENDING: usize = 4096;

/// What egress did with expectation events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressStats {
    pub sent_new: u64,
    pub sent_delete: u64,
    /// Echoes of the expectation installer's own creates and deletes.
    pub own_install: u64,
    /// Kept off the wire by a sync filter or because the master is not replicable.
    pub filtered: u64,
    /// Ends of expectations this node did not send (replicated ones, or older than the
    /// agent).
    pub not_ours: u64,
    /// Not sent because a peer does not decode expectation records.
    pub peer_unsupported: u64,
    /// Events lost to a netlink receive-buffer overrun.
    pub overruns: u64,
    /// Sent in bulk resyncs.
    pub resync_sent: u64,
}

/// Egress bookkeeping: what we sent, so that only their deletions follow.
#[derive(Debug, Default)]
pub struct Outbound {
    owned: HashMap<ExpectKey, Instant>,
    pub stats: EgressStats,
}

/// Whether an expectation's master may be replicated: the same rules as conntrack
/// entries (not loopback, not the sync link's own flows, the sync filters).
pub fn master_replicable(
    e: &Expectation,
    sync_peers: &[IpAddr],
    filters: &[ha_common::FilterRule],
) -> bool {
    let ips = [e.master.src_ip(), e.master.dst_ip()];
    let local = ips
        .iter()
        .any(|ip| ip.is_loopback() || ip.is_multicast() || sync_peers.contains(ip));
    let key = Key {
        orig: e.master,
        zone: e.zone,
    };
    !local && crate::capture::filter::keep_destroyed(filters, &key)
}

impl Outbound {
    /// The change to send for `ev`, if any. `peers_ok`: every peer decodes expectation
    /// records ([`crate::sync::Receiver::peers_decode_expectations`]).
    pub fn on_event(
        &mut self,
        now: Instant,
        ev: &ExpectEvent,
        installer_portid: u32,
        peers_ok: bool,
        sync_peers: &[IpAddr],
        filters: &[ha_common::FilterRule],
    ) -> Option<ExpectChange> {
        if ev.portid != 0 && ev.portid == installer_portid {
            self.stats.own_install += 1;
            return None;
        }
        match ev.change {
            ExpectChange::Upsert(e) => {
                if !master_replicable(&e, sync_peers, filters) {
                    self.stats.filtered += 1;
                    return None;
                }
                if !peers_ok {
                    self.stats.peer_unsupported += 1;
                    return None;
                }
                self.remember(now, &e);
                self.stats.sent_new += 1;
                Some(ev.change)
            }
            ExpectChange::Delete(k) => {
                if self.owned.remove(&k).is_none() {
                    self.stats.not_ours += 1;
                    return None;
                }
                self.stats.sent_delete += 1;
                Some(ev.change)
            }
        }
    }

    /// Remembers an expectation we sent (live or in a resync) until it times out.
    pub fn remember(&mut self, now: Instant, e: &Expectation) {
        if self.owned.len() >= MAX_OWNED && !self.owned.contains_key(&e.key()) {
            return;
        }
        let until = now + Duration::from_secs(u64::from(e.timeout) + 1);
        self.owned.insert(e.key(), until);
    }

    /// Forgets expectations past their timeout (their end event may have been lost).
    pub fn prune(&mut self, now: Instant) {
        self.owned.retain(|_, until| *until > now);
    }

    pub fn owned(&self) -> usize {
        self.owned.len()
    }
}

/// What ingress did with received expectation changes (the installer counts the
/// kernel's answers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressStats {
    /// Received while `expect_sync` is off here: not installed.
    pub ignored: u64,
    /// Creates tried again because the master was not there yet.
    pub retries: u64,
    /// Changes finally not applied, by errno name (or `retry_overflow`).
    pub failed: BTreeMap<&'static str, u64>,
}

/// Ingress: installs expectation changes and retries those waiting for their master.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Creates that found no master, with the attempts made so far.
    pending: Vec<(ExpectChange, u32)>,
    next_retry: Option<Instant>,
    batch: Vec<ExpectChange>,
    attempts: Vec<u32>,
    pub stats: IngressStats,
}

impl Inbound {
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Installs `fresh` (emptied), plus the retries that are due. Call after the
    /// conntrack changes of the same batch are installed.
    pub fn install(
        &mut self,
        now: Instant,
        installer: &mut ExpectInstaller,
        fresh: &mut Vec<ExpectChange>,
    ) {
        // A newer change of the same expectation replaces a waiting create (a delete
        // cancels it).
        if !fresh.is_empty() && !self.pending.is_empty() {
            self.pending
                .retain(|(c, _)| !fresh.iter().any(|f| f.key() == c.key()));
        }
        let retry_due = !self.pending.is_empty() && self.next_retry.is_none_or(|t| now >= t);
        if fresh.is_empty() && !retry_due {
            return;
        }
        self.batch.clear();
        self.attempts.clear();
        if retry_due {
            for (c, n) in self.pending.drain(..) {
                self.batch.push(c);
                self.attempts.push(n);
            }
        }
        for c in fresh.drain(..) {
            self.batch.push(c);
            self.attempts.push(0);
        }
        installer.install(&self.batch);
        for f in installer.failures() {
            let (Some(&c), Some(&n)) = (self.batch.get(f.index), self.attempts.get(f.index)) else {
                continue;
            };
            let retry =
                f.errno == libc::ENOENT && matches!(c, ExpectChange::Upsert(_)) && n < MAX_RETRIES;
            if retry && self.pending.len() < MAX_PENDING {
                self.stats.retries += 1;
                self.pending.push((c, n + 1));
            } else {
                let reason = if retry {
                    "retry_overflow"
                } else {
                    errno_name(f.errno)
                };
                *self.stats.failed.entry(reason).or_default() += 1;
                tracing::debug!(
                    change = ?c,
                    reason,
                    attempts = n + 1,
                    "expectation sync: change not applied"
                );
            }
        }
        if !self.pending.is_empty() {
            self.next_retry = Some(now + RETRY_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{ExpectMask, Family, HelperName, Tuple, Zone, proto};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn exp(client: &str) -> Expectation {
        Expectation {
            master: Tuple::new(proto::TCP, ip(client), 40000, ip("203.0.113.100"), 21),
            tuple: Tuple::new(proto::TCP, ip(client), 0, ip("203.0.113.100"), 50000),
            mask: ExpectMask::any_port(Family::V4),
            zone: Zone::DEFAULT,
            timeout: 300,
            flags: 0,
            class: 0,
            helper: HelperName::new("ftp"),
            expectfn: None,
            nat: None,
        }
    }

    fn ev(change: ExpectChange, portid: u32) -> ExpectEvent {
        ExpectEvent {
            change,
            portid,
            id: None,
        }
    }

    #[test]
    fn sends_own_expectations_and_only_their_ends() {
        let now = Instant::now();
        let mut o = Outbound::default();
        let e = exp("192.168.10.10");
        let new = ExpectChange::Upsert(e);
        let del = ExpectChange::Delete(e.key());
        // Our installer's echo: skipped; a replicated expectation's end: not ours.
        assert_eq!(o.on_event(now, &ev(new, 77), 77, true, &[], &[]), None);
        assert_eq!(o.on_event(now, &ev(del, 0), 77, true, &[], &[]), None);
        assert_eq!((o.stats.own_install, o.stats.not_ours), (1, 1));
        // The helper's expectation and its end.
        assert_eq!(o.on_event(now, &ev(new, 0), 77, true, &[], &[]), Some(new));
        assert_eq!(o.owned(), 1);
        assert_eq!(o.on_event(now, &ev(del, 0), 77, true, &[], &[]), Some(del));
        assert_eq!(
            (o.stats.sent_new, o.stats.sent_delete, o.owned()),
            (1, 1, 0)
        );
        // A peer that cannot decode them; a master on the sync link.
        assert_eq!(o.on_event(now, &ev(new, 0), 77, false, &[], &[]), None);
        assert_eq!(o.stats.peer_unsupported, 1);
        let peers = [ip("192.168.10.10")];
        assert_eq!(o.on_event(now, &ev(new, 0), 77, true, &peers, &[]), None);
        assert_eq!(o.stats.filtered, 1);
        // Forgotten after its timeout.
        assert!(o.on_event(now, &ev(new, 0), 77, true, &[], &[]).is_some());
        o.prune(now + Duration::from_secs(302));
        assert_eq!(o.owned(), 0);
    }
}
