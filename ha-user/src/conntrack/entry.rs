//! A conntrack entry as hasync replicates it: what capture produces, what the wire
//! carries, and what ctnetlink installs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Layer-3 family of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The kernel's `l3num` / `nfgen_family` (AF_INET / AF_INET6).
    pub fn af(self) -> u8 {
        match self {
            Family::V4 => 2,
            Family::V6 => 10,
        }
    }

    pub fn from_af(af: u16) -> Option<Family> {
        match af {
            2 => Some(Family::V4),
            10 => Some(Family::V6),
            _ => None,
        }
    }

    /// Address length in bytes.
    pub fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }
}

/// IP protocol numbers hasync treats specially.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// Protocols whose tuple union holds source and destination ports.
    pub fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | DCCP | SCTP | UDPLITE)
    }

    pub fn is_icmp(p: u8) -> bool {
        matches!(p, ICMP | ICMPV6)
    }
}

/// One direction of a connection, as the kernel keys it.
///
/// `src_u` / `dst_u` are the kernel's protocol unions byte for byte (network order):
/// ports for TCP/UDP/SCTP/DCCP/UDPLITE, the ICMP id (`src_u`) and type/code (`dst_u`),
/// the GRE key. Keeping them raw makes every protocol the kernel tracks round-trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub family: Family,
    pub proto: u8,
    /// IPv4 addresses use the first 4 bytes; the rest stays zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_u: [u8; 2],
    pub dst_u: [u8; 2],
}

impl Tuple {
    /// A TCP/UDP-style tuple from addresses and host-order ports (tests, tools).
    pub fn new(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Tuple {
        let family = match src {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        Tuple {
            family,
            proto,
            src: addr_bytes(src),
            dst: addr_bytes(dst),
            src_u: sport.to_be_bytes(),
            dst_u: dport.to_be_bytes(),
        }
    }

    pub fn src_ip(&self) -> IpAddr {
        ip(self.family, &self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        ip(self.family, &self.dst)
    }

    /// Source port (or ICMP id) in host order.
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes(self.src_u)
    }

    /// Destination port in host order (ICMP: type << 8 | code).
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dst_u)
    }

    /// The tuple with source and destination exchanged. For port-based protocols this
    /// is the reply tuple of an un-NATed connection (ICMP inverts types as well, so an
    /// ICMP reply never equals this).
    pub fn swapped(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            src_u: self.dst_u,
            dst_u: self.src_u,
            ..*self
        }
    }
}

/// Conntrack zone: id plus the directions it applies to (`NF_CT_ZONE_DIR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone {
    pub id: u16,
    /// Bit 0: original direction, bit 1: reply direction. Both is the common case.
    pub dir: u8,
}

impl Zone {
    pub const DIR_ORIG: u8 = 1;
    pub const DIR_REPL: u8 = 2;
    pub const DIR_BOTH: u8 = 3;
    /// The default zone (0, both directions).
    pub const DEFAULT: Zone = Zone {
        id: 0,
        dir: Zone::DIR_BOTH,
    };

    pub fn new(id: u16) -> Zone {
        Zone {
            id,
            dir: Zone::DIR_BOTH,
        }
    }

    pub fn is_directional(&self) -> bool {
        self.dir != Zone::DIR_BOTH
    }
}

impl Default for Zone {
    fn default() -> Zone {
        Zone::DEFAULT
    }
}

/// Protocol state the kernel needs to pick a connection up mid-stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProtoInfo {
    #[default]
    None,
    /// `enum tcp_conntrack` state, window scale and `IP_CT_TCP_FLAG_*` per direction.
    Tcp {
        state: u8,
        wscale: [u8; 2],
        flags: [u8; 2],
    },
    /// `enum sctp_conntrack` state and verification tags per direction. The tags are
    /// the kernel's `__be32` values copied as raw memory into a `u32`, so
    /// `vtag[i].to_ne_bytes()` is network order.
    Sctp { state: u8, vtag: [u32; 2] },
    /// DCCP state.
    Dccp { state: u8 },
}

/// `IPS_*` status bits hasync looks at.
pub mod status {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    pub const NAT_MASK: u32 = SRC_NAT | DST_NAT;
}

/// A full conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    /// `IPS_*` bits as the origin kernel had them.
    pub status: u32,
    /// Seconds until the entry expires.
    pub timeout: u32,
    pub mark: u32,
    pub zone: Zone,
    pub proto: ProtoInfo,
    /// Conntrack labels, when the origin entry had them.
    pub labels: Option<[u8; 16]>,
}

/// A plain entry for unit tests: `orig` and its mirror as the reply, 30 s left, no
/// NAT, mark, zone, protocol state or labels.
#[cfg(test)]
impl Entry {
    pub(crate) fn plain(orig: Tuple) -> Entry {
        Entry {
            orig,
            reply: orig.swapped(),
            status: 0,
            timeout: 30,
            mark: 0,
            zone: Zone::DEFAULT,
            proto: ProtoInfo::None,
            labels: None,
        }
    }
}

impl Entry {
    /// The identity of this entry in a kernel table.
    pub fn key(&self) -> Key {
        Key {
            orig: self.orig,
            zone: self.zone,
        }
    }

