//! Expectations over ctnetlink (`NFNL_SUBSYS_CTNETLINK_EXP`): request encoders and
//! bounds-checked decoders for events, dumps and our own requests.
//!
//! What the kernel does with an `IPCTNL_MSG_EXP_NEW` (Linux 6.18,
//! `ctnetlink_new_expect()` / `ctnetlink_create_expect()` / `ctnetlink_alloc_expect()`):
//!
//! * CTA_EXPECT_TUPLE, CTA_EXPECT_MASK and CTA_EXPECT_MASTER are mandatory (EINVAL),
//!   also for an update. All three are parsed in the message's `nfgen_family`.
//! * If an expectation matching the tuple exists: EEXIST with `NLM_F_EXCL`, else only
//!   CTA_EXPECT_TIMEOUT is applied (ETIME if its timer already fired). Otherwise, with
//!   `NLM_F_CREATE`, it is created; without, ENOENT.
//! * Create looks the master up by CTA_EXPECT_MASTER in CTA_EXPECT_ZONE: ENOENT if
//!   absent. The master must have a helper, else EOPNOTSUPP (older kernels check only
//!   for the helper extension, `nfct_help()`). A helper can only be attached when a
//!   conntrack is created: by a `ct helper set` rule on its first packet, or by CTA_HELP
//!   in a ctnetlink create. An entry created through ctnetlink without CTA_HELP never
//!   has one, and an update cannot add it ("we cannot set a helper for an existing
//!   conntrack"). See [`ExpectInstaller`](super::ExpectInstaller) for how the installer
//!   deals with it.
//! * CTA_EXPECT_TIMEOUT is **ignored on create**: `nf_ct_expect_insert()` arms the timer
//!   from the master helper's policy for the class (FTP: 300 s). Only the update path
//!   sets it, so the installer follows every create with [`encode_expect_set_timeout`].
//! * CTA_EXPECT_HELP_NAME and CTA_EXPECT_CLASS depend on the kernel generation:
//!   - Since "netfilter: ctnetlink: ignore explicit helper on new expectations"
//!     (upstream 917b61fa2042, in the stable trees from April 2026; the 6.18.44 test
//!     kernel has it) CTA_EXPECT_HELP_NAME is ignored on create, `exp->helper` is the
//!     master's helper, and CTA_EXPECT_CLASS is checked against the master helper's
//!     `expect_class_max` (EINVAL beyond).
//!   - Before, CTA_EXPECT_HELP_NAME named a helper that had to exist (EOPNOTSUPP
//!     otherwise, after trying to load `nfct-helper-<name>`), became `exp->helper` (the
//!     helper attached to the *expected* connection when it shows up), and was the
//!     only way to get CTA_EXPECT_CLASS honoured (ignored without it). See
//!     [`HelperNamePolicy`].
//! * CTA_EXPECT_FLAGS is kept minus `NF_CT_EXPECT_USERSPACE`; CTA_EXPECT_FN must name a
//!   registered callback (EINVAL); CTA_EXPECT_NAT needs both DIR and TUPLE (EINVAL) and
//!   only its source address and source union are used. Of the mask, only the source
//!   address and source union are used.
//! * Clashes with another expectation of the same master: EBUSY / EALREADY; too many
//!   expectations: EMFILE; the created expectation is announced with an
//!   `IPCTNL_MSG_EXP_NEW` event carrying the requesting socket's port id.
//!
//! `IPCTNL_MSG_EXP_DELETE` with CTA_EXPECT_TUPLE (+ CTA_EXPECT_ZONE) deletes the
//! expectation matching the tuple (ENOENT if none); without tuple and helper name it
//! flushes every expectation of the namespace.
//!
//! Reports (events, dumps) carry master, tuple, mask, timeout, id, flags, class, the
//! master's helper name, the callback name and NAT; never the zone.

use crate::conntrack::{
    Entry, ExpectChange, ExpectFnName, ExpectKey, ExpectMask, ExpectNat, Expectation, Family,
    HelperName, Tuple, Zone, proto,
};

