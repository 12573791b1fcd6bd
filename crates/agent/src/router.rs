//! Backend routing: which backend runs a session, decided from the connection's command.
//!
//! Adding a backend is one field here and one match arm in [`Router::route`].

use std::sync::Arc;

use backend::Backend;

/// The backends this agent can use.
#[derive(Debug, Clone)]
pub struct Router {
    local: Arc<dyn Backend>,
}

impl Router {
    /// A router whose every connection runs on `local`.
    pub fn new(local: Arc<dyn Backend>) -> Router {
        Router { local }
    }

    /// The backend for a connection command (`CmdList`). Commands no other backend claims run
    /// as local processes, as hoop's agent runs command-line connections.
    pub fn route(&self, _command: &[String]) -> Arc<dyn Backend> {
        Arc::clone(&self.local)
    }
}
