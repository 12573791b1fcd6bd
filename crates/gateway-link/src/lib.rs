//! The agent's link to a hoop gateway: the only place on the agent side that speaks gRPC.
//!
//! Owns dialing (plaintext or TLS), the `Connect` metadata, the 10 s `GatewayKeepAlive`, the
//! bounded outbound queue, decoding inbound packets at the edge, and the reconnect loop with
//! jittered backoff. It knows nothing about sessions: [`run`] hands each live [`Connection`] to
//! a caller-supplied function and reconnects when that function returns.

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod backoff;
mod dsn;
mod metadata;
mod sever;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hoop_wire::pb::{Packet, WirePacket};
use hoop_wire::spec::{KEEPALIVE_PERIOD, MAX_INBOUND_MESSAGE_SIZE, MAX_MESSAGE_SIZE};
use hoop_wire::{AgentPacket, ClientPacket, DecodeError};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status, Streaming};

pub use backoff::Backoff;
pub use dsn::{Dsn, DsnError, Mode};
pub use metadata::AgentMetadata;
pub use tls::{TlsError, TlsOptions, load_ca};

/// Packets waiting to be written to the gateway. Overflow policy: backpressure. A full queue
/// makes session tasks wait, which stops them reading their processes' output; memory stays
/// bounded at this many packets of at most 32 KiB each.
pub const OUTBOUND_QUEUE: usize = 64;

/// How long the socket must stay idle before a closing link cuts it.
const CLOSE_QUIET: Duration = Duration::from_millis(20);

/// How long a stream must stay up before the backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Everything the link needs, validated before anything dials.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub dsn: Dsn,
    pub tls: TlsOptions,
    pub dial_timeout: Duration,
    pub liveness: Liveness,
    pub metadata: AgentMetadata,
}

impl LinkConfig {
    /// A config with hoop's defaults (15 s dial timeout), the default [`Liveness`] and this
    /// host's metadata.
    pub fn new(dsn: Dsn, tls: TlsOptions, version: &str) -> LinkConfig {
        LinkConfig {
            dsn,
            tls,
            dial_timeout: Duration::from_secs(15),
            liveness: Liveness::default(),
            metadata: AgentMetadata::collect(version),
        }
    }
}

/// How the agent notices a dead link to the gateway (a half-open TCP connection: the gateway's
/// host died, a NAT entry expired, a proxy froze) instead of waiting on it forever.
///
/// Two mechanisms, because each misses a case the other catches:
/// - `TCP_USER_TIMEOUT`: the kernel drops the connection when data it sent stays unacknowledged
///   this long. The agent writes a `GatewayKeepAlive` every 10 s, so a peer that vanished from
///   the network is noticed within `tcp_user_timeout` + 10 s.
/// - HTTP/2 PING: after `ping_interval` without hearing from the gateway the agent sends a
///   PING and drops the connection when no ACK comes within `ping_timeout`. This catches a
///   peer that still acknowledges TCP but no longer answers (a stuck proxy or load balancer).
///
/// The PING default is long on purpose: hoop's gateway is a grpc-go server with the default
/// keepalive enforcement policy (PINGs at most every 5 minutes while it sends nothing), and
/// answers more frequent PINGs with `GOAWAY ENHANCE_YOUR_CALM` ("too_many_pings"), which would
/// cut an idle agent every 30 s. Shorten it only for a gateway that permits it
/// (docs/operations.md, "Gateway link liveness").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Send an HTTP/2 PING after this long without reading anything; `None`: never.
    pub ping_interval: Option<Duration>,
    /// Drop the connection when a PING is not acknowledged within this.
    pub ping_timeout: Duration,
    /// The socket's `TCP_USER_TIMEOUT`; `None` leaves the kernel default (about 15 minutes).
    pub tcp_user_timeout: Option<Duration>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            // grpc-go's default `MinTime` is 5 minutes; 10 s more keeps clock and RTT noise
            // from ever counting as a strike.
            ping_interval: Some(Duration::from_secs(310)),
            ping_timeout: Duration::from_secs(20),
            tcp_user_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// Applies the socket half of [`Liveness`] to a freshly dialed connection.
