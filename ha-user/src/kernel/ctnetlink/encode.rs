//! Replicated changes → ctnetlink request messages.
//!
//! What the kernel does with each attribute (Linux 6.18, `nf_conntrack_netlink.c`) and
//! why the messages look the way they do:
//!
//! * **Create** (`IPCTNL_MSG_CT_NEW`, `NLM_F_CREATE|NLM_F_EXCL`): the kernel allocates the
//!   entry with the given original and reply tuples, then runs `ctnetlink_setup_nat()`:
//!   for each of CTA_NAT_DST and CTA_NAT_SRC, `nf_nat_setup_info()` takes the *inverse of
//!   the current reply tuple*, maps it into the range, and only if that changes the tuple
//!   rewrites the reply tuple and sets `IPS_{SRC,DST}_NAT` (and hashes the entry in the
//!   NAT by-source table). Sending the already-translated reply tuple therefore yields an
//!   entry without a NAT binding (the NAT status bits are unchangeable from userspace, so
//!   CTA_STATUS cannot add them). Like `conntrack -I --src-nat` and conntrackd, we send
//!   the *un-translated* reply tuple ([`unnat_reply`]) plus CTA_NAT_SRC / CTA_NAT_DST with
//!   min == max address and port, and the kernel recomputes the translated reply tuple.
//!   CTA_TIMEOUT is mandatory. CTA_STATUS must contain `IPS_CONFIRMED` and not
//!   `IPS_EXPECTED`/`IPS_DYING` (EBUSY otherwise): see [`install_status`].
//! * **Update** (`IPCTNL_MSG_CT_NEW`, no CREATE/EXCL): `ctnetlink_change_conntrack()`
//!   refuses CTA_NAT_* with EOPNOTSUPP, so none are sent; the NAT binding made at create
//!   time stays. CTA_TIMEOUT is left out for `IPS_FIXED_TIMEOUT` entries (the kernel
//!   answers EPERM). Clearing SEEN_REPLY/ASSURED is refused with EBUSY; the installer
//!   then retries without CTA_STATUS ([`encode_update`] with `with_status == false`).
//! * **Delete** (`IPCTNL_MSG_CT_DELETE`): original tuple and zone only.
//! * **Zones**: a zone for both directions is CTA_ZONE; a directional zone is
//!   CTA_TUPLE_ZONE inside the tuple of its direction (the kernel accepts only one of
//!   the two directions, matching its zone model). Lookups by original tuple match a
//!   reply-only zone through the default zone id, so deletes/updates need no reply tuple.

use crate::conntrack::{Entry, Family, Key, NatMapping, ProtoInfo, Tuple, Zone, proto, status};

use super::consts::*;
use super::nla::Writer;

/// Upper bound of one encoded change message (IPv6, all optional attributes). The
/// installer starts a new batch when fewer bytes than this are left.
pub const MAX_MSG_LEN: usize = 512;

/// Encoding choices that are policy, not data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Set `IP_CT_TCP_FLAG_BE_LIBERAL` in both directions of installed TCP entries, as
    /// conntrackd does unless `TCPWindowTracking` is on: the window tracking state
    /// (td_end, td_maxwin...) is not replicated, and a liberal entry never drops an
    /// in-flight segment as out-of-window after failover. Off by default: the kernel's
    /// mid-stream pickup (`td_maxwin == 0` in `tcp_in_window()`) initialises the
    /// windows from the first packets it sees.
    pub tcp_be_liberal: bool,
}

/// The CTA_STATUS value written for `status`: kernel-internal bits dropped,
/// `IPS_CONFIRMED` added (see [`IPS_INSTALL_MASK`]).
pub fn install_status(status: u32) -> u32 {
    (status & IPS_INSTALL_MASK) | IPS_CONFIRMED
}

/// The reply tuple as it was before the origin kernel applied NAT: the part of the reply
/// that `Entry::snat()` / `Entry::dnat()` read is replaced by the original tuple's
/// values, everything else (ICMP reply type, GRE keys) is kept.
pub fn unnat_reply(e: &Entry) -> Tuple {
    let mut r = e.reply;
    let p = e.orig.proto;
    if e.status & status::SRC_NAT != 0 {
        r.dst = e.orig.src;
        if proto::is_icmp(p) {
            r.src_u = e.orig.src_u;
        } else if proto::has_ports(p) {
            r.dst_u = e.orig.src_u;
        }
    }
    if e.status & status::DST_NAT != 0 {
        r.src = e.orig.dst;
        if proto::has_ports(p) {
            r.src_u = e.orig.dst_u;
        }
    }
    r
}

/// The zone attributes: (CTA_TUPLE_ZONE in the original tuple, in the reply tuple,
/// CTA_ZONE). The default zone id is never sent.
fn zone_attrs(z: Zone) -> (Option<u16>, Option<u16>, Option<u16>) {
    if z.id == 0 {
        return (None, None, None);
    }
    match z.dir {
        Zone::DIR_ORIG => (Some(z.id), None, None),
        Zone::DIR_REPL => (None, Some(z.id), None),
        _ => (None, None, Some(z.id)),
    }
}

