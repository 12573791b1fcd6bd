//! `dynoagent dev`: everything needed to try dynoagent on one machine, in one process, on
//! loopback: the development gateway (`dynogw`, with its audit store and demo connections),
//! the Heroku emulator (`herokusim`: app `demo` with dyno `web.1`, and the Fir app `firdemo`
//! in a Private Space, reached over the SSH attach path with an account key registered at
//! start) and the agent connected to both.
//!
//! It owns the wiring (a fresh agent secret and emulator API key, the demo connections, the
//! agent's configuration) and the orderly stop: agent first (its sessions close with 254), then
//! the gateway (which flushes the audit store), then the emulator (which kills its dynos). It
//! does not implement any of those parts itself.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::{Agent, AgentConfig, Router};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig};
use herokusim::{RunningSim, Sim, SimConfig};
use tokio_util::sync::CancellationToken;

/// The agent name used in development.
pub const DEV_AGENT: &str = "dev";

/// The emulated Heroku app the demo connections reach.
pub const DEMO_APP: &str = "demo";
/// The emulated Fir app (Private Space, stack `cnb`, pod-style dyno names): one-off dynos and
/// `run:inside` attach over HTTPS + SSH with the account key.
pub const FIR_DEMO_APP: &str = "firdemo";

/// Options of `dynoagent dev`.
#[derive(Clone)]
pub struct DevOptions {
    /// Where the gateway listens (dynoctl's default is 127.0.0.1:8010).
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` address: the development gateway has plaintext gRPC, one
    /// shared client token and a `bash` connection on this machine, so exposing it to a network
    /// hands a shell to anyone who learns the token.
    pub insecure_listen: bool,
    /// The audit database (dynoctl's default path when `None`).
    pub audit_db: Option<PathBuf>,
    /// The client token dynoctl presents: random for each run. It is written to
    /// [`token_file`] (mode 0600), where dynoctl finds it, and never printed.
    pub client_token: String,
    /// How the printed hints invoke the client: `dynoagent dev` passes its own `ctl`
    /// subcommand (`/path/to/dynoagent ctl`), which runs at once.
    pub client_command: String,
}

impl std::fmt::Debug for DevOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevOptions")
            .field("listen", &self.listen)
            .field("insecure_listen", &self.insecure_listen)
            .field("audit_db", &self.audit_db)
            .field("client_token", &"<redacted>")
            .field("client_command", &self.client_command)
            .finish()
    }
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8010)),
            insecure_listen: false,
            audit_db: None,
            client_token: dynogw::generate_secret(),
            client_command: "cargo run -q -p dynoctl --".to_owned(),
        }
    }
}

/// Where `dynoagent dev` writes its client token: `dev-token` next to the audit database
/// (`dynogw::default_dev_token_file()` for the default database, which dynoctl reads).
pub fn token_file(audit_db: &Path) -> PathBuf {
    audit_db.with_file_name(dynogw::DEV_TOKEN_FILE)
}

/// Writes `token` to `path` readable by this user only (0600, in a 0700 directory).
fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(token.as_bytes())
}

/// Why the development stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "refusing to listen on {0}, which is not a loopback address: the development gateway is plaintext and offers a shell on this machine; use 127.0.0.1, or pass --insecure-listen if you really mean to expose it"
    )]
    NonLoopback(SocketAddr),
    #[error("cannot write the client token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error(
        "cannot start the gateway on {listen}: {reason} (is another dynoagent dev running? use --listen to pick another port)"
    )]
    Gateway { listen: SocketAddr, reason: String },
    #[error("cannot start the Heroku emulator: {0}")]
    Emulator(String),
    #[error("invalid agent configuration: {0}")]
    Agent(String),
    #[error("the agent did not connect to the gateway within {0:?}")]
    AgentOffline(Duration),
}

/// A running development stack.
pub struct DevStack {
    gateway: dynogw::RunningGateway,
    sim: RunningSim,
    /// The small HTTP service the `tcp-demo` connection relays to.
    demo_service: DemoService,
    agent_stop: CancellationToken,
    agent_task: tokio::task::JoinHandle<()>,
    instructions: String,
    client_token: String,
    token_path: PathBuf,
}

/// The demo app's `web.1`: an HTTP server on its `$PORT`, on loopback, serving its directory
/// (python3's `http.server`), or idle where python3 is missing.
pub const WEB_DEMO_COMMAND: &str = "if command -v python3 >/dev/null 2>&1; then exec python3 -m http.server \"$PORT\" --bind 127.0.0.1; else exec sleep infinity; fi";

/// The body the `tcp-demo` service answers every HTTP request with.
pub const TCP_DEMO_BODY: &str = "hello from the dynoagent dev tcp demo service\n";
/// The largest request head the demo service reads.
const DEMO_MAX_HEAD: usize = 16 * 1024;

/// A tiny HTTP service on 127.0.0.1 for the `tcp-demo` connection: it reads one request head
/// (bounded in size and time) and answers [`TCP_DEMO_BODY`], then closes.
struct DemoService {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl DemoService {
    async fn start() -> std::io::Result<DemoService> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stopped.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut sock, _)) = accepted else {
                    continue;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    let read = tokio::time::timeout(Duration::from_secs(10), async {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n")
                            && head.len() < DEMO_MAX_HEAD
                        {
                            match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => return false,
                                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
                            }
                        }
                        true
                    })
                    .await;
                    if read != Ok(true) {
                        return;
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{TCP_DEMO_BODY}",
                        TCP_DEMO_BODY.len()
                    );
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(DemoService { addr, stop, task })
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for DemoService {
    /// A stack that fails to start stops its demo service too.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The demo connections: `local` runs on the agent's machine; `heroku-run` and `psexec` reach
/// the emulator with its API key and the account's SSH key (for Fir) as connection secrets, as
/// a real deployment would hold them; `tcp-demo` relays to the stack's small HTTP service, and
/// `tcp-dyno` to the HTTP server in the demo app's `web.1` (its `$PORT`, through Heroku Exec).
/// `tcp-dyno` relays to this port inside the demo app's `web.1` (through Heroku Exec).
fn connections(
    heroku_api_key: &str,
    ssh_key: &str,
    demo: SocketAddr,
    web_port: Option<u16>,
) -> Vec<ConnectionDef> {
    let heroku_secrets: BTreeMap<String, String> = [
        (
            "envvar:HEROKU_API_KEY".to_owned(),
            heroku_api_key.to_owned(),
        ),
        (
            format!("envvar:{}", backend_run::HEROKU_SSH_KEY_VAR),
            ssh_key.to_owned(),
        ),
    ]
    .into();
    let conn = |name: &str, command: &[&str], secrets: BTreeMap<String, String>| ConnectionDef {
        name: name.into(),
        agent: DEV_AGENT.into(),
        command: command.iter().map(|c| (*c).to_owned()).collect(),
        secrets,
        ..Default::default()
    };
    let mut dyno_secrets = heroku_secrets.clone();
    dyno_secrets.extend([
        ("envvar:HEROKU_APP".to_owned(), DEMO_APP.to_owned()),
        ("envvar:HEROKU_DYNO".to_owned(), "web.1".to_owned()),
        (
            "envvar:PORT".to_owned(),
            web_port.map_or_else(String::new, |p| p.to_string()),
        ),
    ]);
    vec![
        conn("local", &["bash"], BTreeMap::new()),
        conn(
            "heroku-run",
            &["heroku", "run", "--exit-code"],
            heroku_secrets.clone(),
        ),
        conn("psexec", &["ps-exec.sh"], heroku_secrets),
        ConnectionDef {
            name: "tcp-dyno".into(),
            agent: DEV_AGENT.into(),
            connection_type: hoop_wire::spec::CONNECTION_TYPE_TCP.into(),
            secrets: dyno_secrets,
            ..Default::default()
        },
        ConnectionDef {
            name: "tcp-demo".into(),
            agent: DEV_AGENT.into(),
            connection_type: hoop_wire::spec::CONNECTION_TYPE_TCP.into(),
            secrets: [
                ("envvar:HOST".to_owned(), demo.ip().to_string()),
                ("envvar:PORT".to_owned(), demo.port().to_string()),
            ]
            .into(),
            ..Default::default()
        },
    ]
}

impl DevStack {
    /// Starts the gateway, then the agent, and waits until the agent is connected.
    pub async fn start(options: DevOptions) -> Result<DevStack, DevError> {
        if !options.listen.ip().is_loopback() && !options.insecure_listen {
            return Err(DevError::NonLoopback(options.listen));
        }
        let mut sim_config = SimConfig {
            api_key: dynogw::generate_secret(),
            ssh_port: Some(0),
            ..SimConfig::demo()
        };
        // The demo app's web.1 serves HTTP on its $PORT (loopback) for `tcp-dyno`, when the
        // machine has python3; otherwise it idles as before (and `tcp-dyno` reports that
        // nothing listens there).
        for dyno in sim_config
            .apps
            .iter_mut()
            .filter(|a| a.name == DEMO_APP)
            .flat_map(|a| a.formation.iter_mut())
            .filter(|d| d.name == "web.1")
        {
            dyno.command = Some(WEB_DEMO_COMMAND.to_owned());
        }
        sim_config.apps.push(herokusim::AppConfig {
            name: FIR_DEMO_APP.into(),
            generation: herokusim::Generation::Fir,
            space: Some(herokusim::SpaceKind::Private),
            formation: vec![herokusim::DynoConfig {
                name: "web.1".to_owned(),
                command: Some("sleep infinity".to_owned()),
                ..herokusim::DynoConfig::default()
            }],
            ..herokusim::AppConfig::default()
        });
        let sim = Sim::start(sim_config)
            .await
            .map_err(|e| DevError::Emulator(e.to_string()))?;
        match DevStack::start_with(options, sim).await {
            Ok(stack) => Ok(stack),
            Err((e, sim)) => {
                sim.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start_with(
        options: DevOptions,
        sim: RunningSim,
    ) -> Result<DevStack, (DevError, RunningSim)> {
        let secret = dynogw::generate_secret();
        let demo_service = match DemoService::start().await {
            Ok(s) => s,
            Err(e) => {
                return Err((
                    DevError::Emulator(format!("cannot start the tcp demo service: {e}")),
                    sim,
                ));
            }
        };
        // The account key of the Fir demo, registered the way `dynoagent keys register` does.
        let ssh_key = match register_demo_key(&sim).await {
            Ok(key) => key,
            Err(e) => return Err((DevError::Emulator(e), sim)),
        };
        let mut config = GatewayConfig {
            listen: options.listen,
            client_tokens: vec![options.client_token.clone()],
            agents: vec![AgentDef {
                name: DEV_AGENT.into(),
                secret_sha256: Some(dynogw::hash_secret(&secret)),
                secret: None,
                ..Default::default()
            }],
            connections: connections(
                sim.api_key(),
                &ssh_key,
                demo_service.addr,
                sim.dyno_port(DEMO_APP, "web.1"),
            ),
            ..GatewayConfig::default()
        };
        if let Some(db) = &options.audit_db {
            config.audit_db = db.clone();
        }
        let token_path = token_file(&config.audit_db);
        if let Err(e) = write_token(&token_path, &options.client_token) {
            let e = DevError::TokenFile {
                path: token_path,
                reason: e.to_string(),
            };
            return Err((e, sim));
        }
        let gateway = match Gateway::start(config).await {
            Ok(gateway) => gateway,
            Err(e) => {
                let e = DevError::Gateway {
                    listen: options.listen,
                    reason: e.to_string(),
                };
                return Err((e, sim));
            }
        };
        let env: HashMap<String, String> = [
            (
                "HOOP_KEY",
                dynogw::agent_dsn(DEV_AGENT, &secret, gateway.addr()),
            ),
            ("DYNOAGENT_HEROKU_API_URL", sim.api_url().to_owned()),
            ("DYNOAGENT_HEROKU_EXEC_URL", sim.exec_url().to_owned()),
            (
                "DYNOAGENT_HEROKU_CA",
                format!("file://{}", sim.ca_file().display()),
            ),
            ("DYNOAGENT_HEROKU_EXEC_SSH_PORT", sim.ssh_port().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let router = AgentConfig::from_sources(&env, agent::VERSION)
            .and_then(|config| Ok((Router::standard(&config)?, config)));
        let (router, agent_config) = match router {
            Ok(pair) => pair,
            Err(e) => {
                gateway.shutdown().await;
                return Err((DevError::Agent(e.to_string()), sim));
            }
        };
        let agent_stop = CancellationToken::new();
        let agent = Agent::new(agent_config, router, agent_stop.clone());
        let agent_task = tokio::spawn(agent.run());
        let wait = Duration::from_secs(15);
        if !gateway.wait_for_agent(DEV_AGENT, wait).await {
            agent_stop.cancel();
            let _ = agent_task.await;
            gateway.shutdown().await;
            return Err((DevError::AgentOffline(wait), sim));
        }
        let instructions = instructions(&gateway, &options, &token_path);
        Ok(DevStack {
            gateway,
            sim,
            demo_service,
            agent_stop,
            agent_task,
            instructions,
            client_token: options.client_token,
            token_path,
        })
    }

    /// What to type next.
    pub fn instructions(&self) -> &str {
        &self.instructions
    }

    /// The client token of this run (also in [`DevStack::token_path`]).
    pub fn client_token(&self) -> &str {
        &self.client_token
    }

    /// The file holding the client token (0600).
    pub fn token_path(&self) -> &Path {
        &self.token_path
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
        self.sim.shutdown().await;
        self.demo_service.shutdown().await;
        // The token is valid for this run only.
        let _ = std::fs::remove_file(&self.token_path);
    }

    /// The emulator (tests look at its dynos).
    pub fn sim(&self) -> &RunningSim {
        &self.sim
    }
}

impl std::fmt::Debug for DevStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevStack")
            .field("gateway", &self.gateway.addr())
            .field("token_path", &self.token_path)
            .finish_non_exhaustive()
    }
}

/// A fresh ed25519 key registered on the emulator's account; returns its private key text.
async fn register_demo_key(sim: &RunningSim) -> Result<String, String> {
    let text = backend_run::account_key::generate()?;
    let key =
        backend_ssh::load_key(Some(&text), "the demo account key").map_err(|e| e.to_string())?;
    let api = heroku_api::ClientConfig {
        api_url: sim
            .api_url()
            .parse()
            .map_err(|e| format!("the emulator's API URL: {e}"))?,
        ..heroku_api::ClientConfig::default()
    };
    let client = heroku_api::HerokuClient::new(api, heroku_api::ApiKey::new(sim.api_key()))
        .map_err(|e| e.to_string())?;
    backend_run::account_key::register(&client, &key, "dynoagent@dev")
        .await
        .map_err(|e| format!("registering the demo account key: {e}"))?;
    Ok(text)
}

fn instructions(
    gateway: &dynogw::RunningGateway,
    options: &DevOptions,
    token_path: &Path,
) -> String {
    let mut s = String::new();
    let addr = gateway.addr();
    let _ = writeln!(s, "dynoagent dev is running (Ctrl-C stops everything)");
    let _ = writeln!(
        s,
        "  gateway  grpc://{addr}  client token in {} (random for this run)",
        token_path.display()
    );
    let _ = writeln!(s, "  agent    {DEV_AGENT} (connected)");
    let _ = writeln!(
        s,
        "  heroku   emulated, apps {DEMO_APP} (dyno web.1) and {FIR_DEMO_APP} (Fir); connections local, heroku-run, psexec, tcp-demo, tcp-dyno"
    );
    let _ = writeln!(s, "  audit    {}", gateway.audit_db().display());
    let _ = writeln!(s);
    let mut flags = if addr == DevOptions::default().listen {
        String::new()
    } else {
        format!(" --gateway http://{addr}")
    };
    if token_path != dynogw::default_dev_token_file() {
        let _ = write!(flags, " --token \"$(cat {})\"", token_path.display());
    }
    let ctl = &options.client_command;
    let _ = writeln!(s, "Try, in another terminal:");
    let _ = writeln!(
        s,
        "  {ctl} exec{flags} local -i 'echo hello from $HOSTNAME; exit 3'"
    );
    let _ = writeln!(s, "  echo 'uname -a' | {ctl} exec{flags} local");
    let _ = writeln!(s, "  {ctl} connect{flags} local");
    let _ = writeln!(
        s,
        "  {ctl} exec{flags} heroku-run -- --app {DEMO_APP} 'echo on a one-off dyno: $DYNO'"
    );
    let _ = writeln!(
        s,
        "  {ctl} exec{flags} psexec -i 'ps -o pid,cmd' -- --app {DEMO_APP} --dyno web.1"
    );
    let _ = writeln!(
        s,
        "  {ctl} connect{flags} psexec -- --interactive --app {DEMO_APP}"
    );
    let _ = writeln!(
        s,
        "  {ctl} exec{flags} heroku-run -i 'echo hi; exit 3' -- --app {FIR_DEMO_APP} bash"
    );
    let _ = writeln!(
        s,
        "  {ctl} exec{flags} psexec -i 'uname -a' -- --app {FIR_DEMO_APP}"
    );
    let _ = writeln!(
        s,
        "  {ctl} connect{flags} psexec -- --interactive --app {FIR_DEMO_APP}"
    );
    let _ = writeln!(
        s,
        "  {ctl} connect{flags} tcp-demo --port 8999   # then, elsewhere: curl http://127.0.0.1:8999/"
    );
    let _ = writeln!(
        s,
        "  {ctl} connect{flags} tcp-dyno --port 8998   # web.1's $PORT: curl http://127.0.0.1:8998/"
    );
    let audit_flag = match &options.audit_db {
        Some(db) => format!(" --audit-db {}", db.display()),
        None => String::new(),
    };
    let _ = writeln!(s, "  {ctl} sessions{audit_flag}");
    s
}
