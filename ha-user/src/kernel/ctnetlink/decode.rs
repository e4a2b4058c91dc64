//! ctnetlink messages → entries, keys and error codes.
//!
//! Everything here reads untrusted bytes: each access is bounds-checked and a malformed
//! message is a [`DecodeError`], never a panic.

use crate::conntrack::{Entry, Family, Key, NatMapping, ProtoInfo, Tuple, Zone, proto};

use super::consts::*;
use super::nla::{Attr, AttrIter, DecodeError, Msg};

/// A conntrack message (event, dump part or our own request) with every attribute
/// hasync models. Missing optional attributes keep their zero value, as the kernel
/// leaves out e.g. a zero mark or the timeout of an expired entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtMessage {
    pub family: Family,
    pub orig: Option<Tuple>,
    pub reply: Option<Tuple>,
    pub zone: Zone,
    pub status: u32,
    pub timeout: u32,
    pub mark: u32,
    pub proto: ProtoInfo,
    pub labels: Option<[u8; 16]>,
    /// CTA_NAT_SRC / CTA_NAT_DST (only in requests; the kernel reports NAT through the
    /// reply tuple and the status bits).
    pub nat_src: Option<NatMapping>,
    pub nat_dst: Option<NatMapping>,
    /// CTA_ID, the kernel's handle for the entry.
    pub id: Option<u32>,
}

impl CtMessage {
    /// The entry's identity; needs the original tuple.
    pub fn key(&self) -> Result<Key, DecodeError> {
        Ok(Key {
            orig: self.orig.ok_or(DecodeError::Missing("CTA_TUPLE_ORIG"))?,
            zone: self.zone,
        })
    }

    /// The full entry; needs both tuples. NAT attributes, if present, are applied to the
    /// reply tuple the way the kernel would (the inverse of
    /// [`unnat_reply`](super::encode::unnat_reply)), so a decoded create request equals
    /// the entry it was encoded from.
    pub fn entry(&self) -> Result<Entry, DecodeError> {
        let orig = self.orig.ok_or(DecodeError::Missing("CTA_TUPLE_ORIG"))?;
        let mut reply = self.reply.ok_or(DecodeError::Missing("CTA_TUPLE_REPLY"))?;
        if orig.proto != reply.proto {
            return Err(DecodeError::Invalid(
                "original and reply tuples differ in protocol",
            ));
        }
        let p = orig.proto;
        if let Some(n) = &self.nat_src {
            reply.dst = n.addr;
            if let Some(port) = n.port {
                if proto::is_icmp(p) {
                    reply.src_u = port;
                } else if proto::has_ports(p) {
                    reply.dst_u = port;
                }
            }
        }
        if let Some(n) = &self.nat_dst {
            reply.src = n.addr;
            if let (Some(port), true) = (n.port, proto::has_ports(p)) {
                reply.src_u = port;
            }
        }
        Ok(Entry {
            orig,
            reply,
            status: self.status,
            timeout: self.timeout,
            mark: self.mark,
            zone: self.zone,
            proto: self.proto,
            labels: self.labels,
        })
    }
}

/// Whether `msg` is a ctnetlink conntrack message of operation `op` (`IPCTNL_MSG_CT_*`).
pub fn is_ct_msg(msg: &Msg<'_>, op: u16) -> bool {
    msg.ty == ct_msg_type(op)
}

