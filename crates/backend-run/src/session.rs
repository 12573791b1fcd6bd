//! One run session: parse the arguments, create the one-off dyno, attach (rendezvous, or the
//! SSH attach path for an `https://` attach URL), stream both ways, recover the exit status
//! from the marker, and always stop the dyno.

use std::sync::Arc;
use std::time::Duration;

use backend::duplex::{self, Ending, RemoteInput, pump_input};
use backend::{ExitStatus, Input, Mode, SessionIo, SessionRequest, TermSize};
use backend_ssh::{ChannelSpec, ClientOptions, Start, StdoutFilter as _};
use bytes::{Bytes, BytesMut};
use heroku_api::{ClientConfig, CreateDyno, HerokuClient};
use heroku_policy::session_args;
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::args::{self, Parsed, RunArgs};
use crate::error::RunError;
use crate::marker::{self, MarkerScanner};
use crate::rendezvous::{self, RendezvousConfig};
use crate::ssh_attach;

/// The connection secret with the SSH private key registered on the Heroku account, used on
/// the SSH attach path (Fir, Shield, `run:inside`; heroku-protocols.md §3.9.6). Key text, base64
/// of key text, or a file path; read from the connection only, never from a client's `-e`.
pub const HEROKU_SSH_KEY_VAR: &str = "HEROKU_SSH_KEY";

/// The connection's `HEROKU_SSH_KEY` (the account key of the SSH attach path), loaded; `None`
/// when the connection has none (an empty value counts as none). Read from the connection
/// only: a client cannot supply it. Shared with psexec on Fir.
pub fn attach_key(
    env: &backend::SessionEnv,
) -> Result<Option<Arc<backend_ssh::PrivateKey>>, backend_ssh::SshError> {
    match env
        .connection_text_or_file(HEROKU_SSH_KEY_VAR)
        .filter(|v| !v.trim().is_empty())
    {
        None => Ok(None),
        Some(value) => Ok(Some(Arc::new(backend_ssh::load_key(
            Some(value),
            HEROKU_SSH_KEY_VAR,
        )?))),
    }
}

/// End-of-input byte on the rendezvous protocol (no-tty mode).
const EOT: u8 = 0x04;
/// The longest `time_to_live` Heroku accepts, and the default (heroku-protocols.md §2.7).
pub const MAX_TIME_TO_LIVE_SECS: u64 = 86_400;
/// Added to hoop's `jit.timeout` so that the dyno outlives the access window by a little and
/// the gateway, not the expiry, ends the session.
const JIT_MARGIN_SECS: u64 = 60;

/// `time_to_live` for the one-off dyno: the connection's `HEROKU_RUN_TIME_TO_LIVE` (seconds,
/// default and cap 86400), shortened to hoop's `jit.timeout` plus a minute when the session
/// carries a shorter one. It bounds a dyno left behind if the agent dies (§2.7).
pub(crate) fn time_to_live(request: &SessionRequest) -> Result<u64, RunError> {
    let configured = match request.env.connection_str("HEROKU_RUN_TIME_TO_LIVE") {
        None => MAX_TIME_TO_LIVE_SECS,
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(n) if n >= 1 => n.min(MAX_TIME_TO_LIVE_SECS),
            _ => return Err(RunError::TimeToLive),
        },
    };
    let jit = request
        .jit_timeout
        .map(|d| d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)))
        .map(|s| s.saturating_add(JIT_MARGIN_SECS));
    Ok(jit.map_or(configured, |j| j.min(configured)))
}

/// Whether the command gets the CNB `launcher ` prefix, as the CLI adds it: on apps with stack
/// `cnb`, unless the user's command already starts with it (§2.6). The prefix goes before the
/// whole body, exit-marker wrapping included, as in the CLI's
/// `launcher <command> ; echo "\u{FFFF} heroku-command-exit-status: $?"`.
pub(crate) fn needs_launcher(user_command: &str, stack: Option<&str>) -> bool {
    stack == Some("cnb") && !user_command.starts_with("launcher ")
}

/// Settings for the run backend.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub api: ClientConfig,
    pub rendezvous: RendezvousConfig,
    /// After the marker, how long to keep draining output before closing.
    pub drain_after_marker: Duration,
    /// Limit for stopping the dyno at the end.
    pub stop_timeout: Duration,
    /// SSH settings on the attach path: connect timeout, keepalive (about every 20 s, as the
    /// CLI's `ServerAliveInterval=20`), kill grace on cancellation.
    pub attach_ssh: ClientOptions,
}

