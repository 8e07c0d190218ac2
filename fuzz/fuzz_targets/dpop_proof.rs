//! The DPoP proof parser (`dpop::decode_proof`, RFC 9449 §4.2 syntax: a JWS with a `jwk`
//! header) on arbitrary text: it must answer Ok or Err, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = std::str::from_utf8(data) {
        let _ = dtr_proxy::dpop::decode_proof(proof);
    }
});
