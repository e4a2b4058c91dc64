//! Rule-by-rule tests of one `Election` against a hand-driven peer ("puppet"), and an
//! exhaustive table of one-step decisions checked against an independent statement of
//! the rules.

use std::time::{Duration, Instant};

use super::*;
use crate::config::FailbackMode;

const ME: u32 = 10;
const MY_EPOCH: u32 = 0xabc;
const PEER: u32 = 20;
const S: Duration = Duration::from_secs(1);

fn cfg(priority: u8) -> ElectionConfig {
    let mut c = ElectionConfig::new(ME, MY_EPOCH);
    c.priority = priority;
    c.interval = S;
    c.threshold = 3;
    c.failback_delay = Duration::from_secs(10);
    c.require_sync = true;
    c
}

/// A fake peer whose heartbeats the test writes by hand.
#[derive(Clone, Copy, Debug)]
struct Puppet {
    hb: Heartbeat,
}

impl Puppet {
    fn new(priority: u8) -> Puppet {
        Puppet {
            hb: Heartbeat {
                node: PEER,
                epoch: 77,
                seq: 0,
                role: Role::Backup,
                priority,
                flags: Flags::empty(),
                demotion: Demotion::empty(),
                promote_gen: 0,
                interval: S,
                peer: None,
            },
        }
    }

    fn role(mut self, r: Role) -> Puppet {
        self.hb.role = r;
        if r == Role::Fault {
            self.hb.demotion.set(Demotion::MONITOR_DOWN, true);
        }
        self
    }

    fn demoted(mut self, d: Demotion) -> Puppet {
        self.hb.demotion = self.hb.demotion.union(d);
        self
    }

    fn flag(mut self, f: Flags, on: bool) -> Puppet {
        self.hb.flags.set(f, on);
        self
    }

    /// Echo us, with HEARS_PEER.
    fn hearing(mut self) -> Puppet {
        self.hb.peer = Some(Echo {
            node: ME,
            epoch: MY_EPOCH,
            seq: 1,
        });
        self.hb.flags.set(Flags::HEARS_PEER, true);
        self
    }

    fn deaf(mut self) -> Puppet {
        self.hb.peer = None;
        self.hb.flags.set(Flags::HEARS_PEER, false);
        self
    }

    fn send(&mut self, e: &mut Election, now: Instant) {
        self.hb.seq += 1;
        e.handle(now, Input::Heartbeat(self.hb));
    }
}

fn drain(e: &mut Election) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

fn tx(e: &mut Election, now: Instant) -> Vec<Heartbeat> {
    std::iter::from_fn(|| e.poll_transmit(now)).collect()
}

fn roles(actions: &[Action]) -> Vec<(Role, Reason)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::BecomePrimary { reason } => Some((Role::Primary, reason)),
            Action::BecomeBackup { reason } => Some((Role::Backup, reason)),
            Action::EnterFault { reason } => Some((Role::Fault, reason)),
            _ => None,
        })
        .collect()
}

/// Drives timeouts (and sends) up to `end`, the way a driver would.
fn advance(e: &mut Election, from: Instant, end: Instant) -> Instant {
    let mut now = from;
    while let Some(t) = e.poll_timeout() {
        if t > end {
            break;
        }
        now = now.max(t);
        e.handle_timeout(now);
        tx(e, now);
    }
    end.max(now)
}

/// Keeps a puppet talking every second from `from` to `end` while the election runs.
fn converse(e: &mut Election, p: &mut Puppet, from: Instant, end: Instant) -> Instant {
    let mut now = from;
    while now < end {
        let next = (now + S).min(end);
        now = advance(e, now, next);
        p.send(e, now);
        tx(e, now);
    }
    now
}

/// A node that has been primary alone, healthy; the puppet not heard yet.
fn primary_alone(priority: u8) -> (Election, Instant) {
    let t0 = Instant::now();
    let mut e = Election::new(cfg(priority), t0).unwrap();
    e.handle(t0, Input::SyncComplete);
    let now = advance(&mut e, t0, t0 + 3 * S);
    assert_eq!(e.role(), Role::Primary);
    drain(&mut e);
    (e, now)
}

/// A backup that heard the puppet (primary) and is synced.
fn backup_of(priority: u8, p: &mut Puppet) -> (Election, Instant) {
    let t0 = Instant::now();
    let mut e = Election::new(cfg(priority), t0).unwrap();
    p.send(&mut e, t0);
    e.handle(t0, Input::SyncComplete);
    tx(&mut e, t0);
    assert_eq!(e.role(), Role::Backup);
    drain(&mut e);
    (e, t0)
}

