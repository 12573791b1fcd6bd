//! The bench's clients: output sinks for `dynoctl::exec` (one that counts, one that also reads
//! at a limited rate), a reader for child processes' stdout, and a minimal interactive
//! (`connect`) client speaking hoop's CLI packets over its own gRPC stream, so that a thousand
//! terminals can run in one process without a real TTY each.
//!
//! The terminal client sends exactly what `dynoctl connect` sends (`AgentSessionOpen` with the
//! gob spec, the initial `"\n"`, one resize, then keystrokes); it does not emulate a terminal.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hoop_wire::pb::Packet;
use hoop_wire::pb::transport_client::TransportClient;
use hoop_wire::spec::{MAX_INBOUND_MESSAGE_SIZE, key, metadata as md, packet_type as pt};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Bytes seen by a sink, and when the first and the last arrived.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub bytes: u64,
    /// Reads or writes that delivered the bytes.
    pub chunks: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Tally {
    fn record(&mut self, n: usize) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.bytes += n as u64;
        self.chunks += 1;
    }

    /// Streaming rate in MiB/s: bytes over the time from the first to the last byte.
    pub fn mib_per_s(&self) -> Option<f64> {
        let secs = self.last?.duration_since(self.first?).as_secs_f64();
        (secs > 0.0).then(|| self.bytes as f64 / secs / (1024.0 * 1024.0))
    }
}

/// An `AsyncWrite` that counts and drops what it gets, optionally no faster than `rate`
/// bytes per second (a slow consumer: `dynoctl::exec` waits for each write, which in turn
/// stops it reading the gRPC stream, and backpressure propagates to the agent).
#[derive(Debug)]
pub struct Sink {
    pub tally: Tally,
    rate: Option<f64>,
    start: Option<Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The largest write a rate-limited sink accepts at once (a reader with a 64 KiB buffer).
const SLOW_READ: usize = 64 * 1024;

impl Sink {
    pub fn counting() -> Sink {
        Sink {
            tally: Tally::default(),
            rate: None,
            start: None,
            sleep: None,
        }
    }