impl RunConfig {
    /// SSH options for the attach path: the CLI's keepalive (20 s × 3).
    pub fn default_attach_ssh() -> ClientOptions {
        ClientOptions {
            keepalive_interval: Duration::from_secs(20),
            keepalive_max: 3,
            ..ClientOptions::default()
        }
    }
}

pub(crate) async fn run(config: RunConfig, request: SessionRequest, io: SessionIo) -> ExitStatus {
    session(config, request, io)
        .await
        .unwrap_or_else(ExitStatus::from)
}

/// The session; every failure is a [`RunError`], mapped to the exit status by [`run`].
async fn session(
    config: RunConfig,
    request: SessionRequest,
    mut io: SessionIo,
) -> Result<ExitStatus, RunError> {
    let run_args = match args::parse(&session_args(&request))? {
        Parsed::Run(r) => r,
        Parsed::Help(text) => {
            let _ = io.stdout.write(Bytes::from(text)).await;
            return Ok(ExitStatus::success());
        }
    };
    heroku_policy::check_app_allowed(&request.env, &run_args.app)?;
    io.report.set_app(&run_args.app);
    let key = heroku_policy::api_key(&request.env)?;
    let ttl = time_to_live(&request)?;
    // The account key for the SSH attach path, checked before any dyno exists. Whether it is
    // needed shows in the app lookup (Fir, Shield), and otherwise in the attach URL.
    let attach_key = attach_key(&request.env).map_err(|e| RunError::AttachKey(Box::new(e)))?;
    let client = HerokuClient::new(config.api.clone(), key)?;
    // Like the CLI: one app lookup for the stack, skipped with --no-launcher; a failure stops
    // the session before any dyno exists.
    let mut launcher = false;
    if !run_args.no_launcher {
        let app = tokio::select! {
            () = io.cancel.cancelled() => return Err(RunError::Closed),
            r = client.app(&run_args.app) => r?,
        };
        let stack = app.stack.as_ref().map(|s| s.name.as_str());
        launcher = needs_launcher(&run_args.command, stack);
        if app.attaches_over_ssh() && attach_key.is_none() {
            // Known before any dyno exists: refuse now rather than create and stop one.
            return Err(RunError::AttachKeyNeeded {
                app: run_args.app.clone(),
            });
        }
    }

    // Exec input is complete before the dyno starts (hoop sends it in one packet), which also
    // lets us see a 0x04 byte before choosing how to send the input.
    let mut stdin = BytesMut::new();
    if request.mode == Mode::Exec {
        loop {
            tokio::select! {
                () = io.cancel.cancelled() => return Err(RunError::Closed),
                event = io.input.recv() => match event {
                    Some(Input::Data(d)) => stdin.extend_from_slice(&d),
                    Some(Input::Resize(_)) => {}
                    Some(Input::Eof) | None => break,
                },
            }
        }
    }
    let nonce = marker::new_nonce();
    let (mut body, send_input) = dyno_request(&run_args, request.mode, &stdin, &nonce);
    body.time_to_live = Some(ttl);
    if launcher {
        body.command = format!("launcher {}", body.command);
    }
    if send_input.base64 {
        let _ = io
            .stderr
            .write(Bytes::from_static(
                b"dynoagent: the input contains 0x04 bytes, which heroku run's protocol reads as end of input; it is sent base64-encoded and decoded on the dyno instead (base64 -d)\n",
            ))
            .await;
    }

    let create = client.create_dyno(&run_args.app, &body);
    tokio::pin!(create);
    let created = tokio::select! {
        () = io.cancel.cancelled() => None,
        r = &mut create => Some(r),
    };
    let dyno = match created {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            stop_unanswered_create(&config, &client, &run_args.app, &nonce, &e).await;
            return Err(e.into());
        }
        None => {
            // The request may already have created the dyno: let it finish (bounded by the
            // API client's timeout and attempts) and stop what it made, so nothing is left
            // running and billing.
            match create.await {
                Ok(d) => {
                    tracing::info!(app = %run_args.app, dyno = %d.name, "session closed during dyno create: stopping the new dyno");
                    stop_dyno(&config, &client, &run_args.app, &d.name).await;
                }
                Err(e) => stop_unanswered_create(&config, &client, &run_args.app, &nonce, &e).await,
            }
            return Err(RunError::Closed);
        }
    };
    tracing::info!(app = %run_args.app, dyno = %dyno.name, "one-off dyno created");
    io.report.set_dyno(&dyno.name);
    let pty = match request.mode {
        Mode::Terminal { size } if body.force_no_tty.is_none() => Some(size),
        _ => None,
    };
    let plan = AttachPlan {
        dyno: &dyno,
        nonce: &nonce,
        send: send_input,
        mode: request.mode,
        pty,
        key: attach_key,
    };
    let status = attach(&config, plan, &mut io).await;

    // Always stop the dyno: a closed rendezvous stops it too, but a dropped agent must not
    // leave one running and billing.
    stop_dyno(&config, &client, &run_args.app, &dyno.name).await;
    status
}

