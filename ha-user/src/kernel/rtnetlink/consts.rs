//! rtnetlink constants (`NETLINK_ROUTE`), checked against the Linux 6.18 UAPI headers:
//! `linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h`, `linux/if_addr.h`,
//! `linux/if.h`. They are ABI and never change, so they are written out here.
//! Generic netlink header values (NLMSG_*, NLM_F_*) come from ctnetlink's consts.

#![allow(dead_code)]

pub use crate::kernel::ctnetlink::consts::{
    NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_NO_ENOBUFS, NLA_HDRLEN,
    NLM_F_ACK, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_MULTI,
    NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN,
    SOL_NETLINK,
};

pub const NETLINK_ROUTE: i32 = 0;
/// `NETLINK_GET_STRICT_CHK`: the kernel filters dumps by the header's fields
/// (e.g. `ifa_index`) and rejects unknown attributes instead of ignoring them.
pub const NETLINK_GET_STRICT_CHK: i32 = 12;
/// ACK flag: extended-ack TLVs follow the echoed request header.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `enum nlmsgerr_attrs`.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

// ---- rtnetlink.h: message types -----------------------------------------------------
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;

// Multicast groups (`enum rtnetlink_groups`; the bind/setsockopt number).
pub const RTNLGRP_LINK: u32 = 1;
pub const RTNLGRP_IPV4_IFADDR: u32 = 5;
pub const RTNLGRP_IPV6_IFADDR: u32 = 9;

/// `RTEXT_FILTER_SKIP_STATS`: leave the (large) statistics out of link replies.
pub const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

// ---- struct ifinfomsg (16 bytes) / if_link.h ----------------------------------------
pub const IFINFOMSG_LEN: usize = 16;
pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_OPERSTATE: u16 = 16;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_EXT_MASK: u16 = 29;
pub const IFLA_CARRIER: u16 = 33;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const IFLA_MACVLAN_MODE: u16 = 1;

// if.h: net_device_flags.
pub const IFF_UP: u32 = 0x1;
pub const IFF_RUNNING: u32 = 0x40;
pub const IFF_LOWER_UP: u32 = 0x10000;

// ---- struct ifaddrmsg (8 bytes) / if_addr.h -----------------------------------------
pub const IFADDRMSG_LEN: usize = 8;
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_LABEL: u16 = 3;
pub const IFA_BROADCAST: u16 = 4;
pub const IFA_FLAGS: u16 = 8;

pub const IFA_F_SECONDARY: u32 = 0x01;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_DEPRECATED: u32 = 0x20;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;

/// `RT_SCOPE_UNIVERSE`: what `ip addr add` uses for an ordinary address.
pub const RT_SCOPE_UNIVERSE: u8 = 0;

/// IFNAMSIZ - 1: the longest interface name (and IPv4 label) the kernel accepts.
pub const IFNAME_MAX: usize = 15;