#[test]
fn start_listens_for_the_dead_interval_then_takes_alone() {
    let t0 = Instant::now();
    let mut e = Election::new(cfg(100), t0).unwrap();
    assert_eq!(
        drain(&mut e),
        vec![Action::BecomeBackup {
            reason: Reason::Startup
        }]
    );
    let first = tx(&mut e, t0);
    assert_eq!(first.len(), 1);
    assert!(first[0].flags.contains(Flags::STARTING));
    assert_eq!(first[0].seq, 1);
    assert_eq!(first[0].demotion, Demotion::NOT_SYNCED);
    assert_eq!(e.poll_timeout(), Some(t0 + S), "next heartbeat first");
    advance(&mut e, t0, t0 + 3 * S - Duration::from_nanos(1));
    assert_eq!(e.role(), Role::Backup);
    assert!(e.status().starting);
    advance(&mut e, t0, t0 + 3 * S);
    assert_eq!(e.role(), Role::Primary);
    let st = e.status();
    assert_eq!((st.reason, st.role_since), (Reason::NoPeer, t0 + 3 * S));
    assert_eq!(
        drain(&mut e),
        vec![
            Action::InterfacesMayGoUp,
            Action::BecomePrimary {
                reason: Reason::NoPeer
            }
        ]
    );
    assert!(st.synced, "the primary's table is the reference");
}

#[test]
fn no_sync_required_means_interfaces_up_at_once() {
    let t0 = Instant::now();
    let mut c = cfg(100);
    c.require_sync = false;
    let mut e = Election::new(c, t0).unwrap();
    assert_eq!(
        drain(&mut e),
        vec![
            Action::BecomeBackup {
                reason: Reason::Startup
            },
            Action::InterfacesMayGoUp
        ]
    );
    assert!(tx(&mut e, t0)[0].demotion.is_empty());
}

#[test]
fn a_primary_heard_during_startup_keeps_us_backup() {
    let t0 = Instant::now();
    let mut e = Election::new(cfg(1), t0).unwrap();
    let mut p = Puppet::new(200).role(Role::Primary);
    p.send(&mut e, t0 + S / 2);
    assert!(!e.status().starting, "hearing the peer ends the listen");
    converse(&mut e, &mut p, t0 + S / 2, t0 + 10 * S);
    assert_eq!(
        e.role(),
        Role::Backup,
        "better priority, but unsynced: no preemption"
    );
    assert_eq!(e.status().failback_at, None);
    assert!(roles(&drain(&mut e)).len() == 1, "only the startup backup");
    // The heartbeat we send says we hear it.
    let hb = e.heartbeat();
    assert!(hb.flags.contains(Flags::HEARS_PEER));
    assert_eq!(hb.peer.map(|e| (e.node, e.epoch)), Some((PEER, 77)));
}

#[test]
fn dead_peer_is_taken_over_after_exactly_the_dead_interval() {
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    let (mut e, t0) = backup_of(100, &mut p);
    let last = converse(&mut e, &mut p, t0, t0 + 5 * S);
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(e.poll_timeout(), Some(last + S).min(Some(last + 3 * S)));
    advance(&mut e, last, last + 3 * S - Duration::from_nanos(1));
    assert_eq!(e.role(), Role::Backup);
    advance(&mut e, last, last + 3 * S);
    assert_eq!(e.role(), Role::Primary);
    assert_eq!(
        roles(&drain(&mut e)),
        vec![(Role::Primary, Reason::PeerDead)]
    );
    let st = e.status();
    assert_eq!(st.stats.peer_losses, 1);
    assert!(!st.peer.unwrap().alive);
}

#[test]
fn a_slower_peer_interval_stretches_the_dead_interval() {
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    p.hb.interval = 2 * S;
    let (mut e, t0) = backup_of(100, &mut p);
    advance(&mut e, t0, t0 + 6 * S - Duration::from_nanos(1));
    assert_eq!(e.role(), Role::Backup);
    advance(&mut e, t0, t0 + 6 * S);
    assert_eq!(e.role(), Role::Primary);
}

