//! The measurements. Each figure interleaves its runs with its anchors' runs (run 1 of
//! everything, then run 2, …) so that noise from other work on the machine hits both alike,
//! and every wait is bounded in time and every loop in count; Ctrl-C ends the current run.
//!
//! * throughput: `head -c N /dev/zero` through client → gateway → agent → backend, as the
//!   streaming rate (first output byte to last) seen by an in-process `dynoctl::exec`, against
//!   OpenSSH's client, a plain pipe and the real `heroku run` CLI.
//! * tcp (`figures/tcp.rs`): a byte stream through `dynoctl connect` and a `tcp` connection,
//!   against `ssh -L`.
//! * setup: `exec true` end to end (dial, open, spawn, exit code), against `ssh host true` and
//!   spawning `true`.
//! * scale: N concurrent `connect` sessions running `cat`; the agent's RSS per session and
//!   the keystroke echo latency under a typing load.
//! * slow consumer: a stream read at a limited rate; the agent's peak RSS.
//! * input budget: N terminals each pasted 64 MiB that their process never reads; the
//!   agent's peak RSS (its byte budgets must hold it, whatever the clients send).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tokio_util::sync::CancellationToken;

use crate::client::{self, Sink, Terminal};
use crate::report::{Row, Runs, Target, Unit, median, percentile};
use crate::stack::{self, Stack, conn};

mod tcp;
pub use tcp::{Source, throughput as throughput_tcp};

/// Sizes and counts of one bench run.
#[derive(Clone, Debug)]
pub struct Params {
    pub runs: usize,
    pub bytes: u64,
    pub setup_sessions: usize,
    pub setup_ssh_sessions: usize,
    pub setup_runs: usize,
    pub scale_sessions: usize,
    pub scale_runs: usize,
    pub keystroke_rounds: usize,
    /// Keystrokes of the unloaded anchor (one terminal alone, same pace).
    pub idle_keystrokes: usize,
    pub slow_bytes: u64,
    pub slow_rate: f64,
    pub slow_runs: usize,
    pub budget_sessions: usize,
    pub budget_bytes: u64,
    pub budget_runs: usize,
    pub heroku_cli: Option<PathBuf>,
}

/// What every figure gets.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub stack: &'a mut Stack,
    pub params: &'a Params,
    pub cancel: CancellationToken,
}

/// Runs `fut`, bounded by `limit` and by Ctrl-C.
async fn bounded<T>(
    cancel: &CancellationToken,
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        () = cancel.cancelled() => bail!("interrupted"),
        r = tokio::time::timeout(limit, fut) => {
            r.map_err(|_| anyhow!("{what} did not finish within {limit:?}"))?
        }
    }
}

/// The runs of one measurement; after the first error it records nothing more.
#[derive(Debug, Default)]
struct Series {
    runs: Vec<f64>,
    error: Option<String>,
}

impl Series {
    fn active(&self) -> bool {
        self.error.is_none()
    }

    fn push(&mut self, what: &str, r: anyhow::Result<f64>) {
        match r {
            Ok(v) => {
                crate::note(&format!("  {what}: {v:.2}"));
                self.runs.push(v);
            }
            Err(e) => {
                crate::note(&format!("  {what}: error: {e:#}"));
                self.error = Some(format!("{e:#}"));
            }
        }
    }

    fn runs(&self) -> Runs {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(self.runs.clone()),
        }
    }
}

fn stream_limit(bytes: u64) -> Duration {
    // Generous: 30 s plus 10 MiB/s, far below any path measured here.
    Duration::from_secs(30 + bytes / (10 * 1024 * 1024))
}

/// One exec session whose whole stdout is `bytes` long; returns its streaming rate.
async fn dyno_stream(
    stack: &Stack,
    connection: &str,
    args: &[String],
    bytes: u64,
    mut out: Sink,
) -> anyhow::Result<(f64, client::Tally)> {
    let mut err = Sink::counting();
    let request = dynoctl::ExecRequest {
        connection: connection.into(),
        args: args.to_vec(),
        ..Default::default()
    };
    let outcome = dynoctl::exec(&stack.client, request, &mut out, &mut err).await?;
    if outcome.exit_code != 0 {
        bail!(
            "{connection}: exit code {} ({:?}; {} bytes on stderr)",
            outcome.exit_code,
            outcome.message,
            err.tally.bytes
        );
    }
    if out.tally.bytes != bytes {
        bail!(
            "{connection}: {} bytes of output, expected {bytes}",
            out.tally.bytes
        );
    }
    let rate = out.tally.mib_per_s().context("no output")?;
    Ok((rate, out.tally))
}

/// A child whose whole stdout is `bytes` long (up to `slack` more); returns its streaming
/// rate.
async fn spawn_stream(
    mut cmd: tokio::process::Command,
    bytes: u64,
    slack: u64,
) -> anyhow::Result<f64> {
    let mut child = stack::spawn_reader(&mut cmd)?;
    let stdout = child.child.stdout.take().context("no stdout")?;
    let (tally, tail) = client::drain(stdout).await?;
    let status = child.child.wait().await?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.as_std().get_program());
    }
    if tally.bytes < bytes || tally.bytes > bytes + slack {
        bail!(
            "{} bytes of output, expected {bytes}; it ended with {:?}",
            tally.bytes,
            String::from_utf8_lossy(&tail)
        );
    }
    tally.mib_per_s().context("no output")
}

