//! An in-process hoop gateway for tests: a real tonic `Transport` server on 127.0.0.1:0 that
//! authenticates agents like hoop does and lets a test drive sessions packet by packet.
//!
//! It is deliberately small: no clients, no audit. Each accepted agent stream becomes an
//! [`AgentStream`] the test can send packets on and read per-session replies from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hoop_wire::pb::transport_server::{Transport, TransportServer};
use hoop_wire::pb::{
    HealthCheckRequest, HealthCheckResponse, Packet, PreConnectRequest, PreConnectResponse,
};
use hoop_wire::spec::MAX_MESSAGE_SIZE;
use hoop_wire::{AgentPacket, ClientPacket, SessionId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// How long test helpers wait for anything before failing the test.
pub const WAIT: Duration = Duration::from_secs(20);

/// What the gateway saw when an agent connected.
#[derive(Clone, Debug)]
pub struct ConnectAttempt {
    pub metadata: HashMap<String, String>,
    pub accepted: bool,
}

#[derive(Default)]
struct State {
    attempts: Vec<ConnectAttempt>,
    live: bool,
}

#[derive(Clone)]
struct Service {
    agent_name: String,
    secret: String,
    state: Arc<Mutex<State>>,
    new_agents: mpsc::Sender<AgentStream>,
}

/// A running fake gateway.
pub struct FakeGateway {
    addr: SocketAddr,
    agent_name: String,
    secret: String,
    state: Arc<Mutex<State>>,
    new_agents: mpsc::Receiver<AgentStream>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeGateway {
    /// Starts a gateway on a free loopback port that accepts agent `agent_name` with `secret`.
    pub async fn start(agent_name: &str, secret: &str) -> FakeGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        FakeGateway::serve(listener, agent_name, secret)
    }

    /// Starts a gateway on a specific loopback address (to restart one on the same port).
    pub async fn start_on(addr: SocketAddr, agent_name: &str, secret: &str) -> FakeGateway {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("rebind loopback port");
        FakeGateway::serve(listener, agent_name, secret)
    }

    /// Starts a gateway that serves TLS with `tls` (which must offer ALPN `h2`).
    pub async fn start_tls(
        agent_name: &str,
        secret: &str,
        tls: rustls::ServerConfig,
    ) -> FakeGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (tx, rx) = mpsc::channel::<std::io::Result<TlsConn>>(8);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A failed handshake is the client's problem; the listener keeps serving.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                });
            }
        });
        FakeGateway::serve_incoming(ReceiverStream::new(rx), addr, agent_name, secret)
    }

    fn serve(listener: tokio::net::TcpListener, agent_name: &str, secret: &str) -> FakeGateway {
        let addr = listener.local_addr().expect("local addr");
        FakeGateway::serve_incoming(TcpListenerStream::new(listener), addr, agent_name, secret)
    }

    fn serve_incoming<S, IO>(
        incoming: S,
        addr: SocketAddr,
        agent_name: &str,
        secret: &str,
    ) -> FakeGateway
    where
        S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = mpsc::channel(8);
        let svc = Service {
            agent_name: agent_name.to_owned(),
            secret: secret.to_owned(),
            state: Arc::clone(&state),
            new_agents: tx,
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(
                    TransportServer::new(svc)
                        .max_decoding_message_size(MAX_MESSAGE_SIZE)
                        .max_encoding_message_size(64 * 1024 * 1024),
                )
                .serve_with_incoming(incoming)
                .await;
        });
        FakeGateway {
            addr,
            agent_name: agent_name.to_owned(),
            secret: secret.to_owned(),
            state,
            new_agents: rx,
            server,
        }
    }

    /// The gateway's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The DSN an agent must present.
    pub fn dsn(&self) -> String {
        format!(
            "grpc://{}:{}@{}?mode=standard",
            self.agent_name, self.secret, self.addr
        )
    }

    /// Waits for the next agent stream the gateway accepts.
    pub async fn next_agent(&mut self) -> AgentStream {
        tokio::time::timeout(WAIT, self.new_agents.recv())
            .await
            .expect("no agent connected in time")
            .expect("gateway stopped")
    }

    /// Every connection attempt so far.
    pub fn attempts(&self) -> Vec<ConnectAttempt> {
        self.state
            .lock()
            .map(|s| s.attempts.clone())
            .unwrap_or_default()
    }

    /// Stops the server: live streams are dropped with `UNAVAILABLE`, the port is released.
    pub fn kill(self) {
        self.server.abort();
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn metadata_map(md: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    md.iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                Some((k.to_string(), v.to_str().ok()?.to_owned()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

#[tonic::async_trait]
impl Transport for Service {
    type ConnectStream = ReceiverStream<Result<Packet, Status>>;

    async fn pre_connect(
        &self,
        _: Request<PreConnectRequest>,
    ) -> Result<Response<PreConnectResponse>, Status> {
        Err(Status::unimplemented(
            "pre-connect is not used by standard-mode agents",
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
        let metadata = metadata_map(request.metadata());
        let verdict = self.authenticate(&metadata);
        if let Ok(mut state) = self.state.lock() {
            state.attempts.push(ConnectAttempt {
                metadata: metadata.clone(),
                accepted: verdict.is_ok(),
            });
            if verdict.is_ok() {
                if state.live {
                    return Err(Status::failed_precondition("agent already connected"));
                }
                state.live = true;
            }
        }
        verdict?;
        let (to_agent, rx) = mpsc::channel::<Result<Packet, Status>>(64);
        let sessions: Arc<Mutex<HashMap<SessionId, mpsc::UnboundedSender<ClientPacket>>>> =
            Arc::default();
        let (unrouted_tx, unrouted_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = tokio::sync::watch::channel(false);
        let keepalives = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut inbound = request.into_inner();
        let reader_sessions = Arc::clone(&sessions);
        let reader_keepalives = Arc::clone(&keepalives);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            while let Ok(Some(packet)) = inbound.message().await {
                match ClientPacket::decode(&packet) {
                    Ok(ClientPacket::KeepAlive) => {
                        reader_keepalives.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(p) => {
                        let target = p
                            .session_id()
                            .and_then(|sid| reader_sessions.lock().ok()?.get(sid).cloned());
                        match target {
                            Some(tx) => {
                                let _ = tx.send(p);
                            }
                            None => {
                                let _ = unrouted_tx.send(Ok(p));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = unrouted_tx.send(Err(format!("{e} ({packet:?})")));
                    }
                }
            }
            if let Ok(mut s) = state.lock() {
                s.live = false;
            }
            let _ = ended_tx.send(true);
        });
        // hoop's gateway: AgentGatewayConnectOK, then the feature flags.
        let _ = to_agent
            .send(Ok(AgentPacket::GatewayConnectOk.into_packet()))
            .await;
        let _ = to_agent
            .send(Ok(
                AgentPacket::FeatureFlags(Default::default()).into_packet()
            ))
            .await;
        let stream = AgentStream {
            to_agent,
            sessions,
            unrouted: unrouted_rx,
            ended: ended_rx,
            keepalives,
        };
        let _ = self.new_agents.send(stream).await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Service {
    fn authenticate(&self, md: &HashMap<String, String>) -> Result<(), Status> {
        if md.get("origin").map(String::as_str) != Some("agent") {
            return Err(Status::invalid_argument("missing origin"));
        }
        let token = md
            .get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("invalid authentication"))?;
        let dsn = gateway_link::Dsn::parse(token)
            .map_err(|_| Status::unauthenticated("invalid authentication"))?;
        if dsn.secret() != self.secret {
            return Err(Status::unauthenticated("invalid authentication"));
        }
        if dsn.agent_name() != self.agent_name {
            return Err(Status::unauthenticated(
                "invalid authentication, mismatch dsn attributes",
            ));
        }
        Ok(())
    }
}

/// One accepted agent stream, as the test drives it.
pub struct AgentStream {
    to_agent: mpsc::Sender<Result<Packet, Status>>,
    sessions: Arc<Mutex<HashMap<SessionId, mpsc::UnboundedSender<ClientPacket>>>>,
    /// Packets for sessions nobody registered, and packets that failed to decode.
    unrouted: mpsc::UnboundedReceiver<Result<ClientPacket, String>>,
    ended: tokio::sync::watch::Receiver<bool>,
    keepalives: Arc<std::sync::atomic::AtomicUsize>,
}

impl AgentStream {
    /// Sends a raw packet to the agent.
    pub async fn send_raw(&self, packet: Packet) {
        self.to_agent
            .send(Ok(packet))
            .await
            .expect("agent stream closed");
    }

    /// Sends a typed packet to the agent.
    pub async fn send(&self, packet: AgentPacket) {
        self.send_raw(packet.into_packet()).await;
    }

    /// Ends the stream with an error status, as a dying gateway does.
    pub async fn fail(&self, status: Status) {
        let _ = self.to_agent.send(Err(status)).await;
    }

    /// Registers a session and returns the channel its replies arrive on.
    pub fn watch_session(&self, sid: &SessionId) -> SessionReplies {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(sid.clone(), tx);
        }
        SessionReplies { rx }
    }

    /// The next packet that no registered session claimed.
    pub async fn next_unrouted(&mut self) -> Result<ClientPacket, String> {
        tokio::time::timeout(WAIT, self.unrouted.recv())
            .await
            .expect("no unrouted packet in time")
            .expect("agent stream ended")
    }

    /// Waits until the agent ends its side of the stream.
    pub async fn wait_ended(&mut self) {
        tokio::time::timeout(WAIT, self.ended.wait_for(|e| *e))
            .await
            .expect("the agent did not end the stream in time")
            .expect("stream watcher gone");
    }

    /// Keepalives received so far.
    pub fn keepalives(&self) -> usize {
        self.keepalives.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Replies for one session.
pub struct SessionReplies {
    rx: mpsc::UnboundedReceiver<ClientPacket>,
}

/// The outcome of a session as the client sees it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub open_ok: Option<ClientPacket>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub message: String,
    pub closes: usize,
}

impl SessionReplies {
    /// The next reply, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> ClientPacket {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no reply from the agent in time")
            .expect("agent stream ended")
    }

    /// Reads replies until `ClientSessionClose` and folds them into an [`Outcome`].
    pub async fn until_close(&mut self) -> Outcome {
        let mut out = Outcome::default();
        loop {
            match self.next().await {
                p @ ClientPacket::SessionOpenOk { .. } => out.open_ok = Some(p),
                ClientPacket::Stdout { data, .. } => out.stdout.extend_from_slice(&data),
                ClientPacket::Stderr { data, .. } => out.stderr.extend_from_slice(&data),
                ClientPacket::SessionClose {
                    exit_code, message, ..
                } => {
                    out.exit_code = exit_code;
                    out.message = String::from_utf8_lossy(&message).into_owned();
                    out.closes += 1;
                    return out;
                }
                ClientPacket::KeepAlive
                | ClientPacket::SysResponse { .. }
                | ClientPacket::TcpWrite { .. }
                | ClientPacket::TcpClose { .. } => {}
            }
        }
    }

    /// Whether any reply is waiting right now (after the agent is known to be done).
    pub fn try_next(&mut self) -> Option<ClientPacket> {
        self.rx.try_recv().ok()
    }
}

/// Convenience: a payload from a string.
pub fn bytes(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

/// A server-side TLS connection that tonic can serve (tonic only implements `Connected` for
/// TLS streams when its own TLS feature is on, which the workspace does not use).
pub struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A self-signed test certificate for `names` (IP literals become IP SANs), as PEM, with a
/// rustls server config offering ALPN `h2`.
pub fn test_tls(names: &[&str]) -> (String, rustls::ServerConfig) {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("generate test certificate");
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .expect("key der");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    (pem, config)
}
