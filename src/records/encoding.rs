//! How a process record is laid out in the store.
//!
//! **Format 3** (written by this version), binary:
//!
//! | bytes | what |
//! |---|---|
//! | 0 | `3` |
//! | 1..14 | the last authenticated poll, ms since the epoch, 13 ASCII digits (all `0`: none) |
//! | 14 | `1` when a poll presenting the bound secret may stamp the poll clock in the same command that reads the record (a secret-bound process without a DPoP key), else `0` |
//! | 15 | length `L` of the binding (`0`: none) |
//! | 16..16+L | the binding: the bound secret's fingerprint (keyed hash of client id and secret), then, for a process bound to a client certificate, `#` and its `x5t#S256` |
//! | 2 bytes | big-endian length `J` of the body |
//! | J bytes | the rest of the record in [postcard](https://postcard.jamesmunns.com/wire-format) ([`Body`], then [`Tail`]): its fields in order, without names |
//! | the rest | the sealed secrets, binary ([`Sealed`]): `b`, key id, `.`, nonce, ciphertext and tag (empty once delivered) |
//!
//! The poll clock lives in the record (bytes 1..14) and the guard (bytes 14..16+L) sits at a
//! fixed place, so a pending poll is one store round trip: read the record and, if the caller
//! presents the bound fingerprint (and the bound certificate), stamp the clock
//! ([`crate::store::Store::get_patching`]). Neither a fingerprint nor a thumbprint (base64url)
//! contains `#`.
//!
//! Every poll decodes the body, so it is postcard rather than JSON: half the time to decode
//! and about 60 bytes less per record. Postcard names no fields, so the body's fields are
//! never reordered or removed. A field added later goes after them, in [`Tail`]: a version
//! ignores bytes after the fields it knows, and reads a body that ends before its tail (an
//! earlier version wrote it) with the tail's defaults, so fields are appended without a new
//! format number.
//!
//! Earlier formats are still read, so processes created before an upgrade live on:
//! - **format 2**: the same layout, byte 0 `2`, the body as JSON with one-letter names ([`Body`]);
//! - **format 1**: the record as JSON (it starts with `{`), its poll clock in a key of its own.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::{AuthMethod, ClientBinding, ProcessRecord, Requested, Sealed, Status};

pub const FORMAT_2: u8 = 2;
pub const FORMAT_3: u8 = 3;
/// Where the poll clock is, and its width.
pub const STAMP_AT: usize = 1;
pub const STAMP_LEN: usize = 13;
/// Where the guard (flag, length, fingerprint) starts.
pub const GUARD_AT: usize = STAMP_AT + STAMP_LEN;
const NO_STAMP: [u8; STAMP_LEN] = [b'0'; STAMP_LEN];

/// The poll clock as stored: 13 digits.
pub fn stamp(now_ms: u64) -> [u8; STAMP_LEN] {
    let mut out = NO_STAMP;
    let mut n = now_ms.min(9_999_999_999_999);
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

/// The time a poll writes into the poll clock: `now_ms` to ten milliseconds, its last digit
/// taken from a counter of this process. Two stamps this process writes one after the other
/// always differ, so a stamping read that finds exactly the stamp it writes is that same read
/// sent a second time (the store client resends a command whose reply a failover lost), not a
/// second poll. Ten milliseconds are nothing against the slack a poll interval allows.
pub fn poll_stamp(now_ms: u64) -> u64 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let digit = NEXT.fetch_add(1, Ordering::Relaxed) % 10;
    now_ms - now_ms % 10 + u64::from(digit)
}

fn read_stamp(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.get(STAMP_AT..STAMP_AT + STAMP_LEN)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    (n != 0).then_some(n)
}

/// The guard a poll presents: it matches the stored one only for a secret-bound process
/// without a DPoP key whose fingerprint is `fingerprint` and whose client certificate, if it
/// is bound to one, is `certificate` (its `x5t#S256`).
pub fn guard(fingerprint: &str, certificate: Option<&str>) -> Vec<u8> {
    let len = fingerprint.len() + certificate.map_or(0, |x5t| 1 + x5t.len());
    let mut out = Vec::with_capacity(2 + len);
    out.push(1);
    out.push(u8::try_from(len).unwrap_or(0));
    out.extend_from_slice(fingerprint.as_bytes());
    if let Some(x5t) = certificate {
        out.push(b'#');
        out.extend_from_slice(x5t.as_bytes());
    }
    out
}

