//! One psexec session: parse, gate (app, feature, dyno), exchange credentials with the
//! exec-manager, connect to the exec proxy with its key pinned, and run one channel.
//!
//! Every refusal is a [`PsexecError`] that says which step failed and what to do; each cause of
//! the CLI's catch-all "Could not connect to dyno!" has its own variant (heroku-protocols.md
//! §7). The error becomes the exit status in one place, `crate::error`.

use std::sync::Arc;

use backend::{ExitStatus, Input, Mode, OutputSink, SessionIo, SessionRequest};
use backend_ssh::{ChannelSpec, HostKeyPolicy, Start, Target};
use bytes::{Bytes, BytesMut};
use heroku_api::{ExecCredentials, HerokuClient, HerokuError};
use heroku_policy::session_args;

use crate::args::{self, Action, EXEC_FEATURE, ExecArgs};
use crate::error::PsexecError;
use crate::keys::KeyPool;
use crate::{PsexecConfig, status};

/// The connection variable that governs enabling Heroku Exec (which restarts a dyno): `true`
/// for every session that needs it; `ask`: only with the user's `--enable-exec`; unset,
/// `false` or anything else: never (`--enable-exec` is refused). Restarting a dyno is the
/// connection's decision, not a user's. Read only from the connection: a client's
/// `-e PSEXEC_AUTO_ENABLE=…` is refused before the session starts.
pub const AUTO_ENABLE_VAR: &str = "PSEXEC_AUTO_ENABLE";

/// May this session enable Heroku Exec and restart the named dyno?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnablePolicy {
    Never,
    OnRequest,
    Always,
}

fn enable_policy(env: &backend::SessionEnv) -> EnablePolicy {
    match env
        .connection_str(AUTO_ENABLE_VAR)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("true" | "1" | "yes") => EnablePolicy::Always,
        Some("ask") => EnablePolicy::OnRequest,
        // Unset, `false`, and anything unrecognised: fail closed.
        None | Some(_) => EnablePolicy::Never,
    }
}

pub(crate) async fn run(
    config: PsexecConfig,
    keys: KeyPool,
    request: SessionRequest,
    io: SessionIo,
) -> ExitStatus {
    let (action, client) = match prepare(&config, &request, &io).await {
        Ok(Some(prepared)) => prepared,
        Ok(None) => return ExitStatus::success(),
        Err(e) => return e.into(),
    };
    let cancel = io.cancel.clone();
    // Setup (API calls, key exchange, SSH connect) is abandoned on cancel: nothing runs on
    // the dyno yet. Once connected, the channel owns cancellation, so the remote command gets
    // TERM, then KILL, then a clean close (dropping the connection would only hang it up).
    let step = tokio::select! {
        () = cancel.cancelled() => Err(PsexecError::Closed),
        step = setup(&config, &keys, &client, action, &request, io) => step,
    };
    match step {
        Ok(Step::Done(status)) => status,
        Ok(Step::Connected(connected)) => {
            let (conn, spec, io) = *connected;
            conn.run(spec, io).await
        }
        Err(e) => e.into(),
    }
}

/// Before any API call: the arguments (`None`: the help was printed), the policy checks and
/// the API client.
async fn prepare(
    config: &PsexecConfig,
    request: &SessionRequest,
    io: &SessionIo,
) -> Result<Option<(Action, HerokuClient)>, PsexecError> {
    let action = args::parse(&session_args(request))?;
    match &action {
        Action::Help(text) => {
            let _ = io.stdout.write(Bytes::from(text.clone())).await;
            return Ok(None);
        }
        Action::Status { app } => {
            heroku_policy::check_app_allowed(&request.env, app)?;
            io.report.set_app(app);
        }
        Action::Exec(exec) => {
            heroku_policy::check_app_allowed(&request.env, &exec.app)?;
            io.report.set_app(&exec.app);
            io.report.set_dyno(&exec.dyno);
        }
    }
    let key = heroku_policy::api_key(&request.env)?;
    let client =
        HerokuClient::new(config.api.clone(), key).map_err(|e| PsexecError::Client(Box::new(e)))?;
    Ok(Some((action, client)))
}

