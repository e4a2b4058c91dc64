#![no_std]
//! The ABI between the kernel side (`ha-ebpf`) and the agent (`ha-user`).
//!
//! Everything here is `#[repr(C)]`, naturally aligned and free of implicit padding, so
//! the same bytes cross the ring buffer and the `.rodata` globals unchanged. Layout
//! changes must be made on both sides at once; the `const` assertions at the bottom
//! catch accidental size changes at compile time.

/// One direction of a conntrack tuple, byte for byte `struct nf_conntrack_tuple`
/// (40 bytes). The agent checks this layout against the running kernel's BTF before
/// it loads the program.
///
/// `src_u` / `dst_u` are the protocol unions (`u.all`) in network byte order: ports for
/// TCP/UDP/SCTP/DCCP/UDPLITE, the ICMP id (src) and type/code (dst), the GRE key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtTuple {
    pub src: [u8; 16],
    pub src_u: [u8; 2],
    /// AF_INET (2) or AF_INET6 (10), host byte order.
    pub l3num: u16,
    pub dst: [u8; 16],
    pub dst_u: [u8; 2],
    pub protonum: u8,
    pub dir: u8,
}

/// What kind of change made the program emit an event.
pub mod kind {
    /// The entry was seen before conntrack confirmed it: a brand-new connection.
    pub const NEW: u8 = 1;
    /// A replicated field changed (status bits, protocol state, mark, labels).
    pub const UPDATE: u8 = 2;
    /// Nothing replicated changed but the kernel extended the timeout by more than half
    /// of what the peer was last told, so the peer's copy must be refreshed.
    pub const REFRESH: u8 = 3;
}

/// Bits of [`CtEvent::has`]: which optional fields the running kernel provided.
pub mod has {
    pub const MARK: u8 = 1 << 0;
    pub const ZONE: u8 = 1 << 1;
    pub const LABELS: u8 = 1 << 2;
}

/// One conntrack entry as the program saw it, written into the ring buffer.
/// 136 bytes (+8 bytes of ring-buffer header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEvent {
    pub orig: CtTuple,
    pub reply: CtTuple,
    /// `ct->status` (low 32 bits; the kernel defines no higher bits).
    pub status: u32,
    /// Jiffies until the entry expires (relative, also for unconfirmed entries).
    pub timeout: u32,
    pub mark: u32,
    pub zone_id: u16,
    pub zone_flags: u8,
    pub zone_dir: u8,
    /// One of [`kind`].
    pub kind: u8,
    /// TCP (`enum tcp_conntrack`), SCTP or DCCP state; 0 for stateless protocols.
    pub proto_state: u8,
    /// TCP window scale per direction (`seen[dir].td_scale`).
    pub tcp_wscale: [u8; 2],
    /// TCP flags per direction (`seen[dir].flags`: window scale, SACK permitted, ...).
    pub tcp_flags: [u8; 2],
    /// Bitmask of [`has`].
    pub has: u8,
    /// The netfilter hook (`NF_INET_*`) the program ran at; diagnostics only.
    pub hook: u8,
    /// SCTP verification tags per direction.
    pub sctp_vtag: [u32; 2],
    /// Conntrack labels (128 bits), when the entry has the labels extension.
    pub labels: [u8; 16],
    /// `bpf_ktime_get_ns()` when the event was written (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

