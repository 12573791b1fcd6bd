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
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

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

/// What a local connection's reader reports.
enum Local {
    Data(String, Bytes),
    Eof(String),
}

/// Relays local connections on `127.0.0.1:port` through the open session. `ready` gets the
/// address once listening.
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
    let (local_tx, mut local_rx) = mpsc::channel::<Local>(LOCAL_QUEUE);
    let mut writers: HashMap<String, mpsc::Sender<Bytes>> = HashMap::new();
    let mut next_id = 0u64;
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_PERIOD,
        KEEPALIVE_PERIOD,
    );
    let send = |stream: &ClientStream, p: Packet| {
        let tx = stream.tx.clone();
        async move { tx.send(p).await.map_err(|_| ClientError::StreamEnded) }
    };
    loop {
        tokio::select! {
            _ = keepalive.tick() => send(stream, stream::keepalive()).await?,
            _ = int.recv() => return Ok(stop(stream, session_id).await),
            _ = term.recv() => return Ok(stop(stream, session_id).await),
            accepted = listener.accept() => {
                let Ok((socket, _peer)) = accepted else { continue };
                let _ = socket.set_nodelay(true);
                next_id += 1;
                let id = next_id.to_string();
                // Dial first, without data: the upstream may speak first.
                let mut dial = tcp_packet(pt::AGENT_TCP_CONNECTION_WRITE, &id, Bytes::new());
                dial.spec.insert(key::TCP_SERVER_CONNECT.into(), Bytes::new());
                send(stream, dial).await?;
                let (mut rd, mut wr) = socket.into_split();
                let (wtx, mut wrx) = mpsc::channel::<Bytes>(LOCAL_QUEUE);
                writers.insert(id.clone(), wtx);
                tokio::spawn(async move {
                    while let Some(data) = wrx.recv().await {
                        if wr.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                    let _ = wr.shutdown().await;
                });
                let tx = local_tx.clone();
                tokio::spawn(async move {
                    let mut buf = BytesMut::with_capacity(CHUNK);
                    loop {
                        buf.reserve(CHUNK);
                        let mut limited = (&mut rd).take(CHUNK as u64);
                        match limited.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                if tx.send(Local::Data(id.clone(), buf.split().freeze())).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tx.send(Local::Eof(id)).await;
                });
            }
            local = local_rx.recv() => match local {
                Some(Local::Data(id, data)) => {
                    send(stream, tcp_packet(pt::AGENT_TCP_CONNECTION_WRITE, &id, data)).await?;
                }
                Some(Local::Eof(id)) => {
                    writers.remove(&id);
                    send(stream, tcp_packet(pt::AGENT_TCP_CONNECTION_CLOSE, &id, Bytes::new())).await?;
                }
                None => {}
            },
            m = stream.inbound.message() => {
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
                    pt::CLIENT_TCP_CONNECTION_WRITE => match writers.get(&id) {
                        Some(w) => {
                            // A local socket that stopped reading slows this relay (bounded).
                            let _ = w.send(p.payload).await;
                        }
                        None => tracing::warn!(connection_id = %id, "data for an unknown local connection dropped"),
                    },
                    // The upstream ended: close the local socket and say so.
                    pt::CLIENT_TCP_CONNECTION_CLOSE if writers.remove(&id).is_some() => {
                        send(stream, tcp_packet(pt::AGENT_TCP_CONNECTION_CLOSE, &id, Bytes::new())).await?;
                    }
                    pt::CLIENT_SESSION_CLOSE => {
                        return Ok(TerminalOutcome {
                            session_id,
                            exit_code: stream::exit_code(&p).unwrap_or(1),
                            message: String::from_utf8_lossy(&p.payload).into_owned(),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Ctrl-C: the session ends; every local and upstream socket goes with it.
async fn stop(stream: &ClientStream, session_id: Option<String>) -> TerminalOutcome {
    let _ = stream
        .tx
        .send(stream::packet(pt::AGENT_SESSION_CLOSE, Bytes::new()))
        .await;
    TerminalOutcome {
        session_id,
        exit_code: 0,
        message: String::new(),
    }
}
