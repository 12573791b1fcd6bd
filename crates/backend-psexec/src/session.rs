//! One psexec session: parse, gate (app, feature, dyno), exchange credentials with the
//! exec-manager, connect to the exec proxy with its key pinned, and run one channel. On a Fir
//! app: pick the dyno, `run:inside` it, and run the channel over the SSH attach path.
//!
//! Every refusal is a [`PsexecError`] that says which step failed and what to do; each cause of
//! the CLI's catch-all "Could not connect to dyno!" has its own variant (heroku-protocols.md
//! §7). The error becomes the exit status in one place, `crate::error`.

use std::collections::BTreeMap;
use std::sync::Arc;

use backend::{ExitStatus, Input, Mode, OutputSink, SessionIo, SessionRequest};
use backend_run::marker::{self, MarkerFilter};
use backend_ssh::{ChannelSpec, HostKeyPolicy, Start, Target};
use bytes::{Bytes, BytesMut};
use heroku_api::{Dyno, ExecCredentials, HerokuClient, HerokuError, RunInside};
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
            let Connected {
                conn,
                spec,
                io,
                filter,
            } = *connected;
            match filter {
                Some(mut marker) => conn.run_filtered(spec, io, &mut marker).await,
                None => conn.run(spec, io).await,
            }
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
            let attach_key = backend_run::attach_key(&request.env)
                .map_err(|e| PsexecError::AttachKey(Box::new(e)))?;
            let plan = ExecPlan {
                exec,
                opt_in,
                attach_key,
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
    Connected(Box<Connected>),
}

/// A connection ready to run the session's channel; on the SSH attach path (Fir) its stdout
/// goes through the exit marker, whose code wins over the channel's.
struct Connected {
    conn: backend_ssh::Connection,
    spec: ChannelSpec,
    io: SessionIo,
    filter: Option<MarkerFilter>,
}

async fn show_status(
    client: &HerokuClient,
    app: &str,
    stdout: &OutputSink,
) -> Result<(), PsexecError> {
    let info = client
        .app(app)
        .await
        .map_err(|e| PsexecError::Status(Box::new(e)))?;
    if info.generation.as_deref() == Some("fir") {
        let dynos = client
            .dynos(app)
            .await
            .map_err(|e| PsexecError::Status(Box::new(e)))?;
        let _ = stdout
            .write(Bytes::from(status::render_fir(app, &dynos)))
            .await;
        return Ok(());
    }
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
    /// `HEROKU_SSH_KEY`, for Fir apps.
    attach_key: Option<Arc<backend_ssh::PrivateKey>>,
    mode: Mode,
    term: String,
}

async fn exec_session(
    config: &PsexecConfig,
    keys: &KeyPool,
    client: &HerokuClient,
    plan: ExecPlan,
    io: SessionIo,
) -> Result<Connected, PsexecError> {
    let ExecPlan {
        exec,
        opt_in,
        attach_key,
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
        let fir = FirPlan {
            exec: &exec,
            cnb: app_info.stack.as_ref().is_some_and(|s| s.name == "cnb"),
            key: attach_key,
        };
        let io = SessionIo {
            input,
            stdout,
            stderr,
            cancel,
            report,
        };
        return fir_session(config, client, fir, spec, io).await;
    }
    let conn = exec_connect(config, keys, client, app, dyno, opt_in, &stderr).await?;
    tracing::info!(%app, %dyno, "heroku exec session connected");
    Ok(Connected {
        conn,
        spec,
        io: SessionIo {
            input,
            stdout,
            stderr,
            cancel,
            report,
        },
        filter: None,
    })
}

