//! Tests of the `dynoctl` binary against an in-process `dynogw` (127.0.0.1:0, temporary audit
//! database) and the real agent with the local backend: exec with piped binary stdin, the
//! documented environment variables, `sessions` and `audit`, and `connect` through a real PTY
//! (raw keystrokes, resize at start and on SIGWINCH, exit code, terminal restored).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, AgentConfig, Router};
use backend_local::{LocalBackend, LocalConfig};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig, RunningGateway};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

mod common;
use common::{WAIT, read_until};
const BIN: &str = env!("CARGO_BIN_EXE_dynoctl");

struct Setup {
    gw: RunningGateway,
    agent_stop: CancellationToken,
    agent: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let secret = dynogw::generate_secret();
    let connection = |name: &str, command: &[&str]| ConnectionDef {
        name: name.into(),
        agent: "cli".into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        secrets: BTreeMap::from([("envvar:PS1".to_owned(), "PROMPT> ".to_owned())]),
        ..Default::default()
    };
    let config = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: dir.path().join("audit.db"),
        client_tokens: vec!["cli-token".into()],
        agents: vec![AgentDef {
            name: "cli".into(),
            secret_sha256: None,
            secret: Some(secret.clone()),
            ..Default::default()
        }],
        connections: vec![
            connection("bash", &["bash"]),
            connection("cat", &["cat"]),
            connection("shell", &["bash", "--norc", "--noprofile"]),
        ],
        offline_wait: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(config).await.unwrap();
    let env = HashMap::from([
        (
            "HOOP_KEY".to_owned(),
            dynogw::agent_dsn("cli", &secret, gw.addr()),
        ),
        ("DYNOAGENT_KILL_GRACE_SECS".to_owned(), "2".to_owned()),
    ]);
    let config = AgentConfig::from_sources(&env, agent::VERSION).unwrap();
    let mut local = LocalConfig::from_agent_env();
    local.kill_grace = config.kill_grace;
    let router = Router::new(Arc::new(LocalBackend::new(local)));
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(Agent::new(config, router, agent_stop.clone()).run());
    assert!(gw.wait_for_agent("cli", WAIT).await);
    Setup {
        gw,
        agent_stop,
        agent,
        _dir: dir,
    }
}

impl Setup {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .env("DYNOCTL_GATEWAY", self.gw.addr().to_string())
            .env("DYNOCTL_TOKEN", "cli-token")
            .env("DYNOCTL_AUDIT_DB", self.gw.audit_db())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().unwrap();
        if let Some(data) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(data).await.unwrap();
            drop(w);
        }
        tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("dynoctl did not exit in time")
            .unwrap()
    }

    async fn finish(self) {
        self.agent_stop.cancel();
        tokio::time::timeout(WAIT, self.agent)
            .await
            .unwrap()
            .unwrap();
        self.gw.shutdown().await;
    }
}

#[tokio::test]
async fn exec_pipes_binary_stdin_and_passes_the_exit_code_through() {
    let s = setup().await;
    let input: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let out = s.run(&["exec", "cat"], Some(&input)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, input);

    let out = s
        .run(
            &[
                "exec",
                "bash",
                "-e",
                "GREETING=hi there",
                "-i",
                "echo \"$GREETING\"; echo oops >&2; exit 3",
            ],
            None,
        )
        .await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hi there\n");
    assert!(
        out.stderr.starts_with(b"oops\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Arguments after -- are appended to the connection's command.
    let out = s
        .run(
            &[
                "exec",
                "bash",
                "--",
                "-c",
                "printf '[%s]' \"$0\" \"$1\"",
                "a b",
                "c",
            ],
            None,
        )
        .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"[a b][c]");

    // Piped stdin and -i together are refused before anything is sent.
    let out = s
        .run(&["exec", "bash", "-i", "true"], Some(b"echo x"))
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("piped"));

    // A wrong token is a clear error, without the token.
    let out = s
        .run(
            &["exec", "bash", "--token", "not-the-token", "-i", "true"],
            None,
        )
        .await;
    assert_eq!(out.status.code(), Some(254));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the token") && !err.contains("not-the-token"),
        "{err}"
    );
    s.finish().await;
}