/// After a create that failed without a clear refusal (a timeout, a dropped connection, a
/// server error), the dyno may exist although its answer never came: find it by the session's
/// marker nonce in its command and stop it. Bounded by `stop_timeout`.
async fn stop_unanswered_create(
    config: &RunConfig,
    client: &HerokuClient,
    app: &str,
    nonce: &str,
    error: &heroku_api::HerokuError,
) {
    if error.api().is_some_and(|a| a.status < 500) {
        // Heroku answered with a refusal (409, 422, 429, ...): nothing was created.
        return;
    }
    let dynos = match tokio::time::timeout(config.stop_timeout, client.dynos(app)).await {
        Ok(Ok(dynos)) => dynos,
        Ok(Err(e)) => {
            tracing::warn!(%app, error = %e, "cannot list dynos after a failed create; a one-off dyno may be left running");
            return;
        }
        Err(_) => {
            tracing::warn!(%app, "timed out listing dynos after a failed create; a one-off dyno may be left running");
            return;
        }
    };
    for dyno in dynos.iter().filter(|d| d.command.contains(nonce)) {
        tracing::info!(%app, dyno = %dyno.name, "stopping the one-off dyno of a create whose answer never came");
        stop_dyno(config, client, app, &dyno.name).await;
    }
}

/// Stops (deletes) a one-off dyno, bounded by `stop_timeout`; a dyno already gone is fine.
async fn stop_dyno(config: &RunConfig, client: &HerokuClient, app: &str, dyno: &str) {
    match tokio::time::timeout(config.stop_timeout, client.stop_dyno(app, dyno)).await {
        Ok(Ok(())) => tracing::info!(%app, %dyno, "one-off dyno stopped"),
        Ok(Err(e)) if e.api().is_some_and(|a| a.status == 404) => {}
        Ok(Err(e)) => {
            tracing::warn!(%app, %dyno, error = %e, "cannot stop the one-off dyno")
        }
        Err(_) => tracing::warn!(%app, %dyno, "timed out stopping the one-off dyno"),
    }
}

/// What to write to the dyno once attached.
#[derive(Debug)]
pub(crate) struct SendInput {
    data: Bytes,
    base64: bool,
}

/// The create body and the input plan.
pub(crate) fn dyno_request(
    run: &RunArgs,
    mode: Mode,
    stdin: &[u8],
    nonce: &str,
) -> (CreateDyno, SendInput) {
    let mut env: std::collections::BTreeMap<String, serde_json::Value> = run
        .env
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let base64 = mode == Mode::Exec && stdin.contains(&EOT);
    let command = if base64 {
        // The first token changes, so Procfile process types do not resolve on this path.
        format!("base64 -d | {{ {} ; }}", run.command)
    } else {
        run.command.clone()
    };
    let force_no_tty = match mode {
        Mode::Exec => true,
        Mode::Terminal { size } => {
            env.insert("COLUMNS".into(), serde_json::Value::from(size.cols));
            env.insert("LINES".into(), serde_json::Value::from(size.rows));
            env.insert("TERM".into(), serde_json::Value::from("xterm-256color"));
            run.no_tty
        }
    };
    let data = if base64 {
        Bytes::from(base64_lines(stdin))
    } else {
        Bytes::copy_from_slice(stdin)
    };
    let body = CreateDyno {
        command: marker::wrap(&command, nonce),
        attach: true,
        env,
        force_no_tty: force_no_tty.then_some(true),
        size: run.size.clone(),
        kind: run.kind.clone(),
        time_to_live: None,
    };
    (body, SendInput { data, base64 })
}