/// Parses the attributes of a conntrack message (`IPCTNL_MSG_CT_NEW` / `_DELETE`).
pub fn parse_ct(msg: &Msg<'_>) -> Result<CtMessage, DecodeError> {
    let (af, _version, attrs) = msg.nfgen()?;
    let family = Family::from_af(af as u16).ok_or(DecodeError::Family(af))?;
    let mut m = CtMessage {
        family,
        orig: None,
        reply: None,
        zone: Zone::DEFAULT,
        status: 0,
        timeout: 0,
        mark: 0,
        proto: ProtoInfo::None,
        labels: None,
        nat_src: None,
        nat_dst: None,
        id: None,
    };
    // A zone for both directions (CTA_ZONE) or for one (CTA_TUPLE_ZONE in its tuple).
    let mut zone_both = None;
    let mut zone_dir = None;
    for a in AttrIter::new(attrs) {
        let a = a?;
        match a.ty {
            CTA_TUPLE_ORIG => {
                let (t, z) = parse_tuple(&a, family)?;
                m.orig = Some(t);
                if let Some(z) = z {
                    zone_dir = Some(Zone {
                        id: z,
                        dir: Zone::DIR_ORIG,
                    });
                }
            }
            CTA_TUPLE_REPLY => {
                let (t, z) = parse_tuple(&a, family)?;
                m.reply = Some(t);
                if let Some(z) = z {
                    zone_dir = Some(Zone {
                        id: z,
                        dir: Zone::DIR_REPL,
                    });
                }
            }
            CTA_ZONE => zone_both = Some(Zone::new(a.be16("CTA_ZONE")?)),
            CTA_STATUS => m.status = a.be32("CTA_STATUS")?,
            CTA_TIMEOUT => m.timeout = a.be32("CTA_TIMEOUT")?,
            CTA_MARK => m.mark = a.be32("CTA_MARK")?,
            CTA_ID => m.id = Some(a.be32("CTA_ID")?),
            CTA_PROTOINFO => m.proto = parse_protoinfo(&a)?,
            CTA_LABELS => {
                // The kernel sends its label area (128 bits today); accept exactly that.
                m.labels = Some(a.exact::<NF_CT_LABELS_MAX_SIZE>("CTA_LABELS")?);
            }
            CTA_NAT_SRC => m.nat_src = Some(parse_nat(&a, family)?),
            CTA_NAT_DST => m.nat_dst = Some(parse_nat(&a, family)?),
            _ => {}
        }
    }
    if let Some(z) = zone_both.or(zone_dir)
        && z.id != 0
    {
        m.zone = z;
    }
    if let (Some(o), Some(r)) = (&m.orig, &m.reply)
        && o.proto != r.proto
    {
        return Err(DecodeError::Invalid(
            "original and reply tuples differ in protocol",
        ));
    }
    Ok(m)
}

