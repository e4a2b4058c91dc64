//! Addresses: idempotent add / delete of a virtual IP, and listing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{
    Ctx, Iface, Rtnl, RtnlError, check_name,
    consts::*,
    msg,
    nla::{AttrIter, DecodeError, Msg},
    put_str, writer,
};

/// Whether [`Rtnl::add_address`] changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    /// EEXIST: the address was already there (IPv4: with the same prefix length; IPv6:
    /// with any prefix length, the kernel allows an IPv6 address only once per link).
    AlreadyPresent,
}

/// Whether [`Rtnl::del_address`] changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelOutcome {
    Removed,
    NotPresent,
}

/// One address of a link, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    /// The local address with its prefix length.
    pub addr: IpNet,
    /// IPv4 only: `IFA_LABEL` (the interface name when none was given).
    pub label: Option<String>,
    pub broadcast: Option<Ipv4Addr>,
    /// IFA_F_* (`IFA_FLAGS` when present, else `ifa_flags`).
    pub flags: u32,
    pub scope: u8,
}

impl AddrInfo {
    /// IPv6 DAD still running: the address cannot be used as a source yet.
    pub fn is_tentative(&self) -> bool {
        self.flags & IFA_F_TENTATIVE != 0
    }
}

fn ip_from(family: u8, data: &[u8], what: &'static str) -> Result<IpAddr, DecodeError> {
    let a = super::nla::Attr { ty: 0, data };
    match i32::from(family) {
        libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::from(a.exact::<4>(what)?))),
        libc::AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(a.exact::<16>(what)?))),
        _ => Err(DecodeError::Family(family)),
    }
}

