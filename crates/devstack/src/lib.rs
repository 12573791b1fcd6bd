//! `dynoagent dev`: everything needed to try dynoagent on one machine, in one process, on
//! loopback: the development gateway (`dynogw`, with its audit store and demo connections) and
//! the agent connected to it.
//!
//! It owns the wiring (a fresh agent secret, the demo connections, the agent's configuration)
//! and the orderly stop: agent first (its sessions close with 254), then the gateway (which
//! flushes the audit store). It does not implement any of those parts itself.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agent::{Agent, AgentConfig, Router};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig};
use tokio_util::sync::CancellationToken;

/// The agent name used in development.
pub const DEV_AGENT: &str = "dev";

/// Options of `dynoagent dev`.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Where the gateway listens (dynoctl's default is 127.0.0.1:8010).
    pub listen: SocketAddr,
    /// The audit database (dynoctl's default path when `None`).
    pub audit_db: Option<PathBuf>,
    /// The client token dynoctl presents.
    pub client_token: String,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8010)),
            audit_db: None,
            client_token: dynogw::DEV_CLIENT_TOKEN.to_owned(),
        }
    }
}

/// Why the development stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "cannot start the gateway on {listen}: {reason} (is another dynoagent dev running? use --listen to pick another port)"
    )]
    Gateway { listen: SocketAddr, reason: String },
    #[error("invalid agent configuration: {0}")]
    Agent(String),
    #[error("the agent did not connect to the gateway within {0:?}")]
    AgentOffline(Duration),
}

/// A running development stack.
#[derive(Debug)]
pub struct DevStack {
    gateway: dynogw::RunningGateway,
    agent_stop: CancellationToken,
    agent_task: tokio::task::JoinHandle<()>,
    instructions: String,
}

/// The demo connections.
fn connections() -> Vec<ConnectionDef> {
    vec![ConnectionDef {
        name: "local".into(),
        agent: DEV_AGENT.into(),
        command: vec!["bash".into()],
        secrets: BTreeMap::new(),
    }]
}

impl DevStack {
    /// Starts the gateway, then the agent, and waits until the agent is connected.
    pub async fn start(options: DevOptions) -> Result<DevStack, DevError> {
        let secret = dynogw::generate_secret();
        let mut config = GatewayConfig {
            listen: options.listen,
            client_tokens: vec![options.client_token.clone()],
            agents: vec![AgentDef {
                name: DEV_AGENT.into(),
                secret_sha256: Some(dynogw::hash_secret(&secret)),
                secret: None,
            }],
            connections: connections(),
            ..GatewayConfig::default()
        };
        if let Some(db) = &options.audit_db {
            config.audit_db = db.clone();
        }
        let gateway = Gateway::start(config)
            .await
            .map_err(|e| DevError::Gateway {
                listen: options.listen,
                reason: e.to_string(),
            })?;
        let dsn = dynogw::agent_dsn(DEV_AGENT, &secret, gateway.addr());
        let env: HashMap<String, String> = [("HOOP_KEY".to_owned(), dsn)].into_iter().collect();
        let agent_config = AgentConfig::from_sources(&env, agent::VERSION)
            .map_err(|e| DevError::Agent(e.to_string()))?;
        let router = Router::standard(&agent_config).map_err(|e| DevError::Agent(e.to_string()))?;
        let agent_stop = CancellationToken::new();
        let agent = Agent::new(agent_config, router, agent_stop.clone());
        let agent_task = tokio::spawn(agent.run());
        let wait = Duration::from_secs(15);
        if !gateway.wait_for_agent(DEV_AGENT, wait).await {
            agent_stop.cancel();
            let _ = agent_task.await;
            gateway.shutdown().await;
            return Err(DevError::AgentOffline(wait));
        }
        let instructions = instructions(&gateway, &options);
        Ok(DevStack {
            gateway,
            agent_stop,
            agent_task,
            instructions,
        })
    }

    /// What to type next.
    pub fn instructions(&self) -> &str {
        &self.instructions
    }

    /// The gateway's address.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway.addr()
    }

    /// Stops the agent (closing its sessions), then the gateway.
    pub async fn shutdown(self) {
        self.agent_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(25), self.agent_task)
            .await
            .is_err()
        {
            tracing::error!("the agent did not stop within 25 s");
        }
        self.gateway.shutdown().await;
    }
}

fn instructions(gateway: &dynogw::RunningGateway, options: &DevOptions) -> String {
    let mut s = String::new();
    let addr = gateway.addr();
    let _ = writeln!(s, "dynoagent dev is running (Ctrl-C stops everything)");
    let _ = writeln!(
        s,
        "  gateway  grpc://{addr}  client token: {}",
        options.client_token
    );
    let _ = writeln!(s, "  agent    {DEV_AGENT} (connected)");
    let _ = writeln!(s, "  audit    {}", gateway.audit_db().display());
    let _ = writeln!(s);
    let flags = if addr == DevOptions::default().listen {
        String::new()
    } else {
        format!(" --gateway http://{addr}")
    };
    let _ = writeln!(s, "Try, in another terminal:");
    let _ = writeln!(
        s,
        "  cargo run -q -p dynoctl -- exec{flags} local -i 'echo hello from $HOSTNAME; exit 3'"
    );
    let _ = writeln!(
        s,
        "  echo 'uname -a' | cargo run -q -p dynoctl -- exec{flags} local"
    );
    let _ = writeln!(s, "  cargo run -q -p dynoctl -- connect{flags} local");
    let _ = writeln!(s, "  cargo run -q -p dynoctl -- sessions");
    s
}
