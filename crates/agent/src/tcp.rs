//! `tcp` sessions (hoop-gateway-protocol.md §3.7): a raw TCP relay from the user's local
//! listener (`hoop connect`) to `HOST:PORT`, one upstream socket per client connection id.
//!
//! - The target comes from the connection's own `HOST` and `PORT` only (a client's `-e` cannot
//!   move it), and must match the connection's optional `TCP_ALLOW` list.
//! - At open: a liveness dial (5 s), then `ClientSessionOpenOK`; a failure closes the session
//!   with hoop's text.
//! - The first `AgentTCPConnectionWrite` of an id starts that connection's task, which dials
//!   (10 s); with `tcp.server_connect` it only dials, so servers that speak first (MySQL,
//!   SMTP) work, and other connections go on while it dials. Later packets are queued for
//!   that socket without waiting, so a connection whose upstream stops reading never holds
//!   up the session's other connections. The queue is bounded in bytes by the session's input
//!   budget (each packet carries its share until written); a budget that stays exhausted ends
//!   the session, as for any session whose process stops reading.
//! - Upstream bytes go back as `ClientTCPConnectionWrite` in chunks of at most 32 KiB; upstream
//!   EOF or a read error sends `ClientTCPConnectionClose` (hoop sends nothing on a clean EOF,
//!   which leaves the user's socket open: a quirk the spec asks a new agent to fix).
//! - `AgentCloseTCPConnection` closes that upstream socket, idempotently (hoop leaves it open
//!   until the session ends); closing the session closes every socket of the session.
//! - As hoop does, a failed dial or a failed upstream write ends the whole session with 254.
//!
//! **Into a dyno** (as `heroku ps:forward` does): a connection that names `HEROKU_APP` (and
//! `HEROKU_DYNO`, default `web.1`) instead of `HOST` relays to `127.0.0.1:PORT` inside that
//! dyno through Heroku Exec: one SSH connection to the exec proxy per session (the psexec
//! backend's key exchange and policy: `HEROKU_API_KEY`, `HEROKU_APPS`, `PSEXEC_AUTO_ENABLE`),
//! one `direct-tcpip` channel per relayed connection. Fir apps have no Heroku Exec and are
//! refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backend::{ExitStatus, SessionEnv};
use bytes::{Bytes, BytesMut};
use hoop_wire::{ClientPacket, SessionOpen};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::session::{SessionEvent, SessionOutput};

/// The connection variables that name the upstream.
pub const HOST_VAR: &str = "HOST";
pub const PORT_VAR: &str = "PORT";
/// Optional connection variable: `host:port` patterns the target must match (comma or space
/// separated; `*` as a whole host or port matches any, `*.example.com` any subdomain).
pub const ALLOW_VAR: &str = "TCP_ALLOW";
/// A dyno target instead of `HOST`: the app, and the dyno (default `web.1`).
pub const APP_VAR: &str = "HEROKU_APP";
pub const DYNO_VAR: &str = "HEROKU_DYNO";

/// The liveness dial at open (hoop: 5 s).
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);
/// The dial of each relayed connection (hoop: 10 s).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `ClientTCPConnectionWrite` payload (hoop's `io.Copy` buffer).
const CHUNK: usize = 32 * 1024;

/// Where a `tcp` session relays to: a host the agent reaches, or a port inside a dyno.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    /// `(app, dyno)`: `host` is then `127.0.0.1` inside that dyno.
    dyno: Option<(String, String)>,
}

