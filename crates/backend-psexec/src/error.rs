//! Why a psexec session failed before or while connecting, and the one place where that
//! becomes the session's exit status (`From<PsexecError> for ExitStatus`): 2 for a bad
//! argument or input (nothing was started), 1 for a refusal by Heroku or the connection's
//! policy before anything ran on the dyno (the CLI exits 1), 254 for failures inside the agent
//! or on the way to the dyno. Once the channel runs, the remote command's status is reported by
//! `backend-ssh`.
//!
//! Each cause of the CLI's catch-all "Could not connect to dyno!" has its own variant and says
//! what to do (heroku-protocols.md §7). Messages never hold the API key or key material:
//! `HerokuError` redacts the key, `SshError` never holds keys.

use std::time::Duration;

use backend::{ExitStatus, INTERNAL_EXIT_CODE};
use backend_ssh::SshError;
use heroku_api::{ApiError, HerokuError};
use heroku_policy::PolicyError;

use crate::args::{ArgsError, EXEC_FEATURE};
use crate::keys::KeyError;
use crate::session::AUTO_ENABLE_VAR;

/// Exit code for bad arguments or input (nothing was started).
const USAGE_EXIT_CODE: i32 = 2;
/// Exit code for a refusal before anything ran on the dyno (the CLI exits 1).
const REFUSED_EXIT_CODE: i32 = 1;

/// Why a psexec session failed. Large payloads are boxed to keep `Result`s small.
#[derive(Debug, thiserror::Error)]
pub enum PsexecError {
    /// A bad ps-exec.sh argument.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// Refused by the Heroku policy (allowlist, missing API key).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The Platform API client could not be set up.
    #[error(transparent)]
    Client(Box<HerokuError>),
    /// The session was closed (gateway close, shutdown).
    #[error("session closed")]
    Closed,
    #[error(
        "--enable-exec is not allowed on this connection: enabling Heroku Exec restarts a dyno, so the connection decides; an administrator can allow it by setting {var}=ask on the connection (users may then pass --enable-exec) or {var}=true (sessions enable it when needed), or enable Heroku Exec once (heroku features:enable runtime-heroku-exec, then restart the dynos)",
        var = AUTO_ENABLE_VAR
    )]
    EnableNotAllowed,
    #[error("psexec --status: {0}")]
    Status(Box<HerokuError>),
    #[error(
        "could not connect to dyno {dyno}: one-off (run.*) and release-phase (release.*) dynos have no Heroku Exec agent on the Common Runtime; target a formation dyno such as web.1"
    )]
    OneOff { dyno: String },
    #[error(
        "psexec: no command: the input is the command to run on the dyno (for example -i 'ls -la'); or use --pipe CMD, --interactive or --status"
    )]
    NoCommand,
    #[error(
        "psexec: the input is over {limit} bytes, too large to be a command; use --pipe CMD to stream it to a program on the dyno"
    )]
    InputTooLarge { limit: usize },
    /// An API call on the way to the dyno failed (app, feature, dyno lookups; the exchange
    /// when Heroku did not answer).
    #[error("could not connect to dyno {dyno}: {error}")]
    Unreachable {
        dyno: String,
        error: Box<HerokuError>,
    },
    /// `HEROKU_SSH_KEY` is set but unusable.
    #[error("{0}")]
    AttachKey(Box<SshError>),
    #[error(
        "app {app} is a Fir app, which has no Heroku Exec: psexec runs the session inside the dyno with run:inside over Heroku's SSH attach path, which needs an SSH key registered on the Heroku account; set the connection secret HEROKU_SSH_KEY to an ed25519 private key and register it once (`dynoagent keys register`, or `heroku keys:add`)"
    )]
    FirNoKey { app: String },
    #[error(
        "app {app} is a Fir app: its dynos have pod-style names, and {dyno} is not one of them; its dynos: {dynos}; pass one with --dyno"
    )]
    FirNoSuchDyno {
        app: String,
        dyno: String,
        dynos: String,
    },
    #[error("app {app} is a Fir app with no running dyno to run inside; its dynos: {dynos}")]
    FirNoRunningDyno { app: String, dynos: String },
    #[error("run:inside on dyno {dyno} of {app}: {error}")]
    FirRunInside {
        app: String,
        dyno: String,
        error: Box<HerokuError>,
    },
    #[error(
        "app {app} is a Fir app: port forwarding into a dyno goes through Heroku Exec, which Fir does not have (heroku ps:forward is refused there too)"
    )]
    FirNoForward { app: String },
    #[error("Heroku returned no attach URL for run:inside on dyno {dyno}")]
    FirNoAttachUrl { dyno: String },
    #[error("attaching to dyno {dyno} over SSH: {error}")]
    FirAttach {
        dyno: String,
        error: backend_run::ssh_attach::AttachError,
    },
    #[error(
        "Heroku Exec is disabled for app {app} (feature {feature} is off). Enabling it restarts the app's dynos, because a dyno starts its exec agent only at boot, so dynoagent never does it on its own. To enable it and restart only dyno {dyno}, run again with --enable-exec if this connection allows it (PSEXEC_AUTO_ENABLE=ask), or set PSEXEC_AUTO_ENABLE=true on this connection; or run `heroku features:enable {feature} -a {app}` and restart the dynos yourself.",
        feature = EXEC_FEATURE
    )]
    ExecDisabled { app: String, dyno: String },
    #[error("enabling Heroku Exec for {app}: {error}")]
    Enable {
        app: String,
        error: Box<HerokuError>,
    },
    #[error(
        "could not connect to dyno {dyno}: it is {state}, not up; Heroku Exec needs a running dyno (check with --status or heroku ps -a {app})"
    )]
    NotUp {
        app: String,
        dyno: String,
        state: String,
    },
    #[error(
        "could not connect to dyno {dyno}: app {app} has no dyno {dyno} (check with --status or heroku ps -a {app})"
    )]
    NoSuchDyno { app: String, dyno: String },
    #[error(
        "could not restart dyno {dyno}: app {app} has no dyno {dyno} (check with --status or heroku ps -a {app})"
    )]
    RestartNoSuchDyno { app: String, dyno: String },
    #[error("restarting dyno {dyno} of {app}: {error}")]
    Restart {
        app: String,
        dyno: String,
        error: Box<HerokuError>,
    },
    #[error(
        "dyno {dyno} of {app} crashed after the restart; check its logs (heroku logs -a {app} -d {dyno})"
    )]
    Crashed { app: String, dyno: String },
    #[error("waiting for dyno {dyno}: {error}")]
    Waiting {
        dyno: String,
        error: Box<HerokuError>,
    },
    /// `last` is the last state seen, or `unknown`.
    #[error(
        "dyno {dyno} of {app} was not up within {wait:?} after the restart (last state: {last}); try again shortly"
    )]
    NotUpInTime {
        app: String,
        dyno: String,
        wait: Duration,
        last: String,
    },
    /// No client key could be made.
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot encode the client key: {0}")]
    EncodeKey(String),
    /// The exec-manager answered the exchange with a 4xx.
    #[error(
        "could not connect to dyno {dyno}: the exec-manager refused the credentials exchange: {api}; check the connection's HEROKU_API_KEY and that it may access the app"
    )]
    ExchangeRefused { dyno: String, api: Box<ApiError> },
    /// The exec-manager answered the exchange with a 5xx.
    #[error("could not connect to dyno {dyno}: the exec-manager failed: {api}; try again later")]
    ExchangeFailed { dyno: String, api: Box<ApiError> },
    /// `detail` is the exec-manager's message.
    #[error(
        "could not connect to dyno {dyno}: its exec agent did not register within {wait:?} after the restart (exec-manager: {detail})"
    )]
    NoAgentAfterRestart {
        dyno: String,
        wait: Duration,
        detail: String,
    },
    #[error(
        "could not connect to dyno {dyno}: Heroku Exec is enabled and the dyno is up, but it has no exec agent, most likely because it has not restarted since the feature was enabled (exec-manager: {detail}). Restart it (heroku ps:restart {dyno} -a {app}), or run again with --enable-exec to restart only this dyno"
    )]
    NoAgent {
        app: String,
        dyno: String,
        detail: String,
    },
    #[error(
        "the exec-manager returned an unusable proxy_public_key ({0}); refusing to connect without a pinned host key"
    )]
    ProxyKey(String),
    #[error("could not connect to dyno {dyno} through the Heroku Exec proxy {addr}: {error}")]
    Proxy {
        dyno: String,
        /// `host:port`.
        addr: String,
        error: Box<SshError>,
    },
}

