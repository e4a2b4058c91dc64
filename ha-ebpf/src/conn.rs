//! Decode one `nf_conn`, decide whether the peer must hear about it, emit the event.
//!
//! The BPF stack is 512 bytes: the `nf_conn` is copied into a per-CPU scratch map and
//! the event is written in place into the ring-buffer reservation.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
};
use ha_common::{
    ABSENT, CT_COPY_MAX, CtEvent, CtSeen, CtTuple, SEEN_FILTERED, STATUS_CONFIRMED,
    STATUS_REPLICATED, counter, has, kind, reader,
};

use crate::{
    Packet, filter,
    maps::{EVENTS, READER, Recent, SCRATCH, SEEN, count, recent_slot},
    may_report, on_ignored_interface, read, rodata,
};

const COPY: usize = CT_COPY_MAX as usize;
const IPS_DYING: u32 = 1 << 9;
const IPS_TEMPLATE: u32 = 1 << 11;
/// `IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM`: the flags pickup needs;
/// the others (data unacknowledged, max ack set, ...) flip on ordinary packets.
const TCP_FLAGS_REPLICATED: u8 = 0x01 | 0x02;
/// Offset of `dst.protonum` inside `struct nf_conntrack_tuple` (checked by the agent).
const TUPLE_PROTONUM: u32 = 38;

/// Reads a naturally aligned scalar of the copied `nf_conn`; [`ABSENT`] or an
/// out-of-range offset reads as zero. The agent rejects misaligned offsets at load.
#[inline(always)]
fn at<T: Copy + Default>(buf: &[u8; COPY], off: u32) -> T {
    let off = off as usize;
    if off >= COPY || off + core::mem::size_of::<T>() > COPY {
        return T::default();
    }
    // SAFETY: in bounds (checked above); aligned (offsets validated by the agent, the
    // buffer is 8-aligned).
    unsafe { core::ptr::read(buf.as_ptr().add(off) as *const T) }
}

/// Copies a tuple from the copied `nf_conn` straight into the event (no stack copy).
#[inline(always)]
fn copy_tuple(buf: &[u8; COPY], off: u32, dst: *mut CtTuple) {
    let size = core::mem::size_of::<CtTuple>();
    let off = off as usize;
    if off >= COPY || off + size > COPY {
        // SAFETY: `dst` is a field of the reserved record.
        unsafe { dst.write_bytes(0, 1) };
        return;
    }
    // SAFETY: source in bounds (checked above); `dst` is a field of the reserved record.
    unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr().add(off), dst as *mut u8, size) };
}

/// `base + off` unless either is [`ABSENT`].
#[inline(always)]
fn rel(base: u32, off: u32) -> u32 {
    if base == ABSENT || off == ABSENT {
        ABSENT
    } else {
        base + off
    }
}

/// The 128 conntrack label bits, when this entry has the labels extension.
#[inline(always)]
fn labels(buf: &[u8; COPY]) -> Option<[u8; 16]> {
    let slot = rodata!(LAYOUT.ext_labels_slot);
    let bits = rodata!(LAYOUT.labels_bits);
    if slot == ABSENT || bits == ABSENT {
        return None;
    }
    let ext: u64 = at(buf, rodata!(LAYOUT.ct_ext));
    if ext == 0 {
        return None;
    }
    let off: u8 = read(ext + slot as u64).ok()?;
    if off == 0 {
        return None;
    }
    read(ext + off as u64 + bits as u64).ok()
}

#[inline(always)]
fn labels_sum(labels: &[u8; 16]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 16 {
        sum = sum.rotate_left(5) ^ labels[i] as u32;
        i += 1;
    }
    sum
}

/// Protocol state (TCP, SCTP, DCCP) of the copied entry.
#[inline(always)]
fn proto_state(buf: &[u8; COPY], protonum: u8) -> u8 {
    let base = rodata!(LAYOUT.ct_proto);
    let off = match protonum {
        6 => rodata!(LAYOUT.tcp_state),
        132 => rodata!(LAYOUT.sctp_state),
        33 => rodata!(LAYOUT.dccp_state),
        _ => return 0,
    };
    at(buf, rel(base, off))
}

