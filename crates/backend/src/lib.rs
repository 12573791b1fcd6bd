//! What a backend is: given a [`SessionRequest`] and a [`SessionIo`] (input events in, two
//! output sinks out, a cancellation token), run the session and report an [`ExitStatus`].
//!
//! run, psexec, ssh and local are implementations in their own crates; the agent picks one per
//! session from the connection's command. This crate also owns what they share: the resolved
//! session environment ([`env`]) and exit-status conventions. It knows nothing about gRPC.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod duplex;
pub mod env;
pub mod file;
mod io;
#[cfg(feature = "test-support")]
pub mod testing;

use std::fmt;

use futures::future::BoxFuture;
pub use hoop_wire::{SessionId, TermSize};

pub use env::{EnvError, SessionEnv};
pub use io::{
    CHUNK_SIZE, Input, OutputSink, OutputTarget, SessionIo, SessionReport, SinkClosed, StreamKind,
    Target,
};

/// The exit code for failures inside the agent or a backend (hoop's `internalExitCode`).
pub const INTERNAL_EXIT_CODE: i32 = hoop_wire::spec::INTERNAL_EXIT_CODE;

/// How the client is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `hoop exec`: no terminal; stdin is the whole input followed by EOF.
    Exec,
    /// `hoop connect`: an interactive terminal of the given initial size.
    Terminal { size: TermSize },
}

/// Everything a backend needs to start a session.
pub struct SessionRequest {
    pub session_id: SessionId,
    pub connection_name: String,
    pub user: String,
    /// The connection's command (`CmdList`).
    pub command: Vec<String>,
    /// The client's arguments (`ClientArgs`).
    pub args: Vec<String>,
    /// The session environment, already resolved (secrets decoded, files written).
    pub env: SessionEnv,
    pub mode: Mode,
    /// The access duration the user was granted (hoop's `jit.timeout`), if the gateway sent
    /// one. Backends that start billable resources bound them by it.
    pub jit_timeout: Option<std::time::Duration>,
}

impl fmt::Debug for SessionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments may carry input the user considers sensitive; the env holds secrets.
        f.debug_struct("SessionRequest")
            .field("session_id", &self.session_id)
            .field("connection_name", &self.connection_name)
            .field("command", &self.command)
            .field("args", &self.args.len())
            .field("env", &self.env)
            .field("mode", &self.mode)
            .field("jit_timeout", &self.jit_timeout)
            .finish()
    }
}

/// How a session ended: the exit code reported to the client, and a message for the close
/// payload (empty on success).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
    pub message: String,
}

impl ExitStatus {
    /// A successful exit.
    pub fn success() -> ExitStatus {
        ExitStatus {
            code: 0,
            message: String::new(),
        }
    }

    /// An agent-side failure (254) with its reason.
    pub fn internal(message: impl Into<String>) -> ExitStatus {
        ExitStatus {
            code: INTERNAL_EXIT_CODE,
            message: message.into(),
        }
    }

    /// Maps a process status: the exit code as is; a signal `n` as `128 + n`, naming it.
    pub fn from_process(status: std::process::ExitStatus) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(code) = status.code() {
            return ExitStatus::exited(code);
        }
        match status.signal() {
            Some(sig) => ExitStatus::signaled(sig, signal_name(sig)),
            None => ExitStatus::internal("the process ended without an exit status"),
        }
    }

    /// A command that exited with `code` (success for 0), as hoop words it.
    pub fn exited(code: i32) -> ExitStatus {
        if code == 0 {
            return ExitStatus::success();
        }
        ExitStatus {
            code,
            message: format!("failed executing command, reason=exit status {code}"),
        }
    }

    /// A process killed by signal `number` (`name` like `TERM` or `SIGTERM`).
    pub fn signaled(number: i32, name: &str) -> ExitStatus {
        let name = name.strip_prefix("SIG").unwrap_or(name);
        ExitStatus {
            code: 128 + number,
            message: format!("failed executing command, reason=killed by signal SIG{name}"),
        }
    }
}

/// The connection variable that pins a connection's command: `true` (or `1`, `yes`) refuses
/// every client argument, so users run exactly the connection's command (with their input).
pub const PIN_COMMAND_VAR: &str = "DYNOAGENT_PIN_COMMAND";

