//! The local control interface: a Unix socket (root only) speaking one JSON request
//! and one JSON response per line, and the client the CLI uses.
//!
//! Requests are small and typed ([`Request`]); anything else gets a [`Response::Error`]
//! naming what was wrong, and the server keeps running.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

/// What an operator (through the CLI) can ask the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Role, peer, sync state, counters, failover timeline.
    Status,
    /// Take the primary role now (the peer steps down).
    Promote,
    /// Maintenance: give up the primary role and do not take it back until `resume`.
    Demote,
    /// Leave maintenance.
    Resume,
    /// This node's conntrack table: summary and (filtered) entries.
    States {
        #[serde(default)]
        filter: StateFilter,
    },
    /// The entries this node holds on behalf of its peer.
    PeerStates {
        #[serde(default)]
        filter: StateFilter,
    },
    /// Ask the peer for its whole table now.
    Resync,
    /// Remove the peer's entries from this node's kernel table.
    Flush,
}

/// Which entries `states` / `peer-states` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFilter {
    /// "tcp", "udp", "icmp", ... or a protocol number.
    pub proto: Option<String>,
    /// An address in either direction's tuple.
    pub addr: Option<std::net::IpAddr>,
    /// A port in either direction's tuple.
    pub port: Option<u16>,
    /// At most this many entries in the answer (the summary counts all).
    pub limit: Option<usize>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<serde_json::Value>),
    Done { message: String },
    Error { message: String },
}

/// Longest request line the server reads (a request is a few dozen bytes).
pub const MAX_REQUEST: usize = 4096;
