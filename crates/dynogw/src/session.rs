//! One task per client stream: the session it carries, from the client's `AgentSessionOpen`
//! to exactly one end. The task owns the session's state (its agent link, its audit clock);
//! while relaying, each direction is its own future and the task `select!`s over their ends
//! and the gateway's shutdown, so a side that stops reading stalls only what flows to it.
//!
//! Flow (hoop-gateway-protocol.md §3.2-3.5): wait for the client's `AgentSessionOpen`; record
//! the session; wait up to `offline_wait` for the connection's agent (else
//! `ClientSessionOpenAgentOffline`); send the agent a rebuilt `AgentSessionOpen` (no payload;
//! `gateway.session_id`, `gateway.connection_type`, the gob `agent.connection_params`, then
//! every client spec key not already set); relay packets both ways, injecting
//! `gateway.session_id` into client packets and auditing input and output; end on the agent's
//! `ClientSessionClose` (then `AgentSessionClose` to the agent and the close to the client), on
//! the client leaving (`AgentSessionClose` to the agent), on the agent's stream dropping (254
//! "agent has disconnected" to the client) or on shutdown (254 "gateway shutdown").
//!
//! It deliberately does not interpret session content beyond the packet type.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hoop_gob::AgentConnectionParams;
use hoop_wire::pb::Packet;
use hoop_wire::spec::{INTERNAL_EXIT_CODE, key, packet_type as pt};
use hoop_wire::{ClientPacket, SessionId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::Instrument as _;

use crate::audit::{AuditSink, EventKind, NewSession, WriterGone, unix_now};
use crate::auth::ClientRequest;
use crate::config::ConnectionDef;
use crate::server::{AgentLink, FromAgent, Hub};

/// How long a client may take to send its `AgentSessionOpen` after connecting.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the session waits for the audit store to commit its end before telling the client.
const AUDIT_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// How long a final packet to the agent may wait for room in its queue.
const FINAL_SEND_WAIT: Duration = Duration::from_secs(2);

const AGENT_DISCONNECTED: &str = "agent has disconnected";
const GATEWAY_SHUTDOWN: &str = "gateway shutdown";
const CLIENT_DISCONNECTED: &str = "client disconnected";
const AGENT_OFFLINE: &str = "agent is offline";
const AUDIT_FAILED: &str = "session closed by the gateway: its audit record could not be written (see the gateway's log); sessions do not run unrecorded";

/// The fixed `AnalyzerMetricsRules` hoop's gateway sends with every session (§6.1).
const ANALYZER_METRICS_RULES: &str =
    r#"{"rules":[{"entity_types":["PERSON","PHONE_NUMBER","LOCATION","EMAIL_ADDRESS"]}]}"#;

/// Runs the session carried by one client stream.
pub(crate) async fn run(
    hub: Arc<Hub>,
    sid: SessionId,
    req: ClientRequest,
    conn: ConnectionDef,
    inbound: Streaming<Packet>,
    to_client: mpsc::Sender<Result<Packet, Status>>,
) {
    let span = tracing::info_span!(
        "session",
        session_id = %sid,
        connection = %conn.name,
        verb = %req.verb
    );
    let session = Session {
        hub,
        sid,
        req,
        conn,
        inbound,
        to_client,
        recorder: None,
    };
    session.run().instrument(span).await;
}

struct Session {
    hub: Arc<Hub>,
    sid: SessionId,
    req: ClientRequest,
    conn: ConnectionDef,
    inbound: Streaming<Packet>,
    to_client: mpsc::Sender<Result<Packet, Status>>,
    recorder: Option<Recorder>,
}

/// How a session ended.
enum End {
    /// The agent's `ClientSessionClose` (forwarded to the client unchanged).
    AgentClosed {
        exit_code: i32,
        message: Bytes,
        packet: Packet,
    },
    AgentGone,
    Shutdown,
    ClientGone,
    /// The client sent `AgentSessionClose` itself.
    ClientClosed,
    /// The audit store failed: the session is not allowed to go on unrecorded.
    AuditFailed,
}

/// Detaches the session from its agent on every exit path.
struct Attached {
    link: AgentLink,
    sid: SessionId,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.link.detach(&self.sid);
    }
}