#[test]
fn fault_is_immediate_never_primary_and_clears_to_the_right_role() {
    let (mut e, now) = primary_alone(100);
    let down = Input::LocalHealth {
        sync_link_up: true,
        monitored_up: false,
    };
    let up = Input::LocalHealth {
        sync_link_up: true,
        monitored_up: true,
    };
    e.handle(now, down);
    assert_eq!(
        roles(&drain(&mut e)),
        vec![(Role::Fault, Reason::MonitorDown)]
    );
    assert_eq!(tx(&mut e, now)[0].role, Role::Fault, "sent at once");
    // Alone: nothing could take over; promotion waits too.
    e.handle(now, Input::Promote);
    let later = advance(&mut e, now, now + 20 * S);
    assert_eq!(e.role(), Role::Fault);
    // Monitors back, no peer: straight to primary (promotion pending).
    e.handle(later, up);
    assert_eq!(
        roles(&drain(&mut e)),
        vec![(Role::Primary, Reason::Promoted)]
    );
    // With a live primary peer the fault clears to backup.
    let mut p = Puppet::new(200).role(Role::Backup).hearing();
    let (mut e, t) = primary_alone(100);
    p.send(&mut e, t);
    e.handle(t, down);
    let mut p = p.role(Role::Primary);
    p.send(&mut e, t + S);
    e.handle(t + S, up);
    assert_eq!(
        roles(&drain(&mut e)),
        vec![
            (Role::Fault, Reason::MonitorDown),
            (Role::Backup, Reason::FaultCleared)
        ]
    );
}

#[test]
fn maintenance_never_takes_the_role_not_even_alone() {
    let (mut e, now) = primary_alone(100);
    e.handle(now, Input::Demote);
    assert_eq!(
        roles(&drain(&mut e)),
        vec![(Role::Backup, Reason::Maintenance)]
    );
    let hb = tx(&mut e, now);
    assert!(hb[0].demotion.contains(Demotion::MAINTENANCE));
    let later = advance(&mut e, now, now + 100 * S);
    assert_eq!(e.role(), Role::Backup);
    assert!(e.status().maintenance);
    // Cleared: alone, so it takes at once.
    e.handle(later, Input::ClearOperator);
    assert_eq!(roles(&drain(&mut e)), vec![(Role::Primary, Reason::NoPeer)]);
}

#[test]
fn maintenance_hands_over_to_the_peer_at_once() {
    let (mut e, now) = primary_alone(1);
    let mut p = Puppet::new(200).hearing();
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Primary);
    e.handle(now, Input::Demote);
    assert_eq!(e.role(), Role::Backup);
    // The peer takes (it sees us ineligible); we stay backup.
    let mut p = p.role(Role::Primary);
    p.send(&mut e, now + S);
    assert_eq!(e.role(), Role::Backup);
    // Promote clears maintenance and moves the role back by handover.
    e.handle(now + 2 * S, Input::Promote);
    assert_eq!(
        e.role(),
        Role::Backup,
        "release-then-take: the peer goes first"
    );
    let hb = tx(&mut e, now + 2 * S);
    assert!(hb.last().unwrap().flags.contains(Flags::PROMOTED));
    let mut p = p.role(Role::Backup);
    p.send(&mut e, now + 2 * S);
    assert_eq!(e.role(), Role::Primary);
    assert_eq!(e.status().reason, Reason::Promoted);
}

#[test]
fn soft_demoted_primary_hands_over_to_a_healthy_peer_only() {
    let link_down = Input::LocalHealth {
        sync_link_up: false,
        monitored_up: true,
    };
    // Peer healthy and hearing us: immediate handover.
    let (mut e, now) = primary_alone(1);
    let mut p = Puppet::new(200).hearing();
    p.send(&mut e, now);
    e.handle(now, link_down);
    assert_eq!(
        roles(&drain(&mut e)),
        vec![(Role::Backup, Reason::PeerHealthier)]
    );
    // Peer soft-demoted too: keep the role.
    let (mut e, now) = primary_alone(1);
    let mut p = Puppet::new(200).hearing().demoted(Demotion::NOT_SYNCED);
    p.send(&mut e, now);
    e.handle(now, link_down);
    assert_eq!(e.role(), Role::Primary);
    // Peer healthy but deaf to us: no handover without two-way contact.
    let (mut e, now) = primary_alone(1);
    let mut p = Puppet::new(200).deaf();
    p.send(&mut e, now);
    e.handle(now, link_down);
    assert_eq!(e.role(), Role::Primary);
    // Promoted primary keeps the role whatever its health.
    let (mut e, now) = primary_alone(1);
    e.handle(now, Input::Promote);
    let mut p = Puppet::new(200).hearing();
    p.send(&mut e, now);
    e.handle(now, link_down);
    assert_eq!(e.role(), Role::Primary);
}

