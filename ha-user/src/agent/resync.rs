//! Bulk resync: a node that starts or rejoins asks its peer for the whole table.
//!
//! The requester's egress queues a RESYNC_REQUEST; the peer's ingress hands it to its
//! egress, which dumps the kernel table on a helper thread (so live events keep
//! flowing), then streams the entries as ordinary upserts, a chunk per turn of its
//! loop and paced so the receiver's installer keeps up, and ends with RESYNC_DONE.
//! The requester's ingress declares the table synced when RESYNC_DONE arrives with no
//! datagram lost since the request; otherwise it asks again.

use std::{
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;

use crate::{
    conntrack::{Change, Entry, Expectation},
    sync::wire::BucketSet,
};

/// Entries pushed per egress turn while serving a resync.
pub const CHUNK: usize = 2048;
/// Pause between chunks: 2048 entries / 4 ms ≈ 500k entries/s, below the installer's
/// measured ~750k/s, so the receiver's socket buffer does not overflow.
pub const PACE: Duration = Duration::from_millis(4);
/// How long a requester waits for RESYNC_DONE before asking again.
pub const RETRY_AFTER: Duration = Duration::from_secs(3);

/// Commands for the egress thread from the rest of the agent.
#[derive(Debug)]
pub enum EgressCmd {
    /// Ask the peer for its table.
    Request { request_id: u32 },
    /// The peer asked for our table.
    Serve { requester: u32, request_id: u32 },
    /// The dump thread finished.
    Dumped {
        requester: u32,
        request_id: u32,
        entries: Result<Vec<Entry>, String>,
        /// Our expectations (`expect_sync`), sent after the entries.
        expects: Vec<Expectation>,
    },
    /// Ask the peer to retransmit what we missed (from the receiver's gap tracker).
    SendNack(crate::sync::NackRequest),
    /// The peer missed some of our datagrams: retransmit them.
    ServeNack {
        from: u32,
        req: crate::sync::NackRequest,
    },
    /// Announce our protocol versions (a peer appeared or restarted).
    Hello,
    /// Send a digest of the entries we own (periodic check, or after a loss).
    SendDigest,
    /// Ask the peer for a digest of its table (ours may hold entries it deleted).
    RequestDigest { target: u32 },
    /// Ask the peer to re-send the entries of these buckets (our copy differs).
    SendRepairRequest {
        target: u32,
        request_id: u32,
        set: BucketSet,
    },
    /// The peer found these buckets of its copy wrong: re-send our entries in them.
    ServeRepair {
        requester: u32,
        request_id: u32,
        set: BucketSet,
    },
    /// A dump of the entries we own finished, for `job`.
    Owned {
        job: OwnedJob,
        entries: Result<Vec<Entry>, String>,
    },
}

/// Why the owned entries were dumped.
#[derive(Debug)]
pub enum OwnedJob {
    Digest,
    Repair {
        requester: u32,
        request_id: u32,
        set: BucketSet,
    },
}

/// A resync (or a bucket repair) being streamed to the peer.
pub struct Serving {
    pub requester: u32,
    pub request_id: u32,
    pub entries: Vec<Entry>,
    pub next: usize,
    pub started: Instant,
    /// `Some`: a repair of these buckets (ends with REPAIR_DONE), else a full resync.
    pub repair: Option<BucketSet>,
    /// Expectations to send once the entries are out (their masters go first).
    pub expects: Vec<Expectation>,
}

impl Serving {
    /// The next chunk as changes: a full resync goes to a table that may be empty
    /// (create first), a repair to one that holds most of it (update first).
    pub fn chunk(&mut self) -> impl Iterator<Item = Change> + '_ {
        let end = (self.next + CHUNK).min(self.entries.len());
        let chunk = &self.entries[self.next..end];
        self.next = end;
        let new = self.repair.is_none();
        chunk
            .iter()
            .map(move |entry| Change::Upsert { entry: *entry, new })
    }

    pub fn done(&self) -> bool {
        self.next >= self.entries.len()
    }
}

/// The expectations of a dump whose master this node owns (is in `owned`): the
/// peer's own are not sent back.
pub fn owned_expectations(all: Vec<Expectation>, owned: &[Entry]) -> Vec<Expectation> {
    if all.is_empty() {
        return all;
    }
    let masters: std::collections::HashSet<_> = owned.iter().map(|e| e.orig).collect();
    all.into_iter()
        .filter(|x| masters.contains(&x.master))
        .collect()
}

/// What this node owns of a table dump, i.e. what a resync, a digest or a repair
/// covers: replicable, not held for the peer, and not kept off the wire by a sync
/// filter (rules on interfaces cannot be decided from a dump: those entries count).
pub fn owned(
    all: Vec<Entry>,
    sync_peers: &[IpAddr],
    replica: &super::replica::ReplicaSet,
    filters: &[ha_common::FilterRule],
) -> Vec<Entry> {
    all.into_iter()
        .filter(|e| {
            let key = e.key();
            replicable(e, sync_peers)
                && !replica.contains(&key)
                && crate::capture::filter::keep_destroyed(filters, &key)
        })
        .collect()
}

/// Entries worth sending: not loopback, not the sync link's own flows.
pub fn replicable(entry: &Entry, sync_peers: &[IpAddr]) -> bool {
    let ips = [entry.orig.src_ip(), entry.orig.dst_ip()];
    !ips.iter()
        .any(|ip| ip.is_loopback() || ip.is_multicast() || sync_peers.contains(ip))
}

