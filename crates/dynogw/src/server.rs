//! The gateway process: the tonic `Transport` service, the registry of live agent streams,
//! starting ([`Gateway::start`]) and the two-phase shutdown ([`RunningGateway::shutdown`]).
//!
//! Owns agent streams end to end: authentication (via `auth`), the one-stream-per-agent rule,
//! the `AgentGatewayConnectOK` / `GatewayFeatureFlagUpdate` greeting, and the reader that
//! routes each agent packet to its session task by `gateway.session_id`. Client streams are
//! handed to one `session` task each; this module does not look inside sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hoop_wire::pb::transport_server::{Transport, TransportServer};
use hoop_wire::pb::{
    HealthCheckRequest, HealthCheckResponse, Packet, PreConnectRequest, PreConnectResponse,
};
use hoop_wire::spec::{MAX_INBOUND_MESSAGE_SIZE, MAX_MESSAGE_SIZE, packet_type as pt};
use hoop_wire::{AgentPacket, ClientPacket, SessionId, SysKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{self, AuditError, AuditSink, AuditStore};
use crate::auth::{self, Caller};
use crate::config::{ConfigError, GatewayConfig};

/// Packets queued towards one agent or one client. Overflow policy: backpressure (the sender
/// waits), so a slow reader slows its peer instead of growing memory.
pub(crate) const STREAM_QUEUE: usize = 64;

/// Packets queued from an agent's reader to one session task. Overflow policy: backpressure;
/// a session whose client reads slowly therefore slows the agent's whole stream. Acceptable
/// for a development gateway, and it never drops or reorders output.
pub(crate) const SESSION_QUEUE: usize = 64;

/// Bound on each shutdown phase.
const SHUTDOWN_PHASE: Duration = Duration::from_secs(5);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a system request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SysRequestError {
    #[error("agent {0} is not connected")]
    AgentOffline(String),
    #[error("timeout ({0:?}) waiting for a response from agent {1}")]
    Timeout(Duration, String),
}

/// A packet from an agent for one session: the raw packet (forwarded unchanged) and its
/// decoded form.
#[derive(Debug)]
pub(crate) struct FromAgent {
    pub packet: Packet,
    pub decoded: ClientPacket,
}

type SessionMap = HashMap<SessionId, mpsc::Sender<FromAgent>>;

/// One live agent stream.
#[derive(Clone, Debug)]
pub(crate) struct AgentLink {
    id: u64,
    pub name: String,
    pub version: String,
    pub tx: mpsc::Sender<Result<Packet, Status>>,
    /// `None` once the stream has ended: no session may attach any more.
    sessions: Arc<Mutex<Option<SessionMap>>>,
}

impl AgentLink {
    /// Registers a session on this agent; `None` if the agent's stream has already ended.
    pub fn attach(&self, sid: &SessionId) -> Option<mpsc::Receiver<FromAgent>> {
        let mut guard = self.sessions.lock().ok()?;
        let map = guard.as_mut()?;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        map.insert(sid.clone(), tx);
        Some(rx)
    }

    /// Forgets a session; later packets for it are dropped silently, as hoop does.
    pub fn detach(&self, sid: &SessionId) {
        if let Ok(mut guard) = self.sessions.lock()
            && let Some(map) = guard.as_mut()
        {
            map.remove(sid);
        }
    }

    fn route_to(&self, sid: &SessionId) -> Option<mpsc::Sender<FromAgent>> {
        self.sessions.lock().ok()?.as_ref()?.get(sid).cloned()
    }

    /// Ends every attached session: dropping their senders tells each task the agent is gone.
    fn close_sessions(&self) -> usize {
        self.sessions
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .map_or(0, |m| m.len())
    }
}

/// State shared by the service, the agent readers and the session tasks.
#[derive(Debug)]
pub(crate) struct Hub {
    pub config: GatewayConfig,
    agents: Mutex<HashMap<String, AgentLink>>,
    /// Bumped whenever an agent registers (to wake sessions waiting for an offline agent) or
    /// its stream ends.
    agents_changed: watch::Sender<u64>,
    next_link: AtomicU64,
    pub audit: AuditSink,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    agent_readers: TaskTracker,
    /// Stops agent readers; cancelled only after sessions have closed, so that a shutdown
    /// reports "gateway shutdown" and not "agent has disconnected".
    readers_stop: CancellationToken,
    /// `Connect` calls refused at authentication so far.
    refused: watch::Sender<u64>,
    /// System requests waiting for their reply, by request id (hoop's `transportsystem`).
    sys_waiters: Mutex<HashMap<SessionId, oneshot::Sender<(SysKind, Bytes)>>>,
}

impl Hub {
    /// The live stream of agent `name`.
    pub fn agent(&self, name: &str) -> Option<AgentLink> {
        self.agents.lock().ok()?.get(name).cloned()
    }

    /// A receiver that sees every later agent registration.
    pub fn agent_changes(&self) -> watch::Receiver<u64> {
        self.agents_changed.subscribe()
    }

    fn register(&self, link: AgentLink) -> Result<(), Status> {
        let mut agents = self
            .agents
            .lock()
            .map_err(|_| Status::internal("gateway state poisoned"))?;
        if agents.contains_key(&link.name) {
            return Err(Status::failed_precondition("agent already connected"));
        }
        agents.insert(link.name.clone(), link);
        Ok(())
    }

    fn deregister(&self, link: &AgentLink) {
        if let Ok(mut agents) = self.agents.lock()
            && agents.get(&link.name).is_some_and(|l| l.id == link.id)
        {
            agents.remove(&link.name);
        }
        self.agents_changed.send_modify(|g| *g = g.wrapping_add(1));
        let n = link.close_sessions();
        if n > 0 {
            tracing::warn!(
                agent = %link.name,
                sessions = n,
                "agent stream ended with live sessions; closing them with 254"
            );
        }
    }
}

/// The gateway, not yet started.
#[derive(Debug)]
pub struct Gateway;

impl Gateway {
    /// Validates `config`, opens the audit store (marking sessions left open by a previous
    /// run as ended with 254), binds the listener and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<RunningGateway, GatewayError> {
        config.validate()?;
        let audit_db = config.audit_db.clone();
        let mut store = AuditStore::create(&audit_db)?;
        let recovered = store.recover_open_sessions()?;
        if recovered > 0 {
            tracing::warn!(
                sessions = recovered,
                "sessions left open by a previous gateway were marked ended with 254"
            );
        }
        let (audit, writer) = audit::spawn_writer(store);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: config.listen,
            source,
        })?;
        let (agents_changed, _) = watch::channel(0);
        let hub = Arc::new(Hub {
            config,
            agents: Mutex::default(),
            agents_changed,
            next_link: AtomicU64::new(1),
            audit,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            agent_readers: TaskTracker::new(),
            readers_stop: CancellationToken::new(),
            refused: watch::channel(0).0,
            sys_waiters: Mutex::default(),
        });
        let service = TransportServer::new(Service {
            hub: Arc::clone(&hub),
        })
        // hoop's MaxRecvMsgSize; what we forward to agents may be a little larger (added spec).
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_INBOUND_MESSAGE_SIZE);
        let server_stop = CancellationToken::new();
        let stop = server_stop.clone();
        // tonic ignores `Server::tcp_nodelay` for a caller-supplied listener, so TCP_NODELAY is
        // set on each accepted socket here. Without it, small frames (h2 WINDOW_UPDATEs, echoed
        // keystrokes) wait for the peer's delayed ACK: 40 ms stalls that capped a session's
        // output near 40 MiB/s (docs/performance.md).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "gateway server failed");
            }
        });
        tracing::info!(%addr, audit_db = %audit_db.display(), "dynogw listening");
        Ok(RunningGateway {
            addr,
            audit_db,
            hub,
            server,
            server_stop,
            writer,
        })
    }
}

