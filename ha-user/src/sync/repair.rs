//! Bucket repair, replica side: which of the entries held for a peer are stale after
//! that peer re-sent the full content of some buckets.
//!
//! Exchange (owner A, replica holder B; all messages are ordinary sequenced datagrams):
//! 1. (optional) B → A `DIGEST_REQUEST`; or A sends a digest on its own (periodic,
//!    after a capture overrun).
//! 2. A → B `DIGEST` chunks: A's digest of the entries it owns.
//! 3. B reassembles it ([`DigestAssembly`](super::digest::DigestAssembly)), computes
//!    its digest of the entries it holds for A, and if buckets differ creates a
//!    [`Repair`] and sends its `REPAIR_REQUEST`.
//! 4. A dumps its table and sends every owned entry of those buckets as ordinary
//!    upserts, then `REPAIR_DONE` (same id, same buckets).
//! 5. B feeds every change it receives from A meanwhile to [`Repair::observe`]; when
//!    `REPAIR_DONE` arrives ([`Repair::on_done`]) and [`Repair::state`] is `Complete`
//!    (nothing before REPAIR_DONE still missing, nothing given up since the request),
//!    B deletes its entries for A in those buckets that A did not upsert
//!    ([`Repair::is_stale`]). On `Retry`, B asks again.
//!
//! Why "upserted since the request" is the right test: A's dump starts after B's
//! request, so every entry A has at dump time reaches B between the two; an entry A
//! creates later reaches B as a live upsert (observed too), and one A deletes is
//! deleted at B by the live delete. An entry of those buckets that B holds and did not
//! see is one A no longer has. This needs the stream complete up to REPAIR_DONE, which
//! is what `Complete` checks. Every bucket set (`BucketSet::all`) is a full resync
//! that also removes stale entries, which a bulk resync does not.

use std::collections::HashSet;
use std::time::Instant;

use super::digest::{BucketSet, DigestKey, bucket_of};
use super::receiver::{Peer, Received};
use super::wire::Control;
use crate::conntrack::{Change, Key};

/// Where a repair stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairState {
    /// REPAIR_DONE not received, or something before it is still being recovered.
    Waiting,
    /// Safe to delete the stale entries.
    Complete,
    /// The stream from the peer broke (loss given up, or it restarted): ask again.
    Retry(&'static str),
}

/// One repair in progress, on the replica holder's side.
#[derive(Clone, Debug)]
pub struct Repair {
    node: u32,
    epoch: u32,
    request_id: u32,
    set: BucketSet,
    key: DigestKey,
    given_up_at_start: u64,
    touched: HashSet<Key>,
    /// Sequence of REPAIR_DONE and the records it announced.
    done: Option<(u64, u64)>,
    started: Instant,
}

