//! End-to-end tests of the development gateway: `dynoctl` (library) → `dynogw` (in process,
//! 127.0.0.1:0, temporary audit database, short offline wait) → the real agent
//! (`TestAgent`) → the local backend; and, where a test must control the agent side packet
//! by packet (the agent dropping mid-session, what the gateway sends an agent), a raw gRPC
//! fake agent. Each test checks the audit store as well as what the client saw.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use dynoagent_tests::faults::wait_until;
use dynoagent_tests::{Tag, TestAgent, WAIT, init_logs};
use dynoctl::{ClientConfig, ClientError, ExecOutcome, ExecRequest};
use dynogw::audit::{AuditStore, EventKind};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig, RunningGateway};
use hoop_wire::pb::Packet;
use hoop_wire::pb::transport_client::TransportClient;
use hoop_wire::spec::{key, packet_type as pt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

const AGENT: &str = "e2e";
const TOKEN: &str = "e2e-token";

struct Env {
    gw: RunningGateway,
    agent: Option<TestAgent>,
    secret: String,
    db_secret: String,
    tag: Tag,
    _dir: tempfile::TempDir,
}

fn connection(name: &str, agent: &str, command: &[&str], tag: &Tag) -> ConnectionDef {
    ConnectionDef {
        name: name.into(),
        agent: agent.into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        secrets: BTreeMap::from([("envvar:DYNOTEST_TAG".to_owned(), tag.0.clone())]),
        ..Default::default()
    }
}

fn config(dir: &std::path::Path, secret: &str, db_secret: &str, tag: &Tag) -> GatewayConfig {
    let mut with_secret = connection("secret", AGENT, &["bash"], tag);
    with_secret
        .secrets
        .insert("envvar:DB_PASSWORD".into(), db_secret.into());
    GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: dir.join("audit.db"),
        client_tokens: vec![TOKEN.into()],
        agents: vec![
            AgentDef {
                name: AGENT.into(),
                secret_sha256: Some(dynogw::hash_secret(secret)),
                secret: None,
                ..Default::default()
            },
            AgentDef {
                name: "ghost".into(),
                secret_sha256: None,
                secret: Some("xagt-ghost".into()),
                ..Default::default()
            },
        ],
        connections: vec![
            connection("bash", AGENT, &["bash"], tag),
            connection("cat", AGENT, &["cat"], tag),
            with_secret,
            connection("offline", "ghost", &["bash"], tag),
        ],
        offline_wait: Duration::from_millis(300),
        ..GatewayConfig::default()
    }
}

/// A gateway with a temporary audit database; with a real agent unless `real_agent` is false.
async fn start(real_agent: bool) -> Env {
    start_with(real_agent, Vec::new()).await
}

/// [`start`], with `extra` connections besides the usual ones.
async fn start_with(real_agent: bool, extra: Vec<ConnectionDef>) -> Env {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let secret = dynogw::generate_secret();
    let db_secret = format!("hunter2-{}", uuid::Uuid::new_v4());
    let tag = Tag::new();
    let mut cfg = config(dir.path(), &secret, &db_secret, &tag);
    cfg.connections.extend(extra);
    let gw = Gateway::start(cfg).await.unwrap();
    let agent = if real_agent {
        let agent = TestAgent::start(&dynogw::agent_dsn(AGENT, &secret, gw.addr()), &[]);
        assert!(
            gw.wait_for_agent(AGENT, WAIT).await,
            "agent did not connect"
        );
        Some(agent)
    } else {
        None
    };
    Env {
        gw,
        agent,
        secret,
        db_secret,
        tag,
        _dir: dir,
    }
}

impl Env {
    fn client(&self) -> ClientConfig {
        ClientConfig::new(format!("http://{}", self.gw.addr()), TOKEN)
    }

    fn store(&self) -> AuditStore {
        AuditStore::open(self.gw.audit_db()).unwrap()
    }

    async fn exec(&self, request: ExecRequest) -> (ExecOutcome, Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let outcome = tokio::time::timeout(
            WAIT,
            dynoctl::exec(&self.client(), request, &mut out, &mut err),
        )
        .await
        .expect("exec did not finish in time")
        .unwrap();
        (outcome, out, err)
    }