/// Records one session's audit trail. A stopped writer is logged once and then ignored: the
/// session itself goes on.
struct Recorder {
    log: EventLog,
    failed: bool,
}

/// Where a session's events go: the writer, the session id and its start. The recorder holds
/// one; each relay direction gets a clone.
#[derive(Clone)]
struct EventLog {
    sink: AuditSink,
    id: Arc<str>,
    started: Instant,
}

impl EventLog {
    /// Queues one event (empty data is not recorded); waits while the audit queue is full.
    async fn event(&self, kind: EventKind, data: Bytes) -> Result<(), WriterGone> {
        if data.is_empty() {
            return Ok(());
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        self.sink.event(&self.id, elapsed, kind, data).await
    }
}

impl Recorder {
    async fn event(&mut self, kind: EventKind, data: Bytes) {
        if self.failed {
            return;
        }
        if self.log.event(kind, data).await.is_err() {
            self.gone();
        }
    }

    async fn close(&mut self, exit_code: i32, error: Option<&[u8]>) {
        if let Some(text) = error {
            self.event(EventKind::Error, Bytes::copy_from_slice(text))
                .await;
        }
        if self.failed {
            return;
        }
        if self
            .log
            .sink
            .close(&self.log.id, unix_now(), exit_code)
            .await
            .is_err()
        {
            self.gone();
            return;
        }
        // The client may look at the audit as soon as it has its exit code.
        if tokio::time::timeout(AUDIT_FLUSH_WAIT, self.log.sink.flush())
            .await
            .is_err()
        {
            tracing::warn!("audit store is slow; the session end may appear late");
        }
    }

    fn gone(&mut self) {
        self.failed = true;
        tracing::warn!("audit writer stopped; this session is no longer recorded");
    }
}

/// The agent-to-client half of [`Session::relay`]: audits output, adds the agent's version to
/// `ClientSessionOpenOK`, and returns at the agent's close (after every packet before it).
async fn agent_to_client(
    mut from_agent: mpsc::Receiver<FromAgent>,
    to_client: mpsc::Sender<Result<Packet, Status>>,
    log: Option<EventLog>,
    agent_version: String,
) -> End {
    loop {
        let Some(FromAgent {
            mut packet,
            decoded,
        }) = from_agent.recv().await
        else {
            return End::AgentGone;
        };
        match decoded {
            ClientPacket::SessionClose {
                exit_code, message, ..
            } => {
                return End::AgentClosed {
                    // hoop: an unparsable code becomes 254.
                    exit_code: exit_code.unwrap_or(INTERNAL_EXIT_CODE),
                    message,
                    packet,
                };
            }
            ClientPacket::Stdout { data, .. } | ClientPacket::Stderr { data, .. } => {
                if let Some(log) = &log
                    && log.event(EventKind::Output, data).await.is_err()
                {
                    return End::AuditFailed;
                }
            }
            ClientPacket::SessionOpenOk { .. } => {
                packet.spec.insert(
                    key::AGENT_VERSION.into(),
                    Bytes::from(agent_version.clone()),
                );
            }
            // hoop does not record `ClientTCPConnectionWrite` (§3.7, Audit).
            ClientPacket::TcpWrite { .. } | ClientPacket::TcpClose { .. } => {}
            ClientPacket::KeepAlive | ClientPacket::SysResponse { .. } => continue,
        }
        if to_client.send(Ok(packet)).await.is_err() {
            return End::ClientGone;
        }
    }
}

/// The client-to-agent half of [`Session::relay`]: audits input, sets the session id on every
/// packet, and returns when the client leaves or closes.
async fn client_to_agent(
    inbound: &mut Streaming<Packet>,
    to_agent: mpsc::Sender<Result<Packet, Status>>,
    log: Option<EventLog>,
    sid: &SessionId,
) -> End {
    loop {
        let mut packet = match inbound.message().await {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => return End::ClientGone,
        };
        if is_keepalive(&packet) {
            continue;
        }
        match packet.r#type.as_str() {
            pt::AGENT_SESSION_OPEN => {
                tracing::debug!("second AgentSessionOpen on one stream ignored");
                continue;
            }
            pt::AGENT_EXEC_WRITE_STDIN
            | pt::AGENT_TERMINAL_WRITE_STDIN
            | pt::AGENT_TCP_CONNECTION_WRITE => {
                if let Some(log) = &log
                    && log
                        .event(EventKind::Input, packet.payload.clone())
                        .await
                        .is_err()
                {
                    return End::AuditFailed;
                }
            }
            _ => {}
        }
        let client_closed = packet.r#type == pt::AGENT_SESSION_CLOSE;
        set_sid(&mut packet, sid);
        if to_agent.send(Ok(packet)).await.is_err() {
            return End::AgentGone;
        }
        if client_closed {
            return End::ClientClosed;
        }
    }
}

