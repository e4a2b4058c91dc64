//! Announcing that this node now owns an address: gratuitous ARP (IPv4) and
//! unsolicited neighbour advertisements (IPv6), sent from our own sockets (no external
//! `arping`: one of Debian's two packages silently did nothing on this kernel), and a
//! DHCP renew for a moved virtual MAC.
//!
//! The announced MAC is the ARP sender and, since we write the whole frame, also the
//! Ethernet source (switches relearn the port). The NA carries it as Target Link-Layer
//! Address; its Ethernet source is the interface's MAC (the kernel builds that frame),
//! which is the same MAC when the VMAC was set on the interface or is a macvlan.
//!
//! One call of [`Announcer::round`] (or [`announce`]) sends one packet per address;
//! the HA driver repeats it `garp_count` times every `garp_interval`.

pub mod arp;
pub mod dhcp;
pub mod ndisc;

#[cfg(test)]
mod tests;

use std::{
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use arp::ArpForm;
pub use dhcp::{DhcpError, renew_dhcp};

use crate::kernel::rtnetlink::fmt_mac;

/// Errors naming the interface and, when sending, the address.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("announce on {iface}: opening {what} socket: {source}")]
    Socket {
        iface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("announce {addr} on {iface}: sending {what}: {source}")]
    Send {
        iface: String,
        addr: IpAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("announce {addr} on {iface}: {reason}")]
    Invalid {
        iface: String,
        addr: IpAddr,
        reason: &'static str,
    },
}

/// How to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceOptions {
    /// Gratuitous ARP forms sent for each IPv4 address, in order.
    pub arp_forms: Vec<ArpForm>,
    /// The NA Router flag. `None`: set it when IPv6 forwarding is on for the interface
    /// (a gateway VIP must keep the R flag, or hosts drop their default route via it).
    pub router: Option<bool>,
}

impl Default for AnnounceOptions {
    fn default() -> Self {
        AnnounceOptions {
            arp_forms: vec![ArpForm::Request],
            router: None,
        }
    }
}

/// Sends announcements for one interface; keeps its sockets between rounds. Lives in
/// the network namespace of the thread that creates it.
#[derive(Debug)]
pub struct Announcer {
    ifindex: u32,
    /// For error messages and the forwarding sysctl.
    iface: String,
    mac: [u8; 6],
    opts: AnnounceOptions,
    arp: Option<arp::ArpSocket>,
    nd: Option<ndisc::NdSocket>,
    router: Option<bool>,
}

/// The interface name, or "ifindex N" if it has none (any more).
fn if_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `net.ipv6.conf.<iface>.forwarding` of the calling thread's namespace.
fn ipv6_forwarding(iface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"))
        .map(|s| s.trim() != "0")
        .unwrap_or(false)
}

impl Announcer {
    /// `mac` is what neighbours should map the addresses to: the interface's own MAC
    /// or the virtual MAC. Sockets open on first use (an IPv6-less host needs none).
    pub fn new(ifindex: u32, mac: [u8; 6], opts: AnnounceOptions) -> Announcer {
        let router = opts.router;
        Announcer {
            ifindex,
            iface: if_name(ifindex),
            mac,
            opts,
            arp: None,
            nd: None,
            router,
        }
    }

    /// One round: every form of announcement for every address. Tries all addresses;
    /// returns the number of packets sent, or the first error (others are logged).
    pub fn round(&mut self, addrs: &[IpAddr]) -> Result<usize, AnnounceError> {
        let mut sent = 0;
        let mut first_err = None;
        for &addr in addrs {
            let r = match addr {
                IpAddr::V4(a) => self.arp(a),
                IpAddr::V6(a) => self.na(a),
            };
            match r {
                Ok(n) => sent += n,
                Err(e) => {
                    tracing::warn!(error = %e, "announcement failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        tracing::debug!(iface = %self.iface, mac = %fmt_mac(&self.mac), sent, "announced");
        first_err.map_or(Ok(sent), Err)
    }

    fn arp(&mut self, ip: Ipv4Addr) -> Result<usize, AnnounceError> {
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(self.invalid(ip.into(), "not a unicast IPv4 address"));
        }
        let sock = match &self.arp {
            Some(s) => s,
            None => self
                .arp
                .insert(arp::ArpSocket::open(self.ifindex).map_err(|source| {
                    AnnounceError::Socket {
                        iface: self.iface.clone(),
                        what: "AF_PACKET",
                        source,
                    }
                })?),
        };
        for &form in &self.opts.arp_forms {
            sock.send(&arp::frame(form, self.mac, ip))
                .map_err(|source| AnnounceError::Send {
                    iface: self.iface.clone(),
                    addr: ip.into(),
                    what: "gratuitous ARP",
                    source,
                })?;
        }
        Ok(self.opts.arp_forms.len())
    }

    fn na(&mut self, ip: Ipv6Addr) -> Result<usize, AnnounceError> {
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(self.invalid(ip.into(), "not a unicast IPv6 address"));
        }
        let router = *self
            .router
            .get_or_insert_with(|| ipv6_forwarding(&self.iface));
        let sock = match &self.nd {
            Some(s) => s,
            None => self
                .nd
                .insert(ndisc::NdSocket::open(self.ifindex).map_err(|source| {
                    AnnounceError::Socket {
                        iface: self.iface.clone(),
                        what: "ICMPv6",
                        source,
                    }
                })?),
        };
        sock.send(ip, &ndisc::advert(ip, self.mac, router))
            .map_err(|source| AnnounceError::Send {
                iface: self.iface.clone(),
                addr: ip.into(),
                what: "unsolicited neighbour advertisement",
                source,
            })?;
        Ok(1)
    }

    fn invalid(&self, addr: IpAddr, reason: &'static str) -> AnnounceError {
        AnnounceError::Invalid {
            iface: self.iface.clone(),
            addr,
            reason,
        }
    }
}

/// One round with default options (gratuitous ARP request; NA with the Router flag
/// following the interface's IPv6 forwarding setting).
pub fn announce(ifindex: u32, addrs: &[IpAddr], mac: [u8; 6]) -> Result<usize, AnnounceError> {
    Announcer::new(ifindex, mac, AnnounceOptions::default()).round(addrs)
}
