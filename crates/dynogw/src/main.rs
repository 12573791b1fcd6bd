//! The `dynogw` binary: reads the TOML config, installs logging, runs the gateway from the
//! library, and on SIGINT/SIGTERM shuts it down (sessions closed with 254 "gateway shutdown",
//! audit flushed). Nothing else lives here.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use dynogw::{Gateway, GatewayConfig};
use tokio::signal::unix::{SignalKind, signal};

/// A hoop-compatible development gateway with a SQLite audit store.
#[derive(Debug, Parser)]
#[command(name = "dynogw", version, about, long_about = None)]
struct Cli {
    /// The gateway's TOML configuration (see the dynogw crate docs for the format).
    #[arg(long, short = 'c', env = "DYNOGW_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "dynogw failed");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = GatewayConfig::from_toml_file(&cli.config)?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let gateway = Gateway::start(config).await?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    gateway.shutdown().await;
    Ok(())
}