/// The guard's text: the fingerprint, then `#` and the certificate's thumbprint when bound to
/// one.
fn binding(fingerprint: &str, certificate: Option<&str>) -> String {
    match certificate {
        Some(x5t) => format!("{fingerprint}#{x5t}"),
        None => fingerprint.to_owned(),
    }
}

/// Whether the stamp of a poll that presents the bound secret may be folded into its read.
fn may_stamp_on_read(record: &ProcessRecord) -> bool {
    matches!(
        record.client.method,
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
    ) && record.client.fingerprint.is_some()
        && record.jkt.is_none()
}

const METHODS: [AuthMethod; 4] = [
    AuthMethod::ClientSecretBasic,
    AuthMethod::ClientSecretPost,
    AuthMethod::JwtAssertion,
    AuthMethod::None,
];
fn code_of<T: PartialEq>(all: &[T], value: &T) -> u8 {
    all.iter().position(|v| v == value).unwrap_or(0) as u8
}

/// The rest of the record: in format 3 in postcard, its fields in this order; in format 2
/// as JSON with these one-letter names. Borrowed on the way in and out: encoding copies
/// nothing before it writes, and decoding copies each string once, into the record (a JSON
/// string with escapes is unescaped first).
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    #[serde(rename = "i", borrow)]
    process_id: Cow<'a, str>,
    #[serde(rename = "r", borrow)]
    realm: Cow<'a, str>,
    #[serde(rename = "c", borrow)]
    client_id: Cow<'a, str>,
    #[serde(rename = "m")]
    method: u8,
    #[serde(rename = "k", default, borrow)]
    jkt: Option<Cow<'a, str>>,
    #[serde(rename = "s")]
    status: u8,
    #[serde(rename = "d", default, borrow)]
    description: Option<Cow<'a, str>>,
    /// The sealed `interaction_uri`, while the verification waits on the end-user.
    #[serde(rename = "a", default, borrow)]
    interaction: Option<Cow<'a, str>>,
    #[serde(rename = "v")]
    interval: u64,
    #[serde(rename = "x", default)]
    strikes: u32,
    #[serde(rename = "t")]
    created_at: u64,
    #[serde(rename = "e")]
    expires_at: u64,
    #[serde(rename = "f", default)]
    completed_at: Option<u64>,
    #[serde(rename = "g", default)]
    delivering_since: Option<u64>,
    #[serde(rename = "u", default, borrow)]
    sub: Option<Cow<'a, str>>,
    #[serde(rename = "o", default, borrow)]
    sid: Option<Cow<'a, str>>,
    #[serde(rename = "n", default, borrow)]
    nonce: Option<Cow<'a, str>>,
    #[serde(rename = "q", default, borrow)]
    requested: Asked<'a>,
    #[serde(rename = "p", default)]
    ping_attempts: u32,
    #[serde(rename = "z", default)]
    release_in_doubt: bool,
    /// The exchange's W3C `traceparent`, when traces are on.
    #[serde(rename = "w", default, borrow)]
    trace: Option<Cow<'a, str>>,
}

/// The fields appended to format 3's [`Body`] since it was first written: a body that ends
/// before them reads as their defaults.
#[derive(Default, Serialize, Deserialize)]
struct Tail {
    last_strike: Option<u64>,
}

/// [`Requested`], borrowed.
#[derive(Default, Serialize, Deserialize)]
struct Asked<'a> {
    #[serde(default, borrow)]
    acr_values: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    claims: Option<Cow<'a, str>>,
}

fn borrowed(text: &Option<String>) -> Option<Cow<'_, str>> {
    text.as_deref().map(Cow::Borrowed)
}

fn owned(text: Option<Cow<'_, str>>) -> Option<String> {
    text.map(Cow::into_owned)
}

