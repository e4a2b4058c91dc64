//! The UDP sockets that carry sync datagrams: multicast on the sync interface (the
//! conntrackd default, 225.0.0.50:3780, TTL 1, no loopback), or unicast to the peer.
//! Thin by design: framing, authentication and sequencing live in the I/O-free core.

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, Socket, Type};

/// Where sync traffic goes and how the sockets are sized.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Sync interface (e.g. "sync0"); `None` lets routing decide (unicast only).
    pub interface: Option<String>,
    /// Multicast group, or `None` for unicast to `peer`.
    pub group: Option<Ipv4Addr>,
    pub port: u16,
    /// The peer's address (unicast destination; ignored for multicast sends).
    pub peer: Option<std::net::IpAddr>,
    pub send_buffer: usize,
    pub receive_buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("sync interface `{0}` does not exist")]
    NoInterface(String),
    #[error("unicast sync needs `peer_addr`")]
    NoPeer,
    #[error("multicast sync needs `interface` (the sync link)")]
    MulticastNeedsInterface,
    #[error("{op} on the sync socket ({what}): {source}")]
    Io {
        op: &'static str,
        what: String,
        source: io::Error,
    },
}

fn io_err(op: &'static str, what: impl Into<String>) -> impl FnOnce(io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { op, what, source }
}

/// Index of a network interface.
pub fn ifindex(name: &str) -> Result<u32, TransportError> {
    let c = CString::new(name).map_err(|_| TransportError::NoInterface(name.to_string()))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(TransportError::NoInterface(name.to_string()))
    } else {
        Ok(idx)
    }
}

impl TransportConfig {
    /// Where datagrams are sent.
    pub fn destination(&self) -> Result<SocketAddr, TransportError> {
        match (self.group, self.peer) {
            (Some(g), _) => Ok(SocketAddr::V4(SocketAddrV4::new(g, self.port))),
            (None, Some(peer)) => Ok(SocketAddr::new(peer, self.port)),
            (None, None) => Err(TransportError::NoPeer),
        }
    }

    /// A non-blocking socket for sending sync datagrams.
    pub fn open_sender(&self) -> Result<UdpSocket, TransportError> {
        let dest = self.destination()?;
        let domain = if dest.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_err("socket", "sender"))?;
        set_buffer(
            &sock,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            self.send_buffer,
        )?;
        if let Some(ifname) = &self.interface {
            let idx = ifindex(ifname)?;
            sock.bind_device(Some(ifname.as_bytes()))
                .map_err(io_err("SO_BINDTODEVICE", ifname.clone()))?;
            if self.group.is_some() {
                set_multicast_if(&sock, idx).map_err(io_err("IP_MULTICAST_IF", ifname.clone()))?;
            }
        } else if self.group.is_some() {
            return Err(TransportError::MulticastNeedsInterface);
        }
        if self.group.is_some() {
            // The peer is one hop away on the sync link; our own datagrams are not for us.
            sock.set_multicast_ttl_v4(1)
                .map_err(io_err("IP_MULTICAST_TTL", "1"))?;
            sock.set_multicast_loop_v4(false)
                .map_err(io_err("IP_MULTICAST_LOOP", "off"))?;
        }
        sock.set_nonblocking(true)
            .map_err(io_err("O_NONBLOCK", "sender"))?;
        Ok(sock.into())
    }

    /// A non-blocking socket receiving the peer's sync datagrams.
    pub fn open_receiver(&self) -> Result<UdpSocket, TransportError> {
        let v6 = self.group.is_none() && self.peer.is_some_and(|p| p.is_ipv6());
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_err("socket", "receiver"))?;
        sock.set_reuse_address(true)
            .map_err(io_err("SO_REUSEADDR", "receiver"))?;
        set_buffer(
            &sock,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            self.receive_buffer,
        )?;
        if let Some(ifname) = &self.interface {
            ifindex(ifname)?;
            sock.bind_device(Some(ifname.as_bytes()))
                .map_err(io_err("SO_BINDTODEVICE", ifname.clone()))?;
        }
        let bind: SocketAddr = match (self.group, v6) {
            // Bound to the group: unicast to this port is not sync traffic.
            (Some(g), _) => SocketAddrV4::new(g, self.port).into(),
            (None, false) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.port).into(),
            (None, true) => (std::net::Ipv6Addr::UNSPECIFIED, self.port).into(),
        };
        sock.bind(&bind.into())
            .map_err(io_err("bind", bind.to_string()))?;
        if let Some(group) = self.group {
            let ifname = self
                .interface
                .as_deref()
                .ok_or(TransportError::MulticastNeedsInterface)?;
            let idx = ifindex(ifname)?;
            join_group(&sock, group, idx)
                .map_err(io_err("IP_ADD_MEMBERSHIP", format!("{group} on {ifname}")))?;
            // Linux delivers every joined group on this port to every socket unless told
            // otherwise; only ours.
            sock.set_multicast_all_v4(false)
                .map_err(io_err("IP_MULTICAST_ALL", "off"))?;
        }
        sock.set_nonblocking(true)
            .map_err(io_err("O_NONBLOCK", "receiver"))?;
        Ok(sock.into())
    }
}

/// Datagrams handed to the kernel per `sendmmsg` call.
pub const SEND_BATCH: usize = 64;

