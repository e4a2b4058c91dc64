//! Datagram authentication: HMAC-SHA256 truncated to 128 bits, per-purpose keys derived
//! from the configured secret, and a ring of up to two keys for rotation.
//!
//! Derivation: `key = HMAC-SHA256(secret, purpose)`. HMAC is a PRF keyed by the secret,
//! so keys for different purposes ([`SYNC_PURPOSE`], the heartbeat's own label) are
//! independent: a heartbeat packet can never verify as a sync datagram or vice versa.
//! Each derived key has a one-byte id (first byte of `HMAC(key, "hasync key id")`)
//! carried in the header, so a receiver only computes tags with the key(s) the sender
//! claims to have used; an id collision between the two ring keys (1 in 256) just means
//! both are tried.
//!
//! Cost: the keyed HMAC state (inner and outer pads already absorbed) is computed once
//! per key and cloned per datagram, so a tag costs the SHA-256 compression of the
//! datagram plus two blocks.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Length of the truncated tag on the wire.
pub const TAG_LEN: usize = 16;
/// The derivation label of sync datagram keys.
pub const SYNC_PURPOSE: &[u8] = b"hasync sync v1";
const KEY_ID_LABEL: &[u8] = b"hasync key id";

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the secret key is empty")]
    Empty,
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this never fails; the fallback keeps the
    // function total without an `expect`.
    let mut out = [0u8; 32];
    if let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) {
        mac.update(msg);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// Derives the 256-bit key for `purpose` from the configured secret.
pub fn derive_key(secret: &[u8], purpose: &[u8]) -> Result<[u8; 32], KeyError> {
    if secret.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(hmac(secret, purpose))
}

/// One derived key, ready to sign and verify.
#[derive(Clone)]
pub struct SyncKey {
    id: u8,
    mac: HmacSha256,
}

impl std::fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SyncKey {
    /// The sync key for the configured `secret_key`.
    pub fn derive(secret: &[u8]) -> Result<SyncKey, KeyError> {
        Ok(SyncKey::from_key(&derive_key(secret, SYNC_PURPOSE)?))
    }

    /// A key from already-derived key material.
    pub fn from_key(key: &[u8; 32]) -> SyncKey {
        let id = hmac(key, KEY_ID_LABEL)[0];
        // HMAC zero-pads keys shorter than the block to the block size, so the padded
        // block key is the same key (and `new` is infallible, unlike `new_from_slice`).
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let mac = <HmacSha256 as KeyInit>::new(&block.into());
        SyncKey { id, mac }
    }

    /// The key id carried in the header.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The truncated tag over `msg`.
    pub fn tag(&self, msg: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(msg);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full[..TAG_LEN]);
        out
    }

    /// Constant-time check of `tag` over `msg`.
    pub fn verify(&self, msg: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        bool::from(self.tag(msg).ct_eq(tag))
    }
}

/// The keys a node accepts: the first signs and verifies, the second (during a key
/// rotation) only verifies.
#[derive(Clone, Debug)]
pub struct KeyRing {
    primary: SyncKey,
    secondary: Option<SyncKey>,
}

impl KeyRing {
    pub fn new(primary: SyncKey, secondary: Option<SyncKey>) -> KeyRing {
        KeyRing { primary, secondary }
    }

    /// A ring from configured secrets: the first is used to send.
    pub fn from_secrets(primary: &[u8], secondary: Option<&[u8]>) -> Result<KeyRing, KeyError> {
        Ok(KeyRing {
            primary: SyncKey::derive(primary)?,
            secondary: secondary.map(SyncKey::derive).transpose()?,
        })
    }

    /// The signing key.
    pub fn primary(&self) -> &SyncKey {
        &self.primary
    }

    pub fn secondary(&self) -> Option<&SyncKey> {
        self.secondary.as_ref()
    }

    /// Whether `tag` verifies over `msg` under a ring key whose id is `key_id`.
    pub fn verify(&self, key_id: u8, msg: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        let mut ok = false;
        for key in std::iter::once(&self.primary).chain(&self.secondary) {
            if key.id == key_id {
                ok |= key.verify(msg, tag);
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_and_secrets_give_different_keys() {
        let a = derive_key(b"s3cret", SYNC_PURPOSE).unwrap();
        let b = derive_key(b"s3cret", b"hasync heartbeat v1").unwrap();
        let c = derive_key(b"s3cret!", SYNC_PURPOSE).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(derive_key(b"", SYNC_PURPOSE), Err(KeyError::Empty));
        // Deterministic.
        assert_eq!(a, derive_key(b"s3cret", SYNC_PURPOSE).unwrap());
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        let full = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            full[..16],
            [
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7
            ]
        );
    }

    #[test]
    fn block_padded_key_is_the_same_key() {
        let k = derive_key(b"pad", SYNC_PURPOSE).unwrap();
        assert_eq!(
            SyncKey::from_key(&k).tag(b"msg")[..],
            hmac(&k, b"msg")[..16]
        );
    }

    #[test]
    fn sign_verify_and_rotation() {
        let old = SyncKey::derive(b"old").unwrap();
        let new = SyncKey::derive(b"new").unwrap();
        let msg = b"hello";
        let t_old = old.tag(msg);
        let t_new = new.tag(msg);
        assert!(old.verify(msg, &t_old));
        assert!(!old.verify(msg, &t_new));
        assert!(!old.verify(b"hellp", &t_old));

        let ring = KeyRing::new(new.clone(), Some(old.clone()));
        assert!(ring.verify(new.id(), msg, &t_new));
        assert!(ring.verify(old.id(), msg, &t_old));
        let only_new = KeyRing::new(new.clone(), None);
        assert!(!only_new.verify(old.id(), msg, &t_old));
        // The right tag under the wrong id is refused (unless the ids collide).
        if old.id() != new.id() {
            assert!(!ring.verify(old.id(), msg, &t_new));
        }
        assert!(!format!("{ring:?}").contains("mac"));
    }
}
