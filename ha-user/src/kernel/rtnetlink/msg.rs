//! Request headers and the generic parts of replies (ACK / error / DONE).
//!
//! Attributes are written with ctnetlink's [`Writer`](super::nla::Writer) and read with
//! its [`MsgIter`](super::nla::MsgIter) / [`AttrIter`]; only the family headers
//! (`ifinfomsg`, `ifaddrmsg`) differ from nfnetlink's, so they are written here.

use super::{
    consts::*,
    nla::{AttrIter, DecodeError, Msg, align4},
};

/// Appends an `nlmsghdr` with a zero length (patched by [`finish`]); returns its offset.
pub(super) fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    start
}

/// `struct ifinfomsg`.
pub(super) fn ifinfomsg(buf: &mut Vec<u8>, index: u32, flags: u32, change: u32) {
    buf.push(libc::AF_UNSPEC as u8);
    buf.push(0);
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&index.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&change.to_ne_bytes());
}

/// `struct ifaddrmsg`.
pub(super) fn ifaddrmsg(buf: &mut Vec<u8>, family: u8, prefix: u8, flags: u8, index: u32) {
    buf.extend_from_slice(&[family, prefix, flags, RT_SCOPE_UNIVERSE]);
    buf.extend_from_slice(&index.to_ne_bytes());
}

/// Patches the message length (attributes are padded, so it ends aligned).
pub(super) fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Splits a payload into its fixed family header and the attributes behind it.
pub(super) fn split<'a>(
    payload: &'a [u8],
    fixed: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    if payload.len() < fixed {
        return Err(DecodeError::Truncated {
            what,
            need: fixed,
            have: payload.len(),
        });
    }
    // The kernel pads the family header to 4 bytes before the first attribute.
    let attrs = payload.get(align4(fixed)..).unwrap_or(&[]);
    Ok((&payload[..fixed], attrs))
}

pub(super) fn ne_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_ne_bytes(a)
}

/// A NUL-terminated (or not) attribute string.
pub(super) fn c_str(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// An `NLMSG_ERROR` payload: the positive errno (0 = ACK) and the extended-ack text.
pub(super) fn parse_error(m: &Msg<'_>) -> Result<(i32, Option<String>), DecodeError> {
    let p = m.payload;
    if p.len() < 4 {
        return Err(DecodeError::Truncated {
            what: "nlmsgerr",
            need: 4,
            have: p.len(),
        });
    }
    let errno = (ne_u32(p, 0) as i32).checked_neg().unwrap_or(i32::MAX);
    if m.flags & NLM_F_ACK_TLVS == 0 {
        return Ok((errno, None));
    }
    // The echoed request: its header only with NLM_F_CAPPED, else all of it. A bad
    // length there only loses the message text, never the errno.
    let rest = &p[4..];
    let orig = if m.flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        align4(ne_u32(rest, 0) as usize)
    };
    if orig < NLMSG_HDRLEN {
        return Ok((errno, None));
    }
    let msg = rest.get(orig..).and_then(|tlvs| {
        AttrIter::new(tlvs)
            .map_while(Result::ok)
            .find(|a| a.ty == NLMSGERR_ATTR_MSG)
            .map(|a| c_str(a.data))
    });
    Ok((errno, msg))
}

/// The errno a `NLMSG_DONE` carries (0 when absent: older kernels send none).
pub(super) fn parse_done(m: &Msg<'_>) -> i32 {
    if m.payload.len() < 4 {
        return 0;
    }
    (ne_u32(m.payload, 0) as i32)
        .checked_neg()
        .unwrap_or(i32::MAX)
}
