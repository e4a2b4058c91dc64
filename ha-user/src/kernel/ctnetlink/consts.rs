//! Netlink, nfnetlink and ctnetlink constants in one place.
//!
//! Values are those of the kernel UAPI headers (checked against Linux 6.18):
//! `include/uapi/linux/netlink.h`, `include/uapi/linux/netfilter/nfnetlink.h`,
//! `include/uapi/linux/netfilter/nfnetlink_conntrack.h`,
//! `include/uapi/linux/netfilter/nf_conntrack_common.h` and
//! `include/uapi/linux/netfilter/nf_conntrack_tcp.h`. They are ABI and never change,
//! so they are written out here instead of being pulled from a bindings crate.

#![allow(dead_code)]

// ---- netlink.h ----------------------------------------------------------------------

/// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
pub const NLMSG_HDRLEN: usize = 16;
/// `struct nlattr`: len u16, type u16.
pub const NLA_HDRLEN: usize = 4;
/// `struct nfgenmsg`: family u8, version u8, res_id be16.
pub const NFGENMSG_LEN: usize = 4;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
// GET modifiers.
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
// NEW modifiers.
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
// ACK flags.
pub const NLM_F_CAPPED: u16 = 0x100;

/// Attribute type bits: nested / network byte order flags live in the top two bits.
pub const NLA_F_NESTED: u16 = 1 << 15;
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// `NETLINK_NETFILTER` protocol number.
pub const NETLINK_NETFILTER: i32 = 12;

// Socket options at level SOL_NETLINK (270).
pub const SOL_NETLINK: i32 = 270;
pub const NETLINK_ADD_MEMBERSHIP: i32 = 1;
pub const NETLINK_DROP_MEMBERSHIP: i32 = 2;
pub const NETLINK_BROADCAST_ERROR: i32 = 4;
pub const NETLINK_NO_ENOBUFS: i32 = 5;
pub const NETLINK_CAP_ACK: i32 = 10;
pub const NETLINK_EXT_ACK: i32 = 11;

// ---- nfnetlink.h --------------------------------------------------------------------

pub const NFNETLINK_V0: u8 = 0;
/// `nfgenmsg.version` value that makes a flush honour `nfgen_family` (see
/// `ctnetlink_del_conntrack`: version 0 with no tuple flushes every family).
pub const NFNETLINK_V1: u8 = 1;

pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;

pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// `nlmsg_type` of a ctnetlink message: subsystem in the high byte.
pub const fn ct_msg_type(op: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | op
}

// ---- nfnetlink_conntrack.h ----------------------------------------------------------

// enum cntl_msg_types
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
pub const IPCTNL_MSG_CT_GET: u16 = 1;
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;

// enum ctattr_type
pub const CTA_TUPLE_ORIG: u16 = 1;
pub const CTA_TUPLE_REPLY: u16 = 2;
pub const CTA_STATUS: u16 = 3;
pub const CTA_PROTOINFO: u16 = 4;
pub const CTA_HELP: u16 = 5;
pub const CTA_NAT_SRC: u16 = 6;
pub const CTA_TIMEOUT: u16 = 7;
pub const CTA_MARK: u16 = 8;
pub const CTA_COUNTERS_ORIG: u16 = 9;
pub const CTA_COUNTERS_REPLY: u16 = 10;
pub const CTA_USE: u16 = 11;
pub const CTA_ID: u16 = 12;
pub const CTA_NAT_DST: u16 = 13;
pub const CTA_TUPLE_MASTER: u16 = 14;
pub const CTA_SEQ_ADJ_ORIG: u16 = 15;
pub const CTA_SEQ_ADJ_REPLY: u16 = 16;
pub const CTA_SECMARK: u16 = 17;
pub const CTA_ZONE: u16 = 18;
pub const CTA_SECCTX: u16 = 19;
pub const CTA_TIMESTAMP: u16 = 20;
pub const CTA_MARK_MASK: u16 = 21;
pub const CTA_LABELS: u16 = 22;
pub const CTA_LABELS_MASK: u16 = 23;
pub const CTA_SYNPROXY: u16 = 24;
pub const CTA_FILTER: u16 = 25;
pub const CTA_STATUS_MASK: u16 = 26;
pub const CTA_TIMESTAMP_EVENT: u16 = 27;

// enum ctattr_tuple
pub const CTA_TUPLE_IP: u16 = 1;
pub const CTA_TUPLE_PROTO: u16 = 2;
pub const CTA_TUPLE_ZONE: u16 = 3;

// enum ctattr_ip
pub const CTA_IP_V4_SRC: u16 = 1;
pub const CTA_IP_V4_DST: u16 = 2;
pub const CTA_IP_V6_SRC: u16 = 3;
pub const CTA_IP_V6_DST: u16 = 4;

// enum ctattr_l4proto
pub const CTA_PROTO_NUM: u16 = 1;
pub const CTA_PROTO_SRC_PORT: u16 = 2;
pub const CTA_PROTO_DST_PORT: u16 = 3;
pub const CTA_PROTO_ICMP_ID: u16 = 4;
pub const CTA_PROTO_ICMP_TYPE: u16 = 5;
pub const CTA_PROTO_ICMP_CODE: u16 = 6;
pub const CTA_PROTO_ICMPV6_ID: u16 = 7;
pub const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
pub const CTA_PROTO_ICMPV6_CODE: u16 = 9;

