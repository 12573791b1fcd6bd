//! `dynoagent dev` end to end: the stack starts on loopback, a client session runs on the
//! `local` demo connection through the gateway and the agent, the audit store records it, and
//! the stack stops cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use devstack::{DevOptions, DevStack};

#[tokio::test]
async fn dev_stack_serves_the_local_demo_connection_and_audits_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let stack = DevStack::start(DevOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: Some(db.clone()),
        ..DevOptions::default()
    })
    .await
    .unwrap();
    assert!(
        stack.instructions().contains(" local -i "),
        "{}",
        stack.instructions()
    );
    let client =
        dynoctl::ClientConfig::new(format!("http://{}", stack.gateway_addr()), dynogw_token());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = dynoctl::exec(
        &client,
        dynoctl::ExecRequest {
            connection: "local".into(),
            input: bytes::Bytes::from_static(b"echo dev-ok; echo dev-err >&2; exit 4\n"),
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(out, b"dev-ok\n");
    assert_eq!(err, b"dev-err\n");
    assert_eq!(outcome.exit_code, 4);
    stack.shutdown().await;

    let store = dynogw::audit::AuditStore::open(&db).unwrap();
    let sessions = store.list_sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].exit_code, Some(4));
}

fn dynogw_token() -> String {
    DevOptions::default().client_token
}