/// Format 3 bytes of `record`, its poll clock at `last_poll`.
pub fn encode(record: &ProcessRecord, last_poll: Option<u64>) -> Vec<u8> {
    let body = Body {
        process_id: Cow::Borrowed(&record.process_id),
        realm: Cow::Borrowed(&record.realm),
        client_id: Cow::Borrowed(&record.client_id),
        method: code_of(&METHODS, &record.client.method),
        jkt: borrowed(&record.jkt),
        status: code_of(&Status::ALL, &record.status),
        description: borrowed(&record.description),
        interaction: borrowed(&record.interaction),
        interval: record.interval,
        strikes: record.strikes,
        created_at: record.created_at,
        expires_at: record.expires_at,
        completed_at: record.completed_at,
        delivering_since: record.delivering_since,
        sub: borrowed(&record.sub),
        sid: borrowed(&record.sid),
        nonce: borrowed(&record.nonce),
        requested: Asked {
            acr_values: borrowed(&record.requested.acr_values),
            claims: borrowed(&record.requested.claims),
        },
        ping_attempts: record.ping_attempts,
        release_in_doubt: record.release_in_doubt,
        trace: borrowed(&record.trace),
    };
    let tail = Tail {
        last_strike: record.last_strike,
    };
    // Serialising plain data into a growing buffer cannot fail. A tuple is its fields one
    // after the other: the tail follows the body.
    let body = postcard::to_allocvec(&(body, tail)).unwrap_or_default();
    frame(FORMAT_3, record, last_poll, &body)
}