/// Offsets into kernel structures, read from the running kernel's BTF by the agent and
/// handed to the program as a `.rodata` global, so one object runs on every kernel that
/// has the fields. [`ABSENT`] marks an optional field this kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `offsetof(struct nf_hook_state, hook)`.
    pub state_hook: u32,
    /// `offsetof(struct nf_hook_state, in)` / `out` (`struct net_device *`).
    pub state_in: u32,
    pub state_out: u32,
    /// `offsetof(struct net_device, ifindex)`.
    pub dev_ifindex: u32,
    /// `offsetof(struct sk_buff, _nfct)`.
    pub skb_nfct: u32,
    /// `offsetof(struct sk_buff, skb_iif)`: the interface a packet came in on, which
    /// POST_ROUTING's hook state does not carry.
    pub skb_iif: u32,
    /// Bytes of `struct nf_conn` to copy (its size, at most [`CT_COPY_MAX`]).
    pub ct_size: u32,
    pub ct_status: u32,
    pub ct_timeout: u32,
    pub ct_tuple_orig: u32,
    pub ct_tuple_reply: u32,
    pub ct_mark: u32,
    pub ct_zone: u32,
    pub ct_ext: u32,
    /// `offsetof(struct nf_conn, proto)` plus the member offsets inside it.
    pub ct_proto: u32,
    pub tcp_state: u32,
    pub tcp_scale: [u32; 2],
    pub tcp_flags: [u32; 2],
    pub sctp_state: u32,
    pub sctp_vtag: [u32; 2],
    pub dccp_state: u32,
    /// `offsetof(struct nf_ct_ext, offset) + NF_CT_EXT_LABELS` (one `u8` per extension).
    pub ext_labels_slot: u32,
    /// `offsetof(struct nf_conn_labels, bits)`.
    pub labels_bits: u32,
    /// Set to 1 once the agent has filled the struct; the program does nothing before.
    pub ready: u32,
}

/// Marks an optional [`KernelLayout`] field the running kernel does not have.
pub const ABSENT: u32 = u32::MAX;
/// The program copies at most this many bytes of `struct nf_conn` (6.18: 256 bytes).
pub const CT_COPY_MAX: u32 = 512;

/// Runtime tuning handed to the program as a `.rodata` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureTuning {
    /// How long a record may wait for the reader's own drain timer (nanoseconds): a
    /// reader that sleeps with its timer due within this is not woken (see
    /// [`reader`]).
    pub max_wait_ns: u64,
    /// Bit `n` set: hook number `n` (`NF_INET_*`) may emit unconfirmed (NEW) entries.
    /// FORWARD runs before source NAT, so NEW is only taken where conntrack confirms.
    pub new_hooks: u32,
    /// Packets entering or leaving these interfaces are never reported: loopback (a
    /// node's local flows mean nothing to its peer) and the sync link's own traffic.
    /// 0 = unused slot.
    pub ignore_ifindex: [u32; 3],
    /// Rules in the `FILTERS` map (the first `filters` slots are used).
    pub filters: u32,
    /// How many of them are include rules: with any, only matching entries sync.
    pub include_filters: u32,
}

/// The reader's state word, `READER[0]`: the agent writes it through a shared mapping
/// (no system call), the program reads it to decide whether a record must wake the
/// reader. A wake-up costs the packet's CPU an interrupt to itself (in a VM, an exit)
/// and the reader a context switch; under load the reader's drain timer does the job.
pub mod reader {
    /// The reader runs and looks at the ring again before it sleeps: no wake-up.
    pub const AWAKE: u64 = u64::MAX;
    /// Written by the program that forced a wake-up, so the records after it do not
    /// force another one before the reader runs.
    pub const WAKING: u64 = u64::MAX - 1;
    /// The reader sleeps without a drain timer: the next record wakes it. Any other
    /// value is the CLOCK_MONOTONIC deadline (ns) of the timer it sleeps with.
    pub const IDLE: u64 = 0;
}

/// Most sync filter rules the program evaluates.
pub const MAX_FILTERS: u32 = 16;

/// Which criteria of a [`FilterRule`] are set (bits of [`FilterRule::set`]).
pub mod filter {
    pub const SRC_IF: u32 = 1 << 0;
    pub const DST_IF: u32 = 1 << 1;
    pub const SRC_ADDR: u32 = 1 << 2;
    pub const DST_ADDR: u32 = 1 << 3;
    pub const PROTO: u32 = 1 << 4;
    pub const SRC_PORTS: u32 = 1 << 5;
    pub const DST_PORTS: u32 = 1 << 6;
}

/// One sync filter (FortiGate `session_sync_filter`): all set criteria must match,
/// evaluated against the original direction. Include rules are OR-ed; any matching
/// exclude rule keeps the entry off the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterRule {
    /// Bits of [`filter`].
    pub set: u32,
    /// 1: matching entries are not synchronised.
    pub exclude: u32,
    /// Ingress / egress interface of the original direction.
    pub src_ifindex: u32,
    pub dst_ifindex: u32,
    /// AF_INET / AF_INET6 of the address criteria (0 = none).
    pub family: u16,
    pub proto: u8,
    pub _pad: u8,
    /// Host-order port ranges, inclusive.
    pub sport: [u16; 2],
    pub dport: [u16; 2],
    pub src_addr: [u8; 16],
    pub src_mask: [u8; 16],
    pub dst_addr: [u8; 16],
    pub dst_mask: [u8; 16],
}

