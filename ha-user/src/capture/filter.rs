//! The sync filters' semantics on the agent side, for what the program never sees:
//! destroy events come from ctnetlink, without interfaces. The program is the
//! reference (`ha-ebpf/src/filter.rs`); this mirror must agree on everything it can
//! decide, and says "keep" when it cannot (a rule on interfaces).

use ha_common::{FilterRule, filter};

use crate::conntrack::{Family, Key};

fn masked_eq(addr: &[u8; 16], want: &[u8; 16], mask: &[u8; 16]) -> bool {
    addr.iter()
        .zip(want)
        .zip(mask)
        .all(|((a, w), m)| a & m == *w)
}

/// `Some(matches)`, or `None` when the rule needs the interfaces.
fn matches(r: &FilterRule, key: &Key) -> Option<bool> {
    let t = &key.orig;
    let family = match t.family {
        Family::V4 => 2,
        Family::V6 => 10,
    };
    let checks = [
        r.set & filter::PROTO == 0 || t.proto == r.proto,
        r.set & (filter::SRC_ADDR | filter::DST_ADDR) == 0 || family == r.family,
        r.set & filter::SRC_ADDR == 0 || masked_eq(&t.src, &r.src_addr, &r.src_mask),
        r.set & filter::DST_ADDR == 0 || masked_eq(&t.dst, &r.dst_addr, &r.dst_mask),
        // The program compares the raw union; for protocols without ports that is
        // whatever the kernel keeps there (ICMP id, GRE key), as here.
        r.set & filter::SRC_PORTS == 0 || (r.sport[0]..=r.sport[1]).contains(&t.sport()),
        r.set & filter::DST_PORTS == 0 || (r.dport[0]..=r.dport[1]).contains(&t.dport()),
    ];
    if checks.contains(&false) {
        return Some(false);
    }
    if r.set & (filter::SRC_IF | filter::DST_IF) != 0 {
        return None;
    }
    Some(true)
}

/// Whether a destroyed entry's deletion should be sent: false only when the filters
/// certainly kept the entry off the wire.
pub fn keep_destroyed(rules: &[FilterRule], key: &Key) -> bool {
    if rules.is_empty() {
        return true;
    }
    let mut included = !rules.iter().any(|r| r.exclude == 0);
    for r in rules {
        match (matches(r, key), r.exclude != 0) {
            (Some(true), true) => return false,
            (Some(true), false) | (None, false) => included = true,
            _ => {}
        }
    }
    included
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Tuple, Zone, proto};

    fn key(proto: u8, dport: u16) -> Key {
        Key {
            orig: Tuple::new(
                proto,
                "10.0.0.1".parse().unwrap(),
                1000,
                "192.0.2.9".parse().unwrap(),
                dport,
            ),
            zone: Zone::DEFAULT,
        }
    }

    fn ports(exclude: bool, lo: u16, hi: u16) -> FilterRule {
        FilterRule {
            set: filter::DST_PORTS,
            exclude: u32::from(exclude),
            dport: [lo, hi],
            ..Default::default()
        }
    }

    #[test]
    fn exclude_rules_drop_matching_deletes() {
        let rules = [ports(true, 30000, 30999)];
        assert!(!keep_destroyed(&rules, &key(proto::UDP, 30500)));
        assert!(keep_destroyed(&rules, &key(proto::UDP, 31000)));
    }

    #[test]
    fn include_rules_keep_only_matches() {
        let mut tcp = ports(false, 80, 80);
        tcp.set |= filter::PROTO;
        tcp.proto = proto::TCP;
        let rules = [tcp];
        assert!(keep_destroyed(&rules, &key(proto::TCP, 80)));
        assert!(!keep_destroyed(&rules, &key(proto::UDP, 80)));
        assert!(!keep_destroyed(&rules, &key(proto::TCP, 81)));
    }

    #[test]
    fn interface_rules_cannot_be_decided_so_deletes_go_out() {
        let by_if = FilterRule {
            set: filter::SRC_IF,
            exclude: 1,
            src_ifindex: 3,
            ..Default::default()
        };
        assert!(keep_destroyed(&[by_if], &key(proto::UDP, 53)));
        let include_if = FilterRule {
            set: filter::SRC_IF,
            exclude: 0,
            src_ifindex: 3,
            ..Default::default()
        };
        assert!(keep_destroyed(&[include_if], &key(proto::UDP, 53)));
    }

    #[test]
    fn prefixes_match_under_their_mask() {
        let mut r = FilterRule {
            set: filter::SRC_ADDR,
            exclude: 1,
            family: 2,
            ..Default::default()
        };
        r.src_addr[..4].copy_from_slice(&[10, 0, 0, 0]);
        r.src_mask[..4].copy_from_slice(&[255, 0, 0, 0]);
        assert!(!keep_destroyed(&[r], &key(proto::UDP, 1)));
        r.family = 10;
        assert!(
            keep_destroyed(&[r], &key(proto::UDP, 1)),
            "another family never matches"
        );
    }
}
