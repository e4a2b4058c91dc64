//! Payloads of the consistency-check messages (table digest and bucket repair).
//!
//! ```text
//! type              payload (big-endian)                                       count
//! 7 DIGEST_REQUEST  target u32, request_id u32, buckets u16, reserved u16 (12 B) 0
//! 8 DIGEST          request_id u32, buckets u16, first u16, entries u64 (16 B),
//!                   then count × hash u64 (buckets first..first+count)         hashes
//! 9 REPAIR_REQUEST  target u32, request_id u32, buckets u16, reserved u16,
//!                   bitmap (buckets/8 bytes, at least 1)                       0
//! 10 REPAIR_DONE    requester u32, request_id u32, buckets u16, reserved u16,
//!                   records u64, bitmap                                        0
//! ```
//!
//! `buckets` is a power of two in `1..=MAX_BUCKETS`. Bitmaps are LSB first: bucket `b`
//! is bit `b % 8` of byte `b / 8`; bits past `buckets` must be zero. A digest of 256
//! buckets is 2 KiB of hashes, so it travels in chunks (`first`, `count`), each a
//! sequenced datagram like any other (lost chunks are NACKed). 2048 buckets keep a
//! bitmap at 256 bytes, which fits the smallest configurable datagram.

use super::message::{err, u32_at, u64_at, zero};
use super::record::PayloadError;

/// Largest bucket count of a digest.
pub const MAX_BUCKETS: u16 = 2048;
pub(crate) const DIGEST_FIXED: usize = 16;
pub(crate) const HASH_LEN: usize = 8;
const REQUEST_FIXED: usize = 12;
const DONE_FIXED: usize = 20;

/// Whether `n` is a valid bucket count.
pub fn valid_buckets(n: u16) -> bool {
    n.is_power_of_two() && n <= MAX_BUCKETS
}

/// Bitmap length for `buckets` buckets.
pub fn bitmap_len(buckets: u16) -> usize {
    usize::from(buckets).div_ceil(8)
}

/// DIGEST_REQUEST payload: "send me a digest of your table".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestRequest {
    /// The node whose table is wanted; 0 asks every peer.
    pub target: u32,
    pub request_id: u32,
    pub buckets: u16,
}

/// One DIGEST chunk: hashes of buckets `first..first + len()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestChunk<'a> {
    /// The request it answers (0: unsolicited, e.g. after a capture overrun).
    pub request_id: u32,
    pub buckets: u16,
    pub first: u16,
    /// Entries the whole digest covers (informational, the same in every chunk).
    pub entries: u64,
    hashes: &'a [u8],
}

impl<'a> DigestChunk<'a> {
    pub fn len(&self) -> usize {
        self.hashes.len() / HASH_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn hashes(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.hashes.chunks_exact(HASH_LEN).map(u64_at)
    }
}

/// REPAIR_REQUEST payload: "send me the full content of these buckets".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairRequest<'a> {
    /// The node whose entries are wanted; 0 asks every peer.
    pub target: u32,
    pub request_id: u32,
    pub buckets: u16,
    bitmap: &'a [u8],
}

impl<'a> RepairRequest<'a> {
    /// The validated bitmap (see [`crate::sync::digest::BucketSet::from_bitmap`]).
    pub fn bitmap(&self) -> &'a [u8] {
        self.bitmap
    }
}

/// REPAIR_DONE payload: the content of the listed buckets was sent in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairDone<'a> {
    /// The node that asked.
    pub requester: u32,
    pub request_id: u32,
    pub buckets: u16,
    /// Entries sent for these buckets.
    pub records: u64,
    bitmap: &'a [u8],
}

impl<'a> RepairDone<'a> {
    pub fn bitmap(&self) -> &'a [u8] {
        self.bitmap
    }
}

fn no_count(count: u16) -> Result<(), PayloadError> {
    if count != 0 {
        return Err(err(0, "count must be 0 for this message type"));
    }
    Ok(())
}

fn buckets_at(p: &[u8], at: usize) -> Result<u16, PayloadError> {
    let n = u16::from_be_bytes([p[at], p[at + 1]]);
    if !valid_buckets(n) {
        return Err(err(at, "bucket count not a power of two up to 2048"));
    }
    Ok(n)
}