impl From<PsexecError> for ExitStatus {
    fn from(e: PsexecError) -> ExitStatus {
        use PsexecError as E;
        let code = match &e {
            E::Args(_)
            | E::NoCommand
            | E::InputTooLarge { .. }
            | E::AttachKey(_)
            | E::Policy(PolicyError::InvalidAppName(_)) => USAGE_EXIT_CODE,
            E::Policy(_)
            | E::Client(_)
            | E::Closed
            | E::Key(_)
            | E::EncodeKey(_)
            | E::ProxyKey(_)
            | E::Proxy { .. }
            | E::FirNoAttachUrl { .. }
            | E::FirAttach { .. } => INTERNAL_EXIT_CODE,
            E::EnableNotAllowed
            | E::Status(_)
            | E::OneOff { .. }
            | E::Unreachable { .. }
            | E::FirNoKey { .. }
            | E::FirNoForward { .. }
            | E::FirNoSuchDyno { .. }
            | E::FirNoRunningDyno { .. }
            | E::FirRunInside { .. }
            | E::ExecDisabled { .. }
            | E::Enable { .. }
            | E::NotUp { .. }
            | E::NoSuchDyno { .. }
            | E::RestartNoSuchDyno { .. }
            | E::Restart { .. }
            | E::Crashed { .. }
            | E::Waiting { .. }
            | E::NotUpInTime { .. }
            | E::ExchangeRefused { .. }
            | E::ExchangeFailed { .. }
            | E::NoAgentAfterRestart { .. }
            | E::NoAgent { .. } => REFUSED_EXIT_CODE,
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
    fn usage_refusal_and_internal_codes() {
        assert_eq!(ExitStatus::from(PsexecError::NoCommand).code, 2);
        let refused = ExitStatus::from(PsexecError::EnableNotAllowed);
        assert_eq!(refused.code, 1);
        assert!(
            refused.message.contains("PSEXEC_AUTO_ENABLE=ask"),
            "{}",
            refused.message
        );
        let slow = ExitStatus::from(PsexecError::NotUpInTime {
            app: "app".into(),
            dyno: "web.1".into(),
            wait: Duration::from_secs(60),
            last: "starting".into(),
        });
        assert!(
            slow.message.contains("within 60s") && slow.message.contains("last state: starting"),
            "{}",
            slow.message
        );
        assert_eq!(
            ExitStatus::from(PsexecError::Closed),
            ExitStatus::internal("session closed")
        );
    }
}