/// Reports the entry at `ct` if the peer must hear about it.
#[inline(always)]
pub fn report(ct: u64, hook: u8, packet: Packet, reply: bool) -> Result<(), ()> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU map value, exclusively ours while the program runs.
    let buf = unsafe { &mut (*scratch).0 };
    let size = rodata!(LAYOUT.ct_size) as usize;
    if size == 0 || size > COPY {
        return Err(());
    }
    // SAFETY: probe reads fault safely.
    if unsafe { bpf_probe_read_kernel_buf(ct as *const u8, &mut buf[..size]) }.is_err() {
        count(counter::READ_ERROR);
        return Err(());
    }
    let mut status: u32 = at(buf, rodata!(LAYOUT.ct_status));
    if status & (IPS_DYING | IPS_TEMPLATE) != 0
        || !may_report(status, hook, rodata!(TUNING.new_hooks))
    {
        count(counter::SKIPPED_UNCONFIRMED);
        return Ok(());
    }
    let confirmed = status & STATUS_CONFIRMED != 0;

    // Before confirmation ct->timeout is relative; afterwards an absolute jiffies deadline.
    // SAFETY: plain helper call.
    let now_j = unsafe { bpf_jiffies64() } as u32;
    let raw_timeout: u32 = at(buf, rodata!(LAYOUT.ct_timeout));
    let (mut remaining, deadline) = if confirmed {
        let left = raw_timeout.wrapping_sub(now_j) as i32;
        (if left > 0 { left as u32 } else { 0 }, raw_timeout)
    } else {
        (raw_timeout, now_j.wrapping_add(raw_timeout))
    };

    let tuple_orig = rodata!(LAYOUT.ct_tuple_orig);
    let protonum: u8 = at(buf, rel(tuple_orig, TUPLE_PROTONUM));
    let mut state = proto_state(buf, protonum);
    let (mut flag0, mut flag1) = (0u8, 0u8);
    if protonum == 6 {
        let base = rodata!(LAYOUT.ct_proto);
        flag0 = at(buf, rel(base, rodata!(LAYOUT.tcp_flags[0])));
        flag1 = at(buf, rel(base, rodata!(LAYOUT.tcp_flags[1])));
    }
    let mut mark: u32 = at(buf, rodata!(LAYOUT.ct_mark));
    let labels = labels(buf);
    let seen = CtSeen {
        status: status & STATUS_REPLICATED,
        mark,
        deadline,
        half_life: remaining / 2,
        proto_state: state,
        tcp_scale_flags: (flag0 & TCP_FLAGS_REPLICATED) | ((flag1 & TCP_FLAGS_REPLICATED) << 2),
        _pad: [0; 2],
        labels_sum: match &labels {
            Some(l) => labels_sum(l),
            None => 0,
        },
    };

    // The entry's dedup record, if it has one. A new entry has none of its own: a
    // record at a recycled address belongs to an earlier entry and is overwritten below
    // (a lookup is cheap; only an insert is not, see the end).
    let record = SEEN.get_ptr_mut(ct);
    // A confirmed entry without a record may be at its second packet: its first one
    // left what it reported in RECENT.
    let recent = match (record, confirmed) {
        (None, true) => recent_slot(ct)
            // SAFETY: a map value pointer; the value is copied out at once.
            .map(|p| unsafe { core::ptr::read_volatile(p) })
            .filter(|r| r.ct == ct)
            .map(|r| r.seen),
        _ => None,
    };
    let ev_kind = if !confirmed {
        kind::NEW
    } else {
        // SAFETY: a map value pointer; the value is copied out at once.
        let prev = record.map(|p| unsafe { core::ptr::read_volatile(p) });
        match prev.or(recent) {
            // A sync filter keeps this entry off the wire: nothing more to look at.
            Some(prev) if prev.status & SEEN_FILTERED != 0 => return Ok(()),
            Some(prev) => {
                let same = prev.status == seen.status
                    && prev.mark == seen.mark
                    && prev.proto_state == seen.proto_state
                    && prev.tcp_scale_flags == seen.tcp_scale_flags
                    && prev.labels_sum == seen.labels_sum;
                if !same {
                    kind::UPDATE
                } else if deadline.wrapping_sub(prev.deadline) as i32 > prev.half_life as i32 {
                    kind::REFRESH
                } else {
                    if record.is_none() {
                        // Second packet, nothing new: the entry lives on, record it.
                        let _ = SEEN.insert(ct, prev, 0);
                    }
                    return Ok(());
                }
            }
            // Not known (its second packet, the agent restarted, or evicted): report
            // it; the peer upserts.
            None => kind::UPDATE,
        }
    };

    if !filter::keep(buf, tuple_orig, packet, reply) {
        let filtered = CtSeen {
            status: SEEN_FILTERED,
            mark: 0,
            deadline: 0,
            half_life: 0,
            proto_state: 0,
            tcp_scale_flags: 0,
            _pad: [0; 2],
            labels_sum: 0,
        };
        let _ = SEEN.insert(ct, filtered, 0);
        count(counter::FILTERED);
        return Ok(());
    }
    if on_ignored_interface(packet) {
        // Not recorded in SEEN: such packets are rare (the sync link's own traffic).
        count(counter::FILTERED);
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<CtEvent>(0) else {
        // Dropped. SEEN is left as it was, so the next packet of this entry retries;
        // the agent sees the counter and repairs the rest by resync.
        count(counter::RINGBUF_FULL);
        return Err(());
    };
    // Copy the entry again now that the record has its place in the ring. Packets of
    // one connection run on several CPUs at once (one per direction): a CPU that
    // copied the entry before another CPU's packet changed it may reserve after that
    // CPU's event, and the peer, applying events in ring order, would end with the
    // older state (seen as a TCP entry left in FIN_WAIT on the peer). The
    // reservation orders the copies: the last record holds the newest state.
    // SAFETY: probe reads fault safely.
    if unsafe { bpf_probe_read_kernel_buf(ct as *const u8, &mut buf[..size]) }.is_ok() {
        status = at(buf, rodata!(LAYOUT.ct_status));
        let raw: u32 = at(buf, rodata!(LAYOUT.ct_timeout));
        if confirmed {
            let left = raw.wrapping_sub(now_j) as i32;
            remaining = if left > 0 { left as u32 } else { 0 };
        }
        state = proto_state(buf, protonum);
        if protonum == 6 {
            let base = rodata!(LAYOUT.ct_proto);
            flag0 = at(buf, rel(base, rodata!(LAYOUT.tcp_flags[0])));
            flag1 = at(buf, rel(base, rodata!(LAYOUT.tcp_flags[1])));
        }
        mark = at(buf, rodata!(LAYOUT.ct_mark));
    }
    // SAFETY: plain helper call.
    let now_ns = unsafe { bpf_ktime_get_ns() };
    let ev = entry.as_mut_ptr();
    let zone = rodata!(LAYOUT.ct_zone);
    let mark_off = rodata!(LAYOUT.ct_mark);
    let tuple_reply = rodata!(LAYOUT.ct_tuple_reply);
    let base = rodata!(LAYOUT.ct_proto);
    let (scale0, scale1) = (rodata!(LAYOUT.tcp_scale[0]), rodata!(LAYOUT.tcp_scale[1]));
    let (vtag0, vtag1) = (rodata!(LAYOUT.sctp_vtag[0]), rodata!(LAYOUT.sctp_vtag[1]));
    // SAFETY: `ev` points at the reserved, exclusively owned record; every field is
    // written before submit.
    unsafe {
        copy_tuple(buf, tuple_orig, &raw mut (*ev).orig);
        copy_tuple(buf, tuple_reply, &raw mut (*ev).reply);
        (*ev).status = status;
        (*ev).timeout = remaining;
        (*ev).mark = mark;
        (*ev).zone_id = at(buf, zone);
        (*ev).zone_flags = at(buf, rel(zone, 2));
        (*ev).zone_dir = at(buf, rel(zone, 3));
        (*ev).kind = ev_kind;
        (*ev).proto_state = state;
        (*ev).tcp_flags = [flag0, flag1];
        (*ev).tcp_wscale = [0; 2];
        (*ev).sctp_vtag = [0; 2];
        if protonum == 6 {
            (*ev).tcp_wscale = [at(buf, rel(base, scale0)), at(buf, rel(base, scale1))];
        } else if protonum == 132 {
            (*ev).sctp_vtag = [at(buf, rel(base, vtag0)), at(buf, rel(base, vtag1))];
        }
        let mut present = 0;
        if mark_off != ABSENT {
            present |= has::MARK;
        }
        if zone != ABSENT {
            present |= has::ZONE;
        }
        (*ev).labels = [0; 16];
        if let Some(bits) = labels {
            present |= has::LABELS;
            (*ev).labels = bits;
        }
        (*ev).has = present;
        (*ev).hook = hook;
        (*ev).ts_ns = now_ns;
    }
    let wake = wake_flags(now_ns);
    entry.submit(wake);
    if wake == BPF_RB_NO_WAKEUP as u64 {
        recheck_reader(now_ns);
    }
    match record {
        // Rewritten in place: an LRU update allocates a node, links it and frees the
        // old one, the program's most expensive step, and a TCP connection changes
        // state four or five times. A reader on another CPU may see a torn record: it
        // then differs from every real state, so the worst case is one repeated event.
        // SAFETY: a map value pointer taken above in this run.
        Some(p) => unsafe { core::ptr::write_volatile(p, seen) },
        None if confirmed => {
            let _ = SEEN.insert(ct, seen, 0);
        }
        // A new entry gets its LRU record at its second packet: an insert with its
        // eviction is the program's most expensive step, and entries that never see a
        // second packet (scans, floods, one-shot UDP) would push live ones out.
        None => {
            if let Some(slot) = recent_slot(ct) {
                // SAFETY: a map value pointer taken in this run.
                unsafe { core::ptr::write_volatile(slot, Recent { ct, seen }) };
            }
        }
    }
    count(match ev_kind {
        kind::NEW => counter::NEW,
        kind::UPDATE => counter::UPDATE,
        _ => counter::REFRESH,
    });
    Ok(())
}

