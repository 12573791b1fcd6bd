//! Opening a client `Connect` stream: the gateway address, the channel, hoop's CLI metadata
//! (`authorization`, `origin=client`, `verb`, `connection-name`) and the 17 MiB limits.
//!
//! Owns dialing only; what is sent on the stream belongs to `exec` and `terminal`.

use std::time::Duration;

use bytes::Bytes;
use hoop_wire::pb::Packet;
use hoop_wire::pb::transport_client::TransportClient;
use hoop_wire::spec::{
    MAX_INBOUND_MESSAGE_SIZE, MAX_MESSAGE_SIZE, metadata as md, packet_type as pt,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Endpoint;
use tonic::{Code, Status, Streaming};

use crate::{ClientConfig, ClientError};

/// Packets queued towards the gateway. Overflow policy: backpressure (the sender waits).
const OUTBOUND_QUEUE: usize = 16;

const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// One open `Connect` stream.
pub(crate) struct ClientStream {
    pub tx: mpsc::Sender<Packet>,
    pub inbound: Streaming<Packet>,
}

/// `http://host:port` for any accepted spelling of the gateway address.
pub(crate) fn gateway_url(raw: &str) -> Result<String, ClientError> {
    let raw = raw.trim().trim_end_matches('/');
    let rest = match raw.split_once("://") {
        Some(("http" | "grpc", rest)) => rest,
        Some((scheme @ ("https" | "grpcs" | "wss"), _)) => {
            return Err(ClientError::TlsUnsupported(scheme.to_owned()));
        }
        Some(_) => return Err(ClientError::InvalidGateway(raw.to_owned())),
        None => raw,
    };
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(ClientError::InvalidGateway(raw.to_owned()));
    }
    Ok(format!("http://{rest}"))
}

pub(crate) fn from_status(status: &Status) -> ClientError {
    let message: String = status.message().chars().take(300).collect();
    match status.code() {
        Code::Unauthenticated => ClientError::Unauthenticated(message),
        Code::Unavailable if message.contains("error trying to connect") => ClientError::Dial {
            addr: String::new(),
            reason: message,
        },
        _ => ClientError::Refused(format!("{:?}: {message}", status.code())),
    }
}

/// Dials the gateway and opens a stream for `verb` on `connection`.
pub(crate) async fn open(
    config: &ClientConfig,
    verb: &str,
    connection: &str,
) -> Result<ClientStream, ClientError> {
    let url = gateway_url(&config.gateway)?;
    let dial = |reason: String| ClientError::Dial {
        addr: url.clone(),
        reason,
    };
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|_| ClientError::InvalidGateway(config.gateway.clone()))?
        .connect_timeout(DIAL_TIMEOUT)
        .tcp_nodelay(true)
        .user_agent(format!("hoopcli/{} dynoctl", env!("CARGO_PKG_VERSION")))
        .map_err(|e| dial(e.to_string()))?
        .connect()
        .await
        .map_err(|e| dial(error_chain(&e)))?;
    let mut client = TransportClient::new(channel)
        .max_decoding_message_size(MAX_INBOUND_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE + 64 * 1024);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let meta = request.metadata_mut();
    let auth = AsciiMetadataValue::try_from(format!("Bearer {}", config.token))
        .map_err(|_| ClientError::BadToken)?;
    meta.insert(md::AUTHORIZATION, auth);
    for (k, v) in [
        (md::ORIGIN, md::ORIGIN_CLIENT),
        (md::VERB, verb),
        (md::CONNECTION_NAME, connection),
    ] {
        let value = AsciiMetadataValue::try_from(v)
            .map_err(|_| ClientError::Input(format!("invalid {k} {v:?}")))?;
        meta.insert(k, value);
    }
    let response = client
        .connect(request)
        .await
        .map_err(|s| match from_status(&s) {
            ClientError::Dial { reason, .. } => dial(reason),
            other => other,
        })?;
    Ok(ClientStream {
        tx,
        inbound: response.into_inner(),
    })
}

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

/// A packet of `packet_type` with `payload` and no spec.
pub(crate) fn packet(packet_type: &str, payload: Bytes) -> Packet {
    Packet {
        r#type: packet_type.into(),
        payload,
        ..Default::default()
    }
}

/// hoop's application-level keepalive.
pub(crate) fn keepalive() -> Packet {
    packet(pt::GATEWAY_KEEP_ALIVE, Bytes::new())
}

/// `client.exit_code` of a close, if present and parsable.
pub(crate) fn exit_code(p: &Packet) -> Option<i32> {
    p.spec
        .get(hoop_wire::spec::key::EXIT_CODE)
        .and_then(|raw| std::str::from_utf8(raw).ok())
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hoop_style_gateway_addresses() {
        assert_eq!(
            gateway_url("127.0.0.1:8010").unwrap(),
            "http://127.0.0.1:8010"
        );
        assert_eq!(gateway_url("grpc://h:1/").unwrap(), "http://h:1");
        assert_eq!(gateway_url("http://h:1").unwrap(), "http://h:1");
        assert!(matches!(
            gateway_url("grpcs://h:1"),
            Err(ClientError::TlsUnsupported(_))
        ));
        assert!(gateway_url("h").is_err());
        assert!(gateway_url("ftp://h:1").is_err());
    }
}
