//! A deterministic two-node simulation: two `Election`s and their `HeartbeatReceiver`s
//! wired through a simulated network (per-direction up/down, loss, duplication, delay
//! jitter, hence reordering) on a simulated clock, plus the invariant checkers.
//!
//! Everything goes through the real codec and authentication, so the receiver's
//! replay / epoch rules are exercised together with the election.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sync::auth::{KeyRing, SyncKey};

/// xorshift64*: tiny, seeded, good enough for a network simulation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// One direction of the heartbeat path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    /// Drop probability, per mille.
    pub loss: u32,
    /// Duplication probability, per mille (the copy gets its own delay).
    pub dup: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Link {
    pub fn lan() -> Link {
        Link {
            up: true,
            loss: 0,
            dup: 0,
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(2),
        }
    }

    /// Up and lossless (duplicates and jitter allowed).
    pub fn clean(&self) -> bool {
        self.up && self.loss == 0
    }
}

/// The compact per-node state the checkers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSnap {
    pub role: Role,
    pub demotion: Demotion,
    pub promoted: bool,
    pub starting: bool,
}

impl NodeSnap {
    pub fn eligible(&self) -> bool {
        !self.demotion.intersects(Demotion::INELIGIBLE)
    }
}

/// State from `at` until the next snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snap {
    pub at: Instant,
    pub nodes: [Option<NodeSnap>; 2],
    /// `links[i]`: from node `i` to the other.
    pub links: [Link; 2],
    /// Starts and kills so far, per node.
    pub lives: [u32; 2],
}

/// A role change to PRIMARY, with the state just before the step that caused it.
#[derive(Clone, Copy, Debug)]
pub struct Takeover {
    pub at: Instant,
    pub node: usize,
    pub reason: Reason,
    /// Demotion before the step, minus what the step's own input cleared.
    pub demotion_before: Demotion,
    pub promoted_before: bool,
}

pub struct Node {
    pub cfg: ElectionConfig,
    pub e: Option<Election>,
    rx: HeartbeatReceiver,
    pub sync_link_up: bool,
    pub monitored_up: bool,
    pub actions: Vec<(Instant, Action)>,
    pub sent: u64,
    /// Per run: (epoch, split brains, transitions) of finished runs are kept here.
    pub past_split_brains: u64,
}

impl Node {
    pub fn status(&self) -> Option<Status> {
        self.e.as_ref().map(Election::status)
    }

    pub fn role(&self) -> Option<Role> {
        self.e.as_ref().map(Election::role)
    }

    /// Split brains counted over all runs of this node.
    pub fn split_brains(&self) -> u64 {
        self.past_split_brains + self.status().map_or(0, |s| s.stats.split_brains)
    }

    fn snap(&self) -> Option<NodeSnap> {
        self.status().map(|s| NodeSnap {
            role: s.role,
            demotion: s.demotion,
            promoted: s.promoted,
            starting: s.starting,
        })
    }
}

pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    pub nodes: [Node; 2],
    pub links: [Link; 2],
    queue: BTreeMap<(Instant, u64), (usize, [u8; HEARTBEAT_LEN])>,
    order: u64,
    rng: Rng,
    key: SyncKey,
    pub trace: Vec<Snap>,
    pub takeovers: Vec<Takeover>,
    lives: [u32; 2],
    notes: Vec<(Instant, String)>,
    /// Online invariant failures are printed instead of panicking (for dumps).
    pub lenient: bool,
    /// External inputs and node starts (for the heartbeat budget).
    pub events: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + i as u8], 9002))
}