/// Heroku Exec to a Cedar app's dyno, up to an authenticated SSH connection to its proxy: the
/// feature (enabled and the dyno restarted only with `opt_in`), the dyno's state, the
/// exec-manager exchange with a fresh key, and SSH with the proxy's host key pinned. Progress
/// goes to `stderr`.
async fn exec_connect(
    config: &PsexecConfig,
    keys: &KeyPool,
    client: &HerokuClient,
    app: &str,
    dyno: &str,
    opt_in: bool,
    stderr: &OutputSink,
) -> Result<backend_ssh::Connection, PsexecError> {
    let unreachable = |error| PsexecError::Unreachable {
        dyno: dyno.to_owned(),
        error: Box::new(error),
    };
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
            stderr,
            format!("enabling Heroku Exec ({EXEC_FEATURE}) for app {app}"),
        )
        .await;
        if let Err(error) = client.set_feature(app, EXEC_FEATURE, true).await {
            return Err(PsexecError::Enable {
                app: app.to_owned(),
                error: Box::new(error),
            });
        }
        restart_and_wait(config, client, app, dyno, stderr).await?;
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
    let creds = exchange(config, client, request, stderr).await?;

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
    Ok(conn)
}

/// Heroku Exec's SSH connection to `dyno` for port forwarding (`tcp` connections into a dyno,
/// like `heroku ps:forward`), with a psexec session's policy: `HEROKU_API_KEY` and `HEROKU_APPS`
/// from the connection, Heroku Exec enabled (and the dyno restarted) only with
/// `PSEXEC_AUTO_ENABLE=true`; a one-off or a Fir app is refused.
pub(crate) async fn connect_for_forwarding(
    config: &PsexecConfig,
    keys: &KeyPool,
    env: &backend::SessionEnv,
    app: &str,
    dyno: &str,
) -> Result<backend_ssh::Connection, PsexecError> {
    args::validate_app(app)?;
    args::validate_dyno(dyno)?;
    heroku_policy::check_app_allowed(env, app)?;
    if args::is_one_off(dyno) {
        return Err(PsexecError::OneOff {
            dyno: dyno.to_owned(),
        });
    }
    let key = heroku_policy::api_key(env)?;
    let client =
        HerokuClient::new(config.api.clone(), key).map_err(|e| PsexecError::Client(Box::new(e)))?;
    let info = client
        .app(app)
        .await
        .map_err(|error| PsexecError::Unreachable {
            dyno: dyno.to_owned(),
            error: Box::new(error),
        })?;
    if info.generation.as_deref() == Some("fir") {
        return Err(PsexecError::FirNoForward {
            app: app.to_owned(),
        });
    }
    let opt_in = enable_policy(env) == EnablePolicy::Always;
    let quiet = OutputSink::discard(backend::StreamKind::Stderr);
    exec_connect(config, keys, &client, app, dyno, opt_in, &quiet).await
}

/// What a Fir session needs beyond the channel: the arguments, whether the app is built with
/// Cloud Native Buildpacks (the command then starts with `launcher `, as the CLI sends it),
/// and the account key.
struct FirPlan<'a> {
    exec: &'a ExecArgs,
    cnb: bool,
    key: Option<Arc<backend_ssh::PrivateKey>>,
}

