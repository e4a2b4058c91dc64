//! The batching both installers (entries and expectations) share: a netlink socket
//! sized for large batches, the loop that packs requests into as few `sendmsg` calls
//! as the buffers allow, and the attribution of the kernel's failure replies back to
//! the request that caused them (see [`replies`]).

use std::io;

use crate::kernel::netlink_socket::NlSocket;

use super::{
    CtnlError, RateLimit,
    consts::{NETLINK_CAP_ACK, NETLINK_EXT_ACK},
    nla::Writer,
    replies,
};

/// An errno for an I/O error without one.
pub(super) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// What batches of one [`Batcher::send_all`] call cost and lost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchCounts {
    pub batches: u64,
    pub messages: u64,
    /// ENOBUFS while reading failure replies (each occurrence).
    pub replies_lost: u64,
    /// Replies that could not be attributed to a request.
    pub malformed: u64,
}

/// The shape of what one installer sends: each item (a change) is encoded as up to
/// `seqs_per_item` requests of at most `item_max_len` bytes in all.
#[derive(Debug, Clone, Copy)]
pub(super) struct ItemShape {
    pub item_max_len: usize,
    pub seqs_per_item: u32,
    /// Truesize of the failure replies one item can cause (sizes batches so that the
    /// replies of a batch that fails entirely still fit the receive buffer).
    pub reply_bytes: usize,
    /// Batches never shrink below this many items after lost replies.
    pub min_items: usize,
}

/// A netlink socket plus the buffers and limits of batched requests.
pub(super) struct Batcher {
    pub sock: NlSocket,
    pub buf: Vec<u8>,
    pub rbuf: Vec<u8>,
    pub seq: u32,
    pub log: RateLimit,
    max_batch_bytes: usize,
    max_items: usize,
    shape: ItemShape,
    /// Names the installer in log lines ("ctnetlink install").
    what: &'static str,
}

impl Batcher {
    /// Opens a socket with the requested buffer sizes. Failure replies carry only the
    /// request's header (NETLINK_CAP_ACK), without extended ACK attributes.
    pub fn open(
        what: &'static str,
        sndbuf: usize,
        rcvbuf: usize,
        shape: ItemShape,
    ) -> Result<Batcher, CtnlError> {
        let io = |op| move |source| CtnlError::Io { op, source };
        let sock = NlSocket::netfilter(false).map_err(io("open installer socket"))?;
        let sndbuf = sock.set_sndbuf(sndbuf).map_err(io("set SO_SNDBUF"))?;
        let rcvbuf = sock.set_rcvbuf(rcvbuf).map_err(io("set SO_RCVBUF"))?;
        sock.set_netlink_flag(NETLINK_CAP_ACK, true)
            .map_err(io("set NETLINK_CAP_ACK"))?;
        sock.set_netlink_flag(NETLINK_EXT_ACK, false)
            .map_err(io("set NETLINK_EXT_ACK"))?;
        // netlink_sendmsg() refuses a datagram larger than sk_sndbuf - 32.
        let max_batch_bytes = sndbuf.saturating_sub(64).max(shape.item_max_len);
        Ok(Batcher {
            sock,
            buf: Vec::with_capacity(max_batch_bytes.min(16 << 20)),
            rbuf: vec![0u8; 64 << 10],
            seq: 1,
            log: RateLimit::new(),
            max_batch_bytes,
            max_items: (rcvbuf / shape.reply_bytes.max(1)).max(shape.min_items),
            shape,
            what,
        })
    }

    /// Largest batch: (bytes, items). The item count shrinks after replies were lost.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_batch_bytes, self.max_items)
    }

    /// A fresh sequence number for a single request.
    pub fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    /// Sends items `0..count` in as few batches as the limits allow. `encode(w, i,
    /// seq)` writes item `i`, its requests numbered from `seq`, and returns how many
    /// requests it wrote. `failed(i, k, errno)` receives every refusal of the `k`-th
    /// request of item `i`; a `sendmsg` that fails reports its errno for request 0 of
    /// every item of that batch.
    pub fn send_all(
        &mut self,
        count: usize,
        mut encode: impl FnMut(&mut Writer<'_>, usize, u32) -> u64,
        mut failed: impl FnMut(usize, usize, i32),
    ) -> BatchCounts {
        let mut c = BatchCounts::default();
        let per = self.shape.seqs_per_item;
        let mut i = 0;
        while i < count {
            let start = i;
            let base = self.seq;
            self.buf.clear();
            let mut w = Writer::new(&mut self.buf);
            let mut msgs = 0u64;
            while i < count
                && (i == start
                    || (i - start < self.max_items
                        && w.len() + self.shape.item_max_len <= self.max_batch_bytes))
            {
                msgs += encode(&mut w, i, base.wrapping_add((i - start) as u32 * per));
                i += 1;
            }
            let n = i - start;
            self.seq = base.wrapping_add(n as u32 * per);
            c.batches += 1;
            c.messages += msgs;
            if let Err(e) = self.sock.send(&self.buf) {
                let errno = errno_of(&e);
                (start..i).for_each(|k| failed(k, 0, errno));
                if let Some(suppressed) = self.log.allow() {
                    tracing::warn!(
                        error = %e, items = n, bytes = self.buf.len(), suppressed,
                        "{}: sendmsg failed", self.what
                    );
                }
                continue;
            }
            let d = replies::drain_failures(
                &self.sock,
                &mut self.rbuf,
                &mut self.log,
                self.what,
                base,
                |off, errno| {
                    let (k, slot) = ((off / per) as usize, (off % per) as usize);
                    if k < n {
                        failed(start + k, slot, errno);
                    }
                    k < n
                },
            );
            for _ in 0..d.replies_lost {
                self.max_items = (self.max_items / 2).max(self.shape.min_items);
            }
            c.replies_lost += d.replies_lost;
            c.malformed += d.malformed;
        }
        c
    }
}