fn base64_lines(data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(text.len() + text.len() / 76 + 1);
    for line in text.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// What to attach to: the created dyno, the session's marker nonce, the input plan, the
/// session's mode, its terminal (none for exec and `--no-tty`), and the account key for the
/// SSH attach path.
struct AttachPlan<'a> {
    dyno: &'a heroku_api::Dyno,
    nonce: &'a str,
    send: SendInput,
    mode: Mode,
    pty: Option<TermSize>,
    key: Option<Arc<backend_ssh::PrivateKey>>,
}

/// Attaches to the dyno through rendezvous and streams both ways until the command's exit
/// status (from the marker) or the end of the stream.
async fn attach(
    config: &RunConfig,
    plan: AttachPlan<'_>,
    io: &mut SessionIo,
) -> Result<ExitStatus, RunError> {
    if let Some(url) = plan.dyno.attach_url.as_deref()
        && (url.starts_with("https://") || url.starts_with("http://"))
    {
        return attach_ssh(config, url, plan, io).await;
    }
    let AttachPlan {
        dyno,
        nonce,
        send,
        mode,
        ..
    } = plan;
    let SessionIo {
        input,
        stdout,
        stderr,
        cancel,
        ..
    } = io;
    let (stdout, stderr, cancel) = (&*stdout, &*stderr, &*cancel);
    let Some(url) = dyno.attach_url.as_deref() else {
        return Err(RunError::NoAttachUrl {
            dyno: dyno.name.clone(),
        });
    };
    let rv = tokio::select! {
        () = cancel.cancelled() => return Err(RunError::Closed),
        r = rendezvous::connect(url, &config.rendezvous) => r.map_err(|error| RunError::Attach {
            dyno: dyno.name.clone(),
            error,
        })?,
    };
    let (mut reader, writer) = tokio::io::split(rv.stream);
    let mut scanner = MarkerScanner::new(nonce);
    let first = scanner.feed(rv.leftover.clone());
    if !first.is_empty() && stdout.write(first).await.is_err() {
        return Err(RunError::Closed);
    }

    let input_side = async {
        match mode {
            Mode::Exec => {
                let mut remote = RendezvousInput {
                    writer,
                    stderr,
                    told: false,
                };
                let mut sent = Ok(());
                if !send.data.is_empty() {
                    sent = remote.write(send.data).await;
                }
                if sent.is_ok() {
                    sent = remote.write(Bytes::from_static(&[EOT])).await;
                }
                // The protocol has no half-close: the write side stays open, and exec input
                // is complete, so anything more is discarded.
                let mut end = pump_input(input, Discard).await;
                end.failed = sent.err().or(end.failed);
                end
            }
            Mode::Terminal { .. } => {
                pump_input(
                    input,
                    RendezvousInput {
                        writer,
                        stderr,
                        told: false,
                    },
                )
                .await
            }
        }
    };
    let output_side = async {
        let mut buf = BytesMut::with_capacity(backend::CHUNK_SIZE);
        let mut marker_deadline: Option<tokio::time::Instant> = None;
        loop {
            buf.reserve(backend::CHUNK_SIZE);
            let read = match marker_deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => return End::DrainTimeout,
                    }
                }
                None => reader.read_buf(&mut buf).await,
            };
            match read {
                Ok(0) => return End::Clean,
                Ok(_) => {
                    let out = scanner.feed(buf.split().freeze());
                    if scanner.status().is_some() && marker_deadline.is_none() {
                        marker_deadline =
                            Some(tokio::time::Instant::now() + config.drain_after_marker);
                    }
                    if !out.is_empty() && stdout.write(out).await.is_err() {
                        return End::ClientGone;
                    }
                }
                Err(e) => return End::Dropped(e),
            }
        }
    };
    let end = match duplex::drive(cancel, input_side, output_side).await {
        Ending::Cancelled | Ending::Finished(End::ClientGone) => {
            return Err(RunError::Closed);
        }
        Ending::Finished(end) => end,
    };
    let rest = scanner.finish();
    if !rest.is_empty() {
        let _ = stdout.write(rest).await;
    }
    let dyno = dyno.name.clone();
    match (scanner.status(), end) {
        (Some(code), _) => Ok(ExitStatus::exited(code)),
        (None, End::Dropped(error)) => Err(RunError::Dropped { dyno, error }),
        (None, _) => Err(RunError::NoMarker { dyno }),
    }
}