/// A started gateway.
#[derive(Debug)]
pub struct RunningGateway {
    addr: SocketAddr,
    audit_db: PathBuf,
    hub: Arc<Hub>,
    server: tokio::task::JoinHandle<()>,
    server_stop: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// The address the gateway listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The audit database file.
    pub fn audit_db(&self) -> &Path {
        &self.audit_db
    }

    /// Names of the agents connected now.
    pub fn connected_agents(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .hub
            .agents
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Waits until agent `name` is connected; `false` after `timeout`.
    pub async fn wait_for_agent(&self, name: &str, timeout: Duration) -> bool {
        self.wait_for_agents(timeout, |hub| hub.agent(name).is_some())
            .await
    }

    /// Waits until `done` holds, re-checking at every agent registration or stream end;
    /// `false` after `timeout`.
    async fn wait_for_agents(&self, timeout: Duration, done: impl Fn(&Hub) -> bool) -> bool {
        let mut changes = self.hub.agent_changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.hub) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return done(&self.hub),
            }
        }
    }

    /// Sends agent `name` a system request (`Sys*`) with a fresh id and waits up to `timeout`
    /// for its reply, as hoop's gateway does for runbook hooks, bare exec, the PG manager and
    /// DB role provisioning (§2.7). Returns the reply's type and raw payload.
    pub async fn system_request(
        &self,
        name: &str,
        kind: SysKind,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(SysKind, Bytes), SysRequestError> {
        let link = self
            .hub
            .agent(name)
            .ok_or_else(|| SysRequestError::AgentOffline(name.to_owned()))?;
        // Not always a UUID in hoop (the federation probe uses "federation-probe-<uuid>").
        let id = SessionId::parse(format!("sys-probe-{}", uuid::Uuid::new_v4()).as_bytes())
            .map_err(|_| SysRequestError::AgentOffline(name.to_owned()))?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.hub.sys_waiters.lock() {
            w.insert(id.clone(), tx);
        }
        let request = AgentPacket::SysRequest {
            kind,
            request_id: id.clone(),
            payload,
        };
        let sent = link.tx.send(Ok(request.into_packet())).await.is_ok();
        let reply = if sent {
            tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        if let Ok(mut w) = self.hub.sys_waiters.lock() {
            w.remove(&id);
        }
        reply.ok_or_else(|| SysRequestError::Timeout(timeout, name.to_owned()))
    }

    /// Waits until at least `n` `Connect` calls have been refused at authentication; `false`
    /// after `timeout`.
    pub async fn wait_for_refusals(&self, n: u64, timeout: Duration) -> bool {
        let mut refused = self.hub.refused.subscribe();
        tokio::time::timeout(timeout, refused.wait_for(|r| *r >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until agent `name` is not connected; `false` after `timeout`.
    pub async fn wait_for_agent_gone(&self, name: &str, timeout: Duration) -> bool {
        self.wait_for_agents(timeout, |hub| hub.agent(name).is_none())
            .await
    }

    /// Waits until every change queued so far is committed to the audit database.
    pub async fn flush_audit(&self) {
        let _ = self.hub.audit.flush().await;
    }

    /// Stops the gateway: live client sessions are closed with 254 "gateway shutdown" (their
    /// agents get `AgentSessionClose`), agent streams end with `UNAVAILABLE`, the listener
    /// closes and the audit store is flushed. Each phase is bounded.
    pub async fn shutdown(self) {
        let RunningGateway {
            hub,
            server,
            server_stop,
            writer,
            ..
        } = self;
        hub.shutdown.cancel();
        hub.sessions.close();
        if tokio::time::timeout(SHUTDOWN_PHASE, hub.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not finish closing in time");
        }
        tracing::debug!("sessions closed; ending agent streams");
        let links: Vec<AgentLink> = hub
            .agents
            .lock()
            .map(|mut a| a.drain().map(|(_, l)| l).collect())
            .unwrap_or_default();
        for link in &links {
            let _ = link
                .tx
                .try_send(Err(Status::unavailable("gateway shutdown")));
            link.close_sessions();
        }
        drop(links);
        hub.readers_stop.cancel();
        hub.agent_readers.close();
        let _ = tokio::time::timeout(SHUTDOWN_PHASE, hub.agent_readers.wait()).await;
        tracing::debug!("agent streams ended; stopping the server");
        server_stop.cancel();
        let mut server = server;
        if tokio::time::timeout(SHUTDOWN_PHASE, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("gRPC server did not stop in time; aborting it");
            server.abort();
        }
        tracing::debug!("server stopped; flushing the audit store");
        if tokio::time::timeout(SHUTDOWN_PHASE, hub.audit.flush())
            .await
            .is_err()
        {
            tracing::error!("audit store did not flush in time; recent events may be lost");
        }
        // Everything queued is committed; nothing else can be recorded after this.
        writer.abort();
        let _ = writer.await;
        tracing::info!("dynogw stopped");
    }
}

#[derive(Clone, Debug)]
struct Service {
    hub: Arc<Hub>,
}

#[tonic::async_trait]
impl Transport for Service {
    type ConnectStream = ReceiverStream<Result<Packet, Status>>;

    async fn pre_connect(
        &self,
        _: Request<PreConnectRequest>,
    ) -> Result<Response<PreConnectResponse>, Status> {
        Err(Status::unimplemented(
            "dynogw serves standard-mode agents only; embedded mode (PreConnect) is not supported",
        ))
    }

    async fn health_check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: "OK".into(),
        }))
    }

    async fn connect(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if self.hub.shutdown.is_cancelled() {
            return Err(Status::unavailable("gateway shutdown"));
        }
        let caller = match auth::authenticate(request.metadata(), &self.hub.config) {
            Ok(c) => c,
            Err(status) => {
                tracing::info!(code = ?status.code(), reason = status.message(), "connect refused");
                self.hub.refused.send_modify(|n| *n += 1);
                return Err(status);
            }
        };
        let inbound = request.into_inner();
        match caller {
            Caller::Agent { name, version } => self.connect_agent(name, version, inbound).await,
            Caller::Client(req) => {
                let connection = self
                    .hub
                    .config
                    .connection(&req.connection)
                    .cloned()
                    .ok_or_else(|| {
                        Status::not_found(format!("connection {:?} not found", req.connection))
                    })?;
                // hoop's `validateConnectionType` (§2.4).
                let kind = connection.connection_type();
                if req.verb == "exec" && matches!(kind, "tcp" | "ssh") {
                    return Err(Status::invalid_argument(format!(
                        "exec is not allowed for {kind} type connections. Use 'hoop connect {}' instead",
                        req.connection
                    )));
                }
                let sid = SessionId::parse(uuid::Uuid::new_v4().to_string().as_bytes())
                    .map_err(|_| Status::internal("cannot mint a session id"))?;
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                let hub = Arc::clone(&self.hub);
                self.hub
                    .sessions
                    .spawn(crate::session::run(hub, sid, req, connection, inbound, tx));
                Ok(Response::new(ReceiverStream::new(rx)))
            }
        }
    }
}

