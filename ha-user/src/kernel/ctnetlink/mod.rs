//! ctnetlink: conntrack entries in and out of the kernel table.
//!
//! * [`Installer`] writes replicated [`Change`](crate::conntrack::Change)s in batches
//!   (create with NAT binding / update / delete, with fallbacks and counted outcomes).
//! * [`DestroyListener`] reports entries the kernel destroyed, with the port id of the
//!   socket that caused it, so the agent can replicate deletions without echoing its own.
//! * [`dump`] / [`flush`] read or clear the whole table.
//!
//! Everything works in the network namespace of the thread that opens the socket. The
//! codec ([`nla`], [`encode`], [`decode`]) is ours: zero allocations per message, and
//! every reply parser bounds-checked.

mod batch;
pub mod consts;
pub mod decode;
pub mod dump;
pub mod encode;
pub mod errno_counts;
mod event_socket;
pub mod events;
pub mod expect;
pub mod expect_events;
pub mod expect_install;
pub mod installer;
pub mod nla;
mod replies;

#[cfg(test)]
mod expect_tests;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use decode::{CtMessage, errno_name};
pub use dump::{DumpStats, dump, dump_into, flush, lookup};
pub use encode::EncodeOptions;
pub use events::{DestroyListener, Destroyed, ListenerConfig, ListenerStats, Recv};
pub use expect::{ExpMessage, ExpectEncodeOptions, HelperNamePolicy};
pub use expect_events::{ExpectEvent, ExpectListener, ExpectRecv};
pub use expect_install::{
    ExpectFailure, ExpectInstallCounts, ExpectInstallReport, ExpectInstaller,
    ExpectInstallerConfig, ExpectOp, MasterHelper, dump_expectations, dump_expectations_into,
    flush_expectations,
};
pub use installer::{Failure, InstallCounts, InstallReport, Installer, InstallerConfig, Op};
pub use nla::DecodeError;

/// Errors of ctnetlink operations, naming the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CtnlError {
    #[error("ctnetlink {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ctnetlink {op}: kernel answered {} ({errno})", errno_name(*errno))]
    Kernel { op: &'static str, errno: i32 },
    #[error("ctnetlink {op}: malformed message: {source}")]
    Decode {
        op: &'static str,
        #[source]
        source: DecodeError,
    },
}

/// At most one log line per second per call site; counts what it held back.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    const EVERY: Duration = Duration::from_secs(1);

    fn new() -> RateLimit {
        RateLimit {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number suppressed since the last allowed line)` if a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Self::EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
