//! Reusable pieces for fault-injection tests (`tests/tests/faults.rs`):
//!
//! - [`LogCapture`]: one process-wide tracing subscriber writing every log line into memory, so
//!   a suite can scan everything it logged for secrets ([`find_secrets`]);
//! - [`Relay`]: a loopback TCP relay in front of a gateway that can sever every connection at
//!   once (a gateway process dying) and refuse or forward new ones, recording when each
//!   connection attempt arrived (to measure the agent's reconnect backoff);
//! - [`RawGateway`]: a hoop gateway that speaks the wire form ([`WirePacket`]) instead of the
//!   typed `Packet`, so it can send what `Packet`'s `String` fields cannot hold: invalid UTF-8 in
//!   the component, the type and the spec keys;
//! - [`malformed_flood`]: a reproducible flood of malformed packets and what the agent must
//!   answer to each;
//! - [`wait_until`] (bounded polling) and [`dynoagent_binary`] (the built binary, if any).
//!
//! It holds no scenarios and asserts nothing about the agent itself.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hoop_gob::AgentConnectionParams;
use hoop_wire::pb::{WirePacket, WireSpecEntry};
use hoop_wire::spec::{
    CONNECTION_TYPE_COMMAND_LINE, MAX_INBOUND_MESSAGE_SIZE, MAX_MESSAGE_SIZE, key,
    packet_type as pt,
};
use hoop_wire::{AgentPacket, ClientPacket, SessionId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Status;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};

// ---------------------------------------------------------------------------------------------
// Log capture and secret scan
// ---------------------------------------------------------------------------------------------

/// Every log line the process wrote through the subscriber [`LogCapture::install`] set up, plus
/// whatever the test appends (a child process's output).
#[derive(Clone, Default)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Installs the process-wide subscriber (plain text, no colours) filtered by the
    /// `EnvFilter` directive `filter`. Fails if a subscriber is already installed.
    pub fn install(filter: &str) -> Result<LogCapture, String> {
        let capture = LogCapture::default();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(capture.clone())
            .try_init()
            .map_err(|e| e.to_string())?;
        Ok(capture)
    }

    /// Appends text that did not come through the subscriber (another process's logs).
    pub fn append(&self, text: &[u8]) {
        if let Ok(mut buf) = self.buf.lock() {
            buf.extend_from_slice(text);
            if !text.ends_with(b"\n") {
                buf.push(b'\n');
            }
        }
    }

    /// Everything captured so far (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        self.buf
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A position to read from later with [`LogCapture::text_since`].
    pub fn mark(&self) -> usize {
        self.buf.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// What was captured after `mark`.
    pub fn text_since(&self, mark: usize) -> String {
        self.buf
            .lock()
            .map(|b| String::from_utf8_lossy(b.get(mark..).unwrap_or_default()).into_owned())
            .unwrap_or_default()
    }
}

/// The writer [`LogCapture`] hands to the subscriber (one event is one `write_all`).
pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buf) = self.0.lock() {
            buf.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter(Arc::clone(&self.buf))
    }
}

/// A value that must never appear in logs, with a name for the report.
#[derive(Clone, Debug)]
pub struct Secret {
    pub label: String,
    pub value: String,
}