#[test]
fn unsynced_backup_never_preempts_and_syncs_before_failback() {
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    let t0 = Instant::now();
    let mut e = Election::new(cfg(1), t0).unwrap();
    p.send(&mut e, t0);
    let t = converse(&mut e, &mut p, t0, t0 + 30 * S);
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(e.status().failback_at, None, "countdown needs health");
    drain(&mut e);
    e.handle(t, Input::SyncComplete);
    assert_eq!(e.status().failback_at, Some(t + 10 * S));
    assert_eq!(drain(&mut e), vec![Action::InterfacesMayGoUp]);
}

#[test]
fn failback_after_exactly_the_delay_then_release_then_take() {
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    let (mut e, t0) = backup_of(1, &mut p);
    assert_eq!(e.status().failback_at, Some(t0 + 10 * S));
    let t = converse(&mut e, &mut p, t0, t0 + 10 * S - Duration::from_millis(1));
    assert!(!e.status().wants_failback);
    let t = advance(&mut e, t, t0 + 10 * S);
    assert!(e.status().wants_failback);
    let hb = tx(&mut e, t);
    assert!(hb.is_empty(), "already sent by advance");
    // The last heartbeat sent (at t0 + 10 s) carried the flag: check via a fresh build.
    assert!(e.heartbeat().flags.contains(Flags::WANTS_FAILBACK));
    assert_eq!(e.role(), Role::Backup, "never take from a live primary");
    let mut p = p.role(Role::Backup);
    p.send(&mut e, t + Duration::from_millis(1));
    assert_eq!(e.role(), Role::Primary);
    assert_eq!(e.status().reason, Reason::Failback);
    assert!(!e.status().wants_failback);
}

#[test]
fn failback_countdown_restarts_on_any_interruption() {
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    let (mut e, t0) = backup_of(1, &mut p);
    let t = converse(&mut e, &mut p, t0, t0 + 5 * S);
    // Peer stops hearing us: contact broken.
    let mut deaf = p.deaf();
    deaf.send(&mut e, t);
    assert_eq!(e.status().failback_at, None);
    let mut p = deaf.hearing();
    p.send(&mut e, t + S);
    assert_eq!(e.status().failback_at, Some(t + S + 10 * S));
    // Own health flap restarts it as well.
    e.handle(
        t + 2 * S,
        Input::LocalHealth {
            sync_link_up: false,
            monitored_up: true,
        },
    );
    assert_eq!(e.status().failback_at, None);
    e.handle(
        t + 3 * S,
        Input::LocalHealth {
            sync_link_up: true,
            monitored_up: true,
        },
    );
    assert_eq!(e.status().failback_at, Some(t + 13 * S));
    // A peer restart (new epoch) too.
    let mut p2 = Puppet::new(200).role(Role::Primary).hearing();
    p2.hb.epoch = 78;
    p2.send(&mut e, t + 4 * S);
    assert_eq!(e.status().failback_at, Some(t + 14 * S));
    assert_eq!(e.status().stats.peer_restarts, 1);
}

#[test]
fn manual_mode_and_equal_priority_never_fail_back() {
    for (mode, prio) in [(FailbackMode::Manual, 1), (FailbackMode::Auto, 200)] {
        let mut p = Puppet::new(200).role(Role::Primary).hearing();
        let t0 = Instant::now();
        let mut c = cfg(prio);
        c.failback = mode;
        let mut e = Election::new(c, t0).unwrap();
        p.send(&mut e, t0);
        e.handle(t0, Input::SyncComplete);
        converse(&mut e, &mut p, t0, t0 + 100 * S);
        assert_eq!(e.role(), Role::Backup, "{mode:?} {prio}");
        assert!(!e.status().wants_failback);
        assert_eq!(e.status().failback_at, None);
    }
}

