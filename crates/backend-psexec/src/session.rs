//! One psexec session: parse, gate (app, feature, dyno), exchange credentials with the
//! exec-manager, connect to the exec proxy with its key pinned, and run one channel.
//!
//! Every refusal says which step failed and what to do; each cause of the CLI's catch-all
//! "Could not connect to dyno!" has its own message (heroku-protocols.md §7).

use std::sync::Arc;

use backend::{ExitStatus, Input, Mode, OutputSink, SessionIo, SessionRequest};
use backend_ssh::{ChannelSpec, HostKeyPolicy, Start, Target};
use bytes::{Bytes, BytesMut};
use heroku_api::{ApiKey, ExecCredentials, HerokuClient, HerokuError};

use crate::args::{self, Action, EXEC_FEATURE, ExecArgs};
use crate::keys::KeyPool;
use crate::{PsexecConfig, session_args, status};

/// Exit code for bad arguments (nothing was started).
const USAGE_EXIT_CODE: i32 = 2;
/// Exit code for a refusal before anything ran on the dyno (the CLI exits 1).
const REFUSED_EXIT_CODE: i32 = 1;

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

fn refused(message: impl Into<String>) -> ExitStatus {
    ExitStatus {
        code: REFUSED_EXIT_CODE,
        message: message.into(),
    }
}

pub(crate) async fn run(
    config: PsexecConfig,
    keys: KeyPool,
    request: SessionRequest,
    io: SessionIo,
) -> ExitStatus {
    let action = match args::parse(&session_args(&request)) {
        Ok(a) => a,
        Err(e) => {
            return ExitStatus {
                code: USAGE_EXIT_CODE,
                message: e.0,
            };
        }
    };
    match &action {
        Action::Help(text) => {
            let _ = io.stdout.write(Bytes::from(text.clone())).await;
            return ExitStatus::success();
        }
        Action::Status { app } => {
            if let Err(status) = backend::check_app_allowed(&request.env, app) {
                return status;
            }
            io.report.set_app(app);
        }
        Action::Exec(exec) => {
            if let Err(status) = backend::check_app_allowed(&request.env, &exec.app) {
                return status;
            }
            io.report.set_app(&exec.app);
            io.report.set_dyno(&exec.dyno);
        }
    }
    let Some(key) = request
        .env
        .get_str("HEROKU_API_KEY")
        .filter(|k| !k.is_empty())
    else {
        return ExitStatus::internal(
            "HEROKU_API_KEY is not set for this connection: add it as a connection secret (envvar:HEROKU_API_KEY), or set it on the agent and give the connection the value system.agent.envs",
        );
    };
    let client = match HerokuClient::new(config.api.clone(), ApiKey::new(key)) {
        Ok(c) => c,
        Err(e) => return ExitStatus::internal(e.to_string()),
    };
    let cancel = io.cancel.clone();
    // Setup (API calls, key exchange, SSH connect) is abandoned on cancel: nothing runs on
    // the dyno yet. Once connected, the channel owns cancellation, so the remote command gets
    // TERM, then KILL, then a clean close (dropping the connection would only hang it up).
    let setup = async {
        match action {
            Action::Help(_) => Step::Done(ExitStatus::success()),
            Action::Status { app } => Step::Done(show_status(&client, &app, &io.stdout).await),
            Action::Exec(exec) => {
                let opt_in = match (enable_policy(&request.env), exec.enable_exec) {
                    (EnablePolicy::Always, _) | (EnablePolicy::OnRequest, true) => true,
                    (EnablePolicy::OnRequest, false) => false,
                    (EnablePolicy::Never, false) => false,
                    (EnablePolicy::Never, true) => {
                        return Step::Done(refused(format!(
                            "--enable-exec is not allowed on this connection: enabling Heroku Exec restarts a dyno, so the connection decides; an administrator can allow it by setting {AUTO_ENABLE_VAR}=ask on the connection (users may then pass --enable-exec) or {AUTO_ENABLE_VAR}=true (sessions enable it when needed), or enable Heroku Exec once (heroku features:enable runtime-heroku-exec, then restart the dynos)"
                        )));
                    }
                };
                let term = request
                    .env
                    .get_str("TERM")
                    .unwrap_or("xterm-256color")
                    .to_owned();
                match exec_session(
                    &config,
                    &keys,
                    &client,
                    exec,
                    opt_in,
                    request.mode,
                    term,
                    io,
                )
                .await
                {
                    Ok(connected) => Step::Connected(Box::new(connected)),
                    Err(status) => Step::Done(status),
                }
            }
        }
    };
    let step = tokio::select! {
        () = cancel.cancelled() => return ExitStatus::internal("session closed"),
        step = setup => step,
    };
    match step {
        Step::Done(status) => status,
        Step::Connected(connected) => {
            let (conn, spec, io) = *connected;
            conn.run(spec, io).await
        }
    }
}

/// Where setup ended: a final status, or a connection ready to run the session's channel.
enum Step {
    Done(ExitStatus),
    Connected(Box<(backend_ssh::Connection, ChannelSpec, SessionIo)>),
}

