//! Sync filters (FortiGate `session_sync_filter`): evaluated only when an event is
//! about to be emitted, against the entry's original direction. Include rules are
//! OR-ed (with any, only matching entries sync); a matching exclude rule always wins.

use aya_ebpf::{macros::map, maps::Array};
use ha_common::{CT_COPY_MAX, FilterRule, MAX_FILTERS, filter};

use crate::{Packet, rodata};

#[map]
pub static FILTERS: Array<FilterRule> = Array::with_max_entries(MAX_FILTERS, 0);

const COPY: usize = CT_COPY_MAX as usize;

/// The original tuple's fields the rules look at (addresses stay in the copied
/// `nf_conn`: the BPF stack is 512 bytes).
struct Orig<'a> {
    family: u16,
    proto: u8,
    src: &'a [u8],
    dst: &'a [u8],
    sport: u16,
    dport: u16,
}

/// 16 bytes of the copy at `off` (empty if out of range: matches nothing).
#[inline(always)]
fn slice16(buf: &[u8; COPY], off: u32) -> &[u8] {
    let off = off as usize;
    if off + 16 <= COPY {
        &buf[off..off + 16]
    } else {
        &[]
    }
}

#[inline(always)]
fn le16(buf: &[u8; COPY], off: u32) -> u16 {
    let off = off as usize;
    if off + 2 <= COPY {
        u16::from_le_bytes([buf[off], buf[off + 1]])
    } else {
        0
    }
}

#[inline(always)]
fn be16(buf: &[u8; COPY], off: u32) -> u16 {
    let off = off as usize;
    if off + 2 <= COPY {
        u16::from_be_bytes([buf[off], buf[off + 1]])
    } else {
        0
    }
}

#[inline(always)]
fn masked_eq(addr: &[u8], want: &[u8; 16], mask: &[u8; 16]) -> bool {
    if addr.len() < 16 {
        return false;
    }
    let mut i = 0;
    while i < 16 {
        if addr[i] & mask[i] != want[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// (BPF has no indirect calls: the interface lookup is a generic, inlined closure.)
#[inline(always)]
fn matches<F: Fn() -> (u32, u32)>(
    r: &FilterRule,
    o: &Orig,
    ifs: &mut Option<(u32, u32)>,
    ifs_of: &F,
) -> bool {
    let set = r.set;
    if set & filter::PROTO != 0 && o.proto != r.proto {
        return false;
    }
    if set & (filter::SRC_ADDR | filter::DST_ADDR) != 0 && o.family != r.family {
        return false;
    }
    if set & filter::SRC_ADDR != 0 && !masked_eq(&o.src, &r.src_addr, &r.src_mask) {
        return false;
    }
    if set & filter::DST_ADDR != 0 && !masked_eq(&o.dst, &r.dst_addr, &r.dst_mask) {
        return false;
    }
    if set & filter::SRC_PORTS != 0 && (o.sport < r.sport[0] || o.sport > r.sport[1]) {
        return false;
    }
    if set & filter::DST_PORTS != 0 && (o.dport < r.dport[0] || o.dport > r.dport[1]) {
        return false;
    }
    if set & (filter::SRC_IF | filter::DST_IF) != 0 {
        let (src_if, dst_if) = *ifs.get_or_insert_with(ifs_of);
        if set & filter::SRC_IF != 0 && src_if != r.src_ifindex {
            return false;
        }
        if set & filter::DST_IF != 0 && dst_if != r.dst_ifindex {
            return false;
        }
    }
    true
}

/// Whether the entry may be synchronised. `reply`: the packet travels in the reply
/// direction (its in/out interfaces are the original direction's out/in).
#[inline(always)]
pub fn keep(buf: &[u8; COPY], tuple_orig: u32, packet: Packet, reply: bool) -> bool {
    let n = rodata!(TUNING.filters);
    if n == 0 {
        return true;
    }
    let o = Orig {
        // l3num is host order (little-endian on the BPF target); ports are network order.
        family: le16(buf, tuple_orig + 18),
        proto: if (tuple_orig as usize) + 39 <= COPY {
            buf[tuple_orig as usize + 38]
        } else {
            0
        },
        src: slice16(buf, tuple_orig),
        dst: slice16(buf, tuple_orig + 20),
        sport: be16(buf, tuple_orig + 16),
        dport: be16(buf, tuple_orig + 36),
    };
    let ifs_of = || {
        let (i, o) = packet.interfaces();
        if reply { (o, i) } else { (i, o) }
    };
    let mut ifs = None;
    let mut included = rodata!(TUNING.include_filters) == 0;
    let mut i = 0;
    while i < MAX_FILTERS {
        if i >= n {
            break;
        }
        if let Some(r) = FILTERS.get(i)
            && matches(r, &o, &mut ifs, &ifs_of)
        {
            if r.exclude != 0 {
                return false;
            }
            included = true;
        }
        i += 1;
    }
    included
}
