//! Maps and `.rodata` globals shared with the agent (names in `ha_common::names`).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use ha_common::{CT_COPY_MAX, CaptureTuning, CtSeen, KernelLayout, counter};

/// Events for the agent. The agent resizes it at load time (`ring_buffer_size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Dedup state keyed by `nf_conn` address. The agent sizes it; an evicted entry only
/// costs one extra (idempotent) event on its next packet. One common LRU list, not
/// per-CPU lists (BPF_F_NO_COMMON_LRU): those split the capacity between the CPUs, so
/// a CPU taking most new flows (one RX queue, one busy sender) evicts from half the map
/// while the other half sits idle; and the common list's per-CPU free caches refill in
/// batches of 128, so its lock is rarely taken. Measured on the bench's 2-core VM at
/// the new-flow ceiling: 1.23-1.38 µs per program run against 1.53-1.60 µs, and 7%
/// more new flows per second.
#[map]
pub static SEEN: LruHashMap<u64, CtSeen> = LruHashMap::with_max_entries(262_144, 0);

/// Slots of [`RECENT`] (a power of two).
pub const RECENT_SLOTS: u32 = 1 << 16;

/// What a new entry was reported with, until its second packet moves it into [`SEEN`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Recent {
    pub ct: u64,
    pub seen: CtSeen,
}

/// New entries' records, direct-mapped by `nf_conn` address: writing a slot costs a
/// store where an LRU insert costs an allocation, an eviction and two locks, and most
/// entries a flood or a scan creates never see a second packet. A slot another new
/// entry took over only costs one repeated (idempotent) event. Shared by the CPUs
/// like [`SEEN`]: the two directions of a connection run on different CPUs.
#[map]
pub static RECENT: Array<Recent> = Array::with_max_entries(RECENT_SLOTS, 0);

/// The [`RECENT`] slot of the entry at `ct` (slab addresses: the low bits carry
/// little, so a multiplicative hash spreads them).
#[inline(always)]
pub fn recent_slot(ct: u64) -> Option<*mut Recent> {
    let idx = (ct.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32 & (RECENT_SLOTS - 1);
    RECENT.get_ptr_mut(idx)
}

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU copy of the `nf_conn`: too large for the 512-byte BPF stack.
#[repr(C, align(8))]
pub struct Scratch(pub [u8; CT_COPY_MAX as usize]);

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `[0]`: the reader's state word (`ha_common::reader`). Mappable, so the agent
/// writes it without a system call.
#[map]
pub static READER: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Filled by the agent from BTF (`EbpfLoader::override_global`); frozen read-only, so
/// the verifier sees every offset as a constant and can bound the reads.
#[unsafe(no_mangle)]
pub static LAYOUT: KernelLayout = KernelLayout {
    state_hook: 0,
    state_in: 0,
    state_out: 0,
    dev_ifindex: 0,
    skb_nfct: 0,
    skb_iif: 0,
    ct_size: 0,
    ct_status: 0,
    ct_timeout: 0,
    ct_tuple_orig: 0,
    ct_tuple_reply: 0,
    ct_mark: 0,
    ct_zone: 0,
    ct_ext: 0,
    ct_proto: 0,
    tcp_state: 0,
    tcp_scale: [0; 2],
    tcp_flags: [0; 2],
    sctp_state: 0,
    sctp_vtag: [0; 2],
    dccp_state: 0,
    ext_labels_slot: 0,
    labels_bits: 0,
    ready: 0,
};

#[unsafe(no_mangle)]
pub static TUNING: CaptureTuning = CaptureTuning {
    max_wait_ns: 0,
    new_hooks: 0,
    ignore_ifindex: [0; 3],
    filters: 0,
    include_filters: 0,
};

/// Reads one field of a global the agent overrode: volatile, so the compiler cannot
/// fold the compile-time placeholder into the code, and field by field, so the struct
/// is never copied onto the 512-byte stack.
#[macro_export]
macro_rules! rodata {
    ($global:ident . $($field:tt)+) => {{
        let field = &$crate::maps::$global.$($field)+;
        // SAFETY: a reference to a static is valid for reads.
        unsafe { core::ptr::read_volatile(field) }
    }};
}

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 }
    }
}
