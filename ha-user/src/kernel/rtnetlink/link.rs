//! Links: lookup, state, up/down, MAC, macvlan create/delete.
//!
//! Requests name the link by index, or by `IFLA_IFNAME` when given a name (the kernel
//! resolves it in GETLINK / NEWLINK / DELLINK), so a name costs no extra round trip.

use super::{
    Ctx, Iface, Rtnl, RtnlError, check_name,
    consts::*,
    msg,
    nla::{AttrIter, DecodeError, Msg},
    put_str, writer,
};

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
    Other(u8),
}

impl From<u8> for OperState {
    fn from(v: u8) -> Self {
        match v {
            0 => OperState::Unknown,
            1 => OperState::NotPresent,
            2 => OperState::Down,
            3 => OperState::LowerLayerDown,
            4 => OperState::Testing,
            5 => OperState::Dormant,
            6 => OperState::Up,
            o => OperState::Other(o),
        }
    }
}

/// What the kernel reports about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `None` for links without a 6-byte hardware address (tunnels, ...).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub oper_state: OperState,
    /// IFF_UP: administratively up.
    pub admin_up: bool,
    /// Carrier present (`IFLA_CARRIER`, or IFF_LOWER_UP when absent).
    pub carrier: bool,
    /// `IFLA_INFO_KIND` ("veth", "macvlan", ...), `None` for physical devices.
    pub kind: Option<String>,
    /// `IFLA_LINK`: the lower device (macvlan parent, veth peer), if any.
    pub link: Option<u32>,
    /// `IFLA_MASTER`: bridge or bond this link is enslaved to.
    pub master: Option<u32>,
    /// `ifi_flags` (IFF_*).
    pub flags: u32,
}

impl LinkInfo {
    /// Up, with carrier, and not reported down: what `monitor_interfaces` calls healthy.
    /// `Unknown` counts as up: drivers without operstate support (dummy, some
    /// virtual NICs) never leave it.
    pub fn is_usable(&self) -> bool {
        self.admin_up
            && self.carrier
            && matches!(self.oper_state, OperState::Up | OperState::Unknown)
    }
}

/// macvlan mode (`enum macvlan_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Private = 1,
    Vepa = 2,
    Bridge = 4,
    Passthru = 8,
    Source = 16,
}

fn ne_u32_attr(a: &super::nla::Attr<'_>, what: &'static str) -> Result<u32, DecodeError> {
    Ok(u32::from_ne_bytes(a.exact::<4>(what)?))
}

/// Decodes an RTM_NEWLINK / RTM_DELLINK payload.
pub(super) fn decode_link(payload: &[u8]) -> Result<LinkInfo, DecodeError> {
    let (hdr, attrs) = msg::split(payload, IFINFOMSG_LEN, "ifinfomsg")?;
    let flags = msg::ne_u32(hdr, 8);
    let mut l = LinkInfo {
        index: msg::ne_u32(hdr, 4),
        name: String::new(),
        mac: None,
        mtu: 0,
        oper_state: OperState::Unknown,
        admin_up: flags & IFF_UP != 0,
        carrier: flags & IFF_LOWER_UP != 0,
        kind: None,
        link: None,
        master: None,
        flags,
    };
    let mut have_name = false;
    for a in AttrIter::new(attrs) {
        let a = a?;
        match a.ty {
            IFLA_IFNAME => {
                l.name = msg::c_str(a.data);
                have_name = true;
            }
            IFLA_ADDRESS => l.mac = a.exact::<6>("IFLA_ADDRESS").ok(),
            IFLA_MTU => l.mtu = ne_u32_attr(&a, "IFLA_MTU")?,
            IFLA_LINK => l.link = Some(ne_u32_attr(&a, "IFLA_LINK")?),
            IFLA_MASTER => l.master = Some(ne_u32_attr(&a, "IFLA_MASTER")?),
            IFLA_OPERSTATE => l.oper_state = a.u8("IFLA_OPERSTATE")?.into(),
            IFLA_CARRIER => l.carrier = a.u8("IFLA_CARRIER")? != 0,
            IFLA_LINKINFO => {
                for i in a.nested() {
                    let i = i?;
                    if i.ty == IFLA_INFO_KIND {
                        l.kind = Some(msg::c_str(i.data));
                    }
                }
            }
            _ => {}
        }
    }
    if !have_name {
        return Err(DecodeError::Missing("IFLA_IFNAME"));
    }
    if l.index == 0 {
        return Err(DecodeError::Invalid("link with ifindex 0"));
    }
    Ok(l)
}