/// A tuple nest: (tuple, CTA_TUPLE_ZONE). Addresses and protocol are mandatory; the
/// protocol's union attributes are optional (the kernel sends none for protocols it
/// has no tuple attributes for). Conntrack entries and expectations share it.
pub(super) fn parse_tuple(
    a: &Attr<'_>,
    family: Family,
) -> Result<(Tuple, Option<u16>), DecodeError> {
    let mut t = Tuple {
        family,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        src_u: [0; 2],
        dst_u: [0; 2],
    };
    let (mut have_src, mut have_dst, mut have_proto) = (false, false, false);
    let mut zone = None;
    for a in a.nested() {
        let a = a?;
        match a.ty {
            CTA_TUPLE_IP => {
                for ip in a.nested() {
                    let ip = ip?;
                    match (ip.ty, family) {
                        (CTA_IP_V4_SRC, Family::V4) => {
                            t.src[..4].copy_from_slice(&ip.exact::<4>("CTA_IP_V4_SRC")?);
                            have_src = true;
                        }
                        (CTA_IP_V4_DST, Family::V4) => {
                            t.dst[..4].copy_from_slice(&ip.exact::<4>("CTA_IP_V4_DST")?);
                            have_dst = true;
                        }
                        (CTA_IP_V6_SRC, Family::V6) => {
                            t.src = ip.exact::<16>("CTA_IP_V6_SRC")?;
                            have_src = true;
                        }
                        (CTA_IP_V6_DST, Family::V6) => {
                            t.dst = ip.exact::<16>("CTA_IP_V6_DST")?;
                            have_dst = true;
                        }
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST | CTA_IP_V6_SRC | CTA_IP_V6_DST, _) => {
                            return Err(DecodeError::Invalid(
                                "address attribute of the other family",
                            ));
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in a.nested() {
                    let p = p?;
                    match p.ty {
                        CTA_PROTO_NUM => {
                            t.proto = p.u8("CTA_PROTO_NUM")?;
                            have_proto = true;
                        }
                        CTA_PROTO_SRC_PORT => t.src_u = p.be16("CTA_PROTO_SRC_PORT")?.to_be_bytes(),
                        CTA_PROTO_DST_PORT => t.dst_u = p.be16("CTA_PROTO_DST_PORT")?.to_be_bytes(),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            t.src_u = p.be16("CTA_PROTO_ICMP_ID")?.to_be_bytes()
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            t.dst_u[0] = p.u8("CTA_PROTO_ICMP_TYPE")?
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            t.dst_u[1] = p.u8("CTA_PROTO_ICMP_CODE")?
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => zone = Some(a.be16("CTA_TUPLE_ZONE")?),
            _ => {}
        }
    }
    if !have_src || !have_dst {
        return Err(DecodeError::Missing("CTA_TUPLE_IP address"));
    }
    if !have_proto {
        return Err(DecodeError::Missing("CTA_PROTO_NUM"));
    }
    Ok((t, zone))
}

fn parse_protoinfo(a: &Attr<'_>) -> Result<ProtoInfo, DecodeError> {
    let mut out = ProtoInfo::None;
    for a in a.nested() {
        let a = a?;
        match a.ty {
            CTA_PROTOINFO_TCP => {
                let (mut state, mut wscale, mut flags) = (0, [0u8; 2], [0u8; 2]);
                for t in a.nested() {
                    let t = t?;
                    match t.ty {
                        CTA_PROTOINFO_TCP_STATE => state = t.u8("CTA_PROTOINFO_TCP_STATE")?,
                        CTA_PROTOINFO_TCP_WSCALE_ORIGINAL => {
                            wscale[0] = t.u8("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL")?
                        }
                        CTA_PROTOINFO_TCP_WSCALE_REPLY => {
                            wscale[1] = t.u8("CTA_PROTOINFO_TCP_WSCALE_REPLY")?
                        }
                        // struct nf_ct_tcp_flags { flags, mask }: the flags byte.
                        CTA_PROTOINFO_TCP_FLAGS_ORIGINAL => {
                            flags[0] = t.exact::<2>("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL")?[0]
                        }
                        CTA_PROTOINFO_TCP_FLAGS_REPLY => {
                            flags[1] = t.exact::<2>("CTA_PROTOINFO_TCP_FLAGS_REPLY")?[0]
                        }
                        _ => {}
                    }
                }
                out = ProtoInfo::Tcp {
                    state,
                    wscale,
                    flags,
                };
            }
            CTA_PROTOINFO_SCTP => {
                let (mut state, mut vtag) = (0, [0u32; 2]);
                for s in a.nested() {
                    let s = s?;
                    match s.ty {
                        CTA_PROTOINFO_SCTP_STATE => state = s.u8("CTA_PROTOINFO_SCTP_STATE")?,
                        // Kept as the kernel's in-memory __be32 (see encode.rs).
                        CTA_PROTOINFO_SCTP_VTAG_ORIGINAL => {
                            vtag[0] = u32::from_ne_bytes(
                                s.exact::<4>("CTA_PROTOINFO_SCTP_VTAG_ORIGINAL")?,
                            )
                        }
                        CTA_PROTOINFO_SCTP_VTAG_REPLY => {
                            vtag[1] =
                                u32::from_ne_bytes(s.exact::<4>("CTA_PROTOINFO_SCTP_VTAG_REPLY")?)
                        }
                        _ => {}
                    }
                }
                out = ProtoInfo::Sctp { state, vtag };
            }
            CTA_PROTOINFO_DCCP => {
                let mut state = 0;
                for d in a.nested() {
                    let d = d?;
                    if d.ty == CTA_PROTOINFO_DCCP_STATE {
                        state = d.u8("CTA_PROTOINFO_DCCP_STATE")?;
                    }
                }
                out = ProtoInfo::Dccp { state };
            }
            _ => {}
        }
    }
    Ok(out)
}

fn parse_nat(a: &Attr<'_>, family: Family) -> Result<NatMapping, DecodeError> {
    let mut addr = None;
    let mut port = None;
    for n in a.nested() {
        let n = n?;
        match (n.ty, family) {
            (CTA_NAT_V4_MINIP, Family::V4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&n.exact::<4>("CTA_NAT_V4_MINIP")?);
                addr = Some(b);
            }
            (CTA_NAT_V6_MINIP, Family::V6) => addr = Some(n.exact::<16>("CTA_NAT_V6_MINIP")?),
            (CTA_NAT_PROTO, _) => {
                for p in n.nested() {
                    let p = p?;
                    if p.ty == CTA_PROTONAT_PORT_MIN {
                        port = Some(p.be16("CTA_PROTONAT_PORT_MIN")?.to_be_bytes());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(NatMapping {
        family,
        addr: addr.ok_or(DecodeError::Missing("CTA_NAT_*_MINIP"))?,
        port,
    })
}

/// The code of an `NLMSG_ERROR` message: 0 for an acknowledgement, else a positive errno.
pub fn parse_error(msg: &Msg<'_>) -> Result<i32, DecodeError> {
    let b = msg.payload.get(..4).ok_or(DecodeError::Truncated {
        what: "nlmsgerr",
        need: 4,
        have: msg.payload.len(),
    })?;
    let code = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    Ok(code.checked_neg().unwrap_or(i32::MAX))
}

/// A stable name for an errno, for counters and logs.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ETIME => "ETIME",
        libc::ENOBUFS => "ENOBUFS",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        _ => "other",
    }
}
