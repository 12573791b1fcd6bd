//! The SSH attach path (heroku-protocols.md §3.9): an `https://` `attach_url` (Fir apps, Shield
//! Private Spaces, `run:inside`) is opened with an HTTP/1.1 `GET` carrying `Connection: Upgrade`
//! and `Upgrade: tcp` over TLS that is verified (unlike the CLI's `rejectUnauthorized = false`),
//! and the upgraded connection then carries SSH, authenticated with a key registered on the
//! Heroku account (§3.9.6).
//!
//! hyper's HTTP/1 client does the exchange, so the response is parsed by a maintained HTTP
//! implementation and any bytes that follow the `101`'s header block in the same read (the SSH
//! greeting) are kept in the upgraded stream rather than dropped, as CLI 11.10.0 drops them.
//!
//! Answers: `101` with both `Connection: Upgrade` and `Upgrade: tcp` → SSH; `403` → Heroku's
//! IP-restriction message; anything else → an error carrying the status. The whole exchange is
//! bounded; nothing here waits without a limit. Messages never show the URL's path or query
//! (the attach secret).

use std::sync::Arc;
use std::time::Duration;

use backend_ssh::{ClientOptions, Connection, HostKeyPolicy, PrivateKey, SshError, Target};
use hyper::StatusCode;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

/// The upgraded connection: a byte stream to the dyno's SSH server.
pub type AttachStream = TokioIo<hyper::upgrade::Upgraded>;

/// What the CLI prints for a `403` on the upgrade (heroku/cli#3389), kept word for word so
/// users recognise it.
pub const IP_RESTRICTED: &str =
    "You can't access this space from your IP address. Contact your team admin.";

/// Why the upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Holds the URL without its path and query (the secret).
    #[error("the dyno's attach URL ({0}) is not an https:// URL with a host")]
    BadUrl(String),
    #[error(
        "the dyno's attach URL is plain http:// ({0}); dynoagent attaches only over verified TLS"
    )]
    PlainHttp(String),
    #[error("cannot reach {addr} within {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("{addr} did not answer the attach request within {timeout:?}")]
    ResponseTimeout { addr: String, timeout: Duration },
    #[error("{IP_RESTRICTED} (the attach request was refused with 403 Forbidden)")]
    IpRestricted,
    #[error("the attach request was answered {status} instead of 101 Switching Protocols")]
    Status { status: StatusCode },
    #[error("the attach request was answered 101 without `Connection: Upgrade` and `Upgrade: tcp`")]
    NotTcp,
    #[error("the attach request failed: {0}")]
    Http(String),
}

/// The user name sent over SSH; Heroku's server ignores it (heroku-protocols.md §3.9.4).
const SSH_USER: &str = "dyno";

/// Why attaching over SSH failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error(
        "the dyno's SSH server refused the key in HEROKU_SSH_KEY ({fingerprint}): it is not registered on the Heroku account of HEROKU_API_KEY; register it with `dynoagent keys register` or `heroku keys:add`"
    )]
    KeyNotRegistered { fingerprint: String },
    #[error(transparent)]
    Ssh(Box<SshError>),
}

/// Upgrades `attach_url` and connects SSH over it with the account `key`. The host key is not
/// pinnable (no source publishes it): the verified TLS and the secret URL authenticate the
/// server, and its fingerprint is logged (heroku-protocols.md §3.9.6 rule 4).
pub async fn connect(
    attach_url: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    key: Arc<PrivateKey>,
    options: &ClientOptions,
) -> Result<Connection, AttachError> {
    let (stream, host, port) = upgrade(attach_url, tls, timeout).await?;
    let target = Target {
        host,
        port,
        user: SSH_USER.to_owned(),
    };
    let fingerprint = backend_ssh::fingerprint(key.public_key());
    backend_ssh::connect_stream(stream, &target, HostKeyPolicy::TrustTransport, key, options)
        .await
        .map_err(|error| match error {
            SshError::Auth { .. } => AttachError::KeyNotRegistered { fingerprint },
            other => AttachError::Ssh(Box::new(other)),
        })
}

