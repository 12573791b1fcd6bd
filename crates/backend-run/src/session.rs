//! One run session: parse the arguments, create the one-off dyno, attach through rendezvous,
//! stream both ways, recover the exit status from the marker, and always stop the dyno.

use std::time::Duration;

use backend::duplex::{self, Ending, RemoteInput, pump_input};
use backend::{ExitStatus, Input, Mode, SessionIo, SessionRequest};
use bytes::{Bytes, BytesMut};
use heroku_api::{ApiKey, ClientConfig, CreateDyno, HerokuClient};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::args::{self, Parsed, RunArgs};
use crate::marker::{self, MarkerScanner};
use crate::rendezvous::{self, RendezvousConfig};

/// End-of-input byte on the rendezvous protocol (no-tty mode).
const EOT: u8 = 0x04;
/// Exit code for bad arguments (nothing was started).
const USAGE_EXIT_CODE: i32 = 2;
/// The longest `time_to_live` Heroku accepts, and the default (heroku-protocols.md §2.7).
pub const MAX_TIME_TO_LIVE_SECS: u64 = 86_400;
/// Added to hoop's `jit.timeout` so that the dyno outlives the access window by a little and
/// the gateway, not the expiry, ends the session.
const JIT_MARGIN_SECS: u64 = 60;

