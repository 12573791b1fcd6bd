//! `dynoctl connect` on a `tcp` connection, as hoop's CLI does it (hoop-gateway-protocol.md
//! §3.7): listen on `127.0.0.1:PORT` (default 8999), print the address, and relay every
//! accepted local connection under its own `client.connection_id` (a decimal counter from 1)
//! until Ctrl-C or the session's close.
//!
//! Per local connection: `AgentTCPConnectionWrite` with `tcp.server_connect` (dial only, so a
//! server that speaks first is heard), then its bytes in chunks of at most 32 KiB, then
//! `AgentCloseTCPConnection` at EOF. `ClientTCPConnectionWrite` goes to that local socket;
//! `ClientTCPConnectionClose` closes it and is answered with `AgentCloseTCPConnection`.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use hoop_wire::pb::Packet;
use hoop_wire::spec::{KEEPALIVE_PERIOD, key, packet_type as pt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedReadHalf;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ClientError;
use crate::stream::{self, ClientStream};
use crate::terminal::TerminalOutcome;

/// hoop's CLI default local port.
pub const DEFAULT_PORT: u16 = 8999;
/// Largest `AgentTCPConnectionWrite` payload.
const CHUNK: usize = 32 * 1024;
/// Upstream chunks queued per local socket before the relay waits (backpressure).
const LOCAL_QUEUE: usize = 16;

fn tcp_packet(packet_type: &str, id: &str, payload: Bytes) -> Packet {
    let mut p = stream::packet(packet_type, payload);
    p.spec
        .insert(key::CLIENT_CONNECTION_ID.into(), Bytes::from(id.to_owned()));
    p
}

/// One accepted local connection.
struct LocalConn {
    /// Upstream bytes for the local socket; dropping it flushes, then shuts the write half.
    writer: mpsc::Sender<Bytes>,
    /// Reads the local socket and sends its packets; aborted when the upstream closes.
    reader: JoinHandle<()>,
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Relays local connections on `127.0.0.1:port` through the open session. `ready` gets the
/// address once listening.
///
/// No `select!` handler below awaits (STYLE 16): each local connection's reader sends its own
/// packets, writes to local sockets go through per-connection queues, and a packet for a full
/// queue is parked in `waiting` (the gateway stream is ordered, so the relay then stops
/// reading it) while Ctrl-C, accepts and closes are still observed.
pub(crate) async fn relay(
    stream: &mut ClientStream,
    session_id: Option<String>,
    port: u16,
    ready: impl FnOnce(SocketAddr),
) -> Result<TerminalOutcome, ClientError> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        ClientError::Input(format!("failed listening to address 127.0.0.1:{port}: {e}"))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ClientError::Input(format!("failed listening: {e}")))?;
    ready(addr);
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| ClientError::Terminal(e.to_string()))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| ClientError::Terminal(e.to_string()))?;
    let out = stream.tx.clone();
    let (eof_tx, mut eof_rx) = mpsc::unbounded_channel::<String>();
    let mut conns: HashMap<String, LocalConn> = HashMap::new();
    let mut waiting: Option<(mpsc::Sender<Bytes>, Bytes)> = None;
    let mut next_id = 0u64;
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_PERIOD,
        KEEPALIVE_PERIOD,
    );
    loop {
        let capacity = waiting.as_ref().map(|(tx, _)| tx.clone());
        tokio::select! {
            _ = keepalive.tick() => {
                // A full outbound queue means packets are flowing: no keepalive needed.
                let _ = out.try_send(stream::keepalive());
            }
            _ = int.recv() => return Ok(stop(&out, session_id).await),
            _ = term.recv() => return Ok(stop(&out, session_id).await),
            accepted = listener.accept() => {
                let Ok((socket, _peer)) = accepted else { continue };
                let _ = socket.set_nodelay(true);
                next_id += 1;
                let id = next_id.to_string();
                let (rd, mut wr) = socket.into_split();
                let (writer, mut wrx) = mpsc::channel::<Bytes>(LOCAL_QUEUE);
                tokio::spawn(async move {
                    while let Some(data) = wrx.recv().await {
                        if wr.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                    let _ = wr.shutdown().await;
                });
                let reader = tokio::spawn(read_local(rd, id.clone(), out.clone(), eof_tx.clone()));
                conns.insert(id, LocalConn { writer, reader });
            }
            Some(id) = eof_rx.recv() => {
                conns.remove(&id);
            }
            permit = async move {
                match capacity {
                    Some(tx) => tx.reserve_owned().await.ok(),
                    None => std::future::pending().await,
                }
            }, if waiting.is_some() => {
                if let (Some(permit), Some((_, data))) = (permit, waiting.take()) {
                    permit.send(data);
                }
            }
            m = stream.inbound.message(), if waiting.is_none() => {
                let p = match m {
                    Ok(Some(p)) => p,
                    Ok(None) => return Err(ClientError::StreamEnded),
                    Err(status) => return Err(stream::from_status(&status)),
                };
                let id = p
                    .spec
                    .get(key::CLIENT_CONNECTION_ID)
                    .map(|raw| String::from_utf8_lossy(raw).into_owned())
                    .unwrap_or_default();
                match p.r#type.as_str() {
                    pt::CLIENT_TCP_CONNECTION_WRITE => match conns.get(&id) {
                        Some(conn) => match conn.writer.try_send(p.payload) {
                            Ok(()) => {}
                            // A local socket that stopped reading slows this relay (bounded).
                            Err(mpsc::error::TrySendError::Full(data)) => {
                                waiting = Some((conn.writer.clone(), data));
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        },
                        None => tracing::warn!(connection_id = %id, "data for an unknown local connection dropped"),
                    },
                    // The upstream ended: close the local socket and say so.
                    pt::CLIENT_TCP_CONNECTION_CLOSE if conns.remove(&id).is_some() => {
                        let out = out.clone();
                        tokio::spawn(async move {
                            let _ = out.send(tcp_packet(pt::AGENT_TCP_CONNECTION_CLOSE, &id, Bytes::new())).await;
                        });
                    }
                    pt::CLIENT_SESSION_CLOSE => {
                        return Ok(TerminalOutcome::closed(session_id, &p));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A local connection's packets, in order: the dial (`tcp.server_connect`, no data: the
/// upstream may speak first), its bytes in chunks of at most 32 KiB, then the close at EOF.
async fn read_local(
    mut rd: OwnedReadHalf,
    id: String,
    out: mpsc::Sender<Packet>,
    eof: mpsc::UnboundedSender<String>,
) {
    let mut dial = tcp_packet(pt::AGENT_TCP_CONNECTION_WRITE, &id, Bytes::new());
    dial.spec
        .insert(key::TCP_SERVER_CONNECT.into(), Bytes::new());
    if out.send(dial).await.is_err() {
        return;
    }
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        let mut limited = (&mut rd).take(CHUNK as u64);
        match limited.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let packet = tcp_packet(pt::AGENT_TCP_CONNECTION_WRITE, &id, buf.split().freeze());
                if out.send(packet).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = out
        .send(tcp_packet(
            pt::AGENT_TCP_CONNECTION_CLOSE,
            &id,
            Bytes::new(),
        ))
        .await;
    let _ = eof.send(id);
}

/// Ctrl-C: the session ends; every local and upstream socket goes with it.
async fn stop(out: &mpsc::Sender<Packet>, session_id: Option<String>) -> TerminalOutcome {
    let _ = out
        .send(stream::packet(pt::AGENT_SESSION_CLOSE, Bytes::new()))
        .await;
    TerminalOutcome {
        session_id,
        exit_code: 0,
        message: String::new(),
    }
}
