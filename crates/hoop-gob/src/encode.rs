//! Encoding `[]string`, `map[string]string` and `AgentConnectionParams` as a
//! fresh Go `gob.Encoder` in a fresh Go process would: type definitions
//! numbered from 65 in Go's order and with Go's type names, zero fields
//! omitted, `EnvVars` values sent as interfaces holding Go strings.
//!
//! It deliberately does not reproduce Go's random map order (maps are written
//! in key order, which any gob decoder accepts) and cannot express Go's nil
//! versus empty distinction: an empty `EnvVars` map is omitted, like a nil
//! map, and a `Some` analyzer with all fields empty is sent, like a non-nil
//! pointer to a zero struct.

use std::collections::BTreeMap;

use crate::params::{AI_FIELD_NAMES, AgentConnectionParams, AiSessionAnalyzerParams};
use crate::types::{ids, map_definition, slice_definition, struct_definition};
use crate::wire::{put_bytes, put_int, put_len, put_message, put_uint};

/// The first id a fresh Go process gives a user type.
const FIRST_ID: i64 = 65;

/// Type ids a fresh Go process assigns while describing `AgentConnectionParams`
/// (the struct first, then its fields' new types in field order).
const PARAMS_ID: i64 = FIRST_ID;
const ENV_MAP_ID: i64 = FIRST_ID + 1;
const STRING_SLICE_ID: i64 = FIRST_ID + 2;
const AI_ID: i64 = FIRST_ID + 3;

/// The registered interface name of Go's `string` (type.go, `registerBasics`).
const STRING_INTERFACE_NAME: &str = "string";

/// `AgentConnectionParams`' fields as Go describes them, in declaration order.
const PARAMS_FIELDS: [(&str, i64); 20] = [
    ("ConnectionName", ids::STRING),
    ("ConnectionType", ids::STRING),
    ("ConnectionSubType", ids::STRING),
    ("UserID", ids::STRING),
    ("UserEmail", ids::STRING),
    ("EnvVars", ENV_MAP_ID),
    ("CmdList", STRING_SLICE_ID),
    ("ClientArgs", STRING_SLICE_ID),
    ("ClientVerb", ids::STRING),
    ("ClientOrigin", ids::STRING),
    ("DlpProvider", ids::STRING),
    ("DlpMode", ids::STRING),
    ("DLPInfoTypes", STRING_SLICE_ID),
    ("DlpGcpRawCredentialsJSON", ids::STRING),
    ("DlpPresidioAnalyzerURL", ids::STRING),
    ("DlpPresidioAnonymizerURL", ids::STRING),
    ("DataMaskingEntityTypesData", ids::BYTES),
    ("GuardRailRules", ids::BYTES),
    ("AnalyzerMetricsRules", ids::BYTES),
    ("AISessionAnalyzer", AI_ID),
];

fn put_strings(out: &mut Vec<u8>, v: &[String]) {
    put_len(out, v.len());
    for s in v {
        put_bytes(out, s.as_bytes());
    }
}

/// Writes struct fields as deltas from the previous field, omitting zeros.
struct StructWriter {
    /// Index of the previous field written; -1 before the first.
    prev: i64,
}

impl StructWriter {
    fn new() -> Self {
        Self { prev: -1 }
    }

    fn field(&mut self, out: &mut Vec<u8>, index: i64) {
        put_uint(out, index.saturating_sub(self.prev).cast_unsigned());
        self.prev = index;
    }

    fn string(&mut self, out: &mut Vec<u8>, index: i64, v: &str) {
        if !v.is_empty() {
            self.field(out, index);
            put_bytes(out, v.as_bytes());
        }
    }

    fn bytes(&mut self, out: &mut Vec<u8>, index: i64, v: &[u8]) {
        if !v.is_empty() {
            self.field(out, index);
            put_bytes(out, v);
        }
    }

    fn strings(&mut self, out: &mut Vec<u8>, index: i64, v: &[String]) {
        if !v.is_empty() {
            self.field(out, index);
            put_strings(out, v);
        }
    }

    fn end(self, out: &mut Vec<u8>) {
        put_uint(out, 0);
    }
}

