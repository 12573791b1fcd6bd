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
fn organization_and_embedded_keys_are_refused_at_start_with_what_to_create() {
    for (dsn, want) in [
        (
            "grpc://_default:hunter2-secret@127.0.0.1:1?mode=multi-connection",
            "HOOP_KEY is hoop's organization key (mode=multi-connection)",
        ),
        (
            "grpc://agent:hunter2-secret@127.0.0.1:1?mode=embedded",
            "HOOP_KEY is an embedded-mode key",
        ),
    ] {
        let (code, stderr) = run(&[("HOOP_KEY", dsn)]);
        assert_eq!(code, 2, "{dsn}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(stderr.contains("create a standard agent key"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "secret leaked: {stderr}");
    }
}

/// hoop's organization key has no `mode` in its DSN, so the agent starts; the gateway then
/// refuses every stream (`missing connection-name attribute`). The agent says so in one
/// ERROR naming HOOP_KEY, then retries quietly at its slowest pace instead of warning forever.
#[tokio::test]
async fn the_gateways_refusal_of_an_organization_key_is_one_error_then_quiet_retries() {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncBufReadExt as _;

    let dir = tempfile::tempdir().unwrap();
    let secret = dynogw::generate_secret();
    let gw = dynogw::Gateway::start(dynogw::GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: dir.path().join("audit.db"),
        client_tokens: vec!["t".into()],
        agents: vec![dynogw::AgentDef {
            name: "_default".into(),
            secret: Some(secret.clone()),
            mode: "multi-connection".into(),
            ..Default::default()
        }],
        ..dynogw::GatewayConfig::default()
    })
    .await
    .unwrap();
    // The organization key's DSN: agent `_default`, no `mode`.
    let dsn = format!("grpc://_default:{secret}@{}", gw.addr());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOOP_KEY", &dsn)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Logs go to stdout (Heroku's log router reads both).
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                lines.lock().unwrap().push(line);
            }
        })
    };
    // Two refusals: the first attempt and one retry (at most 8 s later).
    assert!(
        gw.wait_for_refusals(2, std::time::Duration::from_secs(20))
            .await,
        "the agent did not retry"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    reader.await.unwrap();
    let lines = lines.lock().unwrap().clone();
    let all = lines.join("\n");
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("level=error")).collect();
    assert_eq!(errors.len(), 1, "one ERROR, not one per attempt:\n{all}");
    assert!(
        errors[0].contains("multi-connection agent") && errors[0].contains("HOOP_KEY"),
        "{all}"
    );
    assert!(
        !all.contains("gateway connection failed"),
        "no generic retry warning:\n{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("level=warn") && l.contains("organization key")),
        "the start-up hint for `_default` without mode:\n{all}"
    );
    assert!(!all.contains(&secret), "the secret leaked:\n{all}");
    gw.shutdown().await;
}

/// `dynoagent ctl` is dynoctl, so the hints `dynoagent dev` prints run with no second build.
#[test]
fn ctl_runs_the_development_client() {
    let out = Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .args(["ctl", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["exec", "connect", "sessions", "audit"] {
        assert!(help.contains(sub), "{help}");
    }
    // A client error is dynoctl's, with its exit code (254: the gateway is unreachable).
    let out = Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .args([
            "ctl",
            "exec",
            "--gateway",
            "127.0.0.1:1",
            "local",
            "-i",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(254));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("dynoctl: "));
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

/// Issue 14: SIGHUP (a terminal closing, some supervisors) is a graceful shutdown like
/// SIGTERM, not the default instant death that leaves sessions without their close.
#[tokio::test]
async fn sighup_drains_like_sigterm() {
    use bytes::Bytes;
    use dynoagent_tests::{FakeGateway, Params, Tag, sid};
    use hoop_wire::{AgentPacket, ClientPacket};

    let tag = Tag::new();
    let mut gw = FakeGateway::start("agent-hup", "xagt-hup-secret").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOOP_KEY", gw.dsn())
        .env("DYNOAGENT_KILL_GRACE_SECS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
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
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254));
    assert_eq!(out.message, "agent shutting down");
    let status = tokio::time::timeout(std::time::Duration::from_secs(25), child.wait())
        .await
        .expect("exit within 25 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    tag.assert_no_processes();
}

/// Splits a logfmt line into its `key=value` pairs (values may be double-quoted with `\"`).
fn logfmt_pairs(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return pairs;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ' ').collect();
        }
        pairs.push((key, value));
    }
}

/// The real binary serves a run session against the Heroku emulator; its one audit line (the
/// issue's operator contract) has every field, each once, and no secret or session content.
#[tokio::test]
async fn the_audit_line_has_every_field_and_no_secret() {
    use bytes::Bytes;
    use dynoagent_tests::{FakeGateway, Params, Tag, sid};
    use hoop_wire::{AgentPacket, ClientPacket};

    let sim = herokusim::Sim::start(herokusim::SimConfig {
        ssh_port: Some(0),
        ..herokusim::SimConfig::demo()
    })
    .await
    .unwrap();
    let tag = Tag::new();
    let mut gw = FakeGateway::start("agent-audit", "xagt-audit-secret").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOOP_KEY", gw.dsn())
        .env("DYNOAGENT_HEROKU_API_URL", sim.api_url())
        .env("DYNOAGENT_HEROKU_EXEC_URL", sim.exec_url())
        .env(
            "DYNOAGENT_HEROKU_CA",
            format!("file://{}", sim.ca_file().display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stream = gw.next_agent().await;
    let id = sid();
    let mut replies = stream.watch_session(&id);
    let params = Params::new(&["heroku", "run", "--exit-code"], "exec", &tag)
        .args(&["--app", "demo", "echo visible-output-text; exit 6"])
        .env("envvar:HEROKU_API_KEY", sim.api_key())
        .env("envvar:OTHER_SECRET", "connection-secret-value");
    stream.send(params.open(&id)).await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"typed-input-text"),
        })
        .await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(6), "{}", out.message);
    stream
        .send(AgentPacket::SessionClose {
            session_id: id.clone(),
        })
        .await;

    // SIGTERM ends the agent, which closes stdout: every log line is then readable.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stdout.take().unwrap(), &mut text)
        .await
        .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(25), child.wait())
        .await
        .expect("exit within 25 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let api_key = sim.api_key().to_owned();
    sim.shutdown().await;

    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("message=\"session ended\""))
        .collect();
    assert_eq!(audit.len(), 1, "one audit line per session: {text}");
    let pairs = logfmt_pairs(audit[0]);
    let get = |key: &str| {
        let values: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values.len(), 1, "{key} once in {}", audit[0]);
        values[0].to_owned()
    };
    assert_eq!(get("session_id"), id.to_string());
    assert_eq!(get("user"), "dev@example.com");
    assert_eq!(get("connection"), "local");
    assert_eq!(get("backend"), "run");
    assert_eq!(get("app"), "demo");
    assert!(get("dyno").starts_with("run."), "{}", audit[0]);
    assert_eq!(get("verb"), "exec");
    assert_eq!(get("exit_code"), "6");
    assert_eq!(get("bytes_in"), "16");
    assert_eq!(get("bytes_out"), "20", "visible-output-text\\n");
    assert!(get("duration_ms").parse::<u64>().is_ok(), "{}", audit[0]);
    assert_eq!(get("level"), "info");

    for secret in [
        "xagt-audit-secret",
        api_key.as_str(),
        "connection-secret-value",
        "typed-input-text",
        "visible-output-text",
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the logs: {text}");
    }
}