/// Dedup state per conntrack entry, kept in an LRU hash keyed by the `nf_conn` address.
/// A recycled address is harmless: a new entry is always seen unconfirmed first, and
/// unconfirmed entries always emit and overwrite.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSeen {
    /// Replicated status bits ([`STATUS_REPLICATED`]) last reported.
    pub status: u32,
    pub mark: u32,
    /// Absolute expiry (jiffies, low 32 bits) the peer was last told.
    pub deadline: u32,
    /// Half of the lifetime the peer was last given, in jiffies: refresh threshold.
    pub half_life: u32,
    pub proto_state: u8,
    pub tcp_scale_flags: u8,
    pub _pad: [u8; 2],
    /// Cheap digest of the labels, so a label change is seen.
    pub labels_sum: u32,
}

/// Status bits whose change is worth an event: EXPECTED, SEEN_REPLY, ASSURED,
/// SRC_NAT, DST_NAT, SEQ_ADJUST, FIXED_TIMEOUT. Kernel-internal bits (CONFIRMED,
/// DYING, NAT_DONE, OFFLOAD, ...) flip without changing what the peer must hold.
pub const STATUS_REPLICATED: u32 =
    (1 << 0) | (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 10);
/// `IPS_CONFIRMED`.
pub const STATUS_CONFIRMED: u32 = 1 << 3;
/// Set in [`CtSeen::status`] for an entry a sync filter keeps off the wire: later
/// packets of it return at the first lookup.
pub const SEEN_FILTERED: u32 = 1 << 31;

/// Per-CPU counters (index into the `COUNTERS` per-CPU array).
pub mod counter {
    /// Program invocations.
    pub const CALLS: u32 = 0;
    /// Packets that carried a conntrack entry.
    pub const WITH_CT: u32 = 1;
    pub const NEW: u32 = 2;
    pub const UPDATE: u32 = 3;
    pub const REFRESH: u32 = 4;
    /// Ring-buffer reservation failed: an event was dropped (the agent resyncs).
    pub const RINGBUF_FULL: u32 = 5;
    /// A kernel read failed.
    pub const READ_ERROR: u32 = 6;
    /// Wake-ups the program forced.
    pub const WAKEUPS: u32 = 7;
    /// Dying or template entries, or unconfirmed ones at a hook that does not confirm.
    pub const SKIPPED_UNCONFIRMED: u32 = 8;
    /// Events not emitted because of a filter (the ignored interface, sync filters).
    pub const FILTERED: u32 = 9;
    pub const COUNT: u32 = 16;
}

/// Program and map names shared by both sides.
pub mod names {
    pub const PROGRAM: &str = "hasync_nf_hook";
    pub const EVENTS: &str = "EVENTS";
    pub const SEEN: &str = "SEEN";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const READER: &str = "READER";
    pub const LAYOUT: &str = "LAYOUT";
    pub const TUNING: &str = "TUNING";
    pub const FILTERS: &str = "FILTERS";
}

const _: () = assert!(core::mem::size_of::<CtTuple>() == 40);
const _: () = assert!(core::mem::size_of::<CtEvent>() == 136);
const _: () = assert!(core::mem::size_of::<CtSeen>() == 24);
const _: () = assert!(core::mem::size_of::<KernelLayout>().is_multiple_of(4));
const _: () = assert!(core::mem::size_of::<CaptureTuning>() == 32);
const _: () = assert!(core::mem::size_of::<FilterRule>() == 92);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are plain `#[repr(C)]` integer aggregates without padding.
    unsafe impl aya::Pod for super::CtTuple {}
    unsafe impl aya::Pod for super::CtEvent {}
    unsafe impl aya::Pod for super::CtSeen {}
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::CaptureTuning {}
    unsafe impl aya::Pod for super::FilterRule {}
}