impl Target {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Reads the target from the connection's own variables and checks `TCP_ALLOW`.
fn target(env: &SessionEnv) -> Result<Target, String> {
    let port = env.connection_str(PORT_VAR).map(str::trim).unwrap_or("");
    if let Some(app) = env.connection_str(APP_VAR).map(str::trim) {
        if env.connection_str(HOST_VAR).is_some() {
            return Err(format!(
                "the connection sets both {HOST_VAR} and {APP_VAR}: set {HOST_VAR} for a host the agent reaches, or {APP_VAR} (and {DYNO_VAR}) for a port inside a dyno"
            ));
        }
        let dyno = env
            .connection_str(DYNO_VAR)
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .unwrap_or("web.1");
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(format!(
                    "the connection's {PORT_VAR} ({port:?}) is not a port number; with {APP_VAR} it is the port inside the dyno"
                ));
            }
        };
        return Ok(Target {
            host: "127.0.0.1".to_owned(),
            port,
            dyno: Some((app.to_owned(), dyno.to_owned())),
        });
    }
    let host = env.connection_str(HOST_VAR).map(str::trim).unwrap_or("");
    if host.is_empty() || port.is_empty() {
        return Err(format!(
            "missing required environment for connection [{HOST_VAR}, {PORT_VAR}]: set both on the connection"
        ));
    }
    let valid_host = host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if !valid_host {
        return Err(format!(
            "the connection's {HOST_VAR} is not a host name or IP address"
        ));
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "the connection's {PORT_VAR} ({port:?}) is not a port number"
            ));
        }
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let target = Target {
        host,
        port,
        dyno: None,
    };
    if let Some(list) = env.connection_str(ALLOW_VAR)
        && !allowed(list, &target)
    {
        return Err(format!(
            "{}:{} is not in this connection's {ALLOW_VAR} list",
            target.host, target.port
        ));
    }
    Ok(target)
}

/// Whether `target` matches one of the `host:port` patterns in `list`.
fn allowed(list: &str, target: &Target) -> bool {
    list.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|pattern| {
            let Some((host, port)) = pattern.rsplit_once(':') else {
                return false;
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host_ok = host == "*"
                || host.eq_ignore_ascii_case(&target.host)
                || host.strip_prefix("*.").is_some_and(|suffix| {
                    target
                        .host
                        .to_ascii_lowercase()
                        .ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
                });
            let port_ok = port == "*" || port.parse::<u16>().is_ok_and(|p| p == target.port);
            host_ok && port_ok
        })
}

/// Why a relayed connection's task ended.
enum FlowEnd {
    /// The upstream side ended (EOF or a read error); the client was told.
    Upstream,
    /// The dial failed: hoop ends the whole session (the text is the session's message).
    DialFailed(String),
    /// Writing to the upstream failed: hoop ends the whole session.
    WriteFailed(std::io::Error),
}

/// One relayed connection: a task that dials, then copies both ways.
struct Flow {
    /// Client bytes for the upstream socket; dropping it shuts the write half. Unbounded in
    /// count, bounded in bytes: every packet carries its share of the session's input budget
    /// until it is written (or dropped with the flow), and the engine ends a session whose
    /// budget stays exhausted.
    tx: mpsc::UnboundedSender<Bytes>,
    task: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        // Closes the socket (or channel), both halves, and stops a dial in progress.
        self.task.abort();
    }
}

/// A relayed byte stream: a TCP socket, or a `direct-tcpip` channel into a dyno.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// How upstream connections are made.
enum Upstream {
    /// A TCP connection from the agent.
    Direct,
    /// A `direct-tcpip` channel on the session's Heroku Exec SSH connection.
    Dyno(Box<backend_ssh::Connection>),
}

impl Upstream {
    async fn dial(&self, target: &Target) -> Result<Box<dyn Stream>, String> {
        match self {
            Upstream::Direct => {
                let socket = TcpStream::connect(target.addr())
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = socket.set_nodelay(true);
                Ok(Box::new(socket))
            }
            Upstream::Dyno(conn) => {
                let channel = conn
                    .forward(&target.host, target.port)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Box::new(channel))
            }
        }
    }

    async fn close(&self) {
        if let Upstream::Dyno(conn) = self {
            conn.close().await;
        }
    }
}

/// The target for messages: `host=H, port=P`, plus the dyno when there is one.
fn shown(target: &Target) -> String {
    match &target.dyno {
        None => format!("host={}, port={}", target.host, target.port),
        Some((app, dyno)) => format!(
            "host={} (inside dyno {dyno} of app {app}), port={}",
            target.host, target.port
        ),
    }
}