    /// Source NAT the origin kernel applied, recovered from the reply tuple.
    pub fn snat(&self) -> Option<NatMapping> {
        if self.status & status::SRC_NAT == 0 {
            return None;
        }
        // The reply goes back to the translated source.
        let port = if proto::is_icmp(self.orig.proto) {
            // ICMP keeps its id in src.u of both directions.
            Some(self.reply.src_u)
        } else if proto::has_ports(self.orig.proto) {
            Some(self.reply.dst_u)
        } else {
            None
        };
        Some(NatMapping {
            family: self.orig.family,
            addr: self.reply.dst,
            port,
        })
    }

    /// Destination NAT the origin kernel applied, recovered from the reply tuple.
    pub fn dnat(&self) -> Option<NatMapping> {
        if self.status & status::DST_NAT == 0 {
            return None;
        }
        // The reply comes from the translated destination.
        let port = if proto::has_ports(self.orig.proto) {
            Some(self.reply.src_u)
        } else {
            None
        };
        Some(NatMapping {
            family: self.orig.family,
            addr: self.reply.src,
            port,
        })
    }
}

/// A NAT binding to install with `CTA_NAT_SRC` / `CTA_NAT_DST`: the translated address
/// and (for protocols with ports, and ICMP ids) the translated port, network order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatMapping {
    pub family: Family,
    pub addr: [u8; 16],
    pub port: Option<[u8; 2]>,
}

impl NatMapping {
    pub fn ip(&self) -> IpAddr {
        ip(self.family, &self.addr)
    }
}

/// What identifies an entry in a kernel table: original tuple and zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub orig: Tuple,
    pub zone: Zone,
}

/// One replicated change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create or update. `new` is a hint (the origin saw the entry unconfirmed): the
    /// installer tries create first, else update first; both fall back to the other.
    Upsert {
        entry: Entry,
        new: bool,
    },
    Delete(Key),
}

pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn ip(family: Family, bytes: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entry(orig: Tuple, reply: Tuple, status: u32) -> Entry {
        Entry {
            orig,
            reply,
            status,
            timeout: 30,
            mark: 0,
            zone: Zone::DEFAULT,
            proto: ProtoInfo::None,
            labels: None,
        }
    }

    #[test]
    fn snat_is_read_from_the_reply_destination() {
        let orig = Tuple::new(proto::TCP, v4("10.0.0.5"), 40000, v4("192.0.2.9"), 80);
        let reply = Tuple::new(proto::TCP, v4("192.0.2.9"), 80, v4("198.51.100.1"), 61000);
        let e = entry(orig, reply, status::SRC_NAT | status::CONFIRMED);
        let nat = e.snat().unwrap();
        assert_eq!(nat.ip(), v4("198.51.100.1"));
        assert_eq!(nat.port, Some(61000u16.to_be_bytes()));
        assert_eq!(e.dnat(), None);
    }

    #[test]
    fn dnat_is_read_from_the_reply_source() {
        let orig = Tuple::new(proto::UDP, v4("192.0.2.9"), 5000, v4("198.51.100.1"), 53);
        let reply = Tuple::new(proto::UDP, v4("10.0.0.53"), 5353, v4("192.0.2.9"), 5000);
        let e = entry(orig, reply, status::DST_NAT);
        let nat = e.dnat().unwrap();
        assert_eq!(nat.ip(), v4("10.0.0.53"));
        assert_eq!(nat.port, Some(5353u16.to_be_bytes()));
        assert_eq!(e.snat(), None);
    }

    #[test]
    fn icmp_snat_carries_the_id() {
        let mut orig = Tuple::new(proto::ICMP, v4("10.0.0.5"), 0, v4("192.0.2.9"), 0);
        orig.src_u = 77u16.to_be_bytes();
        orig.dst_u = [8, 0];
        let mut reply = Tuple::new(proto::ICMP, v4("192.0.2.9"), 0, v4("198.51.100.1"), 0);
        reply.src_u = 1234u16.to_be_bytes();
        reply.dst_u = [0, 0];
        let e = entry(orig, reply, status::SRC_NAT);
        assert_eq!(e.snat().unwrap().port, Some(1234u16.to_be_bytes()));
    }

    #[test]
    fn gre_nat_has_no_port() {
        let orig = Tuple::new(proto::GRE, v4("10.0.0.5"), 0, v4("192.0.2.9"), 0);
        let reply = Tuple::new(proto::GRE, v4("192.0.2.9"), 0, v4("198.51.100.1"), 0);
        assert_eq!(
            entry(orig, reply, status::SRC_NAT).snat().unwrap().port,
            None
        );
    }

    #[test]
    fn swapped_is_the_plain_reply() {
        let t = Tuple::new(
            proto::UDP,
            v4("10.0.0.1"),
            1,
            "10.0.0.2".parse().unwrap(),
            2,
        );
        assert_eq!(t.swapped().swapped(), t);
        assert_eq!(t.swapped().sport(), 2);
        assert_eq!(t.swapped().dst_ip(), v4("10.0.0.1"));
    }
}