fn tune_socket(tcp: &tokio::net::TcpStream, liveness: &Liveness) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    if let Some(timeout) = liveness.tcp_user_timeout {
        socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Dial { addr: String, reason: String },
    #[error(
        "the gateway refused the agent's credentials ({0}); check that HOOP_KEY holds a current key for this agent"
    )]
    Unauthenticated(String),
    #[error(
        "the gateway refused this agent because it is stored as a multi-connection agent (hoop's organization key), which only \"hoop run\" can use; create a standard agent key (\"hoop admin create agent <name>\" or the web UI) and set it as HOOP_KEY"
    )]
    MultiConnectionKey,
    #[error("another agent with this key is already connected to the gateway")]
    AlreadyConnected,
    #[error("the gateway refused the stream: {code:?}: {message}")]
    Refused { code: Code, message: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid gateway metadata: {0}")]
    Metadata(String),
}

impl LinkError {
    fn from_status(status: &Status) -> LinkError {
        let message = status.message().chars().take(200).collect::<String>();
        match status.code() {
            Code::Unauthenticated => LinkError::Unauthenticated(message),
            // hoop's `AgentStream.validate` and `Save` (hoop-gateway-protocol.md §1.4, §1.6).
            Code::FailedPrecondition if message.contains("missing connection-name attribute") => {
                LinkError::MultiConnectionKey
            }
            Code::FailedPrecondition if message.contains("agent already connected") => {
                LinkError::AlreadyConnected
            }
            code => LinkError::Refused { code, message },
        }
    }
}

/// What the gateway sent, decoded at the edge.
#[derive(Debug)]
pub enum Inbound {
    Packet(AgentPacket),
    /// A packet that could not be decoded; the stream itself is fine.
    Malformed(DecodeError),
    /// The stream ended: `Ok` for a clean end, `Err` with the gRPC status otherwise.
    Closed(Result<(), Status>),
}

/// The sending half of a live stream. Cheap to clone; every clone feeds the same queue.
#[derive(Clone, Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Packet>,
}

/// The stream has ended; nothing more can be sent on it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the gateway stream is closed")]
pub struct StreamClosed;

