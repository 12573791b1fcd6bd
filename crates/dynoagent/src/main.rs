//! The `dynoagent` binary: loads the configuration, installs logging, runs the agent from the
//! `agent` crate, and turns SIGTERM/SIGINT into a bounded graceful drain.
//!
//! Nothing else lives here: every behaviour worth testing is in a library crate.

#![forbid(unsafe_code)]

use agent::{Agent, AgentConfig, Router, VERSION};
use clap::Parser;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Connects to a hoop gateway (HOOP_KEY) and serves its sessions.
#[derive(Debug, Parser)]
#[command(name = "dynoagent", version = VERSION, about, long_about = None)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    let config = match AgentConfig::from_process_env(VERSION) {
        Ok(config) => config,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("dynoagent: {e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Err(e) = agent::logging::init(&config.log) {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("dynoagent: cannot install logging: {e}");
        }
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: AgentConfig) -> ExitCode {
    let shutdown = CancellationToken::new();
    let deadline = config.shutdown_timeout;
    let router = match Router::standard(&config) {
        Ok(router) => router,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        version = VERSION,
        agent = config.link.dsn.agent_name(),
        gateway_host = config.link.dsn.host(),
        "dynoagent starting"
    );
    let agent = Agent::new(config, router, shutdown.clone());
    let mut running = tokio::spawn(agent.run());

    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let signal_name = tokio::select! {
        _ = &mut running => return ExitCode::SUCCESS,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = signal_name,
        timeout_s = deadline.as_secs(),
        "shutting down"
    );
    shutdown.cancel();
    match tokio::time::timeout(deadline, running).await {
        Ok(_) => {
            tracing::info!("shutdown complete");
            ExitCode::SUCCESS
        }
        Err(_) => {
            tracing::error!("shutdown did not finish in time; exiting anyway");
            ExitCode::from(1)
        }
    }
}
