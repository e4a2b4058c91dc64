//! Replication: the I/O-free protocol core (framing, authentication, sequencing) and its UDP transport.
pub mod transport;
