//! Gratuitous ARP: an ARP announcement sent from an AF_PACKET socket.
//!
//! We build the whole Ethernet frame ourselves (SOCK_RAW) so that its source MAC is
//! the announced one: switches learn from the Ethernet source, hosts from the ARP
//! sender fields, and after a virtual MAC move both must point at us.

use std::{
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
pub const ARPOP_REQUEST: u16 = 1;
pub const ARPOP_REPLY: u16 = 2;
pub const FRAME_LEN: usize = 14 + 28;
const BROADCAST: [u8; 6] = [0xff; 6];

/// Which gratuitous ARP to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpForm {
    /// Request, sender IP = target IP = VIP, target MAC zero: what the kernel's
    /// `arp_notify` and keepalived send (RFC 5227 "ARP Announcement").
    Request,
    /// Reply with target MAC = sender MAC (Linux only treats a reply as gratuitous
    /// when they match, see `arp_is_garp`), for equipment that ignores requests.
    Reply,
}

/// The Ethernet frame of a gratuitous ARP for `ip` owned by `mac`.
pub fn frame(form: ArpForm, mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let (op, tha) = match form {
        ArpForm::Request => (ARPOP_REQUEST, [0u8; 6]),
        ArpForm::Reply => (ARPOP_REPLY, mac),
    };
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let a = &mut f[14..];
    a[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    a[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&ip.octets());
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&ip.octets());
    f
}

fn sockaddr_ll(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_ll = unsafe { mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = protocol.to_be();
    a.sll_ifindex = ifindex as i32;
    a.sll_halen = 6;
    a.sll_addr[..6].copy_from_slice(&BROADCAST);
    a
}

/// A send-only packet socket bound to one interface.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl ArpSocket {
    pub fn open(ifindex: u32) -> io::Result<ArpSocket> {
        // Protocol 0: the socket receives nothing, so nothing queues up unread.
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = sockaddr_ll(ifindex, 0);
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ArpSocket { fd, ifindex })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = sockaddr_ll(self.ifindex, ETH_P_ARP);
        loop {
            // SAFETY: frame and addr are valid for the given lengths.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