impl Sim {
    /// Both nodes start at `t0`.
    pub fn new(cfgs: [ElectionConfig; 2], link: Link, seed: u64) -> Sim {
        let t0 = Instant::now();
        let key = heartbeat_key(b"simulation secret").unwrap_or_else(|_| unreachable!());
        let mk = |cfg: ElectionConfig| Node {
            rx: HeartbeatReceiver::new(
                ReceiverConfig::new(cfg.node_id, cfg.epoch, cfg.dead_interval()),
                KeyRing::new(key.clone(), None),
            ),
            cfg,
            e: None,
            sync_link_up: true,
            monitored_up: true,
            actions: Vec::new(),
            sent: 0,
            past_split_brains: 0,
        };
        let [a, b] = cfgs;
        let mut sim = Sim {
            t0,
            now: t0,
            nodes: [mk(a), mk(b)],
            links: [link; 2],
            queue: BTreeMap::new(),
            order: 0,
            rng: Rng::new(seed),
            key,
            trace: Vec::new(),
            takeovers: Vec::new(),
            lives: [0; 2],
            notes: Vec::new(),
            lenient: false,
            events: 0,
        };
        sim.start(0);
        sim.start(1);
        sim
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn role(&self, i: usize) -> Option<Role> {
        self.nodes[i].role()
    }

    pub fn status(&self, i: usize) -> Status {
        self.nodes[i]
            .status()
            .unwrap_or_else(|| panic!("node {i} is down"))
    }

    pub fn primaries(&self) -> usize {
        (0..2)
            .filter(|&i| self.role(i) == Some(Role::Primary))
            .count()
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Actions node `i` emitted (all runs), without times.
    pub fn actions(&self, i: usize) -> Vec<Action> {
        self.nodes[i].actions.iter().map(|(_, a)| *a).collect()
    }

    /// (Re)starts node `i` with a fresh epoch, feeding its current local health.
    pub fn start(&mut self, i: usize) {
        self.events += 1;
        self.lives[i] += 1;
        let n = &mut self.nodes[i];
        if let Some(s) = n.status() {
            n.past_split_brains += s.stats.split_brains;
        }
        // A fresh non-zero epoch, different from the last one.
        let mut epoch = 0;
        while epoch == 0 || epoch == n.cfg.epoch {
            epoch = self.rng.next() as u32;
        }
        n.cfg.epoch = epoch;
        n.rx = HeartbeatReceiver::new(
            ReceiverConfig::new(n.cfg.node_id, epoch, n.cfg.dead_interval()),
            KeyRing::new(self.key.clone(), None),
        );
        let e = Election::new(n.cfg.clone(), self.now).unwrap_or_else(|e| panic!("config: {e}"));
        n.e = Some(e);
        if !(n.sync_link_up && n.monitored_up) {
            let health = Input::LocalHealth {
                sync_link_up: n.sync_link_up,
                monitored_up: n.monitored_up,
            };
            self.drive(i, Some(health));
        } else {
            self.flush(i);
        }
    }

    /// Powers node `i` off: it stops sending, receiving and timing.
    pub fn kill(&mut self, i: usize) {
        self.events += 1;
        self.lives[i] += 1;
        let n = &mut self.nodes[i];
        if let Some(s) = n.status() {
            n.past_split_brains += s.stats.split_brains;
        }
        n.e = None;
        self.snapshot();
    }

    pub fn set_link(&mut self, from: usize, link: Link) {
        self.events += 1;
        self.links[from] = link;
        self.snapshot();
    }

    pub fn partition(&mut self) {
        for i in 0..2 {
            let mut l = self.links[i];
            l.up = false;
            self.set_link(i, l);
        }
    }

    pub fn heal(&mut self) {
        for i in 0..2 {
            let mut l = self.links[i];
            l.up = true;
            l.loss = 0;
            self.set_link(i, l);
        }
    }

    /// Feeds an input to node `i` now (ignored if it is down).
    pub fn input(&mut self, i: usize, input: Input) {
        self.events += 1;
        if let Input::LocalHealth {
            sync_link_up,
            monitored_up,
        } = input
        {
            self.nodes[i].sync_link_up = sync_link_up;
            self.nodes[i].monitored_up = monitored_up;
        }
        if self.nodes[i].e.is_some() {
            self.drive(i, Some(input));
        }
    }

    /// Runs the network and the timers for `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    pub fn run_until(&mut self, end: Instant) {
        let mut spins = 0u32;
        loop {
            let next_msg = self.queue.first_key_value().map(|((t, _), _)| *t);
            let next_timer = (0..2)
                .filter_map(|i| self.nodes[i].e.as_ref().and_then(Election::poll_timeout))
                .min();
            let next = match (next_msg, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            if next <= self.now {
                spins += 1;
                if spins >= 10_000 {
                    self.violation(format!("no progress at {:?}", self.elapsed()));
                    break;
                }
            } else {
                spins = 0;
            }
            self.now = self.now.max(next);
            self.step();
        }
        self.now = self.now.max(end);
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to, bytes) = entry.remove();
            let Some(_) = self.nodes[to].e else { continue };
            let from = 1 - to;
            let res = self.nodes[to].rx.handle(now, addr(from), &bytes);
            if self.lenient {
                let hb = heartbeat::parse(&bytes).map(|u| u.heartbeat);
                let what = hb.map(|h| {
                    format!(
                        "{}->{} epoch {} seq {} {} {} echo {:?}",
                        ["A", "B"][from],
                        ["A", "B"][to],
                        h.epoch,
                        h.seq,
                        h.role,
                        h.flags,
                        h.peer.map(|e| (e.epoch, e.seq))
                    )
                });
                self.note(format!("{what:?}: {:?}", res.as_ref().map(|_| ())));
            }
            // Rejections (duplicates, stale epochs) are counted by the receiver.
            if let Ok(hb) = res {
                self.drive(to, Some(Input::Heartbeat(hb)));
            }
        }
        for i in 0..2 {
            let due = self.nodes[i]
                .e
                .as_ref()
                .and_then(Election::poll_timeout)
                .is_some_and(|t| t <= now);
            if due {
                self.drive(i, None);
                let after = self.nodes[i].e.as_ref().and_then(Election::poll_timeout);
                if after.is_some_and(|t| t <= now) {
                    self.violation(format!(
                        "node {i}: poll_timeout not in the future after handle_timeout at {:?}",
                        self.elapsed()
                    ));
                }
            }
        }
    }