fn set_sid(p: &mut Packet, sid: &SessionId) {
    p.spec
        .insert(key::SESSION_ID.into(), Bytes::from(sid.as_str().to_owned()));
}

fn client_packet(packet_type: &str, sid: &SessionId) -> Packet {
    let mut p = Packet {
        r#type: packet_type.into(),
        ..Default::default()
    };
    set_sid(&mut p, sid);
    p
}

fn close_packet(sid: &SessionId, exit_code: i32, message: &str) -> Packet {
    let mut p = client_packet(pt::CLIENT_SESSION_CLOSE, sid);
    p.spec
        .insert(key::EXIT_CODE.into(), Bytes::from(exit_code.to_string()));
    p.payload = Bytes::from(message.to_owned());
    p
}

fn is_keepalive(p: &Packet) -> bool {
    p.r#type == pt::GATEWAY_KEEP_ALIVE || p.r#type == pt::KEEP_ALIVE
}

impl Session {
    async fn run(mut self) {
        let Some(open) = self.wait_for_open().await else {
            return;
        };
        let client_args = match open.spec.get(key::TERMINAL_ARGS) {
            Some(raw) if !raw.is_empty() => match hoop_gob::decode_string_slice(raw) {
                Ok(args) => args,
                Err(e) => {
                    tracing::info!(error = %e, "client sent undecodable terminal.args");
                    self.refuse("internal error, failed decoding client args")
                        .await;
                    return;
                }
            },
            _ => Vec::new(),
        };
        let command = self
            .conn
            .command
            .iter()
            .chain(&client_args)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        self.start_recording(&command).await;
        tracing::info!(agent = %self.conn.agent, "session opened");

        let Some((link, from_agent)) = self.wait_for_agent().await else {
            return;
        };
        let attached = Attached {
            link: link.clone(),
            sid: self.sid.clone(),
        };
        let agent_open = self.agent_open(&open, client_args);
        if link.tx.send(Ok(agent_open)).await.is_err() {
            self.finish(End::AgentGone, &link).await;
            return;
        }
        let end = self.relay(&link, from_agent).await;
        drop(attached);
        self.finish(end, &link).await;
    }