/// The SSH attach path: upgrade the `https://` attach URL, SSH with the account key (the host
/// key is not pinnable; the verified TLS and the secret URL authenticate the server), run the
/// dyno's command on `shell` with a PTY for terminals (resizes forwarded), and take the exit
/// code from the marker, else from the channel's `exit-status`/`exit-signal`, else 254.
async fn attach_ssh(
    config: &RunConfig,
    url: &str,
    plan: AttachPlan<'_>,
    io: &mut SessionIo,
) -> Result<ExitStatus, RunError> {
    let dyno = plan.dyno.name.clone();
    let Some(key) = plan.key else {
        return Err(RunError::NoAttachKey { dyno });
    };
    let connect = ssh_attach::connect(
        url,
        Arc::clone(&config.rendezvous.tls),
        config.rendezvous.connect_timeout,
        key,
        &config.attach_ssh,
    );
    let conn = tokio::select! {
        () = io.cancel.cancelled() => return Err(RunError::Closed),
        r = connect => r.map_err(|error| RunError::SshAttach { dyno: dyno.clone(), error })?,
    };
    tracing::info!(dyno = %dyno, "attached over SSH");
    // Exec input is complete already: it goes first, then the channel's EOF (no 0x04 on this
    // path). A terminal streams the session's own input.
    let input = match plan.mode {
        Mode::Exec => {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            if !plan.send.data.is_empty() {
                let _ = tx.try_send(Input::Data(plan.send.data));
            }
            let _ = tx.try_send(Input::Eof);
            rx
        }
        Mode::Terminal { .. } => {
            let (_closed, rx) = tokio::sync::mpsc::channel(1);
            std::mem::replace(&mut io.input, rx)
        }
    };
    let channel_io = SessionIo {
        input,
        stdout: io.stdout.clone(),
        stderr: io.stderr.clone(),
        cancel: io.cancel.clone(),
        report: io.report.clone(),
    };
    let spec = ChannelSpec {
        start: Start::Shell,
        pty: plan.pty,
        term: "xterm-256color".to_owned(),
        stdin_closed: false,
    };
    let mut filter = marker::MarkerFilter::new(plan.nonce);
    let mut status = conn.run_filtered(spec, channel_io, &mut filter).await;
    if filter.exit_code().is_none() && status.code == backend::INTERNAL_EXIT_CODE {
        // The SSH layer's reason, with the dyno it concerns.
        status.message = format!("dyno {dyno} over SSH: {}", status.message);
    }
    Ok(status)
}

/// The rendezvous stream's write side as the input direction. A one-off dyno's terminal size
/// is fixed at create, so the first resize is answered with a note on stderr.
struct RendezvousInput<'a, W> {
    writer: W,
    stderr: &'a backend::OutputSink,
    told: bool,
}

impl<W: AsyncWrite + Unpin + Send> RemoteInput for RendezvousInput<'_, W> {
    async fn write(&mut self, data: Bytes) -> std::io::Result<()> {
        self.writer.write_all(&data).await?;
        self.writer.flush().await
    }
    async fn end(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    async fn resize(&mut self, _size: backend::TermSize) -> std::io::Result<()> {
        if !self.told {
            self.told = true;
            let _ = self
                .stderr
                .write(Bytes::from_static(
                    b"\r\ndynoagent: a one-off dyno's terminal size is fixed when it starts; this resize cannot reach it\r\n",
                ))
                .await;
        }
        Ok(())
    }
}

/// Input after the exec input is complete: received and dropped.
struct Discard;

impl RemoteInput for Discard {
    async fn write(&mut self, _data: Bytes) -> std::io::Result<()> {
        Ok(())
    }
    async fn end(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    async fn resize(&mut self, _size: backend::TermSize) -> std::io::Result<()> {
        Ok(())
    }
}

/// How the rendezvous stream's read side ended.
enum End {
    Clean,
    DrainTimeout,
    Dropped(std::io::Error),
    ClientGone,
}
