//! End-to-end tests of the agent core against an in-process hoop gateway on 127.0.0.1:0:
//! exec and terminal sessions on the local backend, close and shutdown, reconnects, bad input
//! and concurrency. Every test ends by checking that no session task and no process is left.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use dynoagent_tests::{FakeGateway, Params, Tag, setup, sid};
use hoop_wire::pb::Packet;
use hoop_wire::spec::{key, packet_type as pt};
use hoop_wire::{AgentPacket, ClientPacket, TermSize};

/// Opens an exec session, sends `stdin`, and returns what the client saw.
async fn exec(
    stream: &dynoagent_tests::AgentStream,
    params: Params,
    stdin: &[u8],
) -> dynoagent_tests::Outcome {
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream.send(params.open(&id)).await;
    let ok = replies.next().await;
    assert!(
        matches!(ok, ClientPacket::SessionOpenOk { .. }),
        "expected open ok, got {ok:?}"
    );
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::copy_from_slice(stdin),
        })
        .await;
    let mut outcome = replies.until_close().await;
    outcome.open_ok = Some(ok);
    // The gateway answers every close with AgentSessionClose, as hoop's does.
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    outcome
}

#[tokio::test]
async fn exec_streams_stdout_stderr_and_exit_codes() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;

    let out = exec(
        &stream,
        Params::new(&["sh", "-c"], "exec", &tag).args(&["echo out; echo err >&2"]),
        b"",
    )
    .await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.message, "");
    match out.open_ok.unwrap() {
        ClientPacket::SessionOpenOk {
            command,
            connection_type,
            ..
        } => {
            assert_eq!(command, "sh -c echo out; echo err >&2");
            assert_eq!(connection_type, "command-line");
        }
        other => panic!("{other:?}"),
    }

    let out = exec(
        &stream,
        Params::new(&["sh", "-c", "exit 3"], "exec", &tag),
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(3));
    assert!(out.message.contains("exit status 3"), "{}", out.message);

    let out = exec(
        &stream,
        Params::new(&["/no/such/program-dynotest"], "exec", &tag),
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(127));
    assert!(out.message.contains("not found"), "{}", out.message);

    let out = exec(
        &stream,
        Params::new(&["sh", "-c", "kill -TERM $$"], "exec", &tag),
        b"",
    )
    .await;
    assert_eq!(out.exit_code, Some(128 + 15));
    assert!(out.message.contains("SIGTERM"), "{}", out.message);

    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn ten_mib_of_binary_stdin_is_echoed_byte_exact() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    // Every byte value, in a pattern that is not periodic at any chunk size.
    let input: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let out = exec(&stream, Params::new(&["cat"], "exec", &tag), &input).await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "output differs from input");
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn output_chunks_stay_within_64_kib() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(Params::new(&["head", "-c", "3000000", "/dev/zero"], "exec", &tag).open(&id))
        .await;
    replies.next().await;
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::new(),
        })
        .await;
    let mut total = 0;
    loop {
        match replies.next().await {
            ClientPacket::Stdout { data, .. } => {
                assert!(data.len() <= 64 * 1024, "chunk of {} bytes", data.len());
                total += data.len();
            }
            ClientPacket::SessionClose { exit_code, .. } => {
                assert_eq!(exit_code, Some(0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(total, 3_000_000);
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn envvar_and_filesystem_variables_reach_the_process() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let params = Params::new(&["sh", "-c"], "exec", &tag)
        .args(&["echo \"$GREETING\"; cat \"$KEYFILE\"; echo; echo \"$KEYFILE\"; echo \"$HOOP_CONNECTION_NAME $HOOP_USER_EMAIL\"; stat -c %a \"$KEYFILE\"; echo \"${HOOP_KEY:-no-agent-secrets}\""])
        .env("envvar:GREETING", "hello world")
        .env("filesystem:KEYFILE", "-----BEGIN TEST KEY-----");
    let out = exec(&stream, params, b"").await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "hello world");
    assert_eq!(lines[1], "-----BEGIN TEST KEY-----");
    let path = lines[2];
    assert!(path.ends_with(".envfs"), "{path}");
    assert_eq!(lines[3], "local dev@example.com");
    assert_eq!(lines[4], "600");
    assert_eq!(
        lines[5], "no-agent-secrets",
        "the agent's own HOOP_KEY must not leak into sessions"
    );
    agent.wait_idle().await;
    assert!(
        !std::path::Path::new(path).exists(),
        "filesystem: file must be removed after the session"
    );
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn terminal_applies_a_resize_sent_before_the_first_write() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let id = sid();
    let mut replies = stream.watch_session(&id);
    // `stty size` prints the size, then the shell waits for a line so that a later resize
    // can be observed too.
    let script = "stty size; read line; stty size; echo \"got:$line\"";
    stream
        .send(Params::new(&["bash", "-c", script], "connect", &tag).open(&id))
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    let resize = |rows, cols| AgentPacket::TerminalResize {
        session_id: id.clone(),
        size: TermSize {
            rows,
            cols,
            xpixel: 0,
            ypixel: 0,
        },
    };
    stream.send(resize(40, 120)).await;
    stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"\n"),
        })
        .await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("40 120") {
        match replies.next().await {
            ClientPacket::Stdout { data, .. } => seen.extend_from_slice(&data),
            other => panic!(
                "unexpected {other:?} before the size was printed: {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    stream.send(resize(30, 100)).await;
    stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"hi\r"),
        })
        .await;
    let out = replies.until_close().await;
    seen.extend_from_slice(&out.stdout);
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("30 100"),
        "later resize not applied: {text:?}"
    );
    assert!(
        text.contains("got:hi"),
        "keystrokes not delivered: {text:?}"
    );
    assert!(!text.starts_with('\n'), "the first write must be discarded");
    assert_eq!(out.exit_code, Some(0));
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn session_close_kills_a_running_process_and_sends_nothing_more() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(
            Params::new(
                &["sh", "-c", "sleep 100 & echo ready; sleep 100; wait"],
                "exec",
                &tag,
            )
            .open(&id),
        )
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
    // Close only once the shell has started its background job.
    match replies.next().await {
        ClientPacket::Stdout { data, .. } => assert_eq!(&data[..], b"ready\n"),
        other => panic!("{other:?}"),
    }
    assert!(!tag.processes().is_empty());
    stream
        .send(AgentPacket::SessionClose {
            session_id: id.clone(),
        })
        .await;
    agent.wait_idle().await;
    tag.assert_no_processes();
    // Packets for the closed session are dropped, and the agent sent nothing after the close.
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"late"),
        })
        .await;
    let probe = exec(&stream, Params::new(&["true"], "exec", &tag), b"").await;
    assert_eq!(probe.exit_code, Some(0));
    assert!(
        replies.try_next().is_none(),
        "the agent must not answer a closed session"
    );
    agent.wait_idle().await;
    agent.shutdown().await;
}

