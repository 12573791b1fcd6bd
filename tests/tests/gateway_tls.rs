//! The gateway link over TLS: `grpcs://` DSNs with `HOOP_TLSCA` (base64:// and file://),
//! `HOOP_TLSSERVERNAME`, `HOOP_TLS_SKIP_VERIFY`, and refusal of an untrusted certificate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use bytes::Bytes;
use dynoagent_tests::gateway::test_tls;
use dynoagent_tests::{FakeGateway, Params, Tag, TestAgent, init_logs, sid};
use hoop_wire::{AgentPacket, ClientPacket};

async fn run_one_session(gw: &mut FakeGateway, agent: TestAgent) {
    let tag = Tag::new();
    let stream = gw.next_agent().await;
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(Params::new(&["echo", "over tls"], "exec", &tag).open(&id))
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::new(),
        })
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.stdout, b"over tls\n");
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.shutdown().await;
    tag.assert_no_processes();
}

fn tls_dsn(gw: &FakeGateway) -> String {
    gw.dsn().replacen("grpc://", "grpcs://", 1)
}

#[tokio::test]
async fn connects_with_a_base64_ca() {
    init_logs();
    let (pem, tls) = test_tls(&["127.0.0.1"]);
    let mut gw = FakeGateway::start_tls("agent-tls", "xagt-tls", tls).await;
    let ca = format!(
        "base64://{}",
        base64::engine::general_purpose::STANDARD.encode(pem)
    );
    let agent = TestAgent::start(&tls_dsn(&gw), &[("HOOP_TLSCA", &ca)]);
    run_one_session(&mut gw, agent).await;
}

#[tokio::test]
async fn connects_with_a_ca_file_and_a_server_name_override() {
    init_logs();
    let (pem, tls) = test_tls(&["gateway.test"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    let mut gw = FakeGateway::start_tls("agent-tls", "xagt-tls", tls).await;
    let ca = format!("file://{}", path.display());
    let agent = TestAgent::start(
        &tls_dsn(&gw),
        &[("HOOP_TLSCA", &ca), ("HOOP_TLSSERVERNAME", "gateway.test")],
    );
    run_one_session(&mut gw, agent).await;
}

#[tokio::test]
async fn skip_verify_accepts_an_untrusted_certificate() {
    init_logs();
    let (_pem, tls) = test_tls(&["elsewhere.test"]);
    let mut gw = FakeGateway::start_tls("agent-tls", "xagt-tls", tls).await;
    let agent = TestAgent::start(&tls_dsn(&gw), &[("HOOP_TLS_SKIP_VERIFY", "true")]);
    run_one_session(&mut gw, agent).await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    init_logs();
    let (_pem, tls) = test_tls(&["127.0.0.1"]);
    let gw = FakeGateway::start_tls("agent-tls", "xagt-tls", tls).await;
    let config = agent::AgentConfig::from_sources(
        &[("HOOP_KEY".to_owned(), tls_dsn(&gw))]
            .into_iter()
            .collect(),
        agent::VERSION,
    )
    .unwrap();
    let err = gateway_link::connect(&config.link).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, gateway_link::LinkError::Dial { .. }),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!text.contains("xagt-tls"), "secret leaked: {text}");
    assert!(
        gw.attempts().is_empty(),
        "no stream may open without a trusted certificate"
    );
}
