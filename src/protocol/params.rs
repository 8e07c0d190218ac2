//! Strict parsing of `application/x-www-form-urlencoded` bodies and query strings for the DTR
//! endpoints: a parameter given twice is refused (RFC 6749 §3.1), an empty value counts as
//! absent (RFC 6749 §3.1), invalid UTF-8 is refused rather than silently replaced. JSON
//! bodies follow the same rules: a key given twice is refused, not silently overwritten.

use std::fmt;

use percent_encoding::percent_decode;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::errors::OAuthError;

/// Longest single value accepted; far above any legitimate parameter (a signed assertion is
/// a few KiB) and far below what would let a client make us hash megabytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter {0} is given more than once")]
    Repeated(String),
    #[error("a parameter is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    #[error("parameter {0} is too long")]
    TooLong(String),
    #[error("a parameter name is too long")]
    NameTooLong,
    #[error("the JSON body must be an object of string values")]
    NotStringObject,
}

impl From<ParamError> for OAuthError {
    fn from(e: ParamError) -> Self {
        OAuthError::invalid_request(e.to_string())
    }
}

/// One name or value of an `application/x-www-form-urlencoded` body (WHATWG URL): `+` is a
/// space, then percent-decoding; the result must be UTF-8.
pub fn decode(raw: &[u8]) -> Result<String, ParamError> {
    let decoded = match (raw.contains(&b'+'), raw.contains(&b'%')) {
        // Most values (ids, codes, secrets) need no decoding: one copy.
        (false, false) => {
            return std::str::from_utf8(raw)
                .map(str::to_owned)
                .map_err(|_| ParamError::NotUtf8)
        }
        (false, true) => decoded_bytes(raw),
        // '+' is a space in this encoding (WHATWG URL, application/x-www-form-urlencoded).
        (true, _) => {
            let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
            decoded_bytes(&spaced)
        }
    };
    String::from_utf8(decoded).map_err(|_| ParamError::NotUtf8)
}

/// Percent-decoded bytes, in a buffer sized once (decoding never lengthens).
fn decoded_bytes(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    out.extend(percent_decode(raw));
    out
}

impl Params {
    pub fn parse(input: &[u8]) -> Result<Self, ParamError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(i) => (&piece[..i], &piece[i + 1..]),
                None => (piece, &b""[..]),
            };
            Self::push(&mut pairs, decode(name)?, decode(value)?)?;
        }
        Ok(Self { pairs })
    }

    /// A JSON object of string values (the cancellation endpoint accepts JSON too). Every
    /// member is seen, so a key given twice is refused like a repeated form parameter.
    pub fn parse_json(input: &[u8]) -> Result<Self, ParamError> {
        let members: JsonMembers = serde_json::from_slice(input).map_err(|_| ParamError::NotStringObject)?;
        let mut pairs = Vec::with_capacity(members.0.len());
        for (name, value) in members.0 {
            Self::push(&mut pairs, name, value)?;
        }
        Ok(Self { pairs })
    }

    fn push(pairs: &mut Vec<(String, String)>, name: String, value: String) -> Result<(), ParamError> {
        if name.len() > MAX_VALUE_LEN {
            return Err(ParamError::NameTooLong);
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(ParamError::TooLong(name));
        }
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(ParamError::Repeated(name));
        }
        pairs.push((name, value));
        Ok(())
    }

    /// "Parameters sent without a value MUST be treated as if they were omitted" (§3.1): an
    /// empty value reads as absent (but still counts when spotting a repeated parameter).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// The members of a JSON object of strings, in order and with repeats: serde_json's own maps
/// keep only the last of two equal keys, which would hide a repeated parameter.
struct JsonMembers(Vec<(String, String)>);

