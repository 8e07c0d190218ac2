//! The DPoP proof parser (`dpop::decode_proof`: RFC 9449 §4.3 syntax, key and signature
//! checks) on arbitrary text: it must answer Ok or Err, never panic, and whatever it accepts
//! carries the claims the later checks rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(proof) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(decoded) = dtr_proxy::dpop::decode_proof(proof) {
        assert!(!decoded.jkt.is_empty());
        assert!(!decoded.jti.is_empty() && decoded.jti.len() <= 256);
        assert!(decoded.iat.is_finite());
    }
});