impl Rtnl {
    /// Starts a link request naming `iface` by index or by `IFLA_IFNAME`.
    fn begin_link(
        &mut self,
        ctx: &Ctx,
        ty: u16,
        flags: u16,
        iface: Iface<'_>,
        ifi_flags: u32,
        change: u32,
    ) -> Result<usize, RtnlError> {
        if let Iface::Name(n) = iface {
            check_name(ctx, "interface name", n)?;
        }
        let start = self.begin(ty, flags);
        let index = match iface {
            Iface::Index(i) => i,
            Iface::Name(_) => 0,
        };
        msg::ifinfomsg(&mut self.req, index, ifi_flags, change);
        if let Iface::Name(n) = iface {
            put_str(&mut writer(&mut self.req), IFLA_IFNAME, n);
        }
        Ok(start)
    }

    /// The ifindex of `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32, RtnlError> {
        let ctx = Ctx::new("link index", Some(Iface::Name(name)), None);
        Ok(self.get_link(&ctx, Iface::Name(name))?.index)
    }

    /// The state of one link.
    pub fn link_info<'a>(&mut self, iface: impl Into<Iface<'a>>) -> Result<LinkInfo, RtnlError> {
        let iface = iface.into();
        let ctx = Ctx::new("link info", Some(iface), None);
        self.get_link(&ctx, iface)
    }

    pub(super) fn get_link(&mut self, ctx: &Ctx, iface: Iface<'_>) -> Result<LinkInfo, RtnlError> {
        let start = self.begin_link(ctx, RTM_GETLINK, NLM_F_ACK, iface, 0, 0)?;
        writer(&mut self.req).put(IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
        msg::finish(&mut self.req, start);
        let mut found = None;
        self.transact(ctx, |m| {
            if m.ty == RTM_NEWLINK && found.is_none() {
                found = Some(decode_link(m.payload)?);
            }
            Ok(())
        })?;
        found.ok_or_else(|| RtnlError::Decode {
            ctx: ctx.clone(),
            source: DecodeError::Missing("RTM_NEWLINK reply"),
        })
    }

    /// Every link of the namespace (the monitor's initial state).
    pub fn list_links(&mut self) -> Result<Vec<LinkInfo>, RtnlError> {
        let ctx = Ctx::new("list links", None, None);
        self.dump(
            &ctx,
            |s| {
                let start = s.begin(RTM_GETLINK, NLM_F_DUMP);
                msg::ifinfomsg(&mut s.req, 0, 0, 0);
                writer(&mut s.req).put(IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
                msg::finish(&mut s.req, start);
            },
            |m: &Msg<'_>, out| {
                if m.ty == RTM_NEWLINK {
                    out.push(decode_link(m.payload)?);
                }
                Ok(())
            },
        )
    }

    /// Sets the link administratively up or down (`ip link set dev X up|down`).
    pub fn set_link_up<'a>(
        &mut self,
        iface: impl Into<Iface<'a>>,
        up: bool,
    ) -> Result<(), RtnlError> {
        let iface = iface.into();
        let op = if up { "set link up" } else { "set link down" };
        let ctx = Ctx::new(op, Some(iface), None);
        let flags = if up { IFF_UP } else { 0 };
        let start = self.begin_link(&ctx, RTM_NEWLINK, NLM_F_ACK, iface, flags, IFF_UP)?;
        msg::finish(&mut self.req, start);
        self.transact(&ctx, |_| Ok(())).map(|_| ())
    }

    /// Sets the hardware address. Drivers without live address change (most physical
    /// NICs) answer EBUSY while the link is up; the caller decides whether to bounce it.
    pub fn set_link_mac<'a>(
        &mut self,
        iface: impl Into<Iface<'a>>,
        mac: [u8; 6],
    ) -> Result<(), RtnlError> {
        let iface = iface.into();
        let ctx = Ctx::new("set link mac", Some(iface), None);
        check_unicast_mac(&ctx, mac)?;
        let start = self.begin_link(&ctx, RTM_NEWLINK, NLM_F_ACK, iface, 0, 0)?;
        writer(&mut self.req).put(IFLA_ADDRESS, &mac);
        msg::finish(&mut self.req, start);
        self.transact(&ctx, |_| Ok(())).map(|_| ())
    }

    /// Creates macvlan `name` on `parent` with `mac` (left down, like `ip link add`),
    /// returning its ifindex. Idempotent: an existing macvlan of that name on the same
    /// parent is reused (its MAC set to `mac`); any other link of that name is EEXIST.
    pub fn create_macvlan<'a>(
        &mut self,
        parent: impl Into<Iface<'a>>,
        name: &str,
        mac: [u8; 6],
        mode: MacvlanMode,
    ) -> Result<u32, RtnlError> {
        let parent = parent.into();
        let ctx = Ctx::new("create macvlan", Some(Iface::Name(name)), None);
        check_name(&ctx, "macvlan name", name)?;
        check_unicast_mac(&ctx, mac)?;
        let parent_index = match parent {
            Iface::Index(i) => i,
            Iface::Name(n) => self.get_link(&ctx, Iface::Name(n))?.index,
        };
        let start = self.begin(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        msg::ifinfomsg(&mut self.req, 0, 0, 0);
        let mut w = writer(&mut self.req);
        put_str(&mut w, IFLA_IFNAME, name);
        w.put(IFLA_LINK, &parent_index.to_ne_bytes());
        w.put(IFLA_ADDRESS, &mac);
        let info = w.begin_nest(IFLA_LINKINFO);
        w.put(IFLA_INFO_KIND, b"macvlan");
        let data = w.begin_nest(IFLA_INFO_DATA);
        w.put(IFLA_MACVLAN_MODE, &(mode as u32).to_ne_bytes());
        w.end_nest(data);
        w.end_nest(info);
        msg::finish(&mut self.req, start);
        match self.transact(&ctx, |_| Ok(())) {
            Ok(_) => Ok(self.get_link(&ctx, Iface::Name(name))?.index),
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                let l = self.get_link(&ctx, Iface::Name(name))?;
                if l.kind.as_deref() != Some("macvlan") || l.link != Some(parent_index) {
                    return Err(e);
                }
                if l.mac != Some(mac) {
                    self.set_link_mac(l.index, mac)?;
                }
                tracing::debug!(%ctx, "macvlan already present");
                Ok(l.index)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes a link (`ip link del`). Idempotent: a missing link is `Ok(false)`.
    pub fn delete_link<'a>(&mut self, iface: impl Into<Iface<'a>>) -> Result<bool, RtnlError> {
        let iface = iface.into();
        let ctx = Ctx::new("delete link", Some(iface), None);
        let start = self.begin_link(&ctx, RTM_DELLINK, NLM_F_ACK, iface, 0, 0)?;
        msg::finish(&mut self.req, start);
        match self.transact(&ctx, |_| Ok(())) {
            Ok(_) => Ok(true),
            Err(RtnlError::NoSuchInterface { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The kernel refuses multicast and all-zero MACs with a bare EADDRNOTAVAIL; say why.
fn check_unicast_mac(ctx: &Ctx, mac: [u8; 6]) -> Result<(), RtnlError> {
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(RtnlError::invalid(
            ctx,
            format!("{} is not a unicast MAC address", fmt_mac(&mac)),
        ));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}
