//! Reading the whole table (bulk resync, tests) or one entry, and flushing it (tests,
//! `hasync flush`).

use std::time::{Duration, Instant};

use crate::conntrack::{Entry, Family, Key};

use crate::kernel::netlink_socket::NlSocket;

use super::{
    CtnlError,
    consts::{IPCTNL_MSG_CT_NEW, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR},
    decode::{is_ct_msg, parse_ct, parse_error},
    encode::{encode_dump, encode_flush},
    expect::encode_ct_get,
    nla::{DecodeError, Msg, MsgIter, Writer},
};

/// How a dump went besides the entries themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Entries decoded and returned.
    pub entries: u64,
    /// Messages that could not be decoded (skipped and logged).
    pub malformed: u64,
    /// The kernel flagged the dump as inconsistent (NLM_F_DUMP_INTR): the table changed
    /// under it; entries may be missing or duplicated.
    pub interrupted: bool,
    /// How long sending the request took. The kernel builds the first part of the
    /// answer inside that call, under its host-wide ctnetlink lock, so every conntrack
    /// install on the host (any namespace) waited this long.
    pub lock_held: Duration,
}

/// A first answer slower than this is logged: installs stalled noticeably.
const SLOW_FIRST_ANSWER: Duration = Duration::from_millis(20);

/// A request socket with a receive timeout, so a kernel that never finishes a dump
/// cannot hang the caller.
fn request_socket() -> Result<NlSocket, CtnlError> {
    let io = |op| move |source| CtnlError::Io { op, source };
    let sock = NlSocket::netfilter(false).map_err(io("open dump socket"))?;
    sock.set_rcvbuf(8 << 20).map_err(io("set SO_RCVBUF"))?;
    sock.set_recv_timeout(Duration::from_secs(30))
        .map_err(io("set SO_RCVTIMEO"))?;
    Ok(sock)
}

/// All entries of the calling thread's namespace (one family, or both with `None`).
/// Malformed messages are skipped and logged; see [`dump_into`] for the counts.
pub fn dump(family: Option<Family>) -> Result<Vec<Entry>, CtnlError> {
    let mut out = Vec::new();
    dump_into(family, &mut out)?;
    Ok(out)
}

/// Appends the table's entries to `out` (reusing its allocation) and reports counts.
pub fn dump_into(family: Option<Family>, out: &mut Vec<Entry>) -> Result<DumpStats, CtnlError> {
    let mut req = Vec::with_capacity(64);
    encode_dump(&mut Writer::new(&mut req), REQUEST_SEQ, family);
    run_dump(&req, &DUMP, |m| {
        is_ct_msg(m, IPCTNL_MSG_CT_NEW)
            .then(|| parse_ct(m).and_then(|c| c.entry()).map(|e| out.push(e)))
    })
}

/// Deletes every entry of the calling thread's namespace (one family, or all with
/// `None`). Each deletion produces a destroy event like any other.
pub fn flush(family: Option<Family>) -> Result<(), CtnlError> {
    let mut req = Vec::with_capacity(64);
    encode_flush(&mut Writer::new(&mut req), REQUEST_SEQ, family);
    run_acked(&req, &FLUSH)
}

// ---- one request, its whole answer (shared with the expectation dump and flush) ----

/// Sequence number of dump and flush requests (one request per socket).
pub(super) const REQUEST_SEQ: u32 = 1;

/// How one kind of request names itself in errors and logs.
pub(super) struct Request {
    /// e.g. "dump": the operation in [`CtnlError`]s and log lines.
    pub op: &'static str,
    pub send: &'static str,
    pub receive: &'static str,
    /// What one dumped item is called in logs.
    pub item: &'static str,
}

const DUMP: Request = Request {
    op: "dump",
    send: "send dump request",
    receive: "receive dump",
    item: "entry",
};

const FLUSH: Request = Request {
    op: "flush",
    send: "send flush request",
    receive: "receive flush reply",
    item: "entry",
};

