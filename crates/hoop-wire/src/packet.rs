//! Typed packets: decoding gateway packets for the agent and encoding the agent's answers.
//!
//! Owns the mapping between hoop's stringly-typed `Packet {type, spec, payload}` and Rust enums.
//! Gob values inside the spec are decoded with `hoop-gob`; base64 environment values are left
//! encoded (the agent resolves them, since resolution depends on the agent's own environment).
//! Every decode path is total: malformed input becomes a [`DecodeError`], never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use hoop_gob::{AgentConnectionParams, GobError};

use crate::pb::{Packet, WirePacket, WireSpecEntry};
use crate::spec::{key, packet_type as pt};
use crate::system::SysKind;

/// Longest session id accepted. hoop mints UUIDs (36 bytes); API clients may pick their own.
const MAX_SESSION_ID_LEN: usize = 256;

/// Read access to a packet, whether it was decoded strictly ([`Packet`]) or leniently
/// ([`WirePacket`], which tolerates invalid UTF-8).
pub trait RawPacket {
    /// The packet type, as bytes.
    fn type_bytes(&self) -> &[u8];
    /// The value of a spec key. With duplicate keys the last one wins, as in a protobuf map.
    fn spec_value(&self, key: &str) -> Option<&Bytes>;
    /// The payload.
    fn payload_bytes(&self) -> &Bytes;
}

impl RawPacket for Packet {
    fn type_bytes(&self) -> &[u8] {
        self.r#type.as_bytes()
    }
    fn spec_value(&self, key: &str) -> Option<&Bytes> {
        self.spec.get(key)
    }
    fn payload_bytes(&self) -> &Bytes {
        &self.payload
    }
}

impl RawPacket for WirePacket {
    fn type_bytes(&self) -> &[u8] {
        &self.r#type
    }
    fn spec_value(&self, key: &str) -> Option<&Bytes> {
        self.spec
            .iter()
            .rev()
            .find(|entry| entry.key.as_ref() == key.as_bytes())
            .map(|entry| &entry.value)
    }
    fn payload_bytes(&self) -> &Bytes {
        &self.payload
    }
}

impl From<Packet> for WirePacket {
    fn from(p: Packet) -> Self {
        WirePacket {
            component: Bytes::from(p.component.into_bytes()),
            r#type: Bytes::from(p.r#type.into_bytes()),
            spec: p
                .spec
                .into_iter()
                .map(|(k, v)| WireSpecEntry {
                    key: Bytes::from(k.into_bytes()),
                    value: v,
                })
                .collect(),
            payload: p.payload,
        }
    }
}

