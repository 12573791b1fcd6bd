//! dynoagent's application: a hoop-compatible agent that serves command-line sessions.
//!
//! [`Agent`] ties the pieces together: the gateway link (reconnecting), one session engine per
//! stream, the backend router, and two-phase shutdown (a cancellation token says "begin", a
//! task tracker says "done"). The binary only loads config, installs logging and waits for a
//! signal.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admission;
mod budget;
pub mod config;
mod engine;
pub mod keys;
pub mod logging;
mod router;
mod session;
mod tcp;

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AgentConfig, ConfigError, LogConfig, LogEncoding, SessionLimits};
pub use router::Router;

/// The agent's version, sent to the gateway as `version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    shared: Arc<engine::Shared>,
}

impl Agent {
    /// Builds an agent. Nothing dials until [`Agent::run`]. `shutdown` begins the drain.
    pub fn new(config: AgentConfig, router: Router, shutdown: CancellationToken) -> Agent {
        let (live, _) = watch::channel(0);
        let shared = Arc::new(engine::Shared {
            router,
            env_file_dir: config.env_file_dir.clone(),
            limit: Arc::new(Semaphore::new(config.max_sessions)),
            max_sessions: config.max_sessions,
            tracker: TaskTracker::new(),
            live,
            shutdown,
            allow_unenforced_policies: config.allow_unenforced_policies,
            shutdown_timeout: config.shutdown_timeout,
            shutdown_at: std::sync::OnceLock::new(),
            input_budget: budget::Budget::new(config.limits.agent_input_bytes),
            limits: config.limits.clone(),
        });
        Agent { config, shared }
    }

    /// The number of live sessions, as it changes.
    pub fn live_sessions(&self) -> watch::Receiver<usize> {
        self.shared.live.subscribe()
    }

    /// Serves sessions until shutdown, then waits (bounded) for every session task to end.
    pub async fn run(self) {
        let shared = Arc::clone(&self.shared);
        let link = self.config.link.clone();
        gateway_link::run(link, shared.shutdown.clone(), |conn| {
            engine::serve(Arc::clone(&shared), conn)
        })
        .await;
        shared.tracker.close();
        // The same deadline as the engine's drain and stream close: the whole shutdown fits
        // in `shutdown_timeout` (Heroku sends SIGKILL 30 s after SIGTERM).
        if tokio::time::timeout_at(shared.shutdown_deadline(), shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!("some sessions were still ending at the shutdown deadline");
        }
        remove_env_dir(&self.config.env_file_dir);
    }
}

/// Removes the env directory at the end, with any `filesystem:` secret files a session that
/// did not stop in time still holds. Only the agent's own files are removed (`*.envfs`, in
/// the per-session directories named by a UUID, or directly in the directory): it may be one
/// an operator named (`DYNOAGENT_ENV_DIR`), so it is never removed recursively.
fn remove_env_dir(dir: &std::path::Path) {
    remove_secret_files(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let session_dir = entry.file_type().is_ok_and(|t| t.is_dir())
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| uuid::Uuid::parse_str(n).is_ok());
            if session_dir {
                remove_secret_files(&path);
                let _ = std::fs::remove_dir(&path);
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // An operator's directory that holds other files stays.
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            tracing::debug!(dir = %dir.display(), "the env directory holds other files; kept")
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the env directory")
        }
    }
}

/// Removes the agent's own secret files (`*.envfs`, regular files) directly in `dir`.
fn remove_secret_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path.extension().is_some_and(|e| e == "envfs")
            && entry.file_type().is_ok_and(|t| t.is_file());
        if ours && let Err(e) = std::fs::remove_file(&path) {
            tracing::error!(path = %path.display(), error = %e, "cannot remove a secret file left by a session");
        }
    }
}
