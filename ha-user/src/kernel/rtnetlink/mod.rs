//! rtnetlink (`NETLINK_ROUTE`): the addresses and links the HA driver moves on
//! takeover, and link-state notifications for `monitor_interfaces`.
//!
//! * [`Rtnl`]: synchronous requests in the calling thread's network namespace —
//!   idempotent [`Rtnl::add_address`] / [`Rtnl::del_address`], [`Rtnl::list_addresses`],
//!   link lookup, up/down, MAC, macvlan create/delete.
//! * [`LinkMonitor`]: a non-blocking subscription to link (and address) changes whose
//!   fd goes into epoll / tokio's `AsyncFd`.
//!
//! Why our own codec instead of the `rtnetlink` crate: that crate is async-only (tokio
//! task + channels per request), while the takeover path wants one blocking
//! send/receive in the driver's thread with the kernel's exact errno and extended-ack
//! text; and we already own a bounds-checked netlink codec (`ctnetlink::nla`), so the
//! whole of this module is a few hundred lines of message layout.

mod addr;
pub mod consts;
mod link;
mod monitor;
mod msg;

#[cfg(test)]
mod tests;

use std::{fmt, io, time::Duration};

use ipnet::IpNet;

pub use addr::{AddOutcome, AddrInfo, DelOutcome};
pub use link::{LinkInfo, MacvlanMode, OperState, fmt_mac};
pub use monitor::{Groups, LinkMonitor, RtEvent};

pub use crate::kernel::ctnetlink::nla::DecodeError;
use crate::kernel::ctnetlink::nla::{self, Msg, MsgIter};
use crate::kernel::netlink_socket::NlSocket;
use consts::*;

/// An interface given by name or by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iface<'a> {
    Name(&'a str),
    Index(u32),
}

impl<'a> From<&'a str> for Iface<'a> {
    fn from(s: &'a str) -> Self {
        Iface::Name(s)
    }
}

impl<'a> From<&'a String> for Iface<'a> {
    fn from(s: &'a String) -> Self {
        Iface::Name(s)
    }
}

impl From<u32> for Iface<'_> {
    fn from(i: u32) -> Self {
        Iface::Index(i)
    }
}

impl fmt::Display for Iface<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Iface::Name(n) => f.write_str(n),
            Iface::Index(i) => write!(f, "ifindex {i}"),
        }
    }
}

/// What an operation was about: shown in every error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub op: &'static str,
    pub addr: Option<IpNet>,
    /// Interface name, or "ifindex N".
    pub iface: Option<String>,
}

impl Ctx {
    fn new(op: &'static str, iface: Option<Iface<'_>>, addr: Option<IpNet>) -> Ctx {
        Ctx {
            op,
            addr,
            iface: iface.map(|i| i.to_string()),
        }
    }
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op)?;
        if let Some(a) = &self.addr {
            write!(f, " {a}")?;
        }
        if let Some(i) = &self.iface {
            write!(f, " dev {i}")?;
        }
        Ok(())
    }
}

fn ext_msg(m: &Option<String>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(" ({m})"),
        _ => String::new(),
    }
}

/// Errors of rtnetlink operations, naming the operation, interface and address.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("rtnetlink {ctx}: {source}")]
    Io {
        ctx: Ctx,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink {ctx}: no such interface")]
    NoSuchInterface { ctx: Ctx },
    #[error("rtnetlink {ctx}: kernel answered: {}{}", io::Error::from_raw_os_error(*errno), ext_msg(message))]
    Kernel {
        ctx: Ctx,
        errno: i32,
        /// The kernel's extended-ack text, when it gave one.
        message: Option<String>,
    },
    #[error("rtnetlink {ctx}: malformed reply: {source}")]
    Decode {
        ctx: Ctx,
        #[source]
        source: DecodeError,
    },
    #[error("rtnetlink {ctx}: {reason}")]
    Invalid { ctx: Ctx, reason: String },
}

impl RtnlError {
    /// The errno behind the error, if the kernel or a syscall gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Io { source, .. } => source.raw_os_error(),
            RtnlError::NoSuchInterface { .. } => Some(libc::ENODEV),
            RtnlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub fn ctx(&self) -> &Ctx {
        match self {
            RtnlError::Io { ctx, .. }
            | RtnlError::NoSuchInterface { ctx }
            | RtnlError::Kernel { ctx, .. }
            | RtnlError::Decode { ctx, .. }
            | RtnlError::Invalid { ctx, .. } => ctx,
        }
    }

    fn kernel(ctx: &Ctx, errno: i32, message: Option<String>) -> RtnlError {
        if errno == libc::ENODEV {
            return RtnlError::NoSuchInterface { ctx: ctx.clone() };
        }
        RtnlError::Kernel {
            ctx: ctx.clone(),
            errno,
            message,
        }
    }

    fn invalid(ctx: &Ctx, reason: impl Into<String>) -> RtnlError {
        RtnlError::Invalid {
            ctx: ctx.clone(),
            reason: reason.into(),
        }
    }
}

/// Large enough for any single rtnetlink datagram: the kernel caps dump skbs at 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// The kernel answers in microseconds; this only bounds a bug.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is retried.
const DUMP_RETRIES: usize = 5;

