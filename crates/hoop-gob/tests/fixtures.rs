//! Tests against the Go-generated fixtures in `fixtures/` (see its README):
//! every fixture decodes to the value the Go generator encoded, the encoder
//! reproduces Go's bytes where Go's output is deterministic, error fixtures
//! fail with clear messages, and no truncation or mutation of any fixture
//! panics.
//!
//! It deliberately does not run Go: expectations come from the generator's
//! `NAME.json` files, and the Go round trip of the encoder's output lives in
//! `fixtures/check-encoder.sh` (which drives `dump_encoder_outputs_for_go`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hoop_gob::{
    AgentConnectionParams, AiSessionAnalyzerParams, GobError, decode_connection_params,
    decode_string_map, decode_string_slice, encode_connection_params, encode_string_map,
    encode_string_slice,
};
use serde_json::Value;

/// A fixture: `NAME.gob` plus the generator's `NAME.json`.
struct Fixture {
    name: String,
    kind: String,
    bytes: Vec<u8>,
    meta: Value,
}

impl Fixture {
    fn is_error(&self) -> bool {
        self.meta["error"].as_bool().unwrap_or(false)
    }

    fn fresh_deterministic(&self) -> bool {
        self.meta["fresh_deterministic"].as_bool().unwrap_or(false)
    }

