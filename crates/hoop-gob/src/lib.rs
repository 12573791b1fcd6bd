//! Go `encoding/gob` for the values hoop's gateway puts in packet specs:
//! `terminal.args` (`[]string`), `terminal.envvars` (`map[string]string`) and
//! `agent.connection_params` (`AgentConnectionParams`), decoded and encoded.
//!
//! This crate owns the gob wire format for exactly those three shapes: a
//! decoder that accepts any stream Go's `gob.Encoder` produces for them
//! (struct fields matched by name, unknown fields of any wire type skipped,
//! type ids taken from the stream's own definitions, values that span
//! messages, nested interfaces that define types inline, which Go's own
//! decoder fails to skip), and an encoder producing what a fresh Go encoder in a fresh Go
//! process produces. It deliberately does not offer general-purpose gob
//! (no derive, no dynamic values, no `gob.Register`), does not interpret the
//! decoded values (base64 env vars and JSON rules are returned as sent), and
//! does not log: [`AgentConnectionParams`]' `Debug` redacts its secrets.
//!
//! # Decisions
//!
//! * **Invalid UTF-8** in a Go string is an error ([`GobError::InvalidUtf8`]),
//!   never replaced: a command line or credential silently altered by
//!   `from_utf8_lossy` would be worse than a clear refusal.
//! * **`EnvVars` values** must be interfaces holding Go strings; anything else
//!   (or nil) is an error naming the key, never its value.
//! * **Trailing bytes** after the first value are ignored, as Go's
//!   `Decoder.Decode` ignores them.
//! * **Limits**: nesting is bounded (100 levels), every length and count is
//!   checked against the input left, arithmetic is checked; no input panics.
//!
//! # Why not an existing crate
//!
//! Evaluated against this crate's Go fixtures (Go 1.19). `gob` 0.1.0
//! (srijs/rust-gob, serde-based, long unmaintained) decodes the `[]string` and
//! `map[string]string` fixtures but fails on every `AgentConnectionParams`
//! carrying `EnvVars` ("expected str": no interface support) and cannot skip
//! unknown fields ("field number overflow"). `gobwire` 0.1.0 decoded every
//! fixture correctly (interfaces, by-name fields, ids other than 65,
//! skipping) and survived a quick mutation fuzz, but it is a first release
//! (changelog "unreleased") living inside an unrelated application monorepo,
//! with no maintenance record, and brings a proc-macro derive; for three
//! fixed shapes a small audited decoder with this crate's error messages and
//! only `thiserror` as a dependency was preferred. `gobwire` remains the
//! candidate should general gob support ever be needed.

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod decode;
mod encode;
mod error;
mod params;
mod types;
mod wire;

use std::collections::BTreeMap;

pub use error::GobError;
pub use params::{AgentConnectionParams, AiSessionAnalyzerParams};

/// Decodes a gob `[]string` stream (hoop's `terminal.args`).
pub fn decode_string_slice(data: &[u8]) -> Result<Vec<String>, GobError> {
    decode::string_slice(data)
}

/// Decodes a gob `map[string]string` stream (hoop's `terminal.envvars`).
pub fn decode_string_map(data: &[u8]) -> Result<BTreeMap<String, String>, GobError> {
    decode::string_map(data)
}

/// Decodes a gob `AgentConnectionParams` stream (hoop's `agent.connection_params`).
pub fn decode_connection_params(data: &[u8]) -> Result<AgentConnectionParams, GobError> {
    decode::connection_params(data)
}

/// Encodes `v` as a fresh Go encoder would encode a `[]string`.
pub fn encode_string_slice(v: &[String]) -> Vec<u8> {
    encode::string_slice(v)
}

/// Encodes `v` as a fresh Go encoder would encode a `map[string]string`
/// (entries in key order; Go's order is random).
pub fn encode_string_map(v: &BTreeMap<String, String>) -> Vec<u8> {
    encode::string_map(v)
}

/// Encodes `p` as a fresh Go encoder in a fresh process would encode hoop's
/// `AgentConnectionParams` (`EnvVars` entries in key order, as interfaces
/// holding strings; an empty `EnvVars` is omitted like a nil map).
pub fn encode_connection_params(p: &AgentConnectionParams) -> Vec<u8> {
    encode::connection_params(p)
}
