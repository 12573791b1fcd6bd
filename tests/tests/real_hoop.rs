//! What hoop's real gateway sends that the first dynogw never did (issue 12), driven through
//! the real path: `dynoctl` (library) → `dynogw` (in process, 127.0.0.1:0) → the real agent.
//! dynogw now models each case (connection types, guardrails and masking shipped to the
//! agent, `Sys*` requests, multi-connection agents, a second agent with the same key); these tests check what the agent does with them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use bytes::Bytes;
use dynoagent_tests::{Tag, TestAgent, WAIT, init_logs};
use dynoctl::{ClientConfig, ClientError, ExecOutcome, ExecRequest};
use dynogw::audit::{AuditStore, EventKind};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig, RunningGateway};
use hoop_wire::SysKind;

const AGENT: &str = "real";
const TOKEN: &str = "real-token";

struct Env {
    gw: RunningGateway,
    agent: Option<TestAgent>,
    dsn: String,
    tag: Tag,
    _dir: tempfile::TempDir,
}

fn conn(name: &str, kind: &str, tag: &Tag) -> ConnectionDef {
    ConnectionDef {
        name: name.into(),
        agent: AGENT.into(),
        command: vec!["bash".into()],
        secrets: [("envvar:DYNOTEST_TAG".to_owned(), tag.0.clone())].into(),
        connection_type: kind.into(),
        ..Default::default()
    }
}

async fn start(agent_env: &[(&str, &str)]) -> Env {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let secret = dynogw::generate_secret();
    let tag = Tag::new();
    let mut guarded = conn("guarded", "", &tag);
    guarded.guardrail_rules = Some(
        r#"{"input_rules":[{"rules":[{"type":"deny_words_list","words":["drop"]}]}],"output_rules":null}"#
            .into(),
    );
    let mut masked = conn("masked", "", &tag);
    masked.data_masking =
        Some(r#"[{"id":"m1","name":"pii","supported_entity_types":["EMAIL_ADDRESS"]}]"#.into());
    let mut no_masking_rules = conn("unmasked", "", &tag);
    no_masking_rules.data_masking = Some("[]".into());
    let mut dlp = conn("dlp", "", &tag);
    dlp.dlp_info_types = vec!["EMAIL_ADDRESS".into()];
    let config = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: dir.path().join("audit.db"),
        client_tokens: vec![TOKEN.into()],
        agents: vec![AgentDef {
            name: AGENT.into(),
            secret_sha256: Some(dynogw::hash_secret(&secret)),
            ..Default::default()
        }],
        connections: vec![
            conn("bash", "", &tag),
            conn("pg", "postgres", &tag),
            conn("web", "httpproxy", &tag),
            conn("tunnel", "tcp", &tag),
            guarded,
            masked,
            no_masking_rules,
            dlp,
        ],
        offline_wait: Duration::from_secs(5),
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(config).await.unwrap();
    let dsn = dynogw::agent_dsn(AGENT, &secret, gw.addr());
    let agent = TestAgent::start(&dsn, agent_env);
    assert!(
        gw.wait_for_agent(AGENT, WAIT).await,
        "agent did not connect"
    );
    Env {
        gw,
        agent: Some(agent),
        dsn,
        tag,
        _dir: dir,
    }
}

impl Env {
    fn client(&self) -> ClientConfig {
        ClientConfig::new(format!("http://{}", self.gw.addr()), TOKEN)
    }

    async fn exec(
        &self,
        connection: &str,
        input: &str,
    ) -> Result<(ExecOutcome, Vec<u8>, Vec<u8>), ClientError> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let request = ExecRequest {
            connection: connection.into(),
            input: Bytes::copy_from_slice(input.as_bytes()),
            ..Default::default()
        };
        let outcome = tokio::time::timeout(
            WAIT,
            dynoctl::exec(&self.client(), request, &mut out, &mut err),
        )
        .await
        .expect("exec did not finish in time")?;
        Ok((outcome, out, err))
    }

    fn store(&self) -> AuditStore {
        AuditStore::open(self.gw.audit_db()).unwrap()
    }

    /// The audit of the latest session on `connection`: (exit code, error event text,
    /// recorded input). The client sends its input only after `ClientSessionOpenOK`, so no
    /// input means the agent never accepted the session.
    async fn audited(&self, connection: &str) -> (Option<i32>, String, Vec<u8>) {
        self.gw.flush_audit().await;
        let store = self.store();
        let s = store
            .list_sessions()
            .unwrap()
            .into_iter()
            .rfind(|s| s.connection == connection)
            .expect("session recorded");
        let events = store.events(&s.id).unwrap();
        let of = |kind| -> Vec<u8> {
            events
                .iter()
                .filter(|e| e.kind == kind)
                .flat_map(|e| e.data.clone())
                .collect()
        };
        let error = String::from_utf8(of(EventKind::Error)).unwrap();
        (s.exit_code, error, of(EventKind::Input))
    }

    async fn finish(mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.wait_idle().await;
            agent.shutdown().await;
        }
        self.gw.shutdown().await;
        self.tag.assert_no_processes();
    }
}