/// The real Heroku CLI, pointed at the emulator (as crates/herokusim/tests/heroku_cli.rs).
fn heroku_cli(stack: &Stack, bin: &std::path::Path) -> anyhow::Result<tokio::process::Command> {
    let sim = stack.sim()?;
    let home = stack.dir().join("heroku-home");
    std::fs::create_dir_all(&home)?;
    let bin_dir = bin.parent().context("the CLI path has no directory")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs)?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("LANG", "C.UTF-8")
        .env("HEROKU_HOST", sim.api_url())
        .env("HEROKU_PARTICLEBOARD_URL", sim.api_url())
        .env("HEROKU_API_KEY", sim.api_key())
        .env("HEROKU_EXEC_URL", sim.exec_url())
        .env("NODE_EXTRA_CA_CERTS", sim.ca_file())
        .env("DISABLE_TELEMETRY", "true")
        .env("HEROKU_DISABLE_AUTOUPDATE", "1")
        .env("HEROKU_SKIP_NEW_VERSION_CHECK", "true")
        .current_dir(&home)
        .stdin(Stdio::null());
    Ok(cmd)
}

/// Finds the real Heroku CLI: the flag, `DYNOAGENT_HEROKU_CLI`, the cache `scripts/test`
/// installs it into, or `heroku` on `PATH`.
pub fn find_heroku_cli(flag: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = flag {
        // An explicit path is used or reported missing, never silently replaced.
        return crate::proc::is_executable(&path).then_some(path);
    }
    let env = std::env::var_os("DYNOAGENT_HEROKU_CLI").map(PathBuf::from);
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/dynoagent/heroku-cli/node_modules/.bin/heroku"));
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("heroku"))
            .find(|p| crate::proc::is_executable(p))
    });
    [env, cache, on_path]
        .into_iter()
        .flatten()
        .find(|p| crate::proc::is_executable(p))
}

/// Which throughput paths to measure.
#[derive(Clone, Copy, Debug)]
pub struct Paths {
    pub local: bool,
    pub ssh: bool,
    pub run: bool,
    pub psexec: bool,
}

/// CPU seconds used so far, per process group of interest. Each includes the descendants it
/// has reaped (the agent reaps its sessions' processes, sshd its connections' processes, this
/// process the ssh client, `head` and the emulator's dynos).
#[derive(Clone, Copy, Debug, Default)]
struct CpuSnap {
    agent: f64,
    agent_children: f64,
    bench: f64,
    sshd: f64,
}

impl CpuSnap {
    fn take(stack: &Stack) -> Option<CpuSnap> {
        let me = i32::try_from(std::process::id()).ok()?;
        let (bench, bench_children) = crate::proc::cpu_seconds(me)?;
        let (agent, agent_children) = match stack.agent_pid_unchecked() {
            Some(pid) => crate::proc::cpu_seconds(pid)?,
            None => (0.0, 0.0),
        };
        let sshd = stack
            .sshd_pid()
            .and_then(crate::proc::cpu_seconds)
            .map_or(0.0, |(own, children)| own + children);
        Some(CpuSnap {
            agent,
            agent_children,
            bench: bench + bench_children,
            sshd,
        })
    }

    /// `(after - self)` per GiB of `bytes`.
    fn per_gib(self, after: CpuSnap, bytes: u64) -> CpuSnap {
        let gib = bytes as f64 / (1024.0 * 1024.0 * 1024.0);
        CpuSnap {
            agent: (after.agent - self.agent) / gib,
            agent_children: (after.agent_children - self.agent_children) / gib,
            bench: (after.bench - self.bench) / gib,
            sshd: (after.sshd - self.sshd) / gib,
        }
    }

    fn total(self) -> f64 {
        self.agent + self.agent_children + self.bench + self.sshd
    }
}

/// `; CPU s/GiB: …`, the medians of `cpu` per process group, or nothing without runs.
fn cpu_note(cpu: &[CpuSnap]) -> String {
    let m = |f: fn(&CpuSnap) -> f64| median(&cpu.iter().map(f).collect::<Vec<_>>());
    match (
        m(|c| c.agent),
        m(|c| c.agent_children),
        m(|c| c.bench),
        m(|c| c.sshd),
    ) {
        (Some(agent), Some(children), Some(bench), Some(sshd)) => format!(
            "; CPU s/GiB: agent {agent:.2}, its session processes {children:.2}, bench process (gateway, client, emulator) {bench:.2}, sshd {sshd:.2}"
        ),
        _ => String::new(),
    }
}

/// Waits (bounded) until sshd has reaped its connections' processes, so that their CPU time
/// is in its `cutime`.
async fn sshd_settled(stack: &Stack) {
    if let Some(pid) = stack.sshd_pid() {
        crate::proc::wait_no_children(pid, Duration::from_secs(5)).await;
    }
}

