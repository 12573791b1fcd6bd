//! Reusable fakes and helpers for dynoagent's end-to-end tests: an in-process hoop gateway
//! ([`gateway::FakeGateway`]), an in-process agent ([`TestAgent`]), connection-parameter
//! builders, and the leak checks every test ends with (no session task, no child process).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    missing_debug_implementations
)]

pub mod faults;
pub mod gateway;

use std::collections::{BTreeMap, HashMap};

use agent::{Agent, AgentConfig, Router};
use base64::Engine as _;
use hoop_gob::AgentConnectionParams;
use hoop_wire::{AgentPacket, SessionId, SessionOpen};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use gateway::{AgentStream, FakeGateway, Outcome, SessionReplies, WAIT};

/// Installs a test log subscriber once (honours `RUST_LOG`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A unique tag put into every process a test starts, to find leaks.
#[derive(Clone, Debug)]
pub struct Tag(pub String);

impl Tag {
    pub fn new() -> Tag {
        Tag(format!("dynotest-{}", uuid::Uuid::new_v4()))
    }

    /// PIDs of live processes whose environment carries this tag.
    pub fn processes(&self) -> Vec<u32> {
        let needle = format!("DYNOTEST_TAG={}", self.0);
        let mut found = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                found.push(pid);
            }
        }
        found
    }

    /// Fails the test if any tagged process is alive.
    pub fn assert_no_processes(&self) {
        let left = self.processes();
        assert!(left.is_empty(), "processes left behind: {left:?}");
    }
}

impl Default for Tag {
    fn default() -> Self {
        Tag::new()
    }
}

/// Base64 as hoop encodes env values.
pub fn b64(value: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

/// Builds connection parameters for a command-line connection.
#[derive(Clone, Debug)]
pub struct Params(pub AgentConnectionParams);

impl Params {
    /// A `command-line` connection named `local` running `command`, for `verb`.
    pub fn new(command: &[&str], verb: &str, tag: &Tag) -> Params {
        let mut env = BTreeMap::new();
        env.insert("envvar:DYNOTEST_TAG".to_owned(), b64(&tag.0));
        Params(AgentConnectionParams {
            connection_name: "local".into(),
            connection_type: "command-line".into(),
            user_id: "u-1".into(),
            user_email: "dev@example.com".into(),
            env_vars: env,
            cmd_list: command.iter().map(|s| (*s).to_owned()).collect(),
            client_verb: verb.into(),
            client_origin: "client".into(),
            ..Default::default()
        })
    }

    pub fn args(mut self, args: &[&str]) -> Params {
        self.0.client_args = args.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Params {
        self.0.env_vars.insert(key.to_owned(), b64(value));
        self
    }

    /// The `AgentSessionOpen` for session `sid`.
    pub fn open(self, sid: &SessionId) -> AgentPacket {
        AgentPacket::SessionOpen(Box::new(SessionOpen {
            session_id: sid.clone(),
            connection_type: "command-line".into(),
            params: self.0,
            client_env: BTreeMap::new(),
            request_port: None,
            jit_timeout: None,
        }))
    }
}

/// The one-off dynos (`run.N`) among an app's `(name, state)` dynos as the emulator lists
/// them (`herokusim::RunningSim::dyno_states`; herokusim is only a dev-dependency here, so
/// this takes the list rather than the emulator).
pub fn one_off_dynos(dynos: Vec<(String, String)>) -> Vec<(String, String)> {
    dynos
        .into_iter()
        .filter(|(name, _)| name.starts_with("run."))
        .collect()
}

/// A fresh session id.
pub fn sid() -> SessionId {
    SessionId::parse(uuid::Uuid::new_v4().to_string().as_bytes())
        .expect("uuid is a valid session id")
}

/// An agent running in this process against a gateway.
pub struct TestAgent {
    shutdown: CancellationToken,
    live: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestAgent {
    /// Starts an agent for `dsn` with extra config variables.
    pub fn start(dsn: &str, extra: &[(&str, &str)]) -> TestAgent {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("HOOP_KEY".into(), dsn.into());
        env.insert("DYNOAGENT_KILL_GRACE_SECS".into(), "2".into());
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        let config = AgentConfig::from_sources(&env, agent::VERSION).expect("valid test config");
        let router = Router::standard(&config).expect("valid backend config");
        let shutdown = CancellationToken::new();
        let agent = Agent::new(config, router, shutdown.clone());
        let live = agent.live_sessions();
        let task = tokio::spawn(agent.run());
        TestAgent {
            shutdown,
            live,
            task,
        }
    }

    /// Waits until no session task is left.
    pub async fn wait_idle(&mut self) {
        tokio::time::timeout(WAIT, self.live.wait_for(|n| *n == 0))
            .await
            .expect("session tasks still running")
            .expect("agent gone");
    }

    /// The number of live sessions now.
    pub fn live(&self) -> usize {
        *self.live.borrow()
    }

    /// Begins a graceful shutdown and waits (bounded) for the agent to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("agent did not shut down within 30 s")
            .expect("agent task panicked");
    }
}

/// Starts a gateway and an agent connected to it.
pub async fn setup(extra: &[(&str, &str)]) -> (FakeGateway, TestAgent, AgentStream) {
    init_logs();
    let mut gw = FakeGateway::start("agent-test", &format!("xagt-{}", uuid::Uuid::new_v4())).await;
    let agent = TestAgent::start(&gw.dsn(), extra);
    let stream = gw.next_agent().await;
    (gw, agent, stream)
}