    /// Shuts everything down and checks nothing is left behind.
    async fn finish(mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.wait_idle().await;
            agent.shutdown().await;
        }
        self.gw.shutdown().await;
        self.tag.assert_no_processes();
    }
}

fn request(connection: &str, input: &[u8]) -> ExecRequest {
    ExecRequest {
        connection: connection.into(),
        input: Bytes::copy_from_slice(input),
        ..Default::default()
    }
}

fn events(store: &AuditStore, id: &str, kind: EventKind) -> Vec<u8> {
    store
        .events(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .flat_map(|e| e.data)
        .collect()
}

#[tokio::test]
async fn exec_relays_stdout_stderr_exit_code_and_audits_it() {
    let env = start(true).await;
    let input = b"echo out; echo err >&2; exit 3";
    let (outcome, out, err) = env.exec(request("bash", input)).await;
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!(outcome.exit_code, 3);
    let id = outcome
        .session_id
        .clone()
        .expect("session id from ClientSessionOpenOK");
    uuid::Uuid::parse_str(&id).expect("the gateway mints uuids");

    // The session end is committed before the client learns its exit code.
    let store = env.store();
    let s = store.session(&id).unwrap().unwrap();
    assert_eq!(s.status, "done");
    assert_eq!(s.exit_code, Some(3));
    assert_eq!((s.connection.as_str(), s.verb.as_str()), ("bash", "exec"));
    assert_eq!(s.command, "bash");
    assert_eq!(s.bytes_in, input.len() as u64);
    assert_eq!(s.bytes_out, 8);
    assert_eq!(events(&store, &id, EventKind::Input), input);
    let output = events(&store, &id, EventKind::Output);
    assert_eq!(output.len(), 8, "stdout and stderr are both 'o'");
    assert!(output.windows(4).any(|w| w == b"out\n") && output.windows(4).any(|w| w == b"err\n"));
    assert_eq!(
        events(&store, &id, EventKind::Error),
        outcome.message.as_bytes(),
        "the close text is the 'e' event"
    );

    // dynoctl sessions / audit render it.
    let mut table = Vec::new();
    dynoctl::report::write_sessions(&store, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.starts_with("ID "), "{table}");
    let row = table.lines().find(|l| l.starts_with(&id)).expect("row");
    assert!(
        row.contains("exec") && row.contains("done") && row.contains(" 3 "),
        "{row}"
    );
    let mut replay = Vec::new();
    dynoctl::report::write_audit(&store, &id, &mut replay).unwrap();
    let replay = String::from_utf8(replay).unwrap();
    assert!(
        replay.contains("  i  echo out; echo err >&2; exit 3\n"),
        "{replay}"
    );
    // Output that arrived together may share one row (the audit coalesces a batch's
    // consecutive events): each line is shown, the row's continuation lines indented.
    assert!(replay.contains("  o  "), "{replay}");
    for line in ["out", "err"] {
        assert!(
            replay
                .lines()
                .any(|l| l.trim_end().ends_with(&format!(" {line}"))),
            "{replay}"
        );
    }
    assert!(replay.contains("exit code 3"), "{replay}");
    assert!(matches!(
        dynoctl::report::write_audit(&store, "nope", &mut Vec::new()),
        Err(ClientError::NoSuchSession(_))
    ));
    env.finish().await;
}

#[tokio::test]
async fn exec_input_and_output_are_byte_exact() {
    let env = start(true).await;
    let input: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let (outcome, out, err) = env.exec(request("cat", &input)).await;
    assert_eq!(outcome.exit_code, 0, "{}", outcome.message);
    assert!(err.is_empty());
    assert_eq!(out, input);
    let id = outcome.session_id.unwrap();
    let store = env.store();
    assert_eq!(events(&store, &id, EventKind::Input), input);
    assert_eq!(events(&store, &id, EventKind::Output), input);
    env.finish().await;
}

#[tokio::test]
async fn client_env_and_args_reach_the_process() {
    let env = start(true).await;
    let mut req = request("bash", br#"printf '%s|' "$FOO" "$@""#);
    req.env.insert("FOO".into(), "bar baz".into());
    req.args = vec!["-s".into(), "--".into(), "a b".into(), "c".into()];
    let (outcome, out, _) = env.exec(req).await;
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(String::from_utf8(out).unwrap(), "bar baz|a b|c|");
    let s = env
        .store()
        .session(&outcome.session_id.unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(s.command, "bash -s -- a b c");
    env.finish().await;
}

#[tokio::test]
async fn connection_secrets_reach_the_process_but_not_the_audit() {
    let env = start(true).await;
    let (outcome, out, _) = env
        .exec(request(
            "secret",
            br#"printf %s "$DB_PASSWORD" | sha256sum"#,
        ))
        .await;
    assert_eq!(outcome.exit_code, 0);
    let printed = String::from_utf8(out).unwrap();
    assert!(
        printed.starts_with(&dynogw::hash_secret(&env.db_secret)),
        "the process did not see the secret: {printed}"
    );
    env.gw.flush_audit().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&env.db_secret);
    let db = env.gw.audit_db().to_owned();
    for file in [db.clone(), db.with_extension("db-wal")] {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        for needle in [
            env.db_secret.as_bytes(),
            b64.as_bytes(),
            env.secret.as_bytes(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a secret is in {}",
                file.display()
            );
        }
    }
    env.finish().await;
}

#[tokio::test]
async fn offline_agent_gets_agent_offline_after_the_configured_wait() {
    let env = start(true).await;
    let started = Instant::now();
    let e = dynoctl::exec(
        &env.client(),
        request("offline", b"true"),
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ClientError::AgentOffline(ref c) if c == "offline"),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(e.exit_code(), 254);
    let store = env.store();
    let s = store
        .list_sessions()
        .unwrap()
        .into_iter()
        .find(|s| s.connection == "offline")
        .unwrap();
    assert_eq!((s.status.as_str(), s.exit_code), ("done", Some(254)));
    assert_eq!(events(&store, &s.id, EventKind::Error), b"agent is offline");
    env.finish().await;
}

#[tokio::test]
async fn unauthorised_clients_and_unknown_connections_are_refused() {
    let env = start(false).await;
    let bad = ClientConfig::new(format!("http://{}", env.gw.addr()), "wrong");
    let e = dynoctl::exec(&bad, request("bash", b""), &mut Vec::new(), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Unauthenticated(ref m) if m == "invalid authentication"),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong"));
    let e = dynoctl::exec(
        &env.client(),
        request("nope", b""),
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ClientError::Refused(ref m) if m.contains("not found")),
        "{e}"
    );
    env.finish().await;
}

/// A raw agent stream, to play the agent's side packet by packet.
struct FakeAgent {
    tx: mpsc::Sender<Packet>,
    inbound: Streaming<Packet>,
}

async fn fake_agent(addr: SocketAddr, bearer: &str) -> Result<FakeAgent, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = TransportClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("origin", "agent".parse().unwrap());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    req.metadata_mut()
        .insert("version", "fake-1".parse().unwrap());
    let inbound = client.connect(req).await?.into_inner();
    Ok(FakeAgent { tx, inbound })
}

