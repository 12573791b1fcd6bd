//! What a session must satisfy before it is accepted, decided at `AgentSessionOpen` before
//! anything slow and before `ClientSessionOpenOK` (hoop-gateway-protocol.md §3.6, §6.1).
//!
//! Owns the refusal texts for connection types this agent does not serve and for policies it
//! does not enforce (guardrails, data masking). It does not look at the command or the
//! environment; routing and policy on those belong to the backends.

use hoop_gob::AgentConnectionParams;
use hoop_wire::SessionOpen;
use hoop_wire::spec::{CONNECTION_TYPE_COMMAND_LINE, CONNECTION_TYPE_TCP};

/// Why a session is refused at open. Each message names what was refused and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "connection type \"{0}\" is not supported by this agent (command-line and tcp connections only)"
    )]
    ConnectionType(String),
    #[error(
        "connection has guardrail rules configured, but this agent does not support guardrail enforcement; remove the guardrails from this connection"
    )]
    Guardrails,
    #[error(
        "connection has data masking configured, but this agent does not support data masking; remove the masking rules from this connection"
    )]
    DataMasking,
}

/// A policy the connection configures that this agent does not enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unenforced {
    Guardrails,
    DataMasking,
}

/// Decides whether `open` may run. With `allow_unenforced`, guardrails and masking are let
/// through and returned so that the caller can log them for the session.
pub(crate) fn admit(
    open: &SessionOpen,
    allow_unenforced: bool,
) -> Result<Vec<Unenforced>, Refusal> {
    // The spec value is what hoop's CLI acts on, and the gob copy carries the same mapped
    // type. Either one naming another type refuses, so neither can smuggle a proxy session
    // past the check; an empty copy defers to the other one.
    let spec_type = open.connection_type.as_str();
    let gob_type = open.params.connection_type.as_str();
    let effective = if spec_type.is_empty() {
        gob_type
    } else {
        spec_type
    };
    let served = |t: &str| t == CONNECTION_TYPE_COMMAND_LINE || t == CONNECTION_TYPE_TCP;
    if !served(effective) {
        return Err(Refusal::ConnectionType(printable(effective)));
    }
    // Both copies name the same type: a tcp open cannot run a command, nor the reverse.
    if !gob_type.is_empty() && gob_type != effective {
        return Err(Refusal::ConnectionType(printable(gob_type)));
    }
    let unenforced = unenforced(&open.params);
    if allow_unenforced {
        return Ok(unenforced);
    }
    match unenforced.first() {
        None => Ok(Vec::new()),
        Some(Unenforced::Guardrails) => Err(Refusal::Guardrails),
        Some(Unenforced::DataMasking) => Err(Refusal::DataMasking),
    }
}

/// The policies the connection configures (§6.1). Gateway-wide settings (`DlpProvider`,
/// `DlpMode`, `AnalyzerMetricsRules`) are not a signal and are ignored.
fn unenforced(p: &AgentConnectionParams) -> Vec<Unenforced> {
    let mut found = Vec::new();
    let rules = String::from_utf8_lossy(&p.guard_rail_rules);
    let rules = rules.trim();
    if !rules.is_empty() && rules != "null" {
        found.push(Unenforced::Guardrails);
    }
    let masking =
        match serde_json::from_slice::<serde_json::Value>(&p.data_masking_entity_types_data) {
            _ if p
                .data_masking_entity_types_data
                .iter()
                .all(u8::is_ascii_whitespace) =>
            {
                false
            }
            Ok(serde_json::Value::Array(items)) => !items.is_empty(),
            Ok(serde_json::Value::Null) => false,
            // Anything else, including a value that does not parse, counts as configured.
            _ => true,
        };
    if !p.dlp_info_types.is_empty() || masking {
        found.push(Unenforced::DataMasking);
    }
    found
}

/// A type name for a message: control characters escaped, at most 64 characters.
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).take(64).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hoop_wire::SessionId;

    fn open(spec_type: &str, gob_type: &str) -> SessionOpen {
        SessionOpen {
            session_id: SessionId::parse(b"s1").unwrap(),
            connection_type: spec_type.into(),
            params: AgentConnectionParams {
                connection_type: gob_type.into(),
                // Always set by hoop's gateway; never a signal.
                dlp_mode: "best-effort".into(),
                dlp_provider: "mspresidio".into(),
                analyzer_metrics_rules: br#"{"rules":["PERSON"]}"#.to_vec(),
                ..Default::default()
            },
            client_env: Default::default(),
            request_port: None,
            jit_timeout: None,
        }
    }

    #[test]
    fn only_command_line_and_tcp_are_served() {
        let cl = CONNECTION_TYPE_COMMAND_LINE;
        assert_eq!(admit(&open(cl, cl), false), Ok(vec![]));
        assert_eq!(admit(&open(cl, ""), false), Ok(vec![]));
        assert_eq!(admit(&open("", cl), false), Ok(vec![]));
        assert_eq!(admit(&open("tcp", "tcp"), false), Ok(vec![]));
        assert_eq!(admit(&open("tcp", ""), false), Ok(vec![]));
        for (spec, gob, named) in [
            ("tcp", cl, cl),
            (cl, "tcp", "tcp"),
            ("postgres", cl, "postgres"),
            (cl, "httpproxy", "httpproxy"),
            ("", "", ""),
            ("ssh\n", "ssh\n", "ssh\\n"),
        ] {
            let e = admit(&open(spec, gob), false).unwrap_err();
            assert_eq!(e, Refusal::ConnectionType(named.into()), "{spec:?}/{gob:?}");
            let text = e.to_string();
            assert!(text.contains(&format!("type \"{named}\" is not")), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn guardrails_and_masking_fail_closed_unless_allowed() {
        let cl = CONNECTION_TYPE_COMMAND_LINE;
        let mut o = open(cl, cl);
        o.params.guard_rail_rules =
            br#"{"input_rules":[{"rules":[{"type":"deny_words_list","words":["drop"]}]}]}"#
                .to_vec();
        assert_eq!(admit(&o, false), Err(Refusal::Guardrails));
        assert_eq!(admit(&o, true), Ok(vec![Unenforced::Guardrails]));
        o.params.guard_rail_rules = b"  ".to_vec();
        assert_eq!(admit(&o, false), Ok(vec![]));

        // Masking: "[]" (no rules with that provider) is none; rules or garbage are some.
        for (data, masked) in [
            (&b"[]"[..], false),
            (b"", false),
            (b"null", false),
            (br#"[{"id":"1","name":"pii"}]"#, true),
            (b"{not json", true),
            (br#"{"rules":1}"#, true),
        ] {
            o.params.data_masking_entity_types_data = data.to_vec();
            let want = if masked {
                Err(Refusal::DataMasking)
            } else {
                Ok(vec![])
            };
            assert_eq!(
                admit(&o, false),
                want,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        o.params.data_masking_entity_types_data = Vec::new();
        o.params.dlp_info_types = vec!["EMAIL_ADDRESS".into()];
        assert_eq!(admit(&o, false), Err(Refusal::DataMasking));
    }
}