#[test]
fn incumbent_honours_wants_failback_only_from_a_better_healthy_hearing_peer() {
    let case = |prio_peer: u8, p: Puppet| {
        let (mut e, now) = primary_alone(100);
        let mut p = Puppet {
            hb: Heartbeat {
                priority: prio_peer,
                ..p.hb
            },
        }
        .flag(Flags::WANTS_FAILBACK, true);
        p.send(&mut e, now);
        e.role()
    };
    assert_eq!(case(50, Puppet::new(0).hearing()), Role::Backup);
    assert_eq!(case(100, Puppet::new(0).hearing()), Role::Primary, "equal");
    assert_eq!(case(150, Puppet::new(0).hearing()), Role::Primary, "worse");
    assert_eq!(case(50, Puppet::new(0).deaf()), Role::Primary, "deaf");
    assert_eq!(
        case(50, Puppet::new(0).hearing().demoted(Demotion::NOT_SYNCED)),
        Role::Primary,
        "unsynced"
    );
    assert_eq!(
        case(50, Puppet::new(0).hearing().demoted(Demotion::MAINTENANCE)),
        Role::Primary,
        "maintenance"
    );
    // A promoted incumbent ignores it.
    let (mut e, now) = primary_alone(100);
    e.handle(now, Input::Promote);
    let mut p = Puppet::new(50).hearing().flag(Flags::WANTS_FAILBACK, true);
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Primary);
}

#[test]
fn split_brain_resolves_by_rank_and_counts_once() {
    // We rank first: keep, the peer must yield.
    let (mut e, now) = primary_alone(50);
    let mut p = Puppet::new(100).role(Role::Primary).hearing();
    for k in 0..5 {
        p.send(&mut e, now + k * S);
    }
    assert_eq!(e.role(), Role::Primary);
    let st = e.status();
    assert_eq!((st.stats.split_brains, st.split_brain), (1, true));
    assert!(drain(&mut e).contains(&Action::SplitBrain {
        peer: PEER,
        resolution: Resolution::KeepPrimary
    }));
    let mut p = p.role(Role::Backup);
    p.send(&mut e, now + 5 * S);
    assert!(!e.status().split_brain);
    // A second episode is a second count.
    let mut p = p.role(Role::Primary);
    p.send(&mut e, now + 6 * S);
    assert_eq!(e.status().stats.split_brains, 2);

    // The peer ranks first: step down at once, counted.
    let (mut e, now) = primary_alone(100);
    let mut p = Puppet::new(50).role(Role::Primary).hearing();
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Backup);
    let acts = drain(&mut e);
    assert_eq!(
        acts,
        vec![
            Action::PeerUp {
                node: PEER,
                epoch: 77,
                restarted: false
            },
            Action::SplitBrain {
                peer: PEER,
                resolution: Resolution::StepDown
            },
            Action::BecomeBackup {
                reason: Reason::SplitBrain
            }
        ]
    );
    assert_eq!(e.status().stats.split_brains, 1);
}

#[test]
fn equal_priorities_break_ties_by_node_id() {
    // Lower id (us, 10) wins a split brain against 20 at equal priority.
    let (mut e, now) = primary_alone(100);
    let mut p = Puppet::new(100).role(Role::Primary).hearing();
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Primary);
    // And a higher id loses.
    let t0 = Instant::now();
    let mut c = cfg(100);
    c.node_id = 30;
    let mut e = Election::new(c, t0).unwrap();
    e.handle(t0, Input::SyncComplete);
    advance(&mut e, t0, t0 + 3 * S);
    let mut p = Puppet::new(100).role(Role::Primary);
    p.hb.peer = Some(Echo {
        node: 30,
        epoch: MY_EPOCH,
        seq: 1,
    });
    p.hb.flags.set(Flags::HEARS_PEER, true);
    p.send(&mut e, t0 + 3 * S);
    assert_eq!(e.role(), Role::Backup);
}

#[test]
fn one_way_link_yields_after_a_dead_interval_of_hearing_a_deaf_primary() {
    let (mut e, now) = primary_alone(1);
    let mut p = Puppet::new(200).role(Role::Primary).deaf();
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Primary, "it may just not have heard us yet");
    assert!(drain(&mut e).contains(&Action::SplitBrain {
        peer: PEER,
        resolution: Resolution::WaitForPeer
    }));
    assert_eq!(
        e.poll_timeout(),
        Some(now + S),
        "heartbeat before the yield"
    );
    let t = converse(&mut e, &mut p, now, now + 3 * S - Duration::from_millis(1));
    assert_eq!(e.role(), Role::Primary);
    advance(&mut e, t, now + 3 * S);
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(e.status().reason, Reason::PeerCannotHearUs);
    // It starts hearing us before the deadline: plain rank resolution instead.
    let (mut e, now) = primary_alone(1);
    let mut p = Puppet::new(200).role(Role::Primary).deaf();
    p.send(&mut e, now);
    let mut p = p.hearing();
    p.send(&mut e, now + S);
    converse(&mut e, &mut p, now + S, now + 10 * S);
    assert_eq!(e.role(), Role::Primary);
    assert_eq!(e.status().stats.split_brains, 1);
}