impl Outbound {
    /// Queues a packet, waiting while the queue is full (backpressure).
    pub async fn send(&self, packet: ClientPacket) -> Result<(), StreamClosed> {
        self.tx
            .send(packet.into_packet())
            .await
            .map_err(|_| StreamClosed)
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One live `Connect` stream.
#[derive(Debug)]
pub struct Connection {
    inbound: Streaming<WirePacket>,
    outbound: Outbound,
    _keepalive: tokio_util::task::AbortOnDropHandle<()>,
    cut: sever::Cut,
}

impl Connection {
    /// The next event from the gateway.
    pub async fn recv(&mut self) -> Inbound {
        match self.inbound.message().await {
            Ok(Some(wire)) => match AgentPacket::decode(&wire) {
                Ok(p) => Inbound::Packet(p),
                Err(e) => Inbound::Malformed(e),
            },
            Ok(None) => Inbound::Closed(Ok(())),
            Err(status) => Inbound::Closed(Err(status)),
        }
    }

    /// A handle for sending packets on this stream.
    pub fn outbound(&self) -> Outbound {
        self.outbound.clone()
    }

    /// Ends the call as hoop's agent does: once every queued packet has been written and
    /// flushed (bounded by `wait`), the connection is closed, so the gateway sees the call
    /// cancelled. A half-close would make hoop's gateway log an ERROR ("err=EOF", §5.4).
    pub async fn close(self, wait: Duration) {
        let Connection {
            inbound,
            outbound,
            _keepalive,
            cut,
        } = self;
        drop(_keepalive);
        let tx = &outbound.tx;
        let idle = || tx.capacity() == tx.max_capacity() && cut.is_flushed();
        let flushed = async {
            // The queue and the socket are idle, and stay so across a short quiet period (the
            // HTTP/2 task may hold a packet it has taken from the queue but not yet written).
            loop {
                let before = cut.flushes();
                let was_idle = idle();
                tokio::time::sleep(CLOSE_QUIET).await;
                if was_idle && idle() && cut.flushes() == before {
                    return;
                }
            }
        };
        if tokio::time::timeout(wait, flushed).await.is_err() {
            tracing::warn!("the gateway did not take the last packets in time; closing anyway");
        }
        cut.sever();
        drop(outbound);
        drop(inbound);
    }
}

/// Dials the gateway and opens one `Connect` stream.
pub async fn connect(config: &LinkConfig) -> Result<Connection, LinkError> {
    let cut = sever::Cut::default();
    let channel = dial(config, cut.clone()).await?;
    let (tx, rx) = mpsc::channel::<Packet>(OUTBOUND_QUEUE);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    fill_metadata(request.metadata_mut(), config)?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_INBOUND_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    grpc.ready().await.map_err(|e| LinkError::Dial {
        addr: addr(config),
        reason: e.to_string(),
    })?;
    let codec = tonic_prost::ProstCodec::<Packet, WirePacket>::default();
    let response = grpc
        .streaming(
            request,
            PathAndQuery::from_static(hoop_wire::CONNECT_PATH),
            codec,
        )
        .await
        .map_err(|s| LinkError::from_status(&s))?;
    let outbound = Outbound { tx };
    let keepalive =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(keepalive(outbound.clone())));
    Ok(Connection {
        inbound: response.into_inner(),
        outbound,
        _keepalive: keepalive,
        cut,
    })
}

async fn keepalive(out: Outbound) {
    let mut tick = tokio::time::interval_at(Instant::now() + KEEPALIVE_PERIOD, KEEPALIVE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if out.send(ClientPacket::KeepAlive).await.is_err() {
            return;
        }
    }
}

fn addr(config: &LinkConfig) -> String {
    let host = config.dsn.host();
    if host.contains(':') {
        format!("[{host}]:{}", config.dsn.port())
    } else {
        format!("{host}:{}", config.dsn.port())
    }
}

fn fill_metadata(md: &mut MetadataMap, config: &LinkConfig) -> Result<(), LinkError> {
    let bearer = format!("Bearer {}", config.dsn.bearer());
    // The DSN was checked to be ASCII when parsed; the error never names the value.
    let mut auth = AsciiMetadataValue::try_from(bearer)
        .map_err(|_| LinkError::Metadata("HOOP_KEY is not a valid header value".into()))?;
    // Sensitive: HTTP/2 never indexes it in HPACK tables and `Debug` prints no value.
    auth.set_sensitive(true);
    md.insert(hoop_wire::spec::metadata::AUTHORIZATION, auth);
    for (key, value) in config.metadata.pairs() {
        let clean: String = value
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = AsciiMetadataValue::try_from(clean) {
            md.insert(key, v);
        }
    }
    Ok(())
}

async fn dial(config: &LinkConfig, cut: sever::Cut) -> Result<Channel, LinkError> {
    let address = addr(config);
    let dial_err = |reason: String| LinkError::Dial {
        addr: address.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| dial_err(e.to_string()))?
        .connect_timeout(config.dial_timeout)
        .tcp_nodelay(true);
    if let Some(interval) = config.liveness.ping_interval {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(config.liveness.ping_timeout)
            // The one `Connect` stream is always open; "while idle" only matters between
            // streams, and there is none: keep pinging regardless.
            .keep_alive_while_idle(true);
    }
    let endpoint = endpoint
        .user_agent(format!("hoopagent/{} dynoagent", config.metadata.version))
        .map_err(|e| dial_err(e.to_string()))?;
    // Both paths dial through a connector of ours so that the socket can be cut on close
    // (`sever`). The channel makes one connection: this connector runs once per `connect`.
    let target = address.clone();
    let liveness = config.liveness;
    let result = if config.dsn.tls() {
        let tls = tls::client_config(&config.tls)?;
        let name = tls::server_name(&config.tls, config.dsn.host())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls));
        let svc = tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let name = name.clone();
            let target = target.clone();
            let cut = cut.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tune_socket(&tcp, &liveness)?;
                let stream = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(sever::Severable::new(stream, cut)))
            }
        });
        endpoint.connect_with_connector(svc).await
    } else {
        let svc = tower::service_fn(move |_: Uri| {
            let target = target.clone();
            let cut = cut.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tune_socket(&tcp, &liveness)?;
                Ok::<_, std::io::Error>(TokioIo::new(sever::Severable::new(tcp, cut)))
            }
        });
        endpoint.connect_with_connector(svc).await
    };
    result.map_err(|e| dial_err(error_chain(&e)))
}