/// Every line of `text` that contains a secret, as `label: line N: <line with the secret
/// masked>`. Secrets shorter than 8 characters are refused (they would match by chance).
pub fn find_secrets(text: &str, secrets: &[Secret]) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets {
        assert!(
            secret.value.len() >= 8,
            "secret {:?} is too short to scan for",
            secret.label
        );
        for (n, line) in text.lines().enumerate() {
            if line.contains(&secret.value) {
                let masked: String = line
                    .replace(&secret.value, "<SECRET>")
                    .chars()
                    .take(300)
                    .collect();
                found.push(format!("{}: line {}: {masked}", secret.label, n + 1));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Polling and the binary
// ---------------------------------------------------------------------------------------------

/// Polls `cond` until it holds, failing the test after `limit`. The poll interval grows from
/// 5 ms to 100 ms; this waits for a condition, it never sleeps in place of one.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut interval = Duration::from_millis(5);
    loop {
        if cond() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

/// The `dynoagent` binary of this build: `$DYNOAGENT_BIN` if set (set but empty: none), else
/// `dynoagent` in the target directory that holds this test executable
/// (`target/<profile>/deps/..`). `None` when it was not built (cargo builds it for
/// `cargo test --workspace`, not for this crate alone).
pub fn dynoagent_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DYNOAGENT_BIN") {
        return (!path.is_empty()).then(|| PathBuf::from(path));
    }
    workspace_binary("dynoagent")
}

/// The binary `name` of this workspace in the target directory that holds this test executable
/// (`target/<profile>/deps/..`), if it was built.
pub fn workspace_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let candidate = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    candidate.is_file().then_some(candidate)
}

/// Whether `binary` is older than a source file it was built from, according to the dep-info
/// file cargo writes beside it (`<binary>.d`). `None` when there is no dep-info to go by.
pub fn is_stale(binary: &Path) -> Option<bool> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let mut dep_info = binary.as_os_str().to_owned();
    dep_info.push(".d");
    let text = std::fs::read_to_string(PathBuf::from(dep_info)).ok()?;
    // `target: dep dep ...` (one rule; paths here contain no spaces).
    let (_, deps) = text.split_once(": ")?;
    Some(deps.split_whitespace().any(|dep| {
        std::fs::metadata(dep)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built)
    }))
}

// ---------------------------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct RelayState {
    upstream: Option<SocketAddr>,
    accepts: Vec<Instant>,
    links: Vec<tokio::task::AbortHandle>,
    /// Fires when the connections forwarded so far stop forwarding (`blackhole`).
    freeze: tokio_util::sync::CancellationToken,
}

/// A loopback TCP relay. With an upstream it forwards each connection to it; without one it
/// accepts and at once closes each connection (a port with nothing behind it that the test
/// can still observe). Every accepted connection's arrival time is recorded.
pub struct Relay {
    addr: SocketAddr,
    state: Arc<Mutex<RelayState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts a relay on a free loopback port.
    pub async fn start(upstream: Option<SocketAddr>) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(RelayState {
            upstream,
            ..RelayState::default()
        }));
        let accept_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(mut st) = accept_state.lock() else {
                    return;
                };
                st.accepts.push(Instant::now());
                let Some(upstream) = st.upstream else {
                    // Nothing behind the port: close at once.
                    drop(inbound);
                    continue;
                };
                let freeze = st.freeze.clone();
                let link = tokio::spawn(async move {
                    let mut inbound = inbound;
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let frozen = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        () = freeze.cancelled() => true,
                    };
                    if frozen {
                        // Both sockets stay open and unread until `sever` or drop aborts this
                        // task: the kernel still acknowledges what the peers send.
                        std::future::pending::<()>().await;
                    }
                });
                st.links.retain(|l| !l.is_finished());
                st.links.push(link.abort_handle());
            }
        });
        Relay { addr, state, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards new connections to `upstream` (or refuses them with `None`).
    pub fn set_upstream(&self, upstream: Option<SocketAddr>) {
        if let Ok(mut st) = self.state.lock() {
            st.upstream = upstream;
        }
    }

    /// Stops forwarding on every live connection without closing either side, as when a
    /// stateful middlebox or the gateway's host freezes: nothing more arrives, nothing fails.
    /// Connections accepted afterwards are forwarded as usual.
    pub fn blackhole(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.freeze.cancel();
            st.freeze = tokio_util::sync::CancellationToken::new();
        }
    }

    /// Cuts every live connection at once (both sockets closed, no gRPC status, no trailers)
    /// and refuses new ones, as when the gateway's process or host dies.
    pub fn sever(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.upstream = None;
            for link in st.links.drain(..) {
                link.abort();
            }
        }
    }

    /// When each connection arrived, oldest first.
    pub fn accepts(&self) -> Vec<Instant> {
        self.state
            .lock()
            .map(|s| s.accepts.clone())
            .unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.sever();
    }
}