/// A healthy session after the refusals: the agent kept serving.
async fn still_serving(env: &Env) {
    let (outcome, out, _) = env.exec("bash", "echo still-here").await.unwrap();
    assert_eq!(
        (outcome.exit_code, out.as_slice()),
        (0, &b"still-here\n"[..])
    );
}

#[tokio::test]
async fn connection_types_the_agent_does_not_serve_are_refused_at_open_with_one_close() {
    let env = start(&[]).await;
    for (connection, kind) in [("pg", "postgres"), ("web", "httpproxy")] {
        let (outcome, out, err) = env.exec(connection, "select 1").await.unwrap();
        assert_eq!(outcome.exit_code, 254);
        assert_eq!(
            outcome.message,
            format!(
                "connection type \"{kind}\" is not supported by this agent (command-line and tcp connections only)"
            )
        );
        assert!(out.is_empty() && err.is_empty());
        assert_eq!(
            env.audited(connection).await,
            (Some(254), outcome.message.clone(), Vec::new()),
            "one close, and no ClientSessionOpenOK (the client never sent its input)"
        );
    }
    // hoop's gateway refuses exec on tcp connections itself, before the agent.
    let e = env.exec("tunnel", "x").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("exec is not allowed for tcp type connections"),
        "{e}"
    );
    still_serving(&env).await;
    env.finish().await;
}

#[tokio::test]
async fn guardrails_and_data_masking_fail_closed() {
    let env = start(&[]).await;
    let cases = [
        (
            "guarded",
            "connection has guardrail rules configured, but this agent does not support guardrail enforcement; remove the guardrails from this connection",
        ),
        (
            "masked",
            "connection has data masking configured, but this agent does not support data masking; remove the masking rules from this connection",
        ),
        (
            "dlp",
            "connection has data masking configured, but this agent does not support data masking; remove the masking rules from this connection",
        ),
    ];
    for (connection, message) in cases {
        let (outcome, out, _) = env.exec(connection, "echo ran").await.unwrap();
        assert_eq!(
            (outcome.exit_code, outcome.message.as_str()),
            (254, message)
        );
        assert!(out.is_empty(), "the command must not run");
        let (_, _, input) = env.audited(connection).await;
        assert!(input.is_empty(), "refused before ClientSessionOpenOK");
    }
    // "[]" is what hoop sends when the provider is on but the connection has no rules.
    let (outcome, out, _) = env.exec("unmasked", "echo ran").await.unwrap();
    assert_eq!((outcome.exit_code, out.as_slice()), (0, &b"ran\n"[..]));
    env.finish().await;
}

#[tokio::test]
async fn operators_can_let_unenforced_policies_through_explicitly() {
    let env = start(&[("DYNOAGENT_ALLOW_UNENFORCED_POLICIES", "true")]).await;
    for connection in ["guarded", "masked"] {
        let (outcome, out, _) = env.exec(connection, "echo ran").await.unwrap();
        assert_eq!((outcome.exit_code, out.as_slice()), (0, &b"ran\n"[..]));
    }
    // The opt-out does not extend to connection types.
    let (outcome, _, _) = env.exec("pg", "select 1").await.unwrap();
    assert_eq!(outcome.exit_code, 254);
    env.finish().await;
}

#[tokio::test]
async fn every_system_request_is_answered_at_once_with_its_failure_reply() {
    let env = start(&[]).await;
    for kind in SysKind::ALL {
        // Far below hoop's shortest caller timeout (10 s): an answer, not a timeout.
        let (reply_kind, payload) = env
            .gw
            .system_request(
                AGENT,
                kind,
                Bytes::from_static(b"{}"),
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(reply_kind, kind, "the matching reply type");
        let text = String::from_utf8(payload.to_vec()).unwrap();
        assert!(
            text.contains("failed") || text.contains("-2"),
            "{kind:?}: {text}"
        );
        assert!(
            text.contains("not supported by this agent (command-line and tcp connections only)"),
            "{kind:?}: {text}"
        );
        assert!(
            text.contains("sys-probe-"),
            "the request id is echoed: {text}"
        );
    }
    still_serving(&env).await;
    env.finish().await;
}

#[tokio::test]
async fn a_second_agent_with_the_same_key_is_a_standby_that_takes_over() {
    let mut env = start(&[]).await;
    let standby = TestAgent::start(&env.dsn, &[]);
    still_serving(&env).await;
    // The active agent goes away; the standby connects within its backoff (at most 8 s).
    env.agent.take().unwrap().shutdown().await;
    assert!(
        env.gw.wait_for_agent(AGENT, Duration::from_secs(12)).await,
        "the standby did not take over"
    );
    env.agent = Some(standby);
    still_serving(&env).await;
    env.finish().await;
}