/// Where this node stands with the peer's table, shared by the threads and the HA
/// driver (and shown in status).
pub struct SyncState {
    /// The request in flight, 0 = none.
    pub pending_request: AtomicU32,
    /// Datagrams from the peer given up (lost beyond NACK repair) when the request was
    /// sent; more by the time RESYNC_DONE arrives means the table is incomplete.
    pub given_up_at_request: AtomicU64,
    /// Datagrams given up so far, kept by ingress.
    pub given_up_now: AtomicU64,
    requested_at: Mutex<Option<Instant>>,
    /// Every peer that sent a HELLO decodes expectation records (kept by ingress).
    pub peers_decode_expect: AtomicBool,
    /// Unix seconds of the last completed full sync, 0 = never.
    pub last_full_sync: AtomicU64,
    pub full_syncs: AtomicU64,
    pub entries_received: AtomicU64,
    pub served: AtomicU64,
    next_id: AtomicU32,
    complete: AtomicBool,
    complete_tx: watch::Sender<bool>,
}

impl Default for SyncState {
    fn default() -> Self {
        let (complete_tx, _) = watch::channel(false);
        SyncState {
            pending_request: AtomicU32::new(0),
            given_up_at_request: AtomicU64::new(0),
            given_up_now: AtomicU64::new(0),
            requested_at: Mutex::new(None),
            peers_decode_expect: AtomicBool::new(false),
            last_full_sync: AtomicU64::new(0),
            full_syncs: AtomicU64::new(0),
            entries_received: AtomicU64::new(0),
            served: AtomicU64::new(0),
            // Random, not 0: the peer may still be answering the request our previous
            // process made (same node id), and its RESYNC_DONE must not complete ours.
            next_id: AtomicU32::new(getrandom::u32().unwrap_or_else(|_| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
            })),
            complete: AtomicBool::new(false),
            complete_tx,
        }
    }
}

impl SyncState {
    /// A fresh request id (never 0).
    pub fn new_request_id(&self) -> u32 {
        self.next_id
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1)
    }

    /// Records a request about to be sent.
    pub fn requested(&self, request_id: u32, lost_so_far: u64) {
        self.pending_request.store(request_id, Ordering::Relaxed);
        self.given_up_at_request
            .store(lost_so_far, Ordering::Relaxed);
        if let Ok(mut at) = self.requested_at.lock() {
            *at = Some(Instant::now());
        }
    }

    /// The request was sent again (its datagram may have been lost): same id, same
    /// loss baseline, a new deadline.
    pub fn retried(&self) {
        if let Ok(mut at) = self.requested_at.lock() {
            *at = Some(Instant::now());
        }
    }

    /// A request is outstanding and older than [`RETRY_AFTER`].
    pub fn overdue(&self) -> bool {
        self.pending_request.load(Ordering::Relaxed) != 0
            && self
                .requested_at
                .lock()
                .ok()
                .and_then(|a| *a)
                .is_some_and(|t| t.elapsed() > RETRY_AFTER)
    }

    /// The full table arrived intact.
    pub fn completed(&self, records: u64) {
        self.pending_request.store(0, Ordering::Relaxed);
        self.entries_received.store(records, Ordering::Relaxed);
        self.full_syncs.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_full_sync.store(now, Ordering::Relaxed);
        self.mark_complete();
    }

    /// The table is known incomplete (datagrams lost beyond repair): a new request goes
    /// out, and the HA election treats this node as unsynced until it completes.
    pub fn mark_incomplete(&self) {
        self.pending_request.store(0, Ordering::Relaxed);
        self.complete.store(false, Ordering::Relaxed);
        self.complete_tx.send_replace(false);
    }

    /// Nothing to wait for (no peer to sync from): the table counts as complete.
    pub fn mark_complete(&self) {
        self.complete.store(true, Ordering::Relaxed);
        self.complete_tx.send_replace(true);
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    /// Wakes when the sync completes (for the HA driver).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.complete_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Tuple, proto};

    fn entry(src: &str, dst: &str) -> Entry {
        let orig = Tuple::new(proto::UDP, src.parse().unwrap(), 1, dst.parse().unwrap(), 2);
        Entry::plain(orig)
    }

    #[test]
    fn local_flows_are_not_replicated() {
        let peers: Vec<IpAddr> = vec!["10.250.0.2".parse().unwrap()];
        assert!(replicable(&entry("192.168.10.10", "203.0.113.100"), &peers));
        assert!(!replicable(&entry("127.0.0.1", "127.0.0.1"), &peers));
        assert!(!replicable(&entry("10.250.0.1", "10.250.0.2"), &peers));
        assert!(!replicable(&entry("10.250.0.1", "225.0.0.50"), &peers));
    }

    #[test]
    fn chunks_cover_every_entry_once() {
        let entries: Vec<Entry> = (0..(CHUNK * 2 + 7))
            .map(|_| entry("10.0.0.1", "10.0.0.2"))
            .collect();
        let mut s = Serving {
            requester: 1,
            request_id: 1,
            entries,
            next: 0,
            started: Instant::now(),
            repair: None,
            expects: Vec::new(),
        };
        let mut n = 0;
        while !s.done() {
            n += s.chunk().count();
        }
        assert_eq!(n, CHUNK * 2 + 7);
    }

    #[test]
    fn completion_is_observable() {
        let s = SyncState::default();
        let rx = s.subscribe();
        assert!(!s.is_complete());
        s.requested(7, 0);
        assert!(!s.overdue());
        s.completed(10);
        assert!(s.is_complete() && *rx.borrow());
        assert_eq!(s.pending_request.load(Ordering::Relaxed), 0);
        assert!(s.last_full_sync.load(Ordering::Relaxed) > 0);
    }
}
