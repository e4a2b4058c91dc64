//! `hasync states` / `peer-states` for humans.

use std::fmt::Write as _;

use serde_json::Value;

pub fn render(v: &Value, peer_only: bool) -> String {
    let mut out = String::new();
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let _ = writeln!(
        out,
        "{} of {} entries{} ({} held for the peer)",
        n("matching"),
        n("table_entries"),
        if peer_only {
            " are the peer's"
        } else {
            " match"
        },
        n("peer_entries")
    );
    let counts = |k: &str| -> String {
        v.get(k)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(name, c)| format!("{name} {}", c.as_u64().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let protos = counts("by_proto");
    if !protos.is_empty() {
        let _ = writeln!(out, "by protocol: {protos}");
    }
    let states = counts("tcp_states");
    if !states.is_empty() {
        let _ = writeln!(out, "by state:    {states}");
    }
    for line in v
        .get("entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(out, "{}", line.as_str().unwrap_or_default());
    }
    if v.get("truncated").and_then(Value::as_bool) == Some(true) {
        out.push_str("... (more entries: raise --limit)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn renders_summary_and_lines() {
        let v = json!({
            "table_entries": 3, "peer_entries": 2, "matching": 2,
            "by_proto": { "tcp": 1, "udp": 1 }, "tcp_states": { "ESTABLISHED": 1 },
            "entries": ["ipv4 tcp 6 99 ESTABLISHED src=...", "ipv4 udp 17 20 src=..."], "truncated": true
        });
        assert_eq!(
            super::render(&v, false),
            "2 of 3 entries match (2 held for the peer)\nby protocol: tcp 1, udp 1\nby state:    ESTABLISHED 1\n\
             ipv4 tcp 6 99 ESTABLISHED src=...\nipv4 udp 17 20 src=...\n... (more entries: raise --limit)\n"
        );
    }
}
