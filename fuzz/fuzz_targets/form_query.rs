//! `Params::parse` and `Params::parse_json` on arbitrary bytes: never panic, never accept a
//! name twice or a value over `MAX_VALUE_LEN`, and what they accept survives re-encoding.
#![no_main]

use dtr_proxy::protocol::params::{encode, Params, MAX_VALUE_LEN};
use libfuzzer_sys::fuzz_target;

fn check(params: &Params) {
    let pairs: Vec<(&str, &str)> = params.iter().collect();
    for (i, (name, value)) in pairs.iter().enumerate() {
        assert!(value.len() <= MAX_VALUE_LEN, "{name} is {} bytes", value.len());
        assert!(
            pairs[..i].iter().all(|(earlier, _)| earlier != name),
            "{name} accepted twice"
        );
        assert_eq!(params.get(name), Some(*value));
    }
    let reparsed = Params::parse(encode(pairs.iter().copied()).as_bytes()).expect("re-encoded parameters parse");
    assert_eq!(reparsed.iter().collect::<Vec<_>>(), pairs);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(params) = Params::parse(data) {
        check(&params);
    }
    if let Ok(params) = Params::parse_json(data) {
        check(&params);
    }
});