/// A session id minted by the gateway (`gateway.session_id`). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// Validates a session id: 1 to 256 bytes of UTF-8 without control characters.
    pub fn parse(raw: &[u8]) -> Result<Self, DecodeErrorKind> {
        if raw.is_empty() {
            return Err(DecodeErrorKind::MissingSessionId);
        }
        if raw.len() > MAX_SESSION_ID_LEN {
            return Err(DecodeErrorKind::InvalidSessionId("longer than 256 bytes"));
        }
        let s = std::str::from_utf8(raw)
            .map_err(|_| DecodeErrorKind::InvalidSessionId("not valid UTF-8"))?;
        if s.chars().any(char::is_control) {
            return Err(DecodeErrorKind::InvalidSessionId(
                "contains control characters",
            ));
        }
        Ok(SessionId(Arc::from(s)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A terminal size from `AgentTerminalResizeTTY` (`"rows,cols,x,y"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

impl TermSize {
    /// The size used when the client never sent one.
    pub const DEFAULT: TermSize = TermSize {
        rows: 24,
        cols: 80,
        xpixel: 0,
        ypixel: 0,
    };

    /// Parses exactly four comma-separated decimal integers, `rows,cols,xpixel,ypixel`.
    pub fn parse(raw: &[u8]) -> Result<Self, DecodeErrorKind> {
        let bad =
            || DecodeErrorKind::BadResize(String::from_utf8_lossy(raw).chars().take(64).collect());
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = text.split(',').map(|p| p.trim().parse::<u16>());
        let mut next = || parts.next().ok_or_else(bad)?.map_err(|_| bad());
        let size = TermSize {
            rows: next()?,
            cols: next()?,
            xpixel: next()?,
            ypixel: next()?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(size)
    }

    /// Encodes as hoop's `"rows,cols,x,y"`.
    pub fn encode(&self) -> String {
        format!(
            "{},{},{},{}",
            self.rows, self.cols, self.xpixel, self.ypixel
        )
    }
}

/// A decoded `AgentSessionOpen`, as the gateway rebuilds it for the agent. `Debug` prints
/// the client's variable names, never their values.
#[derive(Clone, PartialEq)]
pub struct SessionOpen {
    pub session_id: SessionId,
    /// `gateway.connection_type`, e.g. `command-line`.
    pub connection_type: String,
    /// `agent.connection_params` (gob).
    pub params: AgentConnectionParams,
    /// `terminal.envvars` (gob `map[string]string`), values still base64.
    pub client_env: BTreeMap<String, String>,
    /// `client.request_port`, echoed back verbatim in `ClientSessionOpenOK`.
    pub request_port: Option<Bytes>,
    /// `jit.timeout`: the access duration the user asked for (`hoop connect -d`), when the
    /// gateway forwarded one that parses as a Go duration.
    pub jit_timeout: Option<std::time::Duration>,
}

impl fmt::Debug for SessionOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionOpen")
            .field("session_id", &self.session_id)
            .field("connection_type", &self.connection_type)
            .field("params", &self.params)
            .field("client_env", &self.client_env.keys().collect::<Vec<_>>())
            .field("request_port", &self.request_port.as_ref().map(Bytes::len))
            .field("jit_timeout", &self.jit_timeout)
            .finish()
    }
}

/// A packet addressed to the agent. `Debug` prints input as its length only (it is the user's
/// content) and a session open without client values.
#[derive(Clone, PartialEq)]
pub enum AgentPacket {
    GatewayConnectOk,
    FeatureFlags(BTreeMap<String, bool>),
    SessionOpen(Box<SessionOpen>),
    ExecWriteStdin {
        session_id: SessionId,
        data: Bytes,
    },
    TerminalWriteStdin {
        session_id: SessionId,
        data: Bytes,
    },
    TerminalResize {
        session_id: SessionId,
        size: TermSize,
    },
    SessionClose {
        session_id: SessionId,
    },
    /// `AgentTCPConnectionWrite`: bytes for the upstream socket of flow `connection_id`; the
    /// first packet of a flow dials it, and with `server_connect` it only dials (its payload
    /// is not written).
    TcpWrite {
        session_id: SessionId,
        connection_id: String,
        server_connect: bool,
        data: Bytes,
    },
    /// `AgentCloseTCPConnection`: the client closed flow `connection_id`.
    TcpClose {
        session_id: SessionId,
        connection_id: String,
    },
    KeepAlive,
    /// A system request (`Sys*`, §2.7); `request_id` is its `gateway.session_id`.
    SysRequest {
        kind: SysKind,
        request_id: SessionId,
        payload: Bytes,
    },
    /// A packet type this agent does not serve (protocol proxies, unknown types).
    Unsupported {
        packet_type: String,
        session_id: Option<SessionId>,
    },
}

impl fmt::Debug for AgentPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentPacket::GatewayConnectOk => f.write_str("GatewayConnectOk"),
            AgentPacket::FeatureFlags(flags) => f.debug_tuple("FeatureFlags").field(flags).finish(),
            AgentPacket::SessionOpen(open) => f.debug_tuple("SessionOpen").field(open).finish(),
            AgentPacket::ExecWriteStdin { session_id, data } => f
                .debug_struct("ExecWriteStdin")
                .field("session_id", session_id)
                .field("bytes", &data.len())
                .finish(),
            AgentPacket::TerminalWriteStdin { session_id, data } => f
                .debug_struct("TerminalWriteStdin")
                .field("session_id", session_id)
                .field("bytes", &data.len())
                .finish(),
            AgentPacket::TerminalResize { session_id, size } => f
                .debug_struct("TerminalResize")
                .field("session_id", session_id)
                .field("size", size)
                .finish(),
            AgentPacket::SessionClose { session_id } => f
                .debug_struct("SessionClose")
                .field("session_id", session_id)
                .finish(),
            AgentPacket::TcpWrite {
                session_id,
                connection_id,
                server_connect,
                data,
            } => f
                .debug_struct("TcpWrite")
                .field("session_id", session_id)
                .field("connection_id", connection_id)
                .field("server_connect", server_connect)
                .field("bytes", &data.len())
                .finish(),
            AgentPacket::TcpClose {
                session_id,
                connection_id,
            } => f
                .debug_struct("TcpClose")
                .field("session_id", session_id)
                .field("connection_id", connection_id)
                .finish(),
            AgentPacket::KeepAlive => f.write_str("KeepAlive"),
            AgentPacket::SysRequest {
                kind,
                request_id,
                payload,
            } => f
                .debug_struct("SysRequest")
                .field("kind", kind)
                .field("request_id", request_id)
                .field("bytes", &payload.len())
                .finish(),
            AgentPacket::Unsupported {
                packet_type,
                session_id,
            } => f
                .debug_struct("Unsupported")
                .field("packet_type", packet_type)
                .field("session_id", session_id)
                .finish(),
        }
    }
}

/// A packet addressed to the client (sent by the agent).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientPacket {
    KeepAlive,
    SessionOpenOk {
        session_id: SessionId,
        connection_type: String,
        request_port: Option<Bytes>,
        command: String,
    },
    Stdout {
        session_id: SessionId,
        data: Bytes,
    },
    Stderr {
        session_id: SessionId,
        data: Bytes,
    },
    SessionClose {
        session_id: SessionId,
        /// `None` only when decoding a close without a parsable code.
        exit_code: Option<i32>,
        message: Bytes,
    },
    /// `ClientTCPConnectionWrite`: upstream bytes of flow `connection_id`.
    TcpWrite {
        session_id: SessionId,
        connection_id: String,
        data: Bytes,
    },
    /// `ClientTCPConnectionClose`: the upstream side of flow `connection_id` ended.
    TcpClose {
        session_id: SessionId,
        connection_id: String,
    },
    /// The reply to a system request, echoing its id as `gateway.session_id`.
    SysResponse {
        kind: SysKind,
        request_id: SessionId,
        payload: Bytes,
    },
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("missing gateway.session_id")]
    MissingSessionId,
    #[error("invalid gateway.session_id: {0}")]
    InvalidSessionId(&'static str),
    #[error("internal error, failed decoding connection params: {0}")]
    ConnectionParams(GobError),
    #[error("missing agent.connection_params")]
    MissingConnectionParams,
    #[error("internal error, failed decoding client args: {0}")]
    ClientArgs(GobError),
    #[error("internal error, failed decoding client env vars: {0}")]
    ClientEnv(GobError),
    #[error("malformed terminal size {0:?}, expected \"rows,cols,x,y\"")]
    BadResize(String),
    #[error("malformed feature-flags JSON: {0}")]
    FeatureFlags(String),
    #[error("unparsable client.exit_code")]
    ExitCode,
    #[error("tcp connection id not found")]
    MissingConnectionId,
    #[error("unknown packet type")]
    UnknownType,
    #[error("payload of {0} bytes is larger than hoop's 17 MiB message limit")]
    Oversized(usize),
}

/// A packet that could not be decoded, with what is known about it for logging and replies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad {packet_type} packet: {kind}")]
pub struct DecodeError {
    /// The packet type, lossily decoded and cut to 64 characters (safe to log).
    pub packet_type: String,
    /// The session the packet was for, when that much could be read.
    pub session_id: Option<SessionId>,
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    /// Whether this was a session open the agent must refuse with a `ClientSessionClose`.
    pub fn is_session_open(&self) -> bool {
        self.packet_type == pt::AGENT_SESSION_OPEN
    }
}

/// The packet type for logs and messages: lossy UTF-8, control characters escaped (a newline in
/// a hostile type must not forge a log line in the human format), cut to 64 characters.
fn loggable_type(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .take(64)
        .collect()
}

fn session_id_of<P: RawPacket>(p: &P) -> Result<SessionId, DecodeErrorKind> {
    match p.spec_value(key::SESSION_ID) {
        None => Err(DecodeErrorKind::MissingSessionId),
        Some(raw) => SessionId::parse(raw),
    }
}

/// `client.connection_id`: a short printable id (hoop's CLI sends a decimal counter).
fn connection_id_of<P: RawPacket>(p: &P) -> Result<String, DecodeErrorKind> {
    let raw = p
        .spec_value(key::CLIENT_CONNECTION_ID)
        .filter(|raw| !raw.is_empty())
        .ok_or(DecodeErrorKind::MissingConnectionId)?;
    match std::str::from_utf8(raw) {
        Ok(id) if id.len() <= 64 && id.chars().all(|c| c.is_ascii_graphic()) => Ok(id.to_owned()),
        _ => Err(DecodeErrorKind::MissingConnectionId),
    }
}

fn lossy(raw: Option<&Bytes>) -> String {
    raw.map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

impl AgentPacket {
    /// Decodes a packet received by the agent.
    pub fn decode<P: RawPacket>(p: &P) -> Result<AgentPacket, DecodeError> {
        let raw_type = p.type_bytes();
        let packet_type = loggable_type(raw_type);
        let sid = session_id_of(p);
        let err = |kind: DecodeErrorKind, session_id: Option<SessionId>| DecodeError {
            packet_type: packet_type.clone(),
            session_id,
            kind,
        };
        let need_sid = || sid.clone().map_err(|kind| err(kind, None));
        let t = std::str::from_utf8(raw_type).unwrap_or("");
        let payload_len = p.payload_bytes().len();
        if payload_len > crate::spec::MAX_MESSAGE_SIZE {
            return Err(err(DecodeErrorKind::Oversized(payload_len), sid.ok()));
        }
        let packet = match t {
            pt::AGENT_GATEWAY_CONNECT_OK => AgentPacket::GatewayConnectOk,
            pt::GATEWAY_KEEP_ALIVE | pt::KEEP_ALIVE => AgentPacket::KeepAlive,
            pt::GATEWAY_FEATURE_FLAG_UPDATE => {
                let flags = match p.spec_value(key::FEATURE_FLAGS) {
                    None => BTreeMap::new(),
                    Some(raw) => serde_json::from_slice(raw)
                        .map_err(|e| err(DecodeErrorKind::FeatureFlags(e.to_string()), None))?,
                };
                AgentPacket::FeatureFlags(flags)
            }
            pt::AGENT_SESSION_OPEN => {
                let session_id = need_sid()?;
                let some = || Some(session_id.clone());
                let raw_params = p
                    .spec_value(key::CONNECTION_PARAMS)
                    .ok_or_else(|| err(DecodeErrorKind::MissingConnectionParams, some()))?;
                let params = hoop_gob::decode_connection_params(raw_params)
                    .map_err(|e| err(DecodeErrorKind::ConnectionParams(e), some()))?;
                let client_env = match p.spec_value(key::TERMINAL_ENVVARS) {
                    Some(raw) if !raw.is_empty() => hoop_gob::decode_string_map(raw)
                        .map_err(|e| err(DecodeErrorKind::ClientEnv(e), some()))?,
                    _ => BTreeMap::new(),
                };
                AgentPacket::SessionOpen(Box::new(SessionOpen {
                    session_id,
                    connection_type: lossy(p.spec_value(key::CONNECTION_TYPE)),
                    params,
                    client_env,
                    request_port: p.spec_value(key::REQUEST_PORT).cloned(),
                    jit_timeout: p
                        .spec_value(key::JIT_TIMEOUT)
                        .and_then(|raw| std::str::from_utf8(raw).ok())
                        .and_then(crate::go_duration::parse)
                        .filter(|d| !d.is_zero()),
                }))
            }
            pt::AGENT_EXEC_WRITE_STDIN => AgentPacket::ExecWriteStdin {
                session_id: need_sid()?,
                data: p.payload_bytes().clone(),
            },
            pt::AGENT_TERMINAL_WRITE_STDIN => AgentPacket::TerminalWriteStdin {
                session_id: need_sid()?,
                data: p.payload_bytes().clone(),
            },
            pt::AGENT_TERMINAL_RESIZE_TTY => {
                let session_id = need_sid()?;
                let size = TermSize::parse(p.payload_bytes())
                    .map_err(|kind| err(kind, Some(session_id.clone())))?;
                AgentPacket::TerminalResize { session_id, size }
            }
            pt::AGENT_SESSION_CLOSE => AgentPacket::SessionClose {
                session_id: need_sid()?,
            },
            pt::AGENT_TCP_CONNECTION_WRITE => {
                let session_id = need_sid()?;
                AgentPacket::TcpWrite {
                    connection_id: connection_id_of(p)
                        .map_err(|kind| err(kind, Some(session_id.clone())))?,
                    server_connect: p.spec_value(key::TCP_SERVER_CONNECT).is_some(),
                    data: p.payload_bytes().clone(),
                    session_id,
                }
            }
            pt::AGENT_TCP_CONNECTION_CLOSE => {
                let session_id = need_sid()?;
                AgentPacket::TcpClose {
                    connection_id: connection_id_of(p)
                        .map_err(|kind| err(kind, Some(session_id.clone())))?,
                    session_id,
                }
            }
            t if let Some(kind) = SysKind::from_request_type(t) => AgentPacket::SysRequest {
                kind,
                request_id: need_sid()?,
                payload: p.payload_bytes().clone(),
            },
            _ => AgentPacket::Unsupported {
                packet_type,
                session_id: sid.ok(),
            },
        };
        Ok(packet)
    }

    /// Encodes the packet as the gateway sends it.
    pub fn into_packet(self) -> Packet {
        let mut p = Packet::default();
        let set_sid = |p: &mut Packet, sid: &SessionId| {
            p.spec
                .insert(key::SESSION_ID.into(), Bytes::from(sid.as_str().to_owned()));
        };
        match self {
            AgentPacket::GatewayConnectOk => p.r#type = pt::AGENT_GATEWAY_CONNECT_OK.into(),
            AgentPacket::KeepAlive => p.r#type = pt::GATEWAY_KEEP_ALIVE.into(),
            AgentPacket::FeatureFlags(flags) => {
                p.r#type = pt::GATEWAY_FEATURE_FLAG_UPDATE.into();
                let json = serde_json::to_vec(&flags).unwrap_or_else(|_| b"{}".to_vec());
                p.spec.insert(key::FEATURE_FLAGS.into(), Bytes::from(json));
            }
            AgentPacket::SessionOpen(open) => {
                p.r#type = pt::AGENT_SESSION_OPEN.into();
                set_sid(&mut p, &open.session_id);
                p.spec.insert(
                    key::CONNECTION_TYPE.into(),
                    Bytes::from(open.connection_type.clone()),
                );
                p.spec.insert(
                    key::TERMINAL_ARGS.into(),
                    Bytes::from(hoop_gob::encode_string_slice(&open.params.client_args)),
                );
                p.spec.insert(
                    key::TERMINAL_ENVVARS.into(),
                    Bytes::from(hoop_gob::encode_string_map(&open.client_env)),
                );
                p.spec.insert(
                    key::CONNECTION_PARAMS.into(),
                    Bytes::from(hoop_gob::encode_connection_params(&open.params)),
                );
                if let Some(port) = open.request_port {
                    p.spec.insert(key::REQUEST_PORT.into(), port);
                }
                if let Some(d) = open.jit_timeout {
                    p.spec.insert(
                        key::JIT_TIMEOUT.into(),
                        Bytes::from(format!("{}ms", d.as_millis())),
                    );
                }
            }
            AgentPacket::ExecWriteStdin { session_id, data } => {
                p.r#type = pt::AGENT_EXEC_WRITE_STDIN.into();
                set_sid(&mut p, &session_id);
                p.payload = data;
            }
            AgentPacket::TerminalWriteStdin { session_id, data } => {
                p.r#type = pt::AGENT_TERMINAL_WRITE_STDIN.into();
                set_sid(&mut p, &session_id);
                p.payload = data;
            }
            AgentPacket::TerminalResize { session_id, size } => {
                p.r#type = pt::AGENT_TERMINAL_RESIZE_TTY.into();
                set_sid(&mut p, &session_id);
                p.payload = Bytes::from(size.encode());
            }
            AgentPacket::SessionClose { session_id } => {
                p.r#type = pt::AGENT_SESSION_CLOSE.into();
                set_sid(&mut p, &session_id);
            }
            AgentPacket::TcpWrite {
                session_id,
                connection_id,
                server_connect,
                data,
            } => {
                p.r#type = pt::AGENT_TCP_CONNECTION_WRITE.into();
                set_sid(&mut p, &session_id);
                p.spec
                    .insert(key::CLIENT_CONNECTION_ID.into(), Bytes::from(connection_id));
                if server_connect {
                    p.spec.insert(key::TCP_SERVER_CONNECT.into(), Bytes::new());
                }
                p.payload = data;
            }
            AgentPacket::TcpClose {
                session_id,
                connection_id,
            } => {
                p.r#type = pt::AGENT_TCP_CONNECTION_CLOSE.into();
                set_sid(&mut p, &session_id);
                p.spec
                    .insert(key::CLIENT_CONNECTION_ID.into(), Bytes::from(connection_id));
            }
            AgentPacket::SysRequest {
                kind,
                request_id,
                payload,
            } => {
                p.r#type = kind.request_type().into();
                set_sid(&mut p, &request_id);
                p.payload = payload;
            }
            AgentPacket::Unsupported {
                packet_type,
                session_id,
            } => {
                p.r#type = packet_type;
                if let Some(sid) = session_id {
                    set_sid(&mut p, &sid);
                }
            }
        }
        p
    }
}

impl ClientPacket {
    /// The session this packet belongs to, if any.
    pub fn session_id(&self) -> Option<&SessionId> {
        match self {
            ClientPacket::KeepAlive => None,
            ClientPacket::SessionOpenOk { session_id, .. }
            | ClientPacket::Stdout { session_id, .. }
            | ClientPacket::Stderr { session_id, .. }
            | ClientPacket::SessionClose { session_id, .. }
            | ClientPacket::TcpWrite { session_id, .. }
            | ClientPacket::TcpClose { session_id, .. } => Some(session_id),
            ClientPacket::SysResponse { request_id, .. } => Some(request_id),
        }
    }

    /// Encodes the packet as the agent sends it.
    pub fn into_packet(self) -> Packet {
        let mut p = Packet::default();
        let sid = |sid: SessionId| Bytes::from(sid.as_str().to_owned());
        match self {
            ClientPacket::KeepAlive => p.r#type = pt::GATEWAY_KEEP_ALIVE.into(),
            ClientPacket::SessionOpenOk {
                session_id,
                connection_type,
                request_port,
                command,
            } => {
                p.r#type = pt::CLIENT_SESSION_OPEN_OK.into();
                p.spec.insert(key::SESSION_ID.into(), sid(session_id));
                p.spec
                    .insert(key::CONNECTION_TYPE.into(), Bytes::from(connection_type));
                p.spec
                    .insert(key::REQUEST_PORT.into(), request_port.unwrap_or_default());
                p.spec.insert(key::COMMAND.into(), Bytes::from(command));
            }
            ClientPacket::Stdout { session_id, data } => {
                p.r#type = pt::CLIENT_WRITE_STDOUT.into();
                p.spec.insert(key::SESSION_ID.into(), sid(session_id));
                p.payload = data;
            }
            ClientPacket::Stderr { session_id, data } => {
                p.r#type = pt::CLIENT_WRITE_STDERR.into();
                p.spec.insert(key::SESSION_ID.into(), sid(session_id));
                p.payload = data;
            }
            ClientPacket::SessionClose {
                session_id,
                exit_code,
                message,
            } => {
                p.r#type = pt::CLIENT_SESSION_CLOSE.into();
                p.spec.insert(key::SESSION_ID.into(), sid(session_id));
                let code = exit_code.unwrap_or(crate::spec::INTERNAL_EXIT_CODE);
                p.spec
                    .insert(key::EXIT_CODE.into(), Bytes::from(code.to_string()));
                p.payload = message;
            }
            ClientPacket::TcpWrite {
                session_id,
                connection_id,
                data,
            } => {
                p.r#type = pt::CLIENT_TCP_CONNECTION_WRITE.into();
                p.spec.insert(key::SESSION_ID.into(), sid(session_id));
                p.spec
                    .insert(key::CLIENT_CONNECTION_ID.into(), Bytes::from(connection_id));
                p.payload = data;
            }
            ClientPacket::TcpClose {
                session_id,
                connection_id,
            } => {
                p.r#type = pt::CLIENT_TCP_CONNECTION_CLOSE.into();
                p.spec.insert(key::SESSION_ID.into(), sid(session_id));
                p.spec
                    .insert(key::CLIENT_CONNECTION_ID.into(), Bytes::from(connection_id));
            }
            ClientPacket::SysResponse {
                kind,
                request_id,
                payload,
            } => {
                p.r#type = kind.response_type().into();
                p.spec.insert(key::SESSION_ID.into(), sid(request_id));
                p.payload = payload;
            }
        }
        p
    }

    /// Decodes a packet sent by an agent (used by gateways and test fakes).
    pub fn decode<P: RawPacket>(p: &P) -> Result<ClientPacket, DecodeError> {
        let raw_type = p.type_bytes();
        let packet_type = loggable_type(raw_type);
        let t = std::str::from_utf8(raw_type).unwrap_or("");
        if t == pt::GATEWAY_KEEP_ALIVE || t == pt::KEEP_ALIVE {
            return Ok(ClientPacket::KeepAlive);
        }
        let session_id = session_id_of(p).map_err(|kind| DecodeError {
            packet_type: packet_type.clone(),
            session_id: None,
            kind,
        })?;
        let packet = match t {
            pt::CLIENT_SESSION_OPEN_OK => ClientPacket::SessionOpenOk {
                session_id,
                connection_type: lossy(p.spec_value(key::CONNECTION_TYPE)),
                request_port: p.spec_value(key::REQUEST_PORT).cloned(),
                command: lossy(p.spec_value(key::COMMAND)),
            },
            pt::CLIENT_WRITE_STDOUT => ClientPacket::Stdout {
                session_id,
                data: p.payload_bytes().clone(),
            },
            pt::CLIENT_WRITE_STDERR => ClientPacket::Stderr {
                session_id,
                data: p.payload_bytes().clone(),
            },
            pt::CLIENT_SESSION_CLOSE => ClientPacket::SessionClose {
                exit_code: p
                    .spec_value(key::EXIT_CODE)
                    .and_then(|raw| std::str::from_utf8(raw).ok())
                    .and_then(|s| s.trim().parse::<i32>().ok()),
                session_id,
                message: p.payload_bytes().clone(),
            },
            pt::CLIENT_TCP_CONNECTION_WRITE | pt::CLIENT_TCP_CONNECTION_CLOSE => {
                let connection_id = connection_id_of(p).map_err(|kind| DecodeError {
                    packet_type: packet_type.clone(),
                    session_id: Some(session_id.clone()),
                    kind,
                })?;
                if t == pt::CLIENT_TCP_CONNECTION_WRITE {
                    ClientPacket::TcpWrite {
                        session_id,
                        connection_id,
                        data: p.payload_bytes().clone(),
                    }
                } else {
                    ClientPacket::TcpClose {
                        session_id,
                        connection_id,
                    }
                }
            }
            t if let Some(kind) = SysKind::from_response_type(t) => ClientPacket::SysResponse {
                kind,
                request_id: session_id,
                payload: p.payload_bytes().clone(),
            },
            _ => {
                return Err(DecodeError {
                    packet_type,
                    session_id: Some(session_id),
                    kind: DecodeErrorKind::UnknownType,
                });
            }
        };
        Ok(packet)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn resize_parses_exactly_four_integers() {
        assert_eq!(
            TermSize::parse(b"40,120,0,0").unwrap(),
            TermSize {
                rows: 40,
                cols: 120,
                xpixel: 0,
                ypixel: 0
            }
        );
        for bad in [
            &b"40,120,0"[..],
            b"40,120,0,0,0",
            b"a,b,c,d",
            b"",
            b"70000,1,1,1",
            b"\xff",
        ] {
            assert!(TermSize::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn session_ids_are_validated() {
        assert!(SessionId::parse(b"").is_err());
        assert!(SessionId::parse(&[b'a'; 257]).is_err());
        assert!(SessionId::parse(b"\xff\xfe").is_err());
        assert!(SessionId::parse(b"a\nb").is_err());
        assert_eq!(sid("2f1c").as_str(), "2f1c");
    }

    #[test]
    fn agent_packets_round_trip_through_the_wire_form() {
        let packets = vec![
            AgentPacket::GatewayConnectOk,
            AgentPacket::KeepAlive,
            AgentPacket::ExecWriteStdin {
                session_id: sid("s1"),
                data: Bytes::from_static(b"\x00\xffbinary"),
            },
            AgentPacket::TerminalWriteStdin {
                session_id: sid("s1"),
                data: Bytes::from_static(b"\n"),
            },
            AgentPacket::TerminalResize {
                session_id: sid("s1"),
                size: TermSize {
                    rows: 30,
                    cols: 100,
                    xpixel: 1,
                    ypixel: 2,
                },
            },
            AgentPacket::SessionClose {
                session_id: sid("s1"),
            },
            AgentPacket::TcpWrite {
                session_id: sid("s1"),
                connection_id: "1".into(),
                server_connect: true,
                data: Bytes::new(),
            },
            AgentPacket::TcpWrite {
                session_id: sid("s1"),
                connection_id: "12".into(),
                server_connect: false,
                data: Bytes::from_static(b"\x00SELECT 1"),
            },
            AgentPacket::TcpClose {
                session_id: sid("s1"),
                connection_id: "12".into(),
            },
        ];
        for packet in packets {
            let wire: WirePacket = packet.clone().into_packet().into();
            assert_eq!(AgentPacket::decode(&wire).unwrap(), packet);
        }
    }

    #[test]
    fn tcp_packets_need_a_connection_id_and_round_trip() {
        let mut p = AgentPacket::TcpClose {
            session_id: sid("s1"),
            connection_id: "1".into(),
        }
        .into_packet();
        p.spec.remove(key::CLIENT_CONNECTION_ID);
        let wire: WirePacket = p.into();
        let e = AgentPacket::decode(&wire).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::MissingConnectionId);
        assert_eq!(e.session_id, Some(sid("s1")));
        assert_eq!(e.kind.to_string(), "tcp connection id not found");
        for packet in [
            ClientPacket::TcpWrite {
                session_id: sid("s2"),
                connection_id: "3".into(),
                data: Bytes::from_static(b"rows"),
            },
            ClientPacket::TcpClose {
                session_id: sid("s2"),
                connection_id: "3".into(),
            },
        ] {
            let wire: WirePacket = packet.clone().into_packet().into();
            assert_eq!(ClientPacket::decode(&wire).unwrap(), packet);
        }
    }

    #[test]
    fn debug_never_prints_client_values_or_input() {
        let open = AgentPacket::SessionOpen(Box::new(SessionOpen {
            session_id: sid("s3"),
            connection_type: "command-line".into(),
            params: AgentConnectionParams {
                env_vars: [("envvar:DB".to_string(), "Y29ubi1zZWNyZXQ=".to_string())].into(),
                client_args: vec!["arg-secret".into()],
                ..Default::default()
            },
            client_env: [(
                "envvar:TOKEN".to_string(),
                "Y2xpZW50LXNlY3JldA==".to_string(),
            )]
            .into(),
            request_port: None,
            jit_timeout: None,
        }));
        let text = format!("{open:?}");
        assert!(text.contains("TOKEN"), "{text}");
        for secret in ["Y2xpZW50LXNlY3JldA==", "Y29ubi1zZWNyZXQ=", "arg-secret"] {
            assert!(!text.contains(secret), "{text}");
        }
        let input = AgentPacket::ExecWriteStdin {
            session_id: sid("s3"),
            data: Bytes::from_static(b"select password"),
        };
        assert!(!format!("{input:?}").contains("password"));
    }

    #[test]
    fn session_open_round_trips_with_gob_params() {
        let params = AgentConnectionParams {
            connection_name: "local".into(),
            connection_type: "command-line".into(),
            cmd_list: vec!["bash".into()],
            client_args: vec!["-c".into(), "echo hi".into()],
            client_verb: "exec".into(),
            env_vars: [("envvar:A".to_string(), "Yg==".to_string())].into(),
            ..Default::default()
        };
        let open = AgentPacket::SessionOpen(Box::new(SessionOpen {
            session_id: sid("s2"),
            connection_type: "command-line".into(),
            params,
            client_env: [("envvar:FOO".to_string(), "YmFy".to_string())].into(),
            request_port: None,
            jit_timeout: Some(std::time::Duration::from_secs(1800)),
        }));
        let wire: WirePacket = open.clone().into_packet().into();
        assert_eq!(AgentPacket::decode(&wire).unwrap(), open);
        // hoop's CLI sends Go durations (`-d 30m`); a malformed one is ignored, not an error.
        for (raw, want) in [("30m0s", Some(1800)), ("bogus", None), ("0s", None)] {
            let mut p = open.clone().into_packet();
            p.spec.insert(key::JIT_TIMEOUT.into(), Bytes::from(raw));
            let AgentPacket::SessionOpen(o) = AgentPacket::decode(&p).unwrap() else {
                panic!("not an open");
            };
            assert_eq!(
                o.jit_timeout,
                want.map(std::time::Duration::from_secs),
                "{raw}"
            );
        }
        // A system request keeps its id (not a UUID) and decodes to its kind.
        let sys = AgentPacket::SysRequest {
            kind: SysKind::PgManagerApply,
            request_id: sid("federation-probe-1"),
            payload: Bytes::from_static(b"{}"),
        };
        assert_eq!(
            AgentPacket::decode(&sys.clone().into_packet()).unwrap(),
            sys
        );
        let reply = ClientPacket::SysResponse {
            kind: SysKind::PgManagerApply,
            request_id: sid("federation-probe-1"),
            payload: Bytes::from_static(b"sid: x"),
        };
        let p = reply.clone().into_packet();
        assert_eq!(p.r#type, "SysPgManagerApplyResponse");
        assert_eq!(ClientPacket::decode(&p).unwrap(), reply);
    }

    #[test]
    fn bad_packets_are_errors_not_panics() {
        let mut p = Packet {
            r#type: pt::AGENT_EXEC_WRITE_STDIN.into(),
            ..Default::default()
        };
        let e = AgentPacket::decode(&p).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::MissingSessionId);

        p.r#type = pt::AGENT_SESSION_OPEN.into();
        p.spec
            .insert(key::SESSION_ID.into(), Bytes::from_static(b"s3"));
        p.spec.insert(
            key::CONNECTION_PARAMS.into(),
            Bytes::from_static(b"\x07garbage"),
        );
        let e = AgentPacket::decode(&p).unwrap_err();
        assert!(e.is_session_open());
        assert_eq!(e.session_id, Some(sid("s3")));
        assert!(matches!(e.kind, DecodeErrorKind::ConnectionParams(_)));

        let wire = WirePacket {
            r#type: Bytes::from_static(b"\xff\xfeNotAType"),
            ..Default::default()
        };
        assert!(matches!(
            AgentPacket::decode(&wire).unwrap(),
            AgentPacket::Unsupported { .. }
        ));

        // A newline in a type cannot reach a log line unescaped.
        let wire = WirePacket {
            r#type: Bytes::from_static(b"Evil\nlevel=error forged\x1b[2J"),
            ..Default::default()
        };
        match AgentPacket::decode(&wire).unwrap() {
            AgentPacket::Unsupported { packet_type, .. } => {
                assert_eq!(packet_type, "Evil\\nlevel=error forged\\u{1b}[2J");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_close_encodes_decimal_exit_code() {
        let p = ClientPacket::SessionClose {
            session_id: sid("s4"),
            exit_code: Some(127),
            message: Bytes::from_static(b"not found"),
        }
        .into_packet();
        assert_eq!(p.spec[key::EXIT_CODE].as_ref(), b"127");
        assert_eq!(p.r#type, pt::CLIENT_SESSION_CLOSE);
    }
}