/// Groups arrival times into attempts: arrivals less than `gap` after the previous one belong
/// to the same attempt (a client may open more than one connection per attempt). Returns the
/// first arrival of each attempt.
pub fn attempts(arrivals: &[Instant], gap: Duration) -> Vec<Instant> {
    let mut out: Vec<Instant> = Vec::new();
    let mut last: Option<Instant> = None;
    for &t in arrivals {
        if last.is_none_or(|l| t.duration_since(l) >= gap) {
            out.push(t);
        }
        last = Some(t);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw gateway
// ---------------------------------------------------------------------------------------------

/// A hoop gateway that sends and receives the wire form of packets. It authenticates the
/// agent like hoop (Bearer DSN, `origin: agent`), sends `AgentGatewayConnectOK` and the
/// feature flags, then hands the stream to the test as a [`RawAgentStream`].
pub struct RawGateway {
    addr: SocketAddr,
    agent_name: String,
    secret: String,
    connections: Arc<AtomicUsize>,
    new_agents: mpsc::Receiver<RawAgentStream>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct RawService {
    agent_name: String,
    secret: String,
    connections: Arc<AtomicUsize>,
    new_agents: mpsc::Sender<RawAgentStream>,
}

impl RawGateway {
    /// Starts a gateway on a free loopback port for agent `agent_name` with `secret`.
    pub async fn start(agent_name: &str, secret: &str) -> RawGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::channel(4);
        let connections = Arc::new(AtomicUsize::new(0));
        let svc = RawService {
            agent_name: agent_name.to_owned(),
            secret: secret.to_owned(),
            connections: Arc::clone(&connections),
            new_agents: tx,
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        RawGateway {
            addr,
            agent_name: agent_name.to_owned(),
            secret: secret.to_owned(),
            connections,
            new_agents: rx,
            server,
        }
    }

    /// The DSN an agent must present.
    pub fn dsn(&self) -> String {
        format!(
            "grpc://{}:{}@{}?mode=standard",
            self.agent_name, self.secret, self.addr
        )
    }

    /// Waits for the next agent stream.
    pub async fn next_agent(&mut self) -> RawAgentStream {
        tokio::time::timeout(crate::WAIT, self.new_agents.recv())
            .await
            .expect("no agent connected in time")
            .expect("gateway stopped")
    }

    /// Accepted `Connect` streams so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl tonic::server::NamedService for RawService {
    const NAME: &'static str = "protobuf.Transport";
}

impl<B> Service<http::Request<B>> for RawService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            if req.uri().path() != hoop_wire::CONNECT_PATH {
                return Ok(Status::unimplemented("this gateway serves only Connect").into_http());
            }
            let codec = tonic_prost::ProstCodec::<WirePacket, WirePacket>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(
                Some(MAX_MESSAGE_SIZE),
                Some(MAX_INBOUND_MESSAGE_SIZE),
            );
            Ok(grpc.streaming(ConnectMethod(svc), req).await)
        })
    }
}

struct ConnectMethod(RawService);

impl tonic::server::StreamingService<WirePacket> for ConnectMethod {
    type Response = WirePacket;
    type ResponseStream = ReceiverStream<Result<WirePacket, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<WirePacket>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.connect(request).await })
    }
}

impl RawService {
    fn authenticate(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        if get("origin") != Some("agent") {
            return Err(Status::invalid_argument("missing origin"));
        }
        let dsn = get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| gateway_link::Dsn::parse(t).ok())
            .ok_or_else(|| Status::unauthenticated("invalid authentication"))?;
        if dsn.secret() != self.secret || dsn.agent_name() != self.agent_name {
            return Err(Status::unauthenticated("invalid authentication"));
        }
        Ok(())
    }

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<WirePacket>>,
    ) -> Result<tonic::Response<ReceiverStream<Result<WirePacket, Status>>>, Status> {
        self.authenticate(request.metadata())?;
        self.connections.fetch_add(1, Ordering::SeqCst);
        let (to_agent, rx) = mpsc::channel::<Result<WirePacket, Status>>(64);
        // Unbounded: the test reads at its own pace and the agent must never be held up by it.
        let (from_tx, from_rx) = mpsc::unbounded_channel();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(packet)) = inbound.message().await {
                let decoded = ClientPacket::decode(&packet).map_err(|e| e.to_string());
                if from_tx.send(decoded).is_err() {
                    return;
                }
            }
        });
        for p in [
            AgentPacket::GatewayConnectOk,
            AgentPacket::FeatureFlags(BTreeMap::new()),
        ] {
            let _ = to_agent.send(Ok(p.into_packet().into())).await;
        }
        let stream = RawAgentStream {
            to_agent,
            from_agent: from_rx,
            replies: HashMap::new(),
            undecodable: Vec::new(),
            keepalives: 0,
        };
        let _ = self.new_agents.send(stream).await;
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// One agent stream on a [`RawGateway`]. Replies are collected by session as they are pumped.
pub struct RawAgentStream {
    to_agent: mpsc::Sender<Result<WirePacket, Status>>,
    from_agent: mpsc::UnboundedReceiver<Result<ClientPacket, String>>,
    /// Every reply read so far, by session, in arrival order.
    pub replies: HashMap<SessionId, Vec<ClientPacket>>,
    /// Packets from the agent that a gateway could not decode.
    pub undecodable: Vec<String>,
    /// `GatewayKeepAlive`s received.
    pub keepalives: usize,
}