    /// A sink that reads at most `bytes_per_s`.
    pub fn rate_limited(bytes_per_s: f64) -> Sink {
        Sink {
            rate: Some(bytes_per_s),
            ..Sink::counting()
        }
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(rate) = this.rate else {
            this.tally.record(buf.len());
            return Poll::Ready(Ok(buf.len()));
        };
        let start = *this.start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_secs_f64(this.tally.bytes as f64 / rate);
        if Instant::now() < due {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
            sleep.as_mut().reset(due.into());
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let n = buf.len().min(SLOW_READ);
        this.tally.record(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads `reader` to its end, counting (a 256 KiB buffer, as a fast consumer would use).
/// Also returns the last bytes read (for error messages).
pub async fn drain(mut reader: impl AsyncRead + Unpin) -> std::io::Result<(Tally, Vec<u8>)> {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut tail = Vec::new();
    loop {
        match reader.read(&mut buf).await? {
            0 => return Ok((tally, tail)),
            n => {
                tally.record(n);
                let got = buf.get(..n).unwrap_or_default();
                tail.extend_from_slice(got.get(n.saturating_sub(80)..).unwrap_or_default());
                let excess = tail.len().saturating_sub(80);
                tail.drain(..excess);
            }
        }
    }
}

/// A gRPC channel to the gateway (one TCP connection; streams are multiplexed on it).
pub async fn channel(gateway: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{gateway}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("cannot connect to the gateway")
}

/// One interactive session, as `dynoctl connect` drives it.
#[derive(Debug)]
pub struct Terminal {
    tx: mpsc::Sender<Packet>,
    inbound: Streaming<Packet>,
    /// Output bytes received so far.
    received: usize,
}

fn packet(packet_type: &str, payload: Bytes) -> Packet {
    Packet {
        r#type: packet_type.into(),
        payload,
        ..Default::default()
    }
}

impl Terminal {
    /// Opens a `connect` session on `connection` and starts its terminal (24×80).
    pub async fn open(channel: Channel, token: &str, connection: &str) -> anyhow::Result<Self> {
        let mut client =
            TransportClient::new(channel).max_decoding_message_size(MAX_INBOUND_MESSAGE_SIZE);
        let (tx, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let meta = request.metadata_mut();
        meta.insert(
            md::AUTHORIZATION,
            AsciiMetadataValue::try_from(format!("Bearer {token}"))?,
        );
        meta.insert(
            md::ORIGIN,
            AsciiMetadataValue::from_static(md::ORIGIN_CLIENT),
        );
        meta.insert(md::VERB, AsciiMetadataValue::from_static("connect"));
        meta.insert(
            md::CONNECTION_NAME,
            AsciiMetadataValue::try_from(connection)?,
        );
        let mut inbound = client.connect(request).await?.into_inner();
        let mut open = packet(pt::AGENT_SESSION_OPEN, Bytes::new());
        open.spec.insert(
            key::TERMINAL_ARGS.into(),
            Bytes::from(hoop_gob::encode_string_slice(&[])),
        );
        open.spec.insert(
            key::TERMINAL_ENVVARS.into(),
            Bytes::from(hoop_gob::encode_string_map(&Default::default())),
        );
        tx.send(open).await?;
        loop {
            let p = inbound
                .message()
                .await?
                .context("the gateway ended the stream before the session opened")?;
            match p.r#type.as_str() {
                pt::CLIENT_SESSION_OPEN_OK => break,
                pt::CLIENT_SESSION_CLOSE | pt::CLIENT_SESSION_OPEN_AGENT_OFFLINE => {
                    bail!("session refused: {}", String::from_utf8_lossy(&p.payload))
                }
                _ => {}
            }
        }
        // hoop's CLI: the initial "\n" makes the agent create the PTY; then the size.
        tx.send(packet(
            pt::AGENT_TERMINAL_WRITE_STDIN,
            Bytes::from_static(b"\n"),
        ))
        .await?;
        tx.send(packet(
            pt::AGENT_TERMINAL_RESIZE_TTY,
            Bytes::from_static(b"24,80,0,0"),
        ))
        .await?;
        Ok(Terminal {
            tx,
            inbound,
            received: 0,
        })
    }

    /// Types one printable byte and waits (at most `limit`) for the terminal to echo it.
    /// Returns the round-trip time.
    pub async fn keystroke(&mut self, byte: u8, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let want = self.received + 1;
        self.tx
            .send(packet(
                pt::AGENT_TERMINAL_WRITE_STDIN,
                Bytes::copy_from_slice(&[byte]),
            ))
            .await?;
        let deadline = tokio::time::Instant::now() + limit;
        while self.received < want {
            let p = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .context("no echo in time")??
                .context("the gateway ended the stream")?;
            match p.r#type.as_str() {
                pt::CLIENT_WRITE_STDOUT | pt::CLIENT_WRITE_STDERR => {
                    self.received += p.payload.len();
                }
                pt::CLIENT_SESSION_CLOSE => bail!(
                    "the session closed: {}",
                    String::from_utf8_lossy(&p.payload)
                ),
                _ => {}
            }
        }
        Ok(started.elapsed())
    }

    /// Pastes `total` bytes in `chunk`-byte packets into a terminal whose process never reads
    /// them, reading output and the close meanwhile (a client that stops sending on close,
    /// as hoop's does). Returns what was sent and the close's message, if the session closed
    /// (waiting at most `linger` for it after the last packet).
    pub async fn paste_unread(
        &mut self,
        total: usize,
        chunk: usize,
        linger: Duration,
    ) -> anyhow::Result<(usize, Option<String>)> {
        let piece = Bytes::from(vec![b'x'; chunk]);
        let mut sent = 0;
        // Sending and receiving race in one `select!`: each branch's future is cancel-safe
        // (an unfinished `send` sends nothing), and no handler awaits.
        while sent < total {
            tokio::select! {
                r = self.tx.send(packet(pt::AGENT_TERMINAL_WRITE_STDIN, piece.clone())) => {
                    if r.is_err() {
                        // The gateway ended the call; its close is still to be read.
                        break;
                    }
                    sent += piece.len();
                }
                m = self.inbound.message() => {
                    let p = m?.context("the gateway ended the stream")?;
                    if p.r#type == pt::CLIENT_SESSION_CLOSE {
                        return Ok((sent, Some(String::from_utf8_lossy(&p.payload).into_owned())));
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + linger;
        loop {
            let Ok(m) = tokio::time::timeout_at(deadline, self.inbound.message()).await else {
                return Ok((sent, None));
            };
            let Some(p) = m? else {
                return Ok((sent, None));
            };
            if p.r#type == pt::CLIENT_SESSION_CLOSE {
                return Ok((sent, Some(String::from_utf8_lossy(&p.payload).into_owned())));
            }
        }
    }

    /// Ends the session as a client that leaves does (`AgentSessionClose`, then half-close).
    pub async fn close(self) {
        let _ = self
            .tx
            .send(packet(pt::AGENT_SESSION_CLOSE, Bytes::new()))
            .await;
    }
}
