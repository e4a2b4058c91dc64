//! Conntrack expectations: what a helper (FTP, SIP, TFTP, H.323, PPTP...) tells the
//! kernel to expect, so the related connection is recognised as such.
//!
//! An expectation belongs to a *master* connection (the FTP control connection) and
//! matches a future connection by tuple under a mask (typically any source port). The
//! kernel keeps, and ctnetlink reports, exactly what [`Expectation`] holds:
//!
//! | field       | ctnetlink               | kernel (`struct nf_conntrack_expect`)       |
//! |-------------|-------------------------|---------------------------------------------|
//! | `master`    | `CTA_EXPECT_MASTER`     | `master->tuplehash[ORIGINAL].tuple`         |
//! | `tuple`     | `CTA_EXPECT_TUPLE`      | `tuple`                                     |
//! | `mask`      | `CTA_EXPECT_MASK`       | `mask.src.u3`, `mask.src.u.all` (the rest of the mask is always "exact") |
//! | `zone`      | `CTA_EXPECT_ZONE`       | the master's zone (never reported!)         |
//! | `timeout`   | `CTA_EXPECT_TIMEOUT`    | seconds left on `timeout`                   |
//! | `flags`     | `CTA_EXPECT_FLAGS`      | `NF_CT_EXPECT_{PERMANENT,INACTIVE,USERSPACE}` |
//! | `class`     | `CTA_EXPECT_CLASS`      | `class` (per-helper policy slot)            |
//! | `helper`    | `CTA_EXPECT_HELP_NAME`  | the *master's* helper name (see below)      |
//! | `expectfn`  | `CTA_EXPECT_FN`         | `expectfn` by registered name, e.g. `nat-follow-master` |
//! | `nat`       | `CTA_EXPECT_NAT`        | `dir`, `saved_addr`, `saved_proto`          |
//!
//! Asymmetries of the kernel interface that shape the model:
//!
//! * The zone is never reported (`ctnetlink_exp_dump_expect()` has no zone attribute);
//!   an expectation always lives in its master's zone. Decoded events carry
//!   [`Zone::DEFAULT`]; the agent may fill in the master's zone from its own table.
//! * `CTA_EXPECT_HELP_NAME` is reported as the master's helper. Creating an expectation
//!   needs a master that has a helper on the installing node; what the kernel does with
//!   a helper name and a class in a create request depends on its generation (see
//!   [`kernel::ctnetlink::expect`](crate::kernel::ctnetlink::expect)).
//! * The mask's destination part is always all-ones in the kernel and is not modelled.

use super::{Family, Tuple, Zone};

/// `NF_CT_EXPECT_*` flag bits.
pub mod expect_flags {
    /// The expectation survives being matched (SIP REGISTER, H.323).
    pub const PERMANENT: u32 = 0x1;
    /// Not matched until activated (SIP signalling).
    pub const INACTIVE: u32 = 0x2;
    /// Created from userspace; the kernel strips it from `CTA_EXPECT_FLAGS` on create.
    pub const USERSPACE: u32 = 0x4;
}

/// A short printable name stored inline (so [`Expectation`] stays `Copy`): 1 to `CAP`
/// bytes of printable ASCII (0x20..=0x7e), no NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name<const CAP: usize> {
    len: u8,
    buf: [u8; CAP],
}

/// A conntrack helper name (`NF_CT_HELPER_NAME_LEN` is 16 including the NUL).
pub type HelperName = Name<15>;
/// A registered expectation callback name (`struct nf_ct_helper_expectfn::name`); the
/// longest in Linux is `nat-follow-master` (17).
pub type ExpectFnName = Name<31>;

impl<const CAP: usize> Name<CAP> {
    /// The longest name this type holds.
    pub const CAPACITY: usize = CAP;

    /// `None` if `bytes` is empty, longer than `CAP` or not printable ASCII.
    pub fn from_bytes(bytes: &[u8]) -> Option<Name<CAP>> {
        if bytes.is_empty()
            || bytes.len() > CAP
            || CAP > u8::MAX as usize
            || !bytes.iter().all(|b| (0x20..=0x7e).contains(b))
        {
            return None;
        }
        let mut buf = [0u8; CAP];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Name {
            len: bytes.len() as u8,
            buf,
        })
    }

    pub fn new(s: &str) -> Option<Name<CAP>> {
        Name::from_bytes(s.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len).min(CAP)]
    }

    pub fn as_str(&self) -> &str {
        // Printable ASCII by construction.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Always false: names are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const CAP: usize> std::fmt::Debug for Name<CAP> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl<const CAP: usize> std::fmt::Display for Name<CAP> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of the expectation mask the kernel keeps: which bits of the source address
/// and of the source union (port, ICMP id, GRE key) must match. Network order; IPv4
/// uses the first 4 bytes of `src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpectMask {
    pub src: [u8; 16],
    pub src_u: [u8; 2],
}

