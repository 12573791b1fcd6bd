//! The `dynoagent` binary: loads the configuration, installs logging, runs the agent from the
//! `agent` crate, and turns SIGTERM/SIGINT/SIGHUP into a bounded graceful drain.
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
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run a development gateway, this agent and the demo connections on loopback.
    Dev {
        /// Where the gateway listens (loopback only, unless --insecure-listen).
        #[arg(long, default_value = "127.0.0.1:8010")]
        listen: std::net::SocketAddr,
        /// Allow a non-loopback --listen address (plaintext gRPC and a shell on this machine
        /// for anyone with the token).
        #[arg(long)]
        insecure_listen: bool,
        /// The audit database (default: dynoctl's default path).
        #[arg(long)]
        audit_db: Option<std::path::PathBuf>,
    },
    /// The account SSH key for Heroku's SSH attach path (Fir apps, Shield spaces): `keys
    /// generate --out FILE`, then `keys register` with HEROKU_API_KEY and HEROKU_SSH_KEY set.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The development client (`dynoctl`), built into this binary: `dynoagent ctl exec local
    /// -i 'echo hi'`, `dynoagent ctl connect local`, `dynoagent ctl sessions`, ...
    #[command(disable_help_flag = true)]
    Ctl {
        /// dynoctl's arguments (`dynoagent ctl --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Write a new ed25519 private key to FILE (mode 0600, never overwritten) and print its
    /// public key line. Store the file's content as the connection secret HEROKU_SSH_KEY.
    Generate {
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Register the public half of HEROKU_SSH_KEY (env: key text, base64 or a file path) on
    /// the Heroku account of HEROKU_API_KEY (env), unless it is already there. The key is
    /// account-wide.
    Register {
        /// The key's comment on the account [default: dynoagent@$HEROKU_APP_NAME].
        #[arg(long)]
        comment: Option<String>,
    },
}

fn main() -> ExitCode {
    // First of all: sessions of local connections run as the agent's user, and a dumpable
    // process's /proc/PID/environ and memory are readable by every process of that user. Not
    // dumpable, they are readable only by root (CAP_SYS_PTRACE), so a session cannot read the
    // agent's HOOP_KEY or HEROKU_API_KEY. Children do not inherit this (execve resets it).
    let non_dumpable = nix::sys::prctl::set_dumpable(false);
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Dev {
            listen,
            insecure_listen,
            audit_db,
        }) => return dev(listen, insecure_listen, audit_db),
        Some(Command::Ctl { args }) => return ctl(args),
        Some(Command::Keys { command }) => return keys(command),
        None => {}
    }
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
    if let Err(e) = non_dumpable {
        tracing::warn!(error = %e, "cannot make the agent non-dumpable; sessions of local connections can read its environment (HOOP_KEY)");
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
    for warning in config.transport_warnings() {
        tracing::warn!(gateway_host = config.link.dsn.host(), "{warning}");
    }
    // Handlers first: a signal that arrives while the agent starts must drain it, not kill it.
    // SIGHUP (a closed terminal, some supervisors) is a shutdown too, never an instant death.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let agent = Agent::new(config, router, shutdown.clone());
    let mut running = tokio::spawn(agent.run());
    let signal_name = tokio::select! {
        _ = &mut running => return ExitCode::SUCCESS,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
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

/// `dynoagent dev` in a build without the development stack (the deploy build leaves the
/// Heroku emulator and the development gateway out of the agent it ships).
#[cfg(not(feature = "dev"))]
fn dev(
    _listen: std::net::SocketAddr,
    _insecure_listen: bool,
    _audit_db: Option<std::path::PathBuf>,
) -> ExitCode {
    without_dev("dynoagent dev")
}

/// `dynoagent ctl` in a build without the development stack.
#[cfg(not(feature = "dev"))]
fn ctl(_args: Vec<std::ffi::OsString>) -> ExitCode {
    without_dev("dynoagent ctl")
}

/// `dynoagent keys …`: one-time setup, printing one line; secrets come from the environment.
fn keys(command: KeysCommand) -> ExitCode {
    let result = match command {
        KeysCommand::Generate { out } => agent::keys::generate_to(&out).map(|public| {
            format!(
                "{public}\nwrote the private key to {} (mode 0600); store its content as the connection secret HEROKU_SSH_KEY, then run `dynoagent keys register`",
                out.display()
            )
        }),
        KeysCommand::Register { comment } => {
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(agent::keys::register(&env, comment.as_deref())),
                Err(e) => Err(agent::keys::KeysError::Api(format!(
                    "cannot start the async runtime: {e}"
                ))),
            }
        }
    };
    match result {
        Ok(line) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("dynoagent keys: {e}");
            }
            ExitCode::from(1)
        }
    }
}

#[cfg(not(feature = "dev"))]
fn without_dev(what: &str) -> ExitCode {
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{what}: this build has no development stack (built without the `dev` feature, as deployed); run it from a source checkout: cargo run --release -p dynoagent -- dev"
        );
    }
    ExitCode::from(2)
}

/// `dynoagent ctl`: the development client (`dynoctl`), so that the hints `dev` prints run
/// with no second build.
#[cfg(feature = "dev")]
fn ctl(args: Vec<std::ffi::OsString>) -> ExitCode {
    dynoctl::cli::main_from(std::iter::once(std::ffi::OsString::from("dynoagent ctl")).chain(args))
}

#[cfg(feature = "dev")]
fn dev(
    listen: std::net::SocketAddr,
    insecure_listen: bool,
    audit_db: Option<std::path::PathBuf>,
) -> ExitCode {
    // The hints `dev` prints run this very binary's `ctl`: no second build needed.
    let client_command = std::env::current_exe()
        .map(|exe| format!("{} ctl", exe.display()))
        .unwrap_or_else(|_| "dynoagent ctl".to_owned());
    let options = devstack::DevOptions {
        listen,
        insecure_listen,
        audit_db,
        client_command,
        ..devstack::DevOptions::default()
    };
    // Human-readable warnings on stderr; stdout is for the instructions.
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    let _ = agent::logging::init_stderr(&level);
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
    runtime.block_on(async move {
        let stack = match devstack::DevStack::start(options).await {
            Ok(stack) => stack,
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("dynoagent dev: {e}");
                }
                return ExitCode::from(1);
            }
        };
        #[allow(clippy::print_stdout)]
        {
            println!("{}", stack.instructions());
        }
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            stack.shutdown().await;
            return ExitCode::from(1);
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
        #[allow(clippy::print_stdout)]
        {
            println!("stopping...");
        }
        stack.shutdown().await;
        ExitCode::SUCCESS
    })
}
