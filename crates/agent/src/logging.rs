//! Log setup: one line per event on stdout, in logfmt (default), JSON or human text.
//!
//! Logging rule: fields first (`session_id`, `error = %e`), a short lower-case message.
//! ERROR means an operator must act; WARN means the agent recovered. Secrets are never fields.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, LogEncoding};

/// Installs the global subscriber. Returns an error if one is already installed.
pub fn init(config: &LogConfig) -> Result<(), tracing_subscriber::util::TryInitError> {
    // Our crates log at the configured level; dependencies (h2, hyper, rustls) only warn.
    let filter = EnvFilter::new(format!("warn,{lvl}", lvl = targets(&config.level)));
    let registry = tracing_subscriber::registry().with(filter);
    match config.encoding {
        LogEncoding::Logfmt => registry.with(tracing_logfmt::layer()).try_init(),
        LogEncoding::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogEncoding::Human => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout))
            .try_init(),
    }
}

/// The workspace's library crates (tracing targets): they log at the configured level.
const OUR_CRATES: &[&str] = &[
    "dynoagent",
    "agent",
    "gateway_link",
    "hoop_wire",
    "hoop_gob",
    "heroku_api",
    "heroku_policy",
    "heroku_args",
    "backend",
    "backend_local",
    "backend_run",
    "backend_ssh",
    "backend_psexec",
    "devstack",
    "dynogw",
    "dynoctl",
    "herokusim",
];

fn targets(level: &str) -> String {
    OUR_CRATES
        .iter()
        .map(|t| format!("{t}={level}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs human-readable logging on stderr at `level` (used by `dynoagent dev`, whose
/// stdout belongs to the user).
pub fn init_stderr(level: &str) -> Result<(), tracing_subscriber::util::TryInitError> {
    let filter = EnvFilter::new(format!("warn,{lvl}", lvl = targets(level)));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A crate missing from [`OUR_CRATES`] would log only its warnings, silently.
    #[test]
    fn every_workspace_crate_logs_at_the_configured_level() {
        let manifest =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
                .unwrap();
        let crates: Vec<String> = manifest
            .lines()
            .filter_map(|l| l.split_once("path = \"crates/"))
            .map(|(_, rest)| rest.split('"').next().unwrap().replace('-', "_"))
            .collect();
        assert!(crates.len() >= 10, "found only {crates:?}");
        for name in &crates {
            assert!(
                OUR_CRATES.contains(&name.as_str()),
                "{name} is not in OUR_CRATES"
            );
        }
        assert!(targets("debug").contains("backend_psexec=debug"));
    }
}
