//! The tcp figure (issue 16): N bytes from a source server on 127.0.0.1 to a client, through
//! `dynoagent ctl connect` (a child process, as a user runs it) → gateway → agent (a `tcp`
//! connection), against OpenSSH's `ssh -L` port forwarding through `sshd` on the same machine.
//! Both runs of a pair fetch from the same source; the rate is the client's, first byte to
//! last, and both paths' CPU time is read per GiB.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{CpuSnap, Ctx, Series, bounded, cpu_note, sshd_settled, stream_limit};
use crate::client;
use crate::proc::GroupChild;
use crate::report::{Row, Unit};
use crate::stack::{self, Stack};

/// How long a tunnel (either kind) may take to listen.
const READY_LIMIT: Duration = Duration::from_secs(15);
/// Connection attempts while `ssh -L` sets up its listener, `READY_POLL` apart.
const READY_ATTEMPTS: u32 = 300;
const READY_POLL: Duration = Duration::from_millis(50);

/// The source: each connection sends an 8-byte big-endian count, then gets that many zero
/// bytes and EOF. Runs in the bench process (its CPU counts for both paths alike).
#[derive(Debug)]
pub struct Source {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    pub async fn start() -> anyhow::Result<Source> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            // Ends when the listener fails or the task is aborted (the stack's shutdown).
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = serve(socket).await;
                });
            }
        });
        Ok(Source { port, task })
    }
}

async fn serve(mut socket: TcpStream) -> std::io::Result<()> {
    let _ = socket.set_nodelay(true);
    let mut count = [0u8; 8];
    socket.read_exact(&mut count).await?;
    let mut left = u64::from_be_bytes(count);
    let zeros = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        socket.write_all(zeros.get(..n).unwrap_or(&zeros)).await?;
        left -= n as u64;
    }
    socket.shutdown().await
}

/// Asks the source behind `port` for `n` bytes and reads them all; returns the rate.
async fn fetch(mut socket: TcpStream, n: u64) -> anyhow::Result<f64> {
    let _ = socket.set_nodelay(true);
    socket.write_all(&n.to_be_bytes()).await?;
    let (tally, _) = client::drain(&mut socket).await?;
    if tally.bytes != n {
        bail!("{} bytes arrived, expected {n}", tally.bytes);
    }
    tally.mib_per_s().context("no bytes")
}

/// One fetch through `dynoagent ctl connect tcp --port 0`, which is then stopped with
/// SIGINT (as a user's Ctrl-C) and reaped, so that its CPU time is counted.
async fn through_agent(stack: &Stack, n: u64) -> anyhow::Result<f64> {
    let mut cmd = tokio::process::Command::new(stack.agent_bin());
    cmd.args(["ctl", "connect", stack::conn::TCP, "--port", "0"])
        .env(
            "DYNOCTL_GATEWAY",
            format!("http://{}", stack.gateway_addr()?),
        )
        .env("DYNOCTL_TOKEN", stack::TOKEN)
        .env("LOG_LEVEL", "error");
    let mut ctl = stack::spawn_reader(&mut cmd)?;
    let stdout = ctl.child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port = tokio::time::timeout(READY_LIMIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(port) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("port="))
            {
                return Ok::<u16, anyhow::Error>(port.parse()?);
            }
        }
        bail!("dynoagent ctl connect ended without printing its port")
    })
    .await
    .context("dynoagent ctl connect did not print its port")??;
    let rate = fetch(TcpStream::connect(("127.0.0.1", port)).await?, n).await;
    stop(&mut ctl).await;
    rate
}

/// One fetch through `ssh -N -L PORT:127.0.0.1:SOURCE` (host key verified).
async fn through_ssh(stack: &Stack, source: u16, n: u64) -> anyhow::Result<f64> {
    let sshd = stack.sshd()?;
    // A free port for ssh's listener (ssh cannot report one it picked itself).
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let mut cmd = sshd.forward(port, source);
    let mut ssh = GroupChild::spawn(cmd.stdout(std::process::Stdio::null()))?;
    let mut socket = None;
    for _ in 0..READY_ATTEMPTS {
        if let Some(status) = ssh.child.try_wait()? {
            bail!("ssh -L exited with {status}: {}", sshd.log_tail());
        }
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            socket = Some(s);
            break;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    let socket = socket.context("ssh -L did not listen")?;
    let rate = fetch(socket, n).await;
    stop(&mut ssh).await;
    rate
}

/// SIGINT, then up to 10 s to exit (reaped), then SIGKILL (the guard's drop).
async fn stop(child: &mut GroupChild) {
    if let Some(pid) = child.child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.child.wait())
        .await
        .is_err()
    {
        let _ = child.child.start_kill();
        let _ = child.child.wait().await;
    }
}

/// Runs both paths `runs` times, interleaved.
pub async fn throughput(ctx: &mut Ctx<'_>) -> Vec<Row> {
    let p = ctx.params;
    let n = p.bytes;
    let limit = stream_limit(n) + READY_LIMIT;
    let stack = &*ctx.stack;
    let cancel = &ctx.cancel;
    let (mut tunnel, mut openssh) = (Series::default(), Series::default());
    let (mut cpu_tunnel, mut cpu_ssh) = (Vec::new(), Vec::new());
    let source = match stack.tcp_source() {
        Ok(port) => port,
        Err(e) => {
            tunnel.push("tcp tunnel", Err(e));
            0
        }
    };
    for i in 1..=p.runs {
        if cancel.is_cancelled() || !tunnel.active() {
            break;
        }
        crate::note(&format!("tcp throughput run {i}/{}", p.runs));
        let before = CpuSnap::take(stack);
        let r = bounded(cancel, limit, "tcp tunnel", through_agent(stack, n)).await;
        if let (Some(b), Some(a), true) = (before, CpuSnap::take(stack), r.is_ok()) {
            cpu_tunnel.push(b.per_gib(a, n));
        }
        tunnel.push("tcp tunnel (dynoctl connect)", r);
        if let Err(e) = stack.clear_audit().await {
            crate::note(&format!("cannot clear the audit store: {e:#}"));
        }
        if openssh.active() {
            let before = CpuSnap::take(stack);
            let r = bounded(cancel, limit, "ssh -L", through_ssh(stack, source, n)).await;
            sshd_settled(stack).await;
            if let (Some(b), Some(a), true) = (before, CpuSnap::take(stack), r.is_ok()) {
                cpu_ssh.push(b.per_gib(a, n));
            }
            openssh.push("OpenSSH ssh -L", r);
        }
    }
    let size = format!("N = {} MiB", n / (1024 * 1024));
    vec![Row {
        figure: "throughput: tcp tunnel (dynoctl connect -> agent)".into(),
        unit: Unit::MibPerS,
        value: tunnel.runs(),
        anchor: Some(("OpenSSH: ssh -L".into(), openssh.runs())),
        target: None,
        // The bench process includes the reaped `dynoctl connect` (or `ssh -L`) and the
        // source; the agent column is 0 for the OpenSSH path.
        note: format!(
            "{size}{}; the ssh -L runs{}",
            cpu_note(&cpu_tunnel),
            cpu_note(&cpu_ssh)
        ),
    }]
}
