//! Randomness, keyed hashes and sealing. Everything secret that the store holds is either a
//! keyed hash (codes, handles, `deferred_auth_id`s: looked up, never read back) or sealed with
//! AES-256-GCM (the upstream tokens, which must be read back), so a dump of the store yields
//! nothing an attacker can use.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::constant_time;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// `bytes` random bytes as unpadded base64url: the alphabet the draft asks of `deferred_code`.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    URL_SAFE_NO_PAD.encode(&buf)
}

fn fill_random(buf: &mut [u8]) {
    // SystemRandom only fails when the OS has no entropy source, which no supported platform
    // lacks; there is nothing sensible to continue with if it does.
    if SystemRandom::new().fill(buf).is_err() {
        panic!("the operating system's random number generator failed");
    }
}

/// Constant-time comparison of two strings (keyed-hash fingerprints, signatures).
pub fn equal_constant_time(a: &str, b: &str) -> bool {
    constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// HMAC-SHA256 key for every keyed hash the proxy stores or logs.
#[derive(Clone)]
pub struct HashKey(Arc<hmac::Key>);

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    pub fn from_base64(encoded: &str) -> Result<Self, String> {
        let bytes = decode_key(encoded)?;
        if bytes.len() < 32 {
            return Err(format!("needs at least 32 bytes, got {}", bytes.len()));
        }
        Ok(Self(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes))))
    }

    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes);
        Self(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// Keyed hash of `value` within `domain` (so a code and an id never share a hash), as
    /// unpadded base64url (43 characters).
    pub fn hash(&self, domain: &str, value: &str) -> String {
        self.hash_joined(domain, &[value])
    }

    /// [`Self::hash`] of `parts` joined by NUL bytes, without joining them first.
    pub fn hash_joined(&self, domain: &str, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(domain.as_bytes());
        for part in parts {
            ctx.update(&[0]);
            ctx.update(part.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
    }

    /// A short keyed-hash prefix to name a secret in logs without revealing it.
    pub fn log_tag(&self, value: &str) -> String {
        let mut full = self.hash("log", value);
        full.truncate(10);
        full
    }
}

/// Sealing of held tokens: AES-256-GCM under a key named by a key id, so keys rotate (the
/// first key seals, every listed key still opens).
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<Vec<(String, LessSafeKey)>>,
}

impl Sealer {
    /// The ids of the keys, the sealing one first (never the keys).
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(kid, _)| kid.as_str()).collect()
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(kid, _)| kid.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with unknown key id {0:?}")]
    UnknownKey(String),
    #[error("sealed value failed authentication")]
    Forged,
}

impl Sealer {
    /// `kid:base64key[,kid:base64key…]`, each key 32 bytes.
    pub fn from_spec(spec: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (kid, encoded) = entry
                .split_once(':')
                .ok_or_else(|| "expected kid:base64key, got an entry without ':'".to_string())?;
            if kid.is_empty() || !kid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("key id {kid:?} must be non-empty [A-Za-z0-9_-]"));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(format!("key id {kid:?} appears twice"));
            }
            let bytes = decode_key(encoded)?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("key {kid:?} must be 32 bytes, got {}", bytes.len()))?;
            keys.push((kid.to_owned(), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err("no keys given".into());
        }
        Ok(Self { keys: Arc::new(keys) })
    }

    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes);
        let key = match UnboundKey::new(&AES_256_GCM, &bytes) {
            Ok(key) => LessSafeKey::new(key),
            Err(_) => unreachable!("32 bytes is an AES-256 key"),
        };
        Self {
            keys: Arc::new(vec![("random".into(), key)]),
        }
    }

    /// Seals `plaintext`, bound to `context` (the record it lives in) as associated data, so
    /// a sealed value copied into another record does not open.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let (kid, raw) = self.seal_binary(plaintext, context);
        format!("{kid}.{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// [`Self::seal`] without the text form: the key id, and nonce, ciphertext and tag.
    pub fn seal_binary(&self, plaintext: &[u8], context: &str) -> (&str, Vec<u8>) {
        let (kid, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let Ok(tag) = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut buf[NONCE_LEN..],
        ) else {
            unreachable!("AES-GCM sealing of an in-memory buffer cannot fail");
        };
        buf.extend_from_slice(tag.as_ref());
        (kid, buf)
    }

    /// Opens the text form `kid.base64url` that [`Self::seal`] writes.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SealError> {
        let (kid, encoded) = sealed.split_once('.').ok_or(SealError::Malformed)?;
        let key = self.key(kid)?;
        let raw = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| SealError::Malformed)?;
        Self::open_with(key, &raw, context)
    }

    /// Opens the binary form [`Self::seal_binary`] returns.
    pub fn open_binary(&self, kid: &str, raw: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        Self::open_with(self.key(kid)?, raw, context)
    }

    fn key(&self, kid: &str) -> Result<&LessSafeKey, SealError> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, key)| key)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))
    }

    fn open_with(key: &LessSafeKey, raw: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        if raw.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut buf = ciphertext.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SealError::Forged)?;
        Ok(plain.to_vec())
    }
}

fn decode_key(encoded: &str) -> Result<Vec<u8>, String> {
    let trimmed = encoded.trim();
    STANDARD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed.trim_end_matches('=')))
        .map_err(|_| "not valid base64".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_use_the_base64url_alphabet_and_differ() {
        let a = random_token(20);
        let b = random_token(20);
        assert_ne!(a, b);
        assert_eq!(a.len(), 27);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn keyed_hashes_separate_domains() {
        let key = HashKey::random();
        assert_eq!(key.hash("code", "x"), key.hash("code", "x"));
        assert_ne!(key.hash("code", "x"), key.hash("auth", "x"));
        assert_ne!(HashKey::random().hash("code", "x"), key.hash("code", "x"));
    }

    #[test]
    fn sealed_values_open_only_in_their_context_and_after_rotation() {
        let k1 = STANDARD.encode([1u8; 32]);
        let k2 = STANDARD.encode([2u8; 32]);
        let old = Sealer::from_spec(&format!("k1:{k1}")).unwrap();
        let sealed = old.seal(b"refresh-token", "proc-a");
        assert_eq!(old.open(&sealed, "proc-a").unwrap(), b"refresh-token");
        assert!(matches!(old.open(&sealed, "proc-b"), Err(SealError::Forged)));

        let rotated = Sealer::from_spec(&format!("k2:{k2},k1:{k1}")).unwrap();
        assert_eq!(rotated.open(&sealed, "proc-a").unwrap(), b"refresh-token");
        assert!(rotated.seal(b"x", "c").starts_with("k2."));
        let only_new = Sealer::from_spec(&format!("k2:{k2}")).unwrap();
        assert!(matches!(
            only_new.open(&sealed, "proc-a"),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn bad_key_specs_are_refused() {
        assert!(Sealer::from_spec("").is_err());
        assert!(Sealer::from_spec("nokid").is_err());
        assert!(Sealer::from_spec(&format!("a:{}", STANDARD.encode([0u8; 16]))).is_err());
        assert!(HashKey::from_base64(&STANDARD.encode([0u8; 8])).is_err());
    }
}
