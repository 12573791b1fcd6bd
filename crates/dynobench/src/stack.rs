//! The system under test, on loopback: an OpenSSH `sshd` (the anchor and the ssh backend's
//! target), the Heroku emulator (in-process), the development gateway (in-process, `dynogw`)
//! and the **release `dynoagent` binary** as a separate process, so that its memory can be read
//! from `/proc/PID/status`. Clients run in-process (`dynoctl::exec` or the raw terminal client).
//!
//! This module owns starting, restarting and stopping those parts (agent first, then gateway,
//! emulator and sshd) and the housekeeping between runs; it measures nothing.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dynogw::{AgentDef, ConnectionDef, GatewayConfig, RunningGateway};
use herokusim::{RunningSim, Sim, SimConfig};

use crate::proc::{Daemon, GroupChild, status_kib};

/// The agent's name at the gateway.
pub const AGENT: &str = "bench";
/// The client token the gateway accepts.
pub const TOKEN: &str = "bench-token";
/// The emulated app.
pub const APP: &str = "demo";
/// How long the agent may take to drain on SIGTERM before it is killed.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(30);

/// Connection names (see [`connections`]).
pub mod conn {
    pub const HEAD: &str = "head";
    pub const TRUE: &str = "true";
    pub const CAT: &str = "cat";
    /// A terminal whose process never reads its input. Raw mode: in canonical mode the line
    /// discipline would echo and discard what overflows its 4 KiB line, consuming the input.
    pub const SLEEP: &str = "sleep";
    pub const SSH: &str = "ssh";
    pub const RUN: &str = "heroku-run";
    pub const PSEXEC: &str = "psexec";
    /// A `tcp` connection to the bench's byte source ([`crate::figures::Source`]).
    pub const TCP: &str = "tcp";
}

