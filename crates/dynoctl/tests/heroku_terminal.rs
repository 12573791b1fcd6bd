//! `dynoctl connect` to a `heroku run` or `ps-exec.sh` connection through a real PTY, as a user
//! types it: dynoctl → dynogw → the real agent (run and psexec backends) → the Heroku emulator
//! (app `demo` on rendezvous, the Fir app `firapp` on the SSH attach path with an account key). dynoctl behaves as
//! hoop's CLI does (its first `"\n"` and first resize in either order, `ClientWriteStderr`
//! dropped), so these tests see what hoop's users see.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

use std::collections::{BTreeMap, HashMap};

use agent::{Agent, AgentConfig, Router};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig, RunningGateway};
use herokusim::{RunningSim, Sim, SimConfig};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

mod common;
use common::{WAIT, read_until};

const BIN: &str = env!("CARGO_BIN_EXE_dynoctl");

struct Stack {
    sim: RunningSim,
    gw: RunningGateway,
    agent_stop: CancellationToken,
    agent: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SimConfig {
        ssh_port: Some(0),
        ..SimConfig::demo()
    };
    config.apps.push(herokusim::AppConfig {
        name: "firapp".into(),
        generation: herokusim::Generation::Fir,
        space: Some(herokusim::SpaceKind::Private),
        formation: vec![herokusim::DynoConfig {
            name: "web.1".into(),
            ..herokusim::DynoConfig::default()
        }],
        ..herokusim::AppConfig::default()
    });
    let sim = Sim::start(config).await.unwrap();
    // The account key of the SSH attach path, registered as `dynoagent keys register` does.
    let key = backend_run::account_key::generate().unwrap();
    let api = heroku_api::ClientConfig {
        api_url: sim.api_url().parse().unwrap(),
        ..heroku_api::ClientConfig::default()
    };
    let client =
        heroku_api::HerokuClient::new(api, heroku_api::ApiKey::new(sim.api_key())).unwrap();
    let parsed = backend_ssh::load_key(Some(&key), "test").unwrap();
    backend_run::account_key::register(&client, &parsed, "dynoagent@test")
        .await
        .unwrap();
    let heroku_secrets = BTreeMap::from([
        ("envvar:HEROKU_API_KEY".to_owned(), sim.api_key().to_owned()),
        ("envvar:HEROKU_SSH_KEY".to_owned(), key),
    ]);
    let secret = dynogw::generate_secret();
    let gw = Gateway::start(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: dir.path().join("audit.db"),
        client_tokens: vec!["term-token".into()],
        agents: vec![AgentDef {
            name: "term".into(),
            secret: Some(secret.clone()),
            ..Default::default()
        }],
        connections: vec![
            ConnectionDef {
                name: "heroku-run".into(),
                agent: "term".into(),
                command: vec!["heroku".into(), "run".into(), "--exit-code".into()],
                secrets: heroku_secrets.clone(),
                ..Default::default()
            },
            ConnectionDef {
                name: "psexec".into(),
                agent: "term".into(),
                command: vec!["ps-exec.sh".into()],
                secrets: heroku_secrets,
                ..Default::default()
            },
        ],
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let env = HashMap::from([
        (
            "HOOP_KEY".to_owned(),
            dynogw::agent_dsn("term", &secret, gw.addr()),
        ),
        (
            "DYNOAGENT_HEROKU_API_URL".to_owned(),
            sim.api_url().to_owned(),
        ),
        (
            "DYNOAGENT_HEROKU_EXEC_URL".to_owned(),
            sim.exec_url().to_owned(),
        ),
        (
            "DYNOAGENT_HEROKU_CA".to_owned(),
            format!("file://{}", sim.ca_file().display()),
        ),
    ]);
    let config = AgentConfig::from_sources(&env, agent::VERSION).unwrap();
    let router = Router::standard(&config).unwrap();
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(Agent::new(config, router, agent_stop.clone()).run());
    assert!(gw.wait_for_agent("term", WAIT).await);
    Stack {
        sim,
        gw,
        agent_stop,
        agent,
        _dir: dir,
    }
}

impl Stack {
    async fn finish(self) {
        self.agent_stop.cancel();
        tokio::time::timeout(WAIT, self.agent)
            .await
            .unwrap()
            .unwrap();
        self.gw.shutdown().await;
        let left: Vec<_> = ["demo", "firapp"]
            .into_iter()
            .flat_map(|app| self.sim.dyno_states(app))
            .filter(|(name, _)| name.starts_with("run."))
            .collect();
        assert!(left.is_empty(), "one-off dynos left: {left:?}");
        self.sim.shutdown().await;
    }
}

/// A 43x132 terminal gets a 43x132 one-off dyno whichever of the two starting packets
/// arrives first: the agent waits briefly for the resize before it creates the dyno (before the
/// fix, a `"\n"` first meant 24x80). A later resize cannot reach a one-off dyno; the agent's
/// notice about it is visible, on stdout with CRLF, because `hoop connect` drops stderr.
#[tokio::test]
async fn heroku_run_terminal_gets_the_clients_size_in_either_order_and_its_notices_show() {
    let s = stack().await;
    for first in ["newline", "resize"] {
        let (pty, pts) = pty_process::open().unwrap();
        pty.resize(pty_process::Size::new(43, 132)).unwrap();
        let mut cmd = pty_process::Command::new(BIN)
            .args([
                "connect",
                "heroku-run",
                "--first",
                first,
                "--",
                "--app",
                "demo",
                "bash --norc --noprofile",
            ])
            .env("DYNOCTL_GATEWAY", s.gw.addr().to_string())
            .env("DYNOCTL_TOKEN", "term-token")
            .kill_on_drop(true);
        let mut child = cmd.spawn_borrowed(&pts).unwrap();
        let (mut reader, mut writer) = pty.into_split();
        let mut seen = Vec::new();
        writer
            .write_all(b"stty size; echo end-$((0+1))\r")
            .await
            .unwrap();
        let text = read_until(&mut reader, &mut seen, "end-1").await;
        assert!(
            text.contains("43 132"),
            "{first} first: the dyno's terminal is not the client's size: {text:?}"
        );

        writer.resize(pty_process::Size::new(50, 140)).unwrap();
        let notice = read_until(&mut reader, &mut seen, "this resize cannot reach it\r\n").await;
        assert!(
            notice.contains("one-off dyno's terminal size is fixed"),
            "{notice:?}"
        );

        writer.write_all(b"exit 3\r").await.unwrap();
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(3), "{first} first");
    }
    s.finish().await;
}

