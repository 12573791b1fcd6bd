//! The local backend: a session is a process on the agent's own host, as hoop's agent runs
//! command-line connections.
//!
//! argv is `CmdList ++ ClientArgs`, executed directly without a shell (`$VAR` references to session
//! variables in the connection's command are expanded, as hoop does). The process gets only
//! the session env plus `HOME` and `PATH` from the agent: the agent's own secrets (`HOOP_KEY`,
//! `HEROKU_API_KEY`, ...) are never inherited. Each session runs in its own process group
//! (exec) or session (terminal), and every exit path kills what is left of that group.
//!
//! Exit codes: the child's own; 127 when the program is not found; 1 for any other start
//! failure; `128 + n` when killed by signal `n` (the message names the signal).

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use backend::duplex::{self, Drain, ExitEnding, RemoteInput, WriterInput, pump_input, pump_output};
use backend::{Backend, ExitStatus, Mode, SessionIo, SessionRequest, TermSize};
use bytes::Bytes;
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Child;

/// How long output may keep flowing after the main process exits before the rest of its
/// process group is killed (a background job holding the pipe open must not hang a session).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Settings for [`LocalBackend`].
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Time between SIGTERM and SIGKILL when a session is closed.
    pub kill_grace: Duration,
    /// `HOME` for sessions whose env does not set one.
    pub home: Option<OsString>,
    /// `PATH` for sessions whose env does not set one.
    pub path: Option<OsString>,
}

impl LocalConfig {
    /// Defaults: 5 s grace, `HOME` and `PATH` from the agent's environment.
    pub fn from_agent_env() -> LocalConfig {
        LocalConfig {
            kill_grace: Duration::from_secs(5),
            home: std::env::var_os("HOME"),
            path: std::env::var_os("PATH"),
        }
    }
}

/// Runs sessions as local processes.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    config: LocalConfig,
}

impl LocalBackend {
    /// A backend with the given settings.
    pub fn new(config: LocalConfig) -> LocalBackend {
        LocalBackend { config }
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn run(&self, request: SessionRequest, io: SessionIo) -> BoxFuture<'static, ExitStatus> {
        let config = self.config.clone();
        Box::pin(async move {
            let argv = match build_argv(&request) {
                Ok(argv) => argv,
                Err(e) => return e.into(),
            };
            let env = build_env(&request, &config);
            let ran = match request.mode {
                Mode::Exec => run_exec(argv, env, io, config.kill_grace).await,
                Mode::Terminal { size } => {
                    run_terminal(argv, env, size, io, config.kill_grace).await
                }
            };
            ran.unwrap_or_else(ExitStatus::from)
        })
    }
}

/// Why a local session failed on the agent's side. Mapped to its exit status in one place
/// (`From<LocalError> for ExitStatus`): 127 when the program is not found, 1 for any other
/// start failure, 254 for the rest.
#[derive(Debug, thiserror::Error)]
enum LocalError {
    #[error("the connection has no command to run; set its command in the gateway")]
    NoCommand,
    #[error("failed starting command, reason={program}: command not found")]
    NotFound { program: String },
    #[error("failed starting command, reason={program}: {reason}")]
    Start { program: String, reason: String },
    #[error("cannot allocate a terminal: {0}")]
    Pty(String),
    #[error("cannot size the terminal: {0}")]
    Size(String),
    #[error("the process exited before it could be tracked")]
    Untracked,
    #[error("cannot open the process's pipes")]
    Pipes,
    #[error("cannot wait for the process: {0}")]
    Wait(std::io::Error),
    #[error("session closed")]
    Closed,
}

impl From<LocalError> for ExitStatus {
    fn from(e: LocalError) -> ExitStatus {
        let code = match e {
            LocalError::NotFound { .. } => 127,
            LocalError::Start { .. } => 1,
            _ => backend::INTERNAL_EXIT_CODE,
        };
        ExitStatus {
            code,
            message: e.to_string(),
        }
    }
}

fn build_argv(request: &SessionRequest) -> Result<Vec<String>, LocalError> {
    let mut argv = Vec::with_capacity(request.command.len() + request.args.len());
    for (i, part) in request.command.iter().enumerate() {
        // hoop expands session variables in the connection's command, except argv[0]. The
        // client's arguments are user input and are passed exactly as typed.
        argv.push(if i == 0 {
            part.clone()
        } else {
            request.env.expand(part)
        });
    }
    argv.extend(request.args.iter().cloned());
    if argv.first().is_none_or(String::is_empty) {
        return Err(LocalError::NoCommand);
    }
    Ok(argv)
}

fn build_env(request: &SessionRequest, config: &LocalConfig) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = request
        .env
        .iter()
        .map(|(k, v)| (OsString::from(k), v.to_owned()))
        .collect();
    let has = |name: &str| request.env.get(name).is_some();
    for (name, inherited) in [("HOME", &config.home), ("PATH", &config.path)] {
        if let (false, Some(value)) = (has(name), inherited) {
            env.push((name.into(), value.clone()));
        }
    }
    if matches!(request.mode, Mode::Terminal { .. }) && !has("TERM") {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    env
}