// enum ctattr_protoinfo
pub const CTA_PROTOINFO_TCP: u16 = 1;
pub const CTA_PROTOINFO_DCCP: u16 = 2;
pub const CTA_PROTOINFO_SCTP: u16 = 3;

// enum ctattr_protoinfo_tcp
pub const CTA_PROTOINFO_TCP_STATE: u16 = 1;
pub const CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: u16 = 2;
pub const CTA_PROTOINFO_TCP_WSCALE_REPLY: u16 = 3;
pub const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
pub const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

// enum ctattr_protoinfo_dccp
pub const CTA_PROTOINFO_DCCP_STATE: u16 = 1;
pub const CTA_PROTOINFO_DCCP_ROLE: u16 = 2;
pub const CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ: u16 = 3;

// enum ctattr_protoinfo_sctp
pub const CTA_PROTOINFO_SCTP_STATE: u16 = 1;
pub const CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: u16 = 2;
pub const CTA_PROTOINFO_SCTP_VTAG_REPLY: u16 = 3;

// enum ctattr_nat
pub const CTA_NAT_V4_MINIP: u16 = 1;
pub const CTA_NAT_V4_MAXIP: u16 = 2;
pub const CTA_NAT_PROTO: u16 = 3;
pub const CTA_NAT_V6_MINIP: u16 = 4;
pub const CTA_NAT_V6_MAXIP: u16 = 5;

// enum ctattr_protonat
pub const CTA_PROTONAT_PORT_MIN: u16 = 1;
pub const CTA_PROTONAT_PORT_MAX: u16 = 2;

// ---- nf_conntrack_common.h ----------------------------------------------------------

/// `IPS_*` bits the kernel never lets ctnetlink change (`IPS_UNCHANGEABLE_MASK`).
pub const IPS_UNCHANGEABLE_MASK: u32 = IPS_NAT_DONE_MASK
    | IPS_NAT_MASK
    | IPS_EXPECTED
    | IPS_CONFIRMED
    | IPS_DYING
    | IPS_SEQ_ADJUST
    | IPS_TEMPLATE
    | IPS_UNTRACKED
    | IPS_OFFLOAD
    | IPS_HW_OFFLOAD;
pub const IPS_EXPECTED: u32 = 1 << 0;
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
pub const IPS_ASSURED: u32 = 1 << 2;
pub const IPS_CONFIRMED: u32 = 1 << 3;
pub const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;
pub const IPS_NAT_MASK: u32 = IPS_SRC_NAT | IPS_DST_NAT;
pub const IPS_SEQ_ADJUST: u32 = 1 << 6;
pub const IPS_SRC_NAT_DONE: u32 = 1 << 7;
pub const IPS_DST_NAT_DONE: u32 = 1 << 8;
pub const IPS_NAT_DONE_MASK: u32 = IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE;
pub const IPS_DYING: u32 = 1 << 9;
pub const IPS_FIXED_TIMEOUT: u32 = 1 << 10;
pub const IPS_TEMPLATE: u32 = 1 << 11;
pub const IPS_UNTRACKED: u32 = 1 << 12;
pub const IPS_HELPER: u32 = 1 << 13;
pub const IPS_OFFLOAD: u32 = 1 << 14;
pub const IPS_HW_OFFLOAD: u32 = 1 << 15;

/// Status bits hasync writes to the kernel (before adding `IPS_CONFIRMED`).
///
/// `nf_ct_change_status_common()` answers EBUSY when EXPECTED, CONFIRMED or DYING differ
/// from the entry's own bits, so EXPECTED and DYING are never sent (and CONFIRMED always
/// is). The other unchangeable bits are silently ignored by the kernel; they are dropped
/// anyway, like NAT_DONE (the kernel sets it when it really sets NAT up). HELPER is not
/// sent: hasync attaches no helper. SRC_NAT/DST_NAT are kept for readability of the
/// message (the kernel ignores them and derives them from CTA_NAT_*).
pub const IPS_INSTALL_MASK: u32 =
    IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT | IPS_DST_NAT | IPS_FIXED_TIMEOUT;

// ---- nf_conntrack_tcp.h / nf_conntrack_dccp.h ---------------------------------------

/// `enum tcp_conntrack`: number of states; the kernel rejects a state >= this (EINVAL).
pub const TCP_CONNTRACK_MAX: u8 = 10;
pub const TCP_CONNTRACK_SYN_SENT: u8 = 1;
pub const TCP_CONNTRACK_SYN_RECV: u8 = 2;
pub const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
pub const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
pub const TCP_CONNTRACK_CLOSE: u8 = 8;

/// `IP_CT_TCP_FLAG_*`.
pub const IP_CT_TCP_FLAG_WINDOW_SCALE: u8 = 0x01;
pub const IP_CT_TCP_FLAG_SACK_PERM: u8 = 0x02;
pub const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;

/// `CT_DCCP_ROLE_CLIENT`: the original direction of a replicated DCCP entry is the
/// client's (the kernel needs a role with the state).
pub const CT_DCCP_ROLE_CLIENT: u8 = 0;

/// `NF_CT_LABELS_MAX_SIZE`: 128 label bits.
pub const NF_CT_LABELS_MAX_SIZE: usize = 16;
