//! Session limits end to end (issue 14): input budgeted in bytes, the first-input timeout,
//! the idle timeout and the maximum lifetime (each named in the close message), and the hard
//! deadline after a close for a backend that ignores it. Every test ends with no session task
//! and no process left.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, AgentConfig, Router};
use backend::{Backend, ExitStatus, SessionIo, SessionRequest};
use bytes::Bytes;
use dynoagent_tests::{FakeGateway, Params, Tag, WAIT, init_logs, setup, sid};
use hoop_wire::{AgentPacket, ClientPacket};

async fn open(
    stream: &dynoagent_tests::AgentStream,
    params: Params,
) -> (hoop_wire::SessionId, dynoagent_tests::SessionReplies) {
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream.send(params.open(&id)).await;
    let ok = replies.next().await;
    assert!(matches!(ok, ClientPacket::SessionOpenOk { .. }), "{ok:?}");
    (id, replies)
}

#[tokio::test]
async fn terminal_input_is_budgeted_in_bytes_per_session() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[("DYNOAGENT_SESSION_INPUT_MIB", "2")]).await;
    // `sleep` never reads its terminal: input piles up in the agent.
    let (id, mut replies) = open(&stream, Params::new(&["sleep", "600"], "connect", &tag)).await;
    let paste = Bytes::from("y\n".repeat(512 * 1024));
    // Eight 1 MiB packets: far below the 64-packet queue, four times the byte budget.
    for _ in 0..8 {
        stream
            .send(AgentPacket::TerminalWriteStdin {
                session_id: id.clone(),
                data: paste.clone(),
            })
            .await;
    }
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("DYNOAGENT_SESSION_INPUT_MIB"),
        "{}",
        out.message
    );
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn the_agent_wide_budget_caps_all_sessions_together() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[
        ("DYNOAGENT_SESSION_INPUT_MIB", "8"),
        ("DYNOAGENT_INPUT_BUDGET_MIB", "3"),
    ])
    .await;
    let paste = Bytes::from("y\n".repeat(512 * 1024));
    // The first session's process never reads: it keeps 3 x 1 MiB, the agent's whole budget.
    let (first, _first_replies) =
        open(&stream, Params::new(&["sleep", "600"], "connect", &tag)).await;
    // The first terminal write only picks the mode and is discarded.
    for _ in 0..4 {
        stream
            .send(AgentPacket::TerminalWriteStdin {
                session_id: first.clone(),
                data: paste.clone(),
            })
            .await;
    }
    // The second session cannot get budget for its input and is closed, naming the setting.
    let (second, mut replies) =
        open(&stream, Params::new(&["sleep", "600"], "connect", &tag)).await;
    for _ in 0..2 {
        stream
            .send(AgentPacket::TerminalWriteStdin {
                session_id: second.clone(),
                data: paste.clone(),
            })
            .await;
    }
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("DYNOAGENT_INPUT_BUDGET_MIB"),
        "{}",
        out.message
    );
    stream
        .send(AgentPacket::SessionClose { session_id: second })
        .await;
    // Closing the first session returns its budget.
    stream
        .send(AgentPacket::SessionClose {
            session_id: first.clone(),
        })
        .await;
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

#[tokio::test]
async fn a_session_without_input_is_closed_after_the_first_input_timeout() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[("DYNOAGENT_FIRST_INPUT_TIMEOUT_SECS", "1")]).await;
    let (id, mut replies) = open(&stream, Params::new(&["true"], "exec", &tag)).await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("no input within 1 s"),
        "{}",
        out.message
    );
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    agent.shutdown().await;
}

#[tokio::test]
async fn idle_sessions_and_sessions_past_their_lifetime_are_closed_with_the_reason() {
    let tag = Tag::new();
    let (_gw, mut agent, stream) = setup(&[
        ("DYNOAGENT_SESSION_IDLE_TIMEOUT_SECS", "1"),
        ("DYNOAGENT_SESSION_MAX_LIFETIME_SECS", "3"),
    ])
    .await;
    // Silent: idle after 1 s.
    let (quiet, mut replies) = open(&stream, Params::new(&["sleep", "600"], "exec", &tag)).await;
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: quiet.clone(),
            data: Bytes::new(),
        })
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(out.message.contains("idle timeout"), "{}", out.message);
    stream
        .send(AgentPacket::SessionClose { session_id: quiet })
        .await;

    // Busy: output keeps it from being idle; the lifetime ends it.
    let (busy, mut replies) = open(
        &stream,
        Params::new(
            &["bash", "-c", "while :; do echo tick; sleep 0.2; done"],
            "exec",
            &tag,
        ),
    )
    .await;
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: busy.clone(),
            data: Bytes::new(),
        })
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("maximum session lifetime"),
        "{}",
        out.message
    );
    let ticks = String::from_utf8_lossy(&out.stdout).matches("tick").count();
    assert!(ticks >= 8, "the busy session ended early: {ticks} ticks");
    stream
        .send(AgentPacket::SessionClose { session_id: busy })
        .await;
    agent.wait_idle().await;
    tag.assert_no_processes();
    agent.shutdown().await;
}