/// One bounded throughput session; also returns the CPU seconds per GiB it cost each process
/// on the path.
async fn dyno_run(
    stack: &Stack,
    cancel: &CancellationToken,
    limit: Duration,
    connection: &'static str,
    args: Vec<String>,
    n: u64,
) -> (anyhow::Result<f64>, Option<CpuSnap>) {
    let before = CpuSnap::take(stack);
    let r = bounded(cancel, limit, connection, async {
        let (rate, tally) = dyno_stream(stack, connection, &args, n, Sink::counting()).await?;
        crate::note(&format!(
            "  {connection}: {} packets, {} bytes each on average",
            tally.chunks,
            tally.bytes / tally.chunks.max(1)
        ));
        Ok(rate)
    })
    .await;
    sshd_settled(stack).await;
    let cpu = match (before, CpuSnap::take(stack), r.is_ok()) {
        (Some(b), Some(a), true) => Some(b.per_gib(a, n)),
        _ => None,
    };
    if let Err(e) = stack.clear_audit().await {
        crate::note(&format!("cannot clear the audit store: {e:#}"));
    }
    (r, cpu)
}

/// Throughput of every selected path, with OpenSSH, the plain pipe and the real `heroku run`
/// measured in the same runs.
pub async fn throughput(ctx: &mut Ctx<'_>, paths: Paths) -> Vec<Row> {
    let p = ctx.params;
    let n = p.bytes;
    let remote = format!("head -c {n} /dev/zero");
    let limit = stream_limit(n);
    let cli = if paths.run {
        find_heroku_cli(p.heroku_cli.clone())
    } else {
        None
    };
    let (mut local, mut ssh, mut run, mut psexec): (Series, Series, Series, Series) =
        Default::default();
    let (mut openssh, mut pipe, mut cli_runs): (Series, Series, Series) = Default::default();
    if paths.run && cli.is_none() {
        cli_runs.error = Some(
            "the real Heroku CLI was not found (--heroku-cli, DYNOAGENT_HEROKU_CLI, or scripts/test installs it)".into(),
        );
    }
    let need_openssh = paths.local || paths.ssh || paths.psexec;
    let (mut cpu_local, mut cpu_ssh, mut cpu_run, mut cpu_psexec) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut cpu_openssh: Vec<f64> = Vec::new();
    let stack = &*ctx.stack;
    let cancel = &ctx.cancel;
    for i in 1..=p.runs {
        if cancel.is_cancelled() {
            break;
        }
        crate::note(&format!("throughput run {i}/{}", p.runs));
        let dyno = |connection: &'static str, args: Vec<String>| {
            dyno_run(stack, cancel, limit, connection, args, n)
        };
        if paths.local && local.active() {
            let args = vec!["-c".into(), n.to_string(), "/dev/zero".into()];
            let (r, c) = dyno(conn::HEAD, args).await;
            local.push("local", r);
            cpu_local.extend(c);
        }
        if paths.ssh && ssh.active() {
            let (r, c) = dyno(conn::SSH, vec![remote.clone()]).await;
            ssh.push("ssh backend", r);
            cpu_ssh.extend(c);
        }
        if paths.run && run.active() {
            let args = vec!["--app".into(), stack::APP.into(), remote.clone()];
            let (r, c) = dyno(conn::RUN, args).await;
            run.push("run backend", r);
            cpu_run.extend(c);
        }
        if paths.psexec && psexec.active() {
            let args = [
                "--app",
                stack::APP,
                "--dyno",
                "web.1",
                "--pipe",
                remote.as_str(),
            ]
            .map(String::from)
            .to_vec();
            let (r, c) = dyno(conn::PSEXEC, args).await;
            psexec.push("psexec", r);
            cpu_psexec.extend(c);
        }
        if need_openssh && openssh.active() {
            let before = CpuSnap::take(stack);
            let r = match stack.sshd() {
                Ok(sshd) => bounded(
                    cancel,
                    limit,
                    "ssh",
                    spawn_stream(sshd.client(&remote), n, 0),
                )
                .await
                .map_err(|e| {
                    if cancel.is_cancelled() {
                        e
                    } else {
                        e.context(format!("sshd log:\n{}", sshd.log_tail()))
                    }
                }),
                Err(e) => Err(e),
            };
            sshd_settled(stack).await;
            if let (Some(b), Some(a), true) = (before, CpuSnap::take(stack), r.is_ok()) {
                cpu_openssh.push(b.per_gib(a, n).total());
            }
            openssh.push("OpenSSH", r);
        }
        if paths.local && pipe.active() {
            let mut cmd = tokio::process::Command::new("head");
            cmd.args(["-c", &n.to_string(), "/dev/zero"]);
            pipe.push(
                "pipe",
                bounded(cancel, limit, "head", spawn_stream(cmd, n, 0)).await,
            );
        }
        if let (Some(bin), true) = (&cli, cli_runs.active()) {
            let r = match heroku_cli(stack, bin) {
                Ok(mut cmd) => {
                    cmd.args(["run", "--no-tty", "-x", "--app", stack::APP, "--", &remote]);
                    // The CLI strips its exit-status marker from the output, but sometimes
                    // leaves it in (about 34 bytes) when the marker arrives split in two reads.
                    let slack = 64;
                    bounded(cancel, limit, "heroku run", spawn_stream(cmd, n, slack)).await
                }
                Err(e) => Err(e),
            };
            cli_runs.push("heroku run (CLI)", r);
        }
    }
    let size = format!("N = {} MiB", n / (1024 * 1024));
    let row = |figure: &str, value: &Series, anchor: &str, a: &Series, target, cpu: &[CpuSnap]| {
        let cpu = cpu_note(cpu);
        Row {
            figure: figure.into(),
            unit: Unit::MibPerS,
            value: value.runs(),
            anchor: Some((anchor.into(), a.runs())),
            target,
            note: format!("{size}{cpu}"),
        }
    };
    let mut rows = Vec::new();
    if paths.local {
        rows.push(row(
            "throughput: local backend",
            &local,
            "OpenSSH: ssh 127.0.0.1",
            &openssh,
            Some(Target::RatioAtLeast(1.5)),
            &cpu_local,
        ));
        rows.push(row(
            "throughput: local backend",
            &local,
            "plain pipe",
            &pipe,
            None,
            &[],
        ));
        let totals: Vec<f64> = cpu_local.iter().map(|c| c.total()).collect();
        rows.push(Row {
            figure: "CPU per GiB: local path, all processes".into(),
            unit: Unit::SecPerGiB,
            value: if local.active() {
                Ok(totals)
            } else {
                local.runs()
            },
            anchor: Some((
                "OpenSSH: ssh + sshd + head".into(),
                if openssh.active() {
                    Ok(cpu_openssh.clone())
                } else {
                    openssh.runs()
                },
            )),
            target: None,
            note: "user + system time of every process on the path (client, gateway and audit in the bench process, agent, head; ssh, sshd and head), independent of other load".into(),
        });
    }
    if paths.ssh {
        rows.push(row(
            "throughput: ssh backend -> sshd",
            &ssh,
            "OpenSSH: ssh 127.0.0.1",
            &openssh,
            Some(Target::RatioAtLeast(1.0)),
            &cpu_ssh,
        ));
    }
    if paths.run {
        rows.push(row(
            "throughput: run backend (herokusim)",
            &run,
            "real `heroku run` CLI, same emulator",
            &cli_runs,
            Some(Target::RatioAtLeast(1.5)),
            &cpu_run,
        ));
    }
    if paths.psexec {
        rows.push(row(
            "throughput: psexec --pipe (herokusim)",
            &psexec,
            "OpenSSH: ssh 127.0.0.1",
            &openssh,
            Some(Target::RatioAtLeast(1.0)),
            &cpu_psexec,
        ));
    }
    // Issue 17's CPU targets. CPU seconds per GiB differ about 2x between VMs for every
    // process (docs/performance.md), so each figure is read against OpenSSH's whole path
    // (ssh + sshd + head) in the same run; the limit is half the ratio of the first run on
    // this VM type (2026-12-02, before issue 17's changes).
    let openssh_cpu = if openssh.active() {
        Ok(cpu_openssh.clone())
    } else {
        openssh.runs()
    };
    let cpu_row = |figure: &str,
                   series: &Series,
                   cpu: &[CpuSnap],
                   pick: fn(&CpuSnap) -> f64,
                   before: f64| Row {
        figure: figure.into(),
        unit: Unit::SecPerGiB,
        value: if series.active() {
            Ok(cpu.iter().map(pick).collect())
        } else {
            series.runs()
        },
        anchor: Some((
            "OpenSSH path: ssh + sshd + head".into(),
            openssh_cpu.clone(),
        )),
        target: Some(Target::RatioAtMost(before / 2.0)),
        note: format!(
            "2026-12-02 (before issue 17): {before:.3}x the OpenSSH path's CPU; the target is half of that"
        ),
    };
    let agent = |c: &CpuSnap| c.agent;
    let gateway_and_client = |c: &CpuSnap| c.bench;
    if paths.local {
        rows.push(cpu_row(
            "CPU per GiB: agent, local path",
            &local,
            &cpu_local,
            agent,
            1.86 / 7.29,
        ));
        rows.push(cpu_row(
            "CPU per GiB: gateway + client, local path",
            &local,
            &cpu_local,
            gateway_and_client,
            6.02 / 7.29,
        ));
    }
    if paths.ssh {
        rows.push(cpu_row(
            "CPU per GiB: agent, ssh backend",
            &ssh,
            &cpu_ssh,
            agent,
            2.47 / 7.29,
        ));
    }
    if paths.run {
        rows.push(cpu_row(
            "CPU per GiB: agent, run backend",
            &run,
            &cpu_run,
            agent,
            3.13 / 7.29,
        ));
    }
    if paths.psexec {
        rows.push(cpu_row(
            "CPU per GiB: agent, psexec --pipe",
            &psexec,
            &cpu_psexec,
            agent,
            2.59 / 7.29,
        ));
    }
    rows
}