use super::consts::*;
use super::decode::parse_tuple;
use super::encode::{EncodeOptions, encode_create, put_tuple};
use super::nla::{Attr, AttrIter, DecodeError, Msg, Writer};

// ---- nfnetlink.h / nfnetlink_conntrack.h / nf_conntrack_common.h ----------------------

pub const NFNL_SUBSYS_CTNETLINK_EXP: u16 = 2;

pub const NFNLGRP_CONNTRACK_EXP_NEW: u32 = 4;
pub const NFNLGRP_CONNTRACK_EXP_UPDATE: u32 = 5;
pub const NFNLGRP_CONNTRACK_EXP_DESTROY: u32 = 6;

// enum cntl_msg_types (expectation subsystem)
pub const IPCTNL_MSG_EXP_NEW: u16 = 0;
pub const IPCTNL_MSG_EXP_GET: u16 = 1;
pub const IPCTNL_MSG_EXP_DELETE: u16 = 2;

// enum ctattr_expect
pub const CTA_EXPECT_MASTER: u16 = 1;
pub const CTA_EXPECT_TUPLE: u16 = 2;
pub const CTA_EXPECT_MASK: u16 = 3;
pub const CTA_EXPECT_TIMEOUT: u16 = 4;
pub const CTA_EXPECT_ID: u16 = 5;
pub const CTA_EXPECT_HELP_NAME: u16 = 6;
pub const CTA_EXPECT_ZONE: u16 = 7;
pub const CTA_EXPECT_FLAGS: u16 = 8;
pub const CTA_EXPECT_CLASS: u16 = 9;
pub const CTA_EXPECT_NAT: u16 = 10;
pub const CTA_EXPECT_FN: u16 = 11;

// enum ctattr_expect_nat
pub const CTA_EXPECT_NAT_DIR: u16 = 1;
pub const CTA_EXPECT_NAT_TUPLE: u16 = 2;

// enum ctattr_help
pub const CTA_HELP_NAME: u16 = 1;

/// `nlmsg_type` of an expectation message: subsystem in the high byte.
pub const fn exp_msg_type(op: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK_EXP << 8) | op
}

/// Upper bound of one encoded expectation request (IPv6, every optional attribute).
pub const MAX_EXP_MSG_LEN: usize = 640;

/// When the installer sends CTA_EXPECT_HELP_NAME. Only matters on kernels without the
/// April 2026 stable fix (see the module docs), which ignore it on create.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HelperNamePolicy {
    /// Only when the class is not 0: needed on older kernels for the class to be kept
    /// (SIP RTP audio/video expectations; under class 0's `max_expected` a second RTP
    /// expectation would evict the first). For class-0 expectations (FTP, TFTP, IRC,
    /// PPTP...) those kernels' helpers leave `exp->helper` NULL, and sending the
    /// master's helper name would attach e.g. the FTP helper to the data connection.
    #[default]
    WhenClassSet,
    /// Always when known (conntrackd's behaviour): on older kernels also right for SIP
    /// signalling expectations (whose `exp->helper` is the SIP helper), wrong for the
    /// others.
    Always,
    /// Never: on older kernels, classes collapse to 0.
    Never,
}

/// Encoding choices for expectation requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpectEncodeOptions {
    pub helper_name: HelperNamePolicy,
}

// ---- encoding -------------------------------------------------------------------------

/// The mask as a full tuple, the way `ctnetlink_exp_dump_mask()` reports it: the kept
/// source part, an all-ones destination. ICMP keeps the expected type/code instead of
/// 0xff (the kernel validates them when parsing and ignores them otherwise).
fn mask_tuple(e: &Expectation) -> Tuple {
    let f = e.tuple.family;
    let mut dst = [0u8; 16];
    dst[..f.addr_len()].fill(0xff);
    let dst_u = if proto::is_icmp(e.tuple.proto) {
        e.tuple.dst_u
    } else {
        [0xff; 2]
    };
    Tuple {
        family: f,
        proto: e.tuple.proto,
        src: e.mask.src,
        dst,
        src_u: e.mask.src_u,
        dst_u,
    }
}

