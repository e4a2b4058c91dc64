//! Consistency check, replica side: compare the peer's digest of the entries it owns
//! with ours of the entries we hold for it, ask for the buckets that differ, and once
//! the repair is complete delete what the peer no longer has.
//!
//! The protocol logic is I/O-free in [`crate::sync::digest`] and [`crate::sync::repair`];
//! this is the glue for the ingress thread: the table dump runs on a helper thread
//! (the loop keeps installing), and every change received meanwhile is observed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use mio::Waker;

use super::{ingress::IngressCmd, replica::ReplicaSet};
use crate::{
    conntrack::{Change, Key},
    kernel::ctnetlink,
    sync::{Digest, DigestKey, Received, Receiver, Repair, RepairState, bucket_of},
};

/// A repair not complete by then is given up (the next digest starts over).
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// The comparison the helper thread hands back.
#[derive(Debug)]
pub struct Compared {
    pub node: u32,
    /// Buckets whose content differs, and the keys we hold in them (candidates for
    /// deletion if the peer does not re-send them).
    pub outcome: Result<(crate::sync::BucketSet, Vec<Key>, usize), String>,
}

/// Counters, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub digests_received: u64,
    pub consistent: u64,
    pub inconsistent: u64,
    pub buckets_repaired: u64,
    pub stale_deleted: u64,
    pub repairs_completed: u64,
    pub repairs_abandoned: u64,
    pub skipped: u64,
}

pub struct Consistency {
    key: DigestKey,
    me: u32,
    assembly: crate::sync::DigestAssembly,
    comparing: bool,
    repair: Option<Active>,
    next_request_id: u32,
    pub stats: Stats,
    /// Unix seconds of the last digest found equal or repaired, 0 = never.
    pub last_consistent: u64,
}

struct Active {
    repair: Repair,
    /// Keys we held in the repaired buckets when we compared.
    held: Vec<Key>,
}

/// What the ingress loop must do after a step.
pub enum Action {
    None,
    /// Queue this REPAIR_REQUEST on the egress sender.
    Request(crate::agent::resync::EgressCmd),
    /// Delete these stale entries (replicas the peer no longer has).
    Delete(Vec<Change>),
}

impl Consistency {
    pub fn new(key: DigestKey, me: u32) -> Consistency {
        Consistency {
            key,
            me,
            assembly: Default::default(),
            comparing: false,
            repair: None,
            next_request_id: 1,
            stats: Stats::default(),
            last_consistent: 0,
        }
    }

    /// Every accepted datagram, with the changes it carried.
    pub fn on_datagram(
        &mut self,
        got: &Received<'_>,
        changes: &[Change],
        receiver: &Receiver,
        unsettled: bool,
        spawn: impl FnOnce(Digest),
    ) {
        if let Some(a) = self.repair.as_mut() {
            a.repair.observe(got.node, changes);
            a.repair.on_done(self.me, got);
        }
        let crate::sync::Payload::Digest(chunk) = got.payload else {
            return;
        };
        let Some((_, digest)) = self.assembly.add(got.node, &chunk) else {
            return;
        };
        self.stats.digests_received += 1;
        // The replica set does not record which peer an entry came from: with more
        // than one peer, their entries would look stale to each other. Until our first
        // bulk sync, entries found at start look held although some may be ours.
        if self.comparing || self.repair.is_some() || receiver.peers().len() != 1 || unsettled {
            self.stats.skipped += 1;
            return;
        }
        self.comparing = true;
        spawn(digest);
    }

    /// The comparison finished: ask for the differing buckets, if any.
    pub fn on_compared(&mut self, now: Instant, c: Compared, receiver: &Receiver) -> Action {
        self.comparing = false;
        let (set, held, entries) = match c.outcome {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "consistency: dumping the conntrack table failed");
                return Action::None;
            }
        };
        if set.is_empty() {
            self.stats.consistent += 1;
            self.last_consistent = unix_now();
            tracing::debug!(entries, "consistency: our copy of the peer's table matches");
            return Action::None;
        }
        let Some(peer) = receiver.peer(c.node) else {
            return Action::None;
        };
        self.stats.inconsistent += 1;
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        tracing::info!(
            peer = c.node,
            buckets = set.len(),
            held = entries,
            "consistency: our copy differs from the peer's table; asking for those buckets"
        );
        let repair = Repair::new(now, peer, request_id, set.clone(), self.key);
        self.repair = Some(Active { repair, held });
        Action::Request(crate::agent::resync::EgressCmd::SendRepairRequest {
            target: c.node,
            request_id,
            set,
        })
    }

    /// After each batch: finish a complete repair, drop a broken or overdue one.
    pub fn poll(&mut self, now: Instant, receiver: &Receiver, replica: &ReplicaSet) -> Action {
        let Some(a) = self.repair.as_ref() else {
            return Action::None;
        };
        match a.repair.state(receiver.peer(a.repair.node())) {
            RepairState::Complete => {
                let Some(a) = self.repair.take() else {
                    return Action::None;
                };
                let stale: Vec<Change> = a
                    .held
                    .iter()
                    .filter(|k| a.repair.is_stale(k) && replica.contains(k))
                    .map(|k| Change::Delete(*k))
                    .collect();
                self.stats.repairs_completed += 1;
                self.stats.buckets_repaired += a.repair.buckets().len() as u64;
                self.stats.stale_deleted += stale.len() as u64;
                self.last_consistent = unix_now();
                tracing::info!(
                    buckets = a.repair.buckets().len(),
                    resent = a.repair.touched(),
                    stale = stale.len(),
                    "consistency: repair complete"
                );
                Action::Delete(stale)
            }
            RepairState::Retry(why) => {
                tracing::warn!(
                    reason = why,
                    "consistency: repair abandoned; the next digest retries"
                );
                self.abandon();
                Action::None
            }
            RepairState::Waiting if now.duration_since(a.repair.started()) > REPAIR_TIMEOUT => {
                tracing::warn!(
                    "consistency: the peer did not finish the repair in time; the next digest retries"
                );
                self.abandon();
                Action::None
            }
            RepairState::Waiting => Action::None,
        }
    }

    fn abandon(&mut self) {
        self.repair = None;
        self.stats.repairs_abandoned += 1;
    }
}

/// The helper thread's work: our digest of the entries held for the peer, compared.
pub fn compare(
    node: u32,
    theirs: Digest,
    key: DigestKey,
    replica: Arc<ReplicaSet>,
    reply: std::sync::mpsc::Sender<IngressCmd>,
    waker: Arc<Waker>,
) {
    let outcome = ctnetlink::dump(None)
        .map_err(|e| e.to_string())
        .and_then(|all| {
            let held: Vec<_> = all
                .into_iter()
                .filter(|e| replica.contains(&e.key()))
                .collect();
            let ours =
                Digest::compute(&key, held.iter(), theirs.len()).map_err(|e| e.to_string())?;
            let set = theirs.differing_set(&ours);
            let keys = held
                .iter()
                .map(|e| e.key())
                .filter(|k| set.contains(bucket_of(&key, k, set.buckets())))
                .collect();
            Ok((set, keys, held.len()))
        });
    let _ = reply.send(IngressCmd::Compared(Compared { node, outcome }));
    let _ = waker.wake();
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