impl FakeAgent {
    async fn next(&mut self) -> Packet {
        tokio::time::timeout(WAIT, self.inbound.message())
            .await
            .expect("no packet for the fake agent in time")
            .unwrap()
            .expect("stream ended")
    }

    async fn send(&self, packet_type: &str, sid: &Bytes, payload: &[u8], extra: &[(&str, &str)]) {
        let mut p = Packet {
            r#type: packet_type.into(),
            payload: Bytes::copy_from_slice(payload),
            ..Default::default()
        };
        p.spec.insert(key::SESSION_ID.into(), sid.clone());
        for (k, v) in extra {
            p.spec.insert((*k).into(), Bytes::from((*v).to_owned()));
        }
        self.tx.send(p).await.unwrap();
    }
}

#[tokio::test]
async fn agents_authenticate_with_their_dsn_and_one_stream_each() {
    let env = start(false).await;
    let addr = env.gw.addr();
    let status = |r: Result<FakeAgent, Status>| {
        let s = r.err().expect("must be refused");
        (s.code(), s.message().to_owned())
    };
    assert_eq!(
        status(fake_agent(addr, &dynogw::agent_dsn(AGENT, "xagt-wrong", addr)).await),
        (Code::Unauthenticated, "invalid authentication".into())
    );
    assert_eq!(
        status(fake_agent(addr, &dynogw::agent_dsn(AGENT, "xagt-ghost", addr)).await),
        (
            Code::Unauthenticated,
            "invalid authentication, mismatch dsn attributes".into()
        )
    );
    let dsn = dynogw::agent_dsn(AGENT, &env.secret, addr);
    let mut first = fake_agent(addr, &dsn).await.unwrap();
    assert_eq!(first.next().await.r#type, pt::AGENT_GATEWAY_CONNECT_OK);
    assert_eq!(first.next().await.r#type, pt::GATEWAY_FEATURE_FLAG_UPDATE);
    assert_eq!(
        status(fake_agent(addr, &dsn).await),
        (Code::FailedPrecondition, "agent already connected".into())
    );
    drop(first);
    env.finish().await;
}

/// Reads the client's stdout as it arrives, through a pipe.
fn piped_stdout() -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
    tokio::io::duplex(64 * 1024)
}

async fn read_until(r: &mut tokio::io::DuplexStream, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = tokio::time::timeout(WAIT, r.read(&mut buf))
            .await
            .expect("client output did not arrive")
            .unwrap();
        assert!(n > 0, "client output ended early");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn session_open_is_built_like_hoops_and_an_agent_drop_closes_with_254() {
    let env = start(false).await;
    let addr = env.gw.addr();
    let mut agent = fake_agent(addr, &dynogw::agent_dsn(AGENT, &env.secret, addr))
        .await
        .unwrap();
    agent.next().await;
    agent.next().await;

    let client = env.client();
    let (mut out_w, mut out_r) = piped_stdout();
    let exec = tokio::spawn(async move {
        let mut err = Vec::new();
        let mut req = request("secret", b"the input\x00");
        req.args = vec!["-x".into()];
        req.env.insert("FOO".into(), "bar".into());
        let r = dynoctl::exec(&client, req, &mut out_w, &mut err).await;
        (r, err)
    });

    // What the gateway sends the agent (§3.2): no payload, rebuilt spec.
    let open = agent.next().await;
    assert_eq!(open.r#type, pt::AGENT_SESSION_OPEN);
    assert!(
        open.payload.is_empty(),
        "the agent's open carries no payload"
    );
    let sid = open.spec[key::SESSION_ID].clone();
    assert_eq!(open.spec[key::CONNECTION_TYPE].as_ref(), b"command-line");
    let params = hoop_gob::decode_connection_params(&open.spec[key::CONNECTION_PARAMS]).unwrap();
    assert_eq!(params.connection_name, "secret");
    assert_eq!(params.connection_type, "command-line");
    assert_eq!(params.cmd_list, vec!["bash"]);
    assert_eq!(params.client_args, vec!["-x"]);
    assert_eq!(params.client_verb, "exec");
    assert_eq!(params.client_origin, "client");
    assert_eq!(params.user_id, "dev");
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        params.env_vars["envvar:DB_PASSWORD"],
        b64.encode(&env.db_secret)
    );
    let args = hoop_gob::decode_string_slice(&open.spec[key::TERMINAL_ARGS]).unwrap();
    assert_eq!(args, vec!["-x"]);
    let client_env = hoop_gob::decode_string_map(&open.spec[key::TERMINAL_ENVVARS]).unwrap();
    assert_eq!(client_env["envvar:FOO"], b64.encode("bar"));

    agent
        .send(
            pt::CLIENT_SESSION_OPEN_OK,
            &sid,
            b"",
            &[(key::CONNECTION_TYPE, "command-line")],
        )
        .await;
    let stdin = agent.next().await;
    assert_eq!(stdin.r#type, pt::AGENT_EXEC_WRITE_STDIN);
    assert_eq!(stdin.spec[key::SESSION_ID], sid);
    assert_eq!(stdin.payload.as_ref(), b"the input\x00");
    agent
        .send(pt::CLIENT_WRITE_STDOUT, &sid, b"partial\n", &[])
        .await;
    read_until(&mut out_r, b"partial\n").await;

    // Written while the session runs: the row is open and both events are committed.
    env.gw.flush_audit().await;
    let id = String::from_utf8(sid.to_vec()).unwrap();
    let store = env.store();
    let s = store.session(&id).unwrap().unwrap();
    assert_eq!(
        (s.status.as_str(), s.exit_code, s.end),
        ("open", None, None)
    );
    assert_eq!(events(&store, &id, EventKind::Input), b"the input\x00");
    assert_eq!(events(&store, &id, EventKind::Output), b"partial\n");

    // The agent's stream drops mid-session.
    drop(agent);
    let (result, err) = tokio::time::timeout(WAIT, exec).await.unwrap().unwrap();
    let outcome = result.unwrap();
    assert!(err.is_empty());
    assert_eq!(outcome.exit_code, 254);
    assert_eq!(outcome.message, "agent has disconnected");
    let s = store.session(&id).unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.exit_code), ("done", Some(254)));
    assert_eq!(
        events(&store, &id, EventKind::Error),
        b"agent has disconnected"
    );
    env.finish().await;
}

#[tokio::test]
async fn agent_close_is_forwarded_and_answered_with_agent_session_close() {
    let env = start(false).await;
    let addr = env.gw.addr();
    let mut agent = fake_agent(addr, &dynogw::agent_dsn(AGENT, &env.secret, addr))
        .await
        .unwrap();
    agent.next().await;
    agent.next().await;
    let client = env.client();
    let exec = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = dynoctl::exec(&client, request("bash", b"x"), &mut out, &mut err).await;
        (r, out, err)
    });
    let sid = agent.next().await.spec[key::SESSION_ID].clone();
    agent.send(pt::CLIENT_SESSION_OPEN_OK, &sid, b"", &[]).await;
    assert_eq!(agent.next().await.r#type, pt::AGENT_EXEC_WRITE_STDIN);
    agent
        .send(pt::CLIENT_WRITE_STDERR, &sid, b"\xffboom", &[])
        .await;
    agent
        .send(
            pt::CLIENT_SESSION_CLOSE,
            &sid,
            b"failed executing command, reason=exit status 7",
            &[(key::EXIT_CODE, "7")],
        )
        .await;
    let close = agent.next().await;
    assert_eq!(close.r#type, pt::AGENT_SESSION_CLOSE);
    assert_eq!(close.spec[key::SESSION_ID], sid);
    let (r, out, err) = tokio::time::timeout(WAIT, exec).await.unwrap().unwrap();
    let outcome = r.unwrap();
    assert_eq!(outcome.exit_code, 7);
    assert_eq!(
        outcome.message,
        "failed executing command, reason=exit status 7"
    );
    assert!(out.is_empty());
    assert_eq!(err, b"\xffboom");

    // An unparsable exit code becomes 254.
    let client = env.client();
    let exec = tokio::spawn(async move {
        dynoctl::exec(
            &client,
            request("bash", b""),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
    });
    let sid = agent.next().await.spec[key::SESSION_ID].clone();
    agent.send(pt::CLIENT_SESSION_OPEN_OK, &sid, b"", &[]).await;
    agent.next().await;
    agent
        .send(
            pt::CLIENT_SESSION_CLOSE,
            &sid,
            b"",
            &[(key::EXIT_CODE, "x")],
        )
        .await;
    assert_eq!(agent.next().await.r#type, pt::AGENT_SESSION_CLOSE);
    let outcome = tokio::time::timeout(WAIT, exec)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.exit_code, 254);
    let s = env
        .store()
        .session(outcome.session_id.as_deref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(s.exit_code, Some(254));
    drop(agent);
    env.finish().await;
}

#[tokio::test]
async fn client_leaving_closes_the_agent_session_and_restart_marks_open_sessions_254() {
    let env = start(false).await;
    let addr = env.gw.addr();
    let mut agent = fake_agent(addr, &dynogw::agent_dsn(AGENT, &env.secret, addr))
        .await
        .unwrap();
    agent.next().await;
    agent.next().await;

    // Session 1: the client goes away mid-session.
    let client = env.client();
    let exec = tokio::spawn(async move {
        dynoctl::exec(
            &client,
            request("bash", b""),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
    });
    let sid = agent.next().await.spec[key::SESSION_ID].clone();
    agent.send(pt::CLIENT_SESSION_OPEN_OK, &sid, b"", &[]).await;
    agent.next().await;
    exec.abort();
    let close = agent.next().await;
    assert_eq!(close.r#type, pt::AGENT_SESSION_CLOSE);
    assert_eq!(close.spec[key::SESSION_ID], sid);

    // Session 2 stays open while a second gateway opens the same database, as after a crash.
    let client = env.client();
    let exec = tokio::spawn(async move {
        dynoctl::exec(
            &client,
            request("bash", b""),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
    });
    let sid2 = agent.next().await.spec[key::SESSION_ID].clone();
    agent
        .send(pt::CLIENT_SESSION_OPEN_OK, &sid2, b"", &[])
        .await;
    agent.next().await;
    env.gw.flush_audit().await;
    let id2 = String::from_utf8(sid2.to_vec()).unwrap();
    assert_eq!(env.store().session(&id2).unwrap().unwrap().status, "open");
    let mut second = config(env._dir.path(), &env.secret, &env.db_secret, &env.tag);
    second.listen = "127.0.0.1:0".parse().unwrap();
    let restarted = Gateway::start(second).await.unwrap();
    let store = AuditStore::open(restarted.audit_db()).unwrap();
    let s = store.session(&id2).unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.exit_code), ("done", Some(254)));
    assert!(s.end.is_some());
    restarted.shutdown().await;

    // Shutting the first gateway down closes the live session with 254 "gateway shutdown".
    let gw_done = tokio::spawn(async move { env.gw.shutdown().await });
    assert_eq!(agent.next().await.r#type, pt::AGENT_SESSION_CLOSE);
    let outcome = tokio::time::timeout(WAIT, exec)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (outcome.exit_code, outcome.message.as_str()),
        (254, "gateway shutdown")
    );
    tokio::time::timeout(WAIT, gw_done).await.unwrap().unwrap();
}

#[tokio::test]
async fn fifty_concurrent_sessions() {
    let env = start(true).await;
    let mut tasks = Vec::new();
    for n in 0..50u32 {
        let client = env.client();
        tasks.push(tokio::spawn(async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let input = format!("echo {n}; exit {}", n % 7);
            let o = dynoctl::exec(
                &client,
                request("bash", input.as_bytes()),
                &mut out,
                &mut err,
            )
            .await
            .unwrap();
            (n, o, out)
        }));
    }
    for t in tasks {
        let (n, o, out) = tokio::time::timeout(WAIT * 3, t).await.unwrap().unwrap();
        assert_eq!(o.exit_code, (n % 7) as i32);
        assert_eq!(out, format!("{n}\n").into_bytes());
    }
    let sessions = env.store().list_sessions().unwrap();
    assert_eq!(sessions.len(), 50);
    assert!(sessions.iter().all(|s| s.status == "done"));
    env.finish().await;
}

/// An upstream for the relay test: each connection sends one line. `flood` gets an endless
/// stream back (at most 1 GiB, until the write fails), counted in `flooded`; any other line is
/// reported on `seen`.
async fn flood_upstream(flooded: Arc<AtomicU64>) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (flooded, seen_tx) = (flooded.clone(), seen_tx.clone());
            tokio::spawn(async move {
                let mut line = Vec::new();
                while !line.ends_with(b"\n") && line.len() < 64 {
                    let mut byte = [0u8; 1];
                    match socket.read(&mut byte).await {
                        Ok(1) => line.push(byte[0]),
                        _ => return,
                    }
                }
                if line == b"flood\n" {
                    let chunk = vec![b'f'; 64 * 1024];
                    for _ in 0..16 * 1024 {
                        if socket.write_all(&chunk).await.is_err() {
                            return;
                        }
                        flooded.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                } else {
                    let _ = seen_tx.send(line);
                }
            });
        }
    });
    (addr, seen)
}