/// Whether the kernel's tuple for `p` carries the 16-bit src/dst union as
/// CTA_PROTO_SRC_PORT / CTA_PROTO_DST_PORT (GRE puts its keys there too).
fn ports_as_attrs(p: u8) -> bool {
    proto::has_ports(p) || p == proto::GRE
}

/// A tuple nest (conntrack entries and expectations alike).
pub(super) fn put_tuple(w: &mut Writer<'_>, ty: u16, t: &Tuple, zone: Option<u16>) {
    let outer = w.begin_nest(ty);
    let ip = w.begin_nest(CTA_TUPLE_IP);
    match t.family {
        Family::V4 => {
            w.put(CTA_IP_V4_SRC, &t.src[..4]);
            w.put(CTA_IP_V4_DST, &t.dst[..4]);
        }
        Family::V6 => {
            w.put(CTA_IP_V6_SRC, &t.src);
            w.put(CTA_IP_V6_DST, &t.dst);
        }
    }
    w.end_nest(ip);
    let pr = w.begin_nest(CTA_TUPLE_PROTO);
    w.put_u8(CTA_PROTO_NUM, t.proto);
    match t.proto {
        proto::ICMP => {
            w.put(CTA_PROTO_ICMP_ID, &t.src_u);
            w.put_u8(CTA_PROTO_ICMP_TYPE, t.dst_u[0]);
            w.put_u8(CTA_PROTO_ICMP_CODE, t.dst_u[1]);
        }
        proto::ICMPV6 => {
            w.put(CTA_PROTO_ICMPV6_ID, &t.src_u);
            w.put_u8(CTA_PROTO_ICMPV6_TYPE, t.dst_u[0]);
            w.put_u8(CTA_PROTO_ICMPV6_CODE, t.dst_u[1]);
        }
        p if ports_as_attrs(p) => {
            w.put(CTA_PROTO_SRC_PORT, &t.src_u);
            w.put(CTA_PROTO_DST_PORT, &t.dst_u);
        }
        _ => {}
    }
    w.end_nest(pr);
    if let Some(z) = zone {
        w.put_be16(CTA_TUPLE_ZONE, z);
    }
    w.end_nest(outer);
}

fn put_nat(w: &mut Writer<'_>, ty: u16, m: &NatMapping) {
    let n = w.begin_nest(ty);
    match m.family {
        Family::V4 => {
            w.put(CTA_NAT_V4_MINIP, &m.addr[..4]);
            w.put(CTA_NAT_V4_MAXIP, &m.addr[..4]);
        }
        Family::V6 => {
            w.put(CTA_NAT_V6_MINIP, &m.addr);
            w.put(CTA_NAT_V6_MAXIP, &m.addr);
        }
    }
    if let Some(port) = m.port {
        let p = w.begin_nest(CTA_NAT_PROTO);
        w.put(CTA_PROTONAT_PORT_MIN, &port);
        w.put(CTA_PROTONAT_PORT_MAX, &port);
        w.end_nest(p);
    }
    w.end_nest(n);
}

fn put_protoinfo(w: &mut Writer<'_>, e: &Entry, opts: &EncodeOptions) {
    match (e.proto, e.orig.proto) {
        (
            ProtoInfo::Tcp {
                state,
                wscale,
                flags,
            },
            proto::TCP,
        ) => {
            let liberal = if opts.tcp_be_liberal {
                IP_CT_TCP_FLAG_BE_LIBERAL
            } else {
                0
            };
            let pi = w.begin_nest(CTA_PROTOINFO);
            let t = w.begin_nest(CTA_PROTOINFO_TCP);
            w.put_u8(CTA_PROTOINFO_TCP_STATE, state);
            w.put_u8(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, wscale[0]);
            w.put_u8(CTA_PROTOINFO_TCP_WSCALE_REPLY, wscale[1]);
            // struct nf_ct_tcp_flags { u8 flags; u8 mask; }: replace all flag bits.
            w.put(
                CTA_PROTOINFO_TCP_FLAGS_ORIGINAL,
                &[flags[0] | liberal, 0xff],
            );
            w.put(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[flags[1] | liberal, 0xff]);
            w.end_nest(t);
            w.end_nest(pi);
        }
        (ProtoInfo::Sctp { state, vtag }, proto::SCTP) => {
            // The kernel wants all three (EINVAL otherwise).
            let pi = w.begin_nest(CTA_PROTOINFO);
            let s = w.begin_nest(CTA_PROTOINFO_SCTP);
            w.put_u8(CTA_PROTOINFO_SCTP_STATE, state);
            // `vtag` holds the kernel's __be32 as it sits in memory (what capture copies
            // out of `struct nf_conn`), so its native bytes are the network-order bytes.
            w.put(CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, &vtag[0].to_ne_bytes());
            w.put(CTA_PROTOINFO_SCTP_VTAG_REPLY, &vtag[1].to_ne_bytes());
            w.end_nest(s);
            w.end_nest(pi);
        }
        (ProtoInfo::Dccp { state }, proto::DCCP) => {
            // The kernel wants a role with the state (EINVAL otherwise).
            let pi = w.begin_nest(CTA_PROTOINFO);
            let d = w.begin_nest(CTA_PROTOINFO_DCCP);
            w.put_u8(CTA_PROTOINFO_DCCP_STATE, state);
            w.put_u8(CTA_PROTOINFO_DCCP_ROLE, CT_DCCP_ROLE_CLIENT);
            w.end_nest(d);
            w.end_nest(pi);
        }
        // Protocol info of another protocol than the tuple's: nothing to say.
        _ => {}
    }
}

