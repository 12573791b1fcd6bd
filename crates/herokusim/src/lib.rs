//! `herokusim`: a Heroku emulator for testing Heroku clients (the real Heroku CLI, dynoagent's
//! run and psexec backends) on one machine, without Heroku.
//!
//! It emulates, on 127.0.0.1 only:
//! - the **Platform API** (plain HTTP): Bearer auth, Heroku's error bodies `{id, message, url}`,
//!   `RateLimit-Remaining` and `Request-Id` on every response, a token-bucket rate limit,
//!   `GET /account` (also as the Particleboard side-call), `/account/rate-limits`,
//!   `/apps/{app}`, dynos (list, get, create, delete one, delete all = restart,
//!   `DELETE /apps/{app}/formations/{type}`), `features/runtime-heroku-exec`, `config-vars`,
//!   `buildpack-installations`, and the account's SSH keys (`/account/keys`);
//! - **rendezvous** (TLS, test CA): the secret line, the `rendezvous\r\n` ack as its own write,
//!   then the one-off's `bash -c` process spliced raw (PTY sized from `COLUMNS`/`LINES`, or
//!   merged pipes with `force_no_tty`);
//! - the **exec-manager** (HTTPS): `PUT /api/v2/{dyno}` and `GET /api/v2`, Basic `app:apikey`;
//! - the **SSH proxy** (russh): host key = `proxy_public_key`, only registered client keys;
//!   exec, shell and `direct-tcpip` to the dyno's loopback (`ssh -L`, `ps:forward`);
//! - the **HTTPS attach path** of Fir and Shield apps and `run:inside` (on the exec-manager's
//!   listener): `GET /attach/{secret}` + `Upgrade: tcp`, then SSH with the account's keys.
//!
//! Dynos are real local processes: formation dynos run their configured command for as long as
//! they are up; one-off dynos run when their client attaches (rendezvous, or the HTTPS upgrade)
//! and are gone when the process ends (rendezvous) or the SSH connection ends (HTTPS). `GET /apps/{app}/dynos` shows exactly the live ones (a formation dyno whose
//! process exited shows `crashed`). Every process runs in its own process group; none outlives
//! the emulator ([`RunningSim::shutdown`], and `Drop` as a backstop, kill them all).
//!
//! # Embedding
//!
//! ```no_run
//! # async fn demo() -> Result<(), herokusim::SimError> {
//! let config = herokusim::SimConfig { ssh_port: Some(0), ..herokusim::SimConfig::demo() };
//! let sim = herokusim::Sim::start(config).await?;
//! println!("{}", sim.endpoints().to_json_line());
//! // HEROKU_HOST = sim.api_url(), HEROKU_EXEC_URL = sim.exec_url(), CA = sim.ca_file() ...
//! sim.set_faults(herokusim::Faults { create_conflicts: 1, ..Default::default() });
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Not emulated
//!
//! Apps cannot be created or deleted over the API, there are no releases, builds, add-ons, logs
//! (`log-sessions`), 2FA or pagination (`Range`); the SSH proxy refuses sftp (so `ps:copy` does
//! not work). Dynos share the machine's network: each gets a `PORT` of its own on 127.0.0.1
//! ([`RunningSim::dyno_port`]) instead of an isolated namespace.
//! The flags, the config file format, the JSON line and the fault API are documented in this
//! crate's `README.md`.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod api;
mod attach;
mod config;
mod dynos;
mod exec_manager;
mod faults;
mod keys;
mod process;
mod rendezvous;
mod ssh;
mod state;
mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use attach::AttachRequest;
pub use config::{
    AppConfig, DEMO_API_KEY, DynoConfig, Generation, SimConfig, SpaceKind, fir_dyno_name,
};
pub use faults::Faults;
pub use keys::AccountKey;
pub use rendezvous::ACK as RENDEZVOUS_ACK;