/// The API calls, key exchange and SSH connect of a session, up to a connected channel.
async fn setup(
    config: &PsexecConfig,
    keys: &KeyPool,
    client: &HerokuClient,
    action: Action,
    request: &SessionRequest,
    io: SessionIo,
) -> Result<Step, PsexecError> {
    match action {
        Action::Help(_) => Ok(Step::Done(ExitStatus::success())),
        Action::Status { app } => {
            show_status(client, &app, &io.stdout).await?;
            Ok(Step::Done(ExitStatus::success()))
        }
        Action::Exec(exec) => {
            let opt_in = match (enable_policy(&request.env), exec.enable_exec) {
                (EnablePolicy::Always, _) | (EnablePolicy::OnRequest, true) => true,
                (EnablePolicy::OnRequest, false) => false,
                (EnablePolicy::Never, false) => false,
                (EnablePolicy::Never, true) => return Err(PsexecError::EnableNotAllowed),
            };
            let plan = ExecPlan {
                exec,
                opt_in,
                mode: request.mode,
                term: request
                    .env
                    .get_str("TERM")
                    .unwrap_or("xterm-256color")
                    .to_owned(),
            };
            let connected = exec_session(config, keys, client, plan, io).await?;
            Ok(Step::Connected(Box::new(connected)))
        }
    }
}

/// Where setup ended: a final status, or a connection ready to run the session's channel.
enum Step {
    Done(ExitStatus),
    Connected(Box<(backend_ssh::Connection, ChannelSpec, SessionIo)>),
}

async fn show_status(
    client: &HerokuClient,
    app: &str,
    stdout: &OutputSink,
) -> Result<(), PsexecError> {
    let (reservations, dynos) = tokio::join!(client.exec_reservations(app), client.dynos(app));
    let reservations = reservations.map_err(|e| PsexecError::Status(Box::new(e)))?;
    let dynos = dynos.map_err(|e| PsexecError::Status(Box::new(e)))?;
    let _ = stdout
        .write(Bytes::from(status::render(&reservations, &dynos)))
        .await;
    Ok(())
}

/// Writes a progress line to the session's stderr (never to stdout).
async fn progress(stderr: &OutputSink, line: String) {
    tracing::info!(progress = %line, "psexec");
    let _ = stderr.write(Bytes::from(format!("psexec: {line}\n"))).await;
}

/// What an exec session asks for: the parsed arguments, whether the connection lets it
/// enable Heroku Exec, the session's mode and its `TERM`.
struct ExecPlan {
    exec: ExecArgs,
    opt_in: bool,
    mode: Mode,
    term: String,
}

