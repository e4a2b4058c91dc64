//! Reading the whole table (bulk resync, tests) and flushing it (tests, `hasync flush`).

use std::{io, time::Duration};

use crate::conntrack::{Entry, Family};

use super::{
    CtnlError,
    consts::{IPCTNL_MSG_CT_NEW, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR},
    decode::{is_ct_msg, parse_ct, parse_error},
    encode::{encode_dump, encode_flush},
    nla::{MsgIter, Writer},
    socket::NlSocket,
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
}

/// A request socket with a receive timeout, so a kernel that never finishes a dump
/// cannot hang the caller.
fn request_socket() -> Result<NlSocket, CtnlError> {
    let io = |op| move |source| CtnlError::Io { op, source };
    let sock = NlSocket::open(false).map_err(io("open dump socket"))?;
    sock.set_rcvbuf(8 << 20).map_err(io("set SO_RCVBUF"))?;
    let tv = libc::timeval {
        tv_sec: Duration::from_secs(30).as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(CtnlError::Io {
            op: "set SO_RCVTIMEO",
            source: io::Error::last_os_error(),
        });
    }
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
    const SEQ: u32 = 1;
    let sock = request_socket()?;
    let mut req = Vec::with_capacity(64);
    encode_dump(&mut Writer::new(&mut req), SEQ, family);
    sock.send(&req).map_err(|source| CtnlError::Io {
        op: "send dump request",
        source,
    })?;
    let mut stats = DumpStats::default();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = sock.recv(&mut buf, false).map_err(|source| CtnlError::Io {
            op: "receive dump",
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
                    tracing::warn!(error = %e, "ctnetlink dump: malformed datagram");
                    break;
                }
            };
            if m.seq != SEQ {
                continue;
            }
            if m.flags & NLM_F_DUMP_INTR != 0 {
                stats.interrupted = true;
            }
            match m.ty {
                NLMSG_DONE => return Ok(stats),
                NLMSG_ERROR => match parse_error(&m) {
                    Ok(0) => {}
                    Ok(errno) => return Err(CtnlError::Kernel { op: "dump", errno }),
                    Err(source) => return Err(CtnlError::Decode { op: "dump", source }),
                },
                _ if is_ct_msg(&m, IPCTNL_MSG_CT_NEW) => {
                    match parse_ct(&m).and_then(|c| c.entry()) {
                        Ok(e) => {
                            out.push(e);
                            stats.entries += 1;
                        }
                        Err(e) => {
                            stats.malformed += 1;
                            tracing::warn!(error = %e, "ctnetlink dump: skipping malformed entry");
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Deletes every entry of the calling thread's namespace (one family, or all with
/// `None`). Each deletion produces a destroy event like any other.
pub fn flush(family: Option<Family>) -> Result<(), CtnlError> {
    const SEQ: u32 = 1;
    let sock = request_socket()?;
    let mut req = Vec::with_capacity(64);
    encode_flush(&mut Writer::new(&mut req), SEQ, family);
    sock.send(&req).map_err(|source| CtnlError::Io {
        op: "send flush request",
        source,
    })?;
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let n = sock.recv(&mut buf, false).map_err(|source| CtnlError::Io {
            op: "receive flush reply",
            source,
        })?;
        for m in MsgIter::new(&buf[..n.min(buf.len())]) {
            let m = m.map_err(|source| CtnlError::Decode {
                op: "flush",
                source,
            })?;
            if m.ty == NLMSG_ERROR && m.seq == SEQ {
                return match parse_error(&m) {
                    Ok(0) => Ok(()),
                    Ok(errno) => Err(CtnlError::Kernel { op: "flush", errno }),
                    Err(source) => Err(CtnlError::Decode {
                        op: "flush",
                        source,
                    }),
                };
            }
        }
    }
}