/// Why a stream failed, on one line: the status message and every underlying cause. A PING
/// or TCP user timeout shows as hyper's "stream closed because of a broken pipe".
pub fn status_reason(status: &Status) -> String {
    with_causes(
        status.message().to_owned(),
        std::error::Error::source(status),
    )
}

/// Formats an error and its sources on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    with_causes(e.to_string(), e.source())
}

/// `text`, then each cause in turn, skipping a cause whose text is already there (tonic and
/// hyper often repeat their source in their own message).
fn with_causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

/// Keeps the agent connected until `shutdown` fires: connects, hands each live connection to
/// `serve`, and reconnects with backoff after failures and dropped streams. `serve` owns the
/// connection until it returns; it should return promptly once `shutdown` fires.
pub async fn run<F, Fut>(config: LinkConfig, shutdown: CancellationToken, mut serve: F)
where
    F: FnMut(Connection) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::default();
    let gateway = addr(&config);
    if config.dsn.looks_like_org_key() {
        tracing::warn!(
            agent = config.dsn.agent_name(),
            "HOOP_KEY looks like hoop's organization key (agent _default, no mode), which the gateway refuses for standard agents; if it does, create a standard agent key (\"hoop admin create agent <name>\" or the web UI) and set it as HOOP_KEY"
        );
    }
    // Refusals that repeat on every attempt are reported once, then retried quietly.
    let mut reported: Option<std::mem::Discriminant<LinkError>> = None;
    loop {
        let attempt = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            r = connect(&config) => r,
        };
        match attempt {
            Ok(conn) => {
                tracing::info!(gateway = %gateway, agent = config.dsn.agent_name(), "connected to gateway");
                reported = None;
                let started = Instant::now();
                serve(conn).await;
                if started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                if shutdown.is_cancelled() {
                    return;
                }
                if started.elapsed() >= STABLE_AFTER {
                    continue;
                }
            }
            Err(e) => {
                let again = reported.replace(std::mem::discriminant(&e))
                    == Some(std::mem::discriminant(&e));
                match &e {
                    LinkError::MultiConnectionKey => {
                        // Nothing changes until an operator replaces the key: one ERROR, then
                        // quiet retries at the slowest pace.
                        backoff.saturate();
                        if again {
                            tracing::debug!(gateway = %gateway, error = %e, "still refused");
                        } else {
                            tracing::error!(gateway = %gateway, error = %e, "gateway refused the agent's key");
                        }
                    }
                    LinkError::AlreadyConnected if again => {
                        tracing::debug!(gateway = %gateway, "still on standby");
                    }
                    LinkError::AlreadyConnected => tracing::info!(
                        gateway = %gateway,
                        agent = config.dsn.agent_name(),
                        "standby: another agent with this HOOP_KEY is connected; this one retries and takes over when that one disconnects"
                    ),
                    LinkError::Unauthenticated(_) => {
                        tracing::error!(gateway = %gateway, error = %e, "gateway authentication failed");
                    }
                    _ => {
                        tracing::warn!(gateway = %gateway, error = %e, "gateway connection failed")
                    }
                }
            }
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        if reported.is_some() {
            tracing::debug!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting to gateway after backoff"
            );
        } else {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting to gateway after backoff"
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sends_a_keepalive_every_ten_seconds() {
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(keepalive(Outbound { tx }));
        let start = Instant::now();
        for n in 1..=3u64 {
            let packet = rx.recv().await.unwrap();
            assert_eq!(
                packet.r#type,
                hoop_wire::spec::packet_type::GATEWAY_KEEP_ALIVE
            );
            assert!(packet.spec.is_empty(), "keepalives carry no session id");
            assert_eq!(start.elapsed(), KEEPALIVE_PERIOD * n as u32);
        }
        task.abort();
    }

    #[test]
    fn the_authorization_metadata_is_sensitive() {
        let dsn = Dsn::parse("grpc://agent:hunter2-md@127.0.0.1:8010?mode=standard").unwrap();
        let config = LinkConfig::new(dsn, TlsOptions::default(), "0");
        let mut md = MetadataMap::new();
        fill_metadata(&mut md, &config).unwrap();
        let auth = md.get(hoop_wire::spec::metadata::AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert!(!format!("{md:?}").contains("hunter2"), "{md:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_stops_when_the_stream_closes() {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        // Ends by itself at its first tick instead of running forever.
        tokio::time::timeout(KEEPALIVE_PERIOD * 2, keepalive(Outbound { tx }))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn dialed_sockets_carry_the_tcp_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let liveness = Liveness {
            tcp_user_timeout: Some(Duration::from_secs(17)),
            ..Liveness::default()
        };
        tune_socket(&tcp, &liveness).unwrap();
        let sock = socket2::SockRef::from(&tcp);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(17))
        );
        assert!(sock.tcp_nodelay().unwrap());
    }

    #[test]
    fn the_default_ping_interval_respects_grpc_gos_enforcement_policy() {
        // grpc-go servers (hoop's gateway) strike a client that pings more often than every
        // 5 minutes while they send nothing, and cut it after the third strike.
        let interval = Liveness::default().ping_interval.unwrap();
        assert!(interval > Duration::from_secs(300), "{interval:?}");
    }
}

