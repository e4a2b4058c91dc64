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
//!
//! Encryption (`encrypt_sync`): AES-256-GCM-SIV (RFC 8452) with a key derived from the
//! same sync key (`HMAC(key, AEAD_LABEL)`), the header as associated data and its tag in
//! place of the HMAC tag. Why GCM-SIV: every node shares one key, and the natural nonce
//! (epoch ‖ sequence) repeats if two nodes, or two runs of one node, draw the same
//! random epoch. With plain GCM a repeated nonce under different plaintexts gives the
//! authentication key away; GCM-SIV then only reveals that two datagrams were
//! identical, and the header (node, epoch, sequence) in the associated data makes even
//! that impossible for different senders. AES-NI and CLMUL make it about as cheap as
//! the HMAC it replaces.

use aes_gcm_siv::{AeadInOut, Aes256GcmSiv, Nonce, Tag};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Length of the truncated tag on the wire.
pub const TAG_LEN: usize = 16;
/// The derivation label of sync datagram keys.
pub const SYNC_PURPOSE: &[u8] = b"hasync sync v1";
const KEY_ID_LABEL: &[u8] = b"hasync key id";
const AEAD_LABEL: &[u8] = b"hasync sync aead v1";
/// The AEAD nonce: a sender's epoch and sequence (see the module doc for why repeats
/// across senders are harmless).
pub type AeadNonce = [u8; 12];

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

/// One derived key, ready to sign and verify, encrypt and decrypt.
#[derive(Clone)]
pub struct SyncKey {
    id: u8,
    mac: HmacSha256,
    aead: Aes256GcmSiv,
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
        let aead = Aes256GcmSiv::new(&hmac(key, AEAD_LABEL).into());
        SyncKey { id, mac, aead }
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

    /// Encrypts `data` in place; the tag authenticates `aad` and `data`.
    pub fn seal(&self, nonce: &AeadNonce, aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = Nonce::from(*nonce);
        // Fails only for messages beyond 2^36 bytes, far above a datagram: the zero tag
        // then simply never verifies.
        match self.aead.encrypt_inout_detached(&nonce, aad, data.into()) {
            Ok(tag) => tag.into(),
            Err(_) => [0; TAG_LEN],
        }
    }

    /// Decrypts `data` in place if `tag` authenticates `aad` and `data`; otherwise
    /// `data` is left as it was (the cipher re-encrypts it) and `false` returned.
    pub fn open(
        &self,
        nonce: &AeadNonce,
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let nonce = Nonce::from(*nonce);
        let tag = Tag::from(*tag);
        self.aead
            .decrypt_inout_detached(&nonce, aad, data.into(), &tag)
            .is_ok()
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

    /// Decrypts `data` in place under the ring key(s) with id `key_id` (see
    /// [`SyncKey::open`]); `false` leaves `data` unchanged.
    pub fn open(
        &self,
        key_id: u8,
        nonce: &AeadNonce,
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        std::iter::once(&self.primary)
            .chain(&self.secondary)
            .filter(|k| k.id == key_id)
            .any(|k| k.open(nonce, aad, data, tag))
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

    #[test]
    fn seal_open_and_tampering() {
        let k = SyncKey::derive(b"s3cret").unwrap();
        let nonce = [7u8; 12];
        let plain = b"the conntrack entry 10.0.0.1:1234 -> 10.0.0.2:80".to_vec();
        let mut data = plain.clone();
        let tag = k.seal(&nonce, b"header", &mut data);
        assert_ne!(data, plain, "encrypted in place");
        // A wrong key, nonce, associated data, ciphertext or tag is refused and leaves
        // the ciphertext as it was.
        let sealed = data.clone();
        let other = SyncKey::derive(b"other").unwrap();
        assert!(!other.open(&nonce, b"header", &mut data, &tag));
        assert_eq!(data, sealed);
        assert!(!k.open(&[8u8; 12], b"header", &mut data, &tag));
        assert!(!k.open(&nonce, b"headex", &mut data, &tag));
        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        assert!(!k.open(&nonce, b"header", &mut data, &bad_tag));
        assert_eq!(data, sealed);
        let mut flipped = sealed.clone();
        flipped[3] ^= 0x80;
        assert!(!k.open(&nonce, b"header", &mut flipped, &tag));
        assert!(k.open(&nonce, b"header", &mut data, &tag));
        assert_eq!(data, plain);
    }

    #[test]
    fn ring_opens_with_either_key_during_rotation() {
        let old = SyncKey::derive(b"old").unwrap();
        let new = SyncKey::derive(b"new").unwrap();
        let ring = KeyRing::new(new.clone(), Some(old.clone()));
        for k in [&old, &new] {
            let mut data = b"payload".to_vec();
            let tag = k.seal(&[1; 12], b"h", &mut data);
            assert!(ring.open(k.id(), &[1; 12], b"h", &mut data, &tag));
            assert_eq!(data, b"payload");
        }
        let mut data = b"payload".to_vec();
        let tag = old.seal(&[1; 12], b"h", &mut data);
        assert!(!KeyRing::new(new.clone(), None).open(old.id(), &[1; 12], b"h", &mut data, &tag));
    }

    #[test]
    fn aead_key_is_independent_of_the_mac_key() {
        // The same bytes sealed and tagged give different 16-byte tags: the two keys
        // are separate derivations.
        let k = SyncKey::derive(b"s3cret").unwrap();
        let mut empty: [u8; 0] = [];
        assert_ne!(k.seal(&[0; 12], b"m", &mut empty), k.tag(b"m"));
    }
}
