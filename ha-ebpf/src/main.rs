#![no_std]
#![no_main]
//! hasync's kernel side: a BPF_PROG_TYPE_NETFILTER program attached (per network
//! namespace) at LOCAL_IN and POST_ROUTING just before conntrack confirms. Every packet
//! passes exactly one of the two (forwarded and local output: POST_ROUTING; local
//! input: LOCAL_IN), so a forwarded packet costs one run, not two.
//!
//! For every packet that carries a conntrack entry it copies the `nf_conn`, decides
//! whether the peer must hear about it (new entry, replicated state changed, or the
//! timeout grew past what the peer was told), and writes a `CtEvent` into the ring
//! buffer. Everything that depends on the kernel's struct layout comes from the
//! `LAYOUT` global, filled from BTF by the agent at load time.
//!
//! aya-ebpf has no netfilter program type: the function sits in a section aya-obj can
//! parse ("classifier") and the agent loads it as NETFILTER itself
//! (`ha-user/src/capture/loader.rs`).

mod conn;
mod filter;
mod maps;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use ha_common::{STATUS_CONFIRMED, counter};

use crate::maps::count;

/// `struct bpf_nf_ctx`: the verifier rewrites loads of these two pointer fields.
#[repr(C)]
pub struct BpfNfCtx {
    state: u64,
    skb: u64,
}

const NF_ACCEPT: i32 = 1;

/// The hook: never changes the verdict; all work is best effort and counted.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub extern "C" fn hasync_nf_hook(ctx: *mut BpfNfCtx) -> i32 {
    count(counter::CALLS);
    let _ = observe(ctx);
    NF_ACCEPT
}

/// Reads the packet's conntrack entry and hands it to [`conn::report`].
#[inline(always)]
fn observe(ctx: *mut BpfNfCtx) -> Result<(), ()> {
    if rodata!(LAYOUT.ready) == 0 {
        return Ok(());
    }
    // SAFETY: the kernel passes a valid context; both loads are rewritten by the verifier.
    let (state, skb) = unsafe { ((*ctx).state, (*ctx).skb) };
    let nfct: u64 = read(skb + rodata!(LAYOUT.skb_nfct) as u64)?;
    // skb->_nfct holds the nf_conn pointer with ctinfo in the low 3 bits (NFCT_PTRMASK).
    let ct = nfct & !7u64;
    if ct == 0 {
        return Ok(());
    }
    count(counter::WITH_CT);
    let hook: u8 = read(state + rodata!(LAYOUT.state_hook) as u64)?;
    // ctinfo >= IP_CT_IS_REPLY: the packet travels in the reply direction.
    let reply = nfct & 7 >= 3;
    conn::report(ct, hook, Packet { state, skb }, reply)
}

/// Where the packet is in the stack: its hook state and its `sk_buff`.
#[derive(Clone, Copy)]
pub struct Packet {
    state: u64,
    skb: u64,
}

impl Packet {
    /// `(in, out)` interface indexes (0: none). POST_ROUTING's hook state has no input
    /// device, so the input comes from `skb->skb_iif` there (0 for local output).
    #[inline(always)]
    pub fn interfaces(self) -> (u32, u32) {
        let dev_index = |dev_off: u32| {
            let dev = read::<u64>(self.state + dev_off as u64).unwrap_or(0);
            if dev == 0 {
                return 0;
            }
            read::<u32>(dev + rodata!(LAYOUT.dev_ifindex) as u64).unwrap_or(0)
        };
        let mut dev_in = dev_index(rodata!(LAYOUT.state_in));
        if dev_in == 0 {
            dev_in = read::<u32>(self.skb + rodata!(LAYOUT.skb_iif) as u64).unwrap_or(0);
        }
        (dev_in, dev_index(rodata!(LAYOUT.state_out)))
    }
}

/// Whether the packet enters or leaves the interface the agent told us to ignore
/// (checked only when an event is about to be emitted: the common path never pays).
#[inline(always)]
fn on_ignored_interface(packet: Packet) -> bool {
    let ignore = [
        rodata!(TUNING.ignore_ifindex[0]),
        rodata!(TUNING.ignore_ifindex[1]),
        rodata!(TUNING.ignore_ifindex[2]),
    ];
    if ignore == [0; 3] {
        return false;
    }
    let (dev_in, dev_out) = packet.interfaces();
    [dev_in, dev_out]
        .into_iter()
        .any(|i| i != 0 && (i == ignore[0] || i == ignore[1] || i == ignore[2]))
}

/// `bpf_probe_read_kernel` of a kernel address, counting failures.
#[inline(always)]
fn read<T>(addr: u64) -> Result<T, ()> {
    // SAFETY: probe reads fault safely; a bad address only returns an error.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Ok(v),
        Err(_) => {
            count(counter::READ_ERROR);
            Err(())
        }
    }
}

/// Whether the hook may report an entry conntrack has not confirmed yet: only where
/// conntrack confirms it next (after source NAT), so the tuples are final.
#[inline(always)]
fn may_report(status: u32, hook: u8, new_hooks: u32) -> bool {
    status & STATUS_CONFIRMED != 0 || (hook < 32 && new_hooks & (1 << hook) != 0)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