/// `exec true` end to end, against `ssh 127.0.0.1 true` and spawning `true`.
pub async fn setup(ctx: &mut Ctx<'_>) -> Vec<Row> {
    let p = ctx.params;
    let stack = &*ctx.stack;
    let cancel = &ctx.cancel;
    let one_session = || async {
        let started = Instant::now();
        let (mut out, mut err) = (Sink::counting(), Sink::counting());
        let request = dynoctl::ExecRequest {
            connection: conn::TRUE.into(),
            ..Default::default()
        };
        let outcome = dynoctl::exec(&stack.client, request, &mut out, &mut err).await?;
        if outcome.exit_code != 0 {
            bail!("exec true: exit code {}", outcome.exit_code);
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    };
    let one_ssh = || async {
        let started = Instant::now();
        let mut cmd = stack.sshd()?.client("true");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = crate::proc::GroupChild::spawn(&mut cmd)?;
        let status = child.child.wait().await?;
        if !status.success() {
            bail!("ssh true exited with {status}");
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    };
    let one_spawn = || async {
        let started = Instant::now();
        let status = tokio::process::Command::new("true")
            .stdin(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("true exited with {status}");
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    };
    let per = Duration::from_secs(30);
    // Many samples, each bounded; one series of latencies per run.
    async fn sample<F, Fut>(
        cancel: &CancellationToken,
        count: usize,
        per: Duration,
        what: &str,
        f: F,
    ) -> anyhow::Result<Vec<f64>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<f64>>,
    {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            v.push(bounded(cancel, per, what, f()).await?);
        }
        Ok(v)
    }
    // Warm-up (not counted): the first sessions pay for lazy initialisation everywhere.
    let warm = async {
        sample(cancel, 5, per, "exec true", one_session).await?;
        sample(cancel, 2, per, "ssh true", one_ssh).await
    };
    if let Err(e) = warm.await {
        crate::note(&format!("setup warm-up failed: {e:#}"));
    }
    let (mut a50, mut a99, mut s50, mut s99, mut t50, mut t99): (
        Series,
        Series,
        Series,
        Series,
        Series,
        Series,
    ) = Default::default();
    for i in 1..=p.setup_runs {
        if cancel.is_cancelled() {
            break;
        }
        crate::note(&format!("setup run {i}/{}", p.setup_runs));
        let split = |r: anyhow::Result<Vec<f64>>, p50: &mut Series, p99: &mut Series, w| {
            if !p50.active() {
                return;
            }
            match r {
                Ok(v) => {
                    p50.push(w, percentile(&v, 50.0).context("no samples"));
                    p99.push(w, percentile(&v, 99.0).context("no samples"));
                }
                Err(e) => {
                    p50.push(w, Err(anyhow!("{e:#}")));
                    p99.error = p50.error.clone();
                }
            }
        };
        if a50.active() {
            let r = sample(cancel, p.setup_sessions, per, "exec true", one_session).await;
            split(r, &mut a50, &mut a99, "exec true p50/p99 ms");
        }
        if s50.active() {
            let r = sample(cancel, p.setup_ssh_sessions, per, "ssh true", one_ssh).await;
            split(r, &mut s50, &mut s99, "ssh true p50/p99 ms");
        }
        if t50.active() {
            let r = sample(cancel, p.setup_sessions, per, "spawn true", one_spawn).await;
            split(r, &mut t50, &mut t99, "spawn true p50/p99 ms");
        }
    }
    if let Err(e) = stack.clear_audit().await {
        crate::note(&format!("cannot clear the audit store: {e:#}"));
    }
    let note = format!(
        "{} sessions per run ({} for ssh)",
        p.setup_sessions, p.setup_ssh_sessions
    );
    let row = |figure: &str, v: &Series, anchor: &str, a: &Series, target| Row {
        figure: figure.into(),
        unit: Unit::Ms,
        value: v.runs(),
        anchor: Some((anchor.into(), a.runs())),
        target,
        note: note.clone(),
    };
    vec![
        row(
            "setup p50: exec `true`",
            &a50,
            "ssh 127.0.0.1 true",
            &s50,
            Some(Target::AtMost(5.0)),
        ),
        row("setup p50: exec `true`", &a50, "spawn `true`", &t50, None),
        row(
            "setup p99: exec `true`",
            &a99,
            "ssh 127.0.0.1 true",
            &s99,
            None,
        ),
        row("setup p99: exec `true`", &a99, "spawn `true`", &t99, None),
    ]
}

/// Sessions multiplexed on one gRPC connection (hyper's server allows 200 streams each).
const STREAMS_PER_CHANNEL: usize = 50;
/// Sessions being opened at once.
const OPEN_CONCURRENCY: usize = 32;
/// Bound on one echo.
const ECHO_LIMIT: Duration = Duration::from_secs(15);
/// Time between one session's keystrokes: five keys a second, a brisk typist, with the
/// sessions' phases spread evenly over the period.
const KEYSTROKE_PERIOD: Duration = Duration::from_millis(200);

struct ScaleRun {
    kib_per_session: f64,
    p50_ms: f64,
    p99_ms: f64,
    idle_p50_ms: f64,
    idle_p99_ms: f64,
    note: String,
}

/// Opens `count` terminals on `cat`, each checked with one echoed keystroke.
async fn open_terminals(
    addr: std::net::SocketAddr,
    count: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<Terminal>> {
    let mut channels = Vec::new();
    for _ in 0..count.div_ceil(STREAMS_PER_CHANNEL) {
        channels.push(client::channel(addr).await?);
    }
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(OPEN_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..count {
        let channel = channels
            .get(i / STREAMS_PER_CHANNEL)
            .cloned()
            .context("no channel")?;
        let permits = std::sync::Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut t = Terminal::open(channel, stack::TOKEN, conn::CAT).await?;
            t.keystroke(b'a', Duration::from_secs(60)).await?;
            anyhow::Ok(t)
        });
    }
    let mut terminals = Vec::with_capacity(count);
    let mut first_error = None;
    let mut aborted = false;
    loop {
        let joined = tokio::select! {
            () = cancel.cancelled(), if !aborted => {
                first_error.get_or_insert_with(|| anyhow!("interrupted"));
                set.abort_all();
                aborted = true;
                continue;
            }
            j = set.join_next() => j,
        };
        match joined {
            None => break,
            Some(Ok(Ok(t))) => terminals.push(t),
            Some(Ok(Err(e))) => {
                first_error.get_or_insert(e);
            }
            Some(Err(e)) => {
                first_error.get_or_insert_with(|| anyhow!("a session task failed: {e}"));
            }
        }
    }
    match first_error {
        None => Ok(terminals),
        Some(e) => {
            close_all(terminals).await;
            Err(e)
        }
    }
}

async fn close_all(terminals: Vec<Terminal>) {
    let closes = terminals.into_iter().map(Terminal::close);
    futures_join_all(closes).await;
}

/// A small join_all (the bench does not need the `futures` crate for this alone).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

/// Types `rounds` keystrokes on every terminal, one per [`KEYSTROKE_PERIOD`] each, the
/// terminals' phases spread evenly over the period. Returns every echo latency in ms.
async fn typing_load(
    terminals: Vec<Terminal>,
    rounds: usize,
) -> (Vec<Terminal>, anyhow::Result<Vec<f64>>) {
    let n = terminals.len().max(1);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut set = tokio::task::JoinSet::new();
    for (i, mut t) in terminals.into_iter().enumerate() {
        let offset = KEYSTROKE_PERIOD.mul_f64(i as f64 / n as f64);
        set.spawn(async move {
            let mut lat = Vec::with_capacity(rounds);
            for k in 0..rounds {
                let at = start + KEYSTROKE_PERIOD * (k as u32) + offset;
                tokio::time::sleep_until(at).await;
                let byte = b'b' + (k % 24) as u8;
                match t.keystroke(byte, ECHO_LIMIT).await {
                    Ok(d) => lat.push(d.as_secs_f64() * 1000.0),
                    Err(e) => return (t, Err(e)),
                }
            }
            (t, Ok(lat))
        });
    }
    let mut terminals = Vec::with_capacity(n);
    let mut all = Vec::new();
    let mut error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((t, r)) => {
                terminals.push(t);
                match r {
                    Ok(l) => all.extend(l),
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            Err(e) => {
                error.get_or_insert_with(|| anyhow!("a typing task failed: {e}"));
            }
        }
    }
    (
        terminals,
        match error {
            None => Ok(all),
            Some(e) => Err(e),
        },
    )
}

async fn scale_run(ctx: &mut Ctx<'_>) -> anyhow::Result<ScaleRun> {
    let p = ctx.params;
    let cancel = ctx.cancel.clone();
    ctx.stack.restart_agent().await?;
    let addr = ctx.stack.gateway_addr()?;
    let pid = ctx.stack.agent_pid()?;

    // The anchor: one session alone, on the fresh agent (this also warms it up).
    let mut lone = bounded(&cancel, Duration::from_secs(60), "one terminal", async {
        let mut t = open_terminals(addr, 1, &cancel).await?;
        t.pop().context("no terminal")
    })
    .await?;
    let mut idle = Vec::new();
    for k in 0..p.idle_keystrokes {
        if cancel.is_cancelled() {
            break;
        }
        let byte = b'b' + (k % 24) as u8;
        idle.push(lone.keystroke(byte, ECHO_LIMIT).await?.as_secs_f64() * 1000.0);
        tokio::time::sleep(KEYSTROKE_PERIOD).await;
    }
    lone.close().await;
    if !crate::proc::wait_no_children(pid, Duration::from_secs(30)).await {
        bail!("the warm-up session's process did not end within 30 s");
    }
    let (base_rss, _) = ctx.stack.agent_memory()?;

    let n = p.scale_sessions;
    let open_limit = Duration::from_secs(120 + n as u64 / 5);
    let started = Instant::now();
    let terminals = bounded(&cancel, open_limit, "opening the sessions", async {
        open_terminals(addr, n, &cancel).await
    })
    .await?;
    let open_secs = started.elapsed().as_secs_f64();
    let (rss_open, _) = ctx.stack.agent_memory()?;
    let children = crate::proc::children_of(pid).len();
    crate::note(&format!(
        "  {n} sessions open in {open_secs:.1} s; agent RSS {base_rss} -> {rss_open} KiB; {children} child processes"
    ));

    let load_limit = KEYSTROKE_PERIOD * (p.keystroke_rounds as u32) + ECHO_LIMIT * 2;
    let load = async { anyhow::Ok(typing_load(terminals, p.keystroke_rounds).await) };
    let (terminals, latencies) = match bounded(&cancel, load_limit, "typing", load).await {
        Ok(pair) => pair,
        Err(e) => {
            // The tasks own the terminals; they end with the aborted load (dropping their
            // streams closes the sessions at the gateway).
            return Err(e);
        }
    };
    let (rss_loaded, hwm) = ctx.stack.agent_memory()?;
    close_all(terminals).await;
    let gone = crate::proc::wait_no_children(pid, Duration::from_secs(60)).await;
    let latencies = latencies?;
    if !gone {
        bail!("the sessions' processes did not all end within 60 s of closing");
    }
    let kib = rss_open.saturating_sub(base_rss) as f64 / n as f64;
    Ok(ScaleRun {
        kib_per_session: kib,
        p50_ms: percentile(&latencies, 50.0).context("no latencies")?,
        p99_ms: percentile(&latencies, 99.0).context("no latencies")?,
        idle_p50_ms: percentile(&idle, 50.0).context("no latencies")?,
        idle_p99_ms: percentile(&idle, 99.0).context("no latencies")?,
        note: format!(
            "base {base_rss} KiB, {rss_open} KiB with {n} open, {rss_loaded} KiB after typing, VmHWM {hwm} KiB; opened in {open_secs:.1} s; {} keystrokes",
            latencies.len()
        ),
    })
}

/// N concurrent terminals on `cat`: agent RSS per session and keystroke echo latency.
pub async fn scale(ctx: &mut Ctx<'_>) -> Vec<Row> {
    let (mut kib, mut p50, mut p99, mut i50, mut i99): (Series, Series, Series, Series, Series) =
        Default::default();
    let mut notes = Vec::new();
    for i in 1..=ctx.params.scale_runs {
        if ctx.cancel.is_cancelled() || !kib.active() {
            break;
        }
        crate::note(&format!(
            "scale run {i}/{} ({} sessions)",
            ctx.params.scale_runs, ctx.params.scale_sessions
        ));
        match scale_run(ctx).await {
            Ok(r) => {
                kib.push("KiB per session", Ok(r.kib_per_session));
                p50.push("echo p50 ms", Ok(r.p50_ms));
                p99.push("echo p99 ms", Ok(r.p99_ms));
                i50.push("idle echo p50 ms", Ok(r.idle_p50_ms));
                i99.push("idle echo p99 ms", Ok(r.idle_p99_ms));
                notes.push(r.note);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for s in [&mut kib, &mut p50, &mut p99, &mut i50, &mut i99] {
                    s.error = Some(msg.clone());
                }
                crate::note(&format!("  scale run failed: {msg}"));
                crate::note(&ctx.stack.agent_log_tail());
            }
        }
    }
    let n = ctx.params.scale_sessions;
    let note = notes.join(" | ");
    vec![
        Row {
            figure: format!("scale: agent RSS per session ({n} x cat)"),
            unit: Unit::KiB,
            value: kib.runs(),
            anchor: None,
            target: Some(Target::AtMost(100.0)),
            note: note.clone(),
        },
        Row {
            figure: format!("scale: keystroke echo p50 ({n} typing)"),
            unit: Unit::Ms,
            value: p50.runs(),
            anchor: Some(("1 session, no load".into(), i50.runs())),
            target: None,
            note: String::new(),
        },
        Row {
            figure: format!("scale: keystroke echo p99 ({n} typing)"),
            unit: Unit::Ms,
            value: p99.runs(),
            anchor: Some(("1 session, no load".into(), i99.runs())),
            target: None,
            note: format!(
                "{} keystrokes per session, one per {KEYSTROKE_PERIOD:?}",
                ctx.params.keystroke_rounds
            ),
        },
    ]
}

/// A stream read at a limited rate: the agent's peak RSS (fresh agent per run).
pub async fn slow_consumer(ctx: &mut Ctx<'_>) -> Vec<Row> {
    let p = ctx.params;
    let n = p.slow_bytes;
    let (mut peak, mut idle): (Series, Series) = Default::default();
    let mut rates = Vec::new();
    for i in 1..=p.slow_runs {
        if ctx.cancel.is_cancelled() || !peak.active() {
            break;
        }
        crate::note(&format!("slow consumer run {i}/{}", p.slow_runs));
        let r = async {
            ctx.stack.restart_agent().await?;
            let (_, idle_hwm) = ctx.stack.agent_memory()?;
            let limit = Duration::from_secs_f64(n as f64 / p.slow_rate * 2.0 + 60.0);
            let args = vec!["-c".into(), n.to_string(), "/dev/zero".into()];
            let stack = &*ctx.stack;
            let (_, tally) = bounded(&ctx.cancel, limit, "slow consumer", async {
                dyno_stream(stack, conn::HEAD, &args, n, Sink::rate_limited(p.slow_rate)).await
            })
            .await?;
            let (_, peak_hwm) = ctx.stack.agent_memory()?;
            if let Err(e) = ctx.stack.clear_audit().await {
                crate::note(&format!("cannot clear the audit store: {e:#}"));
            }
            anyhow::Ok((idle_hwm, peak_hwm, tally))
        }
        .await;
        match r {
            Ok((idle_hwm, peak_hwm, tally)) => {
                idle.push("idle VmHWM MiB", Ok(idle_hwm as f64 / 1024.0));
                peak.push("peak VmHWM MiB", Ok(peak_hwm as f64 / 1024.0));
                if let Some(rate) = tally.mib_per_s() {
                    rates.push(rate * 1.048_576);
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                peak.push("peak VmHWM", Err(anyhow!("{msg}")));
                idle.error = Some(msg);
            }
        }
    }
    vec![Row {
        figure: format!(
            "slow consumer: agent peak RSS ({} MiB at {:.0} MB/s)",
            n / (1024 * 1024),
            p.slow_rate / 1e6
        ),
        unit: Unit::MiB,
        value: peak.runs(),
        anchor: Some(("idle agent (VmHWM)".into(), idle.runs())),
        target: Some(Target::AtMost(64.0)),
        note: format!(
            "client read rate achieved: {} MB/s",
            median(&rates).map_or_else(|| "n/a".into(), |r| format!("{r:.1}"))
        ),
    }]
}

/// What one input-budget run saw.
struct BudgetRun {
    idle_mib: f64,
    peak_mib: f64,
    note: String,
}

/// One run of [`input_budget`]: a fresh agent, N terminals on `sleep`, each pasted
/// `budget_bytes` in 1 MiB packets at once.
async fn input_budget_run(ctx: &mut Ctx<'_>) -> anyhow::Result<BudgetRun> {
    const CHUNK: usize = 1 << 20;
    let p = ctx.params;
    let n = p.budget_sessions;
    let total = usize::try_from(p.budget_bytes)?;
    ctx.stack.restart_agent().await?;
    let (_, idle_hwm) = ctx.stack.agent_memory()?;
    let pid = ctx.stack.agent_pid()?;
    let addr = ctx.stack.gateway_addr()?;
    let cancel = ctx.cancel.clone();
    let started = Instant::now();
    let limit = Duration::from_secs(180 + n as u64);
    let outcomes = bounded(&cancel, limit, "pasting", async {
        let mut channels = Vec::new();
        for _ in 0..n.div_ceil(STREAMS_PER_CHANNEL) {
            channels.push(client::channel(addr).await?);
        }
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let channel = channels
                .get(i / STREAMS_PER_CHANNEL)
                .cloned()
                .context("no channel")?;
            set.spawn(async move {
                let mut t = Terminal::open(channel, stack::TOKEN, conn::SLEEP).await?;
                let r = t.paste_unread(total, CHUNK, Duration::from_secs(30)).await;
                t.close().await;
                r
            });
        }
        let mut outcomes = Vec::with_capacity(n);
        while let Some(joined) = set.join_next().await {
            outcomes.push(joined??);
        }
        anyhow::Ok(outcomes)
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let (_, peak_hwm) = ctx.stack.agent_memory()?;
    if !crate::proc::wait_no_children(pid, Duration::from_secs(60)).await {
        bail!("the sessions' processes did not all end within 60 s of closing");
    }
    if let Err(e) = ctx.stack.clear_audit().await {
        crate::note(&format!("cannot clear the audit store: {e:#}"));
    }
    let sent: usize = outcomes.iter().map(|(s, _)| s).sum();
    let closed_by = |var: &str| {
        outcomes
            .iter()
            .filter(|(_, c)| c.as_deref().is_some_and(|m| m.contains(var)))
            .count()
    };
    let session_budget = closed_by("DYNOAGENT_SESSION_INPUT_MIB");
    let agent_budget = closed_by("DYNOAGENT_INPUT_BUDGET_MIB");
    let open = outcomes.iter().filter(|(_, c)| c.is_none()).count();
    let other = n - session_budget - agent_budget - open;
    Ok(BudgetRun {
        idle_mib: idle_hwm as f64 / 1024.0,
        peak_mib: peak_hwm as f64 / 1024.0,
        note: format!(
            "{:.0} MiB offered in {secs:.1} s; closed by the session budget {session_budget}, by the agent budget {agent_budget}, otherwise {other}, still open {open}",
            sent as f64 / 1048576.0
        ),
    })
}

/// N terminals, each pasted 64 MiB that its process never reads: the agent's peak RSS. The
/// byte budgets (8 MiB per session, 64 MiB per agent, by default) must keep it under 256 MiB,
/// so that a 512 MB dyno survives any client.
pub async fn input_budget(ctx: &mut Ctx<'_>) -> Vec<Row> {
    let (mut peak, mut idle): (Series, Series) = Default::default();
    let mut notes = Vec::new();
    for i in 1..=ctx.params.budget_runs {
        if ctx.cancel.is_cancelled() || !peak.active() {
            break;
        }
        crate::note(&format!(
            "input budget run {i}/{} ({} sessions)",
            ctx.params.budget_runs, ctx.params.budget_sessions
        ));
        match input_budget_run(ctx).await {
            Ok(r) => {
                crate::note(&format!("  {}", r.note));
                idle.push("idle VmHWM MiB", Ok(r.idle_mib));
                peak.push("peak VmHWM MiB", Ok(r.peak_mib));
                notes.push(r.note);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                crate::note(&format!("  input budget run failed: {msg}"));
                crate::note(&ctx.stack.agent_log_tail());
                peak.push("peak VmHWM", Err(anyhow!("{msg}")));
                idle.error = Some(msg);
            }
        }
    }
    let p = ctx.params;
    vec![Row {
        figure: format!(
            "input budget: agent peak RSS ({} terminals x {} MiB unread)",
            p.budget_sessions,
            p.budget_bytes / (1024 * 1024)
        ),
        unit: Unit::MiB,
        value: peak.runs(),
        anchor: Some(("idle agent (VmHWM)".into(), idle.runs())),
        target: Some(Target::AtMost(256.0)),
        note: notes.join(" | "),
    }]
}