#[tokio::test]
async fn agent_reconnects_after_the_gateway_restarts() {
    let tag = Tag::new();
    let (gw, mut agent, stream) = setup(&[]).await;
    let addr = gw.addr();
    let dsn = gw.dsn();
    let secret = dsn
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    // A session is running when the gateway dies; the agent must end it.
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(Params::new(&["sleep", "100"], "exec", &tag).open(&id))
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id,
            data: Bytes::new(),
        })
        .await;
    stream
        .fail(tonic::Status::unavailable("gateway restarting"))
        .await;
    gw.kill();
    agent.wait_idle().await;
    tag.assert_no_processes();

    let mut gw = FakeGateway::start_on(addr, "agent-test", &secret).await;
    let stream = gw.next_agent().await;
    let out = exec(&stream, Params::new(&["echo", "back"], "exec", &tag), b"").await;
    assert_eq!(out.stdout, b"back\n");
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn presents_hoop_metadata_and_sends_keepalive_packets_only_as_gateway_control() {
    let (gw, agent, _stream) = setup(&[]).await;
    let attempts = gw.attempts();
    let md = &attempts.last().unwrap().metadata;
    assert_eq!(md["authorization"], format!("Bearer {}", gw.dsn()));
    assert_eq!(md["origin"], "agent");
    assert_eq!(md["version"], agent::VERSION);
    for k in [
        "hostname",
        "platform",
        "kernel-version",
        "go-version",
        "compiler",
        "machine-id",
    ] {
        assert!(md.contains_key(k), "missing metadata {k}");
    }
    assert!(md["platform"].starts_with("linux/"));
    assert!(md["user-agent"].starts_with("hoopagent/"));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_never_logged() {
    dynoagent_tests::init_logs();
    let gw = FakeGateway::start("agent-test", "xagt-right").await;
    let wrong = gw.dsn().replace("xagt-right", "xagt-wrong-secret");
    let config = agent::AgentConfig::from_sources(
        &[("HOOP_KEY".to_owned(), wrong)].into_iter().collect(),
        agent::VERSION,
    )
    .unwrap();
    let err = gateway_link::connect(&config.link).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, gateway_link::LinkError::Unauthenticated(_)),
        "{text}"
    );
    assert!(text.contains("HOOP_KEY"), "{text}");
    assert!(
        !text.contains("xagt-wrong-secret"),
        "the secret leaked: {text}"
    );
    assert!(!gw.attempts()[0].accepted);
}