/// Sends a dump request (made with [`REQUEST_SEQ`]) and passes every message of the
/// answer to `take`: `None` for a message that is not an item, `Some(Err)` for an item
/// that could not be decoded (skipped, counted and logged).
pub(super) fn run_dump(
    req: &[u8],
    r: &Request,
    mut take: impl FnMut(&Msg<'_>) -> Option<Result<(), DecodeError>>,
) -> Result<DumpStats, CtnlError> {
    let sock = request_socket()?;
    let sent_at = Instant::now();
    sock.send(req)
        .map_err(|source| CtnlError::Io { op: r.send, source })?;
    let mut stats = DumpStats {
        lock_held: sent_at.elapsed(),
        ..DumpStats::default()
    };
    if stats.lock_held > SLOW_FIRST_ANSWER {
        // The kernel walks hash buckets until its first datagram is full: an almost
        // empty table in a large hash means walking nearly all of them.
        tracing::warn!(
            ms = stats.lock_held.as_millis() as u64,
            "ctnetlink {}: the kernel took this long to start answering, and every conntrack \
             install on this host waited meanwhile; the conntrack hash is probably far larger \
             than the table (see `hashsize` in the README's troubleshooting)",
            r.op
        );
    }
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = sock.recv(&mut buf, false).map_err(|source| CtnlError::Io {
            op: r.receive,
            source,
        })?;
        if n > buf.len() {
            // The kernel sizes dump datagrams after our buffer; this cannot happen with
            // 256 KiB, but a partial datagram must not be parsed.
            stats.malformed += 1;
            continue;
        }
        for m in MsgIter::new(&buf[..n]) {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    stats.malformed += 1;
                    tracing::warn!(error = %e, "ctnetlink {}: malformed datagram", r.op);
                    break;
                }
            };
            if m.seq != REQUEST_SEQ {
                continue;
            }
            if m.flags & NLM_F_DUMP_INTR != 0 {
                stats.interrupted = true;
            }
            match m.ty {
                NLMSG_DONE => return Ok(stats),
                NLMSG_ERROR => match parse_error(&m) {
                    Ok(0) => {}
                    Ok(errno) => return Err(CtnlError::Kernel { op: r.op, errno }),
                    Err(source) => return Err(CtnlError::Decode { op: r.op, source }),
                },
                _ => match take(&m) {
                    None => {}
                    Some(Ok(())) => stats.entries += 1,
                    Some(Err(e)) => {
                        stats.malformed += 1;
                        tracing::warn!(error = %e, "ctnetlink {}: skipping malformed {}", r.op, r.item);
                    }
                },
            }
        }
    }
}

/// Sends a request (made with [`REQUEST_SEQ`]) and waits for the kernel's
/// acknowledgement.
pub(super) fn run_acked(req: &[u8], r: &Request) -> Result<(), CtnlError> {
    run_request(req, r, |_| Ok(()))
}

/// Sends a request (made with [`REQUEST_SEQ`]), passes every answer before the
/// acknowledgement to `answer`, and returns at the acknowledgement.
fn run_request(
    req: &[u8],
    r: &Request,
    mut answer: impl FnMut(&Msg<'_>) -> Result<(), DecodeError>,
) -> Result<(), CtnlError> {
    let sock = request_socket()?;
    sock.send(req)
        .map_err(|source| CtnlError::Io { op: r.send, source })?;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = sock.recv(&mut buf, false).map_err(|source| CtnlError::Io {
            op: r.receive,
            source,
        })?;
        for m in MsgIter::new(&buf[..n.min(buf.len())]) {
            let m = m.map_err(|source| CtnlError::Decode { op: r.op, source })?;
            if m.seq != REQUEST_SEQ {
                continue;
            }
            if m.ty == NLMSG_ERROR {
                return match parse_error(&m) {
                    Ok(0) => Ok(()),
                    Ok(errno) => Err(CtnlError::Kernel { op: r.op, errno }),
                    Err(source) => Err(CtnlError::Decode { op: r.op, source }),
                };
            }
            answer(&m).map_err(|source| CtnlError::Decode { op: r.op, source })?;
        }
    }
}

const LOOKUP: Request = Request {
    op: "lookup",
    send: "send lookup",
    receive: "receive lookup reply",
    item: "entry",
};

/// The entry with `key` in the calling thread's namespace, if there is one.
pub fn lookup(key: &Key) -> Result<Option<Entry>, CtnlError> {
    let mut req = Vec::with_capacity(256);
    encode_ct_get(&mut Writer::new(&mut req), REQUEST_SEQ, &key.orig, key.zone);
    let mut found = None;
    let done = run_request(&req, &LOOKUP, |m| {
        if is_ct_msg(m, IPCTNL_MSG_CT_NEW) {
            found = Some(parse_ct(m)?.entry()?);
        }
        Ok(())
    });
    match done {
        Ok(()) => Ok(found),
        Err(CtnlError::Kernel {
            errno: libc::ENOENT,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}
