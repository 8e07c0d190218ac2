//! [`Sealed`]: a process's held secrets as sealed, kept in the binary form the record is
//! stored in, so a read that never opens them (every pending poll) does not turn them into
//! text.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::{SealError, Sealer};

/// Sealed bytes, in the form format 2 and 3 records store them:
///
/// - empty: nothing held (delivered, cancelled);
/// - `b`, key id, `.`, then nonce, ciphertext and tag, raw: what [`Sealer::seal_binary`] makes;
/// - `t`, then text kept as it was (a value not in `kid.base64url` form), so that any text
///   read from an earlier record round-trips.
///
/// Its text form, `kid.base64url` as [`Sealer::seal`] writes it, is what format 1 records
/// (JSON) hold.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

const BINARY: u8 = b'b';
const TEXT: u8 = b't';

impl Sealed {
    /// What [`Sealer::seal_binary`] returned.
    pub fn binary(kid: &str, raw: &[u8]) -> Self {
        let mut out = Vec::with_capacity(2 + kid.len() + raw.len());
        out.push(BINARY);
        out.extend_from_slice(kid.as_bytes());
        out.push(b'.');
        out.extend_from_slice(raw);
        Self(out)
    }

    /// From the text form; a value that is not `kid.base64url` is kept as text.
    pub fn from_text(text: &str) -> Self {
        if text.is_empty() {
            return Self::default();
        }
        if let Some((kid, encoded)) = text.split_once('.') {
            if let Ok(raw) = URL_SAFE_NO_PAD.decode(encoded) {
                return Self::binary(kid, &raw);
            }
        }
        let mut out = Vec::with_capacity(1 + text.len());
        out.push(TEXT);
        out.extend_from_slice(text.as_bytes());
        Self(out)
    }

    /// The stored bytes (the tail of a format 2 or 3 record), checked: `None` when they are in
    /// neither form.
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first() {
            None => Some(Self::default()),
            Some((&BINARY, rest)) => {
                let dot = rest.iter().position(|&b| b == b'.')?;
                std::str::from_utf8(&rest[..dot]).ok()?;
                Some(Self(bytes.to_vec()))
            }
            Some((&TEXT, rest)) => {
                std::str::from_utf8(rest).ok()?;
                Some(Self(bytes.to_vec()))
            }
            Some(_) => None,
        }
    }

    /// The bytes a format 2 or 3 record stores.
    pub fn as_stored(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets the held secrets.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The text form, `kid.base64url` (or the text kept as it was).
    pub fn to_text(&self) -> String {
        match self.parts() {
            Parts::Empty => String::new(),
            Parts::Binary(kid, raw) => {
                let mut out = String::with_capacity(kid.len() + 1 + raw.len().div_ceil(3) * 4);
                out.push_str(kid);
                out.push('.');
                URL_SAFE_NO_PAD.encode_string(raw, &mut out);
                out
            }
            Parts::Text(text) => text.to_owned(),
        }
    }

    /// Opens the sealed bytes with `sealer`, bound to `context`.
    pub fn open(&self, sealer: &Sealer, context: &str) -> Result<Vec<u8>, SealError> {
        match self.parts() {
            Parts::Binary(kid, raw) => sealer.open_binary(kid, raw, context),
            Parts::Text(text) => sealer.open(text, context),
            Parts::Empty => sealer.open("", context),
        }
    }

    fn parts(&self) -> Parts<'_> {
        // Every constructor checks the form; anything else reads as text that opens nowhere.
        match self.0.split_first() {
            None => Parts::Empty,
            Some((&BINARY, rest)) => match rest.iter().position(|&b| b == b'.') {
                Some(dot) => match std::str::from_utf8(&rest[..dot]) {
                    Ok(kid) => Parts::Binary(kid, &rest[dot + 1..]),
                    Err(_) => Parts::Text(""),
                },
                None => Parts::Text(""),
            },
            Some((_, rest)) => Parts::Text(std::str::from_utf8(rest).unwrap_or_default()),
        }
    }
}

enum Parts<'a> {
    Empty,
    Binary(&'a str, &'a [u8]),
    Text(&'a str),
}

impl From<&str> for Sealed {
    fn from(text: &str) -> Self {
        Self::from_text(text)
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_text(), f)
    }
}

/// As text: the form format 1 records hold.
impl Serialize for Sealed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_text())
    }
}

impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(Self::from_text(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_form_round_trips_with_the_text_form() {
        let sealer = Sealer::random();
        let text = sealer.seal(b"refresh-token", "ctx");
        let sealed = Sealed::from_text(&text);
        assert_eq!(sealed.as_stored()[0], BINARY);
        assert_eq!(sealed.to_text(), text);
        assert_eq!(Sealed::from_stored(sealed.as_stored()), Some(sealed.clone()));
        assert_eq!(sealed.open(&sealer, "ctx").unwrap(), b"refresh-token");
        // Serialised (format 1) as the text it was read from.
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Sealed>(&json).unwrap(), sealed);
    }

    #[test]
    fn sealed_binary_opens_like_its_text() {
        let sealer = Sealer::random();
        let (kid, raw) = sealer.seal_binary(b"secrets", "ctx");
        let sealed = Sealed::binary(kid, &raw);
        assert_eq!(sealed.open(&sealer, "ctx").unwrap(), b"secrets");
        assert_eq!(sealer.open(&sealed.to_text(), "ctx").unwrap(), b"secrets");
        assert!(matches!(sealed.open(&sealer, "other"), Err(SealError::Forged)));
    }

    #[test]
    fn text_not_in_the_sealed_form_is_kept_as_text() {
        for text in ["secret", "no-dot", "k1.not base64!", "k.é"] {
            let sealed = Sealed::from_text(text);
            assert_eq!(sealed.as_stored()[0], TEXT);
            assert_eq!(sealed.to_text(), text);
            assert_eq!(Sealed::from_stored(sealed.as_stored()), Some(sealed));
        }
        assert!(Sealed::from_text("").is_empty());
        assert_eq!(Sealed::from_stored(b""), Some(Sealed::default()));
    }

    #[test]
    fn unopenable_sealed_values_are_errors_not_panics() {
        let sealer = Sealer::random();
        let other = Sealer::from_spec("k9:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let (kid, raw) = sealer.seal_binary(b"secrets", "ctx");
        assert!(matches!(
            Sealed::binary(kid, &raw).open(&other, "ctx"),
            Err(SealError::UnknownKey(_))
        ));
        assert!(matches!(
            Sealed::binary(kid, &raw[..5]).open(&sealer, "ctx"),
            Err(SealError::Malformed)
        ));
        let mut flipped = raw.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            Sealed::binary(kid, &flipped).open(&sealer, "ctx"),
            Err(SealError::Forged)
        ));
        for bad in [Sealed::default(), Sealed::from_text("secret")] {
            assert!(matches!(bad.open(&sealer, "ctx"), Err(SealError::Malformed)));
        }
        // Stored bytes in no known form are refused when read.
        for stored in [&b"x"[..], b"bno-dot", b"b\xff.raw", b"t\xff"] {
            assert_eq!(Sealed::from_stored(stored), None, "{stored:?}");
        }
    }
}