async fn exec_session(
    config: &PsexecConfig,
    keys: &KeyPool,
    client: &HerokuClient,
    plan: ExecPlan,
    io: SessionIo,
) -> Result<(backend_ssh::Connection, ChannelSpec, SessionIo), PsexecError> {
    let ExecPlan {
        exec,
        opt_in,
        mode,
        term,
    } = plan;
    let SessionIo {
        mut input,
        stdout,
        stderr,
        cancel,
        report,
    } = io;
    let (app, dyno) = (exec.app.as_str(), exec.dyno.as_str());
    if args::is_one_off(dyno) {
        return Err(PsexecError::OneOff {
            dyno: dyno.to_owned(),
        });
    }

    // The command (default mode) is the whole input, read before anything is dialled.
    let mut stdin_closed = false;
    let start_program = |cmd: &str| Start::Exec(format!("bash -l -c {}", shell_quote(cmd)));
    let interactive = exec.interactive || matches!(mode, Mode::Terminal { .. });
    let start = if let Some(pipe) = &exec.pipe {
        start_program(pipe)
    } else if let Some(cmd) = &exec.command {
        Start::Exec(cmd.clone())
    } else if interactive {
        Start::Shell
    } else {
        let text = read_all(&mut input, config.max_command_bytes).await?;
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(PsexecError::NoCommand);
        }
        stdin_closed = true;
        Start::Exec(String::from_utf8_lossy(&text).into_owned())
    };
    let spec = ChannelSpec {
        start,
        pty: match mode {
            Mode::Terminal { size } => Some(size),
            Mode::Exec => None,
        },
        term,
        stdin_closed,
    };

    // Gating: the app, the feature, the dyno.
    let unreachable = |error| PsexecError::Unreachable {
        dyno: dyno.to_owned(),
        error: Box::new(error),
    };
    let app_info = client.app(app).await.map_err(unreachable)?;
    if app_info.generation.as_deref() == Some("fir") {
        return Err(PsexecError::Fir {
            app: app.to_owned(),
        });
    }
    let feature = client
        .feature(app, EXEC_FEATURE)
        .await
        .map_err(unreachable)?;
    let mut restarted = false;
    if !feature.enabled {
        if !opt_in {
            return Err(PsexecError::ExecDisabled {
                app: app.to_owned(),
                dyno: dyno.to_owned(),
            });
        }
        progress(
            &stderr,
            format!("enabling Heroku Exec ({EXEC_FEATURE}) for app {app}"),
        )
        .await;
        if let Err(error) = client.set_feature(app, EXEC_FEATURE, true).await {
            return Err(PsexecError::Enable {
                app: app.to_owned(),
                error: Box::new(error),
            });
        }
        restart_and_wait(config, client, app, dyno, &stderr).await?;
        restarted = true;
    } else {
        match client.dyno(app, dyno).await {
            Ok(d) if d.state == "up" => {}
            Ok(d) => {
                return Err(PsexecError::NotUp {
                    app: app.to_owned(),
                    dyno: dyno.to_owned(),
                    state: d.state,
                });
            }
            Err(e) if e.api().is_some_and(|a| a.status == 404) => {
                return Err(PsexecError::NoSuchDyno {
                    app: app.to_owned(),
                    dyno: dyno.to_owned(),
                });
            }
            Err(e) => return Err(unreachable(e)),
        }
    }

    // Credentials: a fresh key, PUT to the exec-manager.
    let key = keys.take().await?;
    let public = match key.public_key().to_openssh() {
        // The CLI sends the key with an empty comment, which leaves a trailing space.
        Ok(line) => format!("{line} "),
        Err(e) => return Err(PsexecError::EncodeKey(e.to_string())),
    };
    let request = ExchangeRequest {
        app,
        dyno,
        public: &public,
        opt_in,
        restarted,
    };
    let creds = exchange(config, client, request, &stderr).await?;

    // SSH to the proxy, its host key pinned to proxy_public_key.
    let pinned = proxy_key(&creds.proxy_public_key)?;
    let target = Target {
        host: creds.tunnel_host.clone(),
        port: config.ssh_port,
        user: creds.client_user.clone(),
    };
    let conn = backend_ssh::connect(
        &target,
        HostKeyPolicy::Pinned(vec![pinned]),
        Arc::new(key),
        &config.client,
    )
    .await
    .map_err(|error| PsexecError::Proxy {
        dyno: dyno.to_owned(),
        addr: format!("{}:{}", target.host, target.port),
        error: Box::new(error),
    })?;
    tracing::info!(%app, %dyno, "heroku exec session connected");
    Ok((
        conn,
        spec,
        SessionIo {
            input,
            stdout,
            stderr,
            cancel,
            report,
        },
    ))
}