use state::{App, RatePool, Shared, State};

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound (for the SSH proxy on port 80: run as root, or pick
    /// another port with `ssh_port`).
    #[error("cannot listen for the {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The test CA or TLS config could not be made.
    #[error("tls setup failed: {0}")]
    Tls(String),
    /// The SSH host key could not be made.
    #[error("ssh host key generation failed: {0}")]
    HostKey(String),
    /// The state directory or CA file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the emulator listens; serialised as the one JSON line `herokusim` prints on start.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoints {
    /// Platform API base URL (`HEROKU_HOST`, also `HEROKU_PARTICLEBOARD_URL`).
    pub api_url: String,
    /// Exec-manager base URL (`HEROKU_EXEC_URL`).
    pub exec_url: String,
    /// PEM file of the test CA (`NODE_EXTRA_CA_CERTS`).
    pub ca_file: PathBuf,
    /// SSH proxy port on 127.0.0.1.
    pub ssh_port: u16,
    /// The API key to use (`HEROKU_API_KEY`).
    pub api_key: String,
    /// Rendezvous port on 127.0.0.1.
    pub rendezvous_port: u16,
}

impl Endpoints {
    /// The single JSON line printed on start.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The emulator's entry point.
/// A one-off dyno create the API accepted, as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedDyno {
    pub app: String,
    /// The command exactly as sent (with any `launcher ` prefix and exit marker).
    pub command: String,
    pub time_to_live: Option<std::time::Duration>,
}

#[derive(Debug)]
pub struct Sim;

impl Sim {
    /// Validates `config`, generates the test CA and SSH host key, binds every listener on
    /// 127.0.0.1, boots the formation dynos and starts serving. Must be called inside a tokio
    /// runtime (multi-threaded or current-thread).
    pub async fn start(mut config: SimConfig) -> Result<RunningSim, SimError> {
        config.validate()?;
        // Fir formation dynos are configured as `web.1` but named like Kubernetes pods; the
        // pod-style name is used everywhere from here on (API, env `DYNO`, restarts).
        for a in &mut config.apps {
            if a.generation == config::Generation::Fir {
                for d in &mut a.formation {
                    d.name = config::fir_dyno_name(&a.name, &d.name);
                }
            }
        }
        let (dir, tempdir) = match &config.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|source| SimError::Io {
                    path: d.clone(),
                    source,
                })?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("herokusim-")
                    .tempdir()
                    .map_err(|source| SimError::Io {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (t.path().to_path_buf(), Some(t))
            }
        };

