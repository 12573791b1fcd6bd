//! Issue 13: a user of a connection picks only the client args, the input and `-e` variables
//! (STYLE.md rule 17). Each test here performs one attack through the real path (in-process
//! hoop gateway → agent → local backend) and checks that it is refused, that nothing ran, and
//! that no secret leaked into the close message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use bytes::Bytes;
use dynoagent_tests::{AgentStream, Outcome, Params, Tag, b64, setup, sid};
use hoop_wire::{AgentPacket, ClientPacket, SessionOpen};

/// Opens an exec session for `params` with the client's `-e` entries `client_env` (keys like
/// `envvar:NAME`, plain values), sends `stdin`, and returns what the client saw.
async fn exec_with_client_env(
    stream: &AgentStream,
    params: Params,
    client_env: &[(&str, &str)],
    stdin: &[u8],
) -> Outcome {
    let id = sid();
    let mut replies = stream.watch_session(&id);
    let client_env: BTreeMap<String, String> = client_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), b64(v)))
        .collect();
    stream
        .send(AgentPacket::SessionOpen(Box::new(SessionOpen {
            session_id: id.clone(),
            connection_type: "command-line".into(),
            params: params.0,
            client_env,
            request_port: None,
            jit_timeout: None,
        })))
        .await;
    let first = replies.next().await;
    let mut outcome = match first {
        ClientPacket::SessionOpenOk { .. } => {
            stream
                .send(AgentPacket::ExecWriteStdin {
                    session_id: id.clone(),
                    data: Bytes::copy_from_slice(stdin),
                })
                .await;
            let mut o = replies.until_close().await;
            o.open_ok = Some(first);
            o
        }
        ClientPacket::SessionClose {
            exit_code, message, ..
        } => Outcome {
            open_ok: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code,
            message: String::from_utf8_lossy(&message).into_owned(),
            closes: 1,
        },
        other => panic!("unexpected first reply {other:?}"),
    };
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    outcome.closes = outcome.closes.max(1);
    outcome
}