/// A synchronous rtnetlink handle bound to the network namespace of the thread that
/// opened it. One request at a time (`&mut self`); cheap to keep open.
pub struct Rtnl {
    sock: NlSocket,
    seq: u32,
    req: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, RtnlError> {
        let ctx = Ctx::new("open socket", None, None);
        let io = |source| RtnlError::Io {
            ctx: ctx.clone(),
            source,
        };
        let sock = NlSocket::route(false).map_err(io)?;
        sock.set_recv_timeout(REPLY_TIMEOUT).map_err(io)?;
        // Best effort: error text from the kernel, short ACKs, kernel-side dump filters.
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK] {
            let _ = sock.set_int_opt(SOL_NETLINK, opt, 1);
        }
        Ok(Rtnl {
            sock,
            seq: 0,
            req: Vec::with_capacity(256),
            rbuf: vec![0u8; RECV_BUF],
        })
    }

    /// Clears the request buffer and starts a message with a fresh sequence number.
    fn begin(&mut self, ty: u16, flags: u16) -> usize {
        self.seq = self.seq.wrapping_add(1);
        self.req.clear();
        msg::header(&mut self.req, ty, flags | NLM_F_REQUEST, self.seq)
    }

    /// Sends the request in `self.req` and feeds every reply message of its sequence
    /// number to `on_msg` until the kernel's ACK or DONE. Returns whether a dump was
    /// interrupted by a concurrent change (the caller retries).
    fn transact(
        &mut self,
        ctx: &Ctx,
        mut on_msg: impl FnMut(&Msg<'_>) -> Result<(), DecodeError>,
    ) -> Result<bool, RtnlError> {
        let io = |source| RtnlError::Io {
            ctx: ctx.clone(),
            source,
        };
        let decode = |source| RtnlError::Decode {
            ctx: ctx.clone(),
            source,
        };
        self.sock.send(&self.req).map_err(io)?;
        let seq = self.seq;
        let mut interrupted = false;
        // A reply we cannot parse is remembered, not returned at once: the dump must be
        // drained to its end or the socket's next dump would fail with EBUSY.
        let mut first_err = None;
        loop {
            let n = self.sock.recv(&mut self.rbuf, false).map_err(io)?;
            if n > self.rbuf.len() {
                return Err(io(io::Error::other(format!(
                    "reply of {n} bytes truncated to {}",
                    self.rbuf.len()
                ))));
            }
            for m in MsgIter::new(&self.rbuf[..n]) {
                // A broken header makes the rest of the datagram unusable.
                let m = m.map_err(decode)?;
                if m.seq != seq {
                    continue; // a late reply to an earlier, failed request
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.ty {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => {
                        let (errno, text) = msg::parse_error(&m).map_err(decode)?;
                        if errno != 0 {
                            return Err(RtnlError::kernel(ctx, errno, text));
                        }
                        return first_err.map_or(Ok(interrupted), |e| Err(decode(e)));
                    }
                    NLMSG_DONE => {
                        let errno = msg::parse_done(&m);
                        if errno != 0 {
                            return Err(RtnlError::kernel(ctx, errno, None));
                        }
                        return first_err.map_or(Ok(interrupted), |e| Err(decode(e)));
                    }
                    NLMSG_OVERRUN => return Err(decode(DecodeError::Invalid("NLMSG_OVERRUN"))),
                    _ => {
                        if first_err.is_none()
                            && let Err(e) = on_msg(&m)
                        {
                            first_err = Some(e);
                        }
                    }
                }
            }
        }
    }

    /// Runs a dump built by `build`, retrying while the kernel reports it interrupted.
    fn dump<T>(
        &mut self,
        ctx: &Ctx,
        build: impl Fn(&mut Self),
        mut on_msg: impl FnMut(&Msg<'_>, &mut Vec<T>) -> Result<(), DecodeError>,
    ) -> Result<Vec<T>, RtnlError> {
        let mut out = Vec::new();
        for _ in 0..DUMP_RETRIES {
            out.clear();
            build(self);
            if !self.transact(ctx, |m| on_msg(m, &mut out))? {
                return Ok(out);
            }
            tracing::debug!(%ctx, "dump interrupted by a concurrent change; retrying");
        }
        tracing::warn!(%ctx, "dump still interrupted after {DUMP_RETRIES} tries; using the last");
        Ok(out)
    }
}

/// Writes attributes into a request after its fixed header.
fn writer(buf: &mut Vec<u8>) -> nla::Writer<'_> {
    nla::Writer::new(buf)
}

/// Checks an interface name (or label) the way the kernel would, with our wording.
fn check_name(ctx: &Ctx, what: &str, name: &str) -> Result<(), RtnlError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
        return Err(RtnlError::invalid(
            ctx,
            format!("{what} {name:?} must have 1 to {IFNAME_MAX} bytes and no NUL"),
        ));
    }
    Ok(())
}

/// A string attribute with its terminating NUL (callers check the length first).
fn put_str(w: &mut nla::Writer<'_>, ty: u16, s: &str) {
    let mut b = [0u8; IFNAME_MAX + 1];
    let n = s.len().min(IFNAME_MAX);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    w.put(ty, &b[..n + 1]);
}
