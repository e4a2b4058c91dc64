//! Version negotiation.
//!
//! Every sender announces the range of protocol versions it speaks and its feature bits
//! in a HELLO: when it starts, every `hello_interval` after that, and whenever the
//! driver asks (a new or restarted peer appeared). A receiver that gets a HELLO
//! negotiates with its own range: overlapping ranges agree on the highest common
//! version and the common features; disjoint ranges make the peer *incompatible*, and
//! its datagrams are refused (counted as [`Reject::Incompatible`]) until a HELLO with
//! an overlapping range arrives. Logged once per peer epoch, at error level.
//!
//! Framing: the HELLO header and payload are frozen, and a HELLO is always sent with a
//! version-1 header, so every version can read every HELLO. A future v2 build speaks
//! `1..=2`, accepts header versions 1 and 2 in `Datagram::parse`, and sends its DATA
//! with the version its peer agreed to ([`crate::sync::Peer::version`]). Only version
//! 1 exists today, so nothing else depends on the agreed version yet.
//!
//! [`Reject::Incompatible`]: crate::sync::Reject::Incompatible

use super::wire::{Hello, VERSION};

/// Oldest protocol version this build speaks.
pub const MIN_VERSION: u8 = 1;
/// Newest protocol version this build speaks.
pub const MAX_VERSION: u8 = VERSION;
/// The peer decodes expectation records (ops 4/5, `wire::expect`) in DATA payloads.
/// A receiver without it rejects such a datagram whole (unknown record op), so a
/// sender puts expectation records on the wire only once every peer that sent a
/// HELLO agreed to this bit.
pub const FEATURE_EXPECT: u32 = 1 << 0;
/// Feature bits this build offers. Advertised whatever the local configuration: a node
/// with `expect_sync = false` still decodes expectation records (and ignores them).
pub const FEATURES: u32 = FEATURE_EXPECT;

/// This build's HELLO.
pub fn ours() -> Hello {
    Hello {
        min_version: MIN_VERSION,
        max_version: MAX_VERSION,
        features: FEATURES,
    }
}

/// What two compatible nodes speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The highest version both speak.
    pub version: u8,
    /// Features both offer.
    pub features: u32,
}

/// Two version ranges without a common version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no common protocol version: this node speaks {ours_min}..={ours_max}, the peer {theirs_min}..={theirs_max}"
)]
pub struct Incompatible {
    pub ours_min: u8,
    pub ours_max: u8,
    pub theirs_min: u8,
    pub theirs_max: u8,
}

/// The highest common version and the common features, or why there is none.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<Agreed, Incompatible> {
    let lo = ours.min_version.max(theirs.min_version);
    let hi = ours.max_version.min(theirs.max_version);
    if lo > hi {
        return Err(Incompatible {
            ours_min: ours.min_version,
            ours_max: ours.max_version,
            theirs_min: theirs.min_version,
            theirs_max: theirs.max_version,
        });
    }
    Ok(Agreed {
        version: hi,
        features: ours.features & theirs.features,
    })
}

/// What we know of a peer's versions (for status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerVersion {
    /// No HELLO from its current epoch yet (its datagrams are accepted: their header
    /// version is one we speak).
    #[default]
    Unknown,
    Agreed(Agreed),
    /// Its datagrams are refused.
    Incompatible(Incompatible),
}

impl PeerVersion {
    pub fn is_incompatible(&self) -> bool {
        matches!(self, PeerVersion::Incompatible(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(min_version: u8, max_version: u8, features: u32) -> Hello {
        Hello {
            min_version,
            max_version,
            features,
        }
    }

    #[test]
    fn overlapping_ranges_agree_on_the_highest_common_version() {
        assert_eq!(
            negotiate(&ours(), &ours()),
            Ok(Agreed {
                version: 1,
                features: FEATURE_EXPECT
            })
        );
        // A future v3 build (speaking 1..=3) with a v1 build: they agree on 1.
        assert_eq!(negotiate(&h(1, 3, 0b11), &h(1, 1, 0)).unwrap().version, 1);
        // 2..=4 with 1..=3: 3, and only common features.
        assert_eq!(
            negotiate(&h(2, 4, 0b0110), &h(1, 3, 0b1100)),
            Ok(Agreed {
                version: 3,
                features: 0b0100
            })
        );
        // Symmetric.
        assert_eq!(
            negotiate(&h(1, 3, 0b1100), &h(2, 4, 0b0110)),
            negotiate(&h(2, 4, 0b0110), &h(1, 3, 0b1100))
        );
        assert_eq!(negotiate(&h(3, 3, 0), &h(1, 3, 0)).unwrap().version, 3);
    }

    #[test]
    fn disjoint_ranges_refuse() {
        let e = negotiate(&ours(), &h(2, 5, 0)).unwrap_err();
        assert_eq!(
            e,
            Incompatible {
                ours_min: 1,
                ours_max: 1,
                theirs_min: 2,
                theirs_max: 5
            }
        );
        assert_eq!(
            e.to_string(),
            "no common protocol version: this node speaks 1..=1, the peer 2..=5"
        );
        assert!(negotiate(&h(4, 6, 0), &h(1, 3, 0)).is_err());
        assert!(negotiate(&h(1, 3, 0), &h(4, 6, 0)).is_err());
    }
}
