//! Test peers and drivers for the ssh backend: a real OpenSSH `sshd` on 127.0.0.1 (started per
//! test on a free port, stopped by PID on drop; test-peers.md §2.1), keys made with
//! `ssh-keygen`, and a driver that runs `Backend::run` with in-memory output sinks.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend::{
    Backend, ExitStatus, Input, Mode, OutputSink, OutputTarget, SessionEnv, SessionId, SessionIo,
    SessionRequest, SinkClosed, StreamKind,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const SSHD: &str = "/usr/sbin/sshd";

fn require_tools() {
    for tool in [SSHD, "/usr/bin/ssh-keygen"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: this test needs a real OpenSSH server as its peer. Install it with `apt-get install -y openssh-server` (scripts/test does this when run as root)"
        );
    }
}

/// Runs `ssh-keygen` to make a key pair at `path` (`path.pub` holds the public half).
pub fn keygen(path: &Path, args: &[&str]) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen failed: {out:?}");
}

/// A running OpenSSH sshd, killed by PID on drop.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    /// The server's host public key line (`ssh-ed25519 AAAA… test`).
    pub host_pub: String,
    /// An ed25519 client key listed in authorized_keys.
    pub client_key: PathBuf,
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Sshd {
    /// Starts sshd with the base config of test-peers.md §2.1 plus `extra` lines.
    pub fn start(extra: &str) -> Sshd {
        require_tools();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_ed25519"), &["-t", "ed25519"]);
        keygen(&d.join("client_ed25519"), &["-t", "ed25519"]);
        let host_pub = std::fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
        let client_pub = std::fs::read_to_string(d.join("client_ed25519.pub")).unwrap();
        std::fs::write(d.join("authorized_keys"), client_pub).unwrap();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        // A port from the kernel may be taken again before sshd binds it; retry a few times.
        for _attempt in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding no\nX11Forwarding no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n{extra}\n",
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            let log = Arc::new(Mutex::new(String::new()));
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    sink.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
            // sshd says when it listens; that line is the synchronisation point.
            let listening = format!("Server listening on 127.0.0.1 port {port}");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut ready = false;
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
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
                return Sshd {
                    port,
                    user: user.clone(),
                    host_pub,
                    client_key: d.join("client_ed25519"),
                    child,
                    log,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("sshd did not start on port {port}: {}", log.lock().unwrap());
        }
        panic!("sshd did not start after 5 attempts");
    }

    /// `user@127.0.0.1` as an `ssh://` URI.
    pub fn uri(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.port)
    }

    /// A known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_pub.trim())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Output collected from a session.
#[derive(Default)]
pub struct Collected {
    out: Mutex<Vec<u8>>,
    err: Mutex<Vec<u8>>,
    tick: Mutex<Option<watch::Sender<u64>>>,
}

impl OutputTarget for Collected {
    fn write(&self, stream: StreamKind, chunk: Bytes) -> BoxFuture<'_, Result<(), SinkClosed>> {
        Box::pin(async move {
            match stream {
                StreamKind::Stdout => self.out.lock().unwrap().extend_from_slice(&chunk),
                StreamKind::Stderr => self.err.lock().unwrap().extend_from_slice(&chunk),
            }
            if let Some(tick) = &*self.tick.lock().unwrap() {
                tick.send_modify(|n| *n += 1);
            }
            Ok(())
        })
    }
}

/// A session running on a backend.
pub struct Running {
    pub input: mpsc::Sender<Input>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<ExitStatus>,
    collected: Arc<Collected>,
    ticks: watch::Receiver<u64>,
}

impl Running {
    pub fn stdout(&self) -> Vec<u8> {
        self.collected.out.lock().unwrap().clone()
    }
    pub fn stderr(&self) -> Vec<u8> {
        self.collected.err.lock().unwrap().clone()
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout()).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr()).into_owned()
    }

    /// Waits (at most `limit`) until stdout contains `needle`.
    pub async fn wait_stdout(&mut self, needle: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.stdout_text().contains(needle) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.ticks.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "stdout never contained {needle:?}; stdout={:?} stderr={:?}",
                    self.stdout_text(),
                    self.stderr_text()
                ),
            }
        }
    }

    pub async fn send(&self, input: Input) {
        self.input.send(input).await.unwrap();
    }

    /// Waits (at most 30 s) for the session's exit status.
    pub async fn finish(self) -> (ExitStatus, Vec<u8>, Vec<u8>) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the session did not end within 30 s")
            .unwrap();
        let out = self.collected.out.lock().unwrap().clone();
        let err = self.collected.err.lock().unwrap().clone();
        (status, out, err)
    }
}

/// Starts `backend.run` for a session with the given command, args, env and mode.
pub fn start(
    backend: &dyn Backend,
    command: &[&str],
    args: &[&str],
    env: SessionEnv,
    mode: Mode,
) -> Running {
    let collected = Arc::new(Collected::default());
    let (tick_tx, ticks) = watch::channel(0u64);
    *collected.tick.lock().unwrap() = Some(tick_tx);
    let target: Arc<dyn OutputTarget> = collected.clone();
    let (input, input_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let io = SessionIo {
        input: input_rx,
        stdout: OutputSink::new(target.clone(), StreamKind::Stdout, Default::default()),
        stderr: OutputSink::new(target, StreamKind::Stderr, Default::default()),
        cancel: cancel.clone(),
        report: Default::default(),
    };
    let request = SessionRequest {
        session_id: SessionId::parse(b"test-session").unwrap(),
        connection_name: "test".into(),
        user: "tester".into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env,
        mode,
        jit_timeout: None,
    };
    let task = tokio::spawn(backend.run(request, io));
    Running {
        input,
        cancel,
        task,
        collected,
        ticks,
    }
}

/// A session env with these plain variables, set by the connection.
pub fn env(vars: &[(&str, &str)]) -> SessionEnv {
    let mut env = SessionEnv::default();
    for (k, v) in vars {
        env.set_from_connection(k, *v);
    }
    env
}

/// Whether any process's command line contains `marker` (the test's own pgrep).
pub fn process_running(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                let text = String::from_utf8_lossy(&c).replace('\0', " ");
                text.contains(marker)
            })
            .unwrap_or(false)
    })
}

/// Waits (bounded) until no process's command line contains `marker`. The remote side ends a
/// command asynchronously after its channel closes; this polls /proc for that outcome.
pub async fn wait_gone(marker: &str, limit: Duration, sshd: &Sshd) {
    let deadline = tokio::time::Instant::now() + limit;
    while process_running(marker) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a process with {marker:?} outlived its session; sshd log: {}",
            sshd.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