/// One `map[string]any` entry whose value is a Go string: the key, then the
/// interface (registered name, concrete type id, byte count, singleton value).
fn put_string_interface_entry(out: &mut Vec<u8>, key: &str, value: &str) {
    put_bytes(out, key.as_bytes());
    put_bytes(out, STRING_INTERFACE_NAME.as_bytes());
    put_int(out, ids::STRING);
    let mut inner = Vec::with_capacity(value.len().saturating_add(10));
    put_uint(&mut inner, 0); // singleton delta
    put_bytes(&mut inner, value.as_bytes());
    put_bytes(out, &inner);
}

fn put_ai(out: &mut Vec<u8>, a: &AiSessionAnalyzerParams) {
    let mut w = StructWriter::new();
    for (index, value) in (0i64..).zip(a.fields()) {
        w.string(out, index, value);
    }
    w.end(out);
}

pub(crate) fn string_slice(v: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    put_message(&mut out, &slice_definition(FIRST_ID, "", ids::STRING));
    let mut value = Vec::new();
    put_int(&mut value, FIRST_ID);
    put_uint(&mut value, 0); // singleton delta
    put_strings(&mut value, v);
    put_message(&mut out, &value);
    out
}

pub(crate) fn string_map(v: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    put_message(
        &mut out,
        &map_definition(FIRST_ID, "", ids::STRING, ids::STRING),
    );
    let mut value = Vec::new();
    put_int(&mut value, FIRST_ID);
    put_uint(&mut value, 0); // singleton delta
    put_len(&mut value, v.len());
    for (k, val) in v {
        put_bytes(&mut value, k.as_bytes());
        put_bytes(&mut value, val.as_bytes());
    }
    put_message(&mut out, &value);
    out
}

pub(crate) fn connection_params(p: &AgentConnectionParams) -> Vec<u8> {
    let mut out = Vec::new();
    // Go names a type after the context it is first described in: struct
    // fields use the Go type's string, so these are not the empty names the
    // top-level slice and map get.
    put_message(
        &mut out,
        &struct_definition(PARAMS_ID, "AgentConnectionParams", &PARAMS_FIELDS),
    );
    put_message(
        &mut out,
        &map_definition(
            ENV_MAP_ID,
            "map[string]interface {}",
            ids::STRING,
            ids::INTERFACE,
        ),
    );
    put_message(
        &mut out,
        &slice_definition(STRING_SLICE_ID, "[]string", ids::STRING),
    );
    let ai_fields: Vec<(&str, i64)> = AI_FIELD_NAMES.iter().map(|n| (*n, ids::STRING)).collect();
    put_message(
        &mut out,
        &struct_definition(AI_ID, "AISessionAnalyzerParams", &ai_fields),
    );

    // Destructured so that a new field cannot be forgotten here.
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
    } = p;
    let mut v = Vec::new();
    put_int(&mut v, PARAMS_ID);
    let mut w = StructWriter::new();
    w.string(&mut v, 0, connection_name);
    w.string(&mut v, 1, connection_type);
    w.string(&mut v, 2, connection_sub_type);
    w.string(&mut v, 3, user_id);
    w.string(&mut v, 4, user_email);
    if !env_vars.is_empty() {
        w.field(&mut v, 5);
        put_len(&mut v, env_vars.len());
        for (key, value) in env_vars {
            put_string_interface_entry(&mut v, key, value);
        }
    }
    w.strings(&mut v, 6, cmd_list);
    w.strings(&mut v, 7, client_args);
    w.string(&mut v, 8, client_verb);
    w.string(&mut v, 9, client_origin);
    w.string(&mut v, 10, dlp_provider);
    w.string(&mut v, 11, dlp_mode);
    w.strings(&mut v, 12, dlp_info_types);
    w.string(&mut v, 13, dlp_gcp_raw_credentials_json);
    w.string(&mut v, 14, dlp_presidio_analyzer_url);
    w.string(&mut v, 15, dlp_presidio_anonymizer_url);
    w.bytes(&mut v, 16, data_masking_entity_types_data);
    w.bytes(&mut v, 17, guard_rail_rules);
    w.bytes(&mut v, 18, analyzer_metrics_rules);
    if let Some(ai) = ai_session_analyzer {
        w.field(&mut v, 19);
        put_ai(&mut v, ai);
    }
    w.end(&mut v);
    put_message(&mut out, &v);
    out
}
