//! Answers the control socket: `hasync status`, `promote`, `demote`, `resume`.

use std::{sync::Arc, time::Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{datapath::ResyncHandle, replica::ReplicaSet};
use crate::{
    conntrack::{Change, Entry, display},
    control::{Request, Response, StateFilter, server::Handler},
    ha::driver::Command,
    kernel::ctnetlink,
    metrics::Board,
};

pub struct ControlHandler {
    pub node: u32,
    pub mode: &'static str,
    pub started: Instant,
    pub ha: Option<mpsc::Sender<Command>>,
    pub sync: Option<(ResyncHandle, Arc<ReplicaSet>)>,
    /// The TLS replication channel, when configured.
    pub channel: Option<Arc<super::channel_link::ChannelLink>>,
    pub board: Board,
}

impl Handler for ControlHandler {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status().await)),
            Request::Promote => self.ha_command(Command::Promote, "promotion requested: this node takes the primary role").await,
            Request::Demote => {
                self.ha_command(Command::Demote, "maintenance: this node gives up the primary role and will not take it until `hasync resume`").await
            }
            Request::Resume => self.ha_command(Command::Resume, "maintenance cleared: automatic election resumed").await,
            Request::States { filter } => self.states(filter, false).await,
            Request::PeerStates { filter } => self.states(filter, true).await,
            Request::Resync => match &self.sync {
                Some((resync, _)) => match resync.request() {
                    Ok(id) => Response::Done { message: format!("resync requested from the peer (request {id})") },
                    Err(e) => Response::Error { message: e },
                },
                None => Response::Error { message: NO_SYNC.into() },
            },
            Request::Flush => self.flush().await,
        }
    }
}

const NO_SYNC: &str = "conntrack sync is not enabled in this node's configuration";

/// Whether an entry matches the operator's filter.
fn matches(e: &Entry, f: &StateFilter) -> bool {
    let proto_ok = f.proto.as_deref().is_none_or(|p| {
        p.eq_ignore_ascii_case(display::proto_name(e.orig.proto))
            || p.parse::<u8>().is_ok_and(|n| n == e.orig.proto)
    });
    let addr_ok = f.addr.is_none_or(|a| {
        [
            e.orig.src_ip(),
            e.orig.dst_ip(),
            e.reply.src_ip(),
            e.reply.dst_ip(),
        ]
        .contains(&a)
    });
    let port_ok = f.port.is_none_or(|p| {
        crate::conntrack::proto::has_ports(e.orig.proto)
            && [
                e.orig.sport(),
                e.orig.dport(),
                e.reply.sport(),
                e.reply.dport(),
            ]
            .contains(&p)
    });
    proto_ok && addr_ok && port_ok
}

