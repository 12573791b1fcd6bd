//! The `herokusim` binary: flags → config → [`herokusim::Sim::start`] → one JSON line with the
//! endpoints on stdout → logs on stderr → wait for SIGINT/SIGTERM → graceful shutdown.
//!
//! No logic worth testing lives here; everything is in the library.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herokusim::{Sim, SimConfig};

/// A Heroku emulator (Platform API, rendezvous, exec-manager, SSH proxy) on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "herokusim", version)]
struct Args {
    /// Start with app `demo` (web.1 running `sleep infinity`, exec enabled, fixed API key).
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    /// A TOML config file (see the crate README for the format).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Platform API port (0: a free port).
    #[arg(long)]
    api_port: Option<u16>,
    /// Exec-manager port (0: a free port).
    #[arg(long)]
    exec_port: Option<u16>,
    /// Rendezvous port (0: a free port).
    #[arg(long)]
    rendezvous_port: Option<u16>,
    /// SSH proxy port (default: 80 as root, else a free port).
    #[arg(long)]
    ssh_port: Option<u16>,
    /// Override the API key.
    #[arg(long, env = "HEROKUSIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Directory for ca.pem and app homes (default: a temporary directory).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Fault: answer the next N dyno creates with 409.
    #[arg(long, value_name = "N")]
    fail_creates: Option<u32>,
    /// Fault: answer the next N API requests with 429.
    #[arg(long, value_name = "N")]
    rate_limited: Option<u32>,
    /// Fault: answer the next N API requests with a 5xx (see --server-error-status).
    #[arg(long, value_name = "N")]
    server_errors: Option<u32>,
    /// Status of injected server errors (default 503).
    #[arg(long, value_name = "STATUS")]
    server_error_status: Option<u16>,
    /// Fault: answer dyno creates this much later (the dyno exists at once).
    #[arg(long, value_name = "MS")]
    create_response_delay_ms: Option<u64>,
    /// Fault: delay the rendezvous ack.
    #[arg(long, value_name = "MS")]
    ack_delay_ms: Option<u64>,
    /// Fault: drop rendezvous connections after N output bytes.
    #[arg(long, value_name = "BYTES")]
    drop_rendezvous_after: Option<u64>,
    /// Fault: reset rendezvous connections (TCP RST) after N input bytes.
    #[arg(long, value_name = "BYTES")]
    reset_rendezvous_after_input: Option<u64>,
    /// Fault: drop SSH connections after N bytes of channel data.
    #[arg(long, value_name = "BYTES")]
    drop_ssh_after: Option<u64>,
    /// Fault: refuse the next N exec-manager key exchanges with 403.
    #[arg(long, value_name = "N")]
    refuse_exec_keys: Option<u32>,
}

fn build_config(args: &Args) -> Result<SimConfig, herokusim::SimError> {
    let mut config = match (&args.config, args.demo) {
        (Some(path), _) => SimConfig::from_file(path)?,
        (None, true) => SimConfig::demo(),
        (None, false) => {
            return Err(herokusim::SimError::Config(
                "pass --demo or --config FILE".to_owned(),
            ));
        }
    };
    if let Some(p) = args.api_port {
        config.api_port = p;
    }
    if let Some(p) = args.exec_port {
        config.exec_port = p;
    }
    if let Some(p) = args.rendezvous_port {
        config.rendezvous_port = p;
    }
    if args.ssh_port.is_some() {
        config.ssh_port = args.ssh_port;
    }
    if let Some(k) = &args.api_key {
        config.api_key.clone_from(k);
    }
    if args.state_dir.is_some() {
        config.state_dir.clone_from(&args.state_dir);
    }
    let f = &mut config.faults;
    if let Some(n) = args.fail_creates {
        f.create_conflicts = n;
    }
    if let Some(n) = args.rate_limited {
        f.rate_limited = n;
    }
    if let Some(n) = args.server_errors {
        f.server_errors = n;
    }
    if let Some(s) = args.server_error_status {
        f.server_error_status = s;
    }
    if let Some(ms) = args.create_response_delay_ms {
        f.create_response_delay_ms = ms;
    }
    if let Some(ms) = args.ack_delay_ms {
        f.ack_delay_ms = ms;
    }
    if args.drop_rendezvous_after.is_some() {
        f.drop_rendezvous_after = args.drop_rendezvous_after;
    }
    if args.reset_rendezvous_after_input.is_some() {
        f.reset_rendezvous_after_input = args.reset_rendezvous_after_input;
    }
    if args.drop_ssh_after.is_some() {
        f.drop_ssh_after = args.drop_ssh_after;
    }
    if let Some(n) = args.refuse_exec_keys {
        f.refuse_exec_keys = n;
    }
    config.validate()?;
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "herokusim: bad configuration");
            return ExitCode::from(2);
        }
    };
    let sim = match Sim::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            tracing::error!(error = %e, "herokusim could not start");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", sim.endpoints().to_json_line())
            .and_then(|()| out.flush())
            .is_err()
        {
            tracing::warn!("cannot write the endpoints line to stdout");
        }
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            sim.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    sim.shutdown().await;
    ExitCode::SUCCESS
}
