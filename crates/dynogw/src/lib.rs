//! `dynogw`: a hoop-compatible development gateway with a SQLite audit store.
//!
//! Agents and clients both call `/protobuf.Transport/Connect` and are told apart by the
//! `origin` metadata (hoop-gateway-protocol.md §1.4). Agents authenticate with their DSN (the
//! sha256 of its secret must match the configured hash and the agent name must equal the DSN
//! user); clients with a static bearer token from the config. Each client stream is one
//! session: the gateway mints its id, builds the agent's `AgentSessionOpen` with the gob
//! `AgentConnectionParams` as hoop's gateway does (§3.2), relays packets both ways, and records
//! the session in the audit store while it runs (§6).
//!
//! Code map:
//! * [`config`]: the TOML configuration ([`GatewayConfig`]) and its validation.
//! * `auth`: reading `Connect` metadata and authenticating agents and clients.
//! * `server`: the tonic service, the registry of live agents, start and shutdown.
//! * `session`: one task per client stream, owning that session's state and relay.
//! * [`audit`]: the SQLite store, its bounded batching writer and its read API.
//!
//! This crate deliberately does not do TLS (it is a loopback development gateway), reviews,
//! guardrails, data masking or any connection type other than `command-line`.
//!
//! Defaults match `dynoagent dev` and `dynoctl`: listen on `127.0.0.1:8010`, audit database
//! at [`default_audit_db`].

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod audit;
mod auth;
pub mod config;
mod server;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;

use base64::Engine as _;
use sha2::Digest as _;

pub use config::{AgentDef, ConfigError, ConnectionDef, GatewayConfig};
pub use server::{Gateway, GatewayError, RunningGateway, SysRequestError};

/// The default gRPC listen address (hoop's gateway port, on loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8010";

/// The default client token of a development setup (`dynoagent dev` and `dynoctl`).
pub const DEV_CLIENT_TOKEN: &str = "dev-token";

/// The file name of `dynoagent dev`'s client token, next to its audit database.
pub const DEV_TOKEN_FILE: &str = "dev-token";

/// Where `dynoagent dev` writes its random client token by default (0600), and where
/// `dynoctl` looks for it when given no token: `dev-token` next to [`default_audit_db`].
pub fn default_dev_token_file() -> PathBuf {
    default_audit_db().with_file_name(DEV_TOKEN_FILE)
}

/// The default audit database: `$DYNOAGENT_STATE_DIR/audit.db`, else
/// `$XDG_STATE_HOME/dynoagent/audit.db`, else `$HOME/.local/state/dynoagent/audit.db`, else
/// `$TMPDIR/dynoagent/audit.db`. `dynoctl` reads the same default.
pub fn default_audit_db() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("DYNOAGENT_STATE_DIR")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("dynoagent")))
        .or_else(|| env("HOME").map(|h| h.join(".local/state/dynoagent")))
        .unwrap_or_else(|| std::env::temp_dir().join("dynoagent"));
    dir.join("audit.db")
}

/// sha256 of `secret`, lower-case hex: what the gateway stores for an agent key.
pub fn hash_secret(secret: &str) -> String {
    let digest = sha2::Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DSN (`HOOP_KEY`) an agent named `name` with `secret` uses to reach a gateway at `addr`:
/// `grpc://name:secret@addr?mode=standard`. Characters outside `[A-Za-z0-9._~-]` in the name
/// and secret are percent-encoded.
pub fn agent_dsn(name: &str, secret: &str, addr: SocketAddr) -> String {
    format!(
        "grpc://{}:{}@{addr}?mode=standard",
        percent_encode(name),
        percent_encode(secret)
    )
}

/// A fresh agent secret shaped like hoop's (`xagt-` + base64url of 32 random bytes).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "xagt-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_like_sha256sum() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn dsn_round_trips_through_the_agent_parser() {
        let addr: SocketAddr = "127.0.0.1:8010".parse().unwrap();
        let secret = generate_secret();
        let dsn = agent_dsn("dev agent", &secret, addr);
        let parsed = gateway_link::Dsn::parse(&dsn).unwrap();
        assert_eq!(parsed.agent_name(), "dev agent");
        assert_eq!(parsed.secret(), secret);
        assert_eq!(parsed.port(), 8010);
        assert!(!parsed.tls());
    }
}