async fn show_status(client: &HerokuClient, app: &str, stdout: &OutputSink) -> ExitStatus {
    let (reservations, dynos) = tokio::join!(client.exec_reservations(app), client.dynos(app));
    let reservations = match reservations {
        Ok(r) => r,
        Err(e) => return refused(format!("psexec --status: {e}")),
    };
    let dynos = match dynos {
        Ok(d) => d,
        Err(e) => return refused(format!("psexec --status: {e}")),
    };
    let _ = stdout
        .write(Bytes::from(status::render(&reservations, &dynos)))
        .await;
    ExitStatus::success()
}

/// Writes a progress line to the session's stderr (never to stdout).
async fn progress(stderr: &OutputSink, line: String) {
    tracing::info!(progress = %line, "psexec");
    let _ = stderr.write(Bytes::from(format!("psexec: {line}\n"))).await;
}

#[allow(clippy::too_many_arguments)]
async fn exec_session(
    config: &PsexecConfig,
    keys: &KeyPool,
    client: &HerokuClient,
    exec: ExecArgs,
    opt_in: bool,
    mode: Mode,
    term: String,
    io: SessionIo,
) -> Result<(backend_ssh::Connection, ChannelSpec, SessionIo), ExitStatus> {
    let SessionIo {
        mut input,
        stdout,
        stderr,
        cancel,
        report,
    } = io;
    let (app, dyno) = (exec.app.as_str(), exec.dyno.as_str());
    if args::is_one_off(dyno) {
        return Err(refused(format!(
            "could not connect to dyno {dyno}: one-off (run.*) and release-phase (release.*) dynos have no Heroku Exec agent on the Common Runtime; target a formation dyno such as web.1"
        )));
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
        let text = match read_all(&mut input, config.max_command_bytes).await {
            Ok(t) => t,
            Err(status) => return Err(status),
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(ExitStatus {
                code: USAGE_EXIT_CODE,
                message: "psexec: no command: the input is the command to run on the dyno (for example -i 'ls -la'); or use --pipe CMD, --interactive or --status".into(),
            });
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
    let app_info = match client.app(app).await {
        Ok(a) => a,
        Err(e) => return Err(refused(format!("could not connect to dyno {dyno}: {e}"))),
    };
    if app_info.generation.as_deref() == Some("fir") {
        return Err(refused(format!(
            "app {app} runs on the Fir generation, which has no Heroku Exec; use heroku run:inside instead (https://devcenter.heroku.com/articles/run-tasks-in-an-existing-dyno)"
        )));
    }
    let feature = match client.feature(app, EXEC_FEATURE).await {
        Ok(f) => f,
        Err(e) => return Err(refused(format!("could not connect to dyno {dyno}: {e}"))),
    };
    let mut restarted = false;
    if !feature.enabled {
        if !opt_in {
            return Err(refused(format!(
                "Heroku Exec is disabled for app {app} (feature {EXEC_FEATURE} is off). Enabling it restarts the app's dynos, because a dyno starts its exec agent only at boot, so dynoagent never does it on its own. To enable it and restart only dyno {dyno}, run again with --enable-exec if this connection allows it (PSEXEC_AUTO_ENABLE=ask), or set PSEXEC_AUTO_ENABLE=true on this connection; or run `heroku features:enable {EXEC_FEATURE} -a {app}` and restart the dynos yourself."
            )));
        }
        progress(
            &stderr,
            format!("enabling Heroku Exec ({EXEC_FEATURE}) for app {app}"),
        )
        .await;
        if let Err(e) = client.set_feature(app, EXEC_FEATURE, true).await {
            return Err(refused(format!("enabling Heroku Exec for {app}: {e}")));
        }
        restart_and_wait(config, client, app, dyno, &stderr).await?;
        restarted = true;
    } else {
        match client.dyno(app, dyno).await {
            Ok(d) if d.state == "up" => {}
            Ok(d) => {
                return Err(refused(format!(
                    "could not connect to dyno {dyno}: it is {}, not up; Heroku Exec needs a running dyno (check with --status or heroku ps -a {app})",
                    d.state
                )));
            }
            Err(e) if e.api().is_some_and(|a| a.status == 404) => {
                return Err(refused(format!(
                    "could not connect to dyno {dyno}: app {app} has no dyno {dyno} (check with --status or heroku ps -a {app})"
                )));
            }
            Err(e) => return Err(refused(format!("could not connect to dyno {dyno}: {e}"))),
        }
    }

    // Credentials: a fresh key, PUT to the exec-manager.
    let key = match keys.take().await {
        Ok(k) => k,
        Err(e) => return Err(ExitStatus::internal(e.to_string())),
    };
    let public = match key.public_key().to_openssh() {
        // The CLI sends the key with an empty comment, which leaves a trailing space.
        Ok(line) => format!("{line} "),
        Err(e) => {
            return Err(ExitStatus::internal(format!(
                "cannot encode the client key: {e}"
            )));
        }
    };
    let creds = match exchange(
        config, client, app, dyno, &public, opt_in, restarted, &stderr,
    )
    .await
    {
        Ok(c) => c,
        Err(status) => return Err(status),
    };

    // SSH to the proxy, its host key pinned to proxy_public_key.
    let pinned = match proxy_key(&creds.proxy_public_key) {
        Ok(k) => k,
        Err(status) => return Err(status),
    };
    let target = Target {
        host: creds.tunnel_host.clone(),
        port: config.ssh_port,
        user: creds.client_user.clone(),
    };
    let conn = match backend_ssh::connect(
        &target,
        HostKeyPolicy::Pinned(vec![pinned]),
        Arc::new(key),
        &config.client,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            return Err(ExitStatus::internal(format!(
                "could not connect to dyno {dyno} through the Heroku Exec proxy {}:{}: {e}",
                target.host, target.port
            )));
        }
    };
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
) -> Result<(), ExitStatus> {
    progress(
        stderr,
        format!("restarting dyno {dyno} of {app} (only this dyno) so its exec agent starts"),
    )
    .await;
    if let Err(e) = client.stop_dyno(app, dyno).await {
        if e.api().is_some_and(|a| a.status == 404) {
            return Err(refused(format!(
                "could not restart dyno {dyno}: app {app} has no dyno {dyno} (check with --status or heroku ps -a {app})"
            )));
        }
        return Err(refused(format!("restarting dyno {dyno} of {app}: {e}")));
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
                return Err(refused(format!(
                    "dyno {dyno} of {app} crashed after the restart; check its logs (heroku logs -a {app} -d {dyno})"
                )));
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
            Err(e) => return Err(refused(format!("waiting for dyno {dyno}: {e}"))),
        }
        if tokio::time::Instant::now() + config.poll_interval > deadline {
            return Err(refused(format!(
                "dyno {dyno} of {app} was not up within {:?} after the restart (last state: {}); try again shortly",
                config.enable_wait,
                if last.is_empty() { "unknown" } else { &last }
            )));
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// The exec-manager `PUT`, with a clear message per failure. With the opt-in, a dyno whose
/// exec agent is missing although the feature is on (enabled but never restarted) is
/// restarted once; after a restart, a 404 is retried until the agent registers (bounded).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    config: &PsexecConfig,
    client: &HerokuClient,
    app: &str,
    dyno: &str,
    public: &str,
    opt_in: bool,
    mut restarted: bool,
    stderr: &OutputSink,
) -> Result<ExecCredentials, ExitStatus> {
    let mut deadline = tokio::time::Instant::now() + config.enable_wait;
    loop {
        let error = match client.exec_credentials(app, dyno, public).await {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        let not_found = error.api().is_some_and(|a| a.status == 404);
        if !not_found {
            return Err(refused(exchange_failure(dyno, &error)));
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
        return Err(refused(if restarted {
            format!(
                "could not connect to dyno {dyno}: its exec agent did not register within {:?} after the restart (exec-manager: {detail})",
                config.enable_wait
            )
        } else {
            format!(
                "could not connect to dyno {dyno}: Heroku Exec is enabled and the dyno is up, but it has no exec agent, most likely because it has not restarted since the feature was enabled (exec-manager: {detail}). Restart it (heroku ps:restart {dyno} -a {app}), or run again with --enable-exec to restart only this dyno"
            )
        }));
    }
}

fn exchange_failure(dyno: &str, error: &HerokuError) -> String {
    match error {
        HerokuError::Api { error: api, .. } if (400..500).contains(&api.status) => format!(
            "could not connect to dyno {dyno}: the exec-manager refused the credentials exchange: {api}; check the connection's HEROKU_API_KEY and that it may access the app"
        ),
        HerokuError::Api { error: api, .. } => format!(
            "could not connect to dyno {dyno}: the exec-manager failed: {api}; try again later"
        ),
        other => format!("could not connect to dyno {dyno}: {other}"),
    }
}

/// The pinned proxy key: the base64 second field of `proxy_public_key`.
fn proxy_key(line: &str) -> Result<russh::keys::PublicKey, ExitStatus> {
    let blob = line.split_whitespace().nth(1).unwrap_or_default();
    russh::keys::parse_public_key_base64(blob).map_err(|e| {
        ExitStatus::internal(format!(
            "the exec-manager returned an unusable proxy_public_key ({e}); refusing to connect without a pinned host key"
        ))
    })
}

/// Reads the whole input (until EOF) up to `limit` bytes.
async fn read_all(
    input: &mut tokio::sync::mpsc::Receiver<Input>,
    limit: usize,
) -> Result<Vec<u8>, ExitStatus> {
    let mut buf = BytesMut::new();
    while let Some(event) = input.recv().await {
        match event {
            Input::Data(d) => {
                if buf.len() + d.len() > limit {
                    return Err(ExitStatus {
                        code: USAGE_EXIT_CODE,
                        message: format!(
                            "psexec: the input is over {limit} bytes, too large to be a command; use --pipe CMD to stream it to a program on the dyno"
                        ),
                    });
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
