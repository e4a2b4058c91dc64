//! Turns a ring-buffer record (`ha_common::CtEvent`) into a replicated [`Change`].

use ha_common::{CtEvent, CtTuple, has, kind};

use crate::conntrack::{Change, Entry, Family, ProtoInfo, Tuple, Zone, proto};

/// Why a record could not be used (counted by the reader; never expected from a
/// correct program, but the ring buffer is an ABI boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEvent {
    /// Shorter than `CtEvent`.
    Short,
    /// Not IPv4/IPv6.
    Family,
    /// Original and reply tuple disagree on family or protocol.
    Mismatch,
}

/// Reads a record's bytes (possibly unaligned) as an event.
pub fn parse_record(bytes: &[u8]) -> Result<CtEvent, BadEvent> {
    if bytes.len() < size_of::<CtEvent>() {
        return Err(BadEvent::Short);
    }
    // SAFETY: length checked; CtEvent is plain old data, any bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const CtEvent) })
}

fn tuple(t: &CtTuple) -> Result<Tuple, BadEvent> {
    let family = Family::from_af(t.l3num).ok_or(BadEvent::Family)?;
    let mut src = t.src;
    let mut dst = t.dst;
    if family == Family::V4 {
        // The kernel zeroes tuples, but the ABI does not promise it: normalise.
        src[4..].fill(0);
        dst[4..].fill(0);
    }
    Ok(Tuple {
        family,
        proto: t.protonum,
        src,
        dst,
        src_u: t.src_u,
        dst_u: t.dst_u,
    })
}

/// Converts an event into an upsert. `hz` is the kernel's jiffies per second.
pub fn to_change(ev: &CtEvent, hz: u32) -> Result<Change, BadEvent> {
    let orig = tuple(&ev.orig)?;
    let reply = tuple(&ev.reply)?;
    if orig.family != reply.family || orig.proto != reply.proto {
        return Err(BadEvent::Mismatch);
    }
    let proto_info = match orig.proto {
        proto::TCP => ProtoInfo::Tcp {
            state: ev.proto_state,
            wscale: ev.tcp_wscale,
            flags: ev.tcp_flags,
        },
        proto::SCTP => ProtoInfo::Sctp {
            state: ev.proto_state,
            vtag: ev.sctp_vtag,
        },
        proto::DCCP => ProtoInfo::Dccp {
            state: ev.proto_state,
        },
        _ => ProtoInfo::None,
    };
    let zone = if ev.has & has::ZONE != 0 {
        // dir 0 never happens in the kernel (the default is both directions).
        Zone {
            id: ev.zone_id,
            dir: if ev.zone_dir == 0 {
                Zone::DIR_BOTH
            } else {
                ev.zone_dir
            },
        }
    } else {
        Zone::DEFAULT
    };
    let labels = (ev.has & has::LABELS != 0 && ev.labels != [0; 16]).then_some(ev.labels);
    let entry = Entry {
        orig,
        reply,
        status: ev.status,
        timeout: jiffies_to_secs(ev.timeout, hz),
        mark: if ev.has & has::MARK != 0 { ev.mark } else { 0 },
        zone,
        proto: proto_info,
        labels,
    };
    Ok(Change::Upsert {
        entry,
        new: ev.kind == kind::NEW,
    })
}

/// Rounds up, so an entry with time left never reaches the peer with zero seconds
/// (which ctnetlink would treat as "expire now").
pub fn jiffies_to_secs(jiffies: u32, hz: u32) -> u32 {
    let hz = hz.max(1);
    jiffies.div_ceil(hz).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(l3num: u16, proto: u8, src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> CtTuple {
        CtTuple {
            src,
            src_u: sport.to_be_bytes(),
            l3num,
            dst,
            dst_u: dport.to_be_bytes(),
            protonum: proto,
            dir: 0,
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn tcp_event() -> CtEvent {
        CtEvent {
            orig: raw(2, 6, v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), 1000, 80),
            reply: raw(2, 6, v4([10, 0, 0, 2]), v4([10, 9, 9, 9]), 80, 1000),
            status: 0x1e,
            timeout: 250 * 100 + 1,
            mark: 5,
            zone_id: 7,
            zone_flags: 0,
            zone_dir: 3,
            kind: kind::UPDATE,
            proto_state: 3,
            tcp_wscale: [7, 8],
            tcp_flags: [0x3, 0x1],
            has: has::MARK | has::ZONE,
            hook: 4,
            sctp_vtag: [0; 2],
            labels: [0; 16],
            ts_ns: 1,
        }
    }

    #[test]
    fn converts_a_tcp_event() {
        let Change::Upsert { entry, new } = to_change(&tcp_event(), 250).unwrap() else {
            panic!("not an upsert")
        };
        assert!(!new);
        assert_eq!(entry.orig.sport(), 1000);
        assert_eq!(entry.reply.dst_ip().to_string(), "10.9.9.9");
        assert_eq!(entry.timeout, 101, "rounded up");
        assert_eq!(entry.mark, 5);
        assert_eq!(entry.zone, Zone { id: 7, dir: 3 });
        assert_eq!(
            entry.proto,
            ProtoInfo::Tcp {
                state: 3,
                wscale: [7, 8],
                flags: [3, 1]
            }
        );
        assert_eq!(entry.labels, None);
    }

    #[test]
    fn missing_optional_fields_fall_back_to_defaults() {
        let mut ev = tcp_event();
        ev.has = 0;
        ev.kind = kind::NEW;
        let Change::Upsert { entry, new } = to_change(&ev, 250).unwrap() else {
            panic!()
        };
        assert!(new);
        assert_eq!(entry.mark, 0);
        assert_eq!(entry.zone, Zone::DEFAULT);
    }

    #[test]
    fn garbage_in_ipv4_padding_is_cleared() {
        let mut ev = tcp_event();
        ev.orig.src[10] = 0xff;
        let Change::Upsert { entry, .. } = to_change(&ev, 250).unwrap() else {
            panic!()
        };
        assert_eq!(entry.orig.src[4..], [0u8; 12]);
    }

    #[test]
    fn rejects_bad_records() {
        let mut ev = tcp_event();
        ev.orig.l3num = 7;
        assert_eq!(to_change(&ev, 250), Err(BadEvent::Family));
        let mut ev = tcp_event();
        ev.reply.protonum = 17;
        assert_eq!(to_change(&ev, 250), Err(BadEvent::Mismatch));
        assert_eq!(parse_record(&[0u8; 10]).unwrap_err(), BadEvent::Short);
    }

    #[test]
    fn jiffies_round_up_and_never_reach_zero() {
        assert_eq!(jiffies_to_secs(0, 250), 1);
        assert_eq!(jiffies_to_secs(250, 250), 1);
        assert_eq!(jiffies_to_secs(251, 250), 2);
        assert_eq!(jiffies_to_secs(1000, 0), 1000);
    }
}