/// An attach URL fit for messages: scheme and host:port only.
pub(crate) fn shown(attach_url: &str) -> String {
    match Url::parse(attach_url) {
        Ok(url) => match url.port() {
            Some(p) => format!("{}://{}:{p}/…", url.scheme(), url.host_str().unwrap_or("")),
            None => format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("")),
        },
        Err(_) => "unparsable, not shown".to_owned(),
    }
}

fn header_is(headers: &hyper::HeaderMap, name: hyper::header::HeaderName, want: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
}

/// Opens `attach_url` and upgrades it to a raw byte stream. `timeout` bounds the TCP connect,
/// the TLS handshake and the response each.
pub async fn upgrade(
    attach_url: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(AttachStream, String, u16), UpgradeError> {
    let url = Url::parse(attach_url).map_err(|_| UpgradeError::BadUrl(shown(attach_url)))?;
    match url.scheme() {
        "https" => {}
        "http" => return Err(UpgradeError::PlainHttp(shown(attach_url))),
        _ => return Err(UpgradeError::BadUrl(shown(attach_url))),
    }
    let host = url
        .host_str()
        .ok_or_else(|| UpgradeError::BadUrl(shown(attach_url)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(443);
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let host_header = match url.port() {
        Some(p) if host.contains(':') => format!("[{host}]:{p}"),
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }

    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
        Err(_) => return Err(UpgradeError::ConnectTimeout { addr, timeout }),
        Ok(Err(e)) => {
            return Err(UpgradeError::Connect {
                addr,
                reason: e.to_string(),
            });
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let name =
        ServerName::try_from(host.clone()).map_err(|_| UpgradeError::BadUrl(shown(attach_url)))?;
    let stream = tokio::time::timeout(timeout, TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| UpgradeError::ConnectTimeout {
            addr: addr.clone(),
            timeout,
        })?
        .map_err(|e| UpgradeError::Tls {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;

    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpgradeError::Http(e.to_string()))?;
        // The connection task ends with the exchange: at the upgrade, or when the sender and
        // the response are dropped (any other answer).
        let conn = tokio::spawn(conn.with_upgrades());
        let request = hyper::Request::get(target.as_str())
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "tcp")
            .header(HOST, host_header.as_str())
            .body(String::new())
            .map_err(|e| UpgradeError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| UpgradeError::Http(e.to_string()))?;
        match response.status() {
            StatusCode::SWITCHING_PROTOCOLS => {}
            StatusCode::FORBIDDEN => {
                conn.abort();
                return Err(UpgradeError::IpRestricted);
            }
            status => {
                conn.abort();
                return Err(UpgradeError::Status { status });
            }
        }
        if !header_is(response.headers(), CONNECTION, "upgrade")
            || !header_is(response.headers(), UPGRADE, "tcp")
        {
            conn.abort();
            return Err(UpgradeError::NotTcp);
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| UpgradeError::Http(e.to_string()))?;
        Ok(TokioIo::new(upgraded))
    };
    let stream = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpgradeError::ResponseTimeout {
            addr: addr.clone(),
            timeout,
        })??;
    Ok((stream, host, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tls() -> Arc<rustls::ClientConfig> {
        crate::rendezvous::RendezvousConfig::new(None).unwrap().tls
    }

    #[tokio::test]
    async fn bad_and_plain_urls_are_refused_without_their_secret() {
        for url in [
            "ftp://dyno.example.com/attach-secret-1",
            "http://127.0.0.1:9/attach-secret-1?q=attach-secret-2",
            // Nothing listens on port 9: the dial fails, and says so without the path.
            "https://127.0.0.1:9/attach-secret-1?q=attach-secret-2",
            "not a url attach-secret-1",
        ] {
            let e = upgrade(url, tls(), Duration::from_secs(1))
                .await
                .err()
                .unwrap()
                .to_string();
            assert!(!e.contains("attach-secret"), "{url}: {e}");
        }
    }

    #[test]
    fn the_403_message_is_the_clis() {
        assert!(
            UpgradeError::IpRestricted
                .to_string()
                .starts_with(IP_RESTRICTED)
        );
    }
}