#[test]
fn a_backup_waits_for_a_deaf_peer_to_take_the_role() {
    let t0 = Instant::now();
    let mut e = Election::new(cfg(1), t0).unwrap();
    e.handle(t0, Input::SyncComplete);
    let mut p = Puppet::new(200).deaf();
    p.send(&mut e, t0);
    let t = converse(&mut e, &mut p, t0, t0 + 10 * S);
    assert_eq!(
        e.role(),
        Role::Backup,
        "it thinks we are dead and will take"
    );
    let mut p = p.hearing();
    p.send(&mut e, t);
    assert_eq!(e.role(), Role::Primary);
    assert_eq!(e.status().reason, Reason::Elected);
}

#[test]
fn promotions_newest_generation_wins() {
    let (mut e, now) = primary_alone(1);
    e.handle(now, Input::Promote);
    let mine = tx(&mut e, now);
    assert_eq!(mine.last().unwrap().promote_gen, 1);
    // The peer's operator promotes it later: generation 2 supersedes ours.
    let mut p = Puppet::new(200).hearing().flag(Flags::PROMOTED, true);
    p.hb.promote_gen = 2;
    p.send(&mut e, now + S);
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(e.status().reason, Reason::PeerPromoted);
    assert!(!e.status().promoted);
    // An older promotion on the peer does not.
    let (mut e, now) = primary_alone(200);
    let mut p = Puppet::new(1).hearing().flag(Flags::PROMOTED, true);
    p.hb.promote_gen = 3;
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Backup, "3 > our 0");
    let mut p = p.role(Role::Primary);
    p.send(&mut e, now + S);
    e.handle(now + 2 * S, Input::Promote);
    assert_eq!(e.heartbeat().promote_gen, 4, "after the highest seen");
}

#[test]
fn promotion_pins_the_role_until_it_is_lost() {
    let (mut e, now) = primary_alone(200);
    e.handle(now, Input::Promote);
    let mut p = Puppet::new(1).hearing().flag(Flags::WANTS_FAILBACK, true);
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Primary, "no failback against a promotion");
    // A fault takes the role and the promotion with it.
    e.handle(
        now + S,
        Input::LocalHealth {
            sync_link_up: true,
            monitored_up: false,
        },
    );
    assert!(!e.status().promoted);
    e.handle(
        now + 2 * S,
        Input::LocalHealth {
            sync_link_up: true,
            monitored_up: true,
        },
    );
    assert_eq!(
        e.role(),
        Role::Backup,
        "the better peer is eligible and hears us"
    );
    // ClearOperator drops a promotion too.
    let (mut e, now) = primary_alone(200);
    e.handle(now, Input::Promote);
    e.handle(now, Input::ClearOperator);
    let mut p = Puppet::new(1).hearing().flag(Flags::WANTS_FAILBACK, true);
    p.send(&mut e, now);
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(e.status().reason, Reason::Failback);
}

#[test]
fn sync_lost_demotes_a_backup_but_not_the_primary() {
    let (mut e, now) = primary_alone(100);
    e.handle(now, Input::SyncLost);
    assert!(e.status().synced);
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    let (mut b, t) = backup_of(100, &mut p);
    b.handle(t, Input::SyncLost);
    assert!(b.status().demotion.contains(Demotion::NOT_SYNCED));
    b.handle(t, Input::SyncComplete);
    assert!(b.status().demotion.is_empty());
    assert!(
        !drain(&mut b).contains(&Action::InterfacesMayGoUp),
        "interfaces go up once per run"
    );
}

