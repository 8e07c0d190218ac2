//! `webhook::verify` on fuzzer-chosen headers and body. The input is read as
//! `webhook-id \n webhook-timestamp \n webhook-signature \n body` (a header value cannot hold a
//! newline), so seeds stay readable. Checks that verification never panics, succeeds only for
//! a signature that `sign` computes over exactly these headers and body, and that the same
//! id and body, correctly signed, verify.
#![no_main]

use dtr_proxy::webhook::{sign, verify};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"a webhook secret of enough bytes";
const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let mut headers = HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        if let Some(value) = parts.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, value);
        }
    }
    let body = parts.next().unwrap_or_default();

    if let Ok(id) = verify(SECRET, &headers, body, NOW) {
        assert_eq!(
            Some(id.as_str()),
            headers.get("webhook-id").and_then(|v| v.to_str().ok())
        );
        let timestamp = headers["webhook-timestamp"]
            .to_str()
            .expect("verified timestamp is text");
        assert_eq!(
            timestamp.parse::<u64>().map(|t| t.to_string()).as_deref(),
            Ok(timestamp)
        );
        let expected = format!(
            "v1,{}",
            sign(SECRET, &id, timestamp.parse().expect("checked above"), body)
        );
        let signatures = headers["webhook-signature"]
            .to_str()
            .expect("verified signature is text");
        assert!(
            signatures.split(' ').any(|s| s == expected),
            "accepted a wrong signature"
        );
    }

    let Some(id) = headers
        .get("webhook-id")
        .filter(|v| v.to_str().is_ok_and(|s| !s.is_empty()))
    else {
        return;
    };
    let id = id.to_str().expect("checked above").to_owned();
    let mut signed = HeaderMap::new();
    signed.insert("webhook-id", headers["webhook-id"].clone());
    signed.insert("webhook-timestamp", HeaderValue::from(NOW));
    let signature = format!("v1,{}", sign(SECRET, &id, NOW, body));
    signed.insert(
        "webhook-signature",
        HeaderValue::from_str(&signature).expect("base64 is a header value"),
    );
    assert_eq!(verify(SECRET, &signed, body, NOW), Ok(id));
});