impl ExpectMask {
    /// Exact source address, any source port: what FTP, IRC, TFTP... use.
    pub fn any_port(family: Family) -> ExpectMask {
        let mut src = [0u8; 16];
        src[..family.addr_len()].fill(0xff);
        ExpectMask { src, src_u: [0; 2] }
    }
}

/// NAT the expected connection will get (`CTA_EXPECT_NAT`): the kernel's `exp->dir`,
/// `saved_addr` and `saved_proto` (as the NAT helpers set them: FTP saves the port the
/// client announced before mangling). Network order; IPv4 uses the first 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpectNat {
    /// `enum ip_conntrack_dir`: 0 original, 1 reply.
    pub dir: u8,
    pub src: [u8; 16],
    pub src_u: [u8; 2],
}

/// One expectation as the kernel reports it (see the module docs for each field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Expectation {
    /// Original tuple of the master connection.
    pub master: Tuple,
    /// The expected connection's original tuple (masked parts zero).
    pub tuple: Tuple,
    pub mask: ExpectMask,
    /// The master's zone (also the expectation's). Not reported by the kernel.
    pub zone: Zone,
    /// Seconds left.
    pub timeout: u32,
    /// `NF_CT_EXPECT_*` bits ([`expect_flags`]).
    pub flags: u32,
    /// The helper's expectation class (SIP: 0 signalling, 1 audio, 2 video...).
    pub class: u32,
    /// The master's helper (`ftp`, `sip`...).
    pub helper: Option<HelperName>,
    /// The callback the kernel runs when the expectation is matched.
    pub expectfn: Option<ExpectFnName>,
    pub nat: Option<ExpectNat>,
}

impl Expectation {
    /// The identity the kernel deletes by: expected tuple and zone.
    pub fn key(&self) -> ExpectKey {
        ExpectKey {
            tuple: self.tuple,
            zone: self.zone,
        }
    }

    /// The address family shared by every tuple of the expectation.
    pub fn family(&self) -> Family {
        self.tuple.family
    }

    /// Checks what the encoders rely on: one family for all tuples, a NAT direction of
    /// 0 or 1, IPv4 addresses zero beyond their 4 bytes.
    pub fn validate(&self) -> Result<(), &'static str> {
        let f = self.tuple.family;
        if self.master.family != f {
            return Err("master and expected tuples differ in family");
        }
        if let Some(n) = &self.nat
            && n.dir > 1
        {
            return Err("NAT direction is neither original nor reply");
        }
        if f == Family::V4 {
            let mut tail = [&self.master.src, &self.master.dst, &self.tuple.src]
                .into_iter()
                .chain([&self.tuple.dst, &self.mask.src]);
            if tail.any(|a| a[4..] != [0; 12]) {
                return Err("IPv4 address with bytes beyond the first 4");
            }
            if let Some(n) = &self.nat
                && n.src[4..] != [0; 12]
            {
                return Err("IPv4 address with bytes beyond the first 4");
            }
        }
        Ok(())
    }
}

/// What identifies an expectation for deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpectKey {
    pub tuple: Tuple,
    pub zone: Zone,
}

/// One replicated expectation change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectChange {
    /// A new expectation (the kernel sends no update events for expectations).
    Upsert(Expectation),
    /// The expectation was matched, timed out, or was removed with its master.
    Delete(ExpectKey),
}

impl ExpectChange {
    pub fn key(&self) -> ExpectKey {
        match self {
            ExpectChange::Upsert(e) => e.key(),
            ExpectChange::Delete(k) => *k,
        }
    }

