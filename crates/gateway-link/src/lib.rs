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

/// How long a stream must stay up before the backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Everything the link needs, validated before anything dials.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub dsn: Dsn,
    pub tls: TlsOptions,
    pub dial_timeout: Duration,
    pub metadata: AgentMetadata,
}

impl LinkConfig {
    /// A config with hoop's defaults (15 s dial timeout) and this host's metadata.
    pub fn new(dsn: Dsn, tls: TlsOptions, version: &str) -> LinkConfig {
        LinkConfig {
            dsn,
            tls,
            dial_timeout: Duration::from_secs(15),
            metadata: AgentMetadata::collect(version),
        }
    }
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

    /// Half-closes the stream once every queued packet is written, then waits (bounded) for
    /// the gateway to end its side, so that final packets are not lost when the agent exits.
    pub async fn close(self, wait: Duration) {
        let Connection {
            mut inbound,
            outbound,
            _keepalive,
        } = self;
        drop(_keepalive);
        drop(outbound);
        let drain = async {
            // The gateway ends its side after reading our half-close; discard what it sends.
            while let Ok(Some(_)) = inbound.message().await {}
        };
        let _ = tokio::time::timeout(wait, drain).await;
    }
}

/// Dials the gateway and opens one `Connect` stream.
pub async fn connect(config: &LinkConfig) -> Result<Connection, LinkError> {
    let channel = dial(config).await?;
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

async fn dial(config: &LinkConfig) -> Result<Channel, LinkError> {
    let address = addr(config);
    let dial_err = |reason: String| LinkError::Dial {
        addr: address.clone(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| dial_err(e.to_string()))?
        .connect_timeout(config.dial_timeout)
        .tcp_nodelay(true)
        .user_agent(format!("hoopagent/{} dynoagent", config.metadata.version))
        .map_err(|e| dial_err(e.to_string()))?;
    let result = if config.dsn.tls() {
        let tls = tls::client_config(&config.tls)?;
        let name = tls::server_name(&config.tls, config.dsn.host())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls));
        let target = address.clone();
        let svc = tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let name = name.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let stream = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        endpoint.connect_with_connector(svc).await
    } else {
        endpoint.connect().await
    };
    result.map_err(|e| dial_err(error_chain(&e)))
}

/// Formats an error and its sources on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
    loop {
        let attempt = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            r = connect(&config) => r,
        };
        match attempt {
            Ok(conn) => {
                tracing::info!(gateway = %gateway, agent = config.dsn.agent_name(), "connected to gateway");
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
            Err(e @ LinkError::Unauthenticated(_)) => {
                tracing::error!(gateway = %gateway, error = %e, "gateway authentication failed");
            }
            Err(e) => {
                tracing::warn!(gateway = %gateway, error = %e, "gateway connection failed");
            }
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting to gateway after backoff"
        );
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
}