/// Checks a bitmap of `buckets` bits at `p[at..]`, which must end the payload.
fn bitmap(p: &[u8], at: usize, buckets: u16) -> Result<&[u8], PayloadError> {
    let want = at + bitmap_len(buckets);
    if p.len() != want {
        return Err(err(
            p.len().min(want),
            "bitmap length does not match bucket count",
        ));
    }
    let b = &p[at..];
    let used = usize::from(buckets) % 8;
    if used != 0 && b[b.len() - 1] >> used != 0 {
        return Err(err(want - 1, "bitmap bits past the bucket count"));
    }
    Ok(b)
}

pub(crate) fn decode_digest_request(count: u16, p: &[u8]) -> Result<DigestRequest, PayloadError> {
    no_count(count)?;
    if p.len() != REQUEST_FIXED {
        return Err(err(p.len().min(REQUEST_FIXED), "wrong payload length"));
    }
    let buckets = buckets_at(p, 8)?;
    zero(p, 10, 2)?;
    Ok(DigestRequest {
        target: u32_at(p, 0),
        request_id: u32_at(p, 4),
        buckets,
    })
}

pub(crate) fn decode_digest(count: u16, p: &[u8]) -> Result<DigestChunk<'_>, PayloadError> {
    let want = DIGEST_FIXED + usize::from(count) * HASH_LEN;
    if p.len() != want {
        return Err(err(p.len().min(want), "DIGEST length does not match count"));
    }
    let buckets = buckets_at(p, 4)?;
    let first = u16::from_be_bytes([p[6], p[7]]);
    if count == 0 || u32::from(first) + u32::from(count) > u32::from(buckets) {
        return Err(err(6, "DIGEST chunk outside the bucket range"));
    }
    Ok(DigestChunk {
        request_id: u32_at(p, 0),
        buckets,
        first,
        entries: u64_at(&p[8..]),
        hashes: &p[DIGEST_FIXED..],
    })
}

pub(crate) fn decode_repair_request(
    count: u16,
    p: &[u8],
) -> Result<RepairRequest<'_>, PayloadError> {
    no_count(count)?;
    if p.len() < REQUEST_FIXED {
        return Err(err(p.len(), "truncated REPAIR_REQUEST"));
    }
    let buckets = buckets_at(p, 8)?;
    zero(p, 10, 2)?;
    Ok(RepairRequest {
        target: u32_at(p, 0),
        request_id: u32_at(p, 4),
        buckets,
        bitmap: bitmap(p, REQUEST_FIXED, buckets)?,
    })
}

pub(crate) fn decode_repair_done(count: u16, p: &[u8]) -> Result<RepairDone<'_>, PayloadError> {
    no_count(count)?;
    if p.len() < DONE_FIXED {
        return Err(err(p.len(), "truncated REPAIR_DONE"));
    }
    let buckets = buckets_at(p, 8)?;
    zero(p, 10, 2)?;
    Ok(RepairDone {
        requester: u32_at(p, 0),
        request_id: u32_at(p, 4),
        buckets,
        records: u64_at(&p[12..]),
        bitmap: bitmap(p, DONE_FIXED, buckets)?,
    })
}

fn put(out: &mut [u8], at: usize, b: &[u8]) {
    out[at..at + b.len()].copy_from_slice(b);
}

pub(crate) fn encode_digest_request(r: &DigestRequest, out: &mut [u8]) -> (usize, u16) {
    put(out, 0, &r.target.to_be_bytes());
    put(out, 4, &r.request_id.to_be_bytes());
    put(out, 8, &r.buckets.to_be_bytes());
    put(out, 10, &[0, 0]);
    (REQUEST_FIXED, 0)
}

/// How many hashes of a DIGEST chunk fit in `room` payload bytes.
pub fn digest_room(room: usize) -> usize {
    room.saturating_sub(DIGEST_FIXED) / HASH_LEN
}