impl Repair {
    /// A repair of `set` from `peer`, to request now (send [`control`](Self::control)).
    pub fn new(
        now: Instant,
        peer: &Peer,
        request_id: u32,
        set: BucketSet,
        key: DigestKey,
    ) -> Repair {
        Repair {
            node: peer.node(),
            epoch: peer.epoch(),
            request_id,
            set,
            key,
            given_up_at_start: peer.stats().given_up,
            touched: HashSet::new(),
            done: None,
            started: now,
        }
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    pub fn request_id(&self) -> u32 {
        self.request_id
    }

    pub fn buckets(&self) -> &BucketSet {
        &self.set
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The REPAIR_REQUEST to queue on our Sender.
    pub fn control(&self) -> Control<'_> {
        Control::RepairRequest {
            target: self.node,
            request_id: self.request_id,
            set: &self.set,
        }
    }

    /// Changes received from `node` while the repair runs (every one, live or repair
    /// content, in stream order).
    pub fn observe(&mut self, node: u32, changes: &[Change]) {
        // Also after REPAIR_DONE: a recovered datagram from before it is part of the
        // repair, and a later upsert is an entry the peer has.
        if node != self.node {
            return;
        }
        for c in changes {
            match c {
                Change::Upsert { entry, .. } => {
                    let k = entry.key();
                    if self
                        .set
                        .contains(bucket_of(&self.key, &k, self.set.buckets()))
                    {
                        self.touched.insert(k);
                    }
                }
                Change::Delete(k) => {
                    self.touched.remove(k);
                }
            }
        }
    }

    /// Offers a received datagram; true if it is this repair's REPAIR_DONE (from the
    /// peer, to `me`, same id and buckets).
    pub fn on_done(&mut self, me: u32, got: &Received<'_>) -> bool {
        let super::Payload::RepairDone(d) = got.payload else {
            return false;
        };
        let matches = got.node == self.node
            && got.epoch == self.epoch
            && d.requester == me
            && d.request_id == self.request_id
            && BucketSet::from_bitmap(d.buckets, d.bitmap()).as_ref() == Some(&self.set);
        if matches && self.done.is_none() {
            self.done = Some((got.seq, d.records));
        }
        matches
    }

    /// Checks the stream from the peer (`None`: the peer is gone).
    pub fn state(&self, peer: Option<&Peer>) -> RepairState {
        let Some(p) = peer else {
            return RepairState::Retry("peer gone");
        };
        if p.epoch() != self.epoch {
            return RepairState::Retry("peer restarted");
        }
        if p.stats().given_up > self.given_up_at_start {
            return RepairState::Retry("datagrams lost beyond recovery during the repair");
        }
        match self.done {
            Some((seq, _)) if !p.has_missing_before(seq) => RepairState::Complete,
            _ => RepairState::Waiting,
        }
    }

    /// Entries the peer re-sent (or created) during the repair.
    pub fn touched(&self) -> usize {
        self.touched.len()
    }

    /// Whether an entry held for the peer must go: it is in a repaired bucket and the
    /// peer did not send it. Only meaningful once [`state`](Self::state) is
    /// `Complete`.
    pub fn is_stale(&self, k: &Key) -> bool {
        self.set
            .contains(bucket_of(&self.key, k, self.set.buckets()))
            && !self.touched.contains(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::Entry;
    use crate::sync::digest::Digest;
    use crate::sync::wire::record::tests::udp4;
    use crate::sync::{KeyRing, Receiver, ReceiverConfig, Sender, SenderConfig, SyncKey};
    use std::net::SocketAddr;

    fn src() -> SocketAddr {
        "192.0.2.1:4800".parse().unwrap()
    }

    fn entry(i: u16) -> Entry {
        let mut e = udp4();
        e.orig.src_u = i.to_be_bytes();
        e.reply = e.orig.swapped();
        e
    }

    fn deliver(s: &mut Sender, r: &mut Receiver, t: Instant, skip: &[u64]) -> Vec<Change> {
        let mut out = Vec::new();
        for d in s.ready() {
            let seq = crate::sync::wire::Datagram::parse(d).unwrap().seq();
            if !skip.contains(&seq) {
                r.handle(t, src(), d, &mut out).unwrap();
            }
        }
        let n = s.ready_len();
        s.mark_sent(n);
        out
    }

    /// A (owner, node 1) and B (replica holder, node 2) over a perfect link, except
    /// where a test drops a datagram.
    #[test]
    fn repair_deletes_exactly_the_stale_entries() {
        let t = Instant::now();
        let sk = SyncKey::derive(b"k").unwrap();
        let dk = DigestKey::derive(b"k").unwrap();
        let mut a = Sender::new(SenderConfig::new(1, 11), sk.clone(), t).unwrap();
        let mut b = Receiver::new(ReceiverConfig::new(2), KeyRing::new(sk, None));
        let owned: Vec<Entry> = (0..300).map(entry).collect();
        // B holds what A owns, plus stale entries A deleted while B was not listening,
        // and one entry with an outdated mark.
        let mut held: Vec<Entry> = owned.clone();
        held.extend((1000..1010).map(entry));
        held[5].mark = 99;
        let da = Digest::compute(&dk, &owned, 64).unwrap();
        let db = Digest::compute(&dk, &held, 64).unwrap();
        let set = da.differing_set(&db);
        assert!(!set.is_empty() && set.len() <= 11);
        // The handshake so B knows A.
        a.handle_timeout(t);
        deliver(&mut a, &mut b, t, &[]);
        let mut rep = Repair::new(t, b.peer(1).unwrap(), 7, set.clone(), dk);
        assert!(matches!(
            rep.control(),
            Control::RepairRequest {
                target: 1,
                request_id: 7,
                ..
            }
        ));
        // A answers: a live delete of an entry it owns (also deleted at B by it), the
        // content of the buckets, and REPAIR_DONE.
        let gone = owned[7];
        a.push(&Change::Delete(gone.key())).unwrap();
        let mut sent = 0;
        for e in owned.iter().filter(|e| e.key() != gone.key()) {
            if set.contains(bucket_of(&dk, &e.key(), 64)) {
                a.push(&Change::Upsert {
                    entry: *e,
                    new: false,
                })
                .unwrap();
                sent += 1;
            }
        }
        a.queue(Control::RepairDone {
            requester: 2,
            request_id: 7,
            records: sent,
            set: &set,
        });
        let first = a.next_seq() - 2; // drop the last DATA datagram for now
        let mut out = Vec::new();
        let mut done = false;
        for d in a.ready().map(<[u8]>::to_vec).collect::<Vec<_>>() {
            let dg = crate::sync::wire::Datagram::parse(&d).unwrap();
            if dg.seq() == first {
                continue;
            }
            out.clear();
            let got = b.handle(t, src(), &d, &mut out).unwrap();
            rep.observe(got.node, &out);
            done |= rep.on_done(2, &got);
        }
        assert!(done);
        assert_eq!(
            rep.state(b.peer(1)),
            RepairState::Waiting,
            "a gap before DONE"
        );
        // The gap is repaired (retransmission of the dropped datagram).
        let dropped = a.retained(first).unwrap().to_vec();
        out.clear();
        let got = b.handle(t, src(), &dropped, &mut out).unwrap();
        assert!(!rep.on_done(2, &got));
        rep.observe(got.node, &out);
        assert_eq!(rep.state(b.peer(1)), RepairState::Complete);
        // Stale: B's extras in repaired buckets, and the entry A deleted live.
        let stale: Vec<Key> = held
            .iter()
            .map(Entry::key)
            .filter(|k| rep.is_stale(k))
            .collect();
        let mut want: Vec<Key> = (1000..1010).map(|i| entry(i).key()).collect();
        if set.contains(bucket_of(&dk, &gone.key(), 64)) {
            want.push(gone.key());
        }
        want.sort();
        let mut stale = stale;
        stale.sort();
        assert_eq!(stale, want);
        // Applying the repair makes the digests equal.
        let mut fixed: Vec<Entry> = held
            .iter()
            .filter(|e| !rep.is_stale(&e.key()) && e.key() != gone.key())
            .copied()
            .collect();
        fixed[5].mark = 0; // the re-sent upsert overwrote it
        assert_eq!(
            Digest::compute(&dk, &fixed, 64).unwrap().differing(
                &Digest::compute(&dk, owned.iter().filter(|e| e.key() != gone.key()), 64).unwrap()
            ),
            Vec::<u16>::new()
        );
    }

    #[test]
    fn loss_or_restart_during_a_repair_means_retry() {
        let t = Instant::now();
        let sk = SyncKey::derive(b"k").unwrap();
        let dk = DigestKey::derive(b"k").unwrap();
        let mut cfg = SenderConfig::new(1, 11);
        cfg.retain = 4;
        let mut a = Sender::new(cfg, sk.clone(), t).unwrap();
        let mut b = Receiver::new(ReceiverConfig::new(2), KeyRing::new(sk.clone(), None));
        a.handle_timeout(t);
        deliver(&mut a, &mut b, t, &[]);
        let set = BucketSet::all(16).unwrap();
        let rep = Repair::new(t, b.peer(1).unwrap(), 1, set, dk);
        assert_eq!(rep.state(b.peer(1)), RepairState::Waiting);
        // Seq 3 lost, then the ring moves on and an ALIVE says it is gone.
        for _ in 0..6 {
            a.push(&Change::Upsert {
                entry: entry(1),
                new: false,
            })
            .unwrap();
            a.flush();
            deliver(&mut a, &mut b, t, &[3]);
        }
        a.handle_timeout(t + std::time::Duration::from_secs(1));
        deliver(&mut a, &mut b, t, &[]);
        assert!(matches!(rep.state(b.peer(1)), RepairState::Retry(_)));
        assert_eq!(b.poll_resync().map(|r| (r.node, r.seqs)), Some((1, 1)));
        // A restart.
        let rep = Repair::new(t, b.peer(1).unwrap(), 2, BucketSet::all(16).unwrap(), dk);
        let mut a2 = Sender::new(SenderConfig::new(1, 12), sk, t).unwrap();
        a2.handle_timeout(t);
        deliver(&mut a2, &mut b, t, &[]);
        assert_eq!(rep.state(b.peer(1)), RepairState::Retry("peer restarted"));
        assert_eq!(rep.state(None), RepairState::Retry("peer gone"));
    }
}
