//! The session engine: one receive loop per gateway stream, routing typed packets to session
//! tasks in arrival order, enforcing the concurrency limit, and ending sessions on
//! `AgentSessionClose`, stream loss and shutdown.
//!
//! The receive loop never runs session setup or process I/O itself (hoophq/hoop#1564): each
//! session is a task that owns its state; the loop only holds a small typed map of handles.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_link::{Connection, Inbound, Outbound};
use hoop_wire::{AgentPacket, ClientPacket, DecodeError, SessionId};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::admission;
use crate::budget::{self, Budget, Exhausted};
use crate::config::SessionLimits;
use crate::router::Router;
use crate::session::{self, EndReason, SessionEvent, SessionHandle, SessionStart};

/// Packets queued for one session. Overflow policy: the receive loop waits up to
/// [`INPUT_STALL`] (backpressure on the shared stream), then ends that session with 254 so
/// that one stuck process cannot stall every other session. The bytes those packets hold are
/// bounded separately, per session and for the agent ([`crate::budget`],
/// [`crate::SessionLimits`]), with the same overflow policy.
pub const SESSION_QUEUE: usize = 64;
/// How long the receive loop waits for a session whose input queue or budget is full.
const INPUT_STALL: Duration = Duration::from_secs(2);
/// How long a closing stream waits for the gateway to acknowledge the half-close.
const STREAM_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// State shared by every stream's engine for the life of the agent.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) env_file_dir: PathBuf,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) max_sessions: usize,
    pub(crate) tracker: TaskTracker,
    pub(crate) live: watch::Sender<usize>,
    pub(crate) shutdown: CancellationToken,
    /// Run sessions with guardrails or masking configured anyway (logged per session).
    pub(crate) allow_unenforced_policies: bool,
    /// The whole shutdown's budget, from the first moment it is observed.
    pub(crate) shutdown_timeout: Duration,
    /// The one shutdown deadline, fixed when shutdown is first observed.
    pub(crate) shutdown_at: std::sync::OnceLock<tokio::time::Instant>,
    /// Client input held by all sessions together, in bytes.
    pub(crate) input_budget: Budget,
    pub(crate) limits: SessionLimits,
}

/// Kept free at the end of the shutdown budget, so that the binary's own wait (the same
/// budget, started at the signal) never fires before the agent is done.
const EXIT_MARGIN: Duration = Duration::from_secs(1);

impl Shared {
    /// The one shutdown deadline (engine drain, stream close and the final task wait all end
    /// by it), fixed the first time anyone asks after shutdown began.
    pub(crate) fn shutdown_deadline(&self) -> tokio::time::Instant {
        *self.shutdown_at.get_or_init(|| {
            tokio::time::Instant::now() + self.shutdown_timeout.saturating_sub(EXIT_MARGIN)
        })
    }
}

/// The reason given in every answer to a system request (`Sys*`).
const SYS_UNSUPPORTED: &str = "not supported by this agent (command-line and tcp connections only)";

struct Registry {
    sessions: HashMap<SessionId, (u64, SessionHandle)>,
    next_generation: u64,
    done_tx: mpsc::UnboundedSender<(SessionId, u64)>,
}

/// Serves one gateway stream until it ends or the agent shuts down.
pub(crate) async fn serve(shared: Arc<Shared>, mut conn: Connection) {
    let out = conn.outbound();
    // Unbounded by type, bounded in practice: each session sends exactly one message here, and
    // sessions are capped by the semaphore.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut reg = Registry {
        sessions: HashMap::new(),
        next_generation: 0,
        done_tx,
    };
    loop {
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => {
                let deadline = shared.shutdown_deadline();
                drain(&mut reg, &mut done_rx, deadline - STREAM_CLOSE_WAIT).await;
                // Every sender must be gone for the half-close to reach the gateway.
                drop(out);
                drop(reg);
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                conn.close(left.min(STREAM_CLOSE_WAIT)).await;
                return;
            }
            Some((sid, generation)) = done_rx.recv() => reg.remove(&sid, generation),
            event = conn.recv() => match event {
                Inbound::Packet(packet) => dispatch(&shared, &mut reg, &out, packet).await,
                Inbound::Malformed(e) => malformed(&reg, &out, e).await,
                Inbound::Closed(result) => {
                    match result {
                        Ok(()) => tracing::warn!(sessions = reg.sessions.len(), "the gateway ended the stream"),
                        Err(status) => tracing::warn!(
                            sessions = reg.sessions.len(),
                            code = ?status.code(),
                            reason = gateway_link::status_reason(&status),
                            "the gateway stream failed"
                        ),
                    }
                    // The gateway has already closed these sessions ("agent has disconnected").
                    for (_, handle) in reg.sessions.values() {
                        handle.end(EndReason::StreamLost);
                    }
                    return;
                }
            },
        }
    }
}