impl RawAgentStream {
    /// Sends one packet in its wire form.
    pub async fn send_wire(&self, packet: WirePacket) {
        self.to_agent
            .send(Ok(packet))
            .await
            .expect("agent stream closed");
    }

    /// Sends a typed packet.
    pub async fn send(&self, packet: AgentPacket) {
        self.send_wire(packet.into_packet().into()).await;
    }

    /// Reads replies until `done` holds, failing the test after `limit`.
    pub async fn pump_until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&RawAgentStream) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.from_agent.recv()).await {
                Ok(Some(Ok(ClientPacket::KeepAlive))) => self.keepalives += 1,
                Ok(Some(Ok(p))) => {
                    if let Some(sid) = p.session_id().cloned() {
                        self.replies.entry(sid).or_default().push(p);
                    }
                }
                Ok(Some(Err(e))) => self.undecodable.push(e),
                Ok(None) => panic!("the agent stream ended while waiting for {what}"),
                Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
            }
        }
    }

    /// Stdout received for `sid`.
    pub fn stdout(&self, sid: &SessionId) -> Vec<u8> {
        let mut out = Vec::new();
        for p in self.replies.get(sid).into_iter().flatten() {
            if let ClientPacket::Stdout { data, .. } = p {
                out.extend_from_slice(data);
            }
        }
        out
    }

    /// `(exit code, message)` of every `ClientSessionClose` for `sid`.
    pub fn closes(&self, sid: &SessionId) -> Vec<(Option<i32>, String)> {
        self.replies
            .get(sid)
            .into_iter()
            .flatten()
            .filter_map(|p| match p {
                ClientPacket::SessionClose {
                    exit_code, message, ..
                } => Some((*exit_code, String::from_utf8_lossy(message).into_owned())),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed packets
// ---------------------------------------------------------------------------------------------

/// A flood of malformed packets and what the agent must answer.
pub struct Flood {
    pub packets: Vec<WirePacket>,
    /// Session opens the agent must refuse, each with exactly one `ClientSessionClose` 254.
    pub refused: Vec<SessionId>,
    /// Opens whose only oddities are in fields the agent passes through (invalid UTF-8 in the
    /// component, the connection type, an unknown spec key, `client.request_port`): the agent
    /// opens them and must echo the request port byte for byte.
    pub lenient: Vec<(SessionId, Bytes)>,
    /// Packets with a payload over hoop's 17 MiB limit.
    pub oversized: usize,
}

/// Bytes that are not UTF-8 (a lone continuation byte, a truncated sequence, 0xff), `len` long.
pub fn invalid_utf8(len: usize) -> Vec<u8> {
    [0xff_u8, 0xc3, 0x28, 0xe2, 0x82, 0x80, 0xfe]
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// The number of string fields [`gob_params_with_invalid_utf8`] can corrupt.
pub const GOB_STRING_FIELDS: usize = 16;

/// Gob `AgentConnectionParams` equal to `params` except that string field number `field`
/// (modulo [`GOB_STRING_FIELDS`]) holds invalid UTF-8. Built by encoding a unique marker of the
/// same length and replacing its bytes, so every length prefix stays right.
pub fn gob_params_with_invalid_utf8(params: &AgentConnectionParams, field: usize) -> Vec<u8> {
    const MARK: &str = "QzQz-invalid-utf8-QzQz";
    let mut p = params.clone();
    let mark = MARK.to_owned();
    match field % GOB_STRING_FIELDS {
        0 => p.connection_name = mark,
        1 => p.connection_type = mark,
        2 => p.connection_sub_type = mark,
        3 => p.user_id = mark,
        4 => p.user_email = mark,
        5 => {
            p.env_vars.insert(mark, "eA==".into());
        }
        6 => {
            p.env_vars.insert("envvar:BAD".into(), mark);
        }
        7 => p.cmd_list.push(mark),
        8 => p.client_args = vec![mark],
        9 => p.client_verb = mark,
        10 => p.client_origin = mark,
        11 => p.dlp_provider = mark,
        12 => p.dlp_mode = mark,
        13 => p.dlp_info_types = vec![mark],
        14 => p.dlp_gcp_raw_credentials_json = mark,
        _ => p.dlp_presidio_analyzer_url = mark,
    }
    let encoded = hoop_gob::encode_connection_params(&p);
    replace_once(&encoded, MARK.as_bytes(), &invalid_utf8(MARK.len()))
}

/// A gob `map[string]string` (`terminal.envvars`) whose one entry has an invalid UTF-8 key
/// (`in_key`) or value.
pub fn gob_env_with_invalid_utf8(in_key: bool) -> Vec<u8> {
    const MARK: &str = "QzQz-invalid-env-QzQz";
    let mut map = BTreeMap::new();
    if in_key {
        map.insert(MARK.to_owned(), "YmFy".to_owned());
    } else {
        map.insert("envvar:FOO".to_owned(), MARK.to_owned());
    }
    let encoded = hoop_gob::encode_string_map(&map);
    replace_once(&encoded, MARK.as_bytes(), &invalid_utf8(MARK.len()))
}

fn replace_once(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    assert_eq!(needle.len(), with.len(), "replacement must keep the length");
    let at = haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("marker not found in the encoding");
    let mut out = haystack.to_vec();
    out.splice(at..at + needle.len(), with.iter().copied());
    assert!(
        !out.windows(needle.len()).any(|w| w == needle),
        "marker found twice in the encoding"
    );
    out
}

fn wire(packet_type: &[u8], spec: Vec<(&[u8], Bytes)>, payload: Bytes) -> WirePacket {
    WirePacket {
        component: Bytes::new(),
        r#type: Bytes::copy_from_slice(packet_type),
        spec: spec
            .into_iter()
            .map(|(k, value)| WireSpecEntry {
                key: Bytes::copy_from_slice(k),
                value,
            })
            .collect(),
        payload,
    }
}

fn sid_bytes(sid: &SessionId) -> Bytes {
    Bytes::from(sid.as_str().to_owned())
}

fn fresh_sid() -> SessionId {
    crate::sid()
}

/// `count` malformed packets (at least 1,000 is the suite's flood) for an agent serving the
/// session `live` (which must keep working) and `victim` (which an oversized input closes).
/// `params` is a valid command-line connection used where an open must otherwise be valid;
/// sessions it opens must never receive input (they only wait to be closed).
///
/// The mix, by position: an oversized payload for an unknown session at 3 positions and for
/// `victim` at one; an 8 MiB garbage gob at one; a lenient open (valid type, invalid UTF-8
/// elsewhere) every 100th packet; the rest
/// cycles through bad types, missing, invalid, over-long and control-character session ids,
/// garbage and truncated gob, invalid UTF-8 in every gob string field and in the client env,
/// bad resizes for `live`, bad feature flags, a second open for `live`, unknown types for
/// `live`, input for unknown sessions, duplicate spec keys and an empty packet.
pub fn malformed_flood(
    count: usize,
    live: &SessionId,
    victim: &SessionId,
    params: &AgentConnectionParams,
) -> Flood {
    let mut flood = Flood {
        packets: Vec::with_capacity(count),
        refused: Vec::new(),
        lenient: Vec::new(),
        oversized: 0,
    };
    let big = Bytes::from(vec![b'z'; MAX_MESSAGE_SIZE + 1]);
    let good_params = Bytes::from(hoop_gob::encode_connection_params(params));
    let bad = |len: usize| Bytes::from(invalid_utf8(len));
    let mut cheap = 0usize;
    let mut gob_field = 0usize;
    for i in 0..count {
        let packet = match i {
            10 | 500 | 900 => {
                flood.oversized += 1;
                wire(
                    pt::AGENT_EXEC_WRITE_STDIN.as_bytes(),
                    vec![(key::SESSION_ID.as_bytes(), sid_bytes(&fresh_sid()))],
                    big.clone(),
                )
            }
            300 => {
                flood.oversized += 1;
                wire(
                    pt::AGENT_TERMINAL_WRITE_STDIN.as_bytes(),
                    vec![(key::SESSION_ID.as_bytes(), sid_bytes(victim))],
                    big.clone(),
                )
            }
            400 => {
                let sid = fresh_sid();
                flood.refused.push(sid.clone());
                wire(
                    pt::AGENT_SESSION_OPEN.as_bytes(),
                    vec![
                        (key::SESSION_ID.as_bytes(), sid_bytes(&sid)),
                        (key::CONNECTION_PARAMS.as_bytes(), bad(8 * 1024 * 1024)),
                    ],
                    Bytes::new(),
                )
            }
            _ if i % 100 == 50 => {
                let sid = fresh_sid();
                let port = bad(7);
                flood.lenient.push((sid.clone(), port.clone()));
                let mut p = wire(
                    pt::AGENT_SESSION_OPEN.as_bytes(),
                    vec![
                        (key::SESSION_ID.as_bytes(), sid_bytes(&sid)),
                        // The type must be exactly `command-line` (any other is refused at
                        // open, hoop-gateway-protocol.md §3.6); the rest is invalid UTF-8.
                        (
                            key::CONNECTION_TYPE.as_bytes(),
                            Bytes::from_static(CONNECTION_TYPE_COMMAND_LINE.as_bytes()),
                        ),
                        (key::CONNECTION_PARAMS.as_bytes(), good_params.clone()),
                        (key::REQUEST_PORT.as_bytes(), port),
                        (&invalid_utf8(9), bad(9)),
                    ],
                    Bytes::new(),
                );
                p.component = bad(5);
                p
            }
            _ => {
                cheap += 1;
                match cheap % 19 {
                    // An unknown type, the component and a spec key all invalid UTF-8.
                    0 => {
                        let mut p =
                            wire(&invalid_utf8(20), vec![(&invalid_utf8(6), bad(6))], bad(16));
                        p.component = bad(8);
                        p
                    }
                    1 => wire(pt::AGENT_EXEC_WRITE_STDIN.as_bytes(), vec![], bad(4)),
                    2 => wire(
                        pt::AGENT_EXEC_WRITE_STDIN.as_bytes(),
                        vec![(key::SESSION_ID.as_bytes(), bad(36))],
                        Bytes::from_static(b"x"),
                    ),
                    3 => wire(
                        pt::AGENT_EXEC_WRITE_STDIN.as_bytes(),
                        vec![(key::SESSION_ID.as_bytes(), Bytes::from(vec![b'a'; 300]))],
                        Bytes::from_static(b"x"),
                    ),
                    4 => wire(
                        pt::AGENT_TERMINAL_WRITE_STDIN.as_bytes(),
                        vec![(
                            key::SESSION_ID.as_bytes(),
                            Bytes::from_static(b"abc\n\x1b[31mdef"),
                        )],
                        Bytes::from_static(b"x"),
                    ),
                    5 | 6 => {
                        let sid = fresh_sid();
                        flood.refused.push(sid.clone());
                        let gob: &[u8] = if cheap % 19 == 5 {
                            b"\x03\xff\x81\x00garbage\xff\xfe"
                        } else {
                            // Truncated: a valid encoding cut in half.
                            &good_params[..good_params.len() / 2]
                        };
                        wire(
                            pt::AGENT_SESSION_OPEN.as_bytes(),
                            vec![
                                (key::SESSION_ID.as_bytes(), sid_bytes(&sid)),
                                (
                                    key::CONNECTION_PARAMS.as_bytes(),
                                    Bytes::copy_from_slice(gob),
                                ),
                            ],
                            Bytes::new(),
                        )
                    }
                    7 | 8 => {
                        let sid = fresh_sid();
                        flood.refused.push(sid.clone());
                        gob_field += 1;
                        wire(
                            pt::AGENT_SESSION_OPEN.as_bytes(),
                            vec![
                                (key::SESSION_ID.as_bytes(), sid_bytes(&sid)),
                                (
                                    key::CONNECTION_PARAMS.as_bytes(),
                                    Bytes::from(gob_params_with_invalid_utf8(params, gob_field)),
                                ),
                            ],
                            Bytes::new(),
                        )
                    }
                    9 => {
                        let sid = fresh_sid();
                        flood.refused.push(sid.clone());
                        wire(
                            pt::AGENT_SESSION_OPEN.as_bytes(),
                            vec![
                                (key::SESSION_ID.as_bytes(), sid_bytes(&sid)),
                                (key::CONNECTION_PARAMS.as_bytes(), good_params.clone()),
                                (
                                    key::TERMINAL_ENVVARS.as_bytes(),
                                    Bytes::from(gob_env_with_invalid_utf8(i % 2 == 0)),
                                ),
                            ],
                            Bytes::new(),
                        )
                    }
                    // An open whose session id is not UTF-8: nobody to answer.
                    10 => wire(
                        pt::AGENT_SESSION_OPEN.as_bytes(),
                        vec![
                            (key::SESSION_ID.as_bytes(), bad(36)),
                            (key::CONNECTION_PARAMS.as_bytes(), good_params.clone()),
                        ],
                        Bytes::new(),
                    ),
                    11 => {
                        let sid = fresh_sid();
                        flood.refused.push(sid.clone());
                        wire(
                            pt::AGENT_SESSION_OPEN.as_bytes(),
                            vec![(key::SESSION_ID.as_bytes(), sid_bytes(&sid))],
                            Bytes::new(),
                        )
                    }
                    12 => wire(
                        pt::AGENT_TERMINAL_RESIZE_TTY.as_bytes(),
                        vec![(key::SESSION_ID.as_bytes(), sid_bytes(live))],
                        if i % 2 == 0 {
                            bad(11)
                        } else {
                            Bytes::from_static(b"70000,1,1,1")
                        },
                    ),
                    13 => wire(
                        pt::GATEWAY_FEATURE_FLAG_UPDATE.as_bytes(),
                        vec![(key::FEATURE_FLAGS.as_bytes(), bad(10))],
                        Bytes::new(),
                    ),
                    14 => wire(
                        pt::AGENT_SESSION_CLOSE.as_bytes(),
                        vec![(key::SESSION_ID.as_bytes(), bad(3))],
                        Bytes::new(),
                    ),
                    // A second open for the live session: ignored, the session stays.
                    15 => wire(
                        pt::AGENT_SESSION_OPEN.as_bytes(),
                        vec![
                            (key::SESSION_ID.as_bytes(), sid_bytes(live)),
                            (key::CONNECTION_PARAMS.as_bytes(), good_params.clone()),
                        ],
                        Bytes::new(),
                    ),
                    16 => {
                        let mut t = b"SysBareExecRequest".to_vec();
                        t.extend_from_slice(&invalid_utf8(3));
                        wire(
                            &t,
                            vec![(key::SESSION_ID.as_bytes(), sid_bytes(live))],
                            bad(32),
                        )
                    }
                    17 => wire(
                        pt::AGENT_TERMINAL_WRITE_STDIN.as_bytes(),
                        vec![
                            // Duplicate keys: the last one wins, and it is not UTF-8.
                            (key::SESSION_ID.as_bytes(), sid_bytes(live)),
                            (key::SESSION_ID.as_bytes(), bad(36)),
                        ],
                        Bytes::from_static(b"must-not-reach-the-live-session\r"),
                    ),
                    _ => {
                        if i % 2 == 0 {
                            WirePacket::default()
                        } else {
                            wire(
                                pt::AGENT_TERMINAL_WRITE_STDIN.as_bytes(),
                                vec![(key::SESSION_ID.as_bytes(), sid_bytes(&fresh_sid()))],
                                bad(64),
                            )
                        }
                    }
                }
            }
        };
        flood.packets.push(packet);
    }
    flood
}
