//! Failure replies of a batch sent without per-message ACKs: both installers (entries
//! and expectations) send a batch in one `sendmsg`, then read what the kernel queued
//! (an NLMSG_ERROR per refused message, nothing for the rest) until the socket is
//! empty.

use std::io;

use crate::kernel::netlink_socket::NlSocket;

use super::{RateLimit, consts::NLMSG_ERROR, decode::parse_error, nla::MsgIter};

/// What reading a batch's replies could not attribute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Drained {
    /// ENOBUFS on receive: failure replies were dropped (each occurrence counted).
    pub replies_lost: u64,
    /// Replies that were not a well-formed error for a message of the batch.
    pub malformed: u64,
}

/// Reads the replies queued for the batch whose sequence numbers start at `base`.
/// `on_failure(offset, errno)` receives each refusal with its sequence offset from
/// `base` and returns false when the offset is not part of the batch (malformed).
/// `what` names the installer in the rate-limited log line of a failed receive.
pub(super) fn drain_failures(
    sock: &NlSocket,
    rbuf: &mut [u8],
    log: &mut RateLimit,
    what: &str,
    base: u32,
    mut on_failure: impl FnMut(u32, i32) -> bool,
) -> Drained {
    let mut d = Drained::default();
    loop {
        let len = match sock.recv(rbuf, true) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // The receive buffer overflowed: some failure replies are gone.
                d.replies_lost += 1;
                continue;
            }
            Err(e) => {
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(error = %e, suppressed, "{what}: recv failed");
                }
                break;
            }
        };
        if len > rbuf.len() {
            d.malformed += 1;
            continue;
        }
        for m in MsgIter::new(&rbuf[..len]) {
            let Ok(m) = m else {
                d.malformed += 1;
                break;
            };
            if m.ty != NLMSG_ERROR {
                d.malformed += 1;
                continue;
            }
            match parse_error(&m) {
                Ok(0) => {}
                Ok(errno) => {
                    if !on_failure(m.seq.wrapping_sub(base), errno) {
                        d.malformed += 1;
                    }
                }
                Err(_) => d.malformed += 1,
            }
        }
    }
    d
}
