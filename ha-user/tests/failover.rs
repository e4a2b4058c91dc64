//! Failover in the lab topology: fw-a is primary and carries a TCP transfer from the
//! client to the server through the gateway VIPs (strict stateful policy, SNAT to the
//! WAN VIP, `nf_conntrack_tcp_loose=0`). fw-a's agent is killed and its links go down;
//! fw-b must take the VIPs and the transfer must carry on without a reset. Without
//! state sync (the control case) the same transfer must break.

mod support;

use std::time::{Duration, Instant};

use support::ha::{Pair, Transfer, ha_pair, status, wait_role};

/// Kills fw-a the hard way: SIGKILL to the agent, every link down.
fn kill_a(pair: &mut Pair) -> Instant {
    let killed = Instant::now();
    pair.agent(0).kill();
    for link in ["lan0", "wan0", "sync0"] {
        pair.lab.fw_a.ns.ip(&["link", "set", link, "down"]).unwrap();
    }
    killed
}

#[test]
fn established_transfer_survives_failover() {
    let mut pair = ha_pair("fo", true);
    let transfer = Transfer::start(&pair.lab, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(transfer.received() > 0, "transfer running through fw-a");
    let killed = kill_a(&mut pair);
    wait_role(&pair.sock_b, "primary", Duration::from_secs(5));
    let took_over = killed.elapsed();
    transfer.wait_done(Duration::from_secs(20));
    let gap = transfer.max_gap(killed, transfer.last_read().unwrap_or(killed));
    let (sent, received) = (*transfer.sent.lock().unwrap(), transfer.received());
    let client_error = transfer.client_error.lock().unwrap().clone();
    let server_error = transfer.server_error.lock().unwrap().clone();
    let st = status(&pair.sock_b);
    eprintln!(
        "failover: fw-b primary {took_over:?} after the kill; longest pause in the transfer {gap:?}; \
         last takeover {:?} ms; sent {sent}, received {received}",
        st.pointer("/ha/last_takeover_ms")
    );
    assert_eq!(client_error, None, "client saw no error");
    assert_eq!(server_error, None, "server saw no reset");
    assert_eq!(received, sent, "every byte arrived");
    assert!(
        gap < Duration::from_secs(3),
        "transfer resumed quickly: {gap:?}"
    );
    // The takeover is visible in fw-b's status: the steps in order.
    let steps: Vec<String> = st
        .pointer("/ha/timeline/steps")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("step")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        steps.first().map(String::as_str),
        Some("commit"),
        "{steps:?}"
    );
    assert!(
        steps.iter().position(|s| s == "add-vip") < steps.iter().position(|s| s == "announce"),
        "{steps:?}"
    );
    assert_eq!(
        st.pointer("/ha/reason").and_then(|r| r.as_str()),
        Some("peer_dead")
    );
    transfer.join();
}

#[test]
fn without_state_sync_the_transfer_breaks() {
    let mut pair = ha_pair("nofo", false);
    let transfer = Transfer::start(&pair.lab, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(transfer.received() > 0, "transfer running through fw-a");
    let killed = kill_a(&mut pair);
    wait_role(&pair.sock_b, "primary", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(5));
    // fw-b holds the VIPs but not the connection: its strict policy drops the stream.
    let gap = transfer.max_gap(killed, Instant::now());
    assert!(
        gap >= Duration::from_secs(4),
        "the stream should have stalled, longest pause {gap:?}"
    );
    assert!(
        transfer.received() < *transfer.sent.lock().unwrap(),
        "bytes were lost"
    );
    drop(pair);
    transfer.join();
}