fn start_failure(program: &str, e: &std::io::Error) -> LocalError {
    if e.kind() == std::io::ErrorKind::NotFound {
        LocalError::NotFound {
            program: program.to_owned(),
        }
    } else {
        LocalError::Start {
            program: program.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// Sends `signal` to the process group `pgid`; a group that is already gone is not an error.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, error = %e, "cannot signal process group")
        }
    }
}

/// SIGTERM to the group, SIGKILL after `grace`, and reap the leader.
async fn terminate(child: &mut Child, pgid: Pid, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever else is left in the group (children that ignored SIGTERM) goes too.
    kill_rest(pgid).await;
}

/// How long a session's end waits for the rest of its process group to be gone after SIGKILL.
/// Signals are delivered asynchronously: without the wait, a background child could still be
/// running for a moment after the session reported its end. Zombies (whose reaper is not the
/// agent) keep the group alive for `kill(2)`, hence the bound.
const GROUP_GONE_WAIT: Duration = Duration::from_millis(200);

/// SIGKILL to what is left of the group, then a short bounded wait until the group is gone.
async fn kill_rest(pgid: Pid) {
    signal_group(pgid, Signal::SIGKILL);
    let deadline = tokio::time::Instant::now() + GROUP_GONE_WAIT;
    while killpg(pgid, None).is_ok() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn run_exec(
    argv: Vec<String>,
    env: Vec<(OsString, OsString)>,
    io: SessionIo,
    grace: Duration,
) -> Result<ExitStatus, LocalError> {
    let SessionIo {
        mut input,
        stdout: out_sink,
        stderr: err_sink,
        cancel,
        ..
    } = io;
    let (program, args) = match argv.split_first() {
        Some(split) => split,
        None => return Err(LocalError::NoCommand),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Err(start_failure(program, &e)),
    };
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        return Err(LocalError::Untracked);
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        terminate(&mut child, pgid, grace).await;
        return Err(LocalError::Pipes);
    };
    let ending = duplex::drive_with_exit(
        &cancel,
        pump_input(&mut input, WriterInput::new(stdin)),
        async {
            tokio::join!(
                pump_output(stdout, &out_sink),
                pump_output(stderr, &err_sink)
            )
        },
        child.wait(),
        Drain {
            after_exit: DRAIN_AFTER_EXIT,
            on_stall: || signal_group(pgid, Signal::SIGKILL),
        },
    )
    .await;
    finish(ending, &mut child, pgid, grace).await
}

/// Maps how the driver ended to the session's status, stopping the process group first
/// when the session was cancelled, and always killing what is left of the group.
async fn finish(
    ending: ExitEnding<std::io::Result<std::process::ExitStatus>>,
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
) -> Result<ExitStatus, LocalError> {
    let status = match ending {
        ExitEnding::Cancelled => {
            terminate(child, pgid, grace).await;
            return Err(LocalError::Closed);
        }
        ExitEnding::Exited { exit, .. } => exit,
    };
    kill_rest(pgid).await;
    status
        .map(ExitStatus::from_process)
        .map_err(LocalError::Wait)
}

/// A terminal's input side: keystrokes to the PTY, resizes applied to it. A terminal has no
/// end of input (a PTY ignores it; the user types `^D`).
struct PtyInput(pty_process::OwnedWritePty);

impl RemoteInput for PtyInput {
    async fn write(&mut self, data: Bytes) -> std::io::Result<()> {
        self.0.write_all(&data).await?;
        self.0.flush().await
    }
    async fn end(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    async fn resize(&mut self, size: TermSize) -> std::io::Result<()> {
        if let Err(e) = self.0.resize(pty_size(size)) {
            tracing::debug!(error = %e, "cannot resize the terminal");
        }
        Ok(())
    }
}

fn pty_size(size: TermSize) -> pty_process::Size {
    pty_process::Size::new_with_pixel(size.rows, size.cols, size.xpixel, size.ypixel)
}

async fn run_terminal(
    argv: Vec<String>,
    env: Vec<(OsString, OsString)>,
    size: TermSize,
    io: SessionIo,
    grace: Duration,
) -> Result<ExitStatus, LocalError> {
    let SessionIo {
        mut input,
        stdout: out_sink,
        cancel,
        ..
    } = io;
    let (program, args) = match argv.split_first() {
        Some(split) => split,
        None => return Err(LocalError::NoCommand),
    };
    let (pty, pts) = match pty_process::open() {
        Ok(pair) => pair,
        Err(e) => return Err(LocalError::Pty(e.to_string())),
    };
    if let Err(e) = pty.resize(pty_size(size)) {
        return Err(LocalError::Size(e.to_string()));
    }
    let cmd = pty_process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .kill_on_drop(true);
    let mut child = match cmd.spawn(pts) {
        Ok(child) => child,
        Err(pty_process::Error::Io(e)) => return Err(start_failure(program, &e)),
        Err(e) => {
            return Err(LocalError::Start {
                program: program.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    // The child is a session leader, so its pid is also its process group id.
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        return Err(LocalError::Untracked);
    };
    let (reader, writer) = pty.into_split();
    let ending = duplex::drive_with_exit(
        &cancel,
        pump_input(&mut input, PtyInput(writer)),
        pump_output(reader, &out_sink),
        child.wait(),
        Drain {
            after_exit: DRAIN_AFTER_EXIT,
            on_stall: || signal_group(pgid, Signal::SIGKILL),
        },
    )
    .await;
    finish(ending, &mut child, pgid, grace).await
}
