//! Issue 13, finding 8: when the gateway's audit store cannot record a session, the session is
//! closed with a clear message instead of running unrecorded (dynoctl → dynogw → agent).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use dynoagent_tests::{Tag, TestAgent, WAIT, init_logs};
use dynoctl::{ClientConfig, ExecRequest};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig};

const AGENT: &str = "audit-fail";
const TOKEN: &str = "audit-fail-token";

#[tokio::test]
async fn a_database_write_failure_closes_the_session() {
    // Every later transaction (the session's row) fails.
    closes_the_session_when(|db| {
        rusqlite::Connection::open(db)
            .unwrap()
            .execute_batch("DROP TABLE sessions")
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_event_file_write_failure_closes_the_session() {
    // The event files' directory is gone, and a plain file stands in its way.
    closes_the_session_when(|db| {
        let events = db.with_file_name("audit.db.events");
        std::fs::remove_dir_all(&events).unwrap();
        std::fs::write(&events, b"").unwrap();
    })
    .await;
}

/// Starts a gateway and an agent, breaks the audit store with `break_store` (given the
/// database path), and checks that a session that would otherwise run for ever is closed with
/// the audit failure's text and leaves no process behind.
async fn closes_the_session_when(break_store: impl FnOnce(&std::path::Path)) {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let secret = dynogw::generate_secret();
    let tag = Tag::new();
    let db = dir.path().join("audit.db");
    let gw = Gateway::start(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: db.clone(),
        client_tokens: vec![TOKEN.into()],
        agents: vec![AgentDef {
            name: AGENT.into(),
            secret_sha256: Some(dynogw::hash_secret(&secret)),
            secret: None,
            ..Default::default()
        }],
        connections: vec![ConnectionDef {
            name: "bash".into(),
            agent: AGENT.into(),
            command: vec!["bash".into()],
            secrets: BTreeMap::from([("envvar:DYNOTEST_TAG".to_owned(), tag.0.clone())]),
            ..Default::default()
        }],
        offline_wait: Duration::from_millis(300),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let mut agent = TestAgent::start(&dynogw::agent_dsn(AGENT, &secret, gw.addr()), &[]);
    assert!(
        gw.wait_for_agent(AGENT, WAIT).await,
        "agent did not connect"
    );

    break_store(&db);

    // A session that would run for ever unless something closes it.
    let client = ClientConfig::new(format!("http://{}", gw.addr()), TOKEN);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = tokio::time::timeout(
        WAIT,
        dynoctl::exec(
            &client,
            ExecRequest {
                connection: "bash".into(),
                input: bytes::Bytes::from_static(b"echo started; exec sleep 1000\n"),
                ..Default::default()
            },
            &mut out,
            &mut err,
        ),
    )
    .await
    .expect("the session was not closed although its audit failed")
    .unwrap();
    assert_eq!(outcome.exit_code, 254, "{}", outcome.message);
    assert!(
        outcome
            .message
            .contains("its audit record could not be written"),
        "{}",
        outcome.message
    );
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
    gw.shutdown().await;
}