/// The end of a call as the gateway's HTTP/2 layer sees it, with a raw `h2` server (tonic,
/// like hyper, reports an END_STREAM half-close and a cancel alike, so dynogw cannot check it).
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod close_tests {
    use super::*;

    #[tokio::test]
    async fn close_cancels_the_call_after_the_last_packet_instead_of_half_closing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut h2 = h2::server::handshake(socket).await.unwrap();
            let (request, mut respond) = h2.accept().await.unwrap().unwrap();
            // Keep driving the connection while the body is read.
            tokio::spawn(async move { while let Some(Ok(_)) = h2.accept().await {} });
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let _send = respond.send_response(response, false).unwrap();
            let mut body = request.into_body();
            let mut bytes = 0usize;
            loop {
                match body.data().await {
                    Some(Ok(chunk)) => {
                        bytes += chunk.len();
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    Some(Err(e)) => return (bytes, Some(e.reason())),
                    None => return (bytes, None),
                }
            }
        });
        let dsn = Dsn::parse(&format!("grpc://a:s@127.0.0.1:{port}?mode=standard")).unwrap();
        let config = LinkConfig::new(dsn, TlsOptions::default(), "0.0.0-test");
        let conn = connect(&config).await.unwrap();
        let sid = hoop_wire::SessionId::parse(b"s-1").unwrap();
        let last = ClientPacket::SessionClose {
            session_id: sid,
            exit_code: Some(254),
            message: bytes::Bytes::from_static(b"agent shutting down"),
        };
        let expected = last.clone().into_packet();
        conn.outbound().send(last).await.unwrap();
        conn.close(Duration::from_secs(5)).await;
        let (bytes, end) = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server saw no end")
            .unwrap();
        // The final packet arrived whole (5-byte gRPC frame header + message)...
        assert_eq!(bytes, 5 + prost::Message::encoded_len(&expected));
        // ...and the call ended with RST_STREAM(CANCEL) or a closed connection, not END_STREAM.
        assert_ne!(end, None, "the request stream was half-closed (END_STREAM)");
        assert!(
            matches!(end, Some(Some(h2::Reason::CANCEL)) | Some(None)),
            "{end:?}"
        );
    }
}