impl ControlHandler {
    /// The kernel table (or the peer's part of it), summarised and filtered.
    async fn states(&self, filter: StateFilter, peer_only: bool) -> Response {
        let replica = self.sync.as_ref().map(|(_, r)| r.clone());
        if peer_only && replica.is_none() {
            return Response::Error {
                message: NO_SYNC.into(),
            };
        }
        let dumped = tokio::task::spawn_blocking(move || ctnetlink::dump(None)).await;
        let entries = match dumped {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                return Response::Error {
                    message: format!("reading the conntrack table: {e}"),
                };
            }
            Err(e) => {
                return Response::Error {
                    message: e.to_string(),
                };
            }
        };
        let is_peer = |e: &Entry| replica.as_ref().is_some_and(|r| r.contains(&e.key()));
        let selected: Vec<&Entry> = entries
            .iter()
            .filter(|e| (!peer_only || is_peer(e)) && matches(e, &filter))
            .collect();
        let mut by_proto = std::collections::BTreeMap::<&str, u64>::new();
        let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
        for e in &selected {
            *by_proto
                .entry(display::proto_name(e.orig.proto))
                .or_default() += 1;
            if let Some(st) = display::state_name(&e.proto) {
                *by_state.entry(st).or_default() += 1;
            }
        }
        let limit = filter.limit.unwrap_or(usize::MAX);
        let lines: Vec<String> = selected
            .iter()
            .take(limit)
            .map(|e| display::line(e))
            .collect();
        Response::Status(Box::new(json!({
            "table_entries": entries.len(),
            "peer_entries": entries.iter().filter(|e| is_peer(e)).count(),
            "matching": selected.len(),
            "by_proto": by_proto,
            "tcp_states": by_state,
            "entries": lines,
            "truncated": selected.len() > lines.len(),
        })))
    }

    /// Deletes the peer's entries from the kernel table.
    async fn flush(&self) -> Response {
        let Some((_, replica)) = &self.sync else {
            return Response::Error {
                message: NO_SYNC.into(),
            };
        };
        let replica = replica.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let entries = ctnetlink::dump(None).map_err(|e| e.to_string())?;
            let deletes: Vec<Change> = entries
                .iter()
                .filter(|e| replica.contains(&e.key()))
                .map(|e| Change::Delete(e.key()))
                .collect();
            let mut installer = ctnetlink::Installer::new().map_err(|e| e.to_string())?;
            let report = installer.install(&deletes);
            Ok(report.deleted)
        })
        .await;
        match done {
            Ok(Ok(n)) => Response::Done {
                message: format!("removed {n} entries held for the peer"),
            },
            Ok(Err(e)) => Response::Error {
                message: format!("flush failed: {e}"),
            },
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        }
    }

    async fn ha_command(&self, cmd: Command, done: &str) -> Response {
        let Some(ha) = &self.ha else {
            return Response::Error {
                message: "HA is not enabled in this node's configuration (`ha { enabled = true }`)"
                    .into(),
            };
        };
        match ha.send(cmd).await {
            Ok(()) => Response::Done {
                message: done.into(),
            },
            Err(_) => Response::Error {
                message: "the HA driver is not running".into(),
            },
        }
    }

    async fn status(&self) -> serde_json::Value {
        let ha = match &self.ha {
            Some(tx) => {
                let (reply, answer) = oneshot::channel();
                if tx.send(Command::Status(reply)).await.is_ok() {
                    answer
                        .await
                        .ok()
                        .and_then(|r| serde_json::to_value(r).ok())
                        .unwrap_or(serde_json::Value::Null)
                } else {
                    serde_json::Value::Null
                }
            }
            None => serde_json::Value::Null,
        };
        let b = &self.board;
        let v = |name: &str, labels: &[(&str, &str)]| b.value(name, labels).unwrap_or(0.0) as u64;
        let sync = match &self.sync {
            Some((resync, replica)) => {
                let state = &resync.state;
                json!({
                    "enabled": true,
                    "in_sync": state.is_complete(),
                    "behind_datagrams": b.sum("sync_behind_datagrams") as u64,
                    "full_syncs": state.full_syncs.load(std::sync::atomic::Ordering::Relaxed),
                    "last_full_sync_unix": state.last_full_sync.load(std::sync::atomic::Ordering::Relaxed),
                    "replica_entries": replica.len(),
                    "captured": v("capture_events", &[]),
                    "sent_records": v("sync_sent_records", &[]),
                    "sent_datagrams": v("sync_sent_datagrams", &[]),
                    "received_records": v("sync_received_records", &[]),
                    "encrypting": b.value("sync_encrypting", &[]).unwrap_or(0.0) > 0.0,
                    "received_datagrams": v("sync_received_datagrams", &[]),
                    "received_encrypted": v("sync_received_encrypted_datagrams", &[]),
                    "lost_datagrams": v("sync_lost_datagrams", &[]),
                    "rejected_auth": v("sync_rejected", &[("reason", "auth_failed")]),
                    "ringbuf_drops": v("ringbuf_drops", &[]),
                    "installed_created": v("installs", &[("result", "created")]),
                    "installed_updated": v("installs", &[("result", "updated")]),
                    "installed_deleted": v("installs", &[("result", "deleted")]),
                    "deletes_sent": v("deletes", &[("action", "sent")]),
                    "recovered_datagrams": v("sync_repaired_datagrams", &[]),
                    "consistency_ok_unix": v("consistency_last_ok_timestamp_seconds", &[]),
                    "consistency_repairs": v("consistency_checks", &[("outcome", "repaired")]),
                    "consistency_stale_deleted": v("consistency_stale_deleted", &[]),
                })
            }
            None => json!({ "enabled": false }),
        };
        json!({
            "node_id": self.node,
            "mode": self.mode,
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "version": env!("CARGO_PKG_VERSION"),
            "ha": ha,
            "sync": sync,
            "channel": self.channel.as_ref().map(|c| c.status()),
        })
    }
}
