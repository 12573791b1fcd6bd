//! Port forwarding through the Heroku Exec SSH proxy (`direct-tcpip`, issue 16 part 4) with
//! real peers: formation dynos running `python3 -m http.server $PORT`, the real OpenSSH client
//! (`ssh -N -L`, `ssh -W`) authenticated with an exec-manager reservation, `curl` through the
//! forward, and a test-owned echo server for byte-exact transfers both ways.
//!
//! Covered: each formation dyno has its own `PORT` (kept across a restart) and `-L` to it
//! reaches that dyno's listener, also when named `localhost` or `0.0.0.0` (what `ps:forward`
//! sends); 8 MiB each way with half-close passed on; a non-loopback host is refused
//! (`administratively prohibited`); a port where nothing listens fails with `connect failed`;
//! restarting the dyno closes a forwarded connection at once (both sides see EOF) and the old
//! reservation's connection can open no new one, while a fresh reservation reaches the restarted
//! dyno on the same port.
//!
//! The host key is pinned: a known_hosts file holds the proxy's `proxy_public_key`, as the
//! CLI's `--ssh` mode writes it (heroku-protocols.md §6.7). Every wait is bounded; readiness is
//! polled, never slept for.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use herokusim::{AppConfig, DynoConfig, RunningSim, Sim, SimConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use common::{T, basic, exec_client};

const SSH: &str = "/usr/bin/ssh";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const CURL: &str = "/usr/bin/curl";
const HINT: &str = "the OpenSSH client (/usr/bin/ssh, /usr/bin/ssh-keygen), curl and python3 are \
required for this test. Install them with:\n  sudo apt-get install -y openssh-client curl python3\n\
(scripts/test does).";

/// Bound on waiting for a forward (ssh's authentication, the dyno's listener) to be ready.
const READY: Duration = Duration::from_secs(30);

/// Each dyno serves `hello from $DYNO` at `/` and 4 MiB of a known pattern at `/big`, on its
/// own `$PORT`, from a directory named after it.
const SERVE: &str = r#"mkdir -p "$DYNO" && cd "$DYNO" && echo "hello from $DYNO" > index.html && python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 16384)' > big && exec python3 -m http.server "$PORT" --bind 127.0.0.1"#;

fn big() -> Vec<u8> {
    (0..=255u8).cycle().take(256 * 16384).collect()
}

fn require_tools() {
    for tool in [SSH, SSH_KEYGEN, CURL] {
        assert!(Path::new(tool).is_file(), "{tool} is missing: {HINT}");
    }
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    assert!(
        python.is_ok_and(|o| o.status.success()),
        "python3 is missing: {HINT}"
    );
}

async fn start() -> RunningSim {
    require_tools();
    let dyno = |name: &str| DynoConfig {
        name: name.to_owned(),
        command: Some(SERVE.to_owned()),
        ..DynoConfig::default()
    };
    let config = SimConfig {
        ssh_port: Some(0),
        apps: vec![AppConfig {
            name: "demo".to_owned(),
            exec_enabled: true,
            formation: vec![dyno("web.1"), dyno("web.2")],
            ..AppConfig::default()
        }],
        ..SimConfig::default()
    };
    Sim::start(config).await.expect("sim starts")
}

/// An ed25519 key pair in a temporary directory, and a known_hosts file pinning the proxy.
struct Key {
    dir: tempfile::TempDir,
    path: PathBuf,
    known_hosts: PathBuf,
}

fn key(sim: &RunningSim) -> Key {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id_ed25519");
    let out = std::process::Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen: {e}; {HINT}"));
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{} {}\n",
            sim.ssh_port(),
            sim.proxy_public_key()
        ),
    )
    .unwrap();
    Key {
        dir,
        path,
        known_hosts,
    }
}

/// `PUT /api/v2/{dyno}` with the key: returns the `client_user`.
async fn reserve(sim: &RunningSim, key: &Key, dyno: &str) -> String {
    let public = std::fs::read_to_string(key.dir.path().join("id_ed25519.pub")).unwrap();
    let resp = exec_client(sim)
        .put(format!("{}api/v2/{dyno}", sim.exec_url()))
        .header("Authorization", basic("demo", sim.api_key()))
        .json(&json!({"client_key": public.trim()}))
        .timeout(T)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "exec-manager PUT");
    let creds: Value = resp.json().await.unwrap();
    assert_eq!(creds["proxy_public_key"], sim.proxy_public_key());
    creds["client_user"].as_str().unwrap().to_owned()
}