#[test]
fn reordered_foreign_and_own_heartbeats_are_ignored() {
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    let (mut e, t) = backup_of(100, &mut p);
    let old = p.hb;
    p.send(&mut e, t);
    // A stale (lower seq) heartbeat claiming backup must not erase the newer state.
    let mut stale = old;
    stale.role = Role::Backup;
    e.handle(t, Input::Heartbeat(stale));
    assert_eq!(e.status().peer.unwrap().role, Role::Primary);
    assert_eq!(e.status().stats.heartbeats_stale, 1);
    // A third node while the peer lives.
    let mut third = Puppet::new(0).role(Role::Backup);
    third.hb.node = 30;
    third.send(&mut e, t);
    assert_eq!(e.status().peer.unwrap().node, PEER);
    assert_eq!(e.status().stats.heartbeats_foreign, 1);
    // Our own id.
    let mut own = Puppet::new(0);
    own.hb.node = ME;
    own.send(&mut e, t);
    assert_eq!(e.status().peer.unwrap().node, PEER);
    // After the peer dies, the third node becomes the peer.
    let t = advance(&mut e, t, t + 3 * S);
    assert_eq!(e.role(), Role::Primary);
    third.send(&mut e, t);
    assert_eq!(e.status().peer.unwrap().node, 30);
}

#[test]
fn poll_timeout_names_every_deadline() {
    let mut p = Puppet::new(200).role(Role::Primary).hearing();
    let (mut e, t0) = backup_of(1, &mut p);
    tx(&mut e, t0);
    // Next heartbeat (t0+1) is the earliest of: heartbeat, dead (t0+3), failback (t0+10).
    assert_eq!(e.poll_timeout(), Some(t0 + S));
    // Without periodic sends in the way, the other deadlines show through.
    let mut c = cfg(1);
    c.interval = Duration::from_secs(60);
    c.threshold = 1;
    c.failback_delay = Duration::from_secs(5);
    let t0 = Instant::now();
    let mut e = Election::new(c, t0).unwrap();
    assert_eq!(e.poll_timeout(), Some(t0), "first heartbeat due now");
    tx(&mut e, t0);
    // The startup listen ends at the dead interval (60 s) = next heartbeat.
    assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    p.hb.interval = Duration::from_secs(60);
    p.send(&mut e, t0);
    e.handle(t0, Input::SyncComplete);
    tx(&mut e, t0);
    assert_eq!(
        e.poll_timeout(),
        Some(t0 + Duration::from_secs(5)),
        "failback"
    );
}

/// The one-step decision, stated independently of the implementation: given our
/// state and one heartbeat from the peer, the role after it.
fn spec(was_primary: bool, ours: Demotion, promoted: bool, prio: u8, peer: &Heartbeat) -> Role {
    let hears_us = peer.flags.contains(Flags::HEARS_PEER);
    let mut peer_d = peer.demotion;
    if peer.role == Role::Fault {
        peer_d = peer_d.union(Demotion::MONITOR_DOWN);
    }
    let peer_eligible = !peer_d.intersects(Demotion::INELIGIBLE);
    let peer_promoted = peer.flags.contains(Flags::PROMOTED);
    let key = |ineligible: bool, promoted: bool, gen_: u32, soft: bool, p: u8, node: u32| {
        (
            ineligible,
            !promoted,
            std::cmp::Reverse(if promoted { gen_ } else { 0 }),
            soft,
            p,
            node,
        )
    };
    let my_key = key(
        ours.intersects(Demotion::INELIGIBLE),
        promoted,
        1,
        ours.intersects(Demotion::SOFT),
        prio,
        ME,
    );
    let peer_key = key(
        !peer_eligible,
        peer_promoted,
        peer.promote_gen,
        peer_d.intersects(Demotion::SOFT),
        peer.priority,
        PEER,
    );
    let peer_wins = peer_key < my_key;
    if ours.contains(Demotion::MONITOR_DOWN) {
        return Role::Fault;
    }
    if ours.contains(Demotion::MAINTENANCE) {
        return Role::Backup;
    }
    if was_primary {
        let stay = match peer.role {
            // Deaf: only after a dead interval of hearing it, not in one step.
            Role::Primary => !(hears_us && peer_wins),
            Role::Fault => true,
            Role::Backup if !hears_us || !peer_eligible => true,
            Role::Backup if peer_promoted && peer_wins => false,
            Role::Backup if promoted => true,
            Role::Backup if peer_d.is_empty() && ours.intersects(Demotion::SOFT) => false,
            Role::Backup => {
                !(peer.flags.contains(Flags::WANTS_FAILBACK)
                    && peer_d.is_empty()
                    && peer.priority < prio)
            }
        };
        return if stay { Role::Primary } else { Role::Backup };
    }
    let take = match peer.role {
        Role::Primary => false,
        _ if !peer_eligible => true,
        _ => hears_us && !peer_wins,
    };
    if take { Role::Primary } else { Role::Backup }
}