/// A restricted connection (`bash -c 'echo report'`) and a user who sets `BASH_ENV` to a
/// script of their own: bash would run it before the connection's command.
#[tokio::test]
async fn client_variables_that_steer_shells_and_loaders_are_refused() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.sh");
    std::fs::write(&evil, "echo PWNED-BY-BASH_ENV\n").unwrap();
    let evil = evil.to_str().unwrap();
    let connection = || Params::new(&["bash", "-c", "echo report"], "exec", &tag);

    // Sanity: an ordinary client variable still reaches the process.
    let out = exec_with_client_env(
        &stream,
        Params::new(&["sh", "-c", "echo \"day=$REPORT_DAY\""], "exec", &tag),
        &[("envvar:REPORT_DAY", "monday")],
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(out.stdout, b"day=monday\n");

    for (name, value) in [
        ("BASH_ENV", evil),
        ("ENV", evil),
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("LD_LIBRARY_PATH", "/tmp"),
        ("PATH", "/tmp"),
        ("PAGER", "sh -c id"),
        ("NODE_OPTIONS", "--require /tmp/evil.js"),
        ("PYTHONSTARTUP", evil),
        ("PERL5OPT", "-Mevil"),
        ("RUBYOPT", "-revil"),
        ("GIT_SSH_COMMAND", "sh -c id"),
        ("BASH_FUNC_echo%%", "() { id; }"),
        ("HOOP_KEY", "system.agent.envs"),
        ("SSH_PRIVATE_KEY", "/dev/zero"),
        ("HEROKU_APPS", "any"),
        ("PSEXEC_AUTO_ENABLE", "true"),
    ] {
        let key = format!("envvar:{name}");
        let out = exec_with_client_env(&stream, connection(), &[(key.as_str(), value)], b"").await;
        assert_eq!(out.exit_code, Some(254), "{name}: {}", out.message);
        assert!(
            out.message
                .contains(&format!("client variable {name} is refused")),
            "{name}: {}",
            out.message
        );
        assert!(
            !out.stdout.windows(b"PWNED".len()).any(|w| w == b"PWNED"),
            "{name}: the user's script ran"
        );
        assert!(!out.message.contains(value), "{name}: value echoed");
    }

    // A client `filesystem:` entry would write attacker bytes to disk.
    let out = exec_with_client_env(
        &stream,
        connection(),
        &[("filesystem:CERT", "#!/bin/sh\necho PWNED\n")],
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("client variable CERT is refused"),
        "{}",
        out.message
    );

    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

/// `$NAME` in the connection's command is expanded from the connection and the agent only; a
/// user cannot fill a name the connection leaves unset.
#[tokio::test]
async fn client_values_are_never_expanded_into_the_connection_command() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let connection = Params::new(
        &[
            "printf",
            "%s|%s|%s\\n",
            "$TARGET",
            "${TARGET}",
            "$HOOP_CONNECTION_NAME",
        ],
        "exec",
        &tag,
    );
    let out = exec_with_client_env(
        &stream,
        connection.clone(),
        &[("envvar:TARGET", "prod-db; cat /etc/passwd")],
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "$TARGET|${TARGET}|local\n",
        "the user's value was expanded into the command"
    );
    // The connection's own value is expanded, and a client value never overrides it.
    let out = exec_with_client_env(
        &stream,
        connection.env("envvar:TARGET", "reports-db"),
        &[("envvar:TARGET", "prod-db")],
        b"",
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "reports-db|reports-db|local\n"
    );
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

/// A connection may narrow client variables to a list of names (`DYNOAGENT_CLIENT_ENV`).
#[tokio::test]
async fn a_connection_allowlist_narrows_client_variables() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let connection = || {
        Params::new(&["sh", "-c", "echo \"$REPORT_DAY\""], "exec", &tag)
            .env("envvar:DYNOAGENT_CLIENT_ENV", "REPORT_DAY, TZ")
    };
    let out = exec_with_client_env(
        &stream,
        connection(),
        &[("envvar:REPORT_DAY", "friday")],
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(out.stdout, b"friday\n");
    let out = exec_with_client_env(
        &stream,
        connection(),
        &[("envvar:REPORT_DAY", "friday"), ("envvar:OTHER", "x")],
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message
            .contains("client variable OTHER is refused: this connection allows only"),
        "{}",
        out.message
    );
    assert!(out.stdout.is_empty());
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

/// The same attack through dynoctl → dynogw → agent: `dynoctl exec bash -e BASH_ENV=…` is
/// refused, nothing runs, and the gateway's audit records the refusal without the value.
#[tokio::test]
async fn dynoctl_e_bash_env_is_refused_and_audited_without_its_value() {
    use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig};
    dynoagent_tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil-7c1f.sh");
    std::fs::write(&evil, "echo PWNED-BY-BASH_ENV\n").unwrap();
    let evil = evil.to_str().unwrap().to_owned();
    let secret = dynogw::generate_secret();
    let tag = Tag::new();
    let gw = Gateway::start(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: dir.path().join("audit.db"),
        client_tokens: vec!["boundary-token".into()],
        agents: vec![AgentDef {
            name: "boundary".into(),
            secret_sha256: Some(dynogw::hash_secret(&secret)),
            secret: None,
            ..Default::default()
        }],
        connections: vec![ConnectionDef {
            name: "report".into(),
            agent: "boundary".into(),
            command: vec!["bash".into(), "-c".into(), "echo report".into()],
            secrets: BTreeMap::from([("envvar:DYNOTEST_TAG".to_owned(), tag.0.clone())]),
            ..Default::default()
        }],
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let mut agent =
        dynoagent_tests::TestAgent::start(&dynogw::agent_dsn("boundary", &secret, gw.addr()), &[]);
    assert!(gw.wait_for_agent("boundary", dynoagent_tests::WAIT).await);
    let client = dynoctl::ClientConfig::new(format!("http://{}", gw.addr()), "boundary-token");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = dynoctl::exec(
        &client,
        dynoctl::ExecRequest {
            connection: "report".into(),
            env: BTreeMap::from([("BASH_ENV".to_owned(), evil.clone())]),
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(outcome.exit_code, 254, "{}", outcome.message);
    assert!(
        outcome
            .message
            .contains("client variable BASH_ENV is refused"),
        "{}",
        outcome.message
    );
    assert!(!String::from_utf8_lossy(&out).contains("PWNED"));
    gw.flush_audit().await;
    let store = dynogw::audit::AuditStore::open(gw.audit_db()).unwrap();
    let sessions = store.list_sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].exit_code, Some(254));
    let events = store.events(&sessions[0].id).unwrap();
    let recorded: Vec<u8> = events.iter().flat_map(|e| e.data.clone()).collect();
    let recorded = String::from_utf8_lossy(&recorded);
    assert!(recorded.contains("BASH_ENV is refused"), "{recorded}");
    assert!(
        !recorded.contains("evil-7c1f"),
        "the value reached the audit: {recorded}"
    );
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
    gw.shutdown().await;
}