#[tokio::test]
async fn bad_packets_get_errors_and_the_agent_keeps_serving() {
    let tag = Tag::new();
    let (_gw, mut agent, mut stream) = setup(&[]).await;

    // Unknown type, and a known type without a session id: ignored.
    stream
        .send_raw(Packet {
            r#type: "NoSuchPacketType".into(),
            ..Default::default()
        })
        .await;
    stream
        .send_raw(Packet {
            r#type: pt::AGENT_EXEC_WRITE_STDIN.into(),
            payload: Bytes::from_static(b"x"),
            ..Default::default()
        })
        .await;
    // A session id that is not UTF-8 cannot be expressed in `Packet`; the lenient decoder
    // is covered by hoop-wire's unit tests.

    // Bad gob: refused with 254 and hoop's message.
    let bad = sid();
    let mut replies = stream.watch_session(&bad);
    let mut p = Packet {
        r#type: pt::AGENT_SESSION_OPEN.into(),
        ..Default::default()
    };
    p.spec
        .insert(key::SESSION_ID.into(), Bytes::from(bad.to_string()));
    p.spec.insert(
        key::CONNECTION_PARAMS.into(),
        Bytes::from_static(b"\x03\xff\x81\x00garbage"),
    );
    stream.send_raw(p).await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert!(
        out.message.contains("failed decoding connection params"),
        "{}",
        out.message
    );

    // Malformed resize for a live session: ignored, the session still works.
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(Params::new(&["cat"], "exec", &tag).open(&id))
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    let mut resize = Packet {
        r#type: pt::AGENT_TERMINAL_RESIZE_TTY.into(),
        payload: Bytes::from_static(b"1,2"),
        ..Default::default()
    };
    resize
        .spec
        .insert(key::SESSION_ID.into(), Bytes::from(id.to_string()));
    stream.send_raw(resize).await;
    // An oversized stdin (over hoop's 17 MiB): the session is closed with a clear error.
    let big = vec![b'a'; 18 * 1024 * 1024];
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::from(big),
        })
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("17 MiB"), "{}", out.message);
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;

    // Nothing above produced a packet for an unknown session, and the agent still serves.
    let ok = exec(
        &stream,
        Params::new(&["echo", "still here"], "exec", &tag),
        b"",
    )
    .await;
    assert_eq!(ok.stdout, b"still here\n");
    agent.wait_idle().await;
    tag.assert_no_processes();
    let _ = &mut stream;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_hundred_concurrent_exec_sessions() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[]).await;
    let stream = std::sync::Arc::new(stream);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let stream = std::sync::Arc::clone(&stream);
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let input = format!("session {i}\n");
            let out = exec(
                &stream,
                Params::new(&["sh", "-c", "cat; exit $(( $N % 7 ))"], "exec", &tag)
                    .env("envvar:N", &i.to_string()),
                input.as_bytes(),
            )
            .await;
            assert_eq!(out.stdout, input.as_bytes());
            assert_eq!(out.exit_code, Some(i % 7));
            assert_eq!(out.closes, 1);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn sessions_over_the_limit_are_refused_with_254() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[("DYNOAGENT_MAX_SESSIONS", "2")]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let id = sid();
        let mut replies = stream.watch_session(&id);
        stream
            .send(Params::new(&["sleep", "100"], "exec", &tag).open(&id))
            .await;
        assert!(matches!(
            replies.next().await,
            ClientPacket::SessionOpenOk { .. }
        ));
        held.push((id, replies));
    }
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream
        .send(Params::new(&["true"], "exec", &tag).open(&id))
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert!(
        out.message.contains("limit of 2 concurrent sessions"),
        "{}",
        out.message
    );
    for (id, _) in &held {
        stream
            .send(AgentPacket::SessionClose {
                session_id: id.clone(),
            })
            .await;
    }
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_live_sessions_with_254_and_ends_the_stream() {
    let tag = Tag::new();
    let (_gw, agent, mut stream) = setup(&[]).await;
    let mut sessions = Vec::new();
    for verb in ["exec", "connect"] {
        let id = sid();
        let mut replies = stream.watch_session(&id);
        stream
            .send(Params::new(&["sleep", "100"], verb, &tag).open(&id))
            .await;
        assert!(matches!(
            replies.next().await,
            ClientPacket::SessionOpenOk { .. }
        ));
        let first = if verb == "exec" {
            AgentPacket::ExecWriteStdin {
                session_id: id.clone(),
                data: Bytes::new(),
            }
        } else {
            AgentPacket::TerminalWriteStdin {
                session_id: id.clone(),
                data: Bytes::from_static(b"\n"),
            }
        };
        stream.send(first).await;
        sessions.push(replies);
    }
    agent.shutdown().await;
    for mut replies in sessions {
        let out = replies.until_close().await;
        assert_eq!(out.exit_code, Some(254));
        assert_eq!(out.message, "agent shutting down");
    }
    stream.wait_ended().await;
    tag.assert_no_processes();
}