/// A record of `format`: the header, `body`, then the sealed secrets.
fn frame(format: u8, record: &ProcessRecord, last_poll: Option<u64>, body: &[u8]) -> Vec<u8> {
    let fingerprint = record.client.fingerprint.as_deref().unwrap_or("");
    let bound = binding(fingerprint, record.x5t.as_deref());
    let bound = if bound.len() <= usize::from(u8::MAX) {
        bound
    } else {
        String::new()
    };
    let sealed = record.sealed.as_stored();
    let mut out = Vec::with_capacity(GUARD_AT + 4 + bound.len() + body.len() + sealed.len());
    out.push(format);
    out.extend_from_slice(&last_poll.map_or(NO_STAMP, stamp));
    out.push(u8::from(may_stamp_on_read(record) && !fingerprint.is_empty()));
    out.push(bound.len() as u8);
    out.extend_from_slice(bound.as_bytes());
    out.extend_from_slice(&(body.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(sealed);
    out
}

/// A record in any format, with its poll clock (`None` for format 1, whose clock is a key of
/// its own).
pub fn decode(raw: &[u8]) -> Result<(ProcessRecord, Option<u64>), String> {
    match raw.first() {
        Some(&FORMAT_3) => decode_framed(raw, unpack).ok_or_else(|| "malformed format 3 process record".to_owned()),
        Some(&FORMAT_2) => {
            decode_framed(raw, unpack_json).ok_or_else(|| "malformed format 2 process record".to_owned())
        }
        Some(b'{') => serde_json::from_slice(raw)
            .map(|record| (record, None))
            .map_err(|e| e.to_string()),
        _ => Err("unknown process record format".to_owned()),
    }
}

/// The poll clock of a format 2 or 3 record (`None` for format 1 or none yet).
pub fn clock(raw: &[u8]) -> Option<u64> {
    matches!(raw.first(), Some(&(FORMAT_2 | FORMAT_3)))
        .then(|| read_stamp(raw))
        .flatten()
}

/// Whether `raw` is a format 1 record (poll clock in a key of its own).
pub fn is_format_1(raw: &[u8]) -> bool {
    raw.first() == Some(&b'{')
}

/// A format 3 body (postcard), its tail or none.
fn unpack(bytes: &[u8]) -> Option<ProcessRecord> {
    let (body, tail) = postcard::take_from_bytes::<Body>(bytes).ok()?;
    let tail = if tail.is_empty() {
        Tail::default()
    } else {
        postcard::from_bytes(tail).ok()?
    };
    record_of(body, tail)
}

/// A format 2 body (JSON): it has no tail.
fn unpack_json(bytes: &[u8]) -> Option<ProcessRecord> {
    record_of(serde_json::from_slice(bytes).ok()?, Tail::default())
}

/// The record a body holds, without what the header and the tail hold (binding,
/// certificate, sealed secrets), which [`decode_framed`] fills in.
fn record_of(body: Body, tail: Tail) -> Option<ProcessRecord> {
    Some(ProcessRecord {
        process_id: body.process_id.into_owned(),
        realm: body.realm.into_owned(),
        client_id: body.client_id.into_owned(),
        client: ClientBinding {
            method: *METHODS.get(usize::from(body.method))?,
            fingerprint: None,
        },
        jkt: owned(body.jkt),
        x5t: None,
        status: *Status::ALL.get(usize::from(body.status))?,
        description: owned(body.description),
        interaction: owned(body.interaction),
        interval: body.interval,
        strikes: body.strikes,
        last_strike: tail.last_strike,
        created_at: body.created_at,
        expires_at: body.expires_at,
        completed_at: body.completed_at,
        delivering_since: body.delivering_since,
        sub: owned(body.sub),
        sid: owned(body.sid),
        nonce: owned(body.nonce),
        requested: Requested {
            acr_values: owned(body.requested.acr_values),
            claims: owned(body.requested.claims),
        },
        ping_attempts: body.ping_attempts,
        release_in_doubt: body.release_in_doubt,
        trace: owned(body.trace),
        sealed: Sealed::default(),
    })
}

/// A format 2 or 3 record: the header, the body as `unpack` reads it, the sealed secrets.
fn decode_framed(raw: &[u8], unpack: fn(&[u8]) -> Option<ProcessRecord>) -> Option<(ProcessRecord, Option<u64>)> {
    let last_poll = read_stamp(raw);
    let fingerprint_len = usize::from(*raw.get(GUARD_AT + 1)?);
    let fingerprint_at = GUARD_AT + 2;
    let bound = std::str::from_utf8(raw.get(fingerprint_at..fingerprint_at + fingerprint_len)?).ok()?;
    let (fingerprint, x5t) = match bound.split_once('#') {
        Some((fingerprint, x5t)) => (fingerprint, Some(x5t.to_owned())),
        None => (bound, None),
    };
    let len_at = fingerprint_at + fingerprint_len;
    let body_len = usize::from(u16::from_be_bytes(raw.get(len_at..len_at + 2)?.try_into().ok()?));
    let body_at = len_at + 2;
    let mut record = unpack(raw.get(body_at..body_at + body_len)?)?;
    record.client.fingerprint = (!fingerprint.is_empty()).then(|| fingerprint.to_owned());
    record.x5t = x5t;
    record.sealed = Sealed::from_stored(&raw[body_at + body_len..])?;
    Some((record, last_poll))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    fn full(now: u64) -> ProcessRecord {
        let mut record = ProcessRecord::sample(now);
        record.client.fingerprint = Some("f".repeat(43));
        record.x5t = Some("t".repeat(43));
        record.description = Some("Checking \"your\" documents…".into());
        record.interaction = Some("k1.c2VhbGVkIFVSTA".into());
        record.completed_at = Some(now);
        record.delivering_since = Some(now + 1);
        record.sub = Some("user-1".into());
        record.sid = Some("session-1".into());
        record.nonce = Some("n-0".into());
        record.requested = Requested {
            acr_values: Some("urn:acr:high".into()),
            claims: Some("{\"id_token\":{}}".into()),
        };
        record.ping_attempts = 3;
        record.strikes = 2;
        record.last_strike = Some(now - 700);
        record.release_in_doubt = true;
        record.sealed = format!("k1.{}", URL_SAFE_NO_PAD.encode([0u8, 1, 2, b'.', 255, 46]))
            .as_str()
            .into();
        record
    }

    /// [`full`] at `NOW` with method and status codes `m` and `s`, as a format 2 record: its
    /// body as the previous version wrote it.
    fn written_in_format_2(m: u8, s: u8, last_poll: Option<u64>) -> Vec<u8> {
        let body = format!(
            r#"{{"i":"p","r":"r","c":"c","m":{m},"s":{s},"d":"Checking \"your\" documents…","a":"k1.c2VhbGVkIFVSTA","v":5,"x":2,"t":1763999940000,"e":1764000060000,"f":1764000000000,"g":1764000000001,"u":"user-1","o":"session-1","n":"n-0","q":{{"acr_values":"urn:acr:high","claims":"{{\"id_token\":{{}}}}"}},"p":3,"z":true}}"#
        );
        frame(FORMAT_2, &full(NOW), last_poll, body.as_bytes())
    }

    const NOW: u64 = 1_764_000_000_000;

    /// The body bytes of a format 3 record.
    fn body_of(raw: &[u8]) -> &[u8] {
        let len_at = GUARD_AT + 2 + usize::from(raw[GUARD_AT + 1]);
        let len = usize::from(u16::from_be_bytes([raw[len_at], raw[len_at + 1]]));
        &raw[len_at + 2..len_at + 2 + len]
    }

    #[test]
    fn every_field_round_trips_in_format_3() {
        let mut certificate_only = ProcessRecord::sample(NOW);
        certificate_only.x5t = Some("t".repeat(43));
        for record in [ProcessRecord::sample(NOW), full(NOW), certificate_only] {
            for method in METHODS {
                for status in Status::ALL {
                    let mut record = record.clone();
                    record.client.method = method;
                    record.status = status;
                    for last_poll in [None, Some(NOW - 5)] {
                        let raw = encode(&record, last_poll);
                        assert_eq!(raw[0], FORMAT_3);
                        assert_eq!(decode(&raw).unwrap(), (record.clone(), last_poll));
                        assert_eq!(clock(&raw), last_poll);
                    }
                }
            }
        }
    }

    #[test]
    fn format_2_records_are_still_read() {
        for (m, method) in METHODS.into_iter().enumerate() {
            for (s, status) in Status::ALL.into_iter().enumerate() {
                for last_poll in [None, Some(NOW - 5)] {
                    let raw = written_in_format_2(m as u8, s as u8, last_poll);
                    let mut expected = full(NOW);
                    expected.client.method = method;
                    expected.status = status;
                    // Format 2 had no tail.
                    expected.last_strike = None;
                    assert_eq!(decode(&raw).unwrap(), (expected, last_poll));
                    assert_eq!(clock(&raw), last_poll);
                }
            }
        }
    }

    #[test]
    fn format_1_records_are_still_read() {
        let record = full(1_764_000_000_000);
        let raw = serde_json::to_vec(&record).unwrap();
        assert!(is_format_1(&raw));
        assert_eq!(decode(&raw).unwrap(), (record, None));
        // As an earlier version wrote it, field names and all.
        let written = br#"{"process_id":"p","realm":"r","client_id":"c","client":{"method":"client_secret_basic","fingerprint":"fp"},"status":"pending","interval":5,"strikes":0,"created_at":1,"expires_at":2,"sub":"s","ping_attempts":0,"sealed":"k.AAAA"}"#;
        let (record, last_poll) = decode(written).unwrap();
        assert_eq!(
            (
                record.client.fingerprint.as_deref(),
                record.sealed.to_text().as_str(),
                last_poll
            ),
            (Some("fp"), "k.AAAA", None)
        );
    }

    #[test]
    fn unreadable_bytes_are_errors_not_panics() {
        let raw = encode(&full(1_764_000_000_000), Some(7));
        for cut in 0..raw.len() {
            let _ = decode(&raw[..cut]);
        }
        assert!(decode(b"").is_err());
        assert!(decode(b"\x07junk").is_err());
        // A status or method code past the known ones, in either body.
        let record = full(1_764_000_000_000);
        let mut body: Body = postcard::from_bytes(body_of(&raw)).unwrap();
        body.status = 9;
        assert!(decode(&frame(FORMAT_3, &record, None, &postcard::to_allocvec(&body).unwrap())).is_err());
        body.status = 0;
        body.method = 7;
        assert!(decode(&frame(FORMAT_3, &record, None, &postcard::to_allocvec(&body).unwrap())).is_err());
        assert!(decode(&written_in_format_2(0, 9, None)).is_err());
        assert!(decode(&written_in_format_2(7, 0, None)).is_err());
    }

    #[test]
    fn a_field_appended_after_the_known_ones_is_ignored() {
        let record = full(1_764_000_000_000);
        let raw = encode(&record, Some(7));
        let longer = [body_of(&raw), b"\x01later"].concat();
        assert_eq!(
            decode(&frame(FORMAT_3, &record, Some(7), &longer)).unwrap(),
            (record, Some(7))
        );
    }

    #[test]
    fn a_body_written_before_its_tail_reads_as_the_tails_defaults() {
        let record = full(1_764_000_000_000);
        let raw = encode(&record, Some(7));
        // What the version before the tail wrote: the body's fields alone.
        let (body, tail) = postcard::take_from_bytes::<Body>(body_of(&raw)).unwrap();
        assert!(!tail.is_empty());
        let earlier = frame(FORMAT_3, &record, Some(7), &postcard::to_allocvec(&body).unwrap());
        let mut expected = record.clone();
        expected.last_strike = None;
        assert_eq!(decode(&earlier).unwrap(), (expected, Some(7)));
        // A tail cut short is no record.
        let cut = [&body_of(&raw)[..body_of(&raw).len() - 1]].concat();
        assert!(decode(&frame(FORMAT_3, &record, Some(7), &cut)).is_err());
    }

    #[test]
    fn format_3_is_smaller_than_format_2() {
        let record = full(1_764_000_000_000);
        let (three, two) = (encode(&record, None), written_in_format_2(0, 0, None));
        assert!(three.len() + 60 < two.len(), "{} against {}", three.len(), two.len());
    }

    #[test]
    fn the_guard_sits_where_a_poll_looks_for_it() {
        let now = 1_764_000_000_000;
        let mut record = ProcessRecord::sample(now);
        record.client.fingerprint = Some("fp-of-the-secret".into());
        let raw = encode(&record, None);
        let presented = guard("fp-of-the-secret", None);
        assert_eq!(&raw[GUARD_AT..GUARD_AT + presented.len()], &presented[..]);
        assert_ne!(
            &raw[GUARD_AT..GUARD_AT + presented.len()],
            &guard("fp-of-another-sec", None)[..]
        );
        // Bound to a client certificate: only a poll with the same certificate stamps on read.
        record.x5t = Some("thumbprint-of-the-cert".into());
        let raw = encode(&record, None);
        let with_cert = guard("fp-of-the-secret", Some("thumbprint-of-the-cert"));
        assert_eq!(&raw[GUARD_AT..GUARD_AT + with_cert.len()], &with_cert[..]);
        for other in [
            guard("fp-of-the-secret", None),
            guard("fp-of-the-secret", Some("thumbprint-of-another")),
        ] {
            assert_ne!(raw.get(GUARD_AT..GUARD_AT + other.len()), Some(&other[..]));
        }
        record.x5t = None;
        // Bound to a DPoP key, or authenticated by an assertion: the stamp waits for the checks.
        record.jkt = Some("thumbprint".into());
        let raw = encode(&record, None);
        assert_ne!(&raw[GUARD_AT..GUARD_AT + presented.len()], &presented[..]);
        record.jkt = None;
        record.client.method = AuthMethod::JwtAssertion;
        let raw = encode(&record, None);
        assert_ne!(&raw[GUARD_AT..GUARD_AT + presented.len()], &presented[..]);
    }

    #[test]
    fn the_stamp_is_thirteen_digits() {
        assert_eq!(&stamp(1_764_000_000_123), b"1764000000123");
        assert_eq!(&stamp(42), b"0000000000042");
        let mut raw = encode(&ProcessRecord::sample(1_000_000), None);
        assert_eq!(read_stamp(&raw), None);
        raw[STAMP_AT..STAMP_AT + STAMP_LEN].copy_from_slice(&stamp(1_764_000_000_123));
        assert_eq!(decode(&raw).unwrap().1, Some(1_764_000_000_123));
    }

    #[test]
    fn poll_stamps_in_a_row_differ_even_within_a_millisecond() {
        let now = 1_764_000_000_123;
        let stamps: Vec<u64> = (0..10).map(|_| poll_stamp(now)).collect();
        for pair in stamps.windows(2) {
            assert_ne!(pair[0], pair[1]);
        }
        for s in &stamps {
            assert!(s.abs_diff(now) < 10, "{s} is within ten milliseconds of {now}");
        }
    }
}