/// A backend that ignores cancellation and never returns; `started` fires when it runs.
#[derive(Debug, Default)]
struct Stubborn {
    started: tokio::sync::Notify,
}

impl Backend for Stubborn {
    fn name(&self) -> &'static str {
        "stubborn"
    }
    fn run(
        &self,
        request: SessionRequest,
        io: SessionIo,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ExitStatus> + Send>> {
        self.started.notify_one();
        Box::pin(async move {
            // Holds the session (and its `filesystem:` files) for as long as it runs.
            let _held = (request, io);
            std::future::pending().await
        })
    }
}

#[tokio::test]
async fn a_backend_that_ignores_close_is_abandoned_at_the_deadline() {
    init_logs();
    let mut gw = FakeGateway::start("agent-stubborn", "xagt-stubborn-secret").await;
    let env: HashMap<String, String> = [("HOOP_KEY".to_owned(), gw.dsn())].into();
    let mut config = AgentConfig::from_sources(&env, agent::VERSION).unwrap();
    config.limits.cancel_deadline = Duration::from_millis(500);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stubborn = Arc::new(Stubborn::default());
    let agent = Agent::new(config, Router::new(stubborn.clone()), shutdown.clone());
    let mut live = agent.live_sessions();
    let task = tokio::spawn(agent.run());
    let stream = gw.next_agent().await;
    let tag = Tag::new();
    let (id, _replies) = open(&stream, Params::new(&["anything"], "exec", &tag)).await;
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::new(),
        })
        .await;
    tokio::time::timeout(WAIT, stubborn.started.notified())
        .await
        .expect("the backend never ran");
    assert_eq!(*live.borrow(), 1);
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    tokio::time::timeout(WAIT, live.wait_for(|n| *n == 0))
        .await
        .expect("the session was not abandoned after its deadline")
        .unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
}

/// Issue 14: one shutdown deadline shared by the engine's drain, the stream close and the
/// final task wait. A session whose backend ignores the close must not stretch the shutdown
/// past `DYNOAGENT_SHUTDOWN_TIMEOUT_SECS`, and the `filesystem:` secret it still holds is
/// removed with the agent's env directory.
#[tokio::test]
async fn shutdown_ends_within_its_one_deadline_even_with_a_stuck_session() {
    init_logs();
    let mut gw = FakeGateway::start("agent-stuck", "xagt-stuck-secret").await;
    let dir = tempfile::tempdir().unwrap();
    let env_dir = dir.path().join("env");
    let env: HashMap<String, String> = [
        ("HOOP_KEY".to_owned(), gw.dsn()),
        ("DYNOAGENT_SHUTDOWN_TIMEOUT_SECS".to_owned(), "8".to_owned()),
        (
            "DYNOAGENT_ENV_DIR".to_owned(),
            env_dir.to_str().unwrap().to_owned(),
        ),
    ]
    .into();
    let mut config = AgentConfig::from_sources(&env, agent::VERSION).unwrap();
    // Longer than the shutdown: only the shutdown deadline can end this session.
    config.limits.cancel_deadline = Duration::from_secs(600);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stubborn = Arc::new(Stubborn::default());
    let agent = Agent::new(config, Router::new(stubborn.clone()), shutdown.clone());
    let live = agent.live_sessions();
    let task = tokio::spawn(agent.run());
    let stream = gw.next_agent().await;
    let tag = Tag::new();
    let params = Params::new(&["anything"], "exec", &tag).env("filesystem:KEY_FILE", "secret");
    let (id, _replies) = open(&stream, params).await;
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id,
            data: Bytes::new(),
        })
        .await;
    tokio::time::timeout(WAIT, stubborn.started.notified())
        .await
        .expect("the backend never ran");
    assert_eq!(*live.borrow(), 1);
    let started = std::time::Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(8),
        "shutdown took {took:?}, over its 8 s budget"
    );
    assert!(
        !env_dir.exists(),
        "the env directory is left: {:?}",
        std::fs::read_dir(&env_dir).map(|d| d.count())
    );
}