/// Refuses client arguments when the connection pins its command ([`PIN_COMMAND_VAR`]).
/// Without a pin, arguments are appended as the Heroku CLI and OpenSSH do, which lets a user
/// add a remote shell command (`'; cat config/master.key'`): a connection that runs one fixed
/// task must pin it. Read only from the connection; any value other than `false`/`0`/`no`
/// (including one that is not text) pins.
pub fn check_pinned_command(env: &SessionEnv, args: &[String]) -> Result<(), ExitStatus> {
    let pinned = match env.connection_str(PIN_COMMAND_VAR) {
        Some(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "false" | "0" | "no"
        ),
        None => env.named_by_connection(PIN_COMMAND_VAR),
    };
    if pinned && !args.is_empty() {
        return Err(ExitStatus::internal(format!(
            "this connection pins its command ({PIN_COMMAND_VAR}): it accepts no arguments, but {} were given; run it without arguments (your input is still passed to it)",
            args.len()
        )));
    }
    Ok(())
}

/// The conventional name of a signal number ("TERM" for 15), or its number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "HUP",
        libc::SIGINT => "INT",
        libc::SIGQUIT => "QUIT",
        libc::SIGILL => "ILL",
        libc::SIGABRT => "ABRT",
        libc::SIGFPE => "FPE",
        libc::SIGKILL => "KILL",
        libc::SIGSEGV => "SEGV",
        libc::SIGPIPE => "PIPE",
        libc::SIGALRM => "ALRM",
        libc::SIGTERM => "TERM",
        libc::SIGUSR1 => "USR1",
        libc::SIGUSR2 => "USR2",
        libc::SIGBUS => "BUS",
        _ => "UNKNOWN",
    }
}

/// Runs sessions of one kind. Implementations must:
/// - stream output through the sinks as it arrives, never buffering a whole stream;
/// - stop promptly when `io.cancel` fires, releasing every resource (processes, connections,
///   dynos) before returning;
/// - return exactly one [`ExitStatus`]; a missing remote status is never reported as 0.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and audit lines (`local`, `run`, `psexec`, `ssh`).
    fn name(&self) -> &'static str;

    /// Runs one session to completion.
    fn run(&self, request: SessionRequest, io: SessionIo) -> BoxFuture<'static, ExitStatus>;

    /// Whether a terminal's size is fixed when the backend creates its target (a one-off
    /// dyno's `COLUMNS`/`LINES`) and cannot change later. The session then waits a short,
    /// bounded time for the client's first resize before starting it (hoop's CLI sends its
    /// first `"\n"` and first resize concurrently, in either order).
    fn fixes_terminal_size_at_start(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn a_pinned_command_refuses_client_arguments() {
        let args = vec![";".to_owned(), "cat-secret-file".to_owned()];
        let mut env = SessionEnv::default();
        assert!(
            check_pinned_command(&env, &args).is_ok(),
            "not pinned by default"
        );
        env.set_from_client(PIN_COMMAND_VAR, "true");
        assert!(
            check_pinned_command(&env, &args).is_ok(),
            "a client cannot pin"
        );
        env.set_from_connection(PIN_COMMAND_VAR, "false");
        assert!(check_pinned_command(&env, &args).is_ok());
        env.set_from_connection(PIN_COMMAND_VAR, "true");
        assert!(check_pinned_command(&env, &[]).is_ok());
        let refused = check_pinned_command(&env, &args).unwrap_err();
        assert!(
            refused.message.contains("2 were given"),
            "{}",
            refused.message
        );
        assert!(
            !refused.message.contains("cat-secret-file"),
            "arguments are not echoed"
        );
    }

    #[test]
    fn process_statuses_map_to_hoop_exit_codes() {
        assert_eq!(
            ExitStatus::from_process(std::process::ExitStatus::from_raw(0)),
            ExitStatus::success()
        );
        let three = ExitStatus::from_process(std::process::ExitStatus::from_raw(3 << 8));
        assert_eq!(three.code, 3);
        let killed = ExitStatus::from_process(std::process::ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!(killed.code, 137);
        assert!(killed.message.contains("SIGKILL"), "{}", killed.message);
    }
}