        let ca = tls::TestCa::generate()?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).map_err(|source| SimError::Io {
            path: ca_file.clone(),
            source,
        })?;
        let host_key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .map_err(|e| SimError::HostKey(e.to_string()))?;
        let proxy_public_key = host_key
            .public_key()
            .to_openssh()
            .map_err(|e| SimError::HostKey(e.to_string()))?;

        let attach_host_key = russh::keys::PrivateKey::random(
            &mut rand::rng(),
            russh::keys::Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP256,
            },
        )
        .map_err(|e| SimError::HostKey(e.to_string()))?;

        let ssh_port = config.ssh_port.unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                80
            } else {
                0
            }
        });
        let api_listener = bind("Platform API", config.api_port).await?;
        let exec_listener = bind("exec-manager", config.exec_port).await?;
        let rendezvous_listener = bind("rendezvous server", config.rendezvous_port).await?;
        let ssh_listener = bind("SSH proxy", ssh_port).await?;
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
        let endpoints = Endpoints {
            api_url: format!("http://127.0.0.1:{}", port(&api_listener)),
            exec_url: format!("https://127.0.0.1:{}/", port(&exec_listener)),
            ca_file: ca_file.clone(),
            ssh_port: port(&ssh_listener),
            api_key: config.api_key.clone(),
            rendezvous_port: port(&rendezvous_listener),
        };

        let mut apps = BTreeMap::new();
        for a in &config.apps {
            let home = dir.join("apps").join(&a.name);
            std::fs::create_dir_all(&home).map_err(|source| SimError::Io {
                path: home.clone(),
                source,
            })?;
            let now = SystemTime::now();
            apps.insert(
                a.name.clone(),
                App {
                    id: Uuid::new_v4(),
                    name: a.name.clone(),
                    stack: a.stack_name(),
                    generation: a.generation,
                    space: a.space,
                    exec_enabled: a.exec_enabled,
                    feature_updated_at: now,
                    config_vars: a.config_vars.clone(),
                    buildpacks: a.buildpacks.clone(),
                    formation: a.formation.clone(),
                    created_at: now,
                    release_id: Uuid::new_v4(),
                    home,
                    dynos: BTreeMap::new(),
                    ports: BTreeMap::new(),
                },
            );
        }
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                apps,
                secrets: std::collections::HashMap::new(),
                reservations: VecDeque::new(),
                next_run: 1000,
                next_boot: 0,
                rate: RatePool::new(config.rate_limit_pool, config.rate_limit_refill_per_minute),
                created: Vec::new(),
                account_keys: Vec::new(),
                attach_grants: std::collections::HashMap::new(),
                attach_requests: VecDeque::new(),
            }),
            faults: Mutex::new(config.faults.clone()),
            procs: process::ProcessTable::default(),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            rendezvous_port: endpoints.rendezvous_port,
            https_port: port(&exec_listener),
            proxy_public_key,
            attach_ssh: ssh::attach_config(attach_host_key),
            account_id: Uuid::new_v4(),
            config,
        });

        {
            let mut st = shared.state();
            for a in &shared.config.apps {
                for d in &a.formation {
                    dynos::boot_formation(&shared, &mut st, &a.name, d);
                }
            }
        }

        let mut servers = Vec::new();
        let api = api::router(shared.clone());
        let c = cancel.clone();
        servers.push(tokio::spawn(async move {
            let r = axum::serve(api_listener, api)
                .with_graceful_shutdown(c.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "platform api server failed");
            }
        }));
        let exec_tls = ca.server_config(&[b"http/1.1"])?;
        let exec = exec_manager::router(shared.clone());
        let c = cancel.clone();
        let exec_listener = attach::Listener::new(
            tls::TlsListener::new(exec_listener, exec_tls, cancel.clone()),
            shared.clone(),
        );
        servers.push(tokio::spawn(async move {
            let r = axum::serve(exec_listener, exec)
                .with_graceful_shutdown(c.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "exec-manager server failed");
            }
        }));
        let rendezvous_tls = ca.server_config(&[])?;
        servers.push(tokio::spawn(rendezvous::serve(
            shared.clone(),
            rendezvous_listener,
            rendezvous_tls,
        )));
        servers.push(tokio::spawn(ssh::serve(
            shared.clone(),
            ssh_listener,
            ssh::server_config(host_key),
        )));
        tracing::info!(
            api_url = %endpoints.api_url,
            exec_url = %endpoints.exec_url,
            ssh_port = endpoints.ssh_port,
            rendezvous_port = endpoints.rendezvous_port,
            "herokusim started"
        );
        Ok(RunningSim {
            endpoints,
            ca_pem: ca.ca_pem,
            shared,
            servers,
            _tempdir: tempdir,
            stopped: false,
        })
    }
}

async fn bind(what: &'static str, port: u16) -> Result<TcpListener, SimError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { what, addr, source })
}

