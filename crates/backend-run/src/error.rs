//! Why a run session failed on the agent's side, and the one place where that becomes the
//! session's exit status (`From<RunError> for ExitStatus`): 2 for a bad argument or setting
//! (nothing was started), 254 for everything else. A command that ran reports its own code
//! through the exit marker instead; that is not an error.
//!
//! Messages never hold the API key or the dyno's `attach_url` (its path and query are the
//! rendezvous secret): `HerokuError` redacts the key and `RendezvousError` shows the URL
//! without them.

use backend::{ExitStatus, INTERNAL_EXIT_CODE};
use heroku_api::HerokuError;
use heroku_policy::PolicyError;

use backend_ssh::SshError;

use crate::args::ArgsError;
use crate::rendezvous::RendezvousError;
use crate::session::{HEROKU_SSH_KEY_VAR, MAX_TIME_TO_LIVE_SECS};
use crate::ssh_attach::AttachError;

/// Exit code for bad arguments or settings (nothing was started).
const USAGE_EXIT_CODE: i32 = 2;

/// Why a run session failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad `heroku run` argument.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// Refused by the Heroku policy (allowlist, missing API key).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(
        "HEROKU_RUN_TIME_TO_LIVE must be a whole number of seconds between 1 and {}; fix the connection's setting",
        MAX_TIME_TO_LIVE_SECS
    )]
    TimeToLive,
    /// A Platform API call (or the client's setup) failed.
    #[error(transparent)]
    Api(#[from] HerokuError),
    /// The session was closed (gateway close, shutdown) or its client went away.
    #[error("session closed")]
    Closed,
    #[error("Heroku returned no attach URL for dyno {dyno}")]
    NoAttachUrl { dyno: String },
    #[error("attaching to dyno {dyno}: {error}")]
    Attach {
        dyno: String,
        error: RendezvousError,
    },
    #[error(
        "the connection to dyno {dyno} dropped before the command finished ({error}); its exit status is unknown"
    )]
    Dropped { dyno: String, error: std::io::Error },
    /// `HEROKU_SSH_KEY` is set but unusable (checked before any dyno exists).
    #[error("{0}")]
    AttachKey(Box<SshError>),
    #[error(
        "dyno {dyno} attaches over SSH (Heroku's attach path for Fir apps, Shield spaces and run:inside), which needs an SSH key registered on the Heroku account: set the connection secret {HEROKU_SSH_KEY_VAR} to an ed25519 private key and register its public key once (`dynoagent keys register`, or `heroku keys:add`)"
    )]
    NoAttachKey { dyno: String },
    #[error(
        "app {app} is a Fir app or in a Shield space: its one-off dynos attach over SSH, which needs an SSH key registered on the Heroku account: set the connection secret {HEROKU_SSH_KEY_VAR} to an ed25519 private key and register its public key once (`dynoagent keys register`, or `heroku keys:add`)"
    )]
    AttachKeyNeeded { app: String },
    #[error("attaching to dyno {dyno} over SSH: {error}")]
    SshAttach { dyno: String, error: AttachError },
    #[error(
        "the command on dyno {dyno} ended before dynoagent's exit marker could run (the dyno's shell was killed or stopped from outside); its exit status is unknown"
    )]
    NoMarker { dyno: String },
}

impl From<RunError> for ExitStatus {
    fn from(e: RunError) -> ExitStatus {
        let code = match &e {
            RunError::Args(_)
            | RunError::TimeToLive
            | RunError::AttachKey(_)
            | RunError::AttachKeyNeeded { .. }
            | RunError::Policy(PolicyError::InvalidAppName(_)) => USAGE_EXIT_CODE,
            _ => INTERNAL_EXIT_CODE,
        };
        ExitStatus {
            code,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_exits_2_and_the_rest_254() {
        let usage = ExitStatus::from(RunError::TimeToLive);
        assert_eq!(usage.code, 2);
        assert!(usage.message.contains("86400"), "{}", usage.message);
        let args = ExitStatus::from(RunError::Args(ArgsError("heroku run: bad".into())));
        assert_eq!((args.code, args.message.as_str()), (2, "heroku run: bad"));
        let closed = ExitStatus::from(RunError::Closed);
        assert_eq!(closed, ExitStatus::internal("session closed"));
        let key = ExitStatus::from(RunError::Policy(PolicyError::MissingApiKey));
        assert_eq!(key.code, INTERNAL_EXIT_CODE);
    }
}
