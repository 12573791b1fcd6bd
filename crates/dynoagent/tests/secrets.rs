//! Issue 13, finding 1: a session of a local connection runs as the agent's user, so it must
//! not be able to read the agent's own secrets through `/proc`. The real binary makes itself
//! non-dumpable at start; a `bash` session then cannot read `/proc/$PPID/environ`.
//!
//! As root every process may read every `/proc/PID/environ` (CAP_SYS_PTRACE), so when the
//! test runs as root it starts the agent as `nobody`, as a Heroku dyno runs it unprivileged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::MetadataExt as _;

use bytes::Bytes;
use dynoagent_tests::{FakeGateway, Params, Tag, sid};
use hoop_wire::{AgentPacket, ClientPacket};

const NOBODY: u32 = 65534;

#[tokio::test]
async fn a_local_bash_session_cannot_read_the_agents_environment() {
    let dsn_secret = "xagt-environ-secret-4f1c9a";
    let api_key = "HRKU-environ-agent-key-77d0e2b6";
    let tag = Tag::new();
    let mut gw = FakeGateway::start("agent-environ", dsn_secret).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynoagent"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/tmp")
        .env("HOOP_KEY", gw.dsn())
        .env("HEROKU_API_KEY", api_key)
        .env("DYNOAGENT_KILL_GRACE_SECS", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let mut child = cmd.spawn().unwrap();
    let agent_pid = child.id().unwrap();
    let stream = gw.next_agent().await;

    let id = sid();
    let mut replies = stream.watch_session(&id);
    let script = "echo ppid=$PPID; \
        if cat /proc/$PPID/environ >/dev/null 2>&1; then echo PARENT-READABLE; tr '\\0' '\\n' < /proc/$PPID/environ; else echo PARENT-DENIED; fi; \
        if cat /proc/self/environ >/dev/null 2>&1; then echo SELF-READABLE; fi; \
        cat /proc/$PPID/cmdline >/dev/null 2>&1 && echo CMDLINE-READABLE; \
        (head -c 64 /proc/$PPID/mem >/dev/null 2>&1 && echo MEM-READABLE) || true";
    stream
        .send(Params::new(&["bash", "-c", script], "exec", &tag).open(&id))
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
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.exit_code, Some(0), "{} {stderr}", out.message);
    // The parent really is the agent binary, and the session can read its own /proc.
    assert!(stdout.contains(&format!("ppid={agent_pid}\n")), "{stdout}");
    assert!(stdout.contains("SELF-READABLE"), "{stdout}");
    assert!(
        stdout.contains("PARENT-DENIED"),
        "the session read the agent's environment: {stdout}"
    );
    assert!(!stdout.contains("MEM-READABLE"), "{stdout}");
    for secret in [dsn_secret, api_key] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret) && !out.message.contains(secret),
            "{secret} leaked to the session"
        );
    }

    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent_pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(25), child.wait())
        .await
        .expect("exit within 25 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    tag.assert_no_processes();
}
