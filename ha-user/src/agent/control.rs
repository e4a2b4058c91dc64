//! Answers the control socket: `hasync status`, `promote`, `demote`, `resume`.

use std::{sync::Arc, time::Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{replica::ReplicaSet, resync::SyncState};
use crate::{
    control::{Request, Response, server::Handler},
    ha::driver::Command,
    metrics::Board,
};

pub struct ControlHandler {
    pub node: u32,
    pub mode: &'static str,
    pub started: Instant,
    pub ha: Option<mpsc::Sender<Command>>,
    pub sync: Option<(Arc<SyncState>, Arc<ReplicaSet>)>,
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
        }
    }
}

impl ControlHandler {
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
            Some((state, replica)) => json!({
                "enabled": true,
                "in_sync": state.is_complete(),
                "full_syncs": state.full_syncs.load(std::sync::atomic::Ordering::Relaxed),
                "last_full_sync_unix": state.last_full_sync.load(std::sync::atomic::Ordering::Relaxed),
                "replica_entries": replica.len(),
                "captured": v("capture_events", &[]),
                "sent_records": v("sync_sent_records", &[]),
                "sent_datagrams": v("sync_sent_datagrams", &[]),
                "received_records": v("sync_received_records", &[]),
                "lost_datagrams": v("sync_lost_datagrams", &[]),
                "rejected_auth": v("sync_rejected", &[("reason", "auth_failed")]),
                "ringbuf_drops": v("ringbuf_drops", &[]),
                "installed_created": v("installs", &[("result", "created")]),
                "installed_updated": v("installs", &[("result", "updated")]),
                "installed_deleted": v("installs", &[("result", "deleted")]),
                "deletes_sent": v("deletes", &[("action", "sent")]),
            }),
            None => json!({ "enabled": false }),
        };
        json!({
            "node_id": self.node,
            "mode": self.mode,
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "version": env!("CARGO_PKG_VERSION"),
            "ha": ha,
            "sync": sync,
        })
    }
}