impl Registry {
    fn remove(&mut self, sid: &SessionId, generation: u64) {
        if self
            .sessions
            .get(sid)
            .is_some_and(|(g, _)| *g == generation)
        {
            self.sessions.remove(sid);
        }
    }
}

async fn drain(
    reg: &mut Registry,
    done_rx: &mut mpsc::UnboundedReceiver<(SessionId, u64)>,
    until: tokio::time::Instant,
) {
    tracing::info!(
        sessions = reg.sessions.len(),
        "shutting down: closing live sessions"
    );
    for (_, handle) in reg.sessions.values() {
        handle.end(EndReason::Shutdown);
    }
    let wait = async {
        while !reg.sessions.is_empty() {
            match done_rx.recv().await {
                Some((sid, generation)) => reg.remove(&sid, generation),
                None => return,
            }
        }
    };
    if tokio::time::timeout_at(until, wait).await.is_err() {
        tracing::error!(
            sessions = reg.sessions.len(),
            "sessions did not close within the shutdown timeout"
        );
    }
}

async fn refuse(out: &Outbound, session_id: SessionId, message: String) {
    let _ = out
        .send(ClientPacket::SessionClose {
            session_id,
            exit_code: Some(backend::INTERNAL_EXIT_CODE),
            message: Bytes::from(message),
        })
        .await;
}

async fn malformed(reg: &Registry, out: &Outbound, e: DecodeError) {
    match &e.session_id {
        Some(sid) if e.is_session_open() && !reg.sessions.contains_key(sid) => {
            tracing::warn!(session_id = %sid, error = %e, "refusing a session that could not be decoded");
            refuse(out, sid.clone(), e.kind.to_string()).await;
        }
        Some(sid) if matches!(e.kind, hoop_wire::DecodeErrorKind::Oversized(_)) => {
            if let Some((_, handle)) = reg.sessions.get(sid) {
                tracing::warn!(session_id = %sid, error = %e, "closing a session that sent an oversized packet");
                handle.end(EndReason::OversizedInput);
            }
        }
        _ => tracing::warn!(session_id = ?e.session_id, error = %e, "dropping a malformed packet"),
    }
}

async fn dispatch(shared: &Arc<Shared>, reg: &mut Registry, out: &Outbound, packet: AgentPacket) {
    match packet {
        AgentPacket::GatewayConnectOk => tracing::info!("the gateway registered the agent"),
        AgentPacket::FeatureFlags(flags) => tracing::info!(?flags, "feature flags updated"),
        AgentPacket::KeepAlive => {}
        AgentPacket::SessionOpen(open) => {
            let sid = open.session_id.clone();
            if reg.sessions.contains_key(&sid) {
                tracing::warn!(session_id = %sid, "ignoring a second open for a live session");
                return;
            }
            match admission::admit(&open, shared.allow_unenforced_policies) {
                Err(refusal) => {
                    tracing::warn!(session_id = %sid, reason = %refusal, "refusing a session at open");
                    refuse(out, sid, refusal.to_string()).await;
                    return;
                }
                Ok(unenforced) => {
                    for policy in unenforced {
                        tracing::warn!(
                            session_id = %sid,
                            ?policy,
                            "running a session whose connection configures a policy this agent does not enforce (DYNOAGENT_ALLOW_UNENFORCED_POLICIES=true)"
                        );
                    }
                }
            }
            if shared.shutdown.is_cancelled() {
                refuse(out, sid, "agent shutting down".into()).await;
                return;
            }
            let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
                tracing::warn!(session_id = %sid, limit = shared.max_sessions, "refusing a session over the concurrency limit");
                refuse(
                    out,
                    sid,
                    format!(
                        "the agent is already serving its limit of {} concurrent sessions; try again later or raise DYNOAGENT_MAX_SESSIONS",
                        shared.max_sessions
                    ),
                )
                .await;
                return;
            };
            let (handle, events) = session::new_session(
                sid.clone(),
                out.clone(),
                SESSION_QUEUE,
                Budget::new(shared.limits.session_input_bytes),
            );
            let generation = reg.next_generation;
            reg.next_generation += 1;
            reg.sessions
                .insert(sid.clone(), (generation, handle.clone()));
            let done_tx = reg.done_tx.clone();
            let start = SessionStart {
                open: *open,
                events,
                handle,
                shared: Arc::clone(shared),
            };
            let span = tracing::info_span!("session", session_id = %sid);
            let live = shared.live.clone();
            live.send_modify(|n| *n += 1);
            shared.tracker.spawn(
                async move {
                    session::run(start).await;
                    drop(permit);
                    live.send_modify(|n| *n = n.saturating_sub(1));
                    let _ = done_tx.send((sid, generation));
                }
                .instrument(span),
            );
        }
        AgentPacket::ExecWriteStdin { session_id, data } => {
            route(shared, reg, session_id, Routed::Exec(data)).await;
        }
        AgentPacket::TerminalWriteStdin { session_id, data } => {
            route(shared, reg, session_id, Routed::Terminal(data)).await;
        }
        AgentPacket::TerminalResize { session_id, size } => {
            route(
                shared,
                reg,
                session_id,
                Routed::Event(SessionEvent::Resize(size)),
            )
            .await;
        }
        AgentPacket::TcpWrite {
            session_id,
            connection_id,
            server_connect,
            data,
        } => {
            let tcp = Routed::Tcp {
                connection_id,
                server_connect,
                data,
            };
            route(shared, reg, session_id, tcp).await;
        }
        AgentPacket::TcpClose {
            session_id,
            connection_id,
        } => {
            let close = Routed::Event(SessionEvent::TcpClose { connection_id });
            route(shared, reg, session_id, close).await;
        }
        AgentPacket::SessionClose { session_id } => match reg.sessions.get(&session_id) {
            Some((_, handle)) => {
                tracing::debug!(session_id = %session_id, "the gateway closed the session");
                handle.end(EndReason::GatewayClosed);
            }
            None => tracing::debug!(session_id = %session_id, "close for an unknown session"),
        },
        AgentPacket::SysRequest {
            kind, request_id, ..
        } => {
            // The gateway's caller blocks until a reply or its timeout (up to 10 min): answer
            // at once, with the failure shape its caller decodes.
            tracing::info!(request_id = %request_id, ?kind, "answering a system request this agent does not serve");
            let payload = kind.failure_payload(request_id.as_str(), SYS_UNSUPPORTED);
            let _ = out
                .send(ClientPacket::SysResponse {
                    kind,
                    request_id,
                    payload,
                })
                .await;
        }
        AgentPacket::Unsupported {
            packet_type,
            session_id,
        } => {
            tracing::debug!(packet_type, session_id = ?session_id, "ignoring a packet type this agent does not serve");
        }
    }
}

