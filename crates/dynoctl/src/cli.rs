//! The `dynoctl` command line (the `dynoctl` binary, and `dynoagent ctl`, which runs the same
//! thing so that `dynoagent dev`'s hints work without another build): parses the command
//! line, runs the library, and maps the outcome to the process exit code (the session's own exit code for `exec` and `connect`; 143 on
//! SIGINT/SIGTERM during exec, as hoop's CLI; 254 for a failure of the gateway or agent; 2 for
//! a usage error). Nothing else lives here.

#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{ClientConfig, ClientError, ExecRequest};
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// The dynoagent client: run commands through a hoop-compatible gateway and read its audit.
///
/// With no flags it talks to `dynoagent dev` (gateway http://127.0.0.1:8010, the token it wrote).
#[derive(Debug, Parser)]
#[command(name = "dynoctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// The gateway: http://host:port, grpc://host:port or host:port.
    #[arg(long, env = "DYNOCTL_GATEWAY", default_value = crate::DEFAULT_GATEWAY)]
    gateway: String,
    /// The client token.
    /// [default: the token file of `dynoagent dev`, else dev-token]
    #[arg(long, env = "DYNOCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// The gateway's audit database [default: the dynoagent dev / dynogw default].
    #[arg(long, env = "DYNOCTL_AUDIT_DB")]
    audit_db: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a one-off command on a connection; input from -i, -f or piped stdin.
    Exec {
        /// The connection name.
        connection: String,
        /// The input text.
        #[arg(short = 'i', long = "input")]
        input: Option<String>,
        /// A file whose content is the input.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Client environment variables (KEY=VALUE), repeatable.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Arguments appended to the connection's command (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Open an interactive terminal on a connection (needs a TTY); on a tcp connection,
    /// listen on 127.0.0.1:PORT and relay every local connection until Ctrl-C.
    Connect {
        /// The connection name.
        connection: String,
        /// Client environment variables (KEY=VALUE), repeatable.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Which starting packet goes first: hoop's CLI sends its first "\n" and first resize
        /// concurrently, so agents see either order; random by default, like hoop's.
        #[arg(long = "first", value_enum, default_value_t = crate::terminal::FirstPacket::Random)]
        first: crate::terminal::FirstPacket,
        /// On a tcp connection: the local port to listen on (0: any free port).
        #[arg(long = "port", default_value_t = crate::tcp::DEFAULT_PORT)]
        port: u16,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Arguments appended to the connection's command (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List the audited sessions.
    Sessions {
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Replay one session's input and output with timestamps.
    Audit {
        /// The session id (from `dynoctl sessions`).
        session_id: String,
        #[command(flatten)]
        audit: AuditArgs,
    },
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from((code & 0xff) as u8)
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("dynoctl: {e}");
    exit(e.exit_code())
}

fn env_map(raw: &[String]) -> Result<BTreeMap<String, String>, ClientError> {
    raw.iter().map(|e| crate::parse_env(e)).collect()
}

/// Runs the command line `args` (the first item is the program name) to its exit code.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DYNOCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match cli.command {
        Command::Sessions { audit } => report(&audit, |store, out| {
            crate::report::write_sessions(store, out)
        }),
        Command::Audit { session_id, audit } => report(&audit, |store, out| {
            crate::report::write_audit(store, &session_id, out)
        }),
        Command::Exec {
            connection,
            input,
            file,
            env,
            gateway,
            args,
        } => {
            let request = (|| {
                let piped = if crate::stdin_is_piped() {
                    Some(crate::read_input()?)
                } else {
                    None
                };
                Ok::<_, ClientError>(ExecRequest {
                    connection,
                    input: crate::resolve_input(piped, input.as_deref(), file.as_deref())?,
                    args,
                    env: env_map(&env)?,
                })
            })();
            match request {
                Ok(request) => with_runtime(run_exec(config(gateway), request)),
                Err(e) => fail(&e),
            }
        }
        Command::Connect {
            connection,
            env,
            first,
            port,
            gateway,
            args,
        } => match env_map(&env) {
            Ok(env) => with_runtime(run_connect(
                config(gateway),
                connection,
                args,
                env,
                (first, port),
            )),
            Err(e) => fail(&e),
        },
    }
}

fn config(g: GatewayArgs) -> ClientConfig {
    ClientConfig::new(g.gateway, g.token.unwrap_or_else(crate::default_token))
}

fn report(
    args: &AuditArgs,
    render: impl FnOnce(
        &dynogw::audit::AuditStore,
        &mut std::io::StdoutLock<'static>,
    ) -> Result<(), ClientError>,
) -> ExitCode {
    let path = args
        .audit_db
        .clone()
        .unwrap_or_else(dynogw::default_audit_db);
    let result = dynogw::audit::AuditStore::open(&path)
        .map_err(ClientError::from)
        .and_then(|store| {
            let mut out = std::io::stdout().lock();
            render(&store, &mut out)?;
            out.flush().map_err(ClientError::Output)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn with_runtime(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dynoctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(fut);
    // Do not wait for anything still blocked (e.g. a read on the terminal).
    runtime.shutdown_background();
    code
}

async fn run_exec(config: ClientConfig, request: ExecRequest) -> ExitCode {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("dynoctl: cannot install signal handlers");
        return ExitCode::from(1);
    };
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let result = tokio::select! {
        r = crate::exec(&config, request, &mut stdout, &mut stderr) => r,
        // hoop's CLI exits 143 on SIGINT/SIGTERM; dropping the stream ends the session.
        _ = term.recv() => return exit(143),
        _ = int.recv() => return exit(143),
    };
    match result {
        Ok(outcome) => {
            if !outcome.message.is_empty() {
                eprintln!("{}", outcome.message.trim_end());
            }
            exit(outcome.exit_code)
        }
        Err(e) => fail(&e),
    }
}

async fn run_connect(
    config: ClientConfig,
    connection: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    (first, port): (crate::terminal::FirstPacket, u16),
) -> ExitCode {
    let ready = |addr: std::net::SocketAddr| {
        #[allow(clippy::print_stdout)]
        {
            println!(
                "host={} port={}\nready to accept connections!",
                addr.ip(),
                addr.port()
            );
        }
    };
    match crate::terminal::connect(&config, &connection, &args, &env, first, port, ready).await {
        Ok(outcome) => {
            // The terminal is already restored here.
            if !outcome.message.is_empty() {
                eprintln!("{}", outcome.message.trim_end());
            }
            exit(outcome.exit_code)
        }
        Err(e) => fail(&e),
    }
}
