//! `dynoctl exec`: a one-off command, as hoop's CLI runs it (hoop-gateway-protocol.md §3.3).
//!
//! Input: piped stdin is read fully (and `-i`/`-f` are then refused), else the `-i` text, else
//! the `-f` file, else nothing. The session is opened with `AgentSessionOpen` (spec
//! `terminal.args` as gob `[]string`, `terminal.envvars` as gob `map[string]string` with base64
//! values, payload = input); after `ClientSessionOpenOK` the input goes again as
//! `AgentExecWriteStdin`. Output and errors are written byte-exact; the exit code is
//! `client.exit_code`, or 254 when it is missing or unparsable.
//!
//! This module does not touch the process's real stdio: callers pass the writers.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use hoop_wire::pb::Packet;
use hoop_wire::spec::{KEEPALIVE_PERIOD, MAX_MESSAGE_SIZE, key, packet_type as pt};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::stream::{self, ClientStream};
use crate::{ClientConfig, ClientError, INTERNAL_EXIT_CODE};

/// Room left in a 17 MiB message for the spec around the input.
const SPEC_ROOM: usize = 64 * 1024;

/// A one-off command.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    /// The connection name.
    pub connection: String,
    /// The process's whole stdin.
    pub input: Bytes,
    /// Arguments appended to the connection's command (after `--`).
    pub args: Vec<String>,
    /// `-e KEY=VAL` pairs.
    pub env: BTreeMap<String, String>,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The gateway's session id (from `ClientSessionOpenOK`), if the session got that far.
    pub session_id: Option<String>,
    /// `client.exit_code`, or 254 when it was missing or unparsable.
    pub exit_code: i32,
    /// The close payload (an error text; empty on success).
    pub message: String,
}

/// Whether stdin is piped, by hoop's rule: not a character device, or a size above zero.
pub fn stdin_is_piped() -> bool {
    match nix::sys::stat::fstat(std::io::stdin()) {
        Ok(st) => {
            let is_char = (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFCHR;
            !is_char || st.st_size > 0
        }
        Err(_) => false,
    }
}

/// Reads the whole of stdin (for piped input).
pub fn read_input() -> Result<Vec<u8>, ClientError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take((MAX_MESSAGE_SIZE + 1) as u64)
        .read_to_end(&mut buf)
        .map_err(|e| ClientError::Input(format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

/// Picks the input as hoop's CLI does: `piped` stdin (already read), else `text` (`-i`), else
/// `file` (`-f`), else empty.
pub fn resolve_input(
    piped: Option<Vec<u8>>,
    text: Option<&str>,
    file: Option<&Path>,
) -> Result<Bytes, ClientError> {
    let input =
        match (piped, text, file) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ClientError::Input(
                    "stdin is piped: -i and -f cannot be used with piped input".into(),
                ));
            }
            (_, Some(_), Some(_)) => {
                return Err(ClientError::Input("use either -i or -f, not both".into()));
            }
            (Some(data), None, None) => Bytes::from(data),
            (None, Some(text), None) => Bytes::from(text.to_owned()),
            (None, None, Some(path)) => Bytes::from(std::fs::read(path).map_err(|e| {
                ClientError::Input(format!("cannot read -f {}: {e}", path.display()))
            })?),
            (None, None, None) => Bytes::new(),
        };
    if input.len() > MAX_MESSAGE_SIZE - SPEC_ROOM {
        return Err(ClientError::InputTooLarge(input.len()));
    }
    Ok(input)
}

/// Parses `KEY=VALUE` from `-e`.
pub fn parse_env(raw: &str) -> Result<(String, String), ClientError> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(ClientError::InvalidEnv(raw.chars().take(64).collect())),
    }
}

/// The spec hoop's CLI sends with its session open and its input.
pub(crate) fn session_spec(
    args: &[String],
    env: &BTreeMap<String, String>,
) -> std::collections::HashMap<String, Bytes> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let envvars: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (format!("envvar:{k}"), b64.encode(v.as_bytes())))
        .collect();
    let mut spec = std::collections::HashMap::new();
    spec.insert(
        key::TERMINAL_ARGS.to_owned(),
        Bytes::from(hoop_gob::encode_string_slice(args)),
    );
    spec.insert(
        key::TERMINAL_ENVVARS.to_owned(),
        Bytes::from(hoop_gob::encode_string_map(&envvars)),
    );
    spec
}

async fn send(stream: &ClientStream, p: Packet) -> Result<(), ClientError> {
    stream
        .tx
        .send(p)
        .await
        .map_err(|_| ClientError::StreamEnded)
}