impl Service {
    async fn connect_agent(
        &self,
        name: String,
        version: String,
        inbound: Streaming<Packet>,
    ) -> Result<Response<ReceiverStream<Result<Packet, Status>>>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        // hoop's greeting, queued before any session can be routed to this stream.
        for p in [
            AgentPacket::GatewayConnectOk,
            AgentPacket::FeatureFlags(Default::default()),
        ] {
            tx.send(Ok(p.into_packet()))
                .await
                .map_err(|_| Status::internal("agent stream closed"))?;
        }
        let link = AgentLink {
            id: self.hub.next_link.fetch_add(1, Ordering::Relaxed),
            name,
            version,
            tx,
            sessions: Arc::new(Mutex::new(Some(HashMap::new()))),
        };
        if let Err(status) = self.hub.register(link.clone()) {
            tracing::warn!(agent = %link.name, "second stream for a connected agent refused");
            return Err(status);
        }
        tracing::info!(agent = %link.name, version = %link.version, "agent connected");
        self.hub
            .agents_changed
            .send_modify(|g| *g = g.wrapping_add(1));
        let hub = Arc::clone(&self.hub);
        self.hub
            .agent_readers
            .spawn(agent_reader(hub, link, inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Reads one agent's stream until it ends, routing packets to sessions; then deregisters the
/// agent, which closes its sessions with "agent has disconnected".
async fn agent_reader(hub: Arc<Hub>, link: AgentLink, mut inbound: Streaming<Packet>) {
    loop {
        let message = tokio::select! {
            biased;
            () = hub.readers_stop.cancelled() => break,
            m = inbound.message() => m,
        };
        match message {
            Ok(Some(packet)) => route(&hub, &link, packet).await,
            // hyper reports an END_STREAM half-close and an RST_STREAM(CANCEL) alike, so unlike
            // hoop's gateway (ERROR "err=EOF" for the former) dynogw cannot tell them apart;
            // gateway-link's own test checks that the agent cancels (§5.4).
            Ok(None) => {
                tracing::info!(agent = %link.name, "agent ended its stream");
                break;
            }
            Err(status) => {
                tracing::warn!(agent = %link.name, code = ?status.code(), "agent disconnected");
                break;
            }
        }
    }
    hub.deregister(&link);
}

async fn route(hub: &Hub, link: &AgentLink, packet: Packet) {
    match ClientPacket::decode(&packet) {
        Ok(ClientPacket::KeepAlive) => {}
        Ok(ClientPacket::SysResponse {
            kind,
            request_id,
            payload,
        }) => {
            // Like hoop, any reply type is accepted for any waiter.
            let waiter = hub
                .sys_waiters
                .lock()
                .ok()
                .and_then(|mut w| w.remove(&request_id));
            match waiter {
                Some(tx) => {
                    let _ = tx.send((kind, payload));
                }
                None => {
                    tracing::warn!(agent = %link.name, request_id = %request_id, "unable to send system packet, unable to find channel")
                }
            }
        }
        Ok(decoded) => {
            let Some(sid) = decoded.session_id().cloned() else {
                return;
            };
            match link.route_to(&sid) {
                Some(tx) => {
                    // A closed receiver means the session just ended: drop, as hoop does.
                    let _ = tx.send(FromAgent { packet, decoded }).await;
                }
                None => {
                    tracing::debug!(agent = %link.name, session_id = %sid, "packet for an unknown session dropped");
                }
            }
        }
        Err(e) => {
            if packet.r#type != pt::CLIENT_AGENT_LOGS {
                tracing::debug!(agent = %link.name, error = %e, "agent packet dropped");
            }
        }
    }
}
