//! `dynobench`: dynoagent's benchmarks (issue 8), run by hand, never by the test suite:
//!
//! ```sh
//! cargo run --release -p dynobench -- [--quick] [--only NAME[,NAME…]]
//! ```
//!
//! It starts, on loopback, an OpenSSH `sshd`, the Heroku emulator and the development gateway
//! in-process, and the release `dynoagent` binary as a child process (built first with
//! `cargo build --release -p dynoagent` unless `--agent` names one), then measures each figure
//! several times, interleaved with its anchors, and prints a table of medians, ratios to the
//! anchors and PASS/MISS against the targets. See docs/performance.md for what each figure
//! means and the results on the reference machine.
//!
//! Code map: `stack` (what runs), `client` (the bench's clients), `figures` (the
//! measurements), `report` (statistics and the table), `proc` (child processes and /proc).
//! Every child is killed on every exit path: figures end on Ctrl-C, and the stack is then
//! stopped in order; drop guards are the backstop.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod figures;
mod proc;
mod report;
mod stack;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::figures::{Ctx, Params, Paths};

const FIGURES: [&str; 10] = [
    "throughput",
    "throughput-local",
    "throughput-ssh",
    "throughput-run",
    "throughput-psexec",
    "throughput-tcp",
    "setup",
    "scale",
    "slow",
    "budget",
];

/// Benchmarks dynoagent against OpenSSH, plain pipes and the real Heroku CLI, on loopback.
#[derive(Debug, Parser)]
#[command(name = "dynobench")]
struct Cli {
    /// Smaller sizes and counts (64 MiB streams, 50 setup sessions, 200 terminals, 20 pasted
    /// terminals, fewer keystrokes): about four minutes instead of about twenty.
    #[arg(long)]
    quick: bool,
    /// Only these figures: throughput (or throughput-local, -ssh, -run, -psexec, -tcp), setup,
    /// scale, slow, budget. Repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Runs per figure (default: 5 for throughput, 3 for the others; 3 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Bytes per throughput stream (default 1 GiB; 64 MiB with --quick).
    #[arg(long)]
    bytes: Option<u64>,
    /// Concurrent terminals for the scale figure (default 1000; 200 with --quick).
    #[arg(long)]
    sessions: Option<usize>,
    /// The slow consumer's read rate in MB/s (10^6 bytes).
    #[arg(long, default_value_t = 50.0)]
    slow_rate: f64,
    /// Where the gateway's SQLite audit database goes. Default: /dev/shm (RAM), so that the
    /// figures measure the session path and not this machine's disk; give a directory on disk
    /// to include the disk's cost.
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// The dynoagent binary to measure (default: build and use target/release/dynoagent).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The real Heroku CLI (default: DYNOAGENT_HEROKU_CLI, ~/.cache/dynoagent/heroku-cli, PATH).
    #[arg(long)]
    heroku_cli: Option<PathBuf>,
}

/// Progress and diagnostics, on stderr (stdout carries only the table).
pub(crate) fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn params(cli: &Cli) -> Params {
    const MIB: u64 = 1024 * 1024;
    let q = cli.quick;
    let runs = cli.runs.unwrap_or(if q { 3 } else { 5 }).max(1);
    let other_runs = cli.runs.unwrap_or(3).max(1);
    Params {
        runs,
        bytes: cli.bytes.unwrap_or(if q { 64 * MIB } else { 1024 * MIB }),
        setup_sessions: if q { 50 } else { 200 },
        setup_ssh_sessions: if q { 20 } else { 100 },
        setup_runs: other_runs,
        scale_sessions: cli.sessions.unwrap_or(if q { 200 } else { 1000 }).max(1),
        scale_runs: other_runs,
        keystroke_rounds: if q { 10 } else { 25 },
        idle_keystrokes: if q { 25 } else { 100 },
        slow_bytes: if q { 64 * MIB } else { 1024 * MIB },
        slow_rate: cli.slow_rate.max(0.1) * 1e6,
        slow_runs: other_runs,
        budget_sessions: if q { 20 } else { 100 },
        budget_bytes: 64 * MIB,
        budget_runs: other_runs,
        heroku_cli: cli.heroku_cli.clone(),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The agent binary: `--agent`, else `cargo build --release -p dynoagent` (a no-op when it is
/// fresh) and target/release/dynoagent, so that the bench never measures a stale agent.
fn agent_binary(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        if !proc::is_executable(&path) {
            bail!("--agent {} is not an executable file", path.display());
        }
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    note("building the release agent: cargo build --release -p dynoagent");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "dynoagent", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release -p dynoagent failed ({status})");
    }
    // The bench runs from target/release itself; the agent is its sibling.
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("dynoagent")))
        .filter(|p| proc::is_executable(p))
        .unwrap_or_else(|| root.join("target/release/dynoagent"));
    if !proc::is_executable(&path) {
        bail!("no agent binary at {}", path.display());
    }
    Ok(path)
}