impl<'de> Deserialize<'de> for JsonMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = JsonMembers;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonMembers, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, String>()? {
                    members.push(member);
                }
                Ok(JsonMembers(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

/// Serialises pairs as `application/x-www-form-urlencoded`.
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent_and_drops_empty_values() {
        let p = Params::parse(b"a=1+2&b=%C3%A9&c=&d").unwrap();
        assert_eq!(p.get("a"), Some("1 2"));
        assert_eq!(p.get("b"), Some("é"));
        assert_eq!(p.get("c"), None);
        assert_eq!(p.get("d"), None);
    }

    #[test]
    fn repeated_parameter_is_refused() {
        assert_eq!(Params::parse(b"a=1&a=2"), Err(ParamError::Repeated("a".into())));
        assert_eq!(Params::parse(b"a=&a=2"), Err(ParamError::Repeated("a".into())));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(Params::parse(b"a=%FF"), Err(ParamError::NotUtf8));
    }

    #[test]
    fn json_objects_of_strings() {
        let p = Params::parse_json(br#"{"deferred_auth_id":"x"}"#).unwrap();
        assert_eq!(p.get("deferred_auth_id"), Some("x"));
        assert!(Params::parse_json(br#"{"a":1}"#).is_err());
        assert!(Params::parse_json(b"[1]").is_err());
    }

    #[test]
    fn json_key_given_twice_is_refused() {
        assert_eq!(
            Params::parse_json(br#"{"deferred_auth_id":"a","deferred_auth_id":"b"}"#),
            Err(ParamError::Repeated("deferred_auth_id".into()))
        );
        // The same key spelled with an escape is the same key.
        assert_eq!(
            Params::parse_json(br#"{"a":"1","\u0061":"2"}"#),
            Err(ParamError::Repeated("a".into()))
        );
    }

    #[test]
    fn json_that_is_not_an_object_of_strings_is_refused() {
        for body in [
            &b"[1]"[..],
            b"\"x\"",
            b"null",
            b"{",
            b"{\"a\":null}",
            b"{\"a\":{\"b\":\"c\"}}",
            b"{\"a\":[\"b\"]}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":\"b\"} trailing",
        ] {
            assert_eq!(
                Params::parse_json(body),
                Err(ParamError::NotStringObject),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn over_long_values_and_names_are_refused() {
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(
            Params::parse(format!("a={long}").as_bytes()),
            Err(ParamError::TooLong("a".into()))
        );
        assert_eq!(
            Params::parse(format!("{long}=1").as_bytes()),
            Err(ParamError::NameTooLong)
        );
        assert_eq!(
            Params::parse_json(format!("{{\"a\":\"{long}\"}}").as_bytes()),
            Err(ParamError::TooLong("a".into()))
        );
        let exact = "x".repeat(MAX_VALUE_LEN);
        assert!(Params::parse(format!("a={exact}").as_bytes()).is_ok());
    }

    #[test]
    fn raw_invalid_utf8_is_refused() {
        assert_eq!(Params::parse(b"a=\xff\xfe"), Err(ParamError::NotUtf8));
        assert_eq!(Params::parse(b"\xc3=1"), Err(ParamError::NotUtf8));
    }

    #[test]
    fn encode_round_trips() {
        let s = encode([("a", "1 2&3"), ("b", "é")]);
        let p = Params::parse(s.as_bytes()).unwrap();
        assert_eq!(p.get("a"), Some("1 2&3"));
        assert_eq!(p.get("b"), Some("é"));
    }
}

#[cfg(test)]
mod proptests {
    use std::collections::BTreeMap;

    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    /// Bytes weighted towards the characters the parser treats specially, so arbitrary input
    /// reaches percent-decoding, `+`, empty pieces and repeated names often.
    fn form_bytes() -> impl Strategy<Value = Vec<u8>> {
        vec(prop_oneof![any::<u8>(), select(b"&=%+aA0F9".to_vec())], 0..256)
    }

    /// Every byte as `%XX`: a spelling of `name` that differs from what `encode` writes.
    fn percent_encode_all(name: &str) -> String {
        name.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    fn assert_invariants(params: &Params) {
        for (i, (name, value)) in params.pairs.iter().enumerate() {
            assert!(name.len() <= MAX_VALUE_LEN && value.len() <= MAX_VALUE_LEN);
            assert!(
                params.pairs[..i].iter().all(|(earlier, _)| earlier != name),
                "{name} accepted twice"
            );
        }
    }

    fn assert_same_params(params: &Params, expected: &BTreeMap<String, String>) {
        for (name, value) in expected {
            let want = (!value.is_empty()).then_some(value.as_str());
            assert_eq!(params.get(name), want, "parameter {name:?}");
        }
        assert_eq!(
            params.iter().count(),
            expected.values().filter(|v| !v.is_empty()).count()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_and_keeps_its_invariants(input in form_bytes()) {
            if let Ok(params) = Params::parse(&input) {
                assert_invariants(&params);
            }
        }

        /// What is accepted reads as the WHATWG parser (the `url` crate's) reads it, pair by
        /// pair, empty values included.
        #[test]
        fn parse_agrees_with_the_whatwg_parser(input in form_bytes()) {
            if let Ok(params) = Params::parse(&input) {
                let theirs: Vec<(String, String)> =
                    form_urlencoded::parse(&input).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
                prop_assert_eq!(params.pairs, theirs);
            }
        }

        #[test]
        fn encode_then_parse_round_trips(expected in btree_map(any::<String>(), any::<String>(), 0..8)) {
            let encoded = encode(expected.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            let params = Params::parse(encoded.as_bytes()).unwrap();
            assert_same_params(&params, &expected);
        }

        #[test]
        fn a_name_given_twice_is_refused(
            others in btree_map("[a-z_]{1,12}", ".+", 0..6),
            name in any::<String>(),
            first in ".+",
            second in ".+",
            position in any::<prop::sample::Index>(),
            spell_differently in any::<bool>(),
        ) {
            let mut pieces: Vec<String> = others
                .iter()
                .filter(|(other, _)| **other != name)
                .map(|(n, v)| encode([(n.as_str(), v.as_str())]))
                .collect();
            pieces.push(encode([(name.as_str(), first.as_str())]));
            let again = if spell_differently {
                format!("{}={}", percent_encode_all(&name), encode([("", second.as_str())]).trim_start_matches('='))
            } else {
                encode([(name.as_str(), second.as_str())])
            };
            pieces.insert(position.index(pieces.len() + 1), again);
            let input = pieces.join("&");
            prop_assert_eq!(Params::parse(input.as_bytes()), Err(ParamError::Repeated(name)));
        }

        #[test]
        fn a_value_over_the_limit_is_refused(name in "[a-z_]{1,12}", unit in any::<char>(), extra in 0usize..64) {
            let value: String = std::iter::repeat_n(unit, MAX_VALUE_LEN / unit.len_utf8() + 1 + extra).collect();
            prop_assert!(value.len() > MAX_VALUE_LEN);
            let form = encode([(name.as_str(), value.as_str())]);
            prop_assert_eq!(Params::parse(form.as_bytes()), Err(ParamError::TooLong(name.clone())));
            let json = serde_json::to_vec(&serde_json::json!({ name.clone(): value })).unwrap();
            prop_assert_eq!(Params::parse_json(&json), Err(ParamError::TooLong(name)));
        }

        #[test]
        fn parse_json_never_panics_and_keeps_its_invariants(input in vec(any::<u8>(), 0..256)) {
            if let Ok(params) = Params::parse_json(&input) {
                assert_invariants(&params);
            }
        }

        #[test]
        fn parse_json_round_trips_objects_of_strings(expected in btree_map(any::<String>(), any::<String>(), 0..8)) {
            let json = serde_json::to_vec(&expected).unwrap();
            let params = Params::parse_json(&json).unwrap();
            assert_invariants(&params);
            assert_same_params(&params, &expected);
        }

        #[test]
        fn parse_json_refuses_a_name_given_twice(name in any::<String>(), first in any::<String>(), second in any::<String>()) {
            let json = format!(
                "{{{}:{},{}:{}}}",
                serde_json::to_string(&name).unwrap(),
                serde_json::to_string(&first).unwrap(),
                serde_json::to_string(&name).unwrap(),
                serde_json::to_string(&second).unwrap(),
            );
            prop_assert_eq!(Params::parse_json(json.as_bytes()), Err(ParamError::Repeated(name)));
        }
    }
}
