//! The binary's start-up contract: a missing or malformed `HOOP_KEY` stops it at once with a
//! one-line error that names the variable and never shows the secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dynoagent"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run dynoagent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_hoop_key_is_a_one_line_error() {
    let (code, stderr) = run(&[]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HOOP_KEY is not set"), "{stderr}");
}

#[test]
fn malformed_hoop_key_names_the_variable_without_the_secret() {
    for bad in [
        "grpc://agent:hunter2-secret@127.0.0.1",
        "grpc://agent:hunter2-secret@127.0.0.1:1?mode=embedded",
        "nonsense hunter2-secret",
    ] {
        let (code, stderr) = run(&[("HOOP_KEY", bad)]);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("HOOP_KEY is malformed"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "secret leaked: {stderr}");
    }
}

#[test]
fn version_prints_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dynoagent "));
}

/// The real binary against an in-process gateway: SIGTERM closes live sessions with 254 and
/// "agent shutting down", kills their processes, and the agent exits 0 well within 25 s.
#[tokio::test]
async fn sigterm_drains_live_sessions_and_exits() {
    use bytes::Bytes;
    use dynoagent_tests::{FakeGateway, Params, Tag, sid};
    use hoop_wire::{AgentPacket, ClientPacket};

    let tag = Tag::new();
    let mut gw = FakeGateway::start("agent-bin", "xagt-bin-secret").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOOP_KEY", gw.dsn())
        .env("DYNOAGENT_KILL_GRACE_SECS", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stream = gw.next_agent().await;
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

    let started = std::time::Instant::now();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert_eq!(out.message, "agent shutting down");
    let status = tokio::time::timeout(std::time::Duration::from_secs(25), child.wait())
        .await
        .expect("exit within 25 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
    tag.assert_no_processes();
    let logs = child.stdout.take().unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(logs), &mut text)
        .await
        .unwrap();
    assert!(
        text.contains("session ended"),
        "one audit line per session expected: {text}"
    );
    assert!(
        !text.contains("xagt-bin-secret"),
        "the DSN secret leaked into the logs"
    );
}
