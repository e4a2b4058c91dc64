//! `hasync status` for humans (the `--json` form is the agent's answer as it is).

use std::fmt::Write as _;

use serde_json::Value;

/// Renders the agent's status answer as text.
pub fn render(v: &Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    render_at(v, now)
}

/// [`render`] as of `now` (Unix seconds), which relative times are counted from.
pub fn render_at(v: &Value, now: u64) -> String {
    let mut out = String::new();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let b = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let _ = writeln!(
        out,
        "hasync {} node {} ({}), up {}",
        s(v, "version"),
        u(v, "node_id"),
        s(v, "mode"),
        duration(n(v, "uptime_s"))
    );
    match v.get("ha") {
        Some(ha) if !ha.is_null() => {
            let mut flags = Vec::new();
            if b(ha, "maintenance") {
                flags.push("MAINTENANCE".to_string());
            }
            if b(ha, "promoted") {
                flags.push("promoted".to_string());
            }
            if b(ha, "split_brain") {
                flags.push("SPLIT BRAIN".to_string());
            }
            if let Some(d) = ha
                .get("demoted_for")
                .and_then(Value::as_array)
                .filter(|d| !d.is_empty())
            {
                let names: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
                flags.push(format!("demoted: {}", names.join(", ")));
            }
            let _ = writeln!(
                out,
                "role:     {} since {} ({}), priority {}{}",
                s(ha, "role").to_uppercase(),
                duration(n(ha, "role_for_s")),
                s(ha, "reason"),
                u(ha, "priority"),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", flags.join("; "))
                }
            );
            match ha.get("peer") {
                Some(p) if !p.is_null() => {
                    let _ = writeln!(
                        out,
                        "peer:     node {} {} {}, priority {}, last heard {:.0} ms ago{}",
                        u(p, "node_id"),
                        if b(p, "alive") { "alive" } else { "DEAD" },
                        s(p, "role").to_uppercase(),
                        u(p, "priority"),
                        n(p, "last_heard_ms"),
                        if b(p, "hears_us") {
                            ""
                        } else {
                            " (does not hear us)"
                        }
                    );
                }
                _ => out.push_str("peer:     never heard\n"),
            }
            if let Some(f) = ha.get("failback_in_s").and_then(Value::as_f64) {
                let _ = writeln!(out, "failback: in {}", duration(f));
            }
            let _ = writeln!(
                out,
                "counters: {} role changes, {} split brains, heartbeats {} sent / {} received / {} rejected",
                u(ha, "transitions"),
                u(ha, "split_brains"),
                u(ha, "heartbeats_sent"),
                u(ha, "heartbeats_received"),
                u(ha, "heartbeats_rejected")
            );
            if let Some(t) = ha.get("last_takeover_ms").and_then(Value::as_f64) {
                let _ = writeln!(out, "takeover: last one took {t:.1} ms");
            }
            if let Some(steps) = ha
                .pointer("/timeline/steps")
                .and_then(Value::as_array)
                .filter(|s| !s.is_empty())
            {
                out.push_str("timeline (newest last):\n");
                for step in steps
                    .iter()
                    .rev()
                    .take(12)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    let _ = writeln!(
                        out,
                        "  {:<13} {:<28} {:>9.3} ms  {}{}",
                        s(step, "step"),
                        s(step, "target"),
                        n(step, "took_us") / 1000.0,
                        if b(step, "ok") { "" } else { "FAILED: " },
                        s(step, "detail")
                    );
                }
            }
        }
        _ => out.push_str("role:     HA disabled\n"),
    }
    match v.get("sync") {
        Some(sync) if b(sync, "enabled") => {
            let last = u(sync, "last_full_sync_unix");
            let _ = writeln!(
                out,
                "sync:     {}, {} full sync(s){}, {} entries held for the peer",
                match (b(sync, "in_sync"), u(sync, "behind_datagrams")) {
                    (true, 0) => "in sync".to_string(),
                    (true, n) => format!("in sync, behind by {n} datagram(s) being recovered"),
                    (false, _) => "NOT in sync (waiting for the peer's table)".to_string(),
                },
                u(sync, "full_syncs"),
                if last > 0 {
                    format!(", last {} ago", duration(now.saturating_sub(last) as f64))
                } else {
                    String::new()
                },
                u(sync, "replica_entries")
            );
            let _ = writeln!(
                out,
                "          sent {} changes in {} datagrams; received {}; installed {} new / {} updated / {} deleted",
                u(sync, "sent_records"),
                u(sync, "sent_datagrams"),
                u(sync, "received_records"),
                u(sync, "installed_created"),
                u(sync, "installed_updated"),
                u(sync, "installed_deleted")
            );
            let _ = writeln!(
                out,
                "          lost datagrams {} ({} recovered), auth failures {}, ring-buffer drops {}",
                u(sync, "lost_datagrams"),
                u(sync, "recovered_datagrams"),
                u(sync, "rejected_auth"),
                u(sync, "ringbuf_drops")
            );
            let _ = writeln!(
                out,
                "          payload: {}; {} of {} datagrams from peers arrived encrypted",
                if b(sync, "encrypting") {
                    "we encrypt (and authenticate)"
                } else {
                    "we authenticate, not encrypt"
                },
                u(sync, "received_encrypted"),
                u(sync, "received_datagrams")
            );
            let checked = u(sync, "consistency_ok_unix");
            let _ = writeln!(
                out,
                "          consistency: {}, {} repair(s), {} stale entries deleted",
                if checked > 0 {
                    format!(
                        "copy verified {} ago",
                        duration(now.saturating_sub(checked) as f64)
                    )
                } else {
                    "not verified yet".into()
                },
                u(sync, "consistency_repairs"),
                u(sync, "consistency_stale_deleted")
            );
        }
        _ => out.push_str("sync:     disabled\n"),
    }
    if let Some(ch) = v.get("channel").filter(|c| c.is_object()) {
        channel(&mut out, ch, now);
    }
    out
}