/// A Fir app has no Heroku Exec (heroku-protocols.md §6.9): the session runs inside the dyno
/// through `run:inside` (§3.10) over the SSH attach path (§3.9), transparently and with the same
/// flags. The command is wrapped with the exit marker, since the channel's own exit status
/// would be the marker's `echo`.
async fn fir_session(
    config: &PsexecConfig,
    client: &HerokuClient,
    fir: FirPlan<'_>,
    spec: ChannelSpec,
    io: SessionIo,
) -> Result<Connected, PsexecError> {
    let app = fir.exec.app.as_str();
    let Some(key) = fir.key else {
        return Err(PsexecError::FirNoKey {
            app: app.to_owned(),
        });
    };
    let dynos = client
        .dynos(app)
        .await
        .map_err(|error| PsexecError::Unreachable {
            dyno: fir.exec.dyno.clone(),
            error: Box::new(error),
        })?;
    let dyno = pick_fir_dyno(app, &dynos, &fir.exec.dyno, fir.exec.dyno_given)?;
    io.report.set_dyno(&dyno);
    let note =
        format!("{app} is a Fir app (no Heroku Exec): running inside dyno {dyno} with run:inside");
    if spec.pty.is_some() {
        // `hoop connect` drops stderr: in a terminal the note goes to stdout, with CRLF.
        tracing::info!(progress = %note, "psexec");
        let _ = io
            .stdout
            .write(Bytes::from(format!("psexec: {note}\r\n")))
            .await;
    } else {
        progress(&io.stderr, note).await;
    }
    let nonce = marker::new_nonce();
    let program = match &spec.start {
        Start::Exec(command) => command.clone(),
        Start::Shell => "bash -l".to_owned(),
    };
    let mut command = marker::wrap(&program, &nonce);
    if fir.cnb {
        command = format!("launcher {command}");
    }
    let mut env = BTreeMap::new();
    if let Some(size) = spec.pty {
        env.insert(
            "TERM".to_owned(),
            serde_json::Value::from(spec.term.clone()),
        );
        env.insert("COLUMNS".to_owned(), serde_json::Value::from(size.cols));
        env.insert("LINES".to_owned(), serde_json::Value::from(size.rows));
    }
    let started = client
        .run_inside(app, &dyno, &RunInside { command, env })
        .await
        .map_err(|error| PsexecError::FirRunInside {
            app: app.to_owned(),
            dyno: dyno.clone(),
            error: Box::new(error),
        })?;
    let Some(url) = started.attach_url else {
        return Err(PsexecError::FirNoAttachUrl { dyno });
    };
    let tls = match &config.attach_tls {
        Some(tls) => Arc::clone(tls),
        None => {
            backend_run::rendezvous::RendezvousConfig::new(config.api.extra_roots_pem.as_deref())
                .map_err(|e| PsexecError::Client(Box::new(HerokuError::Setup(e))))?
                .tls
        }
    };
    let conn = backend_run::ssh_attach::connect(
        &url,
        tls,
        config.client.connect_timeout,
        key,
        &config.attach_ssh,
    )
    .await
    .map_err(|error| PsexecError::FirAttach {
        dyno: dyno.clone(),
        error,
    })?;
    tracing::info!(%app, %dyno, "run:inside session connected");
    Ok(Connected {
        conn,
        spec: ChannelSpec {
            // The attach path runs the API call's command on `shell`.
            start: Start::Shell,
            stdin_closed: spec.stdin_closed,
            ..spec
        },
        io,
        filter: Some(MarkerFilter::new(&nonce)),
    })
}

/// The Fir dyno a session runs inside: the one named by `--dyno` if the app has it; without
/// `--dyno`, the first `up` web dyno, else the first `up` dyno. Fir names are pod-style, so a
/// Cedar-style name (or any unknown one) is refused with the list of the app's real dynos.
fn pick_fir_dyno(
    app: &str,
    dynos: &[Dyno],
    wanted: &str,
    given: bool,
) -> Result<String, PsexecError> {
    let listing = || {
        if dynos.is_empty() {
            "none".to_owned()
        } else {
            dynos
                .iter()
                .map(|d| format!("{} ({})", d.name, d.state))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if given {
        return match dynos.iter().find(|d| d.name == wanted) {
            Some(d) => Ok(d.name.clone()),
            None => Err(PsexecError::FirNoSuchDyno {
                app: app.to_owned(),
                dyno: wanted.to_owned(),
                dynos: listing(),
            }),
        };
    }
    let up = |d: &&Dyno| d.state == "up" && !d.name.starts_with("run.");
    dynos
        .iter()
        .filter(up)
        .find(|d| d.name.starts_with("web-"))
        .or_else(|| dynos.iter().find(up))
        .map(|d| d.name.clone())
        .ok_or_else(|| PsexecError::FirNoRunningDyno {
            app: app.to_owned(),
            dynos: listing(),
        })
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
