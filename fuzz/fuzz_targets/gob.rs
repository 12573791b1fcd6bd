//! Fuzz target `gob`: arbitrary bytes through the three `hoop-gob` decoders (`[]string`,
//! `map[string]string`, `AgentConnectionParams`). Checked: no decoder panics (the crate's
//! promise for any input), and whatever decodes survives encode → decode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = hoop_gob::decode_string_slice(data) {
        let again = hoop_gob::decode_string_slice(&hoop_gob::encode_string_slice(&v));
        assert_eq!(again.as_ref(), Ok(&v), "[]string round trip");
    }
    if let Ok(m) = hoop_gob::decode_string_map(data) {
        let again = hoop_gob::decode_string_map(&hoop_gob::encode_string_map(&m));
        assert_eq!(again.as_ref(), Ok(&m), "map[string]string round trip");
    }
    if let Ok(p) = hoop_gob::decode_connection_params(data) {
        let bytes = hoop_gob::encode_connection_params(&p);
        let again = hoop_gob::decode_connection_params(&bytes);
        // `AgentConnectionParams`' Debug redacts secrets, so compare without printing values.
        assert!(again.as_ref() == Ok(&p), "AgentConnectionParams round trip");
    }
});