/// A running OpenSSH server on 127.0.0.1 with a client key and a known_hosts file.
#[derive(Debug)]
pub struct Sshd {
    daemon: Daemon,
    pub port: u16,
    pub user: String,
    pub host_pub: String,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dynobench", "-f"])
        .arg(path)
        .output()
        .context("cannot run ssh-keygen (apt-get install -y openssh-client)")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Sshd {
    fn start(dir: &Path) -> anyhow::Result<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            bail!("/usr/sbin/sshd is missing: apt-get install -y openssh-server");
        }
        std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
        keygen(&dir.join("host_ed25519"))?;
        keygen(&dir.join("client_ed25519"))?;
        let host_pub = std::fs::read_to_string(dir.join("host_ed25519.pub"))?
            .trim()
            .to_owned();
        std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))?;
        let user = crate::proc::user_name()?;
        // A port from the kernel may be taken before sshd binds it: retry a few times.
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let d = dir.display();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\n\
                 AllowTcpForwarding local\nPermitOpen 127.0.0.1:*\nX11Forwarding no\nPrintMotd no\nPrintLastLog no\nUseDNS no\n\
                 MaxStartups 100:30:200\nLogLevel INFO\n"
            );
            std::fs::write(dir.join("sshd_config"), config)?;
            let mut cmd = Command::new(sshd);
            cmd.args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut daemon = Daemon::spawn("sshd", &mut cmd, None)?;
            let stderr = daemon
                .child_mut()
                .and_then(|c| c.stderr.take())
                .context("sshd has no stderr")?;
            let log = Arc::new(Mutex::new(Vec::new()));
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let sink = Arc::clone(&log);
            // Drains sshd's log for its whole life (keeping the last lines for errors); it ends
            // when sshd's stderr closes.
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if let Ok(mut log) = sink.lock() {
                        if log.len() >= 50 {
                            log.remove(0);
                        }
                        log.push(line.clone());
                    }
                    let _ = tx.send(line);
                }
            });
            let listening = format!("Server listening on 127.0.0.1 port {port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut ready = false;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(line) if line.contains(&listening) => {
                        ready = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if ready {
                let known_hosts = dir.join("known_hosts");
                std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}\n"))?;
                return Ok(Sshd {
                    daemon,
                    port,
                    user,
                    host_pub,
                    client_key: dir.join("client_ed25519"),
                    known_hosts,
                    log,
                });
            }
            let tail = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            crate::note(&format!("sshd did not start on port {port}: {tail}"));
            drop(daemon);
        }
        bail!("sshd did not start after 5 attempts")
    }

    /// `ssh` (OpenSSH's client) running `remote` on this server, verifying its host key.
    pub fn client(&self, remote: &str) -> tokio::process::Command {
        let mut cmd = self.ssh();
        cmd.arg("-T")
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(remote)
            .stdin(Stdio::null());
        cmd
    }

    /// `ssh -N -L 127.0.0.1:local:127.0.0.1:target` through this server.
    pub fn forward(&self, local: u16, target: u16) -> tokio::process::Command {
        let mut cmd = self.ssh();
        cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("127.0.0.1:{local}:127.0.0.1:{target}"))
            .arg(format!("{}@127.0.0.1", self.user))
            .stdin(Stdio::null());
        cmd
    }

    /// `ssh` with this server's port, client key and pinned host key.
    fn ssh(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-i")
            .arg(&self.client_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ]);
        cmd
    }

    pub fn log_tail(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// The gateway's connections: one per measured path.
fn connections(sim: &RunningSim, sshd: &Sshd, source: u16) -> anyhow::Result<Vec<ConnectionDef>> {
    let key_pem = std::fs::read_to_string(&sshd.client_key)?;
    let conn = |name: &str, command: &[&str], secrets: &[(&str, &str)]| ConnectionDef {
        name: name.into(),
        agent: AGENT.into(),
        command: command.iter().map(|c| (*c).to_owned()).collect(),
        secrets: secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    let uri = format!("ssh://{}@127.0.0.1:{}", sshd.user, sshd.port);
    let heroku = [("envvar:HEROKU_API_KEY", sim.api_key())];
    Ok(vec![
        conn(conn::HEAD, &["head"], &[]),
        conn(conn::TRUE, &["true"], &[]),
        conn(conn::CAT, &["cat"], &[]),
        conn(
            conn::SLEEP,
            &["sh", "-c", "stty raw -echo && exec sleep 3600"],
            &[],
        ),
        conn(
            conn::SSH,
            &["ssh", "$SSH_URI", "-i", "$SSH_PRIVATE_KEY"],
            &[
                ("envvar:SSH_URI", &uri),
                ("envvar:SSH_PRIVATE_KEY", &key_pem),
                ("envvar:SSH_HOST_KEY", &sshd.host_pub),
            ],
        ),
        conn(conn::RUN, &["heroku", "run", "--exit-code"], &heroku),
        conn(conn::PSEXEC, &["ps-exec.sh"], &heroku),
        ConnectionDef {
            connection_type: "tcp".into(),
            ..conn(
                conn::TCP,
                &[],
                &[
                    ("envvar:HOST", "127.0.0.1"),
                    ("envvar:PORT", &source.to_string()),
                ],
            )
        },
    ])
}

/// Everything running, with the agent as a child process.
#[derive(Debug)]
pub struct Stack {
    // Fields drop in this order on an abnormal exit: agent first (its drain kills its
    // sessions' processes), then gateway, emulator, sshd, and the directory last.
    agent: Option<Daemon>,
    gateway: Option<RunningGateway>,
    sim: Option<RunningSim>,
    sshd: Option<Sshd>,
    source: Option<crate::figures::Source>,
    agent_bin: PathBuf,
    agent_env: Vec<(String, String)>,
    audit_db: PathBuf,
    pub client: dynoctl::ClientConfig,
    _audit_dir: Option<tempfile::TempDir>,
    dir: tempfile::TempDir,
}

impl Stack {
    /// Starts sshd, the emulator, the gateway and the agent (allowing `max_sessions`).
    /// The audit database goes to `audit_dir` (a RAM-backed directory by default, see
    /// `--audit-dir`), everything else to a fresh temporary directory.
    pub async fn start(
        agent_bin: &Path,
        max_sessions: usize,
        audit_dir: Option<&Path>,
    ) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new().prefix("dynobench-").tempdir()?;
        let audit_tmp = match audit_dir {
            Some(d) => Some(
                tempfile::Builder::new()
                    .prefix("dynobench-audit-")
                    .tempdir_in(d)
                    .with_context(|| format!("cannot create a directory in {}", d.display()))?,
            ),
            None => None,
        };
        let sshd = Sshd::start(dir.path())?;
        let source = crate::figures::Source::start().await?;
        let sim = Sim::start(SimConfig {
            api_key: dynogw::generate_secret(),
            ssh_port: Some(0),
            state_dir: Some(dir.path().join("sim")),
            ..SimConfig::demo()
        })
        .await
        .context("cannot start the Heroku emulator")?;
        let secret = dynogw::generate_secret();
        let audit_db = audit_tmp.as_ref().map_or_else(
            || dir.path().join("audit.db"),
            |d| d.path().join("audit.db"),
        );
        let gateway = dynogw::Gateway::start(GatewayConfig {
            listen: "127.0.0.1:0".parse()?,
            audit_db: audit_db.clone(),
            client_tokens: vec![TOKEN.into()],
            agents: vec![AgentDef {
                name: AGENT.into(),
                secret_sha256: Some(dynogw::hash_secret(&secret)),
                secret: None,
                ..Default::default()
            }],
            connections: connections(&sim, &sshd, source.port)?,
            ..GatewayConfig::default()
        })
        .await
        .context("cannot start the gateway")?;
        let env_dir = dir.path().join("agent-env");
        let inherit = |k: &str| std::env::var(k).unwrap_or_default();
        let agent_env: Vec<(String, String)> = [
            (
                "HOOP_KEY",
                dynogw::agent_dsn(AGENT, &secret, gateway.addr()),
            ),
            ("DYNOAGENT_MAX_SESSIONS", max_sessions.to_string()),
            ("DYNOAGENT_ENV_DIR", env_dir.display().to_string()),
            ("DYNOAGENT_HEROKU_API_URL", sim.api_url().to_owned()),
            ("DYNOAGENT_HEROKU_EXEC_URL", sim.exec_url().to_owned()),
            (
                "DYNOAGENT_HEROKU_CA",
                format!("file://{}", sim.ca_file().display()),
            ),
            ("DYNOAGENT_HEROKU_EXEC_SSH_PORT", sim.ssh_port().to_string()),
            ("LOG_LEVEL", "info".to_owned()),
            ("HOME", inherit("HOME")),
            ("PATH", inherit("PATH")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let client = dynoctl::ClientConfig::new(format!("http://{}", gateway.addr()), TOKEN);
        let mut stack = Stack {
            dir,
            sshd: Some(sshd),
            source: Some(source),
            sim: Some(sim),
            gateway: Some(gateway),
            agent: None,
            agent_bin: agent_bin.to_owned(),
            agent_env,
            audit_db,
            client,
            _audit_dir: audit_tmp,
        };
        stack.start_agent().await?;
        Ok(stack)
    }

    fn gateway(&self) -> anyhow::Result<&RunningGateway> {
        self.gateway.as_ref().context("the gateway is stopped")
    }

    pub fn sim(&self) -> anyhow::Result<&RunningSim> {
        self.sim.as_ref().context("the emulator is stopped")
    }

    /// The port of the tcp figure's byte source.
    pub fn tcp_source(&self) -> anyhow::Result<u16> {
        self.source
            .as_ref()
            .map(|s| s.port)
            .context("the byte source is stopped")
    }

    /// The agent binary (it is also the client: `dynoagent ctl`).
    pub fn agent_bin(&self) -> &Path {
        &self.agent_bin
    }

    pub fn sshd(&self) -> anyhow::Result<&Sshd> {
        self.sshd.as_ref().context("sshd is stopped")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the gateway's audit database is.
    pub fn audit_db(&self) -> &Path {
        &self.audit_db
    }

    pub fn gateway_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.gateway()?.addr())
    }

    /// The agent's pid.
    pub fn agent_pid(&mut self) -> anyhow::Result<i32> {
        let agent = self.agent.as_mut().context("the agent is not running")?;
        if let Some(status) = agent.exited() {
            bail!(
                "the agent exited ({status}); its log:\n{}",
                self.agent_log_tail()
            );
        }
        agent.pid().context("the agent has no pid")
    }

    /// sshd's (listener) pid.
    pub fn sshd_pid(&self) -> Option<i32> {
        self.sshd.as_ref().and_then(|s| s.daemon.pid())
    }

    /// The agent's pid, without checking that it still runs.
    pub fn agent_pid_unchecked(&self) -> Option<i32> {
        self.agent.as_ref().and_then(Daemon::pid)
    }

    /// The agent's `VmRSS` and `VmHWM`, in KiB.
    pub fn agent_memory(&mut self) -> anyhow::Result<(u64, u64)> {
        let pid = self.agent_pid()?;
        match (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")) {
            (Some(rss), Some(hwm)) => Ok((rss, hwm)),
            _ => bail!("cannot read /proc/{pid}/status"),
        }
    }

    fn agent_log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The last lines of the agent's log.
    pub fn agent_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.agent_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .get(lines.len().saturating_sub(20)..)
            .unwrap_or_default()
            .join("\n")
    }

    async fn start_agent(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log())?;
        let mut cmd = Command::new(&self.agent_bin);
        cmd.env_clear()
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log);
        self.agent = Some(Daemon::spawn(
            "dynoagent",
            &mut cmd,
            Some(AGENT_STOP_GRACE),
        )?);
        let wait = Duration::from_secs(20);
        if !self.gateway()?.wait_for_agent(AGENT, wait).await {
            bail!(
                "the agent did not connect within {wait:?}; its log:\n{}",
                self.agent_log_tail()
            );
        }
        Ok(())
    }

    /// Stops the agent (SIGTERM, its drain, then SIGKILL) and waits until the gateway has
    /// seen its stream end.
    async fn stop_agent(&mut self) -> anyhow::Result<()> {
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self
            .gateway()?
            .connected_agents()
            .iter()
            .any(|a| a == AGENT)
        {
            if Instant::now() >= deadline {
                bail!("the gateway still lists the stopped agent after 15 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// A fresh agent process (for memory figures: its RSS and VmHWM start from zero).
    pub async fn restart_agent(&mut self) -> anyhow::Result<()> {
        self.stop_agent().await?;
        self.start_agent().await
    }

    /// Deletes the audit events recorded so far (output is audited byte for byte; without
    /// this, the event files would grow by the whole stream on every run). Not timed.
    pub async fn clear_audit(&self) -> anyhow::Result<()> {
        let db = self.audit_db.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            dynogw::audit::AuditStore::open(&db)?.purge_done()?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// Stops everything, in order: agent, gateway, emulator, sshd.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.stop_agent().await {
            crate::note(&format!("stopping the agent: {e}"));
        }
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
        drop(self.source.take());
        if let Some(sshd) = self.sshd.take() {
            sshd.daemon.stop().await;
        }
    }
}

/// Spawns a command whose stdout the caller reads (stderr discarded).
pub fn spawn_reader(cmd: &mut tokio::process::Command) -> anyhow::Result<GroupChild> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    GroupChild::spawn(cmd)
}