/// A running emulator. Dropping it kills every process it started (SIGKILL to each process
/// group) and stops its servers; [`RunningSim::shutdown`] does the same gracefully.
#[derive(Debug)]
pub struct RunningSim {
    endpoints: Endpoints,
    ca_pem: String,
    shared: Arc<Shared>,
    servers: Vec<JoinHandle<()>>,
    _tempdir: Option<tempfile::TempDir>,
    stopped: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl RunningSim {
    /// All endpoints (what the JSON line shows).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }
    /// `http://127.0.0.1:PORT` of the Platform API.
    pub fn api_url(&self) -> &str {
        &self.endpoints.api_url
    }
    /// `https://127.0.0.1:PORT/` of the exec-manager.
    pub fn exec_url(&self) -> &str {
        &self.endpoints.exec_url
    }
    /// Path of the test CA certificate (PEM).
    pub fn ca_file(&self) -> &Path {
        &self.endpoints.ca_file
    }
    /// The test CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// SSH proxy port on 127.0.0.1.
    pub fn ssh_port(&self) -> u16 {
        self.endpoints.ssh_port
    }
    /// Rendezvous port on 127.0.0.1.
    pub fn rendezvous_port(&self) -> u16 {
        self.endpoints.rendezvous_port
    }
    /// The accepted API key.
    pub fn api_key(&self) -> &str {
        &self.endpoints.api_key
    }
    /// The SSH proxy's host key in OpenSSH format (`proxy_public_key`).
    pub fn proxy_public_key(&self) -> &str {
        &self.shared.proxy_public_key
    }
    /// The faults now in force (counters reflect what is left).
    pub fn faults(&self) -> Faults {
        self.shared.faults().clone()
    }
    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults() = faults;
    }
    /// Process-group ids (leader pids) of every process the emulator is running now.
    pub fn live_process_groups(&self) -> Vec<i32> {
        self.shared.procs.snapshot()
    }
    /// The SSH keys registered on the account (`/account/keys`), oldest first.
    pub fn account_keys(&self) -> Vec<AccountKey> {
        self.shared.state().account_keys.clone()
    }
    /// The latest requests to the HTTPS attach endpoint (`GET /attach/{secret}`), oldest first,
    /// with the status they got: what a client sent, header by header.
    pub fn attach_requests(&self) -> Vec<AttachRequest> {
        self.shared
            .state()
            .attach_requests
            .iter()
            .cloned()
            .collect()
    }
    /// Every one-off dyno create the API accepted so far, oldest first.
    pub fn created_dynos(&self) -> Vec<CreatedDyno> {
        self.shared.state().created.clone()
    }

    /// Waits (at most `limit`) until exactly `n` process groups are live, by notification
    /// from the process table; on timeout, returns the groups still live.
    pub async fn wait_process_groups(
        &self,
        n: usize,
        limit: std::time::Duration,
    ) -> Result<(), Vec<i32>> {
        let mut count = self.shared.procs.watch_count();
        match tokio::time::timeout(limit, count.wait_for(|c| *c == n)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(self.live_process_groups()),
        }
    }
    /// `(name, state)` of every dyno of `app`, as the API lists them.
    pub fn dyno_states(&self, app: &str) -> Vec<(String, String)> {
        self.shared
            .state()
            .apps
            .get(app)
            .map(|a| {
                a.dynos
                    .values()
                    .map(|d| (d.name.clone(), d.state.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `PORT` that dyno `dyno` of `app` runs with now: a real port on 127.0.0.1 of its own
    /// (herokusim's dynos share the machine's loopback, so each gets a distinct one; a formation
    /// dyno keeps it across restarts). A `direct-tcpip` channel of the SSH proxy to
    /// `127.0.0.1:PORT` reaches the dyno's listener. `None` if there is no such dyno.
    pub fn dyno_port(&self, app: &str, dyno: &str) -> Option<u16> {
        let st = self.shared.state();
        let a = st.apps.get(app)?;
        dynos::effective_port(a, a.dynos.get(dyno)?)
    }

    /// Stops serving, kills every process (SIGTERM/SIGHUP, then SIGKILL after the grace),
    /// and waits (bounded) for all sessions to end.
    pub async fn shutdown(mut self) {
        self.stop_now();
        self.shared.tracker.close();
        let bound = self.shared.kill_grace() + Duration::from_secs(5);
        if tokio::time::timeout(bound, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not end in time; killing what is left");
        }
        self.shared.procs.kill_all(Signal::SIGKILL);
        for server in self.servers.drain(..) {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), server)
                .await
                .is_err()
            {
                tracing::debug!("a server did not stop in time");
                abort.abort();
            }
        }
        self.stopped = true;
        tracing::info!("herokusim stopped");
    }

    fn stop_now(&self) {
        self.shared.cancel.cancel();
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop_now();
            self.shared.procs.kill_all(Signal::SIGKILL);
            for s in &self.servers {
                s.abort();
            }
        }
    }
}