    /// One `handle` (or `handle_timeout` for `None`) on node `i`, with bookkeeping.
    fn drive(&mut self, i: usize, input: Option<Input>) {
        let now = self.now;
        let Some(e) = self.nodes[i].e.as_mut() else {
            return;
        };
        let before = e.status();
        match input {
            Some(inp) => e.handle(now, inp),
            None => e.handle_timeout(now),
        }
        let after = e.status();
        if before.role != Role::Primary && after.role == Role::Primary {
            let mut demotion = before.demotion;
            match input {
                Some(Input::SyncComplete) => demotion.set(Demotion::NOT_SYNCED, false),
                Some(Input::LocalHealth { .. }) => {
                    demotion = demotion
                        .intersection(Demotion::NOT_SYNCED.union(Demotion::MAINTENANCE))
                        .union(after.demotion);
                }
                Some(Input::Promote | Input::ClearOperator) => {
                    demotion.set(Demotion::MAINTENANCE, false)
                }
                _ => {}
            }
            self.takeovers.push(Takeover {
                at: now,
                node: i,
                reason: after.reason,
                demotion_before: demotion,
                promoted_before: before.promoted || matches!(input, Some(Input::Promote)),
            });
        }
        // Online invariants: FAULT and maintenance never hold PRIMARY.
        if after.role == Role::Primary && after.demotion.intersects(Demotion::INELIGIBLE) {
            self.violation(format!(
                "node {i} primary while {} at {:?}",
                after.demotion,
                self.elapsed()
            ));
        }
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let now = self.now;
        let mut out = Vec::new();
        if let Some(e) = self.nodes[i].e.as_mut() {
            while let Some(hb) = e.poll_transmit(now) {
                out.push(encode(&hb, &self.key));
            }
            while let Some(a) = e.poll_action() {
                self.nodes[i].actions.push((now, a));
            }
        }
        self.nodes[i].sent += out.len() as u64;
        for bytes in out {
            self.send(i, bytes);
        }
        self.snapshot();
    }

    fn send(&mut self, from: usize, bytes: [u8; HEARTBEAT_LEN]) {
        let l = self.links[from];
        if !l.up || self.rng.chance(l.loss) {
            return;
        }
        let copies = if self.rng.chance(l.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let span = (l.max_delay.saturating_sub(l.min_delay)).as_nanos() as u64;
            let delay = l.min_delay + Duration::from_nanos(self.rng.below(span + 1));
            self.order += 1;
            self.queue
                .insert((self.now + delay, self.order), (1 - from, bytes));
        }
    }