/// A running `tcp` session.
pub(crate) struct TcpSession<'a> {
    pub(crate) router: &'a crate::router::Router,
    pub(crate) open: &'a SessionOpen,
    pub(crate) env: &'a SessionEnv,
    pub(crate) output: &'a Arc<SessionOutput>,
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) bytes_in: &'a Arc<AtomicU64>,
    pub(crate) bytes_out: &'a Arc<AtomicU64>,
}

impl TcpSession<'_> {
    /// Runs the session until the gateway closes it, the agent stops, or a relay fails.
    pub(crate) async fn run(self, events: mpsc::Receiver<SessionEvent>) -> ExitStatus {
        let target = match target(self.env) {
            Ok(t) => t,
            Err(message) => return ExitStatus::internal(message),
        };
        let upstream = match &target.dyno {
            None => Upstream::Direct,
            Some((app, dyno)) => {
                let Some(forwarder) = self.router.forwarder() else {
                    return ExitStatus::internal(
                        "this agent has no Heroku backends, so it cannot reach a dyno",
                    );
                };
                let connected = tokio::select! {
                    () = self.cancel.cancelled() => return ExitStatus::internal("session closed"),
                    r = forwarder.connect_for_forwarding(self.env, app, dyno) => r,
                };
                match connected {
                    Ok(conn) => Upstream::Dyno(Box::new(conn)),
                    Err(e) => return ExitStatus::from(e),
                }
            }
        };
        let (target, upstream) = (Arc::new(target), Arc::new(upstream));
        let status = self.relay(target, Arc::clone(&upstream), events).await;
        upstream.close().await;
        status
    }

    async fn relay(
        &self,
        target: Arc<Target>,
        upstream: Arc<Upstream>,
        mut events: mpsc::Receiver<SessionEvent>,
    ) -> ExitStatus {
        let live = tokio::select! {
            () = self.cancel.cancelled() => return ExitStatus::internal("session closed"),
            r = tokio::time::timeout(LIVENESS_TIMEOUT, upstream.dial(&target)) => r,
        };
        let reason = match live {
            Ok(Ok(probe)) => {
                drop(probe);
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("no answer within {LIVENESS_TIMEOUT:?}")),
        };
        if let Some(reason) = reason {
            return ExitStatus::internal(format!(
                "failed connecting to remote {}, reason={reason}",
                shown(&target)
            ));
        }
        let sid = self.open.session_id.clone();
        let opened = self
            .output
            .send(ClientPacket::SessionOpenOk {
                session_id: sid.clone(),
                connection_type: self.open.connection_type.clone(),
                request_port: self.open.request_port.clone(),
                command: String::new(),
            })
            .await;
        if opened.is_err() {
            return ExitStatus::internal("session closed");
        }
        tracing::info!(host = %target.host, port = target.port, "tcp session open");

        let mut flows: HashMap<String, Flow> = HashMap::new();
        let mut next_serial = 0u64;
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, u64, FlowEnd)>();
        // No branch below awaits in its handler (STYLE 16): a dial runs in its flow's task,
        // and client bytes go to the flow's queue without waiting, so one connection whose
        // upstream stops reading never holds up the session's others, nor a close.
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return ExitStatus::internal("session closed"),
                Some((id, serial, end)) = ended_rx.recv() => match end {
                    FlowEnd::WriteFailed(e) => {
                        return ExitStatus::internal(format!(
                            "failed writing to tcp connection, reason={e}"
                        ));
                    }
                    FlowEnd::DialFailed(reason) => {
                        return ExitStatus::internal(format!(
                            "failed connecting to internal service, reason=failed dialing server: {reason}"
                        ));
                    }
                    FlowEnd::Upstream => {
                        tracing::debug!(connection_id = %id, serial, "upstream ended");
                    }
                },
                event = events.recv() => match event {
                    None => return ExitStatus::internal("session closed"),
                    Some(SessionEvent::TcpWrite { connection_id, server_connect, data }) => {
                        self.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                        let fresh = !flows.contains_key(&connection_id);
                        if fresh {
                            next_serial += 1;
                            let flow = self.start_flow(
                                Arc::clone(&upstream),
                                Arc::clone(&target),
                                &connection_id,
                                next_serial,
                                ended_tx.clone(),
                            );
                            flows.insert(connection_id.clone(), flow);
                        }
                        if (fresh && server_connect) || data.is_empty() {
                            continue;
                        }
                        let Some(flow) = flows.get(&connection_id) else { continue };
                        if flow.tx.send(data).is_err() {
                            // The writer ended: its reason is on its way through `ended_rx`.
                            tracing::debug!(connection_id = %connection_id, "write after the upstream writer ended");
                        }
                    }
                    Some(SessionEvent::TcpClose { connection_id }) => {
                        if flows.remove(&connection_id).is_some() {
                            tracing::debug!(connection_id = %connection_id, "tcp connection closed by the client");
                        }
                    }
                    Some(other) => {
                        tracing::debug!(event = ?std::mem::discriminant(&other), "ignoring a non-tcp packet in a tcp session");
                    }
                },
            }
        }
    }

    /// Starts a relayed connection: its task dials (bounded), then copies upstream bytes to
    /// the client and queued client bytes to the upstream, each direction on its own.
    fn start_flow(
        &self,
        upstream: Arc<Upstream>,
        target: Arc<Target>,
        id: &str,
        serial: u64,
        ended: mpsc::UnboundedSender<(String, u64, FlowEnd)>,
    ) -> Flow {
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let output = Arc::clone(self.output);
        let sid = self.open.session_id.clone();
        let bytes_out = Arc::clone(self.bytes_out);
        let id = id.to_owned();
        let task = tokio::spawn(async move {
            let socket = match tokio::time::timeout(DIAL_TIMEOUT, upstream.dial(&target)).await {
                Ok(Ok(socket)) => socket,
                Ok(Err(e)) => {
                    let _ = ended.send((id, serial, FlowEnd::DialFailed(e)));
                    return;
                }
                Err(_) => {
                    let reason = format!("no answer within {DIAL_TIMEOUT:?}");
                    let _ = ended.send((id, serial, FlowEnd::DialFailed(reason)));
                    return;
                }
            };
            tracing::debug!(connection_id = %id, "tcp connection dialed");
            let (mut rd, mut wr) = tokio::io::split(socket);
            let read = async {
                let mut buf = BytesMut::with_capacity(CHUNK);
                loop {
                    buf.reserve(CHUNK);
                    let mut limited = (&mut rd).take(CHUNK as u64);
                    match limited.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                            let packet = ClientPacket::TcpWrite {
                                session_id: sid.clone(),
                                connection_id: id.clone(),
                                data: buf.split().freeze(),
                            };
                            if output.send(packet).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = output
                    .send(ClientPacket::TcpClose {
                        session_id: sid.clone(),
                        connection_id: id.clone(),
                    })
                    .await;
                let _ = ended.send((id.clone(), serial, FlowEnd::Upstream));
            };
            let write = async {
                while let Some(data) = rx.recv().await {
                    if let Err(e) = wr.write_all(&data).await {
                        let _ = ended.send((id.clone(), serial, FlowEnd::WriteFailed(e)));
                        return;
                    }
                }
                // The client closed this connection: half-close, as the socket goes.
                let _ = wr.shutdown().await;
            };
            tokio::join!(read, write);
        });
        Flow { tx, task }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
            dyno: None,
        }
    }

    #[test]
    fn allow_lists_match_host_and_port() {
        let list = "db.internal:5432, *.redis.example.com:6379 127.0.0.1:*";
        assert!(allowed(list, &t("db.internal", 5432)));
        assert!(allowed(list, &t("DB.internal", 5432)));
        assert!(!allowed(list, &t("db.internal", 5433)));
        assert!(allowed(list, &t("a.redis.example.com", 6379)));
        assert!(!allowed(list, &t("redis.example.com", 6379)));
        assert!(!allowed(list, &t("evil-redis.example.com", 6379)));
        assert!(allowed(list, &t("127.0.0.1", 1)));
        assert!(!allowed("", &t("127.0.0.1", 1)));
        assert!(!allowed("nonsense", &t("127.0.0.1", 1)));
    }
}
