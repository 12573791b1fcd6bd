//! Backend routing: which backend runs a session, decided from the connection's command.
//!
//! Adding a backend is one field here and one line in [`Router::route`].

use std::sync::Arc;

use backend::Backend;
use backend_local::{LocalBackend, LocalConfig};
use backend_run::{RunBackend, RunConfig};

use crate::config::{AgentConfig, ConfigError};

/// The backends this agent can use.
#[derive(Debug, Clone)]
pub struct Router {
    local: Arc<dyn Backend>,
    run: Option<Arc<dyn Backend>>,
}

impl Router {
    /// A router whose every connection runs on `local`.
    pub fn new(local: Arc<dyn Backend>) -> Router {
        Router { local, run: None }
    }

    /// Every backend, configured from the agent's configuration.
    pub fn standard(config: &AgentConfig) -> Result<Router, ConfigError> {
        let mut local = LocalConfig::from_agent_env();
        local.kill_grace = config.kill_grace;
        let ca = config.heroku.ca_pem.as_deref();
        let api = heroku_api::ClientConfig {
            api_url: config.heroku.api_url.clone(),
            exec_url: config.heroku.exec_url.clone(),
            extra_roots_pem: config.heroku.ca_pem.clone(),
            ..heroku_api::ClientConfig::default()
        };
        let rendezvous = backend_run::rendezvous::RendezvousConfig::new(ca).map_err(|reason| {
            ConfigError::Invalid {
                var: "DYNOAGENT_HEROKU_CA",
                reason,
            }
        })?;
        let run = RunBackend::new(RunConfig {
            api,
            rendezvous,
            drain_after_marker: std::time::Duration::from_secs(5),
            stop_timeout: std::time::Duration::from_secs(15),
        });
        Ok(Router {
            local: Arc::new(LocalBackend::new(local)),
            run: Some(Arc::new(run)),
        })
    }

    /// The backend for a connection command (`CmdList`). Commands no other backend claims run
    /// as local processes, as hoop's agent runs command-line connections.
    pub fn route(&self, command: &[String]) -> Arc<dyn Backend> {
        match &self.run {
            Some(run) if backend_run::claims(command) => Arc::clone(run),
            _ => Arc::clone(&self.local),
        }
    }
}
