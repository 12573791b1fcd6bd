//! The run backend: each session is a one-off dyno, like `heroku run`, natively in Rust and
//! without the Heroku CLI (heroku-protocols.md §2-§4).
//!
//! - [`args`]: the `heroku run` flags, validated before any API call (bad input exits 2);
//! - the Platform API (crate `heroku-api`) creates the dyno with `attach: true`;
//! - [`rendezvous`]: the TLS stream to the dyno's process (`rendezvous://` attach URLs);
//! - [`ssh_attach`]: `https://` attach URLs (Fir, Shield, `run:inside`): an HTTPS
//!   `Upgrade: tcp`, then SSH (crate `backend-ssh`) with the account key `HEROKU_SSH_KEY`;
//! - [`marker`]: the exit status from the in-band marker, scanned across reads;
//! - exec sessions use `force_no_tty: true` and end the input with `0x04`; input that itself
//!   contains `0x04` is sent base64-encoded and decoded on the dyno, so it arrives unchanged;
//! - the dyno is stopped (`DELETE`) on every exit path: command end, session close, stream loss.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod account_key;
pub use heroku_args::run as args;
mod error;
pub mod marker;
pub mod rendezvous;
mod session;
pub mod ssh_attach;

use backend::{Backend, ExitStatus, SessionIo, SessionRequest};
use futures::future::BoxFuture;

pub use error::RunError;
use heroku_policy::basename;
pub use session::{HEROKU_SSH_KEY_VAR, RunConfig, attach_key};

/// Whether a connection command belongs to this backend: `heroku run …` (any path to a
/// `heroku` binary, first argument `run`) or `heroku-run`.
pub fn claims(command: &[String]) -> bool {
    match command.first().map(|c| basename(c)) {
        Some("heroku-run") => true,
        Some("heroku") => command.get(1).is_some_and(|a| a == "run"),
        _ => false,
    }
}

/// Runs sessions on one-off dynos.
#[derive(Debug, Clone)]
pub struct RunBackend {
    config: RunConfig,
}

impl RunBackend {
    /// A backend with the given settings.
    pub fn new(config: RunConfig) -> RunBackend {
        RunBackend { config }
    }
}

impl Backend for RunBackend {
    fn name(&self) -> &'static str {
        "run"
    }

    fn run(&self, request: SessionRequest, io: SessionIo) -> BoxFuture<'static, ExitStatus> {
        let config = self.config.clone();
        Box::pin(session::run(config, request, io))
    }

    fn fixes_terminal_size_at_start(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn claims_heroku_run_commands_only() {
        assert!(claims(&v(&["/app/bin/heroku", "run", "--exit-code"])));
        assert!(claims(&v(&["heroku-run"])));
        assert!(!claims(&v(&["heroku", "ps:exec"])));
        assert!(!claims(&v(&["bash"])));
        assert!(!claims(&v(&[])));
    }
}
