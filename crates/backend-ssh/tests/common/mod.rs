//! Test peers and drivers for the ssh backend: a real OpenSSH `sshd` on 127.0.0.1 (started per
//! test on a free port, stopped by PID on drop; test-peers.md §2.1), keys made with
//! `ssh-keygen`; the session driver is `backend::testing`, shared with the psexec tests.

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

pub use backend::testing::{env, start};

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