/// Writes as many of `hashes` as fit (and as the header count allows).
pub(crate) fn encode_digest(
    request_id: u32,
    buckets: u16,
    first: u16,
    entries: u64,
    hashes: &[u64],
    out: &mut [u8],
) -> (usize, u16) {
    put(out, 0, &request_id.to_be_bytes());
    put(out, 4, &buckets.to_be_bytes());
    put(out, 6, &first.to_be_bytes());
    put(out, 8, &entries.to_be_bytes());
    let n = hashes
        .len()
        .min(digest_room(out.len()))
        .min(usize::from(u16::MAX));
    for (i, h) in hashes[..n].iter().enumerate() {
        put(out, DIGEST_FIXED + i * HASH_LEN, &h.to_be_bytes());
    }
    (DIGEST_FIXED + n * HASH_LEN, n as u16)
}

/// REPAIR_REQUEST / REPAIR_DONE: `fixed` bytes already written, then the bitmap.
/// `out` must hold the bitmap (at most 256 bytes, always within a datagram's payload).
pub(crate) fn encode_repair(
    a: u32,
    request_id: u32,
    buckets: u16,
    records: Option<u64>,
    bitmap: &[u8],
    out: &mut [u8],
) -> (usize, u16) {
    put(out, 0, &a.to_be_bytes());
    put(out, 4, &request_id.to_be_bytes());
    put(out, 8, &buckets.to_be_bytes());
    put(out, 10, &[0, 0]);
    let at = match records {
        Some(r) => {
            put(out, 12, &r.to_be_bytes());
            DONE_FIXED
        }
        None => REQUEST_FIXED,
    };
    put(out, at, bitmap);
    (at + bitmap.len(), 0)
}

/// A set of bucket ids of a digest with `buckets` buckets, kept as the wire bitmap.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BucketSet {
    buckets: u16,
    bits: Vec<u8>,
}

impl BucketSet {
    /// The empty set (`None` if `buckets` is not a valid bucket count).
    pub fn new(buckets: u16) -> Option<BucketSet> {
        valid_buckets(buckets).then(|| BucketSet {
            buckets,
            bits: vec![0; bitmap_len(buckets)],
        })
    }

    /// The empty set for a count known to be valid (a digest's own).
    pub(crate) fn sized(buckets: u16) -> BucketSet {
        BucketSet {
            buckets,
            bits: vec![0; bitmap_len(buckets)],
        }
    }

    /// Every bucket: a full repair (all entries re-sent, stale ones deleted).
    pub fn all(buckets: u16) -> Option<BucketSet> {
        let mut s = BucketSet::new(buckets)?;
        for b in 0..buckets {
            s.insert(b);
        }
        Some(s)
    }

    /// From ids (those `>= buckets` are ignored).
    pub fn from_ids(buckets: u16, ids: impl IntoIterator<Item = u16>) -> Option<BucketSet> {
        let mut s = BucketSet::new(buckets)?;
        for b in ids {
            s.insert(b);
        }
        Some(s)
    }

    /// From a decoded (validated) bitmap.
    pub fn from_bitmap(buckets: u16, bitmap: &[u8]) -> Option<BucketSet> {
        let mut s = BucketSet::new(buckets)?;
        if bitmap.len() != s.bits.len() {
            return None;
        }
        s.bits.copy_from_slice(bitmap);
        // Bits past the count never count (decode already refuses them).
        let used = usize::from(buckets) % 8;
        if used != 0
            && let Some(last) = s.bits.last_mut()
        {
            *last &= (1u8 << used) - 1;
        }
        Some(s)
    }

    pub fn buckets(&self) -> u16 {
        self.buckets
    }

    pub fn bitmap(&self) -> &[u8] {
        &self.bits
    }

    pub fn insert(&mut self, b: u16) {
        if b < self.buckets {
            self.bits[usize::from(b / 8)] |= 1 << (b % 8);
        }
    }

    pub fn contains(&self, b: u16) -> bool {
        b < self.buckets && self.bits[usize::from(b / 8)] & (1 << (b % 8)) != 0
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&b| b == 0)
    }

    /// Bucket ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.buckets).filter(|&b| self.contains(b))
    }
}
