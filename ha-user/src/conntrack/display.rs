//! Entries printed the way `conntrack -L` prints them, so operators can compare.

use std::fmt::Write as _;

use super::{Entry, Family, ProtoInfo, Tuple, proto, status};

/// `enum tcp_conntrack` names, as conntrack-tools prints them.
const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// `enum sctp_conntrack` names.
const SCTP_STATES: [&str; 10] = [
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
    "HEARTBEAT_ACKED",
];

pub fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP => "icmp",
        proto::ICMPV6 => "icmpv6",
        proto::SCTP => "sctp",
        proto::DCCP => "dccp",
        proto::GRE => "gre",
        proto::UDPLITE => "udplite",
        _ => "unknown",
    }
}

/// The protocol state name, if the protocol has states.
pub fn state_name(p: &ProtoInfo) -> Option<&'static str> {
    match p {
        ProtoInfo::Tcp { state, .. } => {
            Some(TCP_STATES.get(*state as usize).copied().unwrap_or("?"))
        }
        ProtoInfo::Sctp { state, .. } => {
            Some(SCTP_STATES.get(*state as usize).copied().unwrap_or("?"))
        }
        ProtoInfo::Dccp { .. } | ProtoInfo::None => None,
    }
}

fn tuple(out: &mut String, t: &Tuple) {
    let _ = write!(out, "src={} dst={} ", t.src_ip(), t.dst_ip());
    if proto::is_icmp(t.proto) {
        let _ = write!(
            out,
            "type={} code={} id={} ",
            t.dst_u[0],
            t.dst_u[1],
            t.sport()
        );
    } else if proto::has_ports(t.proto) {
        let _ = write!(out, "sport={} dport={} ", t.sport(), t.dport());
    }
}

/// One line, as `conntrack -L` prints it (timeout in seconds as replicated).
pub fn line(e: &Entry) -> String {
    let mut out = String::new();
    let name = proto_name(e.orig.proto);
    let family = match e.orig.family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    let _ = write!(out, "{family} {name} {} {} ", e.orig.proto, e.timeout);
    if let Some(state) = state_name(&e.proto) {
        let _ = write!(out, "{state} ");
    }
    tuple(&mut out, &e.orig);
    if e.status & status::SEEN_REPLY == 0 {
        out.push_str("[UNREPLIED] ");
    }
    tuple(&mut out, &e.reply);
    if e.status & status::ASSURED != 0 {
        out.push_str("[ASSURED] ");
    }
    let _ = write!(out, "mark={}", e.mark);
    if e.zone.id != 0 {
        let _ = write!(out, " zone={}", e.zone.id);
    }
    if let Some(l) = e.labels {
        let _ = write!(
            out,
            " labels=0x{}",
            l.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::Zone;

    #[test]
    fn prints_like_conntrack() {
        let orig = Tuple::new(
            proto::TCP,
            "10.0.0.1".parse().unwrap(),
            1000,
            "10.0.0.2".parse().unwrap(),
            80,
        );
        let reply = Tuple::new(
            proto::TCP,
            "10.0.0.2".parse().unwrap(),
            80,
            "10.9.9.9".parse().unwrap(),
            1000,
        );
        let e = Entry {
            orig,
            reply,
            status: status::SEEN_REPLY | status::ASSURED | status::SRC_NAT,
            timeout: 99,
            mark: 5,
            zone: Zone::new(7),
            proto: ProtoInfo::Tcp {
                state: 3,
                wscale: [7, 7],
                flags: [3, 3],
            },
            labels: None,
        };
        assert_eq!(
            line(&e),
            "ipv4 tcp 6 99 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=80 \
             src=10.0.0.2 dst=10.9.9.9 sport=80 dport=1000 [ASSURED] mark=5 zone=7"
        );
        let u = Entry {
            status: 0,
            proto: ProtoInfo::None,
            zone: Zone::DEFAULT,
            mark: 0,
            ..e
        };
        let u = Entry {
            orig: Tuple {
                proto: proto::UDP,
                ..u.orig
            },
            reply: Tuple {
                proto: proto::UDP,
                ..u.reply
            },
            ..u
        };
        assert!(
            line(&u).starts_with("ipv4 udp 17 99 src=10.0.0.1"),
            "{}",
            line(&u)
        );
        assert!(line(&u).contains("[UNREPLIED]"));
    }
}