/// `time_to_live` for the one-off dyno: the connection's `HEROKU_RUN_TIME_TO_LIVE` (seconds,
/// default and cap 86400), shortened to hoop's `jit.timeout` plus a minute when the session
/// carries a shorter one. It bounds a dyno left behind if the agent dies (§2.7).
pub(crate) fn time_to_live(request: &SessionRequest) -> Result<u64, ExitStatus> {
    let configured = match request.env.connection_str("HEROKU_RUN_TIME_TO_LIVE") {
        None => MAX_TIME_TO_LIVE_SECS,
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(n) if n >= 1 => n.min(MAX_TIME_TO_LIVE_SECS),
            _ => {
                return Err(ExitStatus {
                    code: USAGE_EXIT_CODE,
                    message: format!(
                        "HEROKU_RUN_TIME_TO_LIVE must be a whole number of seconds between 1 and {MAX_TIME_TO_LIVE_SECS}; fix the connection's setting"
                    ),
                });
            }
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
}

/// The `heroku run` arguments of a session: the connection command after `heroku run` (or
/// `heroku-run`), then the client's arguments.
pub fn session_args(request: &SessionRequest) -> Vec<String> {
    let skip = match request.command.first().map(|c| basename(c)) {
        Some("heroku") => 2,
        _ => 1,
    };
    request
        .command
        .iter()
        .skip(skip)
        .chain(request.args.iter())
        .cloned()
        .collect()
}

/// The last path component of a command.
pub fn basename(cmd: &str) -> &str {
    cmd.rsplit('/').next().unwrap_or(cmd)
}

pub(crate) async fn run(config: RunConfig, request: SessionRequest, io: SessionIo) -> ExitStatus {
    let run_args = match args::parse(&session_args(&request)) {
        Ok(Parsed::Run(r)) => r,
        Ok(Parsed::Help(text)) => {
            let _ = io.stdout.write(Bytes::from(text)).await;
            return ExitStatus::success();
        }
        Err(e) => {
            return ExitStatus {
                code: USAGE_EXIT_CODE,
                message: e.0,
            };
        }
    };
    if let Err(refused) = backend::check_app_allowed(&request.env, &run_args.app) {
        return refused;
    }
    io.report.set_app(&run_args.app);
    let Some(key) = request
        .env
        .get_str("HEROKU_API_KEY")
        .filter(|k| !k.is_empty())
    else {
        return ExitStatus::internal(
            "HEROKU_API_KEY is not set for this connection: add it as a connection secret (envvar:HEROKU_API_KEY), or set it on the agent and give the connection the value system.agent.envs",
        );
    };
    let ttl = match time_to_live(&request) {
        Ok(ttl) => ttl,
        Err(refused) => return refused,
    };
    let client = match HerokuClient::new(config.api.clone(), ApiKey::new(key)) {
        Ok(c) => c,
        Err(e) => return ExitStatus::internal(e.to_string()),
    };
    // Like the CLI: one app lookup for the stack, skipped with --no-launcher; a failure stops
    // the session before any dyno exists.
    let mut launcher = false;
    if !run_args.no_launcher {
        let app = tokio::select! {
            () = io.cancel.cancelled() => return ExitStatus::internal("session closed"),
            r = client.app(&run_args.app) => r,
        };
        match app {
            Ok(app) => {
                let stack = app.stack.as_ref().map(|s| s.name.as_str());
                launcher = needs_launcher(&run_args.command, stack);
            }
            Err(e) => return ExitStatus::internal(e.to_string()),
        }
    }
    let SessionIo {
        mut input,
        stdout,
        stderr,
        cancel,
        report,
    } = io;

    // Exec input is complete before the dyno starts (hoop sends it in one packet), which also
    // lets us see a 0x04 byte before choosing how to send the input.
    let mut stdin = BytesMut::new();
    if request.mode == Mode::Exec {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return ExitStatus::internal("session closed"),
                event = input.recv() => match event {
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
        let _ = stderr
            .write(Bytes::from_static(
                b"dynoagent: the input contains 0x04 bytes, which heroku run's protocol reads as end of input; it is sent base64-encoded and decoded on the dyno instead (base64 -d)\n",
            ))
            .await;
    }

    let create = client.create_dyno(&run_args.app, &body);
    tokio::pin!(create);
    let created = tokio::select! {
        () = cancel.cancelled() => None,
        r = &mut create => Some(r),
    };
    let dyno = match created {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            stop_unanswered_create(&config, &client, &run_args.app, &nonce, &e).await;
            return ExitStatus::internal(e.to_string());
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
            return ExitStatus::internal("session closed");
        }
    };
    tracing::info!(app = %run_args.app, dyno = %dyno.name, "one-off dyno created");
    report.set_dyno(&dyno.name);
    let status = attach(
        &config,
        &dyno,
        &nonce,
        send_input,
        &mut input,
        &stdout,
        &stderr,
        &cancel,
        request.mode,
    )
    .await;

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

#[allow(clippy::too_many_arguments)]
async fn attach(
    config: &RunConfig,
    dyno: &heroku_api::Dyno,
    nonce: &str,
    send: SendInput,
    input: &mut tokio::sync::mpsc::Receiver<Input>,
    stdout: &backend::OutputSink,
    stderr: &backend::OutputSink,
    cancel: &tokio_util::sync::CancellationToken,
    mode: Mode,
) -> ExitStatus {
    let Some(url) = dyno.attach_url.as_deref() else {
        return ExitStatus::internal(format!(
            "Heroku returned no attach URL for dyno {}",
            dyno.name
        ));
    };
    let rv = tokio::select! {
        () = cancel.cancelled() => return ExitStatus::internal("session closed"),
        r = rendezvous::connect(url, &config.rendezvous) => match r {
            Ok(rv) => rv,
            Err(e) => return ExitStatus::internal(format!("attaching to dyno {}: {e}", dyno.name)),
        },
    };
    let (mut reader, writer) = tokio::io::split(rv.stream);
    let mut scanner = MarkerScanner::new(nonce);
    let first = scanner.feed(&rv.leftover);
    if !first.is_empty() && stdout.write(first).await.is_err() {
        return ExitStatus::internal("session closed");
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
                    let out = scanner.feed(&buf.split());
                    if scanner.status().is_some() && marker_deadline.is_none() {
                        marker_deadline =
                            Some(tokio::time::Instant::now() + config.drain_after_marker);
                    }
                    if !out.is_empty() && stdout.write(out).await.is_err() {
                        return End::ClientGone;
                    }
                }
                Err(e) => return End::Dropped(e.to_string()),
            }
        }
    };
    let end = match duplex::drive(cancel, input_side, output_side).await {
        Ending::Cancelled | Ending::Finished(End::ClientGone) => {
            return ExitStatus::internal("session closed");
        }
        Ending::Finished(end) => end,
    };
    let rest = scanner.finish();
    if !rest.is_empty() {
        let _ = stdout.write(rest).await;
    }
    match (scanner.status(), end) {
        (Some(0), _) => ExitStatus::success(),
        (Some(code), _) => ExitStatus {
            code,
            message: format!("failed executing command, reason=exit status {code}"),
        },
        (None, End::Dropped(reason)) => ExitStatus::internal(format!(
            "the connection to dyno {} dropped before the command finished ({reason}); its exit status is unknown",
            dyno.name
        )),
        (None, _) => ExitStatus::internal(format!(
            "the command on dyno {} ended before dynoagent's exit marker could run (the dyno's shell was killed or stopped from outside); its exit status is unknown",
            dyno.name
        )),
    }
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
    Dropped(String),
    ClientGone,
}