    fn snapshot(&mut self) {
        let s = Snap {
            at: self.now,
            nodes: [self.nodes[0].snap(), self.nodes[1].snap()],
            links: self.links,
            lives: self.lives,
        };
        match self.trace.last_mut() {
            // Same-instant changes are kept: a zero-length state (demote and clear in
            // one instant) was still advertised.
            Some(last)
                if last.nodes == s.nodes && last.links == s.links && last.lives == s.lives => {}
            _ => self.trace.push(s),
        }
    }

    /// `(start, end, snap)` for each stretch of the trace up to now.
    fn segments(&self) -> impl Iterator<Item = (Instant, Instant, &Snap)> + '_ {
        self.trace.iter().enumerate().map(|(k, s)| {
            let end = self.trace.get(k + 1).map_or(self.now, |n| n.at);
            (s.at, end, s)
        })
    }

    /// Longest stretch (and where it ends) during which `cond` held continuously.
    pub fn longest(&self, cond: impl Fn(&Snap) -> bool) -> (Duration, Option<Instant>) {
        self.longest_within(cond, |_| ())
    }

    /// As [`longest`](Self::longest), but a change of `epoch(snap)` starts a new stretch.
    pub fn longest_within<K: PartialEq>(
        &self,
        cond: impl Fn(&Snap) -> bool,
        epoch: impl Fn(&Snap) -> K,
    ) -> (Duration, Option<Instant>) {
        let mut start: Option<Instant> = None;
        let mut key = None;
        let mut best = (Duration::ZERO, None);
        for (s, e, snap) in self.segments() {
            let k = epoch(snap);
            if key.as_ref() != Some(&k) {
                start = None;
                key = Some(k);
            }
            if cond(snap) {
                let st = *start.get_or_insert(s);
                if e - st > best.0 {
                    best = (e - st, Some(e));
                }
            } else {
                start = None;
            }
        }
        best
    }

    fn violation(&mut self, what: String) {
        assert!(self.lenient, "{what}");
        eprintln!("VIOLATION: {what}");
        self.note(format!("VIOLATION: {what}"));
    }

    /// A marker in the dump.
    pub fn note(&mut self, what: String) {
        self.notes.push((self.now, what));
    }

    /// Prints the trace, actions and notes in time order (for debugging a failure).
    pub fn dump(&self) {
        let mut lines: Vec<(Instant, u8, String)> = Vec::new();
        for s in &self.trace {
            let n = |k: usize| match s.nodes[k] {
                Some(n) => format!(
                    "{:<7} {}{}{}",
                    n.role.as_str(),
                    n.demotion,
                    if n.promoted { " promoted" } else { "" },
                    if n.starting { " starting" } else { "" }
                ),
                None => "down".into(),
            };
            let l = |k: usize| {
                let l = s.links[k];
                if !l.up {
                    "cut".into()
                } else {
                    format!("loss{}", l.loss)
                }
            };
            lines.push((
                s.at,
                0,
                format!(
                    "A: {:<40} B: {:<40} A->B {} B->A {}",
                    n(0),
                    n(1),
                    l(0),
                    l(1)
                ),
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for (t, a) in &n.actions {
                lines.push((*t, 1, format!("    {} {:?}", ["A", "B"][i], a)));
            }
        }
        for (t, what) in &self.notes {
            lines.push((*t, 2, format!("  -- {what}")));
        }
        lines.sort_by_key(|(t, k, _)| (*t, *k));
        for (t, _, l) in lines {
            eprintln!("{:>12.6} {l}", (t - self.t0).as_secs_f64());
        }
    }

    /// Invariant (a)/(e): both PRIMARY while both are up and the link is clean both
    /// ways lasts at most `bound`.
    pub fn check_dual_primary(&self, bound: Duration) {
        let (d, at) = self.longest(|s| {
            s.links.iter().all(Link::clean)
                && s.nodes
                    .iter()
                    .all(|n| n.is_some_and(|n| n.role == Role::Primary))
        });
        assert!(
            d <= bound,
            "both primary on a clean link for {d:?} (> {bound:?}), ending at {:?}",
            at.map(|t| t - self.t0)
        );
    }

    /// Invariant (b): no PRIMARY while some live node may serve lasts at most `clean`
    /// (links clean throughout) or `lossy` (otherwise: a lost heartbeat can cost a dead
    /// interval more). A node in its startup listen does not count (that wait is by
    /// design; its length is tested on its own). A node starting or dying restarts the
    /// clock: the requirement is a primary within the dead interval + an interval after
    /// the other dies.
    pub fn check_no_primary_gap(&self, clean: Duration, lossy: Duration) {
        let gap = |s: &Snap| {
            s.nodes
                .iter()
                .flatten()
                .any(|n| n.eligible() && !n.starting)
                && !s.nodes.iter().flatten().any(|n| n.role == Role::Primary)
        };
        let mut run: Option<(Instant, [u32; 2], bool)> = None;
        for (s, e, snap) in self.segments() {
            if run.is_some_and(|(_, lives, _)| lives != snap.lives) {
                run = None;
            }
            if !gap(snap) {
                run = None;
                continue;
            }
            let links_clean = snap.links.iter().all(Link::clean);
            let (start, _, all_clean) = *run.get_or_insert((s, snap.lives, links_clean));
            let all_clean = all_clean && links_clean;
            run = Some((start, snap.lives, all_clean));
            let bound = if all_clean { clean } else { lossy };
            assert!(
                e - start <= bound,
                "no primary for {:?} (> {bound:?}, links clean: {all_clean}) while a node \
                 could serve, from {:?}",
                e - start,
                start - self.t0
            );
        }
    }

    /// Invariant (c): a soft-demoted or maintenance node (not promoted) never becomes
    /// PRIMARY while the peer has been up, eligible, healthy, not starting, and reachable
    /// both ways over a clean link for `window`.
    pub fn check_demoted_never_preempts(&self, window: Duration) {
        for t in &self.takeovers {
            if t.promoted_before || t.demotion_before.is_empty() {
                continue;
            }
            let peer = 1 - t.node;
            let from = t.at.checked_sub(window).unwrap_or(self.t0);
            if from < self.t0 + window {
                continue;
            }
            let healthy_peer_throughout = self
                .segments()
                .filter(|(s, e, _)| *e > from && *s <= t.at)
                .all(|(_, _, snap)| {
                    snap.links.iter().all(Link::clean)
                        && snap.nodes[t.node].is_some()
                        && snap.nodes[peer].is_some_and(|n| n.demotion.is_empty() && !n.starting)
                });
            assert!(
                !healthy_peer_throughout,
                "node {} ({}) took over ({}) at {:?} from a healthy peer",
                t.node,
                t.demotion_before,
                t.reason,
                t.at - self.t0
            );
        }
    }

    /// Invariant (c), the other half: a soft-demoted PRIMARY (not promoted) hands over
    /// to a healthy, eligible BACKUP peer over a clean link within `bound`.
    pub fn check_demoted_primary_hands_over(&self, bound: Duration) {
        let (d, at) = self.longest(|s| {
            s.links.iter().all(Link::clean)
                && (0..2).any(|i| {
                    let (me, peer) = (s.nodes[i], s.nodes[1 - i]);
                    me.is_some_and(|m| {
                        m.role == Role::Primary
                            && !m.promoted
                            && m.demotion.intersects(Demotion::SOFT)
                    }) && peer.is_some_and(|p| {
                        p.role == Role::Backup && p.demotion.is_empty() && !p.starting
                    })
                })
        });
        assert!(
            d <= bound,
            "a demoted primary kept the role from a healthy peer for {d:?} (> {bound:?}), \
             ending at {:?}",
            at.map(|t| t - self.t0)
        );
    }

    /// Heartbeats stay near one per interval per node: no storms.
    pub fn check_heartbeat_budget(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let periodic = (self.elapsed().as_nanos() / n.cfg.interval.as_nanos()) as u64 + 1;
            let changes = n.actions.len() as u64 + self.events;
            // Each run's first, each periodic one, and a few per state change of either
            // node (immediate sends on advert changes).
            let budget = 2 * periodic + 6 * changes + 4 * self.takeovers.len() as u64 + 16;
            assert!(
                n.sent <= budget,
                "node {i} sent {} heartbeats, budget {budget}",
                n.sent
            );
        }
    }
}