/// The real OpenSSH client with the pinned host key and the test key only.
fn ssh(sim: &RunningSim, key: &Key, user: &str, opts: &[String]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(SSH);
    cmd.args(["-F", "/dev/null", "-p", &sim.ssh_port().to_string(), "-i"])
        .arg(&key.path)
        .arg(format!(
            "-oUserKnownHostsFile={}",
            key.known_hosts.display()
        ))
        .args([
            "-oIdentitiesOnly=yes",
            "-oStrictHostKeyChecking=yes",
            "-oBatchMode=yes",
            "-oExitOnForwardFailure=yes",
        ])
        .args(opts)
        .arg(format!("{user}@127.0.0.1"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A port that was free on 127.0.0.1 a moment ago (for ssh's `-L` listener).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ssh -N -L …` running in the background; killed (and reaped) when dropped or finished.
struct Tunnel {
    child: tokio::process::Child,
}

impl Tunnel {
    async fn open(sim: &RunningSim, key: &Key, user: &str, forwards: &[(u16, &str, u16)]) -> Self {
        let mut opts = vec!["-N".to_owned()];
        for (local, host, port) in forwards {
            opts.push("-L".to_owned());
            opts.push(format!("{local}:{host}:{port}"));
        }
        let child = ssh(sim, key, user, &opts).spawn().expect("ssh starts");
        let mut t = Self { child };
        // OpenSSH binds the -L listeners after authentication: once one accepts, the tunnel
        // is up (polled, bounded).
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(status)) = t.child.try_wait() {
                let out = t.finish().await;
                panic!("ssh exited early ({status:?}): {out}");
            }
            if TcpStream::connect(("127.0.0.1", forwards[0].0))
                .await
                .is_ok()
            {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "ssh -L not listening in {READY:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills ssh and returns its stderr.
    async fn finish(mut self) -> String {
        let _ = self.child.start_kill();
        let out = tokio::time::timeout(T, self.child.wait_with_output())
            .await
            .expect("ssh reaped in time")
            .expect("ssh output");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// `curl` through a local port; `None` on any failure (the dyno not listening yet, a refused
/// channel).
async fn curl(port: u16, path: &str) -> Option<Vec<u8>> {
    let out = tokio::process::Command::new(CURL)
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(T, out)
        .await
        .expect("curl in time")
        .unwrap_or_else(|e| panic!("cannot run curl: {e}; {HINT}"));
    out.status.success().then_some(out.stdout)
}

/// Polls `curl` through `port` until it answers (the dyno's server may still be starting).
async fn curl_ready(port: u16, path: &str) -> Vec<u8> {
    let deadline = Instant::now() + READY;
    loop {
        if let Some(body) = curl(port, path).await {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through 127.0.0.1:{port}{path} in {READY:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads until EOF (bounded); `Err` on a reset.
async fn read_to_eof(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .expect("eof in time")?;
    Ok(out)
}

/// A forwarded connection the sim refused: ssh accepts it locally, then closes it with no byte.
async fn assert_closed_without_data(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let got = read_to_eof(&mut s).await.unwrap_or_default();
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

async fn restart(sim: &RunningSim, dyno: &str) {
    let resp = common::request(
        sim,
        reqwest::Method::DELETE,
        &format!("/apps/demo/dynos/{dyno}"),
        common::V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 202);
}

/// No process survives the sim.
async fn shutdown(sim: RunningSim) {
    let groups = sim.live_process_groups();
    sim.shutdown().await;
    for pid in groups {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived shutdown"
        );
    }
}

/// `ssh -L` to the dyno's own `PORT` reaches its listener (also named `localhost` and
/// `0.0.0.0`); each dyno has a distinct port; 4 MiB arrive byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_l_reaches_the_dynos_own_port() {
    let started = Instant::now();
    let sim = start().await;
    let p1 = sim.dyno_port("demo", "web.1").expect("web.1 has a port");
    let p2 = sim.dyno_port("demo", "web.2").expect("web.2 has a port");
    assert_ne!(p1, p2, "dynos share the machine's loopback: distinct ports");
    assert_eq!(sim.dyno_port("demo", "web.9"), None);

    let key = key(&sim);
    let user = reserve(&sim, &key, "web.1").await;
    let (l1, l2, l3) = (free_port(), free_port(), free_port());
    let tunnel = Tunnel::open(
        &sim,
        &key,
        &user,
        &[
            (l1, "127.0.0.1", p1),
            (l2, "localhost", p1),
            (l3, "0.0.0.0", p1),
        ],
    )
    .await;
    assert_eq!(curl_ready(l1, "/").await, b"hello from web.1\n");
    assert_eq!(
        curl(l2, "/").await.as_deref(),
        Some(&b"hello from web.1\n"[..])
    );
    assert_eq!(
        curl(l3, "/").await.as_deref(),
        Some(&b"hello from web.1\n"[..])
    );
    let body = curl(l1, "/big").await.expect("big file");
    assert!(body == big(), "4 MiB byte-exact (got {} bytes)", body.len());
    // (stderr holds `open failed: connect failed` for polls before the dyno listened.)
    tunnel.finish().await;

    // web.2's reservation, web.2's port: that dyno answers.
    let user2 = reserve(&sim, &key, "web.2").await;
    let l4 = free_port();
    let tunnel = Tunnel::open(&sim, &key, &user2, &[(l4, "127.0.0.1", p2)]).await;
    assert_eq!(curl_ready(l4, "/").await, b"hello from web.2\n");
    tunnel.finish().await;
    shutdown(sim).await;
    eprintln!("ssh_l_reaches_the_dynos_own_port: {:?}", started.elapsed());
}

/// A test-owned echo server on 127.0.0.1 (herokusim does not isolate the dynos' network, so
/// the dyno's loopback reaches it): 8 MiB each way, concurrently, byte-exact; the client's
/// half-close reaches the server, whose close comes back as EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_each_way_with_half_close() {
    let started = Instant::now();
    let sim = start().await;
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    // Every connection is echoed (Tunnel::open's readiness probe is one too); each reports
    // how many bytes it echoed.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(8);
    let server = tokio::spawn(async move {
        loop {
            let (s, _) = echo.accept().await.unwrap();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let n = tokio::io::copy(&mut r, &mut w).await.unwrap_or(0);
                let _ = w.shutdown().await;
                let _ = done_tx.send(n).await;
            });
        }
    });
    let key = key(&sim);
    let user = reserve(&sim, &key, "web.1").await;
    let local = free_port();
    let tunnel = Tunnel::open(&sim, &key, &user, &[(local, "127.0.0.1", echo_port)]).await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap_or(0))
        .collect();
    let s = TcpStream::connect(("127.0.0.1", local)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let send = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&send).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "byte-exact");
    let want = payload.len() as u64;
    loop {
        let n = tokio::time::timeout(T, done_rx.recv())
            .await
            .expect("echo done");
        if n == Some(want) {
            break;
        }
        assert_eq!(n, Some(0), "only the probe echoed nothing");
    }
    server.abort();
    tunnel.finish().await;
    shutdown(sim).await;
    eprintln!(
        "eight_mib_each_way_with_half_close: {:?}",
        started.elapsed()
    );
}

/// `ssh -W` (a `direct-tcpip` channel on stdio): a host off the dyno's loopback is refused;
/// a port where nothing listens fails with `connect failed`. ssh exits 255 either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_hosts_and_closed_ports_are_refused() {
    let started = Instant::now();
    let sim = start().await;
    let key = key(&sim);
    let user = reserve(&sim, &key, "web.1").await;
    let closed = free_port();
    for (target, says) in [
        ("10.1.2.3:80".to_owned(), "administratively prohibited"),
        ("example.com:80".to_owned(), "administratively prohibited"),
        (format!("127.0.0.1:{closed}"), "connect failed"),
        (format!("[::1]:{closed}"), "connect failed"),
    ] {
        let out = ssh(&sim, &key, &user, &["-W".to_owned(), target.clone()]).output();
        let out = tokio::time::timeout(T, out)
            .await
            .expect("ssh -W in time")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{target}: {stderr}");
        assert!(
            stderr.contains(says),
            "{target}: expected {says:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{target}");
    }

    // The same through -L: ssh keeps running, the refused connection is closed empty.
    let local = free_port();
    let tunnel = Tunnel::open(&sim, &key, &user, &[(local, "10.1.2.3", 80)]).await;
    assert_closed_without_data(local).await;
    let stderr = tunnel.finish().await;
    assert!(stderr.contains("administratively prohibited"), "{stderr}");
    shutdown(sim).await;
    eprintln!(
        "non_loopback_hosts_and_closed_ports_are_refused: {:?}",
        started.elapsed()
    );
}

/// Restarting the dyno closes its forwarded connections at once (both ends see EOF, although
/// neither peer closed), and the old reservation's connection opens no new one; the restarted
/// dyno keeps its `PORT` and a fresh reservation reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_dyno_ends_the_forward() {
    let started = Instant::now();
    let sim = start().await;
    let p1 = sim.dyno_port("demo", "web.1").unwrap();
    let held = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_port = held.local_addr().unwrap().port();
    let key = key(&sim);
    let user = reserve(&sim, &key, "web.1").await;
    let (local, local_http) = (free_port(), free_port());
    let tunnel = Tunnel::open(
        &sim,
        &key,
        &user,
        &[
            (local, "127.0.0.1", held_port),
            (local_http, "127.0.0.1", p1),
        ],
    )
    .await;
    assert_eq!(curl_ready(local_http, "/").await, b"hello from web.1\n");
    // Tunnel::open's probe connection came first; the held one is the next.
    let (mut probe, _) = tokio::time::timeout(T, held.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(read_to_eof(&mut probe).await.unwrap_or_default().is_empty());
    let mut client = TcpStream::connect(("127.0.0.1", local)).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let (mut inside, _) = tokio::time::timeout(T, held.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(T, inside.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    inside.write_all(b"pong").await.unwrap();
    tokio::time::timeout(T, client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");

    // The dyno's side stops reading while the client sends 64 MiB: the forward (and the SSH
    // session behind it) fills up and waits, so the client cannot write it all. The restart
    // must still end it.
    let (mut client_r, mut client_w) = client.into_split();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let flood = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            if client_w.write_all(&chunk).await.is_err() {
                return false;
            }
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
        true
    });
    // Until the flood is stuck (its count stops growing) or done: polled, bounded.
    let deadline = Instant::now() + READY;
    let mut last = usize::MAX;
    while !flood.is_finished() {
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        assert!(Instant::now() < deadline, "the flood never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = Instant::now();
    restart(&sim, "web.1").await;
    // Neither peer closed: the sim did.
    let mut rest = Vec::new();
    tokio::time::timeout(T, client_r.read_to_end(&mut rest))
        .await
        .expect("eof in time")
        .unwrap_or_default();
    assert!(rest.is_empty());
    let flooded = tokio::time::timeout(T, flood)
        .await
        .expect("the flood ends")
        .unwrap();
    let mut unread = Vec::new();
    let _ = tokio::time::timeout(T, inside.read_to_end(&mut unread))
        .await
        .expect("eof in time");
    eprintln!(
        "flood: all 64 MiB written by the client = {flooded} ({} bytes before the restart); {} bytes reached the peer that did not read",
        last,
        unread.len()
    );
    assert!(!flooded, "buffers are bounded: 64 MiB cannot be in flight");
    eprintln!("forward closed {:?} after the restart began", t0.elapsed());
    // The old boot's reservation: new channels are refused.
    assert_closed_without_data(local_http).await;
    let stderr = tunnel.finish().await;
    assert!(stderr.contains("open failed"), "{stderr}");

    assert_eq!(
        sim.dyno_port("demo", "web.1"),
        Some(p1),
        "PORT kept across the restart"
    );
    let user = reserve(&sim, &key, "web.1").await;
    let local = free_port();
    let tunnel = Tunnel::open(&sim, &key, &user, &[(local, "127.0.0.1", p1)]).await;
    assert_eq!(curl_ready(local, "/").await, b"hello from web.1\n");
    tunnel.finish().await;
    shutdown(sim).await;
    eprintln!(
        "restarting_the_dyno_ends_the_forward: {:?}",
        started.elapsed()
    );
}