/// The TLS replication channel's lines (absent when it is not configured).
fn channel(out: &mut String, ch: &Value, now: u64) {
    let u = |k: &str| ch.get(k).and_then(Value::as_u64).unwrap_or(0);
    let ago = |unix: u64| duration(now.saturating_sub(unix) as f64);
    let tls = if ch.get("mutual").and_then(Value::as_bool).unwrap_or(false) {
        "tls, mutual"
    } else {
        "tls"
    };
    if let Some(addr) = ch.get("listening").and_then(Value::as_str) {
        let _ = writeln!(
            out,
            "channel:  listening on {addr} ({tls}), {} resync(s) served, {} handshake(s) refused",
            u("resyncs_served"),
            u("refused")
        );
    }
    if let Some(addr) = ch.get("primary_addr").and_then(Value::as_str) {
        match ch.get("last_resync").filter(|l| l.is_object()) {
            Some(l) => {
                let lu = |k: &str| l.get(k).and_then(Value::as_u64).unwrap_or(0);
                let _ = writeln!(
                    out,
                    "channel:  last resync over TLS from {}, {} entries in {} ms, {} ago",
                    l.get("from").and_then(Value::as_str).unwrap_or(addr),
                    lu("entries"),
                    lu("ms"),
                    ago(lu("unix"))
                );
            }
            None => {
                let _ = writeln!(out, "channel:  no resync over TLS from {addr} yet ({tls})");
            }
        }
    }
    if let Some(e) = ch.get("last_error").filter(|e| e.is_object()) {
        let _ = writeln!(
            out,
            "          last error {} ago: {}; {} fallback(s) to UDP",
            ago(e.get("unix").and_then(Value::as_u64).unwrap_or(0)),
            e.get("message").and_then(Value::as_str).unwrap_or("-"),
            u("fallbacks")
        );
    }
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{secs:.1}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_a_primary_with_a_timeline() {
        let v = json!({
            "version": "0.1.0", "node_id": 7, "mode": "primary", "uptime_s": 125.0,
            "ha": {
                "role": "primary", "reason": "peer_dead", "role_for_s": 3.25, "priority": 50,
                "demoted_for": [], "maintenance": false, "promoted": false, "split_brain": false,
                "failback_in_s": null,
                "peer": { "node_id": 8, "role": "backup", "priority": 100, "alive": false, "hears_us": false, "last_heard_ms": 912.0 },
                "transitions": 2, "split_brains": 0, "heartbeats_sent": 40, "heartbeats_received": 31, "heartbeats_rejected": 0,
                "last_takeover_ms": 4.2,
                "timeline": { "steps": [
                    { "step": "commit", "target": "conntrack", "took_us": 812, "ok": true, "detail": "12 changes installed" },
                    { "step": "add-vip", "target": "192.168.10.1/24 dev lan0", "took_us": 95, "ok": true, "detail": "Added" }
                ]}
            },
            "sync": { "enabled": true, "in_sync": true, "full_syncs": 1, "last_full_sync_unix": 1800000000u64, "replica_entries": 0,
                      "sent_records": 10, "sent_datagrams": 2, "received_records": 500, "installed_created": 490,
                      "installed_updated": 10, "installed_deleted": 3, "lost_datagrams": 0, "rejected_auth": 0, "ringbuf_drops": 0,
                      "encrypting": true, "received_datagrams": 120, "received_encrypted": 120 }
        });
        let text = render_at(&v, 1_800_000_042);
        let expected = "\
hasync 0.1.0 node 7 (primary), up 2m05s
role:     PRIMARY since 3.2s (peer_dead), priority 50
peer:     node 8 DEAD BACKUP, priority 100, last heard 912 ms ago (does not hear us)
counters: 2 role changes, 0 split brains, heartbeats 40 sent / 31 received / 0 rejected
takeover: last one took 4.2 ms
timeline (newest last):
  commit        conntrack                        0.812 ms  12 changes installed
  add-vip       192.168.10.1/24 dev lan0         0.095 ms  Added
sync:     in sync, 1 full sync(s), last 42.0s ago, 0 entries held for the peer
          sent 10 changes in 2 datagrams; received 500; installed 490 new / 10 updated / 3 deleted
          lost datagrams 0 (0 recovered), auth failures 0, ring-buffer drops 0
          payload: we encrypt (and authenticate); 120 of 120 datagrams from peers arrived encrypted
          consistency: not verified yet, 0 repair(s), 0 stale entries deleted
";
        assert_eq!(text, expected);
    }

    #[test]
    fn renders_a_replica_that_is_recovering_lost_datagrams() {
        let v = json!({
            "version": "0.1.0", "node_id": 2, "mode": "replica", "uptime_s": 10.0, "ha": null,
            "sync": { "enabled": true, "in_sync": true, "behind_datagrams": 3, "full_syncs": 1,
                      "last_full_sync_unix": 1800000000u64, "replica_entries": 1200, "lost_datagrams": 9,
                      "recovered_datagrams": 6, "consistency_ok_unix": 1800000040u64, "consistency_repairs": 1 }
        });
        let text = render_at(&v, 1_800_000_042);
        assert!(
            text.contains("sync:     in sync, behind by 3 datagram(s) being recovered, 1 full sync(s), last 42.0s ago, 1200 entries held for the peer\n"),
            "{text}"
        );
        assert!(text.contains("lost datagrams 9 (6 recovered)"), "{text}");
        assert!(
            text.contains("consistency: copy verified 2.0s ago, 1 repair(s)"),
            "{text}"
        );
    }

    #[test]
    fn renders_the_tls_channel() {
        let v = json!({ "version": "0.1.0", "node_id": 2, "mode": "replica", "uptime_s": 1.0, "ha": null, "sync": { "enabled": false },
            "channel": { "listening": "0.0.0.0:9000", "mutual": true, "primary_addr": "10.250.0.1:9000",
                         "refused": 1, "resyncs_served": 0, "fallbacks": 1,
                         "last_resync": { "via": "tls", "from": "10.250.0.1:9000", "entries": 20000, "ms": 850, "unix": 1_800_000_000u64 },
                         "last_error": { "message": "connection refused", "unix": 1_800_000_030u64 } } });
        let text = render_at(&v, 1_800_000_040);
        assert!(
            text.ends_with(
                "\
channel:  listening on 0.0.0.0:9000 (tls, mutual), 0 resync(s) served, 1 handshake(s) refused
channel:  last resync over TLS from 10.250.0.1:9000, 20000 entries in 850 ms, 40.0s ago
          last error 10.0s ago: connection refused; 1 fallback(s) to UDP
"
            ),
            "{text}"
        );
    }

    #[test]
    fn renders_without_ha_or_sync() {
        let v = json!({ "version": "0.1.0", "node_id": 1, "mode": "standalone", "uptime_s": 1.0, "ha": null, "sync": { "enabled": false } });
        assert_eq!(
            render(&v),
            "hasync 0.1.0 node 1 (standalone), up 1.0s\nrole:     HA disabled\nsync:     disabled\n"
        );
    }
}
