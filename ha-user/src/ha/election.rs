//! The election state machine: no I/O, no clock reads, every deadline visible through
//! [`Election::poll_timeout`]. The rules are listed in the module docs of [`super`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::{ConfigError, ElectionConfig};
use super::event::{Action, Input, Reason, Resolution};
use super::heartbeat::{Demotion, Echo, Flags, Heartbeat, Role};
use super::rank::Standing;
use super::status::{PeerStatus, Stats, Status};
use crate::config::FailbackMode;
use crate::sync::ratelimit::RateLimiter;

/// What we know of the peer: its latest heartbeat and when things started.
#[derive(Clone, Copy, Debug)]
struct PeerView {
    hb: Heartbeat,
    last_heard: Instant,
    alive: bool,
    /// Its heartbeat says it hears this run of us.
    hears_us: bool,
    /// Start of the current alive stretch.
    heard_since: Instant,
    /// Start of the current two-way contact (alive and hears us).
    contact_since: Option<Instant>,
}

/// `since + d <= now`; a deadline past the end of time is never reached.
fn reached(now: Instant, since: Instant, d: Duration) -> bool {
    since.checked_add(d).is_some_and(|t| now >= t)
}

pub struct Election {
    cfg: ElectionConfig,
    dead: Duration,
    started: Instant,
    starting: bool,
    role: Role,
    reason: Reason,
    role_since: Instant,
    sync_link_up: bool,
    monitored_up: bool,
    synced: bool,
    interfaces_up: bool,
    maintenance: bool,
    promoted: bool,
    /// Generation of our promotion, and the highest generation known.
    my_gen: u32,
    max_gen: u32,
    healthy_since: Option<Instant>,
    wants_failback: bool,
    peer: Option<PeerView>,
    split_brain: bool,
    unserved_warned: bool,
    seq: u64,
    next_send: Instant,
    send_pending: bool,
    /// What the last heartbeat said (sequence numbers zeroed): a change is sent at once.
    last_advert: Option<Heartbeat>,
    actions: VecDeque<Action>,
    stats: Stats,
    log: RateLimiter<1>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("node", &self.cfg.node_id)
            .field("role", &self.role)
            .field("reason", &self.reason)
            .field("peer", &self.peer.map(|p| (p.hb.node, p.hb.role, p.alive)))
            .finish_non_exhaustive()
    }
}

impl Election {
    /// A node at start: BACKUP, listening for the dead interval (or until it hears the
    /// peer) before it may claim PRIMARY. Queues `BecomeBackup { Startup }` (and
    /// `InterfacesMayGoUp` when no sync is required) and a first heartbeat.
    pub fn new(cfg: ElectionConfig, now: Instant) -> Result<Election, ConfigError> {
        cfg.validate()?;
        let mut e = Election {
            dead: cfg.dead_interval(),
            started: now,
            starting: true,
            role: Role::Backup,
            reason: Reason::Startup,
            role_since: now,
            sync_link_up: true,
            monitored_up: true,
            synced: false,
            interfaces_up: false,
            maintenance: false,
            promoted: false,
            my_gen: 0,
            max_gen: 0,
            healthy_since: None,
            wants_failback: false,
            peer: None,
            split_brain: false,
            unserved_warned: false,
            seq: 0,
            next_send: now,
            send_pending: true,
            last_advert: None,
            actions: VecDeque::new(),
            stats: Stats::default(),
            log: RateLimiter::new(Duration::from_secs(1)),
            cfg,
        };
        e.actions.push_back(Action::BecomeBackup {
            reason: Reason::Startup,
        });
        if !e.cfg.require_sync {
            e.set_synced();
        }
        tracing::info!(
            node = e.cfg.node_id,
            epoch = e.cfg.epoch,
            priority = e.cfg.priority,
            listen = ?e.dead,
            "ha: started as backup, listening for the peer"
        );
        e.evaluate(now);
        Ok(e)
    }