/// The gateway's gob bytes as Go's `encoding/gob` wrote them (crates/hoop-gob/fixtures). The
/// fixture fills every field, guardrail rules included, so the operator's opt-out lets it run
/// (without it the session is refused at open: see `real_hoop.rs`).
#[tokio::test]
async fn decodes_session_opens_built_from_go_gob_fixtures() {
    let (_gw, mut agent, stream) = setup(&[("DYNOAGENT_ALLOW_UNENFORCED_POLICIES", "true")]).await;
    let id = sid();
    let mut replies = stream.watch_session(&id);
    let fixture = |name: &str| {
        Bytes::from(
            std::fs::read(format!(
                "{}/../crates/hoop-gob/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
    };
    let mut p = Packet {
        r#type: pt::AGENT_SESSION_OPEN.into(),
        ..Default::default()
    };
    p.spec
        .insert(key::SESSION_ID.into(), Bytes::from(id.to_string()));
    p.spec.insert(
        key::CONNECTION_TYPE.into(),
        Bytes::from_static(b"command-line"),
    );
    p.spec
        .insert(key::CONNECTION_PARAMS.into(), fixture("params.gob"));
    p.spec
        .insert(key::TERMINAL_ARGS.into(), fixture("args.gob"));
    p.spec
        .insert(key::TERMINAL_ENVVARS.into(), fixture("env_client.gob"));
    p.spec
        .insert(key::REQUEST_PORT.into(), Bytes::from_static(b"5432"));
    stream.send_raw(p).await;
    match replies.next().await {
        ClientPacket::SessionOpenOk {
            command,
            request_port,
            ..
        } => {
            assert_eq!(
                command,
                "/app/bin/ps-exec.sh --app X --dyno web.2 --pipe rails runner -"
            );
            assert_eq!(request_port.as_deref(), Some(&b"5432"[..]));
        }
        other => panic!("{other:?}"),
    }
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"pp ENV"),
        })
        .await;
    // The command routes to the psexec backend, which gets the fixture's arguments and
    // refuses the fixture's app name before any API call.
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(2), "{}", out.message);
    assert!(
        out.message.contains("invalid app name \"X\""),
        "{}",
        out.message
    );
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    agent.shutdown().await;
}