    pub fn family(&self) -> Family {
        self.key().tuple.family
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::proto;

    #[test]
    fn names() {
        let n = HelperName::new("ftp").unwrap();
        assert_eq!(n.as_str(), "ftp");
        assert_eq!(n.len(), 3);
        assert_eq!(format!("{n:?}"), "\"ftp\"");
        assert!(HelperName::new("").is_none());
        assert!(HelperName::new("0123456789abcdef").is_none(), "16 > 15");
        assert!(HelperName::new("0123456789abcde").is_some());
        assert!(HelperName::from_bytes(b"ft\0p").is_none());
        assert!(HelperName::from_bytes(&[0xc3, 0xa9]).is_none());
        assert!(ExpectFnName::new("nat-follow-master").is_some());
    }

    #[test]
    fn validate() {
        let ip = |s: &str| s.parse().unwrap();
        let master = Tuple::new(proto::TCP, ip("10.0.0.1"), 40000, ip("10.0.0.2"), 21);
        let tuple = Tuple::new(proto::TCP, ip("10.0.0.1"), 0, ip("10.0.0.2"), 50000);
        let mut e = Expectation {
            master,
            tuple,
            mask: ExpectMask::any_port(Family::V4),
            zone: Zone::DEFAULT,
            timeout: 300,
            flags: 0,
            class: 0,
            helper: HelperName::new("ftp"),
            expectfn: None,
            nat: None,
        };
        assert_eq!(e.validate(), Ok(()));
        assert_eq!(e.key().tuple, tuple);
        e.mask.src[5] = 1;
        assert!(e.validate().is_err());
        e.mask = ExpectMask::any_port(Family::V4);
        e.nat = Some(ExpectNat {
            dir: 2,
            src: [0; 16],
            src_u: [0; 2],
        });
        assert!(e.validate().is_err());
        e.nat = None;
        e.master = Tuple::new(proto::TCP, ip("::1"), 1, ip("::2"), 21);
        assert!(e.validate().is_err());
    }
}

/// Proptest strategies shared by the codec tests (ctnetlink and wire).
#[cfg(test)]
pub(crate) mod strategies {
    use super::*;
    use crate::conntrack::proto;
    use proptest::prelude::*;

    fn addr(family: Family) -> impl Strategy<Value = [u8; 16]> {
        any::<[u8; 16]>().prop_map(move |mut a| {
            a[family.addr_len()..].fill(0);
            a
        })
    }

    fn tuple(family: Family, p: u8) -> impl Strategy<Value = Tuple> {
        (
            addr(family),
            addr(family),
            any::<[u8; 2]>(),
            any::<[u8; 2]>(),
        )
            .prop_map(move |(src, dst, src_u, dst_u)| Tuple {
                family,
                proto: p,
                src,
                dst,
                src_u,
                dst_u,
            })
    }

    fn a_proto() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(proto::TCP),
            Just(proto::UDP),
            Just(proto::GRE),
            Just(proto::ICMP),
            Just(proto::SCTP),
            any::<u8>(),
        ]
    }

    pub(crate) fn zone() -> impl Strategy<Value = Zone> {
        prop_oneof![
            Just(Zone::DEFAULT),
            (1u16.., Just(Zone::DIR_BOTH)).prop_map(|(id, dir)| Zone { id, dir }),
            (any::<u16>(), any::<u8>()).prop_map(|(id, dir)| Zone { id, dir }),
        ]
    }

    pub(crate) fn expectation() -> impl Strategy<Value = Expectation> {
        (
            prop_oneof![Just(Family::V4), Just(Family::V6)],
            a_proto(),
            a_proto(),
        )
            .prop_flat_map(|(f, p, mp)| {
                (
                    tuple(f, mp),
                    tuple(f, p),
                    (addr(f), any::<[u8; 2]>()),
                    zone(),
                    (any::<u32>(), any::<u32>(), any::<u32>()),
                    proptest::option::of("[ -~]{1,15}"),
                    proptest::option::of("[ -~]{1,31}"),
                    proptest::option::of((0u8..=1, addr(f), any::<[u8; 2]>())),
                )
            })
            .prop_map(
                |(master, tuple, (msrc, msrc_u), zone, (timeout, flags, class), h, f, nat)| {
                    Expectation {
                        master,
                        tuple,
                        mask: ExpectMask {
                            src: msrc,
                            src_u: msrc_u,
                        },
                        zone,
                        timeout,
                        flags,
                        class,
                        helper: h.as_deref().and_then(HelperName::new),
                        expectfn: f.as_deref().and_then(ExpectFnName::new),
                        nat: nat.map(|(dir, src, src_u)| ExpectNat { dir, src, src_u }),
                    }
                },
            )
    }

    pub(crate) fn change() -> impl Strategy<Value = ExpectChange> {
        prop_oneof![
            expectation().prop_map(ExpectChange::Upsert),
            expectation().prop_map(|e| ExpectChange::Delete(e.key())),
        ]
    }
}
