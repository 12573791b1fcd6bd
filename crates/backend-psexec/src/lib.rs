//! The psexec backend: Heroku Exec (`heroku ps:exec`) natively, replacing hoop's
//! `ps-exec.sh` (hoop-gateway-protocol.md §7-§8, heroku-protocols.md §6).
//!
//! - [`args`]: ps-exec.sh's flags, validated before any API call (a bad argument exits 2);
//! - [`keys`]: a fresh RSA-2048 client key per session from a background-filled pool;
//! - [`status`]: the `--status` table;
//! - the session ([`PsexecBackend::run`]): gating (feature on? dyno up? one-off dyno?), the
//!   exec-manager credential exchange (Basic auth), SSH to the exec proxy with its host key
//!   pinned to `proxy_public_key`, and one channel streamed both ways (crate `backend-ssh`).
//!
//! Differences from ps-exec.sh, each a requirement: no silent feature enable or restart (only
//! when the connection allows it: `--enable-exec` with `PSEXEC_AUTO_ENABLE=ask`, or
//! `PSEXEC_AUTO_ENABLE=true`; and then only the named dyno); the input
//! of `--pipe` is streamed over the channel, never base64 in argv; exec sessions get no PTY
//! (stdout and stderr stay apart); the remote exit status is the session's exit code
//! (`exit-signal` → 128+n); every failure names the step that failed.
//!
//! On a Fir app (no Heroku Exec) the same flags run through `run:inside` on the named dyno (or,
//! without `--dyno`, a running web dyno) over Heroku's SSH attach path (crate `backend-run`'s
//! `ssh_attach`), with the account key `HEROKU_SSH_KEY`; `--status` lists the Fir dynos.
//!
//! Session variables read: `HEROKU_API_KEY` (required), `PSEXEC_AUTO_ENABLE` (`true`/`ask`; connection only),
//! `HEROKU_SSH_KEY` (Fir apps; connection only), `TERM` (for the PTY of `hoop connect`).

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub use heroku_args::psexec as args;
mod error;
pub mod keys;
mod session;
pub mod status;

use std::time::Duration;

use backend::{Backend, ExitStatus, SessionIo, SessionRequest};
use backend_ssh::ClientOptions;
use futures::future::BoxFuture;
use heroku_api::ClientConfig;
use heroku_policy::basename;

pub use error::PsexecError;
pub use keys::KeyPool;

/// Whether a connection command belongs to this backend: `ps-exec.sh` or `psexec` (any path),
/// or `heroku ps:exec`.
pub fn claims(command: &[String]) -> bool {
    match command.first().map(|c| basename(c)) {
        Some("ps-exec.sh" | "psexec") => true,
        Some("heroku") => command.get(1).is_some_and(|a| a == "ps:exec"),
        _ => false,
    }
}

/// Settings for [`PsexecBackend`].
#[derive(Clone, Debug)]
pub struct PsexecConfig {
    /// Platform API and exec-manager endpoints.
    pub api: ClientConfig,
    /// The exec proxy's SSH port (Heroku: 80, hard-coded by the CLI).
    pub ssh_port: u16,
    /// Connect timeout and keepalive (10 s × 3 as the CLI) for the proxy connection.
    pub client: ClientOptions,
    /// With the opt-in: how long to wait for the restarted dyno to be `up` (and its exec
    /// agent registered).
    pub enable_wait: Duration,
    /// How often to poll the dyno's state while waiting.
    pub poll_interval: Duration,
    /// Client keys kept ready.
    pub key_pool_size: usize,
    /// Largest input accepted as the command in the default mode (it travels in one SSH
    /// request; bigger inputs belong in `--pipe`).
    pub max_command_bytes: usize,
    /// TLS for Heroku's SSH attach path (Fir apps: `run:inside`); `None` builds it from the
    /// system roots and `api.extra_roots_pem` per session.
    pub attach_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// SSH settings on the attach path (the CLI's keepalive: 20 s × 3).
    pub attach_ssh: ClientOptions,
}

impl Default for PsexecConfig {
    fn default() -> Self {
        PsexecConfig {
            api: ClientConfig::default(),
            ssh_port: 80,
            client: ClientOptions::default(),
            enable_wait: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            key_pool_size: 4,
            max_command_bytes: 128 * 1024,
            attach_tls: None,
            attach_ssh: backend_run::RunConfig::default_attach_ssh(),
        }
    }
}

/// Runs Heroku Exec sessions.
#[derive(Debug, Clone)]
pub struct PsexecBackend {
    config: PsexecConfig,
    keys: KeyPool,
}

impl PsexecBackend {
    /// A backend with the given settings. Inside a tokio runtime the key pool starts filling
    /// at once; otherwise on the first session.
    pub fn new(config: PsexecConfig) -> PsexecBackend {
        let keys = KeyPool::new(config.key_pool_size.max(1));
        keys.refill();
        PsexecBackend { config, keys }
    }

    /// The key pool (to warm it explicitly, or to observe it in tests).
    pub fn keys(&self) -> &KeyPool {
        &self.keys
    }

    /// Heroku Exec's SSH connection to `dyno` of `app` for port forwarding
    /// ([`backend_ssh::Connection::forward`]): `tcp` connections into a dyno, like
    /// `heroku ps:forward`. The same policy as a psexec session (`HEROKU_API_KEY`,
    /// `HEROKU_APPS`, `PSEXEC_AUTO_ENABLE=true` to enable Heroku Exec); Fir apps are refused.
    pub async fn connect_for_forwarding(
        &self,
        env: &backend::SessionEnv,
        app: &str,
        dyno: &str,
    ) -> Result<backend_ssh::Connection, PsexecError> {
        session::connect_for_forwarding(&self.config, &self.keys, env, app, dyno).await
    }
}

impl Backend for PsexecBackend {
    fn name(&self) -> &'static str {
        "psexec"
    }

    fn run(&self, request: SessionRequest, io: SessionIo) -> BoxFuture<'static, ExitStatus> {
        let config = self.config.clone();
        let keys = self.keys.clone();
        Box::pin(session::run(config, keys, request, io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn claims_ps_exec_commands_only() {
        assert!(claims(&v(&["/app/bin/ps-exec.sh"])));
        assert!(claims(&v(&["psexec", "--app", "x"])));
        assert!(claims(&v(&["/usr/bin/heroku", "ps:exec"])));
        assert!(!claims(&v(&["heroku", "run"])));
        assert!(!claims(&v(&["heroku"])));
        assert!(!claims(&v(&["ssh"])));
        assert!(!claims(&v(&[])));
    }
}
