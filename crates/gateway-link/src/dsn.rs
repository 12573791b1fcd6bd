//! The agent's DSN (`HOOP_KEY`): `scheme://name:secret@host:port?mode=standard`.
//!
//! Parsing uses the `url` crate. The secret never leaves this module in a printable form:
//! [`Dsn`]'s `Debug` redacts it and every [`DsnError`] message is built without the raw value.

use std::fmt;

use url::Url;

/// How the agent talks to the gateway, from the DSN's `mode` query parameter.
///
/// Parsing accepts all three of hoop's modes, because a gateway (dynogw) must read every
/// key it may be shown; the agent's configuration refuses the two it does not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Connect directly and stay connected (hoop's default, and the only mode this agent runs).
    Standard,
    /// `PreConnect` on demand (`hoop run`, embedded agents).
    Embedded,
    /// One stream per managed connection (hoop's organization key); the gateway refuses a
    /// stream without `connection-name` metadata.
    MultiConnection,
}

/// A parsed, validated agent DSN.
#[derive(Clone)]
pub struct Dsn {
    raw: String,
    agent_name: String,
    host: String,
    port: u16,
    tls: bool,
    mode: Mode,
    /// Whether the DSN carried a `mode` query at all (the organization key has none).
    mode_given: bool,
}

/// Why a DSN was refused. Messages never include the DSN or its secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("is empty")]
    Empty,
    #[error("is not a URL of the form scheme://name:secret@host:port?mode=standard ({0})")]
    NotAUrl(String),
    #[error("has no agent name (the URL user)")]
    MissingName,
    #[error("has no secret key (the URL password)")]
    MissingSecret,
    #[error("has no gateway host")]
    MissingHost,
    #[error("has no gateway port")]
    MissingPort,
    #[error("uses mode={0}, which hoop does not define; use mode=standard")]
    UnsupportedMode(String),
    #[error(
        "uses the legacy token-in-path form, which dynoagent does not support; create a new agent key in hoop"
    )]
    Legacy,
    #[error("contains characters that cannot be sent in a gRPC header")]
    NotAscii,
}

impl Dsn {
    /// Parses and validates a DSN.
    pub fn parse(raw: &str) -> Result<Dsn, DsnError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(DsnError::Empty);
        }
        if !raw.is_ascii() {
            return Err(DsnError::NotAscii);
        }
        // Only the parser's category is reported: url's messages never echo the input.
        let url = Url::parse(raw).map_err(|e| DsnError::NotAUrl(e.to_string()))?;
        if url.path().len() == 65 {
            return Err(DsnError::Legacy);
        }
        if url.username().is_empty() {
            return Err(DsnError::MissingName);
        }
        if url.password().is_none_or(str::is_empty) {
            return Err(DsnError::MissingSecret);
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(DsnError::MissingHost)?;
        let tls = matches!(url.scheme(), "grpcs" | "https" | "wss");
        let port = url.port_or_known_default().ok_or(DsnError::MissingPort)?;
        let given = url
            .query_pairs()
            .find(|(k, _)| k == "mode")
            .map(|(_, v)| v.into_owned());
        let mode = match given.as_deref() {
            None | Some("") | Some("standard") => Mode::Standard,
            Some("embedded") => Mode::Embedded,
            Some("multi-connection") => Mode::MultiConnection,
            Some(other) => return Err(DsnError::UnsupportedMode(other.chars().take(32).collect())),
        };
        let agent_name = percent_decode(url.username());
        Ok(Dsn {
            raw: raw.to_owned(),
            agent_name,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls,
            mode,
            mode_given: given.is_some_and(|m| !m.is_empty()),
        })
    }

    /// The agent name (the DSN user).
    pub fn agent_name(&self) -> &str {
        &self.agent_name
    }
    /// The gateway host.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The gateway port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Whether the scheme asks for TLS (`grpcs`, `https`, `wss`).
    pub fn tls(&self) -> bool {
        self.tls
    }
    /// The connection mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Whether this looks like hoop's organization key: agent `_default` and no `mode`. Only
    /// a hint (a standard agent could take that name); the gateway's refusal is definitive.
    pub fn looks_like_org_key(&self) -> bool {
        self.agent_name == "_default" && !self.mode_given
    }
    /// The bearer token hoop expects: the whole DSN. Only the link's metadata uses it.
    pub(crate) fn bearer(&self) -> &str {
        &self.raw
    }
    /// The secret part, for callers that must scrub it from text (log scanners, tests).
    pub fn secret(&self) -> String {
        Url::parse(&self.raw)
            .ok()
            .and_then(|u| u.password().map(percent_decode))
            .unwrap_or_default()
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dsn")
            .field("agent_name", &self.agent_name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("mode", &self.mode)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn percent_decode(s: &str) -> String {
    // Agent names and generated secrets are URL-safe; decode the rare %XX escapes anyway.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_standard_dsn() {
        let d = Dsn::parse("grpc://agent-1:xagt-s3cr3t@127.0.0.1:8010?mode=standard").unwrap();
        assert_eq!(d.agent_name(), "agent-1");
        assert_eq!(d.host(), "127.0.0.1");
        assert_eq!(d.port(), 8010);
        assert!(!d.tls());
        assert_eq!(d.mode(), Mode::Standard);
        assert_eq!(d.secret(), "xagt-s3cr3t");
        assert!(!format!("{d:?}").contains("s3cr3t"));
    }

    #[test]
    fn tls_follows_the_scheme() {
        for (scheme, tls) in [
            ("grpcs", true),
            ("https", true),
            ("wss", true),
            ("grpc", false),
            ("http", false),
        ] {
            let d = Dsn::parse(&format!("{scheme}://a:b@gw.example:8443?mode=standard")).unwrap();
            assert_eq!(d.tls(), tls, "{scheme}");
        }
    }

    #[test]
    fn refuses_malformed_dsns_without_echoing_the_secret() {
        let cases = [
            ("", DsnError::Empty),
            ("grpc://:topsecret@h:1", DsnError::MissingName),
            ("grpc://name@h:1", DsnError::MissingSecret),
            ("grpc://name:topsecret@h", DsnError::MissingPort),
            (
                "grpc://name:topsecret@h:1?mode=sideways",
                DsnError::UnsupportedMode("sideways".into()),
            ),
        ];
        for (raw, want) in cases {
            let got = Dsn::parse(raw).unwrap_err();
            assert_eq!(got, want, "{raw}");
            assert!(!got.to_string().contains("topsecret"));
        }
        for (raw, mode, org) in [
            ("grpc://a:s@h:1?mode=embedded", Mode::Embedded, false),
            (
                "grpc://a:s@h:1?mode=multi-connection",
                Mode::MultiConnection,
                false,
            ),
            ("grpc://_default:s@h:1", Mode::Standard, true),
            ("grpc://_default:s@h:1?mode=standard", Mode::Standard, false),
        ] {
            let d = Dsn::parse(raw).unwrap();
            assert_eq!((d.mode(), d.looks_like_org_key()), (mode, org), "{raw}");
        }
        let e = Dsn::parse("not a url topsecret").unwrap_err();
        assert!(matches!(e, DsnError::NotAUrl(_)));
        assert!(!e.to_string().contains("topsecret"));
    }
}