/// Adaptive wake-up, decided from the reader's state word (`ha_common::reader`): a
/// reader that runs, or sleeps with its drain timer due within `max_wait_ns`, is left
/// alone; an idle one (or one whose timer is far off) is woken at once, by the first
/// record that finds it so. Under load the reader therefore drains on its own timer and
/// the packets' CPUs raise no wake-up interrupts (a flat-out profile had 12% of the
/// generator's time in them); an idle node still sends the first event of a burst at
/// once.
#[inline(always)]
fn wake_flags(now_ns: u64) -> u64 {
    let Some(word) = READER.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    // SAFETY: map value pointer; the reader and other CPUs write it concurrently.
    let state = unsafe { core::ptr::read_volatile(word) };
    if !must_wake(state, now_ns) {
        return BPF_RB_NO_WAKEUP as u64;
    }
    // SAFETY: as above. Racing CPUs at worst both wake the reader.
    unsafe { core::ptr::write_volatile(word, reader::WAKING) };
    count(counter::WAKEUPS);
    BPF_RB_FORCE_WAKEUP as u64
}

/// Whether a reader in `state` would leave a record unread for longer than allowed.
#[inline(always)]
fn must_wake(state: u64, now_ns: u64) -> bool {
    match state {
        reader::AWAKE | reader::WAKING => false,
        reader::IDLE => true,
        // A deadline that has passed: the timer has fired and the reader is on its way.
        deadline => deadline.wrapping_sub(now_ns) as i64 > rodata!(TUNING.max_wait_ns) as i64,
    }
}

/// After a record went in without a wake-up: the reader may have published a new state
/// (and looked at the ring) between [`wake_flags`] and the commit. The commit is a full
/// barrier and the reader publishes before it looks, so this second look sees any
/// state in which it missed the record; then a discarded record carries the wake-up.
#[inline(always)]
fn recheck_reader(now_ns: u64) {
    let Some(word) = READER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: map value pointer, see `wake_flags`.
    let state = unsafe { core::ptr::read_volatile(word) };
    if !must_wake(state, now_ns) {
        return;
    }
    if let Some(nudge) = EVENTS.reserve::<u64>(0) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(word, reader::WAKING) };
        count(counter::WAKEUPS);
        nudge.discard(BPF_RB_FORCE_WAKEUP as u64);
    }
}
