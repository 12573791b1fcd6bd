//! One session, owned by one task: environment, backend start, input forwarding, and exactly
//! one `ClientSessionClose`.
//!
//! The task is the only writer of its session's packets. Output goes through
//! [`SessionOutput`], a gate that the engine shuts when the gateway closes the session or the
//! stream is lost, after which nothing more is sent for the session.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backend::env::{EnvSources, resolve};
use backend::{
    ExitStatus, Input, Mode, OutputSink, OutputTarget, SessionIo, SessionRequest, SinkClosed,
    StreamKind, TermSize,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use gateway_link::Outbound;
use hoop_wire::{ClientPacket, SessionId, SessionOpen};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::budget::Budget;
use crate::engine::Shared;

/// Input events queued for one session's backend. Overflow policy: the session task waits
/// (it is the backend's own pace), which in turn fills [`crate::engine::SESSION_QUEUE`].
const BACKEND_INPUT_QUEUE: usize = 16;

/// An event routed to a session by the engine, in arrival order.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    ExecStdin(Bytes),
    TerminalStdin(Bytes),
    Resize(TermSize),
    /// `AgentTCPConnectionWrite` of a `tcp` session (data charged to the budgets).
    TcpWrite {
        connection_id: String,
        server_connect: bool,
        data: Bytes,
    },
    /// `AgentCloseTCPConnection` of a `tcp` session.
    TcpClose {
        connection_id: String,
    },
}

/// Why a session is being ended from outside its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The gateway sent `AgentSessionClose`: send nothing more.
    GatewayClosed,
    /// The gateway stream was lost: nothing can be sent.
    StreamLost,
    /// The agent is shutting down: close with 254 and say so.
    Shutdown,
    /// The session did not read its input fast enough: close with 254 and say so.
    InputOverflow,
    /// The client sent input larger than hoop's message limit: close with 254 and say so.
    OversizedInput,
    /// Every session together holds the agent's whole input budget: close with 254 and say so.
    AgentInputBudget,
    /// No input and no output for the idle timeout: close with 254 and say so.
    IdleTimeout,
    /// The session reached the maximum lifetime: close with 254 and say so.
    MaxLifetime,
}

/// The engine's handle to a running session.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    pub(crate) events: mpsc::Sender<SessionEvent>,
    /// The bytes of input this session may hold unconsumed.
    pub(crate) budget: Budget,
    control: Arc<Control>,
}

#[derive(Debug)]
struct Control {
    cancel: CancellationToken,
    reason: Mutex<Option<EndReason>>,
    output: Arc<SessionOutput>,
}

impl SessionHandle {
    /// Whether the session is ending: its input will never be read.
    pub(crate) fn is_ending(&self) -> bool {
        self.control.cancel.is_cancelled()
    }

    /// Ends the session for `reason`. The first reason wins.
    pub(crate) fn end(&self, reason: EndReason) {
        if let Ok(mut slot) = self.control.reason.lock() {
            slot.get_or_insert(reason);
        }
        if matches!(reason, EndReason::GatewayClosed | EndReason::StreamLost) {
            self.control.output.silence();
        }
        self.control.cancel.cancel();
    }
}

/// The gate between a session and the gateway stream.
#[derive(Debug)]
pub(crate) struct SessionOutput {
    session_id: SessionId,
    out: Outbound,
    // Held across each send so that output and the final close are strictly ordered.
    lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Set once the session is a terminal (`hoop connect`): stderr then goes out as stdout.
    terminal: AtomicBool,
}

impl SessionOutput {
    fn silence(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) async fn send(&self, packet: ClientPacket) -> Result<(), SinkClosed> {
        let _guard = self.lock.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(SinkClosed);
        }
        self.out.send(packet).await.map_err(|_| SinkClosed)
    }

    /// Sends the session's one close, unless the session was already silenced or closed.
    async fn close(&self, status: &ExitStatus) {
        let _guard = self.lock.lock().await;
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self
            .out
            .send(ClientPacket::SessionClose {
                session_id: self.session_id.clone(),
                exit_code: Some(status.code),
                message: Bytes::from(status.message.clone()),
            })
            .await;
    }
}