/// STYLE 16 in the gateway's relay: a client that stops reading its output (a slow terminal,
/// a local socket nobody reads) must still reach the agent with what it sends. Here one local
/// connection of a `tcp` session floods and is never read, which fills every buffer back to the
/// gateway; a second connection of the same session must still get its line to its upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_output_still_reaches_the_agent() {
    let flooded = Arc::new(AtomicU64::new(0));
    let (upstream, mut seen) = flood_upstream(flooded.clone()).await;
    let tcp = ConnectionDef {
        name: "flood".into(),
        agent: AGENT.into(),
        connection_type: hoop_wire::spec::CONNECTION_TYPE_TCP.into(),
        secrets: BTreeMap::from([
            ("envvar:HOST".to_owned(), upstream.ip().to_string()),
            ("envvar:PORT".to_owned(), upstream.port().to_string()),
        ]),
        ..Default::default()
    };
    let env = start_with(true, vec![tcp]).await;
    let client = env.client();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let ctl = tokio::spawn(async move {
        dynoctl::terminal::connect(
            &client,
            "flood",
            &[],
            &BTreeMap::new(),
            dynoctl::terminal::FirstPacket::Newline,
            0,
            move |addr| {
                let _ = ready_tx.send(addr);
            },
        )
        .await
    });
    let local = tokio::time::timeout(WAIT, ready).await.unwrap().unwrap();

    // A asks for the flood and never reads (a small receive buffer, so it fills early).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut a = socket.connect(local).await.unwrap();
    a.write_all(b"flood\n").await.unwrap();
    // Wait for the flood to stop: every buffer from A back to the upstream is full (about
    // 17 MiB here), so the gateway cannot hand the client anything more. This only decides
    // *when* the test looks; what it checks does not depend on timing: the line below must
    // arrive whatever the state of the flood.
    let (mut last, mut still) = (0, 0);
    wait_until("the flood to fill every buffer and stop", WAIT, || {
        let now = flooded.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        now >= 8 << 20 && still >= 5
    })
    .await;

    let mut b = tokio::net::TcpStream::connect(local).await.unwrap();
    b.write_all(b"ping\n").await.unwrap();
    let line = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the second connection's line reached its upstream while the first was stalled")
        .unwrap();
    assert_eq!(line, b"ping\n");

    ctl.abort();
    drop((a, b));
    env.finish().await;
}

