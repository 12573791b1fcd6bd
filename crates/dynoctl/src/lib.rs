//! `dynoctl`: the client of a hoop-compatible gateway (`dynogw`, or `dynoagent dev`, which
//! embeds it), speaking the same packets as hoop's CLI (hoop-gateway-protocol.md §3.3-3.4).
//!
//! * [`exec()`]: a one-off command; input, output, stderr and exit code are byte-exact.
//! * [`terminal::connect`]: an interactive terminal through the caller's TTY.
//! * [`report`]: `dynoctl sessions` and `dynoctl audit`, read straight from the gateway's
//!   SQLite audit file (WAL mode, so reading never blocks the gateway). Reading the file was
//!   chosen over a read API on the gateway: nothing more to serve, secure or version, and the
//!   development gateway always runs on the same machine.
//!
//! Where it finds things (flag, then environment, then default):
//!
//! | what | flag | environment | default |
//! |---|---|---|---|
//! | gateway | `--gateway` | `DYNOCTL_GATEWAY` | `http://127.0.0.1:8010` ([`DEFAULT_GATEWAY`]) |
//! | client token | `--token` | `DYNOCTL_TOKEN` | the file `dynoagent dev` wrote ([`default_token`]), else `dev-token` |
//! | audit database | `--audit-db` | `DYNOCTL_AUDIT_DB` | [`dynogw::default_audit_db`] |
//!
//! The defaults are those of `dynoagent dev`, so `dynoctl` with no flags talks to it. The
//! gateway address may be `http://host:port`, `grpc://host:port` or `host:port`; TLS is not
//! supported (the development gateway is plaintext on loopback).
//!
//! This crate does not retry offline agents (hoop's CLI does, every 30 s): it reports them.

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod cli;
mod exec;
pub mod report;
mod stream;
mod tcp;
pub mod terminal;

use std::fmt;

pub use exec::{
    ExecOutcome, ExecRequest, exec, parse_env, read_input, resolve_input, stdin_is_piped,
};

/// The gateway `dynoagent dev` listens on.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8010";
/// The client token `dynoagent dev` accepts.
pub const DEFAULT_TOKEN: &str = dynogw::DEV_CLIENT_TOKEN;

/// The token to present when none is given: the one `dynoagent dev` wrote for this run
/// ([`dynogw::default_dev_token_file`]), else [`DEFAULT_TOKEN`].
pub fn default_token() -> String {
    std::fs::read_to_string(dynogw::default_dev_token_file())
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TOKEN.to_owned())
}
/// The exit code for anything the client, gateway or agent could not do (hoop's 254).
pub const INTERNAL_EXIT_CODE: i32 = hoop_wire::spec::INTERNAL_EXIT_CODE;

/// Where the gateway is and how to authenticate to it.
#[derive(Clone)]
pub struct ClientConfig {
    /// `http://host:port`, `grpc://host:port` or `host:port`.
    pub gateway: String,
    /// The client bearer token.
    pub token: String,
}

impl ClientConfig {
    /// A config for `gateway` with `token`.
    pub fn new(gateway: impl Into<String>, token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            gateway: gateway.into(),
            token: token.into(),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new(DEFAULT_GATEWAY, DEFAULT_TOKEN)
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("gateway", &self.gateway)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a client operation failed. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid gateway address {0:?}: expected http://host:port or host:port")]
    InvalidGateway(String),
    #[error("TLS gateways ({0}) are not supported by dynoctl; use a plaintext http:// address")]
    TlsUnsupported(String),
    #[error("the token contains characters that cannot be sent in a gRPC header")]
    BadToken,
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Dial { addr: String, reason: String },
    #[error("the gateway refused the token ({0}); check --token / DYNOCTL_TOKEN")]
    Unauthenticated(String),
    #[error("the gateway refused the session: {0}")]
    Refused(String),
    #[error(
        "the agent serving connection {0:?} is offline; start it (e.g. `dynoagent dev`) and retry"
    )]
    AgentOffline(String),
    #[error("the gateway ended the session without a close (exit code unknown)")]
    StreamEnded,
    #[error("invalid -e {0:?}: expected KEY=VALUE")]
    InvalidEnv(String),
    #[error("{0}")]
    Input(String),
    #[error("the input is {0} bytes; the gateway accepts at most 17 MiB")]
    InputTooLarge(usize),
    #[error(
        "could not allocate a tty, wrong type of device (dynoctl connect needs a terminal on stdin)"
    )]
    NotATty,
    #[error("terminal: {0}")]
    Terminal(String),
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error(transparent)]
    Audit(#[from] dynogw::audit::AuditError),
    #[error("no session {0:?} in the audit database")]
    NoSuchSession(String),
}

impl ClientError {
    /// The process exit code for this error: 2 for usage errors, else hoop's 254.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::InvalidGateway(_)
            | ClientError::TlsUnsupported(_)
            | ClientError::BadToken
            | ClientError::InvalidEnv(_)
            | ClientError::Input(_)
            | ClientError::InputTooLarge(_)
            | ClientError::NotATty => 2,
            _ => INTERNAL_EXIT_CODE,
        }
    }
}