fn selected(only: &[String], name: &str) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|o| o == name || (o == "throughput" && name.starts_with("throughput-")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    for o in &cli.only {
        if !FIGURES.contains(&o.as_str()) {
            note(&format!(
                "dynobench: unknown figure {o:?}; choose from {}",
                FIGURES.join(", ")
            ));
            return ExitCode::from(2);
        }
    }
    let filter = std::env::var("DYNOBENCH_LOG").unwrap_or_else(|_| "error".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let params = params(&cli);
    let nofile = proc::raise_nofile();
    let needed = params.scale_sessions as u64 * 4 + 1024;
    if nofile < needed {
        note(&format!(
            "warning: RLIMIT_NOFILE is {nofile}; the scale figure may need {needed} (raise the hard limit)"
        ));
    }
    let agent = match agent_binary(cli.agent.clone()) {
        Ok(path) => path,
        Err(e) => {
            note(&format!("dynobench: {e:#}"));
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note(&format!("dynobench: cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli, params, agent))
}

/// `/proc/loadavg`'s three averages: other work on the machine skews every figure but the
/// CPU-time ones.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

async fn run(cli: Cli, params: Params, agent: PathBuf) -> ExitCode {
    let load_before = load_average();
    let cancel = CancellationToken::new();
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            note("interrupted: stopping the current run, then everything the bench started");
            cancel.cancel();
        })
    };
    note(&format!(
        "dynobench: agent {}; {} MiB streams, {} runs",
        agent.display(),
        params.bytes / (1024 * 1024),
        params.runs
    ));
    let max_sessions = params.scale_sessions + 64;
    let shm = Path::new("/dev/shm");
    let audit_dir = cli
        .audit_dir
        .clone()
        .or_else(|| shm.is_dir().then(|| shm.to_path_buf()));
    let stack = tokio::select! {
        s = stack::Stack::start(&agent, max_sessions, audit_dir.as_deref()) => s,
        () = cancel.cancelled() => {
            watcher.abort();
            return ExitCode::from(130);
        }
    };
    let mut stack = match stack {
        Ok(s) => s,
        Err(e) => {
            note(&format!("dynobench: cannot start the stack: {e:#}"));
            watcher.abort();
            return ExitCode::from(1);
        }
    };
    note(&format!("audit database: {}", stack.audit_db().display()));
    let mut ctx = Ctx {
        stack: &mut stack,
        params: &params,
        cancel: cancel.clone(),
    };
    let mut rows = Vec::new();
    let only = &cli.only;
    let paths = Paths {
        local: selected(only, "throughput-local"),
        ssh: selected(only, "throughput-ssh"),
        run: selected(only, "throughput-run"),
        psexec: selected(only, "throughput-psexec"),
    };
    if paths.local || paths.ssh || paths.run || paths.psexec {
        rows.extend(Box::pin(figures::throughput(&mut ctx, paths)).await);
    }
    if selected(only, "throughput-tcp") && !cancel.is_cancelled() {
        rows.extend(Box::pin(figures::throughput_tcp(&mut ctx)).await);
    }
    if selected(only, "setup") && !cancel.is_cancelled() {
        rows.extend(Box::pin(figures::setup(&mut ctx)).await);
    }
    if selected(only, "scale") && !cancel.is_cancelled() {
        rows.extend(Box::pin(figures::scale(&mut ctx)).await);
    }
    if selected(only, "slow") && !cancel.is_cancelled() {
        rows.extend(Box::pin(figures::slow_consumer(&mut ctx)).await);
    }
    if selected(only, "budget") && !cancel.is_cancelled() {
        rows.extend(Box::pin(figures::input_budget(&mut ctx)).await);
    }
    note("stopping the agent, the gateway, the emulator and sshd");
    stack.shutdown().await;
    watcher.abort();
    let table = report::render(&rows);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{table}");
    let _ = writeln!(
        out,
        "load average (1, 5, 15 min): {load_before} at the start, {} at the end",
        load_average()
    );
    let _ = out.flush();
    if cancel.is_cancelled() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}
