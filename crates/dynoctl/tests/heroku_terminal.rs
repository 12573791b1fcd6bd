//! `dynoctl connect` to a `heroku run` connection through a real PTY, as a user types it:
//! dynoctl → dynogw → the real agent (run backend) → the Heroku emulator. dynoctl behaves as
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
    let sim = Sim::start(SimConfig {
        ssh_port: Some(0),
        ..SimConfig::demo()
    })
    .await
    .unwrap();
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
        connections: vec![ConnectionDef {
            name: "heroku-run".into(),
            agent: "term".into(),
            command: vec!["heroku".into(), "run".into(), "--exit-code".into()],
            secrets: BTreeMap::from([(
                "envvar:HEROKU_API_KEY".to_owned(),
                sim.api_key().to_owned(),
            )]),
            ..Default::default()
        }],
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
        let left: Vec<_> = self
            .sim
            .dyno_states("demo")
            .into_iter()
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