/// `CTA_EXPECT_NAT_TUPLE` as the kernel reports it: the saved source in a tuple of the
/// master's protocol, destination zero.
fn nat_tuple(e: &Expectation, n: &ExpectNat) -> Tuple {
    Tuple {
        family: e.tuple.family,
        proto: e.master.proto,
        src: n.src,
        dst: [0; 16],
        src_u: n.src_u,
        dst_u: [0; 2],
    }
}

/// A NUL-terminated string attribute (`NLA_NUL_STRING`).
fn put_str(w: &mut Writer<'_>, ty: u16, s: &[u8]) {
    let mut b = [0u8; 64];
    let n = s.len().min(b.len() - 1);
    b[..n].copy_from_slice(&s[..n]);
    w.put(ty, &b[..n + 1]);
}

/// CTA_EXPECT_ZONE: the kernel's zone attribute has no direction; a zone that does not
/// cover the original direction looks the master up (by its original tuple) in the
/// default zone, so it is left out.
fn exp_zone(z: Zone) -> Option<u16> {
    (z.id != 0 && z.dir & Zone::DIR_ORIG != 0).then_some(z.id)
}

fn put_identity(w: &mut Writer<'_>, e: &Expectation) {
    put_tuple(w, CTA_EXPECT_MASTER, &e.master, None);
    put_tuple(w, CTA_EXPECT_TUPLE, &e.tuple, None);
    put_tuple(w, CTA_EXPECT_MASK, &mask_tuple(e), None);
    if let Some(z) = exp_zone(e.zone) {
        w.put_be16(CTA_EXPECT_ZONE, z);
    }
}

/// Appends a create request (`NLM_F_CREATE|NLM_F_EXCL`) with every attribute of `e`.
/// The kernel ignores CTA_EXPECT_TIMEOUT here; follow with
/// [`encode_expect_set_timeout`]. Call [`Expectation::validate`] first: tuples of
/// another family than `e.tuple`'s are encoded as if they had it.
pub fn encode_expect_create(
    w: &mut Writer<'_>,
    seq: u32,
    e: &Expectation,
    opts: &ExpectEncodeOptions,
) {
    let m = w.begin_msg(
        exp_msg_type(IPCTNL_MSG_EXP_NEW),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        e.family().af(),
        NFNETLINK_V0,
        0,
    );
    put_identity(w, e);
    w.put_be32(CTA_EXPECT_TIMEOUT, e.timeout);
    w.put_be32(CTA_EXPECT_FLAGS, e.flags);
    w.put_be32(CTA_EXPECT_CLASS, e.class);
    let send_helper = match opts.helper_name {
        HelperNamePolicy::Always => true,
        HelperNamePolicy::WhenClassSet => e.class != 0,
        HelperNamePolicy::Never => false,
    };
    if let (true, Some(h)) = (send_helper, &e.helper) {
        put_str(w, CTA_EXPECT_HELP_NAME, h.as_bytes());
    }
    if let Some(f) = &e.expectfn {
        put_str(w, CTA_EXPECT_FN, f.as_bytes());
    }
    if let Some(n) = &e.nat {
        let nest = w.begin_nest(CTA_EXPECT_NAT);
        w.put_be32(CTA_EXPECT_NAT_DIR, u32::from(n.dir));
        put_tuple(w, CTA_EXPECT_NAT_TUPLE, &nat_tuple(e, n), None);
        w.end_nest(nest);
    }
    w.end_msg(m);
}

/// Appends an update of an existing expectation's timeout (no create flags; the kernel
/// still wants tuple, mask and master).
pub fn encode_expect_set_timeout(w: &mut Writer<'_>, seq: u32, e: &Expectation) {
    let m = w.begin_msg(
        exp_msg_type(IPCTNL_MSG_EXP_NEW),
        NLM_F_REQUEST,
        seq,
        e.family().af(),
        NFNETLINK_V0,
        0,
    );
    put_identity(w, e);
    w.put_be32(CTA_EXPECT_TIMEOUT, e.timeout);
    w.end_msg(m);
}