/// Whether a thread of process `pid` is blocked in `write`/`writev` on its stdout, read from
/// `/proc/PID/task/*/syscall` ("NR ARG0 …" while a thread sleeps in a system call). Panics,
/// saying why, where that file cannot tell (another architecture, or no access to it).
fn blocked_writing_stdout(pid: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    const WRITES: &[&str] = &["1", "20"];
    #[cfg(target_arch = "aarch64")]
    const WRITES: &[&str] = &["64", "66"];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const WRITES: &[&str] = &[];
    assert!(
        !WRITES.is_empty(),
        "this test knows the numbers of write(2) and writev(2) on x86_64 and aarch64 only"
    );
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        match std::fs::read_to_string(task.path().join("syscall")) {
            Ok(line) => {
                let mut fields = line.split_whitespace();
                let nr = fields.next().unwrap_or_default();
                WRITES.contains(&nr) && fields.next() == Some("0x1")
            }
            // The thread has just ended.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => panic!(
                "cannot read {}: {e} (this test needs ptrace access to its own children)",
                task.path().join("syscall").display()
            ),
        }
    })
}

/// STYLE 16 in the client, as hoop's CLI reads stdin in its own goroutine: `dynoctl connect`
/// whose terminal has stopped draining its output (a paused or very slow terminal) must still
/// send what the user types. The real binary runs on a PTY whose output side the test never
/// reads; the session prints more than that PTY holds, then waits for a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_sends_keystrokes_while_its_terminal_is_not_drained() {
    const FLOOD: usize = 3 << 19;
    let Some(dynoctl_bin) = dynoagent_tests::faults::workspace_binary("dynoctl") else {
        panic!(
            "the dynoctl binary is not built: run `cargo test --workspace` \
             (or `cargo build -p dynoctl` first)"
        );
    };
    assert_ne!(
        dynoagent_tests::faults::is_stale(&dynoctl_bin),
        Some(true),
        "{} is older than its sources: run `cargo build -p dynoctl` first \
         (`cargo test --workspace` rebuilds it)",
        dynoctl_bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (printed, typed) = (dir.path().join("printed"), dir.path().join("typed"));
    // 1.5 MiB: more than a PTY holds (a few hundred KiB at most), less than the path holds
    // (dynoctl's HTTP/2 stream window alone is 2 MiB), so the session reaches its `read` while
    // the client's terminal is full.
    let script = format!(
        "head -c {FLOOD} /dev/zero | tr '\\0' x; : > {}; IFS= read -r line; printf %s \"$line\" > {}; exit 7",
        printed.display(),
        typed.display()
    );
    let tag = Tag::new();
    let term = connection("flood-then-read", AGENT, &["bash", "-c", &script], &tag);
    let env = start_with(true, vec![term]).await;

    let pty = nix::pty::openpty(None, None).unwrap();
    // Not inherited by what other tests start meanwhile: a stray copy of the terminal's other
    // side would keep the drain below from ever seeing its end.
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
    }
    let child = std::process::Command::new(&dynoctl_bin)
        .args(["connect", "flood-then-read"])
        .env("DYNOCTL_GATEWAY", format!("http://{}", env.gw.addr()))
        .env("DYNOCTL_TOKEN", TOKEN)
        .stdin(std::fs::File::from(pty.slave.try_clone().unwrap()))
        .stdout(std::fs::File::from(pty.slave.try_clone().unwrap()))
        .stderr(std::fs::File::from(pty.slave))
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    // Killed with its group on every exit path, a failed assertion included.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            if let Ok(pid) = i32::try_from(self.0.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let mut master = std::fs::File::from(pty.master);

    // Once the session has printed everything (so the line's echo cannot land inside the
    // output) and a thread of dynoctl sleeps writing to the full terminal, nothing drains it
    // again: this decides when the test types, not what it checks.
    let mut exited = None;
    wait_until(
        "the session to print and dynoctl to block writing to its full terminal",
        WAIT,
        || {
            exited = child.0.try_wait().unwrap();
            exited.is_some() || (printed.exists() && blocked_writing_stdout(pid))
        },
    )
    .await;
    if let Some(status) = exited {
        let mut shown = vec![0u8; 4096];
        let n = std::io::Read::read(&mut master, &mut shown).unwrap_or(0);
        panic!(
            "dynoctl ended early ({status}): {}",
            String::from_utf8_lossy(&shown[..n])
        );
    }
    std::io::Write::write_all(&mut master, b"typed while blocked\r").unwrap();
    wait_until(
        "the line typed while dynoctl's terminal was full to reach the session",
        WAIT,
        || std::fs::read_to_string(&typed).is_ok_and(|s| s == "typed while blocked"),
    )
    .await;

    // The session has ended at the gateway (so the gateway has ended the stream), and
    // dynoctl is still writing its output: a key typed now must not end dynoctl early.
    let store = env.store();
    wait_until("the gateway to end the session", WAIT, || {
        store
            .list_sessions()
            .unwrap()
            .iter()
            .any(|s| s.connection == "flood-then-read" && s.status == "done")
    })
    .await;
    std::io::Write::write_all(&mut master, b"z").unwrap();

    // Drained at last, the terminal shows every byte in order, and dynoctl exits with the
    // session's code once all of it is written.
    let reader = tokio::task::spawn_blocking(move || {
        let (mut shown, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
        // EIO once dynoctl, the only holder of the PTY's other side, has exited.
        while let Ok(n @ 1..) = std::io::Read::read(&mut master, &mut buf) {
            shown.extend_from_slice(&buf[..n]);
        }
        shown
    });
    let shown = tokio::time::timeout(WAIT, reader)
        .await
        .expect("dynoctl did not finish once its terminal drained")
        .unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(7), "dynoctl's exit status");
    let longest_run = shown
        .split(|b| *b != b'x')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    assert_eq!(longest_run, FLOOD, "the session's output, whole");
    let echoed = String::from_utf8_lossy(&shown);
    assert!(echoed.contains("typed while blocked"), "{echoed:?}");
    drop(child);
    env.finish().await;
    tag.assert_no_processes();
}