    /// Phase 1: the client's `AgentSessionOpen`. `None` if the client left, timed out or the
    /// gateway is shutting down (nothing was recorded yet).
    async fn wait_for_open(&mut self) -> Option<Packet> {
        let deadline = Instant::now() + OPEN_TIMEOUT;
        loop {
            let message = tokio::select! {
                biased;
                () = self.hub.shutdown.cancelled() => {
                    let p = close_packet(&self.sid, INTERNAL_EXIT_CODE, GATEWAY_SHUTDOWN);
                    let _ = self.to_client.send(Ok(p)).await;
                    return None;
                }
                () = tokio::time::sleep_until(deadline) => {
                    let _ = self.to_client.send(Err(Status::deadline_exceeded(
                        "no AgentSessionOpen within 60 s of connecting",
                    ))).await;
                    return None;
                }
                m = self.inbound.message() => m,
            };
            match message {
                Ok(Some(p)) if p.r#type == pt::AGENT_SESSION_OPEN => return Some(p),
                Ok(Some(p)) if is_keepalive(&p) => {}
                Ok(Some(p)) => {
                    tracing::debug!(packet_type = %p.r#type, "packet before AgentSessionOpen ignored");
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn start_recording(&mut self, command: &str) {
        let sink = self.hub.audit.clone();
        let row = NewSession {
            id: self.sid.as_str().to_owned(),
            user: self.hub.config.user_id.clone(),
            connection: self.conn.name.clone(),
            verb: self.req.verb.clone(),
            command: command.to_owned(),
            start: unix_now(),
        };
        let failed = sink.open(row).await.is_err();
        if failed {
            tracing::warn!("audit writer stopped; this session is not recorded");
        }
        self.recorder = Some(Recorder {
            log: EventLog {
                sink,
                id: Arc::from(self.sid.as_str()),
                started: Instant::now(),
            },
            failed,
        });
    }

    async fn record_close(&mut self, exit_code: i32, error: Option<&[u8]>) {
        if let Some(r) = self.recorder.as_mut() {
            r.close(exit_code, error).await;
        }
        tracing::info!(exit_code, "session ended");
    }

    /// Ends a session that never reached an agent with a 254 close to the client.
    async fn refuse(&mut self, message: &str) {
        self.record_close(INTERNAL_EXIT_CODE, Some(message.as_bytes()))
            .await;
        let p = close_packet(&self.sid, INTERNAL_EXIT_CODE, message);
        let _ = self.to_client.send(Ok(p)).await;
    }

    /// Phase 2: the connection's agent, waiting up to `offline_wait` for it to connect.
    async fn wait_for_agent(&mut self) -> Option<(AgentLink, mpsc::Receiver<FromAgent>)> {
        let deadline = Instant::now() + self.hub.config.offline_wait;
        let mut changes = self.hub.agent_changes();
        loop {
            if let Some(link) = self.hub.agent(&self.conn.agent)
                && let Some(rx) = link.attach(&self.sid)
            {
                return Some((link, rx));
            }
            tokio::select! {
                biased;
                () = self.hub.shutdown.cancelled() => {
                    self.refuse(GATEWAY_SHUTDOWN).await;
                    return None;
                }
                changed = tokio::time::timeout_at(deadline, changes.changed()) => {
                    if !matches!(changed, Ok(Ok(()))) {
                        tracing::info!(agent = %self.conn.agent, "agent offline; giving up");
                        self.record_close(INTERNAL_EXIT_CODE, Some(AGENT_OFFLINE.as_bytes())).await;
                        let mut p = client_packet(pt::CLIENT_SESSION_OPEN_AGENT_OFFLINE, &self.sid);
                        p.payload = Bytes::from_static(AGENT_OFFLINE.as_bytes());
                        let _ = self.to_client.send(Ok(p)).await;
                        return None;
                    }
                }
                m = self.inbound.message() => match m {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        self.record_close(INTERNAL_EXIT_CODE, Some(CLIENT_DISCONNECTED.as_bytes())).await;
                        return None;
                    }
                },
            }
        }
    }

    /// The `AgentSessionOpen` the agent gets, built as hoop's gateway builds it.
    fn agent_open(&self, client_open: &Packet, client_args: Vec<String>) -> Packet {
        let b64 = base64::engine::general_purpose::STANDARD;
        let env_vars: BTreeMap<String, String> = self
            .conn
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), b64.encode(v.as_bytes())))
            .collect();
        let connection_type = self.conn.connection_type().to_owned();
        let params = AgentConnectionParams {
            connection_name: self.conn.name.clone(),
            connection_type: connection_type.clone(),
            user_id: self.hub.config.user_id.clone(),
            user_email: self.hub.config.user_email.clone(),
            env_vars,
            cmd_list: self.conn.command.clone(),
            client_args,
            client_verb: self.req.verb.clone(),
            client_origin: hoop_wire::spec::metadata::ORIGIN_CLIENT.into(),
            // hoop's gateway ships policies for the agent to enforce (§6.1) and always sets
            // these two gateway-wide values, which are not a per-connection signal.
            dlp_mode: "best-effort".into(),
            analyzer_metrics_rules: ANALYZER_METRICS_RULES.as_bytes().to_vec(),
            guard_rail_rules: self
                .conn
                .guardrail_rules
                .clone()
                .unwrap_or_default()
                .into_bytes(),
            data_masking_entity_types_data: self
                .conn
                .data_masking
                .clone()
                .unwrap_or_default()
                .into_bytes(),
            dlp_info_types: self.conn.dlp_info_types.clone(),
            ..Default::default()
        };
        let mut p = client_packet(pt::AGENT_SESSION_OPEN, &self.sid);
        p.spec
            .insert(key::CONNECTION_TYPE.into(), Bytes::from(connection_type));
        p.spec.insert(
            key::CONNECTION_PARAMS.into(),
            Bytes::from(hoop_gob::encode_connection_params(&params)),
        );
        for (k, v) in &client_open.spec {
            p.spec.entry(k.clone()).or_insert_with(|| v.clone());
        }
        p
    }

    /// Phase 3: relay until the session ends.
    ///
    /// Each direction is its own future and this `select!` only observes which one ends first
    /// (STYLE 16): a client that stops reading its output stalls the agent-to-client direction
    /// alone, and its own packets (input, tcp writes, its close) still reach the agent; an agent
    /// that stops reading likewise never holds up the output.
    async fn relay(&mut self, link: &AgentLink, from_agent: mpsc::Receiver<FromAgent>) -> End {
        let log = match self.recorder.as_ref() {
            Some(r) if r.failed => return End::AuditFailed,
            Some(r) => Some(r.log.clone()),
            None => None,
        };
        let audit = self.hub.audit.clone();
        let to_client = agent_to_client(
            from_agent,
            self.to_client.clone(),
            log.clone(),
            link.version.clone(),
        );
        let to_agent = client_to_agent(&mut self.inbound, link.tx.clone(), log, &self.sid);
        tokio::select! {
            biased;
            () = self.hub.shutdown.cancelled() => End::Shutdown,
            () = audit.failed() => End::AuditFailed,
            end = to_client => end,
            end = to_agent => end,
        }
    }

    async fn close_agent(&self, link: &AgentLink) {
        let p = client_packet(pt::AGENT_SESSION_CLOSE, &self.sid);
        let _ = tokio::time::timeout(FINAL_SEND_WAIT, link.tx.send(Ok(p))).await;
    }

    /// Phase 4: exactly one end, recorded, with the packets hoop sends for it.
    async fn finish(&mut self, end: End, link: &AgentLink) {
        match end {
            End::AgentClosed {
                exit_code,
                message,
                packet,
            } => {
                let error = (!message.is_empty()).then_some(message.as_ref());
                self.record_close(exit_code, error).await;
                self.close_agent(link).await;
                let _ = self.to_client.send(Ok(packet)).await;
            }
            End::AgentGone => {
                tracing::warn!("agent disconnected during the session");
                self.refuse(AGENT_DISCONNECTED).await;
            }
            End::Shutdown => {
                self.close_agent(link).await;
                self.refuse(GATEWAY_SHUTDOWN).await;
            }
            End::ClientGone => {
                self.close_agent(link).await;
                self.record_close(INTERNAL_EXIT_CODE, Some(CLIENT_DISCONNECTED.as_bytes()))
                    .await;
            }
            End::ClientClosed => {
                // A clean close by the client: hoop records 0 when the close carried no error.
                self.record_close(0, None).await;
            }
            End::AuditFailed => {
                tracing::error!("closing a session whose audit record cannot be written");
                self.close_agent(link).await;
                self.refuse(AUDIT_FAILED).await;
            }
        }
    }
}