/// Runs a one-off command: output to `stdout`, errors to `stderr`, byte-exact. Returns when
/// the gateway closes the session. An offline agent is [`ClientError::AgentOffline`].
pub async fn exec<O, E>(
    config: &ClientConfig,
    request: ExecRequest,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<ExecOutcome, ClientError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    if request.input.len() > MAX_MESSAGE_SIZE - SPEC_ROOM {
        return Err(ClientError::InputTooLarge(request.input.len()));
    }
    let mut stream = stream::open(config, "exec", &request.connection).await?;
    let spec = session_spec(&request.args, &request.env);
    let mut open = stream::packet(pt::AGENT_SESSION_OPEN, request.input.clone());
    open.spec = spec.clone();
    send(&stream, open).await?;

    let mut session_id = None;
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_PERIOD,
        KEEPALIVE_PERIOD,
    );
    loop {
        let message = tokio::select! {
            _ = keepalive.tick() => {
                // Not awaited: a full queue is traffic enough, and a gone request stream is
                // the reply stream's to report (below).
                let _ = stream.tx.try_send(stream::keepalive());
                continue;
            }
            m = stream.inbound.message() => m,
        };
        let p = match message {
            Ok(Some(p)) => p,
            Ok(None) => return Err(ClientError::StreamEnded),
            Err(status) => return Err(stream::from_status(&status)),
        };
        match p.r#type.as_str() {
            pt::CLIENT_SESSION_OPEN_OK => {
                let sid = p.spec.get(key::SESSION_ID).cloned().unwrap_or_default();
                session_id = Some(String::from_utf8_lossy(&sid).into_owned());
                let mut stdin = stream::packet(pt::AGENT_EXEC_WRITE_STDIN, request.input.clone());
                stdin.spec = spec.clone();
                stdin.spec.insert(key::SESSION_ID.to_owned(), sid);
                // The gateway may have ended the session (and the request stream) already,
                // with its close still to be read: that close, not this send, says how it ended.
                let _ = stream.tx.send(stdin).await;
            }
            pt::CLIENT_WRITE_STDOUT => {
                write(stdout, &p.payload).await?;
            }
            pt::CLIENT_WRITE_STDERR => {
                write(stderr, &p.payload).await?;
            }
            pt::CLIENT_SESSION_CLOSE => {
                if session_id.is_none() {
                    session_id = p
                        .spec
                        .get(key::SESSION_ID)
                        .map(|s| String::from_utf8_lossy(s).into_owned());
                }
                return Ok(ExecOutcome {
                    session_id,
                    exit_code: stream::exit_code(&p).unwrap_or(INTERNAL_EXIT_CODE),
                    message: String::from_utf8_lossy(&p.payload).into_owned(),
                });
            }
            pt::CLIENT_SESSION_OPEN_AGENT_OFFLINE => {
                return Err(ClientError::AgentOffline(request.connection));
            }
            pt::CLIENT_SESSION_OPEN_WAITING_APPROVAL => {
                let note = format!(
                    "waiting for approval: {}\n",
                    String::from_utf8_lossy(&p.payload)
                );
                write(stderr, note.as_bytes()).await?;
            }
            other => tracing::debug!(packet_type = other, "packet ignored"),
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<(), ClientError> {
    w.write_all(data).await.map_err(ClientError::Output)?;
    w.flush().await.map_err(ClientError::Output)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn input_follows_hoops_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in");
        std::fs::write(&file, b"from file\x00").unwrap();
        assert_eq!(
            resolve_input(Some(b"piped".to_vec()), None, None).unwrap(),
            &b"piped"[..]
        );
        assert!(resolve_input(Some(vec![]), Some("x"), None).is_err());
        assert!(resolve_input(Some(vec![]), None, Some(&file)).is_err());
        assert_eq!(
            resolve_input(None, Some("text"), None).unwrap(),
            &b"text"[..]
        );
        assert_eq!(
            resolve_input(None, None, Some(&file)).unwrap(),
            &b"from file\x00"[..]
        );
        assert!(resolve_input(None, Some("a"), Some(&file)).is_err());
        assert!(resolve_input(None, None, None).unwrap().is_empty());
    }

    #[test]
    fn env_pairs_need_a_key() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), String::new()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn spec_is_gob_with_base64_env_values() {
        let env = BTreeMap::from([("K".to_owned(), "v".to_owned())]);
        let spec = session_spec(&["-c".into(), "x".into()], &env);
        let args = hoop_gob::decode_string_slice(&spec[key::TERMINAL_ARGS]).unwrap();
        assert_eq!(args, vec!["-c", "x"]);
        let envvars = hoop_gob::decode_string_map(&spec[key::TERMINAL_ENVVARS]).unwrap();
        assert_eq!(envvars["envvar:K"], "dg==");
    }
}