/// Puts a fresh election in a requested state, feeds one heartbeat, and compares the
/// role with [`spec`]: every combination of our role, our demotion bits, promotion and
/// failback mode, against every peer role, demotion bits, flag combination, priority
/// relation (better / equal / worse) and promotion generation (older / newer).
#[test]
fn exhaustive_one_step_decisions_match_the_spec() {
    let mut checked = 0u32;
    for was_primary in [false, true] {
        for ours in 0..16u8 {
            let ours = Demotion::from_bits(ours).unwrap();
            // A primary can only carry SYNC_LINK_DOWN: the rest demote it at once, or
            // (NOT_SYNCED) cannot happen to it.
            if was_primary && !Demotion::SYNC_LINK_DOWN.contains(ours) {
                continue;
            }
            for promoted in [false, true] {
                if promoted && ours.contains(Demotion::MAINTENANCE) {
                    continue; // Demote clears promotion
                }
                for mode in [FailbackMode::Auto, FailbackMode::Manual] {
                    for peer_role in [Role::Backup, Role::Primary, Role::Fault] {
                        for peer_d in 0..16u8 {
                            for peer_flags in 0..8u8 {
                                for (peer_prio, peer_gen) in [(50, 0), (100, 0), (100, 2), (150, 0)]
                                {
                                    let peer = Heartbeat {
                                        node: PEER,
                                        epoch: 77,
                                        seq: 2,
                                        role: peer_role,
                                        priority: peer_prio,
                                        flags: Flags::from_bits(peer_flags).unwrap(),
                                        demotion: Demotion::from_bits(peer_d).unwrap(),
                                        promote_gen: peer_gen,
                                        interval: S,
                                        peer: Some(Echo {
                                            node: ME,
                                            epoch: MY_EPOCH,
                                            seq: 1,
                                        }),
                                    };
                                    checked += one_case(was_primary, ours, promoted, mode, peer);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 20_000, "{checked}");
}

fn one_case(
    was_primary: bool,
    ours: Demotion,
    promoted: bool,
    mode: FailbackMode,
    peer: Heartbeat,
) -> u32 {
    let t0 = Instant::now();
    let mut c = cfg(100);
    c.failback = mode;
    let mut e = Election::new(c, t0).unwrap();
    e.handle(t0, Input::SyncComplete);
    let mut now = t0;
    if was_primary {
        now = advance(&mut e, t0, t0 + 3 * S);
    } else {
        // A backup of a primary peer (seq 1), which the case heartbeat (seq 2) updates.
        let mut first = Puppet::new(peer.priority).role(Role::Primary).hearing();
        first.send(&mut e, now);
    }
    if ours.contains(Demotion::NOT_SYNCED) {
        e.handle(now, Input::SyncLost);
    }
    if promoted {
        e.handle(now, Input::Promote);
    }
    if ours.contains(Demotion::MAINTENANCE) {
        e.handle(now, Input::Demote);
    }
    e.handle(
        now,
        Input::LocalHealth {
            sync_link_up: !ours.contains(Demotion::SYNC_LINK_DOWN),
            monitored_up: !ours.contains(Demotion::MONITOR_DOWN),
        },
    );
    let before = e.status();
    assert_eq!(before.demotion, ours);
    assert_eq!(before.promoted, promoted);
    if !ours.intersects(Demotion::INELIGIBLE) {
        assert_eq!(before.role == Role::Primary, was_primary);
    }
    e.handle(now, Input::Heartbeat(peer));
    let want = spec(before.role == Role::Primary, ours, promoted, 100, &peer);
    assert_eq!(
        e.role(),
        want,
        "primary={was_primary} ours={ours} promoted={promoted} mode={mode:?} peer={peer:?}"
    );
    // Rule-independent invariants.
    assert!(e.role() != Role::Primary || !ours.intersects(Demotion::INELIGIBLE));
    if mode == FailbackMode::Manual {
        assert!(!e.status().wants_failback);
    }
    if before.role == Role::Backup && peer.role == Role::Primary {
        assert_eq!(e.role(), Role::Backup, "a live primary is never taken from");
    }
    1
}
