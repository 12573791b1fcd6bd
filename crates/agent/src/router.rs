//! Backend routing: which backend runs a session, decided from the connection's command.
//!
//! Adding a backend is one field here and one line in [`Router::route`].

use std::sync::Arc;

use backend::Backend;
use backend_local::{LocalBackend, LocalConfig};
use backend_psexec::{PsexecBackend, PsexecConfig};
use backend_run::{RunBackend, RunConfig};
use backend_ssh::{SshBackend, SshConfig};

use crate::config::{AgentConfig, ConfigError};

/// The backends this agent can use.
#[derive(Debug, Clone)]
pub struct Router {
    local: Arc<dyn Backend>,
    run: Option<Arc<dyn Backend>>,
    psexec: Option<Arc<dyn Backend>>,
    ssh: Option<Arc<dyn Backend>>,
    /// The psexec backend again, for `tcp` connections into a dyno (Heroku Exec forwarding).
    forwarder: Option<Arc<PsexecBackend>>,
}

impl Router {
    /// A router whose every connection runs on `local`.
    pub fn new(local: Arc<dyn Backend>) -> Router {
        Router {
            local,
            run: None,
            psexec: None,
            ssh: None,
            forwarder: None,
        }
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
        let mut ssh = SshConfig::from_agent_env();
        ssh.client.kill_grace = config.kill_grace;
        let psexec = Arc::new(PsexecBackend::new(PsexecConfig {
            api: api.clone(),
            ssh_port: config.heroku.exec_ssh_port,
            attach_tls: Some(std::sync::Arc::clone(&rendezvous.tls)),
            ..PsexecConfig::default()
        }));
        let run = RunBackend::new(RunConfig {
            api,
            rendezvous,
            drain_after_marker: std::time::Duration::from_secs(5),
            stop_timeout: std::time::Duration::from_secs(15),
            attach_ssh: RunConfig::default_attach_ssh(),
        });
        Ok(Router {
            local: Arc::new(LocalBackend::new(local)),
            run: Some(Arc::new(run)),
            psexec: Some(Arc::clone(&psexec) as Arc<dyn Backend>),
            ssh: Some(Arc::new(SshBackend::new(ssh))),
            forwarder: Some(psexec),
        })
    }

    /// Heroku Exec, for `tcp` connections into a dyno; `None` in a router without Heroku.
    pub(crate) fn forwarder(&self) -> Option<&Arc<PsexecBackend>> {
        self.forwarder.as_ref()
    }

    /// The backend for a connection command (`CmdList`). Commands no other backend claims run
    /// as local processes, as hoop's agent runs command-line connections.
    pub fn route(&self, command: &[String]) -> Arc<dyn Backend> {
        let claimed = [
            (&self.run, backend_run::claims as fn(&[String]) -> bool),
            (&self.psexec, backend_psexec::claims),
            (&self.ssh, backend_ssh::claims),
        ];
        claimed
            .into_iter()
            .find_map(|(backend, claims)| backend.as_ref().filter(|_| claims(command)))
            .map_or_else(|| Arc::clone(&self.local), Arc::clone)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn each_command_reaches_its_backend() {
        let env: HashMap<String, String> = [(
            "HOOP_KEY".to_string(),
            "grpc://a1:s@127.0.0.1:8010?mode=standard".to_string(),
        )]
        .into();
        let router = Router::standard(&AgentConfig::from_sources(&env, "0").unwrap()).unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["heroku", "run", "--exit-code"], "run"),
            (&["/usr/bin/heroku", "run"], "run"),
            (&["ps-exec.sh"], "psexec"),
            (&["heroku", "ps:exec"], "psexec"),
            (&["ssh"], "ssh"),
            (&["/usr/bin/ssh", "-p", "22"], "ssh"),
            (&["bash"], "local"),
            (&["heroku", "apps"], "local"),
            (&[], "local"),
        ];
        for (command, backend) in cases {
            assert_eq!(router.route(&v(command)).name(), *backend, "{command:?}");
        }
    }

    #[test]
    fn a_bare_router_runs_everything_locally() {
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(LocalConfig::from_agent_env()));
        let router = Router::new(local);
        assert_eq!(router.route(&v(&["heroku", "run"])).name(), "local");
        assert_eq!(router.route(&v(&["ssh"])).name(), "local");
    }
}
