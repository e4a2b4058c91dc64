//! Unsolicited neighbour advertisement (RFC 4861 §7.2.6) from an ICMPv6 raw socket.
//!
//! The kernel fills in the ICMPv6 checksum for IPPROTO_ICMPV6 raw sockets and builds
//! the IPv6 header; we set hop limit 255 (receivers drop ND with any other), the
//! destination ff02::1 and, per packet, the source = the announced address itself
//! (IPV6_PKTINFO; it must not be tentative, hence `nodad` on virtual IPs).

use std::{
    io, mem,
    net::Ipv6Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LINKADDR: u8 = 2;
const NA_FLAG_ROUTER: u8 = 0x80;
const NA_FLAG_OVERRIDE: u8 = 0x20;
pub const NA_LEN: usize = 24 + 8;
/// `ICMP6_FILTER` (linux/icmpv6.h): which ICMPv6 types a raw socket receives.
const ICMP6_FILTER: libc::c_int = 1;
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The ICMPv6 message: NA with Override set and Solicited clear, Router as given,
/// Target Link-Layer Address option = `mac`. Checksum left zero for the kernel.
pub fn advert(target: Ipv6Addr, mac: [u8; 6], router: bool) -> [u8; NA_LEN] {
    let mut m = [0u8; NA_LEN];
    m[0] = ND_NEIGHBOR_ADVERT;
    m[4] = NA_FLAG_OVERRIDE | if router { NA_FLAG_ROUTER } else { 0 };
    m[8..24].copy_from_slice(&target.octets());
    m[24] = ND_OPT_TARGET_LINKADDR;
    m[25] = 1; // option length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// A send-only ICMPv6 raw socket for one interface.
#[derive(Debug)]
pub struct NdSocket {
    fd: OwnedFd,
    ifindex: u32,
}

fn setopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to a valid T for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl NdSocket {
    pub fn open(ifindex: u32) -> io::Result<NdSocket> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET6,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMPV6,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let hops: libc::c_int = 255;
        setopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
        setopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)?;
        setopt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            &(ifindex as libc::c_int),
        )?;
        // Our own stack need not see the advert.
        setopt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_LOOP,
            &(0 as libc::c_int),
        )?;
        // Send-only: block every ICMPv6 type so nothing queues up unread.
        setopt(
            &fd,
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            &[0xffff_ffffu32; 8],
        )?;
        Ok(NdSocket { fd, ifindex })
    }

    /// Sends `msg` to ff02::1 on the interface with source address `src`.
    pub fn send(&self, src: Ipv6Addr, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
        let mut dst: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        dst.sin6_addr.s6_addr = ALL_NODES.octets();
        dst.sin6_scope_id = self.ifindex;

        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: src.octets(),
            },
            ipi6_ifindex: self.ifindex,
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut cbuf = [0u64; 8];
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space =
            unsafe { libc::CMSG_SPACE(mem::size_of::<libc::in6_pktinfo>() as u32) } as usize;
        debug_assert!(space <= mem::size_of_val(&cbuf));

        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut mh: libc::msghdr = unsafe { mem::zeroed() };
        mh.msg_name = &mut dst as *mut libc::sockaddr_in6 as *mut libc::c_void;
        mh.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        mh.msg_controllen = space as _;
        // SAFETY: mh describes cbuf, which has room for one cmsg carrying in6_pktinfo.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in6_pktinfo>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in6_pktinfo, info);
        }
        loop {
            // SAFETY: mh and everything it points to live until the call returns.
            let r = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &mh, 0) };
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