    fn value(&self) -> &Value {
        &self.meta["value"]
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn load_fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("gob") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let json = std::fs::read(path.with_extension("json")).expect("fixture json");
        let meta: Value = serde_json::from_slice(&json).expect("valid json");
        out.push(Fixture {
            kind: meta["kind"].as_str().expect("kind").to_owned(),
            bytes: std::fs::read(&path).expect("fixture gob"),
            name,
            meta,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn fixture(name: &str) -> Fixture {
    load_fixtures()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn json_strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn json_string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .expect("object")
        .iter()
        .map(|(k, s)| (k.clone(), s.as_str().expect("string").to_owned()))
        .collect()
}

fn json_params(v: &Value) -> AgentConnectionParams {
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k}")).to_owned();
    let b = |k: &str| STANDARD.decode(v[k].as_str().unwrap()).expect("base64");
    let ai = &v["ai_session_analyzer"];
    AgentConnectionParams {
        connection_name: s("connection_name"),
        connection_type: s("connection_type"),
        connection_sub_type: s("connection_sub_type"),
        user_id: s("user_id"),
        user_email: s("user_email"),
        env_vars: json_string_map(&v["env_vars"]),
        cmd_list: json_strings(&v["cmd_list"]),
        client_args: json_strings(&v["client_args"]),
        client_verb: s("client_verb"),
        client_origin: s("client_origin"),
        dlp_provider: s("dlp_provider"),
        dlp_mode: s("dlp_mode"),
        dlp_info_types: json_strings(&v["dlp_info_types"]),
        dlp_gcp_raw_credentials_json: s("dlp_gcp_raw_credentials_json"),
        dlp_presidio_analyzer_url: s("dlp_presidio_analyzer_url"),
        dlp_presidio_anonymizer_url: s("dlp_presidio_anonymizer_url"),
        data_masking_entity_types_data: b("data_masking_entity_types_data"),
        guard_rail_rules: b("guard_rail_rules"),
        analyzer_metrics_rules: b("analyzer_metrics_rules"),
        ai_session_analyzer: (!ai.is_null()).then(|| {
            let a = |k: &str| ai[k].as_str().unwrap_or_else(|| panic!("{k}")).to_owned();
            AiSessionAnalyzerParams {
                rule_name: a("rule_name"),
                provider: a("provider"),
                api_url: a("api_url"),
                api_key: a("api_key"),
                model: a("model"),
                custom_prompt: a("custom_prompt"),
                low_risk_action: a("low_risk_action"),
                medium_risk_action: a("medium_risk_action"),
                high_risk_action: a("high_risk_action"),
            }
        }),
    }
}

/// Decodes with the decoder for the fixture's kind; the error as a string.
fn decode_as(kind: &str, bytes: &[u8]) -> Result<(), String> {
    match kind {
        "args" => decode_string_slice(bytes).map(drop),
        "env" => decode_string_map(bytes).map(drop),
        "params" => decode_connection_params(bytes).map(drop),
        other => panic!("unknown kind {other}"),
    }
    .map_err(|e| e.to_string())
}

/// Encodes the fixture's expected value with this crate's encoder.
fn encode_expected(f: &Fixture) -> Vec<u8> {
    match f.kind.as_str() {
        "args" => encode_string_slice(&json_strings(f.value())),
        "env" => encode_string_map(&json_string_map(f.value())),
        "params" => encode_connection_params(&json_params(f.value())),
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn fixture_set_is_complete() {
    let names: Vec<String> = load_fixtures().into_iter().map(|f| f.name).collect();
    for required in [
        "args",
        "args_empty",
        "args_after_map",
        "args_invalid_utf8",
        "env_client",
        "env_after_args",
        "env_multi",
        "params",
        "params_full",
        "params_zero",
        "params_utf8",
        "params_after_others",
        "params_extra_fields",
        "params_plugin_hooks",
        "params_nested_inline_types",
        "params_env_int",
        "params_env_nil",
        "params_wrong_type",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "missing fixture {required}"
        );
    }
}

#[test]
fn every_fixture_decodes_as_go_encoded_it() {
    let fixtures = load_fixtures();
    assert!(fixtures.len() >= 23, "only {} fixtures", fixtures.len());
    for f in &fixtures {
        if f.is_error() {
            let err = decode_as(&f.kind, &f.bytes).expect_err(&f.name);
            let mentions = f.meta["error_mentions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for mention in &mentions {
                let mention = mention.as_str().unwrap();
                assert!(
                    err.contains(mention),
                    "{}: {err:?} lacks {mention:?}",
                    f.name
                );
            }
            continue;
        }
        match f.kind.as_str() {
            "args" => assert_eq!(
                decode_string_slice(&f.bytes).unwrap(),
                json_strings(f.value()),
                "{}",
                f.name
            ),
            "env" => assert_eq!(
                decode_string_map(&f.bytes).unwrap(),
                json_string_map(f.value()),
                "{}",
                f.name
            ),
            "params" => assert_eq!(
                decode_connection_params(&f.bytes).unwrap(),
                json_params(f.value()),
                "{}",
                f.name
            ),
            other => panic!("unknown kind {other}"),
        }
    }
}

#[test]
fn main_params_fixture_every_field() {
    let p = decode_connection_params(&fixture("params").bytes).unwrap();
    assert_eq!(p.connection_name, "psexec");
    assert_eq!(p.connection_type, "command-line");
    assert_eq!(p.connection_sub_type, "");
    assert_eq!(p.user_id, "");
    assert_eq!(p.user_email, "");
    assert_eq!(
        p.env_vars,
        BTreeMap::from([(
            "envvar:HEROKU_API_KEY".to_owned(),
            STANDARD.encode("HRKU-0123456789abcdef-secret-token")
        )])
    );
    assert_eq!(p.cmd_list, ["/app/bin/ps-exec.sh"]);
    assert_eq!(
        p.client_args,
        ["--app", "X", "--dyno", "web.2", "--pipe", "rails runner -"]
    );
    assert_eq!(p.client_verb, "exec");
    assert_eq!(p.client_origin, "client");
    assert_eq!(p.dlp_provider, "");
    assert_eq!(p.dlp_mode, "");
    assert!(p.dlp_info_types.is_empty());
    assert_eq!(p.dlp_gcp_raw_credentials_json, "");
    assert_eq!(p.dlp_presidio_analyzer_url, "");
    assert_eq!(p.dlp_presidio_anonymizer_url, "");
    assert!(p.data_masking_entity_types_data.is_empty());
    assert_eq!(
        p.guard_rail_rules,
        br#"{"input_rules":[],"output_rules":[]}"#
    );
    assert!(p.analyzer_metrics_rules.is_empty());
    assert_eq!(p.ai_session_analyzer, None);
}

#[test]
fn full_params_fixture_sets_every_field() {
    let p = decode_connection_params(&fixture("params_full").bytes).unwrap();
    let AgentConnectionParams {
        connection_name,
        connection_type,
        connection_sub_type,
        user_id,
        user_email,
        env_vars,
        cmd_list,
        client_args,
        client_verb,
        client_origin,
        dlp_provider,
        dlp_mode,
        dlp_info_types,
        dlp_gcp_raw_credentials_json,
        dlp_presidio_analyzer_url,
        dlp_presidio_anonymizer_url,
        data_masking_entity_types_data,
        guard_rail_rules,
        analyzer_metrics_rules,
        ai_session_analyzer,
    } = &p;
    for (name, s) in [
        ("connection_name", connection_name),
        ("connection_type", connection_type),
        ("connection_sub_type", connection_sub_type),
        ("user_id", user_id),
        ("user_email", user_email),
        ("client_verb", client_verb),
        ("client_origin", client_origin),
        ("dlp_provider", dlp_provider),
        ("dlp_mode", dlp_mode),
        ("dlp_gcp_raw_credentials_json", dlp_gcp_raw_credentials_json),
        ("dlp_presidio_analyzer_url", dlp_presidio_analyzer_url),
        ("dlp_presidio_anonymizer_url", dlp_presidio_anonymizer_url),
    ] {
        assert!(!s.is_empty(), "{name} is empty");
    }
    assert!(env_vars.len() >= 5);
    assert!(env_vars.keys().any(|k| k.starts_with("filesystem:")));
    assert_eq!(env_vars["envvar:EMPTY"], "");
    assert_eq!(cmd_list.len(), 2);
    assert_eq!(client_args.last().map(String::as_str), Some(""));
    assert_eq!(dlp_info_types.len(), 3);
    for raw in [
        data_masking_entity_types_data,
        guard_rail_rules,
        analyzer_metrics_rules,
    ] {
        assert!(!raw.is_empty());
    }
    let ai = ai_session_analyzer.as_ref().expect("analyzer");
    assert!(ai.fields_all_set(), "{ai:?}");
    assert_eq!(ai.api_key, "sk-analyzer-secret");
    assert_eq!(ai.high_risk_action, "block");
}

trait AllSet {
    fn fields_all_set(&self) -> bool;
}

impl AllSet for AiSessionAnalyzerParams {
    fn fields_all_set(&self) -> bool {
        let Self {
            rule_name,
            provider,
            api_url,
            api_key,
            model,
            custom_prompt,
            low_risk_action,
            medium_risk_action,
            high_risk_action,
        } = self;
        [
            rule_name,
            provider,
            api_url,
            api_key,
            model,
            custom_prompt,
            low_risk_action,
            medium_risk_action,
            high_risk_action,
        ]
        .iter()
        .all(|s| !s.is_empty())
    }
}

#[test]
fn fixtures_with_other_type_ids_decode() {
    // A fresh process's first definition is `-65` = ff 81 after the length byte.
    for (name, fresh) in [
        ("args", true),
        ("args_after_map", false),
        ("env_after_args", false),
        ("params_after_others", false),
    ] {
        let f = fixture(name);
        assert_eq!(
            f.bytes.get(1..3) == Some(&[0xff, 0x81][..]),
            fresh,
            "{name}"
        );
    }
    // The reference fact: a map[string]string after a []string gets id 66.
    assert_eq!(
        fixture("env_after_args").bytes.get(1..3),
        Some(&[0xff, 0x83][..])
    );
    assert_eq!(
        decode_string_slice(&fixture("args_after_map").bytes).unwrap(),
        ["--app", "X", "--pipe", "rails runner -"]
    );
    assert_eq!(
        decode_connection_params(&fixture("params_after_others").bytes).unwrap(),
        decode_connection_params(&fixture("params_full").bytes).unwrap()
    );
}

#[test]
fn reference_bytes_from_go() {
    let args: Vec<String> = ["--app", "X", "--pipe", "rails runner -"]
        .map(String::from)
        .to_vec();
    let mut want = vec![
        0x0c, 0xff, 0x81, 0x02, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0x0c, 0x00, 0x00,
    ];
    want.extend_from_slice(&[0x22, 0xff, 0x82, 0x00, 0x04, 0x05]);
    want.extend_from_slice(b"--app\x01X\x06--pipe\x0erails runner -");
    assert_eq!(want.len(), 48);
    assert_eq!(fixture("args").bytes, want);
    assert_eq!(encode_string_slice(&args), want);

    // map[string]any{"envvar:A":"Yg=="}: each value is an interface holding a string.
    let entry = b"\x08envvar:A\x06string\x0c\x06\x00\x04Yg==";
    let encoded = encode_connection_params(&AgentConnectionParams {
        env_vars: BTreeMap::from([("envvar:A".to_owned(), "Yg==".to_owned())]),
        ..Default::default()
    });
    assert!(
        encoded.windows(entry.len()).any(|w| w == entry),
        "interface entry not found"
    );
}

#[test]
fn encoder_is_byte_identical_to_go_where_go_is_deterministic() {
    let mut checked = 0;
    for f in load_fixtures().iter().filter(|f| f.fresh_deterministic()) {
        assert_eq!(encode_expected(f), f.bytes, "{}", f.name);
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} byte-identity fixtures");
}

#[test]
fn encoder_output_decodes_to_the_same_value() {
    for f in load_fixtures().iter().filter(|f| !f.is_error()) {
        let encoded = encode_expected(f);
        match f.kind.as_str() {
            "args" => assert_eq!(
                decode_string_slice(&encoded).unwrap(),
                json_strings(f.value())
            ),
            "env" => assert_eq!(
                decode_string_map(&encoded).unwrap(),
                json_string_map(f.value())
            ),
            _ => assert_eq!(
                decode_connection_params(&encoded).unwrap(),
                json_params(f.value()),
                "{}",
                f.name
            ),
        }
    }
}

#[test]
fn error_messages_are_clear() {
    let err = |name: &str, kind: &str| decode_as(kind, &fixture(name).bytes).unwrap_err();
    assert_eq!(
        err("params_env_int", "params"),
        r#"field EnvVars: key "envvar:COUNT": interface value of type int, expected string"#
    );
    assert_eq!(
        err("params_env_nil", "params"),
        r#"field EnvVars: key "envvar:NOTHING": nil interface value, expected string"#
    );
    assert_eq!(
        err("params_wrong_type", "params"),
        "field ConnectionName: wire type int, expected string"
    );
    assert_eq!(
        err("args_invalid_utf8", "args"),
        "invalid utf-8 in string slice element 1"
    );
    assert_eq!(
        err("env_client", "args"),
        "string slice: wire type map[string]string, expected []string"
    );
    assert_eq!(
        err("args", "params"),
        "AgentConnectionParams: wire type []string, expected struct"
    );
    assert_eq!(decode_string_slice(&[]).unwrap_err(), GobError::Empty);
    assert_eq!(
        decode_string_slice(&[]).unwrap_err().to_string(),
        "empty gob stream"
    );
    let args = fixture("args").bytes;
    assert_eq!(
        decode_string_slice(&args[..args.len() - 1])
            .unwrap_err()
            .to_string(),
        "truncated gob stream"
    );
    // The value message's type id rewritten from 65 (ff 82) to 70 (ff 8c).
    let mut undefined = args.clone();
    undefined[15] = 0x8c;
    assert_eq!(
        decode_string_slice(&undefined).unwrap_err().to_string(),
        "type id 70 not defined"
    );
}

#[test]
fn trailing_bytes_after_the_value_are_ignored_like_go() {
    let mut bytes = fixture("args").bytes;
    bytes.extend_from_slice(&[0x03, 0xff, 0x82, 0x00]);
    assert_eq!(decode_string_slice(&bytes).unwrap().len(), 4);
}

/// A struct with an unknown field whose type is a slice of itself, nested
/// far deeper than the limit: refused, without exhausting the stack.
#[test]
fn deep_nesting_is_refused() {
    let mut def65 = vec![0xff, 0x81, 0x03, 0x01, 0x01, 0x15];
    def65.extend_from_slice(b"AgentConnectionParams");
    def65.extend_from_slice(&[0x01, 0xff, 0x82, 0x00, 0x01, 0x01, 0x01, 0x04]);
    def65.extend_from_slice(b"Deep");
    def65.extend_from_slice(&[0x01, 0xff, 0x84, 0x00, 0x00, 0x00]);
    let def66 = [
        0xff, 0x83, 0x02, 0x01, 0x02, 0xff, 0x84, 0x00, 0x01, 0xff, 0x84, 0x00, 0x00,
    ];
    let mut value = vec![0xff, 0x82, 0x01];
    value.extend(std::iter::repeat_n(0x01, 5000));
    value.push(0x00);
    value.push(0x00);
    let mut stream = Vec::new();
    for body in [&def65[..], &def66[..], &value[..]] {
        let len = u16::try_from(body.len()).unwrap();
        if len < 0x80 {
            stream.push(len as u8);
        } else {
            stream.push(0xfe);
            stream.extend_from_slice(&len.to_be_bytes());
        }
        stream.extend_from_slice(body);
    }
    assert_eq!(
        decode_connection_params(&stream).unwrap_err(),
        GobError::TooDeep(100)
    );
}

/// Tiny deterministic PRNG (xorshift64*), so the robustness test needs no crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn decode_all_ways(bytes: &[u8]) {
    let _ = decode_string_slice(bytes);
    let _ = decode_string_map(bytes);
    let _ = decode_connection_params(bytes);
}

#[test]
fn every_truncation_fails_cleanly() {
    for f in load_fixtures() {
        for len in 0..f.bytes.len() {
            let prefix = &f.bytes[..len];
            decode_all_ways(prefix);
            assert!(
                decode_as(&f.kind, prefix).is_err(),
                "{} truncated to {len} decoded",
                f.name
            );
        }
    }
}

#[test]
fn mutations_never_panic() {
    const MUTATIONS_PER_FIXTURE: usize = 3000;
    let started = std::time::Instant::now();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let interesting = [0x00, 0x01, 0x7f, 0x80, 0x81, 0xf8, 0xfe, 0xff];
    for f in load_fixtures() {
        for _ in 0..MUTATIONS_PER_FIXTURE {
            let mut b = f.bytes.clone();
            for _ in 0..=rng.below(4) {
                if b.is_empty() {
                    break;
                }
                let at = rng.below(b.len());
                match rng.below(5) {
                    0 => b[at] = rng.next() as u8,
                    1 => b[at] ^= 1 << rng.below(8),
                    2 => b[at] = interesting[rng.below(interesting.len())],
                    3 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, interesting[rng.below(interesting.len())]),
                }
            }
            decode_all_ways(&b);
        }
    }
    // Generous bound (debug build); a hang or blow-up would be far slower.
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
}

/// Writes this crate's encoding of every value fixture to
/// `$HOOP_GOB_DUMP_DIR/NAME.gob` plus a `manifest` of `NAME KIND` lines, for
/// `fixtures/check-encoder.sh` to decode with Go. Does nothing without the
/// variable.
#[test]
fn dump_encoder_outputs_for_go() {
    let Some(dir) = std::env::var_os("HOOP_GOB_DUMP_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut manifest = String::new();
    for f in load_fixtures().iter().filter(|f| !f.is_error()) {
        std::fs::write(dir.join(format!("{}.gob", f.name)), encode_expected(f)).unwrap();
        manifest.push_str(&format!("{} {}\n", f.name, f.kind));
    }
    std::fs::write(dir.join("manifest"), manifest).unwrap();
}