    /// Feeds one input. Follow with `poll_transmit` / `poll_action`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.refresh(now);
        match input {
            Input::Heartbeat(hb) => self.on_heartbeat(now, hb),
            Input::LocalHealth {
                sync_link_up,
                monitored_up,
            } => {
                if sync_link_up != self.sync_link_up || monitored_up != self.monitored_up {
                    tracing::info!(sync_link_up, monitored_up, "ha: local health changed");
                }
                self.sync_link_up = sync_link_up;
                self.monitored_up = monitored_up;
            }
            Input::SyncComplete => {
                if !self.synced {
                    tracing::info!("ha: bulk sync complete");
                }
                self.set_synced();
            }
            Input::SyncLost => {
                if self.role != Role::Primary && self.synced {
                    tracing::warn!("ha: conntrack copy incomplete, demoted until resynced");
                    self.synced = false;
                }
            }
            Input::Promote => {
                self.maintenance = false;
                if !self.promoted {
                    self.promoted = true;
                    self.max_gen = self.max_gen.saturating_add(1);
                    self.my_gen = self.max_gen;
                }
                tracing::warn!(generation = self.my_gen, "ha: operator promoted this node");
            }
            Input::Demote => {
                self.maintenance = true;
                self.promoted = false;
                tracing::warn!("ha: operator put this node in maintenance");
            }
            Input::ClearOperator => {
                self.maintenance = false;
                self.promoted = false;
                tracing::info!("ha: operator overrides cleared, automatic election");
            }
        }
        self.evaluate(now);
    }

    /// Call when `poll_timeout` has passed (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.refresh(now);
        self.evaluate(now);
    }

    /// The earliest instant something changes without input: the next heartbeat, the
    /// end of the startup listen, the peer's death, the one-way split-brain yield, the
    /// failback countdown. Nothing else is timed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_send;
        let mut add = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        if self.starting {
            add(self.started.checked_add(self.dead));
        }
        if let Some(p) = self.peer.as_ref().filter(|p| p.alive) {
            let d = self.dead_for(p);
            add(p.last_heard.checked_add(d));
            if self.role == Role::Primary && p.hb.role == Role::Primary && !p.hears_us {
                add(p.heard_since.checked_add(d));
            }
        }
        if !self.wants_failback {
            add(self.failback_at());
        }
        Some(t)
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The heartbeat to send now, if one is due (periodic, or because what we
    /// advertise changed). Encode it with `heartbeat::encode`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Heartbeat> {
        if !self.send_pending && now < self.next_send {
            return None;
        }
        self.seq += 1;
        let hb = self.build(self.seq);
        self.last_advert = Some(self.advert());
        self.send_pending = false;
        self.next_send = now.checked_add(self.cfg.interval).unwrap_or(now);
        self.stats.heartbeats_sent += 1;
        Some(hb)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// What the next heartbeat would say (with the next sequence number), without
    /// sending it: for status displays and tests.
    pub fn heartbeat(&self) -> Heartbeat {
        self.build(self.seq + 1)
    }

    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    pub fn status(&self) -> Status {
        Status {
            node_id: self.cfg.node_id,
            epoch: self.cfg.epoch,
            priority: self.cfg.priority,
            role: self.role,
            reason: self.reason,
            role_since: self.role_since,
            starting: self.starting,
            demotion: self.demotion(),
            synced: self.synced,
            maintenance: self.maintenance,
            promoted: self.promoted,
            wants_failback: self.wants_failback,
            failback_at: self.failback_at(),
            split_brain: self.split_brain,
            peer: self.peer.map(|p| PeerStatus {
                node: p.hb.node,
                epoch: p.hb.epoch,
                role: p.hb.role,
                priority: p.hb.priority,
                demotion: p.hb.demotion,
                flags: p.hb.flags,
                interval: p.hb.interval,
                last_seq: p.hb.seq,
                last_heard: p.last_heard,
                alive: p.alive,
                hears_us: p.hears_us,
                contact_since: p.contact_since,
            }),
            stats: self.stats,
        }
    }

    // ---- state ----

    fn demotion(&self) -> Demotion {
        let mut d = Demotion::empty();
        d.set(Demotion::SYNC_LINK_DOWN, !self.sync_link_up);
        d.set(Demotion::MONITOR_DOWN, !self.monitored_up);
        d.set(Demotion::NOT_SYNCED, !self.synced);
        d.set(Demotion::MAINTENANCE, self.maintenance);
        d
    }

    fn standing(&self) -> Standing {
        Standing {
            node: self.cfg.node_id,
            priority: self.cfg.priority,
            demotion: self.demotion(),
            promoted: self.promoted,
            promote_gen: self.my_gen,
        }
    }

    /// The peer is dead after `threshold` of the slower of the two intervals, so a
    /// mismatched configuration never makes a live peer look dead.
    fn dead_for(&self, p: &PeerView) -> Duration {
        self.cfg
            .interval
            .max(p.hb.interval)
            .saturating_mul(self.cfg.threshold)
    }

    fn alive_peer(&self) -> Option<&PeerView> {
        self.peer.as_ref().filter(|p| p.alive)
    }

    fn set_synced(&mut self) {
        self.synced = true;
        if !self.interfaces_up {
            self.interfaces_up = true;
            self.actions.push_back(Action::InterfacesMayGoUp);
        }
    }

    fn build(&self, seq: u64) -> Heartbeat {
        let mut flags = Flags::empty();
        flags.set(Flags::HEARS_PEER, self.alive_peer().is_some());
        flags.set(Flags::WANTS_FAILBACK, self.wants_failback);
        flags.set(Flags::PROMOTED, self.promoted);
        flags.set(Flags::STARTING, self.starting);
        Heartbeat {
            node: self.cfg.node_id,
            epoch: self.cfg.epoch,
            seq,
            role: self.role,
            priority: self.cfg.priority,
            flags,
            demotion: self.demotion(),
            promote_gen: if self.promoted {
                self.my_gen
            } else {
                self.max_gen
            },
            interval: self.cfg.interval,
            peer: self.peer.map(|p| Echo {
                node: p.hb.node,
                epoch: p.hb.epoch,
                seq: p.hb.seq,
            }),
        }
    }

    /// The heartbeat without its moving parts (sequence numbers).
    fn advert(&self) -> Heartbeat {
        let mut hb = self.build(0);
        if let Some(e) = &mut hb.peer {
            e.seq = 0;
        }
        hb
    }

    /// Time-driven changes: end of the startup listen, peer death, heartbeat due.
    fn refresh(&mut self, now: Instant) {
        if self.starting && reached(now, self.started, self.dead) {
            self.starting = false;
            tracing::debug!("ha: startup listen over");
        }
        if let Some(p) = self.peer
            && p.alive
            && reached(now, p.last_heard, self.dead_for(&p))
        {
            self.peer = Some(PeerView {
                alive: false,
                hears_us: false,
                contact_since: None,
                ..p
            });
            self.stats.peer_losses += 1;
            self.actions.push_back(Action::PeerDown { node: p.hb.node });
            tracing::warn!(
                peer = p.hb.node,
                silent = ?now.saturating_duration_since(p.last_heard),
                "ha: peer dead (no heartbeat for the dead interval)"
            );
        }
        if now >= self.next_send {
            self.send_pending = true;
        }
    }

    fn on_heartbeat(&mut self, now: Instant, hb: Heartbeat) {
        if hb.node == self.cfg.node_id {
            return; // the receiver refuses these; never trust our own id
        }
        if let Some(p) = &self.peer {
            if p.hb.node != hb.node {
                if p.alive {
                    self.stats.heartbeats_foreign += 1;
                    if let Some(suppressed) = self.log.check(0, now) {
                        tracing::warn!(
                            peer = p.hb.node,
                            other = hb.node,
                            suppressed,
                            "ha: heartbeat from a third node ignored (same secret on more than two nodes?)"
                        );
                    }
                    return;
                }
            } else if p.hb.epoch == hb.epoch && hb.seq <= p.hb.seq {
                // Reordered: an older state must not overwrite a newer one.
                self.stats.heartbeats_stale += 1;
                return;
            }
        }
        self.stats.heartbeats_received += 1;
        let hears_us = hb.flags.contains(Flags::HEARS_PEER)
            && hb
                .peer
                .is_some_and(|e| e.node == self.cfg.node_id && e.epoch == self.cfg.epoch);
        let current = self
            .peer
            .filter(|p| p.hb.node == hb.node && p.hb.epoch == hb.epoch);
        let restarted = current.is_none() && self.peer.is_some_and(|p| p.hb.node == hb.node);
        let came_alive = !current.is_some_and(|p| p.alive);
        let heard_since = match current {
            Some(p) if p.alive => p.heard_since,
            _ => now,
        };
        self.peer = Some(PeerView {
            hb,
            last_heard: now,
            alive: true,
            hears_us,
            heard_since,
            contact_since: current.filter(|p| p.alive).and_then(|p| p.contact_since),
        });
        if restarted {
            self.stats.peer_restarts += 1;
        }
        if came_alive {
            tracing::info!(
                peer = hb.node,
                epoch = hb.epoch,
                role = %hb.role,
                restarted,
                "ha: peer alive"
            );
            self.actions.push_back(Action::PeerUp {
                node: hb.node,
                epoch: hb.epoch,
                restarted,
            });
        }
        if self.starting {
            self.starting = false;
            tracing::debug!(peer = hb.node, "ha: startup listen over: peer heard");
        }
        let them = Standing::of(&hb);
        if self.promoted && them.promoted && them.beats(&self.standing()) {
            self.promoted = false;
            tracing::warn!(
                peer = hb.node,
                "ha: our promotion was superseded by a newer one on the peer"
            );
        }
        self.max_gen = self.max_gen.max(hb.promote_gen);
        // Before evaluating: a split brain must be seen (and counted) even though the
        // evaluation may end it at once.
        self.update_split_brain();
    }

    // ---- decisions ----

    /// Runs the rules to a fixed point and notes what must be sent.
    fn evaluate(&mut self, now: Instant) {
        for _ in 0..4 {
            self.update_derived(now);
            let Some((to, reason)) = self.decide(now) else {
                break;
            };
            self.transition(now, to, reason);
        }
        self.update_derived(now);
        self.update_split_brain();
        self.warn_unserved();
        if self.last_advert != Some(self.advert()) {
            self.send_pending = true;
        }
    }

    fn update_derived(&mut self, now: Instant) {
        if self.standing().healthy() {
            self.healthy_since.get_or_insert(now);
        } else {
            self.healthy_since = None;
        }
        if let Some(p) = &mut self.peer {
            if p.alive && p.hears_us {
                p.contact_since.get_or_insert(now);
            } else {
                p.contact_since = None;
            }
        }
        // Once asked, the request stands while the primary releases the role (its
        // heartbeat then says BACKUP, which no longer satisfies `failback_at`).
        let releasing = self.wants_failback
            && self.role == Role::Backup
            && self.standing().healthy()
            && self
                .alive_peer()
                .is_some_and(|p| p.hears_us && p.hb.role == Role::Backup);
        self.wants_failback = releasing || self.failback_at().is_some_and(|t| now >= t);
    }

    /// When this node will ask for failback if nothing changes: auto mode, backup,
    /// healthy, strictly preferred (lower priority value) over a primary peer that is
    /// not operator-promoted, after `failback_delay` of being healthy *and* in two-way
    /// contact.
    fn failback_at(&self) -> Option<Instant> {
        if self.cfg.failback != FailbackMode::Auto
            || self.role != Role::Backup
            || self.starting
            || self.promoted
        {
            return None;
        }
        let healthy = self.healthy_since?;
        let p = self.alive_peer().filter(|p| p.hears_us)?;
        let them = Standing::of(&p.hb);
        if p.hb.role != Role::Primary || them.promoted || self.cfg.priority >= them.priority {
            return None;
        }
        healthy
            .max(p.contact_since?)
            .checked_add(self.cfg.failback_delay)
    }

    fn decide(&self, now: Instant) -> Option<(Role, Reason)> {
        if !self.monitored_up {
            return (self.role != Role::Fault).then_some((Role::Fault, Reason::MonitorDown));
        }
        match self.role {
            Role::Fault => Some(match self.should_take() {
                Some(r) => (Role::Primary, r),
                None => (Role::Backup, Reason::FaultCleared),
            }),
            Role::Primary => self.should_step_down(now).map(|r| (Role::Backup, r)),
            Role::Backup => self.should_take().map(|r| (Role::Primary, r)),
        }
    }

    /// A primary leaves only by its own decision; the peer never forces it (except
    /// by being primary too).
    fn should_step_down(&self, now: Instant) -> Option<Reason> {
        if self.maintenance {
            return Some(Reason::Maintenance);
        }
        let p = self.alive_peer()?;
        let me = self.standing();
        let them = Standing::of(&p.hb);
        match p.hb.role {
            Role::Primary if p.hears_us => them.beats(&me).then_some(Reason::SplitBrain),
            // It cannot hear us, so it will never step down: yield once it has had a
            // dead interval to start hearing us (after a partition heals it will).
            Role::Primary => {
                reached(now, p.heard_since, self.dead_for(p)).then_some(Reason::PeerCannotHearUs)
            }
            Role::Fault => None,
            Role::Backup => {
                if !p.hears_us || !them.eligible() {
                    return None; // no handover without two-way contact
                }
                if them.promoted && them.beats(&me) {
                    return Some(Reason::PeerPromoted);
                }
                if me.promoted {
                    return None;
                }
                if them.healthy() && me.demotion.intersects(Demotion::SOFT) {
                    return Some(Reason::PeerHealthier);
                }
                if p.hb.flags.contains(Flags::WANTS_FAILBACK)
                    && them.healthy()
                    && them.priority < me.priority
                {
                    return Some(Reason::Failback);
                }
                None
            }
        }
    }

    /// A backup takes the role only when no live peer holds it.
    fn should_take(&self) -> Option<Reason> {
        let me = self.standing();
        if !me.eligible() || (self.starting && !self.promoted) {
            return None;
        }
        let Some(p) = self.alive_peer() else {
            return Some(if self.promoted {
                Reason::Promoted
            } else if self.peer.is_some() {
                Reason::PeerDead
            } else {
                Reason::NoPeer
            });
        };
        if p.hb.role == Role::Primary {
            return None;
        }
        let them = Standing::of(&p.hb);
        let won = if self.promoted {
            Reason::Promoted
        } else if self.wants_failback {
            Reason::Failback
        } else {
            Reason::Elected
        };
        if !them.eligible() {
            return Some(if self.promoted {
                Reason::Promoted
            } else {
                Reason::PeerUnavailable
            });
        }
        if !p.hears_us {
            return None; // it thinks we are dead and will take the role itself
        }
        me.beats(&them).then_some(won)
    }

    fn transition(&mut self, now: Instant, to: Role, reason: Reason) {
        let from = self.role;
        self.role = to;
        self.reason = reason;
        self.role_since = now;
        self.stats.transitions += 1;
        self.send_pending = true;
        if from == Role::Primary && self.promoted {
            // A promotion lasts while the role it gave is held.
            self.promoted = false;
        }
        let peer = self.peer.map(|p| p.hb.node);
        // Failures are warnings; planned moves (election, failback, operator) are info.
        let failure = matches!(
            reason,
            Reason::PeerDead
                | Reason::PeerUnavailable
                | Reason::SplitBrain
                | Reason::PeerCannotHearUs
                | Reason::PeerHealthier
        );
        match to {
            Role::Primary => {
                self.wants_failback = false;
                self.starting = false;
                // The primary's table is the reference from now on.
                self.set_synced();
                if failure {
                    tracing::warn!(%from, %reason, ?peer, "ha: becoming PRIMARY");
                } else {
                    tracing::info!(%from, %reason, ?peer, "ha: becoming PRIMARY");
                }
                self.actions.push_back(Action::BecomePrimary { reason });
            }
            Role::Backup => {
                if failure {
                    tracing::warn!(%from, %reason, ?peer, "ha: becoming BACKUP");
                } else {
                    tracing::info!(%from, %reason, ?peer, "ha: becoming BACKUP");
                }
                self.actions.push_back(Action::BecomeBackup { reason });
            }
            Role::Fault => {
                tracing::error!(%from, %reason, ?peer, "ha: entering FAULT");
                self.actions.push_back(Action::EnterFault { reason });
            }
        }
    }

    /// Both primary while hearing each other: counted and logged once per episode.
    fn update_split_brain(&mut self) {
        let Some(p) = self
            .alive_peer()
            .filter(|p| p.hb.role == Role::Primary && self.role == Role::Primary)
            .copied()
        else {
            self.split_brain = false;
            return;
        };
        if self.split_brain {
            return;
        }
        self.split_brain = true;
        self.stats.split_brains += 1;
        let resolution = if Standing::of(&p.hb).beats(&self.standing()) {
            Resolution::StepDown
        } else if p.hears_us {
            Resolution::KeepPrimary
        } else {
            Resolution::WaitForPeer
        };
        tracing::error!(
            peer = p.hb.node,
            peer_priority = p.hb.priority,
            priority = self.cfg.priority,
            ?resolution,
            count = self.stats.split_brains,
            "ha: SPLIT BRAIN: both nodes are primary"
        );
        self.actions.push_back(Action::SplitBrain {
            peer: p.hb.node,
            resolution,
        });
    }

    /// Nobody serves and we will not: say so once (maintenance or fault with the peer
    /// down or unavailable).
    fn warn_unserved(&mut self) {
        let peer_serves_or_could = self
            .alive_peer()
            .is_some_and(|p| p.hb.role == Role::Primary || Standing::of(&p.hb).eligible());
        let unserved = self.role != Role::Primary
            && !self.standing().eligible()
            && !self.starting
            && !peer_serves_or_could;
        if unserved && !self.unserved_warned {
            tracing::error!(
                demotion = %self.demotion(),
                "ha: NO NODE IS PRIMARY: this node may not serve and the peer is down or unavailable"
            );
        }
        self.unserved_warned = unserved;
    }
}