impl OutputTarget for SessionOutput {
    fn write(&self, stream: StreamKind, chunk: Bytes) -> BoxFuture<'_, Result<(), SinkClosed>> {
        let session_id = self.session_id.clone();
        let terminal = self.terminal.load(Ordering::Relaxed);
        Box::pin(async move {
            let packet = match stream {
                StreamKind::Stdout => ClientPacket::Stdout {
                    session_id,
                    data: chunk,
                },
                // `hoop connect` drops `ClientWriteStderr` (hoop-gateway-protocol.md §3.4): in a
                // terminal, notices go to stdout, with CRLF for the client's raw-mode terminal.
                StreamKind::Stderr if terminal => ClientPacket::Stdout {
                    session_id,
                    data: crlf(chunk),
                },
                StreamKind::Stderr => ClientPacket::Stderr {
                    session_id,
                    data: chunk,
                },
            };
            self.send(packet).await
        })
    }
}

/// Bare `\n` as `\r\n` (a raw-mode terminal does not return the carriage on `\n`).
fn crlf(chunk: Bytes) -> Bytes {
    if !chunk.contains(&b'\n') {
        return chunk;
    }
    let mut out = Vec::with_capacity(chunk.len() + 8);
    let mut previous = 0u8;
    for &b in chunk.iter() {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    Bytes::from(out)
}

/// How long a terminal session whose backend fixes the size at start waits for the client's
/// first resize after its first input (hoop-gateway-protocol.md §3.4, §8.2).
const FIRST_RESIZE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Everything a session task starts with.
pub(crate) struct SessionStart {
    pub(crate) open: SessionOpen,
    pub(crate) events: mpsc::Receiver<SessionEvent>,
    pub(crate) handle: SessionHandle,
    pub(crate) shared: Arc<Shared>,
}

/// Creates the handle and the receiving end for a new session.
pub(crate) fn new_session(
    session_id: SessionId,
    out: Outbound,
    queue: usize,
    budget: Budget,
) -> (SessionHandle, mpsc::Receiver<SessionEvent>) {
    let (tx, rx) = mpsc::channel(queue);
    let output = Arc::new(SessionOutput {
        session_id,
        out,
        lock: tokio::sync::Mutex::new(()),
        closed: AtomicBool::new(false),
        terminal: AtomicBool::new(false),
    });
    let handle = SessionHandle {
        events: tx,
        budget,
        control: Arc::new(Control {
            cancel: CancellationToken::new(),
            reason: Mutex::new(None),
            output,
        }),
    };
    (handle, rx)
}

/// Session variables hoop's agent injects (hoop-gateway-protocol.md §2.6).
fn session_vars(open: &SessionOpen) -> Vec<(&'static str, String)> {
    let p = &open.params;
    vec![
        ("HOOP_CONNECTION_NAME", p.connection_name.clone()),
        ("HOOP_CONNECTION_TYPE", open.connection_type.clone()),
        ("HOOP_CLIENT_ORIGIN", p.client_origin.clone()),
        ("HOOP_CLIENT_VERB", p.client_verb.clone()),
        ("HOOP_USER_ID", p.user_id.clone()),
        ("HOOP_USER_EMAIL", p.user_email.clone()),
        ("HOOP_SESSION_ID", open.session_id.to_string()),
    ]
}

/// Counters and target a session reports in its audit line.
#[derive(Default)]
struct Tally {
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    report: backend::SessionReport,
}

/// Runs a session to its end. Never panics; every path ends with at most one close and
/// exactly one audit line.
pub(crate) async fn run(start: SessionStart) {
    let started = Instant::now();
    let control = Arc::clone(&start.handle.control);
    let output = Arc::clone(&control.output);
    let backend = start.shared.router.route(&start.open.params.cmd_list);
    let open = start.open.clone();
    let tally = Tally::default();
    let cancel = control.cancel.clone();
    // After a close, the backend may take this long to stop (kill grace, TERM/KILL on a
    // channel, deleting a dyno) before the session is abandoned.
    let cancel_deadline = start.shared.limits.cancel_deadline;
    let drive = drive(start, &backend, &tally);
    tokio::pin!(drive);
    // Observe only: the session's own work and, once it is cancelled, the hard deadline.
    let status = tokio::select! {
        status = &mut drive => status,
        () = deadline_after(&cancel, cancel_deadline) => {
            tracing::error!(
                backend = backend.name(),
                deadline_ms = cancel_deadline.as_millis() as u64,
                "the session did not stop within its deadline after it was closed; aborting it (its process, channel or dyno may be left behind)"
            );
            None
        }
    };
    let status = end_status(&control, status);
    finish(&output, &control, &status).await;
    // The audit line: who, where, how it ended, how much. Never content, never secrets.
    let target = tally.report.target();
    // `session_id` comes from the session's span (once per line).
    tracing::info!(
        user = %open.params.user_email,
        connection = %open.params.connection_name,
        backend = backend.name(),
        app = target.app.as_deref().unwrap_or("-"),
        dyno = target.dyno.as_deref().unwrap_or("-"),
        verb = %open.params.client_verb,
        exit_code = status.code,
        bytes_in = tally.bytes_in.load(Ordering::Relaxed),
        bytes_out = tally.bytes_out.load(Ordering::Relaxed),
        duration_ms = started.elapsed().as_millis() as u64,
        "session ended"
    );
}

/// Completes `deadline` after `cancel` fired.
async fn deadline_after(cancel: &CancellationToken, deadline: Duration) {
    cancel.cancelled().await;
    tokio::time::sleep(deadline).await;
}

/// Completes at `at`, or never.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends the session from inside for `reason` (the first reason wins).
fn end_from_inside(control: &Control, reason: EndReason) {
    if let Ok(mut slot) = control.reason.lock() {
        slot.get_or_insert(reason);
    }
    control.cancel.cancel();
}

/// Opens the session, waits for its first input, and runs the backend. Returns the backend's
/// status, or `None` when the session ended before the backend ran.
async fn drive(
    start: SessionStart,
    backend: &Arc<dyn backend::Backend>,
    tally: &Tally,
) -> Option<ExitStatus> {
    let SessionStart {
        open,
        mut events,
        handle,
        shared,
    } = start;
    let control = Arc::clone(&handle.control);
    let output = Arc::clone(&control.output);
    let sid = open.session_id.clone();
    let session_vars = session_vars(&open);
    let sources = EnvSources {
        connection: &open.params.env_vars,
        client: &open.client_env,
        session: &session_vars,
        file_dir: &shared.env_file_dir,
    };
    let env = match resolve(&sources, &|name| std::env::var_os(name)) {
        Ok(env) => env,
        Err(e) => {
            return Some(ExitStatus::internal(format!(
                "failed decoding environment variables, reason={e}"
            )));
        }
    };
    // Issue 13: a connection may pin its command; checked before anything is started.
    if let Err(status) = backend::check_pinned_command(&env, &open.params.client_args) {
        return Some(status);
    }
    if open.connection_type == hoop_wire::spec::CONNECTION_TYPE_TCP {
        let tcp = crate::tcp::TcpSession {
            router: &shared.router,
            open: &open,
            env: &env,
            output: &output,
            cancel: &control.cancel,
            bytes_in: &tally.bytes_in,
            bytes_out: &tally.bytes_out,
        };
        return Some(tcp.run(events).await);
    }
    let mut command_line = open.params.cmd_list.clone();
    command_line.extend(open.params.client_args.iter().cloned());
    output
        .send(ClientPacket::SessionOpenOk {
            session_id: sid.clone(),
            connection_type: open.connection_type.clone(),
            request_port: open.request_port.clone(),
            command: command_line.join(" "),
        })
        .await
        .ok()?;

    let limits = shared.limits.clone();
    let opened = tokio::time::Instant::now();
    let end_of_life = limits.max_lifetime.map(|d| opened + d);

    // Wait for the first input, which says how the client is attached. A resize may come
    // first (hoop's CLI sends both concurrently); keep the latest one for the terminal.
    let first_input_by = opened + limits.first_input_timeout;
    let mut pending_size: Option<TermSize> = None;
    let (mode, first_input) = loop {
        let event = tokio::select! {
            () = control.cancel.cancelled() => return None,
            () = tokio::time::sleep_until(first_input_by) => {
                return Some(ExitStatus::internal(format!(
                    "session closed by the agent: no input within {} s after the session opened (DYNOAGENT_FIRST_INPUT_TIMEOUT_SECS)",
                    limits.first_input_timeout.as_secs()
                )));
            }
            () = sleep_until(end_of_life) => {
                end_from_inside(&control, EndReason::MaxLifetime);
                return None;
            }
            event = events.recv() => event,
        };
        match event {
            Some(SessionEvent::Resize(size)) => pending_size = Some(size),
            Some(SessionEvent::ExecStdin(data)) => break (Mode::Exec, Some(data)),
            Some(SessionEvent::TerminalStdin(_discarded)) => {
                break (
                    Mode::Terminal {
                        size: pending_size.unwrap_or(TermSize::DEFAULT),
                    },
                    None,
                );
            }
            Some(other @ (SessionEvent::TcpWrite { .. } | SessionEvent::TcpClose { .. })) => {
                tracing::debug!(session_id = %sid, event = ?kind(&other), "ignoring tcp packets in a command-line session");
            }
            None => return None,
        }
    };
    // A backend that fixes the terminal's size at start waits a little for the first resize,
    // which hoop's CLI may send just after its first input. Input that arrives meanwhile is
    // kept, in order, for the backend.
    let mut early: std::collections::VecDeque<SessionEvent> = std::collections::VecDeque::new();
    let mode = match mode {
        Mode::Terminal { size }
            if pending_size.is_none() && backend.fixes_terminal_size_at_start() =>
        {
            let wait_until = tokio::time::Instant::now() + FIRST_RESIZE_WAIT;
            let mut size = size;
            loop {
                tokio::select! {
                    () = control.cancel.cancelled() => return None,
                    () = tokio::time::sleep_until(wait_until) => break,
                    event = events.recv() => match event {
                        Some(SessionEvent::Resize(s)) => {
                            size = s;
                            break;
                        }
                        Some(other) => early.push_back(other),
                        None => break,
                    },
                }
            }
            Mode::Terminal { size }
        }
        other => other,
    };
    if matches!(mode, Mode::Terminal { .. }) {
        output.terminal.store(true, Ordering::Relaxed);
    }

    let target: Arc<dyn OutputTarget> = output.clone();
    let (input_tx, input_rx) = mpsc::channel(BACKEND_INPUT_QUEUE);
    let io = SessionIo {
        input: input_rx,
        stdout: OutputSink::new(
            Arc::clone(&target),
            StreamKind::Stdout,
            Arc::clone(&tally.bytes_out),
        ),
        stderr: OutputSink::new(target, StreamKind::Stderr, Arc::clone(&tally.bytes_out)),
        cancel: control.cancel.clone(),
        report: tally.report.clone(),
    };
    let request = SessionRequest {
        session_id: sid.clone(),
        connection_name: open.params.connection_name.clone(),
        user: open.params.user_email.clone(),
        command: open.params.cmd_list.clone(),
        args: open.params.client_args.clone(),
        env,
        mode,
        jit_timeout: open.jit_timeout,
    };
    let mut backlog: std::collections::VecDeque<Input> = std::collections::VecDeque::new();
    if let Some(data) = first_input {
        tally
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if !data.is_empty() {
            backlog.push_back(Input::Data(data));
        }
        backlog.push_back(Input::Eof);
    }
    for event in early {
        match event {
            SessionEvent::TerminalStdin(data) => {
                tally
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                backlog.push_back(Input::Data(data));
            }
            SessionEvent::Resize(size) => backlog.push_back(Input::Resize(size)),
            SessionEvent::ExecStdin(_)
            | SessionEvent::TcpWrite { .. }
            | SessionEvent::TcpClose { .. } => {}
        }
    }
    let run = backend.run(request, io);
    tokio::pin!(run);
    let mut events_open = true;
    // Idle: the timer re-arms while the byte counters move (input or output).
    let activity =
        || tally.bytes_in.load(Ordering::Relaxed) + tally.bytes_out.load(Ordering::Relaxed);
    let mut last_activity = activity();
    let mut idle_at = limits.idle_timeout.map(|d| tokio::time::Instant::now() + d);
    let mut ending = false;
    loop {
        tokio::select! {
            status = &mut run => return Some(status),
            () = sleep_until(end_of_life), if !ending => {
                ending = true;
                end_from_inside(&control, EndReason::MaxLifetime);
            }
            () = sleep_until(idle_at), if !ending => {
                let now = activity();
                if now == last_activity {
                    ending = true;
                    end_from_inside(&control, EndReason::IdleTimeout);
                } else {
                    last_activity = now;
                    idle_at = limits.idle_timeout.map(|d| tokio::time::Instant::now() + d);
                }
            }
            permit = input_tx.reserve(), if !backlog.is_empty() => {
                if let (Ok(permit), Some(input)) = (permit, backlog.pop_front()) {
                    permit.send(input);
                }
            }
            event = events.recv(), if events_open && backlog.is_empty() => match event {
                Some(SessionEvent::TerminalStdin(data)) if matches!(mode, Mode::Terminal { .. }) => {
                    tally.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                    backlog.push_back(Input::Data(data));
                }
                Some(SessionEvent::Resize(size)) if matches!(mode, Mode::Terminal { .. }) => {
                    backlog.push_back(Input::Resize(size));
                }
                Some(other) => tracing::debug!(session_id = %sid, event = ?kind(&other), "ignoring input that does not match the session's mode"),
                None => events_open = false,
            },
        }
    }
}

fn kind(event: &SessionEvent) -> &'static str {
    match event {
        SessionEvent::ExecStdin(_) => "exec-stdin",
        SessionEvent::TerminalStdin(_) => "terminal-stdin",
        SessionEvent::Resize(_) => "resize",
        SessionEvent::TcpWrite { .. } => "tcp-write",
        SessionEvent::TcpClose { .. } => "tcp-close",
    }
}