#[tokio::test]
async fn sessions_and_audit_show_what_happened() {
    let s = setup().await;
    let out = s
        .run(&["exec", "bash", "-i", "echo hi; exit 3"], None)
        .await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hi\n");

    let table = s.run(&["sessions"], None).await;
    assert_eq!(table.status.code(), Some(0));
    let table = String::from_utf8(table.stdout).unwrap();
    let row = table.lines().last().unwrap();
    assert!(
        row.contains("bash") && row.contains("done") && row.contains(" 3 "),
        "{table}"
    );
    let id = row.split_whitespace().next().unwrap();

    let audit = s.run(&["audit", id], None).await;
    assert_eq!(audit.status.code(), Some(0));
    let audit = String::from_utf8(audit.stdout).unwrap();
    assert!(audit.contains("  i  echo hi; exit 3\n"), "{audit}");
    assert!(audit.contains("  o  hi\n"), "{audit}");
    assert!(audit.contains("exit code 3"), "{audit}");

    let missing = s.run(&["audit", "no-such-session"], None).await;
    assert_ne!(missing.status.code(), Some(0));
    s.finish().await;
}

#[tokio::test]
async fn connect_needs_a_tty() {
    let s = setup().await;
    let out = s.run(&["connect", "shell"], Some(b"")).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not allocate a tty"));
    s.finish().await;
}

#[tokio::test]
async fn connect_through_a_pty_is_raw_resizes_and_restores_the_terminal() {
    let s = setup().await;
    let (pty, pts) = pty_process::open().unwrap();
    pty.resize(pty_process::Size::new(30, 100)).unwrap();
    let before = nix::sys::termios::tcgetattr(&pts).unwrap();
    let mut cmd = pty_process::Command::new(BIN)
        .args(["connect", "shell"])
        .env("DYNOCTL_GATEWAY", s.gw.addr().to_string())
        .env("DYNOCTL_TOKEN", "cli-token")
        .kill_on_drop(true);
    let mut child = cmd.spawn_borrowed(&pts).unwrap();
    let (mut reader, mut writer) = pty.into_split();
    let mut seen = Vec::new();

    read_until(&mut reader, &mut seen, "PROMPT> ").await;
    // The size sent once at start. Markers use $((…)) so that only output matches, not echo.
    writer
        .write_all(b"stty size; echo end-$((0+1))\r")
        .await
        .unwrap();
    let text = read_until(&mut reader, &mut seen, "end-1").await;
    assert!(
        text.contains("30 100"),
        "initial size not applied: {text:?}"
    );

    // Raw mode: Ctrl-C is a byte for the remote shell, not a signal for dynoctl.
    // (A sleep that is not interrupted would outlast WAIT.)
    writer
        .write_all(b"echo start-$((1+1)); sleep 30\r")
        .await
        .unwrap();
    read_until(&mut reader, &mut seen, "start-2").await;
    writer.write_all(b"\x03").await.unwrap();
    read_until(&mut reader, &mut seen, "PROMPT> ").await;
    writer.write_all(b"echo alive-$((40+2))\r").await.unwrap();
    read_until(&mut reader, &mut seen, "alive-42").await;

    // SIGWINCH: the new size reaches the remote PTY. The signal and the keystrokes race
    // inside dynoctl, so ask again (at most 20 times, each waiting for its answer).
    writer.resize(pty_process::Size::new(40, 120)).unwrap();
    let mut resized = false;
    for n in 2..22 {
        let cmd = format!("stty size; echo end-$((0+{n}))\r");
        writer.write_all(cmd.as_bytes()).await.unwrap();
        let text = read_until(&mut reader, &mut seen, &format!("end-{n}")).await;
        if text.contains("40 120") {
            resized = true;
            break;
        }
    }
    assert!(resized, "SIGWINCH resize never reached the remote terminal");

    writer.write_all(b"exit 5\r").await.unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(5));
    let after = nix::sys::termios::tcgetattr(&pts).unwrap();
    assert_eq!(
        after.local_flags, before.local_flags,
        "terminal not restored"
    );
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
    s.finish().await;
}
