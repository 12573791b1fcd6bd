//! Authentication of `Connect` calls, as hoop's gateway does it (hoop-gateway-protocol.md §1.4):
//! `origin` tells agents from clients; agents present their DSN as the bearer token, clients a
//! static token from the config.
//!
//! Owns the metadata reading and the checks. It never logs or returns the token, the DSN or
//! its secret: every refusal is one of hoop's fixed messages.

use std::collections::HashMap;

use hoop_wire::spec::metadata as md;
use tonic::Status;
use tonic::metadata::{KeyAndValueRef, MetadataMap};

use crate::config::GatewayConfig;

/// Who opened the stream.
#[derive(Debug)]
pub(crate) enum Caller {
    Agent {
        name: String,
        /// The agent's reported version (echoed to clients as `agent.version`).
        version: String,
    },
    Client(ClientRequest),
}

/// What a client asked for in its metadata.
#[derive(Debug, Clone)]
pub(crate) struct ClientRequest {
    pub verb: String,
    pub connection: String,
}

/// ASCII metadata as a map; hoop's `MetaGet` also accepts `_` for `-` in keys.
fn metadata(map: &MetadataMap) -> HashMap<String, String> {
    map.iter()
        .filter_map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => Some((
                k.as_str().replace('_', "-"),
                v.to_str().ok()?.trim().to_owned(),
            )),
            KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

fn invalid() -> Status {
    Status::unauthenticated("invalid authentication")
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Authenticates a `Connect` call.
pub(crate) fn authenticate(map: &MetadataMap, config: &GatewayConfig) -> Result<Caller, Status> {
    let meta = metadata(map);
    let origin = meta
        .get(md::ORIGIN)
        .filter(|o| !o.is_empty())
        .ok_or_else(|| Status::invalid_argument("missing origin"))?;
    let token = meta
        .get(md::AUTHORIZATION)
        .and_then(|v| {
            let mut parts = v.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("Bearer"), Some(t), None) if !t.is_empty() => Some(t),
                _ => None,
            }
        })
        .ok_or_else(invalid)?;
    match origin.as_str() {
        md::ORIGIN_AGENT => {
            // Only the DSN form: hoop's legacy `x-agt-` tokens and SPIFFE are not served here.
            if !token.contains("://") {
                return Err(invalid());
            }
            let dsn = gateway_link::Dsn::parse(token).map_err(|_| invalid())?;
            let hash = crate::hash_secret(&dsn.secret());
            let agent = config
                .agents
                .iter()
                .find(|a| {
                    a.resolved_hash()
                        .is_ok_and(|h| same(h.as_bytes(), hash.as_bytes()))
                })
                .ok_or_else(invalid)?;
            if agent.name != dsn.agent_name() {
                return Err(Status::unauthenticated(
                    "invalid authentication, mismatch dsn attributes",
                ));
            }
            // hoop applies the mode stored with the agent, never the DSN's (§1.6). dynogw
            // manages no connections for multi-connection agents, so a named stream is refused
            // as hoop refuses a connection that agent does not manage.
            if agent.mode == "multi-connection" {
                return Err(
                    match meta.get(md::CONNECTION_NAME).filter(|c| !c.is_empty()) {
                        None => Status::failed_precondition("missing connection-name attribute"),
                        Some(conn) => Status::invalid_argument(format!(
                            "connection {conn} is not managed by agent {}",
                            agent.name
                        )),
                    },
                );
            }
            Ok(Caller::Agent {
                name: agent.name.clone(),
                version: meta.get(md::VERSION).cloned().unwrap_or_default(),
            })
        }
        md::ORIGIN_CLIENT => {
            let mut ok = false;
            for t in &config.client_tokens {
                ok |= same(t.as_bytes(), token.as_bytes());
            }
            if !ok {
                return Err(invalid());
            }
            let verb = meta.get(md::VERB).cloned().unwrap_or_default();
            if verb != "exec" && verb != "connect" {
                return Err(Status::invalid_argument(
                    "verb must be exec or connect (metadata \"verb\")",
                ));
            }
            let connection = meta
                .get(md::CONNECTION_NAME)
                .filter(|c| !c.is_empty())
                .cloned()
                .ok_or_else(|| Status::invalid_argument("missing connection-name"))?;
            Ok(Caller::Client(ClientRequest { verb, connection }))
        }
        _ => Err(Status::invalid_argument(
            "unsupported origin; expected agent or client",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tonic::Code;

    fn config() -> GatewayConfig {
        GatewayConfig::from_toml_str(
            r#"
client_tokens = ["tok"]
[[agents]]
name = "a1"
secret = "xagt-one"
[[agents]]
name = "a2"
secret = "xagt-two"
"#,
        )
        .unwrap()
    }

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn agents_authenticate_with_their_dsn() {
        let c = config();
        let ok = md(&[
            ("origin", "agent"),
            ("authorization", "Bearer grpc://a1:xagt-one@127.0.0.1:1"),
        ]);
        assert!(matches!(authenticate(&ok, &c), Ok(Caller::Agent { name, .. }) if name == "a1"));
        let cases = [
            (
                vec![("authorization", "Bearer grpc://a1:xagt-one@h:1")],
                Code::InvalidArgument,
                "missing origin",
            ),
            (
                vec![
                    ("origin", "agent"),
                    ("authorization", "Bearer grpc://a1:wrong@h:1"),
                ],
                Code::Unauthenticated,
                "invalid authentication",
            ),
            (
                vec![
                    ("origin", "agent"),
                    ("authorization", "Bearer grpc://a1:xagt-two@h:1"),
                ],
                Code::Unauthenticated,
                "invalid authentication, mismatch dsn attributes",
            ),
            (
                vec![
                    ("origin", "agent"),
                    ("authorization", "Bearer x-agt-legacy"),
                ],
                Code::Unauthenticated,
                "invalid authentication",
            ),
            (
                vec![
                    ("origin", "agent"),
                    ("authorization", "grpc://a1:xagt-one@h:1"),
                ],
                Code::Unauthenticated,
                "invalid authentication",
            ),
        ];
        for (pairs, code, msg) in cases {
            let e = authenticate(&md(&pairs), &c).unwrap_err();
            assert_eq!((e.code(), e.message()), (code, msg));
        }
    }

    #[test]
    fn clients_authenticate_with_a_static_token() {
        let c = config();
        let ok = md(&[
            ("origin", "client"),
            ("authorization", "Bearer tok"),
            ("verb", "exec"),
            ("connection-name", "local"),
        ]);
        assert!(matches!(authenticate(&ok, &c), Ok(Caller::Client(r)) if r.connection == "local"));
        let bad = md(&[
            ("origin", "client"),
            ("authorization", "Bearer nope"),
            ("verb", "exec"),
            ("connection-name", "local"),
        ]);
        assert_eq!(
            authenticate(&bad, &c).unwrap_err().code(),
            Code::Unauthenticated
        );
    }
}