/// The status to report: an outside reason overrides what the backend said.
fn end_status(control: &Control, backend_status: Option<ExitStatus>) -> ExitStatus {
    let reason = control.reason.lock().ok().and_then(|r| *r);
    match (reason, backend_status) {
        (Some(EndReason::Shutdown), _) => ExitStatus::internal("agent shutting down"),
        (Some(EndReason::InputOverflow), _) => ExitStatus::internal(
            "session closed by the agent: the process stopped reading its input and the session's input queue or byte budget (DYNOAGENT_SESSION_INPUT_MIB) stayed full",
        ),
        (Some(EndReason::IdleTimeout), _) => ExitStatus::internal(
            "session closed by the agent: no input or output for the idle timeout (DYNOAGENT_SESSION_IDLE_TIMEOUT_SECS)",
        ),
        (Some(EndReason::MaxLifetime), _) => ExitStatus::internal(
            "session closed by the agent: it reached the maximum session lifetime (DYNOAGENT_SESSION_MAX_LIFETIME_SECS)",
        ),
        (Some(EndReason::AgentInputBudget), _) => ExitStatus::internal(
            "session closed by the agent: sessions whose processes do not read their input hold the agent's whole input budget (DYNOAGENT_INPUT_BUDGET_MIB); try again later",
        ),
        (Some(EndReason::OversizedInput), _) => ExitStatus::internal(
            "session closed by the agent: an input packet was larger than hoop's 17 MiB message limit",
        ),
        (_, Some(status)) => status,
        (_, None) => ExitStatus::internal("session closed"),
    }
}

async fn finish(output: &SessionOutput, control: &Control, status: &ExitStatus) {
    output.close(status).await;
    // The backend is done; make sure nothing of the session keeps running.
    control.cancel.cancel();
}