/// What the receive loop hands to a session: input still to be charged to the budgets, or
/// an event without a payload.
enum Routed {
    Exec(Bytes),
    Terminal(Bytes),
    Tcp {
        connection_id: String,
        server_connect: bool,
        data: Bytes,
    },
    Event(SessionEvent),
}

async fn route(shared: &Shared, reg: &Registry, sid: SessionId, routed: Routed) {
    let Some((_, handle)) = reg.sessions.get(&sid) else {
        tracing::debug!(session_id = %sid, "dropping a packet for an unknown session");
        return;
    };
    // One deadline for the budgets and the queue together.
    let until = tokio::time::Instant::now() + INPUT_STALL;
    let event = match routed {
        Routed::Event(event) => event,
        // An ending session never reads its input: drop it rather than wait for budget.
        Routed::Exec(data) | Routed::Terminal(data) | Routed::Tcp { data, .. }
            if handle.events.is_closed() || handle.is_ending() =>
        {
            drop(data);
            return;
        }
        Routed::Tcp {
            connection_id,
            server_connect,
            data,
        } => match budget::charge(&handle.budget, &shared.input_budget, data, until).await {
            Ok(data) => SessionEvent::TcpWrite {
                connection_id,
                server_connect,
                data,
            },
            Err(e) => return over_budget(shared, handle, &sid, e),
        },
        Routed::Exec(data) => {
            match budget::charge(&handle.budget, &shared.input_budget, data, until).await {
                Ok(data) => SessionEvent::ExecStdin(data),
                Err(e) => return over_budget(shared, handle, &sid, e),
            }
        }
        Routed::Terminal(data) => {
            match budget::charge(&handle.budget, &shared.input_budget, data, until).await {
                Ok(data) => SessionEvent::TerminalStdin(data),
                Err(e) => return over_budget(shared, handle, &sid, e),
            }
        }
    };
    match handle.events.try_send(event) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(event)) => {
            if tokio::time::timeout_at(until, handle.events.send(event))
                .await
                .is_err()
            {
                tracing::warn!(session_id = %sid, "session input queue overflowed; closing the session");
                handle.end(EndReason::InputOverflow);
            }
        }
    }
}

fn over_budget(shared: &Shared, handle: &SessionHandle, sid: &SessionId, e: Exhausted) {
    match e {
        Exhausted::Session => {
            tracing::warn!(session_id = %sid, budget_bytes = handle.budget.bytes(), "session input budget exhausted; closing the session");
            handle.end(EndReason::InputOverflow);
        }
        Exhausted::Agent => {
            tracing::warn!(session_id = %sid, budget_bytes = shared.input_budget.bytes(), "agent input budget exhausted; closing the session");
            handle.end(EndReason::AgentInputBudget);
        }
    }
}
