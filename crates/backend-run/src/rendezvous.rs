//! The rendezvous client (heroku-protocols.md §3): TLS to the `attach_url`'s host and port
//! with the certificate verified, the secret line, exactly one ack line read, then raw bytes
//! both ways. Output that arrives in the same read as the ack is returned, not dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use url::Url;

/// Longest ack line accepted.
const MAX_ACK: usize = 1024;

/// Why the rendezvous could not be established.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// Holds the URL without its path and query, which are the dyno's secret.
    #[error("the dyno's attach URL ({0}) is not a rendezvous:// URL with a host")]
    BadUrl(String),
    #[error(
        "the dyno offers the SSH attach path ({0}), used by Shield spaces and run:inside; dynoagent does not support it yet"
    )]
    SshAttach(String),
    #[error("cannot reach rendezvous {addr} within {timeout:?} (is outbound port {port} blocked?)")]
    ConnectTimeout {
        addr: String,
        port: u16,
        timeout: Duration,
    },
    #[error("cannot reach rendezvous {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with rendezvous {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("timeout awaiting the dyno: no answer from rendezvous within {0:?}")]
    AckTimeout(Duration),
    #[error("rendezvous closed the connection before the dyno attached")]
    ClosedBeforeAck,
    #[error("rendezvous sent an over-long first line")]
    BadAck,
    #[error("rendezvous I/O failed: {0}")]
    Io(String),
}

/// A connected rendezvous stream, after the ack.
#[derive(Debug)]
pub struct Rendezvous {
    pub stream: TlsStream<TcpStream>,
    /// Bytes that followed the ack in the same read: the first output, to forward.
    pub leftover: Bytes,
}

/// TLS settings and timeouts for rendezvous.
#[derive(Clone, Debug)]
pub struct RendezvousConfig {
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    /// How long to wait for the dyno to attach (the ack).
    pub ack_timeout: Duration,
}

impl RendezvousConfig {
    /// System roots plus `extra_roots_pem` (the emulator's CA, for tests and `dynoagent dev`).
    pub fn new(extra_roots_pem: Option<&[u8]>) -> Result<RendezvousConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(pem) = extra_roots_pem {
            let mut reader = std::io::Cursor::new(pem);
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| format!("invalid CA PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable CA certificate: {e}"))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(RendezvousConfig {
            tls: Arc::new(tls),
            connect_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(120),
        })
    }
}

/// An attach URL fit for messages: scheme and host only. Its path and query are the
/// rendezvous secret, which would let anyone attach to the dyno.
fn shown(attach_url: &str) -> String {
    match Url::parse(attach_url) {
        Ok(url) => format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("")),
        Err(_) => "unparsable, not shown".to_owned(),
    }
}

/// Connects to `attach_url`, sends the secret, and reads the one-line ack.
pub async fn connect(
    attach_url: &str,
    config: &RendezvousConfig,
) -> Result<Rendezvous, RendezvousError> {
    let url = Url::parse(attach_url).map_err(|_| RendezvousError::BadUrl(shown(attach_url)))?;
    match url.scheme() {
        "rendezvous" => {}
        "http" | "https" => return Err(RendezvousError::SshAttach(url.scheme().to_owned())),
        _ => return Err(RendezvousError::BadUrl(shown(attach_url))),
    }
    let host = url
        .host_str()
        .ok_or_else(|| RendezvousError::BadUrl(shown(attach_url)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(5000);
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut secret = url.path().trim_start_matches('/').to_owned();
    if let Some(q) = url.query() {
        secret.push('?');
        secret.push_str(q);
    }

    let tcp = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(&addr)).await {
        Err(_) => {
            return Err(RendezvousError::ConnectTimeout {
                addr,
                port,
                timeout: config.connect_timeout,
            });
        }
        Ok(Err(e)) => {
            return Err(RendezvousError::Connect {
                addr,
                reason: e.to_string(),
            });
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.clone())
        .map_err(|_| RendezvousError::BadUrl(shown(attach_url)))?;
    let connector = TlsConnector::from(Arc::clone(&config.tls));
    let mut stream = tokio::time::timeout(config.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| RendezvousError::ConnectTimeout {
            addr: addr.clone(),
            port,
            timeout: config.connect_timeout,
        })?
        .map_err(|e| RendezvousError::Tls {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;

    stream
        .write_all(format!("{secret}\r\n").as_bytes())
        .await
        .map_err(|e| RendezvousError::Io(e.to_string()))?;
    stream
        .flush()
        .await
        .map_err(|e| RendezvousError::Io(e.to_string()))?;

    let read_ack = async {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let leftover = buf.split_off(pos + 1).freeze();
                return Ok(leftover);
            }
            if buf.len() > MAX_ACK {
                return Err(RendezvousError::BadAck);
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| RendezvousError::Io(e.to_string()))?;
            if n == 0 {
                return Err(RendezvousError::ClosedBeforeAck);
            }
        }
    };
    let leftover = tokio::time::timeout(config.ack_timeout, read_ack)
        .await
        .map_err(|_| RendezvousError::AckTimeout(config.ack_timeout))??;
    Ok(Rendezvous { stream, leftover })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_attach_urls_are_reported_without_their_secret() {
        let config = RendezvousConfig::new(None).unwrap();
        for url in [
            "ftp://rendezvous.example.com/rv-secret-1",
            "rendezvous:///rv-secret-1",
            "rendezvous://rv-secret-1 with spaces",
            "not a url rv-secret-1",
        ] {
            let e = connect(url, &config).await.err().unwrap().to_string();
            assert!(!e.contains("rv-secret"), "{url}: {e}");
        }
    }
}