/// Restarts only `dyno` and waits (bounded) until it is `up`, reporting progress.
async fn restart_and_wait(
    config: &PsexecConfig,
    client: &HerokuClient,
    app: &str,
    dyno: &str,
    stderr: &OutputSink,
) -> Result<(), PsexecError> {
    progress(
        stderr,
        format!("restarting dyno {dyno} of {app} (only this dyno) so its exec agent starts"),
    )
    .await;
    if let Err(error) = client.stop_dyno(app, dyno).await {
        if error.api().is_some_and(|a| a.status == 404) {
            return Err(PsexecError::RestartNoSuchDyno {
                app: app.to_owned(),
                dyno: dyno.to_owned(),
            });
        }
        return Err(PsexecError::Restart {
            app: app.to_owned(),
            dyno: dyno.to_owned(),
            error: Box::new(error),
        });
    }
    let deadline = tokio::time::Instant::now() + config.enable_wait;
    let mut last = String::new();
    loop {
        match client.dyno(app, dyno).await {
            Ok(d) if d.state == "up" => {
                progress(stderr, format!("dyno {dyno} is up")).await;
                return Ok(());
            }
            Ok(d) if d.state == "crashed" => {
                return Err(PsexecError::Crashed {
                    app: app.to_owned(),
                    dyno: dyno.to_owned(),
                });
            }
            Ok(d) => {
                if d.state != last {
                    progress(
                        stderr,
                        format!("waiting for dyno {dyno} to be up (now {})", d.state),
                    )
                    .await;
                    last = d.state;
                }
            }
            // Just after a restart the API may briefly not list the dyno.
            Err(e) if e.api().is_some_and(|a| a.status == 404) => {}
            Err(error) => {
                return Err(PsexecError::Waiting {
                    dyno: dyno.to_owned(),
                    error: Box::new(error),
                });
            }
        }
        if tokio::time::Instant::now() + config.poll_interval > deadline {
            return Err(PsexecError::NotUpInTime {
                app: app.to_owned(),
                dyno: dyno.to_owned(),
                wait: config.enable_wait,
                last: if last.is_empty() {
                    "unknown".to_owned()
                } else {
                    last
                },
            });
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// One credentials exchange: the dyno, the client's public key line, whether the connection
/// lets the session restart the dyno, and whether it was just restarted.
struct ExchangeRequest<'a> {
    app: &'a str,
    dyno: &'a str,
    public: &'a str,
    opt_in: bool,
    restarted: bool,
}

/// The exec-manager `PUT`, with a clear error per failure. With the opt-in, a dyno whose
/// exec agent is missing although the feature is on (enabled but never restarted) is
/// restarted once; after a restart, a 404 is retried until the agent registers (bounded).
async fn exchange(
    config: &PsexecConfig,
    client: &HerokuClient,
    request: ExchangeRequest<'_>,
    stderr: &OutputSink,
) -> Result<ExecCredentials, PsexecError> {
    let ExchangeRequest {
        app,
        dyno,
        public,
        opt_in,
        mut restarted,
    } = request;
    let mut deadline = tokio::time::Instant::now() + config.enable_wait;
    loop {
        let error = match client.exec_credentials(app, dyno, public).await {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        let not_found = error.api().is_some_and(|a| a.status == 404);
        if !not_found {
            return Err(exchange_failure(dyno, error));
        }
        if restarted && tokio::time::Instant::now() + config.poll_interval < deadline {
            tokio::time::sleep(config.poll_interval).await;
            continue;
        }
        if opt_in && !restarted {
            progress(stderr, format!("dyno {dyno} has no exec agent although Heroku Exec is enabled (it has not restarted since)")).await;
            restart_and_wait(config, client, app, dyno, stderr).await?;
            restarted = true;
            deadline = tokio::time::Instant::now() + config.enable_wait;
            continue;
        }
        let detail = error
            .api()
            .map(|a| a.message.trim().to_owned())
            .unwrap_or_default();
        let dyno = dyno.to_owned();
        return Err(if restarted {
            PsexecError::NoAgentAfterRestart {
                dyno,
                wait: config.enable_wait,
                detail,
            }
        } else {
            PsexecError::NoAgent {
                app: app.to_owned(),
                dyno,
                detail,
            }
        });
    }
}

fn exchange_failure(dyno: &str, error: HerokuError) -> PsexecError {
    let dyno = dyno.to_owned();
    match error {
        HerokuError::Api { error: api, .. } if (400..500).contains(&api.status) => {
            PsexecError::ExchangeRefused {
                dyno,
                api: Box::new(api),
            }
        }
        HerokuError::Api { error: api, .. } => PsexecError::ExchangeFailed {
            dyno,
            api: Box::new(api),
        },
        error => PsexecError::Unreachable {
            dyno,
            error: Box::new(error),
        },
    }
}

/// The pinned proxy key: the base64 second field of `proxy_public_key`.
fn proxy_key(line: &str) -> Result<russh::keys::PublicKey, PsexecError> {
    let blob = line.split_whitespace().nth(1).unwrap_or_default();
    russh::keys::parse_public_key_base64(blob).map_err(|e| PsexecError::ProxyKey(e.to_string()))
}

/// Reads the whole input (until EOF) up to `limit` bytes.
async fn read_all(
    input: &mut tokio::sync::mpsc::Receiver<Input>,
    limit: usize,
) -> Result<Vec<u8>, PsexecError> {
    let mut buf = BytesMut::new();
    while let Some(event) = input.recv().await {
        match event {
            Input::Data(d) => {
                if buf.len() + d.len() > limit {
                    return Err(PsexecError::InputTooLarge { limit });
                }
                buf.extend_from_slice(&d);
            }
            Input::Eof => break,
            Input::Resize(_) => {}
        }
    }
    Ok(buf.to_vec())
}

/// Quotes `s` as one word for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("rails runner -"), "'rails runner -'");
        assert_eq!(shell_quote("echo 'hi'"), r"'echo '\''hi'\'''");
    }

    #[test]
    fn proxy_keys_must_parse() {
        assert!(proxy_key("ssh-ed25519 nonsense").is_err());
        assert!(proxy_key("").is_err());
    }
}