/// Runs `dynoctl connect CONNECTION -- ARGS` under a 30x100 PTY; returns the child and its PTY.
fn connect(
    s: &Stack,
    connection: &str,
    args: &[&str],
) -> (
    tokio::process::Child,
    pty_process::OwnedReadPty,
    pty_process::OwnedWritePty,
) {
    let (pty, pts) = pty_process::open().unwrap();
    pty.resize(pty_process::Size::new(30, 100)).unwrap();
    let mut all = vec!["connect", connection, "--"];
    all.extend_from_slice(args);
    let mut cmd = pty_process::Command::new(BIN)
        .args(all)
        .env("DYNOCTL_GATEWAY", s.gw.addr().to_string())
        .env("DYNOCTL_TOKEN", "term-token")
        .kill_on_drop(true);
    let child = cmd.spawn_borrowed(&pts).unwrap();
    let (reader, writer) = pty.into_split();
    (child, reader, writer)
}

/// Issue 15: on a Fir app both terminals go over the SSH attach path, where a resize reaches
/// the remote PTY: `stty size` follows the user's window, for a one-off (`heroku run`) and
/// inside a running dyno (`ps-exec.sh --interactive`, through `run:inside`).
#[tokio::test]
async fn fir_terminals_resize_live() {
    let s = stack().await;
    for (connection, args) in [
        (
            "heroku-run",
            &["--app", "firapp", "bash --norc --noprofile"][..],
        ),
        ("psexec", &["--interactive", "--app", "firapp"][..]),
    ] {
        let (mut child, mut reader, mut writer) = connect(&s, connection, args);
        let mut seen = Vec::new();
        writer
            .write_all(b"stty size; echo one-$((0+1))\r")
            .await
            .unwrap();
        let text = read_until(&mut reader, &mut seen, "one-1").await;
        assert!(text.contains("30 100"), "{connection}: {text:?}");
        writer.resize(pty_process::Size::new(45, 150)).unwrap();
        // dynoctl sends the resize when its SIGWINCH arrives, which may be just after the next
        // keystrokes: ask again (a bounded number of times) until the new size shows.
        let mut resized = false;
        for _ in 0..50 {
            writer
                .write_all(b"stty size; echo two-$((1+1))\r")
                .await
                .unwrap();
            let text = read_until(&mut reader, &mut seen, "two-2").await;
            assert!(!text.contains("cannot reach"), "{connection}: {text:?}");
            if text.contains("45 150") {
                resized = true;
                break;
            }
        }
        assert!(
            resized,
            "{connection}: the remote terminal never saw 45x150"
        );
        writer.write_all(b"exit 3\r").await.unwrap();
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(3), "{connection}");
    }
    s.finish().await;
}