fn put_labels(w: &mut Writer<'_>, e: &Entry) {
    if let Some(labels) = &e.labels {
        w.put(CTA_LABELS, labels);
        // With a mask the kernel replaces exactly these bits (all of them).
        w.put(CTA_LABELS_MASK, &[0xff; NF_CT_LABELS_MAX_SIZE]);
    }
}

/// Appends a create request for `e` (with its NAT binding).
pub fn encode_create(w: &mut Writer<'_>, seq: u32, e: &Entry, opts: &EncodeOptions) {
    let m = w.begin_msg(
        ct_msg_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        e.orig.family.af(),
        NFNETLINK_V0,
        0,
    );
    let (zo, zr, z) = zone_attrs(e.zone);
    put_tuple(w, CTA_TUPLE_ORIG, &e.orig, zo);
    put_tuple(w, CTA_TUPLE_REPLY, &unnat_reply(e), zr);
    if let Some(z) = z {
        w.put_be16(CTA_ZONE, z);
    }
    w.put_be32(CTA_STATUS, install_status(e.status));
    w.put_be32(CTA_TIMEOUT, e.timeout);
    w.put_be32(CTA_MARK, e.mark);
    put_protoinfo(w, e, opts);
    if let Some(nat) = e.snat() {
        put_nat(w, CTA_NAT_SRC, &nat);
    }
    if let Some(nat) = e.dnat() {
        put_nat(w, CTA_NAT_DST, &nat);
    }
    put_labels(w, e);
    w.end_msg(m);
}

/// Appends an update request for an existing entry (no NAT attributes, no reply tuple).
/// `with_status == false` leaves CTA_STATUS out (fallback after EBUSY).
pub fn encode_update(
    w: &mut Writer<'_>,
    seq: u32,
    e: &Entry,
    with_status: bool,
    opts: &EncodeOptions,
) {
    let m = w.begin_msg(
        ct_msg_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST,
        seq,
        e.orig.family.af(),
        NFNETLINK_V0,
        0,
    );
    let (zo, _, z) = zone_attrs(e.zone);
    put_tuple(w, CTA_TUPLE_ORIG, &e.orig, zo);
    if let Some(z) = z {
        w.put_be16(CTA_ZONE, z);
    }
    if with_status {
        w.put_be32(CTA_STATUS, install_status(e.status));
    }
    if e.status & status::FIXED_TIMEOUT == 0 {
        w.put_be32(CTA_TIMEOUT, e.timeout);
    }
    w.put_be32(CTA_MARK, e.mark);
    put_protoinfo(w, e, opts);
    put_labels(w, e);
    w.end_msg(m);
}

/// Appends a delete request for `key`.
pub fn encode_delete(w: &mut Writer<'_>, seq: u32, key: &Key) {
    let m = w.begin_msg(
        ct_msg_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST,
        seq,
        key.orig.family.af(),
        NFNETLINK_V0,
        0,
    );
    let (zo, _, z) = zone_attrs(key.zone);
    put_tuple(w, CTA_TUPLE_ORIG, &key.orig, zo);
    if let Some(z) = z {
        w.put_be16(CTA_ZONE, z);
    }
    w.end_msg(m);
}

/// Appends a table dump request (all families when `family` is `None`).
pub fn encode_dump(w: &mut Writer<'_>, seq: u32, family: Option<Family>) {
    let m = w.begin_msg(
        ct_msg_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family.map_or(0, Family::af),
        NFNETLINK_V0,
        0,
    );
    w.end_msg(m);
}

/// Appends a flush request (a delete without tuple), acknowledged. Version 1 makes the
/// kernel honour the family filter; version 0 flushes everything.
pub fn encode_flush(w: &mut Writer<'_>, seq: u32, family: Option<Family>) {
    let (af, version) = match family {
        Some(f) => (f.af(), NFNETLINK_V1),
        None => (0, NFNETLINK_V0),
    };
    let m = w.begin_msg(
        ct_msg_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        af,
        version,
        0,
    );
    w.end_msg(m);
}