/// Appends a delete request for the expectation matching `key`.
pub fn encode_expect_delete(w: &mut Writer<'_>, seq: u32, key: &ExpectKey) {
    let m = w.begin_msg(
        exp_msg_type(IPCTNL_MSG_EXP_DELETE),
        NLM_F_REQUEST,
        seq,
        key.tuple.family.af(),
        NFNETLINK_V0,
        0,
    );
    put_tuple(w, CTA_EXPECT_TUPLE, &key.tuple, None);
    if key.zone.id != 0 {
        // Deletes match the zone id in any direction (`nf_ct_exp_zone_equal_any`).
        w.put_be16(CTA_EXPECT_ZONE, key.zone.id);
    }
    w.end_msg(m);
}

/// Appends an expectation table dump request (all families when `family` is `None`).
pub fn encode_expect_dump(w: &mut Writer<'_>, seq: u32, family: Option<Family>) {
    let m = w.begin_msg(
        exp_msg_type(IPCTNL_MSG_EXP_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family.map_or(0, Family::af),
        NFNETLINK_V0,
        0,
    );
    w.end_msg(m);
}

/// Appends an acknowledged request deleting every expectation of the namespace (the
/// kernel ignores the family here).
pub fn encode_expect_flush(w: &mut Writer<'_>, seq: u32) {
    let m = w.begin_msg(
        exp_msg_type(IPCTNL_MSG_EXP_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        0,
        NFNETLINK_V0,
        0,
    );
    w.end_msg(m);
}

/// Appends an acknowledged `IPCTNL_MSG_CT_GET` for one conntrack entry (a master).
pub fn encode_ct_get(w: &mut Writer<'_>, seq: u32, orig: &Tuple, zone: Zone) {
    let m = w.begin_msg(
        ct_msg_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        orig.family.af(),
        NFNETLINK_V0,
        0,
    );
    let (in_tuple, top) = match (zone.id, zone.dir) {
        (0, _) => (None, None),
        (id, Zone::DIR_ORIG) => (Some(id), None),
        (_, Zone::DIR_REPL) => (None, None),
        (id, _) => (None, Some(id)),
    };
    put_tuple(w, CTA_TUPLE_ORIG, orig, in_tuple);
    if let Some(z) = top {
        w.put_be16(CTA_ZONE, z);
    }
    w.end_msg(m);
}

/// Appends a conntrack create request for `e` exactly like
/// [`encode_create`], plus `CTA_HELP { CTA_HELP_NAME }`
/// when `helper` is given: the only way to give an entry created through ctnetlink the
/// helper extension that expectations need (the kernel also sets `IPS_HELPER`, so no
/// rule re-assigns it). `ack` sets `NLM_F_ACK`.
pub fn encode_create_with_helper(
    buf: &mut Vec<u8>,
    seq: u32,
    e: &Entry,
    helper: Option<&HelperName>,
    opts: &EncodeOptions,
    ack: bool,
) {
    let start = buf.len();
    {
        let mut w = Writer::new(buf);
        encode_create(&mut w, seq, e, opts);
        if let Some(h) = helper {
            let nest = w.begin_nest(CTA_HELP);
            put_str(&mut w, CTA_HELP_NAME, h.as_bytes());
            w.end_nest(nest);
            // The message grew: patch its length again.
            w.end_msg(start);
        }
    }
    if ack {
        set_ack(buf, start);
    }
}

/// Sets `NLM_F_ACK` in the header of the message that starts at `buf[start..]`
/// (`nlmsg_flags` is the native-endian u16 at offset 6).
pub fn set_ack(buf: &mut [u8], start: usize) {
    if let Some(f) = buf.get_mut(start + 6..start + 8) {
        let flags = u16::from_ne_bytes([f[0], f[1]]) | NLM_F_ACK;
        f.copy_from_slice(&flags.to_ne_bytes());
    }
}

// ---- decoding ---------------------------------------------------------------------------

/// Whether `msg` is an expectation message of operation `op` (`IPCTNL_MSG_EXP_*`).
pub fn is_exp_msg(msg: &Msg<'_>, op: u16) -> bool {
    msg.ty == exp_msg_type(op)
}

/// An expectation message (event, dump part or our own request) with every attribute
/// hasync models; absent attributes are `None` / zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpMessage {
    pub family: Family,
    pub master: Option<Tuple>,
    pub tuple: Option<Tuple>,
    pub mask: Option<ExpectMask>,
    pub zone: Zone,
    pub timeout: Option<u32>,
    pub flags: u32,
    pub class: u32,
    /// CTA_EXPECT_ID: the kernel's handle (node-local, never replicated).
    pub id: Option<u32>,
    pub helper: Option<HelperName>,
    pub expectfn: Option<ExpectFnName>,
    pub nat: Option<ExpectNat>,
}

impl ExpMessage {
    /// The expectation; needs master, tuple and mask.
    pub fn expectation(&self) -> Result<Expectation, DecodeError> {
        Ok(Expectation {
            master: self
                .master
                .ok_or(DecodeError::Missing("CTA_EXPECT_MASTER"))?,
            tuple: self.tuple.ok_or(DecodeError::Missing("CTA_EXPECT_TUPLE"))?,
            mask: self.mask.ok_or(DecodeError::Missing("CTA_EXPECT_MASK"))?,
            zone: self.zone,
            timeout: self.timeout.unwrap_or(0),
            flags: self.flags,
            class: self.class,
            helper: self.helper,
            expectfn: self.expectfn,
            nat: self.nat,
        })
    }

    /// The deletion key; needs the tuple.
    pub fn key(&self) -> Result<ExpectKey, DecodeError> {
        Ok(ExpectKey {
            tuple: self.tuple.ok_or(DecodeError::Missing("CTA_EXPECT_TUPLE"))?,
            zone: self.zone,
        })
    }

    /// As a replicated change: `IPCTNL_MSG_EXP_NEW` → upsert, `_DELETE` → delete.
    pub fn change(&self, op: u16) -> Result<ExpectChange, DecodeError> {
        match op {
            IPCTNL_MSG_EXP_NEW => Ok(ExpectChange::Upsert(self.expectation()?)),
            IPCTNL_MSG_EXP_DELETE => Ok(ExpectChange::Delete(self.key()?)),
            _ => Err(DecodeError::Invalid(
                "not an expectation NEW/DELETE message",
            )),
        }
    }
}

/// Parses the attributes of an expectation message.
pub fn parse_expect(msg: &Msg<'_>) -> Result<ExpMessage, DecodeError> {
    let (af, _version, attrs) = msg.nfgen()?;
    let family = Family::from_af(u16::from(af)).ok_or(DecodeError::Family(af))?;
    let mut m = ExpMessage {
        family,
        master: None,
        tuple: None,
        mask: None,
        zone: Zone::DEFAULT,
        timeout: None,
        flags: 0,
        class: 0,
        id: None,
        helper: None,
        expectfn: None,
        nat: None,
    };
    for a in AttrIter::new(attrs) {
        let a = a?;
        match a.ty {
            CTA_EXPECT_MASTER => m.master = Some(parse_tuple(&a, family)?.0),
            CTA_EXPECT_TUPLE => m.tuple = Some(parse_tuple(&a, family)?.0),
            CTA_EXPECT_MASK => {
                let (t, _) = parse_tuple(&a, family)?;
                m.mask = Some(ExpectMask {
                    src: t.src,
                    src_u: t.src_u,
                });
            }
            CTA_EXPECT_TIMEOUT => m.timeout = Some(a.be32("CTA_EXPECT_TIMEOUT")?),
            CTA_EXPECT_ID => m.id = Some(a.be32("CTA_EXPECT_ID")?),
            CTA_EXPECT_ZONE => {
                let id = a.be16("CTA_EXPECT_ZONE")?;
                if id != 0 {
                    m.zone = Zone::new(id);
                }
            }
            CTA_EXPECT_FLAGS => m.flags = a.be32("CTA_EXPECT_FLAGS")?,
            CTA_EXPECT_CLASS => m.class = a.be32("CTA_EXPECT_CLASS")?,
            CTA_EXPECT_HELP_NAME => {
                m.helper = Some(
                    HelperName::from_bytes(c_str(&a)).ok_or(DecodeError::Invalid(
                        "CTA_EXPECT_HELP_NAME is not a helper name",
                    ))?,
                )
            }
            CTA_EXPECT_FN => {
                m.expectfn = Some(
                    ExpectFnName::from_bytes(c_str(&a))
                        .ok_or(DecodeError::Invalid("CTA_EXPECT_FN is not a callback name"))?,
                )
            }
            CTA_EXPECT_NAT => m.nat = Some(parse_nat(&a, family)?),
            _ => {}
        }
    }
    Ok(m)
}

/// Parses an event or dump message into a change (`IPCTNL_MSG_EXP_NEW` → upsert,
/// `IPCTNL_MSG_EXP_DELETE` → delete); other message types are an error.
pub fn parse_expect_change(msg: &Msg<'_>) -> Result<ExpectChange, DecodeError> {
    let op = if is_exp_msg(msg, IPCTNL_MSG_EXP_NEW) {
        IPCTNL_MSG_EXP_NEW
    } else if is_exp_msg(msg, IPCTNL_MSG_EXP_DELETE) {
        IPCTNL_MSG_EXP_DELETE
    } else {
        return Err(DecodeError::Invalid(
            "not an expectation NEW/DELETE message",
        ));
    };
    parse_expect(msg)?.change(op)
}

/// The helper name in a conntrack message's CTA_HELP (`None` when the entry has no
/// helper).
pub fn parse_ct_helper(msg: &Msg<'_>) -> Result<Option<HelperName>, DecodeError> {
    let (_, _, attrs) = msg.nfgen()?;
    for a in AttrIter::new(attrs) {
        let a = a?;
        if a.ty != CTA_HELP {
            continue;
        }
        for h in a.nested() {
            let h = h?;
            if h.ty == CTA_HELP_NAME {
                return HelperName::from_bytes(c_str(&h))
                    .map(Some)
                    .ok_or(DecodeError::Invalid("CTA_HELP_NAME is not a helper name"));
            }
        }
    }
    Ok(None)
}

/// The bytes of a string attribute up to its first NUL.
fn c_str<'a>(a: &Attr<'a>) -> &'a [u8] {
    match a.data.iter().position(|&b| b == 0) {
        Some(n) => &a.data[..n],
        None => a.data,
    }
}

fn parse_nat(a: &Attr<'_>, family: Family) -> Result<ExpectNat, DecodeError> {
    let mut dir = None;
    let mut tuple = None;
    for n in a.nested() {
        let n = n?;
        match n.ty {
            CTA_EXPECT_NAT_DIR => {
                let d = n.be32("CTA_EXPECT_NAT_DIR")?;
                if d > 1 {
                    return Err(DecodeError::Invalid("CTA_EXPECT_NAT_DIR is not 0 or 1"));
                }
                dir = Some(d as u8);
            }
            CTA_EXPECT_NAT_TUPLE => tuple = Some(parse_tuple(&n, family)?.0),
            _ => {}
        }
    }
    let t = tuple.ok_or(DecodeError::Missing("CTA_EXPECT_NAT_TUPLE"))?;
    Ok(ExpectNat {
        dir: dir.ok_or(DecodeError::Missing("CTA_EXPECT_NAT_DIR"))?,
        src: t.src,
        src_u: t.src_u,
    })
}