/// Sends up to [`SEND_BATCH`] datagrams to `dest` in one `sendmmsg`; returns how many
/// the kernel took (fewer on a full buffer: the caller keeps the rest).
pub fn send_batch(
    sock: &UdpSocket,
    dest: &socket2::SockAddr,
    datagrams: &[&[u8]],
) -> io::Result<usize> {
    let n = datagrams.len().min(SEND_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut iovs: [libc::iovec; SEND_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; SEND_BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut msgs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: datagrams[i].as_ptr() as *mut libc::c_void,
            iov_len: datagrams[i].len(),
        };
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = dest.as_ptr() as *mut libc::c_void;
        h.msg_namelen = dest.len();
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: n valid headers pointing at live buffers and at `dest`.
    let r = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Sets a socket buffer, beyond `net.core.*mem_max` when we have CAP_NET_ADMIN.
fn set_buffer(
    sock: &Socket,
    force: libc::c_int,
    plain: libc::c_int,
    size: usize,
) -> Result<(), TransportError> {
    let val = size.min(i32::MAX as usize) as libc::c_int;
    for opt in [force, plain] {
        // SAFETY: valid fd and option value.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &val as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
    }
    Err(TransportError::Io {
        op: "SO_SNDBUF/SO_RCVBUF",
        what: size.to_string(),
        source: io::Error::last_os_error(),
    })
}

fn mreqn(group: Ipv4Addr, ifindex: u32) -> libc::ip_mreqn {
    libc::ip_mreqn {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from_ne_bytes(group.octets()),
        },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as libc::c_int,
    }
}

fn setsockopt_mreqn(sock: &Socket, opt: libc::c_int, m: &libc::ip_mreqn) -> io::Result<()> {
    // SAFETY: valid fd, option value of the documented type.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            opt,
            m as *const _ as *const libc::c_void,
            size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Multicast out of this interface (by index: the interface may have no IPv4 address).
fn set_multicast_if(sock: &Socket, ifindex: u32) -> io::Result<()> {
    setsockopt_mreqn(
        sock,
        libc::IP_MULTICAST_IF,
        &mreqn(Ipv4Addr::UNSPECIFIED, ifindex),
    )
}

fn join_group(sock: &Socket, group: Ipv4Addr, ifindex: u32) -> io::Result<()> {
    setsockopt_mreqn(sock, libc::IP_ADD_MEMBERSHIP, &mreqn(group, ifindex))
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{NetNs, veth};

    fn cfg(group: Option<Ipv4Addr>, peer: &str) -> TransportConfig {
        TransportConfig {
            interface: Some("s0".into()),
            group,
            port: 3780,
            peer: Some(peer.parse().unwrap()),
            send_buffer: 1 << 20,
            receive_buffer: 1 << 20,
        }
    }

    /// Sends `msg` until `rx` gets it (a fresh veth may drop the first datagrams
    /// while its link comes up on a loaded machine) and returns what arrived.
    fn deliver(tx: &UdpSocket, dest: std::net::SocketAddr, rx: &UdpSocket, msg: &[u8]) -> Vec<u8> {
        rx.set_nonblocking(false).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..50 {
            tx.send_to(msg, dest).unwrap();
            if let Ok((n, _)) = rx.recv_from(&mut buf) {
                return buf[..n].to_vec();
            }
        }
        panic!("nothing arrived in 10 s");
    }

    #[test]
    fn multicast_reaches_the_peer_and_not_ourselves() {
        let (a, b) = (NetNs::new("tra").unwrap(), NetNs::new("trb").unwrap());
        veth(&a, "s0", &["10.82.0.1/24"], &b, "s0", &["10.82.0.2/24"]).unwrap();
        let group = Some(Ipv4Addr::new(225, 0, 0, 50));
        let rx_b = b
            .enter(|| cfg(group, "10.82.0.1").open_receiver().unwrap())
            .unwrap();
        let rx_a = a
            .enter(|| cfg(group, "10.82.0.2").open_receiver().unwrap())
            .unwrap();
        let tx_a = a
            .enter(|| cfg(group, "10.82.0.2").open_sender().unwrap())
            .unwrap();
        let dest = cfg(group, "10.82.0.2").destination().unwrap();
        assert_eq!(deliver(&tx_a, dest, &rx_b, b"hello"), b"hello");
        let mut buf = [0u8; 16];
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx_a.recv_from(&mut buf).is_err(), "no multicast loopback");
    }

    #[test]
    fn unicast_when_no_group() {
        let (a, b) = (NetNs::new("tua").unwrap(), NetNs::new("tub").unwrap());
        veth(&a, "s0", &["10.83.0.1/24"], &b, "s0", &["10.83.0.2/24"]).unwrap();
        let rx_b = b
            .enter(|| cfg(None, "10.83.0.1").open_receiver().unwrap())
            .unwrap();
        let tx_a = a
            .enter(|| cfg(None, "10.83.0.2").open_sender().unwrap())
            .unwrap();
        let dest = cfg(None, "10.83.0.2").destination().unwrap();
        assert_eq!(deliver(&tx_a, dest, &rx_b, b"uni"), b"uni");
    }

    #[test]
    fn missing_interface_is_named() {
        let ns = NetNs::new("tun").unwrap();
        let err = ns
            .enter(|| {
                cfg(Some(Ipv4Addr::new(225, 0, 0, 50)), "10.0.0.1")
                    .open_receiver()
                    .unwrap_err()
            })
            .unwrap();
        assert_eq!(err.to_string(), "sync interface `s0` does not exist");
    }
}