/// Decodes an RTM_NEWADDR / RTM_DELADDR payload.
pub(super) fn decode_addr(payload: &[u8]) -> Result<AddrInfo, DecodeError> {
    let (hdr, attrs) = msg::split(payload, IFADDRMSG_LEN, "ifaddrmsg")?;
    let (family, prefix, flags8, scope) = (hdr[0], hdr[1], hdr[2], hdr[3]);
    let index = msg::ne_u32(hdr, 4);
    let (mut local, mut address, mut label, mut broadcast, mut flags) =
        (None, None, None, None, u32::from(flags8));
    for a in AttrIter::new(attrs) {
        let a = a?;
        match a.ty {
            IFA_LOCAL => local = Some(ip_from(family, a.data, "IFA_LOCAL")?),
            IFA_ADDRESS => address = Some(ip_from(family, a.data, "IFA_ADDRESS")?),
            IFA_LABEL => label = Some(msg::c_str(a.data)),
            IFA_BROADCAST => {
                if let IpAddr::V4(b) = ip_from(family, a.data, "IFA_BROADCAST")? {
                    broadcast = Some(b);
                }
            }
            IFA_FLAGS => flags = u32::from_ne_bytes(a.exact::<4>("IFA_FLAGS")?),
            _ => {}
        }
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links
    // and the only one IPv6 sends otherwise.
    let ip = local
        .or(address)
        .ok_or(DecodeError::Missing("IFA_LOCAL/IFA_ADDRESS"))?;
    let addr = IpNet::new(ip, prefix).map_err(|_| DecodeError::Invalid("prefix length"))?;
    Ok(AddrInfo {
        index,
        addr,
        label,
        broadcast,
        flags,
        scope,
    })
}

fn family_of(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => libc::AF_INET as u8,
        IpNet::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(ip: &IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

impl Rtnl {
    /// Resolves a name to an index (NEWADDR/DELADDR/GETADDR only take indexes).
    fn index_of(&mut self, ctx: &Ctx, iface: Iface<'_>) -> Result<u32, RtnlError> {
        match iface {
            Iface::Index(i) => Ok(i),
            Iface::Name(n) => Ok(self.get_link(ctx, Iface::Name(n))?.index),
        }
    }

    /// Adds `addr` to `iface` like `ip addr add <addr> [brd +] dev <iface> [label L]`
    /// (IPv6: `nodad`, so a virtual IP is usable at once). Idempotent.
    pub fn add_address<'a>(
        &mut self,
        iface: impl Into<Iface<'a>>,
        addr: IpNet,
        label: Option<&str>,
    ) -> Result<AddOutcome, RtnlError> {
        let iface = iface.into();
        let ctx = Ctx::new("add address", Some(iface), Some(addr));
        if let Some(l) = label {
            check_name(&ctx, "label", l)?;
        }
        let index = self.index_of(&ctx, iface)?;
        let ip = addr.addr();
        let (bytes, len) = addr_bytes(&ip);
        let flags = match addr {
            IpNet::V4(_) => 0,
            IpNet::V6(_) => IFA_F_NODAD,
        };
        let start = self.begin(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        msg::ifaddrmsg(
            &mut self.req,
            family_of(&addr),
            addr.prefix_len(),
            flags as u8,
            index,
        );
        let mut w = writer(&mut self.req);
        w.put(IFA_LOCAL, &bytes[..len]);
        w.put(IFA_ADDRESS, &bytes[..len]);
        if let IpNet::V4(n) = addr {
            // `ip addr add` sets the broadcast address by default below /31 (RFC 3021).
            if n.prefix_len() < 31 {
                w.put(IFA_BROADCAST, &n.broadcast().octets());
            }
            if let Some(l) = label {
                put_str(&mut w, IFA_LABEL, l);
            }
        } else if label.is_some() {
            tracing::debug!(%ctx, "labels are IPv4-only; ignoring it for an IPv6 address");
        }
        w.put(IFA_FLAGS, &flags.to_ne_bytes());
        msg::finish(&mut self.req, start);
        match self.transact(&ctx, |_| Ok(())) {
            Ok(_) => Ok(AddOutcome::Added),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(AddOutcome::AlreadyPresent),
            Err(e) => Err(e),
        }
    }

    /// Removes `addr` (same prefix length) from `iface`. Idempotent.
    ///
    /// IPv4: removing a primary address also removes its secondaries unless
    /// `net.ipv4.conf.<if>.promote_secondaries` is set.
    pub fn del_address<'a>(
        &mut self,
        iface: impl Into<Iface<'a>>,
        addr: IpNet,
    ) -> Result<DelOutcome, RtnlError> {
        let iface = iface.into();
        let ctx = Ctx::new("delete address", Some(iface), Some(addr));
        let index = self.index_of(&ctx, iface)?;
        let (bytes, len) = addr_bytes(&addr.addr());
        let start = self.begin(RTM_DELADDR, NLM_F_ACK);
        msg::ifaddrmsg(&mut self.req, family_of(&addr), addr.prefix_len(), 0, index);
        let mut w = writer(&mut self.req);
        w.put(IFA_LOCAL, &bytes[..len]);
        w.put(IFA_ADDRESS, &bytes[..len]);
        msg::finish(&mut self.req, start);
        match self.transact(&ctx, |_| Ok(())) {
            Ok(_) => Ok(DelOutcome::Removed),
            Err(e) if matches!(e.errno(), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {
                Ok(DelOutcome::NotPresent)
            }
            Err(e) => Err(e),
        }
    }

    /// The IPv4 and IPv6 addresses of `iface`.
    pub fn list_addresses<'a>(
        &mut self,
        iface: impl Into<Iface<'a>>,
    ) -> Result<Vec<AddrInfo>, RtnlError> {
        let iface = iface.into();
        let ctx = Ctx::new("list addresses", Some(iface), None);
        let index = self.index_of(&ctx, iface)?;
        if index == 0 {
            return Err(RtnlError::invalid(&ctx, "ifindex 0"));
        }
        self.dump(
            &ctx,
            |s| {
                let start = s.begin(RTM_GETADDR, NLM_F_DUMP);
                // With NETLINK_GET_STRICT_CHK the kernel filters by index; without, we do.
                msg::ifaddrmsg(&mut s.req, libc::AF_UNSPEC as u8, 0, 0, index);
                msg::finish(&mut s.req, start);
            },
            |m: &Msg<'_>, out| {
                if m.ty == RTM_NEWADDR {
                    let a = decode_addr(m.payload)?;
                    if a.index == index {
                        out.push(a);
                    }
                }
                Ok(())
            },
        )
    }
}
